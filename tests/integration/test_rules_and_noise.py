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
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pygit2
import pytest
import yaml

from testbed.controlplane import ControlPlane
from testbed.gitservers import GitHttpServer, LogEntry, changed_paths, read_tree_at
from testbed.harness import (
    Reverserd,
    apply,
    conditions,
    create_git_credentials,
    create_many,
    create_namespace,
    delete_many,
    get_object,
    history,
    kubectl_json,
    later_change,
    logged_by_reverserd,
    merge_patch,
    patch_many,
    query_journal,
    resource_status,
    subjects,
    tree,
    wait_condition,
    wait_for_subjects,
    wait_last_commit_is_tip,
    wait_target_refused,
    wait_until,
)
from testbed.manifests import (
    cluster_watch_rule,
    configmap,
    crd,
    custom_object,
    deployment,
    git_provider,
    git_target,
    mirror_setup,
    watch_rule,
)
from tests.conftest import Cleanup, Remote

README = "README.md"
# How long a noise-free stretch is watched for status writes.
QUIET_S = 60.0


# --------------------------------------------------------------------------------------------
# Custom resources


def provider_and_target(namespace: str, remote: Remote, path: str = "live-cluster") -> list[Any]:
    """The GitProvider and GitTarget ``mirror`` of :func:`mirror_setup`, without its WatchRule."""
    return mirror_setup(namespace, remote.url, secret=remote.secret, path=path)[:2]


def cluster_scoped(api_group: str, resource: str) -> dict[str, Any]:
    """A ClusterWatchRule rule selecting the cluster-scoped ``resource`` of ``api_group``."""
    return {"scope": "Cluster", "apiGroups": [api_group], "resources": [resource]}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def mirror_cluster_rule(
    cleanup: Cleanup, namespace: str, rules: list[dict[str, Any]]
) -> tuple[str, dict[str, Any]]:
    """A uniquely named ClusterWatchRule of ``rules`` for the GitTarget ``namespace/mirror``,
    deleted at teardown: its name and manifest."""
    rule = unique("cwr")
    cleanup.cluster_objects.append(("clusterwatchrule", rule))
    return rule, cluster_watch_rule(rule, namespace, "mirror", rules)


# --------------------------------------------------------------------------------------------
# Reading the remote


def branches(remote: Remote) -> list[str]:
    repo = pygit2.Repository(str(remote.path))
    return sorted(ref.removeprefix("refs/heads/") for ref in repo.references if "heads/" in ref)


