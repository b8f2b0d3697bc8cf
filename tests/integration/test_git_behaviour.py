"""How reverserd treats Git, end to end: cold start, restarts, crashes, foreign pushes, outages,
transports and the folder it leaves behind.

Each test runs a real ``reverserd run`` process against the test bed's kube-apiserver and Git
servers and asserts on what actually arrived: the pushed branch's tree and history, the journal
(read-only, as an operator would with ``sqlite3``) and the custom resources' status.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pygit2
import yaml

from testbed.controlplane import ControlPlane
from testbed.gitservers import (
    GitHttpServer,
    GitSshServer,
    branch_tip,
    changed_paths,
    log,
    push_foreign_commit,
    read_tree_at,
)
from testbed.harness import (
    Reverserd,
    apply,
    caught_up,
    conditions,
    create_git_credentials,
    create_many,
    cursor_seq,
    delete_many,
    install_crd,
    kubectl_json,
    later_change,
    patch_many,
    query_journal,
    resource_status,
    subjects,
    target_report,
    tree,
    wait_condition,
    wait_for_subjects,
    wait_last_commit_is_tip,
    wait_synced,
    wait_until,
)
from testbed.manifests import configmap, crd, custom_object, mirror_setup
from tests.conftest import Remote

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# Long enough that a test can act between a local commit and its push.
SLOW_PUSH_INTERVAL = "3s"
# With this many commits allowed to wait, only the interval triggers a push.
NO_EARLY_PUSH = 10_000
# A restart that changes nothing has pushed whatever it would push within a second (push
# interval 1 s); twice that proves the quiet.
QUIET_PERIOD_S = 2.0


# -- reading what arrived ---------------------------------------------------------------------


def under(files: dict[str, bytes], folder: str) -> dict[str, bytes]:
    """The files below ``folder``, keyed by their path relative to it."""
    prefix = folder.rstrip("/") + "/"
    return {path[len(prefix) :]: data for path, data in files.items() if path.startswith(prefix)}


def configmap_files(
    repo: Path, folder: str, namespace: str, branch: str = "main"
) -> dict[str, Any]:
    """Name -> parsed manifest of every ConfigMap file of ``namespace`` in the target folder."""
    prefix = f"v1/configmaps/{namespace}/"
    return {
        path[len(prefix) : -len(".yaml")]: yaml.safe_load(data)
        for path, data in under(tree(repo, branch), folder).items()
        if path.startswith(prefix)
    }


def commits(repo: Path, branch: str = "main") -> list[pygit2.Commit]:
    """The commits of ``branch``, oldest first."""
    git = pygit2.Repository(str(repo))
    return [git.get(entry.sha) for entry in reversed(log(repo, branch))]


def empty_commits(repo: Path, branch: str = "main") -> list[str]:
    """Subjects of commits whose tree equals their parent's."""
    return [
        commit.message.splitlines()[0]
        for commit in commits(repo, branch)
        if commit.parents and commit.tree_id == commit.parents[0].tree_id
    ]


def live_manifests(plane: ControlPlane, namespace: str) -> dict[str, dict[str, Any]]:
    """Every ConfigMap of ``namespace`` as reverserd must write it: the sanitized object."""
    items = kubectl_json(plane, "get", "configmaps", "-n", namespace)["items"]
    result = {}
    for item in items:
        metadata = item["metadata"]
        kept: dict[str, Any] = {"name": metadata["name"], "namespace": metadata["namespace"]}
        if metadata.get("labels"):
            kept["labels"] = metadata["labels"]
        annotations = {
            key: value
            for key, value in (metadata.get("annotations") or {}).items()
            if key != LAST_APPLIED
        }
        if annotations:
            kept["annotations"] = annotations
        manifest: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": kept}
        if "data" in item:
            manifest["data"] = item["data"]
        result[metadata["name"]] = manifest
    return result


def recorded_files(daemon: Reverserd, target: str) -> dict[str, str]:
    """path -> content hash of every file the journal records ``target`` as having written."""
    rows = query_journal(
        daemon, "SELECT path, content_sha FROM target_files WHERE target = ?", (target,)
    )
    return dict(rows)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def messages(daemon: Reverserd, since: int = 0) -> list[dict[str, Any]]:
    return daemon.log_lines()[since:]


