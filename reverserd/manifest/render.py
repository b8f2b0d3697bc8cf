"""Render a sanitized manifest as the exact bytes written to Git.

A commit happens when a file's bytes change, so rendering must be a pure function of the object:
the same object gives the same bytes on every run, on every machine. That is what keeps a
restart, a re-list or a no-op update from producing a commit, and keeps real diffs minimal.

The layout follows what ``kubectl get -o yaml`` prints, so the files read naturally and
``kubectl apply -f`` takes them as they are:

- ``apiVersion``, ``kind``, ``metadata`` first, then the other top-level keys sorted; keys sorted
  at every level below;
- two-space indentation, sequences at the parent key's indentation (``key:`` then ``- item``);
- multi-line strings as literal blocks: ``|`` when they end in one newline, ``|-`` when they end
  in none, ``|+`` when they end in several (PyYAML then closes the document with the ``...``
  end marker, which every YAML reader accepts);
- no line wrapping, UTF-8 text kept as it is;
- no anchors or aliases, even when the input shares one list between two places.

Strings are the hard part. Kubernetes reads these files with a YAML 1.1 parser (go-yaml v2)
while other tools use YAML 1.2, so any string that either version could read as a boolean,
null, number or timestamp is quoted (``'yes'``, ``'0o17'``, ``'1e3'``, ``''``). Every style is
decided here rather than by the emitter: PyYAML's C emitter (used when libyaml is present) and its
pure-Python emitter disagree on some characters, and the bytes must not depend on which one is
installed. Strings holding characters that only double quotes can carry (tabs, control
characters, Unicode line separators, characters outside the Basic Multilingual Plane) are
double-quoted with escapes, which both emitters write identically. The one layout the emitters
still decide on their own is that of a mapping key holding a line break, which Kubernetes never
lets an object have.
"""

from __future__ import annotations

import re
from typing import Any, Final, cast

import yaml

try:
    from yaml import CSafeDumper as _EmitterBase
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeDumper as _EmitterBase  # type: ignore[assignment]

# The order kubectl prints; everything else follows sorted.
TOP_LEVEL_KEY_ORDER: Final = ("apiVersion", "kind", "metadata")

INDENT: Final = 2

# Wrapping a long string would change its bytes when nothing else changed; the largest int the C
# emitter accepts means "never wrap".
NO_WRAP_WIDTH: Final = 2**31 - 1

_STR_TAG: Final = "tag:yaml.org,2002:str"
_MAP_TAG: Final = "tag:yaml.org,2002:map"

# Every plain scalar that YAML 1.1 (the types repository), YAML 1.2 (core schema) or go-yaml v2
# resolves to something other than a string. Over-matching only costs a pair of quotes;
# under-matching turns a ConfigMap value into a number on the next apply.
_NON_STRING_PLAIN: Final = re.compile(
    r"""
    (?:
      # null
      ~ | null | Null | NULL
      # booleans; YAML 1.1 includes the one-letter forms
    | y | Y | yes | Yes | YES | n | N | no | No | NO
    | true | True | TRUE | false | False | FALSE
    | on | On | ON | off | Off | OFF
      # integers: decimal, binary, octal (012 in 1.1, 0o17 in 1.2), hex, sexagesimal (1:20)
    | [-+]? [0-9][0-9_]*
    | [-+]? 0[bB][0-1_]+
    | [-+]? 0[oO][0-7_]+
    | [-+]? 0[xX][0-9a-fA-F_]+
    | [-+]? [0-9][0-9_]* (?: :[0-5]?[0-9] )+ (?: \.[0-9_]* )?
      # floats: with a dot, or with only an exponent as YAML 1.2 allows (1e3)
    | [-+]? (?: [0-9][0-9_]* )? \. [0-9_]* (?: [eE][-+]?[0-9]+ )?
    | [-+]? [0-9][0-9_]* [eE][-+]?[0-9]+
    | [-+]? \. (?: inf | Inf | INF )
    | \. (?: nan | NaN | NAN )
      # timestamps: a date, optionally with a time and zone
    | [0-9]{4} - [0-9]{1,2} - [0-9]{1,2}
      (?: (?: [Tt] | [ \t]+ ) [0-9]{1,2} : [0-9]{1,2} : [0-9]{1,2} (?: \.[0-9]* )?
          (?: [ \t]* (?: Z | [-+][0-9]{1,2} (?: :[0-9]{2} )? ) )? )?
      # YAML 1.1 merge key and value key
    | << | =
    )
    """,
    re.VERBOSE,
)

