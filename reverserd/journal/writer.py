"""The journal's writer: every watch event is appended here before anything else happens.

It writes every table but one: rows of ``attribution_facts`` are appended by the webhook
process (:mod:`reverserd.attribution.webhook_process`) on its own connection; this writer only
deletes old ones and keeps no index of them.

Group commits, pipelined
    Watchers, consumers and the compactor hand operations to one writer task. It takes whatever
    is queued (up to :data:`MAX_OPS_PER_COMMIT` operations, or until :data:`EVENTS_PER_COMMIT`
    events) and applies it in one SQLite transaction, so a burst of thousands of events costs a
    handful of commits, and a caller's ``await`` returns only once its operation is durable.
    Each transaction is handed to SQLite's thread before the event loop builds the next batch,
    so the two overlap instead of taking turns.

Resume points travel with their events (SPEC 5.1)
    A watch's resourceVersion is written in the same transaction as the events it covers. A crash
    loses either both or neither, and a lost tail is simply delivered again by the API server when
    the watch resumes from the older resourceVersion.

Durability
    WAL with ``synchronous=NORMAL``: a killed process loses nothing that was committed; a power
    cut may lose the newest transactions, and with them their resume points, so the watch resumes
    earlier and the events come again. Nothing is lost either way, and commits stay cheap.
    The writer's own commits never checkpoint the WAL: a passive checkpoint runs on a
    connection and thread of its own once about :data:`CHECKPOINT_AFTER_BYTES` were committed,
    so the writer never waits for the database file's writes and fsync.

Event kinds
    The writer keeps an in-memory index of the ``objects`` table (identity, uid, resourceVersion)
    and derives each event's kind from it: an object it has never seen is a CREATE, a new
    resourceVersion is an UPDATE, a new uid under a known name is a DELETE followed by a CREATE,
    and an object that is gone *or has a deletionTimestamp* is a DELETE (its later final removal is
    then a no-op). Deduplicating here is what makes a re-seed idempotent.

The ``objects`` table follows the events
    SQLite triggers on ``events`` (migration ``0008``) keep ``objects`` equal to the writer's
    index: a CREATE or UPDATE upserts its object's row, pointing at the event, and a DELETE
    removes it, in the statement that inserts the event. No other path writes ``objects``.

Rows as bound values, a few statements per batch
    A batch's events (and their ``event_origins`` rows) reach SQLite as multi-row ``INSERT ...
    VALUES`` statements of up to :data:`ROWS_PER_STATEMENT` rows, every column a bound value:
    SQLite then inserts hundreds of rows, and runs the triggers, in one step that does not hold
    the interpreter lock, while the event loop builds the next batch; and nothing is parsed on
    the way (columns passed as JSON cost SQLite more to read than the rows cost to insert).

No plaintext Secrets (SPEC 5.3)
    Secret bodies are reduced to metadata before they reach SQL; see :func:`journal_body`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import aiosqlite
import orjson

from reverserd.journal.migrations import migrate
from reverserd.journal.model import EventKind, ObjectKey, SeedState, StreamSpec, TargetPlace
from reverserd.journal.origin import digest, newest_write
from reverserd.kube.resources import ResourceType

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.db"
# Enough to turn a burst into a few transactions; small enough that one transaction stays
# well under a second and other callers are not starved.
MAX_OPS_PER_COMMIT = 256
# Events a batch stops taking further operations at: a burst then spans several transactions,
# and SQLite writes one while the event loop builds the next (a commit costs no fsync in WAL
# with synchronous=NORMAL), instead of the two taking turns on one large transaction.
EVENTS_PER_COMMIT = 1_000
# A writer that cannot keep up slows the watchers down instead of growing memory without bound.
QUEUE_DEPTH = 1024
# Without a busy timeout a reader's checkpoint would make a write fail instead of wait.
BUSY_TIMEOUT_MS = 10_000
# Page size of a new journal.
PAGE_SIZE = 16_384
# What the writer's transactions add to the WAL before it is checkpointed (on a connection and
# thread of its own): about SQLite's own default of 1,000 pages, at the journal's page size.
CHECKPOINT_AFTER_BYTES = 1_000 * PAGE_SIZE
# What an event adds to the WAL besides its body, in this estimate: its columns, its objects
# entry, its origin.
EVENT_OVERHEAD_BYTES = 256
# Bodies bound to one INSERT statement at most: SQLite copies every bound value, so this is
# memory held for the statement's duration.
MAX_STATEMENT_BODY_BYTES = 16 * 2**20
# Rows of one INSERT statement at most; fewer rows go in statements of powers of two, so a
# handful of statement texts (each prepared once and cached) serve every batch.
ROWS_PER_STATEMENT = 256

# One row per 12 bound values; the body is bound as the bytes of its JSON and stored as TEXT.
EVENTS_INSERT = (
    "INSERT INTO events (seq, stream, kind, api_group, api_version, resource, namespace, name,"
    " uid, resource_version, journaled_at, body) VALUES "
)
EVENTS_ROW = "(?,?,?,?,?,?,?,?,?,?,?,CAST(? AS TEXT))"
EVENTS_WIDTH = 12
ORIGINS_INSERT = (
    "INSERT INTO event_origins (seq, manager, prior_resource_version, digest, managers) VALUES "
)
ORIGINS_ROW = "(?,?,?,?,?)"
ORIGINS_WIDTH = 5


@functools.cache
def _insert_sql(head: str, row: str, rows: int) -> str:
    return head + ",".join([row] * rows)


def insert_statements(
    head: str, row: str, width: int, values: list[Any]
) -> list[tuple[str, list[Any]]]:
    """``(sql, parameters)`` inserting the rows of ``values`` (``width`` values a row) in order:
    statements of :data:`ROWS_PER_STATEMENT` rows, then of the powers of two that remain."""
    statements: list[tuple[str, list[Any]]] = []
    done, rows = 0, len(values) // width
    while done < rows:
        count = min(ROWS_PER_STATEMENT, 1 << ((rows - done).bit_length() - 1))
        parameters = values[done * width : (done + count) * width]
        statements.append((_insert_sql(head, row, count), parameters))
        done += count
    return statements


WatchType = Literal["ADDED", "MODIFIED", "DELETED"]
# Bodies are plain JSON from the API server: no cycles to check for, and UTF-8 is stored as is.
# orjson encodes them in a fraction of the standard library's time (encoding is the largest part
# of building a batch); it refuses integers beyond 64 bits and lone surrogates, which the
# standard library encoder still takes.
_FALLBACK_ENCODER = json.JSONEncoder(
    separators=(",", ":"), check_circular=False, ensure_ascii=False
)
T = TypeVar("T")

# Fields of a Secret that may hold secret values, and the annotation kubectl copies them into.
SECRET_VALUE_FIELDS = ("data", "stringData")
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def encode_body(body: dict[str, Any]) -> bytes:
    """Compact JSON of ``body`` in UTF-8, as the journal stores it.

    A lone surrogate (which JSON can carry as an escape, but UTF-8 cannot hold) stays escaped.
    """
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        text = _FALLBACK_ENCODER.encode(body)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":"), check_circular=False).encode()


def is_secret(api_group: str, resource: str) -> bool:
    return api_group == "" and resource == "secrets"


def journal_body(api_group: str, resource: str, body: dict[str, Any]) -> dict[str, Any]:
    """What of an object the journal stores.

    ``managedFields`` is dropped everywhere: it is large, changes on every write and never
    reaches Git. A Secret keeps only its metadata and type: no value of it, and not the
    last-applied annotation that can hold its values, is ever written to disk by the journal.
    """
    metadata = dict(body.get("metadata") or {})
    metadata.pop("managedFields", None)
    if is_secret(api_group, resource):
        annotations = {k: v for k, v in (metadata.get("annotations") or {}).items()}
        annotations.pop(LAST_APPLIED, None)
        if annotations:
            metadata["annotations"] = annotations
        else:
            metadata.pop("annotations", None)
        kept = {k: v for k, v in body.items() if k not in SECRET_VALUE_FIELDS}
        return {**kept, "metadata": metadata}
    return {**body, "metadata": metadata}


@dataclass(slots=True)
class IndexEntry:
    uid: str
    resource_version: str
    seq: int
    stream: str
    api_version: str


# An object's identity within its type: (namespace, name).
Ident = tuple[str, str]


class ObjectIndex:
    """The identity of every object in ``objects``, grouped by type.

    Grouped so that what a complete LIST of one type lacks is found among the objects of that
    type alone: a re-list of ten ConfigMaps in a journal of 100,000 objects of other types looks
    at ten entries, not 100,000, on the event loop. Each object is held once, under its own type,
    keyed by ``(namespace, name)``: a plain tuple, which an event builds and hashes in C.
    """

    __slots__ = ("_by_type",)

    def __init__(self) -> None:
        self._by_type: dict[tuple[str, str], dict[Ident, IndexEntry]] = {}

    def of_type(self, api_group: str, resource: str) -> dict[Ident, IndexEntry]:
        """The entries of one type by ``(namespace, name)``; changing it changes the index."""
        entries = self._by_type.get((api_group, resource))
        if entries is None:
            entries = self._by_type[(api_group, resource)] = {}
        return entries


@dataclass(slots=True)
class SeedSession:
    """A LIST in progress for one stream; what it saw decides what the seed deletes."""

    stream: StreamSpec
    seen: set[Ident] = field(default_factory=set)
    """``(namespace, name)`` of every listed object that is not being deleted."""


class _Statement:
    """Rows of events (and of their origins) bound to INSERT statements, flat: a row is
    :data:`EVENTS_WIDTH` (:data:`ORIGINS_WIDTH`) consecutive values; its bodies hold at most
    :data:`MAX_STATEMENT_BODY_BYTES`, unless one body alone is larger."""

    __slots__ = ("events", "origins", "size")

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.size = 0
        self.origins: list[Any] = []


class _Batch:
    """Statements of one group commit, computed against the in-memory index."""

    def __init__(self, writer: JournalWriter) -> None:
        self.writer = writer
        self.inserts: list[_Statement] = [_Statement()]
        self.statements: list[tuple[str, Sequence[Any] | Iterable[Sequence[Any]], bool]] = []
        self.now = time.time()
        self.first_seq = writer.next_seq
        self.last_seq = 0

    def wal_bytes(self) -> int:
        """About what writing this batch adds to the WAL."""
        events = self.last_seq - self.first_seq + 1
        return sum(insert.size for insert in self.inserts) + events * EVENT_OVERHEAD_BYTES

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.statements.append((sql, params, False))

    def execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.statements.append((sql, rows, True))

    def event(
        self,
        stream: StreamSpec,
        kind: EventKind,
        namespace: str = "",
        name: str = "",
        uid: str | None = None,
        resource_version: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> int:
        seq = self.writer.next_seq
        self.writer.next_seq = seq + 1
        insert = self.inserts[-1]
        data = None if body is None else encode_body(body)
        if data is not None:
            if insert.size + len(data) > MAX_STATEMENT_BODY_BYTES and insert.events:
                insert = _Statement()
                self.inserts.append(insert)
            insert.size += len(data)
        insert.events.extend(
            (
                seq,
                stream.key,
                kind.value,
                stream.api_group,
                stream.api_version,
                stream.resource,
                namespace,
                name,
                uid,
                resource_version,
                self.now,
                data,
            )
        )
        return seq

    def observe(
        self,
        stream: StreamSpec,
        watch_type: WatchType,
        body: dict[str, Any],
        continuous: bool = True,
    ) -> None:
        """Journal one state of an object; ``continuous`` when the watch saw every change of it."""
        metadata = body.get("metadata") or {}
        namespace = metadata.get("namespace", "")
        name = metadata["name"]
        ident = (namespace, name)
        uid = str(metadata.get("uid", ""))
        version = str(metadata.get("resourceVersion", ""))
        entries = self.writer.index.of_type(stream.api_group, stream.resource)
        known = entries.get(ident)
        if watch_type == "DELETED" or metadata.get("deletionTimestamp"):
            if known is not None:
                stored = journal_body(stream.api_group, stream.resource, body)
                seq = self.event(stream, EventKind.DELETE, namespace, name, uid, version, stored)
                before = known.resource_version if continuous else None
                self.origin(stream, seq, None, [], before, body)
                del entries[ident]
            return
        if known is not None and known.uid != uid:
            self.event(stream, EventKind.DELETE, namespace, name, known.uid, version)
            del entries[ident]
            known = None
            # Changes between the old object and this one were missed: nothing is exact here.
            continuous = False
        if known is None:
            kind = EventKind.CREATE
        elif known.resource_version != version or known.api_version != stream.api_version:
            kind = EventKind.UPDATE
        else:
            return
        stored = journal_body(stream.api_group, stream.resource, body)
        seq = self.event(stream, kind, namespace, name, uid, version, stored)
        if continuous:
            prior: str | None = "" if known is None else known.resource_version
        else:
            prior = None
        manager, managers = newest_write(body)
        self.origin(stream, seq, manager, managers, prior, body)
        entries[ident] = IndexEntry(uid, version, seq, stream.key, stream.api_version)

    def origin(
        self,
        stream: StreamSpec,
        seq: int,
        manager: str | None,
        managers: list[str],
        prior: str | None,
        body: dict[str, Any],
    ) -> None:
        if manager is None and prior is None:
            return
        # Never a digest of a Secret: a hash of its values would be an oracle for guessing them.
        hashed = self.writer.digests and not is_secret(stream.api_group, stream.resource)
        listed = orjson.dumps(managers).decode() if manager is not None else None
        self.inserts[-1].origins.extend(
            (seq, manager, prior, digest(body) if hashed else None, listed)
        )

    def delete_unseen(self, session: SeedSession) -> None:
        """DELETE events for objects in the stream's scope that a complete LIST did not return."""
        stream = session.stream
        entries = self.writer.index.of_type(stream.api_group, stream.resource)
        gone = [ident for ident in entries if stream.covers(ident[0]) and ident not in session.seen]
        for namespace, name in sorted(gone):
            entry = entries.pop((namespace, name))
            self.event(stream, EventKind.DELETE, namespace, name, entry.uid, entry.resource_version)

    def forget_stream_objects(self, stream: StreamSpec) -> None:
        """Drop the objects the stream journaled, without an event: not evidence of deletion.

        The ``objects`` triggers follow events, so the rows go by a statement of their own; it
        runs after every event of the batch, so it spares rows of events journaled after this
        call (a seq of the batch not yet handed out)."""
        entries = self.writer.index.of_type(stream.api_group, stream.resource)
        for ident in [ident for ident, entry in entries.items() if entry.stream == stream.key]:
            del entries[ident]
        self.execute(
            "DELETE FROM objects WHERE stream = ? AND seq < ?", (stream.key, self.writer.next_seq)
        )

    def stream_resource_version(self, stream: StreamSpec, resource_version: str) -> None:
        self.execute(
            "UPDATE streams SET resource_version = ?, updated_at = ? WHERE stream = ?",
            (resource_version, self.now, stream.key),
        )


