"""Manifests the tests apply: reverserd's custom resources and the plain objects they mirror.

Every builder returns a fresh dict, so a test may change what it got before applying it.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

CONFIGBUTLER_API = "configbutler.ai/v1alpha1"


def configbutler_resource(
    kind: str, name: str, namespace: str | None, spec: dict[str, Any]
) -> dict[str, Any]:
    """One of reverserd's custom resources; ``namespace`` is None for a cluster-scoped one."""
    metadata = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    return {"apiVersion": CONFIGBUTLER_API, "kind": kind, "metadata": metadata, "spec": spec}


def git_provider(
    namespace: str,
    name: str,
    url: str,
    *,
    secret: str | None = None,
    branches: Sequence[str] = ("main",),
    push: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A GitProvider for ``url`` that may push to ``branches`` (every second unless ``push``)."""
    spec: dict[str, Any] = {
        "url": url,
        "allowedBranches": list(branches),
        "push": push if push is not None else {"interval": "1s"},
    }
    if secret:
        spec["secretRef"] = {"name": secret}
    return configbutler_resource("GitProvider", name, namespace, spec)


def git_target(
    namespace: str, name: str, provider: str, path: str, branch: str = "main"
) -> dict[str, Any]:
    """A GitTarget writing below ``path`` on ``branch`` through the GitProvider ``provider``."""
    spec = {"providerRef": {"name": provider}, "branch": branch, "path": path}
    return configbutler_resource("GitTarget", name, namespace, spec)


def watch_rule(
    namespace: str, name: str, target: str, rules: list[dict[str, Any]]
) -> dict[str, Any]:
    """A WatchRule selecting ``rules`` in ``namespace`` for the GitTarget ``target``."""
    spec = {"targetRef": {"name": target}, "rules": rules}
    return configbutler_resource("WatchRule", name, namespace, spec)


def cluster_watch_rule(
    name: str, target_namespace: str, target: str, rules: list[dict[str, Any]]
) -> dict[str, Any]:
    """A ClusterWatchRule selecting ``rules`` for the GitTarget ``target_namespace/target``."""
    spec = {"targetRef": {"name": target, "namespace": target_namespace}, "rules": rules}
    return configbutler_resource("ClusterWatchRule", name, None, spec)


def mirror_setup(
    namespace: str,
    url: str,
    *,
    branch: str = "main",
    path: str = "live-cluster",
    secret: str | None = None,
    rules: list[dict[str, Any]] | None = None,
    interval: str = "1s",
    max_commits: int | None = None,
    name: str = "mirror",
) -> list[dict[str, Any]]:
    """A GitProvider, a GitTarget and a WatchRule, all named ``name``, in ``namespace``."""
    push: dict[str, Any] = {"interval": interval}
    if max_commits is not None:
        push["maxCommits"] = max_commits
    return [
        git_provider(namespace, name, url, secret=secret, branches=[branch, "main"], push=push),
        git_target(namespace, name, name, path, branch),
        watch_rule(namespace, name, name, rules or [{"resources": ["configmaps"]}]),
    ]


def configmap(namespace: str, name: str, data: dict[str, str] | None = None) -> dict[str, Any]:
    """A ConfigMap holding ``data`` (by default ``{"key": name}``)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data if data is not None else {"key": name},
    }


def secret(
    namespace: str, name: str, data: dict[str, str], secret_type: str = "Opaque"
) -> dict[str, Any]:
    """A Secret (Opaque unless ``secret_type``) holding ``data``, base64-encoded as the API
    stores it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": secret_type,
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
    }


def deployment(namespace: str | None, name: str) -> dict[str, Any]:
    """A Deployment of one nginx container with a scratch ``emptyDir`` volume; ``namespace``
    None leaves ``metadata.namespace`` out, as a hand-edited manifest may."""
    metadata = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
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


def crd(
    group: str,
    plural: str = "widgets",
    kind: str = "Widget",
    *,
    scope: str = "Namespaced",
    status_subresource: bool = False,
) -> dict[str, Any]:
    """A CustomResourceDefinition with one version ``v1`` that keeps any field."""
    version: dict[str, Any] = {
        "name": "v1",
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        },
    }
    if status_subresource:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": scope,
            "names": {
                "plural": plural,
                "singular": kind.lower(),
                "kind": kind,
                "listKind": f"{kind}List",
            },
            "versions": [version],
        },
    }


def custom_object(
    group: str, kind: str, namespace: str, name: str, spec: dict[str, Any]
) -> dict[str, Any]:
    """An object of a :func:`crd` type (version ``v1``) with ``spec``."""
    return {
        "apiVersion": f"{group}/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def podtemplate(namespace: str, name: str) -> dict[str, Any]:
    """A PodTemplate: the test bed serves this type without a watch cache (see controlplane)."""
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": name, "namespace": namespace},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "main", "image": "registry.example/app:1"}]},
        },
    }


def admission_webhook(name: str, url: str, ca_bundle: bytes, namespace: str) -> dict[str, Any]:
    """reverserd's attribution webhook for changes in ``namespace``, as packaging ships it
    (never denies, ``failurePolicy: Ignore``, short timeout) but reached by URL on loopback."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "attribution.reverserd.configbutler.ai",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Ignore",
                "timeoutSeconds": 2,
                "matchPolicy": "Equivalent",
                "clientConfig": {
                    "url": url,
                    "caBundle": base64.b64encode(ca_bundle).decode(),
                },
                "rules": [
                    {
                        "apiGroups": ["*"],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["*"],
                        "scope": "*",
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            }
        ],
    }
