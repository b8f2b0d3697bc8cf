"""planning: which files a reconcile keeps, adopts, writes and deletes, and what a file names.

The rules under test (SPEC 3.2 "Adoption", DESIGN invariants 3 and 4): every object of the
snapshot is present whether the target writes it or not; a file goes only when it stands for
one object unambiguously and that object is gone; a file that already says what reverserd would
write is kept byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from reverserd.config.rules import CompiledRule, compile_rule
from reverserd.git import FileChange
from reverserd.journal import EventKind, JournalEvent, ObjectKey, StoredObject
from reverserd.kube.resources import ResourceType
from reverserd.targets.planning import (
    FilePlan,
    FileRecord,
    SnapshotPlanner,
    content_hash,
    holds_object,
    identity_of,
    kind_index,
    manifest_of,
    plan_event,
    reconcile_message,
)

NS = "team-a"
FOLDER = "live"
CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap", namespaced=True)
SECRETS = ResourceType("", "v1", "secrets", "Secret", namespaced=True)
DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment", namespaced=True)
NAMESPACES = ResourceType("", "v1", "namespaces", "Namespace", namespaced=False)
TYPES = {(t.group, t.resource): t for t in (CONFIGMAPS, SECRETS, DEPLOYMENTS, NAMESPACES)}
KINDS = kind_index(TYPES.values())
ALL_SELECTED = {(t.group, t.resource) for t in TYPES.values()}
# The labels of the namespaces the snapshots see: what namespaceSelectors are matched against.
NAMESPACE_LABELS: dict[str, dict[str, str]] = {NS: {"team": "a"}, "team-b": {"team": "b"}}

# A ConfigMap file as gitops-reverser v0.17 writes it: go-yaml v2 double-quotes strings that
# would read as another type, sorts metadata keys, and leaves sequences unindented.
OLD_OPERATOR_FILE = b"""apiVersion: v1
kind: ConfigMap
metadata:
  labels:
    app: web
  name: settings
  namespace: team-a
data:
  enabled: "yes"
  port: "8080"
  text: |
    first
    second
"""
SETTINGS = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "settings", "namespace": NS, "labels": {"app": "web"}},
    "data": {"enabled": "yes", "port": "8080", "text": "first\nsecond\n"},
}


def rules(raw: dict[str, Any], namespace: str | None = NS) -> list[CompiledRule]:
    """One WatchRule entry of ``namespace``, or a ClusterWatchRule one (Namespaced) for None."""
    if namespace is None:
        return [compile_rule({**raw, "scope": "Namespaced"}, None, "Namespaced")]
    return [compile_rule(raw, namespace, None)]


def stored(
    body: dict[str, Any], resource: str, seq: int = 1, body_json: str | None = None
) -> StoredObject:
    """``body`` as journaled, or ``body_json`` as the journal's text when given."""
    rtype = next(t for t in TYPES.values() if t.resource == resource)
    metadata = body["metadata"]
    key = ObjectKey(rtype.group, resource, metadata.get("namespace", ""), metadata["name"])
    text = json.dumps(body) if body_json is None else body_json
    return StoredObject(key, rtype.version, f"uid-{seq}", str(seq), seq, text)


def configmap(name: str, data: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS},
        "data": data if data is not None else {"k": name},
    }


def manifest(api_version: str, kind: str, name: str, namespace: str | None = NS) -> bytes:
    metadata = f"  name: {name}\n" + (f"  namespace: {namespace}\n" if namespace else "")
    return f"apiVersion: {api_version}\nkind: {kind}\nmetadata:\n{metadata}".encode()


def cm_path(name: str) -> str:
    return f"{FOLDER}/v1/configmaps/{NS}/{name}.yaml"


