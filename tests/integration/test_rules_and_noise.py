"""What gets mirrored and what does not: cluster and wildcard rules, backfills, several targets on
one branch, object names, sanitization noise, bursts, refused targets, Secrets without
encryption and a quiet cluster.

Every test runs a real ``reverserd run`` process against the test bed and asserts the pushed
branch's tree and history, the custom resources' status and the daemon's metrics. "No commit"
is proven with a later real change on the same watch stream wherever one exists: a stream is
journaled in order and each target commits in journal order, so a commit the noise had caused
would show up before the real change's commit.
"""

from __future__ import annotations

import difflib
import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pygit2
import yaml

from testbed.controlplane import ControlPlane
from testbed.gitservers import GitHttpServer, LogEntry, branch_tip, log, read_tree
from testbed.harness import (
    Reverserd,
    apply,
    configmap,
    create_many,
    delete_many,
    mirror_setup,
    patch_many,
    wait_until,
)
from tests.conftest import Cleanup, Remote

API = "configbutler.ai/v1alpha1"
README = "README.md"
# How long a noise-free stretch is watched for status writes.
QUIET_S = 60.0


# --------------------------------------------------------------------------------------------
# Custom resources


def provider(
    namespace: str,
    name: str,
    url: str,
    secret: str,
    branches: list[str] | None = None,
    push: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "GitProvider",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "url": url,
            "allowedBranches": branches or ["main"],
            "secretRef": {"name": secret},
            "push": push or {"interval": "1s"},
        },
    }


def target(
    namespace: str, name: str, provider_name: str, path: str, branch: str = "main"
) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "GitTarget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"providerRef": {"name": provider_name}, "branch": branch, "path": path},
    }


def watch_rule(
    namespace: str, name: str, target_name: str, rules: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "WatchRule",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"targetRef": {"name": target_name}, "rules": rules},
    }


def cluster_watch_rule(
    name: str, target_namespace: str, target_name: str, rules: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "ClusterWatchRule",
        "metadata": {"name": name},
        "spec": {
            "targetRef": {"name": target_name, "namespace": target_namespace},
            "rules": rules,
        },
    }


def provider_and_target(namespace: str, remote: Remote, path: str = "live-cluster") -> list[Any]:
    """The GitProvider and GitTarget ``mirror`` of :func:`mirror_setup`, without its WatchRule."""
    return mirror_setup(namespace, remote.url, secret=remote.secret, path=path)[:2]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def install_crd(
    plane: ControlPlane,
    group: str,
    plural: str,
    kind: str,
    scope: str = "Namespaced",
    status: bool = False,
) -> None:
    version: dict[str, Any] = {
        "name": "v1",
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        },
    }
    if status:
        version["subresources"] = {"status": {}}
    apply(
        plane,
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {
                "group": group,
                "scope": scope,
                "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
                "versions": [version],
            },
        },
    )
    plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{plural}.{group}")


def create_namespace(plane: ControlPlane) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    plane.kubectl("create", "namespace", name)
    return name


def add_git_secret(plane: ControlPlane, namespace: str, git: GitHttpServer, name: str) -> None:
    plane.kubectl(
        "create",
        "secret",
        "generic",
        name,
        "-n",
        namespace,
        f"--from-literal=username={git.username}",
        f"--from-literal=password={git.password}",
    )


# --------------------------------------------------------------------------------------------
# Reading the remote


def history(remote: Remote, branch: str = "main") -> list[LogEntry]:
    """The branch's commits, oldest first ([] while the branch does not exist)."""
    try:
        return list(reversed(log(remote.path, branch)))
    except LookupError:
        return []


def subjects(remote: Remote, branch: str = "main") -> list[str]:
    return [entry.subject for entry in history(remote, branch)]


def tree(remote: Remote, branch: str = "main") -> dict[str, bytes]:
    try:
        return read_tree(remote.path, branch)
    except LookupError:
        return {}


def tree_at(remote: Remote, sha: str) -> dict[str, bytes]:
    repo = pygit2.Repository(str(remote.path))
    files: dict[str, bytes] = {}

    def collect(node: pygit2.Tree, prefix: str) -> None:
        for entry in node:
            obj = repo[entry.id]
            if isinstance(obj, pygit2.Tree):
                collect(obj, f"{prefix}{entry.name}/")
            elif isinstance(obj, pygit2.Blob):
                files[f"{prefix}{entry.name}"] = obj.data

    collect(repo[sha].peel(pygit2.Commit).tree, "")
    return files


def changed_paths(remote: Remote, sha: str) -> set[str]:
    """Paths a commit added, changed or removed compared with its first parent."""
    commit = pygit2.Repository(str(remote.path))[sha].peel(pygit2.Commit)
    after = tree_at(remote, sha)
    before = tree_at(remote, str(commit.parent_ids[0])) if commit.parent_ids else {}
    return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}


def branches(remote: Remote) -> list[str]:
    repo = pygit2.Repository(str(remote.path))
    return sorted(ref.removeprefix("refs/heads/") for ref in repo.references if "heads/" in ref)


def wait_for_subjects(
    remote: Remote, daemon: Reverserd, *wanted: str, branch: str = "main", timeout: float = 60
) -> list[str]:
    """Wait until the branch holds at least as many commits with each subject as ``wanted``."""
    need = Counter(wanted)

    def probe() -> list[str] | None:
        found = subjects(remote, branch)
        have = Counter(found)
        return found if all(have[s] >= n for s, n in need.items()) else None

    return wait_until(
        probe,
        timeout,
        lambda: (
            f"wanted {list(wanted)}; subjects {subjects(remote, branch)}; log: {daemon.log_tail()}"
        ),
    )


