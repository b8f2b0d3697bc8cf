"""Several active replicas (``--shards``): branches spread by bucket Leases, taken over when a
replica dies, fenced when one wakes up after its Lease lapsed. Real ``reverserd run`` processes,
each with its own state dir, against one API server and one Git server whose post-receive hook
records every accepted push with the replica that made it."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pygit2
import yaml

from reverserd.git.urls import branch_key
from reverserd.kube.shards import GROUP_LABEL, bucket_of
from testbed.controlplane import LEASE_NAMESPACE, ControlPlane
from testbed.gitservers import branch_tip, install_hook, read_tree_at
from testbed.harness import (
    Reverserd,
    apply,
    conditions,
    history,
    logged_by_reverserd,
    resource_status,
    subjects,
    tree,
    wait_until,
)
from testbed.manifests import configmap, git_provider, git_target, watch_rule
from tests.conftest import Remote

REPLICAS = ("replica-a", "replica-b", "replica-c")
BUCKETS = 6
# Short Leases keep the test to a few minutes: renew deadline 4 s, retry period 0.8 s.
LEASE_S = 6
# A dead replica's buckets are free once a survivor saw their Lease unchanged for a whole
# duration (at most one retry period after the last renewal), and taken in the survivor's next
# round: the duration plus this bound, which leaves room for rounds slowed by the loaded test
# machine.
TAKEOVER_BOUND_S = 10
FOLDER = "live-cluster"
# Longer than committing takes, shorter than a freeze past the Lease (its duration at least).
PUSH_INTERVAL_WHILE_FROZEN_S = 4


def spread(remote: Remote, per_bucket: int = 1) -> list[str]:
    """``per_bucket`` branches in each bucket, so every replica holds branches whatever the URL
    hashes to."""
    found: dict[int, list[str]] = {index: [] for index in range(BUCKETS)}
    index = 0
    while any(len(names) < per_bucket for names in found.values()):
        names = found[bucket(remote, f"shard-{index}")]
        if len(names) < per_bucket:
            names.append(f"shard-{index}")
        index += 1
    return [name for index in range(BUCKETS) for name in found[index]]


def setup(
    namespace: str, remote: Remote, interval: str, branches: list[str]
) -> list[dict[str, object]]:
    """One provider, and one target (with its WatchRule of ConfigMaps) on each branch."""
    manifests: list[dict[str, object]] = [
        git_provider(
            namespace,
            "mirror",
            remote.url,
            secret=remote.secret,
            branches=["shard-*"],
            push={"interval": interval},
        )
    ]
    for branch in branches:
        manifests.append(git_target(namespace, branch, "mirror", FOLDER, branch))
        manifests.append(watch_rule(namespace, branch, branch, [{"resources": ["configmaps"]}]))
    return manifests


def replicas(
    plane: ControlPlane, tmp_path: Path, group: str, names: tuple[str, ...] = REPLICAS
) -> dict[str, Reverserd]:
    return {
        name: Reverserd(
            plane,
            tmp_path / name,
            [
                "--shards",
                str(BUCKETS),
                "--replica-id",
                name,
                "--shard-lease-duration",
                str(LEASE_S),
                "--leader-election-namespace",
                LEASE_NAMESPACE,
                "--leader-election-id",
                group,
                "--git-author-name",
                name,
            ],
        )
        for name in names
    }


def sharded_group(
    plane: ControlPlane,
    tmp_path: Path,
    namespace: str,
    remote: Remote,
    names: tuple[str, ...] = REPLICAS,
) -> tuple[list[str], dict[str, Reverserd], Path]:
    """One branch per bucket, the replicas (not started) and the log of pushes."""
    daemons = replicas(plane, tmp_path, f"shards-{namespace}", names)
    return spread(remote), daemons, record_pushes(remote, tmp_path)


@contextlib.contextmanager
def stopped_at_end(daemons: dict[str, Reverserd]) -> Iterator[None]:
    try:
        yield
    finally:
        for daemon in daemons.values():
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.process.send_signal(signal.SIGCONT)  # a frozen one, too, stops
            daemon.ensure_stopped()


def record_pushes(remote: Remote, tmp_path: Path) -> Path:
    """Every accepted push: server time, branch, and the committer (the replica) of its tip."""
    log = tmp_path / "pushes.log"
    log.touch()
    install_hook(
        remote.path,
        "post-receive",
        "#!/bin/sh\n"
        "while read old new ref; do\n"
        f'  echo "$(date +%s.%N) ${{ref#refs/heads/}} $(git log -1 --format=%cn "$new")" >> {log}\n'
        "done\n",
    )
    return log


def pushes(log: Path) -> list[tuple[float, str, str]]:
    found = []
    for line in log.read_text().splitlines():
        moment, branch, replica = line.split(" ", 2)
        found.append((float(moment), branch, replica))
    return found


def bucket(remote: Remote, branch: str) -> int:
    return bucket_of(branch_key(remote.url, branch), BUCKETS)


def held(daemon: Reverserd) -> set[int]:
    return set(daemon.status()["shards"]["held"])


def balanced(live: list[Reverserd]) -> bool:
    """Every bucket held by exactly one of ``live``, shares within one of each other."""
    shares = [held(daemon) for daemon in live]
    counts = [len(share) for share in shares]
    every = [index for share in shares for index in share]
    return sorted(every) == list(range(BUCKETS)) and max(counts) - min(counts) <= 1


def describe(daemons: dict[str, Reverserd]) -> str:
    return "\n".join(f"--- {name}\n{daemon.log_tail(2500)}" for name, daemon in daemons.items())


def folder_files(remote: Remote, branch: str, namespace: str) -> dict[str, dict[str, object]]:
    prefix = f"{FOLDER}/v1/configmaps/{namespace}/"
    return {
        path[len(prefix) :]: yaml.safe_load(content)
        for path, content in tree(remote.path, branch).items()
        if path.startswith(prefix)
    }


def values(remote: Remote, branch: str, namespace: str) -> dict[str, object]:
    """The ``key`` value of every ConfigMap file on ``branch``."""
    return {
        name: (body.get("data") or {}).get("key")
        for name, body in folder_files(remote, branch, namespace).items()
    }


def no_change_committed_twice(remote: Remote, branches: list[str]) -> None:
    """Each object changes once per branch in these tests: a repeated subject is a change
    committed twice (a reconcile commit's subject only counts files, so two may be equal)."""
    for branch in branches:
        history = subjects(remote.path, branch)
        repeated = {
            s: n for s, n in Counter(history).items() if n > 1 and not s.startswith("reconcile")
        }
        assert repeated == {}, (branch, history)


def owner_of_most(daemons: dict[str, Reverserd], remote: Remote, branches: list[str]) -> str:
    """The replica that holds the buckets of the most branches."""
    counts = Counter(
        name
        for name, daemon in daemons.items()
        for branch in branches
        if bucket(remote, branch) in held(daemon)
    )
    return counts.most_common(1)[0][0]


# The steady workload: one ConfigMap write every WRITE_GAP_S, round robin over WRITTEN objects,
# each write a value never written before (so a file's content committed twice on a branch is a
# change committed twice).
WRITE_GAP_S = 2.0
WRITTEN = 5


class SteadyWrites:
    """A thread writing the workload until stopped; what it wrote, per file."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        self.plane, self.namespace = plane, namespace
        self.writes = Counter[str]()
        self.latest: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            name = f"w{index % WRITTEN}"
            apply(self.plane, configmap(self.namespace, name, {"key": str(index)}))
            self.writes[f"{name}.yaml"] += 1
            self.latest[f"{name}.yaml"] = str(index)
            index += 1
            self._stop.wait(WRITE_GAP_S)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()


def contents_committed(remote: Remote, branch: str, prefix: str) -> Counter[tuple[str, str]]:
    """How many commits of ``branch`` set each file below ``prefix`` to each content."""
    repo = pygit2.Repository(str(remote.path))
    found = Counter[tuple[str, str]]()
    for entry in history(remote.path, branch):
        commit = repo.get(entry.sha)
        assert isinstance(commit, pygit2.Commit)
        if commit.parents:
            diff = repo.diff(commit.parents[0].tree, commit.tree)
            written = [(d.new_file.path, str(d.new_file.id)) for d in diff.deltas]
        else:
            written = [
                (path, str(commit.tree[path].id)) for path in read_tree_at(remote.path, entry.sha)
            ]
        found.update(
            (path[len(prefix) :], blob) for path, blob in written if path.startswith(prefix)
        )
    return found


# Item 6 of the design: three replicas and thirty targets, each on a branch of its own.
BRANCHES_PER_BUCKET = 5


def test_a_killed_replicas_branches_are_taken_over_and_nothing_is_lost_or_doubled(
    control_plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    """Three replicas, thirty targets on thirty branches, a steady workload; one replica is
    SIGKILLed mid-way: its buckets are taken within the Lease duration plus the bound, every
    branch ends equal to the cluster, and no change is committed twice (by the dead owner and
    again by its successor)."""
    daemons = replicas(control_plane, tmp_path, f"shards-{namespace}")
    branches = spread(remote, BRANCHES_PER_BUCKET)
    log = record_pushes(remote, tmp_path)
    assert len(branches) == BUCKETS * BRANCHES_PER_BUCKET == 30
    workload = SteadyWrites(control_plane, namespace)
    with stopped_at_end(daemons):
        apply(control_plane, *setup(namespace, remote, "1s", branches))
        for daemon in daemons.values():
            daemon.start()
        wait_until(lambda: balanced(list(daemons.values())), 60, lambda: describe(daemons))
        apply(control_plane, configmap(namespace, "before", {"key": "1"}))
        wait_until(
            lambda: all(values(remote, b, namespace) == {"before.yaml": "1"} for b in branches),
            120,
            lambda: describe(daemons),
        )
        # Each branch was pushed by the replica holding its bucket, and only by it.
        for _, branch, replica in pushes(log):
            assert bucket(remote, branch) in held(daemons[replica]), (branch, replica)

        victim = owner_of_most(daemons, remote, branches)
        victims_branches = [b for b in branches if bucket(remote, b) in held(daemons[victim])]
        survivors = [daemon for name, daemon in daemons.items() if name != victim]
        with workload.running():
            time.sleep(10)  # the victim commits and pushes the workload's changes a while
            daemons[victim].kill()
            killed_at = time.monotonic()
            apply(control_plane, configmap(namespace, "before", {"key": "2"}))
            wait_until(lambda: balanced(survivors), 60, lambda: describe(daemons))
            takeover_s = time.monotonic() - killed_at
            assert takeover_s < LEASE_S + TAKEOVER_BOUND_S, takeover_s
            settled_at = time.time()
            time.sleep(10)  # the survivors carry the workload on the victim's branches

        apply(control_plane, configmap(namespace, "later"))
        wanted = {"before.yaml": "2", "later.yaml": "later", **workload.latest}
        wait_until(
            lambda: all(values(remote, b, namespace) == wanted for b in branches),
            120,
            lambda: describe(daemons),
        )
        prefix = f"{FOLDER}/v1/configmaps/{namespace}/"
        for branch in branches:
            repeated = {
                change: n
                for change, n in contents_committed(remote, branch, prefix).items()
                if n > 1
            }
            assert repeated == {}, (branch, subjects(remote.path, branch))
        # Each GitTarget's status is written by the replica holding its branch, the victim's
        # by their new holders: it names the branch's tip.
        wait_until(
            lambda: all(
                resource_status(control_plane, "gittarget", namespace, b).get("lastCommit")
                == branch_tip(remote.path, b)
                for b in branches
            ),
            60,
            lambda: describe(daemons),
        )
        # /status and the page of any replica say who writes which branch.
        picture = survivors[0].status()
        owners = {row["target"]: row["owner"] for row in picture["targets"]}
        for branch in branches:
            owner = owners[f"{namespace}/{branch}"]
            assert bucket(remote, branch) in held(daemons[owner]), (branch, owner)
        page = (survivors[0].get("/") or b"").decode()
        assert "Replicas" in page and f"<dd>{victim}</dd>" not in page
        assert all(f"<dd>{d.state_dir.name}</dd>" in page for d in survivors), page
        # Since the takeover, every branch was pushed only by the survivor holding its bucket.
        late = [(b, r) for moment, b, r in pushes(log) if moment > settled_at]
        assert {b for b, _ in late} >= set(victims_branches)
        for branch, replica in late:
            assert bucket(remote, branch) in held(daemons[replica]), (branch, replica)


def took_bucket_times(daemon: Reverserd, after: float) -> dict[int, float]:
    """When ``daemon`` logged taking each bucket (the first time after ``after``)."""
    taken: dict[int, float] = {}
    for line in daemon.log_lines():
        if line.get("message") != "took bucket":
            continue
        moment = datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
        if moment >= after:
            taken.setdefault(int(line["bucket"]), moment)
    return taken


def test_a_replica_frozen_past_its_lease_pushes_nothing_for_branches_it_lost(
    control_plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    branches, daemons, log = sharded_group(control_plane, tmp_path, namespace, remote)
    with stopped_at_end(daemons):
        # The frozen replica holds committed, unpushed changes, and their push is due by the
        # time it wakes (the freeze lasts longer than the interval).
        interval = f"{PUSH_INTERVAL_WHILE_FROZEN_S}s"
        apply(control_plane, *setup(namespace, remote, interval, branches))
        for daemon in daemons.values():
            daemon.start()
        wait_until(lambda: balanced(list(daemons.values())), 60, lambda: describe(daemons))
        victim = owner_of_most(daemons, remote, branches)
        frozen = daemons[victim]
        lost = [b for b in branches if bucket(remote, b) in held(frozen)]
        apply(control_plane, configmap(namespace, "flip", {"key": "old"}))
        wait_until(
            lambda: frozen.metric("gitopsreverser_git_commit_queue_size") >= len(lost),
            30,
            frozen.log_tail,
        )
        assert frozen.process is not None
        frozen.process.send_signal(signal.SIGSTOP)
        apply(control_plane, configmap(namespace, "flip", {"key": "new"}))
        survivors = [daemon for name, daemon in daemons.items() if name != victim]
        wait_until(lambda: balanced(survivors), 60, lambda: describe(daemons))
        # The survivors adopt the lost branches and push the current state at once.
        wait_until(
            lambda: all(values(remote, b, namespace) == {"flip.yaml": "new"} for b in lost),
            60,
            lambda: describe(daemons),
        )
        woken_at = time.time()
        frozen.process.send_signal(signal.SIGCONT)
        # It rejoins and gets its share back through the handshake.
        wait_until(lambda: balanced(list(daemons.values())), 60, lambda: describe(daemons))
        apply(control_plane, configmap(namespace, "later"))
        wanted = {"flip.yaml": "new", "later.yaml": "later"}
        wait_until(
            lambda: all(values(remote, b, namespace) == wanted for b in branches),
            120,
            lambda: describe(daemons),
        )
        no_change_committed_twice(remote, branches)
        retaken = took_bucket_times(frozen, woken_at - 1)
        for moment, branch, replica in pushes(log):
            if replica != victim or moment < woken_at:
                continue
            # Woken, it pushes a branch only after taking its bucket again (from scratch).
            since = retaken.get(bucket(remote, branch))
            assert since is not None and moment > since, (branch, moment, retaken)


def first_syncs(daemon: Reverserd, target: str) -> int:
    """How many first syncs (snapshots) of ``target`` the daemon has planned."""
    message = logged_by_reverserd("reconcile planned")
    return sum(
        1
        for line in daemon.log_lines()
        if line.get("message") == message and line.get("target") == target
    )


def test_a_replica_taking_a_branch_back_from_another_starts_it_afresh(
    control_plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    """Its journal's cursor is older than what the other replica pushed meanwhile: replaying
    from it would commit the other replica's changes a second time."""
    names = REPLICAS[:2]
    branches, daemons, log = sharded_group(control_plane, tmp_path, namespace, remote, names)
    branch = branches[0]
    target = f"{namespace}/{branch}"
    first, second = daemons.values()
    with stopped_at_end(daemons):
        manifests = setup(namespace, remote, "1s", branches)
        apply(control_plane, *manifests[:3])  # the provider and the first branch's target
        first.start()
        # Synced (after its join window) before the change, which is then a commit of its own.
        wait_until(lambda: first_syncs(first, target) == 1, 60, first.log_tail)
        apply(control_plane, configmap(namespace, "flip", {"key": "1"}))
        wait_until(lambda: values(remote, branch, namespace) == {"flip.yaml": "1"}, 60)
        first.stop()
        second.start()
        # Its first sync adopts the folder as it is (no commit) before the next change.
        wait_until(lambda: first_syncs(second, target) == 1, 60, second.log_tail)
        apply(control_plane, configmap(namespace, "flip", {"key": "2"}))
        wait_until(lambda: values(remote, branch, namespace) == {"flip.yaml": "2"}, 60)
        apply(control_plane, configmap(namespace, "flip", {"key": "3"}))
        wait_until(lambda: values(remote, branch, namespace) == {"flip.yaml": "3"}, 60)
        second.stop()
        first.start()
        wait_until(lambda: bucket(remote, branch) in held(first), 60, first.log_tail)
        apply(control_plane, configmap(namespace, "later"))
        wanted = {"flip.yaml": "3", "later.yaml": "later"}
        wait_until(
            lambda: values(remote, branch, namespace) == wanted, 60, lambda: describe(daemons)
        )
        # Taken back, the branch is adopted as the other replica left it (its first sync may
        # come with the later change in one reconcile commit); nothing is replayed.
        history = subjects(remote.path, branch)
        assert history[:3] == [
            f"[CREATE] v1/configmaps/{namespace}/flip",
            f"[UPDATE] v1/configmaps/{namespace}/flip",
            f"[UPDATE] v1/configmaps/{namespace}/flip",
        ], history
        assert history.count(f"[UPDATE] v1/configmaps/{namespace}/flip") == 2, history
        pushers = [replica for _, _, replica in pushes(log)]
        assert pushers[:3] == [REPLICAS[0], REPLICAS[1], REPLICAS[1]], pushers
        assert set(pushers[3:]) == {REPLICAS[0]}, pushers


def lease_holders(plane: ControlPlane, namespace: str) -> set[str]:
    """Every replica a Lease of the test's group names as its holder."""
    found = plane.kubectl(
        "get", "leases", "-n", LEASE_NAMESPACE, "-l", f"{GROUP_LABEL}=shards-{namespace}", "-o",
        "json",
    )  # fmt: skip
    return {
        str(item["spec"].get("holderIdentity"))
        for item in json.loads(found)["items"]
        if item["spec"].get("holderIdentity")
    }


def test_scaling_three_to_four_to_two_moves_branches_with_the_handshake_and_loses_nothing(
    control_plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    names = (*REPLICAS, "replica-d")
    branches, daemons, log = sharded_group(control_plane, tmp_path, namespace, remote, names)

    def settles(step: int) -> None:
        """The running replicas balance; a change then reaches every branch, pushed by the
        holder of its bucket only."""
        live = [d for d in daemons.values() if d.process and d.process.poll() is None]
        wait_until(lambda: balanced(live), 60, lambda: describe(daemons))
        settled_at = time.time()
        apply(control_plane, configmap(namespace, f"step-{step}"))
        wanted = {f"step-{index}.yaml": f"step-{index}" for index in range(step + 1)}
        wait_until(
            lambda: all(values(remote, b, namespace) == wanted for b in branches),
            90,
            lambda: describe(daemons),
        )
        for moment, branch, replica in pushes(log):
            if moment > settled_at:
                assert bucket(remote, branch) in held(daemons[replica]), (branch, replica)

    with stopped_at_end(daemons):
        apply(control_plane, *setup(namespace, remote, "1s", branches))
        for name in REPLICAS:
            daemons[name].start()
        settles(0)
        daemons["replica-d"].start()
        settles(1)
        for name in ("replica-c", "replica-d"):
            # SIGTERM hands the buckets over: no Lease names it once it has stopped.
            daemons[name].stop()
            assert name not in lease_holders(control_plane, namespace)
        settles(2)
        no_change_committed_twice(remote, branches)


# One core type per bucket's branch, each a plain object the test bed can hold (no controller
# acts on them), so each branch's target needs a stream of its own.
TYPES = (
    "configmaps",
    "serviceaccounts",
    "podtemplates",
    "limitranges",
    "resourcequotas",
    "endpoints",
)
KINDS = {
    "configmaps": ("ConfigMap", {"data": {"k": "v"}}),
    "serviceaccounts": ("ServiceAccount", {}),
    "podtemplates": (
        "PodTemplate",
        {"template": {"spec": {"containers": [{"name": "c", "image": "scratch"}]}}},
    ),
    "limitranges": ("LimitRange", {"spec": {"limits": [{"type": "Container"}]}}),
    "resourcequotas": ("ResourceQuota", {"spec": {"hard": {"pods": "10"}}}),
    "endpoints": ("Endpoints", {"subsets": []}),
}


def typed_object(resource: str, namespace: str, name: str, value: str) -> dict[str, object]:
    kind, rest = KINDS[resource]
    metadata = {"name": name, "namespace": namespace, "annotations": {"value": value}}
    return {"apiVersion": "v1", "kind": kind, "metadata": metadata, **rest}


def typed_setup(namespace: str, remote: Remote, branches: list[str]) -> list[dict[str, object]]:
    """One provider, and one target on each branch whose WatchRule selects that branch's type."""
    manifests: list[dict[str, object]] = [
        git_provider(namespace, "mirror", remote.url, secret=remote.secret, branches=["shard-*"])
    ]
    for branch, resource in zip(branches, TYPES, strict=True):
        manifests.append(git_target(namespace, branch, "mirror", FOLDER, branch))
        manifests.append(watch_rule(namespace, branch, branch, [{"resources": [resource]}]))
    return manifests


def typed_values(remote: Remote, branch: str, resource: str, namespace: str) -> dict[str, str]:
    """The ``value`` annotation of every file of ``resource`` on ``branch``, by object name."""
    prefix = f"{FOLDER}/v1/{resource}/{namespace}/"
    found = {}
    for path, content in tree(remote.path, branch).items():
        if path.startswith(prefix):
            body = yaml.safe_load(content)
            found[path[len(prefix) : -len(".yaml")]] = body["metadata"]["annotations"]["value"]
    return found


@dataclass
class Journaled:
    """What a replica's journal.db holds."""

    streams: dict[str, tuple[str, float]]
    """Each stream's seed state and seed time."""
    events: set[str]
    """The types of its events about the objects called as asked."""
    objects: set[str]
    """The types of its current objects."""
    cursors: set[str]
    """The targets it holds a cursor of."""


def journaled(daemon: Reverserd, name: str = "") -> Journaled:
    connection = sqlite3.connect(f"file:{daemon.state_dir / 'journal.db'}?mode=ro", uri=True)
    try:
        streams = {
            stream: (state, seeded_at or 0.0)
            for stream, state, seeded_at in connection.execute(
                "SELECT stream, seed_state, seeded_at FROM streams"
            )
        }
        events = {
            r
            for (r,) in connection.execute(
                "SELECT DISTINCT resource FROM events WHERE name = ?", (name,)
            )
        }
        objects = {r for (r,) in connection.execute("SELECT DISTINCT resource FROM objects")}
        cursors = {t for (t,) in connection.execute("SELECT target FROM cursors")}
    finally:
        connection.close()
    return Journaled(streams, events, objects, cursors)


def needs(daemon: Reverserd, remote: Remote, branches: list[str]) -> set[str]:
    """The types of the branches whose buckets the replica holds."""
    mine = held(daemon)
    return {t for b, t in zip(branches, TYPES, strict=True) if bucket(remote, b) in mine}


def journals_only_its_share(
    daemon: Reverserd, remote: Remote, branches: list[str], namespace: str
) -> bool:
    """Seeded streams of exactly its branches' types, objects of no other type, and cursors of
    its branches' targets only (those of a branch handed over are dropped with its streams)."""
    wanted = needs(daemon, remote, branches)
    found = journaled(daemon)
    expected = {f"v1/{resource}@{namespace}" for resource in wanted}
    targets = {f"{namespace}/{b}" for b, t in zip(branches, TYPES, strict=True) if t in wanted}
    return (
        set(found.streams) == expected
        and all(state == "complete" for state, _ in found.streams.values())
        and found.objects <= wanted
        and found.cursors <= targets
    )


def start_together(daemons: list[Reverserd]) -> None:
    """Start the replicas at once, as a StatefulSet's pods in parallel."""
    with ThreadPoolExecutor(len(daemons)) as pool:
        list(pool.map(Reverserd.start, daemons))


def never_deleted(remote: Remote, branch: str, path: str) -> bool:
    """Once on ``branch``, ``path`` is in every later commit."""
    seen = False
    for entry in history(remote.path, branch):
        commit = pygit2.Repository(str(remote.path)).get(entry.sha)
        try:
            commit.tree[path]
        except KeyError:
            if seen:
                return False
            continue
        seen = True
    return seen


def test_each_replica_watches_only_its_branches_and_takes_the_streams_of_those_it_gains(
    control_plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    """Two replicas started together journal only the types of their own branches from the
    start (neither takes every bucket first); a third joining takes buckets
    through the handshake, and the old holders release those streams; killed, its buckets go
    back to the survivors, who seed those streams again and adopt the folders; restarted with
    its state dir after the first stopped, it releases what it journaled for buckets now held
    elsewhere. The trees
    equal the cluster, and no file of a live object is ever deleted."""
    branches, daemons, _ = sharded_group(control_plane, tmp_path, namespace, remote)
    first, second, third = (daemons[name] for name in REPLICAS)
    of_type = dict(zip(TYPES, branches, strict=True))
    cluster: dict[str, dict[str, str]] = {resource: {} for resource in TYPES}

    def write(name: str, value: str) -> None:
        apply(control_plane, *(typed_object(r, namespace, name, value) for r in TYPES))
        for resource in TYPES:
            cluster[resource][name] = value

    def remove(name: str) -> None:
        for resource in TYPES:
            control_plane.kubectl("delete", resource, "-n", namespace, name)
            del cluster[resource][name]

    def mirrored() -> bool:
        return all(typed_values(remote, of_type[r], r, namespace) == cluster[r] for r in TYPES)

    def shares_journaled(live: list[Reverserd]) -> bool:
        return all(journals_only_its_share(d, remote, branches, namespace) for d in live)

    with stopped_at_end(daemons):
        apply(control_plane, *typed_setup(namespace, remote, branches))
        write("stays", "s")
        write("doomed", "d")
        pair = [first, second]
        start_together(pair)
        wait_until(lambda: balanced(pair), 60, lambda: describe(daemons))
        wait_until(mirrored, 90, lambda: describe(daemons))
        wait_until(lambda: shares_journaled(pair), 30, lambda: describe(daemons))
        write("probe", "p")
        wait_until(mirrored, 90, lambda: describe(daemons))
        for daemon in pair:
            # Started together, neither ever held more than its share, and not one event of a
            # type of the other replica's branches is journaled: neither the seed of what
            # existed before they started nor a later change.
            for name in ("stays", "probe"):
                events = journaled(daemon, name).events
                assert events == needs(daemon, remote, branches), (daemon.state_dir.name, name)
            assert set(took_bucket_times(daemon, 0)) == held(daemon), daemon.log_tail()

        # A third replica joins: the old holders hand buckets over and release their streams.
        third.start()
        trio = [first, second, third]
        wait_until(lambda: balanced(trio), 60, lambda: describe(daemons))
        write("joined", "j")
        wait_until(mirrored, 90, lambda: describe(daemons))
        wait_until(lambda: shares_journaled(trio), 30, lambda: describe(daemons))

        # Killed, its buckets go back to the survivors, whose journals released those streams:
        # they seed them again (never resume them) and adopt the folders as the third left them.
        gained = {t: b for t, b in of_type.items() if bucket(remote, b) in held(third)}
        assert gained
        third.kill()
        killed_at = time.time()
        write("stays", "s")  # unchanged
        write("flip", "f")
        remove("doomed")
        wait_until(lambda: balanced(pair), 60, lambda: describe(daemons))
        write("later", "l")
        wait_until(mirrored, 120, lambda: describe(daemons))
        wait_until(lambda: shares_journaled(pair), 30, lambda: describe(daemons))
        for resource in gained:
            holder = next(d for d in pair if resource in needs(d, remote, branches))
            _, seeded_at = journaled(holder).streams[f"v1/{resource}@{namespace}"]
            assert seeded_at > killed_at, (resource, holder.state_dir.name)

        # The first stops (SIGTERM hands its buckets over), and the killed one comes back with
        # its state dir: it takes the highest half of the buckets, not all of those it held,
        # and releases the streams its journal kept of the others once it holds its share.
        first.stop()
        third.start()
        last = [second, third]
        wait_until(lambda: balanced(last), 60, lambda: describe(daemons))
        write("returned", "r")
        wait_until(mirrored, 90, lambda: describe(daemons))
        wait_until(lambda: shares_journaled(last), 30, lambda: describe(daemons))
        for resource, branch in of_type.items():
            path = f"{FOLDER}/v1/{resource}/{namespace}/stays.yaml"
            assert never_deleted(remote, branch, path), (branch, subjects(remote.path, branch))
        no_change_committed_twice(remote, branches)


def commits_per_file(remote: Remote, branch: str, prefix: str) -> Counter[str]:
    """How many commits of ``branch`` changed each file below ``prefix``."""
    repo = pygit2.Repository(str(remote.path))
    changed = Counter[str]()
    for entry in history(remote.path, branch):
        commit = repo.get(entry.sha)
        assert isinstance(commit, pygit2.Commit)
        if commit.parents:
            diff = repo.diff(commit.parents[0].tree, commit.tree)
            paths = {delta.new_file.path for delta in diff.deltas}
        else:
            paths = set(read_tree_at(remote.path, entry.sha))
        changed.update(path[len(prefix) :] for path in paths if path.startswith(prefix))
    return changed


# The drain test's pushes wait PUSH_INTERVAL_S, so without a drain the old owner would abandon
# several changes of each object (each changes every WRITE_GAP_S * WRITTEN seconds, longer than a
# hand-over takes: the new owner's adoption then finds at most one change of an object not
# pushed yet).
PUSH_INTERVAL_S = 40


def test_a_graceful_hand_over_pushes_what_the_old_holder_committed_so_each_change_keeps_its_commit(
    control_plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    """Scaling 2 to 3 under a steady workload: the replicas handing buckets over push their
    committed changes first (still holding the Lease), so every write is one commit of its
    object's file on every branch; without the drain the new owner's adoption would coalesce
    the abandoned ones."""
    branches, daemons, log = sharded_group(control_plane, tmp_path, namespace, remote)
    first, second, third = (daemons[name] for name in REPLICAS)
    workload = SteadyWrites(control_plane, namespace)
    with stopped_at_end(daemons):
        apply(control_plane, *setup(namespace, remote, f"{PUSH_INTERVAL_S}s", branches))
        apply(control_plane, configmap(namespace, "seed", {"key": "s"}))
        first.start()
        second.start()
        wait_until(lambda: balanced([first, second]), 60, lambda: describe(daemons))
        wait_until(
            lambda: all(values(remote, b, namespace) == {"seed.yaml": "s"} for b in branches),
            90,
            lambda: describe(daemons),
        )
        with workload.running():
            time.sleep(15)
            third.start()
            wait_until(lambda: balanced([first, second, third]), 60, lambda: describe(daemons))
            moved_at = time.time()
            time.sleep(15)
        wanted = {"seed.yaml": "s", **workload.latest}
        wait_until(
            lambda: all(values(remote, b, namespace) == wanted for b in branches),
            PUSH_INTERVAL_S + 60,
            lambda: describe(daemons),
        )
        # Buckets moved, pushed by the new holder since.
        assert any(r == third.state_dir.name for t, _, r in pushes(log) if t > moved_at)
        prefix = f"{FOLDER}/v1/configmaps/{namespace}/"
        for branch in branches:
            assert commits_per_file(remote, branch, prefix) == {
                "seed.yaml": 1,
                **workload.writes,
            }, (
                branch,
                subjects(remote.path, branch),
            )


def leader(plane: ControlPlane, namespace: str) -> str:
    """The replica holding the group's leader Lease (the config plane's status writer)."""
    found = plane.kubectl(
        "get", "lease", "-n", LEASE_NAMESPACE, f"shards-{namespace}", "-o", "json"
    )
    return str(json.loads(found)["spec"].get("holderIdentity") or "")


def test_a_refused_target_stays_with_its_branch_so_its_events_wait_and_its_status_has_one_writer(
    control_plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    """A target refused while its provider exists (here its branch is no longer allowed) still
    belongs to its branch's bucket: the holder keeps watching what its rules select (another
    replica journals none of it) and writes its status (not the leader); allowed again, it reads
    on from its cursor, so each change made meanwhile is a commit of its own, none coalesced."""
    names = REPLICAS[:2]
    branches, daemons, _ = sharded_group(control_plane, tmp_path, namespace, remote, names)
    of_branch = dict(zip(branches, TYPES, strict=True))
    with stopped_at_end(daemons):
        manifests = typed_setup(namespace, remote, branches)
        apply(control_plane, *manifests)
        start_together(list(daemons.values()))
        wait_until(lambda: balanced(list(daemons.values())), 60, lambda: describe(daemons))
        wait_until(lambda: leader(control_plane, namespace) in daemons, 60)
        chief = leader(control_plane, namespace)
        holder_name = next(name for name in daemons if name != chief)
        holder, other = daemons[holder_name], daemons[chief]
        branch = next(b for b in branches if bucket(remote, b) in held(holder))
        resource = of_branch[branch]
        target = f"{namespace}/{branch}"
        wait_until(lambda: f"v1/{resource}@{namespace}" in journaled(holder).streams, 60)
        wait_until(lambda: first_syncs(holder, target) == 1, 60, holder.log_tail)

        allowed = [b for b in branches if b != branch]
        provider = git_provider(
            namespace, "mirror", remote.url, secret=remote.secret, branches=allowed
        )
        apply(control_plane, provider)

        def refused() -> bool:
            found = conditions(control_plane, "gittarget", namespace, branch).get("Validated", {})
            return found.get("reason") == "BranchNotAllowed"

        wait_until(refused, 60, lambda: describe(daemons))
        # Written by the holder, who synced it: the leader never ran it, and its status would
        # say the first sync is pending.
        found = conditions(control_plane, "gittarget", namespace, branch)
        assert found["SnapshotSynced"]["status"] == "True", found
        assert found["Validated"]["reason"] == "BranchNotAllowed", found
        for value in ("1", "2", "3"):
            apply(control_plane, typed_object(resource, namespace, "meanwhile", value))
        # Journaled by the holder only, though no running target needs it there.
        wait_until(lambda: resource in journaled(holder, "meanwhile").events, 30, holder.log_tail)
        assert journaled(other, "meanwhile").events == set()
        assert f"v1/{resource}@{namespace}" not in journaled(other).streams

        apply(control_plane, manifests[0])  # every branch allowed again
        wait_until(
            lambda: typed_values(remote, branch, resource, namespace).get("meanwhile") == "3",
            60,
            lambda: describe(daemons),
        )
        history = subjects(remote.path, branch)
        path = f"v1/{resource}/{namespace}/meanwhile"
        assert history.count(f"[CREATE] {path}") == 1, history
        assert history.count(f"[UPDATE] {path}") == 2, history
        assert not any(s.startswith("reconcile") for s in history[1:]), history


@contextlib.contextmanager
def journal_locked(daemon: Reverserd) -> Iterator[None]:
    """Another process holds the write lock of the replica's journal.db: every write of the
    replica waits for its busy timeout and fails, as on a disk that refuses writes."""
    connection = sqlite3.connect(daemon.state_dir / "journal.db", timeout=30)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        connection.rollback()
        connection.close()


def logged(daemon: Reverserd, fragment: str, stream: str) -> bool:
    """Whether the daemon logged a message holding ``fragment`` (as reverserd's code has it)
    about ``stream``."""
    fragment = logged_by_reverserd(fragment)
    messages = [str(line.get("message", "")) for line in daemon.log_lines()]
    return any(fragment in message and stream in message for message in messages)


def test_a_stream_whose_release_the_journal_refused_is_released_later_and_nothing_is_lost(
    control_plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    """A sharded replica stops a stream no branch needs any more while its journal refuses
    writes (its write lock held by another process): the release fails, the stream's row and
    objects stay whole, and it is released once the journal writes again. Watched again while a
    release is being retried, the stream resumes from what the journal kept. Other streams lose
    nothing meanwhile."""
    daemons = replicas(control_plane, tmp_path, f"shards-{namespace}", REPLICAS[:1])
    daemon = daemons[REPLICAS[0]]
    branches = spread(remote)
    of_type = dict(zip(TYPES, branches, strict=True))
    cluster: dict[str, dict[str, str]] = {resource: {} for resource in TYPES}
    manifests = typed_setup(namespace, remote, branches)
    rules = {r: m for r, m in zip(TYPES, manifests[2::2], strict=True)}
    dropped, kept = "podtemplates", "limitranges"
    dropped_stream, kept_stream = f"v1/{dropped}@{namespace}", f"v1/{kept}@{namespace}"

    def write(resource: str, name: str, value: str) -> None:
        apply(control_plane, typed_object(resource, namespace, name, value))
        cluster[resource][name] = value

    def mirrored() -> bool:
        return all(typed_values(remote, of_type[r], r, namespace) == cluster[r] for r in TYPES)

    def unwatch(resource: str) -> None:
        name = rules[resource]["metadata"]["name"]  # type: ignore[index]
        control_plane.kubectl("delete", "watchrule", "-n", namespace, name)

    with stopped_at_end(daemons):
        apply(control_plane, *manifests)
        for resource in TYPES:
            write(resource, "stays", "s")
        daemon.start()
        wait_until(mirrored, 90, daemon.log_tail)

        # No rule needs the dropped type any more while the journal refuses writes.
        with journal_locked(daemon):
            unwatch(dropped)
            wait_until(
                lambda: logged(daemon, "could not release", dropped_stream), 60, daemon.log_tail
            )
            write("configmaps", "during", "d")
            assert dropped_stream in journaled(daemon).streams  # kept whole, not half forgotten
        # Released once the journal writes again; the other streams caught up meanwhile.
        wait_until(lambda: dropped_stream not in journaled(daemon).streams, 60, daemon.log_tail)
        wait_until(mirrored, 60, daemon.log_tail)

        # Watched again while its release is being retried: it resumes from what was kept.
        with journal_locked(daemon):
            unwatch(kept)
            wait_until(
                lambda: logged(daemon, "could not release", kept_stream), 60, daemon.log_tail
            )
            apply(control_plane, rules[kept])
            wait_until(
                lambda: logged(daemon, "it is watched again", kept_stream), 60, daemon.log_tail
            )
            write(kept, "stays", "changed")
        assert kept_stream in journaled(daemon).streams
        apply(control_plane, rules[dropped])
        write(dropped, "later", "l")
        wait_until(mirrored, 90, daemon.log_tail)
        no_change_committed_twice(remote, branches)


def handed_over(daemon: Reverserd) -> set[int]:
    """The buckets ``daemon`` logged releasing after a hand-over."""
    message = logged_by_reverserd("handed over bucket")
    return {int(line["bucket"]) for line in daemon.log_lines() if line.get("message") == message}


def test_a_hand_over_releases_the_bucket_though_the_journal_refuses_to_drop_its_state(
    control_plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    """Dropping a handed-over bucket's state is the old holder's own business: with its journal
    refusing writes, the bucket is still released as soon as its writers stopped, so the new
    holder takes it at once instead of a lease duration later, and nothing is lost."""
    names = REPLICAS[:2]
    branches, daemons, _ = sharded_group(control_plane, tmp_path, namespace, remote, names)
    first, second = daemons.values()
    with stopped_at_end(daemons):
        apply(control_plane, *setup(namespace, remote, "1s", branches))
        first.start()
        wait_until(lambda: held(first) == set(range(BUCKETS)), 60, first.log_tail)
        with journal_locked(first):
            second.start()
            # Released (while the drop that follows waits for the journal and fails).
            wait_until(lambda: len(handed_over(first)) == BUCKETS // 2, 60, first.log_tail)
            wait_until(lambda: held(second) == handed_over(first), 30, lambda: describe(daemons))
        wait_until(lambda: balanced([first, second]), 60, lambda: describe(daemons))
        apply(control_plane, configmap(namespace, "after", {"key": "a"}))
        wanted = {"after.yaml": "a"}
        wait_until(
            lambda: all(values(remote, branch, namespace) == wanted for branch in branches),
            60,
            lambda: describe(daemons),
        )
        no_change_committed_twice(remote, branches)
