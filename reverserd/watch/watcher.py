"""One watcher per stream (resource type + scope): the API server's changes into the journal.

Lifecycle of a stream, driven by what the journal remembers about it:

1. **Resume.** A stream whose seed is complete and that has a stored resourceVersion resumes its
   WATCH from there after a restart: no LIST, no duplicate events.
2. **Seed.** Otherwise (new stream, seed interrupted, or the stored resourceVersion expired) it
   LISTs page by page. Pages are journaled as they come (CREATE or UPDATE only); once the LIST is
   complete, objects the journal knew in this scope but the LIST lacked become DELETE events, in
   the transaction that also marks the seed complete and stores the resume point. A LIST that
   fails part way therefore deletes nothing (DESIGN invariant 4).
3. **Follow.** WATCH from the resume point. Events are buffered briefly and journaled in
   batches, each batch together with the resourceVersion of its last event (SPEC 5.1). Bookmarks
   move the resume point without an event.
4. **410 Gone** sends the stream back to 2. Any other failure backs off and resumes at 3 from the
   last journaled resourceVersion, which is exactly the point up to which nothing can be lost.

A complete seed says the journal once held the whole collection; ``current`` says it still
does, as far as this process can know. It is set by a complete LIST in this process, by a
bookmark on a watch of this process (every event before it has been journaled), or by a watch
that ran until the server ended it without any change (nothing happened after its start). It
stays set through reconnects after an error, which resume where this process' journal ends.
Until it is set the stream's watches are short (``CATCH_UP_WATCH_S``), so the proof comes within
seconds even on a type that does not change and gets no bookmark. Only a current stream may feed
a snapshot that deletes: after a restart, a journal that lags the cluster would take an object
created meanwhile for one that never existed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import aiohttp

from reverserd.journal import JournalWriter, SeedState, StreamSpec
from reverserd.kube.client import KubeClient, KubeError
from reverserd.kube.watching import ResourceExpired, WatchEvent, list_pages, watch_events
from reverserd.metrics import EVENTS_RECEIVED, WATCH_RELISTS, WATCH_RESTARTS

log = logging.getLogger(__name__)

# Events read ahead of the journal; a slower journal slows the read, it never drops.
WATCH_BUFFER = 2048
# ... and, over every watch of the process together, their JSON as it came over the wire at
# most (an event larger than that alone still passes when nothing else is held): what the
# watches hold while the journal is busy or refuses writes. Decoded, JSON takes 1 to 8 times its
# size for manifests (one long string to many short fields) and more for pathological shapes
# (about 24 times for a list of empty objects). Shared, so that hundreds of watches of a large
# cluster hold no more than one; the batches being journaled and aiohttp's buffers come on top.
READ_AHEAD_BYTES = 4 * 2**20
# At most this many events per journal transaction from one stream.
MAX_BATCH = 500
# Reconnect pacing after errors: quick first retry, bounded ceiling, never a tight loop.
RETRY_INITIAL_S = 0.5
RETRY_CEILING_S = 30.0
# Server-side lifetime of a watch that has yet to prove the stream current. The server sends every
# change after the resume point as soon as the watch starts, so a watch this short that brings
# none proves the journal current, and one that brings changes is followed by another. Seconds,
# not the usual minutes: a snapshot after a restart waits for this.
CATCH_UP_WATCH_S = 3
# A stream whose resourceVersion or LIST continue token expires this many times in a row (with no
# seed completing in between) re-lists with backoff instead of at once, so it never spins.
IMMEDIATE_RELISTS = 2

_END = object()


class ReadAheadBudget:
    """Wire bytes of the watch events that the process's watches have read and not yet handed
    to the journal, shared by all of them.

    Invariant: :attr:`held` is at most :attr:`limit`, unless a single grant larger than the limit
    is all that is held. Grants are made in the order they were asked for, so a large event is not
    starved by a stream of small ones, and a cancelled request neither holds nor blocks anything.
    """

    __slots__ = ("_waiting", "held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _fits(self, size: int) -> bool:
        return self.held == 0 or self.held + size <= self.limit

    async def acquire(self, size: int) -> None:
        if not self._waiting and self._fits(size):
            self.held += size
            return
        request = (size, asyncio.get_running_loop().create_future())
        self._waiting.append(request)
        try:
            await request[1]
        except asyncio.CancelledError:
            if not request[1].cancelled():
                self.release(size)  # granted just before the cancellation arrived
            elif request in self._waiting:
                self._waiting.remove(request)
                self._grant()
            raise

    def release(self, size: int) -> None:
        self.held -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self._fits(self._waiting[0][0]):
            size, granted = self._waiting.popleft()
            if granted.cancelled():
                continue
            self.held += size
            granted.set_result(None)


class ReadAhead:
    """Events read from one watch and not yet journaled, oldest first, with the reader's end
    (:data:`_END`) or its error after the last of them.

    Invariant: it holds at most ``max_events`` items, and their wire size is held in the shared
    ``budget`` until they are taken or the read-ahead is closed; :meth:`put` waits until there is
    room in both. A full read-ahead stops the watch's reading, so the API server's side waits or
    ends the watch, which resumes from the journal: nothing is dropped, and memory follows
    neither the backlog nor the number of watches.
    """

    __slots__ = ("_arrived", "_bytes", "_items", "_room", "budget", "max_events")

    def __init__(self, max_events: int, budget: ReadAheadBudget) -> None:
        self.max_events = max_events
        self.budget = budget
        self._items: collections.deque[tuple[Any, int]] = collections.deque()
        self._bytes = 0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()

    async def put(self, item: Any, wire_bytes: int = 0) -> None:
        while len(self._items) >= self.max_events:
            self._room.clear()
            await self._room.wait()
        if wire_bytes:
            await self.budget.acquire(wire_bytes)
        self._items.append((item, wire_bytes))
        self._bytes += wire_bytes
        self._arrived.set()

    async def take(self, limit: int) -> list[Any]:
        """The oldest items, at least one and at most ``limit``."""
        while not self._items:
            self._arrived.clear()
            await self._arrived.wait()
        taken: list[Any] = []
        released = 0
        while self._items and len(taken) < limit:
            item, wire_bytes = self._items.popleft()
            released += wire_bytes
            taken.append(item)
        self._bytes -= released
        self.budget.release(released)
        self._room.set()
        return taken

    def close(self) -> None:
        """Drop what is left (the watch ended), giving its bytes back to the budget."""
        self._items.clear()
        self.budget.release(self._bytes)
        self._bytes = 0


class StreamWatcher:
    def __init__(
        self,
        client: KubeClient,
        journal: JournalWriter,
        stream: StreamSpec,
        read_ahead: ReadAheadBudget,
    ) -> None:
        self.client = client
        self.journal = journal
        self.stream = stream
        self.read_ahead = read_ahead
        self.resource_version: str | None = None
        self.state = SeedState.PENDING
        self.current = False
        self.last_error: str | None = None

    def failed(self, error: BaseException) -> None:
        """:meth:`run` ended with an exception nothing here expects (a bug): its supervisor
        starts it again, and status shows the failure until a watch delivers again."""
        self.last_error = f"{type(error).__name__}: {error}"

    @property
    def namespace(self) -> str | None:
        return None if self.stream.namespace == "*" else self.stream.namespace

    async def run(self) -> None:
        self.resource_version, self.state = await self.journal.register_stream(self.stream)
        relist = self.state is not SeedState.PENDING
        delay = RETRY_INITIAL_S
        expired_in_a_row = 0
        while True:
            try:
                if self.state is not SeedState.COMPLETE or not self.resource_version:
                    await self._seed(relist)
                    expired_in_a_row = 0
                await self._follow()
                delay = RETRY_INITIAL_S
                self.last_error = None
            except ResourceExpired:
                log.info("resourceVersion of %s expired, re-listing", self.stream.key)
                WATCH_RELISTS.labels(resource=self.stream.resource).inc()
                self.state, relist = SeedState.PENDING, True
                expired_in_a_row += 1
                if expired_in_a_row > IMMEDIATE_RELISTS:
                    # A LIST whose continue token keeps expiring (heavy compaction, a huge
                    # collection): start over, but paced like any other failure.
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_CEILING_S)
            except (KubeError, aiohttp.ClientError, TimeoutError, ValueError) as error:
                self.last_error = str(error)
                WATCH_RESTARTS.labels(resource=self.stream.resource).inc()
                log.warning(
                    "watch of %s failed, retrying in %.1f s: %s", self.stream.key, delay, error
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_CEILING_S)

    async def _seed(self, relist: bool) -> None:
        self.state = SeedState.SEEDING
        session = await self.journal.begin_seed(self.stream, relist)
        version = ""
        async for items, snapshot_version in list_pages(
            self.client, self.stream.rtype, self.namespace
        ):
            version = snapshot_version
            EVENTS_RECEIVED.labels(resource=self.stream.resource).inc(len(items))
            await self.journal.record_seed_page(session, items)
        await self.journal.finish_seed(session, version)
        self.resource_version, self.state = version, SeedState.COMPLETE
        self.current = True
        log.info("seeded %s at resourceVersion %s", self.stream.key, version)

    async def _follow(self) -> None:
        """Journal the watch until the server ends it; raises what ended it otherwise."""
        assert self.resource_version is not None
        ahead = ReadAhead(WATCH_BUFFER, self.read_ahead)
        lifetime_s = None if self.current else CATCH_UP_WATCH_S
        reader = asyncio.create_task(self._read(ahead, self.resource_version, lifetime_s))
        changed = False
        try:
            while True:
                batch = await ahead.take(MAX_BATCH)
                events = [item for item in batch if isinstance(item, WatchEvent)]
                if events:
                    await self._journal(events)
                    changed = changed or any(event.type != "BOOKMARK" for event in events)
                    if any(event.type == "BOOKMARK" for event in events):
                        self.current = True
                ending = batch[-1]
                if ending is _END:
                    self.current = self.current or not changed
                    return
                if isinstance(ending, BaseException):
                    raise ending
        finally:
            reader.cancel()
            try:
                await asyncio.gather(reader, return_exceptions=True)
            finally:
                ahead.close()

    async def _read(self, ahead: ReadAhead, version: str, lifetime_s: int | None) -> None:
        try:
            async for event in watch_events(
                self.client, self.stream.rtype, self.namespace, version, lifetime_s
            ):
                await ahead.put(event, event.wire_bytes)
            await ahead.put(_END)
        except Exception as error:  # handed to the journaling side, which re-raises it
            await ahead.put(error)

    async def _journal(self, events: list[WatchEvent]) -> None:
        changes = [(event.type, event.object) for event in events if event.type != "BOOKMARK"]
        version = events[-1].resource_version or self.resource_version
        await self.journal.record_changes(self.stream, changes, version)
        self.last_error = None
        if changes:
            EVENTS_RECEIVED.labels(resource=self.stream.resource).inc(len(changes))
        self.resource_version = version
