"""The CustomResourceDefinitions under packaging/crds/ hold to SPEC §2 and to the
structural-schema rules of apiextensions.k8s.io/v1.

The API server refuses a CRD whose schema is not structural (an untyped node, `required`
naming an unknown property, a map-list whose key is optional, ...), and kubectl's strict
field validation refuses any field the schema does not declare. Both failures only show
up when the CRDs meet a real cluster, so the rules are checked here, statically.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

CRD_DIR = Path(__file__).resolve().parents[2] / "packaging" / "crds"
GROUP = "configbutler.ai"
VERSION = "v1alpha1"
READY_PATH = '.status.conditions[?(@.type=="Ready")].status'

CONDITION_FIELDS = {
    "conditions": "array",
    "conditions[].type": "string",
    "conditions[].status": "string",
    "conditions[].observedGeneration": "integer",
    "conditions[].lastTransitionTime": "string",
    "conditions[].reason": "string",
    "conditions[].message": "string",
}
TARGET_REF = {
    "targetRef": "object",
    "targetRef.name": "string",
    "targetRef.kind": "string",
    "targetRef.group": "string",
}
RULE_FIELDS = {
    "rules": "array",
    "rules[].operations": "array",
    "rules[].apiGroups": "array",
    "rules[].apiVersions": "array",
    "rules[].resources": "array",
    "rules[].skipControlled": "boolean",
}


# A Kubernetes label selector (metav1.LabelSelector) at ``prefix``.
def _label_selector(prefix: str) -> dict[str, str]:
    return {
        prefix: "object",
        f"{prefix}.matchLabels": "object",
        f"{prefix}.matchExpressions": "array",
        f"{prefix}.matchExpressions[].key": "string",
        f"{prefix}.matchExpressions[].operator": "string",
        f"{prefix}.matchExpressions[].values": "array",
    }


RULE_FIELDS.update(_label_selector("rules[].objectSelector"))
SECRET_REF = {"name": "string", "kind": "string", "group": "string"}


def _prefixed(prefix: str, fields: dict[str, str]) -> dict[str, str]:
    return {f"{prefix}.{path}": kind for path, kind in fields.items()}


def _status(extra: dict[str, str] | None = None) -> dict[str, str]:
    fields = {"observedGeneration": "integer", **CONDITION_FIELDS, **(extra or {})}
    return _prefixed("status", fields)


# Every property path under spec and status, with its type. Adding, renaming or retyping a
# field without updating this table fails the test: the shapes are a compatibility promise.
KINDS: dict[str, dict[str, Any]] = {
    "GitProvider": {
        "plural": "gitproviders",
        "scope": "Namespaced",
        "columns": ["URL", "Ready", "Age"],
        "spec_required": {"url", "allowedBranches"},
        "fields": {
            **_prefixed(
                "spec",
                {
                    "url": "string",
                    "allowedBranches": "array",
                    "secretRef": "object",
                    **{f"secretRef.{k}": v for k, v in SECRET_REF.items()},
                    "push": "object",
                    "push.interval": "string",
                    "push.maxCommits": "integer",
                    "commit": "object",
                    "commit.committer": "object",
                    "commit.committer.name": "string",
                    "commit.committer.email": "string",
                    "commit.message": "object",
                    "commit.message.eventTemplate": "string",
                    "commit.message.reconcileTemplate": "string",
                    "commit.message.groupTemplate": "string",
                    "commit.signing": "object",
                    "commit.signing.secretRef": "object",
                    **{f"commit.signing.secretRef.{k}": v for k, v in SECRET_REF.items()},
                    "commit.signing.generateWhenMissing": "boolean",
                },
            ),
            **_status({"signingPublicKey": "string"}),
        },
    },
    "GitTarget": {
        "plural": "gittargets",
        "scope": "Namespaced",
        "columns": ["Provider", "Branch", "Path", "Ready", "Last Commit", "Age"],
        "spec_required": {"providerRef", "branch"},
        "fields": {
            **_prefixed(
                "spec",
                {
                    "providerRef": "object",
                    "providerRef.name": "string",
                    "providerRef.kind": "string",
                    "providerRef.group": "string",
                    "branch": "string",
                    "path": "string",
                    "dropFields": "array",
                    "excludeFieldManagers": "array",
                    "excludeUsers": "array",
                    "kustomization": "boolean",
                    "encryption": "object",
                    "encryption.provider": "string",
                    "encryption.secretRef": "object",
                    **{f"encryption.secretRef.{k}": v for k, v in SECRET_REF.items()},
                    "encryption.age": "object",
                    "encryption.age.enabled": "boolean",
                    "encryption.age.recipients": "object",
                    "encryption.age.recipients.publicKeys": "array",
                    "encryption.age.recipients.extractFromSecret": "boolean",
                    "encryption.age.recipients.generateWhenMissing": "boolean",
                    "suspend": "boolean",
                    "drift": "object",
                    "drift.mode": "string",
                },
            ),
            **_status(
                {
                    "lastHandledReconcileAt": "string",
                    "drift": "object",
                    "drift.driftedFiles": "integer",
                    "drift.lastRepairTime": "string",
                    "drift.lastRepairedFiles": "integer",
                    "path": "string",
                    "lastCommit": "string",
                    "lastPushTime": "string",
                    "lastReconcileTime": "string",
                    "snapshot": "object",
                    "snapshot.lastCompletedTime": "string",
                    "snapshot.stats": "object",
                    "snapshot.stats.created": "integer",
                    "snapshot.stats.updated": "integer",
                    "snapshot.stats.deleted": "integer",
                }
            ),
        },
    },
    "WatchRule": {
        "plural": "watchrules",
        "scope": "Namespaced",
        "columns": ["Target", "Ready", "Age"],
        "spec_required": {"targetRef", "rules"},
        "fields": {
            **_prefixed("spec", {**TARGET_REF, **RULE_FIELDS}),
            **_status(),
        },
    },
    "ClusterWatchRule": {
        "plural": "clusterwatchrules",
        "scope": "Cluster",
        "columns": ["Target", "Ready", "Age"],
        "spec_required": {"targetRef", "rules"},
        "fields": {
            **_prefixed(
                "spec",
                {
                    **TARGET_REF,
                    "targetRef.namespace": "string",
                    **RULE_FIELDS,
                    "rules[].scope": "string",
                    **_label_selector("rules[].namespaceSelector"),
                },
            ),
            **_status(),
        },
    },
}

DATE_TIME_FIELDS = {
    "status.conditions[].lastTransitionTime",
    "status.lastPushTime",
    "status.lastReconcileTime",
    "status.snapshot.lastCompletedTime",
    "status.drift.lastRepairTime",
}
PRINTER_COLUMN_TYPES = {"integer", "number", "string", "boolean", "date"}
SCHEMA_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
PY_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
}


def _file_for(kind: str) -> Path:
    return CRD_DIR / f"{GROUP}_{KINDS[kind]['plural']}.yaml"


def _load(kind: str) -> dict[str, Any]:
    docs = list(yaml.safe_load_all(_file_for(kind).read_text(encoding="utf-8")))
    assert len(docs) == 1, f"{kind}: expected exactly one YAML document, got {len(docs)}"
    crd = docs[0]
    assert isinstance(crd, dict)
    return crd


def _version(crd: dict[str, Any]) -> dict[str, Any]:
    versions = crd["spec"]["versions"]
    assert len(versions) == 1
    version = versions[0]
    assert isinstance(version, dict)
    return version


def _root(crd: dict[str, Any]) -> dict[str, Any]:
    root = _version(crd)["schema"]["openAPIV3Schema"]
    assert isinstance(root, dict)
    return root


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (`spec.rules[].resources`), the node itself first."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}" if path else name)
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")


def _property_paths(root: dict[str, Any], top: str) -> dict[str, str]:
    """Declared property paths under `top` with their types; array items are not properties."""
    return {
        path: node.get("type", "")
        for path, node in _walk(root["properties"][top], top)
        if path != top and not path.endswith("[]")
    }


_JSON_PATH_STEP = re.compile(r'\.(\w+)(\[\?\(@\.\w+=="[^"]*"\)\])?')


def _resolve(root: dict[str, Any], json_path: str) -> dict[str, Any] | None:
    """The schema node a printer column's simple JSONPath points at, or None."""
    steps = list(_JSON_PATH_STEP.finditer(json_path))
    if "".join(step.group(0) for step in steps) != json_path:
        return None
    node: dict[str, Any] | None = root
    for step in steps:
        if node is None:
            return None
        if node.get("type") == "object" and "properties" not in node:
            # metadata is declared as a bare object; the API server owns its fields.
            return {"type": "string"} if step.group(1) == "creationTimestamp" else None
        node = node.get("properties", {}).get(step.group(1))
        if node is not None and step.group(2):
            node = node.get("items")
    return node