def snapshot(
    objects: list[StoredObject],
    compiled: list[CompiledRule],
    branch: dict[str, bytes],
    files: dict[ObjectKey, FileRecord] | None = None,
    selections: set[tuple[str, str]] | None = None,
) -> tuple[FilePlan, int]:
    """The plan of one snapshot whose objects and folder are all at hand, and its writes."""
    planner = SnapshotPlanner(
        compiled,
        TYPES,
        ALL_SELECTED if selections is None else selections,
        FOLDER,
        files or {},
        set(branch),
        NAMESPACE_LABELS,
        (),
    )
    planner.add(objects, {path: branch[path] for path in planner.branch_paths_of(objects)})
    planner.identify({path: branch[path] for path in planner.unidentified()})
    return planner.finish(), planner.writes


def deleted_paths(plan: FilePlan) -> set[str]:
    return {change.path for change in plan.changes if change.content is None}


def written(plan: FilePlan) -> dict[str, bytes]:
    return {change.path: change.content for change in plan.changes if change.content is not None}


def event(kind: EventKind, body: dict[str, Any], seq: int) -> JournalEvent:
    metadata = body["metadata"]
    return JournalEvent(
        seq=seq,
        stream="configmaps",
        kind=kind,
        api_group="",
        api_version="v1",
        resource="configmaps",
        namespace=metadata["namespace"],
        name=metadata["name"],
        uid="uid",
        resource_version=str(seq),
        username=None,
        journaled_at=0.0,
        body=body,
    )


# -- identity from content --------------------------------------------------------------------


def test_a_complete_manifest_names_its_object() -> None:
    assert identity_of(manifest("apps/v1", "Deployment", "web"), KINDS) == ObjectKey(
        "apps", "deployments", NS, "web"
    )
    assert identity_of(manifest("v1", "Namespace", "prod", None), KINDS) == ObjectKey(
        "", "namespaces", "", "prod"
    )


def test_a_namespaced_manifest_without_namespace_names_no_object() -> None:
    assert identity_of(manifest("apps/v1", "Deployment", "web", None), KINDS) is None
    assert identity_of(manifest("apps/v1", "Deployment", "web", '""'), KINDS) is None


def test_a_cluster_scoped_manifest_with_a_namespace_names_no_object() -> None:
    assert identity_of(manifest("v1", "Namespace", "prod", NS), KINDS) is None


def test_unreadable_incomplete_or_unknown_files_name_no_object() -> None:
    for content in (
        b"apiVersion: v1\nkind: ConfigMap\nmetadata: [unclosed\n",
        b"- just\n- a list\n",
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  namespace: team-a\n",
        b'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ""\n  namespace: team-a\n',
        manifest("example.com/v1", "Widget", "w"),
        manifest("v1", "ConfigMap", "a") + b"---\n" + manifest("v1", "ConfigMap", "b"),
        b"\xff\xfe not text",
    ):
        assert identity_of(content, KINDS) is None, content


def test_a_kind_two_types_share_names_no_object() -> None:
    twin = ResourceType("", "v1", "configmapviews", "ConfigMap", namespaced=True)
    assert identity_of(manifest("v1", "ConfigMap", "a"), kind_index([CONFIGMAPS, twin])) is None


# -- whether a file already says what reverserd would write -----------------------------------


def test_a_file_with_other_quoting_order_and_comments_holds_the_same_object() -> None:
    _, rendered = manifest_of(CONFIGMAPS, SETTINGS, FOLDER, ())
    assert rendered != OLD_OPERATOR_FILE
    assert holds_object(OLD_OPERATOR_FILE, rendered)
    assert holds_object(b"# kept by hand\n" + OLD_OPERATOR_FILE, rendered)


def test_a_file_whose_values_read_as_other_types_does_not_hold_the_object() -> None:
    _, rendered = manifest_of(CONFIGMAPS, SETTINGS, FOLDER, ())
    # yes unquoted is a boolean to Kubernetes; 8080 unquoted a number.
    assert not holds_object(OLD_OPERATOR_FILE.replace(b'"yes"', b"yes"), rendered)
    assert not holds_object(OLD_OPERATOR_FILE.replace(b'"8080"', b"8080"), rendered)


