"""The status picture's pure parts: how values are worded, how the page escapes and what the
CLI's table holds, which condition decides readiness, and how repeated warnings are held back."""

from __future__ import annotations

import re
from typing import Any

import pytest

from reverserd.logs import Throttle
from reverserd.web import format as fmt
from reverserd.web.page import render_page
from reverserd.web.table import render_table
from reverserd.web.view import GENERIC_ADVICE, advice_for, ready_condition

NOW = "2026-12-01T10:00:00Z"
NOW_UNIX = 1_796_119_200.0


def picture(**target: Any) -> dict[str, Any]:
    entry = {
        "target": "team-a/mirror",
        "ready": True,
        "condition": "Ready",
        "reason": "Ready",
        "message": "all gates are satisfied",
        "since": "2026-12-01T09:00:00Z",
        "repository": "https://git.example.com/org/repo.git",
        "branch": "main",
        "path": "live",
        "cursor": 10,
        "lag_events": 0,
        "lag_seconds": 0.0,
        "last_commit": "0123456789abcdef0123456789abcdef01234567",
        "last_commit_subject": "[CREATE] v1/configmaps/team-a/settings",
        "last_push": "2026-12-01T09:57:00Z",
        "last_error": None,
        "secrets_skipped": 0,
        "secret_problem": None,
        "quarantined": [],
        "drift": {
            "mode": "repair",
            "last_check": "2026-12-01T09:59:00Z",
            "drifted": ["live/v1/configmaps/team-a/edited.yaml"],
            "held": [],
            "last_repair": "2026-12-01T09:57:00Z",
            "repaired": ["live/v1/configmaps/team-a/a.yaml"],
            "error": None,
        },
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Ready",
                "message": "all gates are satisfied",
                "lastTransitionTime": "2026-12-01T09:00:00Z",
            }
        ],
        "lag_history": [[NOW_UNIX - 60, 5, 2.0], [NOW_UNIX, 2, 1.0]],
    }
    entry.update(target)
    return {
        "version": "1.2.3",
        "role": "leader",
        "generated_at": NOW,
        "uptime_seconds": 7384.0,
        "healthy": True,
        "api_server": {"reachable": True},
        "problems": [],
        "journal": {"events": 12345, "objects": 10, "first_seq": 1, "last_seq": 12345,
                    "cursors": 1, "database_bytes": 3 * 1024 * 1024},
        "targets": [entry],
        "providers": [],
        "rules": [],
        "watches": [],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(None, "-"), (0, "0 s"), (45.4, "45 s"), (192, "3 min 12 s"), (3600, "1 h"),
     (7500, "2 h 5 min"), (273_600, "3 d 4 h")],
)  # fmt: skip
def test_durations_read_as_people_say_them(seconds: float | None, words: str) -> None:
    assert fmt.duration(seconds) == words


def test_times_sizes_and_missing_values_have_words() -> None:
    now = fmt.parse_time(NOW)
    assert now is not None
    assert fmt.ago("2026-12-01T09:57:00Z", now) == "3 min ago"
    assert fmt.ago(None, now) == "never"
    assert fmt.absolute("2026-12-01T09:57:00Z") == "2026-12-01 09:57:00 UTC"
    assert fmt.size(512) == "512 B" and fmt.size(3 * 1024 * 1024) == "3.0 MiB"
    assert fmt.short_sha(None) == "never" and fmt.events(1) == "1 event"


def test_page_shows_a_healthy_target_for_people() -> None:
    page = render_page(picture())
    assert "<meta http-equiv='refresh'" in page and "<script" not in page
    assert "All healthy: 1 target ready" in page
    assert "<code>0123456</code> [CREATE] v1/configmaps/team-a/settings" in page
    assert "3 min ago" in page and "2026-12-01 09:57:00 UTC" in page
    assert "up 2 h 3 min" in page and "3.0 MiB" in page and "12,345" in page
    assert "<polyline" in page and "catching up" in page
    assert "live/v1/configmaps/team-a/edited.yaml" in page and "last repair 3 min ago" in page
    text = re.sub(r"<[^>]+>", " ", page.split("</style>", 1)[1])
    assert not re.search(r"\b(None|True|False)\b", text), text


