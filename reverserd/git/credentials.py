"""How reverserd authenticates to a Git remote and verifies who it is talking to.

:class:`GitCredentials` is plain data (built by the layer that reads Kubernetes Secrets);
:func:`build_callbacks` turns it into the ``pygit2.RemoteCallbacks`` that every fetch and push
of one remote URL uses. Guarantees:

- **Secrets stay secret.** Passwords, tokens, private keys and passphrases are excluded from
  ``repr``; no exception raised here contains them; :mod:`reverserd.redaction` removes
  them from URLs and error texts before they reach logs, status or metrics (SPEC 2.1:
  credentials never appear there; URLs are shown with any password masked).
- **SSH keys from memory.** A private key given as PEM or OpenSSH text is handed to libssh2 with
  ``pygit2.KeypairFromMemory`` (and read by :mod:`reverserd.git.ssh_push` for its pushes); it
  is never written to disk.
- **SSH host keys are verified, or the connection is refused** (SPEC 2.1). With a known_hosts
  text, the key the server presents must be listed for that host (see
  :mod:`reverserd.git.known_hosts` for the matching rules, including ``[host]:port`` and
  hashed entries). Without known_hosts, :func:`build_callbacks` refuses an SSH URL unless
  ``insecure_skip_host_key_check`` was set explicitly. Credentials are only handed to libgit2
  after the host key was verified (or the check was explicitly skipped).
- **A rejected credential is not retried forever.** libgit2 asks again after every rejection;
  after :data:`MAX_CREDENTIAL_REQUESTS` the operation fails with :class:`AuthenticationRejected`.

How the SSH host key reaches us (pygit2 1.21 on libgit2 1.9 with libssh2): libgit2 calls the
certificate callback with a ``git_cert_hostkey`` carrying the raw server key, its MD5, SHA-1 and
SHA-256, and ``valid`` = whether the key is in ``$HOME/.ssh/known_hosts`` of the process.
pygit2's C-level callback (``pygit2.callbacks._certificate_check_cb``) then calls
``RemoteCallbacks.certificate_check(None, valid, host)``: the certificate is always ``None``,
``host`` is the bare host name as bytes (no port), and if the Python method raises
``Passthrough``, pygit2 *accepts any SSH host key*. To compare the actual key, the
callback reads the ``git_cert *`` argument of that C-level callback from the calling frame and
decodes the libgit2 1.x ``git_cert_hostkey`` layout (pygit2's own cffi declaration of that
struct stops at the SHA-1 field). If the frame, the certificate type or the layout is not what
is expected (a different pygit2 or libgit2), verification fails closed: the connection is
refused with a message saying so. The ``valid`` flag is ignored: the per-provider known_hosts is
the only authority. For HTTPS, the TLS verdict of OpenSSL (``valid``) is returned unchanged.

What is verified, precisely: for SSH, that the server's public key blob (the exact bytes libssh2
received; or, failing that, its SHA-256) equals the key of a non-revoked known_hosts line whose
host patterns match ``host`` (port 22) or ``[host]:port``, where ``host`` is the name libgit2
connected to and the port comes from the URL; and that no ``@revoked`` line for that name lists
it. The negotiated host-key algorithm is libssh2's default preference (libgit2 derives a
preference only from ``$HOME/.ssh/known_hosts``), so known_hosts should list every key type of
the server, as ``ssh-keyscan`` prints them; the error names the type the server offered.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from enum import Enum
from importlib.metadata import version
from types import FrameType
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import pygit2
from pygit2.enums import CredentialType
from pygit2.ffi import C, ffi

from reverserd.git.known_hosts import (
    DEFAULT_SSH_PORT,
    HostKeyError,
    KnownHostEntry,
    KnownHostsError,
    PresentedHostKey,
    check_host_key,
    parse_known_hosts,
)
from reverserd.redaction import HTTP_SCHEMES, SCP_LIKE, mask_url

MAX_CREDENTIAL_REQUESTS = 3
"""How many times one operation may ask for a secret before giving up. libgit2 asks again after
each rejection (over SSH until the server hangs up, if it ever does); a legitimate exchange
needs one, and a couple more cover an HTTP redirect that challenges again."""

DEFAULT_USERNAME = "git"
"""User name when neither the URL nor the Secret names one: what Git hosting services expect
over SSH, and accepted with a token as password over HTTPS."""

_SSH_SCHEMES = frozenset({"ssh", "ssh+git", "git+ssh"})

# Layout of libgit2 1.x ``git_cert_hostkey`` (include/git2/cert.h): git_cert parent (enum),
# git_cert_ssh_t type (enum), md5[16], sha1[20], sha256[32], raw_type (enum), const char
# *hostkey, size_t hostkey_len. pygit2's cffi declaration stops after sha1, so offsets are ours.
_CERT_TYPE_OFFSET = 0
_CERT_FLAGS_OFFSET = 4
_CERT_SHA256_OFFSET = 44
_CERT_SHA256_SIZE = 32
_CERT_HOSTKEY_PTR_OFFSET = 80
_CERT_SSH_SHA256 = 1 << 2
_CERT_SSH_RAW = 1 << 3
# The layout above was checked against the libgit2 1.8 and 1.9 headers (what pygit2 >= 1.15
# bundles); anything else is refused rather than misread.
_LIBGIT2_MAJOR_WITH_KNOWN_LAYOUT = 1
_LIBGIT2_MIN_MINOR_WITH_KNOWN_LAYOUT = 8
_C_CALLBACK_CERT_ARGUMENT = "cert_i"


class CredentialsError(ValueError):
    """The credentials cannot be used for this URL. Never contains a secret."""


class AuthenticationRejected(Exception):
    """The server did not accept the credentials offered (or none fit). Never contains a secret."""


class Transport(Enum):
    SSH = "ssh"
    HTTP = "http"
    LOCAL = "local"


@dataclass(frozen=True)
class RemoteEndpoint:
    """What the credentials layer needs to know about a remote URL."""

    transport: Transport
    host: str | None
    port: int | None


@dataclass(frozen=True)
class GitCredentials:
    """Secrets for one remote. Secret fields are left out of ``repr``."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    """Password or token for HTTP(S) (or SSH password authentication)."""
    ssh_private_key: str | None = field(default=None, repr=False)
    """PEM or OpenSSH private key text."""
    ssh_passphrase: str | None = field(default=None, repr=False)
    known_hosts: str | None = None
    """OpenSSH known_hosts text for SSH host-key verification."""
    insecure_skip_host_key_check: bool = False
    """Explicit opt-out: accept any SSH host key. Has no effect when known_hosts is given."""

    def secrets(self) -> tuple[str, ...]:
        values = (self.password, self.ssh_private_key, self.ssh_passphrase)
        return tuple(value for value in values if value)


def parse_remote_url(url: str) -> RemoteEndpoint:
    """Classify ``url`` (``ssh://``, scp-like ``user@host:path``, ``http(s)://``, ``file://``)."""
    if "://" not in url:
        scp = SCP_LIKE.match(url)
        if scp is not None:
            host = scp.group("host").strip("[]").lower()
            return RemoteEndpoint(Transport.SSH, host, DEFAULT_SSH_PORT)
        if url.startswith("/"):
            return RemoteEndpoint(Transport.LOCAL, None, None)
        raise CredentialsError(f"unsupported Git URL {mask_url(url)!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise CredentialsError(f"malformed Git URL {mask_url(url)!r}") from None
    scheme = parts.scheme.lower()
    if scheme in _SSH_SCHEMES:
        if not parts.hostname:
            raise CredentialsError(f"SSH URL without host: {mask_url(url)!r}")
        return RemoteEndpoint(Transport.SSH, parts.hostname, port or DEFAULT_SSH_PORT)
    if scheme in HTTP_SCHEMES:
        return RemoteEndpoint(Transport.HTTP, parts.hostname, port)
    if scheme == "file":
        return RemoteEndpoint(Transport.LOCAL, None, None)
    raise CredentialsError(f"unsupported Git URL scheme {scheme!r} in {mask_url(url)!r}")


def without_url_credentials(url: str, credentials: GitCredentials) -> tuple[str, GitCredentials]:
    """``url`` as libgit2 may see it, and ``credentials`` with what the URL carried.

    libgit2 writes the URL it is given into the clone (FETCH_HEAD, and a named remote's
    config); a password or token in it would rest on disk. So the password (and an HTTP user
    name, often a token) leave the URL and join the in-memory credentials, where they take
    the place libgit2 gave them before: ahead of the Secret's. An SSH user name stays (it is
    a login, not a secret, and selects the account).
    """
    if "://" not in url:
        scp = SCP_LIKE.match(url)
        if scp is None or not scp.group("user") or ":" not in scp.group("user"):
            return url, credentials
        user, password = scp.group("user").split(":", 1)
        bare = f"{user}@{url[scp.end('user') + 1 :]}"
        return bare, replace(credentials, password=password)
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, credentials
    if "@" not in parts.netloc:
        return url, credentials
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, has_password, password = userinfo.partition(":")
    user, password = unquote(user), unquote(password)
    if parts.scheme.lower() in HTTP_SCHEMES:
        bare = urlunsplit(parts._replace(netloc=hostport))
        return bare, replace(
            credentials,
            username=user or credentials.username,
            password=password if has_password else credentials.password,
        )
    if not has_password:
        return url, credentials
    bare = urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}@{hostport}"))
    return bare, replace(credentials, password=password)


class AuthCallbacks(pygit2.RemoteCallbacks):
    """Credentials and host-key verification for network operations on one URL.

    Use a fresh instance per network operation: it counts credential requests to stop libgit2
    from retrying a rejected secret forever.
    """

    def __init__(self, url: str, credentials: GitCredentials) -> None:
        super().__init__()
        self._endpoint = parse_remote_url(url)
        self._credentials = credentials
        self._known_hosts = host_key_policy(self._endpoint, credentials)
        self._secret_requests = 0
        self._host_verified = False

    def credentials(
        self, url: str, username_from_url: str | None, allowed_types: CredentialType
    ) -> pygit2.Username | pygit2.UserPass | pygit2.Keypair:
        creds = self._credentials
        if self._endpoint.transport is Transport.SSH and not self._host_verified:
            raise HostKeyError("refusing to send SSH credentials: the host key was not verified")
        if allowed_types & CredentialType.USERNAME:
            return pygit2.Username(self._username(username_from_url))
        self._secret_requests += 1
        if self._secret_requests > MAX_CREDENTIAL_REQUESTS:
            raise AuthenticationRejected(
                f"the server rejected the credentials for {mask_url(url)}; check the Secret"
            )
        if allowed_types & CredentialType.SSH_MEMORY and creds.ssh_private_key:
            return pygit2.KeypairFromMemory(
                self._username(username_from_url),
                None,
                creds.ssh_private_key,
                creds.ssh_passphrase or "",
            )
        if allowed_types & CredentialType.USERPASS_PLAINTEXT and creds.password:
            return pygit2.UserPass(self._username(username_from_url), creds.password)
        raise AuthenticationRejected(
            f"{mask_url(url)} asks for {_describe(allowed_types)}, which the credentials "
            "do not provide"
        )

    def certificate_check(self, certificate: None, valid: bool, host: bytes) -> bool:
        if self._endpoint.transport is not Transport.SSH:
            return valid
        if self._known_hosts is not None:
            presented = _presented_host_key(sys._getframe(1))
            port = self._endpoint.port or DEFAULT_SSH_PORT
            check_host_key(self._known_hosts, host.decode(errors="replace"), port, presented)
        self._host_verified = True
        return True

    def _username(self, username_from_url: str | None) -> str:
        return username_from_url or self._credentials.username or DEFAULT_USERNAME


def build_callbacks(url: str, creds: GitCredentials) -> AuthCallbacks:
    """Callbacks for one network operation on ``url``; raise CredentialsError if unusable."""
    return AuthCallbacks(url, creds)


def host_key_policy(
    endpoint: RemoteEndpoint, credentials: GitCredentials
) -> list[KnownHostEntry] | None:
    """The known_hosts entries to enforce, or None when the user explicitly opted out."""
    if endpoint.transport is not Transport.SSH:
        return None
    if credentials.known_hosts and credentials.known_hosts.strip():
        try:
            return parse_known_hosts(credentials.known_hosts)
        except KnownHostsError as error:
            raise CredentialsError(f"known_hosts: {error}") from None
    if credentials.insecure_skip_host_key_check:
        return None
    raise CredentialsError(
        f"SSH host key of {endpoint.host} cannot be verified: no known_hosts given; add a "
        "known_hosts key to the Secret or opt out of host key checking explicitly"
    )


def _presented_host_key(caller: FrameType | None) -> PresentedHostKey:
    """Decode the server key from the ``git_cert *`` pygit2's C-level callback received."""
    major, minor = pygit2.LIBGIT2_VER[0], pygit2.LIBGIT2_VER[1]
    if major != _LIBGIT2_MAJOR_WITH_KNOWN_LAYOUT or minor < _LIBGIT2_MIN_MINOR_WITH_KNOWN_LAYOUT:
        raise HostKeyError(f"cannot read SSH host keys from libgit2 {pygit2.LIBGIT2_VERSION}")
    cert: Any = caller.f_locals.get(_C_CALLBACK_CERT_ARGUMENT) if caller is not None else None
    if not isinstance(cert, ffi.CData) or ffi.typeof(cert) is not ffi.typeof("git_cert *"):
        raise HostKeyError(
            f"cannot read the SSH host key from pygit2 {version('pygit2')}; refusing to connect"
        )
    base = ffi.cast("unsigned char *", cert)
    cert_type = ffi.cast("int *", base + _CERT_TYPE_OFFSET)[0]
    if cert_type != C.GIT_CERT_HOSTKEY_LIBSSH2:
        raise HostKeyError("the SSH transport presented no host key; refusing to connect")
    flags = ffi.cast("int *", base + _CERT_FLAGS_OFFSET)[0]
    blob = None
    sha256 = None
    if flags & _CERT_SSH_RAW:
        key = ffi.cast("char **", base + _CERT_HOSTKEY_PTR_OFFSET)[0]
        length = ffi.cast("size_t *", base + _CERT_HOSTKEY_PTR_OFFSET + ffi.sizeof("void *"))[0]
        if key != ffi.NULL and length > 0:
            blob = bytes(ffi.buffer(key, length))
    if flags & _CERT_SSH_SHA256:
        sha256 = bytes(ffi.buffer(base + _CERT_SHA256_OFFSET, _CERT_SHA256_SIZE))
    if blob is None and sha256 is None:
        raise HostKeyError("the SSH transport gave neither the host key nor its SHA-256")
    return PresentedHostKey(blob=blob, sha256=sha256)


def _describe(allowed: CredentialType) -> str:
    kinds = []
    if allowed & (CredentialType.SSH_KEY | CredentialType.SSH_MEMORY | CredentialType.SSH_CUSTOM):
        kinds.append("an SSH private key")
    if allowed & CredentialType.USERPASS_PLAINTEXT:
        kinds.append("a user name and password")
    return " or ".join(kinds) or f"credential type {int(allowed)}"
