"""Which streams to watch, derived from the rules and discovery, and one watcher task for each.

Streams come from rules, not from targets: a rule whose target is missing or not ready still has
its types watched, so their events wait in the journal (DESIGN invariant 2). A type is watched
once per scope, no matter how many rules or targets want it: all namespaces when any rule needs
that, else one stream per namespace.

Discovery is refreshed periodically. A CRD that becomes served starts its stream without a
restart. A type that stops being served has its stream stopped and nothing else: its objects stay
in the journal and in Git, because absence from discovery is not evidence of deletion (DESIGN
invariant 4). When it is served again, the stream resumes, or re-seeds on 410, and only a
complete LIST can then delete anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import aiohttp

from reverserd.config.model import WatchRuleSpec
from reverserd.config.plane import ConfigPlane
from reverserd.journal import ALL_NAMESPACES, JournalWriter, SeedState, StreamSpec
from reverserd.kube.client import KubeClient, KubeError
from reverserd.kube.discovery import Discovery, discover
from reverserd.supervise import supervise
from reverserd.watch.watcher import StreamWatcher

log = logging.getLogger(__name__)

# New CRDs are noticed within this long; two requests per refresh with aggregated discovery.
DISCOVERY_INTERVAL_S = 5.0


def desired_streams(rules: Iterable[WatchRuleSpec], discovery: Discovery) -> set[StreamSpec]:
    scopes: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for compiled in rule.rules:
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
    def __init__(self, client: KubeClient, journal: JournalWriter, plane: ConfigPlane) -> None:
        self.client = client
        self.journal = journal
        self.plane = plane
        self.discovery: Discovery | None = None
        self.watchers: dict[StreamSpec, tuple[StreamWatcher, asyncio.Task[None]]] = {}
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
        async with asyncio.TaskGroup() as group:
            group.create_task(supervise("discovery", self._discovery_loop))
            while True:
                seen = self.plane.version
                self._reconcile(group)
                changed = group.create_task(self.plane.wait_for_change(seen))
                woken = group.create_task(self._wake.wait())
                await asyncio.wait({changed, woken}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                woken.cancel()
                self._wake.clear()

    async def _discovery_loop(self) -> None:
        while True:
            await asyncio.sleep(DISCOVERY_INTERVAL_S)
            await self.refresh_discovery()

    def _reconcile(self, group: asyncio.TaskGroup) -> None:
        if self.discovery is None:
            return
        wanted = desired_streams(self.plane.state.rules, self.discovery)
        for stream in list(self.watchers):
            if stream in wanted:
                continue
            if stream.rtype.group in self.discovery.stale_groups:
                continue  # unknown right now, not gone: keep watching what we can
            _, task = self.watchers.pop(stream)
            task.cancel()
            log.info("stopped watching %s", stream.key)
        for stream in sorted(wanted - set(self.watchers), key=lambda s: s.key):
            watcher = StreamWatcher(self.client, self.journal, stream)
            task = group.create_task(supervise(f"watch {stream.key}", watcher.run, watcher.failed))
            self.watchers[stream] = (watcher, task)
            log.info("watching %s", stream.key)
