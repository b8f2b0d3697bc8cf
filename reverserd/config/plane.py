"""The config plane: reverserd's four custom resources, validated, resolved and given status.

It keeps an informer per kind (all namespaces), and after any change recomputes one consistent
:class:`ConfigState`: which rules exist (they decide what is watched, whether or not their target
is ready, so events wait in the journal), and which targets are usable with which rules. It then
writes status for every object whose computed status differs from what the API server holds;
a status that would not change is never written.

:meth:`ConfigPlane.wait_synced` returns once every kind has been listed completely, which is how
the daemon loads all rules, targets and providers before any data watch opens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import aiohttp

from reverserd.config.model import (
    GROUP,
    VERSION,
    ConfigError,
    Provider,
    Target,
    UrlPolicy,
    WatchRuleSpec,
    parse_provider,
    parse_target,
    parse_watch_rule,
    paths_overlap,
)
from reverserd.config.pins import RepositoryPins
from reverserd.config.rules import CompiledRule, RevisedNamespaces
from reverserd.config.selectors import labels_of
from reverserd.config.status import (
    Condition,
    ProviderHealth,
    StatusBoard,
    TargetProgress,
    ready_from,
    render_conditions,
    rfc3339,
)
from reverserd.git.urls import branch_key
from reverserd.kube.client import KubeClient, KubeError
from reverserd.kube.discovery import Discovery
from reverserd.kube.informer import Informer
from reverserd.kube.resources import ResourceType
from reverserd.metrics import STATUS_WRITES

log = logging.getLogger(__name__)
T = TypeVar("T")

PROVIDERS = ResourceType(GROUP, VERSION, "gitproviders", "GitProvider", True)
TARGETS = ResourceType(GROUP, VERSION, "gittargets", "GitTarget", True)
WATCH_RULES = ResourceType(GROUP, VERSION, "watchrules", "WatchRule", True)
CLUSTER_WATCH_RULES = ResourceType(GROUP, VERSION, "clusterwatchrules", "ClusterWatchRule", False)
KINDS = (PROVIDERS, TARGETS, WATCH_RULES, CLUSTER_WATCH_RULES)
NAMESPACES = ResourceType("", "v1", "namespaces", "Namespace", False)

# Changes arrive in bursts (kubectl apply -f of a folder); one recompute covers the burst.
DEBOUNCE_S = 0.2
# A failed status write is retried on the next pass at the latest after this long.
STATUS_RETRY_S = 5.0
# GitTargets one namespace may have served: each is a consumer with its own journal reads and
# snapshot; a hundred folders is far beyond what one team mirrors, and 5,000 targets over 50
# namespaces is what the daemon is measured with (bench/targets.py).
MAX_TARGETS_PER_NAMESPACE = 100


@dataclass(frozen=True)
class ResolvedTarget:
    """A GitTarget that passed validation, with its provider and every rule pointing at it."""

    target: Target
    provider: Provider
    rules: tuple[CompiledRule, ...]

    @property
    def key(self) -> str:
        return self.target.key

    @property
    def branch(self) -> str:
        """The repository branch it writes to: the unit a sharded replica holds or not."""
        return branch_key(self.provider.url, self.target.branch)


@dataclass(frozen=True)
class RefusedTarget:
    """A GitTarget refused for now (``Validated`` false) whose provider exists, so whose
    repository branch is known, with every rule pointing at it. Sharded, it belongs to that
    branch's bucket like a valid target: the holder watches its rules (its events wait in the
    journal that holds its cursor, DESIGN invariant 2) and writes its status."""

    target: Target
    branch: str
    rules: tuple[CompiledRule, ...]


@dataclass(frozen=True)
class Contest:
    """A namespace asking for a branch that several namespaces ask for and none owns: its
    provider's credentials are to be tried with the server's push handshake."""

    branch: str
    namespace: str
    provider: Provider


@dataclass(frozen=True)
class ConfigState:
    rules: tuple[WatchRuleSpec, ...] = ()
    targets: Mapping[str, ResolvedTarget] = field(default_factory=dict)
    providers: Mapping[str, Provider] = field(default_factory=dict)
    contests: tuple[Contest, ...] = ()
    refused: Mapping[str, RefusedTarget] = field(default_factory=dict)

    def branch_of(self, target: str) -> str | None:
        """The repository branch of a valid or refused target; None: it has none (no such
        target, no provider, or a spec that does not parse)."""
        if target in self.targets:
            return self.targets[target].branch
        if target in self.refused:
            return self.refused[target].branch
        return None


@dataclass
class _Desired:
    rtype: ResourceType
    namespace: str
    name: str
    status: dict[str, Any]
    current: Mapping[str, Any]
    resource_version: str


def _encryption_condition(target: Target, progress: TargetProgress) -> Condition:
    kind = "EncryptionConfigured"
    if not target.encryption:
        if progress.secrets_skipped:
            return Condition(
                kind,
                False,
                "EncryptionNotConfigured",
                f"{progress.secrets_skipped} Secret change(s) selected by the rules were not"
                " written: configure spec.encryption (SOPS with age.enabled: true) to mirror"
                " Secrets",
            )
        return Condition(
            kind,
            True,
            "NotRequested",
            "no encryption configured: Secrets selected by the rules are not written",
        )
    keys = progress.encryption
    if keys is None:
        return Condition(kind, None, "Pending", "encryption keys not resolved yet")
    if not keys.usable:
        return Condition(kind, False, keys.reason, f"Secrets are not written: {keys.message}")
    message = keys.message if keys.warning is None else f"{keys.message}; WARNING: {keys.warning}"
    return Condition(kind, True, keys.reason, message)


def _progress_conditions(progress: TargetProgress) -> list[Condition]:
    def gate(kind: str, done: bool, reason: str, message: str) -> Condition:
        if done:
            return Condition(kind, True, reason, message)
        return Condition(kind, False, progress.waiting_reason, progress.waiting_message)

    return [
        gate(
            "Bootstrapped",
            progress.bootstrapped,
            "Bootstrapped",
            "the branch is reachable and the target folder is known",
        ),
        gate(
            "SnapshotSynced",
            progress.snapshot_synced,
            "SnapshotSynced",
            "the initial reconcile of this target is pushed",
        ),
        gate(
            "EventStreamLive",
            progress.stream_live,
            "EventStreamLive",
            "changes are committed from the journal as they happen",
        ),
    ]


def _pushing_condition(health: ProviderHealth | None) -> Condition:
    """How the committer of the target's branch fares: down, refused or failing is not Ready."""
    if health is None:
        return Condition("Pushing", None, "Pending", "no push attempted yet")
    if health.ok:
        return Condition("Pushing", True, "Pushing", health.message)
    return Condition("Pushing", False, health.reason, health.message)


