"""The status an on-call engineer reads: ``/`` in a real browser, ``reverserd status`` and its exit
codes, and the agreement of ``/status``, ``/``, the CLI, the metrics and the custom resources'
conditions for every failure the test bed can drive."""

from __future__ import annotations

import html
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from testbed.browser import dump_dom, screenshot, visible_text
from testbed.controlplane import ControlPlane
from testbed.gitservers import (
    GitHttpServer,
    branch_tip,
    install_hook,
    log,
    push_foreign_commit,
    read_tree,
)
from testbed.harness import (
    Reverserd,
    apply,
    conditions,
    create_git_credentials,
    subjects,
    wait_condition,
    wait_for_subjects,
    wait_synced,
    wait_until,
)
from testbed.manifests import configmap, git_target, mirror_setup, secret, watch_rule
from testbed.tools import REPO_ROOT, ensure_encryption_tools
from tests.conftest import Cleanup, Remote
from tests.integration.test_operations import readiness

# Screenshots of the page are kept here for a human to look at (.gitignore covers it).
ARTIFACTS = REPO_ROOT / "test-artifacts"
# Words Python prints for its own values; none may reach a reader of the page.
PYTHON_WORDS = re.compile(r"\b(None|True|False|null|nan)\b")


def cards(dom: str) -> dict[str, tuple[str, str]]:
    """Target -> (``ok`` or ``bad``, the card's visible text), as Chromium parsed the page."""
    found = {}
    for match in re.finditer(
        r'<section class="card (ok|bad)" data-target="([^"]*)">(.*?)</section>', dom, re.S
    ):
        found[html.unescape(match.group(2))] = (match.group(1), visible_text(match.group(3)))
    return found


def banner(dom: str) -> tuple[str, str]:
    """(``ok``, ``warn`` or ``bad``, the banner's visible text)."""
    match = re.search(r'<div class="banner (ok|warn|bad)"[^>]*id="banner">(.*?)</div>', dom, re.S)
    assert match, dom[:2000]
    return match.group(1), visible_text(match.group(2))


def cli(daemon: Reverserd, *args: str) -> subprocess.CompletedProcess[str]:
    """``reverserd status`` of this tree against the daemon (or its journal when it is down)."""
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "reverserd",
            "status",
            "--url",
            daemon.url,
            "--state-dir",
            str(daemon.state_dir),
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=environment,
        timeout=60,
    )


