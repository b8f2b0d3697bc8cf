"""Which streams to watch, derived from the rules and discovery, and one watcher task for each.

Streams come from rules, not from targets: a rule whose target is missing or not ready still has
its types watched, so their events wait in the journal (DESIGN invariant 2). A type is watched
once per scope, no matter how many rules or targets want it: all namespaces when any rule needs
that, else one stream per namespace.

In sharded mode (``--shards``) a replica watches only what the targets on the branches it
serves need (:func:`rules_to_watch`): the union of their rules' streams. A stream no such target
needs any more is stopped and released from the journal (``JournalWriter.release_stream``), so a
replica's journal, and its memory, hold only its share; watching it again seeds it from nothing.
A release the journal refuses (one transaction: nothing of it is written) is tried again, less
and less often, until it succeeds, or until the stream is watched again, which then resumes
from the row and objects kept.
Streams an earlier run journaled for buckets that went elsewhere meanwhile are released once the
replica holds its share (until then they may be its own again, and resume where they stopped).
The config plane (rules, targets, providers, namespaces) is not a stream: every replica watches
it whole. A refused target whose provider exists has a branch, and its rules are watched by the
holder of that branch, which keeps its cursor: valid again, it reads on from there. A rule whose
target has no branch (missing, or its provider missing) is nobody's in sharded mode; its events
start when its target has a branch, and its first sync there adopts the folder.

Discovery is refreshed periodically. A CRD that becomes served starts its stream without a
restart. A type that stops being served has its stream stopped and nothing else: its objects stay
in the journal and in Git, because absence from discovery is not evidence of deletion (DESIGN
invariant 4); sharded, the journal forgets them as it forgets any stream it stopped, still
without a DELETE event, so Git keeps their files. When it is served again, the stream resumes,
or re-seeds on 410 (sharded: seeds afresh), and only a complete LIST can then delete anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable

import aiohttp

from reverserd.config.plane import ConfigPlane, ConfigState
from reverserd.config.rules import CompiledRule
from reverserd.journal import ALL_NAMESPACES, JournalWriter, SeedState, StreamSpec
from reverserd.journal.writer import JournalWriteFailed
from reverserd.kube.client import KubeClient, KubeError
from reverserd.kube.discovery import Discovery, discover
from reverserd.kube.shards import ShardCoordinator
from reverserd.supervise import supervise
from reverserd.watch.watcher import READ_AHEAD_BYTES, ReadAheadBudget, StreamWatcher

log = logging.getLogger(__name__)

# New CRDs are noticed within this long; two requests per refresh with aggregated discovery.
DISCOVERY_INTERVAL_S = 5.0
# Sharded, until an earlier run's leftover streams are released: how often the loop looks
# whether the replica holds its share yet.
SETTLED_CHECK_S = 1.0
# A release the journal refused (disk full, database locked) is tried again after this long,
# doubling up to RELEASE_RETRY_MAX_S, until it succeeds or the stream is watched again.
RELEASE_RETRY_S = 5.0
RELEASE_RETRY_MAX_S = 60.0


def rules_to_watch(
    state: ConfigState, serves: Callable[[str], bool] | None = None
) -> list[CompiledRule]:
    """Every rule, or given ``serves`` (sharded mode: whether this replica serves a branch)
    those of the targets on the branches it serves, refused ones too (their branch is known);
    a rule pointing at a target with no branch (missing, or its provider missing) is then
    nobody's."""
    if serves is None:
        return [compiled for rule in state.rules for compiled in rule.rules]
    owned = [r.rules for r in state.targets.values() if serves(r.branch)]
    owned += [r.rules for r in state.refused.values() if serves(r.branch)]
    return [compiled for rules in owned for compiled in rules]


