"""sanitize(): what a live object keeps and loses on its way to Git (SPEC 3.4)."""

from __future__ import annotations

import copy
from typing import Any

from reverserd.manifest.sanitize import sanitize


def live_configmap(**extra_metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "settings",
            "namespace": "team-a",
            "uid": "0b7c2f4e-5a55-4c1e-9a43-3f1f0f8a1c11",
            "resourceVersion": "48213",
            "creationTimestamp": "2024-05-01T10:00:00Z",
            "managedFields": [{"manager": "kubectl", "operation": "Update"}],
            **extra_metadata,
        },
        "data": {"mode": "fast"},
    }


def live_service(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "team-a", "uid": "u-1"},
        "spec": {
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}],
            "selector": {"app": "web"},
            "type": "ClusterIP",
            **spec,
        },
        "status": {"loadBalancer": {}},
    }


def live_pvc(
    annotations: dict[str, str] | None = None, phase: str = "Pending", **spec: Any
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "data", "namespace": "team-a"}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata,
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
            **spec,
        },
        "status": {"phase": phase},
    }


def live_deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "team-a",
            "generation": 3,
            "annotations": {"deployment.kubernetes.io/revision": "3"},
            "labels": {"app": "web"},
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {
                    "creationTimestamp": None,
                    "labels": {"app": "web"},
                    "annotations": {"kubectl.kubernetes.io/restartedAt": "2024-05-01T10:00:00Z"},
                },
                "spec": {
                    "containers": [{"name": "web", "image": "nginx:1.27", "resources": {}}],
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                },
            },
        },
        "status": {"replicas": 2, "readyReplicas": 2},
    }


# --- metadata -------------------------------------------------------------------------------


def test_server_managed_metadata_is_dropped() -> None:
    obj = live_configmap(
        generation=1,
        deletionTimestamp="2024-05-02T00:00:00Z",
        ownerReferences=[{"kind": "Thing", "name": "owner"}],
        finalizers=["example.com/cleanup"],
        generateName="settings-",
        selfLink="/api/v1/namespaces/team-a/configmaps/settings",
    )
    assert sanitize(obj)["metadata"] == {"name": "settings", "namespace": "team-a"}


def test_metadata_keeps_name_namespace_labels_and_annotations() -> None:
    obj = live_configmap(labels={"app": "web"}, annotations={"owner": "team-a"})
    assert sanitize(obj)["metadata"] == {
        "name": "settings",
        "namespace": "team-a",
        "labels": {"app": "web"},
        "annotations": {"owner": "team-a"},
    }


def test_cluster_scoped_object_has_no_namespace() -> None:
    obj = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "reader", "uid": "u-2"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
    }
    assert sanitize(obj)["metadata"] == {"name": "reader"}


def test_last_applied_annotation_never_survives() -> None:
    applied = '{"apiVersion":"v1","data":{"password":"hunter2"},"kind":"Secret"}'
    obj = live_configmap(annotations={"kubectl.kubernetes.io/last-applied-configuration": applied})
    result = sanitize(obj)
    assert "annotations" not in result["metadata"]
    assert "hunter2" not in repr(result)


def test_controller_annotations_are_dropped_by_exact_key_and_prefix() -> None:
    noise = {
        "kubectl.kubernetes.io/restartedAt": "2024-05-01T10:00:00Z",
        "deployment.kubernetes.io/revision": "7",
        "control-plane.alpha.kubernetes.io/leader": "{}",
        "autoscaling.alpha.kubernetes.io/conditions": "[]",
        "pv.kubernetes.io/bound-by-controller": "yes",
        "volume.kubernetes.io/storage-provisioner": "rancher.io/local-path",
        "volume.beta.kubernetes.io/storage-provisioner": "rancher.io/local-path",
        "argocd.argoproj.io/tracking-id": "app:/ConfigMap:team-a/settings",
        "argocd.argoproj.io/installation-id": "prod",
    }
    intent = {
        "argocd.argoproj.io/sync-wave": "2",
        "kustomize.toolkit.fluxcd.io/reconcile": "disabled",
        "example.com/owner": "team-a",
    }
    result = sanitize(live_configmap(annotations={**noise, **intent}))
    assert result["metadata"]["annotations"] == intent


def test_annotation_prefix_matches_only_whole_prefix() -> None:
    kept = {"mydeployment.kubernetes.io/revision": "1", "pv.kubernetes.io.example/x": "1"}
    result = sanitize(live_configmap(annotations=kept))
    assert result["metadata"]["annotations"] == kept


def test_flux_ownership_labels_are_dropped_and_user_labels_kept() -> None:
    labels = {
        "kustomize.toolkit.fluxcd.io/name": "apps",
        "kustomize.toolkit.fluxcd.io/namespace": "flux-system",
        "helm.toolkit.fluxcd.io/name": "podinfo",
        "helm.toolkit.fluxcd.io/namespace": "flux-system",
        "app.kubernetes.io/name": "web",
    }
    result = sanitize(live_configmap(labels=labels))
    assert result["metadata"]["labels"] == {"app.kubernetes.io/name": "web"}


