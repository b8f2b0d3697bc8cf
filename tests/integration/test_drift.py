"""Drift and the two controls of a target (scenarios M81 and M82): a person's edit or deletion
of a live object's file is reported (warn) or restored (repair), files that name no live object
are never touched, a repair backs off from a writer that keeps changing a file back; a
suspended target writes nothing and catches up in order on resume; a reconcile request checks
at once.

Each test runs a real ``reverserd run`` against the test bed and edits the branch on the Git
server as a person would (a commit pushed by someone else). Absence is proved by a later change
that lands, never by waiting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reverserd.targets.drift import DRIFT_FILE_LIMIT_BYTES
from testbed.controlplane import ControlPlane
from testbed.gitservers import GitHttpServer, push_foreign_changes
from testbed.harness import (
    Reverserd,
    apply,
    history,
    later_change,
    merge_patch,
    query_journal,
    resource_status,
    subjects,
    tree,
    wait_condition,
    wait_for_subjects,
    wait_synced,
    wait_until,
)
from testbed.manifests import configmap, crd, custom_object, mirror_setup
from tests.conftest import Cleanup, Remote
from tests.integration.test_faults import cm_subject, own_server
from tests.integration.test_status_surface import cli, table_rows

FOLDER = "live-cluster"
# Drift checks this often in these tests, so that a check follows each edit within seconds.
CHECK_INTERVAL = "1"
# Long enough that no interval check can run within a test: only a reconcile request checks.
NEVER = "3600"
# A manifest at the path of a ConfigMap that does not exist: a file that names no live object.
GHOST = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ghost\ndata:\n  k: mine\n"


def _setup(plane: ControlPlane, namespace: str, remote: Remote, spec: dict[str, Any]) -> None:
    """The usual mirror, its GitTarget's spec extended by ``spec``."""
    manifests = mirror_setup(namespace, remote.url, secret=remote.secret)
    manifests[1]["spec"].update(spec)
    apply(plane, *manifests)


def _path(namespace: str, name: str) -> str:
    return f"{FOLDER}/v1/configmaps/{namespace}/{name}.yaml"


def _mirrored(
    plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd, *names: str
) -> dict[str, bytes]:
    """Create ConfigMaps ``names``, wait for their commits; returns the branch's files."""
    for name in names:
        apply(plane, configmap(namespace, name, {"k": name}))
    wait_for_subjects(
        remote.path, daemon, *(f"[CREATE] v1/configmaps/{namespace}/{n}" for n in names)
    )
    return tree(remote.path)


def _person_edits(remote: Remote, namespace: str) -> dict[str, bytes | None]:
    """A person edits a's file, deletes b's and adds two files that name no live object."""
    changes: dict[str, bytes | None] = {
        _path(namespace, "a"): b"apiVersion: v1\nkind: ConfigMap\nedited: by hand\n",
        _path(namespace, "b"): None,
        _path(namespace, "ghost"): GHOST,
        f"{FOLDER}/notes.txt": b"a person's notes\n",
    }
    push_foreign_changes(remote.path, "main", changes, "hand edits")
    return changes


def _status_entry(daemon: Reverserd, target: str) -> dict[str, Any]:
    """The target's entry of ``/status``."""
    entries: list[dict[str, Any]] = daemon.status()["targets"]
    return next(entry for entry in entries if entry["target"] == target)


def _mirroring(
    plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    mode: str,
    interval: str,
    *names: str,
) -> dict[str, bytes]:
    """A daemon checking every ``interval`` seconds, a target in drift ``mode`` that mirrored
    the ConfigMaps ``names``; returns the branch's files then."""
    _setup(plane, namespace, remote, {"drift": {"mode": mode}})
    daemon.extra_args += ["--drift-interval", interval]
    daemon.start()
    wait_synced(plane, namespace, daemon=daemon)
    return _mirrored(plane, namespace, remote, daemon, *names)


