"""What a replica watches: every rule's streams, or in sharded mode only those the targets on
the branches it serves need; and what the journal forgets of a stream that stopped for good."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reverserd.config.plane import ConfigState, resolve
from reverserd.config.status import StatusBoard
from reverserd.journal import ALL_NAMESPACES, JournalReader, JournalWriter, SeedState, StreamSpec
from reverserd.kube.discovery import Discovery
from reverserd.kube.resources import ResourceType
from reverserd.watch.manager import desired_streams, rules_to_watch
from testbed.manifests import cluster_watch_rule, git_provider, git_target, watch_rule
from tests.conftest import current_objects

CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap", True)
DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment", True)
CLUSTER_ROLES = ResourceType(
    "rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False
)
DISCOVERY = Discovery(
    {(t.group, t.resource): t for t in (CONFIGMAPS, DEPLOYMENTS, CLUSTER_ROLES)},
    {(t.group, t.resource): (t.version,) for t in (CONFIGMAPS, DEPLOYMENTS, CLUSTER_ROLES)},
)
URL = "https://git.example/platform.git"
CACHE_OF = {
    "GitProvider": "gitproviders",
    "GitTarget": "gittargets",
    "WatchRule": "watchrules",
    "ClusterWatchRule": "clusterwatchrules",
}


def state_of(*manifests: dict[str, Any]) -> ConfigState:
    caches: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
        cache: {} for cache in CACHE_OF.values()
    }
    for manifest in manifests:
        metadata = manifest["metadata"]
        caches[CACHE_OF[manifest["kind"]]][(metadata.get("namespace", ""), metadata["name"])] = (
            manifest
        )
    state, _ = resolve(caches, DISCOVERY, StatusBoard())
    return state


def serving(state: ConfigState, *targets: str) -> Callable[[str], bool]:
    """A replica serving the branches of ``targets`` (namespace/name)."""
    branches = {state.targets[key].branch for key in targets}
    return lambda branch: branch in branches


def keys(streams: set[StreamSpec]) -> set[str]:
    return {stream.key for stream in streams}


# Team a mirrors its ConfigMaps on branch one, team b its Deployments on branch two, team c
# its ConfigMaps on branch three (sharing branch one's stream of namespace a through a
# ClusterWatchRule of every namespace), and a WatchRule points at a target that does not exist.
MANIFESTS = [
    git_provider("a", "mirror", URL, branches=["*"]),
    git_provider("b", "mirror", URL, branches=["*"]),
    git_target("a", "one", "mirror", "a", "one"),
    git_target("b", "two", "mirror", "b", "two"),
    git_target("a", "three", "mirror", "c", "three"),
    watch_rule("a", "one", "one", [{"resources": ["configmaps"]}]),
    watch_rule("b", "two", "two", [{"apiGroups": ["apps"], "resources": ["deployments"]}]),
    cluster_watch_rule(
        "three",
        "a",
        "three",
        [
            {"scope": "Namespaced", "resources": ["configmaps"]},
            {
                "scope": "Cluster",
                "apiGroups": ["rbac.authorization.k8s.io"],
                "resources": ["clusterroles"],
            },
        ],
    ),
    watch_rule("b", "orphan", "missing", [{"resources": ["configmaps"]}]),
]


def test_one_replica_watches_every_rule_even_one_whose_target_is_missing() -> None:
    state = state_of(*MANIFESTS)
    assert keys(desired_streams(rules_to_watch(state), DISCOVERY)) == {
        "v1/configmaps@*",
        "apps/v1/deployments@b",
        "rbac.authorization.k8s.io/v1/clusterroles@*",
    }
    without_cluster_rule = state_of(*MANIFESTS[:7], MANIFESTS[-1])
    assert keys(desired_streams(rules_to_watch(without_cluster_rule), DISCOVERY)) == {
        "v1/configmaps@a",
        "v1/configmaps@b",
        "apps/v1/deployments@b",
    }


def test_a_sharded_replica_watches_only_what_the_targets_on_its_branches_need() -> None:
    state = state_of(*MANIFESTS)
    assert set(state.targets) == {"a/one", "b/two", "a/three"}

    def watched(*targets: str) -> set[str]:
        return keys(desired_streams(rules_to_watch(state, serving(state, *targets)), DISCOVERY))

    assert watched("a/one") == {"v1/configmaps@a"}
    assert watched("b/two") == {"apps/v1/deployments@b"}
    assert watched("a/three") == {
        "v1/configmaps@*",
        "rbac.authorization.k8s.io/v1/clusterroles@*",
    }
    # Two replicas holding branch one and branch three both watch the ConfigMaps of
    # namespace a, each in its own scope.
    assert watched("a/one", "b/two") == {"v1/configmaps@a", "apps/v1/deployments@b"}
    assert watched("a/one", "a/three") == watched("a/three")
    # Holding nothing, it watches nothing; the rule of the missing target is nobody's.
    assert watched() == set()
    everything = keys(desired_streams(rules_to_watch(state, lambda branch: True), DISCOVERY))
    assert everything == watched("a/one", "b/two", "a/three")
    assert "v1/configmaps@b" not in everything


def test_a_refused_target_with_a_provider_is_watched_by_the_holder_of_its_branch() -> None:
    """Refused (its branch not allowed), its provider still names the repository: its rules go
    with its branch. Without a provider it has no branch, and its rules are nobody's."""
    state = state_of(
        git_provider("a", "narrow", URL, branches=["main"]),
        git_target("a", "off", "narrow", "a", "off"),
        git_target("a", "lost", "missing", "b", "main"),
        watch_rule("a", "off", "off", [{"resources": ["configmaps"]}]),
        watch_rule("a", "lost", "lost", [{"apiGroups": ["apps"], "resources": ["deployments"]}]),
    )
    assert state.targets == {} and set(state.refused) == {"a/off"}
    branch = state.branch_of("a/off")
    assert branch is not None and state.branch_of("a/lost") is None

    def watched(serves: Callable[[str], bool]) -> set[str]:
        return keys(desired_streams(rules_to_watch(state, serves), DISCOVERY))

    assert watched(lambda held: held == branch) == {"v1/configmaps@a"}
    assert watched(lambda held: held != branch) == set()