def test_labels_emptied_by_stripping_are_removed() -> None:
    result = sanitize(live_configmap(labels={"helm.toolkit.fluxcd.io/name": "podinfo"}))
    assert "labels" not in result["metadata"]


def test_only_stripped_annotation_changes_give_equal_manifests() -> None:
    before = live_configmap(annotations={"deployment.kubernetes.io/revision": "1"})
    after = live_configmap(annotations={"deployment.kubernetes.io/revision": "2"})
    after["metadata"]["resourceVersion"] = "99999"
    after["metadata"]["managedFields"] = []
    assert sanitize(before) == sanitize(after)


# --- top-level fields -----------------------------------------------------------------------


def test_status_is_dropped() -> None:
    assert "status" not in sanitize(live_deployment())


def test_status_only_change_gives_equal_manifests() -> None:
    changed = live_deployment()
    changed["status"] = {"replicas": 3, "readyReplicas": 1}
    assert sanitize(changed) == sanitize(live_deployment())


def test_unknown_top_level_fields_survive() -> None:
    storage_class = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "fast"},
        "provisioner": "ebs.csi.aws.com",
        "parameters": {"type": "gp3"},
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    }
    assert sanitize(storage_class) == storage_class


def test_configmap_immutable_and_binary_data_survive() -> None:
    obj = live_configmap()
    obj["immutable"] = True
    obj["binaryData"] = {"logo.png": "iVBORw0KGgo="}
    result = sanitize(obj)
    assert result["immutable"] is True
    assert result["binaryData"] == {"logo.png": "iVBORw0KGgo="}
    assert result["data"] == {"mode": "fast"}


def test_secret_type_survives() -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "tls", "namespace": "team-a"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"},
    }
    assert sanitize(secret) == secret


def test_cluster_role_aggregation_rule_survives() -> None:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "monitoring"},
        "aggregationRule": {
            "clusterRoleSelectors": [{"matchLabels": {"rbac.example.com/aggregate": "true"}}]
        },
        "rules": [],
    }
    assert sanitize(role) == role


def test_webhook_configuration_webhooks_survive() -> None:
    webhook = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "policy"},
        "webhooks": [
            {
                "name": "policy.example.com",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "clientConfig": {"service": {"name": "policy", "namespace": "policy"}},
            }
        ],
    }
    assert sanitize(webhook) == webhook


# --- empty values ---------------------------------------------------------------------------


def test_empty_dir_survives() -> None:
    volumes = sanitize(live_deployment())["spec"]["template"]["spec"]["volumes"]
    assert volumes == [{"name": "scratch", "emptyDir": {}}]


def test_empty_maps_and_lists_survive() -> None:
    obj = live_configmap()
    obj["data"] = {}
    obj["spec"] = {"items": [], "options": {}, "nested": {"deeper": {}}}
    result = sanitize(obj)
    assert result["data"] == {}
    assert result["spec"] == {"items": [], "options": {}, "nested": {"deeper": {}}}


def test_empty_user_labels_survive_when_nothing_was_stripped() -> None:
    result = sanitize(live_configmap(labels={}))
    assert result["metadata"]["labels"] == {}


# --- pod templates --------------------------------------------------------------------------


def test_pod_template_null_creation_timestamp_is_dropped() -> None:
    template = sanitize(live_deployment())["spec"]["template"]
    assert template["metadata"] == {"labels": {"app": "web"}}


def test_deployment_sanitizes_to_its_intent() -> None:
    assert sanitize(live_deployment()) == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "team-a", "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{"name": "web", "image": "nginx:1.27", "resources": {}}],
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                },
            },
        },
    }


def test_rollout_restart_stamp_in_pod_template_is_dropped() -> None:
    restarted = live_deployment()
    restarted["spec"]["template"]["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/restartedAt": "2024-06-01T00:00:00Z",
        "prometheus.io/scrape": "true",
    }
    template_metadata = sanitize(restarted)["spec"]["template"]["metadata"]
    assert template_metadata["annotations"] == {"prometheus.io/scrape": "true"}


def test_cronjob_job_and_pod_templates_drop_null_creation_timestamp() -> None:
    cronjob = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "backup", "namespace": "team-a"},
        "spec": {
            "schedule": "0 3 * * *",
            "jobTemplate": {
                "metadata": {"creationTimestamp": None},
                "spec": {
                    "template": {
                        "metadata": {"creationTimestamp": None},
                        "spec": {"restartPolicy": "OnFailure", "containers": []},
                    }
                },
            },
        },
    }
    job_template = sanitize(cronjob)["spec"]["jobTemplate"]
    assert job_template == {
        "metadata": {},
        "spec": {
            "template": {
                "metadata": {},
                "spec": {"restartPolicy": "OnFailure", "containers": []},
            }
        },
    }


