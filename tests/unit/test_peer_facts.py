"""``POST /peer/facts`` stores only facts signed with the group's secret, once, and refuses
replays, stale signatures, forwards meant for another replica, hostile headers, slow and
oversized bodies; a forwarder sends facts only to a peer whose certificate carries the shared
name under a trusted root, and counts and logs a peer's refusal. Real journal databases and
real HTTP servers (the webhook app as the webhook process serves it; over TLS for the
forwarder)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import REGISTRY

from reverserd.attribution import peers
from reverserd.attribution.facts import Fact
from reverserd.attribution.peers import (
    CLOCK_SKEW_S,
    MAX_PEER_BODY_BYTES,
    PEER_IN_FLIGHT,
    PEER_PATH,
    RECIPIENT_HEADER,
    SIGNATURE_HEADER,
    TIME_HEADER,
    FactForwarder,
    forwarded_facts,
    peer_client_tls,
    read_secret,
    signed_headers,
)
from reverserd.attribution.store import FactWriter, open_fact_connection
from reverserd.attribution.webhooks import build_webhook_app
from reverserd.journal import JournalReader, JournalWriter
from reverserd.kube.lease import PEER_ADDRESS_ANNOTATION, LeaseTiming
from reverserd.kube.shards import BUCKETS_LABEL, ShardCoordinator, ShardSettings

SECRET = b"s" * 40
# The identity of the replica the fixture's endpoint serves.
RECIPIENT = "replica-b"


def forward(origin: str, *usernames: str) -> bytes:
    """A forward's body: one admission fact per user, as a sender reads them from its journal."""
    rows = [
        [index + 1, *Fact(
            "admission", "UPDATE", "", "configmaps", "ns", f"cm-{index}", "u1", None, "1",
            "d" * 64, user, ("team",), "r1", time.time(),
        ).row()[:14]]
        for index, user in enumerate(usernames)
    ]  # fmt: skip
    return orjson.dumps({"origin": origin, "facts": rows})


# Users of the facts the receiving writer announced as stored, in order.
ANNOUNCED: list[str] = []


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[tuple[TestClient[object, object], Path]]:
    journal = await JournalWriter.open(tmp_path)
    connection = await open_fact_connection(tmp_path)
    ANNOUNCED.clear()
    writer = FactWriter(connection, lambda facts, _: ANNOUNCED.extend(f.username for f in facts))
    app = build_webhook_app(writer.record, ["admission"], peer_secret=SECRET, replica=RECIPIENT)
    client: TestClient[object, object] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, tmp_path
    finally:
        await client.close()
        await connection.close()
        await journal.close()


async def stored(connection_dir: Path) -> list[tuple[str, str | None, int | None]]:
    connection = await open_fact_connection(connection_dir)
    try:
        rows = await connection.execute_fetchall(
            "SELECT username, origin, origin_id FROM attribution_facts ORDER BY id"
        )
        return [(row[0], row[1], row[2]) for row in rows]
    finally:
        await connection.close()


async def test_a_signed_forward_is_stored_once_and_its_replay_refused(
    peer: tuple[TestClient[object, object], Path],
) -> None:
    client, state = peer
    body = forward("replica-a", "jane", "joe")
    headers = signed_headers(SECRET, RECIPIENT, body)
    answer = await client.post(PEER_PATH, data=body, headers=headers)
    assert answer.status == 200
    assert await stored(state) == [("jane", "replica-a", 1), ("joe", "replica-a", 2)]
    replay = await client.post(PEER_PATH, data=body, headers=headers)
    assert replay.status == 409
    # The sender retrying (a new signature: its answer was lost) stores nothing twice.
    retry = await client.post(PEER_PATH, data=body, headers=signed_headers(SECRET, RECIPIENT, body))
    assert retry.status == 200
    assert len(await stored(state)) == 2
    # Only what was stored is announced: the resolver and the metrics count each fact once.
    assert ANNOUNCED == ["jane", "joe"]


