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
  known_hosts lists for the host, so the server presents a key that can be checked (paramiko
  offers their certificate forms too; of a certificate only the key inside counts, and it must
  be listed as a plain key: ``@cert-authority`` lines vouch for nothing, as for libgit2).
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
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar
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
    Refused,
    Unreachable,
    Unsupported,
    advertised_refs,
    check_report,
    report_lines,
    update_command,
)
from reverserd.git.signing import SigningKeyError, check_openssh_costs
from reverserd.redaction import SCP_LIKE, mask_url, redact

T = TypeVar("T")

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
    """The host, port, user and path of an ``ssh://`` or scp-like URL, as libgit2 reads them
    for the clone's fetches (the path as written, not percent-decoded: the push must reach the
    repository the fetches read). Raises :class:`Unreachable` for a path Git itself refuses to
    send, one that would start with ``-`` (an option to the server's command)."""
    endpoint = parse_remote_url(url)
    host, port = endpoint.host or "", endpoint.port or DEFAULT_SSH_PORT
    scp = SCP_LIKE.match(url) if "://" not in url else None
    if scp is not None:
        user, path = scp.group("user") or None, scp.group("path")
    else:
        parts = urlsplit(url)
        user, path = unquote(parts.username) if parts.username else None, parts.path
    # Git reads host/~user/repo as the path ~user/repo, relative to that user's home.
    if path.startswith("/~"):
        path = path[1:]
    if path.startswith("-"):
        raise Unreachable("the repository path starts with '-'; Git refuses to send such a path")
    return SshTarget(host, port, user, path)


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
    shown = mask_url(url)
    connection: _Connection | None = None
    try:
        target = ssh_target(url)
        known_hosts = host_key_policy(parse_remote_url(url), credentials)
        key = _client_key(credentials)
        connection = _Connection(target, known_hosts)
        channel = connection.open(key, credentials, shown)
        reader = _ChannelReader(channel, connection)
        update = update_command(
            advertised_refs(reader.advertisement()), ref, new, _passed_through(choose_old)
        )
        if update is None:
            connection.send(b"0000")
            return False
        commands, side_band = update
        if fence is not None:
            _passed_through(fence)()
        _send(connection, commands, pack, None if fence is None else _passed_through(fence))
        channel.shutdown_write()
        check_report(report_lines(reader.rest(MAX_REPORT), side_band), ref)
        return True
    except _CallerRaised as raised:
        raise raised.error from None
    except (Unreachable, Refused, Unsupported):
        raise
    except (CredentialsError, HostKeyError) as error:
        raise Unreachable(str(error)) from None
    except paramiko.ssh_exception.IncompatiblePeer as error:
        raise Unsupported(f"no SSH algorithms in common with the server: {error}") from None
    except paramiko.AuthenticationException as error:
        if "timeout" in str(error).lower() or (connection is not None and connection.expired):
            raise Unreachable(_timed_out()) from None
        # Also what a server that takes RSA keys only with SHA-1 signatures (which this
        # transport does not make) answers: libgit2 tries once more, and reports a refusal.
        raise Unsupported(f"{shown} did not accept the credentials from this transport") from None
    except Exception as error:
        # paramiko's thread re-raises in the caller whatever it met (a server's malformed
        # message included): every such failure is the remote's, never the caller's to handle.
        if isinstance(error, TimeoutError) or (connection is not None and connection.expired):
            raise Unreachable(_timed_out()) from None
        raise Unreachable(redact(str(error), credentials) or type(error).__name__) from None
    finally:
        if connection is not None:
            connection.close()


