"""Attribution with several active replicas: a fact received by one replica reaches the replica
that owns the change, and nothing but a genuine replica of the group can make a commit name a
user that way. Real ``reverserd run`` processes (``--shards``), each with its own state dir,
against one API server that calls the admission webhook of one of them only."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from reverserd.attribution.peers import MAX_PEER_BODY_BYTES, PEER_PATH, signed_headers
from reverserd.git.urls import branch_key
from reverserd.kube.shards import bucket_of
from testbed.controlplane import LEASE_NAMESPACE, ControlPlane, free_port
from testbed.gitservers import Authorship, authorship
from testbed.harness import (
    Reverserd,
    apply,
    query_journal,
    wait_synced,
    wait_until,
    webhook_arguments,
)
from testbed.manifests import admission_webhook, configmap, git_provider, git_target, watch_rule
from tests.conftest import Remote

BUCKETS = 2
# Long enough that a replica killed and started again keeps its bucket (nobody takes it before
# a whole duration), so its own commit is what the fault test sees.
LEASE_S = 30
# A change an admission fact can prove waits this long for a forwarded fact before it is
# committed unresolved: the owner's restart and the sender's backoff fit in it.
GRACE_S = 30
FOLDER = "live-cluster"
USER = "jane@example.com"
FORGER = "mallory@example.com"
SECRET = b"a-peer-secret-shared-by-the-group-of-this-test"
# Changes of this label are never sent to the webhook: only a forged fact could attribute them.
UNWATCHED = "unwatched"
COMMITTED_TIMEOUT_S = 120.0
# The webhook answers from its own process, whatever its daemon does (the timeout is 2 s).
ANSWER_WITHOUT_THE_DAEMON_S = 2.0
# How long the forwarding replica stays frozen: longer than the push interval (1 s).
FORWARDING_FROZEN_S = 4.0


@dataclass
class Group:
    """Two replicas; ``owner`` holds the bucket of ``branch``, the API server calls
    ``receiver``'s webhook only."""

    daemons: dict[str, Reverserd]
    webhook_ports: dict[str, int]
    branch: str
    owner: str
    receiver: str

    def describe(self) -> str:
        return "\n".join(
            f"--- {name}\n{daemon.log_tail(3000)}" for name, daemon in self.daemons.items()
        )


def branches(remote: Remote) -> list[str]:
    """One branch in each bucket."""
    found: dict[int, str] = {}
    index = 0
    while len(found) < BUCKETS:
        name = f"attr-{index}"
        found.setdefault(bucket_of(branch_key(remote.url, name), BUCKETS), name)
        index += 1
    return [found[index] for index in range(BUCKETS)]


def held(daemon: Reverserd) -> set[int]:
    return set(daemon.status()["shards"]["held"])


def forwarding_replicas(
    plane: ControlPlane, namespace: str, tmp_path: Path, mode: Callable[[str], list[str]]
) -> tuple[dict[str, Reverserd], dict[str, int]]:
    """Two replicas (not started) with admission attribution and a peer secret, so that each
    forwards the facts it hears, with the flags ``mode`` gives each; and their webhook ports."""
    secret = tmp_path / "peer-secret"
    secret.write_bytes(SECRET)
    ports = {name: free_port() for name in ("replica-a", "replica-b")}
    daemons = {
        name: Reverserd(
            plane,
            tmp_path / name,
            [
                *webhook_arguments(plane, "admission", port),
                f"--peer-address=127.0.0.1:{port}",
                f"--peer-secret-file={secret}",
                f"--attribution-grace={GRACE_S}",
                f"--leader-election-namespace={LEASE_NAMESPACE}",
                f"--leader-election-id=attr-{namespace}",
                f"--git-author-name={name}",
                *mode(name),
            ],
        )
        for name, port in ports.items()
    }
    return daemons, ports


