"""reverserd's own resources, parsed and validated into plain records.

The CRD schema rejects most malformed objects at admission; what it cannot express (ref-name
rules, glob matching, path safety, references between objects, conflicts between targets) is
checked here and reported as a status condition with a reason and a message a human can act on.
Nothing is silently rewritten.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pygit2

from reverserd.config.rules import CompiledRule, RuleError, compile_rules
from reverserd.manifest.layout import validate_target_path

GROUP = "configbutler.ai"
VERSION = "v1alpha1"
# SPEC 2.1 defaults.
DEFAULT_PUSH_INTERVAL_S = 5.0
DEFAULT_PUSH_MAX_COMMITS = 20
# The explicit opt-out of SSH host-key verification (SPEC 2.1): never the default.
INSECURE_HOST_KEY_ANNOTATION = "configbutler.ai/insecure-skip-host-key-verification"

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


class ConfigError(ValueError):
    """Invalid configuration: ``reason`` is the condition reason, the message says what to do."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def parse_duration(text: str) -> float:
    """A Go duration (``5s``, ``1m30s``, ``500ms``, ``0``) in seconds."""
    if text == "0":
        return 0.0
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise ConfigError("InvalidSpec", f"push.interval {text!r} is not a duration like 5s or 1m")
    return total


def branch_glob(pattern: str) -> re.Pattern[str]:
    """``*`` matches within one path segment (it does not cross ``/``), ``?`` one character."""
    parts = []
    for char in pattern:
        if char == "*":
            parts.append("[^/]*")
        elif char == "?":
            parts.append("[^/]")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts) + r"\Z")


def _meta(body: Mapping[str, Any]) -> tuple[str, str, int]:
    metadata = body.get("metadata") or {}
    return (
        str(metadata.get("namespace", "")),
        str(metadata.get("name", "")),
        int(metadata.get("generation", 0)),
    )


@dataclass(frozen=True)
class Provider:
    namespace: str
    name: str
    generation: int
    url: str
    allowed_branches: tuple[str, ...]
    secret_name: str | None
    push_interval_s: float
    push_max_commits: int
    insecure_skip_host_key: bool

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def allows(self, branch: str) -> bool:
        return any(branch_glob(pattern).match(branch) for pattern in self.allowed_branches)


def parse_provider(body: Mapping[str, Any]) -> Provider:
    namespace, name, generation = _meta(body)
    spec = body.get("spec") or {}
    push = spec.get("push") or {}
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    url = str(spec.get("url") or "")
    if not url:
        raise ConfigError("InvalidSpec", "spec.url is required")
    max_commits = int(push.get("maxCommits", DEFAULT_PUSH_MAX_COMMITS))
    if max_commits < 1:
        raise ConfigError("InvalidSpec", "spec.push.maxCommits must be at least 1")
    return Provider(
        namespace=namespace,
        name=name,
        generation=generation,
        url=url,
        allowed_branches=tuple(spec.get("allowedBranches") or ()),
        secret_name=(spec.get("secretRef") or {}).get("name"),
        push_interval_s=parse_duration(str(push.get("interval", "5s"))),
        push_max_commits=max_commits,
        insecure_skip_host_key=str(annotations.get(INSECURE_HOST_KEY_ANNOTATION, "")).lower()
        == "true",
    )


@dataclass(frozen=True)
class Target:
    namespace: str
    name: str
    generation: int
    created: str
    provider_name: str
    branch: str
    path: str
    encryption: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_target(body: Mapping[str, Any]) -> Target:
    """Parse a GitTarget; raises :class:`ConfigError` for what makes it unusable on its own."""
    namespace, name, generation = _meta(body)
    spec = body.get("spec") or {}
    provider_ref = spec.get("providerRef") or {}
    branch = str(spec.get("branch") or "")
    path = str(spec.get("path") or "")
    target = Target(
        namespace=namespace,
        name=name,
        generation=generation,
        created=str((body.get("metadata") or {}).get("creationTimestamp", "")),
        provider_name=str(provider_ref.get("name") or ""),
        branch=branch,
        path=path,
        encryption=_enabled_encryption(spec.get("encryption") or {}),
    )
    if not target.provider_name:
        raise ConfigError("InvalidSpec", "spec.providerRef.name is required")
    if not branch or not pygit2.reference_is_valid_name(f"refs/heads/{branch}"):
        raise ConfigError("InvalidBranch", f"spec.branch {branch!r} is not a valid branch name")
    problem = validate_target_path(path)
    if problem is not None:
        raise ConfigError("InvalidPath", f"spec.path {path!r}: {problem}")
    return target


def _enabled_encryption(encryption: Mapping[str, Any]) -> Mapping[str, Any]:
    """``spec.encryption`` when it asks for age, else ``{}`` (no encryption, Secrets not written).

    gitops-reverser's CRD defaults ``age.enabled`` to false and wrote no Secret without it; a
    GitTarget carried over unchanged must not start publishing its Secrets.
    """
    age = encryption.get("age")
    return encryption if isinstance(age, Mapping) and age.get("enabled") is True else {}


@dataclass(frozen=True)
class WatchRuleSpec:
    """A WatchRule or ClusterWatchRule with its compiled rules."""

    kind: str
    namespace: str  # '' for ClusterWatchRule
    name: str
    generation: int
    target_namespace: str
    target_name: str
    rules: tuple[CompiledRule, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def target_key(self) -> str:
        return f"{self.target_namespace}/{self.target_name}"


def parse_watch_rule(body: Mapping[str, Any], cluster: bool) -> WatchRuleSpec:
    namespace, name, generation = _meta(body)
    spec = body.get("spec") or {}
    target_ref = spec.get("targetRef") or {}
    target_namespace = str(target_ref.get("namespace") or "") if cluster else namespace
    target_name = str(target_ref.get("name") or "")
    if not target_name or not target_namespace:
        raise ConfigError("InvalidSpec", "spec.targetRef must name a GitTarget")
    try:
        rules = compile_rules(spec.get("rules") or [], None if cluster else namespace, cluster)
    except RuleError as error:
        raise ConfigError("InvalidSpec", str(error)) from error
    return WatchRuleSpec(
        kind="ClusterWatchRule" if cluster else "WatchRule",
        namespace="" if cluster else namespace,
        name=name,
        generation=generation,
        target_namespace=target_namespace,
        target_name=target_name,
        rules=tuple(rules),
    )


def paths_overlap(first: str, second: str) -> bool:
    """Whether two target folders are the same or one contains the other."""
    if first == "" or second == "":
        return True
    a, b = first.strip("/").split("/"), second.strip("/").split("/")
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]