def desired_streams(rules: Iterable[CompiledRule], discovery: Discovery) -> set[StreamSpec]:
    """The streams ``rules`` need: each type they select once per scope (all namespaces as
    soon as one rule needs all of them, or the type is cluster-scoped)."""
    scopes: dict[tuple[str, str], set[str]] = {}
    for compiled in rules:
        for key, rtype in discovery.types.items():
            if compiled.selects_type(rtype, discovery.versions.get(key, ())):
                scopes.setdefault(key, set()).add(compiled.namespace or ALL_NAMESPACES)
    streams: set[StreamSpec] = set()
    for key, namespaces in scopes.items():
        rtype = discovery.types[key]
        if ALL_NAMESPACES in namespaces or not rtype.namespaced:
            namespaces = {ALL_NAMESPACES}
        streams.update(StreamSpec(rtype, namespace) for namespace in namespaces)
    return streams


class WatchManager:
    def __init__(
        self,
        client: KubeClient,
        journal: JournalWriter,
        plane: ConfigPlane,
        shards: ShardCoordinator | None = None,
    ) -> None:
        """With ``shards``, only what the branches this replica serves need is watched."""
        self.client = client
        self.journal = journal
        self.plane = plane
        self.shards = shards
        self.discovery: Discovery | None = None
        self.watchers: dict[StreamSpec, tuple[StreamWatcher, asyncio.Task[None]]] = {}
        # What all watches together may read ahead of the journal.
        self.read_ahead = ReadAheadBudget(READ_AHEAD_BYTES)
        # Streams (by key) stopped or left over, until the journal forgot them: watching one
        # again waits for that, so its new watch never reads the old seed state.
        self._releasing: dict[str, asyncio.Task[None]] = {}
        # Set when a stream whose release is being retried is watched again: the release stops
        # retrying, and the new watch resumes from the row and objects the journal kept.
        self._rewatched: dict[str, asyncio.Event] = {}
        # Sharded: whether the streams an earlier run left in the journal that this replica
        # does not serve any more were released (once, when it first holds its share).
        self._leftovers_released = shards is None
        self._wake = asyncio.Event()

    def seeded(self, type_key: tuple[str, str], namespace: str | None) -> bool:
        """Whether a stream of this type covering ``namespace`` (None: all) has a complete seed
        and has caught up in this process (``StreamWatcher.current``): only then may the
        journal's objects of that scope serve a snapshot that deletes."""
        for stream, (watcher, _) in self.watchers.items():
            if (stream.rtype.group, stream.rtype.resource) != type_key:
                continue
            if (
                stream.namespace in (ALL_NAMESPACES, namespace)
                and watcher.state is SeedState.COMPLETE
                and watcher.current
            ):
                return True
        return False

    async def refresh_discovery(self) -> None:
        """Fetch discovery; on failure keep the previous one (no stream stops for a blip)."""
        try:
            found = await discover(self.client)
        except (KubeError, aiohttp.ClientError, TimeoutError) as error:
            log.warning("discovery failed, keeping the previous result: %s", error)
            return
        if found != self.discovery:
            self.discovery = found
            self.plane.set_discovery(found)
            self._wake.set()

    async def run(self) -> None:
        """Start only after the config plane has loaded every rule (see daemon start-up)."""
        # A restart after a failure starts from nothing: the previous group's tasks are gone.
        self.watchers.clear()
        self._releasing.clear()
        self._rewatched.clear()
        async with asyncio.TaskGroup() as group:
            group.create_task(supervise("discovery", self._discovery_loop))
            while True:
                seen = self.plane.version
                seen_shards = self.shards.version if self.shards is not None else 0
                self._reconcile(group)
                waits = {
                    group.create_task(self.plane.wait_for_change(seen)),
                    group.create_task(self._wake.wait()),
                }
                if self.shards is not None:
                    waits.add(group.create_task(self.shards.wait_for_change(seen_shards)))
                # Until the leftovers are released, also look every second whether the
                # replica has settled (no change is published when a round takes nothing).
                patience = None if self._leftovers_released else SETTLED_CHECK_S
                await asyncio.wait(waits, timeout=patience, return_when=asyncio.FIRST_COMPLETED)
                for wait in waits:
                    wait.cancel()
                self._wake.clear()

    async def _discovery_loop(self) -> None:
        while True:
            await asyncio.sleep(DISCOVERY_INTERVAL_S)
            await self.refresh_discovery()

    def _reconcile(self, group: asyncio.TaskGroup) -> None:
        if self.discovery is None:
            return
        serves = self.shards.serves if self.shards is not None else None
        wanted = desired_streams(rules_to_watch(self.plane.state, serves), self.discovery)
        for stream in list(self.watchers):
            if stream in wanted:
                continue
            if stream.rtype.group in self.discovery.stale_groups:
                continue  # unknown right now, not gone: keep watching what we can
            _, task = self.watchers.pop(stream)
            task.cancel()
            log.info("stopped watching %s", stream.key)
            if self.shards is not None:
                self._release(group, stream, {task})
        for stream in sorted(wanted - set(self.watchers), key=lambda s: s.key):
            if stream.key in self._rewatched:
                self._rewatched[stream.key].set()
            watcher = StreamWatcher(self.client, self.journal, stream, self.read_ahead)
            run = self._after_release(stream, watcher)
            task = group.create_task(supervise(f"watch {stream.key}", run, watcher.failed))
            self.watchers[stream] = (watcher, task)
            log.info("watching %s", stream.key)
        if not self._leftovers_released and self.shards is not None and self.shards.settled:
            self._leftovers_released = True
            group.create_task(self._release_leftovers(group))

    async def _release_leftovers(self, group: asyncio.TaskGroup) -> None:
        """Release the streams an earlier run journaled that no branch served here needs (their
        buckets went to other replicas while this one was down), so that they stop taking
        memory and disk; a stream watched again later seeds afresh."""
        for stream in await self.journal.streams():
            # Checked after the read, with no await until each release is registered.
            if stream.key not in {s.key for s in self.watchers} | set(self._releasing):
                self._release(group, stream, set())

    def _release(
        self, group: asyncio.TaskGroup, stream: StreamSpec, after: set[asyncio.Task[None]]
    ) -> None:
        """Once ``after`` (the stopped watch) has ended, forget the stream in the journal:
        sharded, a stream stops because no branch served here needs it, and nothing says it
        ever will again here (with one replica it stays: a rule may be back a moment later)."""
        previous = self._releasing.get(stream.key)
        rewatched = self._rewatched[stream.key] = asyncio.Event()

        async def release() -> None:
            waits = after if previous is None else after | {previous}
            if waits:
                await asyncio.wait(waits)
            delay = RELEASE_RETRY_S
            try:
                while True:
                    try:
                        await self.journal.release_stream(stream)
                    except (JournalWriteFailed, sqlite3.Error, OSError) as error:
                        # Its row and objects stay whole (one transaction): a watch that comes
                        # back resumes from them correctly; else the next try forgets them.
                        log.warning(
                            "could not release %s from the journal, trying again in %.0f s: %s",
                            stream.key,
                            delay,
                            error,
                        )
                    else:
                        log.info("released %s from the journal", stream.key)
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(rewatched.wait(), delay)
                    if rewatched.is_set():
                        log.info("kept %s in the journal: it is watched again", stream.key)
                        return
                    delay = min(delay * 2, RELEASE_RETRY_MAX_S)
            finally:
                if self._rewatched.get(stream.key) is rewatched:
                    del self._rewatched[stream.key]

        done = group.create_task(release())
        self._releasing[stream.key] = done
        done.add_done_callback(
            lambda ended: (
                self._releasing.pop(stream.key)
                if self._releasing.get(stream.key) is ended
                else None
            )
        )

    def _after_release(
        self, stream: StreamSpec, watcher: StreamWatcher
    ) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            releasing = self._releasing.get(stream.key)
            if releasing is not None:
                # Ended, not necessarily done: a release that failed left the stream's row and
                # objects whole, which a resumed watch continues correctly (or re-lists on 410);
                # one being retried stops at once, since this watch was started.
                await asyncio.wait({releasing})
            await watcher.run()

        return run
