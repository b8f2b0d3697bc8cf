"""Failure paths where a target could stop, or lose a change, while it says Ready (DESIGN
invariants 1, 8 and 10).

Each test injects a real fault into a running reverserd (a full state volume, a SIGKILL with
commits not yet pushed, a change made while it was stopped) and asserts on the pushed branch,
the journal and the custom resources' status.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pygit2
import pytest

from testbed.controlplane import ControlPlane
from testbed.gitservers import GitHttpServer, install_hook, push_foreign_commit
from testbed.harness import (
    Reverserd,
    apply,
    caught_up,
    conditions,
    query_journal,
    subjects,
    tree,
    wait_condition,
    wait_for_subjects,
    wait_synced,
    wait_until,
)
from testbed.manifests import configmap, git_target, mirror_setup, podtemplate, secret, watch_rule
from tests.conftest import Remote
from tests.integration.test_faults import cm_subject, own_server, remove_on_server, the_clone
from tests.integration.test_secrets import decrypt


def test_two_targets_on_one_branch_both_flow_after_the_committer_failed(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    provider, first, first_rule = mirror_setup(namespace, remote.url, secret=remote.secret)
    second = git_target(namespace, "second", "mirror", "second")
    second_rule = watch_rule(namespace, "second", "second", [{"resources": ["configmaps"]}])
    apply(control_plane, provider, first, first_rule, second, second_rule)
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    wait_synced(control_plane, namespace, "second", daemon=daemon)

    # The clone's object store becomes unusable: every committer of the branch fails, again
    # and again, while both targets' consumers restart against each fresh one.
    objects = the_clone(daemon) / "objects"
    saved = objects.with_name("objects.saved")
    objects.rename(saved)
    objects.write_text("not a directory\n")
    made = [f"during-{index}" for index in range(5)]
    for name in made:
        apply(control_plane, configmap(namespace, name))
    wait_until(
        lambda: daemon.metric("reverserd_committer_restarts_total") >= 3,
        timeout=90,
        describe=daemon.log_tail,
    )
    objects.unlink()
    saved.rename(objects)

    # Both consumers come back: every change made during the fault, and one made after it,
    # reaches both folders, each exactly once.
    apply(control_plane, configmap(namespace, "after"))
    made.append("after")
    wanted = {
        f"{folder}/v1/configmaps/{namespace}/{name}.yaml"
        for folder in ("live-cluster", "second")
        for name in made
    }
    wait_until(
        lambda: wanted <= tree(remote.path).keys(),
        timeout=150,
        describe=lambda: f"{sorted(tree(remote.path))}; log: {daemon.log_tail()}",
    )
    history = subjects(remote.path)
    assert all(history.count(cm_subject("CREATE", namespace, n)) == 2 for n in made), history
    for name in ("mirror", "second"):
        wait_condition(control_plane, "gittarget", namespace, name, "Ready", "True")


def clone_tip_subject(daemon: Reverserd) -> str | None:
    """The subject of the newest commit on the daemon's clone as it is on disk."""
    clones = [path for path in (daemon.state_dir / "repos").iterdir() if path.is_dir()]
    assert len(clones) == 1, clones
    try:
        tip = pygit2.Repository(str(clones[0])).references["refs/heads/main"].peel(pygit2.Commit)
    except (KeyError, pygit2.GitError):
        return None
    return str(tip.message.splitlines()[0])


