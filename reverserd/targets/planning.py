"""From journal entries to file changes for one target: planning only, no I/O.

Identity never comes from a path (DESIGN invariant 3). A target knows the file it wrote for each
object (its ``files`` record, persisted with its cursor); for a file it did not write, identity
comes from the file's own ``apiVersion``, ``kind`` and ``metadata``, and only when they name one
object unambiguously. Everything else in the folder (README.md, kustomization.yaml, other YAML,
manifests that name no object) is never touched (invariant 5).

A snapshot deletes only with evidence (invariant 4): see :class:`SnapshotPlanner` for the exact
rule. It also adopts a folder someone else wrote: a file that already says what reverserd would
write is kept byte for byte, so switching a folder over rewrites only what really differs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from reverserd.attribution.resolver import UNRESOLVED
from reverserd.committer.trailers import trailer_lines
from reverserd.config.rules import CompiledRule, Namespaces
from reverserd.config.templates import MessageTemplate
from reverserd.git import FileChange
from reverserd.journal import EventKind, JournalEvent, ObjectKey, StoredObject
from reverserd.kube.jsontext import UNDECODABLE
from reverserd.kube.resources import ResourceType
from reverserd.manifest.dropped import FieldPath, drop_fields, pointer_text
from reverserd.manifest.layout import (
    MANIFEST_SUFFIX,
    SENSITIVE_RESOURCES,
    commit_subject_path,
    is_excluded_object,
    object_path,
    printable,
)
from reverserd.manifest.render import reads_as_string, render
from reverserd.manifest.sanitize import sanitize

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

README_NAME = "README.md"
README = b"""# Mirrored by reverserd

Every file below this folder is written by reverserd from the live cluster: one commit per
change, deployable with `kubectl apply -R -f .`. Edits to mirrored files are overwritten by the
next change of their object; files reverserd did not write (like this README) are left alone.
"""

_STR_TAG = "tag:yaml.org,2002:str"

# (path, hash of what reverserd renders for the object there). For a file it rendered that is
# the hash of the file's bytes; for an adopted file, the hash of reverserd's own rendering of the
# same object (so a later event changes it only when the object really changes); for a Secret,
# the keyed fingerprint of its plaintext.
FileRecord = tuple[str, str]
# Hex characters naming a dropFields list in a selection key: no two lists share one by chance.
DROPPED_HASH_CHARS = 16
# Longest reason kept for a quarantined object (status messages are bounded).
QUARANTINE_REASON_CHARS = 300


def content_hash(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def selection_key(
    rtype_group: str,
    resource: str,
    rules: Sequence[CompiledRule],
    namespaces: Namespaces,
    dropped: Sequence[FieldPath] = (),
    kustomization: bool = False,
) -> str:
    """Names what a target mirrors of one type, including the scope its rules give it and the
    fields it drops.

    A change of scope (another namespace, an operation added, a selector changed, namespaces
    that start or stop matching a ``namespaceSelector``) yields a new key, so the target takes a
    fresh snapshot of that type instead of silently missing objects. So does a change of
    ``dropFields``: the snapshot rewrites the files whose rendering it changes, in one commit,
    and keeps every other file byte for byte. And turning ``kustomization`` on: the snapshot
    lists every file in its folder's ``kustomization.yaml``.
    """
    scopes = sorted(rule.scope_text(namespaces) for rule in rules)
    key = f"{rtype_group}/{resource}|{';'.join(scopes)}"
    if dropped:
        text = ",".join(pointer_text(path) for path in dropped)
        key += f"|drop={hashlib.sha256(text.encode()).hexdigest()[:DROPPED_HASH_CHARS]}"
    if kustomization:
        key += "|kustomization"
    return key


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
    rules: Iterable[CompiledRule],
    rtype: ResourceType,
    namespace: str,
    operation: str,
    body: Mapping[str, Any] | None,
    namespaces: Namespaces,
) -> bool:
    """Whether a rule takes this operation on the object ``body`` (its last known state)."""
    return any(
        rule.selects_event(rtype, namespace, operation) and rule.selects_object(body, namespaces)
        for rule in rules
    )


def is_sensitive(rtype: ResourceType) -> bool:
    return (rtype.group, rtype.resource) in SENSITIVE_RESOURCES


@dataclass
class FilePlan:
    """File changes of one commit, and the record updates that go with them once pushed."""

    changes: list[FileChange] = field(default_factory=list)
    records: list[tuple[ObjectKey, str | None, str]] = field(default_factory=list)
    quarantine: dict[ObjectKey, str] = field(default_factory=dict)
    """Objects that cannot be written, and why: quarantined, never a failed plan."""
    adopted: int = 0
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

    def keep(self, key: ObjectKey, path: str, record_hash: str, known: FileRecord | None) -> None:
        """Leave the file at ``path`` as it is and record it as the object's file.

        It is adopted when the target had no such record: a file someone else wrote (an
        earlier mirror, a person) that already says what reverserd would write.
        """
        self.records.append((key, path, record_hash))
        if known != (path, record_hash):
            self.adopted += 1

    def hold(self, key: ObjectKey, error: Exception) -> None:
        self.quarantine[key] = f"{type(error).__name__}: {error}"[:QUARANTINE_REASON_CHARS]

    def merge(self, other: FilePlan) -> None:
        self.changes += other.changes
        self.records += other.records
        self.quarantine.update(other.quarantine)
        self.adopted += other.adopted
        self.created += other.created
        self.updated += other.updated
        self.deleted += other.deleted

    def remove(self, key: ObjectKey, path: str) -> None:
        self.changes.append(FileChange(path, None))
        self.records.append((key, None, ""))
        self.deleted += 1


def manifest_path(rtype: ResourceType, body: Mapping[str, Any], target_path: str) -> str:
    """The object's file path; raises for an object whose file cannot be named."""
    if UNDECODABLE in body:
        raise ValueError(str(body[UNDECODABLE]))
    metadata = body.get("metadata") or {}
    namespace = metadata.get("namespace") or None
    return object_path(target_path, rtype, namespace, str(metadata["name"]), is_sensitive(rtype))


