"""Repositories a platform team reserves for chosen namespaces, cluster-wide.

``--repository-pins 'https://git.example.com/team-a=team-a,team-a-staging;ssh://git.example.com/infra=platform'``
lets only the listed namespaces write repositories under each URL prefix, whatever credentials
other namespaces hold: a GitTarget of any other namespace on such a repository is refused with
``Conflict`` (reason message names the pin). It is the operator's counterpart of the newer
upstream's allowed-namespaces lists, set once for the whole cluster instead of per provider.

Prefixes are compared in the normal form of :func:`~reverserd.git.urls.normalize_url` (so
spelling, case, ``.git`` and a trailing ``/`` do not matter) and only at a path boundary:
``https://h/team-a`` covers ``https://h/team-a/platform`` but not ``https://h/team-ab``. When
several prefixes cover one repository, the longest decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reverserd.git.urls import UnsupportedUrl, normalize_url

PIN_SEPARATOR = ";"
NAMESPACE_SEPARATOR = ","


@dataclass(frozen=True)
class RepositoryPins:
    """Normalized URL prefix -> the namespaces that alone may write beneath it."""

    pins: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def pin_of(self, repository: str) -> tuple[str, frozenset[str]] | None:
        """The longest prefix covering ``repository`` (normal form) and its namespaces."""
        covering = [p for p in self.pins if repository == p or repository.startswith(p + "/")]
        if not covering:
            return None
        prefix = max(covering, key=len)
        return prefix, self.pins[prefix]


def parse_pins(text: str) -> RepositoryPins:
    """``PREFIX=NS[,NS...]`` entries separated by ``;``; raises ValueError on a malformed one."""
    pins: dict[str, frozenset[str]] = {}
    for entry in text.split(PIN_SEPARATOR):
        entry = entry.strip()
        if not entry:
            continue
        prefix, equals, names = entry.rpartition("=")
        namespaces = frozenset(n.strip() for n in names.split(NAMESPACE_SEPARATOR) if n.strip())
        if not equals or not prefix.strip() or not namespaces:
            raise ValueError(f"repository pin {entry!r} is not PREFIX=NAMESPACE[,NAMESPACE...]")
        try:
            normalized = normalize_url(prefix.strip())
        except UnsupportedUrl as error:
            raise ValueError(f"repository pin prefix: {error}") from None
        pins[normalized] = pins.get(normalized, frozenset()) | namespaces
    return RepositoryPins(pins)
