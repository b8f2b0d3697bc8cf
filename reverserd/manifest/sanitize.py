"""Turn a live Kubernetes object into the manifest a user would have written.

A live object carries two kinds of fields: the user's intent, and what the cluster added while
running it (status, bookkeeping metadata, allocated IPs, controller annotations). Git must hold
only the intent, so that the folder applies cleanly to another cluster and so that noise never
produces a commit.

This is a block list, not an allow list: every field is kept unless a rule below names it. A
field the rules do not know (a new API field, a custom resource's own top-level field such as
``webhooks`` or ``aggregationRule``) survives, because losing intent is worse than keeping a
little noise. The one exception is ``metadata``, whose fields are all server-managed except the
four a user sets.

Guarantees:

- the input is never mutated;
- empty maps and lists inside the object survive (``emptyDir: {}`` means something);
- ``metadata.annotations`` of the object and of every embedded object (pod templates) pass the
  same annotation rules, so a ``kubectl rollout restart`` stamp never reaches Git;
- sanitizing twice gives the same result as sanitizing once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, Final

DROPPED_TOP_LEVEL_FIELDS: Final[Mapping[str, str]] = {
    "status": "observed state written by controllers; it changes without anyone editing intent",
}

KEPT_METADATA_FIELDS: Final[Mapping[str, str]] = {
    "name": "identity of the object",
    "namespace": "identity of the object",
    "labels": "set by users and tools to select and group objects",
    "annotations": "set by users and tools, minus the noise rules below",
}

DROPPED_ANNOTATIONS: Final[Mapping[str, str]] = {
    "kubectl.kubernetes.io/last-applied-configuration": (
        "a copy of the whole applied object; it can hold Secret data in plain text"
    ),
    "kubectl.kubernetes.io/restartedAt": "a timestamp from kubectl rollout restart, not intent",
    "argocd.argoproj.io/tracking-id": "Argo CD's ownership marker for the source installation",
    "argocd.argoproj.io/installation-id": "identifies the Argo CD installation, not the object",
}

DROPPED_ANNOTATION_PREFIXES: Final[Mapping[str, str]] = {
    "deployment.kubernetes.io/": "revision bookkeeping of the Deployment controller",
    "control-plane.alpha.kubernetes.io/": "leader-election records of control-plane components",
    "autoscaling.alpha.kubernetes.io/": "state written by the HorizontalPodAutoscaler controller",
    "pv.kubernetes.io/": "binding state written by the persistent volume controller",
    "volume.kubernetes.io/": "provisioner selection written by the persistent volume controller",
    "volume.beta.kubernetes.io/": "legacy provisioner state written by the volume controller",
}

DROPPED_LABELS: Final[Mapping[str, str]] = {
    "kustomize.toolkit.fluxcd.io/name": "Flux ownership marker of the source cluster",
    "kustomize.toolkit.fluxcd.io/namespace": "Flux ownership marker of the source cluster",
    "helm.toolkit.fluxcd.io/name": "Flux ownership marker of the source cluster",
    "helm.toolkit.fluxcd.io/namespace": "Flux ownership marker of the source cluster",
}

# Only the core group's Service and PersistentVolumeClaim have the allocated fields below; a
# custom resource that happens to share a kind name is left alone.
CORE_API_VERSION: Final = "v1"

HEADLESS_CLUSTER_IP: Final = "None"

# A headless Service (clusterIP "None") asked for no IP: there the field is intent and stays.
SERVICE_CLUSTER_IP_FIELDS: Final[Mapping[str, str]] = {
    "clusterIP": "allocated from the source cluster's service range",
    "clusterIPs": "allocated from the source cluster's service range",
}

SERVICE_ALLOCATED_FIELDS: Final[Mapping[str, str]] = {
    "healthCheckNodePort": "allocated by the API server for externalTrafficPolicy Local",
}

SERVICE_DEFAULTS: Final[Mapping[str, tuple[str, str]]] = {
    "internalTrafficPolicy": ("Cluster", "the API server default, filled in on create"),
}

SERVICE_SINGLE_STACK_POLICY: Final = "SingleStack"
# A single-stack Service gets its family from the target cluster; pinning the source cluster's
# family would fail to apply on a cluster of the other family.
SERVICE_FAMILY_FIELDS: Final = ("ipFamilyPolicy", "ipFamilies")

# The persistent volume controller writes volumeName when it binds a claim (and marks the claim
# with the annotation, or moves it to the Bound phase); that volume does not exist on another
# cluster, so a claim naming it would never bind there.
PVC_BOUND_VOLUME_FIELD: Final = "volumeName"
PVC_BIND_COMPLETED_ANNOTATION: Final = "pv.kubernetes.io/bind-completed"
PVC_BOUND_PHASE: Final = "Bound"

PVC_DEFAULTS: Final[Mapping[str, tuple[str, str]]] = {
    "volumeMode": ("Filesystem", "the API server default, filled in on create"),
}

# Go serialises the zero creationTimestamp of an embedded ObjectMeta (pod templates, job
# templates, volume claim templates) as null; it never carries information.
EMBEDDED_NULL_METADATA_FIELDS: Final[Mapping[str, str]] = {
    "creationTimestamp": "null zero value of an embedded object's metadata",
}


def sanitize(obj: dict[str, Any]) -> dict[str, Any]:
    """Return the manifest of ``obj`` with every field the cluster added removed.

    ``obj`` is a live object as the API server returns it (decoded JSON). The result is a new
    dict; ``obj`` and everything it contains are left untouched.
    """
    result: dict[str, Any] = {}
    for key, value in obj.items():
        if key in DROPPED_TOP_LEVEL_FIELDS:
            continue
        if key == "metadata" and isinstance(value, dict):
            result[key] = _sanitize_metadata(value)
        else:
            result[key] = copy.deepcopy(value)
            _clean_embedded_metadata(result[key])

    if obj.get("apiVersion") == CORE_API_VERSION:
        spec = result.get("spec")
        if isinstance(spec, dict):
            if obj.get("kind") == "Service":
                _sanitize_service_spec(spec)
            elif obj.get("kind") == "PersistentVolumeClaim":
                _sanitize_pvc_spec(spec, _was_bound_by_controller(obj))
    return result


def _sanitize_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key in KEPT_METADATA_FIELDS:
        if key in metadata:
            result[key] = copy.deepcopy(metadata[key])
    _strip_map(result, "labels", _is_dropped_label)
    _strip_map(result, "annotations", _is_dropped_annotation)
    return result


def _clean_embedded_metadata(value: Any) -> None:
    """Apply the embedded-object rules to every nested ``metadata`` map, in place.

    Labels are left alone here: a template's labels feed its owner's selector.
    """
    if isinstance(value, dict):
        for key, child in value.items():
            if key == "metadata" and isinstance(child, dict):
                for field in EMBEDDED_NULL_METADATA_FIELDS:
                    if field in child and child[field] is None:
                        del child[field]
                _strip_map(child, "annotations", _is_dropped_annotation)
            _clean_embedded_metadata(child)
    elif isinstance(value, list):
        for item in value:
            _clean_embedded_metadata(item)


def _strip_map(metadata: dict[str, Any], field: str, is_dropped: Callable[[str], bool]) -> None:
    """Remove dropped keys from ``metadata[field]``, and the field itself if that empties it.

    Labels and annotations are ``omitempty`` in the API, so a map emptied by stripping means the
    same as no map; removing it keeps a stripped annotation from leaving ``annotations: {}``.
    """
    entries = metadata.get(field)
    if not isinstance(entries, dict):
        return
    kept = {key: value for key, value in entries.items() if not is_dropped(key)}
    if len(kept) == len(entries):
        return
    if kept:
        metadata[field] = kept
    else:
        del metadata[field]


def _is_dropped_annotation(key: str) -> bool:
    return key in DROPPED_ANNOTATIONS or key.startswith(tuple(DROPPED_ANNOTATION_PREFIXES))


def _is_dropped_label(key: str) -> bool:
    return key in DROPPED_LABELS


def _sanitize_service_spec(spec: dict[str, Any]) -> None:
    if spec.get("clusterIP") != HEADLESS_CLUSTER_IP:
        for field in SERVICE_CLUSTER_IP_FIELDS:
            spec.pop(field, None)
    for field in SERVICE_ALLOCATED_FIELDS:
        spec.pop(field, None)
    _drop_defaults(spec, SERVICE_DEFAULTS)
    policy_field, families_field = SERVICE_FAMILY_FIELDS
    if spec.get(policy_field) == SERVICE_SINGLE_STACK_POLICY:
        del spec[policy_field]
        spec.pop(families_field, None)


def _was_bound_by_controller(obj: Mapping[str, Any]) -> bool:
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if isinstance(annotations, dict) and PVC_BIND_COMPLETED_ANNOTATION in annotations:
        return True
    status = obj.get("status")
    return isinstance(status, dict) and status.get("phase") == PVC_BOUND_PHASE


def _sanitize_pvc_spec(spec: dict[str, Any], bound_by_controller: bool) -> None:
    if bound_by_controller:
        spec.pop(PVC_BOUND_VOLUME_FIELD, None)
    _drop_defaults(spec, PVC_DEFAULTS)


def _drop_defaults(spec: dict[str, Any], defaults: Mapping[str, tuple[str, str]]) -> None:
    for field, (default, _reason) in defaults.items():
        if spec.get(field) == default:
            del spec[field]