def manifest(content: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(content)
    return loaded


# --------------------------------------------------------------------------------------------
# Reading the cluster


def resource_version(plane: ControlPlane, kind: str, namespace: str, name: str) -> str:
    return str(get_object(plane, kind, namespace, name)["metadata"]["resourceVersion"])


def wait_snapshot_stats(
    plane: ControlPlane, namespace: str, created: int = 0, updated: int = 0, deleted: int = 0
) -> None:
    """Wait until the GitTarget ``mirror`` shows these counts of its last reconcile."""
    wanted = {"created": created, "updated": updated, "deleted": deleted}
    wait_until(
        lambda: (
            get_object(plane, "gittarget", namespace, "mirror")["status"]
            .get("snapshot", {})
            .get("stats")
            == wanted
        ),
        10,
        lambda: str(get_object(plane, "gittarget", namespace, "mirror")["status"]),
    )


def wait_live(plane: ControlPlane, namespace: str, name: str = "mirror") -> None:
    """The target's initial reconcile is pushed and it commits changes as they happen."""
    wait_condition(plane, "gittarget", namespace, name, "EventStreamLive", "True")
    wait_condition(plane, "gittarget", namespace, name, "Ready", "True")


pytestmark = pytest.mark.usefixtures("cleanup")


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
    rule, rule_manifest = mirror_cluster_rule(
        cleanup,
        namespace,
        [
            cluster_scoped("rbac.authorization.k8s.io", "clusterroles"),
            {"scope": "Namespaced", "resources": ["limitranges"]},
        ],
    )
    apply(
        control_plane,
        *provider_and_target(namespace, remote),
        rule_manifest,
        limit_range(namespace, "limits"),
        limit_range(other, "limits"),
    )
    daemon.start()
    wait_live(control_plane, namespace)
    wait_condition(control_plane, "clusterwatchrule", None, rule, "Ready", "True")
    roles_dir = "live-cluster/rbac.authorization.k8s.io/v1/clusterroles/"
    ranges_dir = "live-cluster/v1/limitranges/"

    # The initial reconcile writes every cluster role (no namespace segment) and the limit
    # ranges of both namespaces (that it is one commit is checked at the end).
    existing_roles = cluster_names(control_plane, "clusterroles")
    assert "reverserd" in existing_roles

    def initial_files() -> bool:
        files = tree(remote.path)
        return {p.removeprefix(roles_dir) for p in files if p.startswith(roles_dir)} == {
            f"{name}.yaml" for name in existing_roles
        } and {p for p in files if p.startswith(ranges_dir)} == {
            f"{ranges_dir}{namespace}/limits.yaml",
            f"{ranges_dir}{other}/limits.yaml",
        }

    wait_until(initial_files, 60, lambda: f"tree {sorted(tree(remote.path))}; {daemon.log_tail()}")
    # Settle the push before the next change, so that the history below is deterministic.
    wait_last_commit_is_tip(control_plane, namespace, remote.path, timeout=30)
    initial = subjects(remote.path)

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
    wait_for_subjects(remote.path, daemon, create_subject)
    role_path = f"{roles_dir}{role}.yaml"
    assert manifest(tree(remote.path)[role_path]) == {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": role, "labels": {"team": "a"}},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
    }
    assert changed_paths(remote.path, history(remote.path)[-1].sha) == {role_path}

    # A namespace created after the start is covered by the Namespaced rule as well.
    third = cleanup.new_namespace()
    apply(control_plane, limit_range(third, "limits"))
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/limitranges/{third}/limits")

    control_plane.kubectl("delete", "clusterrole", role)
    wait_for_subjects(
        remote.path, daemon, f"[DELETE] rbac.authorization.k8s.io/v1/clusterroles/{role}"
    )
    control_plane.kubectl("delete", "limitrange", "limits", "-n", other)
    wait_for_subjects(remote.path, daemon, f"[DELETE] v1/limitranges/{other}/limits")

    files = tree(remote.path)
    assert role_path not in files
    assert {p.removeprefix(roles_dir) for p in files if p.startswith(roles_dir)} == {
        f"{name}.yaml" for name in existing_roles
    }
    assert {p for p in files if p.startswith(ranges_dir)} == {
        f"{ranges_dir}{namespace}/limits.yaml",
        f"{ranges_dir}{third}/limits.yaml",
    }
    assert subjects(remote.path) == [
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
    cleanup.install_crd(crd(group, "widgets", "Widget"))
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
        custom_object(group, "Widget", namespace, "w1", {"size": 3}),
    )
    wait_for_subjects(
        remote.path,
        daemon,
        f"[CREATE] v1/configmaps/{namespace}/app",
        f"[CREATE] v1/podtemplates/{namespace}/tmpl",
        f"[CREATE] {group}/v1/widgets/{namespace}/w1",
    )
    # The excluded objects went in before the mirrored ones, and well before this later
    # change: a wrongly opened stream of theirs would have delivered by the time it lands.
    later = later_change(control_plane, namespace, remote.path, daemon)

    # Exactly: the core and custom objects, reverserd's own resources in the namespace (every
    # namespaced type of every group is selected), the README; no excluded type, no Secret
    # (the credentials Secret is selected but there is no encryption).
    base = "live-cluster"
    assert sorted(tree(remote.path)) == sorted(
        [
            f"{base}/{README}",
            f"{base}/v1/configmaps/{namespace}/app.yaml",
            f"{base}/v1/configmaps/{namespace}/later.yaml",
            f"{base}/v1/podtemplates/{namespace}/tmpl.yaml",
            f"{base}/{group}/v1/widgets/{namespace}/w1.yaml",
            f"{base}/configbutler.ai/v1alpha1/gitproviders/{namespace}/mirror.yaml",
            f"{base}/configbutler.ai/v1alpha1/gittargets/{namespace}/mirror.yaml",
            f"{base}/configbutler.ai/v1alpha1/watchrules/{namespace}/mirror.yaml",
        ]
    )
    assert manifest(tree(remote.path)[f"{base}/{group}/v1/widgets/{namespace}/w1.yaml"]) == {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": namespace},
        "spec": {"size": 3},
    }
    # One commit per object; the three types are separate streams, so in any order.
    found = subjects(remote.path)
    assert sorted(s for s in found if not s.startswith("reconcile:")) == sorted(
        [
            f"[CREATE] v1/configmaps/{namespace}/app",
            f"[CREATE] v1/podtemplates/{namespace}/tmpl",
            f"[CREATE] {group}/v1/widgets/{namespace}/w1",
            later,
        ]
    )
    # SPEC 4: the first sync of a target (here over every served namespaced type) is one commit.
    assert found[0] == "reconcile: sync 3 resources", found
    assert len(found) == 5, found


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
    wait_for_subjects(remote.path, daemon, "reconcile: sync 1 resources")
    services = f"live-cluster/v1/services/{namespace}"
    assert not [path for path in tree(remote.path) if path.startswith(services)]

    apply(control_plane, watch_rule(namespace, "services", "mirror", [{"resources": ["services"]}]))
    wait_for_subjects(remote.path, daemon, "reconcile: sync 2 resources")
    backfill = history(remote.path)[-1]
    assert backfill.subject == "reconcile: sync 2 resources"
    assert changed_paths(remote.path, backfill.sha) == {
        f"{services}/api.yaml",
        f"{services}/db.yaml",
    }
    assert manifest(tree(remote.path)[f"{services}/api.yaml"])["metadata"] == {
        "name": "api",
        "namespace": namespace,
    }

    # The target keeps committing both types one change at a time, and the status tells what
    # the backfill wrote.
    apply(control_plane, service(namespace, "cache"), configmap(namespace, "more"))
    wait_for_subjects(
        remote.path,
        daemon,
        f"[CREATE] v1/services/{namespace}/cache",
        f"[CREATE] v1/configmaps/{namespace}/more",
    )
    assert sorted(subjects(remote.path)[:2]) == [
        "reconcile: sync 1 resources",
        "reconcile: sync 2 resources",
    ]
    assert len(subjects(remote.path)) == 4
    wait_snapshot_stats(control_plane, namespace, created=2)
    wait_condition(control_plane, "watchrule", namespace, "services", "Ready", "True")


def labelled(manifest_: dict[str, Any], labels: dict[str, str], **metadata: Any) -> dict[str, Any]:
    """``manifest_`` with ``labels`` and any other ``metadata`` fields set."""
    return {**manifest_, "metadata": {**manifest_["metadata"], "labels": labels, **metadata}}


def test_object_selector_writes_what_matches_keeps_what_stops_and_skips_controlled_objects(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
) -> None:
    mirrored = {"mirror": "yes"}
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": str(uuid.uuid4())}
    rule = {"resources": ["configmaps"], "objectSelector": {"matchLabels": mirrored}}
    apply(
        control_plane,
        *mirror_setup(
            namespace, remote.url, secret=remote.secret, rules=[{**rule, "skipControlled": True}]
        ),
        labelled(configmap(namespace, "chosen"), mirrored),
        labelled(configmap(namespace, "unlabelled"), {}),
        # There is no controller manager in the test bed: owned objects stay (no collector).
        labelled(
            configmap(namespace, "derived"),
            mirrored,
            ownerReferences=[{**owner, "controller": True}],
        ),
        labelled(configmap(namespace, "referring"), mirrored, ownerReferences=[owner]),
    )
    daemon.start()
    wait_live(control_plane, namespace)
    folder = f"live-cluster/v1/configmaps/{namespace}"
    wait_for_subjects(remote.path, daemon, "reconcile: sync 2 resources")
    assert {path for path in tree(remote.path) if path.startswith(folder)} == {
        f"{folder}/chosen.yaml",
        f"{folder}/referring.yaml",
    }
    chosen_file = tree(remote.path)[f"{folder}/chosen.yaml"]

    # Stops matching: its file stays as it was, through a change and even its deletion.
    apply(control_plane, labelled(configmap(namespace, "chosen", {"key": "changed"}), {}))
    # Starts matching: written by its next event.
    apply(control_plane, labelled(configmap(namespace, "unlabelled"), mirrored))
    wait_for_subjects(remote.path, daemon, f"[UPDATE] v1/configmaps/{namespace}/unlabelled")
    control_plane.kubectl("delete", "configmap", "chosen", "-n", namespace)
    # A controlled object is skipped in events too, and one that loses its controller is not.
    apply(
        control_plane,
        labelled(configmap(namespace, "derived", {"key": "changed"}), mirrored),
        labelled(
            configmap(namespace, "made-later"),
            mirrored,
            ownerReferences=[{**owner, "controller": True}],
        ),
    )
    merge_patch(
        control_plane, "configmap", namespace, "derived", {"metadata": {"ownerReferences": None}}
    )
    later = labelled(configmap(namespace, "later"), mirrored)
    apply(control_plane, later)
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{namespace}/later")

    files = tree(remote.path)
    assert files[f"{folder}/chosen.yaml"] == chosen_file
    assert {path for path in files if path.startswith(folder)} == {
        f"{folder}/{name}.yaml"
        for name in ("chosen", "referring", "unlabelled", "derived", "later")
    }
    assert subjects(remote.path)[1:] == [
        f"[UPDATE] v1/configmaps/{namespace}/unlabelled",
        f"[UPDATE] v1/configmaps/{namespace}/derived",
        f"[CREATE] v1/configmaps/{namespace}/later",
    ]
    assert manifest(files[f"{folder}/derived.yaml"])["data"] == {"key": "changed"}


def covered_selections(daemon: Reverserd, target: str) -> str:
    """What the target's cursor records as snapshotted (the journal's ``cursors.covered``)."""
    rows = query_journal(daemon, "SELECT covered FROM cursors WHERE target = ?", (target,))
    return str(rows[0][0]) if rows else ""


def test_namespace_selector_follows_namespace_labels_and_keeps_files_of_one_that_stops(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    # A label no other test's namespace carries, so only these namespaces can match.
    selected_label = {"reverserd-test-mirror": uuid.uuid4().hex[:12]}
    first, second = cleanup.new_namespace(), cleanup.new_namespace()
    merge_patch(control_plane, "namespace", first, first, {"metadata": {"labels": selected_label}})
    rule, rule_manifest = mirror_cluster_rule(
        cleanup,
        namespace,
        [
            {
                "scope": "Namespaced",
                "resources": ["limitranges"],
                "namespaceSelector": {"matchLabels": selected_label},
            }
        ],
    )
    apply(
        control_plane,
        *provider_and_target(namespace, remote),
        rule_manifest,
        limit_range(first, "limits"),
        limit_range(second, "limits"),
    )
    daemon.start()
    wait_live(control_plane, namespace)
    wait_condition(control_plane, "clusterwatchrule", None, rule, "Ready", "True")
    wait_for_subjects(remote.path, daemon, "reconcile: sync 1 resources")
    ranges = "live-cluster/v1/limitranges"
    assert {path for path in tree(remote.path) if path.startswith(ranges)} == {
        f"{ranges}/{first}/limits.yaml"
    }

    # The second namespace starts matching: its objects come in a backfill commit.
    merge_patch(
        control_plane, "namespace", second, second, {"metadata": {"labels": selected_label}}
    )
    wait_for_subjects(remote.path, daemon, "reconcile: sync 2 resources")
    assert changed_paths(remote.path, history(remote.path)[-1].sha) == {
        f"{ranges}/{second}/limits.yaml"
    }

    # The first stops matching: its file stays, and a change there is not committed. The
    # target has seen it once the selection it records as covered changes (the snapshot of
    # the new selection changes no file, so it makes no commit).
    first_file = tree(remote.path)[f"{ranges}/{first}/limits.yaml"]
    wait_last_commit_is_tip(control_plane, namespace, remote.path, timeout=30)
    covered = covered_selections(daemon, f"{namespace}/mirror")
    control_plane.kubectl("label", "namespace", first, f"{next(iter(selected_label))}-")
    wait_until(
        lambda: covered_selections(daemon, f"{namespace}/mirror") != covered,
        60,
        lambda: f"covered {covered}; {daemon.log_tail()}",
    )
    changed = limit_range(first, "limits")
    changed["spec"]["limits"][0]["default"] = {"memory": "256Mi"}
    apply(control_plane, changed, limit_range(second, "later"))
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/limitranges/{second}/later")
    files = tree(remote.path)
    assert files[f"{ranges}/{first}/limits.yaml"] == first_file
    assert {path for path in files if path.startswith(ranges)} == {
        f"{ranges}/{first}/limits.yaml",
        f"{ranges}/{second}/limits.yaml",
        f"{ranges}/{second}/later.yaml",
    }
    assert not [s for s in subjects(remote.path) if f"limitranges/{first}/" in s]


CHURN_ANNOTATION = "example.com/last-sync"


def test_dropped_fields_never_reach_git_and_a_list_change_rewrites_only_what_it_changes(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
) -> None:
    provider, target = provider_and_target(namespace, remote)
    target["spec"]["dropFields"] = [
        "/spec/replicas",
        f"metadata.annotations[{CHURN_ANNOTATION}]",
    ]
    rules = [{"apiGroups": ["", "apps"], "resources": ["configmaps", "deployments"]}]
    churning = labelled(configmap(namespace, "churning"), {})
    churning["metadata"]["annotations"] = {CHURN_ANNOTATION: "1", "kept": "yes"}
    apply(
        control_plane,
        provider,
        target,
        watch_rule(namespace, "mirror", "mirror", rules),
        churning,
        configmap(namespace, "plain"),
        deployment(namespace, "web"),
    )
    daemon.start()
    wait_live(control_plane, namespace)
    wait_for_subjects(remote.path, daemon, "reconcile: sync 3 resources")
    web_path = f"live-cluster/apps/v1/deployments/{namespace}/web.yaml"
    churning_path = f"live-cluster/v1/configmaps/{namespace}/churning.yaml"
    files = tree(remote.path)
    assert "replicas" not in manifest(files[web_path])["spec"]
    assert manifest(files[churning_path])["metadata"]["annotations"] == {"kept": "yes"}

    # Changes of dropped fields only: no commit, proven by a later real change.
    merge_patch(
        control_plane,
        "configmap",
        namespace,
        "churning",
        {"metadata": {"annotations": {CHURN_ANNOTATION: "2"}}},
    )
    control_plane.kubectl("scale", "deployment", "web", "--replicas=4", "-n", namespace)
    later = later_change(control_plane, namespace, remote.path, daemon)
    assert subjects(remote.path) == ["reconcile: sync 3 resources", later]
    before = tree(remote.path)

    # The list changes: one reconcile commit rewrites the one file it changes, nothing else.
    wait_last_commit_is_tip(control_plane, namespace, remote.path, timeout=30)
    merge_patch(
        control_plane,
        "gittarget",
        namespace,
        "mirror",
        {"spec": {"dropFields": [f"/metadata/annotations/{CHURN_ANNOTATION.replace('/', '~1')}"]}},
    )
    wait_for_subjects(remote.path, daemon, "reconcile: sync 4 resources")
    reconcile = history(remote.path)[-1]
    assert reconcile.subject == "reconcile: sync 4 resources"
    assert changed_paths(remote.path, reconcile.sha) == {web_path}
    after = tree(remote.path)
    assert manifest(after[web_path])["spec"]["replicas"] == 4
    assert {path: content for path, content in after.items() if path != web_path} == {
        path: content for path, content in before.items() if path != web_path
    }
    # ...and the target counts that one file as the reconcile's only write.
    wait_snapshot_stats(control_plane, namespace, updated=1)

    # Identity cannot be dropped: the target is refused, saying which path and why.
    merge_patch(
        control_plane, "gittarget", namespace, "mirror", {"spec": {"dropFields": ["metadata.name"]}}
    )
    refused = wait_target_refused(control_plane, namespace, "mirror", "InvalidDropFields")
    assert "metadata.name" in refused["message"] and "identify the object" in refused["message"]


# A forward leg (Flux's kustomize-controller) that applies the mirrored folder back, stamping
# each round's revision as such tools do: every round changes the live object.
FORWARD_MANAGER = "kustomize-controller"
FORWARD_ROUNDS = 5
FORWARD_REVISION = "forward.example.com/revision"


def apply_folder_back(plane: ControlPlane, remote: Remote, folder: str, revision: int) -> None:
    """One round of the forward leg: the folder as the branch holds it now, applied with
    server-side apply under the forward leg's field manager."""
    documents = []
    for path, content in sorted(tree(remote.path).items()):
        if path.startswith(f"{folder}/") and path.endswith(".yaml"):
            document = manifest(content)
            document["metadata"].setdefault("annotations", {})[FORWARD_REVISION] = str(revision)
            documents.append(json.dumps(document))
    assert documents, f"nothing to apply under {folder}"
    plane.kubectl(
        "apply",
        "--server-side",
        f"--field-manager={FORWARD_MANAGER}",
        "--force-conflicts",
        "-f",
        "-",
        stdin="\n".join(documents),
    )


def start_configmap_mirror(
    plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    name: str,
    spec: dict[str, Any],
) -> None:
    """A target (with ``spec`` added to its spec) mirroring the ConfigMap ``name`` of
    ``namespace``, its first reconcile pushed."""
    provider, target = provider_and_target(namespace, remote)
    target["spec"].update(spec)
    apply(
        plane,
        provider,
        target,
        watch_rule(namespace, "mirror", "mirror", [{"resources": ["configmaps"]}]),
        configmap(namespace, name),
    )
    daemon.start()
    wait_live(plane, namespace)
    wait_for_subjects(remote.path, daemon, "reconcile: sync 1 resources")


def test_exclude_users_without_attribution_is_flagged_and_leaves_nothing_out(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
) -> None:
    # The user the test bed's kubectl writes as, so the change below is the listed user's own.
    whoami = json.loads(control_plane.kubectl("auth", "whoami", "-o", "json"))
    user = whoami["status"]["userInfo"]["username"]
    start_configmap_mirror(
        control_plane, namespace, remote, daemon, "app", {"excludeUsers": [user]}
    )
    validated = conditions(control_plane, "gittarget", namespace, "mirror")["Validated"]
    assert (validated["status"], validated["reason"]) == ("True", "ExcludeUsersNeedsAttribution")
    # Without attribution no user is known: the listed user's change is committed.
    apply(control_plane, configmap(namespace, "app", {"key": "changed"}))
    wait_for_subjects(remote.path, daemon, f"[UPDATE] v1/configmaps/{namespace}/app")
    written = tree(remote.path)[f"live-cluster/v1/configmaps/{namespace}/app.yaml"]
    assert b"key: changed" in written


def test_a_forward_leg_applying_the_folder_back_starts_no_loop_and_the_folder_converges(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
) -> None:
    start_configmap_mirror(
        control_plane,
        namespace,
        remote,
        daemon,
        "app",
        {"excludeFieldManagers": [FORWARD_MANAGER]},
    )
    folder = f"live-cluster/v1/configmaps/{namespace}"

    # A bounded run of the forward leg, each round re-reading the branch.
    versions = set()
    for revision in range(FORWARD_ROUNDS):
        apply_folder_back(control_plane, remote, folder, revision)
        versions.add(resource_version(control_plane, "configmap", namespace, "app"))
    assert len(versions) == FORWARD_ROUNDS  # every round really changed the object

    # Someone else changes the object: that change is committed, and the file converges on the
    # live object, the forward leg's changes included. Commits follow journal order, so a
    # commit any round had caused would stand before this one.
    merge_patch(control_plane, "configmap", namespace, "app", {"data": {"key": "by a person"}})
    subject = f"[UPDATE] v1/configmaps/{namespace}/app"
    wait_for_subjects(remote.path, daemon, subject)
    assert subjects(remote.path) == ["reconcile: sync 1 resources", subject]
    written = manifest(tree(remote.path)[f"{folder}/app.yaml"])
    assert written["data"] == {"key": "by a person"}
    assert written["metadata"]["annotations"] == {FORWARD_REVISION: str(FORWARD_ROUNDS - 1)}
    assert "manager: kubectl-patch (Update)" in history(remote.path)[-1].body


def kustomize_build(plane: ControlPlane, files: dict[str, bytes], folder: str) -> list[Any]:
    """``kubectl kustomize`` (kustomize as kubectl embeds it) of ``folder`` in a checkout of
    ``files``, as the documents it prints."""
    with tempfile.TemporaryDirectory() as checkout:
        for path, content in files.items():
            target = Path(checkout, path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        built = plane.kubectl("kustomize", str(Path(checkout, folder)))
    return [document for document in yaml.safe_load_all(built) if document]


def test_kustomization_lists_the_folders_files_in_the_same_commit_and_builds_the_objects(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    git_http: GitHttpServer,
    git_repo_name: str,
    cleanup: Cleanup,
) -> None:
    other = cleanup.new_namespace()
    # A person's kustomization.yaml in the other namespace's folder: only resources may change.
    theirs = f"live-cluster/v1/configmaps/{other}/kustomization.yaml"
    person = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../shared"],
        "commonAnnotations": {"owner": "team-b"},
    }
    git_http.seed_repo(
        git_repo_name,
        "main",
        {theirs: yaml.safe_dump(person).encode()},
        "a person's kustomization",
    )
    provider, target = provider_and_target(namespace, remote)
    target["spec"]["kustomization"] = True
    _, rule_manifest = mirror_cluster_rule(
        cleanup, namespace, [{"scope": "Namespaced", "resources": ["configmaps"]}]
    )
    apply(
        control_plane,
        provider,
        target,
        rule_manifest,
        configmap(namespace, "first"),
        configmap(namespace, "second"),
        configmap(other, "theirs"),
    )
    daemon.start()
    wait_live(control_plane, namespace)
    folder = f"live-cluster/v1/configmaps/{namespace}"
    ours = f"{folder}/kustomization.yaml"

    def objects_of(namespace_: str) -> list[Any]:
        listed = kubectl_json(control_plane, "get", "configmaps", "-n", namespace_, "-o", "json")
        return [
            manifest(content)
            for item in listed["items"]
            if item["metadata"]["name"] != "kube-root-ca.crt"
            for content in [tree(remote.path)[f"{folder}/{item['metadata']['name']}.yaml"]]
        ]

    wait_until(lambda: ours in tree(remote.path), 60, daemon.log_tail)
    reconcile = history(remote.path)[-1]
    assert reconcile.subject.startswith("reconcile: sync")
    assert {ours, f"{folder}/first.yaml", f"{folder}/second.yaml"} <= changed_paths(
        remote.path, reconcile.sha
    )
    assert manifest(tree(remote.path)[ours]) == {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["first.yaml", "second.yaml"],
    }
    assert manifest(tree(remote.path)[theirs]) == {
        **person,
        "resources": ["../shared", "theirs.yaml"],
    }

    # A creation and a deletion each change the listing in their own commit.
    apply(control_plane, configmap(namespace, "third"))
    create = f"[CREATE] v1/configmaps/{namespace}/third"
    wait_for_subjects(remote.path, daemon, create)
    assert changed_paths(remote.path, history(remote.path)[-1].sha) == {
        f"{folder}/third.yaml",
        ours,
    }
    control_plane.kubectl("delete", "configmap", "first", "-n", namespace)
    delete = f"[DELETE] v1/configmaps/{namespace}/first"
    wait_for_subjects(remote.path, daemon, delete)
    assert changed_paths(remote.path, history(remote.path)[-1].sha) == {
        f"{folder}/first.yaml",
        ours,
    }
    # An update changes no listing.
    apply(control_plane, configmap(namespace, "second", {"key": "changed"}))
    wait_for_subjects(remote.path, daemon, f"[UPDATE] v1/configmaps/{namespace}/second")
    assert changed_paths(remote.path, history(remote.path)[-1].sha) == {f"{folder}/second.yaml"}

    files = tree(remote.path)
    assert manifest(files[ours])["resources"] == ["second.yaml", "third.yaml"]
    built = kustomize_build(control_plane, files, folder)
    assert sorted(built, key=lambda d: d["metadata"]["name"]) == objects_of(namespace)
    assert [d["metadata"]["name"] for d in built] == ["second", "third"]


def test_turning_kustomization_on_lists_every_folder_in_one_commit_and_rewrites_no_object(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
) -> None:
    apply(
        control_plane,
        *mirror_setup(namespace, remote.url, secret=remote.secret),
        configmap(namespace, "first"),
        configmap(namespace, "second"),
    )
    daemon.start()
    wait_live(control_plane, namespace)
    wait_for_subjects(remote.path, daemon, "reconcile: sync 2 resources")
    wait_last_commit_is_tip(control_plane, namespace, remote.path, timeout=30)
    folder = f"live-cluster/v1/configmaps/{namespace}"
    assert f"{folder}/kustomization.yaml" not in tree(remote.path)

    merge_patch(control_plane, "gittarget", namespace, "mirror", {"spec": {"kustomization": True}})
    wait_for_subjects(
        remote.path, daemon, "reconcile: sync 2 resources", "reconcile: sync 2 resources"
    )
    assert changed_paths(remote.path, history(remote.path)[-1].sha) == {
        f"{folder}/kustomization.yaml"
    }
    assert manifest(tree(remote.path)[f"{folder}/kustomization.yaml"])["resources"] == [
        "first.yaml",
        "second.yaml",
    ]


def test_a_persons_edit_to_the_kustomization_pushed_while_running_survives_the_next_listing(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    git_http: GitHttpServer,
    git_repo_name: str,
) -> None:
    start_configmap_mirror(
        control_plane, namespace, remote, daemon, "first", {"kustomization": True}
    )
    ours = f"live-cluster/v1/configmaps/{namespace}/kustomization.yaml"
    assert manifest(tree(remote.path)[ours])["resources"] == ["first.yaml"]

    # A person adds keys and an entry of their own after the daemon read the file.
    edited = {
        **manifest(tree(remote.path)[ours]),
        "namespace": "team-a",
        "patches": [{"path": "../patches/labels.yaml"}],
    }
    edited["resources"] = ["../base", *edited["resources"]]
    git_http.seed_repo(
        git_repo_name, "main", {ours: yaml.safe_dump(edited).encode()}, "a person's edit"
    )

    apply(control_plane, configmap(namespace, "second"))
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{namespace}/second")
    assert manifest(tree(remote.path)[ours]) == {
        **edited,
        "resources": ["../base", "first.yaml", "second.yaml"],
    }
    assert [entry.subject for entry in history(remote.path)] == [
        "reconcile: sync 1 resources",
        "a person's edit",
        f"[CREATE] v1/configmaps/{namespace}/second",
    ]


def test_a_kustomization_whose_resources_hold_a_mapping_is_left_untouched_and_mirroring_goes_on(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    git_http: GitHttpServer,
    git_repo_name: str,
) -> None:
    folder = f"live-cluster/v1/configmaps/{namespace}"
    theirs = b"resources:\n- a: 1\n- first.yaml\n"
    git_http.seed_repo(
        git_repo_name, "main", {f"{folder}/kustomization.yaml": theirs}, "a person's file"
    )
    start_configmap_mirror(
        control_plane, namespace, remote, daemon, "first", {"kustomization": True}
    )

    apply(control_plane, configmap(namespace, "second"))
    control_plane.kubectl("delete", "configmap", "first", "-n", namespace)
    wait_for_subjects(
        remote.path,
        daemon,
        "reconcile: sync 1 resources",
        f"[CREATE] v1/configmaps/{namespace}/second",
        f"[DELETE] v1/configmaps/{namespace}/first",
    )
    files = tree(remote.path)
    assert files[f"{folder}/kustomization.yaml"] == theirs
    assert {path for path in files if path.startswith(f"{folder}/")} == {
        f"{folder}/kustomization.yaml",
        f"{folder}/second.yaml",
    }
    logged = daemon.log_tail(200_000)
    assert logged_by_reverserd("is left untouched: it is not a YAML mapping") in logged
    # Counted: first.yaml and the README, second.yaml; first.yaml deleted. A listing edit that
    # wrote nothing is no file written.
    target = f"{namespace}/mirror"
    wait_until(lambda: daemon.metric("gitopsreverser_files_deleted_total", target=target) == 1)
    assert daemon.metric("gitopsreverser_objects_written_total", target=target) == 3
    assert f"{folder}/kustomization.yaml is left untouched" in logged


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
    git_repo_name: str,
    cleanup: Cleanup,
) -> None:
    other = cleanup.new_namespace()
    create_git_credentials(control_plane, other, git_http, name=remote.secret)
    cms = [{"resources": ["configmaps"]}]
    # Two GitProviders of one namespace naming the same repository (spelled differently) and
    # the same Secret share the branch's writer: two targets on one branch.
    apply(
        control_plane,
        git_provider(namespace, "p", remote.url, secret=remote.secret),
        git_provider(namespace, "p2", remote.url + "/", secret=remote.secret),
        git_target(namespace, "a", "p", "team-a"),
        git_target(namespace, "c", "p2", "copy-a"),
        watch_rule(namespace, "a", "a", cms),
        watch_rule(namespace, "c", "c", cms),
    )
    # creationTimestamp has a resolution of one second: make the other namespace's later.
    time.sleep(1.2)
    # A provider of another namespace may not push to that branch, even with a Secret of the
    # same name and content: the writer pushes with one provider's credentials only.
    apply(
        control_plane,
        git_provider(other, "p", remote.url, secret=remote.secret),
        git_target(other, "b", "p", "team-b"),
        watch_rule(other, "b", "b", cms),
    )
    daemon.start()
    targets = ((namespace, "a"), (namespace, "c"))

    def reconciled() -> bool:
        """Each target's initial reconcile is done (Ready is checked at the end)."""
        return all(
            get_object(control_plane, "gittarget", ns, name).get("status", {}).get("snapshot")
            for ns, name in targets
        )

    wait_until(reconciled, 60, lambda: f"log: {daemon.log_tail()}")
    # Both namespaces can push; the branch goes to the first to prove it and is not shared.
    refused = wait_target_refused(control_plane, other, "b", "Conflict")
    assert f"owned by namespace {namespace!r}" in refused["message"], refused
    folders = {f"{namespace}/a": "team-a/", f"{namespace}/c": "copy-a/"}

    apply(control_plane, configmap(namespace, "app"), configmap(other, "app"))
    mine = f"v1/configmaps/{namespace}/app"
    wait_for_subjects(remote.path, daemon, f"[CREATE] {mine}", f"[CREATE] {mine}")
    assert sorted(tree(remote.path)) == sorted(
        [f"team-a/{README}", f"team-a/{mine}.yaml", f"copy-a/{README}", f"copy-a/{mine}.yaml"]
    )
    assert tree(remote.path)[f"team-a/{mine}.yaml"] == tree(remote.path)[f"copy-a/{mine}.yaml"]

    control_plane.kubectl("delete", "configmap", "app", "-n", namespace)
    wait_for_subjects(remote.path, daemon, f"[DELETE] {mine}", f"[DELETE] {mine}")
    assert sorted(tree(remote.path)) == sorted([f"team-a/{README}", f"copy-a/{README}"])

    # Each commit touches only the folder of the target it names.
    entries = history(remote.path)
    assert Counter(entry.subject for entry in entries) == Counter(
        {f"[CREATE] {mine}": 2, f"[DELETE] {mine}": 2}
    )
    for entry in entries:
        owner = next(line for line in entry.body.splitlines() if line.startswith("target: "))
        folder = folders[owner.removeprefix("target: ")]
        assert all(path.startswith(folder) for path in changed_paths(remote.path, entry.sha)), entry

    # Every target has mirrored changes: each must say it is ready and live.
    for ns, name in targets:
        found = conditions(control_plane, "gittarget", ns, name)
        assert {kind: found[kind]["status"] for kind in ("Ready", "SnapshotSynced")} == {
            "Ready": "True",
            "SnapshotSynced": "True",
        }, f"{ns}/{name}: {found}"


def test_dotted_long_and_generated_names_map_to_valid_stable_file_names(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
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
        remote.path,
        daemon,
        f"[CREATE] v1/configmaps/{namespace}/{dotted}",
        f"[CREATE] v1/configmaps/{namespace}/{longest}",
        f"[CREATE] v1/configmaps/{namespace}/{generated}",
    )

    files = {p: c for p, c in tree(remote.path).items() if p.startswith(folder)}
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
    wait_for_subjects(remote.path, daemon, f"[UPDATE] v1/configmaps/{namespace}/{longest}")
    daemon.stop()
    daemon.start()
    apply(
        control_plane,
        configmap(namespace, longest, {"key": "v3"}),
        configmap(namespace, dotted, {"key": "v3"}),
    )
    wait_for_subjects(
        remote.path,
        daemon,
        f"[UPDATE] v1/configmaps/{namespace}/{dotted}",
        f"[UPDATE] v1/configmaps/{namespace}/{longest}",
        f"[UPDATE] v1/configmaps/{namespace}/{longest}",
    )
    files = {p: c for p, c in tree(remote.path).items() if p.startswith(folder)}
    assert sorted(files) == sorted(paths.values())
    assert manifest(files[paths[longest]])["data"] == {"key": "v3"}
    assert len(subjects(remote.path)) == 6

    last_with_long_name = history(remote.path)[-1].sha
    control_plane.kubectl("delete", "configmap", longest, "-n", namespace)
    wait_for_subjects(remote.path, daemon, f"[DELETE] v1/configmaps/{namespace}/{longest}")
    assert sorted(p for p in tree(remote.path) if p.startswith(folder)) == sorted(
        [paths[dotted], paths[generated]]
    )

    # Valid: every file name fits the 255-byte limit of common file systems, so the branch can
    # be checked out (and applied with kubectl) anywhere.
    too_long = [
        p
        for p in read_tree_at(remote.path, last_with_long_name)
        if len(p.rsplit("/", 1)[-1].encode()) > 255
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
    cleanup.install_crd(crd(group, "gadgets", "Gadget", status_subresource=True))
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
        before = subjects(remote.path)
        real_change()
        wait_for_subjects(remote.path, daemon, *before, subject)
        assert subjects(remote.path) == [*before, subject]
        return history(remote.path)[-1]

    # B20: the first update after a create changes only the line that changed.
    stable = configmap(namespace, "stable", {"alpha": "one", "beta": "two", "gamma": "three"})
    then_only(lambda: apply(control_plane, stable), f"[CREATE] {cm_subject}/stable")
    created = tree(remote.path)[f"{folder}/stable.yaml"]
    update = then_only(
        lambda: merge_patch(
            control_plane, "configmap", namespace, "stable", {"data": {"beta": "2"}}
        ),
        f"[UPDATE] {cm_subject}/stable",
    )
    updated = tree(remote.path)[f"{folder}/stable.yaml"]
    assert changed_paths(remote.path, update.sha) == {f"{folder}/stable.yaml"}
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
        lambda: apply(control_plane, custom_object(group, "Gadget", namespace, "g1", {"size": 1})),
        f"[CREATE] {group}/v1/gadgets/{namespace}/g1",
    )
    version = resource_version(control_plane, gadgets, namespace, "g1")
    kubectl(
        "patch",
        gadgets,
        "g1",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"phase":"Running","observed":7}}',
    )
    assert resource_version(control_plane, gadgets, namespace, "g1") != version
    then_only(
        lambda: merge_patch(control_plane, gadgets, namespace, "g1", {"spec": {"size": 2}}),
        f"[UPDATE] {group}/v1/gadgets/{namespace}/g1",
    )
    assert manifest(tree(remote.path)[f"live-cluster/{group}/v1/gadgets/{namespace}/g1.yaml"]) == {
        "apiVersion": f"{group}/v1",
        "kind": "Gadget",
        "metadata": {"name": "g1", "namespace": namespace},
        "spec": {"size": 2},
    }

    # B16: managedFields only (server-side apply of identical content by another manager),
    # stripped annotations only, and the last-applied annotation only.
    version = resource_version(control_plane, "configmap", namespace, "stable")
    same = {**stable, "data": {"alpha": "one", "beta": "2", "gamma": "three"}}
    kubectl("apply", "--server-side", "--field-manager=probe", "-f", "-", stdin=json.dumps(same))
    after_ssa = resource_version(control_plane, "configmap", namespace, "stable")
    assert after_ssa != version
    kubectl("annotate", "configmap", "stable", "deployment.kubernetes.io/revision=3")
    kubectl("annotate", "configmap", "stable", "argocd.argoproj.io/tracking-id=app:/ConfigMap")
    assert resource_version(control_plane, "configmap", namespace, "stable") != after_ssa
    then_only(
        lambda: kubectl("label", "configmap", "stable", "team=a"),
        f"[UPDATE] {cm_subject}/stable",
    )
    labelled = {**same, "metadata": {**same["metadata"], "labels": {"team": "a"}}}
    version = resource_version(control_plane, "configmap", namespace, "stable")
    kubectl("apply", "-f", "-", stdin=json.dumps(labelled))
    last_applied = get_object(control_plane, "configmap", namespace, "stable")["metadata"]
    assert "kubectl.kubernetes.io/last-applied-configuration" in last_applied["annotations"]
    assert last_applied["resourceVersion"] != version
    then_only(
        lambda: merge_patch(
            control_plane, "configmap", namespace, "stable", {"data": {"beta": "3"}}
        ),
        f"[UPDATE] {cm_subject}/stable",
    )
    assert manifest(tree(remote.path)[f"{folder}/stable.yaml"]) == {
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
    version = resource_version(control_plane, "deployment", namespace, "web")
    kubectl("annotate", "deployment", "web", "deployment.kubernetes.io/revision=1")
    restarted = {"kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"}
    merge_patch(
        control_plane,
        "deployment",
        namespace,
        "web",
        {"spec": {"template": {"metadata": {"annotations": restarted}}}},
    )
    assert resource_version(control_plane, "deployment", namespace, "web") != version
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
    files = tree(remote.path)
    assert f"{folder}/dry.yaml" not in files
    assert manifest(files[f"{folder}/stable.yaml"])["data"]["alpha"] == "one"


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
            [cluster_scoped("storage.k8s.io", "storageclasses")],
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
        remote.path,
        daemon,
        f"[CREATE] v1/configmaps/{namespace}/applied",
        f"[UPDATE] v1/configmaps/{namespace}/applied",
        f"[CREATE] v1/configmaps/{namespace}/frozen",
        f"[CREATE] v1/services/{namespace}/headless",
        f"[CREATE] v1/services/{namespace}/normal",
        f"[CREATE] apps/v1/deployments/{namespace}/web",
        f"[CREATE] storage.k8s.io/v1/storageclasses/{storage_class}",
    )
    files = tree(remote.path)

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
    for entry in history(remote.path):
        for path, content in read_tree_at(remote.path, entry.sha).items():
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
    live_normal = get_object(control_plane, "service", namespace, "normal")["spec"]
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
    wait_for_subjects(remote.path, daemon, *expected)
    entries = history(remote.path)
    assert sorted(entry.subject for entry in entries) == sorted(expected)
    for name in names:
        path = f"live-cluster/v1/configmaps/{namespace}/{name}.yaml"
        mine = [e for e in entries if e.subject.endswith(f"/{name}")]
        assert [e.subject.split("]")[0] + "]" for e in mine] == ["[CREATE]", "[UPDATE]", "[DELETE]"]
        first, second, gone = (read_tree_at(remote.path, e.sha) for e in mine)
        assert manifest(first[path])["data"] == {"state": "first"}
        assert manifest(second[path])["data"] == {"state": "second"}
        assert path not in gone
    assert sorted(tree(remote.path)) == [f"live-cluster/{README}"]