def table_rows(output: str, header: str) -> dict[str, list[str]]:
    """Rows of one kubectl-style table of the CLI's output, by first column."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = re.split(r" {3,}", line.strip())
        rows[cells[0]] = cells
    return rows


def start_mirror(plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd) -> str:
    """A target mirroring one ConfigMap, synced; returns its key."""
    apply(plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    apply(plane, configmap(namespace, "settings"))
    daemon.start()
    wait_synced(plane, namespace, daemon=daemon)
    return f"{namespace}/mirror"


@pytest.fixture
def keyless_daemon(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Reverserd]:
    """A daemon (not started) whose age-keygen cannot run: encryption keys cannot be made."""
    tools = ensure_encryption_tools()
    missing = tmp_path / "no-age-keygen"
    process = Reverserd(
        control_plane,
        tmp_path / "state",
        ["--sops-path", str(tools / "sops"), "--age-keygen-path", str(missing)],
    )
    yield process
    process.ensure_stopped()


def test_page_in_a_browser_leads_with_the_banner_then_one_card_per_target(
    control_plane: ControlPlane,
    cleanup: Cleanup,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
) -> None:
    target = start_mirror(control_plane, namespace, remote, daemon)
    wait_until(lambda: daemon.status()["healthy"], describe=lambda: json.dumps(daemon.status()))

    dom = dump_dom(daemon.url + "/")
    style, text = banner(dom)
    assert style == "ok" and text.startswith("All healthy: 1 target ready"), text
    assert 'http-equiv="refresh"' in dom and "<script" not in dom
    assert not re.search(r'(src|href)="https?://', dom), "the page loads nothing from outside"
    (state, card) = cards(dom)[target]
    assert state == "ok"
    tip = branch_tip(remote.path, "main")
    assert tip is not None
    assert f"Last commit {tip[:7]} reconcile: sync 1 resources" in card, card
    assert re.search(r"Pushed (just now|\d+ s ago) \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)", card)
    assert "Lag 0 events" in card and "Secrets skipped 0" in card and "Quarantined none" in card
    assert "Last error none" in card
    assert re.search(r"<svg[^>]*>.*?<(polyline|circle) ", dom, re.S), "the lag chart is drawn"

    # A GitTarget whose branch is markup: refused, named in the banner, and shown as text.
    hostile = "<img src=x onerror=alert(1)>"
    bad = git_target(namespace, "hostile", "mirror", "other", branch="main")
    bad["spec"]["branch"] = hostile
    apply(control_plane, bad)
    wait_until(lambda: not daemon.status()["healthy"], describe=lambda: str(daemon.status()))
    dom = dump_dom(daemon.url + "/")
    style, text = banner(dom)
    assert style == "bad" and text.startswith("1 problem"), text
    assert f"GitTarget {namespace}/hostile" in text and "What to do:" in text
    assert "<img" not in dom and "&lt;img src=x" in dom
    state, card = cards(dom)[f"{namespace}/hostile"]
    assert state == "bad" and "Not ready" in card
    assert not PYTHON_WORDS.search(visible_text(dom)), visible_text(dom)

    ARTIFACTS.mkdir(exist_ok=True)
    shot = screenshot(daemon.url + "/", ARTIFACTS / "status-page.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_cli_prints_the_picture_as_a_table_and_exits_with_the_health(
    control_plane: ControlPlane,
    cleanup: Cleanup,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
) -> None:
    target = start_mirror(control_plane, namespace, remote, daemon)
    wait_until(lambda: cli(daemon).returncode == 0, describe=lambda: cli(daemon).stdout)
    healthy = cli(daemon)
    assert "healthy" in healthy.stdout.splitlines()[0]
    row = table_rows(healthy.stdout, "TARGET")[target]
    tip = branch_tip(remote.path, "main")
    assert tip is not None
    assert row[1:4] == ["yes", "Ready", "0"] and row[5] == tip[:7], row
    assert not PYTHON_WORDS.search(healthy.stdout), healthy.stdout
    as_json = json.loads(cli(daemon, "-o", "json").stdout)
    assert as_json["healthy"] is True
    assert [t["target"] for t in as_json["targets"]] == [target]

    # Not healthy: a GitTarget without its provider; exit 1, and the table says why.
    apply(
        control_plane,
        git_target(namespace, "orphan", "nowhere", "orphan"),
        watch_rule(namespace, "orphan", "orphan", [{"resources": ["configmaps"]}]),
    )
    wait_until(lambda: cli(daemon).returncode == 1, describe=lambda: cli(daemon).stdout)
    broken = cli(daemon)
    assert "NOT HEALTHY (1 problem(s))" in broken.stdout
    assert f"ERROR  GitTarget {namespace}/orphan: Validated GitProviderNotFound" in broken.stdout
    assert "what to do: Create the GitProvider" in broken.stdout
    assert table_rows(broken.stdout, "TARGET")[f"{namespace}/orphan"][1:3] == [
        "no",
        "GitProviderNotFound",
    ]

    # Daemon down: exit 3, and what the journal alone says (the target's cursor and lag).
    daemon.stop()
    down = cli(daemon)
    assert down.returncode == 3, down
    assert "DaemonUnreachable" in down.stdout
    assert table_rows(down.stdout, "TARGET")[target][3] == "0"


# -- the agreement of every view with the conditions -----------------------------------------


def metric_value(daemon: Reverserd, name: str, **labels: str) -> float | None:
    """A sample's value, or None when ``/metrics`` has no such sample."""
    body = (daemon.get("/metrics") or b"").decode()
    for line in body.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def views(daemon: Reverserd) -> tuple[dict[str, Any], str, subprocess.CompletedProcess[str]]:
    return daemon.status(), dump_dom(daemon.url + "/"), cli(daemon)