def test_repair_restores_edited_and_deleted_files_and_leaves_foreign_files(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd, cleanup: Cleanup
) -> None:
    before = _mirroring(
        control_plane, namespace, remote, daemon, "repair", CHECK_INTERVAL, "a", "b"
    )
    _person_edits(remote, namespace)

    wait_for_subjects(remote.path, daemon, "repair: restore 2 drifted file(s)")
    files = tree(remote.path)
    for name in ("a", "b"):
        assert files[_path(namespace, name)] == before[_path(namespace, name)], name
    assert files[_path(namespace, "ghost")] == GHOST
    assert files[f"{FOLDER}/notes.txt"] == b"a person's notes\n"
    repair = next(e for e in history(remote.path) if e.subject.startswith("repair:"))
    assert _path(namespace, "a") in repair.body and _path(namespace, "b") in repair.body
    assert "ghost" not in repair.body
    assert repair.body.rstrip().endswith(f"target: {namespace}/mirror")

    def repaired() -> dict[str, Any] | None:
        drift = resource_status(control_plane, "gittarget", namespace, "mirror").get("drift")
        return drift if drift and drift.get("lastRepairedFiles") == 2 else None

    drift = wait_until(repaired, describe=daemon.log_tail)
    assert "lastRepairTime" in drift
    assert daemon.metric("reverserd_drift_repairs_total", target=f"{namespace}/mirror") == 1
    entry = _status_entry(daemon, f"{namespace}/mirror")
    assert sorted(entry["drift"]["repaired"]) == [_path(namespace, "a"), _path(namespace, "b")]
    assert entry["drift"]["mode"] == "repair" and entry["drift"]["last_repair"]
    # The foreign files stay, and nothing else is ever repaired: a later change lands after
    # the one repair, and the tree still holds the person's files.
    later = later_change(control_plane, namespace, remote.path, daemon)
    repairs = [s for s in subjects(remote.path) if s.startswith("repair:")]
    assert repairs == ["repair: restore 2 drifted file(s)"], subjects(remote.path)
    assert subjects(remote.path)[-1] == later
    assert tree(remote.path)[_path(namespace, "ghost")] == GHOST


def test_warn_reports_drifted_files_and_commits_nothing(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd, cleanup: Cleanup
) -> None:
    _mirroring(control_plane, namespace, remote, daemon, "warn", CHECK_INTERVAL, "a", "b")
    changes = _person_edits(remote, namespace)
    edited = subjects(remote.path)

    condition = wait_condition(
        control_plane, "gittarget", namespace, "mirror", "Drifted", "True", "DriftDetected",
        daemon=daemon,
    )  # fmt: skip
    assert condition["message"].startswith("2 file(s) of live objects differ"), condition
    assert _path(namespace, "a") in condition["message"]
    assert _path(namespace, "b") in condition["message"]
    assert "ghost" not in condition["message"] and "notes" not in condition["message"]
    assert daemon.metric("reverserd_drifted_files", target=f"{namespace}/mirror") == 2
    logged = {line.get("path") for line in daemon.log_lines() if line["message"] == "drifted file"}
    assert logged == {_path(namespace, "a"), _path(namespace, "b")}
    entry = _status_entry(daemon, f"{namespace}/mirror")
    assert entry["drift"]["drifted"] == sorted([_path(namespace, "a"), _path(namespace, "b")])
    assert entry["drift"]["last_check"] and entry["drift"]["last_repair"] is None
    row = table_rows(cli(daemon).stdout, "TARGET")[f"{namespace}/mirror"]
    assert row[7:9] == ["2", "never"], row

    later = later_change(control_plane, namespace, remote.path, daemon)
    assert subjects(remote.path) == [*edited, later]
    files = tree(remote.path)
    assert files[_path(namespace, "a")] == changes[_path(namespace, "a")]
    assert _path(namespace, "b") not in files
    assert files[_path(namespace, "ghost")] == GHOST


