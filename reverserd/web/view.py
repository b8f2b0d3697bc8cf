"""One picture of the daemon's state, from which ``/status``, ``/``, ``reverserd status`` and the
readiness and lag metrics are all made, so they can never disagree.

Whether a target is ready, and why not, is never decided here: it is the ``Ready`` condition the
config plane computes for the GitTarget (:meth:`ConfigPlane.computed_statuses`, the same
:func:`reverserd.config.plane.resolve` whose output is written to the resource), so a condition
the plane learns to compute shows up in the banner, the card, ``/status`` and the CLI without a
change here. Last commit and push time are the status fields the plane writes. What conditions
do not carry (cursor and lag from the journal, Secrets skipped, quarantined keys, the last
error) comes from the same :class:`StatusBoard` the plane reads.

The picture is JSON (``/status``): times are RFC 3339 strings in UTC, durations seconds, sizes
bytes; ``problems`` lists what is wrong, worst first, each with what to do; ``healthy`` is true
when no problem is an error. It is computed at most once per :data:`PICTURE_CACHE_S`, so
``/status`` and ``/`` stay cheap under frequent polling.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pygit2
from prometheus_client import REGISTRY

from reverserd import __version__
from reverserd.committer.committer import clone_dir
from reverserd.config.plane import ConfigPlane, ResolvedTarget
from reverserd.config.status import StatusBoard, TargetProgress
from reverserd.git.urls import branch_key
from reverserd.journal import JournalReader
from reverserd.kube.shards import ShardCoordinator
from reverserd.metrics import (
    API_SERVER_REACHABLE,
    PROVIDER_READY,
    TARGET_LAG_EVENTS,
    TARGET_LAG_SECONDS,
    TARGET_READY,
)
from reverserd.redaction import mask_url, redact
from reverserd.targets.manager import TargetManager
from reverserd.watch.manager import WatchManager
from reverserd.web.format import rfc3339

# A readiness answer may rely on an API server contact this recent; older ones are re-probed.
API_FRESHNESS_S = 10.0
# A probe of the API server gives up after this long (it is down or overloaded either way).
API_PROBE_TIMEOUT_S = 3.0
# The picture is reused for this long: polling pages and scrapes cost one computation a second.
PICTURE_CACHE_S = 1.0
# The lag chart keeps one sample per this many seconds, over the last CHART_WINDOW_S.
CHART_STEP_S = 5.0
CHART_WINDOW_S = 15 * 60.0
# Commit subjects looked up in the clones, remembered by SHA.
SUBJECT_CACHE = 1024

ERROR, WARNING = "error", "warning"
# Conditions whose True means trouble (the Kubernetes "abnormal-true" kind); every other
# condition is trouble when False.
ABNORMAL_TRUE = {"Quarantined", "Drifted", "Suspended"}

# What to do, by condition reason: the condition's message says what is wrong, this says where
# to look. Reasons not listed get GENERIC_ADVICE.
ADVICE = {
    "ApiServerUnreachable": (
        "Check the API server and reverserd's kubeconfig and network. Events are not lost: the"
        " watches resume from the journal's resourceVersions when it answers again."
    ),
    "DaemonUnreachable": (
        "Start reverserd (or check --url). Figures shown come from the journal on disk only."
    ),
    "ConnectionFailed": (
        "Check that the Git server answers from reverserd's host and that the GitProvider's"
        " Secret holds valid credentials. Pushes are retried with backoff; nothing is dropped."
    ),
    "PushRefused": (
        "The server refuses the push for a reason a fetch cannot fix (the message says which):"
        " fix the branch or the refs on the server. Changes wait in the journal meanwhile."
    ),
    "CommitterFailed": (
        "Nothing to do unless it repeats: a fresh committer resumes from the journal after a"
        " backoff. If it repeats, the message and the log say why."
    ),
    "ConsumerFailed": (
        "Nothing to do unless it repeats: the target's consumer restarts from its cursor after"
        " a backoff. If it repeats, the last error and the log say why."
    ),
    "JournalWriteFailed": (
        "Free space on the state dir's disk (or fix its permissions); watches resume from their"
        " stored resourceVersions once writes succeed."
    ),
    "RemoteBusy": "Others keep pushing to the branch; reverserd waits and retries.",
    "SecretNotFound": "Create the Secret named by the GitProvider's spec.secretRef.name.",
    "SecretMalformed": (
        "Give the provider's Secret the keys username + password, or ssh-privatekey"
        " (and known_hosts)."
    ),
    "KeyGenerationFailed": (
        "Make age-keygen runnable by reverserd (--age-keygen-path), or put an age identity"
        " (*.agekey) into the Secret named by spec.encryption.secretRef. Secrets are not"
        " written until then; everything else is."
    ),
    "EncryptionNotConfigured": (
        "Configure spec.encryption (SOPS with age) to mirror Secrets, or leave Secrets out of"
        " the rules."
    ),
    "GitProviderNotFound": "Create the GitProvider, or fix spec.providerRef.name.",
    "GitTargetNotFound": "Create the GitTarget, or fix the rule's spec.targetRef.",
    "BranchNotAllowed": "Use a branch the GitProvider's allowedBranches match, or widen them.",
    "Conflict": "Give each GitTarget its own folder on a branch (spec.path).",
    "InvalidBranch": "Fix the GitTarget's spec.branch: it must be a valid Git branch name.",
    "InvalidPath": "Fix the GitTarget's spec.path as the message says.",
    "InvalidSpec": "Fix the resource's spec as the message says.",
    "ResourceNotServed": "Install the CRD that serves the resource, or fix the rule's resources.",
    "WaitingForRepository": "Wait for the connection; if it stays, see the GitProvider's status.",
    "Pending": "Wait: reverserd has not got that far yet.",
    "Syncing": "Wait: the first snapshot of the target is being written and pushed.",
    "ObjectsQuarantined": (
        "Rename or fix the listed objects; each is retried when it changes; the rest flows."
    ),
    "SecretsSkipped": "See the Secret's reason; fix the encryption keys or the Secret.",
    "BackupKey": "Back up the generated age key, then remove the backup-warning annotation.",
    "WatchFailing": "The watch is retried with backoff; check the API server if it persists.",
    "Standby": "Nothing to do: another replica holds the Lease and writes.",
}
GENERIC_ADVICE = "Read the condition's message; kubectl describe the resource for details."
ENCRYPTION_REASONS = {
    "InvalidKey",
    "InvalidRecipient",
    "NoRecipients",
    "SecretRefMissing",
    "SecretUnreadable",
    "AgeDisabled",
    "UnsupportedProvider",
}
ENCRYPTION_ADVICE = (
    "Fix the GitTarget's spec.encryption or its key Secret. Secrets are not written until then;"
    " everything else is."
)


def advice_for(reason: str) -> str:
    if reason in ADVICE:
        return ADVICE[reason]
    if reason in ENCRYPTION_REASONS:
        return ENCRYPTION_ADVICE
    return GENERIC_ADVICE


def problem(
    severity: str, kind: str, name: str, condition: str, reason: str, message: str
) -> dict[str, Any]:
    return {
        "severity": severity,
        "kind": kind,
        "name": name,
        "condition": condition,
        "reason": reason,
        "message": message,
        "advice": advice_for(reason),
    }


def ready_condition(conditions: Sequence[Mapping[str, Any]]) -> tuple[bool, Mapping[str, Any]]:
    """Whether ``Ready`` is True, and the condition that decides it: the first gate that is not
    True (``Ready`` carries its reason and message), else ``Ready`` itself."""
    by_type = {str(item.get("type")): item for item in conditions}
    ready = by_type.get("Ready") or {"type": "Ready", "status": "Unknown", "reason": "Pending"}
    if ready.get("status") == "True":
        return True, ready
    for item in conditions:
        if (
            item.get("type") != "Ready"
            and item.get("status") != "True"
            and item.get("reason") == ready.get("reason")
        ):
            return False, item
    return False, ready


class StatusView:
    """Computes the picture from the live objects the daemon wires in."""

    def __init__(
        self,
        reader: JournalReader,
        plane: ConfigPlane,
        board: StatusBoard,
        targets: TargetManager,
        watches: WatchManager,
        probe_api: Callable[[], Awaitable[bool]],
        state_dir: Path,
        role: Callable[[], str],
        started: float,
        shards: ShardCoordinator | None = None,
    ) -> None:
        """With ``shards`` (a sharded replica), a target on a branch another replica holds is
        shown as its owner wrote it to the GitTarget's status, and is not this replica's
        problem."""
        self.shards = shards
        self.reader = reader
        self.plane = plane
        self.board = board
        self.targets = targets
        self.watches = watches
        self.probe_api = probe_api
        self.state_dir = state_dir
        self.role = role
        self.started = started
        self._api = {"at": float("-inf"), "ok": False}
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._computing = asyncio.Lock()
        self._history: dict[str, collections.deque[tuple[float, int, float]]] = {}
        self._subjects: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._gauged: set[str] = set()
        self._gauged_providers: set[str] = set()

    async def api_reachable(self) -> bool:
        """The API server answered within :data:`API_FRESHNESS_S` (probed when older)."""
        if time.monotonic() - self._api["at"] > API_FRESHNESS_S or not self._api["ok"]:
            try:
                ok = await asyncio.wait_for(self.probe_api(), API_PROBE_TIMEOUT_S)
            except TimeoutError:
                ok = False
            self._api = {"at": time.monotonic(), "ok": ok}
        return bool(self._api["ok"])

    async def picture(self) -> dict[str, Any]:
        async with self._computing:
            if self._cached is not None and time.monotonic() - self._cached[0] < PICTURE_CACHE_S:
                return self._cached[1]
            picture = await self._compute()
            self._cached = (time.monotonic(), picture)
            return picture

    async def _compute(self) -> dict[str, Any]:
        now = time.time()
        api_ok = await self.api_reachable()
        API_SERVER_REACHABLE.set(1 if api_ok else 0)
        role = self.role()
        statuses = self.plane.computed_statuses()
        problems: list[dict[str, Any]] = []
        if not api_ok:
            problems.append(
                problem(
                    ERROR,
                    "APIServer",
                    "kube-apiserver",
                    "Reachable",
                    "ApiServerUnreachable",
                    "the API server did not answer: no new events are journaled and the"
                    " custom resources' status cannot be updated",
                )
            )
        if role == "standby":
            problems.append(
                problem(
                    WARNING,
                    "Replica",
                    "this replica",
                    "Leader",
                    "Standby",
                    "standby replica: it keeps its journal warm and writes nothing",
                )
            )
        # A standby connects to nothing and writes nothing: its targets and providers wait.
        counted = role != "standby"
        targets = await self._targets(statuses, now, problems, counted)
        providers = _resources(statuses, "gitproviders", "GitProvider")
        rules = _resources(statuses, "watchrules", "WatchRule")
        rules += _resources(statuses, "clusterwatchrules", "ClusterWatchRule")
        for item in providers:
            PROVIDER_READY.labels(provider=item["name"]).set(1 if item["ready"] else 0)
            if counted and not item["ready"] and self._writes("gitproviders", item["name"]):
                problems.append(_resource_problem(ERROR, item))
        for gone in self._gauged_providers - {item["name"] for item in providers}:
            PROVIDER_READY.remove(gone)
        self._gauged_providers = {str(item["name"]) for item in providers}
        for item in rules:
            if not item["ready"]:
                problems.append(_resource_problem(WARNING, item))
        watches = await self._watches(problems)
        problems.sort(key=lambda p: (p["severity"] != ERROR, p["kind"], p["name"]))
        return {
            "version": __version__,
            "role": role,
            "generated_at": rfc3339(now),
            "uptime_seconds": round(now - self.started, 1),
            "healthy": not any(p["severity"] == ERROR for p in problems),
            "api_server": {"reachable": api_ok},
            "problems": problems,
            "journal": {
                **await self.reader.stats(),
                "attribution_facts_dropped": int(
                    REGISTRY.get_sample_value("reverserd_attribution_facts_dropped_total") or 0
                ),
            },
            "targets": targets,
            "providers": providers,
            "rules": rules,
            "watches": watches,
            **({"shards": self.shards.picture()} if self.shards is not None else {}),
        }

    def _writes(self, resource: str, name: str) -> bool:
        """This replica writes the resource's status (always, unless sharded)."""
        decides = self.plane.writes_status_of
        namespace, _, short = str(name).rpartition("/")
        return decides is None or decides(resource, namespace, short)

    def _owner(self, resolved: ResolvedTarget | None) -> str:
        """The replica holding a target's branch ("" when sharding is off or nobody does)."""
        if self.shards is None or resolved is None:
            return ""
        bucket = self.shards.bucket(branch_key(resolved.provider.url, resolved.target.branch))
        return self.shards.holders.get(bucket, "")

    async def _targets(
        self,
        statuses: Mapping[tuple[str, str, str], Mapping[str, Any]],
        now: float,
        problems: list[dict[str, Any]],
        counted: bool,
    ) -> list[dict[str, Any]]:
        cursors = {row.target: row for row in await self.reader.cursors()}
        bodies = self.plane.informers["gittargets"].cache
        found: list[dict[str, Any]] = []
        for (resource, namespace, name), status in sorted(statuses.items()):
            if resource != "gittargets":
                continue
            key = f"{namespace}/{name}"
            progress = self.board.targets.get(key) or TargetProgress()
            resolved = self.plane.state.targets.get(key)
            owner = self._owner(resolved)
            elsewhere = self.shards is not None and owner != self.shards.replica
            if resolved is not None and elsewhere:
                status = (bodies.get((namespace, name)) or {}).get("status") or {}
            conditions = list(status.get("conditions") or [])
            ready, deciding = ready_condition(conditions)
            cursor = cursors.get(key)
            lag_events: int | None = None
            lag_seconds: float | None = None
            if cursor is not None:
                lag_events, oldest = await self.reader.lag(cursor.seq)
                lag_seconds = 0.0 if oldest is None else round(max(0.0, now - oldest), 1)
            spec = (bodies.get((namespace, name)) or {}).get("spec") or {}
            last_commit = status.get("lastCommit")
            entry = {
                "target": key,
                "ready": ready,
                "condition": deciding.get("type"),
                "reason": deciding.get("reason"),
                "message": deciding.get("message"),
                "since": deciding.get("lastTransitionTime"),
                "repository": mask_url(resolved.provider.url) if resolved else None,
                "branch": spec.get("branch"),
                "path": spec.get("path") or "",
                "cursor": cursor.seq if cursor else None,
                "lag_events": lag_events,
                "lag_seconds": lag_seconds,
                "last_commit": last_commit,
                "last_commit_subject": await self._subject(key, last_commit),
                "last_push": status.get("lastPushTime"),
                "last_error": masked(progress.last_error or self.targets.remote_error(key)),
                "secrets_skipped": progress.secrets_skipped,
                "secret_problem": progress.secret_problem,
                "quarantined": [
                    {"key": key, "reason": why} for key, why in sorted(progress.quarantined.items())
                ],
                "drift": _drift_entry(resolved.target.drift_mode if resolved else None, progress),
                "conditions": conditions,
                "lag_history": self._sample(key, now, lag_events, lag_seconds),
            }
            if self.shards is not None:
                entry["owner"] = owner or None
            found.append(entry)
            if counted and not (resolved is not None and elsewhere):
                problems.extend(_target_problems(entry, progress))
            self._gauge(key, ready, lag_events, lag_seconds)
        present = {str(entry["target"]) for entry in found}
        for gone in self._gauged - present:
            for gauge in (TARGET_READY, TARGET_LAG_EVENTS, TARGET_LAG_SECONDS):
                try:
                    gauge.remove(gone)
                except KeyError:
                    pass  # never set (no cursor yet)
            self._history.pop(gone, None)
        self._gauged = present
        return found

    def _gauge(
        self, key: str, ready: bool, lag_events: int | None, lag_seconds: float | None
    ) -> None:
        TARGET_READY.labels(target=key).set(1 if ready else 0)
        if lag_events is not None:
            TARGET_LAG_EVENTS.labels(target=key).set(lag_events)
            TARGET_LAG_SECONDS.labels(target=key).set(lag_seconds or 0.0)

    def _sample(
        self, key: str, now: float, lag_events: int | None, lag_seconds: float | None
    ) -> list[list[float]]:
        """Record the lag for the chart (at most one sample per step) and return the window."""
        history = self._history.setdefault(key, collections.deque())
        if lag_events is not None and (not history or now - history[-1][0] >= CHART_STEP_S):
            history.append((now, lag_events, lag_seconds or 0.0))
        while history and now - history[0][0] > CHART_WINDOW_S:
            history.popleft()
        return [[round(at, 1), count, seconds] for at, count, seconds in history]

    async def _subject(self, key: str, sha: str | None) -> str | None:
        """The subject line of a pushed commit, read from the target's clone once per SHA."""
        if not sha:
            return None
        if sha not in self._subjects:
            resolved = self.plane.state.targets.get(key)
            if resolved is None:
                return None
            path = clone_dir(
                self.state_dir,
                branch_key(resolved.provider.url, resolved.target.branch),
                resolved.provider.namespace,
            )
            subject = await asyncio.to_thread(_subject_in, path, sha)
            if subject is None:
                return None  # not fetched into the clone yet: looked up again next time
            self._subjects[sha] = subject
            while len(self._subjects) > SUBJECT_CACHE:
                self._subjects.popitem(last=False)
        return self._subjects[sha]

    async def _watches(self, problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
        watchers = {spec.key: watcher for spec, (watcher, _) in self.watches.watchers.items()}
        streams = []
        for row in await self.reader.streams():
            watcher = watchers.get(row.stream)
            error = masked(watcher.last_error if watcher else None)
            streams.append(
                {
                    "stream": row.stream,
                    "active": watcher is not None,
                    "seed_state": row.seed_state.value,
                    "resource_version": row.resource_version,
                    "relists": row.relists,
                    "last_error": error,
                }
            )
            if error:
                problems.append(
                    problem(WARNING, "Watch", row.stream, "Watching", "WatchFailing", error)
                )
        return streams


def _subject_in(clone: Path, sha: str) -> str | None:
    # Its own handle: commits are immutable, so reading one while the committer's thread
    # writes the clone is safe, and the status never waits for a push in flight.
    try:
        repository = pygit2.Repository(str(clone), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
        commit = repository.get(sha)
    except (pygit2.GitError, ValueError, KeyError, OSError):
        return None
    if not isinstance(commit, pygit2.Commit):
        return None
    return commit.message.splitlines()[0] if commit.message else ""


def _drift_entry(mode: str | None, progress: TargetProgress) -> dict[str, Any]:
    """What the drift checks of a target found (``mode`` None: the target is not running)."""
    drift = progress.drift
    return {
        "mode": mode,
        "last_check": rfc3339(drift.checked_at),
        "drifted": list(drift.drifted),
        "held": list(drift.held),
        "last_repair": rfc3339(drift.repaired_at),
        "repaired": list(drift.repaired),
        "error": masked(drift.error),
    }


def _target_problems(entry: Mapping[str, Any], progress: TargetProgress) -> list[dict[str, Any]]:
    name = entry["target"]
    found = []
    if not entry["ready"]:
        found.append(
            problem(
                ERROR,
                "GitTarget",
                name,
                entry["condition"],
                entry["reason"] or "Unknown",
                entry["message"] or "",
            )
        )
    for item in entry["conditions"]:
        abnormal = "True" if item.get("type") in ABNORMAL_TRUE else "False"
        if entry["ready"] and item.get("status") == abnormal:
            # A condition that does not decide readiness (quarantined objects, encryption
            # nobody asked for) but still says something is wrong.
            found.append(
                problem(
                    WARNING,
                    "GitTarget",
                    name,
                    str(item.get("type")),
                    str(item.get("reason")),
                    str(item.get("message")),
                )
            )
    keys = progress.encryption
    if keys is not None and keys.warning:
        found.append(
            problem(WARNING, "GitTarget", name, "EncryptionConfigured", "BackupKey", keys.warning)
        )
    encryption_ok = any(
        item.get("type") == "EncryptionConfigured" and item.get("status") == "True"
        for item in entry["conditions"]
    )
    if entry["secrets_skipped"] and encryption_ok:
        found.append(
            problem(
                WARNING,
                "GitTarget",
                name,
                "EncryptionConfigured",
                "SecretsSkipped",
                f"{entry['secrets_skipped']} Secret change(s) not written:"
                f" {entry['secret_problem'] or 'encryption failed'}",
            )
        )
    return found


def _resources(
    statuses: Mapping[tuple[str, str, str], Mapping[str, Any]], resource: str, kind: str
) -> list[dict[str, Any]]:
    found = []
    for (rtype, namespace, name), status in sorted(statuses.items()):
        if rtype != resource:
            continue
        ready, deciding = ready_condition(list(status.get("conditions") or []))
        found.append(
            {
                "kind": kind,
                "name": f"{namespace}/{name}" if namespace else name,
                "ready": ready,
                "reason": deciding.get("reason"),
                "message": deciding.get("message"),
                "since": deciding.get("lastTransitionTime"),
            }
        )
    return found


def _resource_problem(severity: str, item: Mapping[str, Any]) -> dict[str, Any]:
    return problem(
        severity,
        item["kind"],
        item["name"],
        "Ready",
        item["reason"] or "Unknown",
        item["message"] or "",
    )


async def journal_picture(reader: JournalReader, why: str) -> dict[str, Any]:
    """The picture when the daemon does not answer: what the journal alone can say.

    Targets come from the cursors (their lag is exact), watches from the streams; readiness,
    conditions and pushes are unknown, and the picture is never healthy.
    """
    now = time.time()
    targets = []
    for cursor in await reader.cursors():
        lag_events, oldest = await reader.lag(cursor.seq)
        targets.append(
            {
                "target": cursor.target,
                "ready": False,
                "condition": None,
                "reason": "DaemonUnreachable",
                "message": "unknown while the daemon does not answer",
                "since": None,
                "cursor": cursor.seq,
                "lag_events": lag_events,
                "lag_seconds": 0.0 if oldest is None else round(max(0.0, now - oldest), 1),
                "last_commit": None,
                "last_commit_subject": None,
                "last_push": rfc3339(cursor.updated_at),
                "last_error": None,
                "secrets_skipped": None,
                "quarantined": [],
                "drift": None,
                "conditions": [],
                "lag_history": [],
            }
        )
    watches = [
        {
            "stream": row.stream,
            "active": False,
            "seed_state": row.seed_state.value,
            "resource_version": row.resource_version,
            "relists": row.relists,
            "last_error": None,
        }
        for row in await reader.streams()
    ]
    return {
        "version": __version__,
        "role": "unknown",
        "generated_at": rfc3339(now),
        "uptime_seconds": None,
        "healthy": False,
        "api_server": {"reachable": None},
        "problems": [problem(ERROR, "Daemon", "reverserd", "Reachable", "DaemonUnreachable", why)],
        "journal": await reader.stats(),
        "targets": targets,
        "providers": [],
        "rules": [],
        "watches": watches,
    }


def masked(error: str | None) -> str | None:
    """An error as the page and /status show it: any URL in it with its password masked."""
    return None if error is None else redact(error)
