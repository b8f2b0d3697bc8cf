"""The ways reverserd ships: Helm chart, plain manifests, systemd unit and container image.

Rendered objects are checked by the test bed's real kube-apiserver (``kubectl apply
--dry-run=server``: schema, strict field validation, RBAC object rules, Pod Security warnings),
never by comparing text with a snapshot. Helm is the test bed's own, built from its Go module.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from reverserd.attribution.peers import MIN_SECRET_BYTES, peer_server_name
from reverserd.cli import build_parser
from testbed.controlplane import REPO_ROOT, ControlPlane
from testbed.tools import ensure_helm

PACKAGING = REPO_ROOT / "packaging"
CHART = PACKAGING / "helm" / "reverserd"
MANIFESTS = PACKAGING / "manifests" / "reverserd.yaml"
RBAC_SOURCE = PACKAGING / "rbac" / "clusterrole.yaml"
ADMISSION_SOURCE = PACKAGING / "admission" / "creator-access.yaml"
# The admission objects of packaging/admission/creator-access.yaml, in the order kinds() sorts.
CREATOR_ACCESS_KINDS = (
    *(["ValidatingAdmissionPolicy"] * 2),
    *(["ValidatingAdmissionPolicyBinding"] * 2),
)
UNIT = PACKAGING / "systemd" / "reverserd.service"
ENV_EXAMPLE = PACKAGING / "systemd" / "reverserd.env.example"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
SERVICEMONITOR_CRD = Path(__file__).parent / "servicemonitor-crd.yaml"
OLD_VALUES = Path(__file__).parent / "gitops-reverser-v0.17-values.yaml"
MIGRATION_GUIDE = "docs/migrating-from-gitops-reverser.md"

STATE_DIR = "/var/lib/reverserd"
NON_ROOT_UID = 65532
WITH_OPTIONAL_FEATURES = (
    "--set",
    "leaderElection.enabled=true",
    "--set",
    "metrics.serviceMonitor.enabled=true",
)
POD_SECURITY_WARNING = "would violate PodSecurity"


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm() -> Path:
    return ensure_helm(progress=lambda message: print(f"testbed: {message}", file=sys.stderr))


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )


def render(helm: Path, namespace: str, *args: str) -> str:
    result = run_helm(helm, "template", "reverserd", str(CHART), "--namespace", namespace, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def refusal(helm: Path, *args: str) -> str:
    """What ``helm template`` says when it refuses to render the chart with ``args``."""
    result = run_helm(helm, "template", "reverserd", str(CHART), *args)
    assert result.returncode != 0, result.stdout
    return result.stderr


def objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def daemon_role(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The daemon's own ClusterRole, beside the status readers' ones."""
    found = [
        doc
        for doc in docs
        if doc["kind"] == "ClusterRole" and not doc["metadata"]["name"].endswith("-reader")
    ]
    assert len(found) == 1, [doc["metadata"]["name"] for doc in found]
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(doc["kind"] for doc in docs)


def server_dry_run(plane: ControlPlane, manifest: str) -> subprocess.CompletedProcess[str]:
    """``kubectl apply --dry-run=server`` as admin; warnings come back on stderr."""
    return subprocess.run(
        [
            str(plane.kubectl_path),
            f"--kubeconfig={plane.admin_kubeconfig}",
            "apply",
            "--dry-run=server",
            "-f",
            "-",
        ],
        input=manifest,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_accepted(plane: ControlPlane, manifest: str, expected_objects: int) -> None:
    result = server_dry_run(plane, manifest)
    assert result.returncode == 0, result.stderr
    assert POD_SECURITY_WARNING not in result.stderr, result.stderr
    assert result.stdout.count("(server dry run)") == expected_objects, result.stdout


@pytest.fixture
def restricted_namespace(control_plane: ControlPlane, namespace: str) -> str:
    """A fresh namespace that enforces, and warns about, the restricted Pod Security level."""
    control_plane.kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    )
    return namespace


@pytest.fixture(scope="session")
def servicemonitor_crd(control_plane: ControlPlane) -> None:
    control_plane.kubectl("apply", "-f", str(SERVICEMONITOR_CRD))
    control_plane.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/servicemonitors.monitoring.coreos.com",
    )


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


# --- the chart -------------------------------------------------------------------------------


def test_chart_runs_the_version_of_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]