def test_page_escapes_everything_it_shows() -> None:
    hostile = "<script>alert(1)</script>"
    unsafe = picture(
        target="team-a/<b>x</b>",
        ready=False,
        reason=hostile,
        message=f"message {hostile}",
        last_error=hostile,
        quarantined=[{"key": f"v1/configmaps/team-a/{hostile}", "reason": hostile}],
        last_commit_subject=hostile,
        branch="' onmouseover='alert(1)",
    )
    unsafe["problems"] = [
        {"severity": "error", "kind": "GitTarget", "name": hostile, "condition": "Ready",
         "reason": hostile, "message": hostile, "advice": hostile}
    ]  # fmt: skip
    page = render_page(unsafe)
    assert "<script" not in page and "<b>x</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "' onmouseover" not in page and "&#x27; onmouseover=&#x27;" in page
    assert "data-target='team-a/&lt;b&gt;x&lt;/b&gt;'" in page


def test_table_reads_like_kubectl_get() -> None:
    text = render_table(
        picture(quarantined=[{"key": "v1/configmaps/team-a/a", "reason": "r"}], secrets_skipped=2)
    )
    lines = text.splitlines()
    assert lines[0] == "reverserd 1.2.3  role leader  up 2 h 3 min  healthy"
    header = next(line for line in lines if line.startswith("TARGET"))
    row = lines[lines.index(header) + 1]
    assert re.split(r" {3,}", header) == [
        "TARGET", "READY", "REASON", "LAG", "OLDEST", "LAST COMMIT", "PUSHED",
        "DRIFTED", "REPAIRED", "SECRETS SKIPPED", "QUARANTINED",
    ]  # fmt: skip
    assert re.split(r" {3,}", row) == [
        "team-a/mirror", "yes", "Ready", "0", "0 s", "0123456", "3 min ago", "1", "3 min ago",
        "2", "1",
    ]  # fmt: skip
    assert header.index("READY") == row.index("yes"), "columns line up"


def test_ready_is_decided_by_the_first_gate_that_is_not_true() -> None:
    conditions = [
        {"type": "Ready", "status": "False", "reason": "KeyGenerationFailed", "message": "m"},
        {"type": "Validated", "status": "True", "reason": "Validated", "message": "ok"},
        {"type": "EncryptionConfigured", "status": "False", "reason": "KeyGenerationFailed",
         "message": "m"},
    ]  # fmt: skip
    ready, deciding = ready_condition(conditions)
    assert not ready and deciding["type"] == "EncryptionConfigured"
    ready, deciding = ready_condition([{"type": "Ready", "status": "True", "reason": "Ready"}])
    assert ready and deciding["type"] == "Ready"
    assert ready_condition([])[0] is False
    assert advice_for("NoRecipients") != GENERIC_ADVICE
    assert advice_for("SomethingNew") == GENERIC_ADVICE


def test_throttle_lets_one_warning_through_per_interval_and_counts_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr("reverserd.logs.time.monotonic", lambda: clock[0])
    throttle = Throttle(60.0, max_keys=2)
    assert throttle.allow("a") == 0
    assert throttle.allow("a") is None and throttle.allow("a") is None
    assert throttle.allow("b") == 0
    clock[0] += 61
    assert throttle.allow("a") == 2, "the next line says how many were held back"
    assert throttle.allow("c") == 0 and len(throttle._last) == 2


def test_banner_counts_problems_and_warnings_apart() -> None:
    warned = picture()
    warned["problems"] = [
        {"severity": "warning", "kind": "WatchRule", "name": "team-a/r", "condition": "Ready",
         "reason": "ResourceNotServed", "message": "m", "advice": "a"}
    ]  # fmt: skip
    page = render_page(warned)
    assert "class='banner warn'" in page and "Healthy, with 1 warning<ul>" in page
    warned["problems"].insert(0, {**warned["problems"][0], "severity": "error"})
    page = render_page(warned)
    assert "class='banner bad'" in page and "1 problem, 1 warning<ul>" in page
    assert page.count("Warning: <strong>") == 1
