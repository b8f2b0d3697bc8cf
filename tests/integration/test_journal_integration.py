"""Journal first: every watch event is in the SQLite journal before anything else happens.

Each test runs a real ``reverserd run`` process against the test bed's kube-apiserver and Git
server, and compares the rows of ``<state-dir>/journal.db`` (read with sqlite3, read-only, while
the daemon runs) with the cluster, the custom resources' status and the pushed branch.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from functools import partial
from typing import Any, NamedTuple

import pytest
import yaml

from testbed.controlplane import ControlPlane
from testbed.gitservers import branch_tip, read_tree_at
from testbed.gitservers import log as git_log
from testbed.harness import (
    Reverserd,
    apply,
    conditions,
    create_many,
    cursor_seq,
    get_object,
    history,
    kubectl_json,
    logged_by_reverserd,
    merge_patch,
    patch_many,
    query_journal,
    subjects,
    tree,
    wait_condition,
    wait_for_subjects,
    wait_synced,
    wait_target_refused,
    wait_until,
)
from testbed.manifests import (
    configbutler_resource,
    configmap,
    crd,
    custom_object,
    git_target,
    mirror_setup,
    podtemplate,
    watch_rule,
)
from tests.conftest import Cleanup, Remote

# A GitProvider URL for tests that only look at the journal: the target never gets that far.
UNUSED_URL = "http://127.0.0.1:9/unused.git"


# -- the journal, read as an operator would with sqlite3 -------------------------------------


class Event(NamedTuple):
    seq: int
    kind: str
    namespace: str
    name: str
    uid: str | None
    resource_version: str | None


class Stream(NamedTuple):
    resource_version: str | None
    seed_state: str
    relists: int


def stream_events(daemon: Reverserd, stream: str) -> list[Event]:
    rows = query_journal(
        daemon,
        "SELECT seq, kind, namespace, name, uid, resource_version FROM events"
        " WHERE stream = ? ORDER BY seq",
        (stream,),
    )
    return [Event(*row) for row in rows]


def object_events(daemon: Reverserd, group: str, resource: str, namespace: str) -> list[Event]:
    """Every event about objects of one type in one namespace, in journal order."""
    rows = query_journal(
        daemon,
        "SELECT seq, kind, namespace, name, uid, resource_version FROM events"
        " WHERE api_group = ? AND resource = ? AND namespace = ? ORDER BY seq",
        (group, resource, namespace),
    )
    return [Event(*row) for row in rows]


def journal_objects(daemon: Reverserd, group: str, resource: str, namespace: str) -> dict[str, str]:
    """The journal's ``objects`` table for one type and namespace: name -> resourceVersion."""
    rows = query_journal(
        daemon,
        "SELECT name, resource_version FROM objects"
        " WHERE api_group = ? AND resource = ? AND namespace = ?",
        (group, resource, namespace),
    )
    return {str(name): str(version) for name, version in rows}


def stream_row(daemon: Reverserd, stream: str) -> Stream | None:
    rows = query_journal(
        daemon,
        "SELECT resource_version, seed_state, relists FROM streams WHERE stream = ?",
        (stream,),
    )
    return Stream(*rows[0]) if rows else None


def covered(daemon: Reverserd, target: str) -> dict[str, int]:
    """What the target's pushed snapshots cover (selection -> seq); empty before the first."""
    rows = query_journal(daemon, "SELECT covered FROM cursors WHERE target = ?", (target,))
    found: dict[str, int] = json.loads(rows[0][0]) if rows else {}
    return found


def wait_seeded(daemon: Reverserd, stream: str) -> Stream:
    return wait_until(
        lambda: (
            (row := stream_row(daemon, stream)) is not None and row.seed_state == "complete" and row
        ),
        30,
        lambda: f"stream {stream}: {stream_row(daemon, stream)}; log: {daemon.log_tail()}",
    )


def wait_for_event(
    daemon: Reverserd, stream: str, kind: str, name: str, timeout: float = 30
) -> Event:
    def found() -> Event | None:
        return next(
            (e for e in stream_events(daemon, stream) if e.kind == kind and e.name == name), None
        )

    return wait_until(
        found,
        timeout,
        lambda: (
            f"no {kind} of {name} in {stream_events(daemon, stream)[-20:]}; "
            f"log: {daemon.log_tail()}"
        ),
    )


def markers(events: list[Event], kind: str) -> list[int]:
    return [event.seq for event in events if event.kind == kind]


def changes_of(events: list[Event], name: str) -> list[tuple[str, str | None]]:
    return [(event.kind, event.resource_version) for event in events if event.name == name]


def watch_status(daemon: Reverserd, stream: str) -> dict[str, Any] | None:
    watches: list[dict[str, Any]] = daemon.status()["watches"]
    return next((item for item in watches if item["stream"] == stream), None)


def dropping_lines(daemon: Reverserd) -> list[dict[str, Any]]:
    words = ("drop", "discard")
    return [
        line
        for line in daemon.log_lines()
        if any(word in json.dumps(line).lower() for word in words)
    ]


# -- the cluster ------------------------------------------------------------------------------


def create(plane: ControlPlane, manifest: dict[str, Any]) -> dict[str, Any]:
    return kubectl_json(plane, "create", "-f", "-", stdin=json.dumps(manifest))


def version(body: dict[str, Any]) -> str:
    return str(body["metadata"]["resourceVersion"])


def cluster_objects(plane: ControlPlane, resource: str, namespace: str) -> dict[str, str]:
    """Live objects of one type and namespace: name -> resourceVersion."""
    items = kubectl_json(plane, "get", resource, "-n", namespace)["items"]
    return {item["metadata"]["name"]: version(item) for item in items}


