"""Tenants stay apart (DESIGN invariant 9, SPEC 9): each test is one attack, tried as a tenant
would try it on the real test bed, from one namespace on another.

Each asserts what the victim cares about: its Secret was never read (the API server's audit
log holds every access the daemon made to Secrets), no credential reached the attacker's Git
server (a server that asks every client for a password and records what it gets), the
victim's folder and history are untouched, its mirror keeps working, and the daemon stays
healthy.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from testbed.controlplane import DAEMON_USER, ControlPlane, ensure_binaries
from testbed.credential_trap import CredentialTrap
from testbed.gitservers import GitHttpServer, install_hook
from testbed.harness import (
    CONVERGE_TIMEOUT_S,
    Reverserd,
    apply,
    conditions,
    create_git_credentials,
    create_namespace,
    delete_mirror_resources,
    get_object,
    history,
    resource_status,
    subjects,
    tree,
    wait_condition,
    wait_for_subjects,
    wait_synced,
    wait_target_refused,
    wait_until,
)
from testbed.manifests import (
    CONFIGBUTLER_API,
    cluster_watch_rule,
    configmap,
    git_provider,
    git_target,
    mirror_setup,
    secret,
    watch_rule,
)
from tests.conftest import Cleanup, Remote
from tests.unit.test_hostile_config import CORPUS

# Every access to a Secret, by anyone, with who and which; nothing else is audited.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  resources:
  - group: ""
    resources: ["secrets"]
- level: None
"""
# The victim's Secret no provider of the victim uses: any access to it is the attack working.
VICTIM_TOKEN = "deploy-token"
VICTIM_PASSWORD = "victim-password-8d1f"
RBAC_GROUP = "rbac.authorization.k8s.io"
# Corpus objects the schema lets through, so that reverserd's own validation is what answers.
MIN_ADMITTED_CORPUS = 15
# The journal's lag bound in the busy-neighbour test, and the busy target's changes: three
# times the bound superseded, so a pinned journal cannot pass for a bounded one.
LAG_BOUND = 40
BUSY_OBJECTS = 3 * LAG_BOUND


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """This module's own control plane, auditing every Secret access to a file."""
    ensure_binaries()
    workdir = tmp_path_factory.mktemp("audited-controlplane")
    policy = workdir / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    plane = ControlPlane(workdir, audit_policy=policy, audit_log=workdir / "audit.log")
    try:
        yield plane.start()
    finally:
        plane.stop()


@pytest.fixture
def trap() -> Iterator[CredentialTrap]:
    with CredentialTrap() as server:
        yield server


@pytest.fixture
def attacker(control_plane: ControlPlane) -> Iterator[str]:
    name = create_namespace(control_plane, "attacker")
    yield name
    delete_mirror_resources(control_plane, name)


@dataclass
class Scene:
    """A victim namespace mirroring into its repository, and an attacker's namespace and server."""

    plane: ControlPlane
    victim: str
    remote: Remote
    daemon: Reverserd
    attacker: str
    trap: CredentialTrap
    before: list[str] = field(default_factory=list)
    """The victim's history before the attack."""

    def assert_unharmed(self, name: str) -> None:
        """Whatever the attacker tried: the victim's Secret was never touched, no credential
        reached the attacker's server, the victim's history and folder are intact, and its
        mirror still works (a new ConfigMap ``name`` arrives as its own commit)."""
        apply(self.plane, configmap(self.attacker, f"planted-{name}"))
        apply(self.plane, configmap(self.victim, name))
        wait_for_subjects(
            self.remote.path, self.daemon, f"[CREATE] v1/configmaps/{self.victim}/{name}"
        )
        assert self.daemon.get("/healthz") is not None
        assert daemon_secret_accesses(self.plane, self.victim, VICTIM_TOKEN) == []
        assert self.trap.credentials_received == []
        assert set(self.before) <= {entry.sha for entry in history(self.remote.path)}
        for path in tree(self.remote.path):
            assert path.startswith("live-cluster/"), path
            if path.startswith("live-cluster/v1/configmaps/"):
                assert path.split("/")[3] == self.victim, path


@pytest.fixture
def scene(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    attacker: str,
    trap: CredentialTrap,
) -> Scene:
    """The victim's working mirror, synced, with a Secret it never uses, before any attack."""
    apply(
        control_plane,
        secret(namespace, VICTIM_TOKEN, {"username": "ci", "password": VICTIM_PASSWORD}),
        *mirror_setup(namespace, remote.url, secret=remote.secret),
    )
    daemon.start()
    wait_synced(control_plane, namespace, daemon=daemon)
    apply(control_plane, configmap(namespace, "before-attack"))
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{namespace}/before-attack")
    before = [entry.sha for entry in history(remote.path)]
    return Scene(control_plane, namespace, remote, daemon, attacker, trap, before)


