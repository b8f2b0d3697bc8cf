"""Facts are committed for every waiter, whatever happened to another waiter of the same commit.

A real journal database (migrated by the journal writer) and a real connection.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from reverserd.attribution.facts import Fact
from reverserd.attribution.store import FactWriter, open_fact_connection
from reverserd.journal import JournalWriter


def fact(name: str) -> Fact:
    return Fact(
        "admission", "UPDATE", "", "configmaps", "ns", name, "u1", None, "1", None,
        "jane", ("team",), None, 0.0,
    )  # fmt: skip


async def test_a_waiter_cancelled_during_a_commit_does_not_stop_the_others(tmp_path: Path) -> None:
    journal = await JournalWriter.open(tmp_path)
    connection = await open_fact_connection(tmp_path)
    announced: list[str] = []
    writer = FactWriter(connection, lambda facts, dropped: announced.extend(f.name for f in facts))
    try:
        first = asyncio.create_task(writer.record([fact("first")]))
        await asyncio.sleep(0)  # the first commit is under way
        cancelled = asyncio.create_task(writer.record([fact("cancelled")]))
        waiting = asyncio.create_task(writer.record([fact("waiting")]))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.wait_for(asyncio.gather(first, waiting), timeout=10)
        assert "waiting" in announced
        rows = await connection.execute_fetchall("SELECT name FROM attribution_facts")
        assert {row[0] for row in rows} == {"first", "cancelled", "waiting"}
    finally:
        await connection.close()
        await journal.close()
