"""reverserd's own resources, parsed and validated into plain records.

The CRD schema rejects most malformed objects at admission; what it cannot express (ref-name
rules, glob matching, path safety, references between objects, conflicts between targets) is
checked here and reported as a status condition with a reason and a message a human can act on.
Nothing is silently rewritten.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pygit2

from reverserd.config.rules import CompiledRule, RuleError, compile_rules
from reverserd.config.templates import (
    EVENT_FIELDS,
    MAX_TEMPLATE_CHARS,
    RECONCILE_FIELDS,
    MessageTemplate,
    TemplateError,
    parse_template,
)
from reverserd.git.urls import UnsupportedUrl, is_internal_host, local_path, normalize_url
from reverserd.kube.paths import DNS_SUBDOMAIN_MAX, InvalidName, check_name, is_dns_label
from reverserd.manifest.dropped import FieldPath, FieldPathError, parse_field_paths
from reverserd.manifest.layout import validate_target_path
from reverserd.redaction import mask_url

GROUP = "configbutler.ai"
# The operator's opt-in for local, plain-http and loopback remotes, named in refusals.
ALLOW_LOCAL_FLAG = "--allow-local-remotes (REVERSERD_ALLOW_LOCAL_REMOTES=true)"
VERSION = "v1alpha1"
# SPEC 2.1 defaults.
DEFAULT_PUSH_INTERVAL_S = 5.0
DEFAULT_PUSH_MAX_COMMITS = 20
# The explicit opt-out of SSH host-key verification (SPEC 2.1): never the default.
INSECURE_HOST_KEY_ANNOTATION = "configbutler.ai/insecure-skip-host-key-verification"
# Ask for a drift check and status refresh now (the spelling gitops-reverser uses), or the
# Flux spelling operators already script against; the first one set wins.
RECONCILE_ANNOTATIONS = ("reconcile.configbutler.ai/requestedAt", "reconcile.fluxcd.io/requestedAt")
# The longest reconcile request value kept: a timestamp, with room for whatever a script writes.
MAX_RECONCILE_REQUEST_CHARS: Final = 256
# What a target does about files of live objects that someone else changed in its folder.
DRIFT_MODES = ("off", "warn", "repair")
# Warn by default: an existing GitTarget gets the report and no commit it did not get before;
# writing over a person's edit is a choice its owner makes (spec.drift.mode: repair).
DEFAULT_DRIFT_MODE = "warn"

# Bounds on what a custom resource may hold, the same as the CRD schema's (packaging/crds), so
# an object stored before the schema had them is refused here as well.
# Longer than any real clone URL, short enough that a status message can quote it.
MAX_URL_CHARS: Final = 2048
# Git has no limit on ref names, but a file system holds at most 255 bytes per name segment.
MAX_BRANCH_CHARS: Final = 255
MAX_BRANCH_PATTERN_CHARS: Final = 255
MAX_TARGET_PATH_CHARS: Final = 1024
MAX_DURATION_CHARS: Final = 32
# A committer name or e-mail: longer than any real one, short enough for a commit header.
MAX_IDENTITY_CHARS: Final = 256
# A field manager is a client's user agent or --field-manager: 128 is the API server's limit.
MAX_MANAGER_CHARS: Final = 128
# A Kubernetes user name (a service account's is system:serviceaccount:<ns>:<name>, at most
# 6 + 14 + 63 + 253 characters; OIDC names are e-mail addresses or URLs).
MAX_USER_CHARS: Final = 512
# Lists (allowedBranches, rules and each rule's fields): far more than any real configuration.
MAX_LIST_ITEMS: Final = 100
# More waiting commits than this are pushed anyway (one push carries at most a few hundred).
MAX_PUSH_MAX_COMMITS: Final = 10_000
# Control characters (C0, DEL, C1): never part of a URL, a branch or a folder name.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")

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


@dataclass(frozen=True)
class _CharClass:
    negated: bool
    ranges: tuple[tuple[str, str], ...]

    def matches(self, char: str) -> bool:
        return any(low <= char <= high for low, high in self.ranges) != self.negated


# One step of a compiled glob: ANY_CHAR (``?``), ANY_RUN (``*``), a literal character (a
# 1-tuple, so it never equals the two markers) or a class.
_ANY_CHAR: Final = "?"
_ANY_RUN: Final = "*"
_GlobToken = str | tuple[str] | _CharClass


@dataclass(frozen=True)
class BranchGlob:
    """A compiled ``allowedBranches`` pattern, matched in time linear in the branch name.

    The syntax is Go's ``path.Match``, which gitops-reverser used: ``*`` is any run of
    characters other than ``/``, ``?`` one character other than ``/``, ``[abc]``, ``[a-z]`` and
    ``[^a-z]`` a class, ``\\`` escapes the next character. Matching simulates all positions of the
    pattern at once (a set of states advanced per character), never backtracking, so no pattern
    can make a match slow: the cost is at most pattern length times branch length.
    """

    pattern: str
    tokens: tuple[_GlobToken, ...]

    def matches(self, text: str) -> bool:
        states = self._closure({0})
        for char in text:
            following: set[int] = set()
            for index in states:
                if index == len(self.tokens):
                    continue
                token = self.tokens[index]
                if token == _ANY_RUN:
                    if char != "/":
                        following.add(index)
                elif _step(token, char):
                    following.add(index + 1)
            if not following:
                return False
            states = self._closure(following)
        return len(self.tokens) in states

    def _closure(self, states: set[int]) -> set[int]:
        """``states`` plus every state reached by letting a ``*`` match nothing."""
        result = set(states)
        pending = list(states)
        while pending:
            index = pending.pop()
            if index < len(self.tokens) and self.tokens[index] == _ANY_RUN:
                if index + 1 not in result:
                    result.add(index + 1)
                    pending.append(index + 1)
        return result


def _step(token: _GlobToken, char: str) -> bool:
    if isinstance(token, _CharClass):
        return token.matches(char)
    if isinstance(token, tuple):  # an escaped or plain literal
        return token[0] == char
    return char != "/"  # _ANY_CHAR


def branch_glob(pattern: str) -> BranchGlob:
    """Compile an ``allowedBranches`` pattern; raises :class:`ConfigError` when it is malformed."""
    if len(pattern) > MAX_BRANCH_PATTERN_CHARS:
        raise ConfigError(
            "InvalidSpec",
            f"allowedBranches pattern is longer than {MAX_BRANCH_PATTERN_CHARS} characters",
        )
    tokens: list[_GlobToken] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "*":
            if not tokens or tokens[-1] != _ANY_RUN:  # ``**`` is the same as ``*``
                tokens.append(_ANY_RUN)
            index += 1
        elif char == "?":
            tokens.append(_ANY_CHAR)
            index += 1
        elif char == "[":
            char_class, index = _parse_class(pattern, index + 1)
            tokens.append(char_class)
        elif char == "\\":
            if index + 1 == len(pattern):
                raise _bad_pattern(pattern, "ends with an escaping backslash")
            tokens.append((pattern[index + 1],))
            index += 2
        else:
            tokens.append((char,))
            index += 1
    return BranchGlob(pattern, tuple(tokens))


def _parse_class(pattern: str, index: int) -> tuple[_CharClass, int]:
    """The class starting after ``[`` at ``index``, and the index after its ``]``."""
    negated = index < len(pattern) and pattern[index] == "^"
    if negated:
        index += 1
    ranges: list[tuple[str, str]] = []
    while True:
        if index >= len(pattern):
            raise _bad_pattern(pattern, "has a '[' without its ']'")
        if pattern[index] == "]" and ranges:
            return _CharClass(negated, tuple(ranges)), index + 1
        low, index = _class_char(pattern, index)
        high = low
        if index < len(pattern) and pattern[index] == "-":
            high, index = _class_char(pattern, index + 1)
            if high < low:
                raise _bad_pattern(pattern, f"has the backwards range {low}-{high}")
        ranges.append((low, high))


def _class_char(pattern: str, index: int) -> tuple[str, int]:
    if index >= len(pattern) or pattern[index] in "-]":
        raise _bad_pattern(pattern, "has an empty or malformed '[...]' class")
    if pattern[index] == "\\":
        if index + 1 >= len(pattern):
            raise _bad_pattern(pattern, "ends with an escaping backslash")
        return pattern[index + 1], index + 2
    return pattern[index], index + 1


def _bad_pattern(pattern: str, problem: str) -> ConfigError:
    return ConfigError("InvalidSpec", f"allowedBranches pattern {pattern[:80]!r} {problem}")


def _meta(body: Mapping[str, Any]) -> tuple[str, str, int]:
    metadata = body.get("metadata") or {}
    return (
        str(metadata.get("namespace", "")),
        str(metadata.get("name", "")),
        int(metadata.get("generation", 0)),
    )


def _mapping(value: Any, field_name: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError("InvalidSpec", f"{field_name} must be an object")
    return value


def _text(value: Any, field_name: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError("InvalidSpec", f"{field_name} must be a string")
    if len(value) > limit:
        raise ConfigError("InvalidSpec", f"{field_name} is longer than {limit} characters")
    if _CONTROL.search(value):
        raise ConfigError("InvalidSpec", f"{field_name} contains a control character")
    return value


def _ref_name(value: Any, field_name: str) -> str:
    """A ``*.name`` reference that goes into an API path: a Kubernetes name or nothing."""
    name = _text(value, field_name, DNS_SUBDOMAIN_MAX)
    if name:
        try:
            check_name(name, field_name)
        except InvalidName as error:
            raise ConfigError("InvalidSpec", str(error)) from None
    return name


@dataclass(frozen=True)
class UrlPolicy:
    """What remote URLs this daemon accepts: set by the operator's flags, never by a tenant.

    Local repositories (``file://`` and plain paths), plain ``http://`` and loopback or
    link-local hosts are off unless ``allow_local`` (``--allow-local-remotes``: tests, demos,
    a Git server beside the daemon); even then nothing inside ``state_dir`` (the journal and
    every target's clone) can be a remote.
    """

    allow_local: bool = False
    state_dir: Path | None = None


@dataclass(frozen=True)
class CommitSigning:
    """``spec.commit.signing``: the Secret (in the provider's namespace) holding the key."""

    secret_name: str
    generate_when_missing: bool


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
    signing: CommitSigning | None = None
    committer: tuple[str, str] | None = None
    """``spec.commit.committer`` (name, e-mail); None: the daemon's configured identity."""
    event_template: MessageTemplate | None = None
    reconcile_template: MessageTemplate | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def repository(self) -> str:
        """The repository in its normal form, for every same-repository comparison."""
        return normalize_url(self.url)

    @property
    def display_url(self) -> str:
        return mask_url(self.url)

    @property
    def writer(self) -> tuple[object, ...]:
        """What a shared writer takes from its provider: only equal ones may share it."""
        return (
            self.namespace,
            self.secret_name,
            self.push_interval_s,
            self.push_max_commits,
            self.insecure_skip_host_key,
            self.signing,
            self.committer,
        )

    def allows(self, branch: str) -> bool:
        return any(branch_glob(pattern).matches(branch) for pattern in self.allowed_branches)


def check_url(url: str, policy: UrlPolicy) -> None:
    """Raise :class:`ConfigError` unless ``url`` is a remote this daemon may push to."""
    try:
        normalize_url(url)
        path = local_path(url)
    except UnsupportedUrl as error:
        raise ConfigError(
            "InvalidURL",
            f"spec.url {mask_url(url)!r}: {error}; use https://, http://, ssh:// or git@host:path",
        ) from None
    if path is None:
        _check_network_url(url, policy)
        return
    if not policy.allow_local:
        raise ConfigError(
            "LocalRemoteNotAllowed",
            f"spec.url {mask_url(url)!r} is a local repository; this reverserd accepts only network"
            f" remotes (https, ssh), unless its operator starts it with {ALLOW_LOCAL_FLAG}",
        )
    if not path.is_absolute():
        raise ConfigError(
            "InvalidURL", f"spec.url {mask_url(url)!r}: a local path must be absolute"
        )
    if policy.state_dir is not None:
        resolved = Path(os.path.realpath(path))
        state = Path(os.path.realpath(policy.state_dir))
        if resolved == state or state in resolved.parents or resolved in state.parents:
            raise ConfigError(
                "LocalRemoteNotAllowed",
                f"spec.url {mask_url(url)!r} points into reverserd's own state directory",
            )


def _check_network_url(url: str, policy: UrlPolicy) -> None:
    """Plain ``http://`` and hosts of the daemon's own machine or link are the operator's
    to allow: a tenant could otherwise reach services only the pod can (a cloud metadata
    endpoint, a sidecar on loopback), read their reachability in conditions, or send
    credentials in the clear."""
    if policy.allow_local:
        return
    parts = urlsplit(normalize_url(url))
    if parts.scheme == "http":
        raise ConfigError(
            "InsecureRemoteNotAllowed",
            f"spec.url {mask_url(url)!r} is plain http: credentials and content would cross the"
            f" network unencrypted; use https:// or ssh://, unless the operator starts reverserd"
            f" with {ALLOW_LOCAL_FLAG}",
        )
    if is_internal_host(parts.hostname or ""):
        raise ConfigError(
            "LocalRemoteNotAllowed",
            f"spec.url {mask_url(url)!r} names a loopback or link-local host; this reverserd"
            f" accepts only remotes on other machines, unless its operator starts it with"
            f" {ALLOW_LOCAL_FLAG}",
        )


def parse_provider(body: Mapping[str, Any], policy: UrlPolicy | None = None) -> Provider:
    namespace, name, generation = _meta(body)
    spec = _mapping(body.get("spec"), "spec")
    push = _mapping(spec.get("push"), "spec.push")
    commit = _mapping(spec.get("commit"), "spec.commit")
    annotations = _mapping((body.get("metadata") or {}).get("annotations"), "annotations")
    url = _text(spec.get("url"), "spec.url", MAX_URL_CHARS)
    if not url:
        raise ConfigError("InvalidSpec", "spec.url is required")
    check_url(url, policy or UrlPolicy())
    patterns = spec.get("allowedBranches") or []
    if not isinstance(patterns, list) or len(patterns) > MAX_LIST_ITEMS:
        raise ConfigError(
            "InvalidSpec", f"spec.allowedBranches must be a list of at most {MAX_LIST_ITEMS}"
        )
    for pattern in patterns:
        branch_glob(_text(pattern, "spec.allowedBranches[]", MAX_BRANCH_PATTERN_CHARS))
    max_commits = push.get("maxCommits", DEFAULT_PUSH_MAX_COMMITS)
    if not isinstance(max_commits, int) or not 1 <= max_commits <= MAX_PUSH_MAX_COMMITS:
        raise ConfigError(
            "InvalidSpec", f"spec.push.maxCommits must be from 1 to {MAX_PUSH_MAX_COMMITS}"
        )
    interval = _text(push.get("interval", "5s"), "spec.push.interval", MAX_DURATION_CHARS)
    return Provider(
        namespace=namespace,
        name=name,
        generation=generation,
        url=url,
        allowed_branches=tuple(patterns),
        secret_name=_ref_name(
            _mapping(spec.get("secretRef"), "spec.secretRef").get("name"), "spec.secretRef.name"
        )
        or None,
        push_interval_s=parse_duration(interval),
        push_max_commits=max_commits,
        insecure_skip_host_key=str(annotations.get(INSECURE_HOST_KEY_ANNOTATION, "")).lower()
        == "true",
        signing=_commit_signing(commit),
        committer=_committer(commit),
        event_template=_template(commit, "eventTemplate", EVENT_FIELDS),
        reconcile_template=_template(commit, "reconcileTemplate", RECONCILE_FIELDS),
    )


def _template(
    commit: Mapping[str, Any], name: str, fields: tuple[str, ...]
) -> MessageTemplate | None:
    """``spec.commit.message.<name>``; ``groupTemplate`` is read only for its bounds (one
    commit per change leaves nothing to group)."""
    message = _mapping(commit.get("message"), "spec.commit.message")
    _text(message.get("groupTemplate"), "spec.commit.message.groupTemplate", MAX_TEMPLATE_CHARS)
    source = _text(message.get(name), f"spec.commit.message.{name}", MAX_TEMPLATE_CHARS)
    if not source:
        return None
    try:
        return parse_template(source, fields)
    except TemplateError as error:
        raise ConfigError("UnsupportedTemplate", f"spec.commit.message.{name}: {error}") from None


def _commit_signing(commit: Mapping[str, Any]) -> CommitSigning | None:
    signing = _mapping(commit.get("signing"), "spec.commit.signing")
    if not signing:
        return None
    secret_ref = _mapping(signing.get("secretRef"), "spec.commit.signing.secretRef")
    name = _ref_name(secret_ref.get("name"), "spec.commit.signing.secretRef.name")
    if not name:
        raise ConfigError("InvalidSpec", "spec.commit.signing.secretRef.name is required")
    generate = signing.get("generateWhenMissing", False)
    if not isinstance(generate, bool):
        raise ConfigError(
            "InvalidSpec", "spec.commit.signing.generateWhenMissing must be a boolean"
        )
    return CommitSigning(name, generate)


def _committer(commit: Mapping[str, Any]) -> tuple[str, str] | None:
    """(name, e-mail); a part left out is ``""`` and means the daemon's configured one."""
    committer = _mapping(commit.get("committer"), "spec.commit.committer")
    if not committer:
        return None
    name = _text(committer.get("name"), "spec.commit.committer.name", MAX_IDENTITY_CHARS)
    email = _text(committer.get("email"), "spec.commit.committer.email", MAX_IDENTITY_CHARS)
    for value, field_name in ((name, "name"), (email, "email")):
        # Git cannot hold these in a signature line: the commit would be malformed.
        if set("<>") & set(value):
            raise ConfigError(
                "InvalidSpec", f"spec.commit.committer.{field_name} must not contain < or >"
            )
    return name.strip(), email.strip()


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
    drop_fields: tuple[FieldPath, ...] = ()
    exclude_field_managers: frozenset[str] = frozenset()
    kustomization: bool = False
    exclude_users: frozenset[str] = frozenset()
    suspend: bool = False
    # Read by the running consumer; a change of either restarts nothing (not compared).
    drift_mode: str = field(default=DEFAULT_DRIFT_MODE, compare=False)
    reconcile_requested: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def normalize_target_path(path: str) -> str:
    """``path`` as gitops-reverser used it: no leading ``/`` or ``./``, no ``//`` or trailing ``/``.

    Only spellings of the same folder are rewritten (``team/``, ``./team``, ``/team``,
    ``a//b`` and ``a/./b``); anything that names another place (``..``) is left for
    :func:`validate_target_path` to refuse.
    """
    return "/".join(segment for segment in path.split("/") if segment not in ("", "."))


def parse_target(body: Mapping[str, Any]) -> Target:
    """Parse a GitTarget; raises :class:`ConfigError` for what makes it unusable on its own."""
    namespace, name, generation = _meta(body)
    spec = _mapping(body.get("spec"), "spec")
    provider_ref = _mapping(spec.get("providerRef"), "spec.providerRef")
    branch = _text(spec.get("branch"), "spec.branch", MAX_BRANCH_CHARS)
    raw_path = spec.get("path")
    if isinstance(raw_path, str) and _CONTROL.search(raw_path):
        raise ConfigError(
            "InvalidPath",
            f"spec.path {raw_path[:MAX_TARGET_PATH_CHARS]!r} contains a control character",
        )
    path = normalize_target_path(_text(raw_path, "spec.path", MAX_TARGET_PATH_CHARS))
    encryption = _mapping(spec.get("encryption"), "spec.encryption")
    _ref_name(
        _mapping(encryption.get("secretRef"), "spec.encryption.secretRef").get("name"),
        "spec.encryption.secretRef.name",
    )
    suspend = spec.get("suspend", False)
    if not isinstance(suspend, bool):
        raise ConfigError("InvalidSpec", "spec.suspend must be true or false")
    drift_mode = _mapping(spec.get("drift"), "spec.drift").get("mode", DEFAULT_DRIFT_MODE)
    if drift_mode not in DRIFT_MODES:
        raise ConfigError("InvalidSpec", f"spec.drift.mode must be one of {', '.join(DRIFT_MODES)}")
    target = Target(
        namespace=namespace,
        name=name,
        generation=generation,
        created=str((body.get("metadata") or {}).get("creationTimestamp", "")),
        provider_name=_ref_name(provider_ref.get("name"), "spec.providerRef.name"),
        branch=branch,
        path=path,
        encryption=_enabled_encryption(encryption),
        drop_fields=_drop_fields(spec.get("dropFields")),
        kustomization=_flag(spec.get("kustomization"), "spec.kustomization"),
        exclude_users=frozenset(
            _strings(spec.get("excludeUsers"), "spec.excludeUsers", MAX_USER_CHARS)
        ),
        exclude_field_managers=frozenset(
            _strings(
                spec.get("excludeFieldManagers"), "spec.excludeFieldManagers", MAX_MANAGER_CHARS
            )
        ),
        suspend=suspend,
        drift_mode=drift_mode,
        reconcile_requested=reconcile_request(body),
    )
    if not target.provider_name:
        raise ConfigError("InvalidSpec", "spec.providerRef.name is required")
    kind = provider_ref.get("kind", "GitProvider")
    if kind != "GitProvider":
        raise ConfigError("InvalidSpec", "spec.providerRef.kind must be GitProvider")
    if not branch or not pygit2.reference_is_valid_name(f"refs/heads/{branch}"):
        raise ConfigError("InvalidBranch", f"spec.branch {branch!r} is not a valid branch name")
    problem = validate_target_path(path)
    if problem is not None:
        raise ConfigError("InvalidPath", f"spec.path {raw_path!r}: {problem}")
    return target


def _strings(value: Any, field_name: str, limit: int) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_LIST_ITEMS:
        raise ConfigError("InvalidSpec", f"{field_name} must be a list of at most {MAX_LIST_ITEMS}")
    return [_text(item, f"{field_name}[]", limit) for item in value]


def _flag(value: Any, field_name: str) -> bool:
    """An optional boolean: omitted is false, the meaning every field of this kind had before
    it existed."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError("InvalidSpec", f"{field_name} must be true or false")
    return value


def _drop_fields(raw: Any) -> tuple[FieldPath, ...]:
    """``spec.dropFields``: omitted, nothing beyond the sanitizer's list is dropped, as in
    gitops-reverser v0.17, which had no such field."""
    try:
        return parse_field_paths(raw)
    except FieldPathError as error:
        raise ConfigError("InvalidDropFields", f"spec.{error}") from None


def reconcile_request(body: Mapping[str, Any]) -> str:
    """The value of the object's reconcile request annotation ("" when it has none)."""
    annotations = _mapping((body.get("metadata") or {}).get("annotations"), "annotations")
    for name in RECONCILE_ANNOTATIONS:
        value = annotations.get(name)
        if isinstance(value, str) and value:
            return value[:MAX_RECONCILE_REQUEST_CHARS]
    return ""


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
    spec = _mapping(body.get("spec"), "spec")
    target_ref = _mapping(spec.get("targetRef"), "spec.targetRef")
    target_name = _ref_name(target_ref.get("name"), "spec.targetRef.name")
    if cluster:
        target_namespace = _text(target_ref.get("namespace"), "spec.targetRef.namespace", 63)
        if target_namespace and not is_dns_label(target_namespace):
            raise ConfigError(
                "InvalidSpec",
                f"spec.targetRef.namespace {target_namespace[:80]!r} is not a namespace name",
            )
    else:
        target_namespace = namespace
    if not target_name or not target_namespace:
        raise ConfigError("InvalidSpec", "spec.targetRef must name a GitTarget")
    rules = spec.get("rules") or []
    if not isinstance(rules, list) or len(rules) > MAX_LIST_ITEMS:
        raise ConfigError("InvalidSpec", f"spec.rules must be a list of at most {MAX_LIST_ITEMS}")
    try:
        compiled = compile_rules(rules, None if cluster else namespace, cluster)
    except RuleError as error:
        raise ConfigError("InvalidSpec", str(error)) from error
    return WatchRuleSpec(
        kind="ClusterWatchRule" if cluster else "WatchRule",
        namespace="" if cluster else namespace,
        name=name,
        generation=generation,
        target_namespace=target_namespace,
        target_name=target_name,
        rules=tuple(compiled),
    )


def paths_overlap(first: str, second: str) -> bool:
    """Whether two target folders are the same or one contains the other."""
    if first == "" or second == "":
        return True
    a, b = first.strip("/").split("/"), second.strip("/").split("/")
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]