def agree(
    plane: ControlPlane, daemon: Reverserd, kind: str, namespace: str, name: str
) -> tuple[bool, str] | None:
    """(ready, reason) when /status, the page, the CLI, the metrics and the resource's Ready
    condition all say the same about one GitTarget or GitProvider, else None."""
    ready_condition = conditions(plane, kind.lower(), namespace, name).get("Ready")
    if ready_condition is None:
        return None
    ready, reason = ready_condition["status"] == "True", ready_condition["reason"]
    status, dom, table = views(daemon)
    key = f"{namespace}/{name}"
    if kind == "GitTarget":
        entry = next((t for t in status["targets"] if t["target"] == key), None)
        gauge = metric_value(daemon, "reverserd_target_ready", target=key)
        card = cards(dom).get(key)
        page_says = card is not None and (card[0] == "ok") == ready and reason in card[1]
        row = table_rows(table.stdout, "TARGET").get(key)
    else:
        entry = next((p for p in status["providers"] if p["name"] == key), None)
        gauge = metric_value(daemon, "reverserd_provider_ready", provider=key)
        row_match = re.search(
            rf"<td>GitProvider</td><td>{re.escape(key)}</td><td[^>]*>(ready|not ready)</td>"
            r"<td>([^<:]*):",
            dom,
        )
        page_says = row_match is not None and (row_match.group(1) == "ready") == ready
        page_says = page_says and row_match is not None and row_match.group(2) == reason
        rows = [
            re.split(r" {3,}", line.strip())[1:]
            for line in table.stdout.splitlines()
            if re.match(rf"GitProvider +{re.escape(key)} ", line)
        ]
        row = rows[0] if rows else None
    if entry is None or row is None or gauge is None:
        return None
    says = (
        entry["ready"] == ready
        and entry["reason"] == reason
        and gauge == (1.0 if ready else 0.0)
        and page_says
        and row[1:3] == ["yes" if ready else "no", reason]
    )
    problem_listed = any(p["name"] == key for p in status["problems"] if p["severity"] == "error")
    in_banner = f"{kind} {key}" in banner(dom)[1]
    if says and problem_listed == (not ready) == in_banner:
        exit_matches = (table.returncode == 0) == status["healthy"]
        return (ready, reason) if exit_matches else None
    return None


def wait_agreed(
    plane: ControlPlane,
    daemon: Reverserd,
    kind: str,
    namespace: str,
    name: str,
    ready: bool,
    reason: str,
) -> None:
    wait_until(
        lambda: agree(plane, daemon, kind, namespace, name) == (ready, reason),
        timeout=90,
        describe=lambda: (
            f"conditions {conditions(plane, kind.lower(), namespace, name)};"
            f" status {json.dumps(daemon.status())}; log {daemon.log_tail()}"
        ),
    )


@pytest.fixture
def private_git(tmp_path: Path) -> Iterator[GitHttpServer]:
    """A Git server of this test alone, so it may be stopped."""
    server = GitHttpServer(tmp_path / "git-private")
    server.start()
    yield server
    server.stop()


