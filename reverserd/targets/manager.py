"""Starts and stops target consumers and their committers as the configuration changes.

One :class:`~reverserd.committer.branch.Branch` (and so one committer at a time) per repository
URL and branch: targets on the same branch share it, and so do GitProviders with the same URL,
so they never race each other. A consumer is restarted when anything it depends on changes (its
rules, path, branch or provider); it resumes from its cursor, so a restart costs a replay, never
an event.

A consumer task that ends while its target is still wanted (whatever ended it) is noticed at
once: the failure is shown in the target's status and a fresh consumer starts from the cursor,
so a target never stays Ready behind a consumer that is gone.

A GitTarget whose place changes (``spec.path``, ``spec.branch``, its provider or the provider's
URL) is a new target: its cursor and its record of written files are dropped, together with
whatever its committer still held for it, and it starts with a full sync of the new place;
nothing is written to or deleted from the old folder afterwards. The place each target writes
to is recorded in the journal (``target_places``), so a change made while its consumer was not
running (reverserd stopped or not leader, the target invalid for a while) is seen when it starts
again, not only one made while it runs. A GitTarget that was deleted is forgotten the same way,
also when it was deleted while reverserd was stopped (checked once the configuration is synced),
so it no longer holds back journal compaction and a re-created one starts afresh. A change of
rules is no change of place: it is seen per type through the cursor's covered selections.

A suspended GitTarget (``spec.suspend: true``) has no consumer: its events wait in the journal
behind its cursor, as those of a target that is not ready do, and the consumer started on resume
commits every one of them in order. A change of the drift mode or a reconcile request is handed
to the running consumer, which restarts nothing.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reverserd.attribution.resolver import Resolver
from reverserd.committer.branch import Branch
from reverserd.committer.committer import (
    Committer,
    ProviderProblem,
    PushPolicy,
    clone_dir,
    remove_clones_of_older_versions,
)
from reverserd.committer.credentials import load_credentials
from reverserd.config.model import Provider
from reverserd.config.plane import ConfigPlane, ResolvedTarget
from reverserd.config.status import StatusBoard
from reverserd.encryption.fingerprint import load_or_create_key
from reverserd.encryption.sops import Sops
from reverserd.git import BranchRepository, GitCredentials
from reverserd.git.urls import branch_key
from reverserd.journal import JournalReader, JournalWriter, TargetPlace
from reverserd.kube.client import KubeClient
from reverserd.kube.shards import ShardCoordinator
from reverserd.redaction import mask_url
from reverserd.supervise import supervise
from reverserd.targets.consumer import TargetConsumer
from reverserd.targets.drift import DEFAULT_DRIFT_INTERVAL_S
from reverserd.targets.ownership import Ownership
from reverserd.targets.secrets import SecretWriter
from reverserd.watch.manager import WatchManager

if TYPE_CHECKING:
    from reverserd.git.signing import CommitSigner

log = logging.getLogger(__name__)

# A stopped task that has not ended after this long is cancelled again (see _hand_over).
RECANCEL_S = 1.0


@dataclass
class _Running:
    resolved: ResolvedTarget
    consumer: TargetConsumer
    task: asyncio.Task[None]


class TargetManager:
    def __init__(
        self,
        client: KubeClient,
        journal: JournalWriter,
        plane: ConfigPlane,
        watches: WatchManager,
        board: StatusBoard,
        state_dir: Path,
        identity: tuple[str, str],
        sops: Sops,
        ownership: Ownership,
        resolver: Resolver | None = None,
        shards: ShardCoordinator | None = None,
        drift_interval_s: float = DEFAULT_DRIFT_INTERVAL_S,
    ) -> None:
        """With ``shards``, only the targets of branches in this replica's buckets run here."""
        self.client = client
        self.shards = shards
        self.drift_interval_s = drift_interval_s
        self.ownership = ownership
        self.journal = journal
        self.plane = plane
        self.watches = watches
        self.board = board
        self.state_dir = state_dir
        self.identity = identity
        self.sops = sops
        self.resolver = resolver
        self.fingerprint_key = load_or_create_key(state_dir)
        self.branches: dict[str, tuple[Branch, asyncio.Task[None], tuple[object, ...]]] = {}
        # One clone directory is only ever used by one committer at a time, even while a
        # replaced committer's last Git operation is still finishing.
        self.clone_locks: dict[Path, asyncio.Lock] = {}
        self.consumers: dict[str, _Running] = {}
        # Consumers and committers (with their clone's lock) stopped here that may not have
        # ended yet, by branch: a hand-over of their bucket waits for them.
        self._stopping: dict[str, list[tuple[asyncio.Task[None], asyncio.Lock | None]]] = {}
        # Set when a consumer task ended without being stopped here: the next pass restarts it.
        self._consumer_ended = asyncio.Event()
        self._closing = False
        # Sharded: whether what an earlier run left of targets on buckets now held elsewhere
        # was dropped (once, when this replica first holds its share).
        self._leftovers_dropped = shards is None
        # Reads the targets' recorded places; open while the manager runs.
        self._reader: JournalReader

    async def run(self) -> None:
        # A restart after a failure starts from nothing: the previous group's tasks are gone.
        self.branches.clear()
        self.consumers.clear()
        self._stopping.clear()
        self._closing = False
        self._reader = await JournalReader.open(self.state_dir)
        try:
            for removed in await asyncio.to_thread(remove_clones_of_older_versions, self.state_dir):
                log.info("removed a clone of an older version", extra={"clone": str(removed)})
            await self._forget_deleted_targets()
            await self._run()
        finally:
            await self._reader.close()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.ownership.run(self.plane))
            if self.shards is not None:
                group.create_task(self.shards.run(self._hand_over, self._drop_bucket, self._drain))
            try:
                while True:
                    seen = self.plane.version
                    seen_shards = self.shards.version if self.shards is not None else 0
                    self._consumer_ended.clear()
                    await self._reconcile(group)
                    await self._wait_for_work(seen, seen_shards)
            finally:
                # The group cancels every consumer now: that is no failure to report.
                self._closing = True

    async def _wait_for_work(self, seen: int, seen_shards: int) -> None:
        """Until the configuration or the buckets held change, or a consumer ended on its own."""
        waits = [
            asyncio.ensure_future(self.plane.wait_for_change(seen)),
            asyncio.ensure_future(self._consumer_ended.wait()),
        ]
        if self.shards is not None:
            waits.append(asyncio.ensure_future(self.shards.wait_for_change(seen_shards)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def _runs_here(self, resolved: ResolvedTarget) -> bool:
        return self.shards is None or self.shards.owns(resolved.branch)

    def _mine(self) -> dict[str, ResolvedTarget]:
        """The targets this replica runs: all of them, or those of the branches it holds."""
        return {k: r for k, r in self.plane.state.targets.items() if self._runs_here(r)}

    async def _reconcile(self, group: asyncio.TaskGroup) -> None:
        if not self._leftovers_dropped and self.shards is not None and self.shards.settled:
            self._leftovers_dropped = True
            await self._drop_leftovers()
        mine = self._mine()
        await self._retire_reconfigured_branches()
        existing = {f"{ns}/{name}" for ns, name in self.plane.informers["gittargets"].cache}
        for key in list(self.consumers):
            running = self.consumers.get(key)
            if running is None:
                continue  # stopped by a hand-over while this pass waited
            wanted = mine.get(key)
            if wanted == running.resolved:
                running.resolved = running.consumer.resolved = wanted
                continue
            if wanted is None and key in self.plane.state.targets:
                # Its branch went to another replica: stopped, not forgotten.
                self._stop_consumer(key, running.resolved)
                continue
            self._stop_consumer(key, wanted)
            if key not in existing or (
                wanted is not None and _place(wanted) != _place(running.resolved)
            ):
                await self._forget(key, running.resolved)
        for key, resolved in sorted(mine.items()):
            if key in self.consumers or resolved.target.suspend:
                continue
            await self._claim_place(key, resolved)
            if not self._runs_here(resolved):
                continue  # its bucket was handed over while the place was recorded
            branch = self._branch(group, resolved)
            self.board.target(key).branch = branch.key
            consumer = TargetConsumer(
                resolved,
                branch,
                self.state_dir,
                self.journal,
                self.board,
                lambda: self.watches.discovery,
                self.watches.seeded,
                SecretWriter(
                    self.client,
                    self.sops,
                    self.fingerprint_key,
                    key,
                    resolved.target.namespace,
                    resolved.target.encryption,
                    self.board.target(key),
                    resolved.target.drop_fields,
                ),
                self.plane.namespaces,
                self.resolver,
                self.drift_interval_s,
            )
            task = group.create_task(
                supervise(f"target {key}", consumer.run, self._record_failure(key))
            )
            task.add_done_callback(self._consumer_done(key))
            self.consumers[key] = _Running(resolved, consumer, task)
            log.info("started target consumer", extra={"target": key})
        used = {r.resolved.branch for r in self.consumers.values()}
        for key in list(self.branches):
            # A draining branch's committer pushes what it holds before its hand-over.
            if key not in used and not (self.shards is not None and self.shards.draining(key)):
                self._retire_branch(key)
        for key, tasks in list(self._stopping.items()):
            self._stopping[key] = [(t, lock) for t, lock in tasks if not t.done()]
            if not self._stopping[key]:
                del self._stopping[key]

    def _retire_branch(self, key: str) -> None:
        branch, task, _ = self.branches.pop(key)
        task.cancel()
        self._stopping.setdefault(key, []).append((task, branch.current.clone_lock))

    async def _drain(self, bucket: int) -> None:
        """First step of a graceful hand-over, the bucket still held: stop its consumers, so
        nothing new is committed, then have each of its committers push what it holds. The
        caller bounds the wait; the hand-over that follows stops the committers."""
        assert self.shards is not None
        shards = self.shards
        for key, running in list(self.consumers.items()):
            if shards.bucket(running.resolved.branch) == bucket:
                self._stop_consumer(key, running.resolved)
        consumers = {
            task
            for key, tasks in self._stopping.items()
            if shards.bucket(key) == bucket
            for task, lock in tasks
            if lock is None
        }
        if consumers:
            # A consumer cancelled half way through handing a change over hands nothing.
            await asyncio.wait(consumers)
        committers = [
            branch.current
            for key, (branch, _, _) in self.branches.items()
            if shards.bucket(key) == bucket
        ]
        # A committer that stopped (failed) meanwhile pushes nothing more: what it held is
        # abandoned, as in a hand-over without drain, and adopted by the next owner.
        await asyncio.gather(
            *(committer.push_committed() for committer in committers), return_exceptions=True
        )

    async def _hand_over(self, bucket: int) -> None:
        """Stop every consumer and committer of the bucket's branches, and return only once the
        Git operation each committer had in flight has ended (finished or abandoned: what was
        not pushed stays in the journal for the next owner). The coordinator then releases the
        bucket's Lease and, unless the process is stopping, drops the bucket's state
        (:meth:`_drop_bucket`)."""
        assert self.shards is not None
        shards = self.shards
        for key, running in list(self.consumers.items()):
            if shards.bucket(running.resolved.branch) == bucket:
                self._stop_consumer(key, running.resolved)
        for key in list(self.branches):
            if shards.bucket(key) == bucket:
                self._retire_branch(key)
        # Also what an earlier pass stopped and has not ended yet.
        stopping = [
            entry
            for key in list(self._stopping)
            if shards.bucket(key) == bucket
            for entry in self._stopping.pop(key)
        ]
        pending = {task for task, _ in stopping if not task.done()}
        while pending:
            # Cancelled again until it ends: asyncio.wait_for in Python 3.11 drops a
            # cancellation that arrives just as what it waits for completes.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
        for _, lock in stopping:
            if lock is not None:
                # Released by the stopped committer once its Git thread is idle.
                async with lock:
                    pass

    async def _drop_bucket(self, bucket: int) -> None:
        """Drop what this replica holds of a bucket: before the bucket runs here taken from
        another replica, so each target adopts its folder afresh instead of replaying what the
        other may already have pushed; and after handing it over, since the streams only its
        targets needed stop with it and their cursors would point into a gap. On shutdown the
        state stays, for a restart that takes the bucket back (its watches resume where they
        stopped)."""
        await self._drop_state(lambda index: index == bucket)

    async def _drop_leftovers(self) -> None:
        """Once this replica holds its share, drop what an earlier run left of targets on
        buckets now held elsewhere (they went to other replicas while it was down): were one
        taken back, it would start afresh anyway."""
        assert self.shards is not None
        held = set(self.shards.held)
        await self._drop_state(lambda index: index not in held)

    async def _drop_state(self, which: Callable[[int], bool]) -> None:
        """Drop the journal state (cursor, records, place) and the clones of the targets this
        replica recorded on the branches of the buckets ``which`` selects: each adopts its
        folder when it runs here again."""
        assert self.shards is not None
        for key in sorted(await self._reader.journaled_targets()):
            place = await self._reader.target_place(key)
            if place is None or not which(self.shards.bucket(place.remote)):
                continue
            await self.journal.forget_target(key)
            clone = clone_dir(self.state_dir, place.remote, place.provider.split("/")[0])
            async with self.clone_locks.setdefault(clone, asyncio.Lock()):
                await asyncio.to_thread(shutil.rmtree, clone, True)
            log.info("dropped a target's state: its bucket moved", extra={"target": key})

    async def _forget(self, key: str, resolved: ResolvedTarget) -> None:
        """Drop a target's cursor, records and whatever its branch still holds for it."""
        if key not in self.plane.state.targets:
            self.board.targets.pop(key, None)
        found = self.branches.get(resolved.branch)
        if found is not None:
            await found[0].current.forget(key)
        await self.journal.forget_target(key)
        log.info("forgot target state", extra={"target": key})

    async def _forget_deleted_targets(self) -> None:
        """Forget targets the journal still holds whose GitTarget is gone (deleted while
        reverserd was stopped). Run once the configuration is synced, never on a cache that may
        be partial."""
        existing = {f"{ns}/{name}" for ns, name in self.plane.informers["gittargets"].cache}
        for key in sorted(await self._reader.journaled_targets() - existing):
            await self.journal.forget_target(key)
            log.info("forgot the state of a deleted target", extra={"target": key})

    async def _claim_place(self, key: str, resolved: ResolvedTarget) -> None:
        """Before a target's consumer starts: if the journal's state of the target is about
        another place, drop it (and what that place's committer still holds for the target), so
        the consumer syncs its new place afresh; then record the place it writes to now."""
        place = _place(resolved)
        recorded = await self._reader.target_place(key)
        if recorded == place:
            return
        if recorded is not None:
            old = self.branches.get(recorded.remote)
            if old is not None:
                await old[0].current.forget(key)
            await self.journal.forget_target(key)
            self._hold_gates(key)
            log.info(
                "target moved while its consumer was not running, starting afresh",
                extra={"target": key, "from": f"{recorded.remote}:{recorded.path}"},
            )
        await self.journal.record_place(key, place)

    def remote_error(self, target: str) -> str | None:
        """The last push or connection error of the committer a target writes through."""
        running = self.consumers.get(target)
        return running.consumer.branch.current.last_error if running else None

    async def _retire_reconfigured_branches(self) -> None:
        """A provider's Secret or push settings changed: rebuild its committer and consumers.

        The new committer waits for the clone until the old one's Git operation has ended.
        """
        wanted: dict[str, tuple[object, ...]] = {}
        for resolved in sorted(self.plane.state.targets.values(), key=lambda r: r.key):
            wanted.setdefault(resolved.branch, _committer_config(resolved))
        for key, (_, _, config) in list(self.branches.items()):
            if key in wanted and wanted[key] != config:
                self._retire_branch(key)
                for target, running in list(self.consumers.items()):
                    if running.resolved.branch == key:
                        self._stop_consumer(target, self.plane.state.targets.get(target))
                log.info("provider settings changed, reconnecting", extra={"remote": key})

    def _branch(self, group: asyncio.TaskGroup, resolved: ResolvedTarget) -> Branch:
        provider, branch_name = resolved.provider, resolved.target.branch
        key = resolved.branch
        if key in self.branches:
            return self.branches[key][0]

        def providers() -> list[str]:
            return sorted(
                p.key
                for p in self.plane.state.providers.values()
                if branch_key(p.url, branch_name) == key
            )

        clone = clone_dir(self.state_dir, key, provider.namespace)

        async def credentials() -> GitCredentials:
            return await load_credentials(self.client, provider)

        async def signer() -> CommitSigner | None:
            if provider.signing is None:
                return None
            # Imported on first use: signing needs the cryptography package, which a daemon
            # that signs nothing never loads (about 9 MB of RSS).
            from reverserd.committer.signing import load_signer

            try:
                loaded = await load_signer(self.client, provider.namespace, provider.signing)
            except ProviderProblem:
                for key in providers():
                    self.board.report_signing_key(key, None)
                raise
            for key in providers():
                self.board.report_signing_key(key, loaded.public_key)
            return loaded

        async def connect() -> BranchRepository:
            given = await credentials()
            return BranchRepository(clone, provider.url, branch_name, given, await signer())

        async def proved_write_access() -> None:
            await self.ownership.proved(key, provider.namespace)

        lock = self.clone_locks.setdefault(clone, asyncio.Lock())

        def make() -> Committer:
            return Committer(
                key,
                lock,
                connect,
                self.journal,
                self.board,
                _committer_identity(provider, self.identity),
                PushPolicy(provider.push_interval_s, provider.push_max_commits),
                providers,
                proved_write_access,
                credentials,
                self.shards.may_write(key) if self.shards is not None else None,
                signer if provider.signing is not None else None,
            )

        display = f"{mask_url(provider.url)}#{branch_name}"
        branch = Branch(key, display, make, self.board, providers)
        task = group.create_task(branch.run())
        self.branches[key] = (branch, task, _committer_config(resolved))
        return branch

    def _stop_consumer(self, key: str, wanted: ResolvedTarget | None) -> None:
        """Stop the target's consumer; ``wanted`` is what the target is to be from now on.

        When what it selects, or where it writes, changes, its gates hold again until the new
        consumer's first sync is pushed: a first sync under the old rules (none at all, while
        the WatchRule was still on its way) says nothing about what the new rules select. Other
        changes (credentials, push policy) keep the gates as they are.
        """
        running = self.consumers.pop(key)
        running.task.cancel()
        self._stopping.setdefault(running.resolved.branch, []).append((running.task, None))
        log.info("stopped target consumer", extra={"target": key})
        if wanted is None or _selection(wanted) == _selection(running.resolved):
            return
        self._hold_gates(key)

    def _hold_gates(self, key: str) -> None:
        """Not synced, not live, until the target's next first sync is pushed."""
        progress = self.board.target(key)
        progress.sync_epoch += 1
        progress.snapshot_synced = progress.stream_live = False
        progress.waiting_reason, progress.waiting_message = "Syncing", "initial snapshot pending"
        self.board.notify()

    def _consumer_done(self, key: str) -> Callable[[asyncio.Task[None]], None]:
        """Notice a consumer task that ended while its target is still wanted."""

        def done(task: asyncio.Task[None]) -> None:
            running = self.consumers.get(key)
            if self._closing or running is None or running.task is not task:
                return  # stopped here on purpose
            del self.consumers[key]
            if task.cancelled():
                error: BaseException = asyncio.CancelledError("consumer task cancelled")
            else:
                error = task.exception() or RuntimeError("consumer task returned")
            log.error(
                "target consumer ended unexpectedly, starting it again",
                extra={"target": key},
                exc_info=error,
            )
            self._record_failure(key)(error)
            self._consumer_ended.set()

        return done

    def _record_failure(self, key: str) -> Callable[[BaseException], None]:
        def record(error: BaseException) -> None:
            progress = self.board.target(key)
            progress.last_error = f"{type(error).__name__}: {error}"
            # Not live until the restarted consumer's first sync is pushed again.
            progress.stream_live = False
            progress.waiting_reason = "ConsumerFailed"
            progress.waiting_message = (
                f"{progress.last_error}; restarting from the cursor after a backoff"
            )
            self.board.notify()

        return record


def _selection(resolved: ResolvedTarget) -> tuple[object, ...]:
    """What a target mirrors and where: its place and its rules, in whatever order they came."""
    return (_place(resolved), frozenset(resolved.rules))


def _place(resolved: ResolvedTarget) -> TargetPlace:
    """Where a target writes; a target whose place changes starts afresh."""
    return TargetPlace(resolved.branch, resolved.provider.key, resolved.target.path)


def _committer_config(resolved: ResolvedTarget) -> tuple[object, ...]:
    provider = resolved.provider
    return (
        provider.key,
        provider.secret_name,
        provider.push_interval_s,
        provider.push_max_commits,
        provider.insecure_skip_host_key,
        provider.signing,
        provider.committer,
    )


def _committer_identity(provider: Provider, configured: tuple[str, str]) -> tuple[str, str]:
    """``spec.commit.committer``, each part left out taken from the daemon's flags."""
    if provider.committer is None:
        return configured
    name, email = provider.committer
    return name or configured[0], email or configured[1]
