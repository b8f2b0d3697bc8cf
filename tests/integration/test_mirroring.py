"""Mirroring end to end: a real ``reverserd run`` against the test bed, asserted on the pushed
branch's tree and history, the journal and the custom resources' status."""

from __future__ import annotations

import json
from typing import Any

import yaml

from testbed.controlplane import ControlPlane
from testbed.gitservers import branch_tip, log, read_tree
from testbed.harness import Reverserd, apply, configmap, mirror_setup, wait_synced, wait_until
from tests.conftest import Remote


def subjects(remote: Remote, branch: str = "main") -> list[str]:
    try:
        return [entry.subject for entry in reversed(log(remote.path, branch))]
    except LookupError:
        return []


def tree(remote: Remote, branch: str = "main") -> dict[str, bytes]:
    try:
        return read_tree(remote.path, branch)
    except LookupError:
        return {}


def wait_for_subject(remote: Remote, subject: str, daemon: Reverserd) -> list[str]:
    return wait_until(
        lambda: subjects(remote) if subject in subjects(remote) else None,
        describe=lambda: f"subjects {subjects(remote)}; log: {daemon.log_tail()}",
    )


def target_status(plane: ControlPlane, namespace: str, name: str = "mirror") -> dict[str, Any]:
    out = plane.kubectl("get", "gittarget", name, "-n", namespace, "-o", "json")
    status: dict[str, Any] = json.loads(out).get("status") or {}
    return status


def test_create_update_delete_each_make_one_commit(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_synced(control_plane, namespace)
    # Nothing to mirror yet: no commit at all, not even a bootstrap-only one.
    assert subjects(remote) == []
    path = f"live-cluster/v1/configmaps/{namespace}/app.yaml"

    apply(control_plane, configmap(namespace, "app", {"color": "blue"}))
    wait_for_subject(remote, f"[CREATE] v1/configmaps/{namespace}/app", daemon)
    created = yaml.safe_load(tree(remote)[path])
    assert created == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "app", "namespace": namespace},
        "data": {"color": "blue"},
    }

    apply(control_plane, configmap(namespace, "app", {"color": "green"}))
    wait_for_subject(remote, f"[UPDATE] v1/configmaps/{namespace}/app", daemon)
    assert yaml.safe_load(tree(remote)[path])["data"] == {"color": "green"}

    control_plane.kubectl("delete", "configmap", "app", "-n", namespace)
    wait_for_subject(remote, f"[DELETE] v1/configmaps/{namespace}/app", daemon)
    assert path not in tree(remote)
    assert subjects(remote) == [
        f"[CREATE] v1/configmaps/{namespace}/app",
        f"[UPDATE] v1/configmaps/{namespace}/app",
        f"[DELETE] v1/configmaps/{namespace}/app",
    ]
    # The README arrives with the first real write, never in a commit of its own.
    assert "live-cluster/README.md" in tree(remote)

    status = wait_until(
        lambda: (
            (s := target_status(control_plane, namespace)).get("lastCommit")
            == branch_tip(remote.path, "main")
            and s
        )
    )
    assert status["lastPushTime"]
    ready = {c["type"]: c["status"] for c in status["conditions"]}
    assert ready["Ready"] == "True", status