def test_every_view_agrees_with_the_conditions_for_each_failure(
    control_plane: ControlPlane,
    cleanup: Cleanup,
    namespace: str,
    git_http: GitHttpServer,
    private_git: GitHttpServer,
    keyless_daemon: Reverserd,
) -> None:
    daemon = keyless_daemon
    # A healthy target on a Git server this test may stop.
    repo = private_git.create_bare_repo("agree")
    creds = create_git_credentials(control_plane, namespace, private_git)
    apply(control_plane, *mirror_setup(namespace, private_git.url("agree"), secret=creds))
    daemon.start()
    wait_agreed(control_plane, daemon, "GitTarget", namespace, "mirror", True, "Ready")
    wait_agreed(control_plane, daemon, "GitProvider", namespace, "mirror", True, "Ready")

    # Encryption failing: age-keygen cannot run, so the key cannot be generated.
    secret_ns = cleanup.new_namespace()
    git_http.create_bare_repo(f"enc-{secret_ns}")
    enc_creds = create_git_credentials(control_plane, secret_ns, git_http)
    manifests = mirror_setup(
        secret_ns,
        git_http.url(f"enc-{secret_ns}"),
        secret=enc_creds,
        rules=[{"resources": ["secrets", "configmaps"]}],
    )
    manifests[1]["spec"]["encryption"] = {
        "provider": "sops",
        "secretRef": {"name": "sops-age"},
        "age": {"enabled": True, "recipients": {"generateWhenMissing": True}},
    }
    apply(control_plane, *manifests)
    wait_agreed(
        control_plane, daemon, "GitTarget", secret_ns, "mirror", False, "KeyGenerationFailed"
    )
    # The Secret that was not written is counted, in /status and the metric, and logged.
    enc_key = f"{secret_ns}/mirror"
    wait_until(lambda: _entry(daemon, enc_key).get("secrets_skipped", 0) >= 1, timeout=60)
    skipped = metric_value(daemon, "reverserd_secrets_skipped_total", target=enc_key)
    assert skipped is not None and skipped >= 1
    apply(control_plane, secret(secret_ns, "db", {"password": "v1"}))
    apply(control_plane, secret(secret_ns, "db", {"password": "v2"}))
    apply(control_plane, configmap(secret_ns, "flows"))
    wait_until(lambda: _entry(daemon, enc_key).get("lag_events") == 0, timeout=60)
    warnings = [
        line
        for line in daemon.log_lines()
        if line.get("level") == "warning" and line.get("secret") == f"{secret_ns}/db"
    ]
    assert len(warnings) == 1, warnings  # two changes, one warning: rate-limited
    assert warnings[0]["message"].startswith(f"Secret {secret_ns}/db not written: ")
    assert "v1" not in json.dumps(warnings) and "v2" not in json.dumps(warnings)
    assert "cannot run" in warnings[0]["reason"]

    # Credentials wrong: the provider says so, and the target cannot start.
    wrong_ns = cleanup.new_namespace()
    git_http.create_bare_repo(f"wrong-{wrong_ns}")
    wrong = create_git_credentials(control_plane, wrong_ns, git_http, password="not-it")
    apply(control_plane, *mirror_setup(wrong_ns, git_http.url(f"wrong-{wrong_ns}"), secret=wrong))
    wait_agreed(control_plane, daemon, "GitProvider", wrong_ns, "mirror", False,
                "ConnectionFailed")  # fmt: skip
    # Ready names the refused credentials, not the connection the target waits for.
    wait_agreed(control_plane, daemon, "GitTarget", wrong_ns, "mirror", False,
                "ConnectionFailed")  # fmt: skip

    # Push refused for good: the server cannot create env/prod while a branch env exists.
    refused_ns = cleanup.new_namespace()
    refused_repo = git_http.create_bare_repo(f"refused-{refused_ns}")
    push_foreign_commit(refused_repo, "env", "README.md", b"environments\n", "start env")
    refused = create_git_credentials(control_plane, refused_ns, git_http)
    apply(
        control_plane,
        *mirror_setup(
            refused_ns, git_http.url(f"refused-{refused_ns}"), secret=refused, branch="env/prod"
        ),
        configmap(refused_ns, "refused"),
    )
    wait_agreed(control_plane, daemon, "GitProvider", refused_ns, "mirror", False, "PushRefused")
    # Its first snapshot never reaches the remote; Ready names why (the refusal), not the
    # snapshot gate that waits on it.
    wait_agreed(control_plane, daemon, "GitTarget", refused_ns, "mirror", False, "PushRefused")

    # A poison object: a person's file sits where its folder must be. It is quarantined, the
    # target stays ready, and every view names the object.
    held_ns = cleanup.new_namespace()
    held_repo = git_http.create_bare_repo(f"held-{held_ns}")
    held_creds = create_git_credentials(control_plane, held_ns, git_http)
    apply(control_plane, *mirror_setup(held_ns, git_http.url(f"held-{held_ns}"), secret=held_creds))
    wait_synced(control_plane, held_ns, daemon=daemon)
    folder = f"live-cluster/v1/configmaps/{held_ns}"
    push_foreign_commit(held_repo, "main", folder, b"a person's notes\n", "notes")
    apply(control_plane, configmap(held_ns, "blocked"))
    wait_condition(control_plane, "gittarget", held_ns, "mirror", "Quarantined", "True")
    held_key = f"{held_ns}/mirror"

    def quarantine_everywhere() -> bool:
        status, dom, table = views(daemon)
        entry = next(t for t in status["targets"] if t["target"] == held_key)
        keys = [item["key"] for item in entry["quarantined"]]
        warned = [p for p in status["problems"] if p["name"] == held_key]
        card = cards(dom).get(held_key, ("", ""))
        row = table_rows(table.stdout, "TARGET").get(held_key, [])
        return (
            len(keys) == 1
            and keys[0].endswith(f"configmaps/{held_ns}/blocked")
            and entry["ready"] is True
            and [(p["severity"], p["reason"]) for p in warned]
            == [("warning", "ObjectsQuarantined")]
            and card[0] == "ok"
            and f"Quarantined {keys[0]}" in card[1]
            and row[-1:] == ["1"]
            and metric_value(daemon, "reverserd_objects_quarantined", target=held_key) == 1.0
        )

    wait_until(quarantine_everywhere, timeout=60, describe=lambda: str(daemon.status()))

    # Provider unreachable: the Git server stops while a change waits to be pushed.
    private_git.stop()
    apply(control_plane, configmap(namespace, "during-outage"))
    wait_agreed(control_plane, daemon, "GitProvider", namespace, "mirror", False,
                "ConnectionFailed")  # fmt: skip
    assert f"[CREATE] v1/configmaps/{namespace}/during-outage" not in subjects(repo)
    private_git.start()
    wait_for_subjects(repo, daemon, f"[CREATE] v1/configmaps/{namespace}/during-outage")
    wait_agreed(control_plane, daemon, "GitProvider", namespace, "mirror", True, "Ready")

    # API server down: conditions cannot be read then; every view of the daemon says so.
    with control_plane.apiserver_down():

        def api_down_everywhere() -> bool:
            status, dom, table = views(daemon)
            reasons = {p["reason"] for p in status["problems"] if p["severity"] == "error"}
            return (
                "ApiServerUnreachable" in reasons
                and status["api_server"]["reachable"] is False
                and "APIServer kube-apiserver" in banner(dom)[1]
                and "ApiServerUnreachable" in table.stdout
                and table.returncode == 1
                and metric_value(daemon, "reverserd_api_server_reachable") == 0.0
                and readiness(daemon) == 503
            )

        wait_until(api_down_everywhere, timeout=60, describe=lambda: str(daemon.status()))
    wait_until(lambda: daemon.status()["api_server"]["reachable"], timeout=60)
    wait_agreed(control_plane, daemon, "GitTarget", namespace, "mirror", True, "Ready")


