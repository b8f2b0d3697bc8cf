"""OpenSSH ``known_hosts`` parsing and host-key matching, as pure functions.

A GitProvider may carry a ``known_hosts`` text (the output of ``ssh-keyscan``, or lines copied
from ``~/.ssh/known_hosts``). Before any credential is sent over SSH, the key the server
presented is looked up here; a connection proceeds only when an entry for that host lists that
exact key. This module knows nothing of libgit2: it receives the presented key as bytes.

What is implemented, following the OpenSSH ``sshd(8)`` "SSH_KNOWN_HOSTS FILE FORMAT":

- ``[marker] hostnames keytype base64-key [comment]`` lines; blank lines and ``#`` comments
  are skipped.
- Host lookup name: ``host`` on port 22, ``[host]:port`` on any other port. A plain ``host``
  entry does not vouch for another port, exactly as OpenSSH behaves.
- Host patterns: comma-separated, case-insensitive, ``*`` and ``?`` wildcards, and ``!pattern``
  negation (a matching negated pattern excludes the line even if another pattern matches).
- Hashed host names (``|1|base64-salt|base64-hmac``, written by ``ssh-keygen -H`` or
  ``HashKnownHosts yes``): HMAC-SHA1 of the lookup name keyed with the salt.
- ``@revoked``: a presented key listed as revoked for the host is refused even if another line
  accepts it.
- ``@cert-authority`` lines are parsed and ignored: libssh2 (the SSH library under libgit2)
  does not present host certificates, so a CA line can never vouch for a plain host key. The
  SSH push (:mod:`reverserd.git.ssh_push`) may receive one; it checks the key inside it
  against the plain lines, as if no certificate came with it.

Keys are compared as the full SSH wire-format public key blob (the base64 field decoded), which
includes the key type; when only the SHA-256 of the server's key is available, the SHA-256 of
each listed blob is compared instead. Malformed lines are errors (with their line number), not
silently skipped: a mistyped entry must not turn into a confusing "unknown host" later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

DEFAULT_SSH_PORT = 22
"""The port for which OpenSSH writes and looks up bare host names instead of ``[host]:port``."""

_HASHED_PREFIX = "|1|"


class KnownHostsError(ValueError):
    """The known_hosts text cannot be parsed. The message names the line, not its content."""


class HostKeyError(Exception):
    """The server's SSH host key is not vouched for by known_hosts; the connection is refused."""


class Marker(Enum):
    """The optional first field of a known_hosts line."""

    REVOKED = "@revoked"
    CERT_AUTHORITY = "@cert-authority"


@dataclass(frozen=True)
class KnownHostEntry:
    """One parsed known_hosts line."""

    line: int
    marker: Marker | None
    patterns: tuple[str, ...]
    """Lower-cased host patterns, ``!`` kept; empty when the line is hashed."""
    hashed: tuple[bytes, bytes] | None
    """(salt, HMAC-SHA1 digest) of a hashed host name."""
    key_type: str
    key_blob: bytes

    def applies_to(self, lookup_name: str) -> bool:
        """Whether this line is about ``lookup_name`` (``host`` or ``[host]:port``)."""
        name = lookup_name.lower()
        if self.hashed is not None:
            salt, digest = self.hashed
            computed = hmac.new(salt, name.encode(), hashlib.sha1).digest()
            return hmac.compare_digest(computed, digest)
        matched = False
        for pattern in self.patterns:
            negated = pattern.startswith("!")
            if _wildcard_match(pattern[1:] if negated else pattern, name):
                if negated:
                    return False
                matched = True
        return matched


@dataclass(frozen=True)
class PresentedHostKey:
    """The host key a server presented, as far as the SSH library tells it."""

    blob: bytes | None
    """The SSH wire-format public key, when available."""
    sha256: bytes | None
    """SHA-256 of the blob, when the blob itself is not available."""

    @property
    def key_type(self) -> str | None:
        return _blob_key_type(self.blob) if self.blob is not None else None

    @property
    def fingerprint(self) -> str:
        """OpenSSH-style ``SHA256:...`` fingerprint (public information, safe to show)."""
        digest = hashlib.sha256(self.blob).digest() if self.blob is not None else self.sha256
        if digest is None:
            return "unknown"
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def equals(self, blob: bytes) -> bool:
        if self.blob is not None:
            return hmac.compare_digest(self.blob, blob)
        if self.sha256 is not None:
            return hmac.compare_digest(self.sha256, hashlib.sha256(blob).digest())
        return False