def unpushed_commit(lines: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest "Created commit" line if no push has been reported after it."""
    newest: dict[str, Any] | None = None
    for line in lines:
        if line.get("message") == "Created commit":
            newest = line
        elif line.get("message") == "All events pushed to remote":
            newest = None
    return newest


def subject(operation: str, namespace: str, name: str) -> str:
    return f"[{operation}] v1/configmaps/{namespace}/{name}"


def slow_push_setup(
    namespace: str, remote: Remote, path: str = "live-cluster"
) -> list[dict[str, Any]]:
    """:func:`mirror_setup` for ``remote`` whose commits wait locally for the push interval."""
    return mirror_setup(
        namespace,
        remote.url,
        secret=remote.secret,
        path=path,
        interval=SLOW_PUSH_INTERVAL,
        max_commits=NO_EARLY_PUSH,
    )


# -- D27 ---------------------------------------------------------------------------------------


def test_cold_start_mirrors_existing_objects_in_one_reconcile_commit(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    count = 2000
    # Values YAML could read as another type, and multi-line text, must round-trip as strings.
    tricky = ["yes", "no", "on", "0o17", "1e3", "~", "null", "", "007", "true"]
    manifests = [
        configmap(
            namespace,
            f"cm-{index:04d}",
            {
                "index": str(index),
                "flag": tricky[index % len(tricky)],
                "text": f"first line\nline {index}\n",
            },
        )
        for index in range(count)
    ]
    create_many(control_plane, manifests, "configmaps")
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    target = f"{namespace}/mirror"

    daemon.start()
    wait_until(
        lambda: caught_up(daemon, target) and branch_tip(remote.path, "main"),
        timeout=120,
        describe=lambda: f"subjects {subjects(remote.path)}; log: {daemon.log_tail()}",
    )

    history = log(remote.path, "main")
    assert [entry.subject for entry in history] == [f"reconcile: sync {count} resources"]
    assert f"created: {count}\nupdated: 0\ndeleted: 0" in history[0].body

    files = tree(remote.path)
    expected_paths = {
        f"live-cluster/v1/configmaps/{namespace}/{m['metadata']['name']}.yaml" for m in manifests
    }
    assert set(files) == expected_paths | {"live-cluster/README.md"}
    live = live_manifests(control_plane, namespace)
    assert len(live) == count
    written = configmap_files(remote.path, "live-cluster", namespace)
    mismatched = [name for name, manifest in live.items() if written.get(name) != manifest]
    assert mismatched == [], f"{len(mismatched)} files differ, e.g. {mismatched[:3]}"

    # The journal records every file it wrote, with the hash of what is in Git.
    recorded = recorded_files(daemon, target)
    assert recorded == {path: sha256(files[path]) for path in expected_paths}
    last_seq = query_journal(daemon, "SELECT max(seq) FROM events")[0][0]
    assert cursor_seq(daemon, target) == last_seq

    status = resource_status(control_plane, "gittarget", namespace, "mirror")
    assert status["snapshot"]["stats"] == {"created": count, "updated": 0, "deleted": 0}
    assert status["lastCommit"] == branch_tip(remote.path, "main")
    problems = [line for line in daemon.log_lines() if line.get("level") in ("error", "critical")]
    assert problems == []
    # Nothing else was on its way: the next change is the next commit.
    later = later_change(control_plane, namespace, remote.path, daemon)
    assert subjects(remote.path) == [f"reconcile: sync {count} resources", later]


def test_reconcile_commit_is_pushed_at_once_while_live_changes_wait_for_the_interval(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    early = {f"early-{index}" for index in range(3)}
    create_many(
        control_plane, [configmap(namespace, name, {"v": "1"}) for name in early], "configmaps"
    )
    apply(
        control_plane,
        *mirror_setup(
            namespace, remote.url, secret=remote.secret, interval="10m", max_commits=NO_EARLY_PUSH
        ),
    )
    daemon.start()
    # Ten minutes of interval: only a push that does not wait for it shows the snapshot now.
    wait_until(
        lambda: set(configmap_files(remote.path, "live-cluster", namespace)) == early,
        timeout=60,
        describe=daemon.log_tail,
    )
    assert [entry.subject for entry in log(remote.path, "main")] == ["reconcile: sync 3 resources"]

    mark = len(daemon.log_lines())
    apply(control_plane, configmap(namespace, "late", {"v": "1"}))
    wait_until(
        lambda: unpushed_commit(messages(daemon, mark)), timeout=30, describe=daemon.log_tail
    )
    time.sleep(QUIET_PERIOD_S)
    assert subject("CREATE", namespace, "late") not in subjects(remote.path)
    assert unpushed_commit(messages(daemon, mark)) is not None


# -- D28, A14 ----------------------------------------------------------------------------------


def test_restarts_keep_every_file_and_commit_nothing_when_all_is_mirrored(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    # A group starting with "v" looks like a version segment to anyone parsing paths.
    group = f"vtest{uuid.uuid4().hex[:6]}.example.com"
    install_crd(control_plane, crd(group))
    rules = [{"resources": ["configmaps"]}, {"apiGroups": [group], "resources": ["widgets"]}]
    folders = {"live": ("main", "live-cluster"), "prod": ("prod", "clusters/prod/live")}
    for name, (branch, folder) in folders.items():
        apply(
            control_plane,
            *mirror_setup(
                namespace,
                remote.url,
                secret=remote.secret,
                branch=branch,
                path=folder,
                rules=rules,
                name=name,
            ),
        )
    widget = custom_object(group, "Widget", namespace, "gadget", {"size": 3, "colour": "blue"})
    apply(control_plane, configmap(namespace, "app", {"color": "blue"}), widget)
    targets = [f"{namespace}/{name}" for name in folders]

    daemon.start()
    for name in folders:
        wait_synced(control_plane, namespace, name, daemon=daemon)
    apply(control_plane, configmap(namespace, "later", {"color": "green"}))
    for branch, _ in folders.values():
        wait_for_subjects(remote.path, daemon, subject("CREATE", namespace, "later"), branch=branch)
    wait_until(lambda: caught_up(daemon, *targets), describe=daemon.log_tail)

    expected_subjects = ["reconcile: sync 2 resources", subject("CREATE", namespace, "later")]
    trees = {}
    for branch, folder in folders.values():
        # The first sync of a target is one commit, whatever number of types it selects.
        assert subjects(remote.path, branch) == expected_subjects, branch
        files = tree(remote.path, branch)
        assert set(files) == {
            f"{folder}/README.md",
            f"{folder}/v1/configmaps/{namespace}/app.yaml",
            f"{folder}/v1/configmaps/{namespace}/later.yaml",
            f"{folder}/{group}/v1/widgets/{namespace}/gadget.yaml",
        }
        assert (
            yaml.safe_load(files[f"{folder}/{group}/v1/widgets/{namespace}/gadget.yaml"]) == widget
        )
        trees[branch] = files
    tips = {branch: branch_tip(remote.path, branch) for branch, _ in folders.values()}

    for restart in range(10):
        stopped_in = daemon.stop()
        assert stopped_in < 10, f"restart {restart}: SIGTERM took {stopped_in:.1f} s"
        daemon.start()
        wait_until(
            lambda: caught_up(daemon, *targets),
            describe=lambda restart=restart: f"restart {restart}: {daemon.status()['targets']}",
        )
        for branch, _ in folders.values():
            assert branch_tip(remote.path, branch) == tips[branch], (
                f"restart {restart} committed to {branch}: {subjects(remote.path, branch)}"
            )
            assert tree(remote.path, branch) == trees[branch]

    # A commit any restart made reaches the branch with the next push at the latest.
    for branch, _ in folders.values():
        final = later_change(control_plane, namespace, remote.path, daemon, "final", branch)
        assert subjects(remote.path, branch) == [*expected_subjects, final], branch
    for name, (branch, _) in folders.items():
        assert not [s for s in subjects(remote.path, branch) if s.startswith("[DELETE]")]
        pushed = {
            path: sha256(data)
            for path, data in tree(remote.path, branch).items()
            if not path.endswith("README.md")
        }
        # The record is written with the cursor, just after the push.
        wait_until(
            lambda name=name, pushed=pushed: recorded_files(daemon, f"{namespace}/{name}") == pushed
        )
    daemon.stop()
    control_plane.kubectl("delete", "crd", f"widgets.{group}", "--wait=false")


# -- C25 ---------------------------------------------------------------------------------------


def test_an_older_version_never_overwrites_a_newer_one(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    """Every commit touching the file carries a newer version than the one before it, through a
    rebuild on someone else's commit and a SIGKILL with commits not pushed yet."""
    apply(control_plane, *slow_push_setup(namespace, remote))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    path = f"live-cluster/v1/configmaps/{namespace}/counter.yaml"
    last = 12
    mark = 0
    for version in range(1, last + 1):
        if version == 7:
            mark = len(daemon.log_lines())
        apply(control_plane, configmap(namespace, "counter", {"v": str(version)}))
        if version == 4:
            # Pending local commits must be rebuilt on this before they are pushed.
            push_foreign_commit(remote.path, "main", "notes.md", b"theirs\n", "their notes")
        if version == 8:
            # Killed with a commit made and not pushed (3 s interval): the restart replays
            # from a cursor older than what the clone holds.
            pending = wait_until(
                lambda since=mark: unpushed_commit(messages(daemon, since)),
                describe=daemon.log_tail,
            )
            daemon.kill()
            assert unpushed_commit(messages(daemon, mark)) is not None, "pushed before the kill"
            cursor = cursor_seq(daemon, f"{namespace}/mirror")
            assert cursor is not None and cursor < pending["seq"], (cursor, pending)
            daemon.start()
    later_change(control_plane, namespace, remote.path, daemon)

    versions = []
    for entry in log(remote.path, "main")[::-1]:
        if path in changed_paths(remote.path, entry.sha):
            written = read_tree_at(remote.path, entry.sha).get(path)
            assert written is not None, f"{entry.subject} deleted the file"
            versions.append(int(yaml.safe_load(written)["data"]["v"]))
    assert versions == sorted(set(versions)), versions
    assert versions[-1] == last, versions
    assert "their notes" in subjects(remote.path)


# -- D30, D31 ----------------------------------------------------------------------------------


def test_sigkill_during_a_burst_commits_every_change_exactly_once(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *slow_push_setup(namespace, remote))
    target = f"{namespace}/mirror"
    objects = [configmap(namespace, f"burst-{index:03d}", {"v": "1"}) for index in range(250)]

    def create(first: int, last: int) -> None:
        create_many(control_plane, objects[first:last], "configmaps")

    def update(first: int, last: int) -> None:
        patch_many(control_plane, objects[first:last], "configmaps", {"data": {"v": "2"}})

    def delete(first: int, last: int) -> None:
        delete_many(control_plane, objects[first:last], "configmaps")

    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)

    # Kill 1: after local commits, before their push (the push interval keeps that window open).
    mark = len(daemon.log_lines())
    create(0, 60)
    pending = wait_until(
        lambda: unpushed_commit(messages(daemon, mark)), timeout=30, describe=daemon.log_tail
    )
    daemon.kill()
    assert unpushed_commit(messages(daemon, mark)) is not None, "the push happened before the kill"
    assert pending["subject"] not in subjects(remote.path)
    cursor = cursor_seq(daemon, target)
    assert cursor is not None and cursor < pending["seq"], (
        f"cursor {cursor} moved past unpushed seq {pending['seq']}"
    )

    # Changes while down, then kill 2 shortly after start-up, amid the replay.
    create(60, 120)
    daemon.start()
    create(120, 180)
    time.sleep(0.5)
    daemon.kill()

    # More while down; kill 3 right after a push reported (the cursor write follows it).
    create(180, 250)
    update(0, 75)
    mark = len(daemon.log_lines())
    daemon.start()
    wait_until(
        lambda: any(
            line.get("message") == "All events pushed to remote" for line in messages(daemon, mark)
        ),
        timeout=60,
        describe=daemon.log_tail,
    )
    daemon.kill()

    # Kill 4 in the middle of a stream of commits.
    update(75, 150)
    mark = len(daemon.log_lines())
    daemon.start()
    delete(100, 150)
    wait_until(
        lambda: (
            sum(1 for line in messages(daemon, mark) if line.get("message") == "Created commit")
            >= 10
        ),
        timeout=60,
        describe=daemon.log_tail,
    )
    daemon.kill()
    delete(150, 200)
    daemon.start()

    survivors = {f"burst-{index:03d}" for index in (*range(100), *range(200, 250))}
    wait_until(
        lambda: (
            set(configmap_files(remote.path, "live-cluster", namespace)) == survivors
            and caught_up(daemon, target)
        ),
        timeout=120,
        describe=lambda: (
            f"{len(configmap_files(remote.path, 'live-cluster', namespace))} files;"
            f" log: {daemon.log_tail()}"
        ),
    )
    later = later_change(control_plane, namespace, remote.path, daemon)
    survivors.add("later")

    # Git equals the cluster.
    live = live_manifests(control_plane, namespace)
    assert set(live) == survivors
    assert configmap_files(remote.path, "live-cluster", namespace) == live

    # Every change committed once: no duplicate, nothing missing.
    history = subjects(remote.path)
    counts = Counter(s for s in history if s.startswith("["))
    assert {s: n for s, n in counts.items() if n > 1} == {}
    expected = (
        {subject("CREATE", namespace, m["metadata"]["name"]) for m in objects}
        | {subject("UPDATE", namespace, m["metadata"]["name"]) for m in objects[:150]}
        | {subject("DELETE", namespace, m["metadata"]["name"]) for m in objects[100:200]}
        | {later}
    )
    # Watches resume from their stored resourceVersion (seconds old, well inside the API
    # server's history), so every event is delivered and every change has its own commit.
    relists = query_journal(daemon, "SELECT coalesce(sum(relists), 0) FROM streams")[0][0]
    assert relists == 0, "a watch re-listed: changes made while down would be collapsed"
    assert set(counts) == expected, (
        f"missing {sorted(expected - set(counts))[:5]}, extra {sorted(set(counts) - expected)[:5]}"
    )
    for name in (m["metadata"]["name"] for m in objects):
        order = [s.split("]")[0][1:] for s in history if s.endswith(f"/{name}")]
        if name in survivors:
            allowed = [["CREATE"], ["CREATE", "UPDATE"]]
        else:
            allowed = [["CREATE", "DELETE"], ["CREATE", "UPDATE", "DELETE"], []]
        assert order in allowed, f"{name}: {order}"
    # The commit left pending by kill 1 was pushed exactly once.
    assert counts[pending["subject"]] == 1
    assert empty_commits(remote.path) == []

    files = tree(remote.path)
    pushed = {
        path: sha256(data) for path, data in files.items() if path != "live-cluster/README.md"
    }
    # The record is written with the cursor, just after the push.
    wait_until(lambda: recorded_files(daemon, target) == pushed)


