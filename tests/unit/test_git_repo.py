"""The Git layer against real bare repositories reached through file://, and its pure functions.

No mocks: libgit2's own local transport fetches and pushes. Everything that needs a network
server (HTTP, SSH, outages, timeouts) is in tests/integration/test_git_transport.py, against the
test bed's servers."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import os
from pathlib import Path

import pygit2
import pytest

from reverserd.committer.committer import remove_clones_of_older_versions
from reverserd.git import (
    BranchRepository,
    CredentialsError,
    FileChange,
    GitCredentials,
    KnownHostsError,
    PushRejected,
    RemoteUnavailable,
    RepositoryError,
    build_callbacks,
    configure_network_timeouts,
    mask_url,
    objects,
    redact,
)
from reverserd.git import repository as git_repository
from reverserd.git.credentials import (
    without_url_credentials,
)
from reverserd.git.known_hosts import (
    HostKeyError,
    PresentedHostKey,
    check_host_key,
    parse_known_hosts,
)
from reverserd.git.repository import (
    CONNECT_TIMEOUT_MS,
    IO_TIMEOUT_MS,
    PACK_LIMIT,
    stores_its_remote,
)
from testbed.gitservers import commit_files
from tests.conftest import AUTHOR, COMMITTER, write

OTHER = pygit2.Signature("Someone Else", "else@example.com", 1_700_000_100, 0)

# Two ed25519 public keys (ssh-keygen), with the fingerprints ssh-keygen -l prints for them.
KEY_A = "AAAAC3NzaC1lZDI1NTE5AAAAILRfz8HXOhYM9LYEAbS0iK6V/jA+iB3a/n9jptELgjpI"
KEY_A_FINGERPRINT = "SHA256:HIPnFhd0Rdq7Ya78qOFQdLC+yaMF/ZHMO1s7kGEuL40"
KEY_B = "AAAAC3NzaC1lZDI1NTE5AAAAIEAAqxx/YUBTgaGzEUik8uhT94zBm9ZoyXYX7PQk60xw"
# "[git.example.com]:2222 ssh-ed25519 KEY_A" hashed by ssh-keygen -H.
HASHED_LINE_FOR_KEY_A = (
    "|1|J2t6gXEsvKsM6FwdE0dpIyfZmUY=|DwM01v8sZzeKJzwoisUnHJ8RL4w= ssh-ed25519 " + KEY_A
)


def presented(key: str) -> PresentedHostKey:
    return PresentedHostKey(blob=base64.b64decode(key), sha256=None)


# -- helpers -------------------------------------------------------------------------------


def make_remote(tmp_path: Path, initial_head: str = "main") -> tuple[pygit2.Repository, str]:
    path = tmp_path / "remote.git"
    return pygit2.init_repository(str(path), bare=True, initial_head=initial_head), path.as_uri()


def commit_directly(
    remote: pygit2.Repository, branch: str, files: dict[str, bytes], message: str
) -> pygit2.Oid:
    """A commit made on the remote by someone else, on top of the branch tip."""
    return commit_files(remote, branch, files, message, OTHER)


def clone(tmp_path: Path, url: str, branch: str = "main", name: str = "clone") -> BranchRepository:
    repository = BranchRepository(tmp_path / name, url, branch)
    repository.open()
    return repository


def clone_commit(repository: BranchRepository, tmp_path: Path, sha: str) -> pygit2.Commit:
    """Commit ``sha`` as another reader of the clone finds it once ``repository`` flushed."""
    repository.flush()
    commit = pygit2.Repository(str(tmp_path / "clone")).get(sha)
    assert isinstance(commit, pygit2.Commit)
    return commit


def remote_tip(remote: pygit2.Repository, branch: str = "main") -> str:
    return str(remote.references[f"refs/heads/{branch}"].target)


def history(remote: pygit2.Repository, branch: str = "main") -> list[str]:
    """Commit messages from the tip down."""
    tip = remote.references[f"refs/heads/{branch}"].target
    return [commit.message for commit in remote.walk(tip)]


# -- branch start ----------------------------------------------------------------------------


def test_first_commit_on_empty_remote_has_no_parent_and_push_creates_the_branch(
    tmp_path: Path,
) -> None:
    remote, url = make_remote(tmp_path)
    repository = BranchRepository(tmp_path / "clone", url, "main")
    assert repository.open() is None
    assert repository.head() is None

    sha = write(repository, "live/README.md", b"hello\n", "first")

    first = clone_commit(repository, tmp_path, sha)
    assert first.parents == []
    assert repository.pending() == 1
    assert repository.push() == sha
    assert remote_tip(remote) == sha
    assert repository.pending() == 0


def test_missing_branch_starts_from_the_remote_default_branch_whatever_its_name(
    tmp_path: Path,
) -> None:
    remote, url = make_remote(tmp_path, initial_head="trunk")
    trunk_tip = commit_directly(remote, "trunk", {"README.md": b"docs\n"}, "trunk work")

    repository = BranchRepository(tmp_path / "clone", url, "mirror")
    assert repository.open() is None
    assert repository.head() == str(trunk_tip)
    assert repository.read("README.md") == b"docs\n"
    assert repository.pending() == 0

    sha = write(repository, "live/a.yaml", b"a: 1\n", "mirror work")
    assert clone_commit(repository, tmp_path, sha).parent_ids == [trunk_tip]
    assert repository.pending() == 1
    repository.push()

    assert remote_tip(remote, "mirror") == sha
    assert remote_tip(remote, "trunk") == str(trunk_tip)
    assert history(remote, "mirror") == ["mirror work", "trunk work"]


def test_existing_branch_is_where_local_work_starts(tmp_path: Path) -> None:
    remote, url = make_remote(tmp_path, initial_head="trunk")
    commit_directly(remote, "trunk", {"README.md": b"trunk\n"}, "trunk work")
    branch_tip = commit_directly(remote, "main", {"other.txt": b"main\n"}, "main work")

    repository = BranchRepository(tmp_path / "clone", url, "main")

    assert repository.open() == str(branch_tip)
    assert repository.head() == str(branch_tip)
    assert repository.list_files() == ["other.txt"]


# -- apply -----------------------------------------------------------------------------------


def test_apply_without_change_returns_none_and_makes_no_commit(tmp_path: Path) -> None:
    _, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)
    sha = write(repository, "live/a.yaml", b"a: 1\n", "write a")

    same = repository.apply([FileChange("live/a.yaml", b"a: 1\n")], "again", AUTHOR, COMMITTER)
    absent = repository.apply([FileChange("live/nope.yaml", None)], "delete", AUTHOR, COMMITTER)
    nothing = repository.apply([], "empty", AUTHOR, COMMITTER)

    assert (same, absent, nothing) == (None, None, None)
    assert repository.head() == sha
    assert repository.pending() == 1


def test_apply_on_an_empty_branch_without_files_makes_no_commit(tmp_path: Path) -> None:
    _, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)

    assert repository.apply([FileChange("a.yaml", None)], "delete", AUTHOR, COMMITTER) is None
    assert repository.head() is None


def test_nested_folders_are_created_and_pruned_when_their_last_file_goes(
    tmp_path: Path,
) -> None:
    _, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)
    changes = [
        FileChange("live/v1/configmaps/team-a/one.yaml", b"one\n"),
        FileChange("live/v1/configmaps/team-a/two.yaml", b"two\n"),
        FileChange("live/README.md", b"readme\n"),
    ]
    repository.apply(changes, "create", AUTHOR, COMMITTER)

    assert repository.list_files("live") == [
        "live/README.md",
        "live/v1/configmaps/team-a/one.yaml",
        "live/v1/configmaps/team-a/two.yaml",
    ]
    assert repository.list_files("live/v1/configmaps/") == [
        "live/v1/configmaps/team-a/one.yaml",
        "live/v1/configmaps/team-a/two.yaml",
    ]
    assert repository.read("live/v1/configmaps/team-a/two.yaml") == b"two\n"

    repository.apply(
        [FileChange("live/v1/configmaps/team-a/one.yaml", None)], "delete one", AUTHOR, COMMITTER
    )
    assert repository.list_files("live/v1") == ["live/v1/configmaps/team-a/two.yaml"]

    repository.apply(
        [FileChange("live/v1/configmaps/team-a/two.yaml", None)], "delete two", AUTHOR, COMMITTER
    )
    head = clone_commit(repository, tmp_path, str(repository.head()))
    assert "live/v1" not in head.tree
    live = head.tree["live"]
    assert isinstance(live, pygit2.Tree)
    assert [entry.name for entry in live] == ["README.md"]
    assert repository.list_files() == ["live/README.md"]
    assert repository.read("live/v1/configmaps/team-a/two.yaml") is None


def test_deleting_the_last_file_leaves_an_empty_tree_commit(tmp_path: Path) -> None:
    _, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)
    write(repository, "a/b/c.yaml", b"c\n", "create")

    sha = write(repository, "a/b/c.yaml", None, "delete")

    assert len(clone_commit(repository, tmp_path, sha).tree) == 0
    assert repository.list_files() == []


@pytest.mark.parametrize("path", ["", "/abs.yaml", "a//b.yaml", "a/../b.yaml", "./a", "a/.git/x"])
def test_invalid_paths_are_refused(tmp_path: Path, path: str) -> None:
    _, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)

    with pytest.raises(ValueError, match="invalid repository path"):
        repository.apply([FileChange(path, b"x")], "bad", AUTHOR, COMMITTER)


def test_a_file_is_never_written_over_a_folder_or_under_a_file(tmp_path: Path) -> None:
    _, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)
    write(repository, "folder/file.yaml", b"x\n", "create")
    head = repository.head()

    with pytest.raises(ValueError, match="other than a file"):
        repository.apply([FileChange("folder", b"y")], "over folder", AUTHOR, COMMITTER)
    with pytest.raises(ValueError, match="not a folder"):
        repository.apply([FileChange("folder/file.yaml/z", b"y")], "under", AUTHOR, COMMITTER)

    assert repository.apply([FileChange("folder", None)], "not a file", AUTHOR, COMMITTER) is None
    assert repository.head() == head


# -- push and rebase -------------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, -1])
def test_one_commit_cannot_change_a_path_both_as_a_file_and_as_a_folder(
    tmp_path: Path, order: int
) -> None:
    _, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)
    changes = [FileChange("a/b", b"file\n"), FileChange("a/b/c.yaml", b"below it\n")][::order]
    with pytest.raises(ValueError, match="both as a file and as a folder"):
        repository.apply(changes, "m", AUTHOR, COMMITTER)
    assert repository.head() is None


def test_push_makes_the_remote_tip_equal_the_local_head(tmp_path: Path) -> None:
    remote, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)
    write(repository, "a.yaml", b"1\n", "one")
    second = write(repository, "b.yaml", b"2\n", "two")
    assert repository.pending() == 2

    assert repository.push() == second
    assert remote_tip(remote) == second == repository.head()
    assert repository.pending() == 0
    assert repository.push() == second


def test_foreign_push_is_rejected_and_rebase_puts_ours_on_top_of_theirs(tmp_path: Path) -> None:
    remote, url = make_remote(tmp_path)
    ours = clone(tmp_path, url, name="ours")
    write(ours, "live/base.yaml", b"base\n", "base")
    ours.push()

    theirs = clone(tmp_path, url, name="theirs")
    theirs.apply([FileChange("docs/notes.md", b"theirs\n")], "their commit", OTHER, OTHER)
    their_tip = theirs.push()

    write(ours, "live/a.yaml", b"a\n", "ours one")
    write(ours, "live/b.yaml", b"b\n", "ours two")
    with pytest.raises(PushRejected):
        ours.push()
    assert ours.pending() == 2

    rebuilt = ours.rebase_onto_remote()

    assert len(rebuilt) == 2
    assert ours.head() == rebuilt[-1]
    assert ours.pending() == 2
    assert ours.push() == rebuilt[-1]
    assert remote_tip(remote) == rebuilt[-1]
    assert history(remote) == ["ours two", "ours one", "their commit", "base"]
    top = remote.get(rebuilt[-1])
    assert isinstance(top, pygit2.Commit)
    assert (top.author.name, top.committer.name) == (AUTHOR.name, COMMITTER.name)
    assert top.parents[0].parent_ids == [pygit2.Oid(hex=their_tip)]
    assert ours.list_files() == ["docs/notes.md", "live/a.yaml", "live/b.yaml", "live/base.yaml"]


def test_rebase_drops_a_commit_whose_change_the_remote_already_has(tmp_path: Path) -> None:
    remote, url = make_remote(tmp_path)
    ours = clone(tmp_path, url, name="ours")
    write(ours, "live/a.yaml", b"v1\n", "v1")
    ours.push()
    commit_directly(remote, "main", {"live/a.yaml": b"v2\n"}, "their v2")

    write(ours, "live/a.yaml", b"v2\n", "our v2")
    write(ours, "live/b.yaml", b"b\n", "our b")
    with pytest.raises(PushRejected):
        ours.push()

    rebuilt = ours.rebase_onto_remote()
    ours.push()

    assert len(rebuilt) == 1
    assert history(remote) == ["our b", "their v2", "v1"]
    assert ours.read("live/a.yaml") == b"v2\n"


@dataclasses.dataclass(frozen=True)
class AppendLine:
    """A FileEdit: the file as it is, with one more line."""

    line: bytes

    def edited(self, existing: bytes | None) -> bytes | None:
        return (existing or b"") + self.line


def test_a_file_edit_applies_to_the_file_at_the_tip_and_again_on_a_moved_remote(
    tmp_path: Path,
) -> None:
    remote, url = make_remote(tmp_path)
    ours = clone(tmp_path, url, name="ours")
    write(ours, "live/list", b"base\n", "base")
    ours.push()
    commit_directly(remote, "main", {"live/list": b"base\ntheirs\n"}, "their line")

    ours.apply([FileChange("live/list", AppendLine(b"ours\n"))], "our line", AUTHOR, COMMITTER)
    assert ours.read("live/list") == b"base\nours\n"
    with pytest.raises(PushRejected):
        ours.push()
    ours.rebase_onto_remote()
    ours.push()

    assert history(remote) == ["our line", "their line", "base"]
    assert ours.read("live/list") == b"base\ntheirs\nours\n"


def test_rebase_with_nothing_pending_follows_the_remote(tmp_path: Path) -> None:
    remote, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)
    write(repository, "a.yaml", b"1\n", "one")
    repository.push()
    theirs = commit_directly(remote, "main", {"b.yaml": b"2\n"}, "theirs")

    assert repository.rebase_onto_remote() == []
    assert repository.head() == str(theirs)
    assert repository.pending() == 0


def test_a_rebuild_that_keeps_nothing_is_on_disk_after_the_push_that_follows(
    tmp_path: Path,
) -> None:
    remote, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)
    write(repository, "a.yaml", b"1\n", "one")
    repository.push()
    write(repository, "b.yaml", b"2\n", "ours")
    repository.flush()  # as a push that then failed would have
    theirs = commit_directly(remote, "main", {"b.yaml": b"2\n"}, "theirs, with the same change")

    assert repository.rebase_onto_remote() == []
    assert repository.push() == str(theirs)

    again = BranchRepository(tmp_path / "clone", url, "main")
    assert again.open() == str(theirs)
    assert again.head() == str(theirs)
    assert again.pending() == 0


def test_contents_handed_over_first_are_committed_by_id_and_pushed(tmp_path: Path) -> None:
    remote, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)
    contents = [f"data: {n}\n".encode() * 50 for n in range(3)]
    blobs = repository.add_blobs(contents)
    changes = [FileChange(f"f{n}.yaml", blob) for n, blob in enumerate(blobs)]
    sha = repository.apply([*changes, FileChange("plain.yaml", b"p\n")], "m", AUTHOR, COMMITTER)

    assert sha is not None
    assert repository.read("f1.yaml") == contents[1]  # pending: compressed in memory
    assert repository.push() == sha == remote_tip(remote)
    tree = remote.get(sha).tree
    assert [remote[tree[f"f{n}.yaml"].id].data for n in range(3)] == contents
    assert remote[tree["plain.yaml"].id].data == b"p\n"


def test_blobs_beyond_the_spill_bound_go_to_a_pack_and_stay_committable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objects, "SPILL_BYTES", 4096)
    remote, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)
    packs = tmp_path / "clone" / "objects" / "pack"
    contents = [os.urandom(1500) for _ in range(6)]  # incompressible: 9 KB packed
    blobs = repository.add_blobs(contents)

    assert len(list(packs.glob("*.pack"))) == 2  # spilled twice, no ref moved
    assert repository.head() is None
    changes = [FileChange(f"f{n}.bin", blob) for n, blob in enumerate(blobs)]
    sha = repository.apply(changes, "m", AUTHOR, COMMITTER)
    assert sha is not None and repository.read("f0.bin") == contents[0]
    assert repository.push() == sha
    tree = remote.get(sha).tree
    assert [remote[tree[f"f{n}.bin"].id].data for n in range(6)] == contents


def test_maintenance_waits_while_handed_over_blobs_may_still_be_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)
    write(repository, "a.yaml", b"1\n", "one")
    (blob,) = repository.add_blobs([b"committed after maintenance was due\n"])

    assert repository.maintain() is False
    assert repository.apply([FileChange("b.yaml", blob)], "two", AUTHOR, COMMITTER) is not None
    monkeypatch.setattr(git_repository, "HANDOVER_GRACE_S", 0.0)
    assert repository.maintain() is True
    assert repository.read("b.yaml") == b"committed after maintenance was due\n"
    assert repository.pack_count() == 1


def test_a_blob_the_clone_does_not_hold_is_never_committed(tmp_path: Path) -> None:
    _, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)
    other = clone(tmp_path, url, name="other")
    tip = write(repository, "a.yaml", b"1\n", "one")
    (foreign,) = other.add_blobs([b"only in the other clone\n"])

    with pytest.raises(RepositoryError, match="not in the clone"):
        repository.apply([FileChange("b.yaml", foreign)], "two", AUTHOR, COMMITTER)
    assert repository.read("b.yaml") is None
    assert repository.head() == tip


def test_unpushed_commits_survive_reopening_the_clone(tmp_path: Path) -> None:
    remote, url = make_remote(tmp_path)
    first = clone(tmp_path, url)
    write(first, "a.yaml", b"1\n", "one")
    first.push()
    tip = write(first, "b.yaml", b"2\n", "two")
    first.flush()

    again = BranchRepository(tmp_path / "clone", url, "main")
    again.open()

    assert again.head() == tip
    assert again.pending() == 1
    assert again.push() == tip == remote_tip(remote)


def test_reopening_after_an_unacknowledged_push_counts_nothing_pending(tmp_path: Path) -> None:
    remote, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)
    tip = write(repository, "a.yaml", b"1\n", "one")
    repository.flush()
    # The server took the commit but its answer was lost: the commit reaches it by other means.
    behind_its_back = pygit2.Repository(str(tmp_path / "clone"))
    behind_its_back.remotes.create_anonymous(url).push(["refs/heads/main:refs/heads/main"])

    again = BranchRepository(tmp_path / "clone", url, "main")
    assert again.open() == tip == remote_tip(remote)
    assert again.pending() == 0


# -- unavailable remote ----------------------------------------------------------------------


def test_missing_remote_raises_remote_unavailable_and_push_works_once_it_is_back(
    tmp_path: Path,
) -> None:
    remote, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)
    sha = write(repository, "a.yaml", b"1\n", "one")
    moved = tmp_path / "moved.git"
    (tmp_path / "remote.git").rename(moved)

    with pytest.raises(RemoteUnavailable) as caught:
        repository.push()
    assert caught.value.url == url
    assert caught.value.reason.startswith("push failed")
    with pytest.raises(RemoteUnavailable):
        repository.rebase_onto_remote()
    assert repository.pending() == 1
    assert repository.head() == sha

    moved.rename(tmp_path / "remote.git")
    assert repository.push() == sha == remote_tip(remote)


def test_a_damaged_object_in_the_clone_is_never_pushed(tmp_path: Path) -> None:
    # libgit2 no longer re-hashes what it reads (it would cost a third of every push); zlib's
    # checksum of each stored object must still stop damaged content from leaving the clone.
    remote, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)
    first = write(repository, "a.yaml", b"1\n", "one")
    repository.push()
    write(repository, "big.yaml", os.urandom(64 * 1024).hex().encode(), "big")
    repository.flush()
    packs = sorted((tmp_path / "clone" / "objects" / "pack").glob("*.pack"), key=os.path.getmtime)
    damaged = bytearray(packs[-1].read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    packs[-1].chmod(0o644)
    packs[-1].write_bytes(bytes(damaged))

    reopened = clone(tmp_path, url)
    with pytest.raises(RemoteUnavailable):
        reopened.push()
    assert remote_tip(remote) == first


def test_network_timeouts_are_configured() -> None:
    configure_network_timeouts()

    assert pygit2.settings.server_connect_timeout == CONNECT_TIMEOUT_MS
    assert pygit2.settings.server_timeout == IO_TIMEOUT_MS
    with pytest.raises(ValueError, match="positive"):
        configure_network_timeouts(io_ms=0)


def test_methods_refuse_to_run_on_the_event_loop(tmp_path: Path) -> None:
    _, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)

    async def on_the_loop() -> None:
        repository.pending()

    with pytest.raises(RuntimeError, match="worker thread"):
        asyncio.run(on_the_loop())


# -- maintenance -----------------------------------------------------------------------------


def test_flushes_keep_the_pack_count_bounded_and_maintain_leaves_one_pack(
    tmp_path: Path,
) -> None:
    remote, url = make_remote(tmp_path)
    repository = clone(tmp_path, url)
    for number in range(200):
        write(repository, f"live/{number % 7}/object.yaml", f"n: {number}\n".encode(), "change")
        repository.flush()
        assert repository.pack_count() <= PACK_LIMIT
    assert repository.loose_object_count() == 0
    head = repository.head()

    repository.maintain()

    assert repository.pack_count() == 1
    assert repository.loose_object_count() == 0
    assert repository.head() == head
    assert repository.pending() == 200
    assert repository.read("live/3/object.yaml") == b"n: 199\n"
    assert repository.push() == head == remote_tip(remote)


# -- credentials -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:s3cret@example.com/r.git", "https://user:***@example.com/r.git"),
        ("https://ghp_t0ken@github.com/o/r.git", "https://***@github.com/o/r.git"),
        ("http://u:p@ss:w0rd@host:8080/r.git", "http://u:***@host:8080/r.git"),
        ("ssh://git:s3cret@host:2222/r.git", "ssh://git:***@host:2222/r.git"),
        ("ssh://git@host:2222/r.git", "ssh://git@host:2222/r.git"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        ("deploy:s3cret@host:o/r.git", "deploy:***@host:o/r.git"),
        ("file:///srv/git/r.git", "file:///srv/git/r.git"),
        ("https://h/r.git?private_token=s3cret", "https://h/r.git?private_token=***"),
        ("https://u:s3cret@h/r?a=s3cret&s3cret#s3cret", "https://u:***@h/r?a=***&***#***"),
        ("https://%73ecret@h/r.git", "https://***@h/r.git"),
    ],
)
def test_mask_url_hides_passwords_and_http_tokens(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_redact_removes_urls_passwords_and_passphrases_from_text() -> None:
    credentials = GitCredentials(password="hunter2", ssh_passphrase="open sesame")
    text = "failed https://x:hunter2@h/r.git: wrong hunter2 / open sesame"

    assert redact(text, credentials) == "failed https://x:***@h/r.git: wrong *** / ***"


@pytest.mark.parametrize(
    "text",
    [
        "cannot reach deploy:s3cret@git.example.com:o/r.git (timeout)",
        "push to https://git.example.com/o/r.git?access_token=s3cret failed",
        "fetch 'https://oauth2:s3cret@gitlab.example.com/o/r' refused",
        "url=ssh://git:s3cret@host:2222/r.git",
    ],
)
def test_redact_masks_every_spelling_of_a_url_credential_in_text(text: str) -> None:
    assert "s3cret" not in redact(text)


@pytest.mark.parametrize(
    ("url", "bare", "username", "password"),
    [
        ("https://ci:s3cret@h/r.git", "https://h/r.git", "ci", "s3cret"),
        ("https://tok%40en@h/r.git", "https://h/r.git", "tok@en", "from-secret"),
        ("ssh://git:s3cret@h:2222/r.git", "ssh://git@h:2222/r.git", "from-secret", "s3cret"),
        ("deploy:s3cret@h:o/r.git", "deploy@h:o/r.git", "from-secret", "s3cret"),
        ("git@h:o/r.git", "git@h:o/r.git", "from-secret", "from-secret"),
        ("https://h/r.git", "https://h/r.git", "from-secret", "from-secret"),
    ],
)
def test_credentials_leave_the_url_for_memory(
    url: str, bare: str, username: str, password: str
) -> None:
    secret = GitCredentials(username="from-secret", password="from-secret")
    assert without_url_credentials(url, secret) == (
        bare,
        GitCredentials(username=username, password=password),
    )


def test_secrets_do_not_appear_in_the_credentials_repr() -> None:
    credentials = GitCredentials(
        username="robot", password="hunter2", ssh_private_key="-----BEGIN KEY", ssh_passphrase="pp"
    )

    shown = repr(credentials)

    assert "robot" in shown
    assert all(secret not in shown for secret in ("hunter2", "BEGIN KEY", "pp'"))


def test_ssh_url_without_known_hosts_is_refused_unless_explicitly_opted_out() -> None:
    url = "ssh://git@git.example.com:2222/org/repo.git"
    key_only = GitCredentials(ssh_private_key="-----BEGIN OPENSSH PRIVATE KEY-----")

    with pytest.raises(CredentialsError, match="no known_hosts"):
        build_callbacks(url, key_only)
    with pytest.raises(CredentialsError, match="no known_hosts"):
        BranchRepository("/nonexistent", "git@github.com:o/r.git", "main", key_only)
    build_callbacks(url, dataclasses.replace(key_only, insecure_skip_host_key_check=True))
    build_callbacks(
        url, dataclasses.replace(key_only, known_hosts=f"git.example.com ssh-ed25519 {KEY_A}")
    )
    build_callbacks("https://example.com/r.git", GitCredentials(password="t"))


def test_malformed_known_hosts_in_credentials_is_a_credentials_error() -> None:
    credentials = GitCredentials(known_hosts="host ssh-ed25519 not-base64!")

    with pytest.raises(CredentialsError, match="known_hosts: line 1"):
        build_callbacks("ssh://git@host/r.git", credentials)


# -- known_hosts -----------------------------------------------------------------------------


def test_plain_entry_vouches_for_its_host_on_port_22() -> None:
    entries = parse_known_hosts(f"# comment\n\ngithub.com,140.82.112.3 ssh-ed25519 {KEY_A} c\n")

    check_host_key(entries, "GitHub.com", 22, presented(KEY_A))
    check_host_key(entries, "140.82.112.3", 22, presented(KEY_A))
    # The same entry vouches for nothing else: not another key, port or host.
    with pytest.raises(HostKeyError, match="does not match known_hosts"):
        check_host_key(entries, "github.com", 22, presented(KEY_B))
    with pytest.raises(HostKeyError, match=r"no entry for \[github\.com\]:2222"):
        check_host_key(entries, "github.com", 2222, presented(KEY_A))
    with pytest.raises(HostKeyError, match=r"no entry for gitlab\.com"):
        check_host_key(entries, "gitlab.com", 22, presented(KEY_A))


def test_other_ports_need_the_bracketed_host_port_entry() -> None:
    entries = parse_known_hosts(
        f"git.example.com ssh-ed25519 {KEY_A}\n[git.example.com]:2222 ssh-ed25519 {KEY_B}\n"
    )

    check_host_key(entries, "git.example.com", 2222, presented(KEY_B))
    with pytest.raises(HostKeyError, match=r"does not match known_hosts"):
        check_host_key(entries, "git.example.com", 2222, presented(KEY_A))
    with pytest.raises(HostKeyError, match=r"no entry for \[git.example.com\]:2200"):
        check_host_key(entries, "git.example.com", 2200, presented(KEY_A))


def test_hashed_entry_written_by_ssh_keygen_matches_its_host_only() -> None:
    entries = parse_known_hosts(HASHED_LINE_FOR_KEY_A)

    check_host_key(entries, "git.example.com", 2222, presented(KEY_A))
    with pytest.raises(HostKeyError, match="no entry"):
        check_host_key(entries, "git.example.com", 22, presented(KEY_A))
    with pytest.raises(HostKeyError, match="no entry"):
        check_host_key(entries, "other.example.com", 2222, presented(KEY_A))


def test_hashed_entry_is_an_hmac_of_the_lookup_name() -> None:
    salt = b"0123456789abcdefghij"
    digest = hmac.new(salt, b"[10.0.0.7]:22022", hashlib.sha1).digest()
    hashed = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"

    entries = parse_known_hosts(f"{hashed} ssh-ed25519 {KEY_B}")

    check_host_key(entries, "10.0.0.7", 22022, presented(KEY_B))
    # Only that name hashes to it: the address on the default port, or a neighbour, does not.
    for host, port in (("10.0.0.7", 22), ("10.0.0.8", 22022)):
        with pytest.raises(HostKeyError, match="no entry"):
            check_host_key(entries, host, port, presented(KEY_B))
    with pytest.raises(HostKeyError, match="does not match known_hosts"):
        check_host_key(entries, "10.0.0.7", 22022, presented(KEY_A))


def test_changed_host_key_is_refused_naming_the_offered_fingerprint() -> None:
    entries = parse_known_hosts(f"git.example.com ssh-ed25519 {KEY_B}")

    with pytest.raises(HostKeyError) as caught:
        check_host_key(entries, "git.example.com", 22, presented(KEY_A))

    assert f"ssh-ed25519 {KEY_A_FINGERPRINT}" in str(caught.value)
    assert "lists ssh-ed25519" in str(caught.value)


def test_unknown_host_is_refused() -> None:
    entries = parse_known_hosts(f"git.example.com ssh-ed25519 {KEY_A}")

    with pytest.raises(HostKeyError, match=r"no entry for evil\.example\.com"):
        check_host_key(entries, "evil.example.com", 22, presented(KEY_A))
    with pytest.raises(HostKeyError, match="no entry"):
        check_host_key([], "git.example.com", 22, presented(KEY_A))


def test_revoked_key_is_refused_even_when_another_line_lists_it() -> None:
    entries = parse_known_hosts(
        f"git.example.com ssh-ed25519 {KEY_A}\n@revoked * ssh-ed25519 {KEY_A}\n"
        f"@cert-authority *.example.com ssh-ed25519 {KEY_B}\n"
    )

    with pytest.raises(HostKeyError, match="@revoked"):
        check_host_key(entries, "git.example.com", 22, presented(KEY_A))
    with pytest.raises(HostKeyError, match="does not match"):
        check_host_key(entries, "git.example.com", 22, presented(KEY_B))


def test_wildcards_match_and_negated_patterns_exclude() -> None:
    entries = parse_known_hosts(f"*.example.com,!evil.example.com,git?.corp ssh-ed25519 {KEY_A}")

    check_host_key(entries, "git.example.com", 22, presented(KEY_A))
    check_host_key(entries, "git1.corp", 22, presented(KEY_A))
    with pytest.raises(HostKeyError, match="no entry"):
        check_host_key(entries, "evil.example.com", 22, presented(KEY_A))
    with pytest.raises(HostKeyError, match="no entry"):
        check_host_key(entries, "example.com.attacker.net", 22, presented(KEY_A))


def test_key_known_only_by_its_sha256_is_matched() -> None:
    entries = parse_known_hosts(f"git.example.com ssh-ed25519 {KEY_A}")
    digest_only = PresentedHostKey(
        blob=None, sha256=hashlib.sha256(base64.b64decode(KEY_A)).digest()
    )

    check_host_key(entries, "git.example.com", 22, digest_only)
    assert digest_only.fingerprint == KEY_A_FINGERPRINT


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"@bogus host ssh-ed25519 {KEY_A}", "line 1: unknown marker"),
        ("host ssh-ed25519", "line 1: expected"),
        ("# ok\nhost ssh-ed25519 %%%", "line 2: the key is not valid base64"),
        (f"host ssh-rsa {KEY_A}", "line 1: the key is not a ssh-rsa public key"),
        (f"|1|abc ssh-ed25519 {KEY_A}", "line 1: malformed hashed host name"),
    ],
)
def test_malformed_known_hosts_lines_are_reported_by_number(text: str, problem: str) -> None:
    with pytest.raises(KnownHostsError, match=problem):
        parse_known_hosts(text)


# -- which commits are ours ---------------------------------------------------------------------


def test_own_commits_are_the_pending_ones_and_the_last_push_never_a_foreign_commit(
    tmp_path: Path,
) -> None:
    remote, url = make_remote(tmp_path)
    ours = clone(tmp_path, url, name="ours")
    write(ours, "live/a.yaml", b"a\n", "ours pushed")
    pushed = ours.push()
    forged = "forged\n\njournal-seq: 99999\ntarget: team/mirror\n"
    commit_directly(remote, "main", {"live/x.yaml": b"x\n"}, forged)
    ours.rebase_onto_remote()
    write(ours, "live/b.yaml", b"b\n", "ours pending")

    own = [message for _, message in ours.own_commits()]

    assert own == ["ours pending"]
    assert pushed not in [sha for sha, _ in ours.own_commits()]


def test_commits_of_a_push_the_server_took_just_before_a_crash_are_still_ours(
    tmp_path: Path,
) -> None:
    _, url = make_remote(tmp_path)
    ours = clone(tmp_path, url, name="ours")
    write(ours, "live/a.yaml", b"a\n", "first")
    ours.push()
    write(ours, "live/b.yaml", b"b\n", "carried")
    carried = ours.head()
    # The server took the push, but the process died before recording it: the server has the
    # commit, the clone still counts it as pending until it reopens and fetches.
    ours.push()
    refs = pygit2.Repository(str(tmp_path / "ours")).references
    assert carried is not None
    refs.create("refs/reverserd/base", refs["refs/reverserd/pushed-from"].target, force=True)
    reopened = BranchRepository(tmp_path / "ours", url, "main")
    reopened.open()

    assert reopened.pending() == 0
    assert [message for _, message in reopened.own_commits()] == ["carried"]


def test_clones_of_an_older_version_are_removed_and_todays_are_kept(tmp_path: Path) -> None:
    """Older versions stored the remote, token and all, in the clone's config, under a name no
    owner's clone has now: such a clone goes, a clone made today stays."""
    _, url = make_remote(tmp_path)
    state = tmp_path / "state"
    today = BranchRepository(state / "repos" / "today", url, "main")
    today.open()
    older = pygit2.init_repository(str(state / "repos" / "older"), bare=True)
    older.remotes.create("origin", "https://bot:s3cret-token@git.example.com/team/r.git")
    assert stores_its_remote(state / "repos" / "older")
    assert remove_clones_of_older_versions(state) == [state / "repos" / "older"]
    assert sorted(path.name for path in (state / "repos").iterdir()) == ["today"]
    assert not any(
        b"s3cret-token" in path.read_bytes() for path in state.rglob("*") if path.is_file()
    )