def exists(plane: ControlPlane, resource: str, namespace: str, name: str) -> bool:
    out = plane.kubectl(
        "get", resource, name, "-n", namespace, "--ignore-not-found", "-o", "name"
    ).strip()
    return bool(out)


def widget(group: str, namespace: str, name: str, size: int) -> dict[str, Any]:
    return custom_object(group, "Widget", namespace, name, {"size": size})


def install_widgets(cleanup: Cleanup) -> str:
    """A ``widgets`` type of a group of its own, deleted at teardown; returns the group."""
    group = f"jt{uuid.uuid4().hex[:8]}.example.com"
    cleanup.install_crd(crd(group))
    return group


def create_widgets(plane: ControlPlane, group: str, namespace: str) -> dict[str, str]:
    """Widgets alpha, beta and gamma of sizes 0, 1 and 2: name -> resourceVersion."""
    created = create_many(
        plane,
        [
            widget(group, namespace, name, size)
            for size, name in enumerate(("alpha", "beta", "gamma"))
        ],
        "widgets",
    )
    return {item["metadata"]["name"]: version(item) for item in created}


def set_served(plane: ControlPlane, group: str, served: bool) -> None:
    patch = [{"op": "replace", "path": "/spec/versions/0/served", "value": served}]
    plane.kubectl("patch", "crd", f"widgets.{group}", "--type=json", "-p", json.dumps(patch))


# -- the pushed branch ------------------------------------------------------------------------


def target_subjects(remote: Remote, target: str) -> list[str]:
    """Subjects of the commits made for one target (their body names it), oldest first."""
    return [entry.subject for entry in history(remote.path) if f"target: {target}" in entry.body]


def cm_path(namespace: str, name: str, folder: str = "live-cluster") -> str:
    return f"{folder}/v1/configmaps/{namespace}/{name}.yaml"


# -- isolation --------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("cleanup")


# -- 1. start-up: events wait in the journal for a target that is not ready -------------------


