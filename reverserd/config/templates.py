"""Commit message templates of ``spec.commit.message``, in the one form reverserd takes.

gitops-reverser's later versions read these as Go ``text/template``; the manifests people write
use plain substitutions (``[{{.Operation}}] {{.Resource}}/{{.Name}}``). reverserd takes exactly
that: literal text and ``{{.Field}}`` (spaces inside the braces allowed) naming a variable of
the template's kind. Anything else between ``{{`` and ``}}`` (``if``, ``range``, pipes,
functions, comments) is refused when the GitProvider is read, with a condition naming what is
supported: a template is never half-rendered, and nothing a template says is evaluated.

A rendered template is the commit's subject only. The body lines reverserd relies on (``uid``,
``resourceVersion``, ``user``, ``manager``, the journal seq and target trailers of
:mod:`reverserd.committer.trailers`) follow it unchanged, whatever the template says. Values are
escaped (:func:`~reverserd.manifest.layout.printable`) before they are put in, and the template
itself holds no control character (the CRD and the parser refuse them), so a subject is always
one line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

EVENT_FIELDS = (
    "Operation",
    "Group",
    "Version",
    "Resource",
    "Namespace",
    "Name",
    "APIVersion",
    "Username",
    "GitTarget",
)
"""Variables of ``eventTemplate`` (one change's commit), as gitops-reverser documents them."""
RECONCILE_FIELDS = ("Count", "GitTarget", "Group", "Version", "Resource", "APIVersion", "Revision")
"""Variables of ``reconcileTemplate``. A reconcile here covers a whole target, so ``Group``,
``Version``, ``Resource``, ``APIVersion`` and ``Revision`` are empty, as gitops-reverser leaves
them for a whole-target reconcile."""
MAX_TEMPLATE_CHARS = 1024
"""Longer than any subject line worth reading; the CRD has the same bound."""

_ACTION = re.compile(r"\{\{(.*?)\}\}")
_FIELD = re.compile(r"^\s*\.([A-Za-z][A-Za-z0-9]*)\s*$")


class TemplateError(ValueError):
    """The template is not of the supported form; the message says what is."""


@dataclass(frozen=True)
class MessageTemplate:
    """A parsed template: literal text and field names, alternating (text first and last)."""

    source: str
    parts: tuple[str, ...]

    def render(self, values: Mapping[str, str]) -> str:
        out = []
        for index, part in enumerate(self.parts):
            out.append(values.get(part, "") if index % 2 else part)
        return "".join(out)


def parse_template(source: str, fields: tuple[str, ...]) -> MessageTemplate:
    """Parse ``source``; raise :class:`TemplateError` unless it is text and ``{{.Field}}`` of
    ``fields`` only."""
    supported = (
        "only literal text and plain substitutions {{.Field}} are supported, with the fields "
        + ", ".join(fields)
    )
    parts: list[str] = []
    position = 0
    for action in _ACTION.finditer(source):
        field = _FIELD.match(action.group(1))
        if field is None:
            raise TemplateError(f"{{{{{action.group(1)[:40]}}}}} is not supported: {supported}")
        if field.group(1) not in fields:
            raise TemplateError(f"no field {field.group(1)!r}: {supported}")
        parts += [source[position : action.start()], field.group(1)]
        position = action.end()
    parts.append(source[position:])
    if any("{{" in text or "}}" in text for text in parts[::2]):
        raise TemplateError(f"an unclosed {{{{ or a stray }}}}: {supported}")
    return MessageTemplate(source, tuple(parts))