def test_a_plain_value_yaml_readers_disagree_on_never_counts_as_equal() -> None:
    body = {**SETTINGS, "data": {"mode": "0o17"}}
    _, rendered = manifest_of(CONFIGMAPS, body, FOLDER, ())
    plain = rendered.replace(b"'0o17'", b"0o17")
    assert plain != rendered
    # PyYAML reads 0o17 as a string, go-yaml v2 (Kubernetes) as the number 15.
    assert not holds_object(plain, rendered)


def test_booleans_are_not_numbers() -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "x": 1}
    _, rendered = manifest_of(NAMESPACES, {**body, "kind": "Namespace"}, FOLDER, ())
    assert not holds_object(rendered.replace(b"x: 1", b"x: true"), rendered)


# -- present means present --------------------------------------------------------------------


def test_files_of_excluded_objects_are_kept_and_not_written() -> None:
    root_ca = configmap("kube-root-ca.crt", {"ca.crt": "pem"})
    helm = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "sh.helm.release.v1.web.v1", "namespace": NS},
        "type": "helm.sh/release.v1",
    }
    branch = {
        cm_path("kube-root-ca.crt"): manifest("v1", "ConfigMap", "kube-root-ca.crt"),
        f"{FOLDER}/v1/secrets/{NS}/sh.helm.release.v1.web.v1.sops.yaml": manifest(
            "v1", "Secret", "sh.helm.release.v1.web.v1"
        ),
    }
    plan, count = snapshot(
        [stored(root_ca, "configmaps"), stored(helm, "secrets", 2)],
        rules({"resources": ["configmaps", "secrets"]}, None),
        branch,
    )
    assert (plan.changes, count) == ([], 0)


def test_files_of_objects_filtered_out_by_operations_are_kept() -> None:
    branch = {cm_path("a"): manifest("v1", "ConfigMap", "a")}
    for operations in (["DELETE"], ["UPDATE", "DELETE"], ["CREATE", "DELETE"]):
        plan, _ = snapshot(
            [stored(configmap("a"), "configmaps")],
            rules({"resources": ["configmaps"], "operations": operations}),
            branch,
        )
        assert deleted_paths(plan) == set(), operations


def test_a_secret_the_target_cannot_write_keeps_its_file() -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": NS},
        "type": "Opaque",
    }
    path = f"{FOLDER}/v1/secrets/{NS}/db.sops.yaml"
    plan, _ = snapshot(
        [stored(secret, "secrets")],
        rules({"resources": ["secrets"]}),
        {path: manifest("v1", "Secret", "db")},
        files={ObjectKey("", "secrets", NS, "db"): (path, "fingerprint")},
    )
    assert plan.changes == []


def test_a_present_objects_path_is_never_deleted_whatever_its_file_says() -> None:
    # The file at a present object's path names a gone object: it is left to the object.
    plan, _ = snapshot(
        [stored(configmap("kube-root-ca.crt"), "configmaps")],
        rules({"resources": ["configmaps"]}),
        {cm_path("kube-root-ca.crt"): manifest("v1", "ConfigMap", "gone")},
    )
    assert plan.changes == []


# -- deletion needs evidence ------------------------------------------------------------------


def test_the_file_of_a_gone_object_goes_by_record_or_by_content() -> None:
    recorded, found = cm_path("recorded"), f"{FOLDER}/elsewhere/found.yaml"
    plan, _ = snapshot(
        [],
        rules({"resources": ["configmaps"]}),
        {
            recorded: manifest("v1", "ConfigMap", "recorded"),
            found: manifest("v1", "ConfigMap", "found"),
        },
        files={ObjectKey("", "configmaps", NS, "recorded"): (recorded, "hash")},
    )
    assert deleted_paths(plan) == {recorded, found}
    assert plan.deleted == 2


