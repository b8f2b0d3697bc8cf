"""A target's bookkeeping: where it stands in the journal, and what its folder holds.

One :class:`TargetLedger` per run of a target's consumer owns every number and record the
consumer keeps, so that what they mean, and how they move together, is written in one place
(the consumer decides what to do with an event; the ledger says where that leaves the target).
The durable copy is the journal's cursor row, ``target_files`` and ``quarantine`` of the target,
written by the committer after each push; a run starts from them (:meth:`TargetLedger.load`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from reverserd.committer.committer import Committer
from reverserd.journal import JournalEvent, JournalReader, JournalWriter, ObjectKey
from reverserd.journal.reader import CursorRow
from reverserd.targets.planning import (
    FilePlan,
    FileRecord,
    event_type,
    is_sensitive,
    split_selection,
)

log = logging.getLogger(__name__)

# Events read from the journal per round trip: about a push's worth (the committer's batch is
# 200). Each is decoded JSON while the batch is processed, about 5 KB for a 1-2 KB ConfigMap:
# 500 held 2.7 MB of decoded rows and 1.6 MB of fetched ones under load in `bench.steady`.
READ_BATCH = 200
# The record hash of a Secret whose fingerprint is unknown (committed before a restart, content
# not re-read): never equal to a real fingerprint, so the Secret's next change is written.
UNKNOWN_FINGERPRINT = ""


class TargetLedger:
    """Where one target stands, as it will be once everything handed to the committer is pushed.

    State:

    - ``seq``: the newest journal event processed: handed to the committer, or judged to need
      nothing;
    - ``covered``: selection (a type and the scope the rules give it) -> the seq its snapshot
      reflects; an event of that selection at or below it is already in that snapshot, and an
      event of a selection not covered is not the target's (yet);
    - ``files``: object -> (path, content hash) of the file this target wrote for it, read
      only: it changes through :meth:`remember`, :meth:`hold` and :meth:`load`, which also keep
      :meth:`names_in`'s index of file names per folder equal to it (a commit's
      ``kustomization.yaml`` edits then cost the folders it touches, not a walk of every file);
    - ``quarantined``: object -> why it cannot be written;
    - ``committed_seq``: the newest seq of this target's commits already in the clone (read
      back from their trailers, :mod:`reverserd.committer.trailers`).

    The invariant: everything up to ``seq`` was handed to the committer in journal order, and
    ``files`` and ``quarantined`` describe the folder as it is once all of it is pushed. An
    object is never both recorded and quarantined. ``committed_seq`` is at least the cursor:
    an event at or below it is already in the clone, so it is replayed for its record only,
    never committed again; a Secret committed after the cursor has an unknown fingerprint, since
    the cursor's record of it is older than what the clone holds.
    """

    def __init__(self, target: str, on_quarantine: Callable[[Mapping[ObjectKey, str]], None]):
        """``on_quarantine`` is told the quarantined objects whenever they change."""
        self.target = target
        self.seq = 0
        self.covered: dict[str, int] = {}
        self.files: dict[ObjectKey, FileRecord] = {}
        self._names: dict[str, set[str]] = {}
        self.quarantined: dict[ObjectKey, str] = {}
        self.committed_seq = 0
        # The cursor this run could not resume from, compaction having passed it; None when it
        # resumed (or started for the first time).
        self.resynced_from: int | None = None
        self._on_quarantine = on_quarantine

    async def load(
        self, reader: JournalReader, journal: JournalWriter, committer: Committer
    ) -> CursorRow | None:
        """Start a run from the journal and the clone; returns the cursor row it started from
        (None for a target that starts for the first time: it is registered at the journal's
        end, before its snapshot is read, so compaction keeps what follows)."""
        cursor = await reader.cursor(self.target)
        self.resynced_from = None
        if cursor is None:
            self.seq, self.covered = await reader.last_seq(), {}
            await journal.write_cursor(self.target, self.seq, {})
        elif cursor.seq < journal.resync_floor:
            # Compaction passed this cursor (the target lagged beyond the bound): its events
            # are gone, so it starts again from the latest state, one reconcile commit that
            # adopts the folder and deletes only files it recorded for objects now gone.
            self.resynced_from = cursor.seq
            self.seq, self.covered = await reader.last_seq(), {}
        else:
            self.seq, self.covered = cursor.seq, dict(cursor.covered)
        self.files = {}
        self._names = {}
        for key, record in (await reader.target_files(self.target)).items():
            self._record(key, record)
        self.quarantined = dict(await reader.quarantined(self.target))
        self._on_quarantine(self.quarantined)
        self.committed_seq = await committer.resume_point(self.target, self.seq)
        await self._forget_fingerprints_the_clone_passed(reader)
        return cursor

    async def _forget_fingerprints_the_clone_passed(self, reader: JournalReader) -> None:
        """Secrets committed after the cursor get an unknown fingerprint before anything runs.

        Their records are those of the cursor, older than what the clone (and maybe the remote)
        holds; a snapshot taken before the replay would compare the live value with the older
        fingerprint and skip a change back to that value. Unknown, the next plan writes it.
        """
        after = self.seq
        while after < self.committed_seq:
            events = await reader.events_after(after, READ_BATCH)
            if not events:
                return
            for event in events:
                known = self.files.get(event.key)
                if event.seq <= self.committed_seq and known and is_sensitive(event_type(event)):
                    self.files[event.key] = (known[0], UNKNOWN_FINGERPRINT)
            after = events[-1].seq

    def replayed(self, event: JournalEvent) -> bool:
        """Whether the event's change is already committed in the clone (record it only)."""
        return event.seq <= self.committed_seq

    def covered_since(self, event: JournalEvent) -> int | None:
        """The seq the snapshot of the event's selection reflects; None: not the target's."""
        prefix = f"{event.api_group}/{event.resource}|"
        for key, since in self.covered.items():
            if key.startswith(prefix):
                return since
        return None

    def cover(self, selections: set[str], seq: int) -> None:
        """A snapshot reflecting the journal up to ``seq`` now holds ``selections``."""
        for key in selections:
            self.covered[key] = seq

    def uncover(self, keep: Callable[[str], bool]) -> None:
        """Forget the selections ``keep`` rejects: they need a fresh snapshot to count again."""
        self.covered = {key: seq for key, seq in self.covered.items() if keep(key)}

    def covers_secrets(self) -> bool:
        """Whether a snapshot of Secrets is already part of where the target stands."""
        return any(split_selection(key) == ("", "secrets") for key in self.covered)

    def uncover_secrets(self) -> None:
        """Secrets get a fresh snapshot (keys just became usable, or are not usable at start)."""
        self.uncover(lambda key: split_selection(key) != ("", "secrets"))

    def remember(self, plan: FilePlan) -> None:
        """The records of a plan handed to the committer (a path of None: the file is gone)."""
        for key, path, content_sha in plan.records:
            self._record(key, None if path is None else (path, content_sha))

    def names_in(self, folders: set[str]) -> dict[str, set[str]]:
        """Folder -> names of the files this target has there, for each of ``folders``."""
        return {folder: set(self._names.get(folder, ())) for folder in folders}

    def hold(self, held: Mapping[ObjectKey, str]) -> None:
        """Objects that cannot be written: quarantined, with no record of a file."""
        for key, reason in held.items():
            log.warning(
                "object quarantined: it cannot be written",
                extra={"target": self.target, "object": describe(key), "reason": reason},
            )
            self._record(key, None)
            self.quarantined[key] = reason
        self._on_quarantine(self.quarantined)

    def release(self, key: ObjectKey) -> bool:
        """The object's quarantine ends (written or deleted); returns whether it was held."""
        held = self.quarantined.pop(key, None) is not None
        if held:
            self._on_quarantine(self.quarantined)
        return held

    def _record(self, key: ObjectKey, record: FileRecord | None) -> None:
        """Set or drop the object's file record, and its name in the folder index."""
        old = self.files.pop(key, None)
        if old is not None:
            folder, _, name = old[0].rpartition("/")
            names = self._names[folder]
            names.discard(name)
            if not names:
                del self._names[folder]
        if record is not None:
            self.files[key] = record
            folder, _, name = record[0].rpartition("/")
            self._names.setdefault(folder, set()).add(name)


def describe(key: ObjectKey) -> str:
    """An object as status and logs name it: ``group/resource/namespace/name``."""
    group = f"{key.api_group}/" if key.api_group else ""
    where = f"{key.namespace}/" if key.namespace else ""
    return f"{group}{key.resource}/{where}{key.name}"
