"""Attribution facts forwarded between the replicas of a sharded group (``--shards``).

Why: the API server load-balances webhook calls over the Service, so the replica that receives
a fact is rarely the one that owns the changed object's branch, and the owner's commit needs
it. Decision: **every replica forwards every fact it received to every live peer**, and a peer
stores a forwarded fact in its own journal as if it had received it. Broadcast, not routing by
branch: a fact is a few hundred bytes, the sender need not know which branch (or, with rules
that select an object for several targets, which branches) a change goes to, and a rebalance
that moves a branch between the fact and its event cannot misroute it.

Guarantees:

- **Never slower answers.** A fact is committed to the receiving replica's journal before its
  webhook answers, exactly as with one replica; forwarding reads committed facts from the
  journal afterwards, in the daemon, never in the webhook's path.
- **Durable, with a stated bound.** The journal is the outbox: :class:`FactForwarder` keeps,
  per peer, the id of the last fact that peer acknowledged, and sends what follows in order,
  each peer on its own (a peer that is down delays no other), retrying with a backoff of at
  most :data:`RETRY_MAX_S`. A peer that stays unreachable misses the facts received more than
  :data:`FORWARD_HORIZON_S` before it returns (the journal's own compaction removes facts that
  old; so does :data:`~reverserd.attribution.store.FACTS_KEPT`): their changes are committed
  ``unresolved``, never misattributed. A sender that restarts resends the facts of the last
  :data:`FORWARD_HORIZON_S` (its cursors are in memory), which the peer stores once: a
  forwarded fact is unique by origin replica, origin id and receipt time.
- **Peers are found in the membership Leases.** Each replica writes its peer address
  (``--peer-address``) in the annotation ``reverserd.configbutler.ai/peer-address`` of its
  membership Lease (:mod:`reverserd.kube.shards`); the live members with an address are the peers. A
  replica that joins gets the facts of the last :data:`FORWARD_HORIZON_S`.
- **Only genuine replicas author.** A forwarded fact can name any user as the author of a
  commit, so ``POST /peer/facts`` (on the webhook port, served by the webhook process) stores
  nothing unless the request carries an HMAC-SHA256 of its time, a nonce, the identity of the
  replica it is meant for and its body under the group's shared peer secret
  (``--peer-secret-file``, at least :data:`MIN_SECRET_BYTES` bytes). A request whose time is
  more than :data:`CLOCK_SKEW_S` away from the receiver's clock is refused, and so is one
  whose signature was seen within that window (a replay), and one meant for another replica
  (a replay there, or an address that replica no longer has: never acknowledged by the wrong
  one); a replay after the receiver restarted stores nothing, the facts being unique. Bodies
  over :data:`MAX_PEER_BODY_BYTES` are refused, never read further, and at most
  :data:`PEER_IN_FLIGHT` requests are read at once, each within :data:`PEER_READ_TIMEOUT_S`,
  so a client without the secret costs a bounded amount of memory and time and one HMAC per
  megabyte, and stores nothing; with the secret, the facts table's bound holds.
- **Confidential in transit.** Facts name users and objects. The sender speaks TLS and trusts
  only a certificate chaining to a root in ``--peer-ca`` (the CA of the serving certificate
  every replica of a group shares; by default the file of that certificate) that carries the
  name the shared certificate carries, so an address advertised by someone else who can write
  Leases receives nothing, even with another certificate from the same issuer. A peer that
  refuses a forward (4xx) is counted apart from network failures and logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import aiosqlite
import orjson
from aiohttp import web

from reverserd.attribution.facts import AUDIT_VERBS, SUBDOMAIN_CHARS, Fact
from reverserd.attribution.store import FACT_LEAD_S
from reverserd.metrics import ATTRIBUTION_FORWARDS

log = logging.getLogger(__name__)

PEER_PATH = "/peer/facts"
TIME_HEADER = "X-Reverserd-Peer-Time"
NONCE_HEADER = "X-Reverserd-Peer-Nonce"
SIGNATURE_HEADER = "X-Reverserd-Peer-Signature"
# The replica identity the sender meant the forward for: signed, and refused by any other.
RECIPIENT_HEADER = "X-Reverserd-Peer-Recipient"
# A shorter secret could be guessed; 32 bytes is what ``head -c 32 /dev/urandom`` gives.
MIN_SECRET_BYTES = 32
# Facts per request: each is at most about 3.5 KiB (every field at its Kubernetes limit), so a
# request stays below MAX_PEER_BODY_BYTES; real facts are a few hundred bytes.
FACTS_PER_FORWARD = 200
MAX_PEER_BODY_BYTES = 2**20
# A body not read within this long is refused (408): a client dripping it slowly would hold
# one of the PEER_IN_FLIGHT slots; a genuine sender's megabyte takes milliseconds.
PEER_READ_TIMEOUT_S = 5.0
# Requests read at once; more wait unread. A genuine sender has one request in flight.
PEER_IN_FLIGHT = 4
# How far the sender's clock may be from the receiver's (pods on NTP-synchronized nodes are
# within a second); signatures seen within this window are remembered to refuse replays.
CLOCK_SKEW_S = 120.0
# Signatures remembered at most; with every slot taken by an unexpired one (more than a
# thousand requests a second from genuine peers for two minutes) a request is refused with a
# 503 and its sender retries.
SIGNATURES_REMEMBERED = 2**17
# Facts older than this are not forwarded: no event can need them any more (a fact precedes
# its event by at most FACT_LEAD_S), and the journal's compaction removes them.
FORWARD_HORIZON_S = FACT_LEAD_S
# A send that takes longer failed; the peer stores facts in milliseconds.
FORWARD_TIMEOUT_S = 10.0
# Backoff after a failed send, doubling up to the maximum: a peer that restarts gets its facts
# within RETRY_MAX_S of listening again.
RETRY_MIN_S = 0.25
RETRY_MAX_S = 5.0
# New facts wake the forwarder at once; this is the pace at which it also looks by itself
# (a wake-up line the daemon did not read, a peer that appeared).
POLL_S = 1.0

_FACT_FIELDS = (
    "id, source, operation, api_group, resource, namespace, name, uid, resource_version,"
    " prior_resource_version, digest, username, groups, request_uid, received_at"
)


def read_secret(path: Path) -> bytes:
    """The group's peer secret: the file's bytes without one trailing newline (random bytes may
    begin or end with whitespace, which is part of the secret); raises ValueError when it is
    too short to be one."""
    secret = path.read_bytes().removesuffix(b"\n")
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"{path}: a peer secret has at least {MIN_SECRET_BYTES} bytes")
    return secret


def signature(secret: bytes, stamp: str, nonce: str, recipient: str, body: bytes) -> str:
    """HMAC-SHA256 of a request's time, nonce, recipient and body under the group's secret.
    Every header is ASCII (the receiver refuses others before it computes this)."""
    message = b"\n".join((stamp.encode(), nonce.encode(), recipient.encode(), body))
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def signed_headers(
    secret: bytes, recipient: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """Headers of a forward of ``body`` meant for the replica ``recipient`` only."""
    stamp = f"{time.time() if now is None else now:.6f}"
    nonce = os.urandom(16).hex()
    return {
        TIME_HEADER: stamp,
        NONCE_HEADER: nonce,
        RECIPIENT_HEADER: recipient,
        SIGNATURE_HEADER: signature(secret, stamp, nonce, recipient, body),
        "Content-Type": "application/json",
    }


def peer_client_tls(trusted: Path) -> ssl.SSLContext:
    """Trusts only chains to a root in ``trusted`` (``--peer-ca``: the CA of the serving
    certificate every replica shares, or that certificate's file with its root); the host name
    checked is the one the shared certificate names (:func:`peer_server_name`), given on every
    send since peers are reached by pod address. No partial chains: an intermediate in
    ``trusted`` is no trust anchor, so another certificate it issued is not accepted."""
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(trusted))


def peer_server_name(certificate: Path) -> str:
    """The name a peer's certificate must carry: the first DNS name (else IP address) of the
    serving certificate this replica shares with its group (the chart's names the webhook
    Service first); raises ValueError when it names none."""
    # Imported here: only a sharded replica with attribution reads a certificate, and the
    # cryptography package costs every other daemon about 9 MB of RSS.
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(certificate.read_bytes())
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = x509.SubjectAlternativeName([])
    dns, ips = names.get_values_for_type(x509.DNSName), names.get_values_for_type(x509.IPAddress)
    for name in (*dns, *ips):
        return str(name)
    raise ValueError(f"{certificate}: the certificate names no DNS name or IP address")


class _Signatures:
    """Signatures accepted within the last :data:`CLOCK_SKEW_S` (twice: the sender's clock may
    be ahead or behind), oldest first."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()

    def admit(self, sig: str, now: float) -> str | None:
        """Remember ``sig``; the reason it is refused, or None."""
        while self._seen and next(iter(self._seen.values())) < now:
            self._seen.popitem(last=False)
        if sig in self._seen:
            return "replayed"
        if len(self._seen) >= SIGNATURES_REMEMBERED:
            return "busy"
        self._seen[sig] = now + 2 * CLOCK_SKEW_S
        return None


def _text(value: Any, optional: bool = False) -> bool:
    return isinstance(value, str) or (optional and value is None)


def forwarded_facts(payload: Any) -> list[Fact] | None:
    """The facts of a forward's body, each marked with its origin; None when it is no forward.
    A fact beyond the field limits is left out (a genuine replica never stored one)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("facts"), list):
        return None
    origin = payload.get("origin")
    if not isinstance(origin, str) or not origin or len(origin) > SUBDOMAIN_CHARS:
        return None
    facts = []
    for row in payload["facts"]:
        if not isinstance(row, list) or len(row) != 15:
            return None
        ident, source, operation, group, plural, namespace, name = row[:7]
        uid, version, prior, digest, username, groups, request_uid, received_at = row[7:]
        well_formed = (
            isinstance(ident, int)
            and not isinstance(ident, bool)
            and source in ("audit", "admission")
            and operation in AUDIT_VERBS.values()
            and all(_text(v) for v in (group, plural, namespace, name, username, groups))
            and all(_text(v, optional=True) for v in (uid, version, prior, digest, request_uid))
            and isinstance(received_at, int | float)
            and not isinstance(received_at, bool)
        )
        if not well_formed:
            return None
        try:
            listed = orjson.loads(groups)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(listed, list) or not all(isinstance(g, str) for g in listed):
            return None
        fact = Fact.from_row([*row[1:], origin, ident])
        if fact.within_limits():
            facts.append(fact)
    return facts


def peer_handler(
    record: Callable[[Sequence[Fact]], Awaitable[None]], secret: bytes, replica: str
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``POST /peer/facts``: stores the facts of a signed forward from a replica of the group,
    meant for this one (``replica``: its identity)."""
    slots = asyncio.Semaphore(PEER_IN_FLIGHT)
    seen = _Signatures()

    async def forwarded(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_PEER_BODY_BYTES:
            return web.Response(status=413, text="body too large\n")
        stamp = request.headers.get(TIME_HEADER, "")
        nonce = request.headers.get(NONCE_HEADER, "")
        recipient = request.headers.get(RECIPIENT_HEADER, "")
        sig = request.headers.get(SIGNATURE_HEADER, "")
        if not all(value.isascii() for value in (stamp, nonce, recipient, sig)):
            return web.Response(status=400, text="peer headers are ASCII\n")
        async with slots:
            body = bytearray()
            try:
                async with asyncio.timeout(PEER_READ_TIMEOUT_S):
                    async for chunk in request.content.iter_chunked(2**16):
                        body += chunk
                        if len(body) > MAX_PEER_BODY_BYTES:
                            return web.Response(status=413, text="body too large\n")
            except TimeoutError:
                return web.Response(status=408, text="body not sent in time\n")
            expected = signature(secret, stamp, nonce, recipient, bytes(body))
            if not hmac.compare_digest(sig.encode(), expected.encode()):
                return web.Response(status=401, text="not signed with the group's secret\n")
            if recipient != replica:
                return web.Response(status=421, text="meant for another replica\n")
            now = time.time()
            try:
                sent = float(stamp)
            except ValueError:
                sent = float("nan")
            if not abs(now - sent) <= CLOCK_SKEW_S:
                return web.Response(status=401, text="signed too long ago or ahead\n")
            refused = seen.admit(sig, now)
            if refused == "replayed":
                return web.Response(status=409, text="this forward was received already\n")
            if refused is not None:
                return web.Response(status=503, text="too many forwards; send again later\n")
            try:
                facts = forwarded_facts(orjson.loads(body))
            except orjson.JSONDecodeError:
                facts = None
            if facts is None:
                return web.Response(status=400, text="not a forward of facts\n")
            try:
                await record(facts)
            except Exception:
                log.exception("forwarded facts not journaled; the sender sends them again")
                return web.Response(status=503, text="journal unavailable\n")
        return web.json_response({"facts": len(facts)})

    return forwarded


def peer_url(address: str) -> str:
    return f"https://{address}{PEER_PATH}"


class FactForwarder:
    """Sends the facts this replica received to every live peer, in the order received.

    ``peers()`` gives the live peers (replica identity to address). The invariant: every fact
    received here within the last :data:`FORWARD_HORIZON_S` after the id a peer acknowledged
    is sent to that peer while it is live, oldest first, until it acknowledges it.
    """

    def __init__(
        self,
        connection: aiosqlite.Connection,
        replica: str,
        secret: bytes,
        tls: ssl.SSLContext,
        server_name: str,
        peers: Callable[[], Mapping[str, str]],
    ) -> None:
        """``server_name``: the name every peer's certificate must carry
        (:func:`peer_server_name`)."""
        self.connection = connection
        self.replica = replica
        self.secret = secret
        self.tls = tls
        self.server_name = server_name
        self.peers = peers
        # Per peer: why it last refused our forwards (logged once per peer and reason).
        self._refused: dict[str, str] = {}
        # Per peer: the id of the last fact it acknowledged.
        self.acknowledged: dict[str, int] = {}
        self._backoff: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
        self._sending: dict[str, asyncio.Task[None]] = {}
        # Peers whose sending task may have read before the latest facts were committed.
        self._behind: set[str] = set()
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """Facts were just committed."""
        self._wakeup.set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)
        connector = aiohttp.TCPConnector(ssl=self.tls)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            try:
                while True:
                    self._wakeup.clear()
                    self._start_sending(session)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(POLL_S):
                            await self._wakeup.wait()
            finally:
                for task in self._sending.values():
                    task.cancel()
                await asyncio.gather(*self._sending.values(), return_exceptions=True)

    def _start_sending(self, session: aiohttp.ClientSession) -> None:
        now = time.monotonic()
        for replica, address in self.peers().items():
            running = self._sending.get(replica)
            if running is not None and not running.done():
                self._behind.add(replica)
                continue
            if now < self._retry_at.get(replica, 0.0):
                continue
            task = asyncio.create_task(self._send(session, replica, address))
            self._sending[replica] = task
            task.add_done_callback(functools.partial(self._ended, replica))

    def _ended(self, replica: str, _: asyncio.Task[None]) -> None:
        if replica in self._behind:
            self._wakeup.set()

    async def _send(self, session: aiohttp.ClientSession, replica: str, address: str) -> None:
        """Send what ``replica`` has not acknowledged, until none is left or a send fails."""
        while True:
            self._behind.discard(replica)
            rows = await self._unsent(self.acknowledged.get(replica, 0))
            if not rows:
                return
            body = orjson.dumps({"origin": self.replica, "facts": rows})
            while len(body) > MAX_PEER_BODY_BYTES and len(rows) > 1:
                rows = rows[: len(rows) // 2]
                body = orjson.dumps({"origin": self.replica, "facts": rows})
            refusal = ""
            try:
                async with session.post(
                    peer_url(address),
                    data=body,
                    headers=signed_headers(self.secret, replica, body),
                    server_hostname=self.server_name,
                ) as response:
                    answer = await response.read()
                    if 400 <= response.status < 500:
                        # Not a network fault: the peer will refuse it again until a secret,
                        # clock or advertised address is put right.
                        refusal = f"{response.status} {answer[:200].decode(errors='replace')}"
                    elif response.status != 200:
                        raise aiohttp.ClientResponseError(
                            response.request_info, (), status=response.status
                        )
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                ATTRIBUTION_FORWARDS.labels(outcome="failed").inc(len(rows))
                self._retry_later(replica, address, f"facts not forwarded: {error}")
                return
            if refusal:
                ATTRIBUTION_FORWARDS.labels(outcome="refused").inc(len(rows))
                if self._refused.get(replica) != refusal:
                    self._refused[replica] = refusal
                    log.error(
                        "the peer refused our forwards (a different peer secret, a clock"
                        " far off, or an address another replica now has): %s",
                        refusal.strip(),
                        extra={"peer": replica, "address": address},
                    )
                self._retry_later(replica, address, "")
                return
            ATTRIBUTION_FORWARDS.labels(outcome="delivered").inc(len(rows))
            self.acknowledged[replica] = rows[-1][0]
            self._backoff.pop(replica, None)
            self._refused.pop(replica, None)

    def _retry_later(self, replica: str, address: str, warning: str) -> None:
        """Back off before the next send to ``replica``, logging ``warning`` if any."""
        backoff = min(RETRY_MAX_S, max(RETRY_MIN_S, 2 * self._backoff.get(replica, 0.0)))
        self._backoff[replica] = backoff
        self._retry_at[replica] = time.monotonic() + backoff
        if warning:
            log.warning(
                "%s; sent again in %.2f s",
                warning,
                backoff,
                extra={"peer": replica, "address": address},
            )

    async def _unsent(self, after: int) -> list[list[Any]]:
        rows = await self.connection.execute_fetchall(
            f"SELECT {_FACT_FIELDS} FROM attribution_facts WHERE id > ? AND origin IS NULL"
            " AND received_at >= ? ORDER BY id LIMIT ?",
            (after, time.time() - FORWARD_HORIZON_S, FACTS_PER_FORWARD),
        )
        return [list(row) for row in rows]