def manifest(content: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(content)
    return loaded


# --------------------------------------------------------------------------------------------
# Reading the cluster


def get_json(plane: ControlPlane, kind: str, name: str, namespace: str | None) -> dict[str, Any]:
    args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
    body: dict[str, Any] = json.loads(plane.kubectl(*args))
    return body


def resource_version(plane: ControlPlane, kind: str, name: str, namespace: str) -> str:
    return str(get_json(plane, kind, name, namespace)["metadata"]["resourceVersion"])


def conditions(
    plane: ControlPlane, kind: str, name: str, namespace: str | None
) -> dict[str, dict[str, Any]]:
    status = get_json(plane, kind, name, namespace).get("status") or {}
    return {item["type"]: item for item in status.get("conditions") or []}


def wait_condition(
    plane: ControlPlane,
    kind: str,
    name: str,
    namespace: str | None,
    condition: str,
    status: str,
    reason: str | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        found = conditions(plane, kind, name, namespace).get(condition)
        if found and found["status"] == status and reason in (None, found["reason"]):
            return found
        return None

    return wait_until(
        probe,
        timeout,
        lambda: f"{kind} {namespace}/{name}: {conditions(plane, kind, name, namespace)}",
    )


def wait_live(plane: ControlPlane, namespace: str, name: str = "mirror") -> None:
    """The target's initial reconcile is pushed and it commits changes as they happen."""
    wait_condition(plane, "gittarget", name, namespace, "EventStreamLive", "True")
    wait_condition(plane, "gittarget", name, namespace, "Ready", "True")


def assert_stays(check: Callable[[], bool], seconds: float, describe: Callable[[], str]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), describe()
        time.sleep(0.5)


# --------------------------------------------------------------------------------------------
# A. Mirroring


def test_cluster_watch_rule_mirrors_cluster_scoped_objects_and_a_type_across_namespaces(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    other = create_namespace(control_plane)
    rule = unique("cwr")
    cleanup.cluster_objects.append(("clusterwatchrule", rule))
    apply(
        control_plane,
        *provider_and_target(namespace, remote),
        cluster_watch_rule(
            rule,
            namespace,
            "mirror",
            [
                {
                    "scope": "Cluster",
                    "apiGroups": ["rbac.authorization.k8s.io"],
                    "resources": ["clusterroles"],
                },
                {"scope": "Namespaced", "resources": ["limitranges"]},
            ],
        ),
        limit_range(namespace, "limits"),
        limit_range(other, "limits"),
    )
    daemon.start()
    wait_live(control_plane, namespace)
    wait_condition(control_plane, "clusterwatchrule", rule, None, "Ready", "True")
    roles_dir = "live-cluster/rbac.authorization.k8s.io/v1/clusterroles/"
    ranges_dir = "live-cluster/v1/limitranges/"

    # The initial reconcile writes every cluster role (no namespace segment) and the limit
    # ranges of both namespaces (that it is one commit is checked at the end).
    existing_roles = cluster_names(control_plane, "clusterroles")
    assert "reverserd" in existing_roles

    def initial_files() -> bool:
        files = tree(remote)
        return {p.removeprefix(roles_dir) for p in files if p.startswith(roles_dir)} == {
            f"{name}.yaml" for name in existing_roles
        } and {p for p in files if p.startswith(ranges_dir)} == {
            f"{ranges_dir}{namespace}/limits.yaml",
            f"{ranges_dir}{other}/limits.yaml",
        }

    wait_until(initial_files, 60, lambda: f"tree {sorted(tree(remote))}; {daemon.log_tail()}")
    # Settle the push before the next change, so that the history below is deterministic.
    wait_until(
        lambda: (
            get_json(control_plane, "gittarget", "mirror", namespace)["status"].get("lastCommit")
            == branch_tip(remote.path, "main")
        ),
        30,
    )
    initial = subjects(remote)

    role = unique("reverserd-test-role")
    cleanup.cluster_objects.append(("clusterrole", role))
    apply(
        control_plane,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": role, "labels": {"team": "a"}},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        },
    )
    create_subject = f"[CREATE] rbac.authorization.k8s.io/v1/clusterroles/{role}"
    wait_for_subjects(remote, daemon, create_subject)
    role_path = f"{roles_dir}{role}.yaml"
    assert manifest(tree(remote)[role_path]) == {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": role, "labels": {"team": "a"}},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
    }
    assert changed_paths(remote, history(remote)[-1].sha) == {role_path}

    # A namespace created after the start is covered by the Namespaced rule as well.
    third = create_namespace(control_plane)
    cleanup.namespaces.append(third)
    apply(control_plane, limit_range(third, "limits"))
    wait_for_subjects(remote, daemon, f"[CREATE] v1/limitranges/{third}/limits")

    control_plane.kubectl("delete", "clusterrole", role)
    wait_for_subjects(remote, daemon, f"[DELETE] rbac.authorization.k8s.io/v1/clusterroles/{role}")
    control_plane.kubectl("delete", "limitrange", "limits", "-n", other)
    wait_for_subjects(remote, daemon, f"[DELETE] v1/limitranges/{other}/limits")

    files = tree(remote)
    assert role_path not in files
    assert {p.removeprefix(roles_dir) for p in files if p.startswith(roles_dir)} == {
        f"{name}.yaml" for name in existing_roles
    }
    assert {p for p in files if p.startswith(ranges_dir)} == {
        f"{ranges_dir}{namespace}/limits.yaml",
        f"{ranges_dir}{third}/limits.yaml",
    }
    assert subjects(remote) == [
        *initial,
        create_subject,
        f"[CREATE] v1/limitranges/{third}/limits",
        f"[DELETE] rbac.authorization.k8s.io/v1/clusterroles/{role}",
        f"[DELETE] v1/limitranges/{other}/limits",
    ]
    # SPEC 4: the first sync of a target is one commit.
    assert initial == [f"reconcile: sync {len(existing_roles) + 2} resources"]


def limit_range(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"limits": [{"type": "Container", "default": {"memory": "128Mi"}}]},
    }


def cluster_names(plane: ControlPlane, resource: str) -> set[str]:
    out = plane.kubectl("get", resource, "-o", "name")
    return {line.split("/", 1)[1] for line in out.split()}


def test_wildcard_rule_mirrors_core_and_custom_types_but_never_the_default_exclusions(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    group = f"{uuid.uuid4().hex[:8]}.wildcard.test"
    install_crd(control_plane, group, "widgets", "Widget")
    cleanup.cluster_objects.append(("crd", f"widgets.{group}"))
    apply(
        control_plane,
        *mirror_setup(
            namespace,
            remote.url,
            secret=remote.secret,
            rules=[{"apiGroups": ["*"], "resources": ["*"]}],
        ),
    )
    apply(control_plane, *excluded_objects(namespace, "before"))
    daemon.start()
    wait_live(control_plane, namespace)

    apply(control_plane, *excluded_objects(namespace, "after"))
    apply(
        control_plane,
        configmap(namespace, "app"),
        {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "tmpl", "namespace": namespace},
            "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}},
        },
        {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": "w1", "namespace": namespace},
            "spec": {"size": 3},
        },
    )
    wait_for_subjects(
        remote,
        daemon,
        f"[CREATE] v1/configmaps/{namespace}/app",
        f"[CREATE] v1/podtemplates/{namespace}/tmpl",
        f"[CREATE] {group}/v1/widgets/{namespace}/w1",
    )
    # The excluded objects went in before the mirrored ones; give a wrongly opened stream of
    # theirs time to deliver anyway.
    time.sleep(3)

    # Exactly: the core and custom objects, reverserd's own resources in the namespace (every
    # namespaced type of every group is selected), the README; no excluded type, no Secret
    # (the credentials Secret is selected but there is no encryption).
    base = "live-cluster"
    assert sorted(tree(remote)) == sorted(
        [
            f"{base}/{README}",
            f"{base}/v1/configmaps/{namespace}/app.yaml",
            f"{base}/v1/podtemplates/{namespace}/tmpl.yaml",
            f"{base}/{group}/v1/widgets/{namespace}/w1.yaml",
            f"{base}/configbutler.ai/v1alpha1/gitproviders/{namespace}/mirror.yaml",
            f"{base}/configbutler.ai/v1alpha1/gittargets/{namespace}/mirror.yaml",
            f"{base}/configbutler.ai/v1alpha1/watchrules/{namespace}/mirror.yaml",
        ]
    )
    assert manifest(tree(remote)[f"{base}/{group}/v1/widgets/{namespace}/w1.yaml"]) == {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": namespace},
        "spec": {"size": 3},
    }
    # One commit per object; the three types are separate streams, so in any order.
    found = subjects(remote)
    assert sorted(s for s in found if not s.startswith("reconcile:")) == sorted(
        [
            f"[CREATE] v1/configmaps/{namespace}/app",
            f"[CREATE] v1/podtemplates/{namespace}/tmpl",
            f"[CREATE] {group}/v1/widgets/{namespace}/w1",
        ]
    )
    # SPEC 4: the first sync of a target (here over every served namespaced type) is one commit.
    assert found[0] == "reconcile: sync 3 resources", found
    assert len(found) == 4, found


def excluded_objects(namespace: str, suffix: str) -> list[dict[str, Any]]:
    """One object of each default-excluded type this control plane can hold."""
    meta = {"name": f"excluded-{suffix}", "namespace": namespace}
    container = {"name": "c", "image": "busybox"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": meta,
            "involvedObject": {"kind": "ConfigMap", "name": "app", "namespace": namespace},
            "reason": "Probe",
            "message": "an event",
            "type": "Normal",
        },
        {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {**meta, "name": f"excluded-new-{suffix}"},
            "eventTime": "2024-01-01T00:00:00.000000Z",
            "reportingController": "example.com/probe",
            "reportingInstance": "probe-1",
            "regarding": {"kind": "ConfigMap", "name": "app", "namespace": namespace},
            "action": "Probe",
            "reason": "Probe",
            "type": "Normal",
        },
        {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": [container]}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": meta, "subsets": []},
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": meta,
            "addressType": "IPv4",
            "endpoints": [],
        },
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {"holderIdentity": "probe"},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "ControllerRevision",
            "metadata": meta,
            "revision": 1,
            "data": {"probe": True},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": meta,
            "spec": {
                "selector": {"matchLabels": {"app": "x"}},
                "template": {
                    "metadata": {"labels": {"app": "x"}},
                    "spec": {"containers": [container]},
                },
            },
        },
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": meta,
            "spec": {
                "template": {"spec": {"containers": [container], "restartPolicy": "Never"}},
            },
        },
    ]


