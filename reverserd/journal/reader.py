"""Read access to the journal for target consumers, the status surface and the CLI.

Readers use their own connections: WAL lets them read a consistent snapshot while the writer
commits, so tailing the journal never blocks a watch. A read-only connection is opened with
``mode=ro`` and never changes the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from reverserd.journal.model import (
    EventKind,
    JournalEvent,
    ObjectKey,
    SeedState,
    StoredObject,
    TargetPlace,
)
from reverserd.journal.writer import BUSY_TIMEOUT_MS, JOURNAL_FILE

# Bodies one read of events may bring (beyond its first event): a few large objects, or a full
# batch of ordinary ones.
READ_BATCH_BYTES = 8 * 2**20
# Objects one page of a snapshot brings: memory stays that of a page however many objects a
# snapshot has.
SNAPSHOT_PAGE_OBJECTS = 1000

EVENT_COLUMNS = (
    "seq, stream, kind, api_group, api_version, resource, namespace, name, uid,"
    " resource_version, username, journaled_at, body"
)


def event_from_row(row: Sequence[Any]) -> JournalEvent:
    body = row[12]
    return JournalEvent(
        seq=row[0],
        stream=row[1],
        kind=EventKind(row[2]),
        api_group=row[3],
        api_version=row[4],
        resource=row[5],
        namespace=row[6],
        name=row[7],
        uid=row[8],
        resource_version=row[9],
        username=row[10],
        journaled_at=row[11],
        body=None if body is None else json.loads(body),
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot being read (:meth:`JournalReader.snapshot_pages`): its objects are the
    journal's state after ``seq``; ``pages`` yields them, ordered by type, namespace, name."""

    seq: int
    pages: AsyncIterator[list[StoredObject]]


@dataclass(frozen=True, slots=True)
class StreamRow:
    stream: str
    api_group: str
    api_version: str
    resource: str
    kind: str
    namespaced: bool
    namespace: str
    resource_version: str | None
    seed_state: SeedState
    seeded_at: float | None
    relists: int


@dataclass(frozen=True, slots=True)
class CursorRow:
    target: str
    seq: int
    covered: dict[str, int]
    updated_at: float | None