@dataclass(slots=True)
class _Operation:
    apply: Callable[[_Batch], Any]
    done: asyncio.Future[Any]


_Result = tuple[_Operation, Any, BaseException | None]


# How far (in events) a cursor may fall behind the newest event and still hold back compaction:
# about a day of a busy cluster (three changes a second), a few hundred MB of typical bodies.
# A target further behind re-syncs from the latest state instead of replaying (a reconcile
# commit), which costs one snapshot; waiting longer would only grow the disk.
MAX_CURSOR_LAG_EVENTS = 250_000


class JournalWriteFailed(Exception):
    """The transaction holding an operation was not written; its caller must retry."""


class JournalWriter:
    """Owns the single writer connection of ``<state-dir>/journal.db``.

    Start :meth:`run` in the daemon's TaskGroup; every other method only queues an operation and
    waits until the transaction that holds it has committed.
    """

    def __init__(
        self,
        connection: aiosqlite.Connection,
        path: Path,
        checkpointer: sqlite3.Connection,
    ) -> None:
        self.connection = connection
        self.path = path
        self._checkpointer = checkpointer
        self._checkpoint_thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="journal-checkpoint"
        )
        self._checkpointing: asyncio.Future[None] | None = None
        self._wal_bytes = 0
        """About what was committed to the WAL since the last checkpoint began."""
        self.index = ObjectIndex()
        self.next_seq = 1
        self._queue: asyncio.Queue[_Operation] = asyncio.Queue(QUEUE_DEPTH)
        self.committed_seq = 0
        self._appended = asyncio.Condition()
        # Bumped whenever the in-memory index is reloaded from the database.
        self._generation = 0
        self.failure: str | None = None
        """Why the last transaction failed (a full disk, an I/O error); None once one that
        changed a row succeeds. One that changed nothing (a watch re-registering its known
        stream) needs no space, so on a full disk it succeeds between failures and proves
        nothing: the journal would flap to writable while no event can be written."""
        self.on_failure_changed: Callable[[str | None], None] | None = None
        # Whether events carry a digest of their full object (only admission facts use it).
        self.digests = False
        self.resync_floor = 0
        """Events up to here may be gone whatever cursors say: a cursor below it re-syncs."""

    @classmethod
    async def open(cls, state_dir: Path) -> JournalWriter:
        path = state_dir / JOURNAL_FILE
        await asyncio.to_thread(prepare_database, path)
        connection = await aiosqlite.connect(path, isolation_level=None)
        await connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await connection.execute("PRAGMA synchronous = NORMAL")
        # The writer's commits never checkpoint: that copies pages into the database file and
        # waits for their fsync, and the next batch would wait for it. See _checkpoint.
        await connection.execute("PRAGMA wal_autocheckpoint = 0")
        checkpointer = await asyncio.to_thread(
            sqlite3.connect, path, isolation_level=None, check_same_thread=False
        )
        writer = cls(connection, path, checkpointer)
        await writer._load_index()
        return writer

    async def _load_index(self) -> None:
        """Rebuild the index from the database; swapped in at once, with no await in between."""
        rows = await self.connection.execute_fetchall(
            "SELECT api_group, resource, namespace, name, uid, resource_version, seq, stream,"
            " api_version FROM objects"
        )
        last = await self.connection.execute_fetchall(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)"
        )
        index = ObjectIndex()
        for group, resource, namespace, name, uid, version, seq, stream, api_version in rows:
            entry = IndexEntry(uid, version, seq, stream, api_version)
            index.of_type(group, resource)[(namespace, name)] = entry
        self.index = index
        self.committed_seq = int(next(iter(last))[0])
        self.next_seq = self.committed_seq + 1
        await self._load_floor()

    async def _load_floor(self) -> None:
        rows = await self.connection.execute_fetchall("SELECT seq FROM journal_floor")
        self.resync_floor = max((int(seq) for (seq,) in rows), default=0)

    async def close(self) -> None:
        if self._checkpointing is not None:
            await asyncio.wait([self._checkpointing])
        self._checkpoint_thread.shutdown()
        self._checkpointer.close()
        await self.connection.close()

    def _committed(self, batch: _Batch) -> None:
        """Start a checkpoint once the writer's commits added :data:`CHECKPOINT_AFTER_BYTES`
        to the WAL since the last one began, unless one is still running.

        It runs on a connection and a thread of its own, as SQLite's passive checkpoint: it
        copies what it can into the database file while the writer goes on appending, and
        never makes the writer wait. Its fsync is the database file's; a commit's durability
        does not depend on it (WAL, ``synchronous=NORMAL``)."""
        self._wal_bytes += batch.wal_bytes()
        if self._wal_bytes < CHECKPOINT_AFTER_BYTES:
            return
        if self._checkpointing is not None and not self._checkpointing.done():
            return
        self._wal_bytes = 0
        self._checkpointing = asyncio.get_running_loop().run_in_executor(
            self._checkpoint_thread, _checkpoint, self._checkpointer
        )

    async def run(self) -> None:
        """Apply queued operations in group commits until cancelled.

        Pipelined: while SQLite writes one transaction on aiosqlite's thread, the next batch is
        computed on the event loop. A batch computed while its predecessor failed was built on
        an index that no longer holds, so it is failed too (its callers retry from their
        stored resume points), never written.
        """
        writing: asyncio.Future[None] | None = None
        try:
            while True:
                first = await self._queue.get()
                generation = self._generation
                batch, results = self._prepare(first)
                if writing is not None:
                    await writing
                    writing = None
                    if generation != self._generation:
                        await self._abandon(results, batch)
                        continue
                writing = asyncio.ensure_future(self._finish(batch, results))
                # Let the write reach SQLite's thread before the next batch is built: the queue
                # is seldom empty under load, so the next ``get`` would not yield, and the write
                # would start only after that batch, the two taking turns instead of overlapping.
                await asyncio.sleep(0)
        finally:
            if writing is not None:
                writing.cancel()

    def _prepare(self, first: _Operation) -> tuple[_Batch, list[_Result]]:
        """Apply ``first`` and what else is queued, until the batch holds
        :data:`EVENTS_PER_COMMIT` events or :data:`MAX_OPS_PER_COMMIT` operations."""
        batch = _Batch(self)
        results: list[_Result] = []
        start = self.next_seq
        operation = first
        while True:
            try:
                results.append((operation, operation.apply(batch), None))
            except Exception as error:  # a bad operation must not take the others down
                results.append((operation, None, error))
            if (
                len(results) >= MAX_OPS_PER_COMMIT
                or self.next_seq - start >= EVENTS_PER_COMMIT
                or self._queue.empty()
            ):
                break
            operation = self._queue.get_nowait()
        batch.last_seq = self.next_seq - 1
        return batch, results

    async def _finish(self, batch: _Batch, results: list[_Result]) -> None:
        try:
            changed = await self._write(batch)
        except (sqlite3.Error, OSError) as error:
            first = self.failure is None
            self._set_failure(f"cannot write the journal {self.path}: {error}")
            # Callers retry (watches back off), so one failure is logged in full, then briefly.
            log.error(
                "journal transaction failed, reloading index: %s",
                error,
                exc_info=error if first else None,
            )
            if self.connection.in_transaction:
                await self.connection.rollback()
            await self._reload(results, error)
            return
        self._committed(batch)
        if self.failure is not None and changed:
            log.info("journal writes succeed again")
            self._set_failure(None)
        if batch.last_seq > self.committed_seq:
            self.committed_seq = batch.last_seq
            async with self._appended:
                self._appended.notify_all()
        for operation, result, failure in results:
            if operation.done.done():
                continue
            if failure is None:
                operation.done.set_result(result)
            else:
                operation.done.set_exception(failure)

    def _set_failure(self, failure: str | None) -> None:
        self.failure = failure
        if self.on_failure_changed is not None:
            self.on_failure_changed(failure)

    async def _abandon(self, results: list[_Result], batch: _Batch) -> None:
        del batch  # computed on a stale index: its rows are never written
        await self._reload(results, JournalWriteFailed("an earlier journal transaction failed"))

    async def _reload(self, results: list[_Result], error: BaseException) -> None:
        await self._load_index()
        # After the swap: a batch computed before it (on the old index) sees a new generation.
        self._generation += 1
        for operation, _, _ in results:
            if not operation.done.done():
                operation.done.set_exception(error)

    async def _write(self, batch: _Batch) -> bool:
        """Write the batch in one transaction; returns whether it changed any row.

        The whole transaction runs as one call on aiosqlite's thread: statement by statement,
        each would wait for the event loop to send the next, which it does only between
        building batches, so SQLite would sit idle while the next batch is built."""
        connection = self.connection
        changed = await connection._execute(  # type: ignore[no-untyped-call]
            _write_batch, connection._conn, batch
        )
        return bool(changed)

    async def wait_beyond(self, seq: int, patience_s: float) -> None:
        """Return once an event after ``seq`` is committed, or after ``patience_s`` seconds."""
        async with self._appended:
            try:
                async with asyncio.timeout(patience_s):
                    await self._appended.wait_for(lambda: self.committed_seq > seq)
            except TimeoutError:
                pass

    async def submit(self, apply: Callable[[_Batch], T]) -> T:
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Operation(apply, done))
        return await done

    # -- operations used by the watchers -------------------------------------------------------

    async def register_stream(self, stream: StreamSpec) -> tuple[str | None, SeedState]:
        """Create the stream's row if new; return its stored resume point and seed state."""

        def apply(batch: _Batch) -> None:
            batch.execute(
                "INSERT OR IGNORE INTO streams (stream, api_group, api_version, resource, kind,"
                " namespaced, namespace, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    stream.key,
                    stream.api_group,
                    stream.api_version,
                    stream.resource,
                    stream.rtype.kind,
                    int(stream.rtype.namespaced),
                    stream.namespace,
                    batch.now,
                ),
            )

        await self.submit(apply)
        rows = await self.connection.execute_fetchall(
            "SELECT resource_version, seed_state FROM streams WHERE stream = ?", (stream.key,)
        )
        version, state = next(iter(rows))
        return version, SeedState(state)

    async def record_changes(
        self,
        stream: StreamSpec,
        changes: Sequence[tuple[WatchType, dict[str, Any]]],
        resource_version: str | None,
    ) -> None:
        """Journal watch events and, in the same transaction, the stream's resume point."""

        def apply(batch: _Batch) -> None:
            for watch_type, body in changes:
                batch.observe(stream, watch_type, body)
            if resource_version:
                batch.stream_resource_version(stream, resource_version)

        await self.submit(apply)

    async def begin_seed(self, stream: StreamSpec, relist: bool) -> SeedSession:
        def apply(batch: _Batch) -> SeedSession:
            batch.event(stream, EventKind.SEED_BEGIN)
            batch.execute(
                "UPDATE streams SET seed_state = ?, relists = relists + ?, updated_at = ?"
                " WHERE stream = ?",
                (SeedState.SEEDING.value, int(relist), batch.now, stream.key),
            )
            return SeedSession(stream)

        return await self.submit(apply)

    async def record_seed_page(self, session: SeedSession, items: Sequence[dict[str, Any]]) -> None:
        """Journal one LIST page: CREATE/UPDATE only; deletions wait for the complete LIST."""

        def apply(batch: _Batch) -> None:
            for body in items:
                metadata = body.get("metadata") or {}
                if not metadata.get("deletionTimestamp"):
                    session.seen.add((metadata.get("namespace", ""), metadata["name"]))
                batch.observe(session.stream, "ADDED", body, continuous=False)

        await self.submit(apply)

    async def finish_seed(self, session: SeedSession, resource_version: str) -> None:
        """Deletions the LIST proves, the end marker and the resume point: one transaction."""

        def apply(batch: _Batch) -> None:
            batch.delete_unseen(session)
            batch.event(session.stream, EventKind.SEED_END, resource_version=resource_version)
            batch.execute(
                "UPDATE streams SET seed_state = ?, seeded_at = ?, resource_version = ?,"
                " updated_at = ? WHERE stream = ?",
                (
                    SeedState.COMPLETE.value,
                    batch.now,
                    resource_version,
                    batch.now,
                    session.stream.key,
                ),
            )

        await self.submit(apply)

    async def streams(self) -> list[StreamSpec]:
        """Every stream the journal has a row of, whether watched in this process or not."""
        rows = await self.connection.execute_fetchall(
            "SELECT api_group, api_version, resource, kind, namespaced, namespace FROM streams"
        )
        return [
            StreamSpec(ResourceType(group, version, resource, kind, bool(namespaced)), namespace)
            for group, version, resource, kind, namespaced, namespace in rows
        ]

    async def release_stream(self, stream: StreamSpec) -> None:
        """Forget a stream whose watch stopped for good in this process (no target here needs
        it any more): its row and its objects, from the table and the in-memory index, so the
        journal holds only what is watched. A later watch of it registers anew and seeds from
        nothing, since events were missed meanwhile: a stopped stream never counts as seeded.

        Every cursor stops covering the stream's type in the same transaction: a target that
        still has a cursor (its GitTarget invalid for a while) re-adopts that type by snapshot
        once it is seeded again, instead of reading across the gap as if nothing had been
        missed (an object deleted meanwhile would keep its file)."""

        def apply(batch: _Batch) -> None:
            batch.forget_stream_objects(stream)
            batch.execute("DELETE FROM streams WHERE stream = ?", (stream.key,))
            prefix = f"{stream.api_group}/{stream.resource}|"
            batch.execute(
                "UPDATE cursors SET covered = (SELECT COALESCE(json_group_object(key, value),"
                " '{}') FROM json_each(cursors.covered) WHERE substr(key, 1, ?) != ?)"
                " WHERE EXISTS (SELECT 1 FROM json_each(cursors.covered)"
                " WHERE substr(key, 1, ?) = ?)",
                (len(prefix), prefix, len(prefix), prefix),
            )

        await self.submit(apply)

    # -- operations used by the target consumers -----------------------------------------------

    async def write_cursor(
        self,
        target: str,
        seq: int,
        covered: Mapping[str, int],
        files: Sequence[tuple[ObjectKey, str | None, str]] = (),
        quarantine: Mapping[ObjectKey, str | None] | None = None,
    ) -> None:
        """Move a target's cursor and its record of written files in one transaction.

        ``files`` holds (object, path or None when the file was removed, content hash).
        ``quarantine`` maps objects to why they cannot be written, or None when they no longer
        are quarantined.
        """

        def apply(batch: _Batch) -> None:
            batch.execute(
                "INSERT INTO cursors (target, seq, covered, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (target) DO UPDATE SET seq = excluded.seq,"
                " covered = excluded.covered, updated_at = excluded.updated_at",
                (target, seq, json.dumps(dict(sorted(covered.items()))), batch.now),
            )
            removed = [(target, *_key_tuple(k)) for k, path, _ in files if path is None]
            written = [(target, *_key_tuple(k), p, sha) for k, p, sha in files if p is not None]
            if removed:
                batch.execute_many(
                    "DELETE FROM target_files WHERE target = ? AND api_group = ? AND resource = ?"
                    " AND namespace = ? AND name = ?",
                    removed,
                )
            if written:
                batch.execute_many(
                    "INSERT OR REPLACE INTO target_files (target, api_group, resource, namespace,"
                    " name, path, content_sha) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    written,
                )
            entries = (quarantine or {}).items()
            released = [(target, *_key_tuple(k)) for k, why in entries if why is None]
            held = [(target, *_key_tuple(k), why, batch.now) for k, why in entries if why]
            if released:
                batch.execute_many(
                    "DELETE FROM quarantine WHERE target = ? AND api_group = ? AND resource = ?"
                    " AND namespace = ? AND name = ?",
                    released,
                )
            if held:
                batch.execute_many(
                    "INSERT INTO quarantine (target, api_group, resource, namespace, name,"
                    " reason, since) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                    " reason = excluded.reason",
                    held,
                )

        await self.submit(apply)

    async def record_place(self, target: str, place: TargetPlace) -> None:
        """Where ``target`` writes from now on (its cursor and records are about this place)."""

        def apply(batch: _Batch) -> None:
            batch.execute(
                "INSERT OR REPLACE INTO target_places (target, remote, provider, path)"
                " VALUES (?, ?, ?, ?)",
                (target, place.remote, place.provider, place.path),
            )

        await self.submit(apply)

    async def forget_target(self, target: str) -> None:
        """Drop everything of a target: a deleted GitTarget no longer holds back compaction,
        and one that moved starts afresh at its new place."""

        def apply(batch: _Batch) -> None:
            batch.execute("DELETE FROM target_places WHERE target = ?", (target,))
            batch.execute("DELETE FROM cursors WHERE target = ?", (target,))
            batch.execute("DELETE FROM target_files WHERE target = ?", (target,))
            batch.execute("DELETE FROM quarantine WHERE target = ?", (target,))

        await self.submit(apply)

    # -- repository branch ownership -----------------------------------------------------------

    async def branch_owners(self) -> dict[str, tuple[str, float]]:
        """Every recorded owner: branch -> (namespace, time of its latest proof)."""
        rows = await self.connection.execute_fetchall(
            "SELECT branch, namespace, proven_at FROM branch_owners"
        )
        return {branch: (namespace, float(proven_at)) for branch, namespace, proven_at in rows}

    async def record_branch_owner(self, branch: str, namespace: str, proven_at: float) -> None:
        """Make ``namespace`` the owner of ``branch`` as of ``proven_at`` (the caller decided)."""

        def apply(batch: _Batch) -> None:
            batch.execute(
                "INSERT INTO branch_owners (branch, namespace, proven_at) VALUES (?, ?, ?)"
                " ON CONFLICT (branch) DO UPDATE SET namespace = excluded.namespace,"
                " proven_at = excluded.proven_at",
                (branch, namespace, proven_at),
            )

        await self.submit(apply)

    # -- housekeeping --------------------------------------------------------------------------

    async def detach_lagging(self, max_lag_events: int = MAX_CURSOR_LAG_EVENTS) -> None:
        """Move the floor to ``max_lag_events`` behind the newest event if a cursor is below.

        A cursor further behind (a target whose pushes always fail, a consumer that is stuck)
        would otherwise keep every later event, so the journal and the disk would grow without
        bound. Cursors below the floor no longer hold back :meth:`compact`; their targets re-sync
        from ``objects`` when they run again (see :attr:`resync_floor`). The daemon calls this at
        start-up too, before any consumer reads its cursor.
        """
        candidate = self.committed_seq - max_lag_events

        def apply(batch: _Batch) -> None:
            batch.execute(
                "INSERT INTO journal_floor (id, seq) SELECT 1, ?"
                " WHERE EXISTS (SELECT 1 FROM cursors WHERE seq < ?)"
                " ON CONFLICT (id) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                (candidate, candidate),
            )

        await self.submit(apply)
        await self._load_floor()

    async def compact(self, max_lag_events: int = MAX_CURSOR_LAG_EVENTS) -> None:
        """Remove events every cursor has passed and that no ``objects`` row points at.

        With no cursor at all, nothing needs old events: a new target starts from ``objects``.
        A cursor below the floor (:meth:`detach_lagging`, applied first) holds back nothing
        below the floor, but everything above it: its consumer may still be running ahead of
        its stored cursor (its pushes fail, so the cursor does not move), reading events above
        the floor, and must never find a hole there. So the journal keeps at most the lag bound
        of superseded events for such a target, however long it stays stuck.
        """
        await self.detach_lagging(max_lag_events)

        def apply(batch: _Batch) -> None:
            batch.execute(
                "DELETE FROM events"
                " WHERE seq <= COALESCE((SELECT MIN(MAX(seq, ?)) FROM cursors), ?)"
                # The objects row that may point here is the one of the event's own object.
                " AND NOT EXISTS (SELECT 1 FROM objects o WHERE o.api_group = events.api_group"
                " AND o.resource = events.resource AND o.namespace = events.namespace"
                " AND o.name = events.name AND o.seq = events.seq)",
                (self.resync_floor, self.committed_seq),
            )

        await self.submit(apply)


