"""Status conditions, and the board where the engines report what actually happened.

Conditions follow the Kubernetes convention (``type``, ``status``, ``reason``, ``message``,
``lastTransitionTime``, ``observedGeneration``). ``lastTransitionTime`` moves only when
``status`` changes, and a status is written only when something in it differs, so reverserd never
loops on its own writes and a quiet cluster sees no status traffic at all.

The :class:`StatusBoard` is filled by the committer and the target consumers with facts about
what was pushed (never what was attempted); the config plane turns them into status.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reverserd.encryption.keys import KeyState

# The most a condition message may hold: the API server refuses a status above its size limit
# for the whole object, and a message quoting a hostile spec (a huge name, a long URL) must
# never be the reason a status write fails. Kubernetes' own condition schema allows 32 KiB;
# a human reads far less.
MAX_MESSAGE_BYTES = 1024
_ELLIPSIS = "…"


def bounded(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``message`` cut to at most ``limit`` UTF-8 bytes, marked with an ellipsis when cut."""
    encoded = message.encode()
    if len(encoded) <= limit:
        return message
    room = limit - len(_ELLIPSIS.encode())
    return encoded[:room].decode(errors="ignore") + _ELLIPSIS


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None  # None: Unknown
    reason: str
    message: str

    @property
    def status_text(self) -> str:
        return {True: "True", False: "False", None: "Unknown"}[self.status]


def rfc3339(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def render_conditions(
    wanted: Sequence[Condition], current: Sequence[Mapping[str, Any]], generation: int, now: float
) -> list[dict[str, Any]]:
    """Conditions as written to the API, keeping ``lastTransitionTime`` when status is unchanged."""
    previous = {str(item.get("type")): item for item in current}
    rendered = []
    for condition in wanted:
        before = previous.get(condition.type)
        moved = before is None or before.get("status") != condition.status_text
        rendered.append(
            {
                "type": condition.type,
                "status": condition.status_text,
                "reason": condition.reason,
                "message": bounded(condition.message),
                "observedGeneration": generation,
                "lastTransitionTime": rfc3339(now)
                if moved or before is None
                else before.get("lastTransitionTime", rfc3339(now)),
            }
        )
    return rendered


def ready_from(gates: Sequence[Condition]) -> Condition:
    """``Ready`` is the first gate that is not True, else True."""
    for gate in gates:
        if gate.status is not True:
            return Condition("Ready", gate.status, gate.reason, gate.message)
    return Condition("Ready", True, "Ready", "all gates are satisfied")


@dataclass
class TargetProgress:
    """What a target consumer has achieved, as pushed to the remote."""

    bootstrapped: bool = False
    snapshot_synced: bool = False
    stream_live: bool = False
    sync_epoch: int = 0
    """Bumped when what the target selects changes: a first sync pushed for an earlier epoch
    (by a consumer already replaced) does not set the gates."""
    waiting_reason: str = "Pending"
    waiting_message: str = "waiting for the target consumer to start"
    last_commit: str | None = None
    last_push_time: float | None = None
    last_reconcile_time: float | None = None
    snapshot_completed_time: float | None = None
    snapshot_stats: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    encryption: KeyState | None = None
    secrets_skipped: int = 0
    secret_problem: str | None = None
    branch: str | None = None
    """The committer key (repository + branch) the target writes through."""
    quarantined: dict[str, str] = field(default_factory=dict)
    """Object key -> why it cannot be written; retried when the object changes."""
    drift: DriftReport = field(default_factory=lambda: DriftReport())
    handled_reconcile: str | None = None
    """The reconcile request value the consumer last acted on."""


@dataclass
class DriftReport:
    """What the drift checks of one target found (:mod:`reverserd.targets.drift`)."""

    checked_at: float | None = None
    drifted: list[str] = field(default_factory=list)
    """Paths of live objects' files that differ from what reverserd writes, sorted."""
    held: list[str] = field(default_factory=list)
    """Drifted paths not repaired, because another writer keeps changing them back."""
    repaired_at: float | None = None
    repaired: list[str] = field(default_factory=list)
    """The files the last pushed repair commit restored."""
    error: str | None = None
    """Why the last check could not compare the folder (the remote unreachable)."""


@dataclass(frozen=True)
class ProviderHealth:
    ok: bool
    reason: str
    message: str


# How long an owner keeps its branch without a new proof of write access (its pushes and
# handshakes renew it): a day outlasts a Helm or Argo replace of its GitTarget, a provider
# briefly invalid and an outage of the Git server, and is short enough that a team whose token
# was revoked for good does not lock out a namespace that can write the repository.
OWNERSHIP_GRACE_S = 24 * 3600.0


@dataclass(frozen=True)
class BranchOwner:
    """The namespace that owns a repository branch, and when it last proved write access."""

    namespace: str
    proven_at: float

    def live(self, now: float) -> bool:
        return now - self.proven_at < OWNERSHIP_GRACE_S


@dataclass(frozen=True)
class WriteProof:
    """The outcome of the latest push handshake a namespace's credentials tried on a branch."""

    ok: bool
    message: str
    at: float


class StatusBoard:
    """Facts reported by the engines; every report wakes the status writer."""

    def __init__(self) -> None:
        self.targets: dict[str, TargetProgress] = {}
        self.providers: dict[str, ProviderHealth] = {}
        self.branches: dict[str, ProviderHealth] = {}
        self.owners: dict[str, BranchOwner] = {}
        """Branch key -> its owner, as recorded in the journal."""
        self.proofs: dict[tuple[str, str], WriteProof] = {}
        """(branch key, namespace) -> its latest push handshake while the branch was contested."""
        self.signing_keys: dict[str, str] = {}
        """Provider key -> the public key its commits are signed with (authorized_keys form)."""
        self.journal_failure: str | None = None
        self._listeners: list[Callable[[], None]] = []

    def snapshot(self) -> StatusBoard:
        """A copy of every fact, for computing status off the event loop while reports go on.

        The maps are copied; the progress records are shared and only read.
        """
        copy = StatusBoard()
        copy.targets = dict(self.targets)
        copy.providers = dict(self.providers)
        copy.branches = dict(self.branches)
        copy.owners = dict(self.owners)
        copy.proofs = dict(self.proofs)
        copy.signing_keys = dict(self.signing_keys)
        copy.journal_failure = self.journal_failure
        return copy

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def notify(self) -> None:
        for listener in self._listeners:
            listener()

    def target(self, key: str) -> TargetProgress:
        return self.targets.setdefault(key, TargetProgress())

    def report_provider(self, key: str, health: ProviderHealth) -> None:
        if self.providers.get(key) != health:
            self.providers[key] = health
            self.notify()

    def report_signing_key(self, key: str, public_key: str | None) -> None:
        """The key a provider's commits are signed with now; None: none can be loaded."""
        if self.signing_keys.get(key) != public_key:
            if public_key is None:
                del self.signing_keys[key]
            else:
                self.signing_keys[key] = public_key
            self.notify()

    def report_branch(self, key: str, health: ProviderHealth) -> None:
        """How the committer of one repository + branch fares; every target on it shows this."""
        if self.branches.get(key) != health:
            self.branches[key] = health
            self.notify()

    def branch_of(self, target: str) -> ProviderHealth | None:
        progress = self.targets.get(target)
        return (
            None
            if progress is None or progress.branch is None
            else (self.branches.get(progress.branch))
        )

    def report_journal(self, failure: str | None) -> None:
        if self.journal_failure != failure:
            self.journal_failure = failure
            self.notify()
