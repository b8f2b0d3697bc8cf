"""OpenPGP signatures of commits, made in-process from an armored private key.

Some hosts and policies trust only OpenPGP keys, so a GitProvider's ``signing.key`` may hold
what ``gpg --export-secret-keys --armor`` writes. Rather than run ``gpg`` once per commit (a
process per commit would cost more than the commit), the few packet formats involved are read
and written here with ``cryptography`` (RFC 4880):

- the key: a v4 secret key packet whose primary key is RSA or Ed25519 (EdDSA, algorithm 22, as
  gpg 2.2 makes it), unencrypted or protected as gpg 2.2 protects it (S2K usage 254 or 255,
  iterated and salted S2K, AES in CFB mode). Subkeys are ignored: the primary key signs.
- the signature: a v4 detached signature of a binary document (the commit object without its
  ``gpgsig`` header), SHA-256, armored, which ``git verify-commit`` checks with
  ``gpg.format=openpgp`` against a keyring holding the public key. Its creation time is the
  commit's committer time (never before the key's creation), so signing the same commit twice
  gives the same commit object.

The public key reverserd publishes (``status.signingPublicKey``) is the armored primary public
key with its user IDs and their self-signatures (subkeys and others' certifications left out),
ready for ``gpg --import`` or a hosting service's list of GPG keys: unlike a fingerprint, it is
all a verifier needs, and it is a few kilobytes at most for one RSA 4096 key.

A key is attacker-chosen text: every length is checked against what is left, and the S2K
iteration count is capped (:data:`MAX_S2K_COUNT`) so deriving the key cannot stall.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from reverserd.git.signing import CommitSigner, SigningKeyError

MAX_S2K_COUNT = 65_011_712
"""Most bytes the passphrase derivation may hash. The key's author chooses the count, and
gpg 2.2 calibrates it to ~100 ms of its own hashing, which on current machines is the largest
count the format can encode (65,011,712, measured with gpg 2.2.40 here); hashing that many
bytes takes a fraction of a second in a worker thread. A larger count is refused."""
S2K_CHUNK_BYTES = 1 << 16
"""The repeated salt and passphrase are hashed in pieces of about this size (each a whole
number of repetitions), so deriving holds 64 KiB rather than the whole count in memory."""
MIN_RSA_BITS = 2048
"""RSA keys below 2048 bits are refused: hosts reject them and they no longer protect."""
MAX_RSA_BITS = 8192
"""RSA keys above 8192 bits are refused: signing with one costs tens of milliseconds per
commit, and a huge modulus in a hostile key would make parsing slow."""
ARMOR_LINE_CHARS = 64
"""Base64 line length of armored output, as gpg writes it."""

_TAG_SIGNATURE = 2
_TAG_SECRET_KEY = 5
_TAG_PUBLIC_KEY = 6
_TAG_SECRET_SUBKEY = 7
_TAG_USER_ID = 13
_TAG_USER_ATTRIBUTE = 17
_ALGO_RSA = 1
_ALGO_EDDSA = 22
_HASH_SHA256 = 8
_ED25519_OID = bytes.fromhex("2b06010401da470f01")
_S2K_HASHES = {2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}
_AES_KEY_BYTES = {7: 16, 8: 24, 9: 32}
_SUBPACKET_CREATED = 2
_SUBPACKET_ISSUER = 16
_SUBPACKET_ISSUER_FINGERPRINT = 33
_COMMITTER_TIME = re.compile(rb"^committer .*> (\d+) [+-]\d{4}$", re.MULTILINE)


class _Reader:
    """Bounded reads from a packet body; running past its end is a malformed key."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.offset + size > len(self.data):
            raise SigningKeyError("the OpenPGP key is truncated or malformed")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def mpi(self) -> bytes:
        (bits,) = struct.unpack(">H", self.take(2))
        return self.take((bits + 7) // 8)

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.offset)


@dataclass(frozen=True)
class _Packet:
    tag: int
    body: bytes


