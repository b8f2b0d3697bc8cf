"""Repository branches spread over replicas by ``coordination.k8s.io`` Leases (``--shards N``).

The unit of ownership is the repository branch (the committer's unit: every target on one
branch moves together). A branch hashes into one of N **buckets**, and each bucket is one Lease
(``<group>-bucket-<i>``), so the API load is N Leases however many branches exist. Each replica
also renews a **membership** Lease (``<group>-member-<replica>``); a member whose Lease stayed
unchanged for a whole duration, by the observer's own clock, is gone.

Every retry period a replica lists the group's Leases once and then:

1. renews its membership and the buckets it holds (a bucket it could not renew within the
   renew deadline is dropped: its branches are stopped and its writes fenced, see below);
2. computes its share: the live members sorted by identity, the first ``N mod M`` take
   ``ceil(N/M)`` buckets and the others ``floor(N/M)``, so shares differ by at most one;
3. holding more than its share, it **hands over**: it stops the branches of a bucket (their
   consumers, their committer, and waits until the Git operation in flight has ended) and only
   then releases the Lease, so the next owner never starts while it writes;
4. holding fewer, it takes free buckets (released, never held, or unchanged for a whole
   duration), its own former ones first: a replica that returns with its state dir gets its
   buckets back if nobody took them, and with them its cursors and clones. A bucket taken from
   another holder starts afresh instead: its targets' journal state and clones are dropped and
   each target adopts its folder through the snapshot path (files that match are kept byte for
   byte; nothing of a live object is deleted), since the previous owner may have pushed past
   anything this replica's journal says.

**Fencing.** A holder writes a branch only while :meth:`ShardCoordinator.may_write` says so:
the bucket is held and its last renewal was sent less than the renew deadline ago. The renew
deadline is shorter than the lease duration, and a candidate waits a whole duration after
the last renewal it saw, so a replica frozen (SIGSTOP) past its Lease finds, when it wakes, that
it may not push, before anyone could have taken over. The committer asks before every push and
every retry; the push itself stays compare-and-swap.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from reverserd.kube.client import KubeClient, KubeError
from reverserd.kube.lease import Lease, LeaseTiming, last_holder, lease_holder

log = logging.getLogger(__name__)

# Labels that let one LIST find a group's Leases; the role tells members from buckets.
GROUP_LABEL = "reverserd.configbutler.ai/shard-group"
ROLE_LABEL = "reverserd.configbutler.ai/lease-role"
# The bucket count of the replica that wrote a Lease: replicas that disagree on it would hash
# one branch into two buckets, so none of them takes a bucket while another is live, and a
# bucket written under another count is never taken back as one's own.
BUCKETS_LABEL = "reverserd.configbutler.ai/buckets"
# Buckets a group may have: more Leases than this would be API load for no balance gained
# (a bucket is the unit of balance, and a few hundred replicas are far beyond any need).
MAX_BUCKETS = 1024


def bucket_of(branch: str, buckets: int) -> int:
    """The bucket of a branch key (``reverserd.git.urls.branch_key``); stable across versions
    and processes (never Python's salted ``hash``)."""
    digest = hashlib.sha256(branch.encode()).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def share(members: Sequence[str], replica: str, buckets: int) -> int:
    """How many buckets ``replica`` holds among ``members``: shares differ by at most one."""
    ordered = sorted(set(members) | {replica})
    base, extra = divmod(buckets, len(ordered))
    return base + (1 if ordered.index(replica) < extra else 0)


@dataclass(frozen=True)
class ShardSettings:
    buckets: int
    replica: str
    namespace: str
    group: str
    timing: LeaseTiming


class ShardCoordinator:
    """Holds this replica's buckets; the target manager asks it which branches are its own."""

    def __init__(self, client: KubeClient, settings: ShardSettings) -> None:
        self.client = client
        self.settings = settings
        self.replica = settings.replica
        self.member = self._lease(f"{settings.group}-member-{settings.replica}", "member")
        self.buckets = [
            self._lease(f"{settings.group}-bucket-{index}", "bucket")
            for index in range(settings.buckets)
        ]
        self.held: set[int] = set()
        self.members: list[str] = [settings.replica]
        # Other members' Leases, by name, each with its own expiry clock.
        self._peers: dict[str, Lease] = {}
        # Who holds each bucket, as last listed (for /status).
        self.holders: dict[int, str] = {}
        self.version = 0
        self._changed = asyncio.Condition()
        # Live members whose Leases name another bucket count.
        self._disagreeing: set[str] = set()
        # Set on shutdown: no round takes anything any more.
        self._leaving = False
        self._hand_over_branches: Callable[[int], Awaitable[None]] | None = None

    def _lease(self, name: str, role: str) -> Lease:
        settings = self.settings
        labels = {
            GROUP_LABEL: settings.group,
            ROLE_LABEL: role,
            BUCKETS_LABEL: str(settings.buckets),
        }
        return Lease(
            self.client, settings.namespace, name, settings.replica, settings.timing, labels
        )

    def bucket(self, branch: str) -> int:
        return bucket_of(branch, self.settings.buckets)

    def owns(self, branch: str) -> bool:
        return self.bucket(branch) in self.held

    def may_write(self, branch: str) -> Callable[[], bool]:
        """The fencing check of one branch, safe to call from any thread."""
        lease = self.buckets[self.bucket(branch)]
        index = self.bucket(branch)

        def check() -> bool:
            return index in self.held and lease.valid()

        return check

    async def wait_for_change(self, seen: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.version != seen)

    async def _publish(self) -> None:
        async with self._changed:
            self.version += 1
            self._changed.notify_all()

    async def run(
        self,
        hand_over: Callable[[int], Awaitable[None]],
        take_over: Callable[[int], Awaitable[None]],
    ) -> None:
        """Coordinate until cancelled. ``hand_over(b)`` stops bucket b's branches and returns
        once nothing of theirs writes any more; ``take_over(b)`` drops what this replica's
        journal and clones hold for bucket b before its branches start afresh."""
        self._hand_over_branches = hand_over
        while not self._leaving:
            try:
                await self._round(hand_over, take_over)
            except (KubeError, aiohttp.ClientError, TimeoutError) as error:
                log.warning("shard leases: %s", error)
            await self._drop_lapsed(hand_over)
            await asyncio.sleep(self.settings.timing.retry_period_s)

    async def _list(self) -> dict[str, dict[str, Any]]:
        collection = self.member.collection
        found = await self.client.get(
            collection, {"labelSelector": f"{GROUP_LABEL}={self.settings.group}"}
        )
        return {item["metadata"]["name"]: item for item in found.get("items") or []}

    async def _round(
        self,
        hand_over: Callable[[int], Awaitable[None]],
        take_over: Callable[[int], Awaitable[None]],
    ) -> None:
        leases = await self._list()
        await self.member.try_acquire_or_renew(leases.get(self.member.name))
        self.members = self._live_members(leases)
        for index, lease in enumerate(self.buckets):
            record = leases.get(lease.name)
            lease.observe(record)
            self.holders[index] = lease_holder(record)
        for index in sorted(self.held):
            lease = self.buckets[index]
            await lease.try_acquire_or_renew(leases.get(lease.name))
        if self._disagreeing:
            log.error(
                "live replicas run with another --shards: taking no bucket until they are gone",
                extra={"replicas": sorted(self._disagreeing)},
            )
            return
        wanted = share(self.members, self.replica, self.settings.buckets)
        for index in sorted(self.held, reverse=True)[: max(0, len(self.held) - wanted)]:
            await self._hand_over(index, hand_over)
        if len(self.held) >= wanted:
            return
        free = [
            index
            for index, lease in enumerate(self.buckets)
            if index not in self.held and lease.free(leases.get(lease.name))
        ]
        # Its own former buckets first: their cursors and clones are still good here.
        free.sort(key=lambda i: (not self._was_ours(leases.get(self.buckets[i].name)), i))
        for index in free[: wanted - len(self.held)]:
            await self._take(index, leases, take_over)

    def _live_members(self, leases: dict[str, dict[str, Any]]) -> list[str]:
        prefix = f"{self.settings.group}-member-"
        live = [self.replica]
        self._disagreeing = set()
        for name, record in leases.items():
            if not name.startswith(prefix) or name == self.member.name:
                continue
            peer = self._peers.setdefault(name, self._lease(name, "member"))
            peer.observe(record)
            if not peer.free(record):
                live.append(lease_holder(record))
                if _bucket_count(record) != self.settings.buckets:
                    self._disagreeing.add(lease_holder(record))
        return sorted(live)

    def _was_ours(self, record: dict[str, Any] | None) -> bool:
        """Held last by this replica, under the same bucket count (so the same branches)."""
        same_count = _bucket_count(record) == self.settings.buckets
        return same_count and last_holder(record) == self.replica

    async def _take(
        self,
        index: int,
        leases: dict[str, dict[str, Any]],
        take_over: Callable[[int], Awaitable[None]],
    ) -> None:
        lease = self.buckets[index]
        record = leases.get(lease.name)
        ours = self._was_ours(record)
        if not await lease.try_acquire_or_renew(record):
            return
        if not ours:
            # The previous holder may have pushed past anything this journal says.
            await take_over(index)
        self.held.add(index)
        self.holders[index] = self.replica
        log.info(
            "took bucket",
            extra={"bucket": index, "replica": self.replica, "from": lease.taken_from or None},
        )
        await self._publish()

    async def _hand_over(self, index: int, hand_over: Callable[[int], Awaitable[None]]) -> None:
        """Stop the bucket's writers, then release its Lease: the handshake of a rebalance."""
        self.held.discard(index)
        await self._publish()
        await hand_over(index)
        lease = self.buckets[index]
        record = await lease.read()
        if record is not None and await lease.release(record):
            self.holders[index] = ""
        log.info("handed over bucket", extra={"bucket": index, "replica": self.replica})

    async def leave(self) -> None:
        """On shutdown: hand every bucket over (its branches stopped first) and give the
        membership up, so that the others take the buckets at once, not a lease duration later.
        """
        self._leaving = True
        if self._hand_over_branches is not None:
            for index in sorted(self.held):
                await self._hand_over(index, self._hand_over_branches)
        record = await self.member.read()
        if record is not None:
            await self.member.release(record)
        log.info("left the replicas", extra={"replica": self.replica})

    async def _drop_lapsed(self, hand_over: Callable[[int], Awaitable[None]]) -> None:
        """A bucket not renewed within the deadline is no longer ours to write."""
        for index in sorted(self.held):
            if self.buckets[index].valid():
                continue
            log.warning("lost bucket: not renewed in time", extra={"bucket": index})
            self.held.discard(index)
            await self._publish()
            await hand_over(index)

    def picture(self) -> dict[str, Any]:
        """For /status: this replica, the live members and every bucket's holder."""
        return {
            "replica": self.replica,
            "buckets": self.settings.buckets,
            "held": sorted(self.held),
            "members": list(self.members),
            "holders": {str(index): holder for index, holder in sorted(self.holders.items())},
        }


def _bucket_count(record: dict[str, Any] | None) -> int | None:
    labels = (record or {}).get("metadata", {}).get("labels") or {}
    try:
        return int(labels[BUCKETS_LABEL])
    except (KeyError, ValueError):
        return None
