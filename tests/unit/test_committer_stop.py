"""A committer that stops tells every caller still queued on its Git thread why.

Real parts only: a :class:`Committer` with its real Git thread and journal, a clone of a bare
repository reached through file://. The Git thread is held busy by a call that waits for the
test, so a consumer's call is still queued when the committer stops, deterministically.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pygit2
import pytest

from reverserd.committer.committer import Committer, CommitterStopped, PushPolicy
from reverserd.config.status import StatusBoard
from reverserd.git import BranchRepository
from reverserd.journal import JournalWriter
from reverserd.supervise import supervise


def committer_on(clone: Path, url: str, journal: JournalWriter) -> Committer:
    """A committer (not running yet) of branch main of ``url``, its clone at ``clone``."""

    async def connect() -> BranchRepository:
        return BranchRepository(clone, url, "main")

    async def proved_write_access() -> None:
        pass

    return Committer(
        f"{url}#main",
        asyncio.Lock(),
        connect,
        journal,
        StatusBoard(),
        ("reverserd", "reverserd@example.com"),
        PushPolicy(1.0, 10),
        lambda: [],
        proved_write_access,
    )


async def test_a_call_queued_when_the_committer_stops_gets_committer_stopped(
    tmp_path: Path,
) -> None:
    journal = await JournalWriter.open(tmp_path / "state")
    try:
        remote = tmp_path / "remote.git"
        pygit2.init_repository(str(remote), bare=True, initial_head="main")
        committer = committer_on(tmp_path / "clone", remote.as_uri(), journal)
        run = asyncio.create_task(committer.run())
        await committer.ready.wait()
        started, release = threading.Event(), threading.Event()

        def hold_the_thread() -> bool:
            started.set()
            return release.wait(30)

        busy = asyncio.create_task(committer.on_git_thread(hold_the_thread))
        assert await asyncio.to_thread(started.wait, 30)
        queued = asyncio.create_task(committer.list_files(""))
        await asyncio.sleep(0)  # queued behind the held thread
        run.cancel()  # the committer stops (cancelled or failed: the same _stop)
        with pytest.raises(asyncio.CancelledError):
            await run
        release.set()
        assert await busy is True  # the call in flight ends as it would
        with pytest.raises(CommitterStopped):
            await queued
    finally:
        await journal.close()


async def test_a_supervised_task_whose_awaited_future_was_cancelled_is_restarted() -> None:
    runs = 0

    async def work() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            # Someone else cancels a future this task waits for: not a stop of this task.
            future = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(future.cancel)
            await future

    failures: list[BaseException] = []
    await asyncio.wait_for(supervise("test", work, failures.append), timeout=10)
    assert runs == 2
    assert [type(error) for error in failures] == [asyncio.CancelledError]


async def test_a_supervised_task_cancelled_by_its_owner_stops() -> None:
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(supervise("test", work))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