@pytest.mark.parametrize("features", [(), WITH_OPTIONAL_FEATURES], ids=["default", "optional"])
def test_helm_lint_accepts_the_chart(helm: Path, features: tuple[str, ...]) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), *features)
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_render_holds_the_daemon_and_least_privilege_rbac(helm: Path) -> None:
    docs = objects(render(helm, "ops"))
    assert kinds(docs) == [
        *(["ClusterRole"] * 3),
        "ClusterRoleBinding",
        "Deployment",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "Service",
        "ServiceAccount",
        *CREATOR_ACCESS_KINDS,
    ]
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding", *CREATOR_ACCESS_KINDS):
            assert doc["metadata"]["namespace"] == "ops", doc["kind"]
    # The admission policies, on by default, are the source's objects with the chart's labels.
    source = [doc for doc in yaml.safe_load_all(ADMISSION_SOURCE.read_text()) if doc]
    rendered = [doc for doc in docs if doc["kind"] in CREATOR_ACCESS_KINDS]
    for doc in rendered:
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "reverserd"
        del doc["metadata"]["labels"]
    assert sorted(rendered, key=json.dumps) == sorted(source, key=json.dumps)
    disabled = objects(render(helm, "ops", "--set", "admissionPolicy.enabled=false"))
    assert not [doc for doc in disabled if doc["kind"] in CREATOR_ACCESS_KINDS]
    rbac_source = yaml.safe_load(RBAC_SOURCE.read_text())
    assert daemon_role(docs)["rules"] == rbac_source["rules"]
    binding = one(docs, "ClusterRoleBinding")
    account = one(docs, "ServiceAccount")["metadata"]["name"]
    assert binding["roleRef"]["name"] == daemon_role(docs)["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "ops"}]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account


def test_deployment_runs_one_non_root_read_only_daemon_with_probes(helm: Path) -> None:
    docs = objects(render(helm, "ops"))
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    main = container(docs)
    assert main["args"][0] == "run"
    assert f"--state-dir={STATE_DIR}" in main["args"]
    assert "--http-listen=:8080" in main["args"]
    assert "--leader-elect" not in main["args"]
    assert main["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    security = main["securityContext"]
    assert security["runAsUser"] == NON_ROOT_UID
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == NON_ROOT_UID
    mounts = {mount["mountPath"]: mount["name"] for mount in main["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    claim = one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    assert volumes[mounts[STATE_DIR]]["persistentVolumeClaim"] == {"claimName": claim}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert {"name": "HOME", "value": "/tmp"} in main["env"]
    service = one(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_git_author_with_spaces_stays_one_argument(helm: Path) -> None:
    docs = objects(render(helm, "ops", "--set", "git.authorName=Cluster Mirror Bot"))
    assert "--git-author-name=Cluster Mirror Bot" in container(docs)["args"]


def accepted_by_the_daemon(arguments: list[str]) -> bool:
    """Whether ``reverserd`` (the real command line parser) accepts these arguments."""
    try:
        build_parser().parse_args(arguments)
    except SystemExit:
        return False
    return True


@pytest.mark.parametrize(
    "settings",
    [(), ("git.authorName=Cluster Mirror Bot", "logFormat=text", "logLevel=DEBUG")],
    ids=["default", "customised"],
)
def test_deployment_arguments_are_accepted_by_the_daemon(
    helm: Path, settings: tuple[str, ...]
) -> None:
    arguments = [argument for setting in settings for argument in ("--set", setting)]
    main = container(objects(render(helm, "ops", *arguments)))
    assert "command" not in main, "the image's ENTRYPOINT is reverserd"
    assert accepted_by_the_daemon(main["args"])


def test_leader_election_flag_is_accepted_by_the_daemon(helm: Path) -> None:
    main = container(objects(render(helm, "ops", "--set", "leaderElection.enabled=true")))
    assert accepted_by_the_daemon(main["args"])


def test_leader_election_adds_the_flag_and_a_lease_role_in_the_release_namespace(
    helm: Path,
) -> None:
    docs = objects(render(helm, "ops", "--set", "leaderElection.enabled=true"))
    assert "--leader-elect" in container(docs)["args"]
    role = one(docs, "Role")
    assert role["metadata"]["namespace"] == "ops"
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "update"],
        }
    ]
    binding = one(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == "ops"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    account = one(docs, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "ops"}]


def test_service_monitor_scrapes_metrics_on_the_http_port(helm: Path) -> None:
    docs = objects(
        render(
            helm,
            "ops",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.serviceMonitor.labels.release=prometheus",
        )
    )
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = one(docs, "Service")
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}
    assert monitor["spec"]["endpoints"] == [
        {
            "port": "http",
            "path": "/metrics",
            "bearerTokenFile": SERVICE_ACCOUNT_TOKEN,
            "interval": "30s",
            "scrapeTimeout": "10s",
        }
    ]


def test_pod_annotations_for_annotation_based_scraping(helm: Path) -> None:
    docs = objects(render(helm, "ops", "--set", "metrics.podAnnotations=true"))
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }


@pytest.mark.parametrize(
    ("setting", "expected"),
    [("", None), ("-", ""), ("fast-ssd", "fast-ssd")],
    ids=["cluster-default", "none", "named"],
)
def test_state_claim_storage_class(helm: Path, setting: str, expected: str | None) -> None:
    docs = objects(
        render(
            helm,
            "ops",
            "--set-string",
            f"persistence.storageClass={setting}",
            "--set",
            "persistence.size=10Gi",
        )
    )
    claim = one(docs, "PersistentVolumeClaim")["spec"]
    assert claim.get("storageClassName") == expected
    assert claim["resources"]["requests"]["storage"] == "10Gi"
    assert claim["accessModes"] == ["ReadWriteOnce"]


def test_state_dir_on_an_empty_dir_or_an_existing_claim(helm: Path) -> None:
    docs = objects(render(helm, "ops", "--set", "persistence.enabled=false"))
    assert "PersistentVolumeClaim" not in kinds(docs)
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "state", "emptyDir": None} in volumes
    assert one(docs, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"

    docs = objects(render(helm, "ops", "--set", "persistence.existingClaim=mine"))
    assert "PersistentVolumeClaim" not in kinds(docs)
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "state", "persistentVolumeClaim": {"claimName": "mine"}} in volumes


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        (["replicaCount=2"], "needs leaderElection.enabled"),
        (["replicaCount=2", "leaderElection.enabled=true"], "needs persistence.enabled=false"),
        (["logFormat=yaml"], "logFormat must be json or text"),
    ],
    ids=["two-writers", "shared-journal", "log-format"],
)
def test_render_refuses_settings_the_daemon_cannot_run_with(
    helm: Path, settings: list[str], complaint: str
) -> None:
    arguments = [argument for setting in settings for argument in ("--set", setting)]
    assert complaint in refusal(helm, *arguments)


def test_two_replicas_with_leader_election_and_own_journals_render(helm: Path) -> None:
    docs = objects(
        render(
            helm,
            "ops",
            "--set",
            "replicaCount=2",
            "--set",
            "leaderElection.enabled=true",
            "--set",
            "persistence.enabled=false",
        )
    )
    assert one(docs, "Deployment")["spec"]["replicas"] == 2


def test_default_render_with_crds_is_accepted_by_the_api_server(
    helm: Path, control_plane: ControlPlane, restricted_namespace: str
) -> None:
    manifest = render(helm, restricted_namespace, "--include-crds")
    docs = objects(manifest)
    assert kinds(docs).count("CustomResourceDefinition") == 4
    assert_accepted(control_plane, manifest, len(docs))


def test_render_with_leader_election_and_service_monitor_is_accepted_by_the_api_server(
    helm: Path, control_plane: ControlPlane, restricted_namespace: str, servicemonitor_crd: None
) -> None:
    manifest = render(
        helm,
        restricted_namespace,
        *WITH_OPTIONAL_FEATURES,
        "--set",
        "metrics.serviceMonitor.metricRelabelings[0].action=drop",
        "--set",
        "metrics.serviceMonitor.metricRelabelings[0].sourceLabels[0]=__name__",
        "--set",
        "metrics.serviceMonitor.metricRelabelings[0].regex=python_gc_.*",
    )
    docs = objects(manifest)
    assert {"Role", "RoleBinding", "ServiceMonitor"} <= set(kinds(docs))
    assert_accepted(control_plane, manifest, len(docs))


def test_api_server_checks_are_live(
    helm: Path, control_plane: ControlPlane, restricted_namespace: str, servicemonitor_crd: None
) -> None:
    """The dry runs above would catch an insecure pod or a wrong ServiceMonitor field."""
    insecure = render(
        helm, restricted_namespace, "--set", "securityContext.allowPrivilegeEscalation=true"
    )
    result = server_dry_run(control_plane, insecure)
    assert POD_SECURITY_WARNING in result.stderr, result.stderr

    monitor = render(helm, restricted_namespace, "--set", "metrics.serviceMonitor.enabled=true")
    misspelled = monitor.replace("scrapeTimeout:", "scrapeTimout:")
    assert misspelled != monitor
    result = server_dry_run(control_plane, misspelled)
    assert result.returncode != 0
    assert "scrapeTimout" in result.stderr


