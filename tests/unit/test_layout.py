"""layout: file paths, commit subject names and default exclusions (SPEC 3.2, 3.3)."""

from __future__ import annotations

import dataclasses

import pytest

from reverserd.kube.resources import ResourceType
from reverserd.manifest.layout import (
    DEFAULT_EXCLUDED_RESOURCES,
    SENSITIVE_RESOURCES,
    commit_subject_path,
    is_excluded_object,
    object_path,
    validate_target_path,
)

CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap", namespaced=True)
SECRETS = ResourceType("", "v1", "secrets", "Secret", namespaced=True)
NAMESPACES = ResourceType("", "v1", "namespaces", "Namespace", namespaced=False)
DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment", namespaced=True)
CLUSTER_ROLES = ResourceType(
    "rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False
)
BACKUPS = ResourceType("velero.io", "v1", "backups", "Backup", namespaced=True)


# --- ResourceType ---------------------------------------------------------------------------


def test_core_api_version_has_no_group() -> None:
    assert CONFIGMAPS.api_version == "v1"


def test_named_group_api_version_is_group_slash_version() -> None:
    assert DEPLOYMENTS.api_version == "apps/v1"
    assert CLUSTER_ROLES.api_version == "rbac.authorization.k8s.io/v1"


def test_resource_type_is_immutable_and_hashable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CONFIGMAPS.version = "v2"  # type: ignore[misc]
    assert {CONFIGMAPS, ResourceType("", "v1", "configmaps", "ConfigMap", True)} == {CONFIGMAPS}


# --- object_path ----------------------------------------------------------------------------


def test_core_namespaced_object_path_matches_the_spec_example() -> None:
    path = object_path("live-cluster", CONFIGMAPS, "team-a", "oeps3", sensitive=False)
    assert path == "live-cluster/v1/configmaps/team-a/oeps3.yaml"


def test_grouped_namespaced_object_has_a_group_segment() -> None:
    path = object_path("live", DEPLOYMENTS, "team-a", "web", sensitive=False)
    assert path == "live/apps/v1/deployments/team-a/web.yaml"


def test_cluster_scoped_object_has_no_namespace_segment() -> None:
    path = object_path("live", CLUSTER_ROLES, None, "system:aggregate-to-view", sensitive=False)
    assert path == "live/rbac.authorization.k8s.io/v1/clusterroles/system:aggregate-to-view.yaml"


def test_core_cluster_scoped_object_path() -> None:
    assert object_path("live", NAMESPACES, "", "team-a", False) == "live/v1/namespaces/team-a.yaml"


def test_sensitive_object_ends_in_sops_yaml() -> None:
    path = object_path("live", SECRETS, "team-a", "db-creds", sensitive=True)
    assert path == "live/v1/secrets/team-a/db-creds.sops.yaml"


def test_empty_target_path_writes_at_repository_root() -> None:
    assert object_path("", CONFIGMAPS, "ns", "cm", False) == "v1/configmaps/ns/cm.yaml"


def test_deep_target_path_and_group_starting_with_v() -> None:
    path = object_path("clusters/prod/live", BACKUPS, "velero", "nightly", sensitive=False)
    assert path == "clusters/prod/live/velero.io/v1/backups/velero/nightly.yaml"


def test_names_with_dots_keep_them() -> None:
    name = "app.example.com.very-long-dns-style-name-0123456789"
    path = object_path("live", CONFIGMAPS, "team-a", name, sensitive=False)
    assert path == f"live/v1/configmaps/team-a/{name}.yaml"


def test_invalid_target_path_raises() -> None:
    with pytest.raises(ValueError, match="absolute"):
        object_path("/etc", CONFIGMAPS, "ns", "cm", False)


def test_namespaced_type_without_namespace_raises() -> None:
    with pytest.raises(ValueError, match="namespaced"):
        object_path("live", CONFIGMAPS, None, "cm", False)


def test_cluster_scoped_type_with_namespace_raises() -> None:
    with pytest.raises(ValueError, match="cluster-scoped"):
        object_path("live", CLUSTER_ROLES, "team-a", "reader", False)


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "a\\b", "nul\0"])
def test_name_that_would_leave_its_folder_raises(name: str) -> None:
    with pytest.raises(ValueError, match="cannot be a file or folder name"):
        object_path("live", CONFIGMAPS, "team-a", name, False)


def test_namespace_that_would_leave_its_folder_raises() -> None:
    with pytest.raises(ValueError, match="cannot be a file or folder name"):
        object_path("live", CONFIGMAPS, "..", "cm", False)


# --- commit_subject_path --------------------------------------------------------------------


def test_commit_subject_path_for_core_namespaced_object() -> None:
    assert commit_subject_path(CONFIGMAPS, "ns", "name") == "v1/configmaps/ns/name"


def test_commit_subject_path_for_grouped_namespaced_object() -> None:
    assert commit_subject_path(DEPLOYMENTS, "ns", "web") == "apps/v1/deployments/ns/web"


def test_commit_subject_path_for_cluster_scoped_object() -> None:
    subject = commit_subject_path(CLUSTER_ROLES, None, "reader")
    assert subject == "rbac.authorization.k8s.io/v1/clusterroles/reader"