def test_rule_added_later_backfills_existing_objects_in_one_reconcile_commit(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    apply(
        control_plane,
        configmap(namespace, "settings"),
        service(namespace, "api"),
        service(namespace, "db"),
    )
    daemon.start()
    wait_live(control_plane, namespace)
    wait_for_subjects(remote, daemon, "reconcile: sync 1 resources")
    services = f"live-cluster/v1/services/{namespace}"
    assert not [path for path in tree(remote) if path.startswith(services)]

    apply(control_plane, watch_rule(namespace, "services", "mirror", [{"resources": ["services"]}]))
    wait_for_subjects(remote, daemon, "reconcile: sync 2 resources")
    backfill = history(remote)[-1]
    assert backfill.subject == "reconcile: sync 2 resources"
    assert changed_paths(remote, backfill.sha) == {f"{services}/api.yaml", f"{services}/db.yaml"}
    assert manifest(tree(remote)[f"{services}/api.yaml"])["metadata"] == {
        "name": "api",
        "namespace": namespace,
    }

    # The target keeps committing both types one change at a time, and the status tells what
    # the backfill wrote.
    apply(control_plane, service(namespace, "cache"), configmap(namespace, "more"))
    wait_for_subjects(
        remote,
        daemon,
        f"[CREATE] v1/services/{namespace}/cache",
        f"[CREATE] v1/configmaps/{namespace}/more",
    )
    assert sorted(subjects(remote)[:2]) == [
        "reconcile: sync 1 resources",
        "reconcile: sync 2 resources",
    ]
    assert len(subjects(remote)) == 4
    wait_until(
        lambda: (
            get_json(control_plane, "gittarget", "mirror", namespace)["status"]
            .get("snapshot", {})
            .get("stats")
            == {"created": 2, "updated": 0, "deleted": 0}
        ),
        10,
        lambda: str(get_json(control_plane, "gittarget", "mirror", namespace)["status"]),
    )
    wait_condition(control_plane, "watchrule", "services", namespace, "Ready", "True")


def service(namespace: str, name: str, headless: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}
    if headless:
        spec["clusterIP"] = "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def test_two_targets_on_one_branch_each_keep_their_own_copy(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    git_http: GitHttpServer,
    cleanup: Cleanup,
) -> None:
    other = create_namespace(control_plane)
    cleanup.namespaces.append(other)
    add_git_secret(control_plane, other, git_http, remote.secret)
    cms = [{"resources": ["configmaps"]}]
    # Two GitProviders with the same URL, three targets on one branch.
    apply(
        control_plane,
        provider(namespace, "p", remote.url, remote.secret),
        provider(other, "p", remote.url, remote.secret),
        target(namespace, "a", "p", "team-a"),
        target(namespace, "c", "p", "copy-a"),
        target(other, "b", "p", "team-b"),
        watch_rule(namespace, "a", "a", cms),
        watch_rule(namespace, "c", "c", cms),
        watch_rule(other, "b", "b", cms),
    )
    daemon.start()
    targets = ((namespace, "a"), (namespace, "c"), (other, "b"))

    def reconciled() -> bool:
        """Each target's initial reconcile is done (Ready is checked at the end)."""
        return all(
            get_json(control_plane, "gittarget", name, ns).get("status", {}).get("snapshot")
            for ns, name in targets
        )

    wait_until(reconciled, 60, lambda: f"log: {daemon.log_tail()}")
    folders = {f"{namespace}/a": "team-a/", f"{namespace}/c": "copy-a/", f"{other}/b": "team-b/"}

    apply(control_plane, configmap(namespace, "app"), configmap(other, "app"))
    mine, theirs = f"v1/configmaps/{namespace}/app", f"v1/configmaps/{other}/app"
    wait_for_subjects(remote, daemon, f"[CREATE] {mine}", f"[CREATE] {mine}", f"[CREATE] {theirs}")
    assert sorted(tree(remote)) == sorted(
        [
            f"team-a/{README}",
            f"team-a/{mine}.yaml",
            f"copy-a/{README}",
            f"copy-a/{mine}.yaml",
            f"team-b/{README}",
            f"team-b/{theirs}.yaml",
        ]
    )
    assert tree(remote)[f"team-a/{mine}.yaml"] == tree(remote)[f"copy-a/{mine}.yaml"]

    control_plane.kubectl("delete", "configmap", "app", "-n", namespace)
    wait_for_subjects(remote, daemon, f"[DELETE] {mine}", f"[DELETE] {mine}")
    apply(control_plane, configmap(other, "app", {"key": "changed"}))
    wait_for_subjects(remote, daemon, f"[UPDATE] {theirs}")
    assert sorted(tree(remote)) == sorted(
        [f"team-a/{README}", f"copy-a/{README}", f"team-b/{README}", f"team-b/{theirs}.yaml"]
    )
    assert manifest(tree(remote)[f"team-b/{theirs}.yaml"])["data"] == {"key": "changed"}

    # Each commit touches only the folder of the target it names.
    entries = history(remote)
    assert Counter(entry.subject for entry in entries) == Counter(
        {
            f"[CREATE] {mine}": 2,
            f"[CREATE] {theirs}": 1,
            f"[DELETE] {mine}": 2,
            f"[UPDATE] {theirs}": 1,
        }
    )
    for entry in entries:
        owner = next(line for line in entry.body.splitlines() if line.startswith("target: "))
        folder = folders[owner.removeprefix("target: ")]
        assert all(path.startswith(folder) for path in changed_paths(remote, entry.sha)), entry

    # Every target has mirrored changes: each must say it is ready and live.
    for ns, name in targets:
        found = conditions(control_plane, "gittarget", name, ns)
        assert {kind: found[kind]["status"] for kind in ("Ready", "SnapshotSynced")} == {
            "Ready": "True",
            "SnapshotSynced": "True",
        }, f"{ns}/{name}: {found}"


