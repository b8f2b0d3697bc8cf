"""Adopting a folder that an earlier mirror wrote, and deleting only with evidence (SPEC 3.2
"Adoption", DESIGN invariants 3 and 4, scenario J70).

The folders are prepared the way gitops-reverser v0.17 writes them: ``apiVersion``, ``kind``
and ``metadata`` first, then the remaining fields with keys sorted; strings that would read as
another type double-quoted (go-yaml v2 style, where reverserd writes single quotes); Secrets as
SOPS files. Each test runs a real ``reverserd run`` against the test bed and asserts on the
pushed branch.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from reverserd.journal import JournalReader, JournalWriter, SeedState, StreamSpec
from reverserd.kube.client import KubeClient
from reverserd.kube.resources import ResourceType
from reverserd.watch.watcher import (
    CATCH_UP_WATCH_S,
    READ_AHEAD_BYTES,
    ReadAheadBudget,
    StreamWatcher,
)
from testbed.controlplane import WATCH_CACHE_OFF_RESOURCE, ControlPlane
from testbed.gitservers import GitHttpServer, branch_tip, changed_paths, log
from testbed.harness import (
    Reverserd,
    apply,
    caught_up,
    create_many,
    delete_many,
    kubectl_json,
    merge_patch,
    query_journal,
    subjects,
    tree,
    wait_for_subjects,
    wait_synced,
    wait_until,
)
from testbed.manifests import (
    cluster_watch_rule,
    configmap,
    deployment,
    git_provider,
    git_target,
    mirror_setup,
    secret,
    watch_rule,
)
from tests.conftest import Cleanup, Remote, current_objects

FOLDER = "live-cluster"
# A restart that changes nothing has pushed whatever it would push within a second (push
# interval 1 s); twice that proves the quiet.
QUIET_PERIOD_S = 2.0
# Longest a resumed watch may take to prove itself current: a short watch bringing the changes
# made meanwhile, then a quiet one, plus reconnect time.
CATCH_UP_LIMIT_S = 2 * CATCH_UP_WATCH_S + 5
_STR_TAG = "tag:yaml.org,2002:str"

Seed = Callable[[dict[str, bytes]], str]


# -- a folder as gitops-reverser v0.17 writes it ----------------------------------------------


class _OldOperatorDumper(yaml.SafeDumper):
    """go-yaml v2 conventions: double quotes for strings that would read as another type,
    literal blocks for multi-line strings, sequences at their key's indentation."""


def _old_operator_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    # How a plain scalar would read back; PyYAML ships this method untyped.
    resolve = cast("Callable[..., str]", dumper.resolve)
    style = None
    if "\n" in text:
        style = "|"
    elif text == "" or resolve(yaml.ScalarNode, text, (True, False)) != _STR_TAG:
        style = '"'
    return dumper.represent_scalar(_STR_TAG, text, style=style)


_OldOperatorDumper.add_representer(str, _old_operator_str)


def old_operator_file(manifest: dict[str, Any]) -> bytes:
    """The bytes gitops-reverser v0.17 writes for a sanitized manifest: ``apiVersion``, ``kind``
    and ``metadata`` each emitted on their own, then the remaining fields sorted."""
    head = ("apiVersion", "kind", "metadata")
    parts = [{key: manifest[key]} for key in head]
    rest = {key: value for key, value in manifest.items() if key not in head}
    if rest:
        parts.append(rest)
    return b"".join(
        yaml.dump(part, Dumper=_OldOperatorDumper, sort_keys=True, encoding="utf-8")
        for part in parts
    )


def sops_file(namespace: str, name: str, secret_type: str, keys: list[str]) -> bytes:
    """A Secret file as SOPS leaves it: identity in clear, values and MAC encrypted."""
    data = "".join(
        f"    {key}: ENC[AES256_GCM,data:{uuid.uuid4().hex},iv:{uuid.uuid4().hex[:16]},"
        f"tag:{uuid.uuid4().hex[:22]}==,type:str]\n"
        for key in keys
    )
    return (
        f"apiVersion: v1\ndata:\n{data}kind: Secret\nmetadata:\n    name: {name}\n"
        f"    namespace: {namespace}\ntype: {secret_type}\nsops:\n    age:\n"
        "        - recipient: age1lfzq0mqv5d7y2w4ue7h3y9f7fj3mdv5ypy0mh6fhy7xqs9y2zq3q8m2y5k\n"
        "          enc: |\n"
        "            -----BEGIN AGE ENCRYPTED FILE-----\n"
        "            YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSBvbGQgb3BlcmF0b3IK\n"
        "            -----END AGE ENCRYPTED FILE-----\n"
        '    lastmodified: "2025-11-03T09:12:44Z"\n'
        f"    mac: ENC[AES256_GCM,data:{uuid.uuid4().hex},type:str]\n"
        "    encrypted_regex: ^(data|stringData)$\n"
        "    version: 3.9.1\n"
    ).encode()


