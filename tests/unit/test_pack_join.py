"""The packs written since a push, joined into the one pack the next push sends.

Objects are made through :class:`ObjectStore` as commits make them (blobs, trees as deltas of
their previous versions, commits), flushed as several packs, and joined with
:func:`joined_pack`; ``git index-pack --strict`` (which refuses an object twice, a broken delta
and a missing link) and ``git verify-pack`` must accept the result, and it must hold exactly
the objects made.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pygit2
import pytest
from pygit2.enums import FileMode

from reverserd.git import objects
from reverserd.git.objects import EMPTY_TREE, PACK_CHUNK, ObjectStore, Tree, joined_pack
from tests.conftest import AUTHOR, COMMITTER


def _git(cwd: Path, *arguments: str) -> str:
    done = subprocess.run(["git", *arguments], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


class _Writer:
    """Commits of one file change each on a single folder, as the committer makes them."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.folder: tuple[bytes | None, Tree] = (None, EMPTY_TREE)
        self.parent: bytes | None = None
        self.made: set[bytes] = set()

    def commit(self, name: str, content: bytes) -> bytes:
        blob = self.store.add_blob(content)
        previous, tree = self.folder
        new, first, end = tree.edited({name.encode(): (FileMode.BLOB, blob)})
        folder = self.store.add_tree(new, previous, (first, end))
        self.folder = (folder, new)
        root, _, _ = EMPTY_TREE.edited({b"live": (FileMode.TREE, folder)})
        root_id = self.store.add_tree(root, None, (0, 0))
        parents = [self.parent] if self.parent is not None else []
        self.parent = self.store.add_commit(root_id, parents, AUTHOR, COMMITTER, name)
        self.made |= {blob, folder, root_id, self.parent}
        return self.parent


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    repo = pygit2.init_repository(str(tmp_path / "clone"), bare=True)
    store = ObjectStore(repo, tmp_path / "clone" / "objects")
    store.mark_sent()
    return store


def _index_joined(store: ObjectStore, tmp_path: Path) -> tuple[Path, int, int]:
    """Write the joined pack into a fresh repository and index it strictly; (pack, length
    announced, pieces)."""
    packs = store.unsent_packs()
    assert packs is not None
    length, pieces = joined_pack(packs)
    target = tmp_path / "target.git"
    _git(tmp_path, "init", "--bare", "-q", str(target))
    pack = target / "objects" / "pack" / "pack-joined.pack"
    count = 0
    with pack.open("wb") as out:
        for piece in pieces:
            assert len(piece) <= PACK_CHUNK
            out.write(piece)
            count += 1
    _git(target, "index-pack", "--strict", str(pack))
    _git(target, "verify-pack", str(pack.with_suffix(".idx")))
    return pack, length, count


def test_packs_of_several_flushes_join_into_one_pack_git_accepts_strictly(
    store: ObjectStore, tmp_path: Path
) -> None:
    writer = _Writer(store)
    for number in range(40):
        writer.commit(f"f{number % 7}.yaml", b"v%d\n" % number)
        if number % 13 == 12:
            store.flush()
    # The same content and the same folder again, after their pack was written: kept once.
    writer.commit("f0.yaml", b"v0\n")
    writer.commit("f0.yaml", b"v35\n")
    store.flush()
    # And the same commit (a replay on the same parent, within the same second).
    commit = pygit2.Repository(str(tmp_path / "clone"))[pygit2.Oid(raw=writer.parent)]
    assert writer.parent is not None
    again = store.add_commit(
        commit.tree_id.raw, [p.raw for p in commit.parent_ids], AUTHOR, COMMITTER, "f0.yaml"
    )
    assert again == writer.parent
    store.flush()
    packs = store.unsent_packs()
    assert packs is not None and len(packs) == 4  # the repeated commit was not written again

    pack, length, _ = _index_joined(store, tmp_path)

    assert pack.stat().st_size == length
    joined = pygit2.Repository(str(tmp_path / "target.git"))
    assert {oid.raw for oid in joined.odb} == writer.made
    assert writer.parent is not None
    assert joined[pygit2.Oid(raw=writer.parent)].message == "f0.yaml"
    _git(tmp_path / "target.git", "fsck", "--strict", "--no-dangling", writer.parent.hex())


def test_a_large_pack_is_sent_in_bounded_pieces(store: ObjectStore, tmp_path: Path) -> None:
    writer = _Writer(store)
    noise = random.Random(7)
    for number in range(30):
        writer.commit(f"big{number}.yaml", noise.randbytes(20_000))
    store.flush()

    pack, length, pieces = _index_joined(store, tmp_path)

    assert pack.stat().st_size == length > 4 * PACK_CHUNK
    assert pieces > 4


def test_mark_sent_starts_afresh_and_forget_sent_stops_keeping_packs(
    store: ObjectStore, tmp_path: Path
) -> None:
    writer = _Writer(store)
    writer.commit("a.yaml", b"a\n")
    store.flush()
    store.mark_sent()
    assert store.unsent_packs() == []
    writer.commit("a.yaml", b"a\n")  # an object the remote has now: written again, once
    writer.commit("b.yaml", b"b\n")
    store.flush()
    packs = store.unsent_packs()
    assert packs is not None and len(packs) == 1
    store.forget_sent()
    assert store.unsent_packs() is None
    assert packs[0].closed
    writer.commit("c.yaml", b"c\n")
    store.flush()
    assert store.unsent_packs() is None


def test_joining_refuses_a_file_that_is_not_a_pack(tmp_path: Path) -> None:
    other = tmp_path / "not-a-pack"
    other.write_bytes(b"PACX" + bytes(40))
    with other.open("rb") as stream, pytest.raises(ValueError, match="not a pack"):
        joined_pack([stream])


@pytest.mark.parametrize(("limit", "value"), [("UNSENT_PACK_LIMIT", 2), ("UNSENT_OBJECT_LIMIT", 9)])
def test_past_its_bounds_the_store_lets_the_packs_go(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch, limit: str, value: int
) -> None:
    """A long outage: the packs and the IDs kept for the next push stay bounded."""
    monkeypatch.setattr(objects, limit, value)
    writer = _Writer(store)
    for number in range(2):
        writer.commit(f"f{number}.yaml", b"%d\n" % number)  # 4 objects
        store.flush()
    kept = store.unsent_packs()
    assert kept is not None and len(kept) == 2
    writer.commit("f2.yaml", b"2\n")
    store.flush()
    assert store.unsent_packs() is None
    assert all(pack.closed for pack in kept)