async def test_forged_stale_and_oversized_forwards_store_nothing(
    peer: tuple[TestClient[object, object], Path],
) -> None:
    client, state = peer
    body = forward("replica-a", "mallory")
    refused = {
        "unsigned": await client.post(PEER_PATH, data=body),
        "wrong secret": await client.post(
            PEER_PATH, data=body, headers=signed_headers(b"x" * 40, RECIPIENT, body)
        ),
        "another body": await client.post(
            PEER_PATH,
            data=forward("replica-a", "mallory", "eve"),
            headers=signed_headers(SECRET, RECIPIENT, body),
        ),
        "stale": await client.post(
            PEER_PATH,
            data=body,
            headers=signed_headers(SECRET, RECIPIENT, body, time.time() - CLOCK_SKEW_S - 5),
        ),
        "ahead": await client.post(
            PEER_PATH,
            data=body,
            headers=signed_headers(SECRET, RECIPIENT, body, time.time() + CLOCK_SKEW_S + 5),
        ),
    }
    assert {why: answer.status for why, answer in refused.items()} == dict.fromkeys(refused, 401)
    large = b" " * (MAX_PEER_BODY_BYTES + 1)
    oversized = await client.post(
        PEER_PATH, data=large, headers=signed_headers(SECRET, RECIPIENT, large)
    )
    assert oversized.status == 413
    assert await stored(state) == []


def test_a_body_that_is_no_forward_is_none() -> None:
    good = orjson.loads(forward("replica-a", "jane"))
    assert forwarded_facts(good) is not None
    for bad in (
        [],
        {"origin": "", "facts": good["facts"]},
        {"origin": "replica-a", "facts": [good["facts"][0][:-1]]},
        {"origin": "replica-a", "facts": [[True, *good["facts"][0][1:]]]},
        {"origin": "replica-a", "facts": [[*good["facts"][0][:12], "[1]", *good["facts"][0][13:]]]},
        {"origin": "replica-a", "facts": [[*good["facts"][0][:1], "exec", *good["facts"][0][2:]]]},
    ):
        assert forwarded_facts(bad) is None, bad


async def test_a_forward_signed_for_another_replica_stores_nothing(
    peer: tuple[TestClient[object, object], Path],
) -> None:
    client, state = peer
    body = forward("replica-a", "jane")
    # Meant for replica-c (replayed here, or sent to an address replica-b now has).
    elsewhere = await client.post(
        PEER_PATH, data=body, headers=signed_headers(SECRET, "replica-c", body)
    )
    assert elsewhere.status == 421
    # The recipient is signed: renaming it in the header breaks the signature.
    renamed = {**signed_headers(SECRET, "replica-c", body), RECIPIENT_HEADER: RECIPIENT}
    assert (await client.post(PEER_PATH, data=body, headers=renamed)).status == 401
    assert await stored(state) == []