# Characters both emitters print as they are, outside double quotes: the YAML printable set
# restricted to the Basic Multilingual Plane (libyaml escapes anything beyond it), without the
# byte order mark and the Unicode line and paragraph separators (line breaks to a YAML reader).
_PRINTABLE_OR_NEWLINE: Final = re.compile(
    "[\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd]*"
)

_LITERAL_STYLE: Final = "|"
_SINGLE_QUOTED_STYLE: Final = "'"
_DOUBLE_QUOTED_STYLE: Final = '"'


def render(obj: dict[str, Any]) -> bytes:
    """Return the YAML document for ``obj`` as UTF-8 bytes, always the same for the same object.

    ``obj`` holds JSON values only (dicts with string keys, lists, strings, ints, floats, bools
    and None), as a sanitized Kubernetes object does.
    """
    return _dump(obj, _ManifestDumper)


def reads_as_string(text: str) -> bool:
    """Whether ``text`` written unquoted reads back as this string for every YAML reader.

    False for what YAML 1.1, YAML 1.2 or go-yaml v2 would read as a boolean, null, number or
    timestamp, and for the empty string. A file whose plain scalars all pass this means the same
    to Kubernetes as to PyYAML.
    """
    return text != "" and not _NON_STRING_PLAIN.fullmatch(text)


def _dump(obj: dict[str, Any], dumper: type[yaml.SafeDumper]) -> bytes:
    return yaml.dump(
        _Manifest(obj),
        Dumper=dumper,
        encoding="utf-8",
        allow_unicode=True,
        default_flow_style=False,
        indent=INDENT,
        width=NO_WRAP_WIDTH,
        sort_keys=False,
    )


def _scalar_style(text: str) -> str | None:
    """Choose the style for ``text``; None lets the emitter write it plain when the syntax allows.

    The emitter still quotes plain-looking text whose syntax needs it (``a: b``, ``- x``,
    ``#x``, leading spaces); both emitters agree on those, and both pick single quotes.
    """
    if not _PRINTABLE_OR_NEWLINE.fullmatch(text):
        return _DOUBLE_QUOTED_STYLE
    if "\n" in text:
        # A literal block cannot carry spaces at the end of a line: YAML readers keep them, but
        # the emitters refuse to write them, and editors strip them.
        if " \n" in text or text.endswith(" "):
            return _DOUBLE_QUOTED_STYLE
        return _LITERAL_STYLE
    if text == "" or _NON_STRING_PLAIN.fullmatch(text):
        return _SINGLE_QUOTED_STYLE
    return None


class _Manifest(dict[str, Any]):
    """The document root, whose keys follow TOP_LEVEL_KEY_ORDER instead of plain sorting."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar(_STR_TAG, text, style=_scalar_style(text))


def _represent_sorted_map(dumper: yaml.SafeDumper, mapping: dict[str, Any]) -> yaml.MappingNode:
    return dumper.represent_mapping(_MAP_TAG, sorted(mapping.items(), key=_by_key))


def _represent_manifest(dumper: yaml.SafeDumper, manifest: _Manifest) -> yaml.MappingNode:
    first = [(key, manifest[key]) for key in TOP_LEVEL_KEY_ORDER if key in manifest]
    rest = sorted(
        ((key, value) for key, value in manifest.items() if key not in TOP_LEVEL_KEY_ORDER),
        key=_by_key,
    )
    return dumper.represent_mapping(_MAP_TAG, first + rest)


def _by_key(item: tuple[str, Any]) -> str:
    return item[0]


def _never_alias(_dumper: yaml.SafeDumper, _data: Any) -> bool:
    # Anchors would make the bytes depend on object identity rather than on content.
    return True


def _manifest_dumper(base: type[Any]) -> type[yaml.SafeDumper]:
    """Build the manifest dumper on top of ``base`` (PyYAML's C or pure-Python safe dumper)."""
    dumper = cast(
        "type[yaml.SafeDumper]",
        type("ManifestDumper", (base,), {"ignore_aliases": _never_alias}),
    )
    dumper.add_representer(str, _represent_str)
    dumper.add_representer(dict, _represent_sorted_map)
    dumper.add_representer(_Manifest, _represent_manifest)
    return dumper


_ManifestDumper: Final = _manifest_dumper(_EmitterBase)
