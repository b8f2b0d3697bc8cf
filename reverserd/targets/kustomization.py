"""A ``kustomization.yaml`` in each folder a target writes, listing the files it wrote there.

With a GitTarget's ``kustomization: true``, every commit that writes, keeps or deletes an
object's file also brings the ``kustomization.yaml`` of that file's folder up to date, in the
same commit, so ``kustomize build <folder>`` (and a Flux Kustomization or an Argo CD
Application pointed at it) yields the folder's objects.

A ``kustomization.yaml`` someone wrote is respected: only its ``resources`` list changes. Files
this target wrote there are added, files it deleted are removed, and every other entry (another
file, a sub-folder, a remote base) stays where it was; the other keys (``namespace``,
``patches``, ``commonLabels``...) are kept. The change is a :class:`ListingEdit` (names to list,
names to drop), not the file's content: the committer applies it to the file as the branch has
it when the commit is made, and again when a pending commit is replayed onto a remote that
moved, so an edit a person pushed at any time survives. What remains: a commit still pending
when the daemon restarts and then replayed onto a remote that moved writes the file as it made
it (the edit is kept in memory only), so a person's edit pushed in that window is overwritten.

A file that is not a YAML mapping, whose ``resources`` is not a list of strings, that is larger
than :data:`KUSTOMIZATION_MAX_BYTES`, or nested deeper than PyYAML can write back is left
untouched (logged): it is not reverserd's to repair, and the target keeps mirroring.

The target's own record of its files (its ledger, which already holds the commit being
submitted) is the list; identity never comes from the folder's file names.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from reverserd.git import FileChange
from reverserd.targets.planning import read_manifest

log = logging.getLogger(__name__)

KUSTOMIZATION_NAME: Final = "kustomization.yaml"
KUSTOMIZATION_MAX_BYTES: Final = 1 << 20
"""A listing of every file of a folder of 10,000 objects is about 300 KB; a larger file is not
one reverserd keeps, and parsing it would hold the committer's thread for nothing."""
NEW_KUSTOMIZATION: Final[Mapping[str, Any]] = {
    "apiVersion": "kustomize.config.k8s.io/v1beta1",
    "kind": "Kustomization",
}


def kustomization_path(folder: str) -> str:
    return posixpath.join(folder, KUSTOMIZATION_NAME)


@dataclass(frozen=True, slots=True)
class ListingEdit:
    """The change to one folder's ``kustomization.yaml`` (a :class:`~reverserd.git.FileEdit`):
    list the file names ``written``, drop the names ``deleted``."""

    path: str
    written: frozenset[str]
    deleted: frozenset[str]

    def edited(self, existing: bytes | None) -> bytes | None:
        """The file listing ``written`` and none of ``deleted``; None when ``existing`` already
        says so or is not reverserd's to change."""
        if KUSTOMIZATION_NAME in self.written:
            return None  # an object's own file has the name (a ConfigMap named kustomization)
        document = dict(NEW_KUSTOMIZATION) if existing is None else _listing(existing)
        if document is None:
            self._log_untouched()
            return None
        resources = document.get("resources", [])
        gone = self.deleted - self.written
        kept = [entry for entry in resources if entry not in gone]
        listed = set(kept)
        wanted = kept + sorted(name for name in self.written if name not in listed)
        if existing is not None and wanted == resources:
            return None
        document["resources"] = wanted
        try:
            return yaml.safe_dump(document, sort_keys=False, default_flow_style=False).encode()
        except RecursionError:
            # Nesting PyYAML reads but cannot write back (a few hundred levels): raised here it
            # would fail the committer, and the commit, for good.
            self._log_untouched()
            return None

    def _log_untouched(self) -> None:
        log.warning(
            "%s is left untouched: it is not a YAML mapping of at most %d bytes whose "
            "resources is a list of file names",
            self.path,
            KUSTOMIZATION_MAX_BYTES,
        )


def _listing(existing: bytes) -> dict[str, Any] | None:
    """The mapping ``existing`` holds if reverserd may change its ``resources``, else None."""
    if len(existing) > KUSTOMIZATION_MAX_BYTES:
        return None
    found = read_manifest(existing)
    if found is None:
        return None
    resources = found.get("resources", [])
    if not isinstance(resources, list) or not all(isinstance(e, str) for e in resources):
        return None
    return found


def folders_of(changes: Iterable[FileChange], paths: Iterable[str]) -> set[str]:
    """The folders of object files that changed or were kept: those whose listing may move."""
    return {posixpath.dirname(change.path) for change in changes} | {
        posixpath.dirname(path) for path in paths
    }
