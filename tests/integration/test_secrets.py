"""Secrets end to end with the real ``sops`` and ``age`` binaries: only ever encrypted in Git,
never a plaintext value in the journal, stable across restarts, and fail closed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pygit2
import pytest
import yaml

from testbed.controlplane import ControlPlane
from testbed.gitservers import install_hook, log, push_foreign_commit, read_tree
from testbed.harness import (
    Reverserd,
    apply,
    collection,
    conditions,
    get_object,
    query_journal,
    send_all,
    subjects,
    wait_condition,
    wait_for_subjects,
    wait_synced,
    wait_until,
    webhook_arguments,
)
from testbed.manifests import configmap, mirror_setup, secret
from tests.conftest import Remote

# Secrets changed between the last push and a kill of the daemon.
KILLED_SECRETS = 3


@pytest.fixture
def secret_daemon(control_plane: ControlPlane, tmp_path: Path, tools: Path) -> Iterator[Reverserd]:
    args = ["--sops-path", str(tools / "sops"), "--age-keygen-path", str(tools / "age-keygen")]
    process = Reverserd(control_plane, tmp_path / "state", args)
    yield process
    process.ensure_stopped()


def setup(
    namespace: str, remote: Remote, encryption: dict[str, Any] | None
) -> list[dict[str, Any]]:
    manifests = mirror_setup(
        namespace,
        remote.url,
        secret=remote.secret,
        rules=[{"resources": ["secrets", "configmaps"]}],
    )
    if encryption is not None:
        manifests[1]["spec"]["encryption"] = encryption
    return manifests


def generated_key_in(secret_name: str) -> dict[str, Any]:
    """``spec.encryption`` asking reverserd to generate the age key in ``secret_name``."""
    return {
        "provider": "sops",
        "secretRef": {"name": secret_name},
        "age": {"enabled": True, "recipients": {"generateWhenMissing": True}},
    }


def decrypt(tools: Path, identity: str, content: bytes) -> dict[str, Any]:
    result = subprocess.run(
        [
            str(tools / "sops"),
            "decrypt",
            "--input-type",
            "yaml",
            "--output-type",
            "yaml",
            "/dev/stdin",
        ],
        input=content,
        capture_output=True,
        check=True,
        env={**os.environ, "SOPS_AGE_KEY": identity, "SOPS_DISABLE_VERSION_CHECK": "1"},
    )
    decrypted: dict[str, Any] = yaml.safe_load(result.stdout)
    return decrypted


def test_secret_life_is_mirrored_encrypted_and_decrypts_to_the_sanitized_secret(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    secret_daemon: Reverserd,
    tools: Path,
    age_key: tuple[str, str],
) -> None:
    identity, recipient = age_key
    encryption = {
        "provider": "sops",
        "age": {"enabled": True, "recipients": {"publicKeys": [recipient]}},
    }
    apply(control_plane, *setup(namespace, remote, encryption))
    secret_daemon.start()
    wait_synced(control_plane, namespace)
    path = f"live-cluster/v1/secrets/{namespace}/db.sops.yaml"

    apply(control_plane, secret(namespace, "db", {"password": "first-value"}))
    wait_until(lambda: path in read_tree(remote.path, "main") if subjects(remote.path) else None)
    files = read_tree(remote.path, "main")
    assert b"first-value" not in files[path]
    assert b"Zmlyc3QtdmFsdWU" not in files[path]  # base64 of the value
    assert decrypt(tools, identity, files[path]) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": namespace},
        "type": "Opaque",
        "data": {"password": base64.b64encode(b"first-value").decode()},
    }
    sops_rules = yaml.safe_load(files["live-cluster/.sops.yaml"])
    assert sops_rules["creation_rules"][0]["age"] == recipient
    # The Git credentials Secret existed first: it came encrypted in the initial reconcile,
    # together with .sops.yaml and README.md.
    assert subjects(remote.path) == [
        "reconcile: sync 1 resources",
        f"[CREATE] v1/secrets/{namespace}/db",
    ]
    first = log(remote.path, "main")[-1].sha
    listed = subprocess.run(
        ["git", f"--git-dir={remote.path}", "show", "--name-only", "--format=", first],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sorted(listed) == [
        "live-cluster/.sops.yaml",
        "live-cluster/README.md",
        f"live-cluster/v1/secrets/{namespace}/git-credentials.sops.yaml",
    ]

    apply(control_plane, secret(namespace, "db", {"password": "second-value"}))
    wait_for_subjects(remote.path, secret_daemon, f"[UPDATE] v1/secrets/{namespace}/db")
    updated = decrypt(tools, identity, read_tree(remote.path, "main")[path])
    assert updated["data"] == {"password": base64.b64encode(b"second-value").decode()}

    control_plane.kubectl("delete", "secret", "db", "-n", namespace)
    wait_for_subjects(remote.path, secret_daemon, f"[DELETE] v1/secrets/{namespace}/db")
    assert path not in read_tree(remote.path, "main")


def test_no_plaintext_value_in_journal_wal_or_git_history_and_no_commit_after_restart(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    secret_daemon: Reverserd,
    age_key: tuple[str, str],
) -> None:
    _, recipient = age_key
    encryption = {"age": {"enabled": True, "recipients": {"publicKeys": [recipient]}}}
    apply(control_plane, *setup(namespace, remote, encryption))
    secret_daemon.start()
    wait_synced(control_plane, namespace)
    values = {"token": f"plain-token-{namespace}", "key": f"plain-key-{namespace}"}
    # kubectl apply stores the whole manifest, values included, in the last-applied annotation.
    apply(control_plane, secret(namespace, "api", values))
    control_plane.kubectl(
        "create",
        "secret",
        "generic",
        "literal",
        "-n",
        namespace,
        f"--from-literal=pw=literal-{namespace}",
    )
    wait_for_subjects(
        remote.path,
        secret_daemon,
        f"[CREATE] v1/secrets/{namespace}/api",
        f"[CREATE] v1/secrets/{namespace}/literal",
    )
    history = subjects(remote.path)

    secret_daemon.stop()
    secret_daemon.start()
    apply(control_plane, configmap(namespace, "marker"))
    wait_for_subjects(remote.path, secret_daemon, f"[CREATE] v1/configmaps/{namespace}/marker")
    # The restart re-read both Secrets; ciphertext would differ, fingerprints do not.
    assert subjects(remote.path) == [*history, f"[CREATE] v1/configmaps/{namespace}/marker"]

    needles = [*values.values(), f"literal-{namespace}"]
    needles += [base64.b64encode(value.encode()).decode().rstrip("=") for value in needles]
    # While the daemon runs: its write-ahead log exists only until a clean stop checkpoints it.
    stored = {p.name: p.read_bytes() for p in secret_daemon.state_dir.glob("journal.db*")}
    assert {"journal.db", "journal.db-wal"} <= set(stored), sorted(stored)
    assert stored["journal.db-wal"], "the WAL of a running daemon holds its recent writes"
    for name, content in stored.items():
        for needle in needles:
            assert needle.encode() not in content, (name, needle)
    secret_daemon.stop()
    everything = subprocess.run(
        ["git", f"--git-dir={remote.path}", "log", "-p", "--all", "--format=%B"],
        capture_output=True,
        check=True,
    ).stdout
    assert b".sops.yaml" in everything
    for needle in needles:
        assert needle.encode() not in everything, needle


@pytest.mark.parametrize(
    "recipients_only", [False, True], ids=["no-encryption", "recipients-without-age-enabled"]
)
def test_secrets_fail_closed_without_encryption_while_everything_else_flows(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    secret_daemon: Reverserd,
    age_key: tuple[str, str],
    recipients_only: bool,
) -> None:
    # gitops-reverser's CRD defaults age.enabled to false: recipients alone encrypt nothing.
    encryption = {"age": {"recipients": {"publicKeys": [age_key[1]]}}} if recipients_only else None
    apply(control_plane, *setup(namespace, remote, encryption))
    secret_daemon.start()
    wait_synced(control_plane, namespace)
    apply(control_plane, secret(namespace, "hidden", {"v": "nope"}))
    apply(control_plane, configmap(namespace, "visible"))
    wait_for_subjects(remote.path, secret_daemon, f"[CREATE] v1/configmaps/{namespace}/visible")
    wait_condition(control_plane, "gittarget", namespace, "mirror", "EncryptionConfigured", "False")
    encryption = conditions(control_plane, "gittarget", namespace, "mirror")["EncryptionConfigured"]
    assert encryption["reason"] == "EncryptionNotConfigured"
    assert "spec.encryption" in encryption["message"]
    assert not any(path.endswith(".sops.yaml") for path in read_tree(remote.path, "main"))
    assert all("secrets" not in subject for subject in subjects(remote.path))
    skipped = secret_daemon.metric("reverserd_secrets_skipped_total", target=f"{namespace}/mirror")
    assert skipped >= 1


def test_broken_key_fails_closed_and_service_account_tokens_are_never_written(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    secret_daemon: Reverserd,
    age_key: tuple[str, str],
) -> None:
    apply(
        control_plane,
        *setup(
            namespace,
            remote,
            {"age": {"enabled": True, "recipients": {"publicKeys": ["age1notakey"]}}},
        ),
    )
    secret_daemon.start()
    wait_condition(control_plane, "gittarget", namespace, "mirror", "EncryptionConfigured", "False")
    apply(control_plane, secret(namespace, "kept-out", {"v": "x"}))
    apply(control_plane, configmap(namespace, "flows"))
    wait_for_subjects(remote.path, secret_daemon, f"[CREATE] v1/configmaps/{namespace}/flows")
    assert not any(".sops.yaml" in path for path in read_tree(remote.path, "main"))

    # With a valid key, the Secret skipped meanwhile arrives; a token Secret never does.
    _, recipient = age_key
    token = secret(namespace, "sa-token", {"token": "t"})
    token["type"] = "kubernetes.io/service-account-token"
    token["metadata"]["annotations"] = {"kubernetes.io/service-account.name": "default"}
    apply(control_plane, token)
    patch = {"spec": {"encryption": {"age": {"recipients": {"publicKeys": [recipient]}}}}}
    # A merge patch keeps age.enabled: true from the broken spec.
    control_plane.kubectl(
        "patch", "gittarget", "mirror", "-n", namespace, "--type=merge", "-p", json.dumps(patch)
    )
    wait_until(
        lambda: (
            f"live-cluster/v1/secrets/{namespace}/kept-out.sops.yaml"
            in read_tree(remote.path, "main")
        ),
        timeout=90,
        describe=secret_daemon.log_tail,
    )
    assert f"live-cluster/v1/secrets/{namespace}/sa-token.sops.yaml" not in read_tree(
        remote.path, "main"
    )


def test_generate_when_missing_creates_an_annotated_key_and_warns(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    secret_daemon: Reverserd,
    tools: Path,
) -> None:
    apply(control_plane, *setup(namespace, remote, generated_key_in("sops-age")))
    secret_daemon.start()
    wait_condition(
        control_plane,
        "gittarget",
        namespace,
        "mirror",
        "EncryptionConfigured",
        "True",
        daemon=secret_daemon,
    )
    key_secret = get_object(control_plane, "secret", namespace, "sops-age")
    annotations = key_secret["metadata"]["annotations"]
    assert annotations["configbutler.ai/backup-warning"] == "REMOVE_AFTER_BACKUP"
    assert annotations["configbutler.ai/age-recipient"].startswith("age1")
    (entry,) = [name for name in key_secret["data"] if name.endswith(".agekey")]
    identity = base64.b64decode(key_secret["data"][entry]).decode().strip()
    message = conditions(control_plane, "gittarget", namespace, "mirror")["EncryptionConfigured"]
    assert "WARNING" in message["message"] and "backup-warning" in message["message"]

    apply(control_plane, secret(namespace, "app", {"v": "generated-key-works"}))
    path = f"live-cluster/v1/secrets/{namespace}/app.sops.yaml"
    wait_until(lambda: path in read_tree(remote.path, "main") if subjects(remote.path) else None)
    decrypted = decrypt(tools, identity, read_tree(remote.path, "main")[path])
    assert base64.b64decode(decrypted["data"]["v"]) == b"generated-key-works"


def test_generate_when_missing_never_writes_into_a_secret_that_exists(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    secret_daemon: Reverserd,
) -> None:
    # A GitTarget pointed at the namespace's database password: it must not become a key store.
    apply(control_plane, secret(namespace, "db-admin", {"password": "db-secret"}))
    before = get_object(control_plane, "secret", namespace, "db-admin")
    apply(control_plane, *setup(namespace, remote, generated_key_in("db-admin")))
    secret_daemon.start()
    refused = wait_condition(
        control_plane,
        "gittarget",
        namespace,
        "mirror",
        "EncryptionConfigured",
        "False",
        daemon=secret_daemon,
    )
    assert refused["reason"] == "KeySecretExists", refused
    assert "db-admin" in refused["message"]
    # Later changes are processed (a ConfigMap arrives) and the Secret is still untouched.
    apply(control_plane, configmap(namespace, "later"))
    wait_for_subjects(remote.path, secret_daemon, f"[CREATE] v1/configmaps/{namespace}/later")
    after = get_object(control_plane, "secret", namespace, "db-admin")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["data"] == before["data"]


class TwoPeople(NamedTuple):
    """Key files and recipients of two people: the test's age key, and a colleague's."""

    mine: Path
    my_recipient: str
    colleague: Path
    colleague_recipient: str


@pytest.fixture
def two_people(tools: Path, age_key: tuple[str, str], tmp_path: Path) -> TwoPeople:
    identity, recipient = age_key
    colleague = tmp_path / "colleague.txt"
    subprocess.run(
        [str(tools / "age-keygen"), "-o", str(colleague)], check=True, capture_output=True
    )
    colleague_recipient = subprocess.run(
        [str(tools / "age-keygen"), "-y", str(colleague)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return TwoPeople(
        key_file(identity, tmp_path / "mine.txt"), recipient, colleague, colleague_recipient
    )


class SopsScene(NamedTuple):
    """What a test of a folder's own .sops.yaml works with."""

    control_plane: ControlPlane
    namespace: str
    remote: Remote
    daemon: Reverserd
    tools: Path
    people: TwoPeople