# --- values of the gitops-reverser v0.17 chart --------------------------------------------

# Every value the v0.17 chart reads (tests/packaging/gitops-reverser-v0.17-values.yaml sets them
# all) is either read here, checked by test_v017_values_file_takes_effect, or refused with a
# message naming what to set instead.
V017_READ = (
    "replicaCount",
    "deploymentStrategy",
    "image.repository",
    "image.pullPolicy",
    "image.tag",
    "imagePullSecrets",
    "nameOverride",
    "fullnameOverride",
    "createNamespace",
    "serviceAccount.create",
    "serviceAccount.annotations",
    "serviceAccount.name",
    "podAnnotations",
    "podSecurityContext",
    "securityContext",
    "rbac.create",
    "resources",
    "nodeSelector",
    "tolerations",
    "affinity",
    "podDisruptionBudget.enabled",
    "podDisruptionBudget.minAvailable",
    "podDisruptionBudget.maxUnavailable",
    "monitoring.serviceMonitor.enabled",
    "monitoring.serviceMonitor.namespace",
    "monitoring.serviceMonitor.labels",
    "monitoring.serviceMonitor.interval",
    "monitoring.serviceMonitor.scrapeTimeout",
    "monitoring.serviceMonitor.path",
    "monitoring.serviceMonitor.port",
    "monitoring.serviceMonitor.scheme",
    "service.clusterIP",
    "service.ports.metrics",
    "logging.level",
    "logging.development",
    "logging.encoder",
    "logging.stacktraceLevel",
    "labels.managedBy",
    "env",
    "volumes",
    "volumeMounts",
)
V017_REFUSED = {
    "controllerManager": "set service.port",
    "servers": "set service.port",
    "webhook": "no admission webhook",
    "certificates": "no cert-manager Certificate",
    "service.ports.admission": "the HTTP port is service.port",
    "service.ports.audit": "the HTTP port is service.port",
}