def _journal_condition(failure: str | None) -> Condition:
    """Every change passes through the journal: a target cannot be Ready while it fails."""
    if failure is None:
        return Condition("Journal", True, "Writable", "changes are journaled as they happen")
    return Condition(
        "Journal",
        False,
        "JournalWriteFailed",
        f"{failure}; free space on the state dir's volume (or fix the disk): changes wait in"
        " the API server and are journaled as soon as writes succeed again",
    )


# How many quarantined objects a condition message names.
QUARANTINE_LISTED = 5


def _quarantine_condition(progress: TargetProgress) -> Condition:
    """Objects the target cannot write; they do not stop the others, so Ready ignores this."""
    held = progress.quarantined
    if not held:
        return Condition("Quarantined", False, "NoneQuarantined", "every object can be written")
    listed = "; ".join(f"{key} ({why})" for key, why in list(held.items())[:QUARANTINE_LISTED])
    more = f"; and {len(held) - QUARANTINE_LISTED} more" if len(held) > QUARANTINE_LISTED else ""
    return Condition(
        "Quarantined",
        True,
        "ObjectsQuarantined",
        f"{len(held)} object(s) cannot be written and are retried when they change: {listed}{more}",
    )


# How many drifted files a condition message names.
DRIFT_LISTED = 5