@pytest.fixture
def scene(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    secret_daemon: Reverserd,
    tools: Path,
    two_people: TwoPeople,
) -> SopsScene:
    return SopsScene(control_plane, namespace, remote, secret_daemon, tools, two_people)


def sops_d(
    tools: Path, checkout: Path, path: str, key_files: list[Path]
) -> subprocess.CompletedProcess[str]:
    """``sops -d PATH`` in a clone of the repository, as a person holding ``key_files`` runs it."""
    keys = checkout.parent / f"keys-{len(key_files)}.txt"
    keys.write_text("".join(key.read_text() for key in key_files))
    return subprocess.run(
        [str(tools / "sops"), "-d", path],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "SOPS_AGE_KEY_FILE": str(keys), "SOPS_DISABLE_VERSION_CHECK": "1"},
    )


def clone(remote: Remote, into: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(remote.path), str(into)], check=True)
    return into


def key_file(identity: str, path: Path) -> Path:
    path.write_text(identity + "\n")
    return path


def every_blob(repo: Path) -> dict[str, bytes]:
    """Every blob reachable from any ref of ``repo``, by SHA: all the history ever pushed."""
    repository = pygit2.Repository(str(repo))
    blobs: dict[str, bytes] = {}
    for reference in repository.references:
        target = repository.references[reference].peel(pygit2.Commit)
        for commit in repository.walk(target.id, pygit2.enums.SortMode.TOPOLOGICAL):
            pending = [commit.tree]
            while pending:
                for entry in pending.pop():
                    if isinstance(entry, pygit2.Tree):
                        pending.append(entry)
                    elif isinstance(entry, pygit2.Blob):
                        blobs[str(entry.id)] = entry.data
    return blobs