# -- F46 ---------------------------------------------------------------------------------------


def test_foreign_commits_are_kept_and_ours_are_rebuilt_on_top(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *slow_push_setup(namespace, remote))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)

    apply(control_plane, configmap(namespace, "a", {"n": "1"}))
    wait_for_subjects(remote.path, daemon, subject("CREATE", namespace, "a"))
    # Someone pushes between two of our pushes...
    first = push_foreign_commit(
        remote.path, "main", "docs/notes.md", b"# Notes\nby a human\n", "docs: add notes"
    )
    # ...and again while our next commit waits locally for its push.
    mark = len(daemon.log_lines())
    apply(control_plane, configmap(namespace, "b", {"n": "1"}))
    wait_until(lambda: unpushed_commit(messages(daemon, mark)), describe=daemon.log_tail)
    assert branch_tip(remote.path, "main") == first
    second = push_foreign_commit(
        remote.path, "main", "ops/runbook.md", b"restart it\n", "ops: add runbook"
    )
    wait_for_subjects(remote.path, daemon, subject("CREATE", namespace, "b"))
    apply(control_plane, configmap(namespace, "a", {"n": "2"}))
    wait_for_subjects(remote.path, daemon, subject("UPDATE", namespace, "a"))

    assert subjects(remote.path) == [
        subject("CREATE", namespace, "a"),
        "docs: add notes",
        "ops: add runbook",
        subject("CREATE", namespace, "b"),
        subject("UPDATE", namespace, "a"),
    ]
    shas = [entry.sha for entry in reversed(log(remote.path, "main"))]
    assert shas[1:3] == [first, second], "the foreign commits were rewritten"
    assert empty_commits(remote.path) == []
    files = tree(remote.path)
    assert files["docs/notes.md"] == b"# Notes\nby a human\n"
    assert files["ops/runbook.md"] == b"restart it\n"
    assert configmap_files(remote.path, "live-cluster", namespace) == live_manifests(
        control_plane, namespace
    )
    wait_last_commit_is_tip(control_plane, namespace, remote.path)


