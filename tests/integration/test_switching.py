"""Switching from gitops-reverser v0.17 to reverserd, the steps of
docs/migrating-from-gitops-reverser.md run against the test bed.

The repository starts with a folder and a history as gitops-reverser wrote them: a bootstrap
commit with its README.md and .sops.yaml, then one ``[CREATE] <group/version/resource/name>``
commit per object (no namespace segment in the subject), authored by the Kubernetes user and
committed by "GitOps Reverser", files rendered by sigs.k8s.io/yaml (numbers-as-strings in double
quotes) and Secrets encrypted by sops with the folder's .sops.yaml. The custom resources are
applied exactly in the shape of gitops-reverser's samples, then reverserd starts configured the
way the Helm chart and the systemd unit configure it: ``$KUBECONFIG`` and ``REVERSERD_*``.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygit2
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from testbed.controlplane import ControlPlane
from testbed.gitservers import changed_paths, commit_files
from testbed.harness import (
    Reverserd,
    apply,
    conditions,
    get_object,
    history,
    subjects,
    tree,
    wait_condition,
    wait_for_subjects,
    wait_last_commit_is_tip,
    wait_until,
)
from testbed.manifests import configbutler_resource, configmap, mirror_setup, secret
from tests.conftest import Remote
from tests.integration.test_secrets import clone, key_file, sops_d

FOLDER = "live-cluster"
OLD_COMMITTER = pygit2.Signature("GitOps Reverser", "noreply@configbutler.ai", 1_760_000_000, 0)
OLD_AUTHOR = pygit2.Signature(
    "kubernetes-admin", "kubernetes-admin@cluster.local", 1_760_000_000, 0
)
PRIORITY_VALUE = 4242
# The metric names gitops-reverser v0.17 served that reverserd serves with the same name, and
# the labels reverserd puts on them (the guide's metrics table).
DASHBOARD_METRICS = {
    "gitopsreverser_events_received_total": {"resource"},
    "gitopsreverser_events_processed_total": {"target"},
    "gitopsreverser_objects_written_total": {"target"},
    "gitopsreverser_files_deleted_total": {"target"},
    "gitopsreverser_commits_total": {"target"},
    "gitopsreverser_git_operations_total": {"operation", "result"},
    "gitopsreverser_git_commit_queue_size": {"target"},
    "gitopsreverser_git_push_duration_seconds_count": set(),
}
# A healthy GitTarget's conditions after the switch, by type (the guide's reasons table).
TARGET_REASONS = {
    "Ready": "Ready",
    "Validated": "Validated",
    "EncryptionConfigured": "Configured",
    "Bootstrapped": "Bootstrapped",
    "SnapshotSynced": "SnapshotSynced",
    "EventStreamLive": "EventStreamLive",
    "Pushing": "Pushing",
    "Quarantined": "NoneQuarantined",
    "Journal": "Writable",
    "Suspended": "NotSuspended",
    "Drifted": "NoDrift",
}
# Served by gitops-reverser v0.17, not by reverserd (the guide names what to use instead).
NOT_SERVED = (
    "gitopsreverser_objects_scanned_total",
    "gitopsreverser_commit_bytes_total",
    "gitopsreverser_rebase_retries_total",
    "gitopsreverser_ownership_conflicts_total",
    "gitopsreverser_lease_acquire_failures_total",
    "gitopsreverser_marker_conflicts_total",
    "gitopsreverser_webhook_correlations_total",
    "gitopsreverser_enrich_hits_total",
    "gitopsreverser_enrich_misses_total",
    "gitopsreverser_kv_evictions_total",
    "gitopsreverser_watch_duplicates_skipped_total",
    "gitopsreverser_audit_events_received_total",
    "gitopsreverser_secret_encryption_attempts_total",
    "gitopsreverser_secret_encryption_success_total",
    "gitopsreverser_secret_encryption_failures_total",
    "gitopsreverser_secret_encryption_cache_hits_total",
    "gitopsreverser_secret_encryption_marker_skips_total",
    "gitopsreverser_repo_branch_active_workers",
    "gitopsreverser_repo_branch_queue_depth",
)


def old_sops_config(recipient: str) -> bytes:
    """.sops.yaml in the shape gitops-reverser's bootstrap wrote it."""
    return (
        "creation_rules:\n"
        "  - path_regex: '.*\\.sops\\.ya?ml$'\n"
        "    encrypted_regex: '^(data|stringData)$'\n"
        "    key_groups:\n"
        "      - age:\n"
        f'          - "{recipient}"\n'
    ).encode()


