"""``POST /peer/facts`` stores only facts signed with the group's secret, once, and refuses
replays, stale signatures and oversized bodies. A real journal database and a real HTTP server
(the webhook app as the webhook process serves it), no TLS: the endpoint's own checks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from reverserd.attribution.facts import Fact
from reverserd.attribution.peers import (
    CLOCK_SKEW_S,
    MAX_PEER_BODY_BYTES,
    PEER_PATH,
    forwarded_facts,
    signed_headers,
)
from reverserd.attribution.store import FactWriter, open_fact_connection
from reverserd.attribution.webhooks import build_webhook_app
from reverserd.journal import JournalWriter

SECRET = b"s" * 40


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
    app = build_webhook_app(writer.record, ["admission"], peer_secret=SECRET)
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
    headers = signed_headers(SECRET, body)
    answer = await client.post(PEER_PATH, data=body, headers=headers)
    assert answer.status == 200
    assert await stored(state) == [("jane", "replica-a", 1), ("joe", "replica-a", 2)]
    replay = await client.post(PEER_PATH, data=body, headers=headers)
    assert replay.status == 409
    # The sender retrying (a new signature: its answer was lost) stores nothing twice.
    retry = await client.post(PEER_PATH, data=body, headers=signed_headers(SECRET, body))
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
            PEER_PATH, data=body, headers=signed_headers(b"x" * 40, body)
        ),
        "another body": await client.post(
            PEER_PATH,
            data=forward("replica-a", "mallory", "eve"),
            headers=signed_headers(SECRET, body),
        ),
        "stale": await client.post(
            PEER_PATH,
            data=body,
            headers=signed_headers(SECRET, body, time.time() - CLOCK_SKEW_S - 5),
        ),
        "ahead": await client.post(
            PEER_PATH,
            data=body,
            headers=signed_headers(SECRET, body, time.time() + CLOCK_SKEW_S + 5),
        ),
    }
    assert {why: answer.status for why, answer in refused.items()} == dict.fromkeys(refused, 401)
    large = b" " * (MAX_PEER_BODY_BYTES + 1)
    oversized = await client.post(PEER_PATH, data=large, headers=signed_headers(SECRET, large))
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