async def raw_request(client: TestClient[object, object], head: bytes, body: bytes) -> bytes:
    """Send ``head`` (up to its blank line) and ``body``; the status line of the answer."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(head + body)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


async def test_a_non_ascii_header_is_refused_before_the_body_is_read(
    peer: tuple[TestClient[object, object], Path],
) -> None:
    client, state = peer
    # 1000 bytes announced and none sent: the answer comes without waiting for them.
    head = (
        f"POST {PEER_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
        f"{TIME_HEADER}: {time.time()}\r\n".encode()
        + SIGNATURE_HEADER.encode()
        + b": \xff\xfe\r\n\r\n"
    )
    assert (await raw_request(client, head, b"")).split(b" ")[1] == b"400"
    assert await stored(state) == []


async def test_clients_dripping_their_bodies_do_not_keep_forwards_out(
    peer: tuple[TestClient[object, object], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, state = peer
    monkeypatch.setattr(peers, "PEER_READ_TIMEOUT_S", 0.5)
    head = f"POST {PEER_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
    # Every slot taken by a client that sends 10 of the 1000 bytes it announced, then stalls.
    dripping = [
        asyncio.create_task(raw_request(client, head, b"{" * 10)) for _ in range(PEER_IN_FLIGHT)
    ]
    await asyncio.sleep(0.1)
    body = forward("replica-a", "jane")
    genuine = await asyncio.wait_for(
        client.post(PEER_PATH, data=body, headers=signed_headers(SECRET, RECIPIENT, body)), 3
    )
    assert genuine.status == 200
    assert [line.split(b" ")[1] for line in await asyncio.gather(*dripping)] == [b"408"] * 4
    assert await stored(state) == [("jane", "replica-a", 1)]


def test_the_secret_keeps_its_whitespace_but_one_trailing_newline(tmp_path: Path) -> None:
    file = tmp_path / "secret"
    # 32 random bytes may begin and end with whitespace; they are the secret.
    secret = b"\n \t" + b"k" * 27 + b"\r "
    file.write_bytes(secret + b"\n")
    assert read_secret(file) == secret
    file.write_bytes(secret)
    assert read_secret(file) == secret
    file.write_bytes(b" " + b"k" * 30 + b"\n")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        read_secret(file)


def test_a_membership_lease_advertises_only_its_own_replica() -> None:
    shards = ShardCoordinator(
        None,  # type: ignore[arg-type]  # no call reaches the API server here
        ShardSettings(4, "replica-a", "default", "g", LeaseTiming.scaled(15)),
    )

    def member(name: str, holder: str, address: str) -> dict[str, object]:
        return {
            "metadata": {
                "name": name,
                "labels": {BUCKETS_LABEL: "4"},
                "annotations": {PEER_ADDRESS_ANNOTATION: address},
            },
            "spec": {"holderIdentity": holder, "renewTime": "now", "leaseDurationSeconds": 15},
        }

    shards._live_members(
        {
            "g-member-replica-b": member("g-member-replica-b", "replica-b", "10.0.0.2:9443"),
            # Written by someone else: another replica's (or our own) identity in a Lease
            # whose name is not that replica's.
            "g-member-replica-x": member("g-member-replica-x", "replica-c", "10.6.6.6:9443"),
            "g-member-replica-y": member("g-member-replica-y", "replica-a", "10.6.6.7:9443"),
        }
    )
    assert shards.peers() == {"replica-b": "10.0.0.2:9443"}


# The name the serving certificate every replica shares carries (the chart's: the Service).
SHARED_NAME = "reverserd-webhook.ops.svc"


class Issuer:
    """A CA (a self-signed root, or an intermediate of one) issuing server certificates."""

    def __init__(self, name: str, parent: Issuer | None = None) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        # The certificates above this one, up to the root.
        self.chain = [] if parent is None else [parent.cert, *parent.chain]
        self.cert = self._issue(name, self.key.public_key(), parent, ca=True)

    def _issue(
        self, name: str, public: ec.EllipticCurvePublicKey, parent: Issuer | None, ca: bool
    ) -> x509.Certificate:
        signer = parent or self
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if parent is None and ca else signer.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
            builder = builder.add_extension(usage, critical=True)
        else:
            san = x509.SubjectAlternativeName([x509.DNSName(name)])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer.key, hashes.SHA256())

    def serving(self, directory: Path, name: str) -> tuple[Path, Path]:
        """A certificate for ``name`` issued here: its file (with the intermediates) and key."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._issue(name, key.public_key(), self, ca=False)
        chain = [cert, *([self.cert] if self.chain else [])]
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tls.crt").write_bytes(b"".join(pem(c) for c in chain))
        (directory / "tls.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return directory / "tls.crt", directory / "tls.key"


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def forwards(outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("reverserd_attribution_forwards_total", {"outcome": outcome})
        or 0.0
    )


async def forward_over_tls(
    tmp_path: Path,
    serving: tuple[Path, Path],
    trusted: Path,
    secret: bytes = SECRET,
    wait_s: float = 2.0,
) -> list[tuple[str, str | None, int | None]]:
    """One fact received by replica-a, forwarded by its FactForwarder over TLS to replica-b's
    real endpoint serving ``serving``; what replica-b stored within ``wait_s``."""
    sender, receiver = tmp_path / "sender", tmp_path / "receiver"
    journals = [await JournalWriter.open(sender), await JournalWriter.open(receiver)]
    sent, kept = await open_fact_connection(sender), await open_fact_connection(receiver)
    await FactWriter(sent, lambda *_: None).record(
        [Fact("admission", "UPDATE", "", "configmaps", "ns", "cm", "u1", None, "1", "d" * 64,
              "jane", ("team",), "r1", time.time())]
    )  # fmt: skip
    app = build_webhook_app(
        FactWriter(kept, lambda *_: None).record, ["admission"], peer_secret=SECRET, replica="b"
    )
    runner = web.AppRunner(app)
    await runner.setup()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(*serving)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    reader = await JournalReader.open(sender)
    forwarder = FactForwarder(
        reader.connection, "a", secret, peer_client_tls(trusted), SHARED_NAME,
        lambda: {"b": f"127.0.0.1:{port}"},
    )  # fmt: skip
    running = asyncio.create_task(forwarder.run())
    try:
        for _ in range(int(wait_s / 0.05)):
            if await stored(receiver):
                break
            await asyncio.sleep(0.05)
        return await stored(receiver)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await runner.cleanup()
        await reader.close()
        for connection in (sent, kept):
            await connection.close()
        for journal in journals:
            await journal.close()


async def test_facts_go_only_to_a_peer_with_the_shared_name_from_a_trusted_root(
    tmp_path: Path,
) -> None:
    root = Issuer("group root")
    root_file = tmp_path / "root.crt"
    root_file.write_bytes(pem(root.cert))
    genuine = root.serving(tmp_path / "genuine", SHARED_NAME)
    assert await forward_over_tls(tmp_path / "1", genuine, root_file) == [("jane", "a", 1)]
    # A tenant's certificate from the same issuer, for a name of its own: sent nothing.
    failed = forwards("failed")
    tenant = root.serving(tmp_path / "tenant", "tenant.example")
    assert await forward_over_tls(tmp_path / "2", tenant, root_file, wait_s=1.0) == []
    assert forwards("failed") > failed
    # --peer-ca by default: the serving certificate's file, here with its intermediate but not
    # the root. The intermediate is no trust anchor, so a certificate it issued to someone
    # else (even for the shared name) is sent nothing.
    intermediate = Issuer("shared intermediate", root)
    ours, _ = intermediate.serving(tmp_path / "ours", SHARED_NAME)
    assert len(ours.read_bytes().split(b"BEGIN CERTIFICATE")) == 3  # the leaf, the intermediate
    other = intermediate.serving(tmp_path / "other", SHARED_NAME)
    assert await forward_over_tls(tmp_path / "3", other, ours, wait_s=1.0) == []
    # With the root in the file (as the README asks), the replicas reach each other.
    ours.write_bytes(ours.read_bytes() + pem(root.cert))
    assert await forward_over_tls(tmp_path / "4", other, ours) == [("jane", "a", 1)]


async def test_a_peer_refusing_our_forwards_is_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = Issuer("group root")
    root_file = tmp_path / "root.crt"
    root_file.write_bytes(pem(root.cert))
    genuine = root.serving(tmp_path / "genuine", SHARED_NAME)
    refused, failed = forwards("refused"), forwards("failed")
    other_secret = b"another-group-secret-of-40-bytes-length!"
    with caplog.at_level(logging.WARNING, logger="reverserd.attribution.peers"):
        # Long enough for two sends (the retry comes at the next look, within a second).
        assert await forward_over_tls(tmp_path, genuine, root_file, other_secret, 1.5) == []
    assert forwards("refused") >= refused + 2
    assert forwards("failed") == failed
    told = [r for r in caplog.records if r.name == "reverserd.attribution.peers"]
    assert len(told) == 1, told
    assert "401" in told[0].getMessage() and told[0].peer == "b"
    assert other_secret.decode() not in caplog.text and SECRET.decode() not in caplog.text
