"""Prometheus metrics, named as gitops-reverser named them so existing dashboards keep working.

Semantics are honest (SPEC 8): counters count what happened, gauges go down as well as up, and
anything about Git counts what was pushed, not what was attempted.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_RECEIVED = Counter(
    "gitopsreverser_events_received_total",
    "Watch events received from the API server and journaled",
    ["resource"],
)
EVENTS_PROCESSED = Counter(
    "gitopsreverser_events_processed_total",
    "Journal events routed to a target (taken by its rules)",
    ["target"],
)
OBJECTS_WRITTEN = Counter(
    "gitopsreverser_objects_written_total",
    "Files created or changed in pushed commits",
    ["target"],
)
FILES_DELETED = Counter(
    "gitopsreverser_files_deleted_total",
    "Files removed in pushed commits",
    ["target"],
)
COMMITS = Counter(
    "gitopsreverser_commits_total",
    "Commits created (each is pushed or redone from the journal, never dropped)",
    ["target"],
)
GIT_OPERATIONS = Counter(
    "gitopsreverser_git_operations_total",
    "Pushes to a remote, by outcome",
    ["operation", "result"],
)
COMMIT_QUEUE = Gauge(
    "gitopsreverser_git_commit_queue_size",
    "Journal events routed to a target and not pushed yet",
    ["target"],
)
PUSH_DURATION = Histogram(
    "gitopsreverser_git_push_duration_seconds",
    "Duration of successful pushes",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
JOURNAL_EVENTS = Gauge("reverserd_journal_events", "Rows in the journal's events table")
JOURNAL_BYTES = Gauge("reverserd_journal_database_bytes", "Size of journal.db (without WAL)")
TARGET_LAG_EVENTS = Gauge(
    "reverserd_target_lag_events", "Journal events after the target's cursor", ["target"]
)
TARGET_LAG_SECONDS = Gauge(
    "reverserd_target_lag_seconds",
    "Age of the oldest journal event the target has not pushed yet",
    ["target"],
)
WATCH_RESTARTS = Counter(
    "reverserd_watch_restarts_total", "Watches reconnected after an error", ["resource"]
)
WATCH_RELISTS = Counter("reverserd_watch_relists_total", "Re-seeds after 410 Gone", ["resource"])
PUSH_FAILURES = Counter(
    "reverserd_push_failures_total", "Pushes that failed, by reason", ["reason"]
)
SECRETS_SKIPPED = Counter(
    "reverserd_secrets_skipped_total",
    "Secrets not written because they cannot be encrypted",
    ["target"],
)
TARGET_READY = Gauge(
    "reverserd_target_ready", "1 when the GitTarget's Ready condition is True, else 0", ["target"]
)
PROVIDER_READY = Gauge(
    "reverserd_provider_ready",
    "1 when the GitProvider's Ready condition is True, else 0",
    ["provider"],
)
API_SERVER_REACHABLE = Gauge(
    "reverserd_api_server_reachable", "1 when the API server answered the last probe, else 0"
)
STATUS_WRITES = Counter(
    "reverserd_status_writes_total", "Status writes to reverserd's own resources", ["kind"]
)
COMMITTER_RESTARTS = Counter(
    "reverserd_committer_restarts_total",
    "Committers that failed and were replaced by a fresh one",
    ["remote"],
)
TASK_RESTARTS = Counter(
    "reverserd_task_restarts_total",
    "Supervised tasks (consumers, watches, housekeeping) restarted after a failure",
    ["task"],
)
OBJECTS_QUARANTINED = Gauge(
    "reverserd_objects_quarantined",
    "Objects a target cannot write (see its Quarantined condition); retried when they change",
    ["target"],
)
EVENT_LOOP_LAG = Histogram(
    "reverserd_event_loop_lag_seconds",
    "How late a timer on the event loop fires: time the loop was blocked",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ATTRIBUTIONS = Counter(
    "reverserd_attributions_total",
    "Commits by attribution outcome: resolved (author is the user), unresolved (no fact within"
    " the grace window), ambiguous (facts of different users matched), and late (a fact that"
    " arrived after its change was committed unresolved)",
    ["outcome"],
)
ATTRIBUTION_FACTS = Counter(
    "reverserd_attribution_facts_total",
    "Attribution facts journaled, by source (audit, admission)",
    ["source"],
)
ATTRIBUTION_FACTS_DROPPED = Counter(
    "reverserd_attribution_facts_dropped_total",
    "Attribution facts dropped, oldest first, to keep the journal's facts table within its bound"
    " (a flood of facts, or a mirror far behind); changes they were for stay unresolved",
)
ATTRIBUTION_FORWARDS = Counter(
    "reverserd_attribution_forwards_total",
    "Attribution facts this replica received, forwarded to the other replicas of its sharded"
    " group: delivered (the peer stored them or had them), failed (a network error or 5xx) or"
    " refused (the peer answered 4xx: another secret, a clock far off, an address another"
    " replica now has), both retried and counted per fact and attempt",
    ["outcome"],
)
DRIFT_CHECKS = Counter(
    "reverserd_drift_checks_total",
    "Comparisons of a target's folder on the remote with what reverserd writes for live objects",
    ["target"],
)
DRIFTED_FILES = Gauge(
    "reverserd_drifted_files",
    "Files of live objects that the last drift check found changed, deleted or moved by someone"
    " else (see the target's Drifted condition)",
    ["target"],
)
DRIFT_REPAIRS = Counter(
    "reverserd_drift_repairs_total",
    "Repair commits pushed that restored drifted files of live objects",
    ["target"],
)