def test_burst_of_1000_objects_all_reach_git_exactly_once(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
) -> None:
    count = 1000
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_live(control_plane, namespace)
    names = [f"burst-{index:04d}" for index in range(count)]
    create_many(control_plane, [configmap(namespace, name) for name in names], "configmaps")

    folder = f"live-cluster/v1/configmaps/{namespace}/"
    wait_until(
        lambda: len([p for p in tree(remote.path) if p.startswith(folder)]) == count,
        240,
        lambda: (
            f"{len([p for p in tree(remote.path) if p.startswith(folder)])} of {count} files; "
            f"log: {daemon.log_tail()}"
        ),
    )
    # A duplicate or an extra commit would come before this later change.
    names.append("later")
    later_change(control_plane, namespace, remote.path, daemon)
    found = Counter(subjects(remote.path))
    assert found == Counter({f"[CREATE] v1/configmaps/{namespace}/{name}": 1 for name in names})
    files = tree(remote.path)
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
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_live(control_plane, namespace)
    phoenix = configmap(namespace, "phoenix", {"color": "red"})
    subject = f"v1/configmaps/{namespace}/phoenix"
    path = f"live-cluster/{subject}.yaml"
    create_many(control_plane, [phoenix], "configmaps")
    wait_for_subjects(remote.path, daemon, f"[CREATE] {subject}")
    first_uid = get_object(control_plane, "configmap", namespace, "phoenix")["metadata"]["uid"]
    content = tree(remote.path)[path]

    delete_many(control_plane, [phoenix], "configmaps")
    create_many(control_plane, [phoenix], "configmaps")
    second_uid = get_object(control_plane, "configmap", namespace, "phoenix")["metadata"]["uid"]
    assert second_uid != first_uid
    wait_for_subjects(
        remote.path, daemon, f"[CREATE] {subject}", f"[DELETE] {subject}", f"[CREATE] {subject}"
    )

    entries = history(remote.path)
    assert [e.subject for e in entries] == [
        f"[CREATE] {subject}",
        f"[DELETE] {subject}",
        f"[CREATE] {subject}",
    ]
    assert f"uid: {first_uid}" in entries[0].body.splitlines()
    assert f"uid: {first_uid}" in entries[1].body.splitlines()
    assert f"uid: {second_uid}" in entries[2].body.splitlines()
    assert path not in read_tree_at(remote.path, entries[1].sha)
    assert tree(remote.path)[path] == content