def role(namespace: str, name: str) -> dict[str, Any]:
    """An RBAC Role granting nothing: RBAC names may hold almost any character."""
    metadata = {"name": name, "namespace": namespace}
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "Role", "metadata": metadata, "rules": []}


def daemon_secret_accesses(plane: ControlPlane, namespace: str, name: str) -> list[str]:
    """The verbs of every request the daemon made for Secret ``namespace/name``."""
    assert plane.audit_log is not None
    verbs = []
    for line in plane.audit_log.read_text().splitlines():
        event: dict[str, Any] = json.loads(line)
        ref = event.get("objectRef") or {}
        if (
            event.get("user", {}).get("username") == DAEMON_USER
            and ref.get("resource") == "secrets"
            and ref.get("namespace") == namespace
            and ref.get("name") == name
        ):
            verbs.append(str(event.get("verb")))
    return verbs


def hostile_reference(field: str, scene: Scene) -> dict[str, Any]:
    """A custom resource of the attacker whose ``field`` climbs into the victim's namespace."""
    victim, attacker = scene.victim, scene.attacker
    climb = f"../../{victim}/secrets/{VICTIM_TOKEN}"
    if field == "provider secretRef":
        return git_provider(attacker, "grab", scene.trap.url("loot"), secret=climb)
    if field == "target providerRef":
        return git_target(attacker, "grab", f"../../{victim}/gitproviders/mirror", "x")
    if field == "rule targetRef":
        rules = [{"resources": ["configmaps"]}]
        return watch_rule(attacker, "grab", f"../../{victim}/gittargets/mirror", rules)
    target = git_target(attacker, "grab", "grab", "x")
    target["spec"]["encryption"] = {
        "provider": "sops",
        "secretRef": {"name": climb},
        "age": {"enabled": True, "recipients": {"generateWhenMissing": True}},
    }
    return target


@pytest.mark.parametrize(
    "field",
    ["provider secretRef", "target providerRef", "encryption secretRef", "rule targetRef"],
)
def test_reference_climbing_into_another_namespace_is_refused_and_reads_nothing(
    scene: Scene, field: str
) -> None:
    hostile = hostile_reference(field, scene)
    # The schema refuses it: the API server stores nothing the daemon could act on.
    with pytest.raises(RuntimeError, match="should match"):
        scene.plane.kubectl("apply", "-f", "-", stdin=json.dumps(hostile))
    scene.assert_unharmed("after-climb")


def test_attacker_server_never_receives_a_credential(scene: Scene) -> None:
    """A provider of the attacker's own, pointing at the attacker's server, gets no password."""
    apply(scene.plane, *mirror_setup(scene.attacker, scene.trap.url("loot"), name="grab"))
    wait_condition(scene.plane, "gitprovider", scene.attacker, "grab", "Ready", "False")
    assert scene.trap.requests, "the daemon never contacted the attacker's server"
    scene.assert_unharmed("still-here")


@pytest.mark.parametrize("spelling", ["trailing slash", "path case"])
def test_same_repository_respelled_from_another_namespace_is_a_conflict(
    scene: Scene, spelling: str
) -> None:
    """A credential-less provider naming the victim's repository in another spelling (a host
    that ignores path case serves ``/Team-A/Platform`` as ``/team-a/platform``) gets
    ``Conflict`` naming the namespace that proved it can write there; it neither pushes with
    the victim's credentials nor stops the victim, during the attack or after the attacker's
    resources are gone."""
    url = scene.remote.url
    scheme_host, _, path = url.partition("://")[2].partition("/")
    respelled = {
        "trailing slash": url + "/",
        "path case": f"{url.partition('://')[0]}://{scheme_host}/{path.upper()}",
    }[spelling]
    apply(scene.plane, *mirror_setup(scene.attacker, respelled, path="attacker", name="grab"))
    validated = wait_target_refused(scene.plane, scene.attacker, "grab", "Conflict")
    assert f"owned by namespace {scene.victim!r}" in validated["message"]
    scene.assert_unharmed("during-attack")
    delete_mirror_resources(scene.plane, scene.attacker)
    scene.assert_unharmed("after-attack")


