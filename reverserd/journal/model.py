"""Plain records that flow into and out of the journal.

Objects travel as plain dicts parsed from the API server's JSON, never as client model classes:
those are several times slower to build and the journal stores JSON anyway.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from reverserd.kube.resources import ResourceType

ALL_NAMESPACES = "*"


class EventKind(enum.StrEnum):
    CREATE = "CREATE"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    SEED_BEGIN = "SEED_BEGIN"
    SEED_END = "SEED_END"


class SeedState(enum.StrEnum):
    PENDING = "pending"
    SEEDING = "seeding"
    COMPLETE = "complete"


@dataclass(frozen=True, slots=True, order=True)
class ObjectKey:
    """Identity of an object across versions: the preferred version may change, this does not."""

    api_group: str
    resource: str
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class TargetPlace:
    """Where a target writes: a target's cursor and records are about this place only."""

    remote: str
    """The repository and branch, as the committer's key (normal URL form, no credentials)."""
    provider: str
    """``<namespace>/<name>`` of the GitProvider it writes through."""
    path: str
    """Its folder on the branch (empty: the branch's root)."""


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One watch: a resource type at its preferred version, in one namespace or all of them."""

    rtype: ResourceType
    namespace: str = ALL_NAMESPACES
    key: str = field(init=False, compare=False, repr=False)
    """e.g. ``apps/v1/deployments@team-a``: made once, so every event and index entry of the
    stream shares one string."""

    def __post_init__(self) -> None:
        key = f"{self.rtype.api_version}/{self.rtype.resource}@{self.namespace}"
        object.__setattr__(self, "key", key)

    @property
    def api_group(self) -> str:
        return self.rtype.group

    @property
    def api_version(self) -> str:
        return self.rtype.version

    @property
    def resource(self) -> str:
        return self.rtype.resource

    def covers(self, namespace: str) -> bool:
        return self.namespace in (ALL_NAMESPACES, namespace)


@dataclass(frozen=True, slots=True)
class JournalEvent:
    """One row of the ``events`` table."""

    seq: int
    stream: str
    kind: EventKind
    api_group: str
    api_version: str
    resource: str
    namespace: str
    name: str
    uid: str | None
    resource_version: str | None
    username: str | None
    journaled_at: float
    body: dict[str, Any] | None

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(self.api_group, self.resource, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One row of the ``objects`` table joined with the body of the event it points at.

    The body stays the journal's JSON text until :attr:`body` decodes it (again on every use):
    a snapshot holds every object of its types while it is planned, and decoded, a body takes
    several times the memory of its text.
    """

    key: ObjectKey
    api_version: str
    uid: str
    resource_version: str
    seq: int
    body_json: str

    @property
    def body(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.body_json)
        return decoded