def test_repair_backs_off_from_a_writer_that_keeps_changing_a_file_back(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd, cleanup: Cleanup
) -> None:
    _mirroring(control_plane, namespace, remote, daemon, "repair", CHECK_INTERVAL, "a")
    path = _path(namespace, "a")
    subject = "repair: restore 1 drifted file(s)"
    for round_ in range(1, 4):
        push_foreign_changes(remote.path, "main", {path: f"v: {round_}\n".encode()}, "mine")
        wait_for_subjects(remote.path, daemon, *[subject] * round_)
    theirs = b"v: 4\n"
    push_foreign_changes(remote.path, "main", {path: theirs}, "mine")

    condition = wait_condition(
        control_plane, "gittarget", namespace, "mirror", "Drifted", "True", "RepairBackedOff",
        daemon=daemon,
    )  # fmt: skip
    assert path in condition["message"]
    later = later_change(control_plane, namespace, remote.path, daemon)
    assert subjects(remote.path).count(subject) == 3
    assert subjects(remote.path)[-1] == later
    assert tree(remote.path)[path] == theirs


def test_suspended_target_journals_and_writes_nothing_then_lands_every_change_in_order(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd, cleanup: Cleanup
) -> None:
    _setup(control_plane, namespace, remote, {})
    # A second target on the same branch mirrors the same changes: it shows they reached the
    # journal and Git while the suspended one wrote nothing.
    other = mirror_setup(namespace, remote.url, secret=remote.secret, path="other", name="other")
    apply(control_plane, *other)
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    wait_synced(control_plane, namespace, "other", daemon=daemon)
    merge_patch(control_plane, "gittarget", namespace, "mirror", {"spec": {"suspend": True}})
    wait_condition(
        control_plane, "gittarget", namespace, "mirror", "Suspended", "True", daemon=daemon
    )
    wait_condition(
        control_plane, "gittarget", namespace, "mirror", "Ready", "False", "Suspended",
        daemon=daemon,
    )  # fmt: skip

    apply(control_plane, configmap(namespace, "s", {"n": "1"}))
    apply(control_plane, configmap(namespace, "s", {"n": "2"}))
    apply(control_plane, configmap(namespace, "t", {"n": "1"}))
    control_plane.kubectl("delete", "configmap", "-n", namespace, "s")
    wait_for_subjects(remote.path, daemon, f"[DELETE] v1/configmaps/{namespace}/s")
    later = later_change(control_plane, namespace, remote.path, daemon)
    mine = [e.subject for e in history(remote.path) if f"target: {namespace}/mirror" in e.body]
    assert not any("/s" in s or "/t" in s or "later" in s for s in mine), mine
    assert not any(p.startswith(f"{FOLDER}/v1/configmaps/") for p in tree(remote.path))

    merge_patch(control_plane, "gittarget", namespace, "mirror", {"spec": {"suspend": False}})
    wait_condition(
        control_plane, "gittarget", namespace, "mirror", "Suspended", "False", daemon=daemon
    )
    expected = [
        f"[CREATE] v1/configmaps/{namespace}/s",
        f"[UPDATE] v1/configmaps/{namespace}/s",
        f"[CREATE] v1/configmaps/{namespace}/t",
        f"[DELETE] v1/configmaps/{namespace}/s",
        later,
    ]

    def resumed() -> list[str] | None:
        entries = history(remote.path)
        found = [e.subject for e in entries if f"target: {namespace}/mirror" in e.body]
        return found if found[-len(expected) :] == expected else None

    wait_until(resumed, describe=lambda: f"{subjects(remote.path)}; {daemon.log_tail()}")
    files = tree(remote.path)
    assert _path(namespace, "t") in files and _path(namespace, "s") not in files


