"""Repository branches spread over replicas by ``coordination.k8s.io`` Leases (``--shards N``).

The unit of ownership is the repository branch (the committer's unit: every target on one
branch moves together). A branch hashes into one of N **buckets**, and each bucket is one Lease
(``<group>-bucket-<i>``), so the API load is N Leases however many branches exist. Each replica
also renews a **membership** Lease (``<group>-member-<replica>``); a member whose Lease stayed
unchanged for a whole duration, by the observer's own clock, is gone.

Every retry period a replica lists the group's Leases once and then:

1. renews its membership and the buckets it holds, concurrently (at most
   :data:`RENEW_CONCURRENCY` at once), so a thousand buckets on a slow API server still renew
   within the renew deadline (a bucket it could not renew in time is dropped: its branches are
   stopped and its writes fenced, see below);
2. computes its share: the live members sorted by identity, the first ``N mod M`` take
   ``ceil(N/M)`` buckets and the others ``floor(N/M)``, so shares differ by at most one;
3. holding more than its share, it **hands over**: still holding the Lease, it first drains
   the bucket (stops its consumers, so nothing new is committed, and pushes what their
   committers hold, for at most :data:`DRAIN_S`, every push fenced as always), so the next
   owner finds every change committed so far as its own commit instead of coalescing them
   into its adoption; then it stops the branches (their committer too, and waits until the
   Git operation in flight has ended) and only then releases the Lease, so the next owner
   never starts while it writes. A replica stopping (SIGTERM) hands every bucket over so;
4. holding fewer, and past its **join window** (one lease duration after its first round, cut
   short as soon as another live replica holds a bucket, so replicas started together see each
   other before any takes a bucket, and each watches only its share from the start), it takes
   free buckets (released, never held, or unchanged for a whole duration), its own former
   ones first: a replica that returns with its state dir gets its buckets back if nobody took
   them, and with them its cursors and clones. A bucket taken from another holder starts
   afresh instead: its targets' journal state and clones are dropped and each target adopts
   its folder through the snapshot path (files that match are kept byte for byte; nothing of
   a live object is deleted), since the previous owner may have pushed past anything this
   replica's journal says.

Steps 3 and 4 wait for Git (a push in flight) and the disk (clones dropped), so each runs as a
task of its own that the round starts and tracks: the round, and with it every renewal, never
waits for them, and a bucket moving is neither handed over twice nor taken back meanwhile.

**Fencing.** A holder writes a branch only while :meth:`ShardCoordinator.may_write` says so:
the bucket is held and its last renewal was sent less than the renew deadline minus the push
budget ago (``PUSH_BUDGET_S`` in :mod:`reverserd.kube.lease`). The renew deadline is shorter
than the lease duration, and a candidate waits a whole duration after the last renewal it saw,
so a replica frozen (SIGSTOP) past its Lease finds, when it wakes, that it may not push, before
anyone could have taken over. The committer asks before every push and every retry, and a
push already running asks again after negotiating and after every chunk it sends, so a push
started just before the check would fail aborts instead of landing after a take-over; the push
itself stays compare-and-swap.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from reverserd.kube.client import KubeClient, KubeError
from reverserd.kube.lease import (
    PEER_ADDRESS_ANNOTATION,
    Lease,
    LeaseTiming,
    last_holder,
    lease_holder,
)

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
# Renewals in flight at once. One after the other, MAX_BUCKETS renewals at 10 ms each already
# take the whole default renew deadline; sixteen at once take 0.64 s and tolerate a server
# sixteen times slower, while a replica keeps at most sixteen requests open to the API server.
RENEW_CONCURRENCY = 16
# A graceful hand-over pushes what the bucket's committers hold for at most this long: a push
# takes about a second, and a stopping replica's whole hand-over must fit in the daemon's
# LEAVE_TIMEOUT_S (10 s). What is not pushed by then is abandoned as before (the next owner
# adopts it, coalesced).
DRAIN_S = 5.0


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
    # Where the other replicas reach this one's webhook port to forward attribution facts
    # (reverserd.attribution.peers); written in the membership Lease. "": not advertised.
    peer_address: str = ""


class ShardCoordinator:
    """Holds this replica's buckets; the target manager asks it which branches are its own."""

    def __init__(self, client: KubeClient, settings: ShardSettings) -> None:
        self.client = client
        self.settings = settings
        self.replica = settings.replica
        self.member = self._lease(
            f"{settings.group}-member-{settings.replica}",
            "member",
            {PEER_ADDRESS_ANNOTATION: settings.peer_address} if settings.peer_address else None,
        )
        self.buckets = [
            self._lease(f"{settings.group}-bucket-{index}", "bucket")
            for index in range(settings.buckets)
        ]
        self.held: set[int] = set()
        self.members: list[str] = [settings.replica]
        # The live other members' advertised peer addresses, as last listed.
        self.peer_addresses: dict[str, str] = {}
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
        self._drop_branches: Callable[[int], Awaitable[None]] | None = None
        # Hand-overs, take-overs and stops running, one task per bucket at most.
        self._moving: dict[int, asyncio.Task[None]] = {}
        # Buckets a take task is claiming: counted as held when the round computes its share.
        self._claiming: set[int] = set()
        # Buckets whose Lease a take task holds while it drops their old state: renewed.
        self._taking: set[int] = set()
        # Buckets let go (handed over, or lapsed) whose writers have not all stopped yet.
        self._letting_go: set[int] = set()
        # Held buckets being drained before their hand-over: their Lease is still renewed.
        self._draining: set[int] = set()
        self._drain_branches: Callable[[int], Awaitable[None]] | None = None
        # Whether a round has listed the members (before, only this replica is known).
        self._listed = False
        # When the first round began: the join window (:meth:`_joining`) starts then.
        self._first_round_at: float | None = None

    def _lease(self, name: str, role: str, annotations: dict[str, str] | None = None) -> Lease:
        settings = self.settings
        labels = {
            GROUP_LABEL: settings.group,
            ROLE_LABEL: role,
            BUCKETS_LABEL: str(settings.buckets),
        }
        return Lease(
            self.client,
            settings.namespace,
            name,
            settings.replica,
            settings.timing,
            labels,
            annotations,
        )

    def bucket(self, branch: str) -> int:
        return bucket_of(branch, self.settings.buckets)

    def owns(self, branch: str) -> bool:
        """Whether the branch's targets run here: held and not being drained for a hand-over."""
        index = self.bucket(branch)
        return index in self.held and index not in self._draining

    def draining(self, branch: str) -> bool:
        """Held, its consumers stopped, its committer pushing what it holds before the
        hand-over: the committer must not be retired meanwhile."""
        return self.bucket(branch) in self._draining

    def serves(self, branch: str) -> bool:
        """Whether this replica watches what ``branch`` needs: its bucket is held, or let go
        with its writers not stopped yet (they never read a stream stopped under them). A
        change of the answer is published (:meth:`wait_for_change`)."""
        index = self.bucket(branch)
        return index in self.held or index in self._letting_go

    @property
    def settled(self) -> bool:
        """Holding its share of the live members' buckets, none of them being handed over:
        what it serves now it keeps until the members change."""
        wanted = share(self.members, self.replica, self.settings.buckets)
        return (
            self._listed
            and not self._disagreeing
            and not self._draining
            and not self._letting_go
            and len(self.held) >= wanted
        )

    @property
    def leaving(self) -> bool:
        """Shutting down: buckets handed over now keep their journal state for a restart."""
        return self._leaving

    def may_write(self, branch: str) -> Callable[[], bool]:
        """The fencing check of one branch, safe to call from any thread: the bucket is held
        and its Lease stays valid for the push budget (a push is asked before it starts and
        while it sends, so it stops with the budget still left)."""
        lease = self.buckets[self.bucket(branch)]
        index = self.bucket(branch)
        budget = self.settings.timing.push_budget_s

        def check() -> bool:
            return index in self.held and lease.valid(budget)

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
        drop: Callable[[int], Awaitable[None]],
        drain: Callable[[int], Awaitable[None]],
    ) -> None:
        """Coordinate until cancelled. ``hand_over(b)`` stops bucket b's branches and returns
        once nothing of theirs writes any more; ``drop(b)`` drops what this replica's journal
        and clones hold for bucket b: before its branches start afresh when taken from another
        replica, and once its Lease is released after a hand-over; ``drain(b)`` stops b's
        consumers and pushes what its committers hold (cancelled after :data:`DRAIN_S`). They
        run as tasks of their own, so none ever delays a renewal."""
        self._hand_over_branches = hand_over
        self._drop_branches = drop
        self._drain_branches = drain
        while not self._leaving:
            try:
                await self._round()
            except (KubeError, aiohttp.ClientError, TimeoutError) as error:
                log.warning("shard leases: %s", error)
            self._drop_lapsed()
            await asyncio.sleep(self.settings.timing.retry_period_s)

    async def _list(self) -> dict[str, dict[str, Any]]:
        collection = self.member.collection
        found = await self.client.get(
            collection, {"labelSelector": f"{GROUP_LABEL}={self.settings.group}"}
        )
        return {item["metadata"]["name"]: item for item in found.get("items") or []}

    async def _round(self) -> None:
        if self._first_round_at is None:
            self._first_round_at = time.monotonic()
        leases = await self._list()
        # Observed before renewing: a bucket another replica took while this one was frozen
        # must look held, not unchanged since before the freeze (free, so taken back).
        for index, lease in enumerate(self.buckets):
            record = leases.get(lease.name)
            lease.observe(record)
            self.holders[index] = lease_holder(record)
        await self._renew(leases)
        self.members = self._live_members(leases)
        self._listed = True
        if self._disagreeing:
            log.error(
                "live replicas run with another --shards: taking no bucket until they are gone",
                extra={"replicas": sorted(self._disagreeing)},
            )
            return
        if self._joining():
            return
        wanted = share(self.members, self.replica, self.settings.buckets)
        keeping = sorted(self.held - self._draining, reverse=True)
        for index in keeping[: max(0, len(keeping) - wanted)]:
            self._draining.add(index)
            self._start(index, self._hand_over(index), "hand-over")
        missing = wanted - len(self.held) - len(self._claiming)
        if missing <= 0 or self._leaving:
            return
        free = [
            index
            for index, lease in enumerate(self.buckets)
            if index not in self.held
            and index not in self._moving
            and lease.free(leases.get(lease.name))
        ]
        # Its own former buckets first: their cursors and clones are still good here.
        free.sort(key=lambda i: (not self._was_ours(leases.get(self.buckets[i].name)), i))
        for index in free[:missing]:
            self._claiming.add(index)
            self._start(index, self._take(index, leases.get(self.buckets[index].name)), "take")

    def _joining(self) -> bool:
        """Whether this replica still waits, holding nothing, for the replicas started with it
        to announce themselves: for one lease duration after its first round, unless another
        live replica holds a bucket (the group runs, and hands this one its share). Taking
        every bucket the moment it starts alone, a replica of a group started together would
        seed and journal what all their branches need, and hand most of it over seconds later.
        """
        assert self._first_round_at is not None
        if time.monotonic() - self._first_round_at >= self.settings.timing.duration_s:
            return False
        others = set(self.members) - {self.replica}
        return not any(holder in others for holder in self.holders.values())

    async def _renew(self, leases: dict[str, dict[str, Any]]) -> None:
        """Renew the membership and every bucket this replica writes under, at most
        :data:`RENEW_CONCURRENCY` at once; a bucket whose renewal fails lapses at its deadline.
        Raises what the membership's renewal raised (the round then plans nothing)."""
        limit = asyncio.Semaphore(RENEW_CONCURRENCY)

        async def renew(lease: Lease) -> None:
            async with limit:
                await lease.try_acquire_or_renew(leases.get(lease.name))

        # A bucket still being taken over is held already: its Lease must not lapse meanwhile.
        writing = sorted(self.held | self._taking)
        outcomes = await asyncio.gather(
            renew(self.member),
            *(renew(self.buckets[index]) for index in writing),
            return_exceptions=True,
        )
        for index, outcome in zip(writing, outcomes[1:], strict=True):
            if isinstance(outcome, BaseException):
                log.warning("could not renew bucket: %s", outcome, extra={"bucket": index})
        if isinstance(outcomes[0], BaseException):
            raise outcomes[0]

    def _start(self, index: int, work: Coroutine[Any, Any, None], what: str) -> None:
        """Run a bucket's hand-over or take-over as a task of its own, tracked until it ends."""
        task = asyncio.create_task(work, name=f"shard bucket {index} {what}")
        self._moving[index] = task

        def ended(done: asyncio.Task[None]) -> None:
            if self._moving.get(index) is done:
                del self._moving[index]
            self._claiming.discard(index)
            if not done.cancelled() and done.exception() is not None:
                log.warning("bucket %s failed: %s", what, done.exception(), extra={"bucket": index})

        task.add_done_callback(ended)

    def _live_members(self, leases: dict[str, dict[str, Any]]) -> list[str]:
        prefix = f"{self.settings.group}-member-"
        live = [self.replica]
        addresses: dict[str, str] = {}
        self._disagreeing = set()
        for name, record in leases.items():
            if not name.startswith(prefix) or name == self.member.name:
                continue
            peer = self._peers.setdefault(name, self._lease(name, "member"))
            peer.observe(record)
            if not peer.free(record):
                holder = lease_holder(record)
                live.append(holder)
                annotations = record["metadata"].get("annotations") or {}
                # Only a replica's own membership Lease says where it is: one naming another
                # holder (or us: ours is skipped above) would send its facts elsewhere.
                own = name == prefix + holder
                if own and annotations.get(PEER_ADDRESS_ANNOTATION):
                    addresses[holder] = str(annotations[PEER_ADDRESS_ANNOTATION])
                if _bucket_count(record) != self.settings.buckets:
                    self._disagreeing.add(holder)
        self.peer_addresses = addresses
        return sorted(live)

    def peers(self) -> dict[str, str]:
        """The other live replicas that advertise a peer address, by identity."""
        return dict(self.peer_addresses)

    def _was_ours(self, record: dict[str, Any] | None) -> bool:
        """Held last by this replica, under the same bucket count (so the same branches)."""
        same_count = _bucket_count(record) == self.settings.buckets
        return same_count and last_holder(record) == self.replica

    async def _take(self, index: int, record: dict[str, Any] | None) -> None:
        lease = self.buckets[index]
        ours = self._was_ours(record)
        if not await lease.try_acquire_or_renew(record):
            return
        if not ours:
            assert self._drop_branches is not None
            # The previous holder may have pushed past anything this journal says.
            self._taking.add(index)
            try:
                await self._drop_branches(index)
            finally:
                self._taking.discard(index)
        self.held.add(index)
        self.holders[index] = self.replica
        log.info(
            "took bucket",
            extra={"bucket": index, "replica": self.replica, "from": lease.taken_from or None},
        )
        await self._publish()

    def _let_go(self, index: int) -> None:
        """Out of :attr:`held` (nothing of it pushes any more), still served until its
        writers stopped (:meth:`_stopped`)."""
        self.held.discard(index)
        self._letting_go.add(index)

    async def _stopped(self, index: int) -> None:
        self._letting_go.discard(index)
        await self._publish()

    async def _hand_over(self, index: int) -> None:
        """Drain the bucket (in :attr:`_draining`, still held), then let it go, stop its
        writers and release its Lease: the handshake of a rebalance or a shutdown. Dropping
        what this replica kept of the bucket comes after the release, unless it is stopping:
        that is local work, and the next owner need not wait for it (nor for a journal that
        refuses to write meanwhile)."""
        assert self._hand_over_branches is not None and self._drain_branches is not None
        assert self._drop_branches is not None
        await self._publish()
        try:
            async with asyncio.timeout(DRAIN_S):
                await self._drain_branches(index)
        except TimeoutError:
            log.warning("drain not finished in time: handing over", extra={"bucket": index})
        finally:
            self._draining.discard(index)
        if index in self.held:  # else it lapsed meanwhile, and is being stopped
            self._let_go(index)
        await self._publish()
        try:
            await self._hand_over_branches(index)
        finally:
            await self._stopped(index)
        lease = self.buckets[index]
        record = await lease.read()
        if record is not None and await lease.release(record):
            self.holders[index] = ""
        log.info("handed over bucket", extra={"bucket": index, "replica": self.replica})
        if not self._leaving:
            # Should this fail (the journal refusing writes), what is left is dropped before
            # the bucket runs here again from another holder, or by the next start.
            await self._drop_branches(index)

    async def _stop(self, index: int) -> None:
        """Stop a lapsed bucket's writers (its Lease is not ours to release any more), then
        drop what this replica kept of it, unless it is stopping."""
        assert self._hand_over_branches is not None and self._drop_branches is not None
        await self._publish()
        try:
            await self._hand_over_branches(index)
        finally:
            await self._stopped(index)
        if not self._leaving:
            await self._drop_branches(index)

    async def leave(self) -> None:
        """On shutdown: hand every bucket over (its branches stopped first) and give the
        membership up, so that the others take the buckets at once, not a lease duration later.
        """
        self._leaving = True
        # What is moving ends first: a take-over's bucket is then held, and handed over below.
        await asyncio.gather(*self._moving.values(), return_exceptions=True)
        if self._hand_over_branches is not None:
            handing = sorted(self.held - self._draining)
            self._draining.update(handing)
            await asyncio.gather(*(self._hand_over(index) for index in handing))
        record = await self.member.read()
        if record is not None:
            await self.member.release(record)
        log.info("left the replicas", extra={"replica": self.replica})

    def _drop_lapsed(self) -> None:
        """A bucket not renewed within the deadline is no longer ours to write."""
        for index in sorted(self.held):
            if self.buckets[index].valid():
                continue
            log.warning("lost bucket: not renewed in time", extra={"bucket": index})
            self._let_go(index)
            self._start(index, self._stop(index), "stop")

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
