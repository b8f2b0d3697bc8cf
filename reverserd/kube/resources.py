"""What a resource type is, as discovery reports it."""

from __future__ import annotations

from dataclasses import dataclass

from reverserd.kube.paths import namespaced_path


@dataclass(frozen=True, slots=True, order=True)
class ResourceType:
    """A listable, watchable resource at one version (the group's preferred one when served)."""

    group: str
    version: str
    resource: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, ``<group>/<version>`` otherwise."""
        return f"{self.group}/{self.version}" if self.group else self.version

    def collection_path(self, namespace: str | None = None) -> str:
        return namespaced_path(self.group, self.version, self.resource, namespace)

    def object_path(self, namespace: str | None, name: str) -> str:
        """Raises :class:`reverserd.kube.paths.InvalidName` for a name no object can have."""
        scope = namespace if self.namespaced else None
        return namespaced_path(self.group, self.version, self.resource, scope, name)