class JournalReader:
    """A reading connection to ``<state-dir>/journal.db``."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection

    @classmethod
    async def open(cls, state_dir: Path, read_only: bool = False) -> JournalReader:
        path = state_dir / JOURNAL_FILE
        if read_only:
            if not path.exists():
                raise FileNotFoundError(f"no journal at {path}")
            connection = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True)
        else:
            connection = await aiosqlite.connect(path)
        await connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return cls(connection)

    async def close(self) -> None:
        await self.connection.close()

    async def last_seq(self) -> int:
        rows = await self.connection.execute_fetchall("SELECT COALESCE(MAX(seq), 0) FROM events")
        return int(next(iter(rows))[0])

    async def events_after(
        self, seq: int, limit: int, max_bytes: int = READ_BATCH_BYTES
    ) -> list[JournalEvent]:
        """Up to ``limit`` events after ``seq``, and no more than ``max_bytes`` of bodies
        (at least one event): a backlog of large objects is read in slices, so neither memory
        nor the decoding stalls. Bodies are decoded off the event loop."""
        rows = await self.connection.execute_fetchall(
            f"SELECT {EVENT_COLUMNS} FROM (SELECT *, SUM(COALESCE(length(body), 0))"
            " OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) AS read_bytes FROM events"
            " WHERE seq > ? ORDER BY seq LIMIT ?)"
            " WHERE read_bytes - COALESCE(length(body), 0) < ? ORDER BY seq",
            (seq, limit, max_bytes),
        )
        return await asyncio.to_thread(lambda: [event_from_row(row) for row in rows])

    async def change_managers(self, first: int, last: int) -> dict[int, list[str]]:
        """The field managers of each change from seq ``first`` to ``last`` that names them
        (``event_origins.managers``); a change without an entry has none known."""
        rows = await self.connection.execute_fetchall(
            "SELECT seq, managers FROM event_origins"
            " WHERE seq BETWEEN ? AND ? AND managers IS NOT NULL",
            (first, last),
        )
        return {int(seq): list(json.loads(managers)) for seq, managers in rows}

    async def event(self, seq: int) -> JournalEvent | None:
        rows = list(
            await self.connection.execute_fetchall(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?", (seq,)
            )
        )
        return event_from_row(rows[0]) if rows else None

    async def latest_event(self, key: ObjectKey) -> JournalEvent | None:
        """The event holding the object's current state, or None when it does not exist."""
        rows = list(
            await self.connection.execute_fetchall(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE seq = (SELECT seq FROM objects"
                " WHERE api_group = ? AND resource = ? AND namespace = ? AND name = ?)",
                (key.api_group, key.resource, key.namespace, key.name),
            )
        )
        return event_from_row(rows[0]) if rows else None

    @contextlib.asynccontextmanager
    async def snapshot_pages(
        self,
        kinds: Iterable[tuple[str, str]],
        page_objects: int = SNAPSHOT_PAGE_OBJECTS,
        page_bytes: int = READ_BATCH_BYTES,
    ) -> AsyncIterator[Snapshot]:
        """The current objects of the given (api_group, resource) pairs, in pages.

        Everything read inside the ``async with`` is one read transaction: the pages together
        are exactly the state after :attr:`Snapshot.seq`, however long reading them takes
        (the writer goes on meanwhile; WAL keeps the older state for this reader). A page holds
        at most ``page_objects`` objects, and ends with the object whose body takes it past
        ``page_bytes``.
        """
        wanted = sorted(set(kinds))
        await self.connection.execute("BEGIN")
        try:
            seq = await self.last_seq()
            yield Snapshot(seq, self._object_pages(wanted, page_objects, page_bytes))
        finally:
            await self.connection.execute("COMMIT")

    async def _object_pages(
        self, wanted: Sequence[tuple[str, str]], page_objects: int, page_bytes: int
    ) -> AsyncIterator[list[StoredObject]]:
        for api_group, resource in wanted:
            after = ("", "")
            while True:
                rows = await self.connection.execute_fetchall(
                    "SELECT namespace, name, api_version, uid, resource_version, seq, body FROM"
                    " (SELECT o.namespace, o.name, o.api_version, o.uid, o.resource_version,"
                    " o.seq, e.body, SUM(COALESCE(length(e.body), 0)) OVER (ORDER BY"
                    " o.namespace, o.name ROWS UNBOUNDED PRECEDING) AS read_bytes FROM objects o"
                    " JOIN events e ON e.seq = o.seq WHERE o.api_group = ? AND o.resource = ?"
                    " AND (o.namespace, o.name) > (?, ?) ORDER BY o.namespace, o.name LIMIT ?)"
                    " WHERE read_bytes - COALESCE(length(body), 0) < ? ORDER BY namespace, name",
                    (api_group, resource, *after, page_objects, page_bytes),
                )
                if not rows:
                    break
                page = [
                    StoredObject(
                        ObjectKey(api_group, resource, namespace, name), version, uid, rv, seq, body
                    )
                    for namespace, name, version, uid, rv, seq, body in rows
                ]
                yield page
                last = page[-1].key
                after = (last.namespace, last.name)

    async def streams(self) -> list[StreamRow]:
        rows = await self.connection.execute_fetchall(
            "SELECT stream, api_group, api_version, resource, kind, namespaced, namespace,"
            " resource_version, seed_state, seeded_at, relists FROM streams ORDER BY stream"
        )
        return [
            StreamRow(
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                bool(row[5]),
                row[6],
                row[7],
                SeedState(row[8]),
                row[9],
                row[10],
            )
            for row in rows
        ]

    async def cursors(self) -> list[CursorRow]:
        rows = await self.connection.execute_fetchall(
            "SELECT target, seq, covered, updated_at FROM cursors ORDER BY target"
        )
        return [CursorRow(row[0], row[1], json.loads(row[2]), row[3]) for row in rows]

    async def cursor(self, target: str) -> CursorRow | None:
        rows = await self.connection.execute_fetchall(
            "SELECT target, seq, covered, updated_at FROM cursors WHERE target = ?", (target,)
        )
        return next((CursorRow(r[0], r[1], json.loads(r[2]), r[3]) for r in rows), None)

    async def target_place(self, target: str) -> TargetPlace | None:
        """Where ``target``'s cursor and records were written; None before it first started."""
        rows = await self.connection.execute_fetchall(
            "SELECT remote, provider, path FROM target_places WHERE target = ?", (target,)
        )
        return next((TargetPlace(*row) for row in rows), None)

    async def journaled_targets(self) -> set[str]:
        """Every target that has anything in the journal: a cursor, a place, records."""
        rows = await self.connection.execute_fetchall(
            "SELECT target FROM cursors UNION SELECT target FROM target_places"
            " UNION SELECT DISTINCT target FROM target_files"
            " UNION SELECT DISTINCT target FROM quarantine"
        )
        return {row[0] for row in rows}

    async def lag(self, seq: int) -> tuple[int, float | None]:
        """Events after ``seq``, and when the oldest of them was journaled (None: no lag)."""
        rows = await self.connection.execute_fetchall(
            "SELECT COUNT(*), MIN(journaled_at) FROM events WHERE seq > ?", (seq,)
        )
        count, oldest = next(iter(rows))
        return int(count), oldest

    async def target_files(self, target: str) -> dict[ObjectKey, tuple[str, str]]:
        """What a target wrote: object -> (path, content hash)."""
        rows = await self.connection.execute_fetchall(
            "SELECT api_group, resource, namespace, name, path, content_sha FROM target_files"
            " WHERE target = ?",
            (target,),
        )
        return {ObjectKey(r[0], r[1], r[2], r[3]): (r[4], r[5]) for r in rows}

    async def quarantined(self, target: str) -> dict[ObjectKey, str]:
        """Objects a target cannot write, and why."""
        rows = await self.connection.execute_fetchall(
            "SELECT api_group, resource, namespace, name, reason FROM quarantine WHERE target = ?",
            (target,),
        )
        return {ObjectKey(r[0], r[1], r[2], r[3]): r[4] for r in rows}

    async def stats(self) -> dict[str, int]:
        """Row counts, sequence range and file size: what ``journal stats`` and metrics show."""
        counts: dict[str, int] = {}
        tables = ("events", "objects", "streams", "cursors", "target_files", "attribution_facts")
        for table in tables:
            rows = await self.connection.execute_fetchall(f"SELECT COUNT(*) FROM {table}")
            counts[table] = int(next(iter(rows))[0])
        rows = await self.connection.execute_fetchall(
            "SELECT COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM events"
        )
        first, last = next(iter(rows))
        counts["first_seq"], counts["last_seq"] = int(first), int(last)
        rows = await self.connection.execute_fetchall(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
        )
        counts["database_bytes"] = int(next(iter(rows))[0])
        return counts
