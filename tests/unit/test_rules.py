"""Rule matching: which types and events a compiled WatchRule selects."""

from __future__ import annotations

from reverserd.config.rules import compile_rule
from reverserd.kube.resources import ResourceType

# Served at v1 (preferred) and v1beta1; watched, and so journaled, at v1.
WIDGETS = ResourceType("example.com", "v1", "widgets", "Widget", namespaced=True)


def test_rule_for_a_version_other_than_the_preferred_one_selects_the_type_and_its_events() -> None:
    rule = compile_rule(
        {"apiGroups": ["example.com"], "apiVersions": ["v1beta1"], "resources": ["widgets"]},
        "team",
        None,
    )
    assert rule.selects_type(WIDGETS, ("v1", "v1beta1"))
    assert rule.selects_event(WIDGETS, "team", "UPDATE")


def test_rule_for_a_version_the_type_is_not_served_at_selects_nothing() -> None:
    rule = compile_rule(
        {"apiGroups": ["example.com"], "apiVersions": ["v2"], "resources": ["widgets"]},
        "team",
        None,
    )
    assert not rule.selects_type(WIDGETS, ("v1", "v1beta1"))
