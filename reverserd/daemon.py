"""``reverserd run``: one process, one event loop, every task owned by one TaskGroup.

Start-up order is what makes "no event dropped at start-up" structural rather than a race:

1. open the journal (migrations applied);
2. load every GitProvider, GitTarget, WatchRule and ClusterWatchRule (complete LISTs);
3. discover the served types;
4. only then open data watches, which write to the journal whether or not any target is ready;
5. target consumers read the journal from their own cursors when their target is ready.

Every long-running task is supervised (:mod:`reverserd.supervise`): one failure restarts that
task from the journal, it never ends the process, and it never leaves a dead task that looks
alive. Only lost leadership ends the process on purpose.

SIGTERM or SIGINT cancels the TaskGroup: watches stop, nothing half-written is committed (an
open journal transaction rolls back together with its resume point, so the API server delivers
those events again), and the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from reverserd import __version__
from reverserd.attribution.identity import DEFAULT_EMAIL_DOMAIN
from reverserd.attribution.peers import FactForwarder, peer_client_tls, read_secret
from reverserd.attribution.resolver import DEFAULT_GRACE_S, Resolver
from reverserd.attribution.store import compact_facts
from reverserd.attribution.webhook_process import WebhookProcess, WebhookSettings
from reverserd.attribution.webhooks import DEFAULT_AUDIT_CLIENT_NAME
from reverserd.config.model import UrlPolicy
from reverserd.config.pins import RepositoryPins
from reverserd.config.plane import MAX_TARGETS_PER_NAMESPACE, ConfigPlane
from reverserd.config.status import StatusBoard
from reverserd.encryption.sops import Sops
from reverserd.git import configure_network_timeouts
from reverserd.git.repository import CONNECT_TIMEOUT_MS
from reverserd.heap import trim_heap_periodically
from reverserd.journal import JournalReader, JournalWriter
from reverserd.journal.writer import MAX_CURSOR_LAG_EVENTS
from reverserd.kube.client import KubeClient, KubeError
from reverserd.kube.lease import (
    PEER_ADDRESS_ANNOTATION,
    LeaderElector,
    Lease,
    LeaseTiming,
    LostLeadership,
)
from reverserd.kube.shards import ShardCoordinator, ShardSettings
from reverserd.metrics import EVENT_LOOP_LAG, JOURNAL_BYTES, JOURNAL_EVENTS
from reverserd.supervise import supervise
from reverserd.targets.drift import DEFAULT_DRIFT_INTERVAL_S
from reverserd.targets.manager import TargetManager
from reverserd.targets.ownership import Ownership
from reverserd.watch.manager import WatchManager
from reverserd.web.access import KubeAccess
from reverserd.web.server import Surface, build_app, serve
from reverserd.web.view import StatusView

log = logging.getLogger(__name__)

# Superseded events that every cursor has passed are removed at this pace.
COMPACTION_INTERVAL_S = 60.0
# Journal size gauges are refreshed at this pace.
JOURNAL_GAUGE_INTERVAL_S = 15.0
# A sharded replica stopping hands its buckets over for at most this long (a push in flight may
# take longer; its buckets are then taken over after a lease duration), well inside the 30 s a
# pod is given to stop.
LEAVE_TIMEOUT_S = 10.0
# The event loop's lag is sampled at this pace: often enough to catch a blocked second, rarely
# enough to cost nothing.
LOOP_LAG_SAMPLE_S = 0.25


async def sample_loop_lag() -> None:
    """Observe how late a timer fires: the time the event loop was blocked by something."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(LOOP_LAG_SAMPLE_S)
        EVENT_LOOP_LAG.observe(max(0.0, loop.time() - started - LOOP_LAG_SAMPLE_S))


