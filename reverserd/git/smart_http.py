"""A push over smart HTTP(S) that sends a pack the clone already holds.

Why: libgit2's push builds the pack it sends itself, searching deltas again for every tree of
every commit; on a 10,000-file folder that search was most of the daemon's CPU per commit. The
objects a push carries were already written, compressed and delta-encoded, by the flushes since
the last push (:mod:`reverserd.git.objects`), so this module speaks the two requests of a
smart-HTTP push (Git's ``http-protocol`` document; what they carry is the receive-pack
conversation of :mod:`reverserd.git.pack_protocol`) and sends those packs joined into one
(:func:`~reverserd.git.objects.joined_pack`): the ref advertisement
(``GET info/refs?service=git-receive-pack``), then ``POST git-receive-pack`` carrying one
compare-and-swap command (old tip to new) and the pack, asking for ``report-status``.

Guarantees:

- **The network behaves as libgit2's does for this daemon.** TLS is verified against the CA
  locations libgit2 is given (``pygit2.settings.ssl_cert_file`` / ``ssl_cert_dir``), host
  name included; no proxy is used (pygit2's push is given none); the connect timeout and the
  timeout of every socket read or write are libgit2's (``pygit2.settings.server_connect_timeout``
  and ``server_timeout``, see ``configure_network_timeouts``); the URL is joined as libgit2
  joins it (``/info/refs`` and ``/git-receive-pack`` after the path, a query kept). As libgit2
  does, the credentials are sent only once the server asks for them (HTTP basic auth), and one
  refusal of them fails the push.
- **Compare-and-swap.** ``choose_old`` sees what the server advertises for the branch before
  anything is sent, and names the old tip of the command (or raises, and nothing is sent); the
  server updates the branch only if it still points there.
- **The fence.** ``fence`` is called once the advertisement is read and before every piece of
  the request body after the first (the pack's last piece, its checksum, included). What it
  raises closes the connection at once: the server has received less than a whole pack and
  updates nothing.
- **Errors carry no secret**: every reason passes through :func:`redact`. :class:`Unreachable`
  is what libgit2's push would report as an error (connection, TLS, timeout, authentication, a
  protocol violation), :class:`Refused` is the server's refusal of the update in its report,
  :class:`Unsupported` a server this transport does not handle (a redirect, no
  ``report-status`` or ``ofs-delta``, an authentication scheme other than basic, a dumb
  server): the caller pushes with libgit2 instead.
"""

from __future__ import annotations

import base64
import http.client
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

import pygit2

