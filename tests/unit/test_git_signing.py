"""SSH commit signatures: keys as ``ssh-keygen`` writes them, signatures as ``git verify-commit``
checks them, and a clone that signs never pushes a commit it did not sign (file:// remotes)."""

from __future__ import annotations

import base64
import functools
import subprocess
from pathlib import Path

import pygit2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from reverserd.git import BranchRepository, CommitSigner, FileChange, SigningKeyError
from reverserd.git.signing import MAX_KDF_ROUNDS
from testbed.gitservers import verify_commit
from tests.conftest import AUTHOR, COMMITTER, write


def ssh_keygen(
    tmp_path: Path, kind: str, passphrase: str = "", bits: str = "", rounds: int = 0
) -> Path:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / f"id_{kind}{bits}"
    extra = (["-b", bits] if bits else []) + (["-a", str(rounds)] if rounds else [])
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, *extra, "-N", passphrase, "-f", str(path)], check=True
    )
    return path


def verified(git_dir: Path, sha: str, public_key: str, tmp_path: Path) -> str:
    """git's report that ``sha`` is signed by ``public_key``; fails the test otherwise."""
    result = verify_commit(git_dir, sha, COMMITTER.email, public_key, tmp_path)
    assert result.returncode == 0, result.stderr
    return result.stderr


@pytest.mark.parametrize(
    ("kind", "bits"), [("ed25519", ""), ("rsa", "3072"), ("ecdsa", "256"), ("ecdsa", "521")]
)
def test_keys_ssh_keygen_writes_sign_commits_git_verifies(
    tmp_path: Path, kind: str, bits: str
) -> None:
    key = ssh_keygen(tmp_path, kind, bits=bits)
    signer = CommitSigner.from_text(key.read_text())
    assert signer.public_key.split() == key.with_suffix(".pub").read_text().split()[:2]
    remote = pygit2.init_repository(str(tmp_path / "remote.git"), bare=True, initial_head="main")
    clone = BranchRepository(tmp_path / "clone", remote.path, "main", signer=signer)
    clone.open()
    sha = write(clone, "a.yaml", b"a\n", "one\n\nuid: 1\n")
    clone.push()
    assert 'Good "git" signature' in verified(Path(remote.path), sha, signer.public_key, tmp_path)


def test_an_encrypted_key_needs_its_passphrase(tmp_path: Path) -> None:
    key = ssh_keygen(tmp_path, "ed25519", passphrase="correct horse")
    with pytest.raises(SigningKeyError, match="passphrase"):
        CommitSigner.from_text(key.read_text())
    with pytest.raises(SigningKeyError):
        CommitSigner.from_text(key.read_text(), "wrong")
    assert CommitSigner.from_text(key.read_text(), "correct horse").public_key.startswith(
        "ssh-ed25519 "
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a key",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nAAAA\n-----END PGP PRIVATE KEY BLOCK-----\n",
    ],
)
def test_text_that_is_no_key_is_refused_without_quoting_it(text: str) -> None:
    with pytest.raises(SigningKeyError) as refused:
        CommitSigner.from_text(text)
    assert "AAAA" not in str(refused.value)


def test_commits_made_before_signing_was_configured_are_signed_before_they_are_pushed(
    tmp_path: Path,
) -> None:
    remote = pygit2.init_repository(str(tmp_path / "remote.git"), bare=True, initial_head="main")
    unsigned = BranchRepository(tmp_path / "clone", remote.path, "main")
    unsigned.open()
    write(unsigned, "a.yaml", b"a\n", "first")
    unsigned.push()
    write(unsigned, "b.yaml", b"b\n", "second")
    unsigned.apply([FileChange("c.yaml", b"c\n")], "third", AUTHOR, COMMITTER)
    unsigned.flush()

    signer = CommitSigner.generate()
    signing = BranchRepository(tmp_path / "clone", remote.path, "main", signer=signer)
    signing.open()
    assert [message for _, message in signing.pending_commits()] == ["third", "second"]
    tip = signing.push()

    pushed = [commit for commit in pygit2.Repository(remote.path).walk(pygit2.Oid(hex=tip))]
    assert [commit.message for commit in pushed] == ["third", "second", "first"]
    for commit in pushed[:2]:
        verified(Path(remote.path), str(commit.id), signer.public_key, tmp_path)
    assert pushed[2].gpg_signature == (None, None)
    assert sorted(entry.name for entry in pushed[0].tree) == ["a.yaml", "b.yaml", "c.yaml"]