@dataclass(frozen=True)
class AttributionOptions:
    """Which attribution sources run (``audit``, ``admission``) and where their webhook listens."""

    sources: tuple[str, ...] = ()
    grace_s: float = DEFAULT_GRACE_S
    email_domain: str = DEFAULT_EMAIL_DOMAIN
    listen: str = ":9443"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    audit_client_name: str = DEFAULT_AUDIT_CLIENT_NAME
    # None: /admission takes any caller (managed control planes present no certificate).
    admission_client_name: str | None = None
    # Sharded mode: where the other replicas reach this one's webhook port, and the file with
    # the group's secret that forwarded facts are signed with (reverserd.attribution.peers).
    peer_address: str = ""
    peer_secret_file: Path | None = None
    # What a forwarding replica trusts of its peers' certificates (None: tls_cert itself).
    peer_ca: Path | None = None
    # The name every peer's certificate must carry (reverserd.attribution.peers).
    peer_server_name: str = ""


@dataclass(frozen=True)
class RunOptions:
    kubeconfig: Path | None
    context: str | None
    state_dir: Path
    http_listen: str
    git_author_name: str
    git_author_email: str
    sops_path: str = "sops"
    age_keygen_path: str = "age-keygen"
    leader_elect: bool = False
    leader_election_namespace: str = "default"
    leader_election_id: str = "reverserd"
    # Sharded mode (0: off): branches hash into this many bucket Leases, spread over replicas.
    shards: int = 0
    replica_id: str = ""
    shard_lease_duration_s: int = 15
    git_timeout_s: float = 60.0
    allow_local_remotes: bool = False
    repository_pins: RepositoryPins = field(default_factory=RepositoryPins)
    journal_max_lag_events: int = MAX_CURSOR_LAG_EVENTS
    max_targets_per_namespace: int = MAX_TARGETS_PER_NAMESPACE
    drift_interval_s: float = DEFAULT_DRIFT_INTERVAL_S
    no_status_auth: bool = False
    status_auth_on_loopback: bool = False
    attribution: AttributionOptions = field(default_factory=AttributionOptions)
    log_format: str = "json"
    log_level: str = "INFO"


class _Shutdown(Exception):
    """Raised inside the TaskGroup to cancel every task on SIGTERM."""