from reverserd.git.credentials import DEFAULT_USERNAME, GitCredentials
from reverserd.git.pack_protocol import (
    MAX_ADVERTISEMENT,
    MAX_REPORT,
    Advertisement,
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
from reverserd.redaction import mask_url, redact

_SERVICE = "git-receive-pack"
_USER_AGENT = "git/2.0 (reverserd)"
_ADVERTISEMENT_TYPE = f"application/x-{_SERVICE}-advertisement"
_RESULT_TYPE = f"application/x-{_SERVICE}-result"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


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
    branch's old tip (:data:`~reverserd.git.pack_protocol.ZERO_ID`: create it). Returns
    False, sending nothing, when that is ``new`` already. See the module docstring for what
    is raised.
    """
    session = _Session(url, credentials)
    try:
        update = update_command(session.advertisement(), ref, new, choose_old)
        if update is None:
            return False
        commands, side_band = update
        if fence is not None:
            fence()
        report = session.send(commands, pack, fence)
        check_report(report_lines(report, side_band), ref)
        return True
    except http.client.InvalidURL:
        # Its message quotes the request target, a query token included, in a form redact()
        # cannot recognise.
        raise Unreachable("the URL cannot be requested over HTTP") from None
    except (OSError, http.client.HTTPException) as error:
        raise Unreachable(redact(str(error), credentials) or type(error).__name__) from None
    finally:
        session.close()


class _Session:
    """One connection to the server, kept alive from the advertisement to the report."""

    def __init__(self, url: str, credentials: GitCredentials) -> None:
        parts = urlsplit(url)
        self._credentials = credentials
        self._shown = mask_url(url)
        path = parts.path.rstrip("/")
        query = f"{parts.query}&" if parts.query else ""
        self._info_refs = f"{path}/info/refs?{query}service={_SERVICE}"
        self._endpoint = f"{path}/{_SERVICE}" + (f"?{parts.query}" if parts.query else "")
        connect_s = pygit2.settings.server_connect_timeout / 1000
        io_s = pygit2.settings.server_timeout / 1000
        host, port = parts.hostname or "", parts.port
        if parts.scheme.lower() == "https":
            context = ssl.create_default_context(
                cafile=pygit2.settings.ssl_cert_file, capath=pygit2.settings.ssl_cert_dir
            )
            self._connection: http.client.HTTPConnection = _Https(
                host, port, io_s, timeout=connect_s, context=context
            )
        else:
            self._connection = _Http(host, port, io_s, timeout=connect_s)
        self._authorization: str | None = None

    def close(self) -> None:
        self._connection.close()

    def advertisement(self) -> Advertisement:
        response, body = self._get()
        while response.status == 401:
            self._authorize(response)
            response, body = self._get()
        self._check_status(response)
        if response.getheader("Content-Type", "") != _ADVERTISEMENT_TYPE:
            raise Unsupported("the server does not speak smart HTTP")
        return _advertisement(body)

    def send(self, commands: bytes, pack: PackSource, fence: Callable[[], None] | None) -> bytes:
        response, body = self._post(commands, pack, fence)
        while response.status == 401:
            self._authorize(response)
            response, body = self._post(commands, pack, fence)
        self._check_status(response)
        if response.getheader("Content-Type", "") != _RESULT_TYPE:
            raise Unreachable(f"unexpected content type {response.getheader('Content-Type')!r}")
        return body

    def _get(self) -> tuple[http.client.HTTPResponse, bytes]:
        self._connection.putrequest("GET", self._info_refs, skip_accept_encoding=True)
        self._headers({"Accept": "*/*"})
        self._connection.endheaders()
        return self._response(MAX_ADVERTISEMENT)

    def _post(
        self, commands: bytes, pack: PackSource, fence: Callable[[], None] | None
    ) -> tuple[http.client.HTTPResponse, bytes]:
        length, pieces = pack()
        self._connection.putrequest("POST", self._endpoint, skip_accept_encoding=True)
        self._headers(
            {
                "Content-Type": f"application/x-{_SERVICE}-request",
                "Accept": _RESULT_TYPE,
                "Content-Length": str(len(commands) + length),
            }
        )
        self._connection.endheaders()
        try:
            self._connection.send(commands + next(pieces))
            for piece in pieces:
                if fence is not None:
                    fence()
                self._connection.send(piece)
        except BaseException:
            # Whatever stops the body (the fence, a lost connection) must leave the server a
            # truncated request, never a complete pack.
            self._connection.close()
            raise
        return self._response(MAX_REPORT)

    def _headers(self, headers: dict[str, str]) -> None:
        self._connection.putheader("User-Agent", _USER_AGENT)
        if self._authorization is not None:
            self._connection.putheader("Authorization", self._authorization)
        for name, value in headers.items():
            self._connection.putheader(name, value)

    def _response(self, limit: int) -> tuple[http.client.HTTPResponse, bytes]:
        response = self._connection.getresponse()
        body = response.read(limit + 1)
        if len(body) > limit:
            raise Unreachable(f"the server's answer is longer than {limit} bytes")
        return response, body

    def _authorize(self, response: http.client.HTTPResponse) -> None:
        """Answer the server's request for credentials (once: a second request means it
        refused them); raise if there are none to give, or they were refused."""
        if self._authorization is not None:
            raise Unreachable(
                f"the server rejected the credentials for {self._shown}; check the Secret"
            )
        schemes = " ".join(response.headers.get_all("WWW-Authenticate") or []).lower()
        if "basic" not in schemes:
            raise Unsupported("the server asks for an authentication scheme other than basic")
        password = self._credentials.password
        if not password:
            raise Unreachable(
                f"{self._shown} asks for a user name and password, which the credentials "
                "do not provide"
            )
        user = self._credentials.username or DEFAULT_USERNAME
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._authorization = f"Basic {token}"

    def _check_status(self, response: http.client.HTTPResponse) -> None:
        if response.status in _REDIRECTS:
            raise Unsupported("the server redirects")
        if response.status != 200:
            raise Unreachable(f"unexpected http status code: {response.status}")


class _Http(http.client.HTTPConnection):
    """A connection whose socket reads and writes time out after ``io_timeout`` seconds once
    connected (``timeout`` bounds the connect), as libgit2's do."""

    def __init__(self, host: str, port: int | None, io_timeout: float, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._io_timeout = io_timeout

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(self._io_timeout)


class _Https(http.client.HTTPSConnection):
    """:class:`_Http` over TLS, verified with ``context``."""

    def __init__(
        self,
        host: str,
        port: int | None,
        io_timeout: float,
        timeout: float,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._io_timeout = io_timeout

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(self._io_timeout)


def _advertisement(body: bytes) -> Advertisement:
    lines = pkt_lines(body)
    if next(lines, None) != f"# service={_SERVICE}\n".encode() or next(lines, b"") is not None:
        raise Unsupported("the server does not speak smart HTTP")
    return advertised_refs(lines)
