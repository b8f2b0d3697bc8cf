"""Who changed it: each commit's author is the Kubernetes user who made the change, or the
configured identity marked unresolved, never someone else. Against the real test bed: the
API server calls reverserd's admission webhook, or sends its audit log to it."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import signal
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from reverserd.attribution.identity import author_of
from testbed.controlplane import ControlPlane, ensure_binaries, free_port
from testbed.gitservers import Authorship, GitHttpServer, authorship
from testbed.harness import (
    Reverserd,
    apply,
    collection,
    conditions,
    create_git_credentials,
    create_namespace,
    query_journal,
    send_all,
    subjects,
    tree,
    wait_for_subjects,
    wait_synced,
    wait_until,
    webhook_arguments,
)
from testbed.manifests import admission_webhook, configmap, mirror_setup
from testbed.tools import REPO_ROOT
from tests.conftest import Remote

# Objects each identity works on, and rounds of interleaved changes to all of them.
OBJECTS = 10
ROUNDS = 3
COMMITTER = "reverserd"
# Every change of a test reaches Git within this (push interval 5 s, grace window, restarts).
ATTRIBUTED_TIMEOUT_S = 90.0
MANAGED_FIELDS_RESOLUTION_S = 1.1
# Objects both identities set to equal content at the same moment.
EQUAL_CONTENT = 4
# A write must not wait for a webhook that is down (its timeout is 2 s).
WRITE_WHILE_DOWN_S = 10.0
# Long enough that a commit not held back would have been pushed (push interval 5 s).
WAITING_S = 7.0
# Writes made while the daemon is frozen (SIGSTOP), and the time they may take: with the
# webhook answering at once, a few seconds; waiting for its timeout, minutes.
FROZEN_WRITES = 1000
FROZEN_WRITES_S = 30.0
SHUTDOWN_WHILE_WAITING_S = 10.0
# A batch the API server sent while the test restarts reverserd is retried (backoff 1 s, 1.5 s,
# 2.25 s...) and arrives after the restart, which takes several seconds on a loaded machine:
# measured 6 s after its events were journaled, past the default 5 s grace window.
AUDIT_GRACE_S = 30.0
# The API server retries an audit batch for about 13 s (initial backoff 1 s, five steps).
AUDIT_DROPPED_TIMEOUT_S = 90.0
# Concurrent facts a flood sends, each as large as the field bounds allow (a few KiB), and the
# journal growth they may cause: their rows and the write-ahead log of their commits.
FLOOD_REQUESTS = 200
FLOOD_JOURNAL_GROWTH_BYTES = 8 * 2**20
AUDIT_POLICY = REPO_ROOT / "packaging" / "attribution" / "audit-policy.yaml"


def change_commits(remote: Remote) -> list[Authorship]:
    """The commits of single changes (not reconciles) on the remote's branch, oldest first."""
    return [c for c in reversed(authorship(remote.path, "main")) if c.message.startswith("[")]


def wait_change_commits(remote: Remote, daemon: Reverserd, count: int) -> list[Authorship]:
    """The commits of single changes once there are at least ``count``, oldest first."""
    return wait_until(
        lambda: (found := change_commits(remote)) and len(found) >= count and found,
        ATTRIBUTED_TIMEOUT_S,
        daemon.log_tail,
    )


def body_fields(message: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in message.splitlines()[1:] if ": " in line)


@dataclass
class Truth:
    """Who really made each change, from the API server's answers to each identity."""

    # resourceVersion -> who answered with it. A request that found its content already in
    # place is a no-op answered with the other user's version: both are then listed, and the
    # answers cannot tell which of them made that version.
    by_version: dict[str, set[str]] = field(default_factory=dict)
    deleted_by: dict[str, set[str]] = field(default_factory=dict)
    made_while_down: set[str] = field(default_factory=set)

    def record(self, user: str, answers: list[dict[str, Any]], deleted: bool) -> None:
        for answer in answers:
            if deleted:
                name = answer.get("details", {}).get("name") or answer["metadata"]["name"]
                self.deleted_by.setdefault(name, set()).add(user)
            else:
                self.by_version.setdefault(answer["metadata"]["resourceVersion"], set()).add(user)


def changes(namespace: str, names: list[str], data: dict[str, str]) -> list[tuple[str, str, Any]]:
    path = collection(configmap(namespace, "x"), "configmaps")
    return [("PATCH", f"{path}/{name}", {"data": data}) for name in names]


async def as_users(
    plane: ControlPlane, truth: Truth, batches: list[tuple[str, str, list[Any]]], deleted: bool
) -> None:
    """Send each (user, token, requests) batch concurrently with the others: interleaved."""
    answers = await asyncio.gather(
        *(send_all(plane, requests, token) for _, token, requests in batches)
    )
    for (user, _, _), answer in zip(batches, answers, strict=True):
        truth.record(user, answer, deleted)