def manifest_of(
    rtype: ResourceType,
    body: Mapping[str, Any],
    target_path: str,
    dropped: Sequence[FieldPath],
) -> tuple[str, bytes]:
    """The object's file path and content without the target's ``dropped`` fields; raises for
    an object that cannot be written."""
    path = manifest_path(rtype, body, target_path)
    return path, render(drop_fields(sanitize(dict(body)), dropped))


def commit_message(
    event: JournalEvent,
    rtype: ResourceType,
    target: str,
    seq: int,
    attribution: Sequence[str] = (),
    template: MessageTemplate | None = None,
) -> str:
    """Subject and body of one event's commit, handed over at journal position ``seq`` (see
    :mod:`reverserd.committer.trailers`); ``attribution`` holds its user/manager lines.
    ``template`` (``spec.commit.message.eventTemplate``) makes the subject; the body stays."""
    if template is None:
        path = commit_subject_path(rtype, event.namespace or None, event.name)
        subject = f"[{event.kind.value}] {path}"
    else:
        subject = template.render(
            {
                "Operation": event.kind.value,
                "Group": printable(rtype.group),
                "Version": printable(rtype.version),
                "Resource": printable(rtype.resource),
                "Namespace": printable(event.namespace),
                "Name": printable(event.name),
                "APIVersion": printable(rtype.api_version),
                "Username": printable(_user_of(event, attribution)),
                "GitTarget": printable(target),
            }
        )
    lines = [
        subject,
        "",
        f"uid: {printable(event.uid or '')}",
        f"resourceVersion: {printable(event.resource_version or '')}",
    ]
    if event.username:
        lines.append(f"user: {printable(event.username)}")
    lines += attribution
    lines += trailer_lines(target, seq)
    return "\n".join(lines) + "\n"


def _user_of(event: JournalEvent, attribution: Sequence[str]) -> str:
    """The user a template's ``Username`` names: the attributed one, else the event's; empty
    when nobody is known (as gitops-reverser leaves it)."""
    for line in attribution:
        if line.startswith(USER_LINE) and line != f"{USER_LINE}{UNRESOLVED}":
            return line[len(USER_LINE) :]
    return event.username or ""