def assert_no_plaintext(repo: Path, values: list[str]) -> None:
    """No blob of the pushed history holds any of ``values``, raw or base64-encoded."""
    needles = [
        *values,
        *(base64.b64encode(value.encode()).decode().rstrip("=") for value in values),
    ]
    for sha, content in every_blob(repo).items():
        for needle in needles:
            assert needle.encode() not in content, (sha, needle)


def secret_files_in_history(repo: Path, namespace: str) -> list[dict[str, Any]]:
    """Every version of every Secret file of ``namespace`` ever pushed, parsed."""
    marker = b"kind: Secret"
    return [
        yaml.safe_load(content)
        for content in every_blob(repo).values()
        if marker in content and f"namespace: {namespace}".encode() in content
    ]


HOSTILE_SOPS_CONFIGS = {
    "narrower-regex": "    encrypted_regex: '^nope$'\n    age: {mine}\n",
    "extra-recipient": "    encrypted_regex: '^(data|stringData)$'\n    age: {mine},{colleague}\n",
    "kms-key-source": (
        "    encrypted_regex: '^(data|stringData)$'\n    age: {mine}\n"
        "    kms: arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab\n"
    ),
}


@pytest.mark.parametrize("hostile", list(HOSTILE_SOPS_CONFIGS), ids=list(HOSTILE_SOPS_CONFIGS))
def test_a_pushed_sops_config_can_neither_narrow_encryption_nor_add_a_reader(
    scene: SopsScene, hostile: str
) -> None:
    control_plane, namespace, remote, daemon, tools = scene[:5]
    mine, my_recipient, colleague, colleague_recipient = scene.people
    encryption = {"age": {"enabled": True, "recipients": {"publicKeys": [my_recipient]}}}
    apply(control_plane, *setup(namespace, remote, encryption))
    apply(control_plane, secret(namespace, "db", {"password": f"before-{namespace}"}))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)

    # Someone with push access rewrites the folder's rules; reverserd restarts (a rollout).
    rule = HOSTILE_SOPS_CONFIGS[hostile].format(mine=my_recipient, colleague=colleague_recipient)
    config = f"creation_rules:\n  - path_regex: .*\n{rule}".encode()
    push_foreign_commit(remote.path, "main", "live-cluster/.sops.yaml", config, "sops rules")
    daemon.stop()
    daemon.start()
    # Once a later change is in, the restart's own sync is done: what follows are events.
    apply(control_plane, configmap(namespace, "after-restart"))
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{namespace}/after-restart")
    values = {"db": f"after-{namespace}", "api": f"token-{namespace}"}
    folder = f"live-cluster/v1/secrets/{namespace}"
    db_before = read_tree(remote.path, "main")[f"{folder}/db.sops.yaml"]
    for name, value in values.items():
        apply(control_plane, secret(namespace, name, {"password": value}))
    # Both changes are in once api's file exists and db's differs (as events, or in the sync
    # of a restart, however the daemon groups them).
    wait_until(
        lambda: (
            f"{folder}/api.sops.yaml" in (files := read_tree(remote.path, "main"))
            and files[f"{folder}/db.sops.yaml"] != db_before
        ),
        describe=daemon.log_tail,
    )

    assert_no_plaintext(remote.path, [f"before-{namespace}", *values.values()])
    versions = secret_files_in_history(remote.path, namespace)
    assert len(versions) >= 3  # db before and after, api
    for version in versions:
        for value in version["data"].values():
            assert value.startswith("ENC[AES256_GCM,data:"), value
        metadata = version["sops"]
        assert {entry["recipient"] for entry in metadata["age"]} == {my_recipient}
        assert not [
            key
            for key, entry in metadata.items()
            if key != "age" and entry and isinstance(entry, list)
        ]
    checkout = clone(remote, mine.parent / "checkout")
    path = f"live-cluster/v1/secrets/{namespace}/api.sops.yaml"
    assert sops_d(tools, checkout, path, [colleague]).returncode != 0
    result = sops_d(tools, checkout, path, [mine])
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["data"] == {
        "password": base64.b64encode(values["api"].encode()).decode()
    }
    # The folder's .sops.yaml tells the truth again: reverserd's rule first, theirs behind it.
    rules = yaml.safe_load(read_tree(remote.path, "main")["live-cluster/.sops.yaml"])
    assert rules["creation_rules"][0] == {
        "path_regex": "\\.sops\\.yaml$",
        "encrypted_regex": "^(data|stringData)$",
        "age": my_recipient,
    }