def test_a_replaced_key_signs_the_pending_commits_again(tmp_path: Path) -> None:
    remote = pygit2.init_repository(str(tmp_path / "remote.git"), bare=True, initial_head="main")
    old, new = CommitSigner.generate(), CommitSigner.generate()
    clone = BranchRepository(tmp_path / "clone", remote.path, "main", signer=old)
    clone.open()
    write(clone, "a.yaml", b"a\n", "pushed")
    clone.push()
    write(clone, "b.yaml", b"b\n", "pending")

    assert clone.use_signer(new)
    assert not clone.use_signer(CommitSigner.from_text(new.private_text()))
    tip = clone.push()
    pushed = list(pygit2.Repository(remote.path).walk(pygit2.Oid(hex=tip)))
    assert [commit.message for commit in pushed] == ["pending", "pushed"]
    verified(Path(remote.path), str(pushed[0].id), new.public_key, tmp_path)
    verified(Path(remote.path), str(pushed[1].id), old.public_key, tmp_path)


def bcrypt_rounds_set_to(text: str, rounds: int) -> str:
    """``text`` (an encrypted OpenSSH key) with its header's bcrypt rounds replaced: what a
    Secret's writer does to make the daemon derive a key for days."""
    body = "".join(text.strip().splitlines()[1:-1])
    blob = bytearray(base64.b64decode(body))
    at = len(b"openssh-key-v1\0")
    for _ in range(2):  # cipher name, KDF name
        at += 4 + int.from_bytes(blob[at : at + 4], "big")
    at += 4  # length of the KDF options
    at += 4 + int.from_bytes(blob[at : at + 4], "big")  # salt
    blob[at : at + 4] = rounds.to_bytes(4, "big")
    encoded = base64.b64encode(bytes(blob)).decode()
    lines = [encoded[i : i + 70] for i in range(0, len(encoded), 70)]
    return "\n".join(
        ["-----BEGIN OPENSSH PRIVATE KEY-----", *lines, "-----END OPENSSH PRIVATE KEY-----", ""]
    )


def test_an_encrypted_key_asking_for_more_bcrypt_rounds_than_the_cap_is_refused(
    tmp_path: Path,
) -> None:
    at_cap = ssh_keygen(tmp_path, "ed25519", "pass", rounds=MAX_KDF_ROUNDS)
    assert CommitSigner.from_text(at_cap.read_text(), "pass").public_key.startswith("ssh-ed25519")
    over = ssh_keygen(tmp_path / "over", "ed25519", "pass", rounds=MAX_KDF_ROUNDS + 1)
    with pytest.raises(SigningKeyError, match=f"{MAX_KDF_ROUNDS + 1} bcrypt rounds"):
        CommitSigner.from_text(over.read_text(), "pass")
    # The rounds are read before anything is derived: 2^32-1 rounds would take days.
    huge = bcrypt_rounds_set_to(at_cap.read_text(), 2**32 - 1)
    with pytest.raises(SigningKeyError, match=f"{2**32 - 1} bcrypt rounds"):
        CommitSigner.from_text(huge, "pass")


@pytest.mark.parametrize("bits", [1024, 4104])
@pytest.mark.parametrize(
    "form", [serialization.PrivateFormat.OpenSSH, serialization.PrivateFormat.PKCS8]
)
def test_rsa_keys_outside_2048_to_4096_bits_are_refused(
    bits: int, form: serialization.PrivateFormat
) -> None:
    key = _rsa_key(bits)
    text = key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())
    with pytest.raises(SigningKeyError, match=f"RSA key of {bits} bits"):
        CommitSigner.from_text(text.decode())


def test_a_pkcs8_encrypted_key_is_refused_its_iterations_are_its_authors_choice() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    text = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass"),
    )
    with pytest.raises(SigningKeyError, match="PKCS#8-encrypted"):
        CommitSigner.from_text(text.decode(), "pass")


@functools.cache
def _rsa_key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, bits)


def test_an_openssh_rsa_key_over_4096_bits_is_refused_from_its_header_before_it_is_loaded() -> None:
    """Loading checks the primes, which costs seconds at 16384 bits: the size is read from the
    public half in the header, so a key whose private half is not even there is refused for it."""

    def string(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    modulus = (1 << 16383) | 1
    public = string(b"ssh-rsa") + string(b"\x01\x00\x01") + string(modulus.to_bytes(2048, "big"))
    blob = b"openssh-key-v1\0" + string(b"none") + string(b"none") + string(b"")
    blob += (1).to_bytes(4, "big") + string(public) + string(b"no private half")
    text = (
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        + base64.encodebytes(blob).decode()
        + "-----END OPENSSH PRIVATE KEY-----\n"
    )
    with pytest.raises(SigningKeyError, match="RSA key of 16384 bits"):
        CommitSigner.from_text(text)