def test_dotted_long_and_generated_names_map_to_valid_stable_file_names(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
    tmp_path: Path,
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_live(control_plane, namespace)
    folder = f"live-cluster/v1/configmaps/{namespace}/"
    dotted = "app.config.v1"
    # The longest name a ConfigMap may have: a 253-character DNS subdomain.
    longest = ".".join(["x" * 63, "y" * 63, "z" * 63, "w" * 61])
    assert len(longest) == 253

    apply(control_plane, configmap(namespace, dotted), configmap(namespace, longest))
    created = control_plane.kubectl(
        "create",
        "-o",
        "name",
        "-f",
        "-",
        stdin=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"generateName": "gen-", "namespace": namespace},
                "data": {"key": "generated"},
            }
        ),
    )
    generated = created.strip().removeprefix("configmap/")
    assert generated.startswith("gen-") and len(generated) > len("gen-")
    wait_for_subjects(
        remote,
        daemon,
        f"[CREATE] v1/configmaps/{namespace}/{dotted}",
        f"[CREATE] v1/configmaps/{namespace}/{longest}",
        f"[CREATE] v1/configmaps/{namespace}/{generated}",
    )

    files = {p: c for p, c in tree(remote).items() if p.startswith(folder)}
    assert manifest(files[f"{folder}{dotted}.yaml"])["metadata"]["name"] == dotted
    # generateName objects are written under their final name, without the generateName field.
    assert manifest(files[f"{folder}{generated}.yaml"]) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": generated, "namespace": namespace},
        "data": {"key": "generated"},
    }
    by_name = {manifest(content)["metadata"]["name"]: path for path, content in files.items()}
    assert set(by_name) == {dotted, longest, generated}
    paths = dict(by_name)

    # Stable: updates before and after a restart rewrite the same files, nothing else.
    apply(control_plane, configmap(namespace, longest, {"key": "v2"}))
    wait_for_subjects(remote, daemon, f"[UPDATE] v1/configmaps/{namespace}/{longest}")
    daemon.stop()
    daemon.start()
    apply(
        control_plane,
        configmap(namespace, longest, {"key": "v3"}),
        configmap(namespace, dotted, {"key": "v3"}),
    )
    wait_for_subjects(
        remote,
        daemon,
        f"[UPDATE] v1/configmaps/{namespace}/{dotted}",
        f"[UPDATE] v1/configmaps/{namespace}/{longest}",
        f"[UPDATE] v1/configmaps/{namespace}/{longest}",
    )
    files = {p: c for p, c in tree(remote).items() if p.startswith(folder)}
    assert sorted(files) == sorted(paths.values())
    assert manifest(files[paths[longest]])["data"] == {"key": "v3"}
    assert len(subjects(remote)) == 6

    last_with_long_name = history(remote)[-1].sha
    control_plane.kubectl("delete", "configmap", longest, "-n", namespace)
    wait_for_subjects(remote, daemon, f"[DELETE] v1/configmaps/{namespace}/{longest}")
    assert sorted(p for p in tree(remote) if p.startswith(folder)) == sorted(
        [paths[dotted], paths[generated]]
    )

    # Valid: every file name fits the 255-byte limit of common file systems, so the branch can
    # be checked out (and applied with kubectl) anywhere.
    too_long = [
        p for p in tree_at(remote, last_with_long_name) if len(p.rsplit("/", 1)[-1].encode()) > 255
    ]
    assert not too_long, f"file names longer than 255 bytes: {too_long}"
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(remote.path), str(checkout)], check=True)
    switched = subprocess.run(
        ["git", "-C", str(checkout), "checkout", "-q", last_with_long_name],
        capture_output=True,
        text=True,
    )
    assert switched.returncode == 0, switched.stderr
    assert (checkout / paths[longest]).read_bytes() == files[paths[longest]]


# --------------------------------------------------------------------------------------------
# B. Noise and sanitization


