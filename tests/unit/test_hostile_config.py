"""What a tenant writes into reverserd's custom resources is validated, never trusted.

The config plane's ``resolve`` is pure: it turns the informers' caches into state and desired
status. These tests feed it hostile objects, as they would be stored in the API server when
the CRD schema did not catch them (an older schema, or a field the schema cannot express), and
check the condition each one gets, that nothing raises, and that the good objects next to them
keep working.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from reverserd.committer.committer import clone_dir
from reverserd.config import model
from reverserd.config.model import (
    ConfigError,
    UrlPolicy,
    branch_glob,
    check_url,
    normalize_target_path,
    parse_target,
)
from reverserd.config.pins import RepositoryPins, parse_pins
from reverserd.config.plane import ConfigState, resolve
from reverserd.config.status import (
    MAX_MESSAGE_BYTES,
    OWNERSHIP_GRACE_S,
    BranchOwner,
    StatusBoard,
)
from reverserd.git.urls import branch_key, normalize_url
from reverserd.journal import EventKind, JournalEvent
from reverserd.kube.paths import InvalidName, api_path, secret_path
from reverserd.kube.resources import ResourceType
from reverserd.logs import JsonFormatter, TextFormatter
from reverserd.manifest.layout import UnsafePath, object_path
from reverserd.targets.planning import commit_message

GOOD_URL = "https://git.example.com/team/repo.git"
CLUSTER_ROLES = ResourceType(
    "rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False
)
CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap", True)


def _object(
    kind: str, name: str, spec: Any, namespace: str = "team-a", created: str = ""
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "generation": 1, "resourceVersion": "1"}
    if kind != "ClusterWatchRule":
        metadata["namespace"] = namespace
    if created:
        metadata["creationTimestamp"] = created
    return {"kind": kind, "metadata": metadata, "spec": spec}


def _provider(name: str = "bad", namespace: str = "team-a", **spec: Any) -> dict[str, Any]:
    return _object(
        "GitProvider", name, {"url": GOOD_URL, "allowedBranches": ["main"], **spec}, namespace
    )


def _target(
    name: str = "mirror", namespace: str = "team-a", created: str = "", **spec: Any
) -> dict[str, Any]:
    base = {"providerRef": {"name": "repo"}, "branch": "main", "path": "live"}
    return _object("GitTarget", name, {**base, **spec}, namespace, created)


def _resolve(
    *bodies: dict[str, Any],
    policy: UrlPolicy | None = None,
    board: StatusBoard | None = None,
    pins: RepositoryPins | None = None,
    cap: int = 0,
    attributed: bool = False,
) -> tuple[ConfigState, dict[tuple[str, str, str], dict[str, Any]]]:
    caches: dict[str, dict[tuple[str, str], Mapping[str, Any]]] = {
        "gitproviders": {},
        "gittargets": {},
        "watchrules": {},
        "clusterwatchrules": {},
    }
    plural = {
        "GitProvider": "gitproviders",
        "GitTarget": "gittargets",
        "WatchRule": "watchrules",
        "ClusterWatchRule": "clusterwatchrules",
    }
    for body in bodies:
        metadata = body["metadata"]
        caches[plural[body["kind"]]][(metadata.get("namespace", ""), metadata["name"])] = body
    state, desired = resolve(caches, None, board or StatusBoard(), policy, pins, cap, attributed)
    conditions = {
        (item.rtype.kind, item.namespace, item.name): {
            condition["type"]: condition for condition in item.status["conditions"]
        }
        for item in desired
    }
    return state, conditions


def _condition(
    conditions: Mapping[tuple[str, str, str], dict[str, Any]], body: dict[str, Any], kind: str
) -> dict[str, Any]:
    metadata = body["metadata"]
    return conditions[(body["kind"], metadata.get("namespace", ""), metadata["name"])][kind]


LONG = "a" * 3000
TRAVERSAL = "../../other-team/secrets/git-token"

# (what is wrong, the hostile object, the condition type, the reason it must carry)
CORPUS: list[tuple[str, dict[str, Any], str, str]] = [
    ("provider without url", _object("GitProvider", "p", {"allowedBranches": ["main"]}),
     "Ready", "InvalidSpec"),
    ("url is a number", _provider(url=123), "Ready", "InvalidSpec"),
    ("url with a newline", _provider(url="https://h/r\nx"), "Ready", "InvalidSpec"),
    ("url of 3000 characters", _provider(url="https://h/" + LONG), "Ready", "InvalidSpec"),
    ("file:// url", _provider(url="file:///srv/git/victim.git"), "Ready", "LocalRemoteNotAllowed"),
    ("plain path url", _provider(url="/srv/git/victim.git"), "Ready", "LocalRemoteNotAllowed"),
    ("relative path url", _provider(url="./victim"), "Ready", "LocalRemoteNotAllowed"),
    ("plain http url", _provider(url="http://git.example.com/r"), "Ready",
     "InsecureRemoteNotAllowed"),
    ("loopback url", _provider(url="https://127.0.0.1:3000/r"), "Ready", "LocalRemoteNotAllowed"),
    ("loopback as a number", _provider(url="https://2130706433/r"), "Ready",
     "LocalRemoteNotAllowed"),
    ("loopback short form", _provider(url="https://127.1/r"), "Ready", "LocalRemoteNotAllowed"),
    ("IPv6 loopback", _provider(url="https://[::1]/r"), "Ready", "LocalRemoteNotAllowed"),
    ("IPv4-mapped loopback", _provider(url="https://[::ffff:127.0.0.1]/r"), "Ready",
     "LocalRemoteNotAllowed"),
    ("localhost", _provider(url="https://LocalHost./r"), "Ready", "LocalRemoteNotAllowed"),
    ("cloud metadata", _provider(url="https://169.254.169.254/latest"), "Ready",
     "LocalRemoteNotAllowed"),
    ("ssh to loopback", _provider(url="ssh://git@127.0.0.1:2222/r"), "Ready",
     "LocalRemoteNotAllowed"),
    ("scp-like to loopback", _provider(url="git@[::1]:team/r"), "Ready", "LocalRemoteNotAllowed"),
    ("ftp url", _provider(url="ftp://h/r"), "Ready", "InvalidURL"),
    ("git protocol url", _provider(url="git://h/r"), "Ready", "InvalidURL"),
    ("url without host", _provider(url="https:///r"), "Ready", "InvalidURL"),
    ("url with a bad port", _provider(url="https://h:99999/r"), "Ready", "InvalidURL"),
    ("secretRef climbing namespaces", _provider(secretRef={"name": TRAVERSAL}),
     "Ready", "InvalidSpec"),
    ("secretRef with a slash", _provider(secretRef={"name": "a/b"}), "Ready", "InvalidSpec"),
    ("secretRef percent-encoded", _provider(secretRef={"name": "a%2Fb"}), "Ready", "InvalidSpec"),
    ("secretRef upper case", _provider(secretRef={"name": "Token"}), "Ready", "InvalidSpec"),
    ("secretRef is a string", _provider(secretRef="token"), "Ready", "InvalidSpec"),
    ("unterminated class", _provider(allowedBranches=["[a"]), "Ready", "InvalidSpec"),
    ("empty class", _provider(allowedBranches=["[]"]), "Ready", "InvalidSpec"),
    ("backwards range", _provider(allowedBranches=["[z-a]"]), "Ready", "InvalidSpec"),
    ("trailing backslash", _provider(allowedBranches=["main\\"]), "Ready", "InvalidSpec"),
    ("allowedBranches a string", _provider(allowedBranches="main"), "Ready", "InvalidSpec"),
    ("allowedBranches a number", _provider(allowedBranches=[7]), "Ready", "InvalidSpec"),
    ("101 patterns", _provider(allowedBranches=["x"] * 101), "Ready", "InvalidSpec"),
    ("pattern of 300 characters", _provider(allowedBranches=["*" * 300]), "Ready", "InvalidSpec"),
    ("maxCommits 0", _provider(push={"maxCommits": 0}), "Ready", "InvalidSpec"),
    ("maxCommits a word", _provider(push={"maxCommits": "many"}), "Ready", "InvalidSpec"),
    ("interval in words", _provider(push={"interval": "5 minutes"}), "Ready", "InvalidSpec"),
    ("push is a list", _provider(push=[1]), "Ready", "InvalidSpec"),
    ("provider spec a string", _object("GitProvider", "p", "spec"), "Ready", "InvalidSpec"),
    ("target without providerRef", _object("GitTarget", "t", {"branch": "main"}),
     "Validated", "InvalidSpec"),
    ("providerRef climbing", _target(providerRef={"name": "../repo"}), "Validated", "InvalidSpec"),
    ("providerRef kind Secret", _target(providerRef={"name": "repo", "kind": "Secret"}),
     "Validated", "InvalidSpec"),
    ("empty branch", _target(branch=""), "Validated", "InvalidBranch"),
    ("branch with ..", _target(branch="a..b"), "Validated", "InvalidBranch"),
    ("branch with a newline", _target(branch="main\nx"), "Validated", "InvalidSpec"),
    ("path climbing out", _target(path="../victim"), "Validated", "InvalidPath"),
    ("path into .git", _target(path=".git/hooks"), "Validated", "InvalidPath"),
    ("path into .GIT", _target(path="a/.GIT"), "Validated", "InvalidPath"),
    ("path into .git.", _target(path="team/.git./hooks"), "Validated", "InvalidPath"),
    ("path into '.git '", _target(path=".git /hooks"), "Validated", "InvalidPath"),
    ("path into git~1", _target(path="GIT~1/hooks"), "Validated", "InvalidPath"),
    ("path with a backslash", _target(path="a\\b"), "Validated", "InvalidPath"),
    ("path with NUL", _target(path="team\0"), "Validated", "InvalidPath"),
    ("path is a number", _target(path=5), "Validated", "InvalidSpec"),
    ("encryption secretRef climbing",
     _target(encryption={"provider": "sops", "secretRef": {"name": TRAVERSAL}}),
     "Validated", "InvalidSpec"),
    ("branch not allowed", _target(branch="release"), "Validated", "BranchNotAllowed"),
    ("provider missing", _target(providerRef={"name": "nope"}), "Validated",
     "GitProviderNotFound"),
    ("watch rule without targetRef", _object("WatchRule", "w", {"rules": []}),
     "Ready", "InvalidSpec"),
    ("targetRef with a slash",
     _object("WatchRule", "w", {"targetRef": {"name": "a/b"}, "rules": [{"resources": ["x"]}]}),
     "Ready", "InvalidSpec"),
    ("rules a string", _object("WatchRule", "w", {"targetRef": {"name": "t"}, "rules": "all"}),
     "Ready", "InvalidSpec"),
    ("rule a number", _object("WatchRule", "w", {"targetRef": {"name": "t"}, "rules": [1]}),
     "Ready", "InvalidSpec"),
    ("101 resources",
     _object("WatchRule", "w",
             {"targetRef": {"name": "t"}, "rules": [{"resources": ["x"] * 101}]}),
     "Ready", "InvalidSpec"),
    ("cluster targetRef namespace climbing",
     _object("ClusterWatchRule", "c",
             {"targetRef": {"name": "t", "namespace": "../kube-system"},
              "rules": [{"resources": ["x"], "scope": "Cluster"}]}),
     "Ready", "InvalidSpec"),
    ("cluster rule with unknown scope",
     _object("ClusterWatchRule", "c",
             {"targetRef": {"name": "t", "namespace": "team-a"},
              "rules": [{"resources": ["x"], "scope": "Everything"}]}),
     "Ready", "InvalidSpec"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "condition", "reason"),
    [pytest.param(body, kind, reason, id=what) for what, body, kind, reason in CORPUS],
)
def test_malformed_resource_gets_its_condition(
    body: dict[str, Any], condition: str, reason: str
) -> None:
    good = _provider(name="repo")
    state, conditions = _resolve(good, body)
    found = _condition(conditions, body, condition)
    assert (found["status"], found["reason"]) == ("False", reason), found["message"]
    assert len(found["message"].encode()) <= MAX_MESSAGE_BYTES
    # The good provider next to it is unaffected.
    assert "team-a/repo" in state.providers


@pytest.mark.parametrize(
    ("attributed", "reason"), [(False, "ExcludeUsersNeedsAttribution"), (True, "Validated")]
)
def test_exclude_users_without_attribution_is_valid_but_says_it_leaves_nothing_out(
    attributed: bool, reason: str
) -> None:
    excluding = _target(excludeUsers=["system:serviceaccount:flux-system:kustomize-controller"])
    plain = _target(name="plain", path="other")
    state, conditions = _resolve(_provider(name="repo"), excluding, plain, attributed=attributed)
    found = _condition(conditions, excluding, "Validated")
    assert (found["status"], found["reason"]) == ("True", reason), found["message"]
    assert _condition(conditions, plain, "Validated")["reason"] == "Validated"
    # Everything else the target asks for is still mirrored.
    assert set(state.targets) == {"team-a/mirror", "team-a/plain"}


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30


def test_condition_message_quoting_a_huge_url_stays_within_one_kibibyte() -> None:
    body = _provider(url="file:///" + "x" * 2000)
    _, conditions = _resolve(body)
    message = _condition(conditions, body, "Ready")["message"]
    assert len(message.encode()) <= MAX_MESSAGE_BYTES
    assert message.endswith("…")


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/r.git", "https://[::1]/r", "ssh://git@localhost/r", "http://h/r"]
)
def test_the_local_remotes_flag_allows_http_and_loopback(url: str) -> None:
    """The test bed and external harnesses serve Git over http on loopback."""
    check_url(url, UrlPolicy(allow_local=True))
    with pytest.raises(ConfigError):
        check_url(url, UrlPolicy())


def test_local_remote_needs_the_flag_and_never_reaches_the_state_dir(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    (state_dir / "repos" / "abc").mkdir(parents=True)
    allowed = UrlPolicy(allow_local=True, state_dir=state_dir)
    outside = _provider(name="outside", url=f"file://{tmp_path}/remote.git")
    clone = _provider(name="clone", url=f"{state_dir}/repos/abc")
    via_file = _provider(name="via-file", url=f"file://{state_dir}/repos/abc")
    climbing = _provider(name="climbing", url=f"{tmp_path}/other/../state/repos/abc")
    state, conditions = _resolve(outside, clone, via_file, climbing, policy=allowed)
    assert "team-a/outside" in state.providers
    for body in (clone, via_file, climbing):
        found = _condition(conditions, body, "Ready")
        assert found["reason"] == "LocalRemoteNotAllowed"
        assert "state directory" in found["message"]


def _owned_by(namespace: str, url: str = GOOD_URL, branch: str = "main") -> StatusBoard:
    board = StatusBoard()
    board.owners[branch_key(url, branch)] = BranchOwner(namespace, time.time())
    return board


def test_same_repository_in_another_spelling_from_another_namespace_is_a_conflict() -> None:
    victim = _provider(name="repo", namespace="victim", secretRef={"name": "git-token"})
    victim_target = _target(namespace="victim", created="2026-01-02T00:00:00Z", path="prod")
    # The same repository, spelled with a trailing slash, upper-case host and path, default port.
    attacker = _provider(
        name="repo", namespace="attacker", url="https://GIT.example.com:443/Team/Repo/"
    )
    # Older than the victim's target: coming first decides nothing.
    attacker_target = _target(namespace="attacker", created="2026-01-01T00:00:00Z", path="x")
    board = _owned_by("victim")
    state, conditions = _resolve(victim, victim_target, attacker, attacker_target, board=board)
    assert set(state.targets) == {"victim/mirror"}
    found = _condition(conditions, attacker_target, "Validated")
    assert found["reason"] == "Conflict"
    assert "owned by namespace 'victim'" in found["message"]
    assert state.contests == ()


def test_namespaces_asking_for_an_unowned_branch_all_wait_for_a_proof() -> None:
    first = _provider(name="repo", namespace="early", secretRef={"name": "junk"})
    second = _provider(name="repo", namespace="late", secretRef={"name": "token"})
    early = _target(namespace="early", created="2026-01-01T00:00:00Z")
    late = _target(namespace="late", created="2026-01-02T00:00:00Z")
    state, conditions = _resolve(first, early, second, late)
    assert state.targets == {}
    assert [c.namespace for c in state.contests] == ["early", "late"]
    message = _condition(conditions, late, "Validated")["message"]
    assert "prove they can write it" in message


def test_an_expired_owner_keeps_writing_and_is_tried_first_a_live_one_keeps_its_branch() -> None:
    owner_gone = _owned_by("victim")
    attacker = _provider(name="repo", namespace="attacker")
    attacker_target = _target(namespace="attacker")
    state, conditions = _resolve(attacker, attacker_target, board=owner_gone)
    assert state.targets == {}
    assert _condition(conditions, attacker_target, "Validated")["reason"] == "Conflict"
    expired = _owned_by("victim")
    key = branch_key(GOOD_URL, "main")
    expired.owners[key] = BranchOwner("victim", time.time() - OWNERSHIP_GRACE_S - 1)
    victim = _provider(name="repo", namespace="victim")
    victim_target = _target(namespace="victim", created="2026-01-02T00:00:00Z")
    state, _ = _resolve(attacker, attacker_target, victim, victim_target, board=expired)
    assert [c.namespace for c in state.contests] == ["victim", "attacker"]
    # The expired owner keeps writing while it is tried again.
    assert set(state.targets) == {"victim/mirror"}


def test_a_pinned_repository_refuses_other_namespaces_whatever_they_prove() -> None:
    pins = parse_pins("https://git.example.com/TEAM/=victim")
    attacker = _provider(name="repo", namespace="attacker")
    attacker_target = _target(namespace="attacker")
    state, conditions = _resolve(attacker, attacker_target, board=_owned_by("attacker"), pins=pins)
    assert state.targets == {}
    found = _condition(conditions, attacker_target, "Validated")
    assert "reserved by the operator" in found["message"]
    other = parse_pins("https://git.example.com/tea=victim")
    state, _ = _resolve(attacker, attacker_target, pins=other)
    assert set(state.targets) == {"attacker/mirror"}


def test_targets_beyond_the_namespace_cap_are_refused_newest_first() -> None:
    provider = _provider(name="repo")
    old = [
        _target(name=f"t{i}", path=f"p{i}", created=f"2026-01-0{i + 1}T00:00:00Z") for i in (0, 1)
    ]
    newest = _target(name="t9", path="p9", created="2026-01-09T00:00:00Z")
    other = _provider(name="repo", namespace="team-b", url=GOOD_URL + "-b")
    elsewhere = _target(namespace="team-b", path="b", created="2026-01-10T00:00:00Z")
    state, conditions = _resolve(provider, newest, *old, other, elsewhere, cap=2)
    assert set(state.targets) == {"team-a/t0", "team-a/t1", "team-b/mirror"}
    refused = _condition(conditions, newest, "Validated")
    assert refused["reason"] == "TargetLimitExceeded"


def test_providers_of_one_namespace_and_secret_share_a_writer() -> None:
    first = _provider(name="repo", secretRef={"name": "git-token"})
    second = _provider(name="repo-too", url=GOOD_URL + "/", secretRef={"name": "git-token"})
    a = _target(name="a", path="a", created="2026-01-01T00:00:00Z")
    b = _target(name="b", path="b", providerRef={"name": "repo-too"})
    state, _ = _resolve(first, second, a, b)
    assert set(state.targets) == {"team-a/a", "team-a/b"}
    keys = {branch_key(r.provider.url, r.target.branch) for r in state.targets.values()}
    assert len(keys) == 1


def test_another_secret_or_push_setting_in_the_same_namespace_is_a_conflict() -> None:
    first = _provider(name="repo", secretRef={"name": "git-token"})
    other_secret = _provider(name="other", secretRef={"name": "other-token"})
    other_pace = _provider(name="pace", secretRef={"name": "git-token"}, push={"interval": "1m"})
    a = _target(name="a", path="a", created="2026-01-01T00:00:00Z")
    b = _target(name="b", path="b", providerRef={"name": "other"}, created="2026-01-02T00:00:00Z")
    c = _target(name="c", path="c", providerRef={"name": "pace"}, created="2026-01-02T00:00:00Z")
    state, conditions = _resolve(first, other_secret, other_pace, a, b, c)
    assert set(state.targets) == {"team-a/a"}
    for body in (b, c):
        assert _condition(conditions, body, "Validated")["reason"] == "Conflict"


def test_trailing_slash_does_not_defeat_the_folder_conflict_check() -> None:
    first = _provider(name="repo")
    second = _provider(name="repo-slash", url=GOOD_URL + "/")
    a = _target(name="a", path="live", created="2026-01-01T00:00:00Z")
    b = _target(
        name="b", path="live/", providerRef={"name": "repo-slash"}, created="2026-01-02T00:00:00Z"
    )
    state, conditions = _resolve(first, second, a, b)
    assert set(state.targets) == {"team-a/a"}
    assert "already writes path" in _condition(conditions, b, "Validated")["message"]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("https://Git.Example.com:443/team/repo.git/", "https://git.example.com/team/repo"),
        ("https://user:token@git.example.com/team/repo", "https://git.example.com/team/repo"),
        ("http://git.example.com:80/r", "http://git.example.com/r/"),
        ("git@Git.example.com:team/repo.git", "ssh://git@git.example.com:22/team/repo"),
        ("ssh+git://h/r", "ssh://h/r"),
        ("https://h//team//repo", "https://h/team/repo"),
        ("https://h/Team-A/Platform.GIT", "https://h/team-a/platform"),
        ("git@h:Team/Repo", "ssh://h/team/repo"),
    ],
)
def test_spellings_of_one_repository_normalize_alike(first: str, second: str) -> None:
    assert normalize_url(first) == normalize_url(second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("https://h/team/repo", "https://h:8443/team/repo"),
        ("https://h/team/repo", "http://h/team/repo"),
        ("ssh://h:2222/r", "ssh://h/r"),
    ],
)
def test_different_repositories_stay_different(first: str, second: str) -> None:
    assert normalize_url(first) != normalize_url(second)


def test_branch_key_holds_no_credentials() -> None:
    key = branch_key("https://user:s3cret@git.example.com/team/repo.git", "main")
    assert key == "https://git.example.com/team/repo#main"


@pytest.mark.parametrize(
    ("pattern", "branch", "matches"),
    [
        ("main", "main", True),
        ("release/*", "release/1.0", True),
        ("release/*", "release/1/0", False),
        ("*", "feature/x", False),
        ("v?", "v1", True),
        ("v?", "v/", False),
        ("env-[a-c]", "env-b", True),
        ("env-[a-c]", "env-d", False),
        ("env-[^a-c]", "env-d", True),
        ("env-[^a-c]", "env-a", False),
        ("x\\*", "x*", True),
        ("x\\*", "xy", False),
        ("*-prod", "eu-prod", True),
        ("**", "a", True),
        ("a*b*c", "abc", True),
        ("a*b*c", "aXbYc", True),
        ("a*b*c", "acb", False),
    ],
)
def test_branch_globs_match_as_gitops_reverser_did(
    pattern: str, branch: str, matches: bool
) -> None:
    assert branch_glob(pattern).matches(branch) is matches


class StepCounter:
    """Counts the character comparisons of every branch glob match while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps = 0
        step = model._step

        def counted(token: Any, char: str) -> bool:
            self.steps += 1
            return step(token, char)

        monkeypatch.setattr(model, "_step", counted)