def sanitized(live: dict[str, Any]) -> dict[str, Any]:
    """What a mirror keeps of a live object created without kubectl apply: identity, labels,
    annotations and every top-level field but ``status``; pod templates without the null
    creationTimestamp the API server serialises."""
    metadata = live["metadata"]
    kept = {
        key: metadata[key]
        for key in ("name", "namespace", "labels", "annotations")
        if key in metadata
    }
    result = {"apiVersion": live["apiVersion"], "kind": live["kind"], "metadata": kept}
    result.update(
        (key, value)
        for key, value in live.items()
        if key not in ("apiVersion", "kind", "metadata", "status")
    )
    template = (result.get("spec") or {}).get("template") or {}
    (template.get("metadata") or {}).pop("creationTimestamp", None)
    return result


def live_object(plane: ControlPlane, kind: str, namespace: str, name: str) -> dict[str, Any]:
    return kubectl_json(plane, "get", kind, name, "-n", namespace)


@pytest.fixture
def seed_folder(git_http: GitHttpServer, git_repo_name: str, remote: Remote) -> Seed:
    """Commit files onto ``remote``'s main branch as the earlier mirror did; returns the SHA."""

    def seed(files: dict[str, bytes]) -> str:
        return git_http.seed_repo(git_repo_name, "main", files, "gitops-reverser: mirror")

    return seed


def cm_path(namespace: str, name: str, folder: str = FOLDER) -> str:
    return f"{folder}/v1/configmaps/{namespace}/{name}.yaml"


def reconcile_commits(repo: Path, folder: str = FOLDER) -> list[tuple[str, str, set[str]]]:
    """(subject, body, paths changed below ``folder``) of each commit touching ``folder``,
    oldest first."""
    found = []
    for entry in reversed(log(repo, "main")):
        paths = {p for p in changed_paths(repo, entry.sha) if p.startswith(f"{folder}/")}
        if paths:
            found.append((entry.subject, entry.body, paths))
    return found


def counts(body: str) -> dict[str, int]:
    wanted = ("adopted", "created", "updated", "deleted")
    fields = dict(line.split(": ", 1) for line in body.splitlines() if ": " in line)
    return {key: int(fields[key]) for key in wanted}


def wait_caught_up(daemon: Reverserd, target: str) -> None:
    wait_until(lambda: caught_up(daemon, target), describe=daemon.log_tail)
    time.sleep(QUIET_PERIOD_S)


# -- J70: the first sync of a folder gitops-reverser wrote -------------------------------------