def encrypted_mirror(
    plane: ControlPlane,
    namespace: str,
    remote: Remote,
    tmp_path: Path,
    tools: Path,
    age_key: tuple[str, str],
    resources: list[str],
    sops: Path,
) -> tuple[Reverserd, Callable[[bytes], bool]]:
    """A mirror of ``resources`` with Secrets encrypted for ``age_key``, applied, and a daemon
    (not started) running ``sops``; returns the daemon and a check that Secret ``db`` holds a
    password on the server."""
    identity, recipient = age_key
    rules = [{"resources": resources}]
    provider, target, rule = mirror_setup(namespace, remote.url, secret=remote.secret, rules=rules)
    target["spec"]["encryption"] = {
        "age": {"enabled": True, "recipients": {"publicKeys": [recipient]}}
    }
    apply(plane, provider, target, rule)
    arguments = ["--sops-path", str(sops), "--age-keygen-path", str(tools / "age-keygen")]
    path = f"live-cluster/v1/secrets/{namespace}/db.sops.yaml"

    def password_on_server(value: bytes) -> bool:
        files = tree(remote.path)
        encoded = {"password": base64.b64encode(value).decode()}
        return path in files and decrypt(tools, identity, files[path])["data"] == encoded

    return Reverserd(plane, tmp_path / "state", arguments), password_on_server


def test_quarantine_retry_then_sigkill_commits_nothing_twice_and_loses_no_secret_change(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    tmp_path: Path,
    tools: Path,
    age_key: tuple[str, str],
) -> None:
    daemon, secret_on_server = encrypted_mirror(
        control_plane, namespace, remote, tmp_path, tools, age_key,
        ["configmaps", "secrets", "podtemplates"], tools / "sops",
    )  # fmt: skip
    config_path = f"live-cluster/v1/configmaps/{namespace}/c.yaml"
    try:
        daemon.start()
        wait_synced(control_plane, namespace, daemon=daemon)
        # A person's file where the PodTemplates' folder must be: "held" is quarantined, and
        # its cursor moves past its event.
        blocked = f"live-cluster/v1/podtemplates/{namespace}"
        push_foreign_commit(remote.path, "main", blocked, b"a person's notes\n", "notes")
        apply(control_plane, configmap(namespace, "c", {"v": "0"}))
        apply(control_plane, secret(namespace, "db", {"password": "first-value"}))
        apply(control_plane, podtemplate(namespace, "held"))
        wait_condition(
            control_plane, "gittarget", namespace, "mirror", "Quarantined", "True", daemon=daemon
        )
        wait_until(lambda: secret_on_server(b"first-value"), describe=daemon.log_tail)
        wait_until(lambda: caught_up(daemon, f"{namespace}/mirror"), describe=daemon.log_tail)

        # The server refuses every push from now on: what follows is committed, not pushed.
        refuse = tmp_path / "refuse"
        refuse.touch()
        install_hook(remote.path, "pre-receive", f"#!/bin/sh\n[ ! -e {refuse} ]\n")
        apply(control_plane, configmap(namespace, "c", {"v": "1"}))
        apply(control_plane, configmap(namespace, "c", {"v": "2"}))
        apply(control_plane, secret(namespace, "db", {"password": "second-value"}))
        wait_until(
            lambda: clone_tip_subject(daemon) == f"[UPDATE] v1/secrets/{namespace}/db",
            timeout=150,
            describe=daemon.log_tail,
        )
        # The person frees the path: the periodic retry commits "held", after those commits.
        remove_on_server(remote.path, blocked)
        wait_until(
            lambda: clone_tip_subject(daemon) == f"[CREATE] v1/podtemplates/{namespace}/held",
            timeout=240,
            describe=daemon.log_tail,
        )
        daemon.kill()
        assert b"v: '0'" in tree(remote.path)[config_path], "killed before the push"

        # Changed back while reverserd is down; then the server takes pushes again.
        apply(control_plane, secret(namespace, "db", {"password": "first-value"}))
        refuse.unlink()
        daemon.start()
        apply(control_plane, configmap(namespace, "after"))
        wait_for_subjects(remote.path, daemon, cm_subject("CREATE", namespace, "after"))

        history = subjects(remote.path)
        assert history.count(cm_subject("UPDATE", namespace, "c")) == 2, history
        assert history.count(f"[CREATE] v1/podtemplates/{namespace}/held") == 1, history
        assert b"v: '2'" in tree(remote.path)[config_path]
        # The change back comes with the Secret's event or with the Secrets' snapshot of this
        # run (taken once their watch has caught up), whichever is first.
        wait_until(lambda: secret_on_server(b"first-value"), timeout=150, describe=daemon.log_tail)
    finally:
        daemon.ensure_stopped()


