"""The SQLite journal: the single durable record between the API server and Git.

Every watch event is appended here before anything else happens (DESIGN invariant 1); a target
reads it from its own cursor once it is ready (invariant 2), and its cursor moves only after Git
has the change. :mod:`.writer` writes it (only the webhook process appends attribution facts
on its own connection), :mod:`.reader` serves everyone else, and the schema lives in the
numbered files of ``migrations/``.
"""

from reverserd.journal.model import (
    ALL_NAMESPACES,
    EventKind,
    JournalEvent,
    ObjectKey,
    SeedState,
    StoredObject,
    StreamSpec,
    TargetPlace,
)
from reverserd.journal.reader import CursorRow, JournalReader, StreamRow
from reverserd.journal.writer import JOURNAL_FILE, JournalWriter, SeedSession

__all__ = [
    "ALL_NAMESPACES",
    "JOURNAL_FILE",
    "CursorRow",
    "EventKind",
    "JournalEvent",
    "JournalReader",
    "JournalWriter",
    "ObjectKey",
    "SeedSession",
    "SeedState",
    "StoredObject",
    "StreamRow",
    "StreamSpec",
    "TargetPlace",
]