def lookup_name(host: str, port: int) -> str:
    """The name OpenSSH looks up for ``host``: bare on port 22, ``[host]:port`` otherwise."""
    host = host.lower()
    return host if port == DEFAULT_SSH_PORT else f"[{host}]:{port}"


def parse_known_hosts(text: str) -> list[KnownHostEntry]:
    """Parse known_hosts text; raise :class:`KnownHostsError` naming the first bad line."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        entries.append(_parse_line(number, line))
    return entries


def check_host_key(
    entries: Sequence[KnownHostEntry], host: str, port: int, presented: PresentedHostKey
) -> None:
    """Return if known_hosts vouches for ``presented`` at ``host:port``, else raise HostKeyError."""
    name = lookup_name(host, port)
    relevant = [entry for entry in entries if entry.applies_to(name)]
    if any(
        entry.marker is Marker.REVOKED and presented.equals(entry.key_blob) for entry in relevant
    ):
        raise HostKeyError(
            f"SSH host key of {name} ({presented.fingerprint}) is marked @revoked in known_hosts"
        )
    candidates = [entry for entry in relevant if entry.marker is None]
    if any(presented.equals(entry.key_blob) for entry in candidates):
        return
    offered = f"{presented.key_type or 'key'} {presented.fingerprint}"
    if not candidates:
        raise HostKeyError(
            f"known_hosts has no entry for {name} (server offered {offered}); add the output of "
            f"'ssh-keyscan -p {port} {host}' after checking it out of band"
        )
    listed = ", ".join(sorted({entry.key_type for entry in candidates}))
    raise HostKeyError(
        f"SSH host key of {name} does not match known_hosts: server offered {offered}, "
        f"known_hosts lists {listed} key(s) for it; a changed host key can mean the connection "
        "is being intercepted"
    )


def _parse_line(number: int, line: str) -> KnownHostEntry:
    fields = line.split()
    marker = None
    if fields[0].startswith("@"):
        try:
            marker = Marker(fields[0])
        except ValueError:
            raise KnownHostsError(f"line {number}: unknown marker {fields[0]!r}") from None
        fields = fields[1:]
    if len(fields) < 3:
        raise KnownHostsError(f"line {number}: expected 'hostnames keytype base64-key'")
    hosts, key_type, key_text = fields[0], fields[1], fields[2]
    try:
        blob = base64.b64decode(key_text, validate=True)
    except binascii.Error:
        raise KnownHostsError(f"line {number}: the key is not valid base64") from None
    if _blob_key_type(blob) != key_type:
        raise KnownHostsError(f"line {number}: the key is not a {key_type} public key")
    hashed = None
    patterns: tuple[str, ...] = ()
    if hosts.startswith(_HASHED_PREFIX):
        hashed = _parse_hashed(number, hosts)
    else:
        patterns = tuple(p.lower() for p in hosts.split(",") if p)
        if not patterns:
            raise KnownHostsError(f"line {number}: no host names")
    return KnownHostEntry(number, marker, patterns, hashed, key_type, blob)


def _parse_hashed(number: int, hosts: str) -> tuple[bytes, bytes]:
    parts = hosts[len(_HASHED_PREFIX) :].split("|")
    try:
        if len(parts) != 2:
            raise binascii.Error
        salt = base64.b64decode(parts[0], validate=True)
        digest = base64.b64decode(parts[1], validate=True)
    except binascii.Error:
        raise KnownHostsError(f"line {number}: malformed hashed host name") from None
    if len(digest) != hashlib.sha1().digest_size:
        raise KnownHostsError(f"line {number}: malformed hashed host name")
    return salt, digest


def _blob_key_type(blob: bytes) -> str | None:
    """The key type name that opens an SSH public key blob (an RFC 4251 ``string``)."""
    if len(blob) < 4:
        return None
    (length,) = struct.unpack_from(">I", blob)
    name = blob[4 : 4 + length]
    if len(name) != length:
        return None
    try:
        return name.decode("ascii")
    except UnicodeDecodeError:
        return None


def _wildcard_match(pattern: str, name: str) -> bool:
    """OpenSSH host pattern match: only ``*`` and ``?`` are special (``[`` is literal)."""
    return re.fullmatch(_wildcard_regex(pattern), name) is not None


def _wildcard_regex(pattern: str) -> str:
    pieces: Iterable[str] = (
        ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern
    )
    return "".join(pieces)