def test_adopting_a_gitops_reverser_folder_keeps_live_files_as_they_are_and_deletes_the_gone(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    seed_folder: Seed,
    daemon: Reverserd,
    cleanup: Cleanup,
) -> None:
    ns = namespace
    create_many(
        control_plane,
        [
            configmap(
                ns,
                "settings",
                {"enabled": "yes", "port": "8080", "empty": "", "text": "first\nsecond\n"},
            ),
            configmap(ns, "plain", {"colour": "blue"}),
            configmap(ns, "changed", {"v": "2"}),
            # Published into every namespace by the cluster; never mirrored, always present.
            configmap(ns, "kube-root-ca.crt", {"ca.crt": "-----BEGIN CERTIFICATE-----\n"}),
        ],
        "configmaps",
    )
    create_many(
        control_plane,
        [
            secret(ns, "db", {"password": "hunter2"}),
            secret(ns, "sh.helm.release.v1.web.v1", {"release": "H4sI"}, "helm.sh/release.v1"),
        ],
        "secrets",
    )
    create_many(control_plane, [deployment(ns, "web")], "deployments")

    def old(kind: str, name: str) -> bytes:
        return old_operator_file(sanitized(live_object(control_plane, kind, ns, name)))

    stale = sanitized(live_object(control_plane, "configmap", ns, "changed"))
    stale["data"] = {"v": "1"}
    deployments = f"{FOLDER}/apps/v1/deployments/{ns}"
    secrets = f"{FOLDER}/v1/secrets/{ns}"
    seeded = {
        cm_path(ns, "settings"): old("configmap", "settings"),
        cm_path(ns, "plain"): old("configmap", "plain"),
        cm_path(ns, "changed"): old_operator_file(stale),
        cm_path(ns, "kube-root-ca.crt"): old("configmap", "kube-root-ca.crt"),
        # An object deleted from the cluster long ago.
        cm_path(ns, "retired"): old_operator_file(configmap(ns, "retired", {"v": "0"})),
        f"{secrets}/db.sops.yaml": sops_file(ns, "db", "Opaque", ["password"]),
        f"{secrets}/sh.helm.release.v1.web.v1.sops.yaml": sops_file(
            ns, "sh.helm.release.v1.web.v1", "helm.sh/release.v1", ["release"]
        ),
        f"{deployments}/web.yaml": old("deployment", "web"),
        # Edited by hand: without a namespace it names no object in particular.
        f"{deployments}/legacy.yaml": old_operator_file(deployment(None, "legacy")),
        f"{FOLDER}/README.md": b"# Production mirror\n\nWritten by gitops-reverser until 2026.\n",
        f"{FOLDER}/notes/ops.md": b"Rotate the db password every quarter.\n",
        f"{FOLDER}/notes/owners.yaml": b"owners:\n- team-a\n",
    }
    assert b'enabled: "yes"' in seeded[cm_path(ns, "settings")]
    assert b"namespace" not in seeded[f"{deployments}/legacy.yaml"]
    seed_sha = seed_folder(seeded)

    rule = f"adopt-{uuid.uuid4().hex[:8]}"
    cleanup.cluster_objects.append(("clusterwatchrule", rule))
    apply(
        control_plane,
        *mirror_setup(
            ns, remote.url, secret=remote.secret, rules=[{"resources": ["configmaps", "secrets"]}]
        ),
        cluster_watch_rule(
            rule,
            ns,
            "mirror",
            [{"scope": "Namespaced", "apiGroups": ["apps"], "resources": ["deployments"]}],
        ),
    )
    target = f"{ns}/mirror"
    daemon.start()
    wait_synced(control_plane, ns, daemon=daemon)
    wait_caught_up(daemon, target)

    files = tree(remote.path)
    gone = cm_path(ns, "retired")
    rewritten = cm_path(ns, "changed")
    assert gone not in files
    for path, content in seeded.items():
        if path in (gone, rewritten):
            continue
        assert files.get(path) == content, f"{path} changed:\n{files.get(path)!r}"
    assert yaml.safe_load(files[rewritten]) == sanitized(
        live_object(control_plane, "configmap", ns, "changed")
    )

    # One reconcile commit, touching only the file that differed and the gone object's file
    # among the seeded ones; it also creates the files of other namespaces' Deployments.
    history = reconcile_commits(remote.path)
    assert str(log(remote.path, "main")[-1].sha) == seed_sha
    assert len(history) == 2, [h[0] for h in history]
    subject, body, paths = history[1]
    assert subject.startswith("reconcile: sync ")
    assert paths & set(seeded) == {gone, rewritten}
    created = paths - set(seeded)
    assert all(p.startswith(f"{FOLDER}/apps/v1/deployments/") for p in created), created
    assert counts(body) == {"adopted": 3, "created": len(created), "updated": 1, "deleted": 1}

    # Adopted files are recorded as written: a restart rewrites none of them...
    recorded = {row[0] for row in query_journal(daemon, "SELECT path FROM target_files")}
    assert {cm_path(ns, "settings"), cm_path(ns, "plain"), f"{deployments}/web.yaml"} <= recorded
    tip = branch_tip(remote.path, "main")
    daemon.stop()
    daemon.start()
    wait_caught_up(daemon, target)
    assert branch_tip(remote.path, "main") == tip, subjects(remote.path)

    # ...and a real change of the object rewrites its file in reverserd's own format.
    merge_patch(control_plane, "configmap", ns, "settings", {"data": {"port": "9090"}})
    wait_for_subjects(remote.path, daemon, f"[UPDATE] v1/configmaps/{ns}/settings")
    updated = tree(remote.path)[cm_path(ns, "settings")]
    assert yaml.safe_load(updated) == sanitized(
        live_object(control_plane, "configmap", ns, "settings")
    )
    assert b"enabled: 'yes'" in updated
    assert tree(remote.path)[cm_path(ns, "plain")] == seeded[cm_path(ns, "plain")]


# -- operations without CREATE ----------------------------------------------------------------