# -- F47 ---------------------------------------------------------------------------------------


def test_changes_made_during_a_git_outage_are_pushed_in_order_when_it_ends(
    control_plane: ControlPlane, namespace: str, daemon: Reverserd, tmp_path: Path
) -> None:
    server = GitHttpServer(tmp_path / "git-private")
    server.start()
    try:
        repo = server.create_bare_repo("outage")
        secret = create_git_credentials(control_plane, namespace, server)
        apply(control_plane, *mirror_setup(namespace, server.url("outage"), secret=secret))
        daemon.start()
        wait_synced(control_plane, namespace, daemon=daemon)
        apply(control_plane, configmap(namespace, "before"))
        wait_for_subjects(repo, daemon, subject("CREATE", namespace, "before"))
        ready = conditions(control_plane, "gitprovider", namespace, "mirror")["Ready"]
        assert ready["status"] == "True"

        server.stop()
        outage_started = time.monotonic()
        made = []
        for index in range(15):
            apply(control_plane, configmap(namespace, f"o{index:02d}", {"v": "1"}))
            made.append(subject("CREATE", namespace, f"o{index:02d}"))
        for index in range(5):
            apply(control_plane, configmap(namespace, f"o{index:02d}", {"v": "2"}))
            made.append(subject("UPDATE", namespace, f"o{index:02d}"))

        ready = wait_condition(
            control_plane, "gitprovider", namespace, "mirror", "Ready", "False", timeout=45
        )
        assert ready["reason"] == "ConnectionFailed"
        assert server.url("outage").split("//", 1)[1] in ready["message"]

        wait_until(lambda: daemon.metric("reverserd_push_failures_total") > 0, timeout=30)
        assert subjects(repo) == [subject("CREATE", namespace, "before")]

        time.sleep(max(0.0, 60 - (time.monotonic() - outage_started)))
        server.start()
        wait_until(
            lambda: len(subjects(repo)) >= 1 + len(made),
            timeout=120,
            describe=lambda: f"{subjects(repo)}; log: {daemon.log_tail()}",
        )
        made.append(later_change(control_plane, namespace, repo, daemon))
        assert subjects(repo) == [subject("CREATE", namespace, "before"), *made]
        assert configmap_files(repo, "live-cluster", namespace) == live_manifests(
            control_plane, namespace
        )
        wait_condition(control_plane, "gitprovider", namespace, "mirror", "Ready", "True")
    finally:
        daemon.ensure_stopped()
        server.stop()