def test_sops_output_that_is_not_ciphertext_is_quarantined_and_never_committed(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    tmp_path: Path,
    age_key: tuple[str, str],
) -> None:
    # A sops that returns its input: a broken or replaced binary, or a configuration that
    # encrypts nothing. Whatever the cause, what is not ciphertext stays out of Git.
    echo = tmp_path / "sops"
    echo.write_text("#!/bin/sh\nexec cat\n")
    echo.chmod(0o755)
    daemon = Reverserd(control_plane, tmp_path / "state", ["--sops-path", str(echo)])
    encryption = {"age": {"enabled": True, "recipients": {"publicKeys": [age_key[1]]}}}
    apply(control_plane, *setup(namespace, remote, encryption))
    try:
        daemon.start()
        wait_synced(control_plane, namespace, daemon=daemon)
        apply(control_plane, secret(namespace, "db", {"password": f"clear-{namespace}"}))
        apply(control_plane, configmap(namespace, "flows"))
        wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{namespace}/flows")
        # Both the Secret of the first sync and the one of an event are held, saying why.
        held = [
            f"secrets/{namespace}/db (NotCiphertext: ",
            f"secrets/{namespace}/{remote.secret} (NotCiphertext: ",
        ]

        def quarantined_both() -> bool:
            found = conditions(control_plane, "gittarget", namespace, "mirror").get("Quarantined")
            return bool(found) and all(name in found["message"] for name in held)

        wait_until(
            quarantined_both,
            describe=lambda: str(conditions(control_plane, "gittarget", namespace, "mirror")),
        )
    finally:
        daemon.ensure_stopped()
    assert not [path for path in read_tree(remote.path, "main") if "/secrets/" in path]
    credentials = get_object(control_plane, "secret", namespace, remote.secret)["data"]
    password = base64.b64decode(credentials["password"]).decode()
    assert_no_plaintext(remote.path, [f"clear-{namespace}", password])