def value_paths(tree: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of a values tree, down to the first path ``V017_READ`` or refusals name."""
    for key, value in tree.items():
        path = prefix + key
        if path in V017_READ or path in V017_REFUSED or not isinstance(value, dict):
            yield path
        else:
            yield from value_paths(value, path + ".")


def without(tree: dict[str, Any], paths: Iterator[str] | list[str]) -> dict[str, Any]:
    result = yaml.safe_load(yaml.safe_dump(tree))
    for path in paths:
        *parents, last = path.split(".")
        node = result
        for parent in parents:
            node = node[parent]
        del node[last]
    return cast(dict[str, Any], result)


def values_file(tmp_path: Path, values: dict[str, Any], name: str = "values.yaml") -> str:
    target = tmp_path / name
    target.write_text(yaml.safe_dump(values))
    return str(target)


def old_values_read_here() -> dict[str, Any]:
    """The v0.17 values file without the keys reverserd refuses."""
    return without(yaml.safe_load(OLD_VALUES.read_text()), list(V017_REFUSED))


def test_v017_values_file_sets_every_key_and_each_is_read_or_refused() -> None:
    old = yaml.safe_load(OLD_VALUES.read_text())
    found = set(value_paths(old))
    assert found == set(V017_READ) | set(V017_REFUSED)


def test_v017_values_file_takes_effect(helm: Path, tmp_path: Path) -> None:
    docs = objects(render(helm, "mirror", "-f", values_file(tmp_path, old_values_read_here())))
    assert set(kinds(docs)) >= {"Namespace", "PodDisruptionBudget", "ServiceMonitor"}
    namespace = one(docs, "Namespace")
    assert namespace["metadata"]["name"] == "mirror"
    deployment = one(docs, "Deployment")
    assert deployment["metadata"]["name"] == "cluster-mirror"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    pod = deployment["spec"]["template"]["spec"]
    main = container(docs)
    assert main["image"] == "registry.example.com/platform/reverserd:0.1.0"
    assert main["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "registry-login"}]
    assert pod["serviceAccountName"] == "mirror-sa"
    assert one(docs, "ServiceAccount")["metadata"]["annotations"] == {"example.com/role": "mirror"}
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {
        "example.com/team": "platform"
    }
    assert pod["securityContext"]["fsGroup"] == NON_ROOT_UID
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert "ClusterRole" in kinds(docs)
    assert main["resources"]["limits"] == {"cpu": "1", "memory": "384Mi"}
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert "podAntiAffinity" in pod["affinity"]
    budget = one(docs, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in budget["spec"]
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["mirror"]}
    assert monitor["spec"]["endpoints"] == [
        {
            "port": "http",
            "path": "/metrics",
            "bearerTokenFile": SERVICE_ACCOUNT_TOKEN,
            "interval": "15s",
            "scrapeTimeout": "5s",
        }
    ]
    service = one(docs, "Service")
    assert service["spec"]["clusterIP"] == "10.96.0.77"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 9090, "targetPort": "http", "protocol": "TCP"}
    ]
    assert "--log-level=DEBUG" in main["args"]
    assert "--log-format=text" in main["args"]
    assert accepted_by_the_daemon(main["args"])
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert {"name": "HTTPS_PROXY", "value": "http://proxy.example.com:3128"} in main["env"]
    assert {"name": "HOME", "value": "/tmp"} in main["env"]
    assert {"name": "ca-bundle", "configMap": {"name": "corporate-ca"}} in pod["volumes"]
    assert {
        "name": "ca-bundle",
        "mountPath": "/etc/ssl/corporate",
        "readOnly": True,
    } in main["volumeMounts"]
    mounts = {mount["mountPath"] for mount in main["volumeMounts"]}
    assert {STATE_DIR, "/tmp"} <= mounts


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("podDisruptionBudget.maxUnavailable=1", {"maxUnavailable": 1}),
        ("podDisruptionBudget.minAvailable=0", {"minAvailable": 0}),
    ],
)
def test_pod_disruption_budget_takes_one_bound(
    helm: Path, setting: str, expected: dict[str, int]
) -> None:
    docs = objects(
        render(helm, "ops", "--set", "podDisruptionBudget.enabled=true", "--set", setting)
    )
    spec = one(docs, "PodDisruptionBudget")["spec"]
    assert {key: spec[key] for key in ("minAvailable", "maxUnavailable") if key in spec} == expected


def test_default_render_has_no_budget_and_no_namespace(helm: Path) -> None:
    assert not {"Namespace", "PodDisruptionBudget"} & set(kinds(objects(render(helm, "ops"))))


@pytest.mark.parametrize("refused", sorted(V017_REFUSED))
def test_v017_key_without_a_meaning_here_is_refused_naming_what_to_set(
    helm: Path, tmp_path: Path, refused: str
) -> None:
    values = old_values_read_here()
    original = yaml.safe_load(OLD_VALUES.read_text())
    node, target = original, values
    *parents, last = refused.split(".")
    for parent in parents:
        node, target = node[parent], target.setdefault(parent, {})
    target[last] = node[last]
    complaint = refusal(helm, "-f", values_file(tmp_path, values))
    assert f"{refused} is a gitops-reverser value" in complaint
    assert V017_REFUSED[refused] in complaint
    assert MIGRATION_GUIDE in complaint


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        (
            ["image.repository=ghcr.io/configbutler/gitops-reverser"],
            "is the gitops-reverser image",
        ),
        (["logging.development=true"], "set logFormat=text and logLevel=DEBUG"),
        (["logging.stacktraceLevel=info"], "remove logging.stacktraceLevel"),
        (["logging.encoder=yaml"], "reverserd's key is logFormat"),
        (["monitoring.serviceMonitor.scheme=https"], "plain HTTP only"),
        (["monitoring.serviceMonitor.path=/other"], "on /metrics only"),
        (["monitoring.serviceMonitor.port=admission"], "one port, named http"),
        (
            [
                "deploymentStrategy.type=RollingUpdate",
                "deploymentStrategy.rollingUpdate.maxSurge=1",
            ],
            "needs rollingUpdate.maxSurge: 0",
        ),
    ],
    ids=[
        "old-image",
        "development",
        "stacktrace",
        "encoder",
        "https",
        "path",
        "port",
        "surge",
    ],
)
def test_v017_value_reverserd_cannot_honour_is_refused(
    helm: Path, settings: list[str], complaint: str
) -> None:
    arguments = [argument for setting in settings for argument in ("--set", setting)]
    assert complaint in refusal(helm, *arguments)


@pytest.mark.parametrize(
    ("setting", "where"),
    [
        ("logLevl=DEBUG", "at '': additional properties 'logLevl' not allowed"),
        (
            "monitoring.serviceMonitor.intervall=1m",
            "at '/monitoring/serviceMonitor': additional properties 'intervall' not allowed",
        ),
        ("persistence.sise=1Gi", "at '/persistence': additional properties 'sise' not allowed"),
    ],
)
def test_schema_refuses_an_unknown_key_by_name(helm: Path, setting: str, where: str) -> None:
    assert where in refusal(helm, "--set", setting)


def test_v017_values_render_is_accepted_by_the_api_server(
    helm: Path,
    tmp_path: Path,
    control_plane: ControlPlane,
    restricted_namespace: str,
    servicemonitor_crd: None,
) -> None:
    values = old_values_read_here()
    values["monitoring"]["serviceMonitor"]["namespace"] = restricted_namespace
    values["service"]["clusterIP"] = ""
    manifest = render(helm, restricted_namespace, "-f", values_file(tmp_path, values))
    docs = objects(manifest)
    assert {"Namespace", "PodDisruptionBudget", "ServiceMonitor"} <= set(kinds(docs))
    assert_accepted(control_plane, manifest, len(docs))


# --- plain manifests -------------------------------------------------------------------------


def test_plain_manifests_are_accepted_by_the_api_server(control_plane: ControlPlane) -> None:
    manifest = MANIFESTS.read_text()
    docs = objects(manifest)
    assert kinds(docs) == sorted(
        [
            "Namespace",
            *(["CustomResourceDefinition"] * 4),
            *(["ClusterRole"] * 3),
            "ClusterRoleBinding",
            "NetworkPolicy",
            "ServiceAccount",
            "PersistentVolumeClaim",
            "Deployment",
            "Service",
            *CREATOR_ACCESS_KINDS,
        ]
    )
    namespace = one(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] in ("ServiceAccount", "PersistentVolumeClaim", "Deployment", "Service"):
            assert doc["metadata"]["namespace"] == "reverserd"
    # Namespaced objects can only be dry-run into a namespace that exists.
    control_plane.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(namespace))
    control_plane.kubectl(
        "label",
        "--overwrite",
        "namespace",
        "reverserd",
        "pod-security.kubernetes.io/warn=restricted",
    )
    assert_accepted(control_plane, manifest, len(docs))


def test_plain_manifests_do_not_claim_a_helm_release() -> None:
    for doc in objects(MANIFESTS.read_text()):
        labels = doc["metadata"].get("labels", {})
        assert "helm.sh/chart" not in labels, doc["kind"]
        assert labels.get("app.kubernetes.io/managed-by") != "Helm", doc["kind"]


# --- the generator ---------------------------------------------------------------------------


def generate(script: Path, helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), "--helm", str(helm), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_generated_files_are_up_to_date(helm: Path) -> None:
    result = generate(PACKAGING / "generate.py", helm, "--check")
    assert result.returncode == 0, result.stderr


def test_generator_finds_and_repairs_every_stale_copy(helm: Path, tmp_path: Path) -> None:
    shutil.copytree(PACKAGING, tmp_path / "packaging")
    script = tmp_path / "packaging" / "generate.py"
    crd = tmp_path / "packaging" / "crds" / "configbutler.ai_gittargets.yaml"
    crd.write_text(crd.read_text().replace("shortNames:", "# edited\n  shortNames:", 1))
    rbac = tmp_path / "packaging" / "rbac" / "clusterrole.yaml"
    rbac.write_text(rbac.read_text().replace('verbs: ["list", "watch"]', 'verbs: ["list"]'))
    leftover = tmp_path / "packaging" / "helm" / "reverserd" / "crds" / "old.yaml"
    leftover.write_text("# a CRD that no longer has a source\n")

    result = generate(script, helm, "--check")
    assert result.returncode == 1
    assert "out of date: packaging/helm/reverserd/crds/configbutler.ai_gittargets.yaml" in (
        result.stderr
    )
    assert "out of date: packaging/helm/reverserd/files/clusterrole.yaml" in result.stderr
    assert "out of date: packaging/manifests/reverserd.yaml" in result.stderr
    assert "packaging/helm/reverserd/crds/old.yaml" in result.stderr
    assert "configbutler.ai_watchrules.yaml" not in result.stderr

    assert generate(script, helm).returncode == 0
    assert generate(script, helm, "--check").returncode == 0
    assert not leftover.exists()
    regenerated = objects((tmp_path / "packaging" / "manifests" / "reverserd.yaml").read_text())
    assert daemon_role(regenerated)["rules"][0]["verbs"] == ["list"]


# --- the systemd unit ------------------------------------------------------------------------


def unit_with_stub_binary(tmp_path: Path) -> Path:
    """The unit, with ExecStart pointing at an executable stub instead of an installed daemon.

    ``systemd-analyze verify`` refuses a unit whose binary does not exist; everything else in
    the unit is verified as shipped.
    """
    stub = tmp_path / "bin" / "reverserd"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    installed = "ExecStart=/usr/local/bin/reverserd "
    assert text.count(installed) == 1
    unit = tmp_path / "reverserd.service"
    unit.write_text(text.replace(installed, f"ExecStart={stub} "))
    return unit


def verify(unit: Path) -> tuple[bool, str]:
    """(accepted, output): accepted only without a single complaint, warnings included."""
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    return result.returncode == 0 and not output, output


def test_systemd_unit_passes_verify(tmp_path: Path) -> None:
    accepted, output = verify(unit_with_stub_binary(tmp_path))
    assert accepted, output


@pytest.mark.parametrize(
    "breakage",
    ["missing-binary", "unknown-key", "bad-value"],
)
def test_systemd_verify_rejects_a_broken_unit(tmp_path: Path, breakage: str) -> None:
    unit = unit_with_stub_binary(tmp_path)
    text = unit.read_text()
    if breakage == "missing-binary":
        (tmp_path / "bin" / "reverserd").unlink()
    elif breakage == "unknown-key":
        unit.write_text(text.replace("ProtectHome=yes", "ProtectHomes=yes"))
    else:
        unit.write_text(text.replace("Restart=on-failure", "Restart=sometimes"))
    accepted, _ = verify(unit)
    assert not accepted


def test_systemd_unit_is_hardened(tmp_path: Path) -> None:
    unit = unit_with_stub_binary(tmp_path)
    # Exposure 0.0 (locked down) to 10.0 (unprotected); the threshold is in tenths.
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    settings = dict(
        line.split("=", 1) for line in UNIT.read_text().splitlines() if re.match(r"^\w+=", line)
    )
    for key, value in {
        "Type": "simple",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "Restart": "on-failure",
        "TimeoutStopSec": "15",
        "StateDirectory": "reverserd",
        "EnvironmentFile": "-/etc/reverserd/reverserd.env",
    }.items():
        assert settings.get(key) == value, key


def exec_start(unit_text: str) -> list[str]:
    joined = unit_text.replace("\\\n", " ")
    line = next(line for line in joined.splitlines() if line.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_systemd_env_example_sets_every_variable_the_unit_uses() -> None:
    text = UNIT.read_text()
    command = exec_start(text)
    assert command[:2] == ["/usr/local/bin/reverserd", "run"]
    assert command[command.index("--state-dir") + 1] == STATE_DIR
    used = {match for word in command for match in re.findall(r"\$\{(\w+)\}", word)}
    assert "REVERSERD_KUBECONFIG" in used
    defaults = set(re.findall(r"^Environment=(\w+)=", text, re.MULTILINE))
    example = set(re.findall(r"^(\w+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert used == defaults == example


def test_systemd_command_line_is_accepted_by_the_daemon() -> None:
    text = UNIT.read_text()
    defaults = dict(re.findall(r"^Environment=(\w+)=(.*)$", text, re.MULTILINE))
    command = [
        re.sub(r"\$\{(\w+)\}", lambda match: defaults[match.group(1)], word)
        for word in exec_start(text)
    ]
    assert accepted_by_the_daemon(command[1:])
    assert not accepted_by_the_daemon([*command[1:], "--no-such-flag"])


# --- the container image ---------------------------------------------------------------------


def dockerfile_instructions() -> Iterator[tuple[str, list[str]]]:
    """(instruction, words) per Dockerfile instruction, continuation lines joined."""
    logical = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    for line in logical.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, rest = line.strip().partition(" ")
            yield instruction.upper(), rest.split()


def dockerignore_includes(path: str) -> bool:
    """Whether ``path`` (relative, "/"-separated) reaches the build context.

    Docker's rules: the last pattern that matches the path or one of its parents decides; a
    pattern starting with "!" re-includes. Patterns use "*" within a segment and "**" across.
    """
    included = True
    parts = path.split("/")
    candidates = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            included = negate
    return included


def test_dockerfile_copies_only_existing_paths_and_defined_stages() -> None:
    stages: list[str] = []
    copies = 0
    for instruction, words in dockerfile_instructions():
        if instruction == "FROM":
            if len(words) == 3 and words[1].upper() == "AS":
                stages.append(words[2])
        if instruction not in ("COPY", "ADD"):
            continue
        copies += 1
        flags = [word for word in words if word.startswith("--")]
        sources = [word for word in words if not word.startswith("--")][:-1]
        assert sources, words
        stage = next((flag.split("=", 1)[1] for flag in flags if flag.startswith("--from=")), None)
        if stage is not None:
            assert stage in stages, f"COPY --from={stage} before any stage of that name"
            continue
        for source in sources:
            matches = [
                path
                for path in REPO_ROOT.glob(source.removeprefix("./"))
                if "__pycache__" not in path.parts
            ]
            assert matches, f"COPY source {source} does not exist"
            for match in matches:
                files = [match] if match.is_file() else list(match.rglob("*"))
                for file in files:
                    if file.is_file() and "__pycache__" not in file.parts:
                        relative = file.relative_to(REPO_ROOT).as_posix()
                        assert dockerignore_includes(relative), f"{relative} is .dockerignored"
    assert copies >= 4
    assert not dockerignore_includes("tests/conftest.py")
    assert not dockerignore_includes("reverserd/__pycache__/cli.cpython-311.pyc")


def test_image_runs_reverserd_as_non_root_with_git_and_pinned_sops() -> None:
    instructions = list(dockerfile_instructions())
    arguments = dict(
        word.split("=", 1) for name, words in instructions if name == "ARG" for word in words
    )
    froms = [words for name, words in instructions if name == "FROM"]
    final = max(index for index, (name, _) in enumerate(instructions) if name == "FROM")
    final_stage = instructions[final:]
    assert len(froms[-1]) == 1, "the final stage is the unnamed last one"
    assert arguments[froms[-1][0].strip("${}")] == "python:3.11-slim"
    assert ("USER", [f"{NON_ROOT_UID}:{NON_ROOT_UID}"]) in final_stage
    assert ("ENTRYPOINT", ['["reverserd"]']) in final_stage
    assert ("CMD", ['["run"]']) in final_stage
    runs = " ".join(" ".join(words) for name, words in final_stage if name == "RUN")
    assert re.search(r"apt-get install .*\bgit\b", runs)
    sops_build = " ".join(" ".join(words) for name, words in instructions if name == "RUN")
    assert "go install" in sops_build
    assert "github.com/getsops/sops/v3/cmd/sops@${SOPS_VERSION}" in sops_build
    assert re.fullmatch(r"v\d+\.\d+\.\d+", arguments["SOPS_VERSION"])


def test_installed_package_ships_the_migrations() -> None:
    """An installed reverserd reads migrations from <prefix>/share/reverserd/migrations."""
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["data-files"]["share/reverserd/migrations"]
    migrations = sorted(path.name for path in (REPO_ROOT / "migrations").glob("*.sql"))
    assert migrations
    for name in migrations:
        assert any(fnmatch.fnmatch(f"migrations/{name}", pattern) for pattern in patterns), name


# --- documentation ---------------------------------------------------------------------------


def documented_values() -> list[str]:
    """Dotted paths of the values.yaml keys introduced by a ``# --`` comment."""
    paths: list[str] = []
    stack: list[tuple[int, str]] = []
    documented = False
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            documented = True
            continue
        if stripped.startswith("#") or not stripped:
            continue
        key = re.match(r"^(\s*)([A-Za-z][\w]*):", line)
        if key is None:
            continue
        indent = len(key.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key.group(2)))
        if documented:
            paths.append(".".join(name for _, name in stack))
        documented = False
    return paths


