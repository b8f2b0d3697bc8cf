"""``reverserd render -f FILE``: what reverserd would write for a manifest, without a cluster.

Without discovery the resource name and scope are inferred: the plural is the lower-cased kind
made plural by English rules (as Kubernetes names almost every type, and as kubectl's offline
mapper guesses), and an object is namespaced when it names a namespace. In the daemon both come
from discovery instead, so these guesses never decide where a mirrored object is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml

from reverserd.kube.resources import ResourceType
from reverserd.manifest.layout import SENSITIVE_RESOURCES, object_path
from reverserd.manifest.render import render
from reverserd.manifest.sanitize import sanitize

# Kinds whose plural English rules get wrong.
IRREGULAR_PLURALS = {"Endpoints": "endpoints"}


def plural_of(kind: str) -> str:
    if kind in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[kind]
    lower = kind.lower()
    if lower.endswith("y") and lower[-2:-1] not in ("a", "e", "i", "o", "u"):
        return lower[:-1] + "ies"
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return lower + "es"
    return lower + "s"


def render_file(filename: Path, target_path: str) -> Iterator[tuple[str, bytes]]:
    """Yield (path in the repository, sanitized bytes) for each document of the file."""
    with filename.open() as stream:
        documents = [doc for doc in yaml.safe_load_all(stream) if doc]
    for document in documents:
        if not isinstance(document, dict) or "apiVersion" not in document or "kind" not in document:
            raise ValueError(f"{filename}: every document needs apiVersion and kind")
        group, _, version = str(document["apiVersion"]).rpartition("/")
        metadata = document.get("metadata") or {}
        namespace = metadata.get("namespace") or None
        rtype = ResourceType(
            group,
            version,
            plural_of(str(document["kind"])),
            str(document["kind"]),
            namespaced=namespace is not None,
        )
        sensitive = (rtype.group, rtype.resource) in SENSITIVE_RESOURCES
        path = object_path(target_path, rtype, namespace, str(metadata.get("name", "")), sensitive)
        yield path, render(sanitize(document))
