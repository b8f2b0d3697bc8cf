"""Attribution facts: who asked the API server for which change, as a webhook reported it.

A fact is only ever used for the watch event it describes exactly; the fields that make the
match exact differ by source.

Audit (``audit.k8s.io/v1`` ``EventList`` from the audit webhook backend)
    Only events of stage ``ResponseComplete`` with a 2xx response are facts: a request the API
    server rejected never is. Correlation is by the **resourceVersion the request produced**,
    which only the response object carries, i.e. the ``RequestResponse`` audit level. At
    ``Metadata`` level ``objectRef.resourceVersion`` is the version the *client sent* (empty for
    creates, patches and server-side apply, the bulk of real changes), so those events cannot be
    matched exactly and are not facts. A DELETE whose response is a ``Status`` is matched by the
    object's uid (an object is deleted once). Secrets are logged at ``Metadata`` level by the
    documented policy, so audit attributes no Secret change.

Admission (``admission.k8s.io/v1`` ``AdmissionReview`` from the validating webhook)
    Validating admission runs before the object is stored, so a request it saw may still fail
    (another webhook denies it, a quota, a conflict). A fact therefore carries the uid the
    object has (assigned before admission, so a rejected create's uid never appears in a watch),
    the resourceVersion it changes (``''`` for a create) and a digest of the object it would
    store, managedFields and their times included. Only a watch event with the same uid, the
    same predecessor and (except DELETE) the same digest matches. ``dryRun`` requests are never
    facts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from reverserd.attribution.origin import digest, printable

# Requests of these verbs change objects; everything else is not a fact.
AUDIT_VERBS = {"create": "CREATE", "update": "UPDATE", "patch": "UPDATE", "delete": "DELETE"}
ADMISSION_OPERATIONS = ("CREATE", "UPDATE", "DELETE")
# Subresources whose writes never change a mirrored file.
IGNORED_SUBRESOURCES = ("status",)
# Bounds on what a webhook may make reverserd store per fact.
USERNAME_CHARS = 256
GROUPS_KEPT = 32


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
        )

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Fact:
        """The fact :meth:`row` was made from."""
        values = list(row)
        values[11] = tuple(json.loads(values[11]))
        return cls(*values)


def _user(info: Any) -> tuple[str, tuple[str, ...]] | None:
    if not isinstance(info, dict) or not isinstance(info.get("username"), str):
        return None
    groups = info.get("groups") or []
    kept = tuple(printable(str(g))[:USERNAME_CHARS] for g in groups[:GROUPS_KEPT])
    return printable(info["username"])[:USERNAME_CHARS], kept


def audit_facts(payload: Any, now: float | None = None) -> Iterator[Fact]:
    """Facts in an audit ``EventList``; anything that is not exactly matchable is skipped."""
    received = time.time() if now is None else now
    items = payload.get("items") if isinstance(payload, dict) else None
    for event in items or []:
        if not isinstance(event, dict) or event.get("stage") != "ResponseComplete":
            continue
        operation = AUDIT_VERBS.get(str(event.get("verb")))
        code = (event.get("responseStatus") or {}).get("code")
        ref = event.get("objectRef")
        user = _user(event.get("user"))
        if operation is None or not isinstance(code, int) or not 200 <= code < 300:
            continue
        if not isinstance(ref, dict) or user is None:
            continue
        if ref.get("subresource") in IGNORED_SUBRESOURCES:
            continue
        response = event.get("responseObject")
        if not isinstance(response, dict):
            response = {}
        metadata = response.get("metadata") or {}
        details = response.get("details") or {}
        name = metadata.get("name") or ref.get("name")
        uid = metadata.get("uid") or details.get("uid") or ref.get("uid") or None
        version = metadata.get("resourceVersion") or None
        if not isinstance(name, str) or not name:
            continue
        if version is None and not (operation == "DELETE" and uid):
            continue
        yield Fact(
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
            request_uid=event.get("auditID"),
            received_at=received,
        )


def admission_fact(review: Any, now: float | None = None) -> Fact | None:
    """The fact in one ``AdmissionReview`` request, or None when it cannot be matched exactly."""
    request = review.get("request") if isinstance(review, dict) else None
    if not isinstance(request, dict) or request.get("dryRun"):
        return None
    operation = request.get("operation")
    user = _user(request.get("userInfo"))
    resource = request.get("resource") or {}
    if operation not in ADMISSION_OPERATIONS or user is None:
        return None
    if request.get("subResource") in IGNORED_SUBRESOURCES:
        return None
    new, old = request.get("object"), request.get("oldObject")
    present = new if isinstance(new, dict) else old if isinstance(old, dict) else None
    if present is None:
        return None
    metadata = present.get("metadata") or {}
    uid = metadata.get("uid")
    name = request.get("name") or metadata.get("name")
    if not isinstance(uid, str) or not uid or not isinstance(name, str) or not name:
        return None
    prior: str | None = ""
    if operation != "CREATE":
        prior = ((old if isinstance(old, dict) else {}).get("metadata") or {}).get(
            "resourceVersion"
        )
        if not isinstance(prior, str) or not prior:
            return None
    group = str(resource.get("group") or "")
    plural = str(resource.get("resource") or "")
    subresource = request.get("subResource")
    # The digest only describes the object itself: not a subresource's body (a Scale), not a
    # DELETE (the stored object gains a deletionTimestamp or only a new resourceVersion), and
    # never a Secret (a hash of its values would be an oracle for guessing them).
    hashed = (
        operation != "DELETE"
        and not subresource
        and isinstance(new, dict)
        and not (group == "" and plural == "secrets")
    )
    return Fact(
        source="admission",
        operation=operation,
        api_group=group,
        resource=plural,
        namespace=str(request.get("namespace") or ""),
        name=name,
        uid=uid,
        resource_version=None,
        prior_resource_version=prior,
        digest=digest(new) if hashed and isinstance(new, dict) else None,
        username=user[0],
        groups=user[1],
        request_uid=request.get("uid"),
        received_at=time.time() if now is None else now,
    )