# --------------------------------------------------------------------------------------------
# E. Targets, rules and configuration


def test_target_created_before_its_provider_says_why_and_starts_when_it_appears(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
) -> None:
    provider_cr, target_cr, rule_cr = mirror_setup(namespace, remote.url, secret=remote.secret)
    apply(control_plane, target_cr, rule_cr, configmap(namespace, "early"))
    daemon.start()
    validated = wait_target_refused(control_plane, namespace, "mirror", "GitProviderNotFound")
    assert "mirror" in validated["message"] and namespace in validated["message"]
    wait_condition(
        control_plane, "watchrule", namespace, "mirror", "Ready", "False", "GitProviderNotFound"
    )
    # Changes while waiting are kept for the target.
    apply(control_plane, configmap(namespace, "waiting"))
    assert branches(remote) == []

    apply(control_plane, provider_cr)
    appeared = time.monotonic()
    wait_condition(control_plane, "gittarget", namespace, "mirror", "Validated", "True", timeout=10)
    validated_after = time.monotonic() - appeared
    folder = f"live-cluster/v1/configmaps/{namespace}"
    wait_until(
        lambda: {f"{folder}/early.yaml", f"{folder}/waiting.yaml"} <= tree(remote.path).keys(),
        15,
        lambda: f"tree {sorted(tree(remote.path))}; log: {daemon.log_tail()}",
    )
    pushed_after = time.monotonic() - appeared
    assert validated_after < 5, validated_after
    assert pushed_after < 15, pushed_after
    assert subjects(remote.path) == ["reconcile: sync 2 resources"]
    wait_live(control_plane, namespace)
    wait_condition(control_plane, "watchrule", namespace, "mirror", "Ready", "True")