def test_squatter_before_the_victim_neither_blocks_nor_writes(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    attacker: str,
    git_http: GitHttpServer,
) -> None:
    """The attacker names the victim's repository and branch first, with credentials that
    cannot push: the victim, arriving later, proves it can write and gets the branch; the
    squatter's older target is refused and nothing of it reaches the branch."""
    junk = create_git_credentials(control_plane, attacker, git_http, password="not-the-password")
    apply(control_plane, configmap(attacker, "squatted"))
    apply(control_plane, *mirror_setup(attacker, remote.url, path="squat", secret=junk))
    daemon.start()
    wait_condition(control_plane, "gitprovider", attacker, "mirror", "Ready", "False")
    # Creation times have a resolution of one second: the victim's target is the later one.
    time.sleep(1.1)
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    wait_synced(control_plane, namespace, daemon=daemon)
    validated = wait_target_refused(control_plane, attacker, "mirror", "Conflict")
    assert f"owned by namespace {namespace!r}" in validated["message"]
    assert "cannot write it" in validated["message"]
    apply(control_plane, configmap(namespace, "after-squat"))
    wait_for_subjects(remote.path, daemon, f"[CREATE] v1/configmaps/{namespace}/after-squat")
    assert not [path for path in tree(remote.path) if not path.startswith("live-cluster/")]


def test_squatter_older_than_the_victims_re_created_target_does_not_take_over(
    scene: Scene, git_http: GitHttpServer
) -> None:
    """The victim's GitTarget is deleted while the daemon is down and re-created later (a Helm
    or Argo replace); a squatter created meanwhile is first the only target on the branch and
    then the older one: the branch stays with the namespace that proved it can write it (the
    journal keeps the owner), and the squatter never gets the victim's clone or its unpushed
    commits."""
    scene.daemon.stop()
    scene.plane.kubectl("delete", "gittarget", "mirror", "-n", scene.victim, "--wait=true")
    # The squatter arrives while nobody is there to contest it: only the victim's earlier
    # pushes, recorded in the journal, say whose branch this is.
    junk = create_git_credentials(scene.plane, scene.attacker, git_http, password="wrong")
    apply(
        scene.plane,
        *mirror_setup(scene.attacker, scene.remote.url, path="squat", secret=junk, name="grab"),
    )
    scene.daemon.start()
    generation = get_object(scene.plane, "gittarget", scene.attacker, "grab")["metadata"][
        "generation"
    ]

    def decided() -> dict[str, Any] | None:
        found = conditions(scene.plane, "gittarget", scene.attacker, "grab").get("Validated")
        return found if found and found.get("observedGeneration") == generation else None

    alone = wait_until(decided)
    assert (alone["status"], alone["reason"]) == ("False", "Conflict"), alone
    assert f"owned by namespace {scene.victim!r}" in alone["message"]
    victim_target = mirror_setup(scene.victim, scene.remote.url, secret=scene.remote.secret)[1]
    apply(scene.plane, victim_target)
    wait_synced(scene.plane, scene.victim, daemon=scene.daemon)
    validated = wait_target_refused(scene.plane, scene.attacker, "grab", "Conflict")
    assert f"owned by namespace {scene.victim!r}" in validated["message"]
    scene.assert_unharmed("after-re-creation")
    assert not [path for path in tree(scene.remote.path) if path.startswith("squat")]


def superseded_events(state_dir: Path) -> int:
    """Journal events no object points at: what compaction may remove (read while it runs)."""
    with sqlite3.connect(f"file:{state_dir / 'journal.db'}?mode=ro", uri=True) as journal:
        query = "SELECT COUNT(*) FROM events WHERE seq NOT IN (SELECT seq FROM objects)"
        return int(journal.execute(query).fetchone()[0])


