"""The pieces of a drift check that need no cluster: what the clone answers (the remote's folder
after a fetch, and which files differ between two trees of it) and the fight policy of repairs.
The whole check runs against the test bed in tests/integration/test_drift.py."""

from __future__ import annotations

from pathlib import Path

import pygit2

from reverserd.config.status import DriftReport
from reverserd.git import BranchRepository, FileChange
from reverserd.journal import ObjectKey
from reverserd.targets.drift import (
    DRIFT_FILE_LIMIT_BYTES,
    FIGHT_HOLD_S,
    FIGHT_LIMIT,
    RECONCILE_CHECK_GAP_S,
    Drifted,
    DriftState,
)
from testbed.gitservers import commit_files
from tests.conftest import AUTHOR, COMMITTER

PERSON = pygit2.Signature("A Person", "person@example.com", 1_700_000_000, 0)
FOLDER = "live"


def _remote_and_clone(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, BranchRepository]:
    path = tmp_path / "remote.git"
    remote = pygit2.init_repository(str(path), bare=True, initial_head="main")
    commit_files(remote, "main", dict(files), "seed", PERSON)
    clone = BranchRepository(tmp_path / "clone", path.as_uri(), "main")
    clone.open()
    return path, clone


def _many(count: int) -> dict[str, bytes]:
    """``count`` files spread over nested folders, as a mirrored folder holds them."""
    return {
        f"{FOLDER}/v1/configmaps/ns{i % 10}/cm{i}.yaml": f"n: {i}\n".encode() for i in range(count)
    }


def test_changed_files_names_exactly_the_files_that_differ(tmp_path: Path) -> None:
    files = _many(200)
    path, clone = _remote_and_clone(tmp_path, files)
    before = clone.folder_tree(FOLDER)
    commit_files(
        pygit2.Repository(str(path)),
        "main",
        {
            f"{FOLDER}/v1/configmaps/ns3/cm3.yaml": b"edited\n",
            f"{FOLDER}/v1/configmaps/ns4/cm4.yaml": None,
            f"{FOLDER}/extra/notes.txt": b"new\n",
            "outside/file.txt": b"not in the folder\n",
        },
        "a person's edits",
        PERSON,
    )
    assert clone.fetch_if_idle()
    after = clone.folder_tree(FOLDER)
    assert after is not None and after != before
    assert clone.changed_files(before, after, FOLDER) == [
        f"{FOLDER}/extra/notes.txt",
        f"{FOLDER}/v1/configmaps/ns3/cm3.yaml",
        f"{FOLDER}/v1/configmaps/ns4/cm4.yaml",
    ]
    assert clone.changed_files(after, after, FOLDER) == []
    assert len(clone.changed_files(None, after, FOLDER)) == 200


def test_a_folder_replaced_by_a_file_counts_every_file_it_held(tmp_path: Path) -> None:
    path, clone = _remote_and_clone(tmp_path, {f"{FOLDER}/a/x.yaml": b"1\n", f"{FOLDER}/b": b"2\n"})
    before = clone.folder_tree(FOLDER)
    repo = pygit2.Repository(str(path))
    commit_files(repo, "main", {f"{FOLDER}/a/x.yaml": None, f"{FOLDER}/b": None}, "gone", PERSON)
    commit_files(
        repo, "main", {f"{FOLDER}/a": b"file\n", f"{FOLDER}/b/y.yaml": b"3\n"}, "swap", PERSON
    )
    assert clone.fetch_if_idle()
    assert clone.changed_files(before, clone.folder_tree(FOLDER), FOLDER) == [
        f"{FOLDER}/a",
        f"{FOLDER}/a/x.yaml",
        f"{FOLDER}/b",
        f"{FOLDER}/b/y.yaml",
    ]


def test_fetch_waits_while_local_commits_are_pending(tmp_path: Path) -> None:
    path, clone = _remote_and_clone(tmp_path, {f"{FOLDER}/a.yaml": b"1\n"})
    clone.apply([FileChange(f"{FOLDER}/mine.yaml", b"ours\n")], "ours", AUTHOR, COMMITTER)
    commit_files(pygit2.Repository(str(path)), "main", {f"{FOLDER}/a.yaml": b"2\n"}, "e", PERSON)
    assert not clone.fetch_if_idle()
    assert clone.read(f"{FOLDER}/mine.yaml") == b"ours\n"
    assert clone.read(f"{FOLDER}/a.yaml") == b"1\n"