def wait_attributed(remote: Remote, daemon: Reverserd, truth: Truth) -> list[Authorship]:
    """Every change of ``truth`` committed; returns the commits of changes, oldest first."""

    def probe() -> list[Authorship] | None:
        found = change_commits(remote)
        fields = [body_fields(c.message) for c in found]
        versions = {f.get("resourceVersion") for f in fields}
        deleted = {
            c.message.split("\n")[0].rsplit("/", 1)[1]
            for c in found
            if "DELETE" in c.message.split("\n")[0]
        }
        done = set(truth.by_version) <= versions and set(truth.deleted_by) <= deleted
        return found if done else None

    return wait_until(probe, ATTRIBUTED_TIMEOUT_S, daemon.log_tail)


def check_authors(commits: list[Authorship], truth: Truth) -> tuple[int, int]:
    """Assert no commit names a wrong user; returns (attributed to the right user, changes)."""
    right = 0
    for commit in commits:
        subject = commit.message.split("\n")[0]
        fields = body_fields(commit.message)
        if subject.startswith("[DELETE]"):
            expected = truth.deleted_by.get(subject.rsplit("/", 1)[1], set())
        else:
            expected = truth.by_version.get(fields["resourceVersion"], set())
        user = fields.get("user")
        assert commit.committer_name == COMMITTER, commit
        if user == "unresolved":
            assert (commit.author_name, commit.author_email) == (COMMITTER, "reverserd@localhost")
            continue
        assert user in expected, commit
        assert (commit.author_name, commit.author_email) == author_of(user), commit
        right += 1
    return right, len(commits)