def test_target_whose_pushes_always_fail_does_not_pin_the_journal(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    git_http: GitHttpServer,
    git_repo_name: str,
    cleanup: Cleanup,
    tmp_path: Path,
) -> None:
    """Next to a busy target, a target whose pushes are refused from some point on (a revoked
    token, a protection rule) keeps the lowest cursor; beyond the lag bound it no longer holds
    back compaction (its cursor is detached at start-up, events go at the next compaction):
    the journal stays bounded. When its pushes work again, it says it re-syncs and converges
    on the latest state of its namespace."""
    stuck = cleanup.new_namespace()
    stuck_repo = git_http.create_bare_repo(git_repo_name + "-stuck")
    stuck_secret = create_git_credentials(control_plane, stuck, git_http)
    apply(control_plane, configmap(stuck, "changed"), configmap(stuck, "gone"))
    apply(
        control_plane,
        *mirror_setup(namespace, remote.url, secret=remote.secret),
        *mirror_setup(stuck, git_http.url(git_repo_name + "-stuck"), secret=stuck_secret),
    )
    daemon = Reverserd(
        control_plane, tmp_path / "state", ["--journal-max-lag-events", str(LAG_BOUND)]
    )
    try:
        daemon.start()
        wait_synced(control_plane, namespace, daemon=daemon)
        wait_synced(control_plane, stuck, daemon=daemon)
        hook = install_hook(stuck_repo, "pre-receive", "#!/bin/sh\necho revoked >&2\nexit 1\n")
        apply(control_plane, configmap(stuck, "changed", {"key": "while-refused"}))
        wait_condition(control_plane, "gittarget", stuck, "mirror", "Pushing", "False")
        names = [f"bulk-{i}" for i in range(BUSY_OBJECTS)]
        apply(control_plane, *(configmap(namespace, name) for name in names))
        apply(control_plane, *(configmap(namespace, n, {"key": "again"}) for n in names))
        wait_for_subjects(remote.path, daemon, f"[UPDATE] v1/configmaps/{namespace}/{names[-1]}")
        daemon.stop()
        control_plane.kubectl("delete", "configmap", "gone", "-n", stuck)
        daemon.start()
        # Compaction runs every minute; the floor moved at start-up already (below).
        wait_until(
            lambda: superseded_events(daemon.state_dir) <= LAG_BOUND,
            timeout=2 * CONVERGE_TIMEOUT_S,
            describe=lambda: f"{superseded_events(daemon.state_dir)} superseded events kept",
        )
        resync = wait_condition(
            control_plane, "gittarget", stuck, "mirror", "SnapshotSynced", "False", "Resyncing"
        )
        assert "lag bound" in resync["message"]
        hook.unlink()
        folder = f"live-cluster/v1/configmaps/{stuck}"
        wait_until(
            lambda: (
                f"{folder}/gone.yaml" not in tree(stuck_repo)
                and b"while-refused" in tree(stuck_repo).get(f"{folder}/changed.yaml", b"")
            ),
            timeout=2 * CONVERGE_TIMEOUT_S,
            describe=lambda: str(sorted(tree(stuck_repo))),
        )
        wait_synced(control_plane, stuck, daemon=daemon)
        # The first sync, and the re-sync that deleted the file of the object gone meanwhile.
        assert sum(s.startswith("reconcile: ") for s in subjects(stuck_repo)) == 2
    finally:
        daemon.ensure_stopped()
        delete_mirror_resources(control_plane, namespace)
        delete_mirror_resources(control_plane, stuck)


def test_with_local_remotes_allowed_the_state_dir_is_still_out_of_reach(
    control_plane: ControlPlane,
    namespace: str,
    git_http: GitHttpServer,
    git_repo_name: str,
    attacker: str,
    tmp_path: Path,
) -> None:
    """The demo and tests may allow local remotes; even then no URL may point into the state
    dir (the journal and every target's clone), while a local bare repository elsewhere works."""
    daemon = Reverserd(control_plane, tmp_path / "state", ["--allow-local-remotes"])
    local = git_http.create_bare_repo(git_repo_name)
    apply(control_plane, *mirror_setup(namespace, f"file://{local}"))
    try:
        daemon.start()
        wait_synced(control_plane, namespace, daemon=daemon)
        clone = next((tmp_path / "state" / "repos").iterdir())
        apply(control_plane, *mirror_setup(attacker, str(clone), path="attacker", name="grab"))
        ready = wait_condition(
            control_plane,
            "gitprovider",
            attacker,
            "grab",
            "Ready",
            "False",
            "LocalRemoteNotAllowed",
        )
        assert "state directory" in ready["message"]
        apply(control_plane, configmap(namespace, "local-ok"))
        wait_for_subjects(local, daemon, f"[CREATE] v1/configmaps/{namespace}/local-ok")
    finally:
        daemon.ensure_stopped()


def test_pathological_branch_glob_does_not_slow_the_daemon(scene: Scene) -> None:
    url = scene.trap.url("slow")
    provider = git_provider(scene.attacker, "slow", url, branches=["a*" * 100 + "b"])
    target = git_target(scene.attacker, "slow", "slow", "x", branch="a" * 250)
    apply(scene.plane, provider, target)
    # Matched in linear steps (tests/unit/test_hostile_config.py counts them; its time is
    # measured by bench/branch_glob.py): the daemon refuses it and goes on.
    wait_target_refused(scene.plane, scene.attacker, "slow", "BranchNotAllowed")
    scene.assert_unharmed("not-slowed")