def test_branch_outside_allowed_branches_is_refused(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
) -> None:
    cms = [{"resources": ["configmaps"]}]
    apply(
        control_plane,
        git_provider(
            namespace, "p", remote.url, secret=remote.secret, branches=["main", "release/*"]
        ),
        git_target(namespace, "feature", "p", "feature", branch="feature/x"),
        git_target(namespace, "deep", "p", "deep", branch="release/a/b"),
        git_target(namespace, "release", "p", "rel", branch="release/1"),
        watch_rule(namespace, "feature", "feature", cms),
        watch_rule(namespace, "deep", "deep", cms),
        watch_rule(namespace, "release", "release", cms),
        configmap(namespace, "app"),
    )
    daemon.start()
    for name, branch in (("feature", "feature/x"), ("deep", "release/a/b")):
        refused = wait_target_refused(control_plane, namespace, name, "BranchNotAllowed")
        assert branch in refused["message"] and "release/*" in refused["message"]
        wait_condition(control_plane, "watchrule", namespace, name, "Ready", "False")
    # The allowed branch works, so the refusals are about the branches only.
    wait_live(control_plane, namespace, "release")
    wait_until(lambda: subjects(remote.path, "release/1") == ["reconcile: sync 1 resources"], 15)
    assert sorted(tree(remote.path, "release/1")) == [
        f"rel/{README}",
        f"rel/v1/configmaps/{namespace}/app.yaml",
    ]
    assert branches(remote) == ["release/1"]