def test_commit_body_names_the_field_manager(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    """Without any webhook, each commit still says how the change was made."""
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_synced(control_plane, namespace)
    apply(control_plane, configmap(namespace, "app", {"color": "blue"}))
    # managedFields times have one-second resolution; writers within one second are all named.
    time.sleep(MANAGED_FIELDS_RESOLUTION_S)
    control_plane.kubectl(
        "apply",
        "--server-side",
        "--field-manager=ops-pipeline",
        "--force-conflicts",
        "-f",
        "-",
        stdin=json.dumps(configmap(namespace, "app", {"color": "green"})),
    )
    control_plane.kubectl("delete", "configmap", "app", "-n", namespace)

    def commits() -> list[Authorship] | None:
        found = change_commits(remote)
        return found if len(found) == 3 else None

    create, update, delete = wait_until(commits, ATTRIBUTED_TIMEOUT_S, daemon.log_tail)
    assert body_fields(create.message)["manager"] == "kubectl-client-side-apply (Update)"
    assert body_fields(update.message)["manager"] == "ops-pipeline (Apply)"
    # managedFields name the last writer, not who deleted: no guess.
    assert "manager" not in body_fields(delete.message)
    for commit in (create, update, delete):
        assert "user" not in body_fields(commit.message)
        assert commit.author_name == COMMITTER


def exercise(plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd) -> Truth:
    """Two identities create and change the same objects interleaved, with a crash of
    reverserd between facts and commits, changes while it is down, and a delete."""
    alice_token = plane.service_account_token(namespace, "alice")
    bob_token = plane.service_account_token(namespace, "bob")
    alice = f"system:serviceaccount:{namespace}:alice"
    bob = f"system:serviceaccount:{namespace}:bob"
    apply(plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_synced(plane, namespace)
    truth = Truth()
    path = collection(configmap(namespace, "x"), "configmaps")
    names = [f"cm-{i}" for i in range(OBJECTS)]
    creates = [
        (user, token, [("POST", path, configmap(namespace, n, {"by": user})) for n in names[i::2]])
        for i, (user, token) in enumerate(((alice, alice_token), (bob, bob_token)))
    ]
    asyncio.run(as_users(plane, truth, creates, deleted=False))
    for round_ in range(ROUNDS):
        batches = [
            (user, token, changes(namespace, names, {"by": f"{user}-{round_}"}))
            for user, token in ((alice, alice_token), (bob, bob_token))
        ]
        asyncio.run(as_users(plane, truth, batches, deleted=False))
        if round_ == 0:
            # Facts and events are journaled; their commits may not be: a crash in between.
            daemon.kill()
            daemon.start()
    # Both set equal content at once: the loser's request is a no-op indistinguishable from
    # the winner's; such a change may stay unresolved, never go to the wrong one.
    same = [
        (user, token, changes(namespace, names[:EQUAL_CONTENT], {"by": "same"}))
        for user, token in ((alice, alice_token), (bob, bob_token))
    ]
    asyncio.run(as_users(plane, truth, same, deleted=False))
    daemon.stop()
    started = time.monotonic()
    down = asyncio.run(send_all(plane, changes(namespace, names[:2], {"by": "down"}), bob_token))
    # The admission webhook's failurePolicy Ignore: with reverserd down, writes still succeed.
    assert time.monotonic() - started < WRITE_WHILE_DOWN_S
    truth.record(bob, down, deleted=False)
    truth.made_while_down = {answer["metadata"]["resourceVersion"] for answer in down}
    daemon.start()
    deletes = [("DELETE", f"{path}/{names[-1]}", None)]
    asyncio.run(as_users(plane, truth, [(alice, alice_token, deletes)], deleted=True))
    return truth


def test_admission_attributes_interleaved_users_across_restarts_and_downtime(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    admission_registered: int,
) -> None:
    daemon.extra_args = webhook_arguments(control_plane, "admission", admission_registered)
    truth = exercise(control_plane, namespace, remote, daemon)
    # A change after the last restart: this process, too, counts what it resolved.
    last = [
        ("POST", collection(configmap(namespace, "x"), "configmaps"), configmap(namespace, "last"))
    ]
    token = control_plane.service_account_token(namespace, "carol")
    carol = f"system:serviceaccount:{namespace}:carol"
    truth.record(carol, asyncio.run(send_all(control_plane, last, token)), deleted=False)
    commits = wait_attributed(remote, daemon, truth)
    right, total = check_authors(commits, truth)
    print(f"admission: {right}/{total} commits attributed correctly")
    # No digest proves a delete: admission leaves deletes unresolved.
    unprovable = len(truth.made_while_down) + len(truth.deleted_by)
    assert right >= total - EQUAL_CONTENT - unprovable, (right, total)
    # Made while reverserd was down: no fact exists, so no one is named.
    missed = [
        c for c in commits if body_fields(c.message)["resourceVersion"] in truth.made_while_down
    ]
    assert [body_fields(c.message)["user"] for c in missed] == ["unresolved", "unresolved"]
    assert daemon.metric("reverserd_attributions_total", outcome="resolved") > 0


def webhook_process(daemon: Reverserd) -> int | None:
    """The PID of the daemon's webhook process, if it runs."""
    assert daemon.process is not None
    pid = daemon.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in map(int, children):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"reverserd.attribution.webhook_process" in command:
            return child
    return None


def mirror_with_admission(
    plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd, port: int
) -> None:
    """The daemon mirrors ``namespace`` with the admission webhook on ``port``, synced."""
    daemon.extra_args = webhook_arguments(plane, "admission", port)
    apply(plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_synced(plane, namespace)


def test_webhook_process_that_dies_is_started_again_and_attribution_goes_on(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    admission_registered: int,
) -> None:
    mirror_with_admission(control_plane, namespace, remote, daemon, admission_registered)
    first = webhook_process(daemon)
    assert first is not None
    os.kill(first, signal.SIGKILL)

    def listening_again() -> bool:
        lines = [line for line in daemon.log_lines() if line.get("message") == "webhooks listening"]
        return len(lines) == 2 and webhook_process(daemon) not in (None, first)

    wait_until(listening_again, ATTRIBUTED_TIMEOUT_S, daemon.log_tail)
    assert daemon.metric("reverserd_task_restarts_total", task="webhooks") == 1
    token = control_plane.service_account_token(namespace, "alice")
    path = collection(configmap(namespace, "x"), "configmaps")
    asyncio.run(send_all(control_plane, [("POST", path, configmap(namespace, "after"))], token))
    (commit,) = wait_until(
        lambda: change_commits(remote) or None, ATTRIBUTED_TIMEOUT_S, daemon.log_tail
    )
    alice = f"system:serviceaccount:{namespace}:alice"
    assert body_fields(commit.message)["user"] == alice
    assert commit.author_name == author_of(alice)[0]
    # The daemon itself never stopped.
    assert daemon.process is not None and daemon.process.poll() is None

    # Killed, the daemon takes its webhook process along: nothing keeps holding the port.
    second = webhook_process(daemon)
    assert second is not None
    daemon.kill()
    wait_until(lambda: not running(second), 10, daemon.log_tail)


def test_webhook_answers_at_once_while_the_daemon_is_frozen(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    admission_registered: int,
) -> None:
    mirror_with_admission(control_plane, namespace, remote, daemon, admission_registered)
    token = control_plane.service_account_token(namespace, "alice")
    path = collection(configmap(namespace, "x"), "configmaps")
    # Far more wake-up lines than a pipe holds (64 KiB): a webhook process that waited for the
    # frozen daemon to read them would stop answering, and every write would wait for the
    # webhook's 2 s timeout.
    creates = [
        ("POST", path, configmap(namespace, f"frozen-{i:04d}")) for i in range(FROZEN_WRITES)
    ]
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        asyncio.run(send_all(control_plane, creates, token))
        elapsed = time.monotonic() - started
    finally:
        daemon.process.send_signal(signal.SIGCONT)
    assert elapsed < FROZEN_WRITES_S, f"{FROZEN_WRITES} writes took {elapsed:.1f} s"
    facts = query_journal(
        daemon, "SELECT count(*) FROM attribution_facts WHERE name LIKE 'frozen-%'"
    )[0][0]
    assert facts == FROZEN_WRITES
    alice = f"system:serviceaccount:{namespace}:alice"

    def all_committed() -> list[Authorship] | None:
        found = change_commits(remote)
        return found if len(found) == FROZEN_WRITES else None

    commits = wait_until(all_committed, ATTRIBUTED_TIMEOUT_S, daemon.log_tail)
    assert {body_fields(c.message)["user"] for c in commits} == {alice}


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def audit_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, int]]:
    """A second control plane whose API server sends its audit log to reverserd, with the
    shipped audit policy; yields it and the port reverserd must serve the webhook on."""
    ensure_binaries()
    port = free_port()
    plane = ControlPlane(
        tmp_path_factory.mktemp("audit-controlplane"),
        audit_policy=AUDIT_POLICY,
        audit_webhook_url=f"https://127.0.0.1:{port}/audit",
    )
    try:
        yield plane.start(), port
    finally:
        plane.stop()


@pytest.mark.parametrize("sources", ["audit", "audit,admission"])
def test_audit_attributes_interleaved_users_across_restarts_and_downtime(
    audit_plane: tuple[ControlPlane, int],
    git_http: GitHttpServer,
    git_repo_name: str,
    tmp_path: Path,
    sources: str,
) -> None:
    plane, port = audit_plane
    namespace = create_namespace(plane)
    remote = Remote(
        git_http.url(git_repo_name),
        git_http.create_bare_repo(git_repo_name),
        create_git_credentials(plane, namespace, git_http),
    )
    arguments = [*webhook_arguments(plane, sources, port), f"--attribution-grace={AUDIT_GRACE_S}"]
    daemon = Reverserd(plane, tmp_path / "state", arguments)
    registration = f"reverserd-attribution-{namespace}"
    if "admission" in sources:
        ca = (plane.pki / "ca.crt").read_bytes()
        url = f"https://127.0.0.1:{port}/admission"
        apply(plane, admission_webhook(registration, url, ca, namespace))
    try:
        truth = exercise(plane, namespace, remote, daemon)
        commits = wait_attributed(remote, daemon, truth)
    finally:
        daemon.ensure_stopped()
        plane.kubectl(
            "delete", "validatingwebhookconfiguration", registration, "--ignore-not-found"
        )
    right, total = check_authors(commits, truth)
    print(f"{sources}: {right}/{total} commits attributed correctly")
    assert right >= total - EQUAL_CONTENT - len(truth.made_while_down), (right, total)


def client_contexts(plane: ControlPlane) -> dict[str, ssl.SSLContext]:
    """TLS contexts of callers: none, the audit client's certificate, and a certificate of the
    same CA with another subject (the test bed's admin)."""
    pki = plane.pki
    contexts = {}
    for who, certificate in (("anonymous", None), ("audit", "audit-client"), ("other", "admin")):
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        if certificate is not None:
            context.load_cert_chain(
                str(pki / f"{certificate}.crt"), str(pki / f"{certificate}.key")
            )
        contexts[who] = context
    return contexts


def test_audit_endpoint_hears_only_the_named_client_and_admission_always_allows(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    port = free_port()
    daemon.extra_args = webhook_arguments(control_plane, "audit,admission", port)
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    contexts = client_contexts(control_plane)
    base = f"https://127.0.0.1:{port}"

    def post(path: str, body: bytes, context: ssl.SSLContext) -> tuple[int, bytes]:
        return post_webhook(f"{base}{path}", body, context)

    batch = json.dumps({"kind": "EventList", "items": []}).encode()
    assert post("/audit", batch, contexts["anonymous"])[0] == 403
    # Signed by the right CA, but not the certificate named for the audit backend.
    assert post("/audit", batch, contexts["other"])[0] == 403
    assert post("/audit", batch, contexts["audit"])[0] == 200
    # No review at all: 400, which the API server treats as allowed (failurePolicy Ignore).
    assert post("/admission", b"{not json", contexts["anonymous"])[0] == 400
    review = {"request": {"uid": "r-1", "operation": "CONNECT", "userInfo": {"username": "x"}}}
    status, answer = post("/admission", json.dumps(review).encode(), contexts["anonymous"])
    assert status == 200 and json.loads(answer)["response"] == {"uid": "r-1", "allowed": True}


def test_admission_configured_for_a_client_certificate_refuses_everyone_else(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    port = free_port()
    daemon.extra_args = [
        *webhook_arguments(control_plane, "admission", port),
        "--webhook-admission-client-name=kube-apiserver-audit",
    ]
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    contexts = client_contexts(control_plane)
    url = f"https://127.0.0.1:{port}/admission"
    review = hostile_review(namespace, 0)
    body = json.dumps(review).encode()
    assert post_webhook(url, body, contexts["anonymous"])[0] == 403
    assert post_webhook(url, body, contexts["other"])[0] == 403
    status, answer = post_webhook(url, body, contexts["audit"])
    assert status == 200 and json.loads(answer)["response"]["allowed"] is True
    facts = query_journal(daemon, "SELECT request_uid FROM attribution_facts")
    assert facts == [("flood-0",)]


def post_webhook(url: str, body: bytes, context: ssl.SSLContext) -> tuple[int, bytes]:
    """POST ``body`` to a webhook endpoint as any caller that reaches its port would."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def forged_reviews(namespace: str, name: str, uid: str, prior: str, user: str) -> list[bytes]:
    """Reviews a pod without any rights can send, from what a commit body prints: claims of a
    scale, of an update without its object, of a delete, and of an update with guessed content."""
    old = {"metadata": {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": prior}}
    guessed = {**configmap(namespace, name, {"by": "mallory"}), "metadata": old["metadata"]}
    claims: list[dict[str, Any]] = [
        {"operation": "UPDATE", "subResource": "scale", "object": {"spec": {"replicas": 3}}},
        {"operation": "UPDATE"},
        {"operation": "DELETE"},
        {"operation": "UPDATE", "object": guessed},
    ]
    return [
        json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": f"forged-{prior}-{i}",
                    "resource": {"group": "", "version": "v1", "resource": "configmaps"},
                    "namespace": namespace,
                    "name": name,
                    "userInfo": {"username": user, "groups": ["system:authenticated"]},
                    "oldObject": old,
                    **claim,
                },
            }
        ).encode()
        for i, claim in enumerate(claims)
    ]


def test_forged_reviews_never_make_their_sender_an_author(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    admission_registered: int,
) -> None:
    """Mallory reaches the admission port and reads the repository: from each commit body she
    forges reviews for the next change, sent before it and again right after it."""
    mirror_with_admission(control_plane, namespace, remote, daemon, admission_registered)
    bob_token = control_plane.service_account_token(namespace, "bob")
    bob = f"system:serviceaccount:{namespace}:bob"
    mallory = f"system:serviceaccount:{namespace}:mallory"
    anonymous = ssl.create_default_context(cafile=str(control_plane.pki / "ca.crt"))
    url = f"https://127.0.0.1:{admission_registered}/admission"
    apply(control_plane, configmap(namespace, "target", {"by": "admin"}))

    def forge_from_last_commit(count: int) -> None:
        fields = body_fields(wait_change_commits(remote, daemon, count)[-1].message)
        forged = forged_reviews(
            namespace, "target", fields["uid"], fields["resourceVersion"], mallory
        )
        for review in forged:
            status, answer = post_webhook(url, review, anonymous)
            assert status == 200 and json.loads(answer)["response"]["allowed"] is True

    path = f"{collection(configmap(namespace, 'x'), 'configmaps')}/target"
    forge_from_last_commit(1)
    # With Bob's own fact journaled, a forgery can neither take his change nor scrub it.
    asyncio.run(send_all(control_plane, [("PATCH", path, {"data": {"by": "bob-1"}})], bob_token))
    forge_from_last_commit(1)
    forge_from_last_commit(2)
    # Made while reverserd is down, Bob's change has no fact: only forged ones.
    daemon.stop()
    asyncio.run(send_all(control_plane, [("PATCH", path, {"data": {"by": "bob-2"}})], bob_token))
    daemon.start()
    forge_from_last_commit(2)
    forge_from_last_commit(3)
    asyncio.run(send_all(control_plane, [("DELETE", path, None)], bob_token))
    forge_from_last_commit(3)
    found = wait_change_commits(remote, daemon, 4)
    assert [c.message.split("\n")[0].split("]")[0] for c in found] == [
        "[CREATE",
        "[UPDATE",
        "[UPDATE",
        "[DELETE",
    ]
    users = [body_fields(c.message).get("user") for c in found]
    # Deletes are proven by no digest: admission leaves them unresolved, forged or not.
    assert users[1:] == [bob, "unresolved", "unresolved"], users
    assert all(mallory not in (c.author_name, c.message) for c in found)
    assert all(c.author_name != author_of(mallory)[0] for c in found)


def journal_bytes(daemon: Reverserd) -> int:
    """Size of the journal database with its write-ahead log."""
    files = [daemon.state_dir / "journal.db", daemon.state_dir / "journal.db-wal"]
    return sum(f.stat().st_size for f in files if f.exists())


def hostile_review(
    namespace: str, index: int, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A review that makes a fact: every field as long as Kubernetes allows, unless overridden."""
    name = f"{index:08d}" + "n" * 245
    body = {**configmap(namespace, name), "metadata": {"name": name, "uid": "u" * 36}}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": f"flood-{index}",
            "operation": "CREATE",
            "resource": {"group": "", "version": "v1", "resource": "configmaps"},
            "namespace": namespace,
            "name": name,
            "userInfo": {"username": "m" * 256, "groups": ["g" * 256] * 8},
            "object": body,
            **(overrides or {}),
        },
    }


async def flood(url: str, context: ssl.SSLContext, bodies: list[bytes]) -> list[int]:
    """POST every body at once; returns each answer's status, 0 for a connection the server
    closed while the body was still being sent."""
    connector = aiohttp.TCPConnector(ssl=context, limit=len(bodies))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: bytes) -> int:
            try:
                async with session.post(url, data=body) as answer:
                    await answer.read()
                    return answer.status
            except (aiohttp.ClientError, ConnectionError):
                return 0

        return list(await asyncio.gather(*(one(body) for body in bodies)))


