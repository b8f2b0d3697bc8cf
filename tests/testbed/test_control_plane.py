"""The control plane of the test bed behaves like a real cluster, because it is one."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from testbed.controlplane import KUBERNETES_VERSION, WATCH_CACHE_OFF_RESOURCE, ControlPlane
from testbed.harness import create_namespace


async def api_client(kubeconfig: str) -> client.ApiClient:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return client.ApiClient(configuration)


@pytest.fixture
async def admin(control_plane: ControlPlane) -> AsyncIterator[client.ApiClient]:
    api = await api_client(str(control_plane.admin_kubeconfig))
    yield api
    await api.close()


async def test_version_is_the_pinned_kubernetes(admin: client.ApiClient) -> None:
    info = await client.VersionApi(admin).get_code()
    assert info.git_version == KUBERNETES_VERSION


async def test_lists_and_watches_a_configmap_created_through_the_api(
    control_plane: ControlPlane, admin: client.ApiClient
) -> None:
    namespace = create_namespace(control_plane, "smoke")
    core = client.CoreV1Api(admin)
    listed = await core.list_namespaced_config_map(namespace)
    body = {"metadata": {"name": "smoke"}, "data": {"k": "v"}}

    async def first_event() -> dict[str, Any]:
        stream = watch.Watch()
        async for event in stream.stream(
            core.list_namespaced_config_map,
            namespace,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=30,
        ):
            if event["type"] == "ADDED" and event["object"].metadata.name == "smoke":
                stream.stop()
                return event
        raise AssertionError("watch ended without the ADDED event")

    watcher = asyncio.create_task(first_event())
    await asyncio.sleep(0.5)
    await core.create_namespaced_config_map(namespace, body)
    event = await asyncio.wait_for(watcher, 30)
    assert event["object"].data == {"k": "v"}
    relisted = await core.list_namespaced_config_map(namespace)
    assert [item.metadata.name for item in relisted.items] == ["smoke"]


MERGE_PATCH = "application/merge-patch+json"

CUSTOM_RESOURCES: list[tuple[str, dict[str, Any], bool]] = [
    ("gitproviders", {"url": "https://example.invalid/r.git", "allowedBranches": ["main"]}, True),
    ("gittargets", {"providerRef": {"name": "p"}, "branch": "main", "path": "live"}, True),
    ("watchrules", {"targetRef": {"name": "t"}, "rules": [{"resources": ["configmaps"]}]}, True),
    (
        "clusterwatchrules",
        {
            "targetRef": {"name": "t", "namespace": "ns"},
            "rules": [{"resources": ["namespaces"], "scope": "Cluster"}],
        },
        False,
    ),
]


@pytest.mark.parametrize(("plural", "spec", "namespaced"), CUSTOM_RESOURCES)
async def test_custom_resource_is_created_and_its_status_patched(
    control_plane: ControlPlane,
    admin: client.ApiClient,
    plural: str,
    spec: dict[str, Any],
    namespaced: bool,
) -> None:
    custom = client.CustomObjectsApi(admin)
    kind = {
        "gitproviders": "GitProvider",
        "gittargets": "GitTarget",
        "watchrules": "WatchRule",
        "clusterwatchrules": "ClusterWatchRule",
    }[plural]
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    body = {
        "apiVersion": "configbutler.ai/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }
    condition = {
        "type": "Ready",
        "status": "False",
        "reason": "Smoke",
        "message": "m",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 1,
    }
    status = {"status": {"observedGeneration": 1, "conditions": [condition]}}
    if namespaced:
        namespace = create_namespace(control_plane, "smoke")
        await custom.create_namespaced_custom_object(
            "configbutler.ai", "v1alpha1", namespace, plural, body
        )
        await custom.patch_namespaced_custom_object_status(
            "configbutler.ai",
            "v1alpha1",
            namespace,
            plural,
            name,
            status,
            _content_type=MERGE_PATCH,
        )
        stored = await custom.get_namespaced_custom_object(
            "configbutler.ai", "v1alpha1", namespace, plural, name
        )
    else:
        await custom.create_cluster_custom_object("configbutler.ai", "v1alpha1", plural, body)
        await custom.patch_cluster_custom_object_status(
            "configbutler.ai", "v1alpha1", plural, name, status, _content_type=MERGE_PATCH
        )
        stored = await custom.get_cluster_custom_object("configbutler.ai", "v1alpha1", plural, name)
    assert stored["status"]["conditions"][0]["reason"] == "Smoke"
    assert stored["spec"] == {**spec, **stored["spec"]}


def test_crd_schema_rejects_a_provider_without_url(control_plane: ControlPlane) -> None:
    namespace = create_namespace(control_plane, "smoke")
    manifest = {
        "apiVersion": "configbutler.ai/v1alpha1",
        "kind": "GitProvider",
        "metadata": {"name": "bad", "namespace": namespace},
        "spec": {"allowedBranches": ["main"]},
    }
    with pytest.raises(RuntimeError, match="url"):
        control_plane.kubectl("create", "-f", "-", stdin=json.dumps(manifest))


async def test_daemon_identity_reads_but_cannot_write_mirrored_objects(
    control_plane: ControlPlane,
) -> None:
    namespace = create_namespace(control_plane, "smoke")
    api = await api_client(str(control_plane.daemon_kubeconfig))
    try:
        core = client.CoreV1Api(api)
        await core.list_namespaced_config_map(namespace)
        with pytest.raises(ApiException) as refused:
            await core.create_namespaced_config_map(namespace, {"metadata": {"name": "x"}})
        assert refused.value.status == 403
    finally:
        await api.close()


async def test_watch_resumed_after_compaction_receives_410(
    control_plane: ControlPlane, admin: client.ApiClient
) -> None:
    assert WATCH_CACHE_OFF_RESOURCE == "podtemplates"
    namespace = create_namespace(control_plane, "smoke")
    core = client.CoreV1Api(admin)
    template = {
        "metadata": {"name": "t0"},
        "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}},
    }
    created = await core.create_namespaced_pod_template(namespace, template)
    old_version = created.metadata.resource_version
    await core.patch_namespaced_pod_template("t0", namespace, {"metadata": {"labels": {"x": "1"}}})
    control_plane.compact_etcd()
    stream = watch.Watch()
    with pytest.raises(ApiException) as expired:
        async for _event in stream.stream(
            core.list_namespaced_pod_template,
            namespace,
            resource_version=old_version,
            timeout_seconds=10,
        ):
            pass
    assert expired.value.status == 410
