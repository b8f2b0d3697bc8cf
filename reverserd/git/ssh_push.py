"""A push over SSH that sends a pack the clone already holds.

Why: as over smart HTTP (:mod:`reverserd.git.smart_http`), libgit2's push builds the pack it
sends itself, searching deltas again for every tree of every commit, while the objects a push
carries were already written, compressed and delta-encoded, by the flushes since the last push.
This module opens an SSH connection (paramiko), runs ``git-receive-pack '<path>'`` on the
server as Git's own SSH transport does, and holds the receive-pack conversation of
:mod:`reverserd.git.pack_protocol` over that channel: the server's ref advertisement, one
compare-and-swap command and the joined packs, the server's report.

Guarantees:

- **The host is verified before any credential is sent, by the rules libgit2's connections
  follow** (:mod:`reverserd.git.credentials`): the key the server presents must be listed for
  ``host`` or ``[host]:port`` in the provider's known_hosts, and not ``@revoked``
  (:func:`~reverserd.git.known_hosts.check_host_key`); without known_hosts only the explicit
  opt-out skips the check. The host key algorithms offered are those of the key types
  known_hosts lists for the host, so the server presents a key that can be checked.
- **Keys stay in memory**, as with libgit2: the private key is read from the Secret's text and
  never written to disk. One authentication is tried, with the key (or else the password).
- **The network behaves as libgit2's does for this daemon**: the connect timeout and the
  timeout of every read or write are libgit2's (``pygit2.settings``), and no SSH
  configuration, agent or key file of the process's user is consulted.
- **Compare-and-swap and the fence** as over smart HTTP: ``choose_old`` names the old tip from
  the advertisement before anything is sent, and ``fence`` is called before the command and
  before every piece of the pack after the first; what it raises closes the connection at
  once, so the server has less than a whole pack and updates nothing.
- **Errors carry no secret**: every reason passes through :func:`redact`.
  :class:`~reverserd.git.pack_protocol.Unreachable`, ``Refused`` and ``Unsupported`` mean what
  they mean over HTTP; ``Unsupported`` (no command or pack sent: a key in a format this
  transport does not read, a server with no algorithm in common or no verifiable host key type,
  one that refuses the key as this transport offers it, one without ``report-status`` or
  ``ofs-delta``) makes the caller push with libgit2 instead, which verifies the host and offers
  the credentials by the same rules, and reports what goes wrong.
"""

from __future__ import annotations

import functools
import io
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paramiko
import pygit2

from reverserd.git.credentials import (
    DEFAULT_USERNAME,
    CredentialsError,
    GitCredentials,
    host_key_policy,
    parse_remote_url,
)
from reverserd.git.known_hosts import (
    DEFAULT_SSH_PORT,
    HostKeyError,
    KnownHostEntry,
    PresentedHostKey,
    check_host_key,
    lookup_name,
)
from reverserd.git.pack_protocol import (
    MAX_ADVERTISEMENT,
    MAX_REPORT,
    ChooseOld,
    PackSource,
    Unreachable,
    Unsupported,
    advertised_refs,
    check_report,
    pkt_lines,
    report_lines,
    update_command,
)
from reverserd.redaction import SCP_LIKE, mask_url, redact

# paramiko reports every connection and authentication at INFO: one per push, every second
# under load, in the daemon's log. Its warnings and errors still show.
logging.getLogger("paramiko").setLevel(logging.WARNING)

MAX_SERVER_MESSAGE = 4096
"""What of the server's error output a failure quotes at most."""

_KEY_TYPES: tuple[type[paramiko.PKey], ...] = (
    paramiko.Ed25519Key,
    paramiko.ECDSAKey,
    paramiko.RSAKey,
)
# A known_hosts key type -> the host key algorithms that present such a key. ``ssh-rsa`` keys
# sign with SHA-2 (RFC 8332); SHA-1 signatures are not offered.
_HOST_KEY_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256")}


@dataclass(frozen=True, slots=True)
class SshTarget:
    """Where an SSH remote URL points: the account and the repository path on the host."""

    host: str
    port: int
    user: str | None
    path: str

    @property
    def command(self) -> str:
        """The command Git runs on the server for a push, with the path quoted as Git does."""
        quoted = self.path.replace("'", "'\\''").replace("!", "'\\!'")
        return f"git-receive-pack '{quoted}'"