def test_status_managed_fields_stripped_annotations_and_dry_runs_make_no_commit(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    group = f"{uuid.uuid4().hex[:8]}.noise.test"
    install_crd(control_plane, group, "gadgets", "Gadget", status=True)
    cleanup.cluster_objects.append(("crd", f"gadgets.{group}"))
    gadgets = f"gadgets.{group}"
    apply(
        control_plane,
        *mirror_setup(
            namespace,
            remote.url,
            secret=remote.secret,
            rules=[
                {"resources": ["configmaps"]},
                {"apiGroups": ["apps"], "resources": ["deployments"]},
                {"apiGroups": [group], "resources": ["gadgets"]},
            ],
        ),
    )
    daemon.start()
    wait_live(control_plane, namespace)
    cm_subject = f"v1/configmaps/{namespace}"
    folder = f"live-cluster/v1/configmaps/{namespace}"

    def kubectl(*args: str, stdin: str | None = None) -> str:
        return control_plane.kubectl(*args, "-n", namespace, stdin=stdin)

    def then_only(real_change: Callable[[], object], subject: str) -> LogEntry:
        """Make a real change and check it is the one commit since ``before``."""
        before = subjects(remote)
        real_change()
        wait_for_subjects(remote, daemon, *before, subject)
        assert subjects(remote) == [*before, subject]
        return history(remote)[-1]

    # B20: the first update after a create changes only the line that changed.
    stable = configmap(namespace, "stable", {"alpha": "one", "beta": "two", "gamma": "three"})
    then_only(lambda: apply(control_plane, stable), f"[CREATE] {cm_subject}/stable")
    created = tree(remote)[f"{folder}/stable.yaml"]
    update = then_only(
        lambda: kubectl(
            "patch", "configmap", "stable", "--type=merge", "-p", '{"data":{"beta":"2"}}'
        ),
        f"[UPDATE] {cm_subject}/stable",
    )
    updated = tree(remote)[f"{folder}/stable.yaml"]
    assert changed_paths(remote, update.sha) == {f"{folder}/stable.yaml"}
    diff = [
        line
        for line in difflib.unified_diff(
            created.decode().splitlines(), updated.decode().splitlines(), lineterm="", n=0
        )
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert diff == ["-  beta: two", "+  beta: '2'"]

    # B15: a status-only change of a custom resource with a status subresource.
    then_only(
        lambda: apply(
            control_plane,
            {
                "apiVersion": f"{group}/v1",
                "kind": "Gadget",
                "metadata": {"name": "g1", "namespace": namespace},
                "spec": {"size": 1},
            },
        ),
        f"[CREATE] {group}/v1/gadgets/{namespace}/g1",
    )
    version = resource_version(control_plane, gadgets, "g1", namespace)
    kubectl(
        "patch",
        gadgets,
        "g1",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"phase":"Running","observed":7}}',
    )
    assert resource_version(control_plane, gadgets, "g1", namespace) != version
    then_only(
        lambda: kubectl("patch", gadgets, "g1", "--type=merge", "-p", '{"spec":{"size":2}}'),
        f"[UPDATE] {group}/v1/gadgets/{namespace}/g1",
    )
    assert manifest(tree(remote)[f"live-cluster/{group}/v1/gadgets/{namespace}/g1.yaml"]) == {
        "apiVersion": f"{group}/v1",
        "kind": "Gadget",
        "metadata": {"name": "g1", "namespace": namespace},
        "spec": {"size": 2},
    }

    # B16: managedFields only (server-side apply of identical content by another manager),
    # stripped annotations only, and the last-applied annotation only.
    version = resource_version(control_plane, "configmap", "stable", namespace)
    same = {**stable, "data": {"alpha": "one", "beta": "2", "gamma": "three"}}
    kubectl("apply", "--server-side", "--field-manager=probe", "-f", "-", stdin=json.dumps(same))
    after_ssa = resource_version(control_plane, "configmap", "stable", namespace)
    assert after_ssa != version
    kubectl("annotate", "configmap", "stable", "deployment.kubernetes.io/revision=3")
    kubectl("annotate", "configmap", "stable", "argocd.argoproj.io/tracking-id=app:/ConfigMap")
    assert resource_version(control_plane, "configmap", "stable", namespace) != after_ssa
    then_only(
        lambda: kubectl("label", "configmap", "stable", "team=a"),
        f"[UPDATE] {cm_subject}/stable",
    )
    labelled = {**same, "metadata": {**same["metadata"], "labels": {"team": "a"}}}
    version = resource_version(control_plane, "configmap", "stable", namespace)
    kubectl("apply", "-f", "-", stdin=json.dumps(labelled))
    last_applied = get_json(control_plane, "configmap", "stable", namespace)["metadata"]
    assert "kubectl.kubernetes.io/last-applied-configuration" in last_applied["annotations"]
    assert last_applied["resourceVersion"] != version
    then_only(
        lambda: kubectl(
            "patch", "configmap", "stable", "--type=merge", "-p", '{"data":{"beta":"3"}}'
        ),
        f"[UPDATE] {cm_subject}/stable",
    )
    assert manifest(tree(remote)[f"{folder}/stable.yaml"]) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "stable", "namespace": namespace, "labels": {"team": "a"}},
        "data": {"alpha": "one", "beta": "3", "gamma": "three"},
    }

    # B16 on a Deployment: the controller's revision annotation and a rollout-restart stamp in
    # the pod template.
    then_only(
        lambda: apply(control_plane, deployment(namespace, "web")),
        f"[CREATE] apps/v1/deployments/{namespace}/web",
    )
    version = resource_version(control_plane, "deployment", "web", namespace)
    kubectl("annotate", "deployment", "web", "deployment.kubernetes.io/revision=1")
    kubectl(
        "patch",
        "deployment",
        "web",
        "--type=merge",
        "-p",
        json.dumps(
            {
                "spec": {
                    "template": {
                        "metadata": {
                            "annotations": {
                                "kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"
                            }
                        }
                    }
                }
            }
        ),
    )
    assert resource_version(control_plane, "deployment", "web", namespace) != version
    then_only(
        lambda: kubectl("scale", "deployment", "web", "--replicas=3"),
        f"[UPDATE] apps/v1/deployments/{namespace}/web",
    )

    # B21: server-side dry runs of a create and of an update write nothing.
    kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        stdin=json.dumps(configmap(namespace, "dry")),
    )
    kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        stdin=json.dumps({**labelled, "data": {"alpha": "dry"}}),
    )
    then_only(
        lambda: apply(control_plane, configmap(namespace, "after-dry")),
        f"[CREATE] {cm_subject}/after-dry",
    )
    files = tree(remote)
    assert f"{folder}/dry.yaml" not in files
    assert manifest(files[f"{folder}/stable.yaml"])["data"]["alpha"] == "one"


