"""A target consumer: one GitTarget reading the journal from its own cursor.

It exists once its GitTarget is valid, and it starts writing once the branch's committer has
reached the repository. Until then the target's events simply wait in the journal: nothing a
watch delivered before the target was ready is lost (DESIGN invariant 2).

For each type its rules select, the consumer first takes a snapshot of the journal's ``objects``
(only once that type's seed is complete and its watch has caught up in this process) and writes
it as **one** reconcile commit: files that already say what it would write are adopted as they
are, and files are removed only for objects provably gone (:class:`SnapshotPlanner`). From then on
it tails ``events`` from its cursor, filters them by its rules, and hands one commit per event to
the committer. Types that become selected later (rules widened, a CRD installed) get their own
snapshot the same way: a backfill commit.

The cursor and the record of written files move only when the committer has pushed
(:mod:`reverserd.committer`); after a crash the consumer replays from the cursor, and the
replay changes nothing that is already in the clone. When the branch's committer is replaced
after a failure, the consumer starts over from its cursor with the new one, for the same reason.

Its bookkeeping (journal position, covered selections, written files, quarantine, what the clone
already holds) has one owner, :class:`~reverserd.targets.ledger.TargetLedger`, re-read from the
journal and the clone at the start of every run.

**Poison objects** (DESIGN invariant 8): an object whose file cannot be planned (a name the
layout cannot hold, a render error, nesting too deep) or written (a person put a file where its
folder must be) is quarantined: recorded with its reason in the journal together with the
cursor, shown in the GitTarget's ``Quarantined`` condition and in
``reverserd_objects_quarantined``, and skipped; every other object keeps flowing. It is tried
again when it changes, and every :data:`QUARANTINE_RETRY_S` from its latest journaled state;
once it is written or deleted, its quarantine ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import aiohttp
import pygit2

from reverserd.attribution.resolver import Attribution, Resolver
from reverserd.committer.branch import Branch
from reverserd.committer.committer import (
    Committer,
    CommitterStopped,
    LocalWorkPending,
    Submission,
)
from reverserd.config.plane import ResolvedTarget
from reverserd.config.rules import Namespaces
from reverserd.config.status import StatusBoard
from reverserd.encryption.sops import EncryptionUnavailable, NotCiphertext, sops_config_for
from reverserd.git import FileChange, RemoteUnavailable
from reverserd.journal import (
    EventKind,
    JournalEvent,
    JournalReader,
    JournalWriter,
    ObjectKey,
    StoredObject,
)
from reverserd.kube.client import KubeError
from reverserd.kube.discovery import Discovery
from reverserd.kube.resources import ResourceType
from reverserd.manifest.layout import is_excluded_object
from reverserd.metrics import DRIFT_CHECKS, DRIFT_REPAIRS, EVENTS_PROCESSED, OBJECTS_QUARANTINED
from reverserd.targets.drift import (
    DEFAULT_DRIFT_INTERVAL_S,
    DRIFT_FILE_LIMIT_BYTES,
    DRIFT_READ_BATCH,
    Drifted,
    DriftState,
    expected_files,
    repair_message,
)
from reverserd.targets.history import restore_last_push
from reverserd.targets.kustomization import (
    ListingEdit,
    folders_of,
    kustomization_path,
)
from reverserd.targets.ledger import READ_BATCH, UNKNOWN_FINGERPRINT, TargetLedger, describe
from reverserd.targets.planning import (
    README,
    README_NAME,
    FilePlan,
    FileRecord,
    SnapshotPlanner,
    commit_message,
    content_hash,
    event_type,
    holds_object,
    identity_of,
    is_sensitive,
    manifest_of,
    manifest_path,
    plan_event,
    reconcile_message,
    selected,
    selection_key,
    split_selection,
)
from reverserd.targets.secrets import SecretWriter

log = logging.getLogger(__name__)

SOPS_CONFIG_NAME = ".sops.yaml"

# Files a snapshot reads from the clone per round trip to its Git thread (a folder's files are
# compared, or identified, a batch at a time, never all held at once).
BRANCH_READ_BATCH = 1000
# How long the first sync waits for every selected type's seed before it goes ahead without
# the slow ones (they then come in a backfill commit of their own).
FIRST_SYNC_PATIENCE_S = 60.0
# Longest wait for new journal events before re-checking rules, discovery and seeds.
IDLE_WAIT_S = 1.0
# Quarantined objects are retried from their latest state at this pace, so one whose path a
# person freed (or whose cause was fixed) is written without waiting for it to change.
QUARANTINE_RETRY_S = 60.0
# Failures that say nothing about the object (the API server or the connection to it, such as a
# dropped connection or a truncated answer while a Secret is read; the disk; a sops run that
# never got to answer): the consumer restarts from its cursor instead of quarantining or
# skipping.
TRANSIENT_ERRORS = (
    KubeError,
    aiohttp.ClientError,
    OSError,
    CommitterStopped,
    EncryptionUnavailable,
)

SeededCheck = Callable[[tuple[str, str], str | None], bool]


def made_only_by(managers: list[str] | None, excluded: frozenset[str], kind: EventKind) -> bool:
    """Whether a change is left out because every field manager of it is excluded.

    Only creations and updates whose managers are known: a DELETE, or a change without
    managedFields, names no writer and is always committed. The object's file is not rewritten
    for a left-out change, and is brought up to date (with it) by the next change anyone else
    makes, or by the next reconcile.
    """
    return kind is not EventKind.DELETE and bool(managers) and excluded.issuperset(managers or ())


class TargetConsumer:
    def __init__(
        self,
        resolved: ResolvedTarget,
        branch: Branch,
        state_dir: Path,
        journal: JournalWriter,
        board: StatusBoard,
        discovery: Callable[[], Discovery | None],
        seeded: SeededCheck,
        secrets: SecretWriter,
        namespaces: Namespaces,
        resolver: Resolver | None = None,
        drift_interval_s: float = DEFAULT_DRIFT_INTERVAL_S,
    ) -> None:
        self.resolved = resolved
        # Each namespace's current labels, kept by the config plane, for namespaceSelectors.
        self.namespaces = namespaces
        self.key = resolved.key
        self.branch = branch
        self.committer: Committer
        self.state_dir = state_dir
        self.journal = journal
        self.board = board
        self.discovery = discovery
        self.seeded = seeded
        self.secrets = secrets
        self.resolver = resolver
        self.sops_config_path = SOPS_CONFIG_NAME
        self.sops_config: bytes | None = None
        self.progress = board.target(self.key)
        self.reader: JournalReader
        self.ledger = TargetLedger(self.key, self._show_quarantine)
        self.readme_present = False
        self.readme_path = README_NAME
        self.initial_snapshot_sent = False
        self.quarantine_retried_at = 0.0
        self.drift_interval_s = drift_interval_s
        self.drift = DriftState(self.key, self.progress.drift)

    @property
    def folder(self) -> str:
        return self.resolved.target.path

    async def run(self) -> None:
        # Its own connection: a snapshot is a read transaction that must not interleave with
        # another target's reads.
        self.reader = await JournalReader.open(self.state_dir)
        try:
            while True:
                try:
                    await self._run()
                except CommitterStopped:
                    log.info(
                        "committer replaced, replaying from the cursor", extra={"target": self.key}
                    )
                except CursorCompacted:
                    # Expected, not a failure: the next run re-syncs from the latest state.
                    log.info("compaction passed this target's position", extra={"target": self.key})
        finally:
            await self.reader.close()

    async def _run(self) -> None:
        self.initial_snapshot_sent = False
        self.started = time.monotonic()
        progress = self.progress
        progress.waiting_reason = "WaitingForRepository"
        progress.waiting_message = f"connecting to {self.branch.display.split('#')[0]}"
        self.board.notify()
        self.committer = await self.branch.committer()
        progress.bootstrapped = True
        progress.waiting_reason, progress.waiting_message = "Syncing", "initial snapshot pending"
        self.board.notify()
        cursor = await self.ledger.load(self.reader, self.journal, self.committer)
        if self.ledger.resynced_from is not None:
            progress.snapshot_synced = progress.stream_live = False
            progress.waiting_reason = "Resyncing"
            progress.waiting_message = (
                f"this target fell more than the journal's lag bound behind (its cursor"
                f" {self.ledger.resynced_from}, compacted through {self.journal.resync_floor});"
                " re-syncing from the latest state with one reconcile commit"
            )
            log.warning("cursor passed by compaction, re-syncing", extra={"target": self.key})
        await restore_last_push(self.committer, cursor, self.key, progress)
        if self.folder:
            self.readme_path = f"{self.folder}/{README_NAME}"
            self.sops_config_path = f"{self.folder}/{SOPS_CONFIG_NAME}"
        self.readme_present = await self.committer.read(self.readme_path) is not None
        self.sops_config = await self.committer.read(self.sops_config_path)
        starting = True
        # Keys usable from the start: an earlier run may have skipped Secrets (its keys were
        # unusable), so they get a fresh snapshot, but only once the journal is replayed, so
        # that the Secret changes journaled after the cursor keep their own commits.
        snapshot_secrets_when_caught_up = False
        while True:
            keys_before = progress.encryption
            became_usable = await self.secrets.refresh()
            if starting and became_usable:
                # A first snapshot (nothing covered yet) takes the Secrets in anyway.
                snapshot_secrets_when_caught_up = self.ledger.covers_secrets()
                became_usable = False
            if became_usable or (starting and not self.secrets.writable):
                # Keys just became usable: Secrets skipped so far come in with a fresh snapshot.
                # Keys unusable at start: the same snapshot counts and logs each Secret that is
                # still not written, so a restart does not make them look written.
                self.ledger.uncover_secrets()
            # Only news wakes the config plane: with thousands of idle targets, a notice every
            # idle pass of each would keep it resolving all of them all the time.
            if starting or progress.encryption is not keys_before:
                self.board.notify()
            starting = False
            if self.committer.stopped:
                raise CommitterStopped(self.committer.key)
            await self._catch_up_selections()
            events = await self.reader.events_after(self.ledger.seq, READ_BATCH)
            # Checked after the read: the floor moves before compaction deletes anything below
            # it, so a read that may have missed deleted events always sees the floor past it.
            if self.ledger.seq < self.journal.resync_floor:
                raise CursorCompacted(self.key)
            if events:
                await self._process(events)
            elif snapshot_secrets_when_caught_up:
                snapshot_secrets_when_caught_up = False
                self.ledger.uncover_secrets()
            elif self.ledger.quarantined and self._quarantine_retry_due():
                await self._retry_quarantined()
            elif self._drift_check_due():
                await self._check_drift()
            else:
                await self.journal.wait_beyond(self.ledger.seq, IDLE_WAIT_S)

    def _drift_check_due(self) -> bool:
        """A reconcile request not handled yet, or the interval passed (drift checks on); only
        once the first sync is out, so that the records say what the folder should hold."""
        if not self.initial_snapshot_sent:
            return False
        target = self.resolved.target
        if target.reconcile_requested != (self.progress.handled_reconcile or ""):
            return self.drift.request_due(time.monotonic())
        return target.drift_mode != "off" and time.monotonic() >= self.drift.due_at

    async def _check_drift(self) -> None:
        """Compare the folder on the remote with the records, then warn or repair
        (:mod:`reverserd.targets.drift`); handle the reconcile request that asked for it."""
        target = self.resolved.target
        requested = target.reconcile_requested
        if requested != (self.progress.handled_reconcile or ""):
            self.drift.requested_check_at = time.monotonic()
        if target.drift_mode != "off":
            try:
                tree = await self.committer.remote_folder(self.folder)
            except LocalWorkPending:
                # The push fetches first; the check runs once it is out.
                await self.journal.wait_beyond(self.ledger.seq, IDLE_WAIT_S)
                return
            except RemoteUnavailable as error:
                self.progress.drift.error = f"the folder could not be compared: {error}"
            else:
                DRIFT_CHECKS.labels(target=self.key).inc()
                await self._compare(tree, target.drift_mode)
            self.drift.due_at = time.monotonic() + self.drift_interval_s
        self.progress.handled_reconcile = requested or None
        self.board.notify()

    async def _compare(self, tree: str | None, mode: str) -> None:
        drift = self.drift
        expected = expected_files(self.ledger.files)
        if drift.unchanged(tree, expected):
            drift.show([], [], mode, time.time())
            return
        changed = None
        if drift.clean_expected is not None:
            changed = await self.committer.changed_files(drift.clean_tree, tree, self.folder)
        candidates = drift.candidates(changed, expected)
        drift.forget_verdicts_except(expected)
        served = self._seeded_types()
        found: list[Drifted] = []
        postponed = False
        for start in range(0, len(candidates), DRIFT_READ_BATCH):
            batch = candidates[start : start + DRIFT_READ_BATCH]
            suspects = await self._suspects(batch, expected)
            for path, (blob, current) in suspects.items():
                key, digest = expected[path]
                event = await self.reader.latest_event(key)
                if event is not None and (
                    event.seq > self.ledger.seq or (key.api_group, key.resource) not in served
                ):
                    # The event path writes the newer state with its own commit; an unserved
                    # type is not compared at all.
                    postponed = True
                    continue
                wanted = await self._written_content(event, path)
                if wanted is None:
                    continue
                if blob is not None and drift.cached_verdict(path, blob, digest) is None:
                    same = current is not None and await asyncio.to_thread(
                        holds_object, current, wanted
                    )
                    drift.judged(path, blob, digest, not same)
                    if same:
                        continue
                found.append(Drifted(path, key, wanted))
        if not found:
            if not postponed:
                drift.found_clean(tree, expected)
            drift.show([], [], mode, time.time())
            return
        held: list[Drifted] = []
        if mode == "repair":
            repair, held = drift.triage(found, time.time())
            if repair:
                await self._repair(repair)
        drift.show(found, held, mode, time.time())

    async def _suspects(
        self, paths: list[str], expected: Mapping[str, tuple[ObjectKey, str]]
    ) -> dict[str, tuple[str | None, bytes | None]]:
        """Path -> (blob ID, content) of each file of ``paths`` that may be drifted: missing
        (no blob), found drifted before with the same blob and record, larger than
        :data:`DRIFT_FILE_LIMIT_BYTES` (no content), or read and not the recorded content."""
        drift = self.drift
        blobs = await self.committer.blob_ids(paths)
        suspects: dict[str, tuple[str | None, bytes | None]] = {}
        unjudged: dict[str, str] = {}
        for path, blob in blobs.items():
            verdict = None if blob is None else drift.cached_verdict(path, blob, expected[path][1])
            if blob is None or verdict:
                suspects[path] = (blob, None)
            elif verdict is None:
                unjudged[path] = blob
        contents = await self.committer.read_blobs(
            sorted(set(unjudged.values())), DRIFT_FILE_LIMIT_BYTES
        )
        for path, blob in unjudged.items():
            if contents[blob] is None:
                drift.judged(path, blob, expected[path][1], True)
        # Hashing a thousand files takes long: off the loop.
        differing = set(
            await asyncio.to_thread(
                _differing, {path: contents[blob] for path, blob in unjudged.items()}, expected
            )
        )
        for path, blob in unjudged.items():
            if path in differing:
                suspects[path] = (blob, contents[blob])
            else:
                drift.judged(path, blob, expected[path][1], False)
        return suspects

    def _seeded_types(self) -> set[tuple[str, str]]:
        """(group, resource) of each type the rules select that is served now and whose
        streams have a complete seed."""
        discovery = self.discovery()
        if discovery is None:
            return set()
        return {
            (rtype.group, rtype.resource)
            for rtype, ready in self._selections(discovery).values()
            if ready
        }

    async def _written_content(self, event: JournalEvent | None, path: str) -> bytes | None:
        """What this target writes at ``path`` for the object of ``event`` (its latest one);
        None when it writes nothing there at an update (object gone, rules take no updates,
        moved)."""
        if event is None or event.kind is EventKind.DELETE or event.body is None:
            return None
        rtype = event_type(event)
        if not selected(
            self.resolved.rules, rtype, event.namespace, "UPDATE", event.body, self.namespaces
        ):
            return None
        if is_excluded_object(rtype, event.body):
            return None
        try:
            written_path, content = await asyncio.to_thread(
                manifest_of, rtype, event.body, self.folder, self.resolved.target.drop_fields
            )
        except Exception:
            return None  # a poison object: quarantine is the event path's business
        return content if written_path == path else None

    async def _repair(self, repair: list[Drifted]) -> None:
        """One commit restoring exactly ``repair``, pushed at once."""
        plan = FilePlan()
        for item in repair:
            plan.changes.append(FileChange(item.path, item.content))
            plan.records.append((item.key, item.path, content_hash(item.content)))
        self.ledger.remember(plan)
        paths = [item.path for item in repair]
        report = self.progress.drift

        def pushed(sha: str | None, at: float) -> None:
            report.repaired_at, report.repaired = at, paths
            DRIFT_REPAIRS.labels(target=self.key).inc()
            self._pushed(sha, at)

        log.warning("repairing drifted files", extra={"target": self.key, "paths": paths})
        await self._submit(plan, repair_message(paths, self.key), pushed, push_now=True)

    def _selections(self, discovery: Discovery) -> dict[str, tuple[ResourceType, bool]]:
        """Selection key -> (type, whether every stream it needs has a complete seed)."""
        found: dict[str, tuple[ResourceType, bool]] = {}
        for key, rtype in discovery.types.items():
            rules = [
                rule
                for rule in self.resolved.rules
                if rule.selects_type(rtype, discovery.versions.get(key, ()))
            ]
            if not rules:
                continue
            ready = all(self.seeded(key, rule.namespace) for rule in rules)
            selection = selection_key(
                rtype.group,
                rtype.resource,
                rules,
                self.namespaces,
                self.resolved.target.drop_fields,
                self.resolved.target.kustomization,
            )
            found[selection] = (rtype, ready)
        return found

    async def _catch_up_selections(self) -> None:
        discovery = self.discovery()
        if discovery is None:
            return
        selections = self._selections(discovery)
        # A selection the rules dropped is forgotten: its events are skipped from now on, so a
        # later re-selection needs a fresh snapshot. A type merely missing from discovery stays
        # covered: nothing of it is skipped meanwhile, and its watch resumes (or re-lists, with
        # DELETE events as evidence) when it is served again, without a reconcile commit.
        self.ledger.uncover(
            lambda key: key in selections or split_selection(key) not in discovery.types
        )
        covered = self.ledger.covered
        newly = {key for key, (_, ready) in selections.items() if ready and key not in covered}
        all_seeded = all(ready for _, ready in selections.values())
        if not self.initial_snapshot_sent and not all_seeded:
            # The first sync is one commit: wait for every type's seed, unless one takes so
            # long (a failing watch) that the others should not wait for it any more.
            if time.monotonic() - self.started < FIRST_SYNC_PATIENCE_S:
                return
            waiting = sorted(key for key, (_, ready) in selections.items() if not ready)
            log.warning(
                "first sync without unseeded types", extra={"target": self.key, "unseeded": waiting}
            )
        first = not self.initial_snapshot_sent
        if newly or first:
            await self._snapshot(newly, discovery, first)

    async def _snapshot(self, newly: set[str], discovery: Discovery, first: bool) -> None:
        pairs = {split_selection(key) for key in newly}
        branch_paths = set(await self.committer.list_files(self.folder))
        files = self.ledger.files
        planner = SnapshotPlanner(
            self.resolved.rules,
            discovery.types,
            pairs,
            self.folder,
            files,
            branch_paths,
            self.namespaces,
            self.resolved.target.drop_fields,
        )
        seq, secrets = await self._plan_snapshot(planner, pairs, discovery)
        plan, count = planner.plan, planner.writes
        for secret, rtype in secrets:
            try:
                secret_plan = await self.secrets.plan(
                    secret, rtype, self.folder, self.ledger.files.get(secret)
                )
            except NotCiphertext as error:
                plan.hold(secret, error)
                continue
            if secret_plan is not None:
                plan.merge(secret_plan)
            if self.secrets.writable:
                count += 1
        self.ledger.cover(newly, seq)
        self.ledger.remember(plan)
        self.ledger.hold(plan.quarantine)
        message = reconcile_message(
            plan, count, self.key, self.resolved.provider.reconcile_template
        )
        stats = {"created": plan.created, "updated": plan.updated, "deleted": plan.deleted}
        log.info(
            "reconcile planned",
            extra={
                "target": self.key,
                "objects": count,
                "files_adopted": plan.adopted,
                **{f"files_{k}": v for k, v in stats.items()},
            },
        )

        epoch = self.progress.sync_epoch

        def pushed(sha: str | None, at: float) -> None:
            progress = self.progress
            progress.last_reconcile_time = progress.snapshot_completed_time = at
            progress.snapshot_stats = stats
            if first and progress.sync_epoch == epoch:
                progress.snapshot_synced = progress.stream_live = True
            self._pushed(sha, at)

        # A reconcile commit already holds everything the snapshot found; the interval exists
        # to share a push among many small commits, and would only delay the mirror here.
        await self._submit(plan, message, pushed, dict(plan.quarantine), push_now=True)
        self.initial_snapshot_sent = self.initial_snapshot_sent or first

    async def _plan_snapshot(
        self, planner: SnapshotPlanner, pairs: set[tuple[str, str]], discovery: Discovery
    ) -> tuple[int, list[tuple[ObjectKey, ResourceType]]]:
        """Feed ``planner`` the journal's objects of ``pairs`` and the folder's files, a page of
        each at a time, then let it plan the deletions. Returns the seq the snapshot reflects
        and the Secrets among the objects (the SecretWriter plans those)."""
        secrets: list[tuple[ObjectKey, ResourceType]] = []
        async with self.reader.snapshot_pages(pairs) as snapshot:
            async for page in snapshot.pages:
                contents = await self._branch_contents(planner.branch_paths_of(page))
                handed_over = len(planner.plan.changes)
                # Rendering thousands of objects takes seconds: off the event loop, so
                # watches, the journal writer and the health endpoints keep answering.
                await asyncio.to_thread(planner.add, page, contents)
                await self._hand_over_contents(planner.plan, handed_over)
                secrets += self._secrets_of(page, discovery)
        unidentified = planner.unidentified()
        for start in range(0, len(unidentified), BRANCH_READ_BATCH):
            contents = await self._branch_contents(unidentified[start : start + BRANCH_READ_BATCH])
            await asyncio.to_thread(planner.identify, contents)
        await asyncio.to_thread(planner.finish)
        return snapshot.seq, secrets

    async def _branch_contents(self, paths: list[str]) -> dict[str, bytes]:
        repository = self.committer.repository
        return await self.committer.on_git_thread(
            lambda: {path: repository.read(path) or b"" for path in paths}
        )

    async def _hand_over_contents(self, plan: FilePlan, start: int) -> None:
        """Give the clone the contents planned from ``plan.changes[start]`` on, keeping only
        their IDs: a reconcile holds one page of files in memory, not every file."""
        pending = [
            (index, change.content)
            for index, change in enumerate(plan.changes[start:], start)
            if isinstance(change.content, bytes)
        ]
        blobs = await self.committer.store_blobs([content for _, content in pending])
        for (index, _), blob in zip(pending, blobs, strict=True):
            plan.changes[index] = FileChange(plan.changes[index].path, blob)

    def _secrets_of(
        self, objects: list[StoredObject], discovery: Discovery
    ) -> list[tuple[ObjectKey, ResourceType]]:
        """The Secrets among ``objects`` this target writes: the SecretWriter plans them."""
        found = []
        for stored in objects:
            rtype = discovery.types.get((stored.key.api_group, stored.key.resource))
            if rtype is None or not is_sensitive(rtype):
                continue
            if selected(
                self.resolved.rules,
                rtype,
                stored.key.namespace,
                "CREATE",
                stored.body,
                self.namespaces,
            ):
                found.append((stored.key, rtype))
        return found

    async def _process(self, events: list[JournalEvent]) -> None:
        rules, ledger = self.resolved.rules, self.ledger
        submitted_to = ledger.seq
        excluded = self.resolved.target.exclude_field_managers
        excluded_users = self.resolved.target.exclude_users
        managers = (
            await self.reader.change_managers(events[0].seq, events[-1].seq) if excluded else {}
        )
        for event in events:
            ledger.seq = event.seq
            if event.kind in (EventKind.SEED_BEGIN, EventKind.SEED_END):
                continue
            rtype = event_type(event)
            since = ledger.covered_since(event)
            if since is None or event.seq <= since:
                continue
            if not selected(
                rules, rtype, event.namespace, event.kind.value, event.body, self.namespaces
            ):
                continue
            EVENTS_PROCESSED.labels(target=self.key).inc()
            if event.body is not None and is_excluded_object(rtype, event.body):
                continue
            if made_only_by(managers.get(event.seq), excluded, event.kind):
                continue
            # Asked here only when users are excluded: otherwise only changes that make a
            # commit are attributed (and counted), as they always were.
            attribution = await self._attribute(event, rtype) if excluded_users else None
            if (
                attribution is not None
                and event.kind is not EventKind.DELETE
                and attribution.user in excluded_users
            ):
                continue
            replayed = ledger.replayed(event)
            try:
                plan = await self._plan(event, rtype, replayed)
            except TRANSIENT_ERRORS:
                raise
            except Exception as error:
                await self._quarantine(event, error)
                submitted_to = event.seq
                continue
            if plan is None:
                if event.key in ledger.quarantined and event.kind is EventKind.DELETE:
                    await self._release(event.key)
                    submitted_to = event.seq
                continue
            ledger.remember(plan)
            released: dict[ObjectKey, str | None] = (
                {event.key: None} if ledger.release(event.key) else {}
            )
            if replayed:
                # Committed before this consumer (re)started: keep its record, commit nothing.
                await self.committer.submit(
                    Submission(
                        self.key,
                        event.seq,
                        dict(ledger.covered),
                        records=plan.records,
                        quarantine=released,
                    )
                )
            else:
                await self._submit_event(event, rtype, plan, released, attribution)
            submitted_to = event.seq
        if submitted_to < ledger.seq:
            await self.committer.submit(Submission(self.key, ledger.seq, dict(ledger.covered)))

    async def _plan(
        self, event: JournalEvent, rtype: ResourceType, replayed: bool
    ) -> FilePlan | None:
        """What one event changes in the folder; raises when the object cannot be written."""
        known = self.ledger.files.get(event.key)
        if is_sensitive(rtype) and event.kind is not EventKind.DELETE:
            if replayed:
                return self._replayed_secret(event, rtype, known)
            return await self.secrets.plan(event.key, rtype, self.folder, known)
        existing = None
        if event.kind is EventKind.DELETE and known is None and event.body is not None:
            existing = await self._identified_file(event, rtype)
        # Sanitizing and rendering a large object takes long: off the event loop.
        return await asyncio.to_thread(
            plan_event, event, rtype, self.folder, known, existing, self.resolved.target.drop_fields
        )

    def _replayed_secret(
        self, event: JournalEvent, rtype: ResourceType, known: FileRecord | None
    ) -> FilePlan | None:
        """The record of a Secret change committed before this run, without its content.

        The value is read from the API server only when a file is written, and what is there
        now may be newer than what was committed: recording its fingerprint would make the
        newer change look written. Keeping the fingerprint recorded before this commit is as
        wrong: a change back to that older value would look written. The path is recorded with
        an unknown fingerprint instead, so the Secret's next change, whatever its value, is
        written.
        """
        assert event.body is not None
        path = manifest_path(rtype, event.body, self.folder)
        if known == (path, UNKNOWN_FINGERPRINT):
            return None
        plan = FilePlan()
        plan.records.append((event.key, path, UNKNOWN_FINGERPRINT))
        return plan

    async def _quarantine(self, event: JournalEvent, error: Exception) -> None:
        plan = FilePlan()
        plan.hold(event.key, error)
        self.ledger.hold(plan.quarantine)
        covered = dict(self.ledger.covered)
        await self.committer.submit(
            Submission(self.key, event.seq, covered, quarantine=dict(plan.quarantine))
        )

    async def _release(self, key: ObjectKey) -> None:
        self.ledger.release(key)
        await self.committer.submit(
            Submission(self.key, self.ledger.seq, dict(self.ledger.covered), quarantine={key: None})
        )

    def _show_quarantine(self, quarantined: Mapping[ObjectKey, str]) -> None:
        self.progress.quarantined = {
            describe(key): reason for key, reason in sorted(quarantined.items())
        }
        OBJECTS_QUARANTINED.labels(target=self.key).set(len(quarantined))
        # News for the status: a quarantine may come with no push that would tell it.
        self.board.notify()

    def _quarantine_retry_due(self) -> bool:
        return time.monotonic() - self.quarantine_retried_at >= QUARANTINE_RETRY_S

    async def _retry_quarantined(self) -> None:
        """Plan quarantined objects again from their latest journaled state, under the current
        rules; a retried object is committed at the consumer's position, never at its old
        event's seq (see :mod:`reverserd.committer.trailers`)."""
        self.quarantine_retried_at = time.monotonic()
        discovery = self.discovery()
        if discovery is None:
            return
        for key in list(self.ledger.quarantined):
            rtype = discovery.types.get((key.api_group, key.resource))
            if rtype is None:
                continue  # a type not served says nothing about the object
            event = await self.reader.latest_event(key)
            if event is None:
                # The object is gone and so is its DELETE (compacted while this target was
                # detached, or not read yet): nothing of it is left to write.
                await self._release(key)
                continue
            if self.ledger.covered_since(event) is None or not selected(
                self.resolved.rules,
                rtype,
                event.namespace,
                event.kind.value,
                event.body,
                self.namespaces,
            ):
                # No rule selects it any more: there is nothing to write, so nothing is held.
                await self._release(key)
                continue
            try:
                plan = await self._plan(event, rtype, replayed=False)
            except TRANSIENT_ERRORS:
                raise
            except Exception:
                continue
            if plan is None:
                continue
            self.ledger.remember(plan)
            self.ledger.release(key)
            await self._submit_event(event, rtype, plan, {key: None})

    async def _identified_file(self, event: JournalEvent, rtype: ResourceType) -> bytes | None:
        """A file this target did not record writing, but whose content names this object."""
        assert event.body is not None
        path = manifest_path(rtype, event.body, self.folder)
        content = await self.committer.read(path)
        if content is None:
            return None
        kinds: Mapping[tuple[str, str], ResourceType] = {(rtype.group, rtype.kind): rtype}
        return content if identity_of(content, kinds) == event.key else None

    async def _attribute(self, event: JournalEvent, rtype: ResourceType) -> Attribution | None:
        """Who made the change, when attribution is on (None when it is off)."""
        if self.resolver is None:
            return None
        live = is_sensitive(rtype) and event.kind is not EventKind.DELETE
        return await self.resolver.attribute(event, read_live=live)

    async def _submit_event(
        self,
        event: JournalEvent,
        rtype: ResourceType,
        plan: FilePlan,
        quarantine: Mapping[ObjectKey, str | None],
        attribution: Attribution | None = None,
    ) -> None:
        """One event's commit, authored by whoever made the change when that is known
        (``attribution``, when the caller already asked)."""
        if attribution is None:
            attribution = await self._attribute(event, rtype)
        lines = attribution.lines if attribution is not None else ()
        message = commit_message(
            event, rtype, self.key, self.ledger.seq, lines, self.resolved.provider.event_template
        )
        author = attribution.author if attribution is not None else None
        await self._submit(plan, message, self._pushed, quarantine, author)

    async def _submit(
        self,
        plan: FilePlan,
        message: str,
        on_pushed: Callable[[str | None, float], None],
        quarantine: Mapping[ObjectKey, str | None] | None = None,
        author: pygit2.Signature | None = None,
        push_now: bool = False,
    ) -> None:
        changes = list(plan.changes)
        if self.resolved.target.kustomization:
            changes += self._kustomizations(plan)
        if changes and not self.readme_present:
            changes.append(FileChange(self.readme_path, README))
            self.readme_present = True
        keys = self.secrets.keys
        if changes and keys is not None and keys.usable:
            wanted = sops_config_for(self.sops_config, keys.recipients)
            if wanted != self.sops_config:
                changes.append(FileChange(self.sops_config_path, wanted))
                self.sops_config = wanted
        await self.committer.submit(
            Submission(
                self.key,
                self.ledger.seq,
                dict(self.ledger.covered),
                changes,
                message,
                author,
                records=list(plan.records),
                on_pushed=on_pushed,
                on_quarantined=self.ledger.hold,
                quarantine=dict(quarantine or {}),
                push_now=push_now,
            )
        )

    def _kustomizations(self, plan: FilePlan) -> list[FileChange]:
        """The ``kustomization.yaml`` edits that go with ``plan``, in the same commit: each
        folder it touches lists the files this target has there (its ledger already holds the
        plan); the committer applies them to the file as the branch has it, see
        :mod:`reverserd.targets.kustomization`."""
        touched = folders_of(plan.changes, (path for _, path, _ in plan.records if path))
        written = self.ledger.names_in(touched)
        deleted: dict[str, set[str]] = {}
        for change in plan.changes:
            if change.content is None:
                folder, _, name = change.path.rpartition("/")
                deleted.setdefault(folder, set()).add(name)
        edits = []
        for folder in sorted(touched):
            path = kustomization_path(folder)
            listing = ListingEdit(
                path, frozenset(written[folder]), frozenset(deleted.get(folder, ()))
            )
            edits.append(FileChange(path, listing))
        return edits

    def _pushed(self, sha: str | None, at: float) -> None:
        progress = self.progress
        if sha is not None:
            progress.last_commit = sha
            progress.last_push_time = at
        progress.last_error = None
        self.board.notify()


def _differing(
    contents: Mapping[str, bytes | None], expected: Mapping[str, tuple[ObjectKey, str]]
) -> list[str]:
    """The files whose content is unread (too large) or not the one recorded (to be compared
    closer)."""
    return [
        path
        for path, current in contents.items()
        if current is None or content_hash(current) != expected[path][1]
    ]


class CursorCompacted(Exception):
    """Compaction passed this running consumer; a fresh one re-syncs from the latest state."""