# -- B22 ---------------------------------------------------------------------------------------


def test_mirrored_folder_applies_with_kubectl(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    tmp_path: Path,
) -> None:
    rules = [
        {"resources": ["configmaps", "services"]},
        {"apiGroups": ["apps"], "resources": ["deployments"]},
    ]
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret, rules=rules))
    daemon.start()
    labels = {"app": "web"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "nginx:1.27",
                            "ports": [{"containerPort": 8080}],
                            "env": [{"name": "MODE", "value": "on"}],
                            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                        }
                    ],
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web-peers", "namespace": namespace},
        "spec": {"clusterIP": "None", "selector": labels, "ports": [{"port": 8080}]},
    }
    settings = configmap(
        namespace,
        "settings",
        {"nginx.conf": "server {\n  listen 8080;\n  root /srv;\n}\n", "enabled": "yes"},
    )
    apply(control_plane, deployment, service, headless, settings)
    folder = "live-cluster"
    paths = {
        "deployment": f"{folder}/apps/v1/deployments/{namespace}/web.yaml",
        "service": f"{folder}/v1/services/{namespace}/web.yaml",
        "headless": f"{folder}/v1/services/{namespace}/web-peers.yaml",
        "settings": f"{folder}/v1/configmaps/{namespace}/settings.yaml",
    }
    files = wait_until(
        lambda: (t := tree(remote.path)) and set(paths.values()) <= set(t) and t,
        describe=lambda: f"{sorted(tree(remote.path))}; log: {daemon.log_tail()}",
    )
    daemon.stop()

    normal = yaml.safe_load(files[paths["service"]])
    assert "clusterIP" not in normal["spec"] and "clusterIPs" not in normal["spec"]
    assert yaml.safe_load(files[paths["headless"]])["spec"]["clusterIP"] == "None"
    text = files[paths["settings"]].decode()
    assert "nginx.conf: |" in text, text
    assert yaml.safe_load(text)["data"] == settings["data"]
    mirrored = yaml.safe_load(files[paths["deployment"]])
    assert "status" not in mirrored
    assert mirrored["spec"]["template"]["spec"]["volumes"] == [{"name": "scratch", "emptyDir": {}}]

    checkout = tmp_path / "checkout"
    for path, data in under(files, folder).items():
        target = checkout / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def dry_run() -> str:
        return control_plane.kubectl("apply", "--dry-run=server", "-R", "-f", str(checkout))

    # Over the live objects...
    over_live = dry_run()
    assert len(over_live.strip().splitlines()) == 4, over_live
    # ...and as on a fresh cluster with the same namespace.
    control_plane.kubectl(
        "delete",
        "deployment/web",
        "service/web",
        "service/web-peers",
        "configmap/settings",
        "-n",
        namespace,
    )
    fresh = dry_run()
    assert sorted(fresh.strip().splitlines()) == sorted(
        [
            "configmap/settings created (server dry run)",
            "deployment.apps/web created (server dry run)",
            "service/web created (server dry run)",
            "service/web-peers created (server dry run)",
        ]
    ), fresh