def test_rules_that_take_only_deletions_keep_files_of_present_objects(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    seed_folder: Seed,
    daemon: Reverserd,
) -> None:
    ns = namespace
    create_many(control_plane, [configmap(ns, "kept", {"v": "2"})], "configmaps")
    kept = old_operator_file(configmap(ns, "kept", {"v": "1"}))
    seeded = {
        cm_path(ns, "kept"): kept,
        cm_path(ns, "retired"): old_operator_file(configmap(ns, "retired")),
    }
    seed_folder(seeded)
    rules = [{"resources": ["configmaps"], "operations": ["DELETE"]}]
    apply(control_plane, *mirror_setup(ns, remote.url, secret=remote.secret, rules=rules))
    daemon.start()
    wait_synced(control_plane, ns, daemon=daemon)
    wait_caught_up(daemon, f"{ns}/mirror")

    files = tree(remote.path)
    assert files.get(cm_path(ns, "kept")) == kept
    assert cm_path(ns, "retired") not in files
    [(_, body, paths)] = reconcile_commits(remote.path)[1:]
    assert paths == {cm_path(ns, "retired"), f"{FOLDER}/README.md"}
    assert counts(body) == {"adopted": 0, "created": 0, "updated": 0, "deleted": 1}

    # The deletion the rules take removes the file its content names.
    control_plane.kubectl("delete", "configmap", "kept", "-n", ns)
    wait_for_subjects(remote.path, daemon, f"[DELETE] v1/configmaps/{ns}/kept")
    assert cm_path(ns, "kept") not in tree(remote.path)


# -- a snapshot right after a restart ---------------------------------------------------------


def test_a_snapshot_right_after_a_restart_judges_by_the_current_cluster(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    seed_folder: Seed,
    daemon: Reverserd,
) -> None:
    ns = namespace
    # The rule makes the daemon watch and journal configmaps before its target exists.
    apply(control_plane, watch_rule(ns, "mirror", "mirror", [{"resources": ["configmaps"]}]))
    create_many(control_plane, [configmap(ns, "doomed"), configmap(ns, "steady")], "configmaps")
    daemon.start()
    stream = f"v1/configmaps@{ns}"

    def seeded_with_both() -> bool:
        rows = query_journal(daemon, "SELECT seed_state FROM streams WHERE stream = ?", (stream,))
        names = query_journal(
            daemon, "SELECT name FROM objects WHERE namespace = ? ORDER BY name", (ns,)
        )
        return rows == [("complete",)] and names == [("doomed",), ("steady",)]

    wait_until(seeded_with_both, describe=daemon.log_tail)
    daemon.stop()

    # While it is down: one object is born, one dies, and the folder (written by the earlier
    # mirror, which saw both changes) gets its target.
    create_many(control_plane, [configmap(ns, "born")], "configmaps")
    control_plane.kubectl("delete", "configmap", "doomed", "-n", ns)
    seeded = {
        cm_path(ns, name): old_operator_file(configmap(ns, name))
        for name in ("born", "doomed", "steady")
    }
    seed_folder(seeded)
    apply(
        control_plane,
        git_provider(ns, "mirror", remote.url, secret=remote.secret),
        git_target(ns, "mirror", "mirror", FOLDER),
    )
    daemon.start()
    wait_synced(control_plane, ns, daemon=daemon)
    wait_caught_up(daemon, f"{ns}/mirror")

    # One reconcile commit that deletes the dead object's file and nothing else: no file of a
    # live object was deleted on the way, none rewritten afterwards.
    history = reconcile_commits(remote.path)[1:]
    assert [(s, p) for s, _, p in history] == [
        ("reconcile: sync 2 resources", {cm_path(ns, "doomed"), f"{FOLDER}/README.md"})
    ]
    assert counts(history[0][1]) == {"adopted": 2, "created": 0, "updated": 0, "deleted": 1}
    files = tree(remote.path)
    assert files[cm_path(ns, "born")] == seeded[cm_path(ns, "born")]
    assert files[cm_path(ns, "steady")] == seeded[cm_path(ns, "steady")]


# -- item: a resumed watch proves itself current ----------------------------------------------


