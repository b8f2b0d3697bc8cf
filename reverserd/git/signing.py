"""SSH signatures of commits, made in-process, in the form ``git verify-commit`` checks.

A branch whose GitProvider sets ``spec.commit.signing`` may be protected by "require signed
commits": every commit reverserd writes there must carry a signature, and one unsigned commit
would be refused by the server (and would stop every change behind it). So a
:class:`CommitSigner` is handed to the clone when it opens and signs each commit object as it is
built; there is no path that writes a commit of that clone without it.

The format is OpenSSH's ``SSHSIG`` (``PROTOCOL.sshsig``), which Git writes and checks with
``gpg.format=ssh``: the commit object without its ``gpgsig`` header is the message, hashed with
SHA-512 and signed under the namespace ``git``; the signature blob names the public key, so
an allowed-signers file (or a hosting service's list of signing keys) decides whether it is
trusted. The armored signature goes into the commit as the ``gpgsig`` header.

Signing costs tens of microseconds of CPU with Ed25519 and ECDSA; an RSA key costs milliseconds
per commit at 3072 bits (2.6 ms measured on a loaded two-core machine), which caps a branch at a
few hundred commits per second: prefer Ed25519 (what ``generateWhenMissing`` creates).

The key is written by whoever may write the Secret, so reading it must not cost what its author
chooses: an encrypted OpenSSH key names its own bcrypt rounds (a 32-bit number), so they are read
from the key's header and refused above :data:`MAX_KDF_ROUNDS` before anything is derived; an
RSA key must be :data:`RSA_MIN_BITS` to :data:`RSA_MAX_BITS` bits (an OpenSSH key's size is read
from its public half before the private half is loaded); and a PKCS#8 ``ENCRYPTED PRIVATE KEY``,
whose PBKDF2 iteration count is likewise its author's choice, is refused. Callers still parse off
the event loop: even a key within these caps costs up to a second.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

SSHSIG_MAGIC = b"SSHSIG"
SSHSIG_VERSION = 1
GIT_NAMESPACE = b"git"
"""The namespace Git signs and verifies commits under (``git verify-commit`` checks it)."""
ARMOR_LINE_CHARS = 70
"""Line length of the armored signature, as ``ssh-keygen -Y sign`` writes it."""

MAX_KDF_ROUNDS = 64
"""Most bcrypt rounds an encrypted OpenSSH key may ask for. ``ssh-keygen`` writes 16 unless told
otherwise; 64 leaves room for keys made with a deliberately higher ``-a`` while one load stays
well under a second (300 rounds took 3 s on a loaded two-core machine, so 64 cost about 0.6 s).
The field is the key author's 32-bit choice, which unbounded would occupy a core for days."""
RSA_MIN_BITS = 2048
"""Smallest RSA key accepted: NIST SP 800-131A disallows shorter keys for new signatures, and
a hosting service may refuse to register them."""
RSA_MAX_BITS = 4096
"""Largest RSA key accepted: the largest size in common use; loading (prime checks) and every
signature cost roughly the cube of the size, so a 16384-bit key costs some 64 times a 4096-bit
one, on every load and every commit."""

_OPENSSH_MAGIC = b"openssh-key-v1\0"
_OPENSSH_ARMOR = re.compile(
    rb"-----BEGIN OPENSSH PRIVATE KEY-----(.*?)-----END OPENSSH PRIVATE KEY-----", re.DOTALL
)

_ECDSA_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}
_ECDSA_NAMES = {"secp256r1": "nistp256", "secp384r1": "nistp384", "secp521r1": "nistp521"}

SigningKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class SigningKeyError(ValueError):
    """The key material cannot sign; the message names the problem, never the key."""


