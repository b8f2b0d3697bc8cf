"""A GitTarget's ``dropFields``: field paths removed from every manifest it writes.

Some fields churn without meaning anything to the folder (an annotation a tool rewrites every
minute, ``spec.replicas`` under an autoscaler). A target can name them, and they are removed
after sanitizing, before rendering, so they never reach a file, a content hash or a commit.

Two spellings name the same path:

- a JSON Pointer (RFC 6901): ``/spec/replicas``,
  ``/metadata/annotations/example.com~1last-sync`` (``~1`` is ``/``, ``~0`` is ``~``);
- a dotted path: ``spec.replicas``, with a map key that holds dots or slashes in brackets:
  ``metadata.annotations[example.com/last-sync]``.

Paths walk maps only: a path that meets a list or a scalar before its end names nothing in that
object and drops nothing. A path never drops what names the object: ``apiVersion``, ``kind``,
``metadata``, ``metadata.name`` or ``metadata.namespace`` (or the whole manifest); such a path is
refused, so a file can never lose its identity and be taken for another object's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

# Far more than any target needs; bounded so a hostile list cannot slow every render.
MAX_DROP_FIELDS: Final = 64
MAX_FIELD_PATH_CHARS: Final = 512
# Paths whose removal would take away what identifies the object.
PROTECTED: Final = frozenset(
    {("apiVersion",), ("kind",), ("metadata",), ("metadata", "name"), ("metadata", "namespace")}
)

# A dotted segment: a plain key (no dot, no bracket) or a bracketed key (no closing bracket).
_DOTTED_SEGMENT: Final = re.compile(r"([^.\[\]]+)|\[([^\]]+)\]")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")

FieldPath = tuple[str, ...]


class FieldPathError(ValueError):
    """A path that cannot be used; the message says which and why."""


def parse_field_path(text: Any) -> FieldPath:
    if not isinstance(text, str) or not text:
        raise FieldPathError("dropFields entries must be non-empty strings")
    if len(text) > MAX_FIELD_PATH_CHARS or _CONTROL.search(text):
        raise FieldPathError(
            f"dropFields entry {text[:80]!r} is longer than {MAX_FIELD_PATH_CHARS} characters"
            " or holds a control character"
        )
    path = _pointer(text) if text.startswith("/") else _dotted(text)
    if not path or any(not segment for segment in path):
        raise FieldPathError(f"dropFields entry {text[:80]!r} has an empty segment")
    if path in PROTECTED:
        raise FieldPathError(
            f"dropFields entry {text[:80]!r} would drop {'.'.join(path)}: apiVersion, kind,"
            " metadata.name and metadata.namespace identify the object and are always written"
        )
    return path


def parse_field_paths(raw: Any) -> tuple[FieldPath, ...]:
    """``spec.dropFields`` parsed, in a canonical order (so spellings of one list are equal)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_DROP_FIELDS:
        raise FieldPathError(f"dropFields must be a list of at most {MAX_DROP_FIELDS} paths")
    return tuple(sorted({parse_field_path(item) for item in raw}))


def _pointer(text: str) -> FieldPath:
    segments = text[1:].split("/")
    if any(re.search(r"~(?![01])", segment) for segment in segments):
        raise FieldPathError(f"dropFields entry {text[:80]!r}: '~' must be written ~0 (and '/' ~1)")
    return tuple(segment.replace("~1", "/").replace("~0", "~") for segment in segments)


def _dotted(text: str) -> FieldPath:
    segments: list[str] = []
    position = 0
    while position < len(text):
        match = _DOTTED_SEGMENT.match(text, position)
        if match is None:
            raise FieldPathError(
                f"dropFields entry {text[:80]!r} is neither a JSON Pointer (/spec/replicas) nor"
                " a dotted path (spec.replicas, metadata.annotations[example.com/key])"
            )
        segments.append(match.group(1) or match.group(2))
        position = match.end()
        if position < len(text) and text[position] == ".":
            position += 1
            if position == len(text):
                segments.append("")
    return tuple(segments)


def pointer_text(path: FieldPath) -> str:
    """The path as a JSON Pointer: one spelling per path, for keys and messages."""
    return "".join("/" + segment.replace("~", "~0").replace("/", "~1") for segment in path)


def drop_fields(manifest: dict[str, Any], paths: Iterable[FieldPath]) -> dict[str, Any]:
    """Remove the fields ``paths`` name from ``manifest`` in place and return it: callers pass
    the fresh copy :func:`~reverserd.manifest.sanitize.sanitize` made, which nothing shares."""
    for path in paths:
        parent: Any = manifest
        for segment in path[:-1]:
            parent = parent.get(segment) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    return manifest