def test_statefulset_volume_claim_templates_drop_null_creation_timestamp() -> None:
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "team-a"},
        "spec": {
            "volumeClaimTemplates": [
                {"metadata": {"name": "data", "creationTimestamp": None}, "spec": {}}
            ]
        },
    }
    claims = sanitize(statefulset)["spec"]["volumeClaimTemplates"]
    assert claims == [{"metadata": {"name": "data"}, "spec": {}}]


def test_real_creation_timestamp_inside_spec_is_kept() -> None:
    obj = live_configmap()
    obj["spec"] = {"template": {"metadata": {"creationTimestamp": "2024-05-01T10:00:00Z"}}}
    assert sanitize(obj)["spec"] == obj["spec"]


# --- Service --------------------------------------------------------------------------------


def test_normal_service_loses_allocated_cluster_ip() -> None:
    spec = sanitize(live_service(clusterIP="10.96.12.7", clusterIPs=["10.96.12.7"]))["spec"]
    assert "clusterIP" not in spec
    assert "clusterIPs" not in spec


def test_headless_service_keeps_cluster_ip_none() -> None:
    spec = sanitize(live_service(clusterIP="None", clusterIPs=["None"]))["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["clusterIPs"] == ["None"]


def test_service_defaults_and_allocations_are_dropped() -> None:
    obj = live_service(
        clusterIP="10.96.12.7",
        clusterIPs=["10.96.12.7"],
        healthCheckNodePort=31234,
        internalTrafficPolicy="Cluster",
        ipFamilyPolicy="SingleStack",
        ipFamilies=["IPv4"],
        sessionAffinity="None",
    )
    assert sanitize(obj)["spec"] == {
        "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}],
        "selector": {"app": "web"},
        "type": "ClusterIP",
        "sessionAffinity": "None",
    }


def test_service_non_default_policies_are_kept() -> None:
    obj = live_service(
        internalTrafficPolicy="Local",
        ipFamilyPolicy="PreferDualStack",
        ipFamilies=["IPv4", "IPv6"],
    )
    spec = sanitize(obj)["spec"]
    assert spec["internalTrafficPolicy"] == "Local"
    assert spec["ipFamilyPolicy"] == "PreferDualStack"
    assert spec["ipFamilies"] == ["IPv4", "IPv6"]


def test_service_rules_apply_only_to_core_services() -> None:
    custom = {
        "apiVersion": "example.com/v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"clusterIP": "10.0.0.1", "internalTrafficPolicy": "Cluster"},
    }
    assert sanitize(custom)["spec"] == custom["spec"]


# --- PersistentVolumeClaim ------------------------------------------------------------------


def test_pvc_bound_by_controller_loses_volume_name() -> None:
    obj = live_pvc(
        annotations={"pv.kubernetes.io/bind-completed": "yes"},
        phase="Pending",
        volumeName="pvc-1f2e3d",
    )
    result = sanitize(obj)
    assert "volumeName" not in result["spec"]
    assert "annotations" not in result["metadata"]


def test_pvc_in_bound_phase_loses_volume_name() -> None:
    spec = sanitize(live_pvc(phase="Bound", volumeName="pvc-1f2e3d"))["spec"]
    assert "volumeName" not in spec


def test_pvc_prebound_by_user_keeps_volume_name() -> None:
    spec = sanitize(live_pvc(phase="Pending", volumeName="nfs-share"))["spec"]
    assert spec["volumeName"] == "nfs-share"


def test_pvc_default_filesystem_volume_mode_is_dropped_block_kept() -> None:
    assert "volumeMode" not in sanitize(live_pvc(volumeMode="Filesystem"))["spec"]
    assert sanitize(live_pvc(volumeMode="Block"))["spec"]["volumeMode"] == "Block"


# --- contract -------------------------------------------------------------------------------


def test_input_is_never_mutated() -> None:
    objects = [
        live_deployment(),
        live_service(clusterIP="10.96.0.9", ipFamilyPolicy="SingleStack", ipFamilies=["IPv4"]),
        live_pvc(annotations={"pv.kubernetes.io/bind-completed": "yes"}, volumeName="pv-1"),
        live_configmap(
            labels={"helm.toolkit.fluxcd.io/name": "x"},
            annotations={"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        ),
    ]
    for obj in objects:
        before = copy.deepcopy(obj)
        result = sanitize(obj)
        assert obj == before
        result["metadata"]["name"] = "changed"
        result.setdefault("spec", {})["changed"] = True
        assert obj == before


def test_sanitize_is_idempotent() -> None:
    objects = [
        live_deployment(),
        live_service(clusterIP="None", clusterIPs=["None"]),
        live_pvc(phase="Bound", volumeName="pv-1", volumeMode="Filesystem"),
        live_configmap(annotations={"deployment.kubernetes.io/revision": "1", "keep": "me"}),
    ]
    for obj in objects:
        once = sanitize(obj)
        assert sanitize(once) == once
