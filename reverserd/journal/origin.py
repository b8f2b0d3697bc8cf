"""What a watch event says about its own origin, taken at journal time.

The journal drops ``managedFields`` before it stores a body (they are large and never reach
Git), so everything attribution needs from them is extracted here, while the full object is at
hand, and stored in ``event_origins`` next to the event. It is part of the journal (the
writer calls it for every event); attribution reads its results from ``event_origins`` and uses
:func:`digest` and :func:`printable` for the facts it receives.

Field manager
    Each ``managedFields`` entry carries a manager, an operation and the time its fields last
    changed. The newest entry of the object itself (entries of subresources such as ``status``
    never change the file) is the write that produced this state. Times have a resolution of one
    second; when several managers share the newest time, all of them are named rather than one
    guessed. A DELETE has no manager line: ``managedFields`` name the last writer, not the one
    who deleted.

Digest
    A SHA-256 over the object without its ``resourceVersion``: the only field the storage layer
    still changes after validating admission has seen the object. An admission fact whose object
    has the same digest (managedFields and their times included) describes exactly this state.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Longest manager line kept; a manager name is a user agent that clients choose freely.
MANAGER_CHARS = 200
# Managers of one change kept in the journal: the API server keeps one entry per manager and
# operation, and more than a few writing in one second is already unusual.
MAX_CHANGE_MANAGERS = 32


def newest_write(body: dict[str, Any]) -> tuple[str | None, list[str]]:
    """The newest write to the object, from one pass over its ``managedFields``.

    First ``manager (Operation)`` of each entry sharing the newest time, as one printable line
    shortened to :data:`MANAGER_CHARS` (None when unknown): what a commit names. Second the
    names of those managers (empty when unknown): the managers this change touched, kept whole,
    never shortened or rewritten, since they are compared with the names a GitTarget excludes.
    """
    newest = _newest_writes(body)
    if not newest:
        return None, []
    if len(newest) == 1:  # nearly always: this runs for every journaled event
        manager, operation = newest[0]
        return printable(f"{manager} ({operation})"[:MANAGER_CHARS]), [manager]
    named = ", ".join([f"{manager} ({operation})" for manager, operation in newest])
    managers = sorted({manager for manager, _ in newest})[:MAX_CHANGE_MANAGERS]
    return printable(named[:MANAGER_CHARS]), managers


def _newest_writes(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(manager, operation) of the object's own managedFields entries with the newest time."""
    entries = (body.get("metadata") or {}).get("managedFields") or []
    newest: list[tuple[str, str]] = []
    newest_time = ""
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("subresource"):
            continue
        manager, operation = entry.get("manager"), entry.get("operation")
        if not isinstance(manager, str) or not isinstance(operation, str):
            continue
        # RFC 3339 times in UTC with second resolution sort as strings.
        when = str(entry.get("time") or "")
        if when > newest_time:
            newest_time, newest = when, [(manager, operation)]
        elif when == newest_time:
            newest.append((manager, operation))
    return newest if len(newest) == 1 else sorted(set(newest))


def digest(body: dict[str, Any]) -> str:
    metadata = {k: v for k, v in (body.get("metadata") or {}).items() if k != "resourceVersion"}
    canonical = json.dumps(
        {**body, "metadata": metadata}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def printable(text: str) -> str:
    """``text`` without control characters: it goes into a commit message line."""
    if text.isprintable():
        return text  # nearly always, and checked in C: this runs for every journaled event
    return "".join(ch if ch.isprintable() else "?" for ch in text)