def _drifted(path: str) -> Drifted:
    return Drifted(path, ObjectKey("", "configmaps", "ns", path), b"restored\n")


def test_a_file_changed_back_after_each_repair_is_held_after_the_limit() -> None:
    state = DriftState("ns/mirror", DriftReport())
    contested, other = _drifted("live/a.yaml"), _drifted("live/b.yaml")
    for fight in range(FIGHT_LIMIT):
        repair, held = state.triage([contested], now=0.0)
        assert (repair, held) == ([contested], []), fight
    repair, held = state.triage([contested, other], now=0.0)
    assert (repair, held) == ([other], [contested])
    # Held for the whole hold time, then tried again.
    assert state.triage([contested], now=FIGHT_HOLD_S - 1) == ([], [contested])
    assert state.triage([contested], now=FIGHT_HOLD_S) == ([contested], [])


def test_a_file_found_clean_ends_its_fight() -> None:
    state = DriftState("ns/mirror", DriftReport())
    contested = _drifted("live/a.yaml")
    for _ in range(FIGHT_LIMIT - 1):
        state.triage([contested], now=0.0)
    state.triage([], now=0.0)
    for fight in range(FIGHT_LIMIT):
        assert state.triage([contested], now=0.0) == ([contested], []), fight


def test_a_file_larger_than_the_bound_is_left_unread(tmp_path: Path) -> None:
    # Zeros compress to almost nothing: a small push that would inflate past the bound.
    big, small, limit = f"{FOLDER}/big.yaml", f"{FOLDER}/small.yaml", f"{FOLDER}/limit.yaml"
    files = {
        big: bytes(DRIFT_FILE_LIMIT_BYTES + 1),
        limit: bytes(DRIFT_FILE_LIMIT_BYTES),
        small: b"k: v\n",
    }
    _, clone = _remote_and_clone(tmp_path, files)
    ids = clone.blob_ids([big, limit, small, f"{FOLDER}/missing.yaml", FOLDER])
    assert ids[f"{FOLDER}/missing.yaml"] is None and ids[FOLDER] is None
    found = [ids[big], ids[limit], ids[small]]
    assert all(found)
    contents = clone.read_blobs([oid for oid in found if oid], DRIFT_FILE_LIMIT_BYTES)
    assert contents[ids[big] or ""] is None
    assert contents[ids[limit] or ""] == files[limit]
    assert contents[ids[small] or ""] == b"k: v\n"


def test_reconcile_requests_check_at_most_once_per_gap() -> None:
    state = DriftState("ns/mirror", DriftReport())
    assert state.request_due(now=5.0)
    state.requested_check_at = 5.0
    assert not state.request_due(now=5.0 + RECONCILE_CHECK_GAP_S - 0.1)
    assert state.request_due(now=5.0 + RECONCILE_CHECK_GAP_S)


def test_a_verdict_holds_for_the_same_blob_and_record_only() -> None:
    state = DriftState("ns/mirror", DriftReport())
    path, other = "live/a.yaml", "live/b.yaml"
    assert state.cached_verdict(path, "blob1", "record1") is None
    state.judged(path, "blob1", "record1", True)
    state.judged(other, "blob2", "record2", False)
    assert state.cached_verdict(path, "blob1", "record1") is True
    assert state.cached_verdict(other, "blob2", "record2") is False
    # Someone changed the file again, or the target wrote a new record: judged afresh.
    assert state.cached_verdict(path, "blob3", "record1") is None
    assert state.cached_verdict(path, "blob1", "record3") is None
    # A file no longer expected is forgotten; a clean folder forgets them all.
    state.forget_verdicts_except([path])
    assert state.cached_verdict(other, "blob2", "record2") is None
    assert state.cached_verdict(path, "blob1", "record1") is True
    state.found_clean("tree", {})
    assert state.cached_verdict(path, "blob1", "record1") is None