@contextlib.contextmanager
def sharded_pair(
    plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> Iterator[Group]:
    """Both replicas started and balanced, the targets synced, the webhook registered for the
    replica that does not own the first branch; everything stopped and removed at the end."""
    # The serving certificate with its root, as --peer-ca's default needs it.
    chain = tmp_path / "webhook-chain.crt"
    chain.write_bytes(
        (plane.pki / "webhook.crt").read_bytes() + (plane.pki / "ca.crt").read_bytes()
    )
    on = branches(remote)
    manifests: list[dict[str, object]] = [
        git_provider(
            namespace, "mirror", remote.url, secret=remote.secret, branches=["attr-*"],
            push={"interval": "1s"},
        )
    ]  # fmt: skip
    for branch in on:
        manifests.append(git_target(namespace, branch, "mirror", FOLDER, branch))
        manifests.append(watch_rule(namespace, branch, branch, [{"resources": ["configmaps"]}]))
    apply(plane, *manifests)
    daemons, ports = forwarding_replicas(
        plane,
        namespace,
        tmp_path,
        lambda name: [
            # As the chart does, one trusts the CA of the shared serving certificate; the
            # other, by default, the root in its certificate file.
            *(
                [f"--peer-ca={plane.pki / 'ca.crt'}"]
                if name == "replica-a"
                else [f"--webhook-tls-cert={chain}"]
            ),
            f"--shards={BUCKETS}",
            f"--replica-id={name}",
            f"--shard-lease-duration={LEASE_S}",
        ],
    )
    webhook = f"reverserd-attribution-{namespace}"
    try:
        for daemon in daemons.values():
            daemon.start()
        group = Group(daemons, ports, on[0], "", "")

        def balanced() -> bool:
            shares = [held(daemon) for daemon in daemons.values()]
            return sorted(i for share in shares for i in share) == list(range(BUCKETS)) and all(
                len(share) == BUCKETS // len(daemons) for share in shares
            )

        wait_until(balanced, 90, group.describe)
        bucket = bucket_of(branch_key(remote.url, group.branch), BUCKETS)
        group.owner = next(name for name, daemon in daemons.items() if bucket in held(daemon))
        group.receiver = next(name for name in daemons if name != group.owner)
        registration = admission_webhook(
            webhook,
            f"https://127.0.0.1:{ports[group.receiver]}/admission",
            (plane.pki / "ca.crt").read_bytes(),
            namespace,
        )
        registration["webhooks"][0]["objectSelector"] = {
            "matchExpressions": [{"key": UNWATCHED, "operator": "DoesNotExist"}]
        }
        apply(plane, registration)
        for branch in on:
            wait_synced(plane, namespace, branch)
        webhook_in_use(plane, namespace, daemons[group.receiver], group)
        yield group
    finally:
        plane.kubectl("delete", "validatingwebhookconfiguration", webhook, "--ignore-not-found")
        for daemon in daemons.values():
            daemon.ensure_stopped()


def webhook_in_use(plane: ControlPlane, namespace: str, receiver: Reverserd, group: Group) -> None:
    """Wait until the API server calls the newly registered webhook (it notices in a moment)."""
    as_user(plane, "create", "configmap", "warm-up", "-n", namespace, "--from-literal=n=0")
    attempt = iter(range(1, 1000))

    def heard() -> bool:
        if query_journal(receiver, "SELECT 1 FROM attribution_facts WHERE name = 'warm-up'"):
            return True
        as_user(plane, "patch", "configmap", "warm-up", "-n", namespace, "-p",
                json.dumps({"data": {"n": str(next(attempt))}}))  # fmt: skip
        return False

    wait_until(heard, 60, group.describe)


def as_user(plane: ControlPlane, *args: str, user: str = USER) -> str:
    """kubectl as ``user`` (impersonated, with the rights of system:masters)."""
    return plane.kubectl(f"--as={user}", "--as-group=system:masters", *args)


def body_fields(message: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in message.splitlines()[1:] if ": " in line)


def commit_of(remote: Remote, branch: str, subject: str) -> Authorship | None:
    found = [c for c in authorship(remote.path, branch) if c.message.split("\n")[0] == subject]
    return found[0] if found else None


def wait_commit(remote: Remote, group: Group, branch: str, subject: str) -> Authorship:
    return wait_until(
        lambda: commit_of(remote, branch, subject), COMMITTED_TIMEOUT_S, group.describe
    )


def subject(operation: str, namespace: str, name: str) -> str:
    return f"[{operation}] v1/configmaps/{namespace}/{name}"


def assert_by(commit: Authorship, user: str, committer: str) -> None:
    assert body_fields(commit.message).get("user") == user, commit
    assert commit.author_email == user, commit
    assert commit.committer_name == committer, commit


def post(port: int, body: bytes, headers: dict[str, str]) -> int:
    """POST ``body`` to a replica's peer path; returns the HTTP status."""
    context = ssl.create_default_context(cafile=None)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}{PEER_PATH}", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def announced_length_status(port: int, length: int) -> int:
    """The status of a POST that announces ``length`` bytes and sends none: refused unread."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(
            f"POST {PEER_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
            "Content-Type: application/json\r\n\r\n".encode()
        )
        return int(tls.recv(4096).split(b" ", 2)[1])


def forged_forward(owner: Reverserd, namespace: str, name: str, user: str) -> bytes:
    """A forward of a fact that matches the owner's newest event of ``name`` exactly (its uid,
    predecessor and digest, read from the owner's journal): stored, it would attribute that
    change to ``user``."""
    rows = query_journal(
        owner,
        "SELECT e.uid, o.prior_resource_version, o.digest FROM events e"
        " JOIN event_origins o ON o.seq = e.seq WHERE e.namespace = ? AND e.name = ?"
        " AND e.kind = 'UPDATE' ORDER BY e.seq DESC LIMIT 1",
        (namespace, name),
    )
    uid, prior, digest = rows[0]
    assert digest is not None and prior is not None
    fact = [
        1, "admission", "UPDATE", "", "configmaps", namespace, name, uid, None, prior, digest,
        user, "[]", "forged", time.time(),
    ]  # fmt: skip
    return orjson.dumps({"origin": "replica-x", "facts": [fact]})


def test_a_fact_received_by_one_replica_names_the_user_in_the_owners_commit_and_forgeries_do_not(
    control_plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    with sharded_pair(control_plane, namespace, remote, tmp_path) as group:
        owner = group.daemons[group.owner]
        other_branch = next(b for b in branches(remote) if b != group.branch)
        as_user(control_plane, "create", "configmap", "app", "-n", namespace, "--from-literal=v=1")
        as_user(control_plane, "patch", "configmap", "app", "-n", namespace, "-p",
                '{"data": {"v": "2"}}')  # fmt: skip
        for operation in ("CREATE", "UPDATE"):
            # The owner's commit names the user whose fact only the receiver heard...
            assert_by(
                wait_commit(remote, group, group.branch, subject(operation, namespace, "app")),
                USER,
                group.owner,
            )
            # ...as the receiver's own commit of the same change on its branch does.
            assert_by(
                wait_commit(remote, group, other_branch, subject(operation, namespace, "app")),
                USER,
                group.receiver,
            )
        forwarded = query_journal(
            owner,
            "SELECT DISTINCT origin FROM attribution_facts WHERE name = 'app' AND username = ?",
            (USER,),
        )
        assert forwarded == [(group.receiver,)]

        # A change no webhook hears: only a forged forward could attribute it.
        quiet = configmap(namespace, "quiet", {"v": "1"})
        quiet["metadata"]["labels"] = {UNWATCHED: "yes"}
        apply(control_plane, quiet)
        wait_commit(remote, group, group.branch, subject("CREATE", namespace, "quiet"))
        control_plane.kubectl("patch", "configmap", "quiet", "-n", namespace, "-p",
                              '{"data": {"v": "2"}}')  # fmt: skip
        wait_until(
            lambda: query_journal(
                owner,
                "SELECT 1 FROM events e JOIN event_origins o ON o.seq = e.seq"
                " WHERE e.name = 'quiet' AND e.kind = 'UPDATE' AND o.digest IS NOT NULL",
            ),
            30,
            group.describe,
        )
        # Within the grace window the owner waits for a forwarded fact of this change.
        port = group.webhook_ports[group.owner]
        body = forged_forward(owner, namespace, "quiet", FORGER)
        stale = signed_headers(SECRET, group.owner, body, time.time() - 600)
        refused = {
            "unsigned": post(port, body, {"Content-Type": "application/json"}),
            "wrong secret": post(port, body, signed_headers(b"w" * 48, group.owner, body)),
            # Signed for the other replica (a forward to it, replayed here): not for this one.
            "another recipient": post(port, body, signed_headers(SECRET, group.receiver, body)),
            "stale": post(port, body, stale),
            "oversized": announced_length_status(port, MAX_PEER_BODY_BYTES + 1),
        }
        # A genuine forward (the group's secret), stored once; sent again it is refused.
        genuine = orjson.dumps(
            {
                "origin": "replica-x",
                "facts": [
                    [7, "admission", "UPDATE", "", "configmaps", namespace, "elsewhere", "u",
                     None, "1", "0" * 64, "carol@example.com", "[]", "r", time.time()]
                ],
            }
        )  # fmt: skip
        headers = signed_headers(SECRET, group.owner, genuine)
        assert post(port, genuine, headers) == 200
        assert post(port, genuine, headers) == 409
        assert query_journal(
            owner, "SELECT COUNT(*) FROM attribution_facts WHERE username = 'carol@example.com'"
        ) == [(1,)]
        # The forged fact matched the change exactly: stored, it would have named the forger.
        committed = wait_commit(remote, group, group.branch, subject("UPDATE", namespace, "quiet"))
        assert body_fields(committed.message).get("user") == "unresolved", committed
        assert committed.author_name == group.owner
        assert query_journal(
            owner, "SELECT COUNT(*) FROM attribution_facts WHERE username = ?", (FORGER,)
        ) == [(0,)]
        assert refused == {
            "unsigned": 401,
            "wrong secret": 401,
            "another recipient": 421,
            "stale": 401,
            "oversized": 413,
        }


def forwards_failed(daemon: Reverserd) -> float:
    metrics = (daemon.get("/metrics") or b"").decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('reverserd_attribution_forwards_total{outcome="failed"}')
    )


def test_a_fact_forwarded_late_or_while_the_owner_is_down_still_names_the_user(
    control_plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    with sharded_pair(control_plane, namespace, remote, tmp_path) as group:
        owner = group.daemons[group.owner]
        receiver = group.daemons[group.receiver]
        assert owner.process is not None and receiver.process is not None
        for name in ("early", "late"):
            as_user(
                control_plane, "create", "configmap", name, "-n", namespace, "--from-literal=v=1"
            )
            assert_by(
                wait_commit(remote, group, group.branch, subject("CREATE", namespace, name)),
                USER,
                group.owner,
            )

        # The receiver's daemon, which forwards, is frozen; its webhook process still answers
        # (and journals the fact) at once, and the owner's commit waits for the late fact.
        receiver.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            as_user(control_plane, "patch", "configmap", "early", "-n", namespace, "-p",
                    '{"data": {"v": "2"}}')  # fmt: skip
            assert time.monotonic() - started < ANSWER_WITHOUT_THE_DAEMON_S
            wait_until(
                lambda: query_journal(
                    owner, "SELECT 1 FROM events WHERE name = 'early' AND kind = 'UPDATE'"
                ),
                30,
                group.describe,
            )
            # Longer than the push interval: a commit that did not wait would be pushed.
            time.sleep(FORWARDING_FROZEN_S)
            assert commit_of(remote, group.branch, subject("UPDATE", namespace, "early")) is None
        finally:
            receiver.process.send_signal(signal.SIGCONT)
        assert_by(
            wait_commit(remote, group, group.branch, subject("UPDATE", namespace, "early")),
            USER,
            group.owner,
        )

        owner.kill()
        failed_before = forwards_failed(receiver)
        as_user(control_plane, "patch", "configmap", "late", "-n", namespace, "-p",
                '{"data": {"v": "2"}}')  # fmt: skip
        # The receiver tried to forward the fact to the owner, which was down.
        wait_until(lambda: forwards_failed(receiver) > failed_before, 30, group.describe)
        owner.start()
        # The owner, back with its state dir and its bucket (its Lease had not expired), gets
        # the fact from the receiver's retry and names the user in its own commit.
        assert_by(
            wait_commit(remote, group, group.branch, subject("UPDATE", namespace, "late")),
            USER,
            group.owner,
        )


def test_under_leader_election_the_standby_forwards_the_facts_it_hears_to_the_leader(
    control_plane: ControlPlane, namespace: str, remote: Remote, tmp_path: Path
) -> None:
    """``--leader-elect`` with a peer secret: the API server calls the standby's webhook only,
    and the leader's commits still name the user, from the facts the standby forwarded to the
    address the leader Lease advertises."""
    branch = "attr-0"
    apply(
        control_plane,
        git_provider(namespace, "mirror", remote.url, secret=remote.secret, branches=[branch]),
        git_target(namespace, branch, "mirror", FOLDER, branch),
        watch_rule(namespace, branch, branch, [{"resources": ["configmaps"]}]),
    )
    daemons, ports = forwarding_replicas(
        control_plane,
        namespace,
        tmp_path,
        lambda name: [f"--peer-ca={control_plane.pki / 'ca.crt'}", "--leader-elect"],
    )
    webhook = f"reverserd-attribution-{namespace}"
    try:
        leader, standby = daemons["replica-a"], daemons["replica-b"]
        leader.start()
        wait_until(lambda: leader.status()["role"] == "leader", 60, leader.log_tail)
        standby.start()
        group = Group(daemons, ports, branch, "replica-a", "replica-b")
        wait_until(lambda: standby.status()["role"] == "standby", 60, group.describe)
        apply(
            control_plane,
            admission_webhook(
                webhook,
                f"https://127.0.0.1:{ports['replica-b']}/admission",
                (control_plane.pki / "ca.crt").read_bytes(),
                namespace,
            ),
        )
        wait_synced(control_plane, namespace, branch)
        webhook_in_use(control_plane, namespace, standby, group)
        as_user(control_plane, "create", "configmap", "app", "-n", namespace, "--from-literal=v=1")
        assert_by(
            wait_commit(remote, group, branch, subject("CREATE", namespace, "app")),
            USER,
            "replica-a",
        )
        # Heard by the standby only, stored by the leader as forwarded from it.
        assert (
            query_journal(
                leader, "SELECT 1 FROM attribution_facts WHERE name = 'app' AND origin IS NULL"
            )
            == []
        )
        assert query_journal(
            leader, "SELECT 1 FROM attribution_facts WHERE name = 'app' AND origin IS NOT NULL"
        )
    finally:
        control_plane.kubectl(
            "delete", "validatingwebhookconfiguration", webhook, "--ignore-not-found"
        )
        for daemon in daemons.values():
            daemon.ensure_stopped()