def test_pathological_branch_pattern_is_matched_in_linear_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # For a backtracking regex this pattern against this branch takes exponential time. The
    # work is counted, not timed (bench/branch_glob.py measures it): at most one comparison per
    # pattern position and branch character.
    pattern = "a*" * 100 + "b"
    branch = "a" * 250
    glob = branch_glob(pattern)
    counter = StepCounter(monkeypatch)
    assert glob.matches(branch) is False
    assert 0 < counter.steps <= len(glob.tokens) * len(branch)


def test_pathological_pattern_in_a_provider_keeps_resolve_linear(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    patterns = ["*a" * 120 + "b"] * 2
    provider = _provider(name="repo", allowedBranches=patterns)
    target = _target(branch="a" * 250)
    counter = StepCounter(monkeypatch)
    _, conditions = _resolve(provider, target)
    assert _condition(conditions, target, "Validated")["reason"] == "BranchNotAllowed"
    bound = sum(len(branch_glob(p).tokens) for p in patterns) * len(target["spec"]["branch"])
    assert 0 < counter.steps <= bound


@pytest.mark.parametrize(
    ("written", "normal"),
    [
        ("team/", "team"),
        ("./team", "team"),
        ("/team", "team"),
        ("a//b", "a/b"),
        ("a/./b/", "a/b"),
        (".", ""),
        ("", ""),
        ("clusters/prod/live", "clusters/prod/live"),
    ],
)
def test_target_path_spellings_are_normalized(written: str, normal: str) -> None:
    assert normalize_target_path(written) == normal
    assert parse_target(_target(path=written)).path == normal


def test_normalized_path_still_refuses_climbing() -> None:
    with pytest.raises(ConfigError, match=r"'\.\.'"):
        parse_target(_target(path="./a/../../victim"))


@pytest.mark.parametrize("segment", [TRAVERSAL, "../x", "a/b", ".."])
def test_api_paths_never_climb(segment: str) -> None:
    with pytest.raises(InvalidName):
        secret_path("team-a", segment)
    assert api_path("api", "v1", "a%2Fb") == "/api/v1/a%252Fb"


@pytest.mark.parametrize(
    "name",
    [".git", ".GIT", ".Git.", ".git ", "git~1", "line\nbreak", "tab\tname", "bell\a", "a\\b",
     "rtl\u202eoverride", "..", ""],
)  # fmt: skip
def test_unsafe_file_names_raise_unsafe_path(name: str) -> None:
    with pytest.raises(UnsafePath):
        object_path("live", CLUSTER_ROLES, None, name, False)


def test_unsafe_namespace_raises_unsafe_path() -> None:
    with pytest.raises(UnsafePath):
        object_path("live", CONFIGMAPS, ".git", "settings", False)


def test_names_with_control_characters_cannot_add_commit_message_lines() -> None:
    event = JournalEvent(
        seq=7,
        kind=EventKind.CREATE,
        stream="rbac.authorization.k8s.io/v1/clusterroles",
        api_group="rbac.authorization.k8s.io",
        api_version="v1",
        resource="clusterroles",
        namespace="",
        name="reader\nuser: system:admin\r\njournal-seq: 999999",
        uid="u1",
        resource_version="1",
        body=None,
        journaled_at=0.0,
        username="mallory\nuser: system:admin",
    )
    message = commit_message(event, CLUSTER_ROLES, "team-a/mirror", event.seq)
    lines = message.splitlines()
    assert [line for line in lines if line.startswith("user:")] == [
        "user: mallory\\u000auser: system:admin"
    ]
    assert [line for line in lines if line.startswith("journal-seq")] == ["journal-seq: 7"]
    assert lines[0] == (
        "[CREATE] rbac.authorization.k8s.io/v1/clusterroles/"
        "reader\\u000auser: system:admin\\u000d\\u000ajournal-seq: 999999"
    )


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter("%(message)s")])
def test_log_lines_never_show_a_url_password(formatter: logging.Formatter) -> None:
    try:
        raise RuntimeError("clone of https://ci:tok3n@git.example.com/r failed")
    except RuntimeError:
        record = logging.LogRecord(
            "reverserd", logging.WARNING, __file__, 1, "push to %s failed", ("x",), sys.exc_info()
        )
    record.msg = "push to https://ci:s3cret@git.example.com/r failed"
    record.args = None
    record.remote = "https://ci:extra-s3cret@git.example.com/r"
    line = formatter.format(record)
    for secret_text in ("s3cret", "tok3n", "extra-s3cret"):
        assert secret_text not in line
    assert "https://ci:***@git.example.com/r" in line


def test_each_owner_of_a_branch_gets_its_own_clone(tmp_path: Path) -> None:
    """A new owner starts from the remote: the previous owner's clone, with whatever it
    committed and did not push, is never opened for it."""
    key = branch_key(GOOD_URL, "main")
    assert clone_dir(tmp_path, key, "victim") != clone_dir(tmp_path, key, "attacker")
    assert clone_dir(tmp_path, key, "victim") == clone_dir(tmp_path, key, "victim")
