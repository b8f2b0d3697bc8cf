"""An attacker's Git server: it asks every client for credentials and records what it gets.

It answers every request with ``401`` and a Basic challenge, as a Git server that wants a
password does, so a client holding credentials for the URL sends them on the retry. Tests
point a hostile GitProvider at it and assert that no credential ever arrived.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self


class CredentialTrap:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        """Every request as (path, Authorization header or None)."""
        trap = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._challenge()

            def do_POST(self) -> None:
                self._challenge()

            def _challenge(self) -> None:
                trap.requests.append((self.path, self.headers.get("Authorization")))
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                """Requests are recorded in ``requests``, not printed."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/git/{name}.git"

    @property
    def credentials_received(self) -> list[str]:
        return [header for _, header in self.requests if header is not None]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
