"""Kubernetes label selectors (``matchLabels`` + ``matchExpressions``), parsed and matched.

A rule's ``objectSelector`` (the spelling of the later gitops-reverser) and a ClusterWatchRule
rule's ``namespaceSelector`` have the wire shape and the meaning of ``metav1.LabelSelector``:

- every ``matchLabels`` entry must be a label with exactly that value;
- ``In``: the label is set to one of ``values``; ``NotIn``: it is not set, or set to none of
  them; ``Exists``: it is set; ``DoesNotExist``: it is not set;
- all requirements are ANDed; an empty selector (``{}``) selects every object, and an absent one
  filters nothing.

Selectors are matched here, in the daemon, when a target reads journal events: never in the
watch. Why is written in :mod:`reverserd.config.rules`.

Everything a tenant writes is bounded (the same bounds as the CRD schema) and checked for
Kubernetes' label syntax, so a hostile selector can neither be slow to match nor carry control
characters into a status message or a journal row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from reverserd.kube.paths import DNS_SUBDOMAIN_MAX

# The CRD schema's bounds: far more than any real selector, small enough that matching one
# object costs microseconds.
MAX_MATCH_LABELS: Final = 64
MAX_EXPRESSIONS: Final = 32
MAX_VALUES: Final = 64
# A label key is an optional DNS subdomain prefix (253) and "/" and a name (63).
MAX_KEY_CHARS: Final = 317
MAX_VALUE_CHARS: Final = 63
OPERATORS: Final = ("In", "NotIn", "Exists", "DoesNotExist")

_NAME: Final = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_KEY: Final = re.compile(
    rf"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_NAME}"
)
_VALUE: Final = re.compile(rf"({_NAME})?")


class SelectorError(ValueError):
    """A selector that cannot be used; the message names the field and what is wrong."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels

    def text(self) -> str:
        values = ",".join(sorted(self.values))
        return {
            "In": f"{self.key} in ({values})",
            "NotIn": f"{self.key} notin ({values})",
            "Exists": self.key,
            "DoesNotExist": f"!{self.key}",
        }[self.operator]


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A parsed selector; equal selectors compare equal whatever order they were written in."""

    requirements: frozenset[Requirement]

    def matches(self, labels: Mapping[str, Any] | None) -> bool:
        present = {
            str(key): str(value) for key, value in (labels or {}).items() if isinstance(key, str)
        }
        return all(requirement.matches(present) for requirement in self.requirements)

    def text(self) -> str:
        """The selector in kubectl's ``-l`` syntax, requirements sorted: one text per meaning."""
        return ",".join(sorted(requirement.text() for requirement in self.requirements))


def labels_of(body: Mapping[str, Any] | None) -> Mapping[str, Any]:
    metadata = (body or {}).get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
    return labels if isinstance(labels, Mapping) else {}


def parse_selector(raw: Any, field: str) -> LabelSelector | None:
    """``raw`` (a ``metav1.LabelSelector``) parsed, None when absent; raises
    :class:`SelectorError` for one the API server would refuse as a label selector."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SelectorError(f"{field} must be an object")
    unknown = set(raw) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise SelectorError(f"{field} has unknown fields {sorted(map(str, unknown))[:4]}")
    requirements: set[Requirement] = set()
    match_labels = raw.get("matchLabels") or {}
    if not isinstance(match_labels, Mapping) or len(match_labels) > MAX_MATCH_LABELS:
        raise SelectorError(f"{field}.matchLabels must be a map of at most {MAX_MATCH_LABELS}")
    for key, value in match_labels.items():
        _check_key(key, f"{field}.matchLabels")
        _check_value(value, f"{field}.matchLabels[{key}]")
        requirements.add(Requirement(key, "In", frozenset({value})))
    expressions = raw.get("matchExpressions") or []
    if not isinstance(expressions, list) or len(expressions) > MAX_EXPRESSIONS:
        raise SelectorError(f"{field}.matchExpressions must be a list of at most {MAX_EXPRESSIONS}")
    for index, expression in enumerate(expressions):
        requirements.add(_requirement(expression, f"{field}.matchExpressions[{index}]"))
    return LabelSelector(frozenset(requirements))


def _requirement(raw: Any, field: str) -> Requirement:
    if not isinstance(raw, Mapping):
        raise SelectorError(f"{field} must be an object")
    key, operator, values = raw.get("key"), raw.get("operator"), raw.get("values") or []
    _check_key(key, field)
    if operator not in OPERATORS:
        raise SelectorError(f"{field}.operator must be one of {', '.join(OPERATORS)}")
    if not isinstance(values, list) or len(values) > MAX_VALUES:
        raise SelectorError(f"{field}.values must be a list of at most {MAX_VALUES}")
    for value in values:
        _check_value(value, f"{field}.values")
    if (operator in ("In", "NotIn")) != bool(values):
        raise SelectorError(
            f"{field}: values must be non-empty for In and NotIn, and empty for Exists and"
            " DoesNotExist"
        )
    assert isinstance(key, str) and isinstance(operator, str)
    return Requirement(key, operator, frozenset(values))


def _check_key(key: Any, field: str) -> None:
    if not isinstance(key, str) or len(key) > MAX_KEY_CHARS or not _KEY.fullmatch(key):
        raise SelectorError(f"{field}: {str(key)[:80]!r} is not a label key")
    prefix, _, name = key.rpartition("/")
    if len(prefix) > DNS_SUBDOMAIN_MAX or len(name) > MAX_VALUE_CHARS:
        raise SelectorError(f"{field}: label key {key[:80]!r} is too long")


def _check_value(value: Any, field: str) -> None:
    if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS or not _VALUE.fullmatch(value):
        raise SelectorError(f"{field}: {str(value)[:80]!r} is not a label value")