def test_password_in_a_url_is_masked_in_status_logs_and_metrics(scene: Scene) -> None:
    secret_word = "hunter2-url-password"
    spellings = {
        "masked": scene.trap.url("masked").replace("http://", f"http://mallory:{secret_word}@"),
        "query": f"{scene.trap.url('query')}?private_token={secret_word}",
        "scp": f"mallory:{secret_word}@127.0.0.1:team/repo.git",
    }
    for name, url in spellings.items():
        apply(scene.plane, *mirror_setup(scene.attacker, url, name=name, path=name))
    for name in spellings:
        wait_condition(scene.plane, "gitprovider", scene.attacker, name, "Ready", "False")
    # Checked once the daemon has logged about the first provider's repository.
    where = scene.trap.url("masked").split("://", 1)[1]
    wait_until(
        lambda: where in scene.daemon.log_path.read_text(errors="replace"),
        describe=scene.daemon.log_tail,
    )
    shown = [
        *(
            json.dumps(resource_status(scene.plane, kind, scene.attacker, name))
            for kind in ("gitprovider", "gittarget")
            for name in spellings
        ),
        json.dumps(scene.daemon.status()),
        (scene.daemon.get("/") or b"").decode(),
        (scene.daemon.get("/metrics") or b"").decode(),
        scene.daemon.log_path.read_text(errors="replace"),
    ]
    for text in shown:
        assert secret_word not in text


def test_names_that_would_inject_commit_lines_or_reach_git_metadata_are_quarantined(
    scene: Scene, git_http: GitHttpServer, git_repo_name: str
) -> None:
    """RBAC names may hold newlines and dots: a Role named ``reader\\nuser: system:admin``
    would add a forged ``user:`` line to its commit, and ``.GIT`` would write into Git's own
    metadata on a case-insensitive checkout. Both are quarantined; the Role next to them and
    the victim's mirror flow on."""
    own = git_http.create_bare_repo(f"{git_repo_name}-own")
    secret = create_git_credentials(scene.plane, scene.attacker, git_http)
    roles = [{"apiGroups": [RBAC_GROUP], "resources": ["roles"]}]
    url = git_http.url(f"{git_repo_name}-own")
    apply(scene.plane, *mirror_setup(scene.attacker, url, secret=secret, rules=roles, name="own"))
    wait_synced(scene.plane, scene.attacker, "own", daemon=scene.daemon)
    hostile = ["reader\nuser: system:admin", ".GIT", "tab\tname"]
    apply(scene.plane, *(role(scene.attacker, name) for name in [*hostile, "normal"]))
    normal = f"[CREATE] {RBAC_GROUP}/v1/roles/{scene.attacker}/normal"
    wait_for_subjects(own, scene.daemon, normal)
    held = wait_condition(scene.plane, "gittarget", scene.attacker, "own", "Quarantined", "True")
    assert held["message"].startswith(f"{len(hostile)} object(s)"), held
    for entry in history(own):
        assert "system:admin" not in entry.subject + entry.body, entry
    assert not any(".git" in path.lower() for path in tree(own)), tree(own)
    scene.assert_unharmed("beside-injection")


@pytest.mark.parametrize(
    ("kind", "name", "spec_change", "condition", "reason"),
    [
        ("gitprovider", "ftp", {"url": "ftp://127.0.0.1/repo.git"}, "Ready", "InvalidURL"),
        ("gitprovider", "glob", {"allowedBranches": ["[main"]}, "Ready", "InvalidSpec"),
        ("gittarget", "dotdot", {"path": "../victim"}, "Validated", "InvalidPath"),
        ("gittarget", "dotgit", {"path": "a/.Git/hooks"}, "Validated", "InvalidPath"),
        ("gittarget", "branch", {"branch": "a..b"}, "Validated", "InvalidBranch"),
        ("gittarget", "other", {"branch": "release"}, "Validated", "BranchNotAllowed"),
    ],
)
def test_object_the_schema_admits_still_gets_its_condition(
    scene: Scene,
    kind: str,
    name: str,
    spec_change: dict[str, Any],
    condition: str,
    reason: str,
) -> None:
    provider, target, rule = mirror_setup(scene.attacker, scene.trap.url(name), name=name)
    (provider if kind == "gitprovider" else target)["spec"].update(spec_change)
    apply(scene.plane, provider, target, rule)
    wait_condition(scene.plane, kind, scene.attacker, name, condition, "False", reason)
    scene.assert_unharmed(f"beside-{name}")


@pytest.mark.parametrize(
    ("verb", "resource", "namespace"),
    [
        ("get", "nodes/proxy", None),
        ("get", "services/proxy", "default"),
        ("get", "pods/log", "default"),
        ("get", "pods/exec", "default"),
        ("create", "pods/exec", "default"),
        ("get", "configmaps", "default"),
        ("update", "secrets", "default"),
        ("delete", "secrets", "default"),
        ("update", "gittargets.configbutler.ai", "default"),
        ("create", "leases.coordination.k8s.io", "kube-system"),
        ("create", "events", "default"),
    ],
)
def test_daemon_identity_cannot(
    control_plane: ControlPlane, verb: str, resource: str, namespace: str | None
) -> None:
    """What the daemon's own credentials are refused, asked of the API server itself."""
    scope = ["-n", namespace] if namespace else []
    assert can_i(control_plane, verb, resource, *scope) == "no"


