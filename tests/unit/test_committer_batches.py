"""A batch the branch cannot hold whole: no write dropped on the way keeps its record.

Real parts only: a :class:`Committer` with its Git thread and journal, a clone of a bare
repository reached through file://, and a person's commits made on that repository.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pygit2

from reverserd.committer.committer import Submission
from reverserd.git import FileChange
from reverserd.journal import JournalWriter, ObjectKey
from testbed.gitservers import commit_files
from tests.conftest import AUTHOR
from tests.unit.test_committer_stop import committer_on

KEPT = ObjectKey("", "configmaps", "ns", "kept")
BLOCKED = ObjectKey("", "configmaps", "ns", "blocked")


async def test_a_write_the_rebuild_drops_from_the_same_batch_loses_its_record(
    tmp_path: Path,
) -> None:
    remote_path = tmp_path / "remote.git"
    remote = pygit2.init_repository(str(remote_path), bare=True, initial_head="main")
    # A person's file where the second write needs a folder, there from the start.
    commit_files(remote, "main", {"blocked": b"notes\n"}, "notes", AUTHOR)
    journal = await JournalWriter.open(tmp_path / "state")
    committer = committer_on(tmp_path / "clone", remote_path.as_uri(), journal)
    run = asyncio.create_task(committer.run())
    held: dict[ObjectKey, str] = {}
    second_held = asyncio.Event()

    def quarantined(found: Mapping[ObjectKey, str]) -> None:
        held.update(found)
        if BLOCKED in found:
            second_held.set()

    try:
        await asyncio.wait_for(committer.ready.wait(), timeout=30)
        # After the clone's fetch, the person also puts a file where the first write needs a
        # folder: only a rebuild on the remote's tip learns of it.
        commit_files(remote, "main", {"x": b"more notes\n"}, "more notes", AUTHOR)
        first = Submission(
            "ns/t", 1, {}, [FileChange("x/kept.yaml", b"a\n")], "kept\n",
            records=[(KEPT, "x/kept.yaml", "h1")], on_quarantined=quarantined,
        )  # fmt: skip
        second = Submission(
            "ns/t", 2, {}, [FileChange("blocked/b.yaml", b"b\n")], "blocked\n",
            records=[(BLOCKED, "blocked/b.yaml", "h2")], on_quarantined=quarantined,
        )  # fmt: skip
        # Handed over together: one batch.
        await committer.submit(first)
        await committer.submit(second)
        await asyncio.wait_for(second_held.wait(), timeout=30)
        assert KEPT in held, held
        assert first.records == [] and KEPT in first.quarantine
        assert second.records == [] and BLOCKED in second.quarantine
    finally:
        run.cancel()
        try:
            await run
        except asyncio.CancelledError:
            pass
        await journal.close()