def test_invalid_target_paths_are_refused_and_nothing_is_written(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
) -> None:
    cms = [{"resources": ["configmaps"]}]
    invalid = {
        "parent": "../x",
        "inner-parent": "x/../y",
        "git-dir": "a/.git/b",
        "git-dir-upper": "a/.GIT",
        "backslash": "a\\b",
        "control": "a\tb",
    }
    objects: list[dict[str, Any]] = [git_provider(namespace, "p", remote.url, secret=remote.secret)]
    for name, path in invalid.items():
        objects += [git_target(namespace, name, "p", path), watch_rule(namespace, name, name, cms)]
    objects += [
        git_target(namespace, "valid", "p", "fine"),
        watch_rule(namespace, "valid", "valid", cms),
    ]
    apply(control_plane, *objects, configmap(namespace, "app"))
    daemon.start()
    for name, path in invalid.items():
        refused = wait_condition(
            control_plane, "gittarget", namespace, name, "Validated", "False", "InvalidPath"
        )
        assert repr(path) in refused["message"] or path in refused["message"], refused
        stored = get_object(control_plane, "gittarget", namespace, name)["spec"]["path"]
        assert stored == path  # refused, not rewritten
    wait_live(control_plane, namespace, "valid")
    wait_until(lambda: subjects(remote.path) == ["reconcile: sync 1 resources"], 15)
    later = later_change(control_plane, namespace, remote.path, daemon)
    assert branches(remote) == ["main"]
    assert sorted(tree(remote.path)) == [
        f"fine/{README}",
        f"fine/v1/configmaps/{namespace}/app.yaml",
        f"fine/v1/configmaps/{namespace}/later.yaml",
    ]
    assert subjects(remote.path) == ["reconcile: sync 1 resources", later]