@pytest.mark.parametrize(
    "rtype",
    [
        ResourceType("", "v1", "configmaps", "ConfigMap", namespaced=True),
        # Served without the watch cache in the test bed: straight from etcd.
        ResourceType("", "v1", WATCH_CACHE_OFF_RESOURCE, "PodTemplate", namespaced=True),
    ],
    ids=lambda rtype: rtype.resource,
)
def test_a_resumed_watch_counts_as_seeded_only_once_it_has_caught_up(
    control_plane: ControlPlane, namespace: str, tmp_path: Path, rtype: ResourceType
) -> None:
    def item(name: str) -> dict[str, Any]:
        if rtype.resource == "configmaps":
            return configmap(namespace, name)
        return {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": name, "namespace": namespace},
            "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}},
        }

    create_many(control_plane, [item("before")], rtype.resource)
    asyncio.run(_resume_watch(control_plane, namespace, tmp_path, rtype, item))


async def _resume_watch(
    plane: ControlPlane,
    namespace: str,
    state_dir: Path,
    rtype: ResourceType,
    item: Callable[[str], dict[str, Any]],
) -> None:
    stream = StreamSpec(rtype, namespace)
    client = await KubeClient.connect(plane.daemon_kubeconfig)
    writer = await JournalWriter.open(state_dir)
    writing = asyncio.create_task(writer.run())
    reader = await JournalReader.open(state_dir)
    try:
        first = StreamWatcher(client, writer, stream, ReadAheadBudget(READ_AHEAD_BYTES))
        watching = asyncio.create_task(first.run())
        await _until(lambda: first.current, CATCH_UP_LIMIT_S)
        assert first.state is SeedState.COMPLETE
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)

        # A change while no process watches; the next one resumes from the journal.
        await asyncio.to_thread(create_many, plane, [item("while-down")], rtype.resource)
        second = StreamWatcher(client, writer, stream, ReadAheadBudget(READ_AHEAD_BYTES))
        watching = asyncio.create_task(second.run())
        await _until(lambda: second.state is SeedState.COMPLETE, 10)
        assert not second.current, "the seed of an earlier process counted as current"
        started = time.monotonic()
        await _until(lambda: second.current, CATCH_UP_LIMIT_S)
        took = time.monotonic() - started
        objects = await current_objects(reader, [(rtype.group, rtype.resource)])
        names = {o.key.name for o in objects if o.key.namespace == namespace}
        assert names == {"before", "while-down"}, f"current after {took:.1f} s with {names}"
        relists = await reader.streams()
        assert [row.relists for row in relists] == [0], "resumed by re-listing"
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
    finally:
        await reader.close()
        writing.cancel()
        await writer.close()
        await client.close()


async def _until(probe: Callable[[], bool], limit_s: float) -> None:
    """Poll ``probe`` often enough to see a state that lasts only a few seconds."""
    async with asyncio.timeout(limit_s):
        while True:
            if probe():
                return
            await asyncio.sleep(0.01)


# -- narrowed and widened rules ---------------------------------------------------------------


def test_narrowed_rules_keep_files_and_widened_rules_backfill_only_new_objects(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    ns = namespace
    create_many(control_plane, [configmap(ns, "app")], "configmaps")
    create_many(control_plane, [deployment(ns, "web")], "deployments")
    configmaps_only = [{"resources": ["configmaps"]}]
    apply(control_plane, *mirror_setup(ns, remote.url, secret=remote.secret, rules=configmaps_only))
    daemon.start()
    wait_synced(control_plane, ns, daemon=daemon)
    wait_caught_up(daemon, f"{ns}/mirror")
    web = f"{FOLDER}/apps/v1/deployments/{ns}/web.yaml"
    assert web not in tree(remote.path)

    widened = [{"resources": ["configmaps"]}, {"apiGroups": ["apps"], "resources": ["deployments"]}]
    apply(control_plane, watch_rule(ns, "mirror", "mirror", widened))
    wait_for_subjects(
        remote.path, daemon, "reconcile: sync 1 resources", "reconcile: sync 1 resources"
    )
    wait_caught_up(daemon, f"{ns}/mirror")
    backfill = reconcile_commits(remote.path)[-1]
    assert (backfill[0], backfill[2]) == ("reconcile: sync 1 resources", {web})
    assert counts(backfill[1]) == {"adopted": 0, "created": 1, "updated": 0, "deleted": 0}

    # Narrowed again: the Deployment's file stays, even when the Deployment goes.
    apply(control_plane, watch_rule(ns, "mirror", "mirror", configmaps_only))
    time.sleep(QUIET_PERIOD_S)
    delete_many(control_plane, [deployment(ns, "web")], "deployments")
    create_many(control_plane, [configmap(ns, "later")], "configmaps")
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{ns}/later")
    wait_caught_up(daemon, f"{ns}/mirror")
    assert web in tree(remote.path)
    assert not [s for s in subjects(remote.path) if "deployments" in s]
