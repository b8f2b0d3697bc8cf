"""Starts and stops target consumers and their committers as the configuration changes.

One committer per repository URL and branch: targets on the same branch share it, and so do
GitProviders with the same URL, so they never race each other. A consumer is restarted when
anything it depends on changes (its rules, path, branch or provider); it resumes from its cursor,
so a restart costs a replay, never an event. A GitTarget that was deleted releases its cursor, so
it no longer holds back journal compaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reverserd.committer.committer import (
    Committer,
    PushPolicy,
    clone_dir,
    committer_key,
)
from reverserd.committer.credentials import load_credentials
from reverserd.config.plane import ConfigPlane, ResolvedTarget
from reverserd.config.status import StatusBoard
from reverserd.encryption.fingerprint import load_or_create_key
from reverserd.encryption.sops import Sops
from reverserd.git import BranchRepository
from reverserd.journal import JournalWriter
from reverserd.kube.client import KubeClient
from reverserd.supervise import supervise
from reverserd.targets.consumer import TargetConsumer
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
    ) -> None:
        self.client = client
        self.journal = journal
        self.plane = plane
        self.watches = watches
        self.board = board
        self.state_dir = state_dir
        self.identity = identity
        self.sops = sops
        self.fingerprint_key = load_or_create_key(state_dir)
        self.committers: dict[str, tuple[Committer, asyncio.Task[None], tuple[object, ...]]] = {}
        # One clone directory is only ever used by one committer at a time, even while a
        # replaced committer's last Git operation is still finishing.
        self.clone_locks: dict[str, asyncio.Lock] = {}
        self.consumers: dict[str, _Running] = {}

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            while True:
                seen = self.plane.version
                await self._reconcile(group)
                await self.plane.wait_for_change(seen)

    async def _reconcile(self, group: asyncio.TaskGroup) -> None:
        state = self.plane.state
        self._retire_reconfigured_committers()
        for key in list(self.consumers):
            running = self.consumers[key]
            if state.targets.get(key) == running.resolved:
                continue
            running.task.cancel()
            del self.consumers[key]
            log.info("stopped target consumer", extra={"target": key})
            if key not in {f"{ns}/{name}" for ns, name in self.plane.informers["gittargets"].cache}:
                self.board.targets.pop(key, None)
                await self.journal.forget_target(key)
        for key, resolved in sorted(state.targets.items()):
            if key in self.consumers:
                continue
            committer = self._committer(group, resolved)
            consumer = TargetConsumer(
                resolved,
                committer,
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
            )
            task = group.create_task(
                supervise(f"target {key}", consumer.run, self._record_failure(key))
            )
            self.consumers[key] = _Running(resolved, consumer, task)
            log.info("started target consumer", extra={"target": key})
        used = {
            committer_key(r.resolved.provider.url, r.resolved.target.branch)
            for r in self.consumers.values()
        }
        for key in list(self.committers):
            if key not in used:
                self.committers.pop(key)[1].cancel()

    def remote_error(self, target: str) -> str | None:
        """The last push or connection error of the committer a target writes through."""
        running = self.consumers.get(target)
        return running.consumer.committer.last_error if running else None

    def _retire_reconfigured_committers(self) -> None:
        """A provider's Secret or push settings changed: rebuild its committer and consumers."""
        wanted: dict[str, tuple[object, ...]] = {}
        for resolved in sorted(self.plane.state.targets.values(), key=lambda r: r.key):
            key = committer_key(resolved.provider.url, resolved.target.branch)
            wanted.setdefault(key, _committer_config(resolved))
        for key, (_, task, config) in list(self.committers.items()):
            if key in wanted and wanted[key] != config:
                task.cancel()
                del self.committers[key]
                for target, running in list(self.consumers.items()):
                    resolved = running.resolved
                    if committer_key(resolved.provider.url, resolved.target.branch) == key:
                        running.task.cancel()
                        del self.consumers[target]
                log.info("provider settings changed, reconnecting", extra={"remote": key})

    def _committer(self, group: asyncio.TaskGroup, resolved: ResolvedTarget) -> Committer:
        provider, branch = resolved.provider, resolved.target.branch
        key = committer_key(provider.url, branch)
        if key in self.committers:
            return self.committers[key][0]

        def providers() -> list[str]:
            return sorted(
                p.key
                for p in self.plane.state.providers.values()
                if committer_key(p.url, branch) == key
            )

        async def connect() -> BranchRepository:
            credentials = await load_credentials(self.client, provider)
            return BranchRepository(
                clone_dir(self.state_dir, key), provider.url, branch, credentials
            )

        committer = Committer(
            key,
            self.clone_locks.setdefault(key, asyncio.Lock()),
            connect,
            self.journal,
            self.board,
            self.identity,
            PushPolicy(provider.push_interval_s, provider.push_max_commits),
            providers,
        )
        task = group.create_task(supervise(f"committer {key}", committer.run))
        self.committers[key] = (committer, task, _committer_config(resolved))
        return committer

    def _record_failure(self, key: str) -> Callable[[BaseException], None]:
        def record(error: BaseException) -> None:
            self.board.target(key).last_error = f"{type(error).__name__}: {error}"
            self.board.notify()

        return record


def _committer_config(resolved: ResolvedTarget) -> tuple[object, ...]:
    provider = resolved.provider
    return (
        provider.key,
        provider.secret_name,
        provider.push_interval_s,
        provider.push_max_commits,
        provider.insecure_skip_host_key,
    )
