"""Failure paths where a target could stop, or lose a change, while it says Ready (DESIGN
invariants 1, 8 and 10).

Each test injects a real fault into a running reverserd (a full state volume, a SIGKILL with
commits not yet pushed, a change made while it was stopped) and asserts on the pushed branch,
the journal and the custom resources' status.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from testbed.controlplane import ControlPlane
from testbed.harness import (
    Reverserd,
    apply,
    subjects,
    tree,
    wait_condition,
    wait_for_subjects,
    wait_synced,
    wait_until,
)
from testbed.manifests import configmap, git_target, mirror_setup, watch_rule
from tests.conftest import Remote


def cm_subject(operation: str, namespace: str, name: str) -> str:
    return f"[{operation}] v1/configmaps/{namespace}/{name}"


def test_two_targets_on_one_branch_both_flow_after_the_committer_failed(
    control_plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    # The state dir is a small volume of its own: filling it fails the branch's committer
    # (and the journal) while both targets' consumers are using it.
    volume = tmp_path / "volume"
    volume.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(volume)], check=True)
    daemon = Reverserd(control_plane, volume)
    try:
        provider, first, first_rule = mirror_setup(namespace, remote.url, secret=remote.secret)
        second = git_target(namespace, "second", "mirror", "second")
        second_rule = watch_rule(namespace, "second", "second", [{"resources": ["configmaps"]}])
        apply(control_plane, provider, first, first_rule, second, second_rule)
        daemon.start()
        wait_synced(control_plane, namespace, daemon=daemon)
        wait_synced(control_plane, namespace, "second", daemon=daemon)

        filler = volume / "filler"
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True, check=False
        )
        made = [f"full-{index}" for index in range(5)]
        for name in made:
            apply(control_plane, configmap(namespace, name, {"v": "x" * 2000}))
        wait_condition(
            control_plane,
            "gittarget",
            namespace,
            "mirror",
            "Journal",
            "False",
            "JournalWriteFailed",
            daemon=daemon,
        )
        filler.unlink()

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
        wait_for_subjects(
            remote.path, daemon, *(cm_subject("CREATE", namespace, n) for n in made * 2)
        )
        history = subjects(remote.path)
        assert all(history.count(cm_subject("CREATE", namespace, n)) == 2 for n in made), history
        for name in ("mirror", "second"):
            wait_condition(control_plane, "gittarget", namespace, name, "Ready", "True")
    finally:
        daemon.ensure_stopped()
        subprocess.run(["umount", "-l", str(volume)], check=False)
