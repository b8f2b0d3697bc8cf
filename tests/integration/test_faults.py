"""Faults injected into a running reverserd: it heals from each one by itself and says so while
it lasts (DESIGN invariant 8, SCENARIOS H).

Each test breaks something real (the committer's clone on disk, the remote branch's layout, a
path a person occupied, a target's place) and asserts on the pushed branch, the journal and the
custom resources' status.
"""

from __future__ import annotations

import time
from pathlib import Path

import pygit2

from testbed.controlplane import ControlPlane
from testbed.gitservers import push_foreign_commit
from testbed.harness import (
    Reverserd,
    apply,
    conditions,
    query_journal,
    subjects,
    tree,
    wait_condition,
    wait_for_subjects,
    wait_synced,
    wait_until,
)
from testbed.manifests import configmap, git_target, mirror_setup
from tests.conftest import Remote

# Long enough for a push interval of 1 s to pass several times: proof that nothing more comes.
SETTLE_S = 3.0


def cm_subject(operation: str, namespace: str, name: str) -> str:
    return f"[{operation}] v1/configmaps/{namespace}/{name}"


def the_clone(daemon: Reverserd) -> Path:
    clones = [path for path in (daemon.state_dir / "repos").iterdir() if path.is_dir()]
    assert len(clones) == 1, clones
    return clones[0]


def test_failed_committer_is_replaced_by_a_fresh_one_and_loses_nothing(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
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
    time.sleep(SETTLE_S)
    assert subjects(remote.path) == expected
    wait_condition(control_plane, "gittarget", namespace, "mirror", "Ready", "True", timeout=60)
    assert b"v: '2'" in tree(remote.path)[f"live-cluster/v1/configmaps/{namespace}/during.yaml"]


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
    time.sleep(20)
    # Backoff, not a loop: 1 + 2 + 4 + 8 s of waiting leave room for about five attempts.
    attempts = daemon.metric(
        "gitopsreverser_git_operations_total", operation="push", result="rejected"
    )
    assert 1 <= attempts <= 6, attempts
    rebuilds = [line for line in daemon.log_lines() if "rebuilt on its tip" in line["message"]]
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
    time.sleep(SETTLE_S)
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
    time.sleep(SETTLE_S)
    targets = [row[0] for row in query_journal(daemon, "SELECT target FROM cursors")]
    assert f"{namespace}/second" not in targets
    assert f"{namespace}/mirror" in targets
    leftovers = query_journal(
        daemon, "SELECT COUNT(*) FROM target_files WHERE target = ?", (f"{namespace}/second",)
    )
    assert leftovers[0][0] == 0


def test_event_loop_lag_is_exposed_as_a_histogram(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    wait_until(lambda: daemon.metric("reverserd_event_loop_lag_seconds_count") >= 4)
    assert daemon.metric("reverserd_event_loop_lag_seconds_sum") < 5