def test_secret_changed_while_down_after_an_unpushed_commit_reaches_git(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    secret_daemon: Reverserd,
    tools: Path,
    age_key: tuple[str, str],
) -> None:
    identity, recipient = age_key
    encryption = {"age": {"enabled": True, "recipients": {"publicKeys": [recipient]}}}
    manifests = setup(namespace, remote, encryption)
    # Commits wait locally for 3 s: time to kill the daemon between commit and push.
    manifests[0]["spec"]["push"] = {"interval": "3s", "maxCommits": 10_000}
    apply(control_plane, *manifests)
    secret_daemon.start()
    wait_synced(control_plane, namespace)
    path = f"live-cluster/v1/secrets/{namespace}/db.sops.yaml"

    apply(control_plane, secret(namespace, "db", {"password": "first-value"}))
    wait_until(
        lambda: any(
            line.get("message") == "Created commit"
            and line.get("subject") == f"[CREATE] v1/secrets/{namespace}/db"
            for line in secret_daemon.log_lines()
        ),
        describe=secret_daemon.log_tail,
    )
    secret_daemon.kill()
    assert path not in read_tree(remote.path, "main"), "killed before the push"
    # Changed while reverserd is down; on restart the replay of the committed CREATE must not
    # take the new value's fingerprint for what it wrote.
    apply(control_plane, secret(namespace, "db", {"password": "second-value"}))
    secret_daemon.start()
    second = {"password": base64.b64encode(b"second-value").decode()}

    def written() -> bool:
        files = read_tree(remote.path, "main") if subjects(remote.path) else {}
        return path in files and decrypt(tools, identity, files[path])["data"] == second

    wait_until(written, describe=secret_daemon.log_tail)
    # The commit the kill interrupted lived only in memory (commits reach the clone's disk when
    # they are pushed): it is redone from the journal, never twice.
    assert subjects(remote.path).count(f"[CREATE] v1/secrets/{namespace}/db") <= 1