def ssh_target(url: str) -> SshTarget:
    """The host, port, user and path of an ``ssh://`` or scp-like URL, as Git reads them."""
    endpoint = parse_remote_url(url)
    host, port = endpoint.host or "", endpoint.port or DEFAULT_SSH_PORT
    scp = SCP_LIKE.match(url) if "://" not in url else None
    if scp is not None:
        return SshTarget(host, port, scp.group("user") or None, scp.group("path"))
    parts = urlsplit(url)
    path = unquote(parts.path)
    # Git reads ssh://host/~user/repo as the path ~user/repo, relative to that user's home.
    if path.startswith("/~"):
        path = path[1:]
    return SshTarget(host, port, unquote(parts.username) if parts.username else None, path)


def push(
    url: str,
    credentials: GitCredentials,
    ref: str,
    new: bytes,
    choose_old: ChooseOld,
    pack: PackSource,
    fence: Callable[[], None] | None,
) -> bool:
    """Move ``ref`` on the server at ``url`` to ``new`` with the pack ``pack`` makes.

    ``choose_old`` gets the advertisement and returns the ID the command names as the
    branch's old tip. Returns False, sending no command, when that is ``new`` already. See the
    module docstring for what is raised.
    """
    target = ssh_target(url)
    try:
        known_hosts = host_key_policy(parse_remote_url(url), credentials)
    except CredentialsError as error:
        raise Unreachable(str(error)) from None
    key = _client_key(credentials)
    shown = mask_url(url)
    connection = _Connection(target, known_hosts)
    try:
        channel = connection.open(key, credentials, shown)
        reader = _ChannelReader(channel)
        update = update_command(advertised_refs(reader.advertisement()), ref, new, choose_old)
        if update is None:
            channel.sendall(b"0000")
            return False
        commands, side_band = update
        if fence is not None:
            fence()
        _send(channel, commands, pack, fence)
        channel.shutdown_write()
        check_report(report_lines(reader.rest(MAX_REPORT), side_band), ref)
        return True
    except HostKeyError as error:
        raise Unreachable(str(error)) from None
    except paramiko.ssh_exception.IncompatiblePeer as error:
        raise Unsupported(f"no SSH algorithms in common with the server: {error}") from None
    except TimeoutError:
        raise Unreachable(_timed_out()) from None
    except paramiko.AuthenticationException as error:
        if "timeout" in str(error).lower():
            raise Unreachable(_timed_out()) from None
        # Also what a server that takes RSA keys only with SHA-1 signatures (which this
        # transport does not make) answers: libgit2 tries once more, and reports a refusal.
        raise Unsupported(f"{shown} did not accept the credentials from this transport") from None
    except (paramiko.SSHException, OSError, EOFError) as error:
        raise Unreachable(redact(str(error), credentials) or type(error).__name__) from None
    finally:
        connection.close()


def _timed_out() -> str:
    return f"timed out: the server sent nothing for {pygit2.settings.server_timeout / 1000:g} s"


def _client_key(credentials: GitCredentials) -> paramiko.PKey | None:
    """The Secret's private key as paramiko reads it; None without one.

    Raises :class:`Unsupported` when paramiko cannot read it: libgit2, which reads more
    formats, then pushes and reports what it makes of the key."""
    if not credentials.ssh_private_key:
        return None
    return _read_key(credentials.ssh_private_key, credentials.ssh_passphrase or None)


@functools.lru_cache(maxsize=16)
def _read_key(text: str, passphrase: str | None) -> paramiko.PKey:
    """Read once per key: an encrypted key derives its key with bcrypt (a tenth of a second at
    ``ssh-keygen``'s 16 rounds), and an RSA key checks its primes, which every push would
    otherwise pay again."""
    for kind in _KEY_TYPES:
        try:
            return kind.from_private_key(io.StringIO(text), passphrase)
        except (paramiko.SSHException, ValueError, TypeError):
            continue
    raise Unsupported("the SSH private key is in a form this transport does not read")


def _send(
    channel: paramiko.Channel,
    commands: bytes,
    pack: PackSource,
    fence: Callable[[], None] | None,
) -> None:
    _, pieces = pack()
    channel.sendall(commands + next(pieces, b""))
    for piece in pieces:
        if fence is not None:
            fence()
        channel.sendall(piece)


