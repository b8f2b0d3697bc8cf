"""Operating reverserd: leader election, shutdown, metrics and the HTTP surface, measured from
outside against real processes."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from testbed.controlplane import ControlPlane
from testbed.harness import (
    Reverserd,
    apply,
    subjects,
    tree,
    wait_for_subjects,
    wait_synced,
    wait_until,
)
from testbed.manifests import configmap, mirror_setup
from tests.conftest import Remote


def test_only_the_leader_writes_and_a_standby_takes_over_after_sigkill(
    control_plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    lease = f"reverserd-{namespace}"
    args = [
        "--leader-elect",
        "--leader-election-namespace",
        "default",
        "--leader-election-id",
        lease,
    ]
    first = Reverserd(control_plane, tmp_path / "first", args)
    second = Reverserd(control_plane, tmp_path / "second", args)
    try:
        apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
        first.start()
        wait_until(lambda: first.status()["role"] == "leader", 30, first.log_tail)
        wait_synced(control_plane, namespace, daemon=first)
        second.start()
        apply(control_plane, configmap(namespace, "before"))
        wait_for_subjects(remote.path, first, f"[CREATE] v1/configmaps/{namespace}/before")
        # The standby journals the change too; writing nothing is its choice, not its delay.
        wait_until(lambda: second.status()["journal"]["objects"] >= 1, 30, second.log_tail)
        assert second.status()["role"] == "standby"
        assert second.get("/readyz") is not None
        assert second.metric("gitopsreverser_commits_total") == 0
        assert second.metric("reverserd_status_writes_total") == 0

        first.kill()
        killed_at = time.monotonic()
        apply(control_plane, configmap(namespace, "after"))
        wait_until(lambda: second.status()["role"] == "leader", 40, second.log_tail)
        # Takeover needs the lease to expire (15 s) plus one retry period.
        assert time.monotonic() - killed_at < 25
        folder = f"live-cluster/v1/configmaps/{namespace}"
        # The change made while nobody led reaches Git, as its own commit or in the new
        # leader's reconcile commit.
        wait_until(lambda: f"{folder}/after.yaml" in tree(remote.path), describe=second.log_tail)
        apply(control_plane, configmap(namespace, "later"))
        # Replays come in journal order, before this later change: none may follow it.
        wait_for_subjects(remote.path, second, f"[CREATE] v1/configmaps/{namespace}/later")
        history = subjects(remote.path)
        repeated = {s: n for s, n in Counter(history).items() if n > 1 and "reconcile" not in s}
        assert repeated == {}, history
        assert history.count(f"[CREATE] v1/configmaps/{namespace}/before") == 1, history
        assert {f"{folder}/{name}.yaml" for name in ("before", "after", "later")} <= set(
            tree(remote.path)
        )
    finally:
        first.ensure_stopped()
        second.ensure_stopped()


def test_sigterm_stops_within_ten_seconds_and_loses_nothing(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(
        control_plane,
        *mirror_setup(namespace, remote.url, secret=remote.secret, interval="30s"),
    )
    daemon.start()
    wait_synced(control_plane, namespace)
    for index in range(10):
        apply(control_plane, configmap(namespace, f"cm-{index}"))
    # Committed in the clone but not pushed yet (push interval 30 s): SIGTERM must not lose
    # them.
    target = f"{namespace}/mirror"
    wait_until(lambda: daemon.metric("gitopsreverser_git_commit_queue_size", target=target) >= 10)
    assert daemon.stop() < 10
    assert subjects(remote.path) == [], "pushed before SIGTERM: the test proves nothing"
    daemon.start()
    expected = {f"[CREATE] v1/configmaps/{namespace}/cm-{index}" for index in range(10)}
    wait_until(
        lambda: expected <= set(subjects(remote.path)),
        timeout=90,
        describe=lambda: f"{subjects(remote.path)} {daemon.log_tail()}",
    )
    assert sorted(subjects(remote.path)) == sorted(expected)


def test_metrics_match_the_pushed_history(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_synced(control_plane, namespace)
    for index in range(5):
        apply(control_plane, configmap(namespace, f"m-{index}", {"v": "1"}))
    for index in range(3):
        apply(control_plane, configmap(namespace, f"m-{index}", {"v": "2"}))
    control_plane.kubectl("delete", "configmap", "m-4", "-n", namespace)
    wait_until(lambda: len(subjects(remote.path)) == 9, describe=lambda: str(subjects(remote.path)))
    target = f"{namespace}/mirror"
    wait_until(lambda: daemon.metric("gitopsreverser_git_commit_queue_size", target=target) == 0)
    assert daemon.metric("gitopsreverser_commits_total", target=target) == 9
    # Five creates (plus the README with the first), three updates; one delete.
    assert daemon.metric("gitopsreverser_objects_written_total", target=target) == 9
    assert daemon.metric("gitopsreverser_files_deleted_total", target=target) == 1
    pushes = daemon.metric("gitopsreverser_git_operations_total", result="success")
    assert 1 <= pushes <= 9
    assert daemon.metric("gitopsreverser_git_push_duration_seconds_count") == pushes
    assert daemon.metric("gitopsreverser_events_processed_total", target=target) == 9
    # The target's status (lastCommit) is written after the push, on the status writer's pace.
    row = wait_until(
        lambda: next(
            (r for r in daemon.status()["targets"] if r["target"] == target and r["last_commit"]),
            None,
        ),
        describe=lambda: str(daemon.status()["targets"]),
    )
    assert row["lag_events"] == 0
    status = daemon.status()
    assert all(w["seed_state"] == "complete" and w["resource_version"] for w in status["watches"])
    page = (daemon.get("/") or b"").decode()
    assert target in page and "Watches" in page


def test_readyz_fails_while_the_api_server_is_unreachable(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_until(lambda: readiness(daemon) == 200, describe=daemon.log_tail)
    # Synced first: a change made after the outage must come as its own commit, not in the
    # first reconcile.
    wait_synced(control_plane, namespace, daemon=daemon)
    with control_plane.apiserver_down():
        # Readiness re-probes the API server once its last answer is older than 10 s.
        wait_until(lambda: readiness(daemon) == 503, timeout=30, describe=daemon.log_tail)
        assert daemon.get("/healthz") == b"ok\n"
    wait_until(lambda: readiness(daemon) == 200, timeout=30, describe=daemon.log_tail)
    apply(control_plane, configmap(namespace, "after-outage"))
    wait_until(lambda: f"[CREATE] v1/configmaps/{namespace}/after-outage" in subjects(remote.path))


def readiness(daemon: Reverserd) -> int:
    """HTTP status of /readyz (0 when the daemon does not answer)."""
    try:
        with urllib.request.urlopen(daemon.url + "/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0