def _valid_condition(target: Target, attributed: bool) -> Condition:
    """A valid spec; one that asks for what this daemon cannot do is still valid (the target
    mirrors everything else), but says so where its owner looks."""
    if target.exclude_users and not attributed:
        return Condition(
            "Validated",
            True,
            "ExcludeUsersNeedsAttribution",
            "spec is valid, but spec.excludeUsers leaves nothing out: this reverserd runs without"
            " --attribution, so no change is attributed to a user and every change is committed",
        )
    return Condition("Validated", True, "Validated", "spec is valid")


def _suspended_condition(target: Target) -> Condition:
    if target.suspend:
        return Condition(
            "Suspended",
            True,
            "Suspended",
            "spec.suspend is true: nothing is written to Git; changes wait in the journal and are"
            " committed in order once it is false again",
        )
    return Condition("Suspended", False, "NotSuspended", "changes are written as they happen")


def _drift_condition(target: Target, progress: TargetProgress) -> Condition:
    """Files of live objects that someone else changed in the folder (never foreign files)."""
    drift = progress.drift
    if target.drift_mode == "off":
        return Condition("Drifted", None, "DriftCheckOff", "spec.drift.mode is off")
    if drift.error is not None:
        return Condition("Drifted", None, "DriftCheckFailed", drift.error)
    if drift.checked_at is None:
        return Condition("Drifted", None, "Pending", "the folder has not been checked yet")
    if not drift.drifted:
        return Condition(
            "Drifted", False, "NoDrift", "every file of a live object says what reverserd writes"
        )
    listed = ", ".join(drift.drifted[:DRIFT_LISTED])
    more = (
        f" and {len(drift.drifted) - DRIFT_LISTED} more"
        if len(drift.drifted) > DRIFT_LISTED
        else ""
    )
    summary = (
        f"{len(drift.drifted)} file(s) of live objects differ from the cluster: {listed}{more}"
    )
    if drift.held:
        return Condition(
            "Drifted",
            True,
            "RepairBackedOff",
            f"{summary}; not repairing {', '.join(drift.held[:DRIFT_LISTED])}: another writer"
            " keeps changing it back (retried later; stop that writer or set spec.drift.mode)",
        )
    if target.drift_mode == "repair":
        return Condition("Drifted", True, "Repairing", f"{summary}; a repair commit restores them")
    return Condition("Drifted", True, "DriftDetected", f"{summary}; spec.drift.mode is warn")


def _parse(parse: Callable[[], T]) -> T | ConfigError:
    """``parse()``, with every failure turned into a condition: one bad object stops nothing."""
    try:
        return parse()
    except ConfigError as error:
        return error
    except Exception as error:  # whatever a malformed object triggers
        log.warning("custom resource could not be read: %s", type(error).__name__)
        return ConfigError("InvalidSpec", f"the spec could not be read ({type(error).__name__})")


