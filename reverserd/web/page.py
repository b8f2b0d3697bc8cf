"""The ``/`` page: the picture of :mod:`reverserd.web.view` for a human in an incident.

It leads with a banner (all healthy, or each problem with the condition's message and what to
do), then one card per GitTarget, then providers, rules, the replicas and their buckets (in
sharded mode), watches and the journal. It is one
self-contained document: inline CSS and SVG, no script, no external asset, and it reloads
itself every :data:`REFRESH_S` seconds with a ``<meta http-equiv="refresh">``. Every value it
shows passes through :func:`html.escape`, so nothing a custom resource holds can become markup.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reverserd.web import format as fmt

# How often the page reloads itself: fresh enough to watch a backlog drain.
REFRESH_S = 10
# Size of the lag chart, in CSS pixels.
CHART_WIDTH, CHART_HEIGHT = 320, 64

STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1c1e21}
header,main{max-width:1100px;margin:0 auto;padding:0 16px}
header{padding-top:12px}h1{font-size:20px;margin:8px 0}h2{font-size:17px;margin:24px 0 8px}
.meta{color:#555}.banner{border-radius:6px;padding:12px 16px;margin:12px 0;font-weight:600}
.banner.ok{background:#dff5e3;border:1px solid #3b9a52}
.banner.bad{background:#fde2e1;border:1px solid #c0392b}
.banner.warn{background:#fff4d6;border:1px solid #c79100}
.banner ul{margin:6px 0 0;padding-left:20px;font-weight:400}.banner li{margin:4px 0}
.advice{color:#333;font-style:italic}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:12px}
.card{background:#fff;border-radius:6px;padding:12px 16px;border-left:6px solid #3b9a52}
.card.bad{border-left-color:#c0392b}.card h3{margin:0 0 4px;font-size:16px}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:13px;color:#fff}
.badge.ok{background:#3b9a52}.badge.bad{background:#c0392b}.badge.warn{background:#c79100}
dl{display:grid;grid-template-columns:150px 1fr;gap:2px 12px;margin:8px 0}dt{color:#555}
dd{margin:0;overflow-wrap:anywhere}code{font-size:13px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:14px}
td,th{padding:3px 8px;text-align:left;border-bottom:1px solid #e2e4e8;vertical-align:top}
th{background:#eceef1}.no{color:#c0392b;font-weight:600}.yes{color:#3b9a52}
svg{background:#fafbfc;border:1px solid #e2e4e8}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def render_page(picture: Mapping[str, Any]) -> str:
    now = fmt.parse_time(picture.get("generated_at")) or 0.0
    targets = list(picture.get("targets") or [])
    title = "reverserd: healthy" if picture.get("healthy") else "reverserd: PROBLEM"
    return "".join(
        [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            f"<meta http-equiv='refresh' content='{REFRESH_S}'>",
            "<meta name='viewport' content='width=device-width,initial-scale=1'>",
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
            "<header>",
            f"<h1>reverserd {esc(picture.get('version', ''))}</h1>",
            _meta(picture),
            _banner(picture, targets),
            "</header><main>",
            "<h2>Targets</h2>",
            "<div class='cards'>",
            "".join(_card(target, now) for target in targets) or "<p>No GitTarget yet.</p>",
            "</div>",
            _resources("Providers", picture.get("providers") or [], now),
            _resources("Rules", picture.get("rules") or [], now),
            _shards(picture.get("shards")),
            _watches(picture.get("watches") or []),
            _journal(picture.get("journal") or {}),
            "</main></body></html>",
        ]
    )


def _meta(picture: Mapping[str, Any]) -> str:
    uptime = picture.get("uptime_seconds")
    parts = [
        f"role <strong>{esc(picture.get('role', 'unknown'))}</strong>",
        f"up {esc(fmt.duration(uptime))}" if uptime is not None else "",
        f"updated {esc(fmt.absolute(picture.get('generated_at')))}",
        f"refreshes every {REFRESH_S} s",
    ]
    return f"<p class='meta'>{' · '.join(part for part in parts if part)}</p>"


def _banner(picture: Mapping[str, Any], targets: Sequence[Mapping[str, Any]]) -> str:
    problems = list(picture.get("problems") or [])
    errors = [p for p in problems if p.get("severity") == "error"]
    if not problems:
        behind = sum(t.get("lag_events") or 0 for t in targets)
        count = len(targets)
        return (
            "<div class='banner ok' role='status' id='banner'>All healthy: "
            f"{count} target{'' if count == 1 else 's'} ready, {esc(fmt.events(behind))}"
            " waiting to be pushed.</div>"
        )
    style = "bad" if errors else "warn"
    warnings = len(problems) - len(errors)
    counted = [
        f"{len(errors)} problem{'' if len(errors) == 1 else 's'}" if errors else "",
        f"{warnings} warning{'' if warnings == 1 else 's'}" if warnings else "",
    ]
    headline = ", ".join(part for part in counted if part)
    if not errors:
        headline = f"Healthy, with {headline}"
    items = "".join(
        "<li>"
        f"{'' if p.get('severity') == 'error' else 'Warning: '}"
        f"<strong>{esc(p.get('kind'))} {esc(p.get('name'))}</strong>: "
        f"{esc(p.get('condition'))} {esc(p.get('reason'))}: {esc(p.get('message'))}"
        f"<br><span class='advice'>What to do: {esc(p.get('advice'))}</span></li>"
        for p in problems
    )
    return (
        f"<div class='banner {style}' role='alert' id='banner'>{esc(headline)}"
        f"<ul>{items}</ul></div>"
    )


def _card(target: Mapping[str, Any], now: float) -> str:
    ready = bool(target.get("ready"))
    name = target.get("target", "")
    badge = "<span class='badge {}'>{}</span>".format(
        *(("ok", "Ready") if ready else ("bad", "Not ready"))
    )
    why = f"{target.get('reason') or ''}: {target.get('message') or ''}"
    if target.get("condition") and not ready:
        why = f"{target['condition']} {why}"
    since = target.get("since")
    if since:
        why += f" (since {fmt.ago(since, now)})"
    where = target.get("repository") or "repository unknown"
    branch = target.get("branch") or "?"
    path = target.get("path") or "(repository root)"
    commit = target.get("last_commit")
    commit_html = (
        f"<code>{esc(fmt.short_sha(commit))}</code> {esc(target.get('last_commit_subject') or '')}"
        if commit
        else fmt.NEVER
    )
    push = target.get("last_push")
    push_html = (
        f"{esc(fmt.ago(push, now))} <span class='meta'>({esc(fmt.absolute(push))})</span>"
        if push
        else fmt.NEVER
    )
    skipped = target.get("secrets_skipped")
    skipped_html = esc(fmt.number(skipped))
    if skipped and target.get("secret_problem"):
        skipped_html += f" <span class='meta'>({esc(target['secret_problem'])})</span>"
    quarantined = list(target.get("quarantined") or [])
    quarantined_html = (
        "<ul>"
        + "".join(
            f"<li><code>{esc(item.get('key'))}</code> {esc(item.get('reason') or '')}</li>"
            for item in quarantined
        )
        + "</ul>"
        if quarantined
        else fmt.NONE
    )
    rows = [
        ("Why", esc(why)),
        ("Writes to", f"{esc(where)} branch <code>{esc(branch)}</code> <code>{esc(path)}</code>"),
        ("Lag", _lag(target)),
        ("Last commit", commit_html),
        ("Pushed", push_html),
        ("Secrets skipped", skipped_html),
        ("Quarantined", quarantined_html),
        ("Drift", _drift(target.get("drift"), now)),
        ("Last error", esc(fmt.text(target.get("last_error")))),
    ]  # fmt: skip
    if "owner" in target:
        rows.insert(2, ("Written by", esc(target.get("owner") or "no replica yet")))
    body = "".join(f"<dt>{esc(label)}</dt><dd>{value}</dd>" for label, value in rows)
    return (
        f"<section class='card {'ok' if ready else 'bad'}' data-target='{esc(name)}'>"
        f"<h3>{esc(name)} {badge}</h3><dl>{body}</dl>"
        f"{_chart(target.get('lag_history') or [], now)}"
        f"{_conditions(target.get('conditions') or [], now)}</section>"
    )


def _drift(drift: Mapping[str, Any] | None, now: float) -> str:
    """The last drift check: when, which files, the last repair."""
    if not drift or drift.get("mode") in (None, "off"):
        return fmt.NONE
    checked = drift.get("last_check")
    parts = [f"mode <code>{esc(drift.get('mode'))}</code>, checked {esc(fmt.ago(checked, now))}"]
    drifted = list(drift.get("drifted") or [])
    if drifted:
        held = set(drift.get("held") or [])
        parts.append(
            "<ul>"
            + "".join(
                f"<li><code>{esc(path)}</code>{' (repair backed off)' if path in held else ''}</li>"
                for path in drifted
            )
            + "</ul>"
        )
    else:
        parts.append(", no drifted file")
    repaired = drift.get("last_repair")
    if repaired:
        count = len(drift.get("repaired") or [])
        parts.append(f"; last repair {esc(fmt.ago(repaired, now))} ({count} file(s))")
    return "".join(parts)


def _lag(target: Mapping[str, Any]) -> str:
    if target.get("lag_events") is None:
        return "not started: no cursor in the journal yet"
    return esc(
        f"{fmt.events(target['lag_events'])}, oldest waiting {fmt.duration(target['lag_seconds'])}"
    )


def _chart(history: Sequence[Sequence[float]], now: float) -> str:
    """Events waiting over the last minutes, as an inline SVG polyline."""
    if not history:
        return "<p class='meta'>Lag chart: no samples yet.</p>"
    first_at = history[0][0]
    span = max(now - first_at, 1.0)
    peak = max(max(sample[1] for sample in history), 1)
    points = []
    for at, count, _ in history:
        x = (at - first_at) / span * (CHART_WIDTH - 2) + 1
        y = CHART_HEIGHT - 1 - count / peak * (CHART_HEIGHT - 12)
        points.append(f"{x:.1f},{y:.1f}")
    trend = _trend(history)
    label = (
        f"Events waiting over the last {fmt.duration(span)}: now {history[-1][1]:,},"
        f" peak {peak:,}; {trend}"
    )
    shape = (
        f"<circle cx='{points[0].split(',')[0]}' cy='{points[0].split(',')[1]}' r='2'"
        " fill='#2f6fb0'/>"
        if len(points) == 1
        else "<polyline fill='none' stroke='#2f6fb0' stroke-width='2'"
        f" points='{' '.join(points)}'/>"
    )
    return (
        f"<figure style='margin:8px 0'><svg width='{CHART_WIDTH}' height='{CHART_HEIGHT}'"
        f" viewBox='0 0 {CHART_WIDTH} {CHART_HEIGHT}' role='img' aria-label='{esc(label)}'>"
        f"<title>{esc(label)}</title>"
        f"<text x='4' y='10' font-size='9' fill='#555'>{esc(f'{peak:,}')}</text>"
        f"<text x='{CHART_WIDTH - 4}' y='10' font-size='9' fill='#555' text-anchor='end'>"
        f"{esc(f'last {fmt.duration(span)}')}</text>{shape}</svg>"
        f"<figcaption class='meta'>{esc(label)}</figcaption></figure>"
    )


def _trend(history: Sequence[Sequence[float]]) -> str:
    if len(history) < 2:
        return "one sample so far"
    first, last = history[0][1], history[-1][1]
    if last == 0:
        return "caught up"
    if last < first:
        return "catching up"
    if last > first:
        return "falling behind"
    return "steady"


def _conditions(conditions: Iterable[Mapping[str, Any]], now: float) -> str:
    rows = "".join(
        "<tr>"
        f"<td>{esc(item.get('type'))}</td>"
        f"<td class='{_status_class(item.get('status'))}'>"
        f"{esc(_status_word(item.get('status')))}</td>"
        f"<td>{esc(item.get('reason'))}</td><td>{esc(item.get('message'))}</td>"
        f"<td>{esc(fmt.ago(item.get('lastTransitionTime'), now))}</td></tr>"
        for item in conditions
    )
    if not rows:
        return ""
    return (
        "<details><summary>Conditions</summary><table><tr><th>Condition</th><th>Status</th>"
        f"<th>Reason</th><th>Message</th><th>Since</th></tr>{rows}</table></details>"
    )


def _status_word(status: object) -> str:
    return {"True": "yes", "False": "no"}.get(str(status), "unknown")


def _status_class(status: object) -> str:
    return {"True": "yes", "False": "no"}.get(str(status), "")


def _resources(title: str, items: Sequence[Mapping[str, Any]], now: float) -> str:
    if not items:
        return ""
    rows = "".join(
        f"<tr><td>{esc(item.get('kind'))}</td><td>{esc(item.get('name'))}</td>"
        f"<td class='{'yes' if item.get('ready') else 'no'}'>"
        f"{'ready' if item.get('ready') else 'not ready'}</td>"
        f"<td>{esc(item.get('reason') or '')}: {esc(item.get('message') or '')}</td>"
        f"<td>{esc(fmt.ago(item.get('since'), now))}</td></tr>"
        for item in items
    )
    return (
        f"<h2>{esc(title)}</h2><table><tr><th>Kind</th><th>Name</th><th>Ready</th>"
        f"<th>Why</th><th>Since</th></tr>{rows}</table>"
    )


def _shards(shards: Mapping[str, Any] | None) -> str:
    """Sharded mode: which replica holds which bucket (nothing otherwise)."""
    if not shards:
        return ""
    holders: dict[str, list[str]] = {}
    for bucket, holder in (shards.get("holders") or {}).items():
        holders.setdefault(holder or "nobody", []).append(str(bucket))
    rows = "".join(
        f"<tr><td>{esc(holder)}</td><td>{esc(', '.join(buckets))}</td></tr>"
        for holder, buckets in sorted(holders.items())
    )
    return (
        f"<h2>Replicas</h2><p>This replica: <code>{esc(shards.get('replica'))}</code>, holding"
        f" buckets {esc(', '.join(map(str, shards.get('held') or [])) or 'none')} of"
        f" {esc(shards.get('buckets'))}; live replicas:"
        f" {esc(', '.join(shards.get('members') or []))}.</p>"
        f"<table><tr><th>Replica</th><th>Buckets</th></tr>{rows}</table>"
    )


def _watches(watches: Sequence[Mapping[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{esc(w.get('stream'))}</td>"
        f"<td>{'watching' if w.get('active') else 'stopped'}</td>"
        f"<td>{esc(w.get('seed_state'))}</td>"
        f"<td><code>{esc(w.get('resource_version') or '-')}</code></td>"
        f"<td>{esc(fmt.number(w.get('relists')))}</td>"
        f"<td>{esc(fmt.text(w.get('last_error')))}</td></tr>"
        for w in watches
    )
    return (
        "<h2>Watches</h2><table><tr><th>Stream</th><th>State</th><th>Seed</th>"
        "<th>Resumes from</th><th>Re-lists</th><th>Last error</th></tr>"
        f"{rows or '<tr><td colspan=6>no watch yet</td></tr>'}</table>"
    )


def _journal(journal: Mapping[str, Any]) -> str:
    rows = [
        ("Events", fmt.number(journal.get("events"))),
        ("Objects", fmt.number(journal.get("objects"))),
        ("Sequence", f"{fmt.number(journal.get('first_seq'))} to "
         f"{fmt.number(journal.get('last_seq'))}"),
        ("Targets with a cursor", fmt.number(journal.get("cursors"))),
        ("Size on disk", fmt.size(journal.get("database_bytes"))),
    ]  # fmt: skip
    body = "".join(f"<dt>{esc(label)}</dt><dd>{esc(value)}</dd>" for label, value in rows)
    return f"<h2>Journal</h2><dl>{body}</dl>"
