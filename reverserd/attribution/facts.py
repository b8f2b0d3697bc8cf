"""Attribution facts: who asked the API server for which change, as a webhook reported it.

A fact is only ever used for the watch event it describes exactly, and only when it proves that
its request produced that event; the fields that make the proof differ by source.

Audit (``audit.k8s.io/v1`` ``EventList`` from the audit webhook backend)
    Only events of stage ``ResponseComplete`` with a 2xx response are facts: a request the API
    server rejected never is. Correlation is by the **resourceVersion the request produced**,
    which only the response object carries, i.e. the ``RequestResponse`` audit level. At
    ``Metadata`` level ``objectRef.resourceVersion`` is the version the *client sent* (empty for
    creates, patches and server-side apply, the bulk of real changes), so those events cannot be
    matched exactly and are not facts. A request that found its content already in place (a
    no-op) is answered 200 with the object's current resourceVersion, made by someone else: a
    response proves its request wrote that version only when a ``managedFields`` entry of the
    response changed at or after the second the request was received (the API server stamps
    the entry of the writer whose request changed fields; a no-op changes none). A DELETE is a
    fact only when the response is a ``Status`` naming the removed object's uid: the object is
    gone, which happens once; a response object (graceful deletion, finalizers) may answer a
    repeated delete too. Every audit fact names the object's uid. Secrets are logged at
    ``Metadata`` level by the documented policy, so audit attributes no Secret change.

Admission (``admission.k8s.io/v1`` ``AdmissionReview`` from the validating webhook)
    Validating admission runs before the object is stored, so a request it saw may still fail
    (another webhook denies it, a quota, a conflict), and nothing in the review tells which. A
    fact therefore carries the uid the object has (assigned before admission, so a rejected
    create's uid never appears in a watch), the resourceVersion it changes (``''`` for a
    create) and a digest of the object it would store, managedFields and their times included:
    only the watch event of exactly that object can match it. A review without such a digest (a
    DELETE, a Secret, a subresource write such as ``scale``, a review without ``object``) could
    match any change with the same predecessor, including one that another user made after this
    request was denied, so it is no fact at all. ``dryRun`` requests are never facts.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from reverserd.journal.origin import digest, printable
from reverserd.journal.writer import is_secret

# Requests of these verbs change objects; everything else is not a fact.
AUDIT_VERBS = {"create": "CREATE", "update": "UPDATE", "patch": "UPDATE", "delete": "DELETE"}
# Admission operations whose review holds the object that will be stored, to be digested.
DIGESTED_OPERATIONS = ("CREATE", "UPDATE")
# Subresources whose writes never change a mirrored file.
IGNORED_SUBRESOURCES = ("status",)
# Bounds on what a webhook may make reverserd store per fact: the Kubernetes limits of each
# field, so a real request always fits and a longer field can only be a forgery (the request
# is then no fact, rather than a truncated one that could name the wrong object or user).
# Object names and API groups are DNS subdomains.
SUBDOMAIN_CHARS = 253
# Namespaces and resource plurals are DNS labels.
LABEL_CHARS = 63
# uids are UUIDs (36 characters); request uids too. Some room for other forms, no more.
UID_CHARS = 128
# etcd revisions are 64-bit integers (at most 20 digits); room for other storage backends.
RESOURCE_VERSION_CHARS = 64
# Kubernetes bounds neither; these hold every name an authenticator produces in practice.
USERNAME_CHARS = 256
GROUP_CHARS = 256
# Groups are kept for inspection only (attribution uses the user name): the first few suffice.
GROUPS_KEPT = 8
# RFC 3339 in UTC as the API server writes it; the first SECOND_CHARS characters are the second.
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
SECOND_CHARS = 19


@dataclass(frozen=True, slots=True)
class Fact:
    source: str
    operation: str
    api_group: str
    resource: str
    namespace: str
    name: str
    uid: str | None
    resource_version: str | None
    prior_resource_version: str | None
    digest: str | None
    username: str
    groups: tuple[str, ...]
    request_uid: str | None
    received_at: float
    # A fact another replica received and forwarded (:mod:`reverserd.attribution.peers`): that
    # replica's identity and the fact's id in its journal; None for a fact received here.
    origin: str | None = None
    origin_id: int | None = None

    def row(self) -> tuple[Any, ...]:
        return (
            self.source,
            self.operation,
            self.api_group,
            self.resource,
            self.namespace,
            self.name,
            self.uid,
            self.resource_version,
            self.prior_resource_version,
            self.digest,
            self.username,
            json.dumps(list(self.groups)),
            self.request_uid,
            self.received_at,
            self.origin,
            self.origin_id,
        )

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Fact:
        """The fact :meth:`row` was made from."""
        values = list(row)
        values[11] = tuple(json.loads(values[11]))
        return cls(*values)

    def within_limits(self) -> bool:
        """Whether every field fits the Kubernetes limit for it."""
        bounded = (
            (self.api_group, SUBDOMAIN_CHARS),
            (self.resource, LABEL_CHARS),
            (self.namespace, LABEL_CHARS),
            (self.name, SUBDOMAIN_CHARS),
            (self.uid, UID_CHARS),
            (self.resource_version, RESOURCE_VERSION_CHARS),
            (self.prior_resource_version, RESOURCE_VERSION_CHARS),
            (self.username, USERNAME_CHARS),
            (self.request_uid, UID_CHARS),
            *((group, GROUP_CHARS) for group in self.groups),
        )
        return len(self.groups) <= GROUPS_KEPT and all(
            value is None or (isinstance(value, str) and len(value) <= limit)
            for value, limit in bounded
        )


def _bounded(fact: Fact) -> Fact | None:
    return fact if fact.within_limits() else None


def _user(info: Any) -> tuple[str, tuple[str, ...]] | None:
    """User name and groups of a ``userInfo``; None when it is malformed."""
    if not isinstance(info, dict) or not isinstance(info.get("username"), str):
        return None
    groups = info.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        return None
    return printable(info["username"]), tuple(printable(g) for g in groups[:GROUPS_KEPT])


def _optional_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def audit_facts(payload: Any, now: float | None = None) -> Iterator[Fact]:
    """Facts in an audit ``EventList``; anything that is not exactly matchable is skipped."""
    received = time.time() if now is None else now
    items = payload.get("items") if isinstance(payload, dict) else None
    for event in items if isinstance(items, list) else []:
        fact = _audit_fact(event, received)
        if fact is not None:
            yield fact


def _audit_fact(event: Any, received: float) -> Fact | None:
    if not isinstance(event, dict) or event.get("stage") != "ResponseComplete":
        return None
    operation = AUDIT_VERBS.get(str(event.get("verb")))
    status = event.get("responseStatus")
    code = status.get("code") if isinstance(status, dict) else None
    ref = event.get("objectRef")
    user = _user(event.get("user"))
    if operation is None or not isinstance(code, int) or not 200 <= code < 300:
        return None
    if not isinstance(ref, dict) or user is None:
        return None
    if ref.get("subresource") in IGNORED_SUBRESOURCES:
        return None
    response = event.get("responseObject")
    if not isinstance(response, dict):
        return None
    metadata = response.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    version: str | None = None
    if operation == "DELETE":
        # Only a Status says the object is gone; its details carry the removed object's uid.
        details = response.get("details")
        if response.get("kind") != "Status" or not isinstance(details, dict):
            return None
        uid = details.get("uid")
        name = details.get("name") or ref.get("name")
    else:
        uid = metadata.get("uid")
        name = metadata.get("name")
        version = metadata.get("resourceVersion")
        if not isinstance(version, str) or not version:
            return None
        if not _written_by_this_request(metadata, event.get("requestReceivedTimestamp")):
            return None
    if not isinstance(uid, str) or not uid or not isinstance(name, str) or not name:
        return None
    return _bounded(
        Fact(
            source="audit",
            operation=operation,
            api_group=str(ref.get("apiGroup") or ""),
            resource=str(ref.get("resource") or ""),
            namespace=str(metadata.get("namespace") or ref.get("namespace") or ""),
            name=name,
            uid=uid,
            resource_version=version,
            prior_resource_version=None,
            digest=None,
            username=user[0],
            groups=user[1],
            request_uid=_optional_text(event.get("auditID")),
            received_at=received,
        )
    )


def _written_by_this_request(metadata: dict[str, Any], request_received: Any) -> bool:
    """Whether a field of the response object changed no earlier than the second the request
    was received: a no-op answers with the object as an earlier request left it."""
    if not isinstance(request_received, str) or not _TIMESTAMP.match(request_received):
        return False
    entries = metadata.get("managedFields")
    times = [
        entry["time"]
        for entry in (entries if isinstance(entries, list) else [])
        if isinstance(entry, dict)
        and isinstance(entry.get("time"), str)
        and _TIMESTAMP.match(entry["time"])
    ]
    # Both are RFC 3339 in UTC; their first 19 characters are the second, which sorts as text.
    return bool(times) and max(t[:SECOND_CHARS] for t in times) >= request_received[:SECOND_CHARS]


def admission_fact(review: Any, now: float | None = None) -> Fact | None:
    """The fact in one ``AdmissionReview`` request, or None when it cannot prove its change."""
    request = review.get("request") if isinstance(review, dict) else None
    if not isinstance(request, dict) or request.get("dryRun"):
        return None
    operation = request.get("operation")
    user = _user(request.get("userInfo"))
    resource = request.get("resource")
    if operation not in DIGESTED_OPERATIONS or user is None or not isinstance(resource, dict):
        return None
    group = str(resource.get("group") or "")
    plural = str(resource.get("resource") or "")
    new, old = request.get("object"), request.get("oldObject")
    # The digest only describes the object itself: not a subresource's body (a Scale), and
    # never a Secret (a hash of its values would be an oracle for guessing them).
    if request.get("subResource") or not isinstance(new, dict) or is_secret(group, plural):
        return None
    metadata = new.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    uid = metadata.get("uid")
    name = request.get("name") or metadata.get("name")
    if not isinstance(uid, str) or not uid or not isinstance(name, str) or not name:
        return None
    prior: Any = ""
    if operation != "CREATE":
        old_metadata = old.get("metadata") if isinstance(old, dict) else None
        prior = old_metadata.get("resourceVersion") if isinstance(old_metadata, dict) else None
        if not isinstance(prior, str) or not prior:
            return None
    return _bounded(
        Fact(
            source="admission",
            operation=operation,
            api_group=group,
            resource=plural,
            namespace=str(request.get("namespace") or ""),
            name=name,
            uid=uid,
            resource_version=None,
            prior_resource_version=prior,
            digest=digest(new),
            username=user[0],
            groups=user[1],
            request_uid=_optional_text(request.get("uid")),
            received_at=time.time() if now is None else now,
        )
    )