def test_commit_subject_path_has_no_suffix_for_secrets() -> None:
    assert commit_subject_path(SECRETS, "ns", "creds") == "v1/secrets/ns/creds"


# --- validate_target_path -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["", "live", "live-cluster", "clusters/prod/live", "a.b/c_d"])
def test_valid_target_paths_are_accepted(path: str) -> None:
    assert validate_target_path(path) is None


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/abs", "absolute"),
        ("/", "absolute"),
        ("../x", "'..'"),
        ("a/../b", "'..'"),
        ("a/..", "'..'"),
        ("./a", "'.'"),
        ("a\\b", "backslash"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
        (".git", ".git"),
        ("repo/.git/hooks", ".git"),
        ("a/.GIT", ".git"),
        (".git.", "Git keeps its own metadata"),
        ("a/.git ", "Git keeps its own metadata"),
        ("git~1/hooks", "Git keeps its own metadata"),
        ("a/GIT~1", "Git keeps its own metadata"),
        (".Git. ./x", "Git keeps its own metadata"),
        ("a/zero\u200bwidth", "invisible character"),
        ("a\0b", "NUL"),
    ],
)
def test_invalid_target_paths_are_refused_with_a_reason(path: str, reason: str) -> None:
    error = validate_target_path(path)
    assert error is not None
    assert reason in error
    assert repr(path) in error


def test_dot_git_prefix_in_a_longer_name_is_allowed() -> None:
    assert validate_target_path(".github/live") is None
    assert validate_target_path("live.git") is None


# --- exclusions -----------------------------------------------------------------------------


def test_secrets_are_the_default_sensitive_resource() -> None:
    assert SENSITIVE_RESOURCES == {("", "secrets")}


@pytest.mark.parametrize(
    "group_resource",
    [
        ("", "pods"),
        ("", "events"),
        ("events.k8s.io", "events"),
        ("", "endpoints"),
        ("discovery.k8s.io", "endpointslices"),
        ("coordination.k8s.io", "leases"),
        ("apps", "controllerrevisions"),
        ("apps", "replicasets"),
        ("batch", "jobs"),
        ("flowcontrol.apiserver.k8s.io", "flowschemas"),
        ("flowcontrol.apiserver.k8s.io", "prioritylevelconfigurations"),
    ],
)
def test_noisy_resources_are_excluded_by_default(group_resource: tuple[str, str]) -> None:
    assert group_resource in DEFAULT_EXCLUDED_RESOURCES


@pytest.mark.parametrize(
    "group_resource",
    [("", "configmaps"), ("", "secrets"), ("apps", "deployments"), ("batch", "cronjobs")],
)
def test_configuration_resources_are_not_excluded(group_resource: tuple[str, str]) -> None:
    assert group_resource not in DEFAULT_EXCLUDED_RESOURCES


@pytest.mark.parametrize(
    "secret_type", ["kubernetes.io/service-account-token", "helm.sh/release.v1"]
)
def test_generated_secret_types_are_excluded(secret_type: str) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": secret_type}
    assert is_excluded_object(SECRETS, secret)


@pytest.mark.parametrize("secret_type", ["Opaque", "kubernetes.io/tls", None])
def test_ordinary_secrets_are_not_excluded(secret_type: str | None) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": secret_type}
    assert not is_excluded_object(SECRETS, secret)


def test_kube_root_ca_configmap_is_excluded() -> None:
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt"}}
    assert is_excluded_object(CONFIGMAPS, configmap)


def test_other_configmaps_are_not_excluded() -> None:
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-config"}}
    assert not is_excluded_object(CONFIGMAPS, configmap)


def test_exclusions_apply_only_to_core_types() -> None:
    custom_secrets = ResourceType("example.com", "v1", "secrets", "Secret", namespaced=True)
    token = {"metadata": {"name": "t"}, "type": "kubernetes.io/service-account-token"}
    assert not is_excluded_object(custom_secrets, token)
    custom_configmaps = ResourceType("example.com", "v1", "configmaps", "ConfigMap", True)
    assert not is_excluded_object(custom_configmaps, {"metadata": {"name": "kube-root-ca.crt"}})


def test_longest_kubernetes_name_gets_a_stable_file_name_within_255_bytes() -> None:
    name = ("a" * 62 + ".") * 4 + "b"  # 253 characters, a valid DNS subdomain
    assert len(name) == 253
    path = object_path("live", CONFIGMAPS, "ns", name, sensitive=True)
    file_name = path.rsplit("/", 1)[1]
    assert len(file_name.encode()) == 255
    assert file_name.endswith(".sops.yaml") and file_name.startswith("a" * 62 + ".")
    assert path == object_path("live", CONFIGMAPS, "ns", name, sensitive=True)
    other = object_path("live", CONFIGMAPS, "ns", name[:-1] + "c", sensitive=True)
    assert other != path


def test_names_that_fit_are_never_shortened() -> None:
    name = "x" * (255 - len(".yaml"))
    assert object_path("", CONFIGMAPS, "ns", name, sensitive=False).endswith(f"/{name}.yaml")
