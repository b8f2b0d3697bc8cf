"""API paths built from validated, quoted segments: the one place a name becomes a URL.

A name that a custom resource supplies (a Secret, a provider, a target, a namespace) is pasted
into a request path. Unchecked, ``../../other-team/secrets/git-token`` is collapsed by the HTTP
library into another namespace's Secret. So every segment that carries a name is first checked
against the Kubernetes name grammar, then percent-quoted with no safe characters, and only then
joined: a segment can never add, remove or climb a path level (SPEC 2, DESIGN invariant 9).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final
from urllib.parse import quote

# RFC 1123 label: namespaces and most names that must be DNS labels (63 characters).
DNS_LABEL_MAX: Final = 63
# RFC 1123 subdomain: object names such as Secrets and custom resources (253 characters).
DNS_SUBDOMAIN_MAX: Final = 253
DNS_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_DNS_LABEL: Final = re.compile(DNS_LABEL_PATTERN.rstrip("$") + r"\Z")
_DNS_SUBDOMAIN: Final = re.compile(DNS_SUBDOMAIN_PATTERN.rstrip("$") + r"\Z")
# What a name may show of itself in an error message.
_SHOWN_CHARS: Final = 80


class InvalidName(ValueError):
    """A name that cannot be a Kubernetes name; the message says which field and why."""


def is_dns_label(name: str) -> bool:
    return len(name) <= DNS_LABEL_MAX and _DNS_LABEL.match(name) is not None


def is_dns_subdomain(name: str) -> bool:
    return len(name) <= DNS_SUBDOMAIN_MAX and _DNS_SUBDOMAIN.match(name) is not None


def check_namespace(name: str, field: str = "namespace") -> str:
    return _checked(name, field, is_dns_label, "namespace name", "", DNS_LABEL_MAX)


def check_name(name: str, field: str = "name") -> str:
    return _checked(name, field, is_dns_subdomain, "Kubernetes name", " '.',", DNS_SUBDOMAIN_MAX)


def _checked(
    name: str, field: str, valid: Callable[[str], bool], what: str, extra: str, limit: int
) -> str:
    if not valid(name):
        raise InvalidName(
            f"{field} {_shown(name)} is not a valid {what} (lower-case letters, digits,"
            f"{extra} '-', at most {limit} characters)"
        )
    return name


def api_path(*segments: str) -> str:
    """``/seg/seg/...`` with every segment percent-quoted; refuses empty, ``.`` and ``..``."""
    quoted = []
    for segment in segments:
        if segment in ("", ".", ".."):
            raise InvalidName(f"{_shown(segment)} cannot be a segment of an API path")
        quoted.append(quote(segment, safe=""))
    return "/" + "/".join(quoted)


def group_base(group: str, version: str) -> list[str]:
    """The leading segments of a group's paths: ``api/v1`` for core, ``apis/<g>/<v>`` else."""
    return ["apis", group, version] if group else ["api", version]


def namespaced_path(
    group: str, version: str, resource: str, namespace: str | None, name: str | None = None
) -> str:
    """The path of a collection (``name`` None) or an object, in ``namespace`` when given."""
    segments = group_base(group, version)
    if namespace:
        segments += ["namespaces", check_namespace(namespace)]
    segments.append(resource)
    if name is not None:
        segments.append(check_name(name))
    return api_path(*segments)


def secret_path(namespace: str, name: str | None = None) -> str:
    """A Secret in ``namespace`` (or the namespace's Secret collection)."""
    return namespaced_path("", "v1", "secrets", namespace, name)


def _shown(name: str) -> str:
    return repr(name if len(name) <= _SHOWN_CHARS else name[:_SHOWN_CHARS] + "…")