def configmap(namespace: str, name: str, version: int) -> dict[str, Any]:
    metadata = {
        "name": name,
        "namespace": namespace,
        "uid": f"u-{namespace}-{name}",
        "resourceVersion": str(version),
    }
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}


async def seed(writer: JournalWriter, stream: StreamSpec, items: list[dict[str, Any]]) -> None:
    await writer.register_stream(stream)
    session = await writer.begin_seed(stream, False)
    await writer.record_seed_page(session, items)
    await writer.finish_seed(session, "10")


async def test_a_released_stream_is_forgotten_and_seeds_again_without_deleting(
    journal: tuple[JournalWriter, JournalReader],
) -> None:
    writer, reader = journal
    team_a = StreamSpec(CONFIGMAPS, "a")
    team_b = StreamSpec(CONFIGMAPS, "b")
    await seed(writer, team_a, [configmap("a", "x", 1), configmap("a", "y", 2)])
    await seed(writer, team_b, [configmap("b", "z", 3)])
    covered = {"/configmaps|ns=a": 5, "apps/deployments|ns=a": 5}
    await writer.write_cursor("a/one", 5, covered)
    await writer.write_cursor("b/two", 5, {"apps/deployments|ns=b": 5})

    await writer.release_stream(team_a)

    streams = {row.stream: row for row in await reader.streams()}
    assert set(streams) == {team_b.key}
    remaining = await current_objects(reader, [("", "configmaps")])
    assert [(o.key.namespace, o.key.name) for o in remaining] == [("b", "z")]
    # The cursors stop covering the type: its gap is adopted by a snapshot, never read across.
    one = await reader.cursor("a/one")
    two = await reader.cursor("b/two")
    assert one is not None and dict(one.covered) == {"apps/deployments|ns=a": 5}
    assert two is not None and dict(two.covered) == {"apps/deployments|ns=b": 5}

    # Watched again, it starts from nothing: pending, and its seed creates (y was deleted
    # meanwhile: nothing in the journal says so, so nothing is deleted).
    last = await reader.last_seq()
    version, state = await writer.register_stream(team_a)
    assert (version, state) == (None, SeedState.PENDING)
    await seed(writer, team_a, [configmap("a", "x", 4)])
    events = await reader.events_after(last, 100)
    assert [(e.kind.value, e.name) for e in events] == [
        ("SEED_BEGIN", ""),
        ("CREATE", "x"),
        ("SEED_END", ""),
    ]
    assert ALL_NAMESPACES not in {row.namespace for row in await reader.streams()}