def _dearmor(text: str, kind: str) -> bytes:
    lines = [line.strip() for line in text.strip().splitlines()]
    try:
        start = lines.index(f"-----BEGIN PGP {kind}-----")
        end = lines.index(f"-----END PGP {kind}-----", start)
    except ValueError:
        raise SigningKeyError(f"not an armored OpenPGP {kind.lower()}") from None
    body = lines[start + 1 : end]
    if "" in body:
        body = body[body.index("") + 1 :]
    payload = [line for line in body if line and not line.startswith("=")]
    checksums = [line[1:] for line in body if line.startswith("=")]
    try:
        data = base64.b64decode("".join(payload), validate=True)
        checksum = base64.b64decode(checksums[0], validate=True) if checksums else None
    except ValueError:
        raise SigningKeyError(f"the armored OpenPGP {kind.lower()} is not valid base64") from None
    if checksum is not None and checksum != _crc24(data):
        raise SigningKeyError(f"the armored OpenPGP {kind.lower()}'s checksum does not match")
    return data


def _packets(data: bytes) -> list[_Packet]:
    reader = _Reader(data)
    packets = []
    while reader.offset < len(data):
        header = reader.byte()
        if not header & 0x80:
            raise SigningKeyError("the OpenPGP key is malformed (bad packet header)")
        if header & 0x40:
            tag = header & 0x3F
            first = reader.byte()
            if first < 192:
                size = first
            elif first < 224:
                size = ((first - 192) << 8) + reader.byte() + 192
            elif first == 255:
                (size,) = struct.unpack(">I", reader.take(4))
            else:
                raise SigningKeyError("the OpenPGP key uses partial lengths, not a key export")
        else:
            tag = (header >> 2) & 0x0F
            length_type = header & 0x03
            if length_type == 3:
                raise SigningKeyError("the OpenPGP key has a packet of indeterminate length")
            (size,) = struct.unpack(
                (">B", ">H", ">I")[length_type], reader.take((1, 2, 4)[length_type])
            )
        packets.append(_Packet(tag, reader.take(size)))
    return packets


def _packet(tag: int, body: bytes) -> bytes:
    """``body`` as a new-format packet (the form gpg writes for what it creates)."""
    size = len(body)
    if size < 192:
        length = bytes([size])
    elif size < 8384:
        length = bytes([((size - 192) >> 8) + 192, (size - 192) & 0xFF])
    else:
        length = b"\xff" + struct.pack(">I", size)
    return bytes([0xC0 | tag]) + length + body


def _armor(kind: str, data: bytes) -> str:
    encoded = base64.b64encode(data).decode()
    lines = [encoded[i : i + ARMOR_LINE_CHARS] for i in range(0, len(encoded), ARMOR_LINE_CHARS)]
    checksum = "=" + base64.b64encode(_crc24(data)).decode()
    return "\n".join(
        [f"-----BEGIN PGP {kind}-----", "", *lines, checksum, f"-----END PGP {kind}-----", ""]
    )


def _crc24_table() -> tuple[int, ...]:
    table = []
    for index in range(256):
        crc = index << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= _CRC24_POLY
        table.append(crc & 0xFFFFFF)
    return tuple(table)


_CRC24_POLY = 0x1864CFB
_CRC24_TABLE = _crc24_table()


def _crc24(data: bytes) -> bytes:
    """The armor checksum (RFC 4880 6.1), a byte at a time from a table: bit by bit it cost
    more than the RSA signature it protects."""
    crc = 0xB704CE
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFF) ^ _CRC24_TABLE[(crc >> 16) ^ byte]
    return crc.to_bytes(3, "big")


def _mpi(value: bytes) -> bytes:
    value = value.lstrip(b"\x00")
    bits = len(value) * 8 - (8 - value[0].bit_length()) if value else 0
    return struct.pack(">H", bits) + value