def test_a_first_sync_before_the_rules_came_does_not_count_once_they_are_there(
    control_plane: ControlPlane,
    cleanup: Cleanup,
    namespace: str,
    git_http: GitHttpServer,
    daemon: Reverserd,
) -> None:
    # The GitTarget alone syncs nothing and counts as synced; once its WatchRule selects a
    # ConfigMap whose first push the server refuses, it must no longer say so.
    repo = git_http.create_bare_repo(f"late-{namespace}")
    push_foreign_commit(repo, "env", "README.md", b"environments\n", "start env")
    creds = create_git_credentials(control_plane, namespace, git_http)
    provider, target, rule = mirror_setup(
        namespace, git_http.url(f"late-{namespace}"), secret=creds, branch="env/prod"
    )
    apply(control_plane, configmap(namespace, "settings"), provider, target)
    daemon.start()
    wait_condition(control_plane, "gittarget", namespace, "mirror", "SnapshotSynced", "True")

    apply(control_plane, rule)
    wait_agreed(control_plane, daemon, "GitProvider", namespace, "mirror", False, "PushRefused")
    wait_agreed(control_plane, daemon, "GitTarget", namespace, "mirror", False, "PushRefused")
    wait_condition(
        control_plane, "gittarget", namespace, "mirror", "SnapshotSynced", "False", "Syncing"
    )
    assert branch_tip(repo, "env/prod") is None


