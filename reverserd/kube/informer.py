"""An in-memory, always-current copy of one collection (used for reverserd's own resources).

The informer LISTs, then WATCHes from the list's resourceVersion; on ``410`` it LISTs again and
replaces its cache. :meth:`Informer.synced` is set after the first complete LIST, which is how the
daemon loads every rule, target and provider before it opens any data watch.

This is for configuration, which is small and needs no history. Mirrored objects go through the
journal watchers instead, which never keep a collection in memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from reverserd.kube.client import KubeClient, KubeError
from reverserd.kube.resources import ResourceType
from reverserd.kube.watching import ResourceExpired, list_pages, watch_events

log = logging.getLogger(__name__)

# A failing API server is retried at this pace, growing to the ceiling, so it is not hammered.
RETRY_INITIAL_S = 1.0
RETRY_CEILING_S = 30.0


def object_key(body: dict[str, Any]) -> tuple[str, str]:
    metadata = body.get("metadata") or {}
    return str(metadata.get("namespace", "")), str(metadata["name"])


class Informer:
    def __init__(
        self, client: KubeClient, rtype: ResourceType, on_change: Callable[[], None]
    ) -> None:
        self.client = client
        self.rtype = rtype
        self.on_change = on_change
        self.cache: dict[tuple[str, str], dict[str, Any]] = {}
        # Counts the changes of the cache, so readers can keep what they derive from it until
        # it moves.
        self.revision = 0
        self.synced = asyncio.Event()

    async def run(self) -> None:
        delay = RETRY_INITIAL_S
        version = ""
        while True:
            try:
                if not version:
                    version = await self._relist()
                async for event in watch_events(self.client, self.rtype, None, version):
                    version = event.resource_version or version
                    if event.type == "BOOKMARK":
                        continue
                    key = object_key(event.object)
                    if event.type == "DELETED":
                        self.cache.pop(key, None)
                    else:
                        self.cache[key] = event.object
                    self.revision += 1
                    self.on_change()
                delay = RETRY_INITIAL_S
            except ResourceExpired:
                version = ""
            except (KubeError, aiohttp.ClientError, TimeoutError) as error:
                log.warning(
                    "watch of %s failed, retrying in %.0f s: %s", self.rtype.resource, delay, error
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_CEILING_S)

    async def _relist(self) -> str:
        fresh: dict[tuple[str, str], dict[str, Any]] = {}
        version = ""
        async for items, snapshot_version in list_pages(self.client, self.rtype, None):
            version = snapshot_version
            for item in items:
                fresh[object_key(item)] = item
        self.cache = fresh
        self.revision += 1
        self.synced.set()
        self.on_change()
        return version
