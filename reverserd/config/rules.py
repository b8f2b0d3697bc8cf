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
- ``objectSelector``: a label selector on the object (:mod:`.selectors`); absent, every object.
  ``namespaceSelector`` (ClusterWatchRule rules of scope ``Namespaced`` only): a label selector
  on the object's namespace; absent, every namespace.
- ``skipControlled``: when true, an object with an owner reference marked ``controller: true``
  (what a Deployment, a CronJob or an operator made from something else) is not selected.
  Default false, so a rule written before the field means what it meant.

**Where selectors apply.** Watches stay one per type and scope, shared by every target, and
always unfiltered: selectors are applied when a target reads the journal (:meth:`CompiledRule.
selects_object`), never as a ``labelSelector`` of the watch. A server-side selector would break
two guarantees. An object whose labels stop matching arrives from a filtered watch as a
``DELETED`` event, and a re-list with a changed selector lacks every object that stopped
matching, so both would look like deletions and remove files of live objects (DESIGN
invariant 4). And the ``objects`` table would hold only what matched, so a target whose selector
widens could not be backfilled from the journal. It would also help only where every rule
wanting a watch carries one and the same selector (a union of selectors is no label selector),
which is rare once a second target shares the type. The cost is that a watch journals every
object of its type and scope, selected or not; the figures are in ``bench/README.md``.

An object that stops matching is treated as one that left a rule's scope: its events are no
longer taken, and its file stays as it was (no deletion without evidence). One that starts
matching (its labels, its namespace's labels, or a widened selector) is written: by its next
event, or by a backfill snapshot, since a selector is part of the selection key.
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reverserd.config.selectors import LabelSelector, SelectorError, labels_of, parse_selector
from reverserd.kube.resources import ResourceType
from reverserd.manifest.layout import DEFAULT_EXCLUDED_RESOURCES

OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE"})
WILDCARD = "*"
# The CRD schema's bounds on a rule's lists, checked again for objects stored before them.
MAX_RULE_ITEMS = 100
MAX_RULE_STRING_CHARS = 253
# Hex characters naming a selector, or the set of namespaces a namespaceSelector matches, in a
# selection key: enough that two never share one by chance, short enough that a key stays a few
# hundred bytes however long the selectors are (a selector at the CRD's bounds is ~130 KB of text).
SELECTION_HASH_CHARS = 16

# Each namespace's labels, by name: what a ``namespaceSelector`` is matched against.
Namespaces = Mapping[str, Mapping[str, Any]]


def short_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:SELECTION_HASH_CHARS]


def matched_namespaces_digest(selector: LabelSelector, namespaces: Namespaces) -> str:
    """Names the set of namespaces ``selector`` matches: it changes when one starts or stops
    matching, and only then."""
    matched = sorted(name for name, labels in namespaces.items() if selector.matches(labels))
    return short_digest("\n".join(matched))


class RevisedNamespaces(Namespaces):
    """Live namespace labels with a revision that changes whenever any of them may have.

    Target consumers build their selection keys on every pass, idle ones too; matching every
    namespace against every ``namespaceSelector`` each time would cost the whole namespace list
    per rule per pass. The digest of what a selector matches is kept until the revision moves.
    """

    def __init__(self) -> None:
        self._digests: dict[LabelSelector, str] = {}
        self._digests_revision = -1

    @property
    @abstractmethod
    def revision(self) -> int:
        """Changes (never repeats) whenever a namespace is added, changed or deleted."""

    def matched_digest(self, selector: LabelSelector) -> str:
        if self._digests_revision != self.revision:
            # Selectors of rules since deleted go with the stale digests.
            self._digests.clear()
            self._digests_revision = self.revision
        digest = self._digests.get(selector)
        if digest is None:
            digest = self._digests[selector] = matched_namespaces_digest(selector, self)
        return digest


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
    object_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    skip_controlled: bool = False
    # The scope text besides the matched namespaces, computed once: selectors go in by digest.
    _scope: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = [self.namespace or "*", ",".join(sorted(self.operations))]
        if self.object_selector is not None:
            parts.append(f"objects={short_digest(self.object_selector.text())}")
        if self.skip_controlled:
            parts.append("skipControlled")
        if self.namespace_selector is not None:
            parts.append(f"namespaces={short_digest(self.namespace_selector.text())}")
        object.__setattr__(self, "_scope", ":".join(parts))

    def selects_object(
        self,
        body: Mapping[str, Any] | None,
        namespaces: Namespaces,
    ) -> bool:
        """Whether the rule's selectors and ``skipControlled`` take the object ``body``.

        ``namespaces`` holds each namespace's current labels; a namespace not in it is matched
        by no ``namespaceSelector``.
        """
        if self.object_selector is not None and not self.object_selector.matches(labels_of(body)):
            return False
        if self.skip_controlled and is_controlled(body):
            return False
        if self.namespace_selector is not None:
            namespace = str(((body or {}).get("metadata") or {}).get("namespace") or "")
            labels = namespaces.get(namespace)
            return labels is not None and self.namespace_selector.matches(labels)
        return True

    def scope_text(self, namespaces: Namespaces) -> str:
        """What besides types this rule selects, for a target's selection key: a change of it
        (including which namespaces a ``namespaceSelector`` matches now) must give the target
        a fresh snapshot, which writes the objects that started matching."""
        selector = self.namespace_selector
        if selector is None:
            return self._scope
        if isinstance(namespaces, RevisedNamespaces):
            matched = namespaces.matched_digest(selector)
        else:
            matched = matched_namespaces_digest(selector, namespaces)
        return f"{self._scope}@{matched}"

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


def is_controlled(body: Mapping[str, Any] | None) -> bool:
    """Whether the object names a controller owner: another object it is derived from."""
    references = ((body or {}).get("metadata") or {}).get("ownerReferences")
    return isinstance(references, list) and any(
        isinstance(reference, Mapping) and reference.get("controller") is True
        for reference in references
    )


def _strings(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RuleError(f"{field} must be a list of strings")
    if len(value) > MAX_RULE_ITEMS or any(len(item) > MAX_RULE_STRING_CHARS for item in value):
        raise RuleError(
            f"{field} holds more than {MAX_RULE_ITEMS} entries or one longer than"
            f" {MAX_RULE_STRING_CHARS} characters"
        )
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
    skip_controlled = raw.get("skipControlled", False)
    if not isinstance(skip_controlled, bool):
        raise RuleError("skipControlled must be true or false")
    try:
        object_selector = parse_selector(raw.get("objectSelector"), "objectSelector")
        namespace_selector = parse_selector(raw.get("namespaceSelector"), "namespaceSelector")
    except SelectorError as error:
        raise RuleError(str(error)) from None
    if namespace_selector is not None and cluster_scope != "Namespaced":
        raise RuleError(
            "namespaceSelector is only for ClusterWatchRule rules of scope Namespaced"
            " (a WatchRule reads its own namespace; cluster-scoped objects have none)"
        )
    return CompiledRule(
        operations=frozenset(
            OPERATIONS if not operations or WILDCARD in operations else operations
        ),
        groups=None if WILDCARD in groups else frozenset(groups),
        versions=None if not versions or WILDCARD in versions else frozenset(versions),
        resources=None if WILDCARD in resources else frozenset(resources),
        namespace=namespace,
        cluster_scoped=cluster_scope == "Cluster",
        object_selector=object_selector,
        namespace_selector=namespace_selector,
        skip_controlled=skip_controlled,
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
