"""Leader election on a ``coordination.k8s.io/v1`` Lease, so two replicas have one writer.

The protocol, as Kubernetes components use it:

- The Lease names its ``holderIdentity`` and ``leaseDurationSeconds``; the holder renews
  ``renewTime`` well within the duration. Every write carries the resourceVersion it read, so
  two candidates can never both win the same round: the loser gets ``409 Conflict``.
- A candidate takes over only when it has watched the record stay unchanged for a whole lease
  duration **by its own clock** (never by comparing the holder's timestamps with its own, which
  would trust two clocks to agree).
- A leader that cannot renew before :data:`RENEW_DEADLINE_S` stops leading and the daemon exits:
  it may no longer be the only writer, and a restart as a candidate is the safe state.
"""

from __future__ import annotations

import asyncio
import logging
import time
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


class LostLeadership(Exception):
    """The Lease could not be renewed in time; this process must stop writing."""


def _micro_time(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, client: KubeClient, namespace: str, name: str, identity: str) -> None:
        self.client = client
        self.path = namespaced_path("coordination.k8s.io", "v1", "leases", namespace, name)
        self.collection = namespaced_path("coordination.k8s.io", "v1", "leases", namespace)
        self.name = name
        self.identity = identity
        self.leading = asyncio.Event()
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    @property
    def role(self) -> str:
        return "leader" if self.leading.is_set() else "standby"

    async def run(self) -> None:
        """Campaign until leading, then renew; raises :class:`LostLeadership` when it lapses."""
        last_renewal = 0.0
        while True:
            try:
                held = await self._try_acquire_or_renew()
            except (KubeError, aiohttp.ClientError, TimeoutError) as error:
                log.warning("lease %s: %s", self.name, error)
                held = False
            now = time.monotonic()
            if held:
                last_renewal = now
                if not self.leading.is_set():
                    log.info("became leader", extra={"lease": self.name, "identity": self.identity})
                    self.leading.set()
            elif self.leading.is_set() and now - last_renewal > RENEW_DEADLINE_S:
                raise LostLeadership(f"lease {self.name} not renewed for {RENEW_DEADLINE_S} s")
            await asyncio.sleep(RETRY_PERIOD_S)

    async def _try_acquire_or_renew(self) -> bool:
        now = time.time()
        try:
            lease = await self.client.get(self.path)
        except KubeError as error:
            if error.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name},
                "spec": self._spec(now, acquire=True, transitions=0),
            }
            return await self._write("POST", self.collection, body)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        record = (holder, spec.get("renewTime"), lease["metadata"].get("resourceVersion"))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            lease["spec"] = {**spec, **self._spec(now, acquire=False, transitions=transitions)}
            return await self._write("PUT", self.path, lease)
        duration = int(spec.get("leaseDurationSeconds") or LEASE_DURATION_S)
        if holder and time.monotonic() - self._observed_at < duration:
            return False
        lease["spec"] = self._spec(now, acquire=True, transitions=transitions + 1)
        return await self._write("PUT", self.path, lease)

    def _spec(self, now: float, acquire: bool, transitions: int) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": LEASE_DURATION_S,
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions,
        }
        if acquire:
            spec["acquireTime"] = _micro_time(now)
        return spec

    async def _write(self, method: str, path: str, body: dict[str, Any]) -> bool:
        try:
            await self.client.send(method, path, body)
        except KubeError as error:
            if error.status in (409, 422):
                return False
            raise
        return True
