"""Attribution facts in the journal database: durable before a webhook answers, kept while needed.

Facts are written by the webhook process (:mod:`reverserd.attribution.webhook_process`) on a
connection of its own, in group commits: a fact a webhook acknowledged is committed, and a
restart between the fact and its watch event loses nothing. The same writer stores the facts
the other replicas of a sharded group forward (:mod:`reverserd.attribution.peers`), each once
however often it is sent. The daemon's journal writer stays the only writer of everything
else, and removes facts no event can need any more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import aiosqlite

from reverserd.attribution.facts import Fact
from reverserd.journal import JournalWriter
from reverserd.journal.writer import BUSY_TIMEOUT_MS, JOURNAL_FILE

FACT_COLUMNS = (
    "source, operation, api_group, resource, namespace, name, uid, resource_version,"
    " prior_resource_version, digest, username, groups, request_uid, received_at,"
    " origin, origin_id"
)
_INSERT = (
    f"INSERT INTO attribution_facts ({FACT_COLUMNS})"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# A forwarded fact already stored (a retry whose answer was lost, a peer resending after its
# restart) is stored once: the unique index on its origin and origin id ignores the repeat.
_INSERT_FORWARDED = _INSERT.replace("INSERT INTO", "INSERT OR IGNORE INTO", 1)
# How much earlier than its event a fact may have been received and still be needed: an
# admission fact precedes its event by the request's duration, which the API server bounds
# far below this.
FACT_LEAD_S = 600.0
# Facts kept at most, the oldest dropped first: a flood of facts (a forger reaching the
# admission port) costs the journal a bounded size. Every field of a fact is bounded
# (:meth:`~reverserd.attribution.facts.Fact.within_limits`: about 3.5 KiB a row at most, 4 KiB
# with its index entries), so this bounds the table to about 200 MiB even when every row is as
# large as a forger can make it; real facts are a few hundred bytes. At 500 writes/s it holds
# the facts of the last 100 s: a mirror further behind than that leaves the changes whose facts
# were dropped unresolved.
FACTS_KEPT = 50_000


async def open_fact_connection(state_dir: Path) -> aiosqlite.Connection:
    """A connection to the journal database of ``state_dir`` for :class:`FactWriter`; the
    daemon has opened (and migrated) that database before."""
    connection = await aiosqlite.connect(state_dir / JOURNAL_FILE, isolation_level=None)
    await connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    await connection.execute("PRAGMA synchronous = NORMAL")
    return connection


class FactWriter:
    """Commits facts on ``connection``; requests that arrive during a commit share the next one.

    :meth:`record` returns once its facts are committed (or raises what the commit raised);
    ``announce`` is then called with every fact that commit stored (a forwarded fact stored
    before is not stored again) and the number of older facts the commit dropped to stay
    within :data:`FACTS_KEPT`.
    """

    def __init__(
        self,
        connection: aiosqlite.Connection,
        announce: Callable[[Sequence[Fact], int], None],
        kept: int = FACTS_KEPT,
    ) -> None:
        self.kept = kept
        self.connection = connection
        self.announce = announce
        self._waiting: list[tuple[Sequence[Fact], asyncio.Future[None]]] = []
        self._writing: asyncio.Task[None] | None = None

    async def record(self, facts: Sequence[Fact]) -> None:
        if not facts:
            return
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((facts, done))
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_waiting())
        await done

    async def _write_waiting(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                facts = [fact for group, _ in batch for fact in group]
                try:
                    stored, dropped = await self._insert(facts)
                except Exception as error:
                    for _, done in batch:
                        # A waiter cancelled meanwhile (shutdown) has no one to tell.
                        if not done.done():
                            done.set_exception(error)
                    continue
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
                self.announce(stored, dropped)
        finally:
            self._writing = None

    async def _insert(self, facts: Sequence[Fact]) -> tuple[list[Fact], int]:
        """Insert ``facts`` (a forwarded one only when not stored yet) and drop the oldest
        beyond :attr:`kept`; returns the facts stored and how many were dropped."""
        received = [fact for fact in facts if fact.origin is None]
        forwarded = [fact for fact in facts if fact.origin is not None]
        stored = list(received)
        await self.connection.execute("BEGIN IMMEDIATE")
        try:
            await self.connection.executemany(_INSERT, [fact.row() for fact in received])
            if forwarded:
                stored += await self._insert_forwarded(forwarded)
            # ids grow with every insert (AUTOINCREMENT), so the lowest are the oldest; the
            # primary key makes this a range delete, whatever the table's size.
            trimmed = await self.connection.execute(
                "DELETE FROM attribution_facts"
                " WHERE id <= (SELECT MAX(id) FROM attribution_facts) - ?",
                (self.kept,),
            )
            await self.connection.execute("COMMIT")
        except BaseException:
            await self.connection.execute("ROLLBACK")
            raise
        return stored, max(trimmed.rowcount, 0)

    async def _insert_forwarded(self, facts: Sequence[Fact]) -> list[Fact]:
        """Insert forwarded ``facts`` not stored yet, inside the caller's transaction; returns
        those it stored. This connection is the table's only inserter and ids only grow, so
        the rows above the highest id before are exactly this insert's."""
        rows = await self.connection.execute_fetchall(
            "SELECT COALESCE(MAX(id), 0) FROM attribution_facts"
        )
        (highest,) = next(iter(rows))
        await self.connection.executemany(_INSERT_FORWARDED, [fact.row() for fact in facts])
        new = set(
            await self.connection.execute_fetchall(
                "SELECT origin, origin_id, received_at FROM attribution_facts"
                " WHERE id > ? AND origin IS NOT NULL",
                (highest,),
            )
        )
        return [fact for fact in facts if (fact.origin, fact.origin_id, fact.received_at) in new]


async def compact_facts(journal: JournalWriter) -> None:
    """Remove facts older than every event some target still has to commit.

    The oldest event after the lowest cursor bounds what may still be attributed; facts received
    :data:`FACT_LEAD_S` before it cannot belong to anything newer.
    """
    await journal.submit(
        lambda batch: batch.execute(
            "DELETE FROM attribution_facts WHERE received_at < COALESCE("
            "(SELECT journaled_at FROM events WHERE seq > (SELECT MIN(seq) FROM cursors)"
            " ORDER BY seq LIMIT 1), ?) - ?",
            (batch.now, FACT_LEAD_S),
        )
    )
