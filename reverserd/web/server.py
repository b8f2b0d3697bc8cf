"""The HTTP surface: health, readiness, metrics and status on one port.

- ``/healthz``: the process and its event loop answer.
- ``/readyz``: the journal is open and the API server answered recently (probed when stale).
- ``/metrics``: Prometheus text format.
- ``/status``: JSON an operator reads during an incident (:mod:`reverserd.web.view`).
- ``/``: the same picture as a page readable at a glance (:mod:`reverserd.web.page`).

``/metrics`` recomputes the picture first, so the readiness and lag gauges it serves are the
ones ``/status`` shows.

With an ``access`` check (the default; :mod:`reverserd.web.access`), ``/metrics``, ``/status``
and ``/`` answer only requests whose bearer token Kubernetes authorizes for that path, and
requests from the loopback interface: in a pod, only its own processes (``reverserd status``
through ``kubectl exec``) and ``kubectl port-forward`` reach it, and Kubernetes authorized both
(``pods/exec``, ``pods/portforward``). That is how a person opens the page ``/`` in a browser,
which cannot present a token. On a host where other users share the loopback interface (the
systemd unit), ``--status-auth-on-loopback`` asks for a token there too. The probes stay open.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reverserd.logs import Throttle
from reverserd.web.access import (
    ALLOWED,
    FORBIDDEN,
    PROTECTED_PATHS,
    UNAUTHENTICATED,
    UNVERIFIABLE,
    KubeAccess,
)
from reverserd.web.page import render_page

log = logging.getLogger(__name__)

# A failing status computation is warned about this often at most, however often /metrics is read.
METRICS_WARNING_INTERVAL_S = 60.0


@dataclass
class Surface:
    """What the endpoints read; the daemon wires the live objects in."""

    status: Callable[[], Awaitable[dict[str, Any]]]
    journal_ok: Callable[[], Awaitable[bool]]
    api_ok: Callable[[], Awaitable[bool]]  # answered recently; probed when that is stale
    role: Callable[[], str]
    access: KubeAccess | None = None
    """Who may read the protected paths; None serves them to anyone (``--no-status-auth``)."""
    trust_loopback: bool = True
    """Serve the protected paths to loopback peers without a token: in a pod only the pod's own
    processes and ``kubectl port-forward`` (which Kubernetes authorized) reach its loopback."""


def build_app(surface: Surface) -> web.Application:
    warnings = Throttle(METRICS_WARNING_INTERVAL_S)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        problems = []
        if not await surface.journal_ok():
            problems.append("journal is not open")
        if not await surface.api_ok():
            problems.append("API server unreachable")
        if problems:
            return web.Response(status=503, text="not ready: " + "; ".join(problems) + "\n")
        return web.Response(text=f"ready ({surface.role()})\n")

    async def metrics(_: web.Request) -> web.Response:
        try:
            await surface.status()
        except Exception as error:
            # The other metrics are still worth scraping while the picture cannot be made.
            if warnings.allow("metrics") is not None:
                log.warning("status for /metrics failed: %s", error)
        response = web.Response(body=generate_latest())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    async def status(_: web.Request) -> web.Response:
        # Compact: indenting makes json use its pure-Python encoder, which with thousands of
        # targets held the event loop for most of a second (bench/targets.py).
        return web.json_response(await surface.status())

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=render_page(await surface.status()), content_type="text/html")

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if surface.access is None or request.path not in PROTECTED_PATHS:
            return await handler(request)
        if surface.trust_loopback and _from_loopback(request):
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        decision = UNAUTHENTICATED
        if scheme.lower() == "bearer":
            decision = await surface.access.decide(token.strip(), request.path)
        if decision == ALLOWED:
            return await handler(request)
        messages = {
            UNAUTHENTICATED: "a bearer token that Kubernetes accepts is required",
            FORBIDDEN: f"this token may not get {request.path}",
            UNVERIFIABLE: "the API server cannot verify the token now; try again",
        }
        return web.Response(
            status=decision,
            text=messages[decision] + "\n",
            headers={"WWW-Authenticate": 'Bearer realm="reverserd"'},
        )

    app = web.Application(middlewares=[guard])
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
            web.get("/status", status),
            web.get("/", page),
        ]
    )
    return app


def _from_loopback(request: web.Request) -> bool:
    try:
        return request.remote is not None and ipaddress.ip_address(request.remote).is_loopback
    except ValueError:
        return False


async def serve(app: web.Application, listen: str) -> web.AppRunner:
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or "0.0.0.0", int(port))
    await site.start()
    return runner