def reconcile_message(
    plan: FilePlan, objects: int, target: str, template: MessageTemplate | None = None
) -> str:
    """The reconcile commit's message; ``template`` (``reconcileTemplate``) makes the subject."""
    if template is None:
        subject = f"reconcile: sync {objects} resources"
    else:
        subject = template.render({"Count": str(objects), "GitTarget": printable(target)})
    return (
        f"{subject}\n\n"
        f"adopted: {plan.adopted}\n"
        f"created: {plan.created}\nupdated: {plan.updated}\ndeleted: {plan.deleted}\n"
        + "\n".join(trailer_lines(target, None))
        + "\n"
    )


USER_LINE = "user: "

KindIndex = Mapping[tuple[str, str], ResourceType]


def kind_index(types: Iterable[ResourceType]) -> dict[tuple[str, str], ResourceType]:
    """(group, kind) -> type, for reading identity from files; a kind two types share is left
    out, since a file of that kind could be either."""
    index: dict[tuple[str, str], ResourceType] = {}
    shared: set[tuple[str, str]] = set()
    for rtype in types:
        key = (rtype.group, rtype.kind)
        if key in index and index[key].resource != rtype.resource:
            shared.add(key)
        index[key] = rtype
    for key in shared:
        del index[key]
    return index


def identity_of(content: bytes, kinds: KindIndex) -> ObjectKey | None:
    """The one object a file's own content names, or None when it names none unambiguously.

    Naming an object takes a parseable single YAML document with ``apiVersion``, ``kind`` and a
    non-empty ``metadata.name`` of a known kind, and ``metadata.namespace`` exactly when the kind
    is namespaced: a namespaced manifest without a namespace is applied to whatever namespace
    the reader is in, so it names no object in particular.
    """
    document = read_manifest(content)
    if document is None:
        return None
    api_version, kind = document.get("apiVersion"), document.get("kind")
    metadata = document.get("metadata")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return None
    if not isinstance(metadata, dict):
        return None
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(name, str) or not name:
        return None
    rtype = kinds.get((api_version.rpartition("/")[0], kind))
    if rtype is None:
        return None
    if rtype.namespaced:
        if not isinstance(namespace, str) or not namespace:
            return None
        return ObjectKey(rtype.group, rtype.resource, namespace, name)
    if namespace not in (None, ""):
        return None
    return ObjectKey(rtype.group, rtype.resource, "", name)


def read_manifest(content: bytes) -> dict[str, Any] | None:
    """The mapping a file holds, as Kubernetes would read it; None for anything else.

    None also when the file is not one document, or when an unquoted value could read as
    another type to some YAML reader (``0o17``, ``1e3``): PyYAML reads those as strings, go-yaml
    v2 as numbers, so no single reading of the file can be trusted.
    """
    loader = _Loader(content)
    try:
        node = loader.get_single_node()
        if not isinstance(node, yaml.MappingNode) or _has_ambiguous_plain(node):
            return None
        document = loader.construct_document(node)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):
        # ValueError/TypeError: a malformed date or an unhashable key; RecursionError: nesting
        # deeper than any manifest.
        return None
    finally:
        loader.dispose()
    return document if isinstance(document, dict) else None


def holds_object(existing: bytes, rendered: bytes) -> bool:
    """Whether the file ``existing`` says what reverserd's ``rendered`` file says.

    Both are read as YAML and compared value by value, with types: ``true`` is not ``1``, and
    ``"yes"`` (a string) is not ``yes`` (a boolean to Kubernetes). Quoting, key order, indentation
    and comments may differ.
    """
    if existing == rendered:
        return True
    found = read_manifest(existing)
    return found is not None and _same(found, read_manifest(rendered))


