"""A clone that lost a pack heals: the committer finds it damaged and clones the branch afresh.

Real parts only: bare repositories reached through file://, a real :class:`Committer` with its
Git thread and journal. The fault is real too: a pack file deleted from the clone on disk.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pygit2
import pytest

from reverserd.git import BranchRepository, CloneDamaged, FileChange
from reverserd.journal import JournalWriter
from tests.conftest import AUTHOR, COMMITTER
from tests.unit.test_committer_stop import committer_on


def clone_with_pushes(tmp_path: Path, count: int = 3) -> tuple[Path, str]:
    """A clone that pushed ``count`` commits (one pack each) to a bare remote; (clone, url)."""
    remote = tmp_path / "remote.git"
    pygit2.init_repository(str(remote), bare=True, initial_head="main")
    repository = BranchRepository(tmp_path / "clone", remote.as_uri(), "main")
    repository.open()
    for index in range(count):
        change = FileChange(f"live/f{index}.yaml", f"v{index}\n".encode())
        repository.apply([change], f"c{index}\n", AUTHOR, COMMITTER)
        repository.push()
    return tmp_path / "clone", remote.as_uri()


def remove_oldest_pack(clone: Path) -> None:
    packs = sorted((clone / "objects" / "pack").glob("*.pack"), key=lambda p: p.stat().st_mtime)
    assert len(packs) >= 2, packs
    packs[0].unlink()
    packs[0].with_suffix(".idx").unlink()


def test_a_clone_missing_a_pack_is_found_damaged(tmp_path: Path) -> None:
    clone, url = clone_with_pushes(tmp_path)
    sound = BranchRepository(clone, url, "main")
    sound.open()
    sound.verify()
    remove_oldest_pack(clone)
    damaged = BranchRepository(clone, url, "main")
    damaged.open()
    with pytest.raises(CloneDamaged):
        damaged.verify()


async def test_a_committer_opening_a_damaged_clone_clones_it_again(tmp_path: Path) -> None:
    # BranchRepository refuses to run on the event loop: the set-up runs beside it.
    clone, url = await asyncio.to_thread(clone_with_pushes, tmp_path)
    remote_tip = pygit2.Repository(str(tmp_path / "remote.git")).references["refs/heads/main"]
    before = str(remote_tip.target)
    remove_oldest_pack(clone)
    journal = await JournalWriter.open(tmp_path / "state")

    committer = committer_on(clone, url, journal)
    run = asyncio.create_task(committer.run())
    try:
        await asyncio.wait_for(committer.ready.wait(), timeout=30)
        assert await committer.read("live/f0.yaml") == b"v0\n"
        assert await committer.list_files("live") == [f"live/f{i}.yaml" for i in range(3)]
        remote = pygit2.Repository(str(tmp_path / "remote.git"))
        assert str(remote.references["refs/heads/main"].target) == before
    finally:
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        await journal.close()