@pytest.mark.parametrize(
    ("verb", "resource"),
    [
        ("list", "configmaps"),
        ("watch", "nodes"),
        ("get", "secrets"),
        ("patch", "gittargets.configbutler.ai/status"),
    ],
)
def test_daemon_identity_can_what_it_uses(
    control_plane: ControlPlane, verb: str, resource: str
) -> None:
    assert can_i(control_plane, verb, resource, "-n", "default") == "yes"


def can_i(plane: ControlPlane, verb: str, resource: str, *scope: str) -> str:
    """The API server's answer whether the daemon may ``verb`` ``resource[/subresource]``."""
    kind, _, subresource = resource.partition("/")
    extra = [f"--subresource={subresource}"] if subresource else []
    answer = plane.kubectl(
        "auth", "can-i", verb, kind, *extra, f"--as={DAEMON_USER}", *scope, check=False
    )
    return answer.strip()


def test_malformed_corpus_is_refused_by_the_schema_or_gets_its_condition(
    control_plane: ControlPlane, namespace: str, daemon: Reverserd, cleanup: Cleanup
) -> None:
    """Every object of the malformed corpus, sent to the real API server: either the CRD schema
    refuses it at admission, or reverserd gives it the condition the corpus names; the daemon
    stays healthy throughout."""
    apply(control_plane, git_provider(namespace, "repo", "https://git.example.com/team/repo"))
    admitted: list[tuple[str, str, str, str, str]] = []
    for index, (_, body, condition, reason) in enumerate(CORPUS):
        manifest = copy.deepcopy(body)
        name = f"corpus-{index}"
        manifest["apiVersion"] = CONFIGBUTLER_API
        manifest["metadata"] = {"name": name}
        if body["kind"] == "ClusterWatchRule":
            cleanup.cluster_objects.append(("clusterwatchrule", name))
        else:
            manifest["metadata"]["namespace"] = namespace
        try:
            control_plane.kubectl("create", "-f", "-", stdin=json.dumps(manifest))
        except RuntimeError as refused:
            assert "Invalid value" in str(refused) or "invalid" in str(refused), refused
            continue
        scope = "" if body["kind"] == "ClusterWatchRule" else namespace
        admitted.append((body["kind"].lower(), scope, name, condition, reason))
    assert len(admitted) >= MIN_ADMITTED_CORPUS
    # The corpus expects a daemon as installed: local, http and loopback remotes refused.
    daemon.allow_local_remotes = False
    daemon.start()
    for kind, scope, name, condition, reason in admitted:
        wait_condition(
            control_plane, kind, scope or None, name, condition, "False", reason, daemon=daemon
        )
    assert daemon.get("/healthz") is not None


# A tenant's user: may write reverserd's resources and read ConfigMaps in their namespace, and
# get one Secret of their own; no other Secret.
TENANT_USER = "tenant-without-secret-access"


TENANT_OWN_SECRET = "tenant-token"


def grant_tenant(plane: ControlPlane, namespace: str) -> None:
    role = {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "Role",
        "metadata": {"name": "tenant", "namespace": namespace},
        "rules": [
            {
                "apiGroups": ["configbutler.ai"],
                "resources": ["gitproviders", "gittargets", "watchrules"],
                "verbs": ["get", "list", "watch", "create", "update", "patch"],
            },
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]},
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": [TENANT_OWN_SECRET],
                "verbs": ["get"],
            },
        ],
    }
    binding = {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "tenant", "namespace": namespace},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": "tenant"},
        "subjects": [{"apiGroup": RBAC_GROUP, "kind": "User", "name": TENANT_USER}],
    }
    apply(plane, role, binding)