class Daemon:
    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.started = time.time()

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit code 0) or lost leadership (exit code 1)."""
        options = self.options
        timeout_ms = max(1, int(options.git_timeout_s * 1000))
        configure_network_timeouts(min(timeout_ms, CONNECT_TIMEOUT_MS), timeout_ms)
        journal = await JournalWriter.open(options.state_dir)
        reader = await JournalReader.open(options.state_dir)
        attribution = options.attribution
        # Event digests are only needed to match admission facts exactly.
        journal.digests = "admission" in attribution.sources
        resolver_reader = await JournalReader.open(options.state_dir)
        resolver = Resolver(
            resolver_reader.connection,
            attribution.sources,
            attribution.grace_s,
            attribution.email_domain,
            forwarded=attribution.peer_secret_file is not None,
        )
        client = await KubeClient.connect(options.kubeconfig, options.context)
        board = StatusBoard()
        journal.on_failure_changed = board.report_journal
        plane = ConfigPlane(
            client,
            board,
            UrlPolicy(options.allow_local_remotes, options.state_dir),
            options.repository_pins,
            options.max_targets_per_namespace,
            attributed=bool(attribution.sources),
        )
        ownership = Ownership(client, journal, board)
        # Before the plane first decides who writes which branch.
        await ownership.load()
        self.elector: LeaderElector | None = None
        self.shards: ShardCoordinator | None = None
        if options.shards:
            # The leader Lease elects the one writer of the config plane's status; every
            # replica writes the status of the targets on the branches it holds.
            timing = LeaseTiming.scaled(options.shard_lease_duration_s)
            self.shards = ShardCoordinator(
                client,
                ShardSettings(
                    options.shards,
                    options.replica_id,
                    options.leader_election_namespace,
                    options.leader_election_id,
                    timing,
                    attribution.peer_address if attribution.sources else "",
                ),
            )
            self.elector = LeaderElector(
                Lease(
                    client,
                    options.leader_election_namespace,
                    options.leader_election_id,
                    options.replica_id,
                    timing,
                )
            )
            plane.writes_status_of = self._writes_status_of
        watches = WatchManager(client, journal, plane, self.shards)
        targets = TargetManager(
            client,
            journal,
            plane,
            watches,
            board,
            options.state_dir,
            (options.git_author_name, options.git_author_email),
            Sops(options.sops_path, options.age_keygen_path),
            ownership,
            resolver,
            self.shards,
            options.drift_interval_s,
        )
        self.targets = targets
        # The identity forwarded facts are signed for and checked against (the webhook process
        # stores only those meant for it): the replica's, or with --leader-elect the elector's.
        self.identity = options.replica_id
        if options.leader_elect and not options.shards:
            self.identity = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
            # Forwarding, the leader advertises where the standby sends it the facts it hears.
            advertised = attribution.peer_address if attribution.peer_secret_file else ""
            self.elector = LeaderElector(
                Lease(
                    client,
                    options.leader_election_namespace,
                    options.leader_election_id,
                    self.identity,
                    annotations={PEER_ADDRESS_ANNOTATION: advertised} if advertised else None,
                )
            )
            plane.writes_enabled = False
        self.journal, self.reader, self.client = journal, reader, client
        self.board, self.plane, self.watches = board, plane, watches
        self.view = StatusView(
            reader, plane, board, targets, watches, self._probe_api, options.state_dir,
            self.role, self.started, self.shards,
        )  # fmt: skip
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        webhooks = None
        forwarder = None
        forwarder_reader = None
        if attribution.sources and attribution.peer_secret_file is not None:
            assert attribution.tls_cert is not None and attribution.peer_server_name
            # Sharded, every other live replica; with --leader-elect, the leader (none while
            # this replica leads: only the leader commits).
            peers = self.shards.peers if self.shards is not None else None
            if peers is None:
                assert self.elector is not None
                peers = self.elector.leader
            forwarder_reader = await JournalReader.open(options.state_dir)
            forwarder = FactForwarder(
                forwarder_reader.connection,
                self.identity,
                read_secret(attribution.peer_secret_file),
                peer_client_tls(attribution.peer_ca or attribution.tls_cert),
                attribution.peer_server_name,
                peers,
            )
        if attribution.sources:
            assert attribution.tls_cert is not None and attribution.tls_key is not None
            webhooks = WebhookProcess(
                WebhookSettings(
                    str(options.state_dir),
                    attribution.listen,
                    attribution.sources,
                    str(attribution.tls_cert),
                    str(attribution.tls_key),
                    str(attribution.client_ca) if attribution.client_ca else None,
                    attribution.audit_client_name,
                    attribution.admission_client_name,
                    options.log_format,
                    options.log_level,
                    str(attribution.peer_secret_file) if forwarder is not None else None,
                    self.identity,
                ),
                resolver,
                forwarder.wake if forwarder is not None else None,
            )
            await webhooks.start()
        # Healthy only once the webhooks listen: a change admitted before would have no fact.
        runner = await serve(build_app(self.surface()), options.http_listen)
        log.info("reverserd %s started", __version__, extra={"state_dir": str(options.state_dir)})
        exit_code = 0
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(journal.run())
                group.create_task(supervise("config plane", plane.run))
                group.create_task(supervise("housekeeping", self._housekeeping))
                group.create_task(sample_loop_lag())
                group.create_task(supervise("heap trimming", trim_heap_periodically))
                if webhooks is not None:
                    group.create_task(supervise("webhooks", webhooks.run))
                if forwarder is not None:
                    group.create_task(supervise("fact forwarding", forwarder.run))
                if self.shards is not None and self.elector is not None:
                    group.create_task(supervise("config status election", self.elector.campaign))
                elif self.elector is not None:
                    # Not supervised: lost leadership must end the process (exit code 1).
                    group.create_task(self.elector.run())
                # A target that lagged beyond the bound while reverserd was down stops holding
                # the journal back before any consumer starts, and re-syncs when it does.
                await journal.detach_lagging(options.journal_max_lag_events)

                async def start_once_synced() -> None:
                    # Waits as long as the custom resources cannot be listed (CRDs not
                    # installed, no access yet), while the stop signal is already heard.
                    await plane.wait_synced()
                    await watches.refresh_discovery()
                    group.create_task(supervise("watches", watches.run))
                    group.create_task(supervise("targets", self._lead))

                group.create_task(start_once_synced())
                await stop.wait()
                log.info("shutting down")
                if self.shards is not None:
                    await self._leave(self.shards)
                if webhooks is not None:
                    # Requests in flight finish (their facts written) before the relay of
                    # their facts is cancelled with every other task.
                    await webhooks.stop()
                raise _Shutdown
        except* _Shutdown:
            pass
        except* LostLeadership as lost:
            log.error("stopping: %s", lost.exceptions[0])
            exit_code = 1
        finally:
            await runner.cleanup()
            if webhooks is not None:
                await webhooks.stop()
            await resolver_reader.close()
            if forwarder_reader is not None:
                await forwarder_reader.close()
            await client.close()
            await reader.close()
            await journal.close()
            log.info("stopped")
        return exit_code

    async def _leave(self, shards: ShardCoordinator) -> None:
        """Hand the buckets over before stopping; what is not released in time is taken over
        after a lease duration, as from a replica that died."""
        try:
            await asyncio.wait_for(shards.leave(), LEAVE_TIMEOUT_S)
        except (KubeError, aiohttp.ClientError, TimeoutError) as error:
            log.warning("could not hand every bucket over: %s", error)

    async def _lead(self) -> None:
        """Write (commits, pushes, status) only as the leader; a standby keeps its journal warm."""
        if self.elector is not None and self.shards is None:
            log.info("waiting for leadership", extra={"identity": self.elector.identity})
            await self.elector.leading.wait()
            self.plane.enable_writes()
        await self.targets.run()

    async def _housekeeping(self) -> None:
        last_compaction = time.monotonic()
        while True:
            await asyncio.sleep(JOURNAL_GAUGE_INTERVAL_S)
            if time.monotonic() - last_compaction >= COMPACTION_INTERVAL_S:
                await self.journal.compact(self.options.journal_max_lag_events)
                await compact_facts(self.journal)
                last_compaction = time.monotonic()
            stats = await self.reader.stats()
            JOURNAL_EVENTS.set(stats["events"])
            JOURNAL_BYTES.set(stats["database_bytes"])
            # Sets the readiness and lag gauges and samples the lag chart.
            await self.view.picture()

    def surface(self) -> Surface:
        async def journal_ok() -> bool:
            if self.journal.failure is not None:
                return False
            try:
                await self.reader.last_seq()
                return True
            except Exception:
                return False

        return Surface(
            status=self.status,
            journal_ok=journal_ok,
            api_ok=self.view.api_reachable,
            role=self.role,
            access=None if self.options.no_status_auth else KubeAccess(self.client),
            trust_loopback=not self.options.status_auth_on_loopback,
        )

    async def _probe_api(self) -> bool:
        try:
            await self.client.get("/version")
            return True
        except (KubeError, OSError, TimeoutError):
            return False
        except Exception:
            return False

    def role(self) -> str:
        if self.shards is not None:
            return "shard"
        return self.elector.role if self.elector is not None else "leader"

    def _writes_status_of(self, resource: str, namespace: str, name: str) -> bool:
        """Sharded: a GitTarget's status is written by the holder of its branch (valid or
        refused: :meth:`ConfigState.branch_of`), a GitProvider's by the holder of its first
        branch (whose committer reports its health), everything else (and a target or provider
        on no branch) by the leader."""
        assert self.shards is not None and self.elector is not None
        key = f"{namespace}/{name}"
        state = self.plane.state
        branches: list[str] = []
        branch = state.branch_of(key)
        if resource == "gittargets" and branch is not None:
            branches = [branch]
        elif resource == "gitproviders":
            branches = sorted(r.branch for r in state.targets.values() if r.provider.key == key)
        if branches:
            return self.shards.owns(branches[0])
        return self.elector.leading.is_set()

    async def status(self) -> dict[str, Any]:
        return await self.view.picture()