@pytest.mark.parametrize("moved", ["path", "branch"])
def test_target_moved_while_stopped_syncs_its_new_place_and_leaves_the_old_one(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd, moved: str
) -> None:
    # The provider allows both branches; "other" already exists on the server with only a
    # README, so nothing of the old place is there unless this target writes it.
    provider, _, rule = mirror_setup(namespace, remote.url, secret=remote.secret, branch="other")
    push_foreign_commit(remote.path, "other", "README.md", b"other\n", "start other")
    apply(control_plane, provider, git_target(namespace, "mirror", "mirror", "live-cluster"), rule)
    names = [f"cm-{index}" for index in range(6)]
    apply(control_plane, *(configmap(namespace, name, {"v": "1"}) for name in names))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    wait_until(
        lambda: all(
            f"live-cluster/v1/configmaps/{namespace}/{name}.yaml" in tree(remote.path)
            for name in names
        ),
        describe=daemon.log_tail,
    )
    target = f"{namespace}/mirror"
    wait_until(lambda: caught_up(daemon, target), describe=daemon.log_tail)
    daemon.stop()
    old_main = tree(remote.path)

    # Moved while reverserd is stopped; one object changes meanwhile.
    path, branch = ("moved", "main") if moved == "path" else ("live-cluster", "other")
    apply(control_plane, git_target(namespace, "mirror", "mirror", path, branch))
    apply(control_plane, configmap(namespace, "cm-0", {"v": "2"}))
    daemon.start()
    new_files = {name: f"{path}/v1/configmaps/{namespace}/{name}.yaml" for name in names}
    wait_until(
        lambda: set(new_files.values()) <= tree(remote.path, branch).keys(),
        describe=lambda: f"{sorted(tree(remote.path, branch))}; log: {daemon.log_tail()}",
    )
    # A later real change reaches the new place only; the old place stays as it was.
    apply(control_plane, configmap(namespace, "cm-1", {"v": "3"}))
    wait_until(
        lambda: b"v: '3'" in tree(remote.path, branch)[new_files["cm-1"]],
        describe=daemon.log_tail,
    )
    files = tree(remote.path, branch)
    assert b"v: '2'" in files[new_files["cm-0"]]
    if moved == "path":
        kept = {p: c for p, c in files.items() if p.startswith("live-cluster/")}
        assert kept == {p: c for p, c in old_main.items() if p.startswith("live-cluster/")}
    else:
        assert tree(remote.path) == old_main
    place = query_journal(
        daemon, "SELECT remote, path FROM target_places WHERE target = ?", (target,)
    )
    assert [(remote_key.rsplit("#", 1)[1], folder) for remote_key, folder in place] == [
        (branch, path)
    ]