def test_flood_of_hostile_reviews_leaves_the_journal_bounded_and_mirroring_on(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    admission_registered: int,
) -> None:
    """Over-long fields, huge and deeply nested bodies, malformed userInfo and many concurrent
    requests from a caller without any rights, against the running daemon."""
    mirror_with_admission(control_plane, namespace, remote, daemon, admission_registered)
    url = f"https://127.0.0.1:{admission_registered}/admission"
    anonymous = ssl.create_default_context(cafile=str(control_plane.pki / "ca.crt"))
    pid = webhook_process(daemon)
    before = journal_bytes(daemon)
    mib = 2**20
    over_long = [
        hostile_review(namespace, 0, {"name": "n" * (20 * mib)}),  # over the body bound
        hostile_review(namespace, 1, {"name": "n" * (5 * mib)}),  # within it, over the name bound
        hostile_review(namespace, 2, {"namespace": "n" * (5 * mib)}),
        hostile_review(namespace, 3, {"userInfo": {"username": "u", "groups": {"g": 1}}}),
        hostile_review(namespace, 4, {"userInfo": {"username": "u", "groups": [7]}}),
        hostile_review(namespace, 5, {"uid": "u" * (5 * mib)}),
    ]
    statuses = asyncio.run(flood(url, anonymous, [json.dumps(r).encode() for r in over_long]))
    assert statuses[0] in (0, 400) and statuses[1:] == [200, 200, 200, 200, 400], statuses
    nested = [
        b"[" + b"[]," * (64 * mib // 3) + b"[]]",  # over the body bound
        b"[" + b"[]," * (7 * mib // 3) + b"[]]",  # within it, over the containers bound
        b"[" * 100_000 + b"]" * 100_000,  # deeper than any decoder goes
        b"{not json",
    ]
    statuses = asyncio.run(flood(url, anonymous, nested))
    assert statuses[0] in (0, 400) and statuses[1:] == [400, 400, 400], statuses
    many = [json.dumps(hostile_review(namespace, i)).encode() for i in range(FLOOD_REQUESTS)]
    assert asyncio.run(flood(url, anonymous, many)) == [200] * FLOOD_REQUESTS
    growth = journal_bytes(daemon) - before
    print(f"journal growth under the flood: {growth} bytes")
    assert growth < FLOOD_JOURNAL_GROWTH_BYTES, growth
    kept = query_journal(daemon, "SELECT count(*) FROM attribution_facts WHERE name LIKE '0%'")
    assert kept[0][0] == FLOOD_REQUESTS
    # The webhook process never restarted, and mirroring with attribution goes on.
    assert webhook_process(daemon) == pid
    assert daemon.metric("reverserd_task_restarts_total", task="webhooks") == 0
    token = control_plane.service_account_token(namespace, "alice")
    path = collection(configmap(namespace, "x"), "configmaps")
    asyncio.run(send_all(control_plane, [("POST", path, configmap(namespace, "after"))], token))
    (commit,) = wait_until(
        lambda: change_commits(remote) or None, ATTRIBUTED_TIMEOUT_S, daemon.log_tail
    )
    assert body_fields(commit.message)["user"] == f"system:serviceaccount:{namespace}:alice"
    assert daemon.status()["journal"]["attribution_facts"] >= FLOOD_REQUESTS


class DenyingWebhook:
    """A validating webhook of another party that denies every DELETE by ``user``: the request
    reaches reverserd's admission webhook too, and is then rejected."""

    def __init__(self, plane: ControlPlane, user: str) -> None:
        self.port = free_port()
        denied_user = user

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                request = review["request"]
                denied = (
                    request["operation"] == "DELETE"
                    and request["userInfo"]["username"] == denied_user
                )
                answer = json.dumps(
                    {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": {
                            "uid": request["uid"],
                            "allowed": not denied,
                            "status": {"code": 403, "message": "deletes need a change ticket"},
                        },
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(str(plane.pki / "webhook.crt"), str(plane.pki / "webhook.key"))
        self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_denied_delete_never_names_its_user_for_another_users_delete(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    admission_registered: int,
) -> None:
    """Alice's delete reaches reverserd's webhook and is denied by another webhook; Bob deletes
    the object, from the same version, while reverserd is down."""
    mirror_with_admission(control_plane, namespace, remote, daemon, admission_registered)
    alice_token = control_plane.service_account_token(namespace, "alice")
    bob_token = control_plane.service_account_token(namespace, "bob")
    alice = f"system:serviceaccount:{namespace}:alice"
    path = f"{collection(configmap(namespace, 'x'), 'configmaps')}/target"
    apply(control_plane, configmap(namespace, "target", {"by": "admin"}))
    wait_until(lambda: change_commits(remote) or None, ATTRIBUTED_TIMEOUT_S, daemon.log_tail)
    # The shipped registration sends no DELETE to reverserd; one that does (an older or edited
    # one) must not make the denied attempt a fact either.
    ca = (control_plane.pki / "ca.crt").read_bytes()
    own = admission_webhook(
        f"reverserd-attribution-{namespace}",
        f"https://127.0.0.1:{admission_registered}/admission",
        ca,
        namespace,
    )
    own["webhooks"][0]["rules"][0]["operations"] = ["CREATE", "UPDATE", "DELETE"]
    apply(control_plane, own)
    denying = DenyingWebhook(control_plane, alice)
    name = f"deny-{namespace}"
    registration = admission_webhook(name, f"https://127.0.0.1:{denying.port}/", ca, namespace)
    denier = registration["webhooks"][0]
    denier["failurePolicy"] = "Fail"
    denier["name"] = "deny.example.com"
    denier["rules"][0]["operations"] = ["DELETE"]
    try:
        apply(control_plane, registration)
        with pytest.raises(RuntimeError, match="403"):
            asyncio.run(send_all(control_plane, [("DELETE", path, None)], alice_token))
        facts_of_alice = query_journal(
            daemon,
            "SELECT count(*) FROM attribution_facts WHERE name = 'target' AND username = ?",
            (alice,),
        )
        daemon.stop()
        asyncio.run(send_all(control_plane, [("DELETE", path, None)], bob_token))
        daemon.start()
        (_, delete) = wait_change_commits(remote, daemon, 2)
    finally:
        control_plane.kubectl(
            "delete", "validatingwebhookconfiguration", name, "--ignore-not-found"
        )
        denying.close()
    assert delete.message.startswith("[DELETE]")
    assert body_fields(delete.message)["user"] == "unresolved"
    assert delete.author_name == COMMITTER
    # Nothing of Alice's denied attempt could ever be matched: it made no fact at all.
    assert facts_of_alice == [(0,)]


def apiserver_dropped(plane: ControlPlane, user: str, uri: str) -> bool:
    """Whether the API server gave up delivering the audit event of ``user``'s request to
    ``uri`` (it logs each event of a batch it drops)."""
    text = (plane.workdir / "kube-apiserver.log").read_text(errors="replace")
    return any(f'user="{user}"' in line and uri in line for line in text.splitlines())


def test_audit_no_op_after_a_dropped_event_is_never_the_changes_author(
    audit_plane: tuple[ControlPlane, int],
    git_http: GitHttpServer,
    git_repo_name: str,
    tmp_path: Path,
) -> None:
    """Alice's change is made while reverserd is down for longer than the API server retries
    its audit batch; after the restart Bob re-applies the same content: a no-op answered with
    Alice's resourceVersion."""
    plane, port = audit_plane
    namespace = create_namespace(plane)
    remote = Remote(
        git_http.url(git_repo_name),
        git_http.create_bare_repo(git_repo_name),
        create_git_credentials(plane, namespace, git_http),
    )
    daemon = Reverserd(plane, tmp_path / "state", webhook_arguments(plane, "audit", port))
    alice_token = plane.service_account_token(namespace, "alice")
    bob_token = plane.service_account_token(namespace, "bob")
    alice = f"system:serviceaccount:{namespace}:alice"
    bob = f"system:serviceaccount:{namespace}:bob"
    path = f"{collection(configmap(namespace, 'x'), 'configmaps')}/app"
    try:
        apply(plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
        daemon.start()
        wait_synced(plane, namespace)
        apply(plane, configmap(namespace, "app", {"by": "admin"}))
        wait_until(lambda: change_commits(remote) or None, ATTRIBUTED_TIMEOUT_S, daemon.log_tail)
        daemon.stop()
        change = [("PATCH", path, {"data": {"by": "alice"}})]
        (alices,) = asyncio.run(send_all(plane, change, alice_token))
        wait_until(
            lambda: apiserver_dropped(plane, alice, f"/namespaces/{namespace}/configmaps/app"),
            AUDIT_DROPPED_TIMEOUT_S,
            lambda: plane.log_tail("kube-apiserver"),
        )
        daemon.start()
        (no_op,) = asyncio.run(send_all(plane, change, bob_token))
        version = alices["metadata"]["resourceVersion"]
        assert no_op["metadata"]["resourceVersion"] == version
        later = [("PATCH", path, {"data": {"by": "bob"}})]
        (bobs,) = asyncio.run(send_all(plane, later, bob_token))
        commits = wait_change_commits(remote, daemon, 3)
    finally:
        daemon.ensure_stopped()
    by_version = {body_fields(c.message)["resourceVersion"]: c for c in commits}
    assert body_fields(by_version[version].message)["user"] == "unresolved"
    assert body_fields(by_version[bobs["metadata"]["resourceVersion"]].message)["user"] == bob


def test_change_without_its_audit_fact_waits_the_grace_window_and_shutdown_does_not(
    control_plane: ControlPlane, namespace: str, remote: Remote, daemon: Reverserd
) -> None:
    """This API server sends no audit events: every change waits out the grace window."""
    port = free_port()
    waiting = [*webhook_arguments(control_plane, "audit", port), "--attribution-grace=600"]
    daemon.extra_args = waiting
    apply(control_plane, *mirror_setup(namespace, remote.url, secret=remote.secret))
    daemon.start()
    wait_synced(control_plane, namespace)
    apply(control_plane, configmap(namespace, "app", {"color": "blue"}))
    wait_until(
        lambda: query_journal(daemon, "SELECT seq FROM events WHERE name = 'app'"),
        ATTRIBUTED_TIMEOUT_S,
        daemon.log_tail,
    )
    time.sleep(WAITING_S)
    assert change_commits(remote) == []
    # A consumer waiting for a fact stops at once on SIGTERM.
    assert daemon.stop() < SHUTDOWN_WHILE_WAITING_S
    daemon.extra_args = [*webhook_arguments(control_plane, "audit", port), "--attribution-grace=1"]
    daemon.start()

    def committed() -> Authorship | None:
        found = change_commits(remote)
        return found[0] if found else None

    commit = wait_until(committed, ATTRIBUTED_TIMEOUT_S, daemon.log_tail)
    assert body_fields(commit.message)["user"] == "unresolved"
    assert commit.author_name == COMMITTER
    assert daemon.metric("reverserd_attributions_total", outcome="unresolved") == 1


def test_changes_by_an_excluded_user_are_not_committed_and_the_next_change_brings_them(
    control_plane: ControlPlane,
    namespace: str,
    remote: Remote,
    daemon: Reverserd,
    admission_registered: int,
) -> None:
    daemon.extra_args = webhook_arguments(control_plane, "admission", admission_registered)
    forward_token = control_plane.service_account_token(namespace, "forward")
    carol_token = control_plane.service_account_token(namespace, "carol")
    provider, target, rule = mirror_setup(namespace, remote.url, secret=remote.secret)
    target["spec"]["excludeUsers"] = [f"system:serviceaccount:{namespace}:forward"]
    apply(control_plane, provider, target, rule, configmap(namespace, "app"))
    daemon.start()
    wait_synced(control_plane, namespace)
    validated = conditions(control_plane, "gittarget", namespace, "mirror")["Validated"]
    assert (validated["status"], validated["reason"]) == ("True", "Validated")
    wait_for_subjects(remote.path, daemon, "reconcile: sync 1 resources")
    app = f"{collection(configmap(namespace, 'x'), 'configmaps')}/app"

    for round_ in range(3):
        patch = [("PATCH", app, {"data": {"key": f"forward {round_}"}})]
        asyncio.run(send_all(control_plane, patch, forward_token))
    # Someone else's change is committed, attributed to them, with the whole current state.
    asyncio.run(
        send_all(control_plane, [("PATCH", app, {"data": {"other": "carol"}})], carol_token)
    )
    update = f"[UPDATE] v1/configmaps/{namespace}/app"
    wait_for_subjects(remote.path, daemon, update)
    assert subjects(remote.path) == ["reconcile: sync 1 resources", update]
    commit = change_commits(remote)[-1]
    assert body_fields(commit.message)["user"] == f"system:serviceaccount:{namespace}:carol"
    written = tree(remote.path)[f"live-cluster/v1/configmaps/{namespace}/app.yaml"]
    assert b"key: forward 2" in written and b"other: carol" in written