def test_objects_wait_in_journal_until_late_git_provider_then_one_reconcile_commit(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    count = 2000
    manifests = [configmap(namespace, f"cm-{index:04d}") for index in range(count)]
    cluster = {
        item["metadata"]["name"]: version(item)
        for item in create_many(control_plane, manifests, "configmaps")
    }
    assert len(cluster) == count
    provider, target, rule = mirror_setup(namespace, remote.url, secret=remote.secret)
    apply(control_plane, target, rule)
    daemon.start()
    stream = f"v1/configmaps@{namespace}"
    key = f"{namespace}/mirror"

    # Every object is journaled although its target cannot write anywhere yet.
    wait_until(
        lambda: journal_objects(daemon, "", "configmaps", namespace) == cluster,
        60,
        lambda: (
            f"{len(journal_objects(daemon, '', 'configmaps', namespace))} of {count}"
            f" objects journaled; log: {daemon.log_tail()}"
        ),
    )
    events = stream_events(daemon, stream)
    assert [e.kind for e in events if e.kind.startswith("SEED")] == ["SEED_BEGIN", "SEED_END"]
    assert Counter(e.kind for e in events) == {"SEED_BEGIN": 1, "CREATE": count, "SEED_END": 1}
    assert {(e.name, e.resource_version) for e in events if e.kind == "CREATE"} == set(
        cluster.items()
    )

    # The target and its rule say why nothing is written.
    validated = wait_target_refused(control_plane, namespace, "mirror", "GitProviderNotFound")
    assert "'mirror'" in validated["message"], validated
    rule_ready = wait_condition(
        control_plane, "watchrules", namespace, "mirror", "Ready", "False", "GitProviderNotFound"
    )
    assert "'mirror'" in rule_ready["message"], rule_ready

    # Changes while the target waits are journaled too.
    late = patch_many(control_plane, manifests[:100], "configmaps", {"data": {"late": "yes"}})
    updates = {item["metadata"]["name"]: version(item) for item in late}
    cluster.update(updates)
    wait_until(
        lambda: journal_objects(daemon, "", "configmaps", namespace) == cluster,
        30,
        lambda: f"updates not journaled; log: {daemon.log_tail()}",
    )
    events = stream_events(daemon, stream)
    assert {(e.name, e.resource_version) for e in events if e.kind == "UPDATE"} == set(
        updates.items()
    )

    assert cursor_seq(daemon, key) is None
    assert branch_tip(remote.path, "main") is None
    assert conditions(control_plane, "gittargets", namespace, "mirror")["Validated"]["reason"] == (
        "GitProviderNotFound"
    )
    last_seq = stream_events(daemon, stream)[-1].seq

    apply(control_plane, provider)
    wait_condition(
        control_plane, "gittargets", namespace, "mirror", "SnapshotSynced", "True", timeout=120
    )
    assert subjects(remote.path) == [f"reconcile: sync {count} resources"]
    seq = cursor_seq(daemon, key)
    assert seq is not None and seq >= last_seq, (seq, last_seq)

    files = tree(remote.path)
    expected_paths = {cm_path(namespace, name) for name in cluster} | {"live-cluster/README.md"}
    assert set(files) == expected_paths
    for name in cluster:
        data = yaml.safe_load(files[cm_path(namespace, name)])["data"]
        expected = {"key": name, "late": "yes"} if name in updates else {"key": name}
        assert data == expected, (name, data)
    body = git_log(remote.path, "main")[0].body
    assert f"created: {count}" in body and "deleted: 0" in body, body

    wait_condition(control_plane, "gittargets", namespace, "mirror", "Ready", "True")
    wait_condition(control_plane, "watchrules", namespace, "mirror", "Ready", "True")
    assert journal_objects(daemon, "", "configmaps", namespace) == cluster
    assert dropping_lines(daemon) == []


def test_changes_during_the_first_seed_and_snapshot_all_reach_git(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    count = 2000
    names = [f"cm-{index:04d}" for index in range(count)]
    manifests = [configmap(namespace, name) for name in names]
    create_many(control_plane, manifests, "configmaps")
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    # Each object changes once, one small batch after another, from before the daemon starts
    # until its first snapshot is pushed: the changes run through the seed, the snapshot's
    # planning (seconds for this many objects) and its push.
    synced = threading.Event()
    changed: list[str] = []
    failures: list[BaseException] = []

    def change_each_once() -> None:
        try:
            for start in range(0, count, 10):
                if synced.is_set():
                    return
                batch = manifests[start : start + 10]
                patch_many(control_plane, batch, "configmaps", {"data": {"changed": "yes"}})
                changed.extend(m["metadata"]["name"] for m in batch)
                time.sleep(0.05)
        except BaseException as error:  # reported by the test
            failures.append(error)

    changer = threading.Thread(target=change_each_once, name="changer")
    changer.start()
    try:
        daemon.start()
        wait_synced(control_plane, namespace, daemon=daemon)
    finally:
        synced.set()
        changer.join(60)
    assert failures == []

    def unchanged_in_git() -> list[str]:
        files = tree(remote.path)
        return [
            name
            for name in changed
            if yaml.safe_load(files.get(cm_path(namespace, name), b"{}")).get("data")
            != {"key": name, "changed": "yes"}
        ]

    wait_until(
        lambda: not unchanged_in_git(),
        describe=lambda: f"changes missing in Git: {unchanged_in_git()[:20]}; {daemon.log_tail()}",
    )
    entries = history(remote.path)
    assert entries[0].subject == f"reconcile: sync {count} resources"
    files = tree(remote.path)
    assert {p for p in files if p.endswith(".yaml")} == {cm_path(namespace, n) for n in names}
    # The changes straddled the snapshot: some are in the reconcile commit, some came after.
    in_snapshot = read_tree_at(remote.path, entries[0].sha)
    assert any(b"changed" in in_snapshot[cm_path(namespace, name)] for name in changed), (
        "no change reached the snapshot"
    )
    assert any(entry.subject.startswith("[UPDATE]") for entry in entries[1:]), (
        "no change came after the snapshot"
    )


# -- 2. event kinds ---------------------------------------------------------------------------


def test_event_kinds_follow_create_update_delete_and_deletion_timestamp(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    stream = f"v1/configmaps@{namespace}"
    wait_seeded(daemon, stream)

    plain = create(control_plane, configmap(namespace, "plain", {"v": "1"}))
    plain_updated = merge_patch(
        control_plane, "configmap", namespace, "plain", {"data": {"v": "2"}}
    )
    control_plane.kubectl("delete", "configmap", "plain", "-n", namespace)
    plain_deleted = wait_for_event(daemon, stream, "DELETE", "plain")

    held_manifest = configmap(namespace, "held", {"v": "1"})
    held_manifest["metadata"]["finalizers"] = ["example.com/hold"]
    held = create(control_plane, held_manifest)
    held_updated = merge_patch(control_plane, "configmap", namespace, "held", {"data": {"v": "2"}})
    control_plane.kubectl("delete", "configmap", "held", "-n", namespace, "--wait=false")
    terminating = kubectl_json(control_plane, "get", "configmap", "held", "-n", namespace)
    assert terminating["metadata"].get("deletionTimestamp")

    # The deletionTimestamp is the DELETE, while the object still exists.
    held_deleted = wait_for_event(daemon, stream, "DELETE", "held")
    assert held_deleted.resource_version == version(terminating)
    assert exists(control_plane, "configmap", namespace, "held")
    assert "held" not in journal_objects(daemon, "", "configmaps", namespace)
    wait_for_subjects(remote.path, daemon, f"[DELETE] v1/configmaps/{namespace}/held")
    assert cm_path(namespace, "held") not in tree(remote.path)
    assert exists(control_plane, "configmap", namespace, "held")

    # Its final removal is no further event.
    merge_patch(control_plane, "configmap", namespace, "held", {"metadata": {"finalizers": None}})
    wait_until(lambda: not exists(control_plane, "configmap", namespace, "held"), 30)
    after = create(control_plane, configmap(namespace, "after"))
    wait_for_event(daemon, stream, "CREATE", "after")
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{namespace}/after")

    events = stream_events(daemon, stream)
    changes = [(e.kind, e.name) for e in events if not e.kind.startswith("SEED")]
    assert changes == [
        ("CREATE", "plain"),
        ("UPDATE", "plain"),
        ("DELETE", "plain"),
        ("CREATE", "held"),
        ("UPDATE", "held"),
        ("DELETE", "held"),
        ("CREATE", "after"),
    ]
    assert changes_of(events, "plain")[:2] == [
        ("CREATE", version(plain)),
        ("UPDATE", version(plain_updated)),
    ]
    assert int(plain_deleted.resource_version or 0) > int(version(plain_updated))
    assert changes_of(events, "held") == [
        ("CREATE", version(held)),
        ("UPDATE", version(held_updated)),
        ("DELETE", version(terminating)),
    ]
    assert {e.uid for e in events if e.name == "plain"} == {plain["metadata"]["uid"]}
    assert {e.uid for e in events if e.name == "held"} == {held["metadata"]["uid"]}
    assert changes_of(events, "after") == [("CREATE", version(after))]
    assert journal_objects(daemon, "", "configmaps", namespace) == {"after": version(after)}

    prefix = f"v1/configmaps/{namespace}"
    assert subjects(remote.path) == [
        f"[CREATE] {prefix}/plain",
        f"[UPDATE] {prefix}/plain",
        f"[DELETE] {prefix}/plain",
        f"[CREATE] {prefix}/held",
        f"[UPDATE] {prefix}/held",
        f"[DELETE] {prefix}/held",
        f"[CREATE] {prefix}/after",
    ]


# -- 3. SIGKILL during a burst ----------------------------------------------------------------


class Change(NamedTuple):
    round: int
    kind: str
    name: str
    resource_version: str


class Burst:
    """500 ConfigMap changes in rounds of 25 (creates, and updates of the previous round)."""

    ROUNDS = 20
    # The last rounds wait until the test has done all its kills, so every kill is mid-burst
    # however slowly the daemon restarts on a loaded machine.
    HOLD_BEFORE_ROUND = 17

    def __init__(self, plane: ControlPlane, namespace: str, pause_s: float) -> None:
        self.plane = plane
        self.namespace = namespace
        self.pause_s = pause_s
        self.release = threading.Event()
        self.rounds_done = 0
        self.changes: list[Change] = []
        self.error: BaseException | None = None

    def reached(self, rounds: int) -> bool:
        return self.rounds_done >= rounds or self.error is not None

    def run(self) -> None:
        try:
            previous: list[str] = []
            for number in range(self.ROUNDS):
                if number == self.HOLD_BEFORE_ROUND:
                    self.release.wait(120)
                names = [f"r{number:02d}-{i:02d}" for i in range(25 if number == 0 else 15)]
                manifests = [
                    configmap(self.namespace, name, {"round": str(number)}) for name in names
                ]
                for body in create_many(self.plane, manifests, "configmaps"):
                    self.changes.append(
                        Change(number, "CREATE", body["metadata"]["name"], version(body))
                    )
                if previous:
                    targets = [configmap(self.namespace, name) for name in previous[:10]]
                    patch = {"data": {"updated": str(number)}}
                    for body in patch_many(self.plane, targets, "configmaps", patch):
                        self.changes.append(
                            Change(number, "UPDATE", body["metadata"]["name"], version(body))
                        )
                previous = names
                self.rounds_done = number + 1
                time.sleep(self.pause_s)
        except BaseException as error:  # reported by the test
            self.error = error


def test_sigkill_during_burst_loses_nothing_and_resumes_from_stored_resource_version(
    control_plane: ControlPlane, namespace: str, daemon: Reverserd
) -> None:
    _, target, rule = mirror_setup(namespace, UNUSED_URL)
    apply(control_plane, target, rule)
    daemon.start()
    stream = f"v1/configmaps@{namespace}"
    wait_seeded(daemon, stream)

    burst = Burst(control_plane, namespace, pause_s=0.5)
    runner = threading.Thread(target=burst.run, name="burst")
    runner.start()
    kills: list[int] = []
    try:
        # Kill points: mid-stream, mid-stream, right after a restart answered, mid-stream.
        for after_round in (2, 6, 0, 13):
            if after_round:
                wait_until(partial(burst.reached, after_round), 60)
            else:
                time.sleep(0.3)
            kills.append(burst.rounds_done)
            daemon.kill()
            time.sleep(0.7)  # the burst goes on while nothing watches
            daemon.start()
    finally:
        burst.release.set()
        runner.join(120)
    assert burst.error is None, burst.error
    assert len(burst.changes) == 500
    assert len(kills) == 4 and all(done < Burst.ROUNDS for done in kills), kills

    cluster = cluster_objects(control_plane, "configmaps", namespace)
    assert len(cluster) == 310

    def difference() -> str:
        journal = journal_objects(daemon, "", "configmaps", namespace)
        return f"journal and cluster differ in {set(cluster.items()) ^ set(journal.items())}"

    wait_until(
        lambda: journal_objects(daemon, "", "configmaps", namespace) == cluster, 60, difference
    )

    events = stream_events(daemon, stream)
    journaled = Counter(
        (e.kind, e.name, e.resource_version) for e in events if not e.kind.startswith("SEED")
    )
    after_crash = [c for c in burst.changes if c.round >= kills[0]]
    missing = [c for c in after_crash if (c.kind, c.name, c.resource_version) not in journaled]
    assert missing == [], f"{len(missing)} changes after the first kill not journaled"
    expected: Counter[tuple[str, str, str | None]] = Counter(
        (c.kind, c.name, c.resource_version) for c in burst.changes
    )
    assert journaled == expected, (
        f"missing {expected - journaled}, extra or repeated {journaled - expected}"
    )

    # Every restart resumed from the stored resourceVersion: one seed, never a re-list.
    row = stream_row(daemon, stream)
    assert row is not None and row.relists == 0, row
    assert markers(events, "SEED_BEGIN") == [events[0].seq]
    assert len(markers(events, "SEED_END")) == 1
    messages = [str(line.get("message", "")) for line in daemon.log_lines()]
    assert sum(1 for m in messages if m.startswith(f"seeded {stream} ")) == 1
    expired = logged_by_reverserd("expired, re-listing")
    assert not [m for m in messages if expired in m and stream in m]


# -- 4. 410 Gone: re-list, and deletions made meanwhile become DELETE events -------------------


def journal_podtemplates(
    plane: ControlPlane, daemon: Reverserd, namespace: str, names: tuple[str, ...]
) -> tuple[dict[str, dict[str, Any]], str]:
    """Create PodTemplates ``names``, start the daemon journaling them for a target that never
    pushes, and wait for the seed; returns the created objects by name, and the stream."""
    created = create_many(plane, [podtemplate(namespace, name) for name in names], "podtemplates")
    _, target, rule = mirror_setup(namespace, UNUSED_URL, rules=[{"resources": ["podtemplates"]}])
    apply(plane, target, rule)
    daemon.start()
    stream = f"v1/podtemplates@{namespace}"
    wait_seeded(daemon, stream)
    return {item["metadata"]["name"]: item for item in created}, stream


def wait_reseeded(daemon: Reverserd, stream: str, timeout: float) -> Stream:
    """Wait until the stream has been re-listed and its new seed is complete."""
    return wait_until(
        lambda: (
            (r := stream_row(daemon, stream)) is not None
            and r.relists >= 1
            and r.seed_state == "complete"
            and r
        ),
        timeout,
        lambda: f"stream {stream_row(daemon, stream)}; log: {daemon.log_tail()}",
    )


def test_expired_resource_version_after_downtime_relists_and_journals_deletions(
    control_plane: ControlPlane, namespace: str, daemon: Reverserd
) -> None:
    originals, stream = journal_podtemplates(
        control_plane, daemon, namespace, ("keep-a", "keep-b", "doomed")
    )
    assert journal_objects(daemon, "", "podtemplates", namespace) == {
        name: version(body) for name, body in originals.items()
    }
    daemon.stop()

    control_plane.kubectl("delete", "podtemplate", "doomed", "-n", namespace)
    newcomer = create(control_plane, podtemplate(namespace, "newcomer"))
    control_plane.compact_etcd()
    daemon.start()

    row = wait_reseeded(daemon, stream, 60)
    assert row.relists == 1, row
    cluster = cluster_objects(control_plane, "podtemplates", namespace)
    assert set(cluster) == {"keep-a", "keep-b", "newcomer"}
    assert journal_objects(daemon, "", "podtemplates", namespace) == cluster

    events = stream_events(daemon, stream)
    begins, ends = markers(events, "SEED_BEGIN"), markers(events, "SEED_END")
    assert len(begins) == 2 and len(ends) == 2, events
    deletes = [e for e in events if e.kind == "DELETE"]
    assert [e.name for e in deletes] == ["doomed"], deletes
    assert deletes[0].uid == originals["doomed"]["metadata"]["uid"]
    assert begins[1] < deletes[0].seq < ends[1]
    assert changes_of(events, "newcomer") == [("CREATE", version(newcomer))]
    assert begins[1] < next(e.seq for e in events if e.name == "newcomer") < ends[1]
    for name in ("keep-a", "keep-b"):
        assert changes_of(events, name) == [("CREATE", version(originals[name]))], name


def test_expired_watch_while_running_reseeds_without_losing_or_repeating_deletes(
    control_plane: ControlPlane, namespace: str, daemon: Reverserd
) -> None:
    originals, stream = journal_podtemplates(
        control_plane, daemon, namespace, ("keep", "gone-a", "gone-b")
    )

    control_plane.kubectl("delete", "podtemplate", "gone-a", "gone-b", "-n", namespace)
    # An unrelated write, so the stream's resume point is strictly older than the compaction.
    create(control_plane, configmap(namespace, "unrelated"))
    control_plane.compact_etcd()
    control_plane.restart_apiserver()

    row = wait_reseeded(daemon, stream, 90)
    assert row.relists == 1, row
    after = create(control_plane, podtemplate(namespace, "after"))
    wait_for_event(daemon, stream, "CREATE", "after")

    cluster = cluster_objects(control_plane, "podtemplates", namespace)
    assert set(cluster) == {"keep", "after"}
    assert journal_objects(daemon, "", "podtemplates", namespace) == cluster
    events = stream_events(daemon, stream)
    assert len(markers(events, "SEED_BEGIN")) == 2, events
    assert len(markers(events, "SEED_END")) == 2, events
    deletes = sorted((e.name, e.uid) for e in events if e.kind == "DELETE")
    assert deletes == [
        ("gone-a", originals["gone-a"]["metadata"]["uid"]),
        ("gone-b", originals["gone-b"]["metadata"]["uid"]),
    ]
    assert changes_of(events, "keep") == [("CREATE", version(originals["keep"]))]
    assert changes_of(events, "after") == [("CREATE", version(after))]


def test_relist_of_one_namespace_keeps_the_files_of_another(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    rules = [{"resources": ["podtemplates"]}]
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret, rules=rules))
    other = cleanup.new_namespace()
    _, target, rule = mirror_setup(other, UNUSED_URL, rules=rules)
    apply(control_plane, target, rule)
    create_many(
        control_plane, [podtemplate(namespace, n) for n in ("kept-a", "kept-b")], "podtemplates"
    )
    create_many(control_plane, [podtemplate(other, "theirs")], "podtemplates")
    daemon.start()
    mirrored, relisting = f"v1/podtemplates@{namespace}", f"v1/podtemplates@{other}"
    wait_synced(control_plane, namespace, daemon=daemon)
    wait_seeded(daemon, relisting)

    # Only the other namespace's resume point expires: the mirrored stream sees a change
    # after the compaction, so it resumes where the other one must re-list.
    control_plane.compact_etcd()
    create(control_plane, podtemplate(namespace, "fresh"))
    prefix = f"v1/podtemplates/{namespace}"
    wait_for_subjects(remote.path, daemon, f"[CREATE] {prefix}/fresh")
    control_plane.restart_apiserver()
    wait_reseeded(daemon, relisting, 90)
    create(control_plane, podtemplate(namespace, "after"))
    wait_for_subjects(remote.path, daemon, f"[CREATE] {prefix}/after")

    row = stream_row(daemon, mirrored)
    assert row is not None and row.relists == 0, row
    assert [e.kind for e in object_events(daemon, "", "podtemplates", namespace)] == ["CREATE"] * 4
    assert subjects(remote.path) == [
        "reconcile: sync 2 resources",
        f"[CREATE] {prefix}/fresh",
        f"[CREATE] {prefix}/after",
    ]
    files = {p for p in tree(remote.path) if p.endswith(".yaml")}
    assert files == {
        f"live-cluster/{prefix}/{name}.yaml" for name in ("kept-a", "kept-b", "fresh", "after")
    }


# -- 5. a CRD installed after start -----------------------------------------------------------


def test_crd_installed_after_start_is_journaled_without_restart(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    assert daemon.process is not None
    pid = daemon.process.pid
    wait_synced(control_plane, namespace)

    group = install_widgets(cleanup)
    apply(
        control_plane,
        watch_rule(
            namespace, "widgets", "mirror", [{"apiGroups": [group], "resources": ["widgets"]}]
        ),
    )
    wanted = create_widgets(control_plane, group, namespace)
    stream = f"{group}/v1/widgets@{namespace}"
    wait_until(
        lambda: journal_objects(daemon, group, "widgets", namespace) == wanted,
        30,
        lambda: (
            f"widgets journaled: {journal_objects(daemon, group, 'widgets', namespace)};"
            f" log: {daemon.log_tail()}"
        ),
    )
    events = stream_events(daemon, stream)
    assert {(e.name, e.resource_version) for e in events if e.kind == "CREATE"} == set(
        wanted.items()
    )
    assert {e.kind for e in events} <= {"SEED_BEGIN", "SEED_END", "CREATE"}

    (changed,) = patch_many(
        control_plane, [widget(group, namespace, "beta", 0)], "widgets", {"spec": {"size": 42}}
    )
    update = wait_for_event(daemon, stream, "UPDATE", "beta")
    assert update.resource_version == version(changed)

    def beta_in_git() -> dict[str, bytes] | None:
        files = tree(remote.path)
        beta = files.get(f"live-cluster/{group}/v1/widgets/{namespace}/beta.yaml")
        return files if beta is not None and yaml.safe_load(beta)["spec"] == {"size": 42} else None

    files = wait_until(beta_in_git, 60, lambda: f"{sorted(tree(remote.path))}; {daemon.log_tail()}")
    for name, size in (("alpha", 0), ("gamma", 2)):
        content = yaml.safe_load(files[f"live-cluster/{group}/v1/widgets/{namespace}/{name}.yaml"])
        assert content["spec"] == {"size": size}
        assert content["kind"] == "Widget" and content["apiVersion"] == f"{group}/v1"
    row = stream_row(daemon, stream)
    assert row is not None and row.seed_state == "complete" and row.relists == 0, row
    wait_condition(control_plane, "watchrules", namespace, "widgets", "Ready", "True")

    # All of it without a restart.
    assert daemon.process.pid == pid and daemon.process.poll() is None
    starts = [
        line for line in daemon.log_lines() if str(line.get("message", "")).endswith(" started")
    ]
    assert len(starts) == 1, starts


# -- 6. filtering -----------------------------------------------------------------------------


def test_create_only_rule_journals_everything_but_keeps_file_as_created(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    rules = [{"operations": ["CREATE"], "resources": ["configmaps"]}]
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret, rules=rules))
    daemon.start()
    stream = f"v1/configmaps@{namespace}"
    wait_synced(control_plane, namespace)

    created = create(control_plane, configmap(namespace, "app", {"color": "blue"}))
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{namespace}/app")
    as_created = tree(remote.path)[cm_path(namespace, "app")]
    updated = merge_patch(
        control_plane, "configmap", namespace, "app", {"data": {"color": "green"}}
    )
    control_plane.kubectl("delete", "configmap", "app", "-n", namespace)
    deleted = wait_for_event(daemon, stream, "DELETE", "app")

    # The journal holds every operation; the target has read past all of them.
    events = stream_events(daemon, stream)
    assert changes_of(events, "app") == [
        ("CREATE", version(created)),
        ("UPDATE", version(updated)),
        ("DELETE", deleted.resource_version),
    ]
    wait_until(
        lambda: (cursor_seq(daemon, f"{namespace}/mirror") or 0) >= deleted.seq,
        30,
        lambda: f"cursor {cursor_seq(daemon, f'{namespace}/mirror')} < {deleted.seq}",
    )
    assert subjects(remote.path) == [f"[CREATE] v1/configmaps/{namespace}/app"]
    assert tree(remote.path)[cm_path(namespace, "app")] == as_created
    assert yaml.safe_load(as_created)["data"] == {"color": "blue"}


def test_watchrule_never_takes_objects_from_another_namespace(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    other = cleanup.new_namespace()
    create_many(
        control_plane,
        [configmap(namespace, "shared"), configmap(other, "shared"), configmap(other, "early")],
        "configmaps",
    )
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    stream = f"v1/configmaps@{namespace}"
    wait_synced(control_plane, namespace)

    create(control_plane, configmap(other, "theirs"))
    patch_many(control_plane, [configmap(other, "shared")], "configmaps", {"data": {"x": "y"}})
    create(control_plane, configmap(namespace, "mine"))
    wait_for_event(daemon, stream, "CREATE", "mine")
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{namespace}/mine")

    assert object_events(daemon, "", "configmaps", other) == []
    assert journal_objects(daemon, "", "configmaps", other) == {}
    assert set(journal_objects(daemon, "", "configmaps", namespace)) == {"shared", "mine"}
    scopes = query_journal(daemon, "SELECT namespace FROM streams WHERE resource = 'configmaps'")
    assert ("*",) not in scopes and (other,) not in scopes, scopes
    assert (namespace,) in scopes
    paths = set(tree(remote.path))
    assert paths == {
        "live-cluster/README.md",
        cm_path(namespace, "shared"),
        cm_path(namespace, "mine"),
    }
    assert all(f"/{other}/" not in line for line in subjects(remote.path))


def test_deleting_watchrule_stops_mirroring_and_keeps_files(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    # A second rule of the same target, whose later change proves the first one's changes
    # never come.
    accounts = [{"resources": ["serviceaccounts"]}]
    apply(control_plane, watch_rule(namespace, "accounts", "mirror", accounts))
    daemon.start()
    stream = f"v1/configmaps@{namespace}"
    wait_synced(control_plane, namespace)
    create_many(
        control_plane,
        [configmap(namespace, "kept", {"v": "1"}), configmap(namespace, "doomed")],
        "configmaps",
    )
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{namespace}/doomed")
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{namespace}/kept")
    wait_until(
        lambda: cursor_seq(daemon, f"{namespace}/mirror") == stream_events(daemon, stream)[-1].seq
    )
    before_subjects, before_tree = subjects(remote.path), tree(remote.path)
    journal_before = stream_events(daemon, stream)

    control_plane.kubectl("delete", "watchrule.configbutler.ai", "mirror", "-n", namespace)
    wait_until(
        lambda: (w := watch_status(daemon, stream)) is not None and w["active"] is False,
        30,
        lambda: f"{watch_status(daemon, stream)}; log: {daemon.log_tail()}",
    )
    merge_patch(control_plane, "configmap", namespace, "kept", {"data": {"v": "2"}})
    control_plane.kubectl("delete", "configmap", "doomed", "-n", namespace)
    create(control_plane, configmap(namespace, "unwatched"))
    control_plane.kubectl("create", "serviceaccount", "later", "-n", namespace)
    later = f"[CREATE] v1/serviceaccounts/{namespace}/later"
    wait_for_subjects(remote.path, daemon, later)

    assert stream_events(daemon, stream) == journal_before
    assert subjects(remote.path) == [*before_subjects, later]
    files = tree(remote.path)
    assert files.pop(f"live-cluster/v1/serviceaccounts/{namespace}/later.yaml")
    assert files == before_tree
    assert cm_path(namespace, "kept") in before_tree and cm_path(namespace, "doomed") in before_tree
    assert yaml.safe_load(before_tree[cm_path(namespace, "kept")])["data"] == {"v": "1"}
    ready = wait_condition(control_plane, "gittargets", namespace, "mirror", "Ready", "True")
    assert ready


def test_changing_one_targets_rules_leaves_other_targets_commits_alone(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    existing = 300
    create_many(
        control_plane,
        [configmap(namespace, f"pre-{index:03d}") for index in range(existing)],
        "configmaps",
    )
    provider, _, _ = mirror_setup(namespace, remote.url, secret=remote.secret)
    everything = [{"resources": ["configmaps"]}]
    apply(
        control_plane,
        provider,
        git_target(namespace, "one", "mirror", "one"),
        git_target(namespace, "two", "mirror", "two"),
        watch_rule(namespace, "one", "one", everything),
        watch_rule(namespace, "two", "two", everything),
    )
    daemon.start()
    # Both initial snapshots are pushed once each cursor records what its snapshot covers.
    for name in ("one", "two"):
        wait_until(
            partial(covered, daemon, f"{namespace}/{name}"),
            60,
            lambda: (
                f"cursors {query_journal(daemon, 'SELECT * FROM cursors')};"
                f" log: {daemon.log_tail()}"
            ),
        )
    reconcile = f"reconcile: sync {existing} resources"
    prefix = f"v1/configmaps/{namespace}/x"
    create(control_plane, configmap(namespace, "x", {"v": "1"}))
    wait_until(
        lambda: (
            target_subjects(remote, f"{namespace}/one") == [reconcile, f"[CREATE] {prefix}"]
            and target_subjects(remote, f"{namespace}/two") == [reconcile, f"[CREATE] {prefix}"]
        ),
        60,
        lambda: f"{subjects(remote.path)}; log: {daemon.log_tail()}",
    )

    apply(
        control_plane,
        watch_rule(
            namespace, "one", "one", [{"operations": ["CREATE"], "resources": ["configmaps"]}]
        ),
    )
    rule = get_object(control_plane, "watchrules.configbutler.ai", namespace, "one")
    generation = rule["metadata"]["generation"]
    wait_until(
        lambda: (
            conditions(control_plane, "watchrules", namespace, "one")
            .get("Ready", {})
            .get("observedGeneration")
            == generation
        ),
        30,
    )
    merge_patch(control_plane, "configmap", namespace, "x", {"data": {"v": "2"}})
    control_plane.kubectl("delete", "configmap", "x", "-n", namespace)
    two = f"{namespace}/two"
    wait_until(
        lambda: (
            target_subjects(remote, two)
            == [reconcile, f"[CREATE] {prefix}", f"[UPDATE] {prefix}", f"[DELETE] {prefix}"]
        ),
        60,
        lambda: f"{target_subjects(remote, two)}; log: {daemon.log_tail()}",
    )
    delete = wait_for_event(daemon, f"v1/configmaps@{namespace}", "DELETE", "x")
    wait_until(lambda: (cursor_seq(daemon, f"{namespace}/one") or 0) >= delete.seq, 30)
    wait_until(lambda: (cursor_seq(daemon, two) or 0) >= delete.seq, 30)

    # Target two is committed exactly as without the change; target one by its new rules.
    assert target_subjects(remote, two) == [
        reconcile,
        f"[CREATE] {prefix}",
        f"[UPDATE] {prefix}",
        f"[DELETE] {prefix}",
    ]
    one = target_subjects(remote, f"{namespace}/one")
    assert one[:2] == [reconcile, f"[CREATE] {prefix}"], one
    assert not [s for s in one if s.startswith(("[UPDATE]", "[DELETE]"))], one
    files = tree(remote.path)
    for index in range(existing):
        for folder in ("one", "two"):
            assert cm_path(namespace, f"pre-{index:03d}", folder) in files
    assert cm_path(namespace, "x", "two") not in files
    assert yaml.safe_load(files[cm_path(namespace, "x", "one")])["data"] == {"v": "1"}
    # And both targets say so.
    for name in ("one", "two"):
        wait_condition(
            control_plane, "gittargets", namespace, name, "SnapshotSynced", "True", timeout=10
        )
        wait_condition(control_plane, "gittargets", namespace, name, "Ready", "True", timeout=10)


def test_malformed_resources_are_rejected_while_valid_target_keeps_working(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_synced(control_plane, namespace)

    malformed: list[tuple[str, dict[str, Any], str]] = [
        (
            "gittargets",
            configbutler_resource(
                "GitTarget",
                "no-branch",
                namespace,
                {"providerRef": {"name": "mirror"}, "path": "elsewhere"},
            ),
            "spec.branch",
        ),
        (
            "gittargets",
            configbutler_resource(
                "GitTarget",
                "wrong-kind",
                namespace,
                {
                    "providerRef": {"name": "mirror", "kind": "Secret"},
                    "branch": "main",
                    "path": "elsewhere",
                },
            ),
            "spec.providerRef.kind",
        ),
        (
            "watchrules",
            configbutler_resource(
                "WatchRule",
                "rules-not-a-list",
                namespace,
                {"targetRef": {"name": "mirror"}, "rules": "configmaps"},
            ),
            "spec.rules",
        ),
        (
            "watchrules",
            configbutler_resource(
                "WatchRule",
                "no-resources",
                namespace,
                {"targetRef": {"name": "mirror"}, "rules": [{"operations": ["CREATE"]}]},
            ),
            "resources",
        ),
        (
            "gitproviders",
            configbutler_resource(
                "GitProvider", "no-url", namespace, {"allowedBranches": ["main"]}
            ),
            "spec.url",
        ),
    ]
    for plural, manifest, field_name in malformed:
        with pytest.raises(RuntimeError, match=field_name.replace(".", r"\.")):
            control_plane.kubectl("create", "-f", "-", stdin=json.dumps(manifest))
        name = manifest["metadata"]["name"]
        assert not exists(control_plane, f"{plural}.configbutler.ai", namespace, name)

    # Valid for the schema but not for reverserd: refused in status, nothing written.
    apply(
        control_plane,
        git_target(namespace, "escape", "mirror", "../outside"),
        watch_rule(namespace, "escape", "escape", [{"resources": ["configmaps"]}]),
    )
    refused = wait_condition(control_plane, "gittargets", namespace, "escape", "Validated", "False")
    assert refused["reason"] == "InvalidPath", refused
    wait_condition(control_plane, "watchrules", namespace, "escape", "Ready", "False")

    created = create(control_plane, configmap(namespace, "still-works", {"v": "1"}))
    wait_for_event(daemon, f"v1/configmaps@{namespace}", "CREATE", "still-works")
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{namespace}/still-works")
    files = tree(remote.path)
    assert set(files) == {"live-cluster/README.md", cm_path(namespace, "still-works")}
    assert yaml.safe_load(files[cm_path(namespace, "still-works")])["data"] == {"v": "1"}
    assert cursor_seq(daemon, f"{namespace}/escape") is None
    assert journal_objects(daemon, "", "configmaps", namespace) == {"still-works": version(created)}
    assert daemon.process is not None and daemon.process.poll() is None
    wait_condition(control_plane, "gittargets", namespace, "mirror", "Ready", "True")


# -- 7. a type missing from discovery for a while ---------------------------------------------


def test_type_missing_from_discovery_for_a_while_deletes_nothing(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    group = install_widgets(cleanup)
    wanted = create_widgets(control_plane, group, namespace)
    rules = [{"apiGroups": [group], "resources": ["widgets"]}]
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret, rules=rules))
    daemon.start()
    stream = f"{group}/v1/widgets@{namespace}"
    wait_synced(control_plane, namespace)
    paths = {f"live-cluster/{group}/v1/widgets/{namespace}/{name}.yaml" for name in wanted}
    files = tree(remote.path)
    assert paths <= set(files)
    assert journal_objects(daemon, group, "widgets", namespace) == wanted
    history = subjects(remote.path)
    assert history == ["reconcile: sync 3 resources"]

    def no_deletes() -> None:
        kinds = [e.kind for e in object_events(daemon, group, "widgets", namespace)]
        assert "DELETE" not in kinds, kinds

    set_served(control_plane, group, False)
    wait_until(
        lambda: (w := watch_status(daemon, stream)) is not None and w["active"] is False,
        30,
        lambda: f"{watch_status(daemon, stream)}; log: {daemon.log_tail()}",
    )
    missing = wait_condition(
        control_plane, "watchrules", namespace, "mirror", "Ready", "False", "ResourceNotServed"
    )
    assert "widgets" in missing["message"], missing
    # A delete made while the type is not served would also show at the end, before the
    # later change.
    no_deletes()
    assert journal_objects(daemon, group, "widgets", namespace) == wanted
    assert subjects(remote.path) == history
    assert tree(remote.path) == files

    set_served(control_plane, group, True)
    wait_until(
        lambda: (
            (w := watch_status(daemon, stream)) is not None
            and w["active"] is True
            and w["seed_state"] == "complete"
        ),
        30,
        lambda: f"{watch_status(daemon, stream)}; log: {daemon.log_tail()}",
    )
    wait_condition(control_plane, "watchrules", namespace, "mirror", "Ready", "True")
    (changed,) = patch_many(
        control_plane, [widget(group, namespace, "beta", 0)], "widgets", {"spec": {"size": 7}}
    )
    update = wait_for_event(daemon, stream, "UPDATE", "beta")
    assert update.resource_version == version(changed)
    wait_for_subjects(remote.path, daemon, f"[UPDATE] {group}/v1/widgets/{namespace}/beta")

    no_deletes()
    wanted["beta"] = version(changed)
    assert journal_objects(daemon, group, "widgets", namespace) == wanted
    assert paths <= set(tree(remote.path))
    assert subjects(remote.path) == [*history, f"[UPDATE] {group}/v1/widgets/{namespace}/beta"]