def _same(left: Any, right: Any) -> bool:
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(_same(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(_same, left, right))
    return bool(left == right)


def _has_ambiguous_plain(root: yaml.Node) -> bool:
    pending, seen = [root], set()
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue  # an alias: its node is checked once (and may even contain itself)
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            # Plain style is None from PyYAML's Python parser and "" from libyaml's.
            if not node.style and node.tag == _STR_TAG and not reads_as_string(node.value):
                return True
        elif isinstance(node, yaml.MappingNode):
            pending += [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            pending += node.value
    return False


def plan_event(
    event: JournalEvent,
    rtype: ResourceType,
    target_path: str,
    known: FileRecord | None,
    existing: bytes | None,
    dropped: Sequence[FieldPath],
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
            plan.remove(event.key, manifest_path(rtype, event.body, target_path))
            return plan
        return None
    assert event.body is not None
    path, content = manifest_of(rtype, event.body, target_path, dropped)
    if known == (path, content_hash(content)):
        return None
    plan.write(event.key, path, content, known, exists=existing is not None)
    return plan


class SnapshotPlanner:
    """One reconcile commit that makes the folder hold the journal's objects of ``selections``.

    Neither the objects nor the folder's files are ever held whole (a folder may have 100,000
    of each). In order:

    1. :meth:`add` plans one page of objects, given the content of the files at their paths
       (:meth:`branch_paths_of` names them);
    2. :meth:`identify` reads which object each file the target did not record writing names
       (:meth:`unidentified` lists them, once every page is added), in as many calls as needed;
    3. :meth:`finish` plans the deletions, which need every object seen first.

    Together the pages must be a complete seed of every type in ``selections`` that is current
    (its watch caught up in this process); ``files`` is what this target recorded writing;
    ``branch_paths`` are the files in the folder on the branch now.

    The invariant: a file is deleted only when both hold

    1. the object it stands for is **gone**: absent from every page, of a type in
       ``selections``, in a namespace whose deletions the rules take (:func:`_gone`);
    2. it **stands for** that object: it is the file this target recorded writing for it, or its
       own content names exactly that object (:func:`identity_of`).

    Every object in a page is present, whether the target writes it or not (excluded, filtered
    out by ``operations``, a Secret written elsewhere, one whose file cannot be planned, which
    goes to ``quarantine``), and a path where a present object's file is or would be is never
    deleted.

    Each object the target writes keeps its file byte for byte when the file already says what
    reverserd would write (recorded, and counted as adopted when it was not recorded so);
    otherwise its file is created, or rewritten when the rules take updates. ``writes`` counts
    the objects it writes.
    """

    def __init__(
        self,
        rules: Sequence[CompiledRule],
        types: Mapping[tuple[str, str], ResourceType],
        selections: set[tuple[str, str]],
        target_path: str,
        files: Mapping[ObjectKey, FileRecord],
        branch_paths: set[str],
        namespaces: Namespaces,
        dropped: Sequence[FieldPath],
    ) -> None:
        self.rules = rules
        self.dropped = dropped
        self.namespaces = namespaces
        self.types = types
        self.selections = selections
        self.target_path = target_path
        self.files = files
        self.branch_paths = branch_paths
        self.plan = FilePlan()
        self.writes = 0
        self._present: set[ObjectKey] = set()
        self._claimed: set[str] = set()
        """Paths a present object's file is at or would be at: never deleted."""
        self._identified: dict[str, ObjectKey] = {}
        """Unrecorded files and the object their content names."""
        self._kinds = kind_index(types.values())

    def branch_paths_of(self, objects: Iterable[StoredObject]) -> list[str]:
        """The files on the branch at the paths of ``objects``: what :meth:`add` must be given."""
        found = []
        for stored in objects:
            rtype = self.types.get((stored.key.api_group, stored.key.resource))
            if rtype is not None:
                found += [
                    p for p in _paths_of(rtype, stored, self.target_path) if p in self.branch_paths
                ]
        return found

    def add(self, objects: Iterable[StoredObject], contents: Mapping[str, bytes]) -> None:
        """Plan the files of one page of present objects; ``contents`` holds the branch's file at
        each of :meth:`branch_paths_of` of them."""
        rules, claimed, target_path = self.rules, self._claimed, self.target_path
        for stored in objects:
            self._present.add(stored.key)
            rtype = self.types.get((stored.key.api_group, stored.key.resource))
            if rtype is None:
                continue
            known = self.files.get(stored.key)
            if known is not None:
                claimed.add(known[0])
            try:
                body = stored.body
                writes = _writes(rules, rtype, stored.key.namespace, body, self.namespaces)
                if writes:
                    path, content = manifest_of(rtype, body, target_path, self.dropped)
            except Exception as error:  # a poison object: present and held, its file left alone
                self.plan.hold(stored.key, error)
                claimed.update(_paths_of(rtype, stored, target_path))
                continue
            if not writes:
                claimed.update(_paths_of(rtype, stored, target_path))
                continue
            self.writes += 1
            claimed.add(path)
            may_update = selected(
                rules, rtype, stored.key.namespace, "UPDATE", body, self.namespaces
            )
            if path in self.branch_paths and path not in contents:
                raise ValueError(f"the content of {path} on the branch was not read")
            current = contents.get(path)
            _plan_file(self.plan, stored.key, path, content, known, current, may_update)

    def unidentified(self) -> list[str]:
        """Files whose content must be read to know which object they stand for: manifests on
        the branch that no present object claims and this target did not record writing."""
        recorded = {path for path, _ in self.files.values()}
        return sorted(
            path
            for path in self.branch_paths
            if path.endswith(MANIFEST_SUFFIX) and path not in self._claimed and path not in recorded
        )

    def identify(self, contents: Mapping[str, bytes]) -> None:
        """Note the object each of these :meth:`unidentified` files names, if it names one."""
        for path, content in contents.items():
            named = identity_of(content, self._kinds)
            if named is not None:
                self._identified[path] = named

    def finish(self) -> FilePlan:
        """Add the deletions the objects seen prove, and return the whole plan."""
        candidates = dict(self._identified)
        for key, (path, _) in self.files.items():
            if path in self.branch_paths and path not in self._claimed:
                candidates[path] = key
        for path, key in sorted(candidates.items()):
            if _gone(key, self._present, self.rules, self.types, self.selections):
                self.plan.remove(key, path)
        return self.plan


def _writes(
    rules: Sequence[CompiledRule],
    rtype: ResourceType,
    namespace: str,
    body: dict[str, Any],
    namespaces: Namespaces,
) -> bool:
    """Whether this snapshot writes the object's file (Secrets are written by the SecretWriter)."""
    if not (
        selected(rules, rtype, namespace, "CREATE", body, namespaces)
        or selected(rules, rtype, namespace, "UPDATE", body, namespaces)
    ):
        return False
    return not is_excluded_object(rtype, body) and not is_sensitive(rtype)


def _paths_of(rtype: ResourceType, stored: StoredObject, target_path: str) -> list[str]:
    """Where the file of an object the snapshot does not write would live."""
    key = stored.key
    try:
        return [
            object_path(target_path, rtype, key.namespace or None, key.name, is_sensitive(rtype))
        ]
    except ValueError:
        return []  # a name no file can carry: it has no path to protect


def _plan_file(
    plan: FilePlan,
    key: ObjectKey,
    path: str,
    content: bytes,
    known: FileRecord | None,
    current: bytes | None,
    may_update: bool,
) -> None:
    """Keep, create or rewrite the file of one present object."""
    moved = known is not None and known[0] != path
    if current is not None and not moved and holds_object(current, content):
        plan.keep(key, path, content_hash(content), known)
        return
    if (current is not None or known is not None) and not may_update:
        return  # the rules take creations only: a file once there stays as it was
    plan.write(key, path, content, known, exists=current is not None)


def _gone(
    key: ObjectKey,
    present: set[ObjectKey],
    rules: Sequence[CompiledRule],
    types: Mapping[tuple[str, str], ResourceType],
    selections: set[tuple[str, str]],
) -> bool:
    """Whether the snapshot proves the object deleted and the rules take that deletion.

    A gone object has no labels left to match, so only its type, namespace and the operation
    are judged: a file the target recorded writing, or one naming exactly this object, stands
    for an object the complete seed proves deleted, which is evidence whatever its labels were.
    """
    if key in present or (key.api_group, key.resource) not in selections:
        return False
    rtype = types.get((key.api_group, key.resource))
    return rtype is not None and any(
        rule.selects_event(rtype, key.namespace, "DELETE") for rule in rules
    )
