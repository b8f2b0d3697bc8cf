"""``POST /peer/facts`` stores only facts signed with the group's secret, once, and refuses
replays, stale signatures and oversized bodies. A real journal database and a real HTTP server
(the webhook app as the webhook process serves it), no TLS: the endpoint's own checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

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
    forwarded_facts,
    read_secret,
    signed_headers,
)
from reverserd.attribution.store import FactWriter, open_fact_connection
from reverserd.attribution.webhooks import build_webhook_app
from reverserd.journal import JournalWriter
from reverserd.kube.lease import LeaseTiming
from reverserd.kube.shards import (
    BUCKETS_LABEL,
    PEER_ADDRESS_ANNOTATION,
    ShardCoordinator,
    ShardSettings,
)

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
