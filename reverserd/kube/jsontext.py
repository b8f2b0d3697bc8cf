"""Decoding the API server's JSON when an object nests deeper than Python can follow.

Python's JSON parser, and everything after it (sanitizer, renderer, encoder), recurse once per
level and stop near a thousand levels; the API server accepts custom resources nested ten times
deeper. One such object must not wedge the watch of its type (DESIGN invariant 8): a watch line
or a LIST page that cannot be decoded would fail, be fetched again, and fail forever.

So an object too deep to decode is replaced by a *stand-in*: its ``apiVersion``, ``kind`` and
identity metadata (read from the raw text, where the API server writes them before the deep
part), marked with :data:`UNDECODABLE`. It is journaled like any other state of the object, so
its resourceVersion moves the watch on and a later normal state replaces it; a target consumer
quarantines it instead of writing it. The stand-in's fields, and the items of a LIST page, are
found by a scanner that counts brackets and keeps no stack, so any depth is fine (Kubernetes
writes a custom resource's metadata keys in alphabetical order, so ``managedFields``, as deep as
the object, may come before ``name``).
"""

from __future__ import annotations

import json
from typing import Any

# Key of a stand-in's reason; never a field of a real object (not a valid Kubernetes field name).
UNDECODABLE = "reverserd/undecodable"
TOO_DEEP = "the object nests deeper than reverserd can decode"

IDENTITY_FIELDS = ("name", "namespace", "uid", "resourceVersion", "generateName")


def loads(text: str | bytes) -> Any:
    """``json.loads``, with objects too deep to decode replaced by stand-ins."""
    try:
        return json.loads(text)
    except RecursionError:
        pass
    raw = text.decode() if isinstance(text, bytes) else text
    top = _members(raw, _skip_space(raw, 0))
    if "items" in top:
        return _list_page(raw, top)
    if "object" in top and "type" in top:
        start, end = top["object"]
        return {"type": json.loads(raw[slice(*top["type"])]), "object": stand_in(raw[start:end])}
    return stand_in(raw)


def stand_in(raw: str) -> dict[str, Any]:
    """An object's identity from its raw JSON, marked as undecodable."""
    found: dict[str, Any] = {UNDECODABLE: TOO_DEEP}
    members = _members(raw, _skip_space(raw, 0))
    for key in ("apiVersion", "kind"):
        if key in members:
            found[key] = _string(raw, members[key])
    metadata: dict[str, str] = {}
    if "metadata" in members:
        fields = _members(raw, members["metadata"][0])
        for key in IDENTITY_FIELDS:
            if key in fields:
                metadata[key] = _string(raw, fields[key])
    found["metadata"] = metadata
    return found


def _list_page(raw: str, top: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """A LIST page whose ``items`` hold an object too deep to decode."""
    page: dict[str, Any] = {
        key: json.loads(raw[start:end]) for key, (start, end) in top.items() if key != "items"
    }
    items = []
    for start, end in _elements(raw, top["items"][0]):
        try:
            items.append(json.loads(raw[start:end]))
        except RecursionError:
            items.append(stand_in(raw[start:end]))
    page["items"] = items
    return page


def _string(raw: str, span: tuple[int, int]) -> Any:
    value = raw[span[0] : span[1]]
    return json.loads(value) if value.startswith('"') else None


def _skip_space(raw: str, at: int) -> int:
    while at < len(raw) and raw[at] in " \t\r\n":
        at += 1
    return at


def _members(raw: str, at: int) -> dict[str, tuple[int, int]]:
    """Key -> span of its value, for the members of the JSON object starting at ``raw[at]``."""
    if at >= len(raw) or raw[at] != "{":
        return {}
    found: dict[str, tuple[int, int]] = {}
    spans = _scan(raw, at)
    for key_span, value_span in zip(spans[::2], spans[1::2], strict=False):
        found[json.loads(raw[key_span[0] : key_span[1]])] = value_span
    return found


def _elements(raw: str, at: int) -> list[tuple[int, int]]:
    """Spans of the elements of the JSON array starting at ``raw[at]``."""
    return _scan(raw, at) if raw[at] == "[" else []


def _scan(raw: str, at: int) -> list[tuple[int, int]]:
    """Spans of the top-level tokens of the object or array at ``raw[at]``: for an object,
    keys and values alternate. Counts brackets outside strings, so it keeps no stack."""
    spans: list[tuple[int, int]] = []
    depth, in_string, escaped, start = 0, False, False, -1
    for index in range(at, len(raw)):
        char = raw[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
                if depth == 1 and raw[start] == '"':
                    spans.append((start, index + 1))
                    start = -1
            continue
        if depth == 1 and start < 0 and char not in " \t\r\n,:":
            if char in "}]":
                return spans
            start = index
        if char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 1 and start >= 0:
                spans.append((start, index + 1))
                start = -1
            elif depth == 0:
                if start >= 0:
                    spans.append((start, index))
                return spans
        elif char in ",:" and depth == 1 and start >= 0:
            spans.append((start, index))
            start = -1
    raise ValueError("unterminated JSON value")
