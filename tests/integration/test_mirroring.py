"""Mirroring end to end: a real ``reverserd run`` against the test bed, asserted on the pushed
branch's tree and history, the journal and the custom resources' status."""

from __future__ import annotations

import yaml

from testbed.controlplane import ControlPlane
from testbed.harness import (
    Reverserd,
    apply,
    subjects,
    tree,
    wait_for_subjects,
    wait_last_commit_is_tip,
    wait_synced,
)
from testbed.manifests import configmap, mirror_setup
from tests.conftest import Remote


def test_create_update_delete_each_make_one_commit(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_synced(control_plane, namespace)
    # Nothing to mirror yet: no commit at all, not even a bootstrap-only one.
    assert subjects(remote.path) == []
    path = f"live-cluster/v1/configmaps/{namespace}/app.yaml"

    apply(control_plane, configmap(namespace, "app", {"color": "blue"}))
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{namespace}/app")
    created = yaml.safe_load(tree(remote.path)[path])
    assert created == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "app", "namespace": namespace},
        "data": {"color": "blue"},
    }

    apply(control_plane, configmap(namespace, "app", {"color": "green"}))
    wait_for_subjects(remote.path, daemon, f"[UPDATE] v1/configmaps/{namespace}/app")
    assert yaml.safe_load(tree(remote.path)[path])["data"] == {"color": "green"}

    control_plane.kubectl("delete", "configmap", "app", "-n", namespace)
    wait_for_subjects(remote.path, daemon, f"[DELETE] v1/configmaps/{namespace}/app")
    assert path not in tree(remote.path)
    assert subjects(remote.path) == [
        f"[CREATE] v1/configmaps/{namespace}/app",
        f"[UPDATE] v1/configmaps/{namespace}/app",
        f"[DELETE] v1/configmaps/{namespace}/app",
    ]
    # The README arrives with the first real write, never in a commit of its own.
    assert "live-cluster/README.md" in tree(remote.path)

    status = wait_last_commit_is_tip(control_plane, namespace, remote.path)
    assert status["lastPushTime"]
    ready = {c["type"]: c["status"] for c in status["conditions"]}
    assert ready["Ready"] == "True", status