def test_a_first_sync_pushed_after_the_rules_changed_does_not_count_for_the_new_rules(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    tmp_path: Path,
) -> None:
    # The server holds every push until the test hands it a token, so the first sync under
    # the old rules is still on its way when the rules change, and lands before the new one.
    tokens = tmp_path / "push-tokens"
    tokens.mkdir()
    install_hook(
        remote.path,
        "pre-receive",
        "#!/bin/sh\nwhile :; do\n"
        f'  for token in {tokens}/*; do [ -e "$token" ] && rm "$token" && exit 0; done\n'
        "  sleep 0.1\ndone\n",
    )
    provider, target, rule = mirror_setup(namespace, remote.url, secret=remote.secret)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {"ports": [{"port": 80}]},
    }
    apply(control_plane, configmap(namespace, "settings"), service, provider, target, rule)
    daemon.start()
    key = f"{namespace}/mirror"

    def log_count(message: str, subject: str = "") -> int:
        return sum(
            1
            for line in daemon.log_lines()
            if line.get("message") == message and str(line.get("subject", "")).startswith(subject)
        )

    def reconciles() -> int:
        return log_count("Created commit", "reconcile")

    def synced() -> str | None:
        found = [
            c for c in _entry(daemon, key).get("conditions", []) if c["type"] == "SnapshotSynced"
        ]
        return found[0]["status"] if found else None

    wait_until(lambda: reconciles() == 1, describe=daemon.log_tail)
    rule["spec"]["rules"] = [{"resources": ["configmaps", "services"]}]
    apply(control_plane, rule)
    wait_until(lambda: log_count("started target consumer") == 2, describe=daemon.log_tail)
    assert synced() == "False"

    (tokens / "first").touch()  # the old rules' sync lands; the new one is held
    wait_until(lambda: branch_tip(remote.path, "main") is not None, describe=daemon.log_tail)
    wait_until(lambda: reconciles() == 2, describe=daemon.log_tail)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert synced() == "False", "a sync of the old rules marked the new ones synced"
        time.sleep(0.2)

    (tokens / "second").touch()
    wait_until(lambda: synced() == "True", describe=lambda: str(daemon.status()))
    assert f"live-cluster/v1/services/{namespace}/web.yaml" in read_tree(remote.path, "main")


def _entry(daemon: Reverserd, target: str) -> dict[str, Any]:
    """The target's row of /status; empty while a starting daemon does not list it yet."""
    return next((t for t in daemon.status()["targets"] if t["target"] == target), {})