def test_secret_changed_back_after_a_push_the_kill_hid_reaches_git(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    secret_daemon: Reverserd,
    tools: Path,
    age_key: tuple[str, str],
    tmp_path: Path,
) -> None:
    identity, recipient = age_key
    encryption = {"age": {"enabled": True, "recipients": {"publicKeys": [recipient]}}}
    apply(control_plane, *setup(namespace, remote, encryption))
    secret_daemon.start()
    wait_synced(control_plane, namespace)
    path = f"live-cluster/v1/secrets/{namespace}/db.sops.yaml"

    def on_server(value: bytes) -> bool:
        files = read_tree(remote.path, "main") if subjects(remote.path) else {}
        encoded = {"password": base64.b64encode(value).decode()}
        return path in files and decrypt(tools, identity, files[path])["data"] == encoded

    apply(control_plane, secret(namespace, "db", {"password": "first-value"}))
    wait_until(lambda: on_server(b"first-value"), describe=secret_daemon.log_tail)
    # The server takes the next push, then holds its answer until the daemon is killed: the
    # cursor, and the record of the first value's fingerprint, never move past it.
    release = tmp_path / "release"
    install_hook(
        remote.path, "post-receive", f"#!/bin/sh\nwhile [ ! -e {release} ]; do sleep 0.1; done\n"
    )
    apply(control_plane, secret(namespace, "db", {"password": "second-value"}))
    wait_until(lambda: on_server(b"second-value"), describe=secret_daemon.log_tail)
    secret_daemon.kill()
    release.touch()
    secret_daemon.start()
    # Back to the first value: the replayed commit wrote the second, so this must be written.
    apply(control_plane, secret(namespace, "db", {"password": "first-value"}))
    wait_until(lambda: on_server(b"first-value"), describe=secret_daemon.log_tail)