def resolve(
    caches: Mapping[str, Mapping[tuple[str, str], Mapping[str, Any]]],
    discovery: Discovery | None,
    board: StatusBoard,
    policy: UrlPolicy | None = None,
    pins: RepositoryPins | None = None,
    max_targets_per_namespace: int = 0,
    attributed: bool = False,
) -> tuple[ConfigState, list[_Desired]]:
    """Compute the state and every object's desired status from the informers' caches.

    Several targets on one repository branch share one writer (one committer, one clone). The
    writer pushes with one provider's credentials and push settings, so it is shared only by
    providers for which that makes no difference: in the same namespace, naming the same
    Secret and the same push settings (:attr:`Provider.writer`). Which namespace writes is
    decided by :func:`_settle_branch`, by proven write access, never by who came first; the
    other targets are refused with ``Conflict``, so no target's changes are ever pushed with
    another provider's credentials (DESIGN invariant 9). The work is indexed by repository
    branch: each target is compared only with the targets of its own branch. A namespace's
    targets beyond ``max_targets_per_namespace`` (0: no cap), the newest first, are refused
    with ``TargetLimitExceeded``, so one tenant cannot make the daemon run thousands of
    consumers for everyone. ``attributed``: whether changes are attributed to users (a source
    is set), without which a target's ``excludeUsers`` leaves nothing out.
    """
    now = time.time()
    desired: list[_Desired] = []

    def want(
        rtype: ResourceType,
        body: Mapping[str, Any],
        conditions: list[Condition],
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        metadata = body.get("metadata") or {}
        current = body.get("status") or {}
        generation = int(metadata.get("generation", 0))
        status: dict[str, Any] = {
            "observedGeneration": generation,
            "conditions": render_conditions(
                conditions, current.get("conditions") or [], generation, now
            ),
            **(extra or {}),
        }
        desired.append(
            _Desired(
                rtype,
                metadata.get("namespace", ""),
                metadata["name"],
                status,
                current,
                str(metadata.get("resourceVersion", "")),
            )
        )

    providers: dict[str, Provider] = {}
    for body in caches["gitproviders"].values():
        provider_or_error = _parse(partial(parse_provider, body, policy))
        if isinstance(provider_or_error, ConfigError):
            error = provider_or_error
            want(PROVIDERS, body, [Condition("Ready", False, error.reason, str(error))])
            continue
        provider = provider_or_error
        providers[provider.key] = provider
        health = board.providers.get(provider.key)
        if health is None:
            ready = Condition("Ready", None, "Pending", "no connection attempted yet")
        else:
            ready = Condition("Ready", health.ok, health.reason, health.message)
        # Published while a key signs its commits; null (merge patch) removes a stale one.
        signing_key = board.signing_keys.get(provider.key) if provider.signing else None
        published = (body.get("status") or {}).get("signingPublicKey")
        extra = {"signingPublicKey": signing_key} if signing_key or published else None
        want(PROVIDERS, body, [ready], extra)

    rules: list[WatchRuleSpec] = []
    rule_bodies: list[tuple[ResourceType, Mapping[str, Any], WatchRuleSpec | ConfigError]] = []
    for rtype, cluster in ((WATCH_RULES, False), (CLUSTER_WATCH_RULES, True)):
        for body in caches[rtype.resource].values():
            rule = _parse(partial(parse_watch_rule, body, cluster))
            if isinstance(rule, WatchRuleSpec):
                rules.append(rule)
            rule_bodies.append((rtype, body, rule))

    parsed: list[tuple[Mapping[str, Any], Target | ConfigError]] = []
    for body in caches["gittargets"].values():
        parsed.append((body, _parse(partial(parse_target, body))))
    # Within the namespace that writes a branch, earlier targets win folder conflicts, so a new
    # target can never take over an existing folder.
    parsed.sort(
        key=lambda item: (item[1].created if isinstance(item[1], Target) else "", _name_of(item[0]))
    )
    rules_of: dict[str, list[CompiledRule]] = {}
    for rule in rules:
        rules_of.setdefault(rule.target_key, []).extend(rule.rules)
    checked: list[tuple[Mapping[str, Any], Target, Provider | None, Condition]] = []
    asking: dict[str, list[tuple[Target, Provider]]] = {}  # branch key -> its targets, in order
    per_namespace: dict[str, int] = {}
    for body, parsed_target in parsed:
        if isinstance(parsed_target, ConfigError):
            problem = Condition("Validated", False, parsed_target.reason, str(parsed_target))
            want(TARGETS, body, [ready_from([problem]), problem])
            continue
        target = parsed_target
        target_provider = providers.get(f"{target.namespace}/{target.provider_name}")
        validated = _valid_condition(target, attributed)
        per_namespace[target.namespace] = per_namespace.get(target.namespace, 0) + 1
        if 0 < max_targets_per_namespace < per_namespace[target.namespace]:
            validated = Condition(
                "Validated",
                False,
                "TargetLimitExceeded",
                f"namespace {target.namespace!r} has more than {max_targets_per_namespace}"
                " GitTargets, the most this reverserd serves per namespace (flag"
                " --max-targets-per-namespace); the newest ones wait until others are deleted",
            )
        elif target_provider is None:
            validated = Condition(
                "Validated",
                False,
                "GitProviderNotFound",
                f"GitProvider {target.provider_name!r} not found in namespace"
                f" {target.namespace!r}; the target starts as soon as it exists",
            )
        elif not target_provider.allows(target.branch):
            validated = Condition(
                "Validated",
                False,
                "BranchNotAllowed",
                f"branch {target.branch!r} matches none of GitProvider {target_provider.name!r}"
                f" allowedBranches {list(target_provider.allowed_branches)}",
            )
        else:
            key = branch_key(target_provider.url, target.branch)
            asking.setdefault(key, []).append((target, target_provider))
        checked.append((body, target, target_provider, validated))
    refusals: dict[str, Condition] = {}
    contests: list[Contest] = []
    reserved = pins or RepositoryPins()
    for key, askers in asking.items():
        refusals.update(_settle_branch(key, askers, board, reserved, now, contests))
    targets: dict[str, ResolvedTarget] = {}
    refused: dict[str, RefusedTarget] = {}
    target_problems: dict[str, Condition] = {}
    for body, target, target_provider, validated in checked:
        validated = refusals.get(target.key, validated)
        target_rules = tuple(rules_of.get(target.key, ()))
        if validated.status and target_provider is not None:
            targets[target.key] = ResolvedTarget(target, target_provider, target_rules)
        else:
            target_problems[target.key] = validated
            if target_provider is not None:
                branch = branch_key(target_provider.url, target.branch)
                refused[target.key] = RefusedTarget(target, branch, target_rules)
        progress = board.target(target.key)
        encryption = _encryption_condition(target, progress)
        pushing = _pushing_condition(board.branch_of(target.key))
        journal = _journal_condition(board.journal_failure)
        gates = [
            validated,
            encryption,
            *_progress_conditions(progress),
            pushing,
            journal,
        ]
        # Encryption gates readiness only when it was asked for: without it, Secrets are
        # skipped (and the condition says so) while everything else is mirrored. A failing push
        # or journal is what the sync gates wait on: Ready names it, not the gate waiting.
        failing = [gate for gate in (pushing, journal) if gate.status is False]
        suspended = _suspended_condition(target)
        # A suspended target writes nothing: it is not current, and Ready says why first.
        held = [Condition("Suspended", False, suspended.reason, suspended.message)]
        ready_gates = [
            gate
            for gate in [
                validated,
                *(held if target.suspend else []),
                encryption,
                *failing,
                *gates[2:],
            ]
            if gate is not encryption or target.encryption
        ]
        fields = {"path": target.path, **_target_fields(progress)}
        conditions = [
            ready_from(ready_gates),
            *gates,
            suspended,
            _drift_condition(target, progress),
            _quarantine_condition(progress),
        ]
        want(TARGETS, body, conditions, fields)

    for rtype, body, rule_or_error in rule_bodies:
        if isinstance(rule_or_error, ConfigError):
            invalid = rule_or_error
            want(rtype, body, [Condition("Ready", False, invalid.reason, str(invalid))])
            continue
        want(rtype, body, [_rule_condition(rule_or_error, targets, target_problems, discovery)])

    state = ConfigState(
        rules=tuple(rules),
        targets=targets,
        providers=providers,
        contests=tuple(contests),
        refused=refused,
    )
    return state, desired


def _settle_branch(
    key: str,
    askers: Sequence[tuple[Target, Provider]],
    board: StatusBoard,
    pins: RepositoryPins,
    now: float,
    contests: list[Contest],
) -> dict[str, Condition]:
    """Which of the targets asking for one repository branch may write it, and why not the rest.

    Only one namespace writes a branch. It is the recorded owner while its ownership is live
    (it proved write access within :data:`OWNERSHIP_GRACE_S`), whether or not its targets exist
    right now, so a re-created or briefly invalid target finds its branch where it left it.
    An owner whose proof aged out keeps writing while every namespace asking is tried (itself
    first); without an owner, a single namespace asking may write, and its first push makes it
    the owner; several namespaces asking all wait until one proves write access (the push
    handshake of :mod:`reverserd.targets.ownership`), which never depends on who came first.
    A pin of the operator's (:mod:`reverserd.config.pins`) keeps every other namespace out.
    Inside the writing namespace, targets share the writer only when their providers push the
    same way, and never write overlapping folders; the earlier target wins there.
    """
    first_target, first_provider = askers[0]
    branch, display = first_target.branch, first_provider.display_url
    repository = first_provider.repository
    refusals: dict[str, Condition] = {}
    namespaces = list(dict.fromkeys(target.namespace for target, _ in askers))
    pin = pins.pin_of(repository)
    if pin is not None:
        prefix, allowed = pin
        for target, _ in askers:
            if target.namespace not in allowed:
                refusals[target.key] = _refused(
                    f"{display} is reserved by the operator for namespace(s)"
                    f" {', '.join(sorted(allowed))} (repository pin {prefix}); GitTargets of"
                    f" namespace {target.namespace!r} cannot write it"
                )
        namespaces = [namespace for namespace in namespaces if namespace in allowed]
    owner = board.owners.get(key)
    incumbent = owner.namespace if owner is not None and owner.namespace in namespaces else None
    writer: str | None = None
    if owner is not None and owner.live(now) and (pin is None or owner.namespace in pin[1]):
        writer = owner.namespace
    elif incumbent is not None or len(namespaces) == 1:
        # An owner whose proof aged out keeps writing while it is tried again; a single
        # namespace asking writes at once (its first push makes it the owner).
        writer = incumbent or namespaces[0]
        if len(namespaces) > 1:
            ordered = [writer, *(n for n in namespaces if n != writer)]
            contests.extend(_contests(key, askers, ordered))
    else:
        contests.extend(_contests(key, askers, namespaces))
    for target, _ in askers:
        if target.key in refusals or target.namespace == writer:
            continue
        proof = board.proofs.get((key, target.namespace))
        tried = (
            "its credentials have not been tried yet"
            if proof is None
            else f"its credentials {'can' if proof.ok else 'cannot'} write it ({proof.message})"
        )
        if writer is not None:
            refusals[target.key] = _refused(
                f"branch {branch!r} of {display} is owned by namespace {writer!r}, whose"
                f" credentials proved they can write it; namespace {target.namespace!r} cannot"
                f" take it over ({tried})"
            )
        else:
            refusals[target.key] = _refused(
                f"namespaces {', '.join(namespaces)} ask to write branch {branch!r} of"
                f" {display}; it goes to the first whose credentials prove they can write it"
                f" (the Git server's push handshake); for namespace {target.namespace!r}, {tried}"
            )
    shared_by: Provider | None = None
    claimed: list[tuple[str, str]] = []  # path, target key
    for target, provider in askers:
        if target.key in refusals:
            continue
        if shared_by is None:
            shared_by = provider
        elif provider.writer != shared_by.writer:
            refusals[target.key] = _refused(
                f"branch {branch!r} of {display} is already written through GitProvider"
                f" {shared_by.key}; providers share a branch only when they are in one"
                " namespace with the same secretRef and push settings"
            )
            continue
        overlapping = next((c for c in claimed if paths_overlap(c[0], target.path)), None)
        if overlapping is not None:
            path, other = overlapping
            refusals[target.key] = _refused(
                f"GitTarget {other} already writes path {path!r} on branch {branch!r} of"
                f" {display}; choose a separate folder"
            )
            continue
        claimed.append((target.path, target.key))
    return refusals


def _contests(
    key: str, askers: Sequence[tuple[Target, Provider]], namespaces: Sequence[str]
) -> list[Contest]:
    """One handshake per namespace, in this order, with its first provider on the branch."""
    return [
        Contest(key, namespace, next(p for t, p in askers if t.namespace == namespace))
        for namespace in namespaces
    ]


def _refused(message: str) -> Condition:
    return Condition("Validated", False, "Conflict", message)


def _controls(state: ConfigState) -> dict[str, tuple[str, str]]:
    """What running consumers are told without a restart (fields that equality ignores)."""
    return {
        key: (resolved.target.drift_mode, resolved.target.reconcile_requested)
        for key, resolved in state.targets.items()
    }


def _name_of(body: Mapping[str, Any]) -> str:
    metadata = body.get("metadata") or {}
    return f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"


def _target_fields(progress: TargetProgress) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if progress.last_commit:
        fields["lastCommit"] = progress.last_commit
    if progress.last_push_time:
        fields["lastPushTime"] = rfc3339(progress.last_push_time)
    if progress.last_reconcile_time:
        fields["lastReconcileTime"] = rfc3339(progress.last_reconcile_time)
    if progress.snapshot_completed_time:
        fields["snapshot"] = {
            "lastCompletedTime": rfc3339(progress.snapshot_completed_time),
            "stats": dict(progress.snapshot_stats),
        }
    if progress.handled_reconcile:
        fields["lastHandledReconcileAt"] = progress.handled_reconcile
    drift = progress.drift
    # The check time stays out: a status that changed with every check would be written every
    # interval in a quiet cluster (/status and the page show it).
    if drift.checked_at is not None:
        fields["drift"] = {"driftedFiles": len(drift.drifted)}
        if drift.repaired_at is not None:
            fields["drift"]["lastRepairTime"] = rfc3339(drift.repaired_at)
            fields["drift"]["lastRepairedFiles"] = len(drift.repaired)
    return fields


def _rule_condition(
    rule: WatchRuleSpec,
    targets: Mapping[str, ResolvedTarget],
    target_problems: Mapping[str, Condition],
    discovery: Discovery | None,
) -> Condition:
    if rule.target_key not in targets:
        problem = target_problems.get(rule.target_key)
        if problem is not None and problem.reason == "GitProviderNotFound":
            return Condition("Ready", False, "GitProviderNotFound", problem.message)
        if problem is not None:
            return Condition(
                "Ready",
                False,
                "GitTargetNotReady",
                f"GitTarget {rule.target_key} is not valid: {problem.message}",
            )
        return Condition(
            "Ready",
            False,
            "GitTargetNotFound",
            f"GitTarget {rule.target_name!r} not found in namespace {rule.target_namespace!r};"
            " events are journaled and wait for it",
        )
    if discovery is not None:
        missing = _unserved(rule.rules, discovery)
        if missing:
            return Condition(
                "Ready",
                False,
                "ResourceNotServed",
                f"not served by the API server yet: {', '.join(missing)}; the rule starts"
                " working when they are",
            )
    return Condition("Ready", True, "Ready", "rules are active")


def _unserved(rules: Sequence[CompiledRule], discovery: Discovery) -> list[str]:
    served = {resource for _, resource in discovery.types}
    missing = []
    for rule in rules:
        for resource in sorted(rule.resources or ()):
            if resource not in served:
                missing.append(resource)
    return sorted(set(missing))


class NamespaceLabels(RevisedNamespaces):
    """Each namespace's current labels, by name, read live from the namespace informer."""

    def __init__(self, informer: Informer) -> None:
        super().__init__()
        self.informer = informer

    @property
    def revision(self) -> int:
        return self.informer.revision

    def __getitem__(self, name: str) -> Mapping[str, Any]:
        return labels_of(self.informer.cache[("", name)])

    def __iter__(self) -> Iterator[str]:
        return (name for _, name in list(self.informer.cache))

    def __len__(self) -> int:
        return len(self.informer.cache)


class ConfigPlane:
    def __init__(
        self,
        client: KubeClient,
        board: StatusBoard,
        policy: UrlPolicy | None = None,
        pins: RepositoryPins | None = None,
        max_targets_per_namespace: int = MAX_TARGETS_PER_NAMESPACE,
        attributed: bool = False,
    ) -> None:
        self.client = client
        self.board = board
        self.policy = policy or UrlPolicy()
        self.pins = pins or RepositoryPins()
        self.max_targets_per_namespace = max_targets_per_namespace
        # Whether an attribution source is set: without one, excludeUsers leaves nothing out.
        self.attributed = attributed
        self._statuses: dict[tuple[str, str, str], dict[str, Any]] = {}
        # One resolve at a time, so states are published in the order they were computed.
        self._recomputing = asyncio.Lock()
        self.discovery: Discovery | None = None
        self.state = ConfigState()
        self.version = 0
        # Only the leader writes status; a standby computes state for its own journal only.
        self.writes_enabled = True
        # Sharded replicas: whether this replica writes the status of (resource, namespace,
        # name), so each resource has one writer; None: every status (one replica).
        self.writes_status_of: Callable[[str, str, str], bool] | None = None
        # The resourceVersion each status write went over: until the informer has seen the
        # object change, its cached status is stale and must not trigger the write again.
        self._written_over: dict[tuple[str, str, str], str] = {}
        self._dirty = asyncio.Event()
        self._published = asyncio.Condition()
        self.informers = {kind.resource: Informer(client, kind, self._dirty.set) for kind in KINDS}
        # Namespaces only feed namespaceSelectors, which target consumers match as they read
        # (re-reading the labels at least every second): a namespace change recomputes nothing.
        self.namespace_informer = Informer(client, NAMESPACES, lambda: None)
        self.namespaces = NamespaceLabels(self.namespace_informer)
        board.subscribe(self._dirty.set)

    def enable_writes(self) -> None:
        self.writes_enabled = True
        self._dirty.set()

    def set_discovery(self, discovery: Discovery) -> None:
        self.discovery = discovery
        self._dirty.set()

    async def wait_synced(self) -> None:
        for informer in self.informers.values():
            await informer.synced.wait()
        await self._recompute()
        # Only rules with a namespaceSelector need the namespaces before a target starts (an
        # install whose RBAC leaves namespaces out must still start); their namespaces then
        # come in with a backfill as soon as the informer has them.
        if any(
            compiled.namespace_selector is not None
            for rule in self.state.rules
            for compiled in rule.rules
        ):
            await self.namespace_informer.synced.wait()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.namespace_informer.run())
            for informer in self.informers.values():
                group.create_task(informer.run())
            group.create_task(self._reconcile_loop())

    async def _reconcile_loop(self) -> None:
        for informer in self.informers.values():
            await informer.synced.wait()
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), STATUS_RETRY_S)
            except TimeoutError:
                pass
            await asyncio.sleep(DEBOUNCE_S)
            await self._recompute()

    async def _recompute(self) -> None:
        """Resolve on a worker thread, from copies of the caches and the board: with thousands
        of targets a pass takes long enough to delay everything else on the event loop."""
        async with self._recomputing:
            self._dirty.clear()
            caches = {name: dict(informer.cache) for name, informer in self.informers.items()}
            state, desired = await asyncio.to_thread(
                resolve,
                caches,
                self.discovery,
                self.board.snapshot(),
                self.policy,
                self.pins,
                self.max_targets_per_namespace,
                self.attributed,
            )
            self._statuses = {
                (item.rtype.resource, item.namespace, item.name): item.status for item in desired
            }
            if state != self.state or _controls(state) != _controls(self.state):
                async with self._published:
                    self.state = state
                    self.version += 1
                    self._published.notify_all()
            if not self.writes_enabled:
                return
            for item in desired:
                key = (item.rtype.resource, item.namespace, item.name)
                if self._written_over.get(key) == item.resource_version:
                    continue
                if self.writes_status_of is not None and not self.writes_status_of(*key):
                    continue
                if _differs(item.status, item.current) and await self._write_status(item):
                    self._written_over[key] = item.resource_version

    def computed_statuses(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        """Every custom resource's status as the latest :func:`resolve` computed it, by
        (resource, namespace, name): the status page shows exactly what is written to the
        resources."""
        return self._statuses

    async def wait_for_change(self, seen_version: int) -> ConfigState:
        async with self._published:
            await self._published.wait_for(lambda: self.version != seen_version)
            return self.state

    async def _write_status(self, item: _Desired) -> bool:
        path = item.rtype.object_path(item.namespace or None, item.name) + "/status"
        try:
            await self.client.merge_patch(path, {"status": item.status})
        except KubeError as error:
            if error.status != 404:
                log.warning("status write for %s %s failed: %s", item.rtype.kind, item.name, error)
            return False
        except (aiohttp.ClientError, TimeoutError) as error:
            # The API server is unreachable: the next pass (at most STATUS_RETRY_S away)
            # writes it again.
            log.warning("status write for %s %s failed: %s", item.rtype.kind, item.name, error)
            return False
        STATUS_WRITES.labels(kind=item.rtype.kind).inc()
        return True


def _differs(wanted: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    return any(current.get(key) != value for key, value in wanted.items())