def test_pages_delete_nothing_before_the_last_and_a_later_pages_object_keeps_its_file() -> None:
    names = ["a-first", "m-gone", "z-last"]
    files = {ObjectKey("", "configmaps", NS, name): (cm_path(name), "old-hash") for name in names}
    found = f"{FOLDER}/elsewhere/found.yaml"
    branch = {cm_path(name): manifest("v1", "ConfigMap", name) for name in names}
    branch[found] = manifest("v1", "ConfigMap", "found")
    compiled = rules({"resources": ["configmaps"]})
    planner = SnapshotPlanner(
        compiled, TYPES, ALL_SELECTED, FOLDER, files, set(branch), NAMESPACE_LABELS, ()
    )
    pages = [
        [stored(configmap("a-first"), "configmaps", 1)],
        [stored(configmap("z-last"), "configmaps", 2)],
    ]
    for page in pages:
        wanted = planner.branch_paths_of(page)
        planner.add(page, {path: branch[path] for path in wanted})
        assert deleted_paths(planner.plan) == set()
    # Only the file no present object claims and no record names is read to identify it.
    assert planner.unidentified() == [found]
    planner.identify({found: branch[found]})
    plan = planner.finish()

    assert deleted_paths(plan) == {cm_path("m-gone"), found}
    assert set(written(plan)) == {cm_path("a-first"), cm_path("z-last")}
    assert planner.writes == 2
    whole, writes = snapshot([*pages[0], *pages[1]], compiled, branch, files)
    assert (whole.changes, whole.records, writes) == (plan.changes, plan.records, 2)


def test_a_page_planned_without_the_content_of_its_files_fails_instead_of_overwriting() -> None:
    path = cm_path("kept")
    planner = SnapshotPlanner(
        rules({"resources": ["configmaps"], "operations": ["CREATE"]}),
        TYPES,
        ALL_SELECTED,
        FOLDER,
        {},
        {path},
        NAMESPACE_LABELS,
        (),
    )
    with pytest.raises(ValueError, match="was not read"):
        planner.add([stored(configmap("kept"), "configmaps")], {})


def test_a_namespaced_file_without_namespace_survives_a_cluster_wide_rule() -> None:
    path = f"{FOLDER}/apps/v1/deployments/{NS}/legacy.yaml"
    plan, _ = snapshot(
        [],
        rules({"apiGroups": ["apps"], "resources": ["deployments"]}, None),
        {path: manifest("apps/v1", "Deployment", "legacy", None)},
    )
    assert plan.changes == []


def test_no_deletion_for_types_outside_the_snapshot_or_namespaces_outside_the_rules() -> None:
    other_ns = f"{FOLDER}/v1/configmaps/other/x.yaml"
    branch = {
        cm_path("gone"): manifest("v1", "ConfigMap", "gone"),
        other_ns: manifest("v1", "ConfigMap", "x", "other"),
    }
    narrowed, _ = snapshot([], rules({"resources": ["configmaps"]}), branch, selections=set())
    assert narrowed.changes == []
    scoped, _ = snapshot([], rules({"resources": ["configmaps"]}), branch)
    assert deleted_paths(scoped) == {cm_path("gone")}


def test_files_that_are_no_manifests_are_never_touched() -> None:
    branch = {
        f"{FOLDER}/README.md": b"# ours\n",
        f"{FOLDER}/notes.txt": manifest("v1", "ConfigMap", "gone"),
        f"{FOLDER}/kustomization.yaml": b"resources: []\n",
    }
    plan, _ = snapshot([], rules({"resources": ["configmaps"]}), branch)
    assert plan.changes == []


# -- adoption without churn -------------------------------------------------------------------


