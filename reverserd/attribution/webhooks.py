"""The HTTPS endpoint the API server sends attribution facts to.

It runs in the webhook process (:mod:`reverserd.attribution.webhook_process`), which gives
``record``: facts are committed to the journal database when it returns.

``POST /audit``
    The audit webhook backend (``--audit-webhook-config-file``) posts ``EventList`` batches.
    Only a caller with a client certificate signed by ``--webhook-client-ca`` is heard: the
    certificate named in the API server's webhook kubeconfig. Facts are journaled before the
    answer, so a batch the API server saw acknowledged is never lost; a failed write answers
    503 and the API server's batch backend retries.

``POST /admission``
    A ``ValidatingWebhookConfiguration`` (``failurePolicy: Ignore``, ``sideEffects: None``)
    sends ``AdmissionReview`` requests. The answer is always ``allowed: true``, also for a
    request that cannot be parsed or whose fact cannot be journaled in time: reverserd records,
    it never decides. Managed control planes present no client certificate to admission
    webhooks, so this path does not require one; see the README for why a forged review cannot
    attribute a change to the wrong user.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from reverserd.attribution.facts import Fact, admission_fact, audit_facts

log = logging.getLogger(__name__)

# An audit batch at RequestResponse level carries whole objects (the API server's default batch
# holds up to 400 events); far larger than aiohttp's 1 MiB default, still bounded.
MAX_BODY_BYTES = 64 * 1024 * 1024
# The admission answer must come well inside the webhook's timeout (the manifests set 2 s):
# past this the request is allowed while its fact is still written.
ADMISSION_RECORD_S = 1.0

# On shutdown, requests in flight get this long to finish; the API server resends audit
# batches and goes on without an admission answer, so nothing depends on a longer wait.
SHUTDOWN_S = 3.0

Record = Callable[[Sequence[Fact]], Awaitable[None]]


def build_webhook_app(record: Record, sources: Sequence[str]) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    if "audit" in sources:
        app.router.add_post("/audit", _audit_handler(record))
    if "admission" in sources:
        app.router.add_post("/admission", _admission_handler(record))
    return app


def _audit_handler(record: Record) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def audit(request: web.Request) -> web.Response:
        if not _has_client_certificate(request):
            return web.Response(status=403, text="a client certificate is required\n")
        try:
            payload = await request.json()
        except (ValueError, RecursionError):
            return web.Response(status=400, text="not JSON, or nested too deep\n")
        facts = list(audit_facts(payload))
        try:
            await record(facts)
        except Exception:
            log.exception("audit facts not journaled; the API server will send them again")
            return web.Response(status=503, text="journal unavailable\n")
        return web.json_response({})

    return audit


def _admission_handler(record: Record) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def admission(request: web.Request) -> web.Response:
        review: Any = None
        fact = None
        try:
            review = await request.json()
            fact = admission_fact(review)
        except (ValueError, RecursionError):
            # Not JSON, or nested too deep to decode or digest: allowed, and no fact.
            log.warning("admission review that cannot be read allowed unread")
        if fact is not None:
            writing = asyncio.ensure_future(record([fact]))
            try:
                await asyncio.wait_for(asyncio.shield(writing), ADMISSION_RECORD_S)
            except TimeoutError:
                log.warning("admission fact still being journaled; request allowed meanwhile")
            except Exception:
                log.exception("admission fact not journaled; its change stays unresolved")
        uid = (review.get("request") or {}).get("uid") if isinstance(review, dict) else None
        return web.json_response(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {"uid": uid or "", "allowed": True},
            }
        )

    return admission


def _has_client_certificate(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and bool(transport.get_extra_info("peercert"))


def server_tls(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """Serving certificate; client certificates are verified against ``client_ca`` when sent."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


async def serve_webhooks(app: web.Application, listen: str, tls: ssl.SSLContext) -> web.AppRunner:
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_S)
    await runner.setup()
    await web.TCPSite(runner, host or "0.0.0.0", int(port), ssl_context=tls).start()
    return runner
