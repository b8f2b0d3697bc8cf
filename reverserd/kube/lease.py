"""Leases on ``coordination.k8s.io/v1``: leader election, and the record every Lease user shares.

The protocol, as Kubernetes components use it:

- The Lease names its ``holderIdentity`` and ``leaseDurationSeconds``; the holder renews
  ``renewTime`` well within the duration. Every write carries the resourceVersion it read, so
  two candidates can never both win the same round: the loser gets ``409 Conflict``.
- A candidate takes over only when it has watched the record stay unchanged for a whole lease
  duration **by its own clock** (never by comparing the holder's timestamps with its own, which
  would trust two clocks to agree).
- A holder that cannot renew within its renew deadline (shorter than the duration) stops
  writing: it may no longer be the only writer. :meth:`Lease.valid` is that check, measured from
  the moment the last successful renewal was *sent*, so the margin between the deadline and the
  duration is what a write started just before the deadline has to reach the server.

:class:`Lease` is one such record and the compare-and-swap writes on it; the leader election
below and the branch buckets of :mod:`reverserd.kube.shards` both use it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from reverserd.kube.client import KubeClient, KubeError
from reverserd.kube.paths import namespaced_path

log = logging.getLogger(__name__)

# The takeover delay after a leader dies; also how long a paused leader can still be trusted.
LEASE_DURATION_S = 15
# A leader that has not renewed for this long gives up, before anyone else can take over.
RENEW_DEADLINE_S = 10.0
# How often the leader renews and a candidate retries.
RETRY_PERIOD_S = 2.0
# Validity a push needs left when it starts, and keeps needing while it sends (see
# :meth:`Lease.valid`). A healthy holder renews every retry period, so it always has more than
# the renew deadline minus one retry period (8 s) left; 3 s refuse a push only once two
# renewals in a row have failed. A push stopped at 3 s before the deadline still has those 3 s
# plus the 5 s between deadline and duration before anyone may take the Lease, for the chunk
# of pack in flight (one socket write) to end; the push's compare-and-swap covers the rest.
PUSH_BUDGET_S = 3.0
# Kept on a released Lease: who held it last, so that holder knows, when it takes the Lease
# again, whether anyone else wrote under it in between.
LAST_HOLDER_ANNOTATION = "reverserd.configbutler.ai/last-holder"
# Where the holder of a Lease says the other replicas reach it, to forward attribution facts
# (reverserd.attribution.peers): a sharded replica's membership Lease, or the leader Lease.
PEER_ADDRESS_ANNOTATION = "reverserd.configbutler.ai/peer-address"


class LostLeadership(Exception):
    """The Lease could not be renewed in time; this process must stop writing."""


@dataclass(frozen=True)
class LeaseTiming:
    """Duration, renew deadline and retry period of a Lease, in the proportions above."""

    duration_s: int = LEASE_DURATION_S
    renew_deadline_s: float = RENEW_DEADLINE_S
    retry_period_s: float = RETRY_PERIOD_S
    push_budget_s: float = PUSH_BUDGET_S

    @classmethod
    def scaled(cls, duration_s: int) -> LeaseTiming:
        """The default proportions for another duration (tests use short ones)."""
        ratio = duration_s / LEASE_DURATION_S
        return cls(
            duration_s, RENEW_DEADLINE_S * ratio, RETRY_PERIOD_S * ratio, PUSH_BUDGET_S * ratio
        )


def _micro_time(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_holder(lease: dict[str, Any] | None) -> str:
    """The identity a Lease names as its holder, ``""`` when none."""
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def last_holder(lease: dict[str, Any] | None) -> str:
    """The holder a Lease names, else the one that released it last (``""``: neither)."""
    if lease is None:
        return ""
    annotations = lease["metadata"].get("annotations") or {}
    return lease_holder(lease) or str(annotations.get(LAST_HOLDER_ANNOTATION, ""))


class Lease:
    """One Lease object as seen and written by ``identity``."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming = LeaseTiming(),
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> None:
        """``labels`` and ``annotations`` are written on every write of ours."""
        self.client = client
        self.path = namespaced_path("coordination.k8s.io", "v1", "leases", namespace, name)
        self.collection = namespaced_path("coordination.k8s.io", "v1", "leases", namespace)
        self.name = name
        self.identity = identity
        self.timing = timing
        self.labels = labels or {}
        self.annotations = annotations or {}
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        # Monotonic time the last successful write of ours was sent; -inf: never.
        self.renewed_at = float("-inf")
        # Whom the Lease named (holder, else last holder) when we last took it.
        self.taken_from = ""

    def valid(self, needed_s: float = 0.0) -> bool:
        """True while a write made now, and going on for ``needed_s``, stays inside our renew
        deadline."""
        return time.monotonic() - self.renewed_at < self.timing.renew_deadline_s - needed_s

    def observe(self, lease: dict[str, Any] | None) -> None:
        """Note the record as read now; a changed record restarts the expiry clock."""
        if lease is None:
            return
        spec = lease.get("spec") or {}
        record = (
            spec.get("holderIdentity"),
            spec.get("renewTime"),
            lease["metadata"].get("resourceVersion"),
        )
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()

    def free(self, lease: dict[str, Any] | None) -> bool:
        """Nobody holds it, or its record stayed unchanged for its whole duration."""
        if lease is None or not lease_holder(lease):
            return True
        duration = int((lease.get("spec") or {}).get("leaseDurationSeconds") or 0)
        return time.monotonic() - self._observed_at >= (duration or self.timing.duration_s)

    async def read(self) -> dict[str, Any] | None:
        try:
            lease: dict[str, Any] = await self.client.get(self.path)
        except KubeError as error:
            if error.status != 404:
                raise
            return None
        self.observe(lease)
        return lease

    async def try_acquire_or_renew(self, lease: dict[str, Any] | None) -> bool:
        """One compare-and-swap round on the record ``lease`` (as read; None: absent)."""
        now, sent_at = time.time(), time.monotonic()
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.name,
                    "labels": self.labels,
                    "annotations": self.annotations,
                },
                "spec": self._spec(now, acquire=True, transitions=0),
            }
            self.taken_from = ""
            return await self._write("POST", self.collection, body, sent_at)
        spec = lease.get("spec") or {}
        holder = lease_holder(lease)
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            self._stamp(lease)
            lease["spec"] = {**spec, **self._spec(now, acquire=False, transitions=transitions)}
            return await self._write("PUT", self.path, lease, sent_at)
        if not self.free(lease):
            return False
        taken_from = last_holder(lease)
        self._stamp(lease)
        lease["spec"] = self._spec(now, acquire=True, transitions=transitions + 1)
        if await self._write("PUT", self.path, lease, sent_at):
            self.taken_from = taken_from
            return True
        return False

    def _stamp(self, lease: dict[str, Any]) -> None:
        metadata = lease["metadata"]
        metadata["labels"] = {**(metadata.get("labels") or {}), **self.labels}
        if self.annotations:
            metadata["annotations"] = {**(metadata.get("annotations") or {}), **self.annotations}

    async def release(self, lease: dict[str, Any]) -> bool:
        """Give the Lease up at once (it names no holder), remembering us as its last holder."""
        if lease_holder(lease) != self.identity:
            return False
        metadata = lease["metadata"]
        metadata["annotations"] = {
            **(metadata.get("annotations") or {}),
            LAST_HOLDER_ANNOTATION: self.identity,
        }
        lease["spec"] = {**(lease.get("spec") or {}), "holderIdentity": None}
        self.renewed_at = float("-inf")
        return await self._write("PUT", self.path, lease, float("-inf"))

    def _spec(self, now: float, acquire: bool, transitions: int) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.timing.duration_s,
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions,
        }
        if acquire:
            spec["acquireTime"] = _micro_time(now)
        return spec

    async def _write(self, method: str, path: str, body: dict[str, Any], sent_at: float) -> bool:
        try:
            written = await self.client.send(method, path, body)
        except KubeError as error:
            if error.status in (409, 422):
                return False
            raise
        self.observe(written)
        self.renewed_at = sent_at
        return True


