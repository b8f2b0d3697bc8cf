"""OpenPGP commit signatures: keys as ``gpg`` 2.2 makes and exports them, signatures as
``git verify-commit`` checks them with ``gpg.format=openpgp`` (file:// remotes); a hostile
key's S2K count is refused before any derivation."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from reverserd.git import BranchRepository, CommitSigner, SigningKeyError, openpgp
from testbed.gitservers import OpenPGPKeyring, openpgp_keyring, verify_commit_openpgp
from tests.conftest import COMMITTER, write

PASSPHRASE = "correct horse"


@pytest.fixture(
    scope="module",
    params=[
        ("rsa2048", ""),
        ("rsa2048", PASSPHRASE),
        ("ed25519", ""),
        ("future-default", PASSPHRASE),
    ],
    ids=["rsa2048", "rsa2048-passphrase", "ed25519", "future-default-passphrase"],
)
def keyring(request: pytest.FixtureRequest) -> Iterator[tuple[OpenPGPKeyring, str]]:
    algorithm, passphrase = request.param
    made = openpgp_keyring(algorithm, COMMITTER.email, passphrase)
    yield made, passphrase
    made.close()


def signed_clone(tmp_path: Path, signer: CommitSigner) -> tuple[Path, str]:
    remote = pygit2.init_repository(str(tmp_path / "remote.git"), bare=True, initial_head="main")
    clone = BranchRepository(tmp_path / "clone", remote.path, "main", signer=signer)
    clone.open()
    sha = write(clone, "a.yaml", b"a\n", "one\n\nuid: 1\n")
    clone.push()
    return Path(remote.path), sha


def test_keys_gpg_exports_sign_commits_git_verifies_and_a_tampered_commit_fails(
    tmp_path: Path, keyring: tuple[OpenPGPKeyring, str]
) -> None:
    key, passphrase = keyring
    signer = CommitSigner.from_text(key.private_key, passphrase or None)
    remote, sha = signed_clone(tmp_path, signer)
    result = verify_commit_openpgp(remote, sha, key.home)
    assert result.returncode == 0, result.stderr
    assert "Good signature" in result.stderr and key.fingerprint in result.stderr
    raw = subprocess.run(
        ["git", f"--git-dir={remote}", "cat-file", "commit", sha],
        capture_output=True,
        check=True,
    ).stdout
    assert signer.signed(raw.split(b"gpgsig ", 1)[1].split(b"\n\n", 1)[0].replace(b"\n ", b"\n"))
    tampered_object = raw.replace(b"one\n", b"two\n")
    tampered = (
        subprocess.run(
            ["git", f"--git-dir={remote}", "hash-object", "-t", "commit", "-w", "--stdin"],
            input=tampered_object,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    refused = verify_commit_openpgp(remote, tampered, key.home)
    assert refused.returncode != 0 and "BAD signature" in refused.stderr, refused.stderr


def test_the_published_public_key_is_the_keys_armored_public_key(
    tmp_path: Path, keyring: tuple[OpenPGPKeyring, str]
) -> None:
    key, passphrase = keyring
    signer = CommitSigner.from_text(key.private_key, passphrase or None)
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    imported = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--import"],
        input=signer.public_key,
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 0, imported.stderr
    listing = subprocess.run(
        ["gpg", "--homedir", str(home), "--with-colons", "--list-keys"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"fpr:::::::::{key.fingerprint}:" in listing
    secrets = subprocess.run(
        ["gpg", "--homedir", str(home), "--with-colons", "--list-secret-keys"],
        capture_output=True,
        text=True,
    ).stdout
    assert key.fingerprint not in secrets
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


def test_an_encrypted_key_needs_its_passphrase(keyring: tuple[OpenPGPKeyring, str]) -> None:
    key, passphrase = keyring
    if not passphrase:
        with pytest.raises(SigningKeyError, match="not encrypted"):
            CommitSigner.from_text(key.private_key, "unexpected")
        return
    with pytest.raises(SigningKeyError, match="no passphrase"):
        CommitSigner.from_text(key.private_key)
    with pytest.raises(SigningKeyError, match="passphrase is wrong"):
        CommitSigner.from_text(key.private_key, "wrong")


def test_an_s2k_count_above_the_cap_is_refused_before_deriving(
    keyring: tuple[OpenPGPKeyring, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key, passphrase = keyring
    # gpg 2.2 writes the largest count the format encodes, so the cap is lowered below it.
    monkeypatch.setattr(openpgp, "MAX_S2K_COUNT", 65_536)
    if not passphrase:
        # Nothing is derived for an unencrypted key, so the cap does not apply.
        signer = CommitSigner.from_text(key.private_key)
        assert isinstance(signer, openpgp.OpenPGPSigner)
        assert signer.fingerprint.hex().upper() == key.fingerprint
        return
    derived: list[str] = []
    monkeypatch.setattr(openpgp.hashlib, "new", lambda *args: derived.append("!"))
    with pytest.raises(SigningKeyError, match="S2K count"):
        CommitSigner.from_text(key.private_key, passphrase)
    assert not derived


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "does not start with a secret key"),
        (b"\x94\x06\x04\x00\x00\x00\x00\x11", "algorithm 17 is not supported"),
        (b"\x94\x7f\x04", "truncated"),
        (b"\xc5\xff\xff\xff\xff\xff\x04", "truncated"),
        (b"\x94\x10\x04\x00\x00\x00\x00\x16\x09\x2b\x06\x01\x04\x01\xda\x47\x0f\x01", "truncated"),
        (b"\x94\x06\x03\x00\x00\x00\x00\x01", "version 4"),
    ],
    ids=["empty", "dsa", "short-packet", "huge-length", "no-point", "version-3"],
)
def test_malformed_key_blocks_are_refused(body: bytes, reason: str) -> None:
    text = openpgp._armor("PRIVATE KEY BLOCK", body)
    with pytest.raises(SigningKeyError, match=reason):
        CommitSigner.from_text(text)


def test_a_key_block_whose_checksum_does_not_match_is_refused(
    keyring: tuple[OpenPGPKeyring, str],
) -> None:
    key, passphrase = keyring
    lines = key.private_key.splitlines()
    checksum = next(i for i, line in enumerate(lines) if line.startswith("="))
    lines[checksum] = "=AAAA" if lines[checksum] != "=AAAA" else "=AAAB"
    with pytest.raises(SigningKeyError, match="checksum"):
        CommitSigner.from_text("\n".join(lines), passphrase or None)