def deployment(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "nginx:1.27",
                            "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                        }
                    ],
                    "volumes": [{"name": "cache", "emptyDir": {}}],
                },
            },
        },
    }


def test_sanitized_files_keep_intent_and_never_hold_cluster_noise(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    rule = unique("storage")
    storage_class = unique("fast")
    cleanup.cluster_objects += [("clusterwatchrule", rule), ("storageclass", storage_class)]
    apply(
        control_plane,
        *mirror_setup(
            namespace,
            remote.url,
            secret=remote.secret,
            rules=[
                {"resources": ["configmaps", "services"]},
                {"apiGroups": ["apps"], "resources": ["deployments"]},
            ],
        ),
        cluster_watch_rule(
            rule,
            namespace,
            "mirror",
            [
                {
                    "scope": "Cluster",
                    "apiGroups": ["storage.k8s.io"],
                    "resources": ["storageclasses"],
                }
            ],
        ),
    )
    daemon.start()
    wait_live(control_plane, namespace)

    applied = configmap(namespace, "applied", {"password": "hunter2"})
    applied["metadata"]["labels"] = {"team": "a"}
    applied["metadata"]["annotations"] = {"argocd.argoproj.io/sync-wave": "1"}
    # B17: created and then changed with kubectl apply, which keeps a copy of the whole object
    # in the last-applied annotation.
    control_plane.kubectl("apply", "-f", "-", stdin=json.dumps(applied))
    frozen = {**configmap(namespace, "frozen"), "immutable": True}
    apply(
        control_plane,
        frozen,
        service(namespace, "headless", headless=True),
        service(namespace, "normal"),
        deployment(namespace, "web"),
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": storage_class},
            "provisioner": "example.com/fast",
            "parameters": {"tier": "gold"},
        },
    )
    applied["data"] = {"password": "hunter3"}
    control_plane.kubectl("apply", "-f", "-", stdin=json.dumps(applied))
    base = "live-cluster"
    wait_for_subjects(
        remote,
        daemon,
        f"[CREATE] v1/configmaps/{namespace}/applied",
        f"[UPDATE] v1/configmaps/{namespace}/applied",
        f"[CREATE] v1/configmaps/{namespace}/frozen",
        f"[CREATE] v1/services/{namespace}/headless",
        f"[CREATE] v1/services/{namespace}/normal",
        f"[CREATE] apps/v1/deployments/{namespace}/web",
        f"[CREATE] storage.k8s.io/v1/storageclasses/{storage_class}",
    )
    files = tree(remote)

    assert manifest(files[f"{base}/v1/configmaps/{namespace}/applied.yaml"]) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "applied",
            "namespace": namespace,
            "labels": {"team": "a"},
            "annotations": {"argocd.argoproj.io/sync-wave": "1"},
        },
        "data": {"password": "hunter3"},
    }
    for entry in history(remote):
        for path, content in tree_at(remote, entry.sha).items():
            assert b"last-applied-configuration" not in content, (entry.subject, path)

    assert manifest(files[f"{base}/v1/configmaps/{namespace}/frozen.yaml"]) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "frozen", "namespace": namespace},
        "data": {"key": "frozen"},
        "immutable": True,
    }

    headless = manifest(files[f"{base}/v1/services/{namespace}/headless.yaml"])["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["clusterIPs"] == ["None"]
    live_normal = get_json(control_plane, "service", "normal", namespace)["spec"]
    assert live_normal["clusterIP"].startswith("10.0.0.")
    assert manifest(files[f"{base}/v1/services/{namespace}/normal.yaml"])["spec"] == {
        "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}],
        "selector": {"app": "normal"},
        "sessionAffinity": "None",
        "type": "ClusterIP",
    }

    web = manifest(files[f"{base}/apps/v1/deployments/{namespace}/web.yaml"])
    assert web["spec"]["template"]["spec"]["volumes"] == [{"name": "cache", "emptyDir": {}}]
    assert web["spec"]["template"]["metadata"] == {"labels": {"app": "web"}}
    assert "status" not in web
    assert set(web["metadata"]) == {"name", "namespace"}

    assert manifest(files[f"{base}/storage.k8s.io/v1/storageclasses/{storage_class}.yaml"]) == {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": storage_class},
        "provisioner": "example.com/fast",
        "parameters": {"tier": "gold"},
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


# --------------------------------------------------------------------------------------------
# C. Bursts and ordering


def test_create_update_delete_in_quick_succession_leave_no_file_and_only_real_states(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_live(control_plane, namespace)
    names = [f"rapid-{index}" for index in range(3)]
    objects = [configmap(namespace, name, {"state": "first"}) for name in names]
    create_many(control_plane, objects, "configmaps")
    patch_many(control_plane, objects, "configmaps", {"data": {"state": "second"}})
    delete_many(control_plane, objects, "configmaps")

    expected = [
        f"[{op}] v1/configmaps/{namespace}/{n}"
        for n in names
        for op in ("CREATE", "UPDATE", "DELETE")
    ]
    wait_for_subjects(remote, daemon, *expected)
    entries = history(remote)
    assert sorted(entry.subject for entry in entries) == sorted(expected)
    for name in names:
        path = f"live-cluster/v1/configmaps/{namespace}/{name}.yaml"
        mine = [e for e in entries if e.subject.endswith(f"/{name}")]
        assert [e.subject.split("]")[0] + "]" for e in mine] == ["[CREATE]", "[UPDATE]", "[DELETE]"]
        first, second, gone = (tree_at(remote, e.sha) for e in mine)
        assert manifest(first[path])["data"] == {"state": "first"}
        assert manifest(second[path])["data"] == {"state": "second"}
        assert path not in gone
    assert sorted(tree(remote)) == [f"live-cluster/{README}"]


def test_burst_of_1000_objects_all_reach_git_exactly_once(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    count = 1000
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_live(control_plane, namespace)
    names = [f"burst-{index:04d}" for index in range(count)]
    create_many(control_plane, [configmap(namespace, name) for name in names], "configmaps")

    folder = f"live-cluster/v1/configmaps/{namespace}/"
    wait_until(
        lambda: len([p for p in tree(remote) if p.startswith(folder)]) == count,
        240,
        lambda: (
            f"{len([p for p in tree(remote) if p.startswith(folder)])} of {count} files; "
            f"log: {daemon.log_tail()}"
        ),
    )
    # Let a duplicate or a late extra commit show up if there were to be one.
    time.sleep(3)
    found = Counter(subjects(remote))
    assert found == Counter({f"[CREATE] v1/configmaps/{namespace}/{name}": 1 for name in names})
    files = tree(remote)
    assert sorted(files) == sorted(
        [f"live-cluster/{README}", *(f"{folder}{n}.yaml" for n in names)]
    )
    for name in names:
        assert manifest(files[f"{folder}{name}.yaml"])["data"] == {"key": name}


def test_object_recreated_with_identical_content_is_deleted_then_created(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_live(control_plane, namespace)
    phoenix = configmap(namespace, "phoenix", {"color": "red"})
    subject = f"v1/configmaps/{namespace}/phoenix"
    path = f"live-cluster/{subject}.yaml"
    create_many(control_plane, [phoenix], "configmaps")
    wait_for_subjects(remote, daemon, f"[CREATE] {subject}")
    first_uid = get_json(control_plane, "configmap", "phoenix", namespace)["metadata"]["uid"]
    content = tree(remote)[path]

    delete_many(control_plane, [phoenix], "configmaps")
    create_many(control_plane, [phoenix], "configmaps")
    second_uid = get_json(control_plane, "configmap", "phoenix", namespace)["metadata"]["uid"]
    assert second_uid != first_uid
    wait_for_subjects(
        remote, daemon, f"[CREATE] {subject}", f"[DELETE] {subject}", f"[CREATE] {subject}"
    )

    entries = history(remote)
    assert [e.subject for e in entries] == [
        f"[CREATE] {subject}",
        f"[DELETE] {subject}",
        f"[CREATE] {subject}",
    ]
    assert f"uid: {first_uid}" in entries[0].body.splitlines()
    assert f"uid: {first_uid}" in entries[1].body.splitlines()
    assert f"uid: {second_uid}" in entries[2].body.splitlines()
    assert path not in tree_at(remote, entries[1].sha)
    assert tree(remote)[path] == content


# --------------------------------------------------------------------------------------------
# E. Targets, rules and configuration


def test_target_created_before_its_provider_says_why_and_starts_when_it_appears(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    provider_cr, target_cr, rule_cr = mirror_setup(namespace, remote.url, secret=remote.secret)
    apply(control_plane, target_cr, rule_cr, configmap(namespace, "early"))
    daemon.start()
    validated = wait_condition(
        control_plane, "gittarget", "mirror", namespace, "Validated", "False", "GitProviderNotFound"
    )
    assert "mirror" in validated["message"] and namespace in validated["message"]
    ready = conditions(control_plane, "gittarget", "mirror", namespace)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "GitProviderNotFound")
    wait_condition(
        control_plane, "watchrule", "mirror", namespace, "Ready", "False", "GitProviderNotFound"
    )
    # Changes while waiting are kept for the target.
    apply(control_plane, configmap(namespace, "waiting"))
    time.sleep(2)
    assert branches(remote) == []

    apply(control_plane, provider_cr)
    appeared = time.monotonic()
    wait_condition(control_plane, "gittarget", "mirror", namespace, "Validated", "True", timeout=10)
    validated_after = time.monotonic() - appeared
    folder = f"live-cluster/v1/configmaps/{namespace}"
    wait_until(
        lambda: {f"{folder}/early.yaml", f"{folder}/waiting.yaml"} <= tree(remote).keys(),
        15,
        lambda: f"tree {sorted(tree(remote))}; log: {daemon.log_tail()}",
    )
    pushed_after = time.monotonic() - appeared
    assert validated_after < 5, validated_after
    assert pushed_after < 15, pushed_after
    assert subjects(remote) == ["reconcile: sync 2 resources"]
    wait_live(control_plane, namespace)
    wait_condition(control_plane, "watchrule", "mirror", namespace, "Ready", "True")


def test_branch_outside_allowed_branches_is_refused(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    cms = [{"resources": ["configmaps"]}]
    apply(
        control_plane,
        provider(namespace, "p", remote.url, remote.secret, branches=["main", "release/*"]),
        target(namespace, "feature", "p", "feature", branch="feature/x"),
        target(namespace, "deep", "p", "deep", branch="release/a/b"),
        target(namespace, "release", "p", "rel", branch="release/1"),
        watch_rule(namespace, "feature", "feature", cms),
        watch_rule(namespace, "deep", "deep", cms),
        watch_rule(namespace, "release", "release", cms),
        configmap(namespace, "app"),
    )
    daemon.start()
    for name, branch in (("feature", "feature/x"), ("deep", "release/a/b")):
        refused = wait_condition(
            control_plane, "gittarget", name, namespace, "Validated", "False", "BranchNotAllowed"
        )
        assert branch in refused["message"] and "release/*" in refused["message"]
        ready = conditions(control_plane, "gittarget", name, namespace)["Ready"]
        assert (ready["status"], ready["reason"]) == ("False", "BranchNotAllowed")
        wait_condition(control_plane, "watchrule", name, namespace, "Ready", "False")
    # The allowed branch works, so the refusals are about the branches only.
    wait_live(control_plane, namespace, "release")
    wait_until(lambda: subjects(remote, "release/1") == ["reconcile: sync 1 resources"], 15)
    assert sorted(tree(remote, "release/1")) == [
        f"rel/{README}",
        f"rel/v1/configmaps/{namespace}/app.yaml",
    ]
    assert branches(remote) == ["release/1"]


def test_invalid_target_paths_are_refused_and_nothing_is_written(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    cms = [{"resources": ["configmaps"]}]
    invalid = {
        "parent": "../x",
        "absolute": "/abs",
        "inner-parent": "x/../y",
        "empty-segment": "a//b",
        "git-dir": "a/.git/b",
        "backslash": "a\\b",
    }
    objects: list[dict[str, Any]] = [provider(namespace, "p", remote.url, remote.secret)]
    for name, path in invalid.items():
        objects += [target(namespace, name, "p", path), watch_rule(namespace, name, name, cms)]
    objects += [
        target(namespace, "valid", "p", "fine"),
        watch_rule(namespace, "valid", "valid", cms),
    ]
    apply(control_plane, *objects, configmap(namespace, "app"))
    daemon.start()
    for name, path in invalid.items():
        refused = wait_condition(
            control_plane, "gittarget", name, namespace, "Validated", "False", "InvalidPath"
        )
        assert repr(path) in refused["message"] or path in refused["message"], refused
        stored = get_json(control_plane, "gittarget", name, namespace)["spec"]["path"]
        assert stored == path  # refused, not rewritten
    wait_live(control_plane, namespace, "valid")
    wait_until(lambda: subjects(remote) == ["reconcile: sync 1 resources"], 15)
    time.sleep(2)
    assert branches(remote) == ["main"]
    assert sorted(tree(remote)) == [f"fine/{README}", f"fine/v1/configmaps/{namespace}/app.yaml"]
    assert subjects(remote) == ["reconcile: sync 1 resources"]


def test_second_target_on_the_same_or_a_nested_folder_is_refused_with_conflict(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    cms = [{"resources": ["configmaps"]}]
    apply(
        control_plane,
        provider(namespace, "p1", remote.url, remote.secret),
        provider(namespace, "p2", remote.url, remote.secret),
        target(namespace, "first", "p1", "live"),
        watch_rule(namespace, "first", "first", cms),
    )
    # creationTimestamp has a resolution of one second: make "first" unambiguously earlier.
    time.sleep(1.2)
    apply(
        control_plane,
        target(namespace, "same", "p2", "live"),
        target(namespace, "nested", "p1", "live/team"),
        watch_rule(namespace, "same", "same", cms),
        watch_rule(namespace, "nested", "nested", cms),
    )
    daemon.start()
    wait_live(control_plane, namespace, "first")
    for name in ("same", "nested"):
        refused = wait_condition(
            control_plane, "gittarget", name, namespace, "Validated", "False", "Conflict"
        )
        assert f"{namespace}/first" in refused["message"], refused
        ready = conditions(control_plane, "gittarget", name, namespace)["Ready"]
        assert (ready["status"], ready["reason"]) == ("False", "Conflict")

    apply(control_plane, configmap(namespace, "app"))
    wait_for_subjects(remote, daemon, f"[CREATE] v1/configmaps/{namespace}/app")
    time.sleep(2)
    assert subjects(remote) == [f"[CREATE] v1/configmaps/{namespace}/app"]
    assert sorted(tree(remote)) == [f"live/{README}", f"live/v1/configmaps/{namespace}/app.yaml"]


def test_secret_without_encryption_is_not_written_and_is_counted(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    apply(
        control_plane,
        *mirror_setup(
            namespace,
            remote.url,
            secret=remote.secret,
            rules=[{"resources": ["secrets", "configmaps"]}],
        ),
    )
    daemon.start()
    wait_live(control_plane, namespace)
    encryption = conditions(control_plane, "gittarget", "mirror", namespace)["EncryptionConfigured"]
    assert "Secrets" in encryption["message"] and "not written" in encryption["message"]
    skipped = "reverserd_secrets_skipped_total"
    label = {"target": f"{namespace}/mirror"}
    at_start = daemon.metric(skipped, **label)

    control_plane.kubectl(
        "create", "secret", "generic", "db", "-n", namespace, "--from-literal=password=s3cr3t-value"
    )
    wait_until(
        lambda: daemon.metric(skipped, **label) == at_start + 1,
        30,
        lambda: f"{skipped} = {daemon.metric(skipped, **label)}; log: {daemon.log_tail()}",
    )
    apply(control_plane, configmap(namespace, "after"))
    wait_for_subjects(remote, daemon, f"[CREATE] v1/configmaps/{namespace}/after")
    assert subjects(remote) == [f"[CREATE] v1/configmaps/{namespace}/after"]
    assert sorted(tree(remote)) == [
        f"live-cluster/{README}",
        f"live-cluster/v1/configmaps/{namespace}/after.yaml",
    ]
    for entry in history(remote):
        assert all(b"s3cr3t-value" not in c for c in tree_at(remote, entry.sha).values())
    assert daemon.metric(skipped, **label) == at_start + 1
    # The credentials Secret was selected by the rule when the target started and was not
    # written either: it counts as well.
    assert at_start == 1, f"{skipped} after the initial reconcile: {at_start}"


def test_quiet_cluster_makes_no_status_writes(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    rule = unique("quiet")
    cleanup.cluster_objects.append(("clusterwatchrule", rule))
    apply(
        control_plane,
        *mirror_setup(namespace, remote.url, secret=remote.secret),
        cluster_watch_rule(
            rule,
            namespace,
            "mirror",
            [
                {
                    "scope": "Cluster",
                    "apiGroups": ["scheduling.k8s.io"],
                    "resources": ["priorityclasses"],
                }
            ],
        ),
        # Objects whose status stays False: they must be just as quiet.
        target(namespace, "orphan", "missing", "orphan"),
        watch_rule(namespace, "orphan", "orphan", [{"resources": ["configmaps"]}]),
        target(namespace, "wrong-branch", "mirror", "other", branch="not-allowed"),
        watch_rule(
            namespace,
            "unserved",
            "mirror",
            [{"apiGroups": ["nothere.example.com"], "resources": ["things"]}],
        ),
    )
    daemon.start()
    wait_live(control_plane, namespace)
    apply(control_plane, configmap(namespace, "app"))
    wait_for_subjects(remote, daemon, f"[CREATE] v1/configmaps/{namespace}/app")
    wait_until(
        lambda: (
            get_json(control_plane, "gittarget", "mirror", namespace)["status"].get("lastCommit")
            == branch_tip(remote.path, "main")
        ),
        30,
    )
    wait_condition(
        control_plane, "gittarget", "orphan", namespace, "Validated", "False", "GitProviderNotFound"
    )
    wait_condition(
        control_plane,
        "gittarget",
        "wrong-branch",
        namespace,
        "Validated",
        "False",
        "BranchNotAllowed",
    )
    wait_condition(
        control_plane, "watchrule", "unserved", namespace, "Ready", "False", "ResourceNotServed"
    )
    wait_condition(control_plane, "clusterwatchrule", rule, None, "Ready", "True")
    wait_condition(control_plane, "gitprovider", "mirror", namespace, "Ready", "True")

    writes = "reverserd_status_writes_total"

    def versions() -> dict[str, str]:
        items = json.loads(
            control_plane.kubectl(
                "get", "gitproviders,gittargets,watchrules", "-n", namespace, "-o", "json"
            )
        )["items"]
        items.append(get_json(control_plane, "clusterwatchrule", rule, None))
        return {
            f"{i['kind']}/{i['metadata']['name']}": i["metadata"]["resourceVersion"] for i in items
        }

    # Settled: no status write for longer than the status writer's retry period (5 s).
    def settled() -> bool:
        first = daemon.metric(writes)
        time.sleep(7)
        return daemon.metric(writes) == first

    wait_until(settled, 60, lambda: f"{writes} still moving: {daemon.metric(writes)}")
    before, versions_before = daemon.metric(writes), versions()
    assert before > 0
    time.sleep(QUIET_S)
    assert daemon.metric(writes) == before
    assert versions() == versions_before
    assert subjects(remote) == [
        "reconcile: sync 2 resources",
        f"[CREATE] v1/configmaps/{namespace}/app",
    ]