class LeaderElector:
    """Leads while it holds ``lease``."""

    def __init__(self, lease: Lease) -> None:
        """A ``lease`` whose annotations carry :data:`PEER_ADDRESS_ANNOTATION` advertises this
        replica's address while it leads; :meth:`leader`, on a standby, reads it."""
        self.lease = lease
        self.name = lease.name
        self.identity = lease.identity
        self.timing = lease.timing
        self.leading = asyncio.Event()
        # The holder the Lease named, and its address, when last read.
        self._holder = ("", "")

    def leader(self) -> dict[str, str]:
        """The other replica leading, by identity, with the address its Lease advertises;
        empty while this one leads, nobody does, or the leader advertises none."""
        holder, address = self._holder
        if not holder or holder == self.identity or not address:
            return {}
        return {holder: address}

    def _note(self, record: dict[str, Any] | None) -> None:
        annotations = (record or {}).get("metadata", {}).get("annotations") or {}
        self._holder = (lease_holder(record), str(annotations.get(PEER_ADDRESS_ANNOTATION, "")))

    @property
    def role(self) -> str:
        return "leader" if self.leading.is_set() else "standby"

    async def run(self) -> None:
        """Campaign until leading, then renew; raises :class:`LostLeadership` when it lapses."""
        while True:
            try:
                record = await self.lease.read()
                self._note(record)
                held = await self.lease.try_acquire_or_renew(record)
            except (KubeError, aiohttp.ClientError, TimeoutError) as error:
                log.warning("lease %s: %s", self.name, error)
                held = False
            if held:
                if not self.leading.is_set():
                    log.info("became leader", extra={"lease": self.name, "identity": self.identity})
                    self.leading.set()
            elif self.leading.is_set() and not self.lease.valid():
                raise LostLeadership(
                    f"lease {self.name} not renewed for {self.timing.renew_deadline_s} s"
                )
            await asyncio.sleep(self.timing.retry_period_s)

    async def campaign(self) -> None:
        """Like :meth:`run`, but a lapse only ends leading: a sharded replica goes on with its
        branches and campaigns again."""
        while True:
            try:
                await self.run()
            except LostLeadership as lost:
                self.leading.clear()
                log.warning("%s; campaigning again", lost)