def old_configmap_file(namespace: str) -> bytes:
    """The ConfigMap ``settings`` as sigs.k8s.io/yaml rendered it: a number-like string in
    double quotes, where reverserd would write single quotes."""
    return (
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: settings\n"
        f"  namespace: {namespace}\n"
        "data:\n"
        "  mode: fast\n"
        '  port: "8080"\n'
    ).encode()


def encrypt_old_secret(tools: Path, config: bytes, manifest: bytes, work: Path) -> bytes:
    """A Secret file as gitops-reverser wrote it: sops run with the folder's .sops.yaml."""
    work.mkdir(parents=True, exist_ok=True)
    (work / ".sops.yaml").write_bytes(config)
    return subprocess.run(
        [
            str(tools / "sops"),
            "encrypt",
            "--input-type",
            "yaml",
            "--output-type",
            "yaml",
            "--filename-override",
            "v1/secrets/db.sops.yaml",
            "/dev/stdin",
        ],
        input=manifest,
        cwd=work,
        capture_output=True,
        check=True,
        env={**os.environ, "SOPS_DISABLE_VERSION_CHECK": "1"},
    ).stdout


def old_history(
    remote: Remote, namespace: str, priority_class: str, recipient: str, tools: Path, work: Path
) -> dict[str, bytes]:
    """Commit the folder as gitops-reverser left it; returns the files by path."""
    config = old_sops_config(recipient)
    db = yaml.safe_dump(secret(namespace, "db", {"password": "carried-over"})).encode()
    steps: list[tuple[str, dict[str, bytes]]] = [
        (
            f"chore(bootstrap): initialize path {FOLDER}",
            {
                f"{FOLDER}/README.md": b"# live-cluster\n\nMirrored by gitops-reverser.\n",
                f"{FOLDER}/.sops.yaml": config,
            },
        ),
        (
            "[CREATE] v1/configmaps/settings",
            {f"{FOLDER}/v1/configmaps/{namespace}/settings.yaml": old_configmap_file(namespace)},
        ),
        (
            "[CREATE] v1/configmaps/gone",
            {
                f"{FOLDER}/v1/configmaps/{namespace}/gone.yaml": yaml.safe_dump(
                    configmap(namespace, "gone")
                ).encode()
            },
        ),
        (
            "[CREATE] v1/secrets/db",
            {
                f"{FOLDER}/v1/secrets/{namespace}/db.sops.yaml": encrypt_old_secret(
                    tools, config, db, work
                )
            },
        ),
        (
            f"[CREATE] scheduling.k8s.io/v1/priorityclasses/{priority_class}",
            {
                f"{FOLDER}/scheduling.k8s.io/v1/priorityclasses/{priority_class}.yaml": (
                    "apiVersion: scheduling.k8s.io/v1\n"
                    "kind: PriorityClass\n"
                    "metadata:\n"
                    f"  name: {priority_class}\n"
                    "preemptionPolicy: PreemptLowerPriority\n"
                    f"value: {PRIORITY_VALUE}\n"
                ).encode()
            },
        ),
        ("Add kustomization", {f"{FOLDER}/kustomization.yaml": b"resources: []\n"}),
    ]
    repository = pygit2.Repository(str(remote.path))
    files: dict[str, bytes] = {}
    for message, changes in steps:
        commit_files(repository, "main", changes, message, OLD_AUTHOR)
        files.update(changes)
    return files