def test_every_value_is_documented_in_values_and_readme() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    documented = documented_values()

    def leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[str]:
        for key, value in tree.items():
            path = prefix + key
            if path in documented:
                yield path
            elif isinstance(value, dict) and value:
                yield from leaves(value, path + ".")
            else:
                raise AssertionError(f"values.yaml: {path} has no '# --' comment")

    readme = (PACKAGING / "README.md").read_text()
    for path in leaves(values):
        assert f"`{path}`" in readme, f"packaging/README.md does not document {path}"


def test_secret_writes_are_granted_only_with_generate_when_missing(helm: Path) -> None:
    default = objects(render(helm, "ops"))
    for doc in default:
        if doc["kind"] == "ClusterRole":
            for rule in doc["rules"]:
                if "secrets" in rule.get("resources", ()):
                    assert rule["verbs"] == ["get"], rule
    enabled = objects(render(helm, "ops", "--set", "rbac.generateWhenMissing=true"))
    writers = [
        doc
        for doc in enabled
        if doc["kind"] == "ClusterRole" and doc["metadata"]["name"].endswith("secret-writer")
    ]
    assert [rule["verbs"] for rule in one(writers, "ClusterRole")["rules"]] == [["create"]]
    bindings = [doc["roleRef"]["name"] for doc in enabled if doc["kind"] == "ClusterRoleBinding"]
    assert writers[0]["metadata"]["name"] in bindings


