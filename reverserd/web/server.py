"""The HTTP surface: health, readiness, metrics and status on one port.

- ``/healthz``: the process and its event loop answer.
- ``/readyz``: the journal is open and the API server answered recently (probed when stale).
- ``/metrics``: Prometheus text format.
- ``/status``: JSON an operator reads during an incident: per target its cursor, lag, last push
  and last error; journal size; each watch with its resourceVersion and seed state.
- ``/``: the same as a small page readable at a glance.
"""

from __future__ import annotations

import asyncio
import html
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

# A readiness answer may rely on an API server contact this recent; older ones are re-probed.
API_FRESHNESS_S = 10.0
# /status and / read the journal (counts, per-target lag): requests within this long of each
# other share one computation, so no caller can make the daemon do more than one a second.
STATUS_CACHE_S = 1.0


@dataclass
class Surface:
    """What the endpoints read; the daemon wires the live objects in."""

    status: Callable[[], Awaitable[dict[str, Any]]]
    journal_ok: Callable[[], Awaitable[bool]]
    api_ok: Callable[[], Awaitable[bool]]
    role: Callable[[], str]


def build_app(surface: Surface) -> web.Application:
    api_checked = {"at": 0.0, "ok": False}
    computed: dict[str, Any] = {"at": 0.0, "task": None}

    async def current_status() -> dict[str, Any]:
        task: asyncio.Task[dict[str, Any]] | None = computed["task"]
        stale = time.monotonic() - computed["at"] > STATUS_CACHE_S
        if task is None or (task.done() and stale):
            computed["at"] = time.monotonic()
            task = computed["task"] = asyncio.ensure_future(surface.status())
        return await asyncio.shield(task)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        problems = []
        if not await surface.journal_ok():
            problems.append("journal is not open")
        if time.monotonic() - api_checked["at"] > API_FRESHNESS_S or not api_checked["ok"]:
            api_checked["ok"] = await surface.api_ok()
            api_checked["at"] = time.monotonic()
        if not api_checked["ok"]:
            problems.append("API server unreachable")
        if problems:
            return web.Response(status=503, text="not ready: " + "; ".join(problems) + "\n")
        return web.Response(text=f"ready ({surface.role()})\n")

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    async def status(_: web.Request) -> web.Response:
        return web.json_response(await current_status(), dumps=lambda v: json.dumps(v, indent=2))

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=render_page(await current_status()), content_type="text/html")

    app = web.Application()
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


def render_page(status: dict[str, Any]) -> str:
    def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join(
            "<tr>"
            + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns)
            + "</tr>"
            for r in rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"

    journal = status.get("journal", {})
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>reverserd</title>"
        "<style>body{font-family:sans-serif;margin:1.5em}td,th{padding:2px 10px;"
        "text-align:left;border-bottom:1px solid #ddd}.bad{color:#b00}</style></head><body>"
        f"<h1>reverserd {html.escape(str(status.get('version', '')))}"
        f" &mdash; {html.escape(str(status.get('role', '')))}</h1>"
        "<h2>Targets</h2>"
        + table(
            status.get("targets", []),
            [
                "target",
                "ready",
                "cursor",
                "lag_events",
                "lag_seconds",
                "last_commit",
                "last_push",
                "last_error",
            ],
        )
        + "<h2>Journal</h2>"
        + table([journal], ["events", "objects", "first_seq", "last_seq", "database_bytes"])
        + "<h2>Watches</h2>"
        + table(
            status.get("watches", []),
            [
                "stream",
                "seed_state",
                "resource_version",
                "relists",
                "last_error",
            ],
        )
        + "</body></html>"
    )


async def serve(app: web.Application, listen: str) -> web.AppRunner:
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or "0.0.0.0", int(port))
    await site.start()
    return runner