def _write_batch(connection: sqlite3.Connection, batch: _Batch) -> bool:
    """Write ``batch`` in one transaction (on the connection's own thread); returns whether it
    changed any row. On an error the transaction is left open for the caller to roll back."""
    before = connection.total_changes
    connection.execute("BEGIN IMMEDIATE")
    for insert in batch.inserts:
        for sql, values in [
            *insert_statements(EVENTS_INSERT, EVENTS_ROW, EVENTS_WIDTH, insert.events),
            *insert_statements(ORIGINS_INSERT, ORIGINS_ROW, ORIGINS_WIDTH, insert.origins),
        ]:
            connection.execute(sql, values)
    for sql, params, many in batch.statements:
        if many:
            connection.executemany(sql, cast(Iterable[Sequence[Any]], params))
        else:
            connection.execute(sql, cast(Sequence[Any], params))
    connection.execute("COMMIT")
    return connection.total_changes > before


def _checkpoint(connection: sqlite3.Connection) -> None:
    """Copy what the WAL holds into the database file, as far as readers allow (blocking).

    A failure is logged and left to the next checkpoint: the WAL keeps every commit meanwhile.
    """
    try:
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error as error:
        log.warning("journal checkpoint failed: %s", error)


def _key_tuple(key: ObjectKey) -> tuple[str, str, str, str]:
    return key.api_group, key.resource, key.namespace, key.name


def prepare_database(path: Path) -> None:
    """Switch the file to WAL and apply pending migrations (blocking; run off the loop)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        # Takes effect only while the file is empty (a journal keeps the page size it was made
        # with): bodies of 1-2 KB fill a 16 KiB page ten at a time, so a transaction writes and
        # checkpoints a quarter of the pages, and makes a quarter of the system calls, of 4 KiB.
        connection.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        connection.execute("PRAGMA journal_mode = WAL")
        migrate(connection)
    finally:
        connection.close()
