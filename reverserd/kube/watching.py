"""The Kubernetes list/watch protocol, as typed async iterators of plain dicts.

How the protocol works, and what this module relies on:

- A **LIST** returns a consistent snapshot at one resourceVersion. Large collections are read in
  pages (``limit`` + ``continue``); every page belongs to the snapshot of the first one. If the
  continue token expires (``410``), the whole list has to start over.
- A **WATCH** from resourceVersion ``R`` delivers every change after ``R`` in order, as lines of
  ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}``. The resourceVersion of the
  last event received is the point to resume from after the connection ends, which it does
  routinely (``timeoutSeconds``, API server restarts, load balancers).
- **BOOKMARK** events carry only a newer resourceVersion. Asking for them
  (``allowWatchBookmarks``) keeps the resume point fresh on quiet collections, so a reconnect
  rarely falls outside the server's history window. The watch cache sends one (about once a
  minute, and shortly before the watch's deadline) only when its version has moved past what
  the watch delivered; as it follows every event before it, a bookmark proves the client has
  caught up to that point.
- When ``R`` is older than the server still remembers, the watch fails with ``410 Gone``
  (an ``ERROR`` event, or the HTTP status). Events in the gap are lost to this client: the only
  correct recovery is a new LIST, comparing it with what was known (:class:`ResourceExpired`).
- A connection can also go silent without closing. A read timeout longer than the bookmark
  interval turns that into an error so the caller reconnects instead of waiting forever.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from reverserd.kube.client import KubeClient, KubeError, error_from_status
from reverserd.kube.resources import ResourceType

# Pages of this size keep one page of typical 1-2 KB objects around a megabyte.
LIST_PAGE_SIZE = 500
# The API server sends bookmarks about once a minute; three missed ones mean a dead connection.
WATCH_SILENCE_TIMEOUT_S = 180.0
# Server-side watch lifetime, randomised so that many watches do not reconnect in lockstep.
WATCH_TIMEOUT_RANGE_S = (240, 480)

EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]


class ResourceExpired(Exception):
    """The resourceVersion to list or watch from is no longer available (410 Gone)."""


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    object: dict[str, Any]
    wire_bytes: int = 0
    """Length of the event's JSON line as the API server sent it."""

    @property
    def resource_version(self) -> str:
        return str((self.object.get("metadata") or {}).get("resourceVersion", ""))


def _expired(error: KubeError) -> bool:
    return error.status == 410


async def list_pages(
    client: KubeClient, rtype: ResourceType, namespace: str | None
) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
    """Yield ``(items, resourceVersion of the snapshot)`` for each page of a consistent LIST."""
    path = rtype.collection_path(namespace)
    token = ""
    snapshot_version = ""
    while True:
        params: dict[str, str | int] = {"limit": LIST_PAGE_SIZE}
        if token:
            params["continue"] = token
        try:
            page = await client.get(path, params)
        except KubeError as error:
            if _expired(error):
                raise ResourceExpired(str(error)) from error
            raise
        metadata = page.get("metadata") or {}
        snapshot_version = snapshot_version or str(metadata.get("resourceVersion", ""))
        items: list[dict[str, Any]] = page.get("items") or []
        for item in items:
            # Items of a list carry no apiVersion/kind of their own; the files need them.
            item.setdefault("apiVersion", rtype.api_version)
            item.setdefault("kind", rtype.kind)
        yield items, snapshot_version
        token = metadata.get("continue") or ""
        if not token:
            return


async def watch_events(
    client: KubeClient,
    rtype: ResourceType,
    namespace: str | None,
    resource_version: str,
    lifetime_s: int | None = None,
) -> AsyncIterator[WatchEvent]:
    """Yield the events after ``resource_version`` until the server ends the watch.

    ``lifetime_s`` is the watch's server-side lifetime (default: randomised in
    ``WATCH_TIMEOUT_RANGE_S``). Raises :class:`ResourceExpired` when the server no longer has
    that resourceVersion.
    """
    params: dict[str, str | int] = {
        "watch": "1",
        "resourceVersion": resource_version,
        "allowWatchBookmarks": "true",
        "timeoutSeconds": lifetime_s or random.randint(*WATCH_TIMEOUT_RANGE_S),
    }
    try:
        async for wire_bytes, line in client.stream_lines(
            rtype.collection_path(namespace), params, read_timeout=WATCH_SILENCE_TIMEOUT_S
        ):
            kind = line.get("type")
            body = line.get("object") or {}
            if kind == "ERROR":
                error = error_from_status(int(body.get("code", 500)), json.dumps(body))
                if _expired(error):
                    raise ResourceExpired(str(error))
                raise error
            if kind in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                if kind != "BOOKMARK":
                    body.setdefault("apiVersion", rtype.api_version)
                    body.setdefault("kind", rtype.kind)
                yield WatchEvent(kind, body, wire_bytes)
    except KubeError as error:
        if _expired(error):
            raise ResourceExpired(str(error)) from error
        raise
