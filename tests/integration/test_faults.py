"""Faults injected into a running reverserd: it heals from each one by itself and says so while
it lasts (DESIGN invariant 8, SCENARIOS H).

Each test breaks something real (the committer's clone on disk, the remote branch's layout, a
path a person occupied, a target's place) and asserts on the pushed branch, the journal and the
custom resources' status.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pygit2
import yaml

from testbed.controlplane import ControlPlane
from testbed.gitservers import GitHttpServer, install_hook, push_foreign_commit
from testbed.harness import (
    Reverserd,
    apply,
    conditions,
    create_git_credentials,
    create_many,
    cursor_seq,
    later_change,
    logged_by_reverserd,
    query_journal,
    subjects,
    target_report,
    tree,
    wait_condition,
    wait_for_subjects,
    wait_synced,
    wait_until,
)
from testbed.manifests import (
    configmap,
    crd,
    custom_object,
    git_target,
    mirror_setup,
    podtemplate,
)
from testbed.tuned import interpreter_args as tuned
from tests.conftest import Cleanup, Remote


def cm_subject(operation: str, namespace: str, name: str) -> str:
    return f"[{operation}] v1/configmaps/{namespace}/{name}"


@contextmanager
def own_server(
    plane: ControlPlane, namespace: str, tmp_path: Path, repo_name: str, *daemon_args: str
) -> Iterator[tuple[GitHttpServer, Path, Reverserd, dict[str, Any]]]:
    """A Git server of the test's own (to stop or freeze), a mirror onto it, and a daemon that
    has pushed one commit there; yields the server, its repository, the daemon and the
    GitProvider manifest."""
    server = GitHttpServer(tmp_path / f"git-{repo_name}")
    server.start()
    daemon = Reverserd(plane, tmp_path / "state", daemon_args)
    try:
        repo = server.create_bare_repo(repo_name)
        secret = create_git_credentials(plane, namespace, server)
        provider, *rest = mirror_setup(namespace, server.url(repo_name), secret=secret)
        apply(plane, provider, *rest)
        daemon.start()
        # Synced first, so "before" comes as its own commit, never in the reconcile commit.
        wait_synced(plane, namespace, daemon=daemon)
        apply(plane, configmap(namespace, "before"))
        wait_for_subjects(repo, daemon, cm_subject("CREATE", namespace, "before"))
        yield server, repo, daemon, provider
    finally:
        daemon.ensure_stopped()
        server.stop()


def the_clone(daemon: Reverserd) -> Path:
    clones = [path for path in (daemon.state_dir / "repos").iterdir() if path.is_dir()]
    assert len(clones) == 1, clones
    return clones[0]


def test_failed_committer_is_replaced_by_a_fresh_one_and_loses_nothing(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    apply(control_plane, configmap(namespace, "before"))
    wait_for_subjects(remote.path, daemon, cm_subject("CREATE", namespace, "before"))

    # The clone's object store becomes unusable: every Git write of the committer raises.
    objects = the_clone(daemon) / "objects"
    saved = objects.with_name("objects.saved")
    objects.rename(saved)
    objects.write_text("not a directory\n")
    apply(control_plane, configmap(namespace, "during", {"v": "1"}))
    apply(control_plane, configmap(namespace, "during", {"v": "2"}))

    pushing = wait_condition(
        control_plane, "gittarget", namespace, "mirror", "Pushing", "False", "CommitterFailed"
    )
    assert "nothing is lost" in pushing["message"]
    ready = conditions(control_plane, "gittarget", namespace, "mirror")["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "CommitterFailed")
    provider = conditions(control_plane, "gitprovider", namespace, "mirror")["Ready"]
    assert (provider["status"], provider["reason"]) == ("False", "CommitterFailed")
    wait_until(lambda: daemon.metric("reverserd_committer_restarts_total") >= 2, timeout=30)
    assert daemon.process is not None and daemon.process.poll() is None

    objects.unlink()
    saved.rename(objects)
    expected = [
        cm_subject("CREATE", namespace, "before"),
        cm_subject("CREATE", namespace, "during"),
        cm_subject("UPDATE", namespace, "during"),
    ]
    wait_for_subjects(remote.path, daemon, *expected[1:], timeout=150)
    expected.append(later_change(control_plane, namespace, remote.path, daemon))
    assert subjects(remote.path) == expected
    wait_condition(control_plane, "gittarget", namespace, "mirror", "Ready", "True", timeout=60)
    assert b"v: '2'" in tree(remote.path)[f"live-cluster/v1/configmaps/{namespace}/during.yaml"]


def test_unexpected_exceptions_in_a_consumer_and_a_watch_show_and_heal(
    control_plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    # A bug, played by testbed.tuned: the first calls of each raise an exception nothing in
    # reverserd expects. The watch journals the first change, the consumer submits its commit:
    # neither runs before the ConfigMap below changes.
    target, stream = f"{namespace}/mirror", f"v1/configmaps@{namespace}"
    faults = {
        "reverserd.targets.consumer:TargetConsumer._submit_event": 3,
        "reverserd.watch.watcher:StreamWatcher._journal": 3,
    }
    daemon = Reverserd(control_plane, tmp_path / "state", interpreter_args=tuned(faults=faults))
    try:
        apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
        daemon.start()
        wait_synced(control_plane, namespace, daemon=daemon)
        apply(control_plane, configmap(namespace, "first", {"v": "1"}))

        def watch_entry() -> dict[str, Any]:
            return next(w for w in daemon.status()["watches"] if w["stream"] == stream)

        # Each failure shows while it lasts: the watch's first, then the consumer's.
        wait_until(
            lambda: "InjectedFault" in (watch_entry()["last_error"] or ""),
            describe=lambda: f"{watch_entry()}; {daemon.log_tail()}",
        )

        def target_error() -> str | None:
            report = target_report(daemon, target) or {}
            return report.get("last_error")

        wait_until(
            lambda: "InjectedFault" in (target_error() or ""),
            describe=lambda: f"{target_report(daemon, target)}; {daemon.log_tail()}",
        )

        # Both restart from the journal and their stored resourceVersion: nothing is lost or
        # committed twice, and the failures are counted.
        apply(control_plane, configmap(namespace, "first", {"v": "2"}))
        later = later_change(control_plane, namespace, remote.path, daemon)
        assert [s for s in subjects(remote.path) if not s.startswith("reconcile")] == [
            cm_subject("CREATE", namespace, "first"),
            cm_subject("UPDATE", namespace, "first"),
            later,
        ]
        assert b"v: '2'" in tree(remote.path)[f"live-cluster/v1/configmaps/{namespace}/first.yaml"]
        restarts = "reverserd_task_restarts_total"
        assert daemon.metric(restarts, task=f"watch {stream}") == 3
        assert daemon.metric(restarts, task=f"target {target}") == 3
        wait_until(lambda: target_error() is None)
        assert watch_entry()["last_error"] is None
        wait_condition(control_plane, "gittarget", namespace, "mirror", "Ready", "True")
    finally:
        daemon.ensure_stopped()


def test_push_refused_for_a_reason_a_fetch_cannot_fix_backs_off_and_says_why(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    # A branch "env" exists, so the server cannot create "env/prod" (a ref cannot be a file
    # and a folder at once): no fetch or rebuild ever changes that answer.
    push_foreign_commit(remote.path, "env", "README.md", b"environments\n", "start env")
    apply(
        control_plane,
        *mirror_setup(namespace, remote.url, secret=remote.secret, branch="env/prod"),
    )
    daemon.start()
    apply(control_plane, configmap(namespace, "refused"))

    pushing = wait_condition(
        control_plane, "gittarget", namespace, "mirror", "Pushing", "False", "PushRefused"
    )
    assert "fetch cannot fix" in pushing["message"]
    # Backoff, not a loop: each failed attempt announces a longer wait than the one before.
    retrying = re.compile(re.escape(logged_by_reverserd("failed, retrying in")) + r" (\d+) s")

    def announced() -> list[int]:
        found = (retrying.search(line["message"]) for line in daemon.log_lines())
        return [int(match.group(1)) for match in found if match]

    wait_until(lambda: len(announced()) >= 4, timeout=60, describe=daemon.log_tail)
    assert announced()[:4] == [1, 2, 4, 8], announced()
    attempts = daemon.metric(
        "gitopsreverser_git_operations_total", operation="push", result="rejected"
    )
    assert 4 <= attempts <= len(announced()) + 1, (attempts, announced())
    rebuilt = logged_by_reverserd("rebuilt on its tip")
    rebuilds = [line for line in daemon.log_lines() if rebuilt in line["message"]]
    assert rebuilds == []
    assert daemon.metric("reverserd_push_failures_total", reason="PushRefused") >= 1


def test_file_where_a_folder_must_be_quarantines_only_that_object(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    blocked = "blocked"
    rules = [{"resources": ["configmaps", "serviceaccounts"]}]
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret, rules=rules))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    # A person commits a file exactly where reverserd needs the namespace's ConfigMap folder.
    folder = f"live-cluster/v1/configmaps/{namespace}"
    push_foreign_commit(remote.path, "main", folder, b"a person's notes\n", "notes")
    apply(control_plane, configmap(namespace, blocked, {"v": "1"}))

    held = wait_condition(
        control_plane, "gittarget", namespace, "mirror", "Quarantined", "True", daemon=daemon
    )
    assert f"configmaps/{namespace}/{blocked}" in held["message"]
    assert "not a folder" in held["message"]
    target = f"{namespace}/mirror"
    rows = query_journal(daemon, "SELECT name FROM quarantine WHERE target = ?", (target,))
    assert [row[0] for row in rows] == [blocked]
    wait_until(lambda: daemon.metric("reverserd_objects_quarantined", target=target) == 1)
    ready = conditions(control_plane, "gittarget", namespace, "mirror")["Ready"]
    assert ready["status"] == "True"

    # Every other object keeps flowing through the same target and branch.
    apply(control_plane, service_account(namespace, "flowing"))
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/serviceaccounts/{namespace}/flowing")
    assert tree(remote.path)[folder] == b"a person's notes\n"

    # The person removes the file; the object's next change is written, its quarantine ends.
    remove_on_server(remote.path, folder)
    apply(control_plane, configmap(namespace, blocked, {"v": "2"}))
    wait_until(
        lambda: f"{folder}/{blocked}.yaml" in tree(remote.path),
        timeout=60,
        describe=daemon.log_tail,
    )
    wait_condition(control_plane, "gittarget", namespace, "mirror", "Quarantined", "False")
    wait_until(lambda: not query_journal(daemon, "SELECT name FROM quarantine"))
    assert b"v: '2'" in tree(remote.path)[f"{folder}/{blocked}.yaml"]


def test_quarantined_object_is_written_by_the_periodic_retry_once_its_path_is_free(
    control_plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    # The retry runs every QUARANTINE_RETRY_S (a minute); shortened here, not waited for.
    retry = {"reverserd.targets.consumer.QUARANTINE_RETRY_S": 2.0}
    daemon = Reverserd(control_plane, tmp_path / "state", interpreter_args=tuned(retry))
    try:
        apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
        daemon.start()
        wait_synced(control_plane, namespace, daemon=daemon)
        folder = f"live-cluster/v1/configmaps/{namespace}"
        push_foreign_commit(remote.path, "main", folder, b"a person's notes\n", "notes")
        apply(control_plane, configmap(namespace, "blocked"))
        wait_condition(
            control_plane, "gittarget", namespace, "mirror", "Quarantined", "True", daemon=daemon
        )

        # The person frees the path; the object itself never changes again.
        remove_on_server(remote.path, folder)
        wait_until(
            lambda: f"{folder}/blocked.yaml" in tree(remote.path),
            describe=lambda: f"{subjects(remote.path)}; {daemon.log_tail()}",
        )
        wait_condition(control_plane, "gittarget", namespace, "mirror", "Quarantined", "False")
        changes = query_journal(
            daemon,
            "SELECT kind FROM events WHERE namespace = ? AND name = 'blocked'",
            (namespace,),
        )
        assert changes == [("CREATE",)]
    finally:
        daemon.ensure_stopped()


def service_account(namespace: str, name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace},
    }


def remove_on_server(repo_path: Path, path: str) -> None:
    """Play a person deleting ``path`` from the branch on the server."""
    repo = pygit2.Repository(str(repo_path))
    tip = repo.references["refs/heads/main"].peel(pygit2.Commit)
    index = pygit2.Index()
    index.read_tree(tip.tree)
    index.remove(path)
    person = pygit2.Signature("A Person", "person@example.com")
    repo.create_commit(
        "refs/heads/main", person, person, "remove notes", index.write_tree(repo), [tip.id]
    )


def test_target_whose_path_changes_syncs_the_new_folder_and_leaves_the_old_one(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    apply(control_plane, configmap(namespace, "one"), configmap(namespace, "two"))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    old = {p: c for p, c in tree(remote.path).items() if p.startswith("live-cluster/")}
    assert f"live-cluster/v1/configmaps/{namespace}/one.yaml" in old
    before = len(subjects(remote.path))

    apply(control_plane, git_target(namespace, "mirror", "mirror", "moved"))
    wait_until(
        lambda: f"moved/v1/configmaps/{namespace}/two.yaml" in tree(remote.path),
        describe=daemon.log_tail,
    )
    apply(control_plane, configmap(namespace, "three"))
    wait_for_subjects(remote.path, daemon, cm_subject("CREATE", namespace, "three"))
    files = tree(remote.path)
    assert {p: c for p, c in files.items() if p.startswith("live-cluster/")} == old
    assert f"moved/v1/configmaps/{namespace}/three.yaml" in files
    new_commits = subjects(remote.path)[before:]
    assert new_commits[0].startswith("reconcile: sync")
    assert new_commits[1:] == [cm_subject("CREATE", namespace, "three")]


def test_deleted_target_keeps_no_cursor_even_with_a_shared_committer(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    second = mirror_setup(namespace, remote.url, secret=remote.secret, path="second", name="second")
    apply(control_plane, *second)
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    wait_synced(control_plane, namespace, "second", daemon=daemon)
    for index in range(20):
        apply(control_plane, configmap(namespace, f"c{index}"))
    control_plane.kubectl("delete", "gittarget", "second", "-n", namespace)
    apply(control_plane, configmap(namespace, "after"))
    wait_for_subjects(remote.path, daemon, cm_subject("CREATE", namespace, "after"))
    # The push is on the server before its cursors are written: wait for the cursor of "after".
    (after_seq,) = query_journal(
        daemon, "SELECT max(seq) FROM events WHERE namespace = ? AND name = 'after'", (namespace,)
    )[0]
    wait_until(lambda: (cursor_seq(daemon, f"{namespace}/mirror") or 0) >= after_seq)
    targets = [row[0] for row in query_journal(daemon, "SELECT target FROM cursors")]
    assert f"{namespace}/second" not in targets
    assert f"{namespace}/mirror" in targets
    leftovers = query_journal(
        daemon, "SELECT COUNT(*) FROM target_files WHERE target = ?", (f"{namespace}/second",)
    )
    assert leftovers[0][0] == 0


def test_event_loop_lag_is_measured_while_the_daemon_works(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    lag = "reverserd_event_loop_lag_seconds"
    count_before, sum_before = daemon.metric(f"{lag}_count"), daemon.metric(f"{lag}_sum")

    # Work for the loop: 300 ConfigMaps of 16 KB to journal, render, commit and push.
    names = [f"load-{index:03d}" for index in range(300)]
    create_many(
        control_plane, [configmap(namespace, n, {"blob": n * 2000}) for n in names], "configmaps"
    )
    folder = f"live-cluster/v1/configmaps/{namespace}"
    wait_until(
        lambda: {f"{folder}/{n}.yaml" for n in names} <= set(tree(remote.path)),
        timeout=120,
        describe=daemon.log_tail,
    )

    # The sampler kept running through the load (which a fast machine finishes within a second:
    # its samples go on after it), and measured real lateness, not a constant.
    wait_until(lambda: daemon.metric(f"{lag}_count") - count_before >= 4, 10, daemon.log_tail)
    assert daemon.metric(f"{lag}_sum") > sum_before
    assert daemon.metric(f"{lag}_bucket", le="+Inf") == daemon.metric(f"{lag}_count")


def test_sigkill_after_the_server_took_a_push_commits_every_change_once(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    tmp_path: Path,
) -> None:
    # The push waits until three commits are pending (the interval never passes in the test):
    # it carries a create and two updates of one object. Replayed from the cursor, they would
    # write the older versions again, so only knowing those commits are its own keeps them
    # from being committed twice.
    provider, target, rule = mirror_setup(
        namespace, remote.url, secret=remote.secret, interval="1h", max_commits=3
    )
    apply(control_plane, provider, target, rule)
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    # The server updates the branch, then runs post-receive, which waits for the test: the
    # push is accepted, but reverserd has not heard so when it is killed.
    release = tmp_path / "release"
    install_hook(
        remote.path,
        "post-receive",
        f"#!/bin/sh\nwhile [ ! -e {release} ]; do sleep 0.1; done\n",
    )
    for version in ("1", "2", "3"):
        apply(control_plane, configmap(namespace, "taken", {"v": version}))
    taken = [
        cm_subject("CREATE", namespace, "taken"),
        cm_subject("UPDATE", namespace, "taken"),
        cm_subject("UPDATE", namespace, "taken"),
    ]
    wait_for_subjects(remote.path, daemon, *taken)
    daemon.kill()
    release.touch()
    # Unheard: the cursor is still before the first of the three changes.
    target_key = f"{namespace}/mirror"
    (first_change,) = query_journal(
        daemon,
        "SELECT min(seq) FROM events WHERE namespace = ? AND name = 'taken'",
        (namespace,),
    )[0]
    cursor = query_journal(daemon, "SELECT seq FROM cursors WHERE target = ?", (target_key,))
    assert cursor[0][0] < first_change, (cursor, first_change)

    apply(control_plane, configmap(namespace, "taken", {"v": "4"}))
    apply(control_plane, mirror_setup(namespace, remote.url, secret=remote.secret)[0])
    daemon.start()
    apply(control_plane, configmap(namespace, "after"))
    wait_for_subjects(remote.path, daemon, cm_subject("CREATE", namespace, "after"))
    ours = [s for s in subjects(remote.path) if not s.startswith("reconcile")]
    assert ours == [
        *taken,
        cm_subject("UPDATE", namespace, "taken"),
        cm_subject("CREATE", namespace, "after"),
    ]
    assert b"v: '4'" in tree(remote.path)[f"live-cluster/v1/configmaps/{namespace}/taken.yaml"]


def test_foreign_commit_with_forged_trailers_does_not_move_the_resume_point(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    forged = f"notes\n\njournal-seq: 999999999\ntarget: {namespace}/mirror\n"
    push_foreign_commit(remote.path, "main", "notes.txt", b"hello\n", forged)
    # A restart computes the resume point again; a change while it is down must still come.
    daemon.stop()
    apply(control_plane, configmap(namespace, "after-forgery"))
    daemon.start()
    wait_for_subjects(remote.path, daemon, cm_subject("CREATE", namespace, "after-forgery"))
    assert f"live-cluster/v1/configmaps/{namespace}/after-forgery.yaml" in tree(remote.path)


def test_full_state_dir_says_so_loses_nothing_and_resumes_when_space_returns(
    control_plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    # The state dir is a small volume of its own; the daemon's log stays outside it.
    volume = tmp_path / "volume"
    volume.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(volume)], check=True)
    daemon = Reverserd(control_plane, volume)
    try:
        apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
        daemon.start()
        wait_synced(control_plane, namespace, daemon=daemon)
        apply(control_plane, configmap(namespace, "before"))
        wait_for_subjects(remote.path, daemon, cm_subject("CREATE", namespace, "before"))

        filler = volume / "filler"
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True, check=False
        )
        made = [f"full-{index}" for index in range(5)]
        for name in made:
            apply(control_plane, configmap(namespace, name, {"v": "x" * 2000}))

        failed = wait_condition(
            control_plane,
            "gittarget",
            namespace,
            "mirror",
            "Journal",
            "False",
            "JournalWriteFailed",
            daemon=daemon,
        )
        assert "full" in failed["message"], failed
        ready = conditions(control_plane, "gittarget", namespace, "mirror")["Ready"]
        assert (ready["status"], ready["reason"]) == ("False", "JournalWriteFailed")
        assert daemon.get("/readyz") is None
        assert any("journal transaction failed" in line["message"] for line in daemon.log_lines())
        assert daemon.process is not None and daemon.process.poll() is None

        filler.unlink()
        wait_for_subjects(
            remote.path, daemon, *(cm_subject("CREATE", namespace, n) for n in made), timeout=150
        )
        wait_condition(control_plane, "gittarget", namespace, "mirror", "Journal", "True")
        wait_condition(control_plane, "gittarget", namespace, "mirror", "Ready", "True")
        history = subjects(remote.path)
        assert all(history.count(cm_subject("CREATE", namespace, n)) == 1 for n in made), history
    finally:
        daemon.ensure_stopped()
        subprocess.run(["umount", "-l", str(volume)], check=False)


def test_git_server_that_never_answers_shows_in_status_and_recovers(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    with own_server(control_plane, namespace, tmp_path, "hung", "--git-timeout", "3") as (
        server,
        repo,
        daemon,
        _provider,
    ):
        with server.suspended():
            apply(control_plane, configmap(namespace, "while-hung"))
            hung = wait_condition(
                control_plane,
                "gittarget",
                namespace,
                "mirror",
                "Pushing",
                "False",
                "ConnectionFailed",
                daemon=daemon,
            )
            assert server.url("hung").split("//", 1)[1] in hung["message"]
            assert daemon.get("/healthz") is not None
        wait_for_subjects(repo, daemon, cm_subject("CREATE", namespace, "while-hung"), timeout=90)
        wait_condition(control_plane, "gittarget", namespace, "mirror", "Pushing", "True")
        assert subjects(repo).count(cm_subject("CREATE", namespace, "while-hung")) == 1


def test_watch_expired_while_running_deletes_only_the_files_of_objects_gone_in_the_gap(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    names = ("keep", "gone-a", "gone-b")
    create_many(control_plane, [podtemplate(namespace, n) for n in names], "podtemplates")
    rules = [{"resources": ["podtemplates"]}]
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret, rules=rules))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    folder = f"live-cluster/v1/podtemplates/{namespace}"
    assert {f"{folder}/{n}.yaml" for n in names} <= set(tree(remote.path))

    # The daemon is frozen while objects go and history is compacted: its watch resumes from
    # a resourceVersion the server no longer has (410), and only a fresh LIST tells what is gone.
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGSTOP)
    try:
        control_plane.kubectl("delete", "podtemplate", "gone-a", "gone-b", "-n", namespace)
        apply(control_plane, configmap(namespace, "unrelated"))
        control_plane.compact_etcd()
        control_plane.restart_apiserver()
    finally:
        daemon.process.send_signal(signal.SIGCONT)

    deletes = [f"[DELETE] v1/podtemplates/{namespace}/{n}" for n in ("gone-a", "gone-b")]
    wait_for_subjects(remote.path, daemon, *deletes, timeout=120)
    # Proof that no other delete is on its way: a later change comes after any of it.
    apply(control_plane, podtemplate(namespace, "later"))
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/podtemplates/{namespace}/later")
    files = tree(remote.path)
    assert f"{folder}/keep.yaml" in files
    assert not {f"{folder}/gone-a.yaml", f"{folder}/gone-b.yaml"} & set(files)
    relists = query_journal(
        daemon, "SELECT relists FROM streams WHERE stream LIKE ?", ("%podtemplates%",)
    )
    assert relists and relists[0][0] >= 1
    history = subjects(remote.path)
    assert all(history.count(d) == 1 for d in deletes), history
    assert not any(
        "podtemplates" in s and "/keep" in s for s in history if s.startswith("[DELETE]")
    )


def test_foreign_push_while_the_git_server_is_down_is_kept_and_every_change_lands_once(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    with own_server(control_plane, namespace, tmp_path, "down") as (
        server,
        repo,
        daemon,
        _provider,
    ):
        server.stop()
        made = [f"down-{index}" for index in range(4)]
        for name in made:
            apply(control_plane, configmap(namespace, name))
        # Someone else's commit lands on the server's disk while nobody can reach it.
        theirs = push_foreign_commit(repo, "main", "docs/notes.md", b"theirs\n", "their notes")
        wait_until(lambda: daemon.metric("reverserd_push_failures_total") > 0, timeout=60)

        # Commits go on while the push waits for its retry: all of them are made locally.
        def committed_locally() -> bool:
            made_here = {
                line.get("subject")
                for line in daemon.log_lines()
                if line.get("message") == "Created commit"
            }
            return {cm_subject("CREATE", namespace, n) for n in made} <= made_here

        wait_until(committed_locally, timeout=30, describe=daemon.log_tail)
        server.start()
        wait_for_subjects(repo, daemon, *(cm_subject("CREATE", namespace, n) for n in made))
        later_change(control_plane, namespace, repo, daemon)
        history = subjects(repo)
        assert "their notes" in history
        assert all(history.count(cm_subject("CREATE", namespace, n)) == 1 for n in made)
        assert tree(repo)["docs/notes.md"] == b"theirs\n"
        git = pygit2.Repository(str(repo))
        tip = git.references["refs/heads/main"].target
        assert git.descendant_of(tip, pygit2.Oid(hex=theirs))


def test_large_and_unicode_objects_reach_git_intact(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    text = "Grüße, 世界, مرحبا, emoji 🎉, combining é, zero-width \u200b, tab\tend\n"
    # About 900 KB as UTF-8: close to the 1 MiB a ConfigMap may hold.
    chars = int(900_000 * len(text) / len(text.encode()))
    large = {"payload": (text * (chars // len(text) + 1))[:chars], "small": "ok"}
    unicode_only = {"greeting": text, "quote": "\"it's\" 'quoted' \\ backslash", "yes": "yes"}
    # Created directly: kubectl apply would also store the whole object in an annotation.
    create_many(
        control_plane,
        [configmap(namespace, "large", large), configmap(namespace, "unicode", unicode_only)],
        "configmaps",
    )
    wait_for_subjects(
        remote.path,
        daemon,
        cm_subject("CREATE", namespace, "large"),
        cm_subject("CREATE", namespace, "unicode"),
    )
    files = tree(remote.path)
    folder = f"live-cluster/v1/configmaps/{namespace}"
    assert len(files[f"{folder}/large.yaml"]) > 800_000
    for name, data in (("large", large), ("unicode", unicode_only)):
        written = yaml.safe_load(files[f"{folder}/{name}.yaml"].decode("utf-8"))
        assert written["data"] == data, name


def resident_mb(daemon: Reverserd) -> float:
    assert daemon.process is not None
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def test_a_burst_of_large_objects_while_the_journal_is_blocked_waits_in_the_api_server(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    """120 ConfigMaps of 900 KB (108 MB of JSON) arrive while another process holds the
    journal's write lock: the daemon reads ahead of its journal only a few MB of them, so its
    memory stays put, and once the journal writes again every one is journaled, though each
    watch that gave up on the journal left its read-ahead behind."""
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    names = [f"large-{index:03}" for index in range(120)]
    connection = sqlite3.connect(daemon.state_dir / "journal.db", timeout=30)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        # Past the writer's busy timeout (10 s) too: its write gives up, the watch restarts from
        # the journal and reads the burst again.
        deadline = time.monotonic() + 15
        before = resident_mb(daemon)
        create_many(
            control_plane,
            [configmap(namespace, name, {"payload": name + "x" * 900_000}) for name in names],
            "configmaps",
        )
        peak = before
        while time.monotonic() < deadline:
            peak = max(peak, resident_mb(daemon))
            time.sleep(0.1)
    finally:
        connection.rollback()
        connection.close()
    # Without a bound on the read-ahead: 48 MB more; with it: 11 MB.
    assert peak - before < 25, (before, peak)

    def journaled() -> set[str]:
        rows = query_journal(
            daemon,
            "SELECT name FROM events WHERE namespace = ? AND kind = 'CREATE'",
            (namespace,),
        )
        return {name for (name,) in rows}

    wait_until(lambda: set(names) <= journaled(), 60, daemon.log_tail)


def test_api_server_stopped_in_the_middle_of_a_list_deletes_nothing(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    names = [f"pt-{index:04d}" for index in range(2000)]
    create_many(control_plane, [podtemplate(namespace, n) for n in names], "podtemplates")
    rules = [{"resources": ["podtemplates"]}]
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret, rules=rules))
    # Pages of 2 make the LIST a thousand round trips, seconds long even on a fast machine (a
    # hundred took 0.2 s on one): long enough to catch it in the middle at wait_until's pace.
    daemon.interpreter_args = tuned({"reverserd.kube.watching.LIST_PAGE_SIZE": 2})
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    stream = f"v1/podtemplates@{namespace}"
    folder = f"live-cluster/v1/podtemplates/{namespace}/"
    before = {path for path in tree(remote.path) if path.startswith(folder)}
    assert len(before) == len(names)

    # The stored resourceVersion expires while the daemon is down: it re-lists at start-up, in
    # pages, and the API server goes away in the middle of that LIST.
    daemon.stop()
    control_plane.compact_etcd()
    daemon.start()
    wait_until(
        lambda: (
            query_journal(daemon, "SELECT seed_state FROM streams WHERE stream = ?", (stream,))
            == [("seeding",)]
        ),
        30,
        daemon.log_tail,
    )
    # Frozen while the API server stops, so the LIST cannot finish meanwhile.
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGSTOP)
    with control_plane.apiserver_down():
        daemon.process.send_signal(signal.SIGCONT)
        markers = dict(
            query_journal(
                daemon,
                "SELECT kind, COUNT(*) FROM events WHERE stream = ? AND kind LIKE 'SEED_%'"
                " GROUP BY kind",
                (stream,),
            )
        )
        # The first seed ended; the re-list began (maybe again, as it retries) and did not.
        assert markers["SEED_END"] == 1 and markers["SEED_BEGIN"] >= 2, markers
    apply(control_plane, podtemplate(namespace, "after"))
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/podtemplates/{namespace}/after")
    deletes = query_journal(
        daemon, "SELECT COUNT(*) FROM events WHERE stream = ? AND kind = 'DELETE'", (stream,)
    )
    assert deletes == [(0,)]
    after = {path for path in tree(remote.path) if path.startswith(folder)}
    assert after == before | {f"{folder}after.yaml"}
    assert not [s for s in subjects(remote.path) if s.startswith("[DELETE]")]


def test_custom_resource_nested_too_deep_is_quarantined_and_its_type_keeps_flowing(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    group = f"{namespace}.deep.example.com"
    cleanup.install_crd(crd(group))
    depth = 1500  # the API server takes up to 10,000 levels; Python's parser about 1,000
    deep = (
        f'{{"apiVersion":"{group}/v1","kind":"Widget",'
        f'"metadata":{{"name":"deep","namespace":"{namespace}"}},"spec":'
        + '{"a":' * depth
        + "1"
        + "}" * depth
        + "}"
    )
    control_plane.kubectl("create", "-f", "-", stdin=deep)
    apply(control_plane, custom_object(group, "Widget", namespace, "before", {"size": 1}))
    rules = [{"apiGroups": [group], "resources": ["widgets"]}]
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret, rules=rules))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    folder = f"live-cluster/{group}/v1/widgets/{namespace}"
    held = wait_condition(
        control_plane, "gittarget", namespace, "mirror", "Quarantined", "True", daemon=daemon
    )
    assert f"widgets/{namespace}/deep" in held["message"], held
    files = tree(remote.path)
    assert f"{folder}/before.yaml" in files and f"{folder}/deep.yaml" not in files

    # Its changes come through the watch as well, and never stop the type's other objects.
    control_plane.kubectl("label", f"widgets.{group}", "deep", "-n", namespace, "changed=yes")
    apply(control_plane, custom_object(group, "Widget", namespace, "after", {"size": 2}))
    wait_for_subjects(remote.path, daemon, f"[CREATE] {group}/v1/widgets/{namespace}/after")
    assert f"{folder}/deep.yaml" not in tree(remote.path)
    stream = f"{group}/v1/widgets@{namespace}"
    row = query_journal(daemon, "SELECT seed_state FROM streams WHERE stream = ?", (stream,))
    assert row == [("complete",)]


def test_replaced_committer_waits_for_the_old_ones_git_operation_to_end(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    with own_server(control_plane, namespace, tmp_path, "slow", "--git-timeout", "30") as (
        server,
        repo,
        daemon,
        provider,
    ):

        def opened() -> int:
            """How often a committer took the clone (before it reaches the server)."""
            return sum(1 for line in daemon.log_lines() if line["message"].startswith("opening "))

        assert opened() == 1
        with server.suspended():
            apply(control_plane, configmap(namespace, "during"))
            wait_until(
                lambda: any(
                    line.get("subject") == cm_subject("CREATE", namespace, "during")
                    for line in daemon.log_lines()
                ),
                describe=daemon.log_tail,
            )
            time.sleep(2)  # the push of that commit now hangs on the frozen server
            # New push settings replace the committer while its push is still running.
            provider["spec"]["push"] = {"interval": "2s"}
            apply(control_plane, provider)
            wait_until(
                lambda: any(
                    "provider settings changed" in line["message"] for line in daemon.log_lines()
                ),
                describe=daemon.log_tail,
            )
            # The new committer says it waits before it takes the lock: once it has said so,
            # it cannot have taken the clone without logging "opening" again.
            waiting = logged_by_reverserd("waiting for the clone")
            wait_until(
                lambda: any(waiting in line["message"] for line in daemon.log_lines()),
                describe=daemon.log_tail,
            )
            assert opened() == 1, "the new committer took the clone during the old push"
        wait_for_subjects(repo, daemon, cm_subject("CREATE", namespace, "during"), timeout=90)
        wait_until(lambda: opened() == 2, describe=daemon.log_tail)
        later_change(control_plane, namespace, repo, daemon)
        assert subjects(repo).count(cm_subject("CREATE", namespace, "during")) == 1