class _Connection:
    """One SSH connection, verified and authenticated, with the session running
    ``git-receive-pack``. :meth:`close` ends it at once, whatever was sent."""

    def __init__(self, target: SshTarget, known_hosts: list[KnownHostEntry] | None) -> None:
        self._target = target
        self._known_hosts = known_hosts
        self._transport: paramiko.Transport | None = None
        self._io_s = pygit2.settings.server_timeout / 1000 or None

    def open(
        self, key: paramiko.PKey | None, credentials: GitCredentials, shown: str
    ) -> paramiko.Channel:
        target = self._target
        connect_s = pygit2.settings.server_connect_timeout / 1000 or None
        sock = socket.create_connection((target.host, target.port), timeout=connect_s)
        try:
            transport = self._transport = paramiko.Transport(sock)
        except BaseException:
            sock.close()
            raise
        if self._io_s is not None:
            transport.banner_timeout = transport.handshake_timeout = self._io_s
            transport.auth_timeout = self._io_s
        if self._known_hosts is not None:
            options = transport.get_security_options()
            options.key_types = self._algorithms(options.key_types)
        negotiated = threading.Event()
        transport.start_client(event=negotiated)
        if not negotiated.wait(self._io_s):
            raise TimeoutError
        if not transport.is_active():
            raise transport.get_exception() or paramiko.SSHException("SSH negotiation failed")
        if self._known_hosts is not None:
            presented = PresentedHostKey(
                blob=transport.get_remote_server_key().asbytes(), sha256=None
            )
            check_host_key(self._known_hosts, target.host, target.port, presented)
        user = target.user or credentials.username or DEFAULT_USERNAME
        if key is not None:
            transport.auth_publickey(user, key)
        elif credentials.password:
            transport.auth_password(user, credentials.password, fallback=False)
        else:
            raise Unreachable(
                f"{shown} asks for an SSH private key or a password, which the credentials "
                "do not provide"
            )
        channel = transport.open_session(timeout=self._io_s)
        channel.settimeout(self._io_s)
        channel.exec_command(target.command)
        return channel

    def _algorithms(self, supported: Sequence[str]) -> tuple[str, ...]:
        """The supported host key algorithms that present a key type known_hosts lists for
        the host. Raises :class:`Unsupported` when there is none (no entry for the host, or
        only types this transport does not read): libgit2 then connects, and refuses or
        verifies the host by the same entries."""
        assert self._known_hosts is not None
        name = lookup_name(self._target.host, self._target.port)
        listed = {
            algorithm
            for entry in self._known_hosts
            if entry.marker is None and entry.applies_to(name)
            for algorithm in _HOST_KEY_ALGORITHMS.get(entry.key_type, (entry.key_type,))
        }
        chosen = tuple(algorithm for algorithm in supported if algorithm in listed)
        if not chosen:
            raise Unsupported(f"known_hosts lists no host key this transport reads for {name}")
        return chosen

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _ChannelReader:
    """Reads the server's side of the conversation from the channel, within bounds."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel

    def advertisement(self) -> Iterator[bytes | None]:
        """The advertisement's pkt-lines, up to and including its flush."""
        data = bytearray()
        while True:
            header = self._exactly(4)
            if header == b"0000":
                data += header
                return pkt_lines(bytes(data))
            try:
                length = int(header, 16)
            except ValueError:
                raise Unreachable("malformed pkt-line from the server") from None
            if length < 4 or len(data) + length > MAX_ADVERTISEMENT:
                raise Unreachable("malformed or oversized ref advertisement from the server")
            data += header + self._exactly(length - 4)

    def rest(self, limit: int) -> bytes:
        """All the server sends until it closes its side, at most ``limit`` bytes."""
        data = bytearray()
        while chunk := self._channel.recv(65536):
            data += chunk
            if len(data) > limit:
                raise Unreachable(f"the server's answer is longer than {limit} bytes")
        return bytes(data)

    def _exactly(self, count: int) -> bytes:
        data = bytearray()
        while len(data) < count:
            chunk = self._channel.recv(count - len(data))
            if not chunk:
                raise Unreachable(self._closed())
            data += chunk
        return bytes(data)

    def _closed(self) -> str:
        """Why the server closed the session early, in its own words where it gave some."""
        said = b""
        while self._channel.recv_stderr_ready() and len(said) < MAX_SERVER_MESSAGE:
            said += self._channel.recv_stderr(MAX_SERVER_MESSAGE - len(said))
        message = said.decode(errors="replace").strip()
        return (
            f"the server ended the session: {message}"
            if message
            else ("the server ended the session before it advertised its refs")
        )