def test_spellings_of_a_target_path_are_normalized_and_shown_in_status(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
) -> None:
    """``/team``, ``./team``, ``team/`` and ``a//b`` name a folder as gitops-reverser read them."""
    cms = [{"resources": ["configmaps"]}]
    apply(
        control_plane,
        git_provider(namespace, "p", remote.url, secret=remote.secret),
        git_target(namespace, "spelled", "p", "/./clusters//prod/"),
        watch_rule(namespace, "spelled", "spelled", cms),
        configmap(namespace, "app"),
    )
    daemon.start()
    wait_live(control_plane, namespace, "spelled")
    status = resource_status(control_plane, "gittarget", namespace, "spelled")
    assert status["path"] == "clusters/prod"
    assert get_object(control_plane, "gittarget", namespace, "spelled")["spec"]["path"] == (
        "/./clusters//prod/"
    )
    wait_until(lambda: subjects(remote.path) == ["reconcile: sync 1 resources"], 15)
    assert sorted(tree(remote.path)) == [
        f"clusters/prod/{README}",
        f"clusters/prod/v1/configmaps/{namespace}/app.yaml",
    ]


def test_an_absolute_target_path_is_a_folder_of_the_branch_never_of_a_machine(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    tmp_path: Path,
) -> None:
    """SCENARIOS 38 lists ``/abs`` among the refused paths; the spec and gitops-reverser read it
    from the repository's root instead. Either way nothing may be written outside the
    repository: here the path is a real absolute folder of the machine the daemon runs on."""
    outside = tmp_path / "outside"
    cms = [{"resources": ["configmaps"]}]
    apply(
        control_plane,
        git_provider(namespace, "p", remote.url, secret=remote.secret),
        git_target(namespace, "absolute", "p", str(outside)),
        watch_rule(namespace, "absolute", "absolute", cms),
        configmap(namespace, "app"),
    )
    daemon.start()
    wait_live(control_plane, namespace, "absolute")
    folder = str(outside).lstrip("/")
    assert resource_status(control_plane, "gittarget", namespace, "absolute")["path"] == folder
    wait_until(lambda: subjects(remote.path) == ["reconcile: sync 1 resources"], 15)
    assert sorted(tree(remote.path)) == [
        f"{folder}/{README}",
        f"{folder}/v1/configmaps/{namespace}/app.yaml",
    ]
    assert not outside.exists()
    assert not list(daemon.state_dir.rglob("app.yaml"))