def test_reconcile_request_checks_the_folder_at_once(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd, cleanup: Cleanup
) -> None:
    _mirroring(control_plane, namespace, remote, daemon, "warn", NEVER, "a", "b")
    wait_condition(
        control_plane, "gittarget", namespace, "mirror", "Drifted", "False", "NoDrift",
        daemon=daemon,
    )  # fmt: skip
    push_foreign_changes(remote.path, "main", {_path(namespace, "a"): b"x: 1\n"}, "edit")

    for annotation, value in (
        ("reconcile.configbutler.ai/requestedAt", "first"),
        ("reconcile.fluxcd.io/requestedAt", "second"),
    ):
        annotations: dict[str, Any] = {annotation: value}
        if value == "second":
            annotations["reconcile.configbutler.ai/requestedAt"] = None
            push_foreign_changes(remote.path, "main", {_path(namespace, "b"): None}, "delete")
        merge_patch(
            control_plane,
            "gittarget",
            namespace,
            "mirror",
            {"metadata": {"annotations": annotations}},
        )

        def handled(wanted: str = value) -> dict[str, Any] | None:
            status = resource_status(control_plane, "gittarget", namespace, "mirror")
            return status if status.get("lastHandledReconcileAt") == wanted else None

        wait_until(handled, describe=daemon.log_tail)
    condition = wait_condition(
        control_plane, "gittarget", namespace, "mirror", "Drifted", "True", "DriftDetected",
        daemon=daemon,
    )  # fmt: skip
    assert condition["message"].startswith("2 file(s)"), condition
    assert daemon.metric("reverserd_drift_checks_total", target=f"{namespace}/mirror") >= 3


def test_a_check_the_remote_cannot_answer_says_so_and_the_next_one_finds_the_edit(
    control_plane: ControlPlane, namespace: str, tmp_path: Path, cleanup: Cleanup
) -> None:
    with own_server(
        control_plane, namespace, tmp_path, "drift-outage", "--drift-interval", CHECK_INTERVAL
    ) as (server, repo, daemon, _):
        wait_condition(
            control_plane, "gittarget", namespace, "mirror", "Drifted", "False", "NoDrift",
            daemon=daemon,
        )  # fmt: skip
        server.stop()
        failed = wait_condition(
            control_plane, "gittarget", namespace, "mirror", "Drifted", "Unknown",
            "DriftCheckFailed", daemon=daemon,
        )  # fmt: skip
        assert failed["message"].startswith("the folder could not be compared"), failed
        assert server.password not in failed["message"]
        # A person's edit lands while reverserd cannot reach the server (on its disk).
        path = _path(namespace, "before")
        push_foreign_changes(repo, "main", {path: b"edited: while it was down\n"}, "edit")
        server.start()
        found = wait_condition(
            control_plane, "gittarget", namespace, "mirror", "Drifted", "True", "DriftDetected",
            daemon=daemon,
        )  # fmt: skip
        assert path in found["message"]


def _queued_connections(server: GitHttpServer) -> int:
    """Connections the kernel accepted for ``server``'s port (those a frozen server leaves
    queued included)."""
    port = f":{server.port:04X}"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            count += local.endswith(port) and state == "01"
    return count


def test_a_change_journaled_during_a_check_keeps_its_own_commit_and_is_not_repaired(
    control_plane: ControlPlane, namespace: str, tmp_path: Path, cleanup: Cleanup
) -> None:
    """A repair writes the object as the target last processed it: a change journaled while
    a check runs is the event path's, with its own commit, never folded into a repair."""
    with own_server(
        control_plane, namespace, tmp_path, "drift-race", "--drift-interval", NEVER
    ) as (server, repo, daemon, _):
        target = f"{namespace}/mirror"
        merge_patch(
            control_plane, "gittarget", namespace, "mirror", {"spec": {"drift": {"mode": "repair"}}}
        )
        wait_until(
            lambda: daemon.metric("reverserd_drift_checks_total", target=target) >= 1,
            describe=daemon.log_tail,
        )
        path = _path(namespace, "before")
        push_foreign_changes(repo, "main", {path: b"edited: by hand\n"}, "hand edit")
        query = "SELECT max(seq) FROM events WHERE namespace = ? AND name = 'before'"
        journaled = query_journal(daemon, query, (namespace,))[0][0]
        with server.suspended():
            queued = _queued_connections(server)
            merge_patch(
                control_plane,
                "gittarget",
                namespace,
                "mirror",
                {"metadata": {"annotations": {"reconcile.configbutler.ai/requestedAt": "race"}}},
            )
            # The check's fetch waits on the frozen server: the change is journaled meanwhile.
            wait_until(lambda: _queued_connections(server) > queued, describe=daemon.log_tail)
            apply(control_plane, configmap(namespace, "before", {"k": "changed"}))
            wait_until(lambda: query_journal(daemon, query, (namespace,))[0][0] > journaled)
        update = cm_subject("UPDATE", namespace, "before")
        wait_for_subjects(repo, daemon, update)
        assert b"changed" in tree(repo)[path]
        later = later_change(control_plane, namespace, repo, daemon)
        assert subjects(repo)[-1] == later
        repairs = [e.subject for e in history(repo) if e.subject.startswith("repair:")]
        assert not repairs, subjects(repo)
        # The request was the check that saw the edit (the status follows asynchronously).
        wait_until(
            lambda: (
                resource_status(control_plane, "gittarget", namespace, "mirror").get(
                    "lastHandledReconcileAt"
                )
                == "race"
            ),
            describe=daemon.log_tail,
        )


