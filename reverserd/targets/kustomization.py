"""A ``kustomization.yaml`` in each folder a target writes, listing the files it wrote there.

With a GitTarget's ``kustomization: true``, every commit that writes, keeps or deletes an
object's file also brings the ``kustomization.yaml`` of that file's folder up to date, in the
same commit, so ``kustomize build <folder>`` (and a Flux Kustomization or an Argo CD
Application pointed at it) yields the folder's objects.

A ``kustomization.yaml`` someone wrote is respected: only its ``resources`` list changes. Files
this target wrote there are added, files it deleted are removed, and every other entry (another
file, a sub-folder, a remote base) stays where it was; the other keys (``namespace``,
``patches``, ``commonLabels``...) are kept. A file that is not a YAML mapping, or whose
``resources`` is not a list, is left alone: it is not reverserd's to repair.

The target's own record of its files (its ledger, which already holds the commit being
submitted) is the list; identity never comes from the folder's file names.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from typing import Any, Final

import yaml

from reverserd.git import FileChange
from reverserd.targets.planning import read_manifest

KUSTOMIZATION_NAME: Final = "kustomization.yaml"
NEW_KUSTOMIZATION: Final[Mapping[str, Any]] = {
    "apiVersion": "kustomize.config.k8s.io/v1beta1",
    "kind": "Kustomization",
}


def kustomization_path(folder: str) -> str:
    return posixpath.join(folder, KUSTOMIZATION_NAME)


def updated_kustomization(
    existing: bytes | None, written: set[str], deleted: Iterable[str]
) -> bytes | None:
    """The folder's ``kustomization.yaml`` listing the file names ``written`` and none of the
    names ``deleted``; None when ``existing`` already says so or is not reverserd's to change."""
    if KUSTOMIZATION_NAME in written:
        return None  # an object's own file has the name (a ConfigMap named kustomization)
    if existing is None:
        document: dict[str, Any] = dict(NEW_KUSTOMIZATION)
    else:
        found = read_manifest(existing)
        if found is None:
            return None
        document = found
    resources = document.get("resources", [])
    if not isinstance(resources, list):
        return None
    gone = set(deleted) - written
    kept = [entry for entry in resources if entry not in gone]
    listed = set(kept)
    wanted = kept + sorted(name for name in written if name not in listed)
    if existing is not None and wanted == resources:
        return None
    document["resources"] = wanted
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False).encode()


def folders_of(changes: Iterable[FileChange], paths: Iterable[str]) -> set[str]:
    """The folders of object files that changed or were kept: those whose listing may move."""
    return {posixpath.dirname(change.path) for change in changes} | {
        posixpath.dirname(path) for path in paths
    }