def test_target_deleted_while_stopped_keeps_no_state_in_the_journal(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    second = git_target(namespace, "second", "mirror", "second")
    second_rule = watch_rule(namespace, "second", "second", [{"resources": ["configmaps"]}])
    apply(control_plane, second, second_rule, configmap(namespace, "one"))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    wait_synced(control_plane, namespace, "second", daemon=daemon)
    gone = f"{namespace}/second"
    wait_until(lambda: caught_up(daemon, f"{namespace}/mirror", gone), describe=daemon.log_tail)
    tables = ("cursors", "target_files", "target_places")
    for table in tables:
        count = query_journal(daemon, f"SELECT COUNT(*) FROM {table} WHERE target = ?", (gone,))
        assert count[0][0] > 0, table
    daemon.stop()

    control_plane.kubectl("delete", "gittarget", "second", "-n", namespace)
    daemon.start()
    apply(control_plane, configmap(namespace, "after"))
    wait_for_subjects(remote.path, daemon, cm_subject("CREATE", namespace, "after"))
    for table in (*tables, "quarantine"):
        count = query_journal(daemon, f"SELECT COUNT(*) FROM {table} WHERE target = ?", (gone,))
        assert count[0][0] == 0, table
    assert query_journal(
        daemon, "SELECT COUNT(*) FROM cursors WHERE target = ?", (f"{namespace}/mirror",)
    ) == [(1,)]


def test_sops_killed_on_its_first_calls_does_not_lose_the_secret_change(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    tmp_path: Path,
    tools: Path,
    age_key: tuple[str, str],
) -> None:
    # sops behind a wrapper that kills itself (as the OOM killer would) while failures are left.
    failures_left = tmp_path / "failures-left"
    failures_left.write_text("0\n")
    wrapper = tmp_path / "sops"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"left=$(cat {failures_left})\n"
        'if [ "$left" -gt 0 ]; then\n'
        f"  echo $((left - 1)) > {failures_left}\n"
        "  kill -9 $$\n"
        "fi\n"
        f'exec {tools / "sops"} "$@"\n'
    )
    wrapper.chmod(0o755)
    daemon, secret_on_server = encrypted_mirror(
        control_plane, namespace, remote, tmp_path, tools, age_key,
        ["configmaps", "secrets"], wrapper,
    )  # fmt: skip
    try:
        daemon.start()
        wait_synced(control_plane, namespace, daemon=daemon)
        apply(control_plane, secret(namespace, "db", {"password": "first-value"}))
        wait_until(lambda: secret_on_server(b"first-value"), describe=daemon.log_tail)

        failures_left.write_text("3\n")
        apply(control_plane, secret(namespace, "db", {"password": "second-value"}))
        apply(control_plane, configmap(namespace, "after"))
        wait_for_subjects(
            remote.path, daemon, cm_subject("CREATE", namespace, "after"), timeout=150
        )
        assert failures_left.read_text().strip() == "0", "sops was killed three times"
        assert secret_on_server(b"second-value")
    finally:
        daemon.ensure_stopped()