def old_custom_resources(namespace: str, remote: Remote, cluster_rule: str) -> list[dict[str, Any]]:
    """gitops-reverser's sample GitProvider, GitTarget, WatchRule and ClusterWatchRule, in their
    shape (their names, push pace and encryption spec), pointed at the test bed."""
    return [
        configbutler_resource(
            "GitProvider",
            "example-provider",
            namespace,
            {
                "url": remote.url,
                "allowedBranches": ["*"],
                "secretRef": {"name": remote.secret},
                "push": {"interval": "5s", "maxCommits": 10},
            },
        ),
        configbutler_resource(
            "GitTarget",
            "example-target",
            namespace,
            {
                "providerRef": {"name": "example-provider"},
                "branch": "main",
                "path": FOLDER,
                "encryption": {
                    "provider": "sops",
                    "age": {
                        "enabled": True,
                        "recipients": {"extractFromSecret": True, "generateWhenMissing": True},
                    },
                    "secretRef": {"name": "sops-age-key"},
                },
            },
        ),
        configbutler_resource(
            "WatchRule",
            "example-watchrule",
            namespace,
            {
                "targetRef": {"name": "example-target"},
                "rules": [
                    {
                        "operations": ["CREATE", "UPDATE", "DELETE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["configmaps", "secrets"],
                    }
                ],
            },
        ),
        configbutler_resource(
            "ClusterWatchRule",
            cluster_rule,
            None,
            {
                "targetRef": {"name": "example-target", "namespace": namespace},
                "rules": [
                    {
                        "scope": "Cluster",
                        "operations": ["CREATE", "UPDATE", "DELETE"],
                        "apiGroups": ["scheduling.k8s.io"],
                        "apiVersions": ["v1"],
                        "resources": ["priorityclasses"],
                    }
                ],
            },
        ),
    ]


@pytest.fixture
def cluster_objects(control_plane: ControlPlane, namespace: str) -> Iterator[tuple[str, str]]:
    """(ClusterWatchRule name, PriorityClass name), both removed afterwards."""
    names = (f"example-clusterwatchrule-{namespace}", f"mirror-{namespace}")
    yield names
    control_plane.kubectl(
        "delete", "clusterwatchrule", names[0], "--ignore-not-found", "--wait=false"
    )
    control_plane.kubectl("delete", "priorityclass", names[1], "--ignore-not-found")


def metric_samples(daemon: Reverserd) -> dict[str, list[dict[str, str]]]:
    """Label sets of every sample on /metrics, by sample name."""
    body = daemon.get("/metrics")
    assert body is not None
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples


def test_switch_from_gitops_reverser_keeps_history_files_and_dashboards(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    tools: Path,
    age_key: tuple[str, str],
    tmp_path: Path,
    cluster_objects: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    identity, recipient = age_key
    monkeypatch.setenv("REVERSERD_SOPS_PATH", str(tools / "sops"))
    monkeypatch.setenv("REVERSERD_AGE_KEYGEN_PATH", str(tools / "age-keygen"))
    cluster_rule, priority_class = cluster_objects
    # The cluster as gitops-reverser mirrored it; "gone" was deleted during the switch.
    apply(
        control_plane,
        configmap(namespace, "settings", {"mode": "fast", "port": "8080"}),
        secret(namespace, "db", {"password": "carried-over"}),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "sops-age-key", "namespace": namespace},
            "type": "Opaque",
            "data": {"2026-01-15.agekey": base64.b64encode(identity.encode() + b"\n").decode()},
        },
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": priority_class},
            "value": PRIORITY_VALUE,
        },
    )
    old_files = old_history(remote, namespace, priority_class, recipient, tools, tmp_path / "old")
    old_shas = [entry.sha for entry in history(remote.path)]

    # Step: the old custom resources, unchanged; then reverserd on the same folder.
    apply(control_plane, *old_custom_resources(namespace, remote, cluster_rule))
    daemon = Reverserd(control_plane, tmp_path / "state", settings_from_environment=True)
    try:
        daemon.start()
        wait_until(
            lambda: any(s.startswith("reconcile: sync") for s in subjects(remote.path)),
            timeout=90,
            describe=daemon.log_tail,
        )
        reconcile = history(remote.path)[len(old_shas)]
        assert reconcile.subject.startswith("reconcile: sync")
        # History intact: every old commit is still an ancestor, in order.
        assert [entry.sha for entry in history(remote.path)][: len(old_shas)] == old_shas
        after = tree(remote.path)
        # The first reconcile deletes only the file of the object that is gone...
        assert f"{FOLDER}/v1/configmaps/{namespace}/gone.yaml" not in after
        removed = {path for path in old_files if path not in after}
        assert removed == {f"{FOLDER}/v1/configmaps/{namespace}/gone.yaml"}
        # ...keeps the file of an unchanged object byte for byte, old formatting included...
        settings_path = f"{FOLDER}/v1/configmaps/{namespace}/settings.yaml"
        assert after[settings_path] == old_files[settings_path]
        # ...and every file it did not write, byte for byte.
        for kept in (f"{FOLDER}/README.md", f"{FOLDER}/.sops.yaml", f"{FOLDER}/kustomization.yaml"):
            assert after[kept] == old_files[kept], kept
        assert not {f"{FOLDER}/README.md", f"{FOLDER}/.sops.yaml"} & changed_paths(
            remote.path, reconcile.sha
        )
        pc_path = f"{FOLDER}/scheduling.k8s.io/v1/priorityclasses/{priority_class}.yaml"
        assert yaml.safe_load(after[pc_path])["value"] == PRIORITY_VALUE
        # Secrets: encrypted for the target's recipient, the old key: `sops -d` with it works.
        checkout = clone(remote, tmp_path / "checkout")
        old_key = key_file(identity, tmp_path / "old-key.txt")
        decrypted = sops_d(
            tools, checkout, f"{FOLDER}/v1/secrets/{namespace}/db.sops.yaml", [old_key]
        )
        assert decrypted.returncode == 0, decrypted.stderr
        assert yaml.safe_load(decrypted.stdout)["data"] == {
            "password": base64.b64encode(b"carried-over").decode()
        }

        # The first reconcile commit: one commit, the gone object's file its only deletion.
        assert "deleted: 1" in reconcile.body
        assert f"{FOLDER}/v1/configmaps/{namespace}/gone.yaml" in changed_paths(
            remote.path, reconcile.sha
        )

        # Mirroring continues, in reverserd's commit format.
        apply(control_plane, configmap(namespace, "settings", {"mode": "slow", "port": "8080"}))
        apply(control_plane, configmap(namespace, "fresh"))
        apply(control_plane, secret(namespace, "fresh-secret", {"token": "after-the-switch"}))
        wait_for_subjects(
            remote.path,
            daemon,
            f"[UPDATE] v1/configmaps/{namespace}/settings",
            f"[CREATE] v1/configmaps/{namespace}/fresh",
            f"[CREATE] v1/secrets/{namespace}/fresh-secret",
            timeout=90,
        )
        # reverserd's commit format: namespace in the subject, identity lines in the body, the
        # configured author (the default identity here) instead of the Kubernetes user.
        update = next(
            entry
            for entry in history(remote.path)
            if entry.subject == f"[UPDATE] v1/configmaps/{namespace}/settings"
        )
        live = get_object(control_plane, "configmap", namespace, "settings")["metadata"]
        assert f"uid: {live['uid']}" in update.body
        assert "resourceVersion: " in update.body
        assert "journal-seq: " in update.body
        assert f"target: {namespace}/example-target" in update.body
        assert update.author_name == "reverserd"
        assert {entry.author_name for entry in history(remote.path)[: len(old_shas)]} == {
            OLD_AUTHOR.name
        }
        checkout = clone(remote, tmp_path / "checkout-after")
        fresh_path = f"{FOLDER}/v1/secrets/{namespace}/fresh-secret.sops.yaml"
        decrypted = sops_d(tools, checkout, fresh_path, [old_key])
        assert decrypted.returncode == 0, decrypted.stderr
        assert yaml.safe_load(decrypted.stdout)["data"] == {
            "token": base64.b64encode(b"after-the-switch").decode()
        }
        assert tree(remote.path)[f"{FOLDER}/.sops.yaml"] == old_files[f"{FOLDER}/.sops.yaml"]
        settings = yaml.safe_load(
            tree(remote.path)[f"{FOLDER}/v1/configmaps/{namespace}/settings.yaml"]
        )
        assert settings["data"] == {"mode": "slow", "port": "8080"}
        status = wait_last_commit_is_tip(control_plane, namespace, remote.path, "example-target")
        assert status["lastPushTime"]
        # Condition types and reasons as the guide's table gives them; the adopted folder is
        # checked for drift once the first sync is out.
        wait_condition(
            control_plane, "gittarget", namespace, "example-target", "Drifted", "False", "NoDrift"
        )
        target = conditions(control_plane, "gittarget", namespace, "example-target")
        assert target["Ready"]["status"] == "True", target["Ready"]["message"]
        assert {kind: found["reason"] for kind, found in target.items()} == TARGET_REASONS
        for kind, name in (("watchrule", "example-watchrule"), ("gitprovider", "example-provider")):
            ready = conditions(control_plane, kind, namespace, name)["Ready"]
            assert (ready["status"], ready["reason"]) == ("True", "Ready"), (kind, ready)
        rule = conditions(control_plane, "clusterwatchrule", None, cluster_rule)["Ready"]
        assert (rule["status"], rule["reason"]) == ("True", "Ready"), rule

        # The dashboards' metric names answer, with reverserd's labels.
        samples = metric_samples(daemon)
        for name, labels in DASHBOARD_METRICS.items():
            assert name in samples, name
            assert all(set(found) == labels for found in samples[name]), (name, samples[name])
        for name in NOT_SERVED:
            assert name not in samples, name
        mine = {"target": f"{namespace}/example-target"}
        assert mine in samples["gitopsreverser_commits_total"]
        assert daemon.metric("gitopsreverser_commits_total", **mine) >= 3
        assert daemon.metric("gitopsreverser_files_deleted_total", **mine) >= 1
        assert daemon.metric("gitopsreverser_git_operations_total", result="success") >= 1
    finally:
        daemon.ensure_stopped()


def test_provider_secret_reasons_keep_their_gitops_reverser_names(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    apply(control_plane, *mirror_setup(namespace, remote.url, secret="not-there"))
    daemon.start()
    wait_condition(
        control_plane, "gitprovider", namespace, "mirror", "Ready", "False", "SecretNotFound"
    )
    only_user = secret(namespace, "not-there", {"username": "someone"})
    apply(control_plane, only_user)
    wait_condition(
        control_plane, "gitprovider", namespace, "mirror", "Ready", "False", "SecretMalformed"
    )
