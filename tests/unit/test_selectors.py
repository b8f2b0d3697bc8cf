"""Label selectors, skipControlled and namespaceSelector of a rule: what they take and refuse."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from reverserd.config.rules import RevisedNamespaces, RuleError, compile_rule
from reverserd.config.selectors import SelectorError, parse_selector
from reverserd.targets.planning import selection_key

NAMESPACES = {"team-a": {"tier": "prod"}, "team-b": {"tier": "dev"}}


def obj(labels: dict[str, str] | None = None, **metadata: Any) -> dict[str, Any]:
    return {"metadata": {"name": "x", "namespace": "team-a", "labels": labels or {}, **metadata}}


def test_match_labels_and_every_operator_follow_kubernetes_semantics() -> None:
    selector = parse_selector(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["prod", "stage"]},
                {"key": "canary", "operator": "NotIn", "values": ["true"]},
                {"key": "team", "operator": "Exists"},
                {"key": "skip", "operator": "DoesNotExist"},
            ],
        },
        "objectSelector",
    )
    assert selector is not None
    base = {"app": "web", "tier": "prod", "team": "a"}
    assert selector.matches(base)
    assert selector.matches({**base, "canary": "false"})
    assert not selector.matches({**base, "canary": "true"})
    assert not selector.matches({**base, "app": "db"})
    assert not selector.matches({**base, "tier": "dev"})
    assert not selector.matches({key: v for key, v in base.items() if key != "team"})
    assert not selector.matches({**base, "skip": ""})
    assert not selector.matches(None)


def test_an_empty_selector_takes_everything_and_an_absent_one_filters_nothing() -> None:
    empty = parse_selector({}, "objectSelector")
    assert empty is not None and empty.matches({}) and empty.matches({"a": "b"})
    assert parse_selector(None, "objectSelector") is None


@pytest.mark.parametrize(
    "raw",
    [
        {"matchExpressions": [{"key": "a", "operator": "In"}]},
        {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
        {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]},
        {"matchLabels": {"bad key": "x"}},
        {"matchLabels": {"a": "\n"}},
        {"matchLabels": {"a": "x" * 64}},
        {"matchLabels": {f"k{i}": "v" for i in range(65)}},
        {"matchSomething": {}},
        "app=web",
    ],
)
def test_a_selector_the_api_server_would_refuse_is_refused_with_its_field(raw: Any) -> None:
    with pytest.raises(SelectorError, match="objectSelector"):
        parse_selector(raw, "objectSelector")


def test_rule_with_object_selector_takes_only_matching_objects() -> None:
    rule = compile_rule(
        {"resources": ["configmaps"], "objectSelector": {"matchLabels": {"mirror": "yes"}}},
        "team-a",
        None,
    )
    assert rule.selects_object(obj({"mirror": "yes"}), NAMESPACES)
    assert not rule.selects_object(obj({"mirror": "no"}), NAMESPACES)
    assert not rule.selects_object(obj(), NAMESPACES)


def test_skip_controlled_skips_objects_a_controller_owns_and_only_when_asked() -> None:
    owned = obj(ownerReferences=[{"kind": "ReplicaSet", "name": "r", "controller": True}])
    referenced = obj(ownerReferences=[{"kind": "ConfigMap", "name": "c"}])
    skipping = compile_rule({"resources": ["configmaps"], "skipControlled": True}, "team-a", None)
    default = compile_rule({"resources": ["configmaps"]}, "team-a", None)
    assert not skipping.selects_object(owned, NAMESPACES)
    assert skipping.selects_object(referenced, NAMESPACES)
    assert default.selects_object(owned, NAMESPACES)
    with pytest.raises(RuleError, match="skipControlled"):
        compile_rule({"resources": ["configmaps"], "skipControlled": "yes"}, "team-a", None)


def test_namespace_selector_matches_the_namespace_labels_and_unknown_namespaces_never() -> None:
    rule = compile_rule(
        {"resources": ["configmaps"], "namespaceSelector": {"matchLabels": {"tier": "prod"}}},
        None,
        "Namespaced",
    )
    assert rule.selects_object(obj(), NAMESPACES)
    other = {"metadata": {"name": "x", "namespace": "team-b"}}
    assert not rule.selects_object(other, NAMESPACES)
    assert not rule.selects_object({"metadata": {"name": "x", "namespace": "new"}}, NAMESPACES)


@pytest.mark.parametrize("namespace, scope", [("team-a", None), (None, "Cluster")])
def test_namespace_selector_is_refused_where_there_is_no_namespace_to_choose(
    namespace: str | None, scope: str | None
) -> None:
    with pytest.raises(RuleError, match="namespaceSelector"):
        compile_rule(
            {"resources": ["configmaps"], "namespaceSelector": {}, "scope": scope},
            namespace,
            scope,
        )


def test_selection_key_changes_with_the_selector_and_the_namespaces_it_matches() -> None:
    def key(raw: dict[str, Any], namespaces: dict[str, dict[str, str]]) -> str:
        rule = compile_rule({"resources": ["configmaps"], **raw}, None, "Namespaced")
        return selection_key("", "configmaps", [rule], namespaces)

    plain = key({}, NAMESPACES)
    by_label = key({"objectSelector": {"matchLabels": {"a": "b"}}}, NAMESPACES)
    reordered = key(
        {"objectSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": ["b"]}]}},
        NAMESPACES,
    )
    assert plain != by_label == reordered
    prod = {"namespaceSelector": {"matchLabels": {"tier": "prod"}}}
    relabelled = {**NAMESPACES, "team-b": {"tier": "prod"}}
    assert key(prod, NAMESPACES) != key(prod, relabelled)
    assert key(prod, NAMESPACES) == key(prod, {**NAMESPACES, "team-c": {"tier": "dev"}})


class CountedNamespaces(RevisedNamespaces):
    """Namespace labels whose revision the test moves, counting every full read."""

    def __init__(self, labels: dict[str, dict[str, str]]) -> None:
        super().__init__()
        self.labels = labels
        self.moves = 0
        self.reads = 0

    @property
    def revision(self) -> int:
        return self.moves

    def __getitem__(self, name: str) -> dict[str, str]:
        return self.labels[name]

    def __iter__(self) -> Iterator[str]:
        self.reads += 1
        return iter(dict(self.labels))

    def __len__(self) -> int:
        return len(self.labels)


def test_a_selector_at_the_crd_bounds_gives_a_short_selection_key() -> None:
    # 32 expressions of 64 values of 63 characters each: ~130 KB of selector text.
    expressions = [
        {"key": f"k{index}", "operator": "In", "values": [f"{v:02d}" + "v" * 61 for v in range(64)]}
        for index in range(32)
    ]
    selector = {"matchExpressions": expressions}
    rule = compile_rule(
        {"resources": ["configmaps"], "objectSelector": selector, "namespaceSelector": selector},
        None,
        "Namespaced",
    )
    assert rule.object_selector is not None and len(rule.object_selector.text()) > 100_000
    key = selection_key("", "configmaps", [rule] * 20, NAMESPACES)
    assert len(key) < 20 * 100


def test_the_namespaces_a_selector_matches_are_read_again_only_when_they_change() -> None:
    rule = compile_rule(
        {"resources": ["configmaps"], "namespaceSelector": {"matchLabels": {"tier": "prod"}}},
        None,
        "Namespaced",
    )
    namespaces = CountedNamespaces({"team-a": {"tier": "prod"}, "team-b": {"tier": "dev"}})
    before = selection_key("", "configmaps", [rule], namespaces)
    assert selection_key("", "configmaps", [rule], namespaces) == before
    assert namespaces.reads == 1
    namespaces.labels["team-b"] = {"tier": "prod"}
    namespaces.moves += 1
    after = selection_key("", "configmaps", [rule], namespaces)
    assert namespaces.reads == 2
    # A namespace that starts matching still changes the key (and so gives a backfill), and
    # the key is the one plain labels give.
    assert after != before
    assert after == selection_key("", "configmaps", [rule], dict(namespaces.labels))
