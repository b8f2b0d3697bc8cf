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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reverserd.attribution.resolver import Resolver
from reverserd.committer.branch import Branch
from reverserd.committer.committer import (
    Committer,
    PushPolicy,
    clone_dir,
    remove_clones_of_older_versions,
)
from reverserd.committer.credentials import load_credentials
from reverserd.config.plane import ConfigPlane, ResolvedTarget
from reverserd.config.status import StatusBoard
from reverserd.encryption.fingerprint import load_or_create_key
from reverserd.encryption.sops import Sops
from reverserd.git import BranchRepository, GitCredentials, mask_url
from reverserd.git.urls import branch_key
from reverserd.journal import JournalReader, JournalWriter, TargetPlace
from reverserd.kube.client import KubeClient
from reverserd.supervise import supervise
from reverserd.targets.consumer import TargetConsumer
from reverserd.targets.drift import DEFAULT_DRIFT_INTERVAL_S
from reverserd.targets.ownership import Ownership
from reverserd.targets.secrets import SecretWriter
from reverserd.watch.manager import WatchManager

log = logging.getLogger(__name__)


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
        drift_interval_s: float = DEFAULT_DRIFT_INTERVAL_S,
    ) -> None:
        self.client = client
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
        # Set when a consumer task ended without being stopped here: the next pass restarts it.
        self._consumer_ended = asyncio.Event()
        self._closing = False
        # Reads the targets' recorded places; open while the manager runs.
        self._reader: JournalReader

    async def run(self) -> None:
        # A restart after a failure starts from nothing: the previous group's tasks are gone.
        self.branches.clear()
        self.consumers.clear()
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
            try:
                while True:
                    seen = self.plane.version
                    self._consumer_ended.clear()
                    await self._reconcile(group)
                    await self._wait_for_work(seen)
            finally:
                # The group cancels every consumer now: that is no failure to report.
                self._closing = True

    async def _wait_for_work(self, seen: int) -> None:
        """Until the configuration changes or a consumer ended on its own."""
        waits = [
            asyncio.ensure_future(self.plane.wait_for_change(seen)),
            asyncio.ensure_future(self._consumer_ended.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _reconcile(self, group: asyncio.TaskGroup) -> None:
        state = self.plane.state
        await self._retire_reconfigured_branches()
        existing = {f"{ns}/{name}" for ns, name in self.plane.informers["gittargets"].cache}
        for key in list(self.consumers):
            running = self.consumers[key]
            wanted = state.targets.get(key)
            if wanted == running.resolved:
                running.resolved = running.consumer.resolved = wanted
                continue
            self._stop_consumer(key, wanted)
            if key not in existing or (
                wanted is not None and _place(wanted) != _place(running.resolved)
            ):
                await self._forget(key, running.resolved)
        for key, resolved in sorted(state.targets.items()):
            if key in self.consumers or resolved.target.suspend:
                continue
            await self._claim_place(key, resolved)
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
                ),
                self.resolver,
                self.drift_interval_s,
            )
            task = group.create_task(
                supervise(f"target {key}", consumer.run, self._record_failure(key))
            )
            task.add_done_callback(self._consumer_done(key))
            self.consumers[key] = _Running(resolved, consumer, task)
            log.info("started target consumer", extra={"target": key})
        used = {_branch_key(r.resolved) for r in self.consumers.values()}
        for key in list(self.branches):
            if key not in used:
                self.branches.pop(key)[1].cancel()

    async def _forget(self, key: str, resolved: ResolvedTarget) -> None:
        """Drop a target's cursor, records and whatever its branch still holds for it."""
        if key not in self.plane.state.targets:
            self.board.targets.pop(key, None)
        found = self.branches.get(_branch_key(resolved))
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
            wanted.setdefault(_branch_key(resolved), _committer_config(resolved))
        for key, (_, task, config) in list(self.branches.items()):
            if key in wanted and wanted[key] != config:
                task.cancel()
                del self.branches[key]
                for target, running in list(self.consumers.items()):
                    if _branch_key(running.resolved) == key:
                        self._stop_consumer(target, self.plane.state.targets.get(target))
                log.info("provider settings changed, reconnecting", extra={"remote": key})

    def _branch(self, group: asyncio.TaskGroup, resolved: ResolvedTarget) -> Branch:
        provider, branch_name = resolved.provider, resolved.target.branch
        key = _branch_key(resolved)
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

        async def connect() -> BranchRepository:
            return BranchRepository(clone, provider.url, branch_name, await credentials())

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
                self.identity,
                PushPolicy(provider.push_interval_s, provider.push_max_commits),
                providers,
                proved_write_access,
                credentials,
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


def _branch_key(resolved: ResolvedTarget) -> str:
    return branch_key(resolved.provider.url, resolved.target.branch)


def _selection(resolved: ResolvedTarget) -> tuple[object, ...]:
    """What a target mirrors and where: its place and its rules, in whatever order they came."""
    return (_place(resolved), frozenset(resolved.rules))


def _place(resolved: ResolvedTarget) -> TargetPlace:
    """Where a target writes; a target whose place changes starts afresh."""
    return TargetPlace(_branch_key(resolved), resolved.provider.key, resolved.target.path)


def _committer_config(resolved: ResolvedTarget) -> tuple[object, ...]:
    provider = resolved.provider
    return (
        provider.key,
        provider.secret_name,
        provider.push_interval_s,
        provider.push_max_commits,
        provider.insecure_skip_host_key,
    )
