"""Signed commits end to end: every commit reverserd pushes to a signing provider's branch
verifies with ``git verify-commit`` (``gpg.format=ssh`` and an allowed-signers file, or
``gpg.format=openpgp`` and a keyring), commits
rebuilt on someone else's push included; a generated key is published in its Secret and in
status; a broken key makes no commit at all and the mirror resumes once the key is fixed.

Keys are made with ``ssh-keygen`` (OpenPGP ones with ``gpg``) and checked with ``git``, never
with reverserd's own code.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest

from testbed.controlplane import ControlPlane
from testbed.gitservers import (
    FOREIGN_AUTHOR,
    branch_tip,
    install_hook,
    log,
    openpgp_keyring,
    push_foreign_commit,
    verify_commit,
    verify_commit_openpgp,
)
from testbed.harness import (
    Reverserd,
    apply,
    get_object,
    resource_status,
    subjects,
    tree,
    wait_condition,
    wait_for_subjects,
    wait_synced,
    wait_until,
)
from testbed.manifests import configmap, mirror_setup, secret
from tests.conftest import Remote
from tests.integration.test_git_behaviour import (
    NO_EARLY_PUSH,
    SLOW_PUSH_INTERVAL,
    messages,
    subject,
    unpushed_commit,
)
from tests.unit.test_git_signing import bcrypt_rounds_set_to

SIGNER_EMAIL = "mirror-bot@example.test"


def ssh_key(directory: Path, kind: str) -> tuple[str, str]:
    """A new key pair of ``kind`` (``ed25519``, ``rsa``, ``ecdsa``): (private, public)."""
    path = directory / f"id_{kind}"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "signing", "-f", str(path)],
        check=True,
    )
    return path.read_text(), path.with_suffix(".pub").read_text().strip()


def signing_setup(
    namespace: str, remote: Remote, secret_name: str, generate: bool = False, slow: bool = False
) -> list[dict[str, Any]]:
    setup = mirror_setup(
        namespace,
        remote.url,
        secret=remote.secret,
        interval=SLOW_PUSH_INTERVAL if slow else "1s",
        max_commits=NO_EARLY_PUSH if slow else None,
    )
    signing: dict[str, Any] = {"secretRef": {"name": secret_name}}
    if generate:
        signing["generateWhenMissing"] = True
    setup[0]["spec"]["commit"] = {
        "committer": {"name": "Mirror Bot", "email": SIGNER_EMAIL},
        "signing": signing,
    }
    return setup


def ours_verify(
    repo: Path, public_key: str, scratch: Path, keyring: Path | None = None
) -> list[str]:
    """SHAs on ``main`` not made by the foreign writer; asserts every one verifies (against the
    GnuPG home ``keyring`` when given, else against the SSH ``public_key``)."""
    ours = []
    for entry in log(repo, "main"):
        committer = subprocess.run(
            ["git", f"--git-dir={repo}", "show", "-s", "--format=%ce", entry.sha],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if committer == FOREIGN_AUTHOR.email:
            continue
        assert committer == SIGNER_EMAIL, committer
        if keyring is not None:
            result = verify_commit_openpgp(repo, entry.sha, keyring)
            good = "Good signature"
        else:
            result = verify_commit(repo, entry.sha, SIGNER_EMAIL, public_key, scratch)
            good = 'Good "git" signature'
        assert result.returncode == 0, f"{entry.sha}: {result.stderr}"
        assert good in result.stderr, result.stderr
        ours.append(entry.sha)
    return ours


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
def test_every_commit_on_a_signing_branch_verifies_also_when_rebuilt_on_a_foreign_push(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    tmp_path: Path,
    kind: str,
) -> None:
    private, public = ssh_key(tmp_path, kind)
    apply(control_plane, secret(namespace, "signing", {"signing.key": private}))
    # Present before the start, so the first sync is a reconcile commit.
    apply(control_plane, configmap(namespace, "seeded"))
    apply(control_plane, *signing_setup(namespace, remote, "signing", slow=True))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)

    apply(control_plane, configmap(namespace, "a", {"n": "1"}))
    wait_for_subjects(remote.path, daemon, subject("CREATE", namespace, "a"))
    # Someone pushes while our next commit waits locally: it is rebuilt on their commit.
    mark = len(daemon.log_lines())
    apply(control_plane, configmap(namespace, "b", {"n": "1"}))
    wait_until(lambda: unpushed_commit(messages(daemon, mark)), describe=daemon.log_tail)
    local = unpushed_commit(messages(daemon, mark))
    assert local is not None
    foreign = push_foreign_commit(remote.path, "main", "notes.md", b"theirs\n", "their notes")
    wait_for_subjects(remote.path, daemon, subject("CREATE", namespace, "b"))

    history = [entry.sha for entry in log(remote.path, "main")]
    rebuilt = history[0]
    assert history[1] == foreign, "our commit was not rebuilt on the foreign one"
    assert rebuilt != local["commit"]
    ours = ours_verify(remote.path, public, tmp_path)
    # The reconcile commit and both change commits, the rebuilt one included.
    assert len(ours) == 3 and rebuilt in ours
    assert subjects(remote.path)[0].startswith("reconcile: ")
    assert resource_status(control_plane, "gitprovider", namespace, "mirror")[
        "signingPublicKey"
    ] == " ".join(public.split()[:2])


def test_every_commit_signed_with_an_openpgp_key_verifies_with_its_keyring(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    tmp_path: Path,
) -> None:
    keyring = openpgp_keyring("ed25519", SIGNER_EMAIL, passphrase="correct horse")
    try:
        apply(
            control_plane,
            secret(
                namespace,
                "signing",
                {"signing.key": keyring.private_key, "passphrase": "correct horse"},
            ),
        )
        apply(control_plane, configmap(namespace, "seeded"))
        apply(control_plane, *signing_setup(namespace, remote, "signing"))
        daemon.start()
        wait_synced(control_plane, namespace, daemon=daemon)
        apply(control_plane, configmap(namespace, "a", {"n": "1"}))
        wait_for_subjects(remote.path, daemon, subject("CREATE", namespace, "a"))
        apply(control_plane, configmap(namespace, "a", {"n": "2"}))
        wait_for_subjects(remote.path, daemon, subject("UPDATE", namespace, "a"))

        ours = ours_verify(remote.path, "", tmp_path, keyring=keyring.home)
        assert len(ours) == len(subjects(remote.path)) == 3
        assert subjects(remote.path)[0].startswith("reconcile: ")
        published = resource_status(control_plane, "gitprovider", namespace, "mirror")[
            "signingPublicKey"
        ]
        assert published.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
        imported = subprocess.run(
            [
                "gpg",
                "--homedir",
                str(keyring.home),
                "--batch",
                "--import-options",
                "show-only",
                "--with-colons",
                "--import",
            ],
            input=published,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"fpr:::::::::{keyring.fingerprint}:" in imported
    finally:
        keyring.close()


def test_generated_signing_key_is_published_in_the_secret_and_status_and_verifies(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    tmp_path: Path,
) -> None:
    apply(control_plane, *signing_setup(namespace, remote, "signing", generate=True))
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    apply(control_plane, configmap(namespace, "a"))
    wait_for_subjects(remote.path, daemon, subject("CREATE", namespace, "a"))

    created = get_object(control_plane, "secret", namespace, "signing")
    private = base64.b64decode(created["data"]["signing.key"]).decode()
    key_file = tmp_path / "generated"
    key_file.write_text(private)
    key_file.chmod(0o600)
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(key_file)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert derived.startswith("ssh-ed25519 ")
    assert base64.b64decode(created["data"]["signing.pub"]).decode().strip() == derived
    status = wait_until(
        lambda: resource_status(control_plane, "gitprovider", namespace, "mirror").get(
            "signingPublicKey"
        )
    )
    assert status == derived
    assert len(ours_verify(remote.path, status, tmp_path)) == len(subjects(remote.path)) == 1


def hostile_key(kind: str, directory: Path) -> tuple[dict[str, str], str]:
    """Secret data whose key cannot sign, and what the refusal says about it."""
    if kind == "garbage":
        return {"signing.key": "not a key"}, "not an OpenSSH or PEM private key"
    if kind == "huge-bcrypt-rounds":
        path = directory / "id_encrypted"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "pass", "-f", str(path)], check=True
        )
        return {
            "signing.key": bcrypt_rounds_set_to(path.read_text(), 2**31),
            "passphrase": "pass",
        }, f"{2**31} bcrypt rounds"
    path = directory / "id_rsa1024"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "1024", "-N", "", "-f", str(path)], check=True
    )
    return {"signing.key": path.read_text()}, "RSA key of 1024 bits"


@pytest.mark.parametrize("kind", ["garbage", "huge-bcrypt-rounds", "small-rsa"])
def test_broken_signing_key_makes_no_commit_and_the_mirror_resumes_when_it_is_fixed(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    tmp_path: Path,
    kind: str,
) -> None:
    data, says = hostile_key(kind, tmp_path)
    apply(control_plane, secret(namespace, "signing", data))
    apply(control_plane, *signing_setup(namespace, remote, "signing"))
    # A provider without signing on the same daemon keeps mirroring meanwhile.
    plain = mirror_setup(
        namespace, remote.url, secret=remote.secret, branch="plain", path="plain", name="plain"
    )
    apply(control_plane, *plain)
    daemon.start()
    refused = wait_condition(
        control_plane, "gitprovider", namespace, "mirror", "Ready", "False", daemon=daemon
    )
    assert refused["reason"] == "SigningKeyInvalid", refused
    assert "signing.key" in refused["message"] and "no commit" in refused["message"]
    assert says in refused["message"], refused
    ready = wait_condition(
        control_plane, "gittarget", namespace, "mirror", "Ready", "False", daemon=daemon
    )
    assert "signing" in ready["message"], ready
    apply(control_plane, configmap(namespace, "waiting"))
    waiting = f"v1/configmaps/{namespace}/waiting.yaml"
    wait_until(lambda: f"plain/{waiting}" in tree(remote.path, "plain"))
    assert branch_tip(remote.path, "main") is None
    assert "signingPublicKey" not in resource_status(
        control_plane, "gitprovider", namespace, "mirror"
    )

    private, public = ssh_key(tmp_path, "ed25519")
    apply(control_plane, secret(namespace, "signing", {"signing.key": private}))
    wait_until(
        lambda: branch_tip(remote.path, "main") and f"live-cluster/{waiting}" in tree(remote.path)
    )
    # Everything that waited arrived, and every commit on the branch is signed by the new key.
    assert len(ours_verify(remote.path, public, tmp_path)) == len(subjects(remote.path))


def test_templates_and_committer_shape_commits_and_a_template_with_logic_is_refused(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
) -> None:
    apply(control_plane, configmap(namespace, "seeded"))
    setup = mirror_setup(namespace, remote.url, secret=remote.secret)
    templates = {
        "eventTemplate": "chore: {{.Operation}} {{.APIVersion}} {{.Resource}}/{{ .Name }}",
        "reconcileTemplate": "reconciled {{.Count}} for {{.GitTarget}}",
    }
    setup[0]["spec"]["commit"] = {
        "committer": {"name": "Mirror Bot", "email": SIGNER_EMAIL},
        "message": templates,
    }
    apply(control_plane, *setup)
    daemon.start()
    target = f"{namespace}/mirror"
    wait_for_subjects(remote.path, daemon, f"reconciled 1 for {target}")
    apply(control_plane, configmap(namespace, "a"))
    wait_for_subjects(remote.path, daemon, "chore: CREATE v1 configmaps/a")
    for entry in log(remote.path, "main"):
        shown = (
            subprocess.run(
                [
                    "git",
                    f"--git-dir={remote.path}",
                    "show",
                    "-s",
                    "--format=%cn <%ce>%n%B",
                    entry.sha,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()
        )
        assert shown[0] == f"Mirror Bot <{SIGNER_EMAIL}>"
        # The lines reverserd reads back stay whatever the template says.
        assert shown[-1] == f"target: {target}", shown

    refused_setup = dict(setup[0])
    refused_setup["spec"] = {
        **setup[0]["spec"],
        "commit": {"message": {"eventTemplate": "{{if .Name}}{{.Name}}{{end}}"}},
    }
    apply(control_plane, refused_setup)
    refused = wait_condition(
        control_plane,
        "gitprovider",
        namespace,
        "mirror",
        "Ready",
        "False",
        reason="UnsupportedTemplate",
        daemon=daemon,
    )
    assert "{{.Field}}" in refused["message"] and "Operation" in refused["message"]
    apply(control_plane, configmap(namespace, "held"))
    apply(control_plane, setup[0])
    # The change made while the template was refused arrives once it is fixed, with it.
    wait_for_subjects(remote.path, daemon, "chore: CREATE v1 configmaps/held")


def test_a_server_requiring_a_registered_key_gets_the_commits_once_the_key_is_replaced(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    tmp_path: Path,
) -> None:
    """Branch protection "require signed commits": the server takes only commits signed by a
    registered key. Signed with another key, the push is refused; once the Secret holds the
    registered key, the waiting commits are signed again with it and pushed."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old_private, unregistered = ssh_key(tmp_path / "old", "ed25519")
    new_private, registered = ssh_key(tmp_path / "new", "ed25519")
    allowed = tmp_path / "server_allowed_signers"
    allowed.write_text(f"{SIGNER_EMAIL} {registered}\n")
    install_hook(
        remote.path,
        "pre-receive",
        "#!/bin/sh\n"
        "while read old new ref; do\n"
        '  for c in $(git rev-list "$new" --not --all); do\n'
        f"    git -c gpg.format=ssh -c gpg.ssh.allowedSignersFile={allowed} verify-commit"
        ' "$c" >/dev/null 2>&1 || { echo "unverified signature on $c" >&2; exit 1; }\n'
        "  done\n"
        "done\n",
    )
    apply(control_plane, configmap(namespace, "seeded"))
    apply(control_plane, secret(namespace, "signing", {"signing.key": old_private}))
    apply(control_plane, *signing_setup(namespace, remote, "signing"))
    daemon.start()
    refused = wait_condition(
        control_plane,
        "gitprovider",
        namespace,
        "mirror",
        "Ready",
        "False",
        reason="PushRefused",
        daemon=daemon,
    )
    assert "pre-receive" in refused["message"], refused
    assert branch_tip(remote.path, "main") is None
    assert resource_status(control_plane, "gitprovider", namespace, "mirror")[
        "signingPublicKey"
    ] == " ".join(unregistered.split()[:2])

    apply(control_plane, secret(namespace, "signing", {"signing.key": new_private}))
    apply(control_plane, configmap(namespace, "after"))
    wait_for_subjects(remote.path, daemon, subject("CREATE", namespace, "after"))
    assert len(ours_verify(remote.path, registered, tmp_path)) == len(subjects(remote.path)) == 2