# -- F44, F45 ----------------------------------------------------------------------------------


def test_first_commit_creates_the_branch_in_an_empty_repository(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    assert list(pygit2.Repository(str(remote.path)).references) == []
    apply(control_plane, configmap(namespace, "first"))
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_until(
        lambda: branch_tip(remote.path, "main"),
        describe=lambda: daemon.log_tail(),
    )
    wait_until(lambda: caught_up(daemon, f"{namespace}/mirror"), describe=daemon.log_tail)

    history = commits(remote.path)
    assert [c.message.splitlines()[0] for c in history] == ["reconcile: sync 1 resources"]
    assert history[0].parents == []
    assert set(tree(remote.path)) == {
        "live-cluster/README.md",
        f"live-cluster/v1/configmaps/{namespace}/first.yaml",
    }
    assert list(pygit2.Repository(str(remote.path)).branches.local) == ["main"]


def test_missing_branch_is_created_from_the_default_branch(
    control_plane: ControlPlane,
    namespace: str,
    git_http: GitHttpServer,
    git_repo_name: str,
    daemon: Reverserd,
) -> None:
    repo = git_http.create_bare_repo(git_repo_name, default_branch="trunk")
    seeded = git_http.seed_repo(
        git_repo_name, "trunk", {"TRUNK.md": b"# trunk\n"}, "trunk: initial content"
    )
    secret = create_git_credentials(control_plane, namespace, git_http)
    apply(
        control_plane,
        *mirror_setup(namespace, git_http.url(git_repo_name), secret=secret, branch="mirror"),
    )
    apply(control_plane, configmap(namespace, "app"))
    daemon.start()
    wait_until(
        lambda: branch_tip(repo, "mirror"),
        describe=lambda: daemon.log_tail(),
    )
    wait_until(lambda: caught_up(daemon, f"{namespace}/mirror"), describe=daemon.log_tail)

    assert branch_tip(repo, "trunk") == seeded
    history = log(repo, "mirror")
    assert [entry.subject for entry in reversed(history)] == [
        "trunk: initial content",
        "reconcile: sync 1 resources",
    ]
    assert history[-1].sha == seeded
    assert set(tree(repo, "mirror")) == {
        "TRUNK.md",
        "live-cluster/README.md",
        f"live-cluster/v1/configmaps/{namespace}/app.yaml",
    }
    assert tree(repo, "mirror")["TRUNK.md"] == b"# trunk\n"
    assert set(pygit2.Repository(str(repo)).branches.local) == {"trunk", "mirror"}


# -- F48, F49 ----------------------------------------------------------------------------------


def ssh_secret(plane: ControlPlane, namespace: str, name: str, key: str, known_hosts: str) -> None:
    apply(
        plane,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": {"ssh-privatekey": key, "known_hosts": known_hosts},
        },
    )