def test_secret_changes_are_attributed_to_no_one_through_admission_and_never_digested(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    secret_daemon: Reverserd,
    age_key: tuple[str, str],
    admission_registered: int,
) -> None:
    """No digest of a Secret's values is ever taken, so no review can prove a Secret change:
    a denied request's review would match the next change from the same version, whoever made
    it. The commits are the mirror's, with the field manager."""
    _, recipient = age_key
    encryption = {
        "provider": "sops",
        "age": {"enabled": True, "recipients": {"publicKeys": [recipient]}},
    }
    tokens = {who: control_plane.service_account_token(namespace, who) for who in ("alice", "bob")}
    secret_daemon.extra_args += webhook_arguments(control_plane, "admission", admission_registered)
    apply(control_plane, *setup(namespace, remote, encryption))
    secret_daemon.start()
    wait_synced(control_plane, namespace)
    path = collection(secret(namespace, "db", {}), "secrets")
    asyncio.run(
        send_all(
            control_plane, [("POST", path, secret(namespace, "db", {"pw": "one"}))], tokens["alice"]
        )
    )
    subject = f"v1/secrets/{namespace}/db"
    wait_for_subjects(remote.path, secret_daemon, f"[CREATE] {subject}")
    patch = {"data": {"pw": base64.b64encode(b"two").decode()}}
    asyncio.run(send_all(control_plane, [("PATCH", f"{path}/db", patch)], tokens["bob"]))
    wait_for_subjects(remote.path, secret_daemon, f"[CREATE] {subject}", f"[UPDATE] {subject}")
    users = {
        entry.subject.split(" ")[0]: entry.body.split("user: ", 1)[1].split("\n")[0]
        for entry in log(remote.path, "main")
        if entry.subject.endswith(subject)
    }
    assert users == {"[CREATE]": "unresolved", "[UPDATE]": "unresolved"}
    digests = query_journal(
        secret_daemon,
        "SELECT o.digest FROM event_origins o JOIN events e ON e.seq = o.seq"
        " WHERE e.resource = 'secrets' UNION ALL"
        " SELECT digest FROM attribution_facts WHERE resource = 'secrets'",
    )
    assert digests and all(row == (None,) for row in digests)
    facts = query_journal(
        secret_daemon, "SELECT count(*) FROM attribution_facts WHERE resource = 'secrets'"
    )
    assert facts == [(0,)]


