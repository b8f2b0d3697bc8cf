"""Which resource types the API server serves, at which preferred version.

Uses aggregated discovery (``apidiscovery.k8s.io/v2``, GA since Kubernetes 1.30): two requests
describe every group, version and resource. Versions come in preference order, so the first
version serving a resource is the one its objects are read at.

A group whose discovery is ``Stale`` (an aggregated API server that is down) is reported as such:
its types are *unknown*, not gone, so nothing of them is ever treated as deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reverserd.kube.client import KubeClient
from reverserd.kube.resources import ResourceType

AGGREGATED_DISCOVERY = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
)
REQUIRED_VERBS = frozenset({"list", "watch"})


@dataclass(frozen=True)
class Discovery:
    """Listable and watchable resources keyed by (group, resource)."""

    types: dict[tuple[str, str], ResourceType] = field(default_factory=dict)
    # Every served version per (group, resource), preferred first: apiVersions rules match these.
    versions: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    stale_groups: frozenset[str] = frozenset()


async def discover(client: KubeClient) -> Discovery:
    types: dict[tuple[str, str], ResourceType] = {}
    versions: dict[tuple[str, str], list[str]] = {}
    stale: set[str] = set()
    for path in ("/api", "/apis"):
        response = await client.get_with_accept(path, AGGREGATED_DISCOVERY)
        for group_entry in response.get("items") or []:
            group = (group_entry.get("metadata") or {}).get("name", "")
            for version_entry in group_entry.get("versions") or []:
                version = version_entry["version"]
                if version_entry.get("freshness") == "Stale":
                    stale.add(group)
                    continue
                for resource in version_entry.get("resources") or []:
                    name = resource["resource"]
                    if "/" in name or not REQUIRED_VERBS <= set(resource.get("verbs") or ()):
                        continue
                    key = (group, name)
                    versions.setdefault(key, []).append(version)
                    if key not in types:
                        kind = (resource.get("responseKind") or {}).get("kind", "")
                        namespaced = resource.get("scope") == "Namespaced"
                        types[key] = ResourceType(group, version, name, kind, namespaced)
    return Discovery(
        types=types,
        versions={key: tuple(found) for key, found in versions.items()},
        stale_groups=frozenset(stale - {group for group, _ in types}),
    )
