"""The resolver: who made the change a commit is about.

For each journal event a consumer is about to commit, the resolver looks up the journaled facts
of the event's object and keeps those that describe exactly this event
(:mod:`reverserd.attribution.facts` says how each source is matched). One user among them is
the author; facts of two different users make the change ambiguous and it is attributed to
no one: never to someone who did not make it.

Grace window
    Audit events reach reverserd after the API server answered, often after the watch event
    (the audit backend sends in batches). With the audit source on, an event without a fact is
    held until a fact arrives or until ``journaled_at + grace``, whichever is first, then
    committed by the configured identity and marked ``user: unresolved``. A consumer holds its
    events in journal order, so nothing is reordered, and since every later event was journaled
    later, no event waits longer than the grace window after it was journaled, whatever object
    it belongs to. Admission facts are journaled before the webhook answers, so before the
    API server stores the change: without audit there is nothing to wait for, except in a
    sharded group, where the replica that received the fact forwards it after its answer
    (:mod:`reverserd.attribution.peers`): there a change an admission fact can prove waits
    for it the same way.

A fact that arrives after its event was given up on is counted as ``late``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite
import pygit2

from reverserd.attribution.facts import Fact
from reverserd.attribution.identity import DEFAULT_EMAIL_DOMAIN, signature_of
from reverserd.journal import EventKind, JournalEvent
from reverserd.journal.writer import is_secret
from reverserd.metrics import ATTRIBUTION_FACTS, ATTRIBUTIONS

log = logging.getLogger(__name__)

SOURCES = ("audit", "admission")
# Long enough for the API server's audit batch (the documented `--audit-webhook-batch-max-wait`
# is 1s) plus a loaded machine; short enough that a mirror is never far behind.
DEFAULT_GRACE_S = 5.0
UNRESOLVED = "unresolved"
# Events given up on that a late fact is compared with; older ones are simply not counted.
GIVEN_UP_REMEMBERED = 10_000
# Origins read ahead in one query: a consumer asks for every event in order, so one round trip
# serves a whole read batch of it instead of one per commit.
ORIGIN_READ_AHEAD = 500
# Origins kept for the consumers of other targets, which read the same events a little later.
ORIGINS_CACHED = 8 * ORIGIN_READ_AHEAD


@dataclass(frozen=True, slots=True)
class Attribution:
    author: pygit2.Signature | None
    lines: tuple[str, ...]
    user: str | None = None  # the one user the change is attributed to, when resolved


@dataclass(frozen=True, slots=True)
class _Origin:
    manager: str | None
    prior: str | None
    digest: str | None


_NO_ORIGIN = _Origin(None, None, None)


class Resolver:
    """Shared by every consumer of the daemon; facts come in through :meth:`recorded`."""

    def __init__(
        self,
        connection: aiosqlite.Connection,
        sources: Sequence[str] = (),
        grace_s: float = DEFAULT_GRACE_S,
        email_domain: str = DEFAULT_EMAIL_DOMAIN,
        forwarded: bool = False,
    ) -> None:
        """``forwarded``: facts may also come from the other replicas of a sharded group
        (:mod:`reverserd.attribution.peers`), after the change they describe."""
        self.connection = connection
        self.sources = frozenset(sources)
        self.forwarded = forwarded
        self.grace_s = grace_s
        self.email_domain = email_domain
        self._facts_arrived = asyncio.Condition()
        self._generation = 0
        self._given_up: OrderedDict[tuple[str, str, str, str, str], None] = OrderedDict()
        self._origins: OrderedDict[int, _Origin] = OrderedDict()

    async def recorded(self, facts: Sequence[Fact]) -> None:
        """Facts just journaled: wake waiting consumers, count the ones that came too late."""
        for fact in facts:
            ATTRIBUTION_FACTS.labels(source=fact.source).inc()
            key = _key(fact, fact.resource_version or "")
            if key in self._given_up:
                del self._given_up[key]
                ATTRIBUTIONS.labels(outcome="late").inc()
        async with self._facts_arrived:
            self._generation += 1
            self._facts_arrived.notify_all()

    async def attribute(self, event: JournalEvent, read_live: bool = False) -> Attribution:
        """Author and body lines for the commit of ``event``.

        ``read_live``: the commit holds the object as read from the API server when it was
        written (Secrets are never journaled with their values), not as of this event. When the
        journal already holds a later change of the object, that read may include it, and the
        change is attributed to no one rather than to this event's user.
        """
        origin = await self._origin(event.seq)
        lines = [f"manager: {origin.manager}"] if origin.manager else []
        if not self.sources:
            return Attribution(None, tuple(lines))
        if read_live and await self._changed_since(event):
            ATTRIBUTIONS.labels(outcome="unresolved").inc()
            return Attribution(None, (f"user: {UNRESOLVED}", *lines))
        deadline = event.journaled_at + self.grace_s
        while True:
            generation = self._generation
            users = await self._users(event, origin)
            if users or not self._may_arrive(event, origin) or time.time() >= deadline:
                break
            await self._wait(generation, deadline - time.time())
        if len(users) == 1:
            (user,) = users
            ATTRIBUTIONS.labels(outcome="resolved").inc()
            return Attribution(
                signature_of(user, self.email_domain), (f"user: {user}", *lines), user
            )
        if users:
            ATTRIBUTIONS.labels(outcome="ambiguous").inc()
            log.warning(
                "change attributed to no one: facts of different users match it",
                extra={"seq": event.seq, "users": sorted(users)},
            )
        else:
            ATTRIBUTIONS.labels(outcome="unresolved").inc()
            if event.resource_version:
                self._remember_given_up(event, event.resource_version)
        return Attribution(None, (f"user: {UNRESOLVED}", *lines))

    def _may_arrive(self, event: JournalEvent, origin: _Origin) -> bool:
        """Whether a fact for ``event`` may still arrive: an audit fact always may; an
        admission fact precedes its change, unless another replica received it and forwards
        it, and only for a change its digest can prove."""
        if "audit" in self.sources:
            return True
        provable = digest_can_prove(event) and origin.digest is not None
        return self.forwarded and provable and origin.prior is not None

    async def _wait(self, generation: int, patience_s: float) -> None:
        async with self._facts_arrived:
            try:
                async with asyncio.timeout(max(0.0, patience_s)):
                    await self._facts_arrived.wait_for(lambda: self._generation != generation)
            except TimeoutError:
                pass

    def _remember_given_up(self, event: JournalEvent, version: str) -> None:
        key = (event.api_group, event.resource, event.namespace, event.name, version)
        self._given_up[key] = None
        while len(self._given_up) > GIVEN_UP_REMEMBERED:
            self._given_up.popitem(last=False)

    async def _origin(self, seq: int) -> _Origin:
        """The origin of event ``seq``, reading ahead.

        An event and its origin are written in one transaction and transactions commit in seq
        order, so once a row for seq N is visible, a seq below N without a row has none.
        """
        cached = self._origins.get(seq)
        if cached is not None:
            return cached
        rows = await self.connection.execute_fetchall(
            "SELECT seq, manager, prior_resource_version, digest FROM event_origins"
            " WHERE seq >= ? AND seq < ? ORDER BY seq",
            (seq, seq + ORIGIN_READ_AHEAD),
        )
        found = {row[0]: _Origin(row[1], row[2], row[3]) for row in rows}
        for number in range(seq, max(found, default=seq) + 1):
            self._origins[number] = found.get(number, _NO_ORIGIN)
        while len(self._origins) > ORIGINS_CACHED:
            self._origins.popitem(last=False)
        return self._origins.get(seq, _NO_ORIGIN)

    async def _changed_since(self, event: JournalEvent) -> bool:
        """Whether the journal holds a change of the event's object after it.

        The object's ``objects`` row points at its newest CREATE or UPDATE, and a DELETE removes
        it: after any later change the row points elsewhere or is gone. A row also goes without
        an event when its stream is released, which reads as changed: the error is towards
        attributing the content to no one, never to the wrong user."""
        rows = await self.connection.execute_fetchall(
            "SELECT seq FROM objects WHERE api_group = ? AND resource = ? AND namespace = ?"
            " AND name = ?",
            (event.api_group, event.resource, event.namespace, event.name),
        )
        return [row[0] for row in rows] != [event.seq]

    async def _users(self, event: JournalEvent, origin: _Origin) -> set[str]:
        rows = await self.connection.execute_fetchall(
            "SELECT source, operation, uid, resource_version, prior_resource_version, digest,"
            " username FROM attribution_facts WHERE api_group = ? AND resource = ?"
            " AND namespace = ? AND name = ?",
            (event.api_group, event.resource, event.namespace, event.name),
        )
        users: set[str] = set()
        for source, operation, uid, version, prior, digest, username in rows:
            if source not in self.sources:
                continue
            if source == "audit" and _audit_matches(event, operation, uid, version):
                users.add(username)
            if source == "admission" and _admission_matches(
                event, origin, operation, uid, prior, digest
            ):
                users.add(username)
        return users


def _audit_matches(
    event: JournalEvent, operation: str, uid: str | None, version: str | None
) -> bool:
    if uid is None or uid != event.uid:
        return False
    if event.kind is EventKind.DELETE:
        # An object is deleted once: its uid identifies the deletion.
        return operation == "DELETE"
    return operation != "DELETE" and version is not None and version == event.resource_version


def digest_can_prove(event: JournalEvent) -> bool:
    """Whether a digest of the stored object can prove who made ``event``: decided by the
    journaled event, never by what a fact claims. A deletion stores nothing to compare with,
    and a Secret is never digested (a hash of its values would be an oracle for guessing them).
    """
    return event.kind is not EventKind.DELETE and not is_secret(event.api_group, event.resource)


def _admission_matches(
    event: JournalEvent,
    origin: _Origin,
    operation: str,
    uid: str | None,
    prior: str | None,
    digest: str | None,
) -> bool:
    """Admission is unauthenticated where the platform cannot present a client certificate,
    and a review may describe a request that is later rejected: only the digest of exactly the
    stored object proves anything, so a change no digest can prove is never matched."""
    if not digest_can_prove(event) or origin.digest is None or digest != origin.digest:
        return False
    if origin.prior is None or uid != event.uid or prior != origin.prior:
        return False
    return operation == event.kind.value


def _key(fact: Fact, version: str) -> tuple[str, str, str, str, str]:
    return fact.api_group, fact.resource, fact.namespace, fact.name, version