def _has_type(value: object, schema_type: str) -> bool:
    if isinstance(value, bool):
        return schema_type == "boolean"
    return isinstance(value, PY_TYPES[schema_type])


@pytest.fixture(params=sorted(KINDS), ids=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    value = request.param
    assert isinstance(value, str)
    return value


def test_one_file_per_kind_and_no_other_files() -> None:
    expected = {_file_for(k).name for k in KINDS}
    assert {p.name for p in CRD_DIR.iterdir()} == expected


def test_crd_names_group_and_scope(kind: str) -> None:
    crd = _load(kind)
    spec = KINDS[kind]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{spec['plural']}.{GROUP}"
    assert crd["spec"]["group"] == GROUP
    assert crd["spec"]["scope"] == spec["scope"]
    names = crd["spec"]["names"]
    assert names["kind"] == kind
    assert names["listKind"] == f"{kind}List"
    assert names["plural"] == spec["plural"]
    assert names["singular"] == kind.lower()
    for short in names.get("shortNames", []):
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", short), short


def test_single_served_storage_version_with_status_subresource(kind: str) -> None:
    version = _version(_load(kind))
    assert version["name"] == VERSION
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


def test_printer_columns_show_what_an_operator_needs(kind: str) -> None:
    crd = _load(kind)
    columns = _version(crd)["additionalPrinterColumns"]
    default_view = [c["name"] for c in columns if c.get("priority", 0) == 0]
    for name in KINDS[kind]["columns"]:
        assert name in default_view, f"{kind}: column {name} missing from the default view"
    assert default_view[-1] == "Age"
    by_name = {c["name"]: c for c in columns}
    assert len(by_name) == len(columns), "duplicate column names"
    assert by_name["Ready"]["jsonPath"] == READY_PATH
    assert by_name["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }
    root = _root(crd)
    for column in columns:
        assert column["type"] in PRINTER_COLUMN_TYPES
        node = _resolve(root, column["jsonPath"])
        assert node is not None, f"{kind}: column {column['name']} points at nothing"
        if column["type"] == "date" and column["name"] != "Age":
            assert node.get("format") == "date-time", column["name"]


def test_schema_is_structural(kind: str) -> None:
    root = _root(_load(kind))
    assert root["type"] == "object"
    assert root["properties"]["metadata"] == {"type": "object"}
    assert "spec" in root["required"]
    for path, node in _walk(root, ""):
        where = f"{kind} {path or '<root>'}"
        assert node.get("type") in SCHEMA_TYPES, f"{where}: no valid type"
        assert "nullable" not in node, where
        assert "x-kubernetes-preserve-unknown-fields" not in node, where
        if "additionalProperties" in node:
            # Only bounded maps of strings (a label selector's matchLabels), which stay
            # structural: no properties beside them, a typed and bounded value schema.
            values = node["additionalProperties"]
            assert node["type"] == "object" and "properties" not in node, where
            assert "maxProperties" in node, where
            assert values == {"type": "string", "maxLength": values.get("maxLength")}, where
            assert isinstance(values["maxLength"], int), where
        if node["type"] == "array":
            assert isinstance(node.get("items"), dict), f"{where}: array without items"
        else:
            assert "items" not in node, where
        if "required" in node:
            assert node["type"] == "object", where
            missing = set(node["required"]) - set(node.get("properties", {}))
            assert not missing, f"{where}: required names undeclared {missing}"
        for value in node.get("enum", []):
            assert _has_type(value, node["type"]), f"{where}: enum {value!r}"
        if "default" in node:
            default = node["default"]
            assert _has_type(default, node["type"]), where
            assert default in node.get("enum", [default]), where
        if "pattern" in node:
            assert node["type"] == "string", where
            re.compile(node["pattern"])
        list_type = node.get("x-kubernetes-list-type")
        if list_type is not None:
            assert node["type"] == "array", where
            assert list_type in {"atomic", "set", "map"}, where
        if list_type == "map":
            items = node["items"]
            keys = node.get("x-kubernetes-list-map-keys")
            assert keys, f"{where}: map list without keys"
            for key in keys:
                assert items["properties"][key]["type"] in {"string", "integer", "boolean"}
                assert key in items.get("required", []) or "default" in items["properties"][key]
        else:
            assert "x-kubernetes-list-map-keys" not in node, where


def test_every_spec_and_status_property_is_described(kind: str) -> None:
    root = _root(_load(kind))
    for top in ("spec", "status"):
        for path, node in _walk(root["properties"][top], top):
            if not path.endswith("[]"):
                assert node.get("description", "").strip(), f"{kind} {path}: no description"


def test_field_names_and_types_match_the_specification(kind: str) -> None:
    root = _root(_load(kind))
    declared = {**_property_paths(root, "spec"), **_property_paths(root, "status")}
    assert declared == KINDS[kind]["fields"]
    for path, node in _walk(root, ""):
        if path in DATE_TIME_FIELDS:
            assert node.get("format") == "date-time", path
        if path.endswith("observedGeneration"):
            assert node.get("format") == "int64" and node.get("minimum") == 0, path


def test_required_spec_fields(kind: str) -> None:
    spec = _root(_load(kind))["properties"]["spec"]
    assert set(spec["required"]) == KINDS[kind]["spec_required"]


def test_conditions_follow_metav1_condition(kind: str) -> None:
    conditions = _root(_load(kind))["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    reason = re.compile(item["properties"]["reason"]["pattern"])
    for good in ("Ready", "SecretNotFound", "ResourceNotServed"):
        assert reason.search(good)
    for bad in ("", "Not Ready", "9Lives", "trailing-"):
        assert not reason.search(bad)


def _spec_node(kind: str, dotted: str) -> dict[str, Any]:
    node = _root(_load(kind))["properties"]["spec"]
    for part in dotted.split("."):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


def test_git_provider_requires_at_least_one_allowed_branch() -> None:
    branches = _spec_node("GitProvider", "allowedBranches")
    assert branches["minItems"] == 1
    assert branches["items"]["minLength"] == 1
    assert _spec_node("GitProvider", "url")["minLength"] == 1
    assert _spec_node("GitProvider", "push.maxCommits")["minimum"] == 1
    assert _spec_node("GitProvider", "secretRef")["required"] == ["name"]


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("5s", True),
        ("1m30s", True),
        ("500ms", True),
        ("1.5h", True),
        ("2h45m30.5s", True),
        ("300µs", True),
        ("0", True),
        ("5", False),
        ("-1s", False),
        ("5 seconds", False),
        ("1d", False),
        ("5S", False),
        (" 5s", False),
        ("", False),
        ("ms", False),
    ],
)
def test_push_interval_accepts_go_durations_only(value: str, accepted: bool) -> None:
    pattern = _spec_node("GitProvider", "push.interval")["pattern"]
    assert bool(re.search(pattern, value)) is accepted


def test_git_target_provider_ref_defaults_and_branch_is_not_empty() -> None:
    ref = _spec_node("GitTarget", "providerRef")
    assert ref["required"] == ["name"]
    assert ref["properties"]["kind"]["default"] == "GitProvider"
    assert ref["properties"]["group"]["default"] == GROUP
    assert _spec_node("GitTarget", "branch")["minLength"] == 1
    # An empty path is the repository root, and unsafe paths are reported in status.
    path = _spec_node("GitTarget", "path")
    assert "minLength" not in path and "pattern" not in path


def test_git_target_encryption_is_sops_only() -> None:
    provider = _spec_node("GitTarget", "encryption.provider")
    assert provider["enum"] == ["sops"]
    assert provider["default"] == "sops"
    assert _spec_node("GitTarget", "encryption.secretRef")["required"] == ["name"]


@pytest.mark.parametrize("kind", ["WatchRule", "ClusterWatchRule"])
def test_watch_rules_need_rules_and_resources(kind: str) -> None:
    assert _spec_node(kind, "rules")["minItems"] == 1
    assert _spec_node(kind, "rules.[].resources")["minItems"] == 1
    operations = _spec_node(kind, "rules.[].operations")["items"]["enum"]
    assert operations == ["CREATE", "UPDATE", "DELETE", "*"]
    assert _spec_node(kind, "targetRef")["properties"]["kind"]["enum"] == ["GitTarget"]


def test_cluster_watch_rule_scope_is_required_and_has_no_default() -> None:
    rule = _spec_node("ClusterWatchRule", "rules.[]")
    assert {"resources", "scope"} <= set(rule["required"])
    scope = rule["properties"]["scope"]
    assert scope["enum"] == ["Cluster", "Namespaced"]
    assert "default" not in scope
    assert set(_spec_node("ClusterWatchRule", "targetRef")["required"]) == {"name", "namespace"}
    assert _spec_node("ClusterWatchRule", "targetRef.namespace")["minLength"] == 1


def test_watch_rule_has_no_scope_or_target_namespace() -> None:
    assert "scope" not in _spec_node("WatchRule", "rules.[]")["properties"]
    assert "namespace" not in _spec_node("WatchRule", "targetRef")["properties"]


# Reference names go into API paths: the schema holds them to the Kubernetes name grammar.
NAME_PATTERNS = {
    "spec.secretRef.name": 253,
    "spec.providerRef.name": 253,
    "spec.targetRef.name": 253,
    "spec.encryption.secretRef.name": 253,
    "spec.targetRef.namespace": 63,
}


def test_every_string_and_list_is_bounded(kind: str) -> None:
    """No custom resource can hold an unbounded string or list (a slow or oversized object)."""
    root = _root(_load(kind))
    for top in ("spec", "status"):
        for path, node in _walk(root["properties"][top], top):
            if node["type"] == "string":
                bounded = "maxLength" in node or "enum" in node or "format" in node
                assert bounded, f"{kind} {path}: string without maxLength"
            if node["type"] == "array":
                assert "maxItems" in node, f"{kind} {path}: list without maxItems"


def test_reference_names_are_kubernetes_names(kind: str) -> None:
    root = _root(_load(kind))
    found = {path: node for path, node in _walk(root["properties"]["spec"], "spec")}
    for path, limit in NAME_PATTERNS.items():
        if path not in found:
            continue
        node = found[path]
        assert node["maxLength"] == limit, path
        pattern = re.compile(node["pattern"])
        assert pattern.match("team-a")
        for bad in ("../../other-team/secrets/git-token", "a/b", "Upper", "a%2Fb", "-a", ""):
            assert not pattern.match(bad), (path, bad)
