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
    request whose fact cannot be journaled in time: reverserd records, it never decides. A body
    that is no review (too large, nested too deep, not JSON, no ``request.uid``) gets a 400,
    which the API server also treats as allowed. Managed control planes present no client
    certificate to admission webhooks, so this path does not require one; see the README for
    why a forged review cannot attribute a change to the wrong user.

``POST /peer/facts``
    In sharded mode, the facts the other replicas of the group received and forward; only a
    request signed with the group's secret is heard (:mod:`reverserd.attribution.peers`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from reverserd.attribution.facts import UID_CHARS, Fact, admission_fact, audit_facts
from reverserd.attribution.peers import PEER_PATH, peer_handler

log = logging.getLogger(__name__)

# An audit batch at RequestResponse level carries whole objects (the API server's default batch
# holds up to 400 events); far larger than aiohttp's 1 MiB default, still bounded. Only the API
# server's certificate gets this far.
MAX_AUDIT_BODY_BYTES = 64 * 1024 * 1024
# A review holds an object and its old version, each at most what the API server accepts in a
# request body (3 MiB); a longer body is no review.
MAX_ADMISSION_BODY_BYTES = 8 * 1024 * 1024
# Decoded JSON costs about 60 bytes per list or object, against one byte of text: a body of
# nested empty lists costs some twenty times its size. Real reviews have far fewer containers
# than this (a 1 MiB ConfigMap has a handful); past it the body is not decoded. Audit batches
# (hundreds of objects with their managedFields) come only from the certificate's holder and
# are not counted: refusing one would lose its facts.
MAX_CONTAINERS = 100_000
# Bodies read and decoded at once; more requests wait for a slot unread. Bounds the memory a
# flood can take (slots times the body limit, decoded) without slowing the API server: a review
# is answered in milliseconds, so a few slots serve thousands of writes per second.
ADMISSION_IN_FLIGHT = 8
# The API server sends audit batches one after another.
AUDIT_IN_FLIGHT = 2
# The admission answer must come well inside the webhook's timeout (the manifests set 2 s):
# past this the request is allowed while its fact is still written.
ADMISSION_RECORD_S = 1.0

# The subject of the audit client certificate that packaging/attribution/make-certs.sh issues.
DEFAULT_AUDIT_CLIENT_NAME = "kube-apiserver-audit"

# On shutdown, requests in flight get this long to finish; the API server resends audit
# batches and goes on without an admission answer, so nothing depends on a longer wait.
SHUTDOWN_S = 3.0

Record = Callable[[Sequence[Fact]], Awaitable[None]]


class _Malformed(Exception):
    """The body is no JSON document reverserd decodes: too large, too deep or not JSON."""


def build_webhook_app(
    record: Record,
    sources: Sequence[str],
    audit_client: str = DEFAULT_AUDIT_CLIENT_NAME,
    admission_client: str | None = None,
    peer_secret: bytes | None = None,
    replica: str = "",
) -> web.Application:
    """``audit_client``: the subject /audit requires; ``admission_client``: the one /admission
    requires, None for any caller; ``peer_secret``: the sharded group's secret, which
    /peer/facts requires of the facts other replicas forward to ``replica``, this one's
    identity (None: no such path)."""
    app = web.Application(client_max_size=MAX_AUDIT_BODY_BYTES)
    if "audit" in sources:
        app.router.add_post("/audit", _audit_handler(record, audit_client))
    if "admission" in sources:
        app.router.add_post("/admission", _admission_handler(record, admission_client))
    if peer_secret is not None:
        app.router.add_post(PEER_PATH, peer_handler(record, peer_secret, replica))
    return app


async def _read_json(request: web.Request, limit: int, containers: int | None = None) -> Any:
    """The decoded body, read only up to ``limit`` bytes and decoded only with at most
    ``containers`` lists and objects; raises :class:`_Malformed`."""
    if request.content_length is not None and request.content_length > limit:
        raise _Malformed(f"body over {limit} bytes")
    body = bytearray()
    async for chunk in request.content.iter_chunked(2**16):
        body += chunk
        if len(body) > limit:
            raise _Malformed(f"body over {limit} bytes")
    # Counted in the text, brackets inside strings too: an overestimate, never an underestimate.
    if containers is not None and body.count(b"[") + body.count(b"{") > containers:
        raise _Malformed(f"more than {containers} lists and objects")
    try:
        # orjson refuses nesting deeper than 1024 levels.
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise _Malformed(f"not JSON: {error}") from None


def _refused(reason: object) -> web.Response:
    return web.Response(status=400, text=f"{reason}\n")


def _audit_handler(record: Record, client: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    slots = asyncio.Semaphore(AUDIT_IN_FLIGHT)

    async def audit(request: web.Request) -> web.Response:
        if not _client_is(request, client):
            return _forbidden(client)
        async with slots:
            try:
                facts = list(audit_facts(await _read_json(request, MAX_AUDIT_BODY_BYTES)))
            except (_Malformed, RecursionError) as malformed:
                return _refused(malformed)
            try:
                await record(facts)
            except Exception:
                log.exception("audit facts not journaled; the API server will send them again")
                return web.Response(status=503, text="journal unavailable\n")
        return web.json_response({})

    return audit


def _admission_handler(
    record: Record, client: str | None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    slots = asyncio.Semaphore(ADMISSION_IN_FLIGHT)

    async def admission(request: web.Request) -> web.Response:
        if client is not None and not _client_is(request, client):
            return _forbidden(client)
        async with slots:
            try:
                review = await _read_json(request, MAX_ADMISSION_BODY_BYTES, MAX_CONTAINERS)
                fact = admission_fact(review)
            except (_Malformed, RecursionError) as malformed:
                # The API server treats the error as allowed (failurePolicy Ignore).
                return _refused(malformed)
            request_part = review.get("request") if isinstance(review, dict) else None
            uid = request_part.get("uid") if isinstance(request_part, dict) else None
            if not isinstance(uid, str) or len(uid) > UID_CHARS:
                return _refused("not an AdmissionReview: request.uid missing")
            if fact is not None:
                writing = asyncio.ensure_future(record([fact]))
                try:
                    await asyncio.wait_for(asyncio.shield(writing), ADMISSION_RECORD_S)
                except TimeoutError:
                    log.warning("admission fact still being journaled; request allowed meanwhile")
                except Exception:
                    log.exception("admission fact not journaled; its change stays unresolved")
        return web.json_response(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {"uid": uid, "allowed": True},
            }
        )

    return admission


def _client_is(request: web.Request, name: str) -> bool:
    """Whether the caller presented a certificate signed by the client CA (the TLS handshake
    verified it; an unverified one is never reported) whose subject is ``name``: its common
    name or one of its DNS names."""
    transport = request.transport
    certificate = transport.get_extra_info("peercert") if transport is not None else None
    if not certificate:
        return False
    names = [
        value for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    names += [value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"]
    return name in names


def _forbidden(name: str) -> web.Response:
    return web.Response(status=403, text=f"a client certificate for {name} is required\n")


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
