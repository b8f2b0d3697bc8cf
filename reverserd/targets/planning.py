"""From journal entries to file changes for one target: pure functions, no I/O.

Identity never comes from a path (DESIGN invariant 3). A target knows the file it wrote for each
object (its ``files`` record, persisted with its cursor); for a file it did not write, identity
comes from the file's own ``apiVersion``, ``kind`` and ``metadata``. Everything else in the
folder (README.md, kustomization.yaml, other YAML) is never touched (invariant 5).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from reverserd.committer.committer import SEQ_TRAILER, TARGET_TRAILER
from reverserd.config.rules import CompiledRule
from reverserd.git import FileChange
from reverserd.journal import EventKind, JournalEvent, ObjectKey, StoredObject
from reverserd.kube.jsontext import UNDECODABLE
from reverserd.kube.resources import ResourceType
from reverserd.manifest.layout import (
    SENSITIVE_RESOURCES,
    commit_subject_path,
    is_excluded_object,
    object_path,
)
from reverserd.manifest.render import render
from reverserd.manifest.sanitize import sanitize

README_NAME = "README.md"
README = b"""# Mirrored by reverserd

Every file below this folder is written by reverserd from the live cluster: one commit per
change, deployable with `kubectl apply -R -f .`. Edits to mirrored files are overwritten by the
next change of their object; files reverserd did not write (like this README) are left alone.
"""

FileRecord = tuple[str, str]  # (path, content hash)
# Longest reason kept for a quarantined object (status messages are bounded).
QUARANTINE_REASON_CHARS = 300


def content_hash(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def selection_key(rtype_group: str, resource: str, rules: Sequence[CompiledRule]) -> str:
    """Names what a target mirrors of one type, including the scope its rules give it.

    A change of scope (another namespace, an operation added) yields a new key, so the target
    takes a fresh snapshot of that type instead of silently missing objects.
    """
    scopes = sorted(
        f"{rule.namespace or '*'}:{','.join(sorted(rule.operations))}" for rule in rules
    )
    return f"{rtype_group}/{resource}|{';'.join(scopes)}"


def split_selection(key: str) -> tuple[str, str]:
    group_resource = key.split("|", 1)[0]
    group, _, resource = group_resource.rpartition("/")
    return group, resource


def event_type(event: JournalEvent) -> ResourceType:
    kind = str((event.body or {}).get("kind", ""))
    return ResourceType(
        event.api_group, event.api_version, event.resource, kind, namespaced=bool(event.namespace)
    )


def selected(
    rules: Iterable[CompiledRule], rtype: ResourceType, namespace: str, operation: str
) -> bool:
    return any(rule.selects_event(rtype, namespace, operation) for rule in rules)


def is_sensitive(rtype: ResourceType) -> bool:
    return (rtype.group, rtype.resource) in SENSITIVE_RESOURCES


@dataclass
class FilePlan:
    """File changes of one commit, and the record updates that go with them once pushed."""

    changes: list[FileChange] = field(default_factory=list)
    records: list[tuple[ObjectKey, str | None, str]] = field(default_factory=list)
    quarantine: dict[ObjectKey, str] = field(default_factory=dict)
    """Objects that cannot be written, and why: quarantined, never a failed plan."""
    created: int = 0
    updated: int = 0
    deleted: int = 0

    def write(
        self,
        key: ObjectKey,
        path: str,
        content: bytes,
        known: FileRecord | None,
        exists: bool,
        record_hash: str | None = None,
    ) -> None:
        """Write ``content`` at ``path`` (moving the file if the object's path changed).

        ``record_hash`` is what the target records for the file; it defaults to the content's
        hash, and is the plaintext fingerprint for encrypted files.
        """
        if known is not None and known[0] != path:
            self.changes.append(FileChange(known[0], None))
        self.changes.append(FileChange(path, content))
        self.records.append((key, path, record_hash or content_hash(content)))
        if exists or known is not None:
            self.updated += 1
        else:
            self.created += 1

    def hold(self, key: ObjectKey, error: Exception) -> None:
        self.quarantine[key] = f"{type(error).__name__}: {error}"[:QUARANTINE_REASON_CHARS]

    def merge(self, other: FilePlan) -> None:
        self.changes += other.changes
        self.records += other.records
        self.quarantine.update(other.quarantine)
        self.created += other.created
        self.updated += other.updated
        self.deleted += other.deleted

    def remove(self, key: ObjectKey, path: str) -> None:
        self.changes.append(FileChange(path, None))
        self.records.append((key, None, ""))
        self.deleted += 1


def manifest_of(
    rtype: ResourceType, body: Mapping[str, Any], target_path: str
) -> tuple[str, bytes]:
    """The object's file path and content; raises for an object that cannot be written."""
    if UNDECODABLE in body:
        raise ValueError(str(body[UNDECODABLE]))
    metadata = body.get("metadata") or {}
    namespace = metadata.get("namespace") or None
    path = object_path(target_path, rtype, namespace, str(metadata["name"]), is_sensitive(rtype))
    return path, render(sanitize(dict(body)))


def commit_message(
    event: JournalEvent, rtype: ResourceType, target: str, attribution: Sequence[str] = ()
) -> str:
    """Subject and body of one event's commit; ``attribution`` holds its user/manager lines."""
    subject = (
        f"[{event.kind.value}] {commit_subject_path(rtype, event.namespace or None, event.name)}"
    )
    lines = [
        subject,
        "",
        f"uid: {event.uid or ''}",
        f"resourceVersion: {event.resource_version or ''}",
    ]
    if event.username:
        lines.append(f"user: {event.username}")
    lines += attribution
    lines += [f"{SEQ_TRAILER}: {event.seq}", f"{TARGET_TRAILER}{target}"]
    return "\n".join(lines) + "\n"


def reconcile_message(plan: FilePlan, objects: int, target: str) -> str:
    return (
        f"reconcile: sync {objects} resources\n\n"
        f"created: {plan.created}\nupdated: {plan.updated}\ndeleted: {plan.deleted}\n"
        f"{TARGET_TRAILER}{target}\n"
    )


def identity_of(content: bytes, kinds: Mapping[tuple[str, str], ResourceType]) -> ObjectKey | None:
    """The object a file describes, from its own content; None for anything else."""
    try:
        document = yaml.safe_load(content)
    except yaml.YAMLError:
        return None
    if not isinstance(document, dict):
        return None
    api_version, kind = document.get("apiVersion"), document.get("kind")
    metadata = document.get("metadata")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        return None
    group = api_version.rpartition("/")[0]
    rtype = kinds.get((group, kind))
    if rtype is None:
        return None
    namespace = str(metadata.get("namespace") or "") if rtype.namespaced else ""
    return ObjectKey(group, rtype.resource, namespace, metadata["name"])


def plan_event(
    event: JournalEvent,
    rtype: ResourceType,
    target_path: str,
    known: FileRecord | None,
    existing: bytes | None,
) -> FilePlan | None:
    """The change one event makes to the target's folder, or None when the file is unchanged.

    ``known`` is the target's record for the object; ``existing`` is what the object's file holds
    on the branch now (only needed for a DELETE without a record, to prove identity by content).
    """
    plan = FilePlan()
    if event.kind is EventKind.DELETE:
        if known is not None:
            plan.remove(event.key, known[0])
            return plan
        if existing is not None and event.body is not None:
            path, _ = manifest_of(rtype, event.body, target_path)
            plan.remove(event.key, path)
            return plan
        return None
    assert event.body is not None
    path, content = manifest_of(rtype, event.body, target_path)
    if known == (path, content_hash(content)):
        return None
    plan.write(event.key, path, content, known, exists=existing is not None)
    return plan


def plan_snapshot(
    objects: Sequence[StoredObject],
    rules: Sequence[CompiledRule],
    types: Mapping[tuple[str, str], ResourceType],
    selections: set[tuple[str, str]],
    target_path: str,
    files: Mapping[ObjectKey, FileRecord],
    branch_files: Mapping[str, bytes],
) -> tuple[FilePlan, int]:
    """One reconcile commit that makes the folder equal the journal's objects for ``selections``.

    ``branch_files`` is the folder's content on the branch. Returns the plan and how many objects
    it covers. Files are removed only with evidence: the object is absent from a complete seed of
    its type, and the file is either one this target recorded writing, or one whose own content
    names that absent object.
    """
    plan = FilePlan()
    present: set[ObjectKey] = set()
    wanted_paths: set[str] = set()
    count = 0
    for stored in objects:
        rtype = types.get((stored.key.api_group, stored.key.resource))
        if rtype is None:
            continue
        namespace = stored.key.namespace
        if not (
            selected(rules, rtype, namespace, "CREATE")
            or selected(rules, rtype, namespace, "UPDATE")
        ):
            continue
        if is_excluded_object(rtype, stored.body):
            continue
        present.add(stored.key)
        if is_sensitive(rtype):
            # Written (and counted) by the target's SecretWriter; present, so never removed here.
            if stored.key in files:
                wanted_paths.add(files[stored.key][0])
            continue
        count += 1
        try:
            path, content = manifest_of(rtype, stored.body, target_path)
        except Exception as error:
            plan.hold(stored.key, error)
            if stored.key in files:
                wanted_paths.add(files[stored.key][0])
            continue
        wanted_paths.add(path)
        known = files.get(stored.key)
        current = branch_files.get(path)
        if current == content and (known is None or known[0] == path):
            plan.records.append((stored.key, path, content_hash(content)))
            continue
        plan.write(stored.key, path, content, known, exists=current is not None)

    def removable(key: ObjectKey) -> bool:
        if key in present or (key.api_group, key.resource) not in selections:
            return False
        rtype = types.get((key.api_group, key.resource))
        return rtype is not None and selected(rules, rtype, key.namespace, "DELETE")

    recorded_paths = set()
    for key, (path, _) in sorted(files.items()):
        recorded_paths.add(path)
        if removable(key) and path in branch_files and path not in wanted_paths:
            plan.remove(key, path)
    kinds = {(rtype.group, rtype.kind): rtype for rtype in types.values()}
    for path, content in sorted(branch_files.items()):
        if path in wanted_paths or path in recorded_paths or not path.endswith(".yaml"):
            continue
        named = identity_of(content, kinds)
        if named is not None and removable(named):
            plan.remove(named, path)
    return plan, count
