"""WatchRule and ClusterWatchRule compiled into predicates over resource types and events.

Semantics (SPEC 2.3, 2.4, 3.3), kept in one place so that the watchers (which types to watch)
and the target consumers (which events a target takes) can never disagree:

- ``operations``: ``CREATE``, ``UPDATE``, ``DELETE`` or ``*``; empty means all.
- ``apiGroups``: ``""`` is the core group, ``*`` all groups; empty means the core group only.
- ``apiVersions``: ``*`` or empty means any; otherwise the type must serve one of them. Objects
  are always read at the group's preferred version.
- ``resources``: plural names, case-insensitive; ``*`` means every listable and watchable type
  of the selected groups except the default exclusions. Naming an excluded type overrides.
- A WatchRule matches namespaced objects in its own namespace only. A ClusterWatchRule with
  scope ``Cluster`` matches cluster-scoped types; with ``Namespaced``, namespaced types in every
  namespace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reverserd.kube.resources import ResourceType
from reverserd.manifest.layout import DEFAULT_EXCLUDED_RESOURCES

OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE"})
WILDCARD = "*"


class RuleError(ValueError):
    """A rule that cannot be compiled; the message is shown in the rule's status."""


@dataclass(frozen=True, slots=True)
class CompiledRule:
    operations: frozenset[str]
    groups: frozenset[str] | None  # None: every group
    versions: frozenset[str] | None  # None: any version
    resources: frozenset[str] | None  # None: every resource but the default exclusions
    namespace: str | None  # None: every namespace (or cluster-scoped)
    cluster_scoped: bool

    def selects_type(self, rtype: ResourceType, served_versions: Sequence[str] = ()) -> bool:
        """Whether the rule wants the type: ``apiVersions`` match any version it is served at."""
        if self.versions is not None and not self.versions & set(
            served_versions or [rtype.version]
        ):
            return False
        return self._selects_resource(rtype)

    def selects_event(self, rtype: ResourceType, namespace: str, operation: str) -> bool:
        """Whether the rule wants an event of a type it selects.

        Events carry the preferred version the type is watched at, which need not be one of
        the rule's ``apiVersions`` (the version was matched when the type was selected).
        """
        if operation not in self.operations:
            return False
        if self.namespace is not None and namespace != self.namespace:
            return False
        return self._selects_resource(rtype)

    def _selects_resource(self, rtype: ResourceType) -> bool:
        if rtype.namespaced == self.cluster_scoped:
            return False
        if self.groups is not None and rtype.group not in self.groups:
            return False
        if self.resources is None:
            return (rtype.group, rtype.resource) not in DEFAULT_EXCLUDED_RESOURCES
        return rtype.resource.lower() in self.resources


def _strings(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RuleError(f"{field} must be a list of strings")
    return value


def compile_rule(
    raw: Mapping[str, Any], namespace: str | None, cluster_scope: str | None
) -> CompiledRule:
    """Compile one entry of ``spec.rules``.

    ``namespace`` is the WatchRule's namespace; ``cluster_scope`` is a ClusterWatchRule's
    ``scope`` (and ``namespace`` is then None).
    """
    operations = {item.upper() for item in _strings(raw.get("operations"), "operations")}
    unknown = operations - OPERATIONS - {WILDCARD}
    if unknown:
        raise RuleError(f"unknown operations {sorted(unknown)}; use CREATE, UPDATE, DELETE or *")
    groups = _strings(raw.get("apiGroups"), "apiGroups") or [""]
    versions = _strings(raw.get("apiVersions"), "apiVersions")
    resources = [item.lower() for item in _strings(raw.get("resources"), "resources")]
    if not resources:
        raise RuleError("resources must name at least one resource (or *)")
    if cluster_scope not in (None, "Cluster", "Namespaced"):
        raise RuleError(f"scope must be Cluster or Namespaced, not {cluster_scope!r}")
    return CompiledRule(
        operations=frozenset(
            OPERATIONS if not operations or WILDCARD in operations else operations
        ),
        groups=None if WILDCARD in groups else frozenset(groups),
        versions=None if not versions or WILDCARD in versions else frozenset(versions),
        resources=None if WILDCARD in resources else frozenset(resources),
        namespace=namespace,
        cluster_scoped=cluster_scope == "Cluster",
    )


def compile_rules(
    raw_rules: Iterable[Mapping[str, Any]], namespace: str | None, cluster_rule: bool
) -> list[CompiledRule]:
    compiled = []
    for index, raw in enumerate(raw_rules):
        if not isinstance(raw, Mapping):
            raise RuleError(f"rules[{index}] must be an object")
        scope = str(raw.get("scope", "")) if cluster_rule else None
        try:
            compiled.append(compile_rule(raw, namespace, scope))
        except RuleError as error:
            raise RuleError(f"rules[{index}]: {error}") from error
    if not compiled:
        raise RuleError("spec.rules must hold at least one rule")
    return compiled