def test_ssh_pushes_with_deploy_key_and_refuses_a_wrong_host_key(
    control_plane: ControlPlane,
    namespace: str,
    git_ssh: GitSshServer,
    git_repo_name: str,
    daemon: Reverserd,
) -> None:
    good_repo = git_ssh.create_bare_repo(f"{git_repo_name}-good")
    bad_repo = git_ssh.create_bare_repo(f"{git_repo_name}-bad")
    ssh_secret(
        control_plane, namespace, "ssh-good", git_ssh.client_private_key, git_ssh.known_hosts
    )
    ssh_secret(
        control_plane, namespace, "ssh-bad", git_ssh.client_private_key, git_ssh.wrong_known_hosts
    )
    for name, url, secret in (
        ("good", git_ssh.url(f"{git_repo_name}-good"), "ssh-good"),
        ("bad", git_ssh.url(f"{git_repo_name}-bad"), "ssh-bad"),
    ):
        apply(control_plane, *mirror_setup(namespace, url, secret=secret, name=name))
    apply(control_plane, configmap(namespace, "app", {"k": "v"}))
    daemon.start()

    wait_until(
        lambda: branch_tip(good_repo, "main"),
        describe=lambda: (
            f"{conditions(control_plane, 'gitprovider', namespace, 'good')};"
            f" log: {daemon.log_tail()}"
        ),
    )
    assert subjects(good_repo) == ["reconcile: sync 1 resources"]
    assert f"live-cluster/v1/configmaps/{namespace}/app.yaml" in tree(good_repo)
    assert conditions(control_plane, "gitprovider", namespace, "good")["Ready"]["status"] == "True"

    refused = wait_condition(control_plane, "gitprovider", namespace, "bad", "Ready", "False")
    assert refused["reason"] == "ConnectionFailed"
    assert re.search(r"host key", refused["message"], re.IGNORECASE), refused["message"]
    assert branch_tip(bad_repo, "main") is None
    assert list(pygit2.Repository(str(bad_repo)).branches.local) == []
    private_key_body = git_ssh.client_private_key.strip().splitlines()[1]
    assert private_key_body not in json.dumps(refused)
    assert private_key_body not in daemon.log_path.read_text()


def test_wrong_http_password_is_reported_without_revealing_it(
    control_plane: ControlPlane,
    namespace: str,
    git_http: GitHttpServer,
    git_repo_name: str,
    daemon: Reverserd,
) -> None:
    repo = git_http.create_bare_repo(git_repo_name)
    wrong = f"wrong-{uuid.uuid4().hex}"
    secret = create_git_credentials(control_plane, namespace, git_http, wrong)
    apply(control_plane, *mirror_setup(namespace, git_http.url(git_repo_name), secret=secret))
    apply(control_plane, configmap(namespace, "app"))
    daemon.start()

    refused = wait_condition(
        control_plane, "gitprovider", namespace, "mirror", "Ready", "False", daemon=daemon
    )
    assert refused["reason"] == "ConnectionFailed"
    message = refused["message"]
    # Useful: names the repository and says the credentials were refused.
    assert f"127.0.0.1:{git_http.port}/git/{git_repo_name}.git" in message, message
    assert re.search(r"auth|credential|401", message, re.IGNORECASE), message
    # Secret-free everywhere an operator looks.
    provider = control_plane.kubectl("get", "gitprovider", "mirror", "-n", namespace, "-o", "json")
    assert wrong not in provider
    assert wrong not in daemon.log_path.read_text()
    assert wrong not in json.dumps(daemon.status())
    assert wrong not in (daemon.get("/metrics") or b"").decode()
    assert branch_tip(repo, "main") is None


# -- F50 ---------------------------------------------------------------------------------------