def test_secret_changes_around_a_kill_keep_their_own_commits(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    secret_daemon: Reverserd,
    age_key: tuple[str, str],
    admission_registered: int,
) -> None:
    """Changes journaled but not pushed when the daemon was killed, and changes made while it
    was down, are each committed on their own after the restart, not folded into a reconcile."""
    _, recipient = age_key
    encryption = {"age": {"enabled": True, "recipients": {"publicKeys": [recipient]}}}
    secret_daemon.extra_args += webhook_arguments(control_plane, "admission", admission_registered)
    apply(control_plane, *setup(namespace, remote, encryption))
    secret_daemon.start()
    wait_synced(control_plane, namespace)
    names = [f"s-{i}" for i in range(KILLED_SECRETS)]
    for name in names:
        apply(control_plane, secret(namespace, name, {"pw": "one"}))
    created = [f"[CREATE] v1/secrets/{namespace}/{name}" for name in names]
    wait_until(lambda: set(created) <= set(subjects(remote.path)), describe=secret_daemon.log_tail)
    reconciles_before = [s for s in subjects(remote.path) if s.startswith("reconcile")]
    # The server refuses every push until the restart: the commits made before the kill never
    # leave the daemon, and their changes must be committed again from the journal.
    refusal = install_hook(remote.path, "pre-receive", "#!/bin/sh\nexit 1\n")
    for name in names:
        apply(control_plane, secret(namespace, name, {"pw": "two"}))

    def journaled() -> bool:
        rows = query_journal(
            secret_daemon,
            "SELECT count(*) FROM events WHERE resource = 'secrets' AND kind = 'UPDATE'",
        )
        return rows[0][0] == KILLED_SECRETS

    wait_until(journaled, describe=secret_daemon.log_tail)
    secret_daemon.kill()
    refusal.unlink()
    apply(control_plane, secret(namespace, "made-while-down", {"pw": "three"}))
    secret_daemon.start()
    expected = [f"[UPDATE] v1/secrets/{namespace}/{name}" for name in names]
    expected.append(f"[CREATE] v1/secrets/{namespace}/made-while-down")

    def all_committed() -> list[str] | None:
        found = subjects(remote.path)
        return found if set(expected) <= set(found) else None

    found = wait_until(all_committed, describe=secret_daemon.log_tail)
    assert [s for s in found if s.startswith("reconcile")] == reconciles_before, found