def test_last_commit_and_push_survive_a_restart(
    control_plane: ControlPlane,
    cleanup: Cleanup,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
) -> None:
    target = start_mirror(control_plane, namespace, remote, daemon)
    apply(control_plane, configmap(namespace, "before-restart"))
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{namespace}/before-restart")
    wait_until(lambda: _entry(daemon, target).get("last_commit") == branch_tip(remote.path, "main"))
    pushed = log(remote.path, "main")
    daemon.stop()

    daemon.start()
    tip = branch_tip(remote.path, "main")
    entry = wait_until(
        lambda: (e := _entry(daemon, target)).get("last_commit") and e,
        describe=lambda: str(daemon.status()),
    )
    assert entry["last_commit"] == tip
    assert entry["last_commit_subject"] == f"[CREATE] v1/configmaps/{namespace}/before-restart"
    assert entry["last_push"] is not None
    assert log(remote.path, "main") == pushed, "the restart pushed nothing new"
    wait_condition(control_plane, "gittarget", namespace, "mirror", "Ready", "True")
    written = json.loads(
        control_plane.kubectl("get", "gittarget", "mirror", "-n", namespace, "-o", "json")
    )["status"]
    assert written["lastCommit"] == tip and written["lastPushTime"] == entry["last_push"]


def test_secrets_not_written_stay_counted_and_logged_across_a_restart(
    control_plane: ControlPlane,
    cleanup: Cleanup,
    namespace: str,
    remote: Remote,
    keyless_daemon: Reverserd,
) -> None:
    daemon = keyless_daemon
    manifests = mirror_setup(
        namespace, remote.url, secret=remote.secret, rules=[{"resources": ["secrets"]}]
    )
    manifests[1]["spec"]["encryption"] = {
        "secretRef": {"name": "sops-age"},
        "age": {"enabled": True, "recipients": {"generateWhenMissing": True}},
    }
    apply(control_plane, *manifests, secret(namespace, "db", {"password": "hidden"}))
    target = f"{namespace}/mirror"
    daemon.start()
    wait_until(
        lambda: _entry(daemon, target).get("secrets_skipped", 0) >= 2,
        describe=lambda: str(daemon.status()),
    )
    daemon.stop()
    since = len(daemon.log_lines())
    daemon.start()
    wait_condition(
        control_plane, "gittarget", namespace, "mirror", "Ready", "False",
        "KeyGenerationFailed",
    )  # fmt: skip
    # Both Secrets (the Git credentials and db) are still not written: counted and logged.
    entry = wait_until(
        lambda: (e := _entry(daemon, target)).get("secrets_skipped", 0) >= 2 and e,
        describe=lambda: str(daemon.status()),
    )
    assert entry["ready"] is False and entry["reason"] == "KeyGenerationFailed"
    skipped = metric_value(daemon, "reverserd_secrets_skipped_total", target=target)
    assert skipped is not None and skipped >= 2
    warned = {
        line.get("secret")
        for line in daemon.log_lines()[since:]
        if line.get("level") == "warning" and "not written" in line.get("message", "")
    }
    assert warned == {f"{namespace}/db", f"{namespace}/{remote.secret}"}