def test_cluster_role_grants_no_wildcard_get_and_no_update() -> None:
    """A wildcard ``get`` would reach nodes/proxy, services/proxy, pods/log and pods/exec."""
    rules = yaml.safe_load(RBAC_SOURCE.read_text())["rules"]
    for rule in rules:
        resources = rule.get("resources", ())
        if "*" in resources or "*" in rule.get("apiGroups", ()):
            assert set(rule["verbs"]) <= {"list", "watch"}, rule
        assert "update" not in rule["verbs"] and "*" not in rule["verbs"], rule
        assert not any(name.startswith("leases") for name in resources), rule


def test_network_policy_admits_only_the_named_scrapers(helm: Path) -> None:
    monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    default = one(objects(render(helm, "ops")), "NetworkPolicy")
    (rule,) = default["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": monitoring}]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    closed = one(
        objects(render(helm, "ops", "--set", "networkPolicy.ingressNamespaceSelector=null")),
        "NetworkPolicy",
    )
    assert closed["spec"]["ingress"] == []
    disabled = objects(render(helm, "ops", "--set", "networkPolicy.enabled=false"))
    assert "NetworkPolicy" not in kinds(disabled)


def test_status_readers_get_exactly_their_paths_and_auth_can_be_turned_off(helm: Path) -> None:
    prometheus = '[{"kind":"ServiceAccount","name":"prometheus-k8s","namespace":"monitoring"}]'
    docs = objects(render(helm, "ops", "--set-json", f"statusAuth.metricsReaders={prometheus}"))
    roles = {
        doc["metadata"]["name"]: doc["rules"]
        for doc in docs
        if doc["kind"] == "ClusterRole" and doc["metadata"]["name"].endswith("-reader")
    }
    assert roles == {
        "reverserd-metrics-reader": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}],
        "reverserd-status-reader": [{"nonResourceURLs": ["/status", "/"], "verbs": ["get"]}],
    }
    bindings = {
        doc["roleRef"]["name"]: doc["subjects"]
        for doc in docs
        if doc["kind"] == "ClusterRoleBinding"
    }
    assert bindings["reverserd-metrics-reader"] == json.loads(prometheus)
    assert "reverserd-status-reader" not in bindings
    assert "--no-status-auth" not in container(docs)["args"]
    opened = objects(render(helm, "ops", "--set", "statusAuth.enabled=false"))
    assert "--no-status-auth" in container(opened)["args"]


def test_python_dependencies_come_from_the_hashed_lock_file() -> None:
    lock = (PACKAGING / "requirements.lock").read_text()
    blocks = re.findall(r"^([A-Za-z0-9_.-]+)==\S+ \\\n((?:    .*\n)+)", lock, re.MULTILINE)
    assert len(blocks) == len(re.findall(r"^[A-Za-z0-9_.-]+==", lock, re.MULTILINE)) > 0
    for name, body in blocks:
        assert "--hash=sha256:" in body, f"{name} has no hash"
    pinned = {name.lower() for name, _ in blocks}
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!~ ]", requirement, maxsplit=1)[0].lower()
        assert name in pinned, f"{name} is not in the lock file"
    assert "setuptools" in pinned  # reverserd is built without build isolation
    steps = [" ".join(words) for name, words in dockerfile_instructions() if name == "RUN"]
    assert any("--require-hashes -r requirements.lock" in step for step in steps)
    assert any("--no-deps --no-build-isolation ." in step for step in steps)


# --- attribution webhooks --------------------------------------------------------------------

CONTROL_PLANE_CIDR = "10.0.0.0/28"
# The placeholder range of packaging/attribution/admission-webhook.yaml (RFC 5737: no caller).
PLAIN_POLICY_CIDR = "192.0.2.0/24"
BOTH_SOURCES = (
    "--set",
    "attribution.sources={audit,admission}",
    "--set",
    "attribution.audit.clientCASecret=apiserver-audit-client-ca",
    "--set",
    f"attribution.webhook.networkPolicy.controlPlaneCIDRs={{{CONTROL_PLANE_CIDR}}}",
)