def test_credentials_rotated_on_the_server_and_in_the_secret_are_used_without_a_restart(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    with own_server(control_plane, namespace, tmp_path, "rotated") as (server, repo, daemon, _):
        pid = daemon.process.pid if daemon.process else None
        server.rotate_password("rotated-token")
        apply(control_plane, configmap(namespace, "during"))
        failing = wait_condition(
            control_plane, "gitprovider", namespace, "mirror", "Ready", "False", daemon=daemon
        )
        assert "rotated-token" not in failing["message"]
        assert cm_subject("CREATE", namespace, "during") not in subjects(repo)

        # The Secret gets the new password too: pushes resume, and the daemon never restarted.
        rotated = {"username": server.username, "password": "rotated-token"}
        apply(control_plane, secret(namespace, "git-credentials", rotated))
        wait_for_subjects(repo, daemon, cm_subject("CREATE", namespace, "during"), timeout=150)
        wait_condition(control_plane, "gitprovider", namespace, "mirror", "Ready", "True")
        assert daemon.process is not None and daemon.process.pid == pid
        assert daemon.process.poll() is None


def test_clone_missing_a_pack_heals_by_itself_and_loses_nothing(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    # One push each, so the clone holds several packs.
    for name in ("a", "b", "c"):
        apply(control_plane, configmap(namespace, name))
        wait_for_subjects(remote.path, daemon, cm_subject("CREATE", namespace, name))
    target = f"{namespace}/mirror"
    wait_until(lambda: caught_up(daemon, target), describe=daemon.log_tail)
    daemon.stop()
    pushed = tree(remote.path)

    packs = sorted((the_clone(daemon) / "objects" / "pack").glob("*.pack"), key=_age)
    assert len(packs) >= 2, packs
    packs[0].unlink()
    packs[0].with_suffix(".idx").unlink()

    apply(control_plane, configmap(namespace, "a", {"v": "2"}))
    daemon.start()
    apply(control_plane, configmap(namespace, "after"))
    wait_for_subjects(
        remote.path,
        daemon,
        cm_subject("UPDATE", namespace, "a"),
        cm_subject("CREATE", namespace, "after"),
        timeout=150,
    )
    files = tree(remote.path)
    folder = f"live-cluster/v1/configmaps/{namespace}"
    assert {p: c for p, c in files.items() if p in pushed and not p.endswith("/a.yaml")} == {
        p: c for p, c in pushed.items() if not p.endswith("/a.yaml")
    }
    assert b"v: '2'" in files[f"{folder}/a.yaml"]
    assert f"{folder}/after.yaml" in files
    history = subjects(remote.path)
    for name in ("a", "b", "c", "after"):
        assert history.count(cm_subject("CREATE", namespace, name)) == 1, history
    assert history.count(cm_subject("UPDATE", namespace, "a")) == 1, history
    wait_condition(control_plane, "gittarget", namespace, "mirror", "Ready", "True")


def _age(path: Path) -> float:
    return path.stat().st_mtime


def test_status_views_agree_with_the_resources_for_an_allowed_local_remote(
    control_plane: ControlPlane,
    namespace: str,
    git_http: GitHttpServer,
    git_repo_name: str,
    tmp_path: Path,
) -> None:
    daemon = Reverserd(control_plane, tmp_path / "state", ["--allow-local-remotes"])
    local = git_http.create_bare_repo(git_repo_name)
    apply(control_plane, *mirror_setup(namespace, f"file://{local}"))
    try:
        daemon.start()
        wait_synced(control_plane, namespace, daemon=daemon)
        resource = conditions(control_plane, "gitprovider", namespace, "mirror")["Ready"]
        (shown,) = [p for p in daemon.status()["providers"] if p["name"] == f"{namespace}/mirror"]
        expected = (resource["status"] == "True", resource["reason"])
        assert (shown["ready"], shown["reason"]) == expected
        assert shown["reason"] != "LocalRemoteNotAllowed"
    finally:
        daemon.ensure_stopped()


def test_sigterm_stops_the_daemon_while_its_custom_resources_cannot_be_listed(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    # A token the API server does not know: no custom resource can be listed, so the
    # configuration never syncs, as when the CRDs are not installed yet.
    kubeconfig = tmp_path / "unknown.kubeconfig"
    text = control_plane.daemon_kubeconfig.read_text()
    assert control_plane.daemon_token in text
    kubeconfig.write_text(text.replace(control_plane.daemon_token, "not-a-known-token"))
    daemon = Reverserd(control_plane, tmp_path / "state", kubeconfig=kubeconfig)
    try:
        daemon.start()
        wait_until(
            lambda: any("401" in line.get("message", "") for line in daemon.log_lines()),
            describe=daemon.log_tail,
        )
        daemon.stop()
        assert daemon.process is not None and daemon.process.returncode == 0
    finally:
        daemon.ensure_stopped()


def test_ready_names_a_push_refused_for_good_not_the_sync_waiting_on_it(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    # A branch "env" exists, so the server can never create "env/prod".
    push_foreign_commit(remote.path, "env", "README.md", b"environments\n", "start env")
    apply(
        control_plane,
        *mirror_setup(namespace, remote.url, secret=remote.secret, branch="env/prod"),
        configmap(namespace, "refused"),
    )
    daemon.start()
    ready = wait_condition(
        control_plane, "gittarget", namespace, "mirror", "Ready", "False", "PushRefused",
        daemon=daemon,
    )  # fmt: skip
    assert "env/prod beside env" in ready["message"], ready
    synced = conditions(control_plane, "gittarget", namespace, "mirror")["SnapshotSynced"]
    assert synced["status"] == "False", synced
