"""The picture as ``reverserd status`` prints it: a headline, the problems, then tables in the
style of ``kubectl get`` (upper-case headers, columns padded with spaces, no borders), worded
exactly as the page words it (:mod:`reverserd.web.format`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reverserd.web import format as fmt

# Columns are separated by this many spaces, as kubectl does.
GAP = 3


def columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append((" " * GAP).join(cells).rstrip())
    return "\n".join(lines)


def render_table(picture: Mapping[str, Any]) -> str:
    now = fmt.parse_time(picture.get("generated_at")) or 0.0
    problems = list(picture.get("problems") or [])
    errors = sum(1 for p in problems if p.get("severity") == "error")
    state = "healthy" if picture.get("healthy") else f"NOT HEALTHY ({errors} problem(s))"
    uptime = picture.get("uptime_seconds")
    headline = f"reverserd {picture.get('version', '?')}  role {picture.get('role', 'unknown')}"
    if uptime is not None:
        headline += f"  up {fmt.duration(uptime)}"
    parts = [f"{headline}  {state}"]
    for item in problems:
        parts.append(
            f"{str(item.get('severity', '')).upper()}  {item.get('kind')} {item.get('name')}:"
            f" {item.get('condition')} {item.get('reason')}: {item.get('message')}\n"
            f"       what to do: {item.get('advice')}"
        )
    targets = list(picture.get("targets") or [])
    parts.append(
        columns(
            [
                "TARGET",
                "READY",
                "REASON",
                "LAG",
                "OLDEST",
                "LAST COMMIT",
                "PUSHED",
                "DRIFTED",
                "REPAIRED",
                "SECRETS SKIPPED",
                "QUARANTINED",
            ],
            [
                [
                    str(t.get("target")),
                    "yes" if t.get("ready") else "no",
                    str(t.get("reason") or "-"),
                    fmt.number(t.get("lag_events")),
                    fmt.duration(t.get("lag_seconds")),
                    fmt.short_sha(t.get("last_commit")),
                    fmt.ago(t.get("last_push"), now),
                    str(len((t.get("drift") or {}).get("drifted") or [])),
                    fmt.ago((t.get("drift") or {}).get("last_repair"), now),
                    fmt.number(t.get("secrets_skipped")),
                    str(len(t.get("quarantined") or [])),
                ]
                for t in targets
            ],
        )
        if targets
        else "No GitTarget."
    )
    resources = [*(picture.get("providers") or []), *(picture.get("rules") or [])]
    if resources:
        parts.append(
            columns(
                ["KIND", "NAME", "READY", "REASON", "SINCE"],
                [
                    [
                        str(r.get("kind")),
                        str(r.get("name")),
                        "yes" if r.get("ready") else "no",
                        str(r.get("reason") or "-"),
                        fmt.ago(r.get("since"), now),
                    ]
                    for r in resources
                ],
            )
        )
    watches = list(picture.get("watches") or [])
    if watches:
        parts.append(
            columns(
                ["WATCH", "SEED", "RESUMES FROM", "RELISTS", "LAST ERROR"],
                [
                    [
                        str(w.get("stream")),
                        str(w.get("seed_state")),
                        str(w.get("resource_version") or "-"),
                        fmt.number(w.get("relists")),
                        fmt.text(w.get("last_error")),
                    ]
                    for w in watches
                ],
            )
        )
    journal = picture.get("journal") or {}
    parts.append(
        f"journal: {fmt.number(journal.get('events'))} events, "
        f"{fmt.number(journal.get('objects'))} objects, "
        f"seq {fmt.number(journal.get('first_seq'))} to {fmt.number(journal.get('last_seq'))}, "
        f"{fmt.size(journal.get('database_bytes'))}"
    )
    return "\n\n".join(parts) + "\n"