class CommitSigner:
    """Signs commit payloads with one private key (Ed25519, RSA or ECDSA on a NIST curve)."""

    def __init__(self, key: SigningKey) -> None:
        self._key = key
        self._public_blob = base64.b64decode(self.public_key.split()[1])

    @classmethod
    def from_text(cls, text: str, passphrase: str | None = None) -> CommitSigner:
        """Read an OpenSSH (``-----BEGIN OPENSSH PRIVATE KEY-----``) or PEM private key, or an
        armored OpenPGP one (:mod:`reverserd.git.openpgp`, imported here: it builds on this one)."""
        data = text.strip().encode() + b"\n"
        if b"-----BEGIN PGP PRIVATE KEY BLOCK-----" in data:
            from reverserd.git.openpgp import OpenPGPSigner

            return OpenPGPSigner.from_armored(text, passphrase)
        password = passphrase.encode() if passphrase else None
        if b"OPENSSH PRIVATE KEY" in data:
            check_openssh_costs(data)
        elif b"ENCRYPTED PRIVATE KEY" in data:
            raise SigningKeyError(
                "PKCS#8-encrypted keys are not accepted (their author chooses what decrypting"
                " them costs); use an OpenSSH key (ssh-keygen -p converts one) or no encryption"
            )
        try:
            key: object
            if b"OPENSSH PRIVATE KEY" in data:
                key = serialization.load_ssh_private_key(data, password)
            else:
                key = serialization.load_pem_private_key(data, password)
        except TypeError:
            raise SigningKeyError(
                "the key is encrypted and no passphrase was given"
                if password is None
                else "a passphrase was given but the key is not encrypted"
            ) from None
        except (ValueError, UnsupportedAlgorithm) as error:
            if password is None and "password" in str(error).lower():
                raise SigningKeyError("the key is encrypted and no passphrase was given") from None
            wrong = " (or the passphrase is wrong)" if password is not None else ""
            raise SigningKeyError(
                "not an OpenSSH or PEM private key of a supported type (Ed25519, RSA, ECDSA)"
                + wrong
            ) from None
        if isinstance(key, ec.EllipticCurvePrivateKey):
            if key.curve.name not in _ECDSA_HASHES:
                raise SigningKeyError(f"ECDSA curve {key.curve.name} cannot sign SSH signatures")
            return cls(key)
        if isinstance(key, rsa.RSAPrivateKey):
            _check_rsa_bits(key.key_size)
            return cls(key)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return cls(key)
        raise SigningKeyError(f"{type(key).__name__} keys are not supported")

    @classmethod
    def generate(cls) -> CommitSigner:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> str:
        """The public key in ``authorized_keys`` form (``ssh-ed25519 AAAA…``)."""
        return (
            self._key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )

    def private_text(self) -> str:
        """The private key in OpenSSH form, unencrypted (for a Secret reverserd creates)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode()

    def sign(self, payload: bytes) -> bytes:
        """The armored SSH signature of ``payload`` (a commit object without ``gpgsig``)."""
        hashed = _string(hashlib.sha512(payload).digest())
        signed = SSHSIG_MAGIC + _string(GIT_NAMESPACE) + _string(b"") + _string(b"sha512") + hashed
        blob = (
            SSHSIG_MAGIC
            + struct.pack(">I", SSHSIG_VERSION)
            + _string(self._public_blob)
            + _string(GIT_NAMESPACE)
            + _string(b"")
            + _string(b"sha512")
            + _string(self._raw_signature(signed))
        )
        encoded = base64.b64encode(blob).decode()
        lines = [
            encoded[i : i + ARMOR_LINE_CHARS] for i in range(0, len(encoded), ARMOR_LINE_CHARS)
        ]
        armored = ["-----BEGIN SSH SIGNATURE-----", *lines, "-----END SSH SIGNATURE-----"]
        return ("\n".join(armored) + "\n").encode()

    def signed(self, armored: bytes | None) -> bool:
        """Whether ``armored`` (a commit's ``gpgsig``) is an SSH signature naming this key.

        Only the key is compared, not the signature: it tells commits this clone signed from
        commits made before signing was configured or with a replaced key.
        """
        if not armored:
            return False
        body = b"".join(armored.strip().splitlines()[1:-1])
        try:
            blob = base64.b64decode(body, validate=True)
        except ValueError:
            return False
        start = len(SSHSIG_MAGIC) + 4
        if blob[: len(SSHSIG_MAGIC)] != SSHSIG_MAGIC or len(blob) < start + 4:
            return False
        (size,) = struct.unpack(">I", blob[start : start + 4])
        return blob[start + 4 : start + 4 + size] == self._public_blob

    def _raw_signature(self, data: bytes) -> bytes:
        key = self._key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return _string(b"ssh-ed25519") + _string(key.sign(data))
        if isinstance(key, rsa.RSAPrivateKey):
            signature = key.sign(data, padding.PKCS1v15(), hashes.SHA512())
            return _string(b"rsa-sha2-512") + _string(signature)
        curve = key.curve.name
        der = key.sign(data, ec.ECDSA(_ECDSA_HASHES[curve]()))
        r, s = decode_dss_signature(der)
        name = f"ecdsa-sha2-{_ECDSA_NAMES[curve]}".encode()
        return _string(name) + _string(_mpint(r) + _mpint(s))


def signed_commit(raw: bytes, signature: bytes) -> bytes:
    """``raw`` (a commit object) with ``signature`` as its ``gpgsig`` header.

    The header goes after the last header line (``committer``), each further line of the
    signature indented by one space, as Git writes it.
    """
    headers, separator, message = raw.partition(b"\n\n")
    folded = signature.rstrip(b"\n").replace(b"\n", b"\n ")
    return headers + b"\ngpgsig " + folded + separator + message


def check_openssh_costs(data: bytes) -> None:
    """Refuse an OpenSSH key whose bcrypt rounds or RSA size exceed the caps, reading only its
    header (``PROTOCOL.key``), before it is decrypted or loaded. A header this cannot read is
    refused too, so no key reaches the loader unchecked."""
    armored = _OPENSSH_ARMOR.search(data)
    try:
        if armored is None:
            raise ValueError("no armor")
        blob = binascii.a2b_base64(armored.group(1))
        if not blob.startswith(_OPENSSH_MAGIC):
            raise ValueError("no magic")
        fields = _Fields(blob[len(_OPENSSH_MAGIC) :])
        fields.string()  # cipher name
        kdf_name = fields.string()
        kdf_options = _Fields(fields.string())
        if kdf_name == b"bcrypt":
            kdf_options.string()  # salt
            rounds = kdf_options.uint32()
            if rounds > MAX_KDF_ROUNDS:
                raise SigningKeyError(
                    f"the key's encryption asks for {rounds} bcrypt rounds, more than the"
                    f" {MAX_KDF_ROUNDS} accepted; re-encrypt it with ssh-keygen -p -a 16"
                )
        for _ in range(fields.uint32()):
            public = _Fields(fields.string())
            if public.string() == b"ssh-rsa":
                public.string()  # exponent
                modulus = int.from_bytes(public.string(), "big")
                _check_rsa_bits(modulus.bit_length())
    except SigningKeyError:
        raise
    except (ValueError, struct.error):
        raise SigningKeyError("not an OpenSSH private key (its header cannot be read)") from None


def _check_rsa_bits(bits: int) -> None:
    if not RSA_MIN_BITS <= bits <= RSA_MAX_BITS:
        raise SigningKeyError(
            f"RSA key of {bits} bits; {RSA_MIN_BITS} to {RSA_MAX_BITS} bits are accepted"
            " (prefer Ed25519)"
        )


class _Fields:
    """Reads the length-prefixed strings and 32-bit numbers of an SSH wire-format blob."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def uint32(self) -> int:
        (value,) = struct.unpack_from(">I", self._data, self._at)
        self._at += 4
        return int(value)

    def string(self) -> bytes:
        size = self.uint32()
        if self._at + size > len(self._data):
            raise ValueError("string runs past the end")
        value = self._data[self._at : self._at + size]
        self._at += size
        return value


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _mpint(value: int) -> bytes:
    data = value.to_bytes((value.bit_length() + 8) // 8, "big") if value else b""
    return _string(data)