def webhook_configuration(docs: list[dict[str, Any]]) -> dict[str, Any]:
    webhooks: list[dict[str, Any]] = one(docs, "ValidatingWebhookConfiguration")["webhooks"]
    assert len(webhooks) == 1
    return webhooks[0]


def test_default_render_has_no_webhook(helm: Path) -> None:
    docs = objects(render(helm, "ops"))
    assert "ValidatingWebhookConfiguration" not in kinds(docs)
    assert not [a for a in container(docs)["args"] if a.startswith("--attribution")]


def test_attribution_render_serves_webhooks_with_a_generated_certificate(
    helm: Path, control_plane: ControlPlane, restricted_namespace: str, tmp_path: Path
) -> None:
    manifest = render(helm, restricted_namespace, *BOTH_SOURCES)
    docs = objects(manifest)
    webhook = webhook_configuration(docs)
    # Never blocks or denies a request, and says it changes nothing.
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["sideEffects"] == "None"
    assert webhook["timeoutSeconds"] <= 5
    service = webhook["clientConfig"]["service"]
    assert service["path"] == "/admission"
    assert service["name"] in [d["metadata"]["name"] for d in docs if d["kind"] == "Service"]
    secret = one(docs, "Secret")
    assert secret["type"] == "kubernetes.io/tls"
    assert webhook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    for key in ("ca.crt", "tls.crt"):
        (tmp_path / key).write_bytes(base64.b64decode(secret["data"][key]))
    host = f"{service['name']}.{restricted_namespace}.svc"
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", "ca.crt", "-verify_hostname", host, "tls.crt"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    main = container(docs)
    assert accepted_by_the_daemon(main["args"])
    assert "--attribution=audit,admission" in main["args"]
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in main["ports"]
    assert_accepted(control_plane, manifest, len(docs))


def webhook_policy(docs: list[dict[str, Any]]) -> dict[str, Any] | None:
    found = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-webhook")
    ]
    return found[0] if found else None


def test_webhook_port_admits_only_the_control_plane_by_default(helm: Path) -> None:
    policy = webhook_policy(objects(render(helm, "ops", *BOTH_SOURCES)))
    assert policy is not None
    (webhook_rule,) = policy["spec"]["ingress"]
    assert webhook_rule == {
        "from": [{"ipBlock": {"cidr": CONTROL_PLANE_CIDR}}],
        "ports": [{"port": "webhook", "protocol": "TCP"}],
    }
    # The HTTP port's own policy (on by default) decides who reaches that port; with it off,
    # this policy, which isolates the pod, keeps the HTTP port as open as it was without one.
    alone = objects(render(helm, "ops", *BOTH_SOURCES, "--set", "networkPolicy.enabled=false"))
    policy = webhook_policy(alone)
    assert policy is not None
    assert policy["spec"]["ingress"][1] == {"ports": [{"port": "http", "protocol": "TCP"}]}
    # Without a range the render refuses, naming what to set; open only when the user says so.
    without_range = [a for a in BOTH_SOURCES if "controlPlaneCIDRs" not in a][:-1]
    assert "controlPlaneCIDRs is required" in refusal(helm, *without_range)
    opened = render(
        helm, "ops", *without_range, "--set", "attribution.webhook.networkPolicy.enabled=false"
    )
    assert webhook_policy(objects(opened)) is None


def test_plain_webhook_policy_is_the_charts(helm: Path) -> None:
    plain = [
        d
        for d in yaml.safe_load_all(
            (PACKAGING / "attribution" / "admission-webhook.yaml").read_text()
        )
        if d and d["kind"] == "NetworkPolicy"
    ]
    assert len(plain) == 1
    chart = webhook_policy(
        objects(
            render(
                helm,
                "reverserd",
                "--set",
                "attribution.sources={admission}",
                "--set",
                f"attribution.webhook.networkPolicy.controlPlaneCIDRs={{{PLAIN_POLICY_CIDR}}}",
            )
        )
    )
    assert chart is not None
    assert plain[0]["spec"] == chart["spec"]


def test_webhook_client_names_reach_the_daemon(helm: Path) -> None:
    args = container(
        objects(
            render(
                helm, "ops", *BOTH_SOURCES, "--set", "attribution.admission.clientName=apiserver"
            )
        )
    )["args"]
    assert "--webhook-audit-client-name=kube-apiserver-audit" in args
    assert "--webhook-admission-client-name=apiserver" in args
    assert accepted_by_the_daemon(args)
    admission_only = [
        "--set",
        "attribution.sources={admission}",
        "--set",
        "attribution.admission.clientName=apiserver",
        "--set",
        f"attribution.webhook.networkPolicy.controlPlaneCIDRs={{{CONTROL_PLANE_CIDR}}}",
    ]
    assert "needs attribution.audit.clientCASecret" in refusal(helm, *admission_only)


def test_attribution_certificates_by_cert_manager(helm: Path) -> None:
    docs = objects(
        render(helm, "ops", *BOTH_SOURCES, "--set", "attribution.webhook.certificates=cert-manager")
    )
    assert {"Certificate", "Issuer"} <= set(kinds(docs))
    assert "Secret" not in kinds(docs)
    annotations = one(docs, "ValidatingWebhookConfiguration")["metadata"]["annotations"]
    certificate = one(docs, "Certificate")
    name = certificate["metadata"]["name"]
    assert annotations == {"cert-manager.io/inject-ca-from": f"ops/{name}"}
    assert "caBundle" not in webhook_configuration(docs)["clientConfig"]


@pytest.mark.parametrize(
    "settings",
    [
        ("attribution.sources={audit}",),
        ("attribution.sources={kafka}",),
        ("attribution.sources={admission}", "attribution.webhook.certificates=vault"),
    ],
    ids=["audit-without-client-ca", "unknown-source", "unknown-certificates"],
)
def test_render_refuses_attribution_settings_the_daemon_cannot_run_with(
    helm: Path, settings: tuple[str, ...]
) -> None:
    arguments = [argument for setting in settings for argument in ("--set", setting)]
    result = run_helm(helm, "template", "reverserd", str(CHART), *arguments)
    assert result.returncode != 0