class _CallerRaised(Exception):
    """What the caller's own ``choose_old``, ``fence`` or ``pack`` raised (a pack the store
    cannot read is the caller's to handle), carried past the handlers that turn the
    connection's failures into this module's errors."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _passed_through(function: Callable[..., T]) -> Callable[..., T]:
    def call(*args: object) -> T:
        try:
            return function(*args)
        except Exception as error:
            raise _CallerRaised(error) from error

    return call


def _timed_out() -> str:
    return f"timed out: the server sent nothing for {pygit2.settings.server_timeout / 1000:g} s"


def _client_key(credentials: GitCredentials) -> paramiko.PKey | None:
    """The Secret's private key as paramiko reads it; None without one.

    Raises :class:`Unsupported` when paramiko cannot read it: libgit2, which reads more
    formats, then pushes and reports what it makes of the key."""
    if not credentials.ssh_private_key:
        return None
    return _read_key(credentials.ssh_private_key, credentials.ssh_passphrase or None)


@functools.lru_cache(maxsize=4)
def _read_key(text: str, passphrase: str | None) -> paramiko.PKey:
    """Read once per key: an encrypted key derives its key with bcrypt (a tenth of a second at
    ``ssh-keygen``'s 16 rounds), and an RSA key checks its primes, which every push would
    otherwise pay again. The last few keys stay cached, as their credentials stay in memory.

    The key is the Secret writer's text: an OpenSSH key whose header asks for more bcrypt
    rounds, or an RSA size, than a signing key may (:func:`~reverserd.git.signing
    .check_openssh_costs`), and a PKCS#8-encrypted key (its PBKDF2 iterations are its
    author's choice), are not derived here: libgit2 handles them, as it did every key before.
    paramiko raises assorted errors on malformed keys; each means the same."""
    if "ENCRYPTED PRIVATE KEY" in text:
        raise Unsupported("a PKCS#8-encrypted SSH key is left to libgit2")
    if "OPENSSH PRIVATE KEY" in text:
        try:
            check_openssh_costs(text.encode())
        except SigningKeyError as error:
            raise Unsupported(f"the SSH key is left to libgit2: {error}") from None
    for kind in _KEY_TYPES:
        try:
            return kind.from_private_key(io.StringIO(text), passphrase)
        except Exception:
            continue
    raise Unsupported("the SSH private key is in a form this transport does not read")


def _send(
    connection: _Connection,
    commands: bytes,
    pack: PackSource,
    fence: Callable[[], None] | None,
) -> None:
    _, made = _passed_through(pack)()
    pieces = _made_by_caller(made)
    connection.send(commands + next(pieces, b""))
    for piece in pieces:
        if fence is not None:
            fence()
        connection.send(piece)


def _made_by_caller(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """``pieces``, with what making one raises passed through as the caller's."""
    try:
        yield from pieces
    except Exception as error:
        raise _CallerRaised(error) from error


class _Connection:
    """One SSH connection, verified and authenticated, with the session running
    ``git-receive-pack``. :meth:`close` ends it at once, whatever was sent.

    A step that makes no progress for the I/O timeout ends the connection (and sets
    :attr:`expired`): paramiko waits without a bound for the answer to a command request, and
    retries a write that times out for as long as the connection is open, so a server that
    stops answering or reading would otherwise hold the push, and the clone, for good."""

    def __init__(self, target: SshTarget, known_hosts: list[KnownHostEntry] | None) -> None:
        self._target = target
        self._known_hosts = known_hosts
        self._transport: paramiko.Transport | None = None
        self._channel: paramiko.Channel | None = None
        self._io_s = pygit2.settings.server_timeout / 1000 or None
        self._progress_at = time.monotonic()
        self._closing = threading.Event()
        self.expired = False
        """The connection was ended because a step made no progress for the I/O timeout."""

    def progress(self) -> None:
        """A step of the push moved: the I/O timeout counts from now."""
        self._progress_at = time.monotonic()

    def send(self, data: bytes) -> None:
        assert self._channel is not None
        self.progress()
        self._channel.sendall(data)
        self.progress()

    def _watch(self, transport: paramiko.Transport, timeout_s: float) -> None:
        while not self._closing.wait(min(1.0, timeout_s / 4)):
            if time.monotonic() - self._progress_at > timeout_s:
                self.expired = True
                transport.close()
                return

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
            threading.Thread(
                target=self._watch,
                args=(transport, self._io_s),
                name="ssh-push-watch",
                daemon=True,
            ).start()
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
        self.progress()
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
        self.progress()
        channel = self._channel = transport.open_session(timeout=self._io_s)
        channel.settimeout(self._io_s)
        self.progress()
        channel.exec_command(target.command)
        self.progress()
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
        self._closing.set()
        if self._transport is not None:
            self._transport.close()


class _ChannelReader:
    """Reads the server's side of the conversation from the channel, within bounds."""

    def __init__(self, channel: paramiko.Channel, connection: _Connection) -> None:
        self._channel = channel
        self._connection = connection

    def advertisement(self) -> Iterator[bytes | None]:
        """The advertisement's pkt-lines as they arrive, up to and including its flush."""
        read = 0
        while True:
            header = self._exactly(4)
            if header == b"0000":
                yield None
                return
            try:
                length = int(header, 16)
            except ValueError:
                raise Unreachable("malformed pkt-line from the server") from None
            read += length
            if length < 4 or read > MAX_ADVERTISEMENT:
                raise Unreachable("malformed or oversized ref advertisement from the server")
            yield self._exactly(length - 4)

    def rest(self, limit: int) -> bytes:
        """All the server sends until it closes its side, at most ``limit`` bytes."""
        data = bytearray()
        while chunk := self._channel.recv(65536):
            self._connection.progress()
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
            self._connection.progress()
            data += chunk
        return bytes(data)

    def _closed(self) -> str:
        """Why the server closed the session early, in its own words where it gave some."""
        said = b""
        while self._channel.recv_stderr_ready() and len(said) < MAX_SERVER_MESSAGE:
            said += self._channel.recv_stderr(MAX_SERVER_MESSAGE - len(said))
        message = said.decode(errors="replace").strip()
        if message:
            return f"the server ended the session: {message}"
        return "the server ended the session before it advertised its refs"