def test_files_written_by_humans_are_never_touched(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    git_http: GitHttpServer,
    git_repo_name: str,
    daemon: Reverserd,
) -> None:
    human = {
        "live-cluster/README.md": b"# Production mirror\n\nAsk #platform before editing.\n",
        "live-cluster/kustomization.yaml": (
            b"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: []\n"
        ),
        "live-cluster/notes/owners.yaml": b"owners:\n- team-a\n- team-b\n",
        # Manifests of objects the rules do not select: another type, another namespace.
        "live-cluster/extra/worker.yaml": yaml.safe_dump(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "worker", "namespace": namespace},
                "spec": {"replicas": 1},
            }
        ).encode(),
        "live-cluster/v1/configmaps/elsewhere/shared.yaml": yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "shared", "namespace": "elsewhere"},
                "data": {"k": "v"},
            }
        ).encode(),
    }
    seeded = git_http.seed_repo(git_repo_name, "main", human, "human: folder docs")
    apply(control_plane, configmap(namespace, "existing", {"k": "1"}))
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_for_subjects(remote.path, daemon, "reconcile: sync 1 resources")
    apply(control_plane, configmap(namespace, "new", {"k": "1"}))
    apply(control_plane, configmap(namespace, "existing", {"k": "2"}))
    control_plane.kubectl("delete", "configmap", "existing", "new", "-n", namespace)
    wait_for_subjects(
        remote.path,
        daemon,
        subject("DELETE", namespace, "new"),
        subject("DELETE", namespace, "existing"),
    )
    wait_until(lambda: caught_up(daemon, f"{namespace}/mirror"), describe=daemon.log_tail)

    assert tree(remote.path) == human
    history = commits(remote.path)
    assert str(history[0].id) == seeded
    for commit in history[1:]:
        touched = changed_paths(remote.path, str(commit.id)) & set(human)
        assert touched == set(), f"{commit.message.splitlines()[0]} touched {touched}"
    assert [c.message.splitlines()[0] for c in history[1:]] == [
        "reconcile: sync 1 resources",
        subject("CREATE", namespace, "new"),
        subject("UPDATE", namespace, "existing"),
        subject("DELETE", namespace, "existing"),
        subject("DELETE", namespace, "new"),
    ]


# -- G56, G57 ----------------------------------------------------------------------------------


def test_target_status_shows_the_pushed_tip_and_kubectl_columns(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    apply(control_plane, configmap(namespace, "app", {"v": "1"}))
    apply(control_plane, configmap(namespace, "app", {"v": "2"}))
    wait_for_subjects(remote.path, daemon, subject("UPDATE", namespace, "app"))
    tip = branch_tip(remote.path, "main")
    assert tip is not None
    status = wait_last_commit_is_tip(control_plane, namespace, remote.path)
    pushed_at = calendar.timegm(time.strptime(status["lastPushTime"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(pushed_at - time.time()) < 120, status["lastPushTime"]
    report = target_report(daemon, f"{namespace}/mirror")
    assert report is not None and report["last_commit"] == tip

    table = control_plane.kubectl("get", "gittargets", "-n", namespace)
    header, row = (re.split(r"\s{2,}", line.strip()) for line in table.strip().splitlines())
    columns = dict(zip(header, row, strict=False))
    assert columns["NAME"] == "mirror", table
    assert columns["BRANCH"] == "main", table
    assert columns["PATH"] == "live-cluster", table
    assert columns["READY"] == "True", table
    assert columns["LAST COMMIT"] == tip, table


def test_last_commit_names_each_targets_own_commit_on_a_shared_branch(
    control_plane: ControlPlane,
    remote: Remote,
    namespace: str,
    daemon: Reverserd,
) -> None:
    # Two targets on one branch (two providers of one namespace and Secret share its writer),
    # each selecting its own type, so each change is one target's commit.
    targets = {"mirror": "configmaps", "accounts": "serviceaccounts"}
    for name, resource in targets.items():
        apply(
            control_plane,
            *mirror_setup(
                namespace,
                remote.url,
                secret=remote.secret,
                path=f"team-{name}",
                interval=SLOW_PUSH_INTERVAL,
                max_commits=NO_EARLY_PUSH,
                rules=[{"resources": [resource]}],
                name=name,
            ),
        )
    daemon.start()
    for name in targets:
        wait_synced(control_plane, namespace, name, daemon=daemon)
    # Both changes wait for the same push.
    apply(control_plane, configmap(namespace, "a"))
    wait_until(
        lambda: (
            subject("CREATE", namespace, "a")
            in [line.get("subject") for line in daemon.log_lines()]
        ),
        describe=daemon.log_tail,
    )
    control_plane.kubectl("create", "serviceaccount", "b", "-n", namespace)
    account = f"[CREATE] v1/serviceaccounts/{namespace}/b"
    wait_for_subjects(remote.path, daemon, account)
    history = {entry.subject: entry.sha for entry in log(remote.path, "main")}
    assert list(history) == [account, subject("CREATE", namespace, "a")]

    def last_commits() -> dict[str, Any]:
        return {
            name: resource_status(control_plane, "gittarget", namespace, name).get("lastCommit")
            for name in targets
        }

    wanted = {"mirror": history[subject("CREATE", namespace, "a")], "accounts": history[account]}
    # Each target's newest pushed commit, not the branch tip another target's change made.
    wait_until(
        lambda: last_commits() == wanted,
        describe=lambda: f"{last_commits()}; history (newest first): {history}",
    )