def test_plain_admission_webhook_gets_its_certificates_from_the_script(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    manifest = (PACKAGING / "attribution" / "admission-webhook.yaml").read_text()
    manifest = manifest.replace("namespace: reverserd", f"namespace: {namespace}")
    name = f"reverserd-webhook-{namespace}"
    manifest = manifest.replace("name: reverserd-webhook\n  labels", f"name: {name}\n  labels")
    script = (PACKAGING / "attribution" / "make-certs.sh").read_text()
    script = script.replace(
        "validatingwebhookconfiguration reverserd-webhook", f"validatingwebhookconfiguration {name}"
    )
    (tmp_path / "make-certs.sh").write_text(script)
    control_plane.kubectl("apply", "-f", "-", stdin=manifest)
    try:
        environment = {
            **os.environ,
            "PATH": f"{control_plane.kubectl_path.parent}{os.pathsep}{os.environ['PATH']}",
            "KUBECONFIG": str(control_plane.admin_kubeconfig),
            "OUT_DIR": str(tmp_path / "certs"),
        }
        result = subprocess.run(
            ["sh", str(tmp_path / "make-certs.sh"), "--audit-client", namespace],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        configuration = yaml.safe_load(
            control_plane.kubectl("get", "validatingwebhookconfiguration", name, "-o", "yaml")
        )
        bundle = configuration["webhooks"][0]["clientConfig"]["caBundle"]
        assert base64.b64decode(bundle) == (tmp_path / "certs" / "ca.crt").read_bytes()
        secret = yaml.safe_load(
            control_plane.kubectl(
                "get", "secret", "reverserd-webhook-tls", "-n", namespace, "-o", "yaml"
            )
        )
        assert set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key"}
        control_plane.kubectl("get", "secret", "reverserd-audit-client-ca", "-n", namespace)
        verified = subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                "ca.crt",
                "-verify_hostname",
                f"reverserd-webhook.{namespace}.svc",
                "tls.crt",
            ],
            cwd=tmp_path / "certs",
            capture_output=True,
            text=True,
            check=False,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        control_plane.kubectl(
            "delete", "validatingwebhookconfiguration", name, "--ignore-not-found"
        )


SHARDED = ("sharding.enabled=true", "replicaCount=3")


def test_sharded_mode_runs_a_stateful_set_with_a_claim_per_replica(helm: Path) -> None:
    docs = objects(render(helm, "ops", *(a for s in SHARDED for a in ("--set", s))))
    assert "Deployment" not in kinds(docs) and "PersistentVolumeClaim" not in kinds(docs)
    stateful = one(docs, "StatefulSet")
    assert stateful["spec"]["replicas"] == 3
    (claim,) = stateful["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    main = stateful["spec"]["template"]["spec"]["containers"][0]
    assert {"--shards=16", "--replica-id=$(POD_NAME)"} <= set(main["args"])
    assert "--leader-elect" not in main["args"]
    pod_name = next(e for e in main["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert accepted_by_the_daemon(main["args"])
    assert one(docs, "Role")["rules"][0]["verbs"] == ["get", "list", "create", "update"]


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ([*SHARDED, "leaderElection.enabled=true"], "sharding.enabled replaces leaderElection"),
        ([*SHARDED, "persistence.enabled=false"], "sharding.enabled needs persistence.enabled"),
    ],
)
def test_sharded_mode_refuses_what_it_cannot_run_with(
    helm: Path, settings: list[str], complaint: str
) -> None:
    assert complaint in refusal(helm, *(a for s in settings for a in ("--set", s)))


SHARDED_ATTRIBUTION = (
    *SHARDED,
    "attribution.sources={admission}",
    "attribution.webhook.networkPolicy.controlPlaneCIDRs={10.0.0.0/8}",
)


def test_sharded_attribution_forwards_facts_with_a_generated_peer_secret(
    helm: Path, tmp_path: Path
) -> None:
    docs = objects(render(helm, "ops", *(a for s in SHARDED_ATTRIBUTION for a in ("--set", s))))
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    main = pod["containers"][0]
    args = set(main["args"])
    assert {"--peer-secret-file=/etc/reverserd/peer/secret", "--webhook-listen=:9443"} <= args
    assert "--peer-ca=/etc/reverserd/webhook/ca.crt" in args
    assert accepted_by_the_daemon(main["args"])
    # A peer must present a certificate for the first name the shared one carries.
    serving = next(d for d in docs if d["kind"] == "Secret" and "tls.crt" in d.get("data", {}))
    certificate = tmp_path / "tls.crt"
    certificate.write_bytes(base64.b64decode(serving["data"]["tls.crt"]))
    assert f"--peer-server-name={peer_server_name(certificate)}" in args
    # The peer address defaults to $POD_IP with the webhook port.
    pod_ip = next(e for e in main["env"] if e["name"] == "POD_IP")
    assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    mount = next(m for m in main["volumeMounts"] if m["name"] == "peer-secret")
    volume = next(v for v in pod["volumes"] if v["name"] == "peer-secret")
    assert mount["mountPath"] == "/etc/reverserd/peer"
    secret = next(
        d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "reverserd-peer"
    )
    assert volume["secret"]["secretName"] == "reverserd-peer"
    assert len(base64.b64decode(secret["data"]["secret"])) >= MIN_SECRET_BYTES
    # The webhook port admits the control plane and the group's own pods, nobody else.
    policy = next(
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-webhook")
    )
    sources = [rule["from"] for rule in policy["spec"]["ingress"]]
    assert sources == [
        [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
        [{"podSelector": {"matchLabels": policy["spec"]["podSelector"]["matchLabels"]}}],
    ]
    # Without sharding nothing of it renders; a named Secret replaces the generated one.
    alone = objects(
        render(helm, "ops", "--set", SHARDED_ATTRIBUTION[2], "--set", SHARDED_ATTRIBUTION[3])
    )
    assert "--peer-secret-file=/etc/reverserd/peer/secret" not in container(alone)["args"]
    assert not any(d["metadata"]["name"] == "reverserd-peer" for d in alone)
    named = objects(
        render(
            helm, "ops", *(a for s in SHARDED_ATTRIBUTION for a in ("--set", s)),
            "--set", "sharding.peerSecret=group-secret",
        )
    )  # fmt: skip
    assert not any(d["metadata"]["name"] == "reverserd-peer" for d in named)
    named_pod = one(named, "StatefulSet")["spec"]["template"]["spec"]
    named_volume = next(v for v in named_pod["volumes"] if v["name"] == "peer-secret")
    assert named_volume["secret"]["secretName"] == "group-secret"


def test_sharded_render_is_accepted_by_the_api_server(
    helm: Path, control_plane: ControlPlane, restricted_namespace: str
) -> None:
    budget = ("podDisruptionBudget.enabled=true", "podDisruptionBudget.maxUnavailable=1")
    settings = (*SHARDED_ATTRIBUTION, *budget)
    manifest = render(helm, restricted_namespace, *(a for s in settings for a in ("--set", s)))
    docs = objects(manifest)
    assert {"StatefulSet", "PodDisruptionBudget", "Role", "Secret"} <= set(kinds(docs))
    assert_accepted(control_plane, manifest, len(docs))