def test_a_standby_replica_is_healthy_and_says_it_is_standby(
    control_plane: ControlPlane, cleanup: Cleanup, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    args = ["--leader-elect", "--leader-election-namespace", "default",
            "--leader-election-id", f"reverserd-{namespace}"]  # fmt: skip
    leader = Reverserd(control_plane, tmp_path / "leader", args)
    standby = Reverserd(control_plane, tmp_path / "standby", args)
    try:
        target = start_mirror(control_plane, namespace, remote, leader)
        wait_until(lambda: leader.status()["healthy"], describe=lambda: str(leader.status()))
        standby.start()
        # The standby lists the targets once its informers have synced, a moment after it
        # knows its role.
        status = wait_until(
            lambda: (s := standby.status())["role"] == "standby" and s["targets"] and s,
            30,
            standby.log_tail,
        )
        assert status["healthy"] is True, status["problems"]
        assert [(p["severity"], p["reason"]) for p in status["problems"]] == [
            ("warning", "Standby")
        ]
        assert [t["target"] for t in status["targets"]] == [target]
        answer = cli(standby)
        assert answer.returncode == 0 and "role standby" in answer.stdout
        assert "WARNING  Replica this replica: Leader Standby" in answer.stdout
    finally:
        standby.ensure_stopped()
        leader.ensure_stopped()


def outside_address() -> str:
    """This machine's address on a non-loopback interface: a client connecting from it is, as
    far as the daemon can tell, another pod."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 9))  # a UDP connect sends nothing; it picks a route
        address: str = probe.getsockname()[0]
    assert not ipaddress.ip_address(address).is_loopback, address
    return address


def account_token(plane: ControlPlane, namespace: str, name: str) -> str:
    """A token of a new service account that no binding names yet."""
    plane.kubectl("create", "serviceaccount", name, "-n", namespace)
    return plane.kubectl("create", "token", name, "-n", namespace, "--duration=1h").strip()


def test_status_port_shows_tenants_only_to_readers_kubernetes_authorizes(
    control_plane: ControlPlane, cleanup: Cleanup, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    """From another address than loopback, /status, / and /metrics need a bearer token the
    API server accepts (401 otherwise) for a user it lets get that path (403 otherwise, even
    for an admin of a namespace), and neither answer holds any tenant's detail. With the
    ClusterRoles the chart and plain manifests ship, bound as documented, Prometheus scrapes
    /metrics (and nothing else) and a status reader gets /status and the page."""
    daemon = Reverserd(control_plane, tmp_path / "state")
    daemon.extra_args = ["--http-listen", f"0.0.0.0:{daemon.port}"]
    base = f"http://{outside_address()}:{daemon.port}"
    manifests = (REPO_ROOT / "packaging" / "manifests" / "reverserd.yaml").read_text()
    shipped = [
        doc
        for doc in yaml.safe_load_all(manifests)
        if doc and doc["kind"] == "ClusterRole" and doc["metadata"]["name"].endswith("-reader")
    ]
    assert {doc["metadata"]["name"] for doc in shipped} == {
        "reverserd-metrics-reader",
        "reverserd-status-reader",
    }

    def fetch(path: str, token: str | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(base + path)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    try:
        key = start_mirror(control_plane, namespace, remote, daemon)
        assert fetch("/healthz")[0] == 200
        assert fetch("/readyz")[0] == 200
        namespace_admin = control_plane.service_account_token(namespace, "namespace-admin")
        for path in ("/status", "/", "/metrics"):
            for token, refused in ((None, 401), ("made-up", 401), (namespace_admin, 403)):
                code, body = fetch(path, token)
                assert code == refused, (path, token, code)
                for detail in (namespace, remote.url, "gitopsreverser_"):
                    assert detail.encode() not in body, (path, detail)
        prometheus = account_token(control_plane, namespace, "prometheus")
        on_call = account_token(control_plane, namespace, "on-call")
        apply(control_plane, *shipped)
        for role, account in (("metrics", "prometheus"), ("status", "on-call")):
            control_plane.kubectl(
                "create",
                "clusterrolebinding",
                f"{namespace}-{account}",
                f"--clusterrole=reverserd-{role}-reader",
                f"--serviceaccount={namespace}:{account}",
            )

        def scrape() -> bytes | None:
            code, body = fetch("/metrics", prometheus)
            return body if code == 200 else None

        # A binding takes effect when the API server's authorizer has seen it.
        scraped = wait_until(scrape)
        families = {family.name for family in text_string_to_metric_families(scraped.decode())}
        assert "gitopsreverser_commits" in families
        assert fetch("/status", prometheus)[0] == 403
        code, body = fetch("/status", on_call)
        assert code == 200
        assert key in {entry["target"] for entry in json.loads(body)["targets"]}
        code, page = fetch("/", on_call)
        assert code == 200 and namespace.encode() in page
        assert fetch("/metrics", on_call)[0] == 403
    finally:
        daemon.ensure_stopped()
        for account in ("prometheus", "on-call"):
            control_plane.kubectl(
                "delete", "clusterrolebinding", f"{namespace}-{account}", "--ignore-not-found"
            )
        for doc in shipped:
            control_plane.kubectl(
                "delete", "clusterrole", doc["metadata"]["name"], "--ignore-not-found"
            )