def _s2k_key(reader: _Reader, passphrase: bytes, key_bytes: int) -> bytes:
    """The symmetric key derived from ``passphrase`` by the S2K specifier ``reader`` is at."""
    if reader.byte() != 3:
        raise SigningKeyError("only iterated and salted S2K protection is supported")
    name = _S2K_HASHES.get(reader.byte())
    if name is None:
        raise SigningKeyError("the OpenPGP key's S2K hash is not supported")
    salt = reader.take(8)
    coded = reader.byte()
    count = (16 + (coded & 15)) << ((coded >> 4) + 6)
    if count > MAX_S2K_COUNT:
        raise SigningKeyError(
            f"the OpenPGP key's S2K count {count} exceeds the {MAX_S2K_COUNT} reverserd derives"
        )
    material = salt + passphrase
    count = max(count, len(material))
    chunk = memoryview(material * (S2K_CHUNK_BYTES // len(material) + 1))
    derived = b""
    preload = 0
    while len(derived) < key_bytes:
        digest = hashlib.new(name, b"\x00" * preload)
        remaining = count
        while remaining > 0:
            digest.update(chunk[: min(remaining, len(chunk))])
            remaining -= len(chunk)
        derived += digest.digest()
        preload += 1
    return derived[:key_bytes]


def _secret(reader: _Reader, passphrase: str | None) -> _Reader:
    """The secret key material after the public part, decrypted and its checksum checked."""
    usage = reader.byte()
    if usage == 0:
        if passphrase:
            raise SigningKeyError("a passphrase was given but the OpenPGP key is not encrypted")
        plain = reader.rest()
        material, checksum = plain[:-2], plain[-2:]
        if len(plain) < 2 or sum(material) & 0xFFFF != struct.unpack(">H", checksum)[0]:
            raise SigningKeyError("the OpenPGP key's secret material is corrupt")
        return _Reader(material)
    if usage not in (254, 255):
        raise SigningKeyError("the OpenPGP key's protection is not supported (gpg 2.2 form)")
    key_bytes = _AES_KEY_BYTES.get(reader.byte())
    if key_bytes is None:
        raise SigningKeyError("the OpenPGP key is protected with a cipher other than AES")
    if not passphrase:
        raise SigningKeyError("the OpenPGP key is encrypted and no passphrase was given")
    key = _s2k_key(reader, passphrase.encode(), key_bytes)
    iv = reader.take(16)
    decryptor = Cipher(algorithms.AES(key), CFB(iv)).decryptor()
    plain = decryptor.update(reader.rest()) + decryptor.finalize()
    if usage == 254:
        material, checksum = plain[:-20], plain[-20:]
        intact = len(plain) >= 20 and hashlib.sha1(material).digest() == checksum
    else:
        material, checksum = plain[:-2], plain[-2:]
        intact = len(plain) >= 2 and sum(material) & 0xFFFF == struct.unpack(">H", checksum)[0]
    if not intact:
        raise SigningKeyError("the OpenPGP key's passphrase is wrong")
    return _Reader(material)


def _fingerprint(public_body: bytes) -> bytes:
    """A v4 key's fingerprint: SHA-1 of its public key packet, framed as RFC 4880 12.2 says."""
    return hashlib.sha1(b"\x99" + struct.pack(">H", len(public_body)) + public_body).digest()


OpenPGPKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _private_key(body: bytes, passphrase: str | None) -> tuple[OpenPGPKey, bytes, int]:
    """The primary key of a secret key packet, its public packet body and creation time."""
    reader = _Reader(body)
    if reader.byte() != 4:
        raise SigningKeyError("only version 4 OpenPGP keys are supported")
    (created,) = struct.unpack(">I", reader.take(4))
    algorithm = reader.byte()
    if algorithm == _ALGO_RSA:
        n, e = reader.mpi(), reader.mpi()
        public = body[: reader.offset]
        secret = _secret(reader, passphrase)
        d, p, q = secret.mpi(), secret.mpi(), secret.mpi()
        modulus = int.from_bytes(n, "big")
        if not MIN_RSA_BITS <= modulus.bit_length() <= MAX_RSA_BITS:
            raise SigningKeyError(
                f"RSA keys of {MIN_RSA_BITS} to {MAX_RSA_BITS} bits are supported,"
                f" not {modulus.bit_length()}"
            )
        pi, qi, di = (int.from_bytes(value, "big") for value in (p, q, d))
        try:
            numbers = rsa.RSAPrivateNumbers(
                pi,
                qi,
                di,
                rsa.rsa_crt_dmp1(di, pi),
                rsa.rsa_crt_dmq1(di, qi),
                rsa.rsa_crt_iqmp(pi, qi),
                rsa.RSAPublicNumbers(int.from_bytes(e, "big"), modulus),
            )
            return numbers.private_key(), public, created
        except (ValueError, ZeroDivisionError, InvalidKey):
            raise SigningKeyError("the OpenPGP RSA key is inconsistent") from None
    if algorithm == _ALGO_EDDSA:
        oid = reader.take(reader.byte())
        if oid != _ED25519_OID:
            raise SigningKeyError("only the Ed25519 curve is supported for EdDSA OpenPGP keys")
        point = reader.mpi()
        public = body[: reader.offset]
        seed = _secret(reader, passphrase).mpi()
        if len(point) != 33 or point[0] != 0x40 or len(seed) > 32:
            raise SigningKeyError("the OpenPGP Ed25519 key is malformed")
        ed_key = ed25519.Ed25519PrivateKey.from_private_bytes(seed.rjust(32, b"\x00"))
        if ed_key.public_key().public_bytes_raw() != point[1:]:
            raise SigningKeyError("the OpenPGP Ed25519 key's secret does not match its public key")
        return ed_key, public, created
    raise SigningKeyError(
        f"OpenPGP key algorithm {algorithm} is not supported (RSA and Ed25519 are)"
    )


class OpenPGPSigner(CommitSigner):
    """Signs commit payloads with the primary key of an armored OpenPGP private key."""

    def __init__(self, key: OpenPGPKey, public_body: bytes, created: int, public_key: str) -> None:
        self._openpgp_key = key
        self._created = created
        self.fingerprint = _fingerprint(public_body)
        self._algorithm = _ALGO_RSA if isinstance(key, rsa.RSAPrivateKey) else _ALGO_EDDSA
        self._public_text = public_key

    @classmethod
    def from_armored(cls, text: str, passphrase: str | None = None) -> OpenPGPSigner:
        """Read what ``gpg --export-secret-keys --armor`` writes (its primary key signs)."""
        packets = _packets(_dearmor(text, "PRIVATE KEY BLOCK"))
        if not packets or packets[0].tag != _TAG_SECRET_KEY:
            raise SigningKeyError("the OpenPGP key block does not start with a secret key")
        key, public_body, created = _private_key(packets[0].body, passphrase)
        key_id = _fingerprint(public_body)[-8:]
        exported = [_packet(_TAG_PUBLIC_KEY, public_body)]
        for packet in packets[1:]:
            if packet.tag == _TAG_SECRET_SUBKEY:
                break
            # Self-signatures only (they name the key's own ID): others' certifications would
            # only lengthen the status field.
            user = packet.tag in (_TAG_USER_ID, _TAG_USER_ATTRIBUTE)
            if user or (packet.tag == _TAG_SIGNATURE and key_id in packet.body):
                exported.append(_packet(packet.tag, packet.body))
        return cls(key, public_body, created, _armor("PUBLIC KEY BLOCK", b"".join(exported)))

    @property
    def public_key(self) -> str:
        """The armored public key (primary key, user IDs and their self-signatures)."""
        return self._public_text

    def private_text(self) -> str:
        raise SigningKeyError("an OpenPGP key is never written back")

    def sign(self, payload: bytes) -> bytes:
        """The armored OpenPGP signature of ``payload`` (a commit object without ``gpgsig``)."""
        match = _COMMITTER_TIME.search(payload.partition(b"\n\n")[0])
        when = int(match.group(1)) if match else int(time.time())
        when = min(max(when, self._created), 0xFFFFFFFF)
        hashed_subpackets = (
            bytes([5, _SUBPACKET_CREATED])
            + struct.pack(">I", when)
            + bytes([22, _SUBPACKET_ISSUER_FINGERPRINT, 4])
            + self.fingerprint
        )
        hashed = (
            bytes([4, 0x00, self._algorithm, _HASH_SHA256])
            + struct.pack(">H", len(hashed_subpackets))
            + hashed_subpackets
        )
        digest = hashlib.sha256(
            payload + hashed + b"\x04\xff" + struct.pack(">I", len(hashed))
        ).digest()
        key = self._openpgp_key
        if isinstance(key, rsa.RSAPrivateKey):
            values = _mpi(key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256())))
        else:
            raw = key.sign(digest)
            values = _mpi(raw[:32]) + _mpi(raw[32:])
        unhashed = bytes([9, _SUBPACKET_ISSUER]) + self.fingerprint[-8:]
        body = hashed + struct.pack(">H", len(unhashed)) + unhashed + digest[:2] + values
        return _armor("SIGNATURE", _packet(_TAG_SIGNATURE, body)).encode()

    def signed(self, armored: bytes | None) -> bool:
        """Whether ``armored`` (a commit's ``gpgsig``) is an OpenPGP signature by this key.

        Only the issuer is compared, not the signature, as for SSH signatures.
        """
        if not armored or b"-----BEGIN PGP SIGNATURE-----" not in armored:
            return False
        try:
            data = _dearmor(armored.decode("ascii", "replace"), "SIGNATURE")
        except SigningKeyError:
            return False
        return bytes([22, _SUBPACKET_ISSUER_FINGERPRINT, 4]) + self.fingerprint in data