def apply_as(plane: ControlPlane, user: str, manifest: dict[str, Any]) -> tuple[bool, str]:
    """``kubectl apply`` of ``manifest`` as ``user`` (impersonated): (admitted, error text)."""
    result = subprocess.run(
        [
            str(plane.kubectl_path),
            f"--kubeconfig={plane.admin_kubeconfig}",
            f"--as={user}",
            "apply",
            "-f",
            "-",
        ],
        input=json.dumps(manifest),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode == 0, result.stderr


def test_what_its_creator_cannot_read_reverserd_is_never_asked_to_read(scene: Scene) -> None:
    """The confused deputy: a user who may create GitProviders but not read Secrets names the
    namespace's database password (a basic-auth Secret) as credentials of a provider whose URL
    is their own server, or mirrors the namespace's Secrets to their own key. The install's
    admission policy refuses each, as the user's own authorization decides; nothing reaches
    their server. What the user can read they may still name."""
    namespace, plane = scene.attacker, scene.plane
    grant_tenant(plane, namespace)
    database = secret(namespace, "db-admin", {"username": "admin", "password": "db-pass-5e1"})
    database["type"] = "kubernetes.io/basic-auth"
    apply(plane, database, secret(namespace, TENANT_OWN_SECRET, {"password": "own"}))
    loot = git_provider(namespace, "loot", scene.trap.url("loot"), secret="db-admin")
    admitted, error = apply_as(plane, TENANT_USER, loot)
    assert not admitted
    assert f"user {TENANT_USER} cannot get Secret db-admin in namespace {namespace}" in error
    # The signing key Secret is read just as the credentials are.
    signing = git_provider(namespace, "signs", scene.trap.url("signs"), secret=TENANT_OWN_SECRET)
    signing["spec"]["commit"] = {"signing": {"secretRef": {"name": "db-admin"}}}
    admitted, error = apply_as(plane, TENANT_USER, signing)
    assert not admitted
    assert f"user {TENANT_USER} cannot get Secret db-admin in namespace {namespace}" in error
    target = git_target(namespace, "own-key", "own", "x")
    target["spec"]["encryption"] = {
        "provider": "sops",
        "secretRef": {"name": "db-admin"},
        "age": {"enabled": True, "recipients": {"extractFromSecret": True}},
    }
    admitted, error = apply_as(plane, TENANT_USER, target)
    assert not admitted and "cannot get Secret db-admin" in error
    every_secret = watch_rule(namespace, "secrets", "own", [{"resources": ["Secrets"]}])
    admitted, error = apply_as(plane, TENANT_USER, every_secret)
    assert not admitted and "cannot list and watch" in error and "/secrets" in error
    # What the user can read, they may name: the policy decides by their rights, not by kind.
    own = git_provider(
        namespace, "own", "https://git.example.com/team/repo.git", secret=TENANT_OWN_SECRET
    )
    own["spec"]["commit"] = {"signing": {"secretRef": {"name": TENANT_OWN_SECRET}}}
    for allowed in (
        own,
        git_target(namespace, "own", "own", "x"),
        watch_rule(namespace, "own", "own", [{"resources": ["configmaps"]}]),
    ):
        admitted, error = apply_as(plane, TENANT_USER, allowed)
        assert admitted, error
    scene.assert_unharmed("after-deputy")
    assert scene.trap.requests == []


def test_cluster_watch_rule_creator_must_list_what_it_selects_in_every_namespace(
    control_plane: ControlPlane, namespace: str, cleanup: Cleanup
) -> None:
    """A ClusterWatchRule reads in every namespace: its creator must list and watch there, not
    only in one namespace where they happen to read Secrets."""
    user, name = "cluster-rule-writer", "reverserd-test-cluster-rule-writer"
    cluster_role = {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [
            {"apiGroups": ["configbutler.ai"], "resources": ["clusterwatchrules"],
             "verbs": ["get", "create"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"]},
        ],
    }  # fmt: skip
    binding = {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": RBAC_GROUP, "kind": "User", "name": user}],
    }
    local = copy.deepcopy(cluster_role)
    local.update(kind="Role", metadata={"name": name, "namespace": namespace})
    local["rules"] = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}]
    local_binding = copy.deepcopy(binding)
    local_binding.update(kind="RoleBinding", metadata={"name": name, "namespace": namespace})
    local_binding["roleRef"] = {"apiGroup": RBAC_GROUP, "kind": "Role", "name": name}
    cleanup.cluster_objects += [
        ("clusterrole", name),
        ("clusterrolebinding", name),
        ("clusterwatchrule", "every-configmap"),
    ]
    apply(control_plane, cluster_role, binding, local, local_binding)
    secrets = [{"resources": ["secrets"], "scope": "Namespaced"}]
    admitted, error = apply_as(
        control_plane, user, cluster_watch_rule("every-secret", namespace, "mirror", secrets)
    )
    assert not admitted
    assert "cannot list and watch, in all namespaces" in error and "/secrets" in error
    configmaps = [{"resources": ["configmaps"], "scope": "Namespaced"}]
    admitted, error = apply_as(
        control_plane, user, cluster_watch_rule("every-configmap", namespace, "mirror", configmaps)
    )
    assert admitted, error


def test_provider_of_another_namespace_is_never_used_even_when_the_schema_admits_the_reference(
    scene: Scene,
) -> None:
    """The attacker's target names the victim's provider by its plain name, which the CRD
    schema admits (unlike a climbing reference), and has no provider of that name in its own
    namespace. reverserd looks the provider up in the target's own namespace only: the target
    is refused, nothing is written through the victim's provider."""
    assert scene.plane.kubectl("get", "gitprovider", "mirror", "-n", scene.victim, "-o", "name")
    target = git_target(scene.attacker, "grab", "mirror", "stolen")
    rules = [{"resources": ["configmaps"]}]
    apply(scene.plane, target, watch_rule(scene.attacker, "grab", "grab", rules))
    validated = wait_condition(
        scene.plane,
        "gittarget",
        scene.attacker,
        "grab",
        "Validated",
        "False",
        "GitProviderNotFound",
    )
    assert f"not found in namespace {scene.attacker!r}" in validated["message"]
    scene.assert_unharmed("after-foreign-provider")
    assert not [path for path in tree(scene.remote.path) if "stolen" in path]


# Remotes a tenant could use to reach what only the daemon's machine or pod can, by spelling.
UNREACHABLE_SPELLINGS = {
    "file URL": ("file://{path}", "LocalRemoteNotAllowed"),
    "plain path": ("{path}", "LocalRemoteNotAllowed"),
    "plain http on loopback": ("{trap}", "InsecureRemoteNotAllowed"),
    "https on loopback": ("{trap_https}", "LocalRemoteNotAllowed"),
    "loopback as a number": ("https://2130706433:{port}/x", "LocalRemoteNotAllowed"),
    "IPv6 loopback": ("https://[::1]:{port}/x", "LocalRemoteNotAllowed"),
    "localhost": ("https://localhost:{port}/x", "LocalRemoteNotAllowed"),
    "cloud metadata": ("https://169.254.169.254/latest/meta-data", "LocalRemoteNotAllowed"),
    "plain http elsewhere": ("http://git.example.com/team/repo.git", "InsecureRemoteNotAllowed"),
}


@pytest.mark.parametrize("spelling", list(UNREACHABLE_SPELLINGS))
def test_local_insecure_and_internal_urls_are_refused_without_the_flag(
    control_plane: ControlPlane,
    remote: Remote,
    attacker: str,
    trap: CredentialTrap,
    tmp_path: Path,
    spelling: str,
) -> None:
    """The victim's bare repository is on the daemon's machine, the attacker's server on its
    loopback: naming them would get commits in without any credential, probe the pod's own
    services, or send a Secret over plain http, were such remotes allowed. Without the
    operator's opt-in, each is refused before anything connects."""
    daemon = Reverserd(control_plane, tmp_path / "state", allow_local_remotes=False)
    template, reason = UNREACHABLE_SPELLINGS[spelling]
    port = trap.url("x").split(":")[2].split("/")[0]
    url = template.format(
        path=remote.path,
        trap=trap.url("loot"),
        trap_https=trap.url("loot").replace("http://", "https://"),
        port=port,
    )
    credentials = secret(attacker, "db-admin", {"username": "admin", "password": "db-pass"})
    apply(
        control_plane,
        credentials,
        *mirror_setup(attacker, url, path="attacker", name="grab", secret="db-admin"),
    )
    try:
        daemon.start()
        ready = wait_condition(
            control_plane, "gitprovider", attacker, "grab", "Ready", "False", reason, daemon=daemon
        )
    finally:
        daemon.ensure_stopped()
    assert "--allow-local-remotes" in ready["message"]
    assert "REVERSERD_ALLOW_LOCAL_REMOTES" in ready["message"]
    assert trap.requests == []


def test_credentials_in_a_url_never_rest_on_disk(
    scene: Scene, git_http: GitHttpServer, git_repo_name: str
) -> None:
    """SECURITY.md: credentials stay in memory. A token in the URL itself (no Secret) still
    works, and no file of the state dir (clones, journal) ever holds it."""
    own = git_http.create_bare_repo(f"{git_repo_name}-embedded")
    login = f"{git_http.username}:{git_http.password}@"
    url = git_http.url(f"{git_repo_name}-embedded").replace("http://", f"http://{login}")
    apply(scene.plane, *mirror_setup(scene.attacker, url, name="embedded", path="embedded"))
    wait_synced(scene.plane, scene.attacker, name="embedded", daemon=scene.daemon)
    apply(scene.plane, configmap(scene.attacker, "pushed-with-the-url-token"))
    wait_for_subjects(
        own, scene.daemon, f"[CREATE] v1/configmaps/{scene.attacker}/pushed-with-the-url-token"
    )
    stored = [path for path in scene.daemon.state_dir.rglob("*") if path.is_file()]
    assert any(path.name == "config" for path in stored)  # the clones are there
    for path in stored:
        assert git_http.password.encode() not in path.read_bytes(), path