def test_second_target_on_the_same_or_a_nested_folder_is_refused_with_conflict(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
) -> None:
    cms = [{"resources": ["configmaps"]}]
    apply(
        control_plane,
        git_provider(namespace, "p1", remote.url, secret=remote.secret),
        git_provider(namespace, "p2", remote.url, secret=remote.secret),
        git_target(namespace, "first", "p1", "live"),
        watch_rule(namespace, "first", "first", cms),
    )
    # creationTimestamp has a resolution of one second: make "first" unambiguously earlier.
    time.sleep(1.2)
    apply(
        control_plane,
        git_target(namespace, "same", "p2", "live"),
        git_target(namespace, "nested", "p1", "live/team"),
        watch_rule(namespace, "same", "same", cms),
        watch_rule(namespace, "nested", "nested", cms),
    )
    daemon.start()
    wait_live(control_plane, namespace, "first")
    for name in ("same", "nested"):
        refused = wait_target_refused(control_plane, namespace, name, "Conflict")
        assert f"{namespace}/first" in refused["message"], refused

    apply(control_plane, configmap(namespace, "app"))
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{namespace}/app")
    later = later_change(control_plane, namespace, remote.path, daemon)
    assert subjects(remote.path) == [f"[CREATE] v1/configmaps/{namespace}/app", later]
    assert sorted(tree(remote.path)) == [
        f"live/{README}",
        f"live/v1/configmaps/{namespace}/app.yaml",
        f"live/v1/configmaps/{namespace}/later.yaml",
    ]


def test_secret_without_encryption_is_not_written_and_is_counted(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
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
    encryption = conditions(control_plane, "gittarget", namespace, "mirror")["EncryptionConfigured"]
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
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{namespace}/after")
    assert subjects(remote.path) == [f"[CREATE] v1/configmaps/{namespace}/after"]
    assert sorted(tree(remote.path)) == [
        f"live-cluster/{README}",
        f"live-cluster/v1/configmaps/{namespace}/after.yaml",
    ]
    for entry in history(remote.path):
        assert all(b"s3cr3t-value" not in c for c in read_tree_at(remote.path, entry.sha).values())
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
            [cluster_scoped("scheduling.k8s.io", "priorityclasses")],
        ),
        # Objects whose status stays False: they must be just as quiet.
        git_target(namespace, "orphan", "missing", "orphan"),
        watch_rule(namespace, "orphan", "orphan", [{"resources": ["configmaps"]}]),
        git_target(namespace, "wrong-branch", "mirror", "other", branch="not-allowed"),
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
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{namespace}/app")
    wait_last_commit_is_tip(control_plane, namespace, remote.path, timeout=30)
    wait_condition(
        control_plane, "gittarget", namespace, "orphan", "Validated", "False", "GitProviderNotFound"
    )
    wait_condition(
        control_plane,
        "gittarget",
        namespace,
        "wrong-branch",
        "Validated",
        "False",
        "BranchNotAllowed",
    )
    wait_condition(
        control_plane, "watchrule", namespace, "unserved", "Ready", "False", "ResourceNotServed"
    )
    wait_condition(control_plane, "clusterwatchrule", None, rule, "Ready", "True")
    wait_condition(control_plane, "gitprovider", namespace, "mirror", "Ready", "True")

    writes = "reverserd_status_writes_total"

    def versions() -> dict[str, str]:
        items = kubectl_json(
            control_plane, "get", "gitproviders,gittargets,watchrules", "-n", namespace
        )["items"]
        items.append(get_object(control_plane, "clusterwatchrule", None, rule))
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
    assert subjects(remote.path) == [
        "reconcile: sync 2 resources",
        f"[CREATE] v1/configmaps/{namespace}/app",
    ]