def test_an_equal_file_is_adopted_byte_for_byte_and_recorded_with_the_rendering() -> None:
    path = cm_path("settings")
    plan, count = snapshot(
        [stored(SETTINGS, "configmaps")],
        rules({"resources": ["configmaps"]}),
        {path: OLD_OPERATOR_FILE},
    )
    _, rendered = manifest_of(CONFIGMAPS, SETTINGS, FOLDER, ())
    assert plan.changes == []
    assert (count, plan.adopted, plan.created, plan.updated) == (1, 1, 0, 0)
    assert plan.records == [
        (ObjectKey("", "configmaps", NS, "settings"), path, content_hash(rendered))
    ]

    # A restart, a replay or a no-op update of the same object leaves the adopted file alone...
    record = (path, content_hash(rendered))
    assert (
        plan_event(
            event(EventKind.UPDATE, SETTINGS, 5), CONFIGMAPS, FOLDER, record, OLD_OPERATOR_FILE, ()
        )
        is None
    )
    again, _ = snapshot(
        [stored(SETTINGS, "configmaps")],
        rules({"resources": ["configmaps"]}),
        {path: OLD_OPERATOR_FILE},
        files={ObjectKey("", "configmaps", NS, "settings"): record},
    )
    assert (again.changes, again.adopted) == ([], 0)

    # ...and a real change rewrites it.
    changed = {**SETTINGS, "data": {**SETTINGS["data"], "port": "9090"}}
    update = plan_event(
        event(EventKind.UPDATE, changed, 6), CONFIGMAPS, FOLDER, record, OLD_OPERATOR_FILE, ()
    )
    assert update is not None
    assert written(update) == {path: manifest_of(CONFIGMAPS, changed, FOLDER, ())[1]}


def test_a_differing_file_is_rewritten_and_counted_as_updated() -> None:
    path = cm_path("settings")
    stale = OLD_OPERATOR_FILE.replace(b'"8080"', b'"80"')
    plan, _ = snapshot(
        [stored(SETTINGS, "configmaps"), stored(configmap("new"), "configmaps", 2)],
        rules({"resources": ["configmaps"]}),
        {path: stale},
    )
    assert set(written(plan)) == {path, cm_path("new")}
    assert (plan.adopted, plan.created, plan.updated, plan.deleted) == (0, 1, 1, 0)
    assert "adopted: 0\ncreated: 1\nupdated: 1\ndeleted: 0\n" in reconcile_message(plan, 2, "t/m")


def test_create_only_rules_leave_an_existing_file_as_it_was() -> None:
    path = cm_path("settings")
    stale = OLD_OPERATOR_FILE.replace(b'"8080"', b'"80"')
    plan, _ = snapshot(
        [stored(SETTINGS, "configmaps"), stored(configmap("new"), "configmaps", 2)],
        rules({"resources": ["configmaps"], "operations": ["CREATE"]}),
        {path: stale},
    )
    assert set(written(plan)) == {cm_path("new")}


def test_a_moved_object_is_written_at_its_new_path_and_its_old_file_removed() -> None:
    old = f"{FOLDER}/v1beta1/configmaps/{NS}/settings.yaml"
    path = cm_path("settings")
    plan, _ = snapshot(
        [stored(SETTINGS, "configmaps")],
        rules({"resources": ["configmaps"]}),
        {old: OLD_OPERATOR_FILE, path: OLD_OPERATOR_FILE},
        files={ObjectKey("", "configmaps", NS, "settings"): (old, "hash")},
    )
    assert FileChange(old, None) in plan.changes
    assert set(written(plan)) == {path}


def test_an_object_whose_file_cannot_be_planned_is_held_and_counts_as_present() -> None:
    # Nested deeper than any decoder or renderer recurses: the object cannot get a file, but
    # it exists.
    poison = configmap("poison")
    deep = '{"d": ' * 5000 + "{}" + "}" * 5000
    poison_json = json.dumps({**poison, "spec": None}).replace('"spec": null', f'"spec": {deep}')
    path = cm_path("poison")
    plan, count = snapshot(
        [
            stored(poison, "configmaps", body_json=poison_json),
            stored(configmap("fine"), "configmaps", 2),
        ],
        rules({"resources": ["configmaps"]}),
        {
            path: manifest("v1", "ConfigMap", "poison"),
            cm_path("gone"): manifest("v1", "ConfigMap", "gone"),
        },
    )
    assert list(plan.quarantine) == [ObjectKey("", "configmaps", NS, "poison")]
    assert count == 1
    assert set(written(plan)) == {cm_path("fine")}
    assert deleted_paths(plan) == {cm_path("gone")}
