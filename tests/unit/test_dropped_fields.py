"""A GitTarget's dropFields: both spellings, what is refused, and what a render then holds."""

from __future__ import annotations

from typing import Any

import pytest

from reverserd.config.model import ConfigError, parse_target
from reverserd.kube.resources import ResourceType
from reverserd.manifest.dropped import FieldPathError, parse_field_path, parse_field_paths
from reverserd.targets.planning import manifest_of

DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment", namespaced=True)
CHURN = "example.com/last-sync"


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "team-a",
            "annotations": {CHURN: "12:00", "keep": "me"},
            "labels": {"app": "web"},
        },
        "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "c"}]}}},
    }


@pytest.mark.parametrize(
    "text, path",
    [
        ("/spec/replicas", ("spec", "replicas")),
        ("spec.replicas", ("spec", "replicas")),
        ("/metadata/annotations/example.com~1last-sync", ("metadata", "annotations", CHURN)),
        (f"metadata.annotations[{CHURN}]", ("metadata", "annotations", CHURN)),
        ("/data/a~0b", ("data", "a~b")),
        ("data[a.b].c", ("data", "a.b", "c")),
    ],
)
def test_both_spellings_name_the_same_path(text: str, path: tuple[str, ...]) -> None:
    assert parse_field_path(text) == path


@pytest.mark.parametrize(
    "text",
    [
        "apiVersion",
        "/kind",
        "metadata",
        "metadata.name",
        "/metadata/namespace",
        "metadata[name]",
        "/",
        "",
        "spec..replicas",
        "spec.",
        "spec[open",
        "/spec/~2",
        "spec\nreplicas",
        "x" * 513,
    ],
)
def test_paths_that_would_drop_identity_or_cannot_be_read_are_refused(text: str) -> None:
    with pytest.raises(FieldPathError, match="dropFields"):
        parse_field_path(text)


def test_dropped_fields_are_absent_from_the_rendering_and_nothing_else_is() -> None:
    dropped = parse_field_paths(
        ["spec.replicas", f"/metadata/annotations/{CHURN.replace('/', '~1')}"]
    )
    _, content = manifest_of(DEPLOYMENTS, deployment(), "live", dropped)
    _, plain = manifest_of(DEPLOYMENTS, deployment(), "live", ())
    assert b"replicas" not in content and CHURN.encode() not in content
    assert content == plain.replace(b"  replicas: 3\n", b"").replace(
        f"    {CHURN}: '12:00'\n".encode(), b""
    )


def test_a_path_through_a_list_or_a_missing_field_drops_nothing() -> None:
    dropped = parse_field_paths(["spec.template.spec.containers.name", "spec.missing.deeper"])
    assert manifest_of(DEPLOYMENTS, deployment(), "live", dropped) == manifest_of(
        DEPLOYMENTS, deployment(), "live", ()
    )


def target(drop_fields: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "mirror", "namespace": "team-a"},
        "spec": {"providerRef": {"name": "p"}, "branch": "main", "dropFields": drop_fields},
    }


def test_a_target_refuses_an_identity_path_with_a_condition_reason_and_the_path() -> None:
    with pytest.raises(ConfigError, match=r"spec\.dropFields entry 'metadata\.name'") as raised:
        parse_target(target(["spec.replicas", "metadata.name"]))
    assert raised.value.reason == "InvalidDropFields"
    with pytest.raises(ConfigError, match="at most 64"):
        parse_target(target([f"spec.f{i}" for i in range(65)]))


def test_spellings_and_order_of_one_list_are_the_same_target() -> None:
    first = parse_target(target(["spec.replicas", f"metadata.annotations[{CHURN}]"]))
    second = parse_target(
        target(["/metadata/annotations/example.com~1last-sync", "/spec/replicas"])
    )
    assert first.drop_fields == second.drop_fields
    assert parse_target(target(None)).drop_fields == ()