def test_a_type_no_longer_served_has_no_file_restored(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd, cleanup: Cleanup
) -> None:
    """The journal still holds the objects of a type the cluster stopped serving: a repair
    must not bring their files back at every check."""
    group = f"{namespace}.drift.example.com"
    definition = crd(group)
    cleanup.install_crd(definition)
    apply(control_plane, custom_object(group, "Widget", namespace, "w", {"size": 1}))
    rules = [
        {"apiGroups": [group], "resources": ["widgets"]},
        {"apiGroups": [""], "resources": ["configmaps"]},
    ]
    manifests = mirror_setup(namespace, remote.url, secret=remote.secret, rules=rules)
    manifests[1]["spec"]["drift"] = {"mode": "repair"}
    apply(control_plane, *manifests)
    daemon.extra_args += ["--drift-interval", NEVER]
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    widget = f"{FOLDER}/{group}/v1/widgets/{namespace}/w.yaml"
    assert widget in tree(remote.path)

    # The type stops being served; its object stays in etcd, and live in the journal.
    definition["spec"]["versions"][0]["served"] = False
    apply(control_plane, definition)
    wait_until(
        lambda: any(
            line["message"].startswith("stopped watching") and group in line["message"]
            for line in daemon.log_lines()
        ),
        describe=daemon.log_tail,
    )
    push_foreign_changes(remote.path, "main", {widget: None}, "remove the widget's file")
    merge_patch(
        control_plane,
        "gittarget",
        namespace,
        "mirror",
        {"metadata": {"annotations": {"reconcile.configbutler.ai/requestedAt": "unserved"}}},
    )
    wait_until(
        lambda: (
            resource_status(control_plane, "gittarget", namespace, "mirror").get(
                "lastHandledReconcileAt"
            )
            == "unserved"
        ),
        describe=daemon.log_tail,
    )
    later = later_change(control_plane, namespace, remote.path, daemon)
    assert subjects(remote.path)[-1] == later
    assert not any(s.startswith("repair:") for s in subjects(remote.path)), subjects(remote.path)
    assert widget not in tree(remote.path)


def test_a_file_too_large_for_any_object_is_reported_drifted_unread(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd, cleanup: Cleanup
) -> None:
    """A file far larger than any object's rendering is drifted, decided from its size alone:
    a Git server's owner cannot make a check inflate it."""
    _mirroring(control_plane, namespace, remote, daemon, "warn", CHECK_INTERVAL, "a")
    wait_condition(
        control_plane, "gittarget", namespace, "mirror", "Drifted", "False", "NoDrift",
        daemon=daemon,
    )  # fmt: skip
    path = _path(namespace, "a")
    # Zeros: a push of a few kilobytes that inflates past the bound.
    push_foreign_changes(remote.path, "main", {path: bytes(DRIFT_FILE_LIMIT_BYTES + 1)}, "big")
    found = wait_condition(
        control_plane, "gittarget", namespace, "mirror", "Drifted", "True", "DriftDetected",
        daemon=daemon,
    )  # fmt: skip
    assert path in found["message"], found
    assert daemon.metric("reverserd_drifted_files", target=f"{namespace}/mirror") == 1
