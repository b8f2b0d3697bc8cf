"""Fencing and the bucket arithmetic of sharded replicas.

The committer asks the fencing check right before every push, so also before every retry of
the fetch-rebase loop: real parts only (a :class:`Committer` with its Git thread and journal,
a clone of a bare repository reached through file://, a person's commit on that repository).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pygit2

from reverserd.committer.committer import Committer, PushPolicy, Submission
from reverserd.git import FileChange
from reverserd.journal import JournalWriter
from reverserd.kube.client import KubeClient
from reverserd.kube.lease import LeaseTiming
from reverserd.kube.shards import DRAIN_S, ShardCoordinator, ShardSettings, bucket_of, share
from testbed.controlplane import LEASE_NAMESPACE, ControlPlane
from testbed.gitservers import branch_tip, commit_files
from tests.conftest import AUTHOR
from tests.unit.test_committer_stop import committer_on


def change(seq: int) -> Submission:
    return Submission(
        "ns/t", seq, {}, [FileChange(f"f{seq}.yaml", b"x\n")], f"change {seq}\n", push_now=True
    )


async def until(condition: Callable[[], bool]) -> None:
    while True:
        if condition():
            return
        await asyncio.sleep(0.05)


async def refused(committer: Committer) -> None:
    """Until the committer reports a push the fence refused."""

    def reported() -> bool:
        health = committer.board.branches.get(committer.key)
        return health is not None and health.reason == "NotOwner"

    await until(reported)


async def refused_then_pushed(
    tmp_path: Path, may_push: Callable[[], bool], renew: Callable[[], None]
) -> None:
    """A committer fenced by ``may_push`` reports its change refused and pushes nothing, then,
    once ``renew`` has run, pushes the commit that waited."""
    remote = tmp_path / "remote.git"
    pygit2.init_repository(str(remote), bare=True, initial_head="main")
    journal = await JournalWriter.open(tmp_path / "state")
    committer = committer_on(tmp_path / "clone", remote.as_uri(), journal)
    committer.may_push = may_push
    run = asyncio.create_task(committer.run())
    try:
        await asyncio.wait_for(committer.ready.wait(), timeout=30)
        await committer.submit(change(1))
        await asyncio.wait_for(refused(committer), timeout=30)
        assert branch_tip(remote, "main") is None
        renew()
        await asyncio.wait_for(until(lambda: branch_tip(remote, "main") is not None), 30)
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await journal.close()


async def test_a_replica_that_may_no_longer_write_pushes_nothing(tmp_path: Path) -> None:
    lease = {"valid": False}
    await refused_then_pushed(tmp_path, lambda: lease["valid"], lambda: lease.update(valid=True))


async def test_the_retry_after_a_rebuild_on_a_moved_branch_is_fenced_too(tmp_path: Path) -> None:
    remote_path = tmp_path / "remote.git"
    remote = pygit2.init_repository(str(remote_path), bare=True, initial_head="main")
    commit_files(remote, "main", {"notes": b"notes\n"}, "notes", AUTHOR)
    journal = await JournalWriter.open(tmp_path / "state")
    committer = committer_on(tmp_path / "clone", remote_path.as_uri(), journal)
    asked = Counter[str]()

    def may_push() -> bool:
        # Held for the first try; lapsed by the retry after the rebuild.
        asked["push"] += 1
        return asked["push"] == 1

    committer.may_push = may_push
    run = asyncio.create_task(committer.run())
    try:
        await asyncio.wait_for(committer.ready.wait(), timeout=30)
        # Someone else pushes after the clone fetched: the first push is rejected.
        foreign = commit_files(remote, "main", {"more": b"more\n"}, "more", AUTHOR)
        await committer.submit(change(1))
        await asyncio.wait_for(refused(committer), timeout=30)
        assert asked["push"] >= 2
        assert branch_tip(remote_path, "main") == str(foreign)
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await journal.close()


def test_shares_are_balanced_within_one_and_cover_every_bucket() -> None:
    for buckets in (1, 6, 16, 17):
        for count in range(1, 8):
            members = [f"r{index}" for index in range(count)]
            shares = [share(members, member, buckets) for member in members]
            assert sum(shares) == buckets
            assert max(shares) - min(shares) <= 1


def test_a_branch_keeps_its_bucket_and_branches_spread() -> None:
    keys = [f"https://git.example.com/team/repo#branch-{index}" for index in range(600)]
    assert [bucket_of(key, 6) for key in keys] == [bucket_of(key, 6) for key in keys]
    spread = Counter(bucket_of(key, 6) for key in keys)
    assert set(spread) == set(range(6))


def test_the_renew_deadline_comes_before_the_lease_could_expire() -> None:
    for duration in (3, 6, 15, 60):
        timing = LeaseTiming.scaled(duration)
        assert timing.retry_period_s < timing.renew_deadline_s < timing.duration_s


def test_a_branch_may_be_written_only_while_its_bucket_is_held_and_renewed_in_time() -> None:
    timing = LeaseTiming.scaled(6)
    shards = ShardCoordinator(
        None,  # type: ignore[arg-type]  # no call reaches the API server here
        ShardSettings(6, "replica-a", "default", "reverserd", timing),
    )
    branch = "https://git.example.com/team/repo#main"
    may_write = shards.may_write(branch)
    lease = shards.buckets[shards.bucket(branch)]
    lease.renewed_at = time.monotonic()
    assert not may_write()  # renewed, but not a bucket this replica holds
    shards.held.add(shards.bucket(branch))
    assert may_write()
    # Frozen past the renew deadline: refused before anyone else could take the Lease over.
    lease.renewed_at = time.monotonic() - timing.renew_deadline_s
    assert not may_write()
    # Still inside the deadline, but with less than the push budget left: no push starts.
    unsure = timing.renew_deadline_s - timing.push_budget_s
    lease.renewed_at = time.monotonic() - unsure - timing.retry_period_s / 2
    assert not may_write()
    lease.renewed_at = time.monotonic() - unsure + timing.retry_period_s
    assert may_write()


async def test_a_push_under_way_stops_when_the_fence_closes(tmp_path: Path) -> None:
    """Allowed to start, refused once the push has negotiated: nothing reaches the remote, and
    the next push (allowed throughout) carries the commit."""
    asked = Counter[str]()

    def may_push() -> bool:
        asked["push"] += 1
        return asked["push"] != 2

    await refused_then_pushed(tmp_path, may_push, lambda: None)


async def test_renewals_go_on_while_a_hand_over_waits_for_a_push(
    control_plane: ControlPlane,
) -> None:
    """A rebalance whose hand-over blocks (a push in flight) keeps renewing the membership and
    the other buckets, and hands the bucket over once: real Leases on the test bed's API
    server, two real coordinators."""
    client = await KubeClient.connect(control_plane.admin_kubeconfig)
    timing = LeaseTiming.scaled(6)
    group = f"fence-{uuid.uuid4().hex[:8]}"
    first = ShardCoordinator(client, ShardSettings(2, "replica-a", LEASE_NAMESPACE, group, timing))
    second = ShardCoordinator(client, ShardSettings(2, "replica-b", LEASE_NAMESPACE, group, timing))
    push_in_flight = asyncio.Event()
    handed = Counter[int]()
    blocked_at: list[float] = []

    async def hand_over_waiting_for_the_push(bucket: int) -> None:
        handed[bucket] += 1
        blocked_at.append(time.monotonic())
        await push_in_flight.wait()

    async def nothing(bucket: int) -> None:
        return None

    running = [asyncio.create_task(first.run(hand_over_waiting_for_the_push, nothing, nothing))]
    try:
        await asyncio.wait_for(until(lambda: first.held == {0, 1}), 60)
        running.append(asyncio.create_task(second.run(nothing, nothing, nothing)))
        await asyncio.wait_for(until(lambda: bool(blocked_at)), 60)
        kept = 1 - next(iter(handed))
        deadline_passed = blocked_at[0] + timing.renew_deadline_s
        # Renewed after the hand-over has been blocked longer than the renew deadline.
        await asyncio.wait_for(
            until(
                lambda: (
                    first.buckets[kept].renewed_at > deadline_passed
                    and first.member.renewed_at > deadline_passed
                )
            ),
            60,
        )
        assert first.held == {kept}
        assert first.buckets[kept].valid()
        assert handed == {1 - kept: 1}
        push_in_flight.set()
        await asyncio.wait_for(until(lambda: second.held == {1 - kept}), 60)
        assert first.held == {kept} and handed == {1 - kept: 1}
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        push_in_flight.set()
        await client.close()


async def test_a_hand_over_drains_while_it_holds_the_lease_and_goes_on_when_the_drain_hangs(
    control_plane: ControlPlane,
) -> None:
    """The drain runs while the bucket is still held (its pushes pass the fence) and its
    targets do not run; a drain that never ends (a push hanging) is cut after ``DRAIN_S`` and
    the hand-over goes on: the bucket reaches the other replica, and the fence then refuses."""
    client = await KubeClient.connect(control_plane.admin_kubeconfig)
    timing = LeaseTiming.scaled(6)
    group = f"drain-{uuid.uuid4().hex[:8]}"
    first = ShardCoordinator(client, ShardSettings(2, "replica-a", LEASE_NAMESPACE, group, timing))
    second = ShardCoordinator(client, ShardSettings(2, "replica-b", LEASE_NAMESPACE, group, timing))
    branch = next(b for b in (f"branch-{i}" for i in range(100)) if bucket_of(b, 2) == 1)
    may_write = first.may_write(branch)
    seen: list[tuple[bool, bool, bool]] = []
    drained_at: list[float] = []
    handed_at: list[float] = []

    async def hangs(bucket: int) -> None:
        drained_at.append(time.monotonic())
        seen.append((may_write(), first.owns(branch), first.draining(branch)))
        await asyncio.Event().wait()

    async def hand_over(bucket: int) -> None:
        handed_at.append(time.monotonic())

    async def nothing(bucket: int) -> None:
        return None

    running = [asyncio.create_task(first.run(hand_over, nothing, hangs))]
    try:
        await asyncio.wait_for(until(lambda: first.held == {0, 1}), 60)
        running.append(asyncio.create_task(second.run(nothing, nothing, nothing)))
        await asyncio.wait_for(until(lambda: second.held == {1}), 60)
        assert seen == [(True, False, True)]
        assert len(handed_at) == 1 and handed_at[0] - drained_at[0] >= DRAIN_S - 0.1
        assert not may_write() and first.held == {0}
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await client.close()


async def test_a_drain_pushes_what_waits_for_the_interval_and_only_through_the_fence(
    tmp_path: Path,
) -> None:
    """``push_committed`` pushes a commit that would wait an hour for the push interval, and
    returns once it is pushed; while the fence refuses, it pushes nothing and does not return
    (its caller bounds it)."""
    remote = tmp_path / "remote.git"
    pygit2.init_repository(str(remote), bare=True, initial_head="main")
    journal = await JournalWriter.open(tmp_path / "state")
    writing = asyncio.create_task(journal.run())
    committer = committer_on(tmp_path / "clone", remote.as_uri(), journal)
    committer.policy = PushPolicy(3600.0, 1000)
    fence = {"open": False}
    committer.may_push = lambda: fence["open"]
    run = asyncio.create_task(committer.run())
    try:
        await asyncio.wait_for(committer.ready.wait(), timeout=30)
        waiting = Submission("ns/t", 1, {}, [FileChange("f.yaml", b"x\n")], "change 1\n")
        await committer.submit(waiting)
        drain = asyncio.create_task(committer.push_committed())
        await asyncio.wait_for(refused(committer), timeout=30)
        assert not drain.done() and branch_tip(remote, "main") is None
        fence["open"] = True
        await asyncio.wait_for(drain, timeout=30)
        assert branch_tip(remote, "main") is not None
    finally:
        run.cancel()
        writing.cancel()
        await asyncio.gather(run, writing, return_exceptions=True)
        await journal.close()


async def test_replicas_started_together_each_take_only_their_share(
    control_plane: ControlPlane,
) -> None:
    """A replica holds nothing for a lease duration after it starts unless another live replica
    holds a bucket, so a group started together (a StatefulSet's pods in parallel) never lets
    its first replica take every bucket, watch what every branch needs and hand most of it over
    seconds later; one that joins a running group takes what it is handed at once; alone, a
    replica takes every bucket after the window. Real Leases on the test bed's API server."""
    client = await KubeClient.connect(control_plane.admin_kubeconfig)
    timing = LeaseTiming.scaled(6)
    group = f"join-{uuid.uuid4().hex[:8]}"

    def coordinator(name: str) -> ShardCoordinator:
        return ShardCoordinator(client, ShardSettings(4, name, LEASE_NAMESPACE, group, timing))

    first, second, third = (
        coordinator("replica-a"),
        coordinator("replica-b"),
        coordinator("replica-c"),
    )
    most = Counter[str]()

    async def nothing(bucket: int) -> None:
        return None

    def watch(*coordinators: ShardCoordinator) -> Callable[[], bool]:
        def count() -> bool:
            for each in coordinators:
                most[each.replica] = max(most[each.replica], len(each.held))
            return False

        return count

    sample = watch(first, second, third)
    started = time.monotonic()
    running = [asyncio.create_task(first.run(nothing, nothing, nothing))]
    watching = asyncio.create_task(until(sample))
    try:
        await asyncio.sleep(1)
        running.append(asyncio.create_task(second.run(nothing, nothing, nothing)))
        await asyncio.wait_for(until(lambda: len(first.held) + len(second.held) == 4), 60)
        assert time.monotonic() - started >= timing.duration_s
        assert len(first.held) == len(second.held) == 2
        sample()
        assert (most["replica-a"], most["replica-b"]) == (2, 2), most
        # A replica joining the running group takes its share without waiting for the window.
        joined = time.monotonic()
        running.append(asyncio.create_task(third.run(nothing, nothing, nothing)))
        await asyncio.wait_for(until(lambda: len(third.held) == 1), 60)
        assert time.monotonic() - joined < timing.duration_s
    finally:
        watching.cancel()
        for task in running:
            task.cancel()
        await asyncio.gather(watching, *running, return_exceptions=True)
        await client.close()
