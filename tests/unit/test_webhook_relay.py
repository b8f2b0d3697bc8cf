"""The relay from the webhook process to the daemon never stops on a line it cannot use."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiosqlite
from prometheus_client import REGISTRY

from reverserd.attribution.resolver import Resolver
from reverserd.attribution.webhook_process import WebhookProcess, WebhookSettings, _lines

LIMIT = 1024


async def read_all(data: bytes) -> list[bytes]:
    stream = asyncio.StreamReader(limit=LIMIT)
    stream.feed_data(data)
    stream.feed_eof()
    return [line async for line in _lines(stream)]


async def test_over_long_lines_are_skipped_whole_and_relaying_goes_on() -> None:
    longer = b"x" * (4 * LIMIT)
    data = b"first\n" + longer + b"\n" + b"second\n" + longer + b"tail-of-long\n" + b"last"
    assert await read_all(data) == [b"first\n", b"second\n", b"last"]


async def test_a_long_line_still_arriving_is_skipped_too() -> None:
    stream = asyncio.StreamReader(limit=LIMIT)
    stream.feed_data(b"x" * (2 * LIMIT))
    lines = _lines(stream)
    reading = asyncio.ensure_future(anext(lines))
    await asyncio.sleep(0)
    stream.feed_data(b"x" * (2 * LIMIT) + b"\nnext\n")
    assert await reading == b"next\n"


async def test_dropped_facts_are_counted_and_an_unreadable_line_is_skipped(
    tmp_path: Path,
) -> None:
    connection = await aiosqlite.connect(tmp_path / "journal.db")
    settings = WebhookSettings(
        str(tmp_path), "127.0.0.1:0", ("admission",), "", "", None, "", None, "json", "INFO"
    )
    try:
        relay = WebhookProcess(settings, Resolver(connection, ["admission"]))
        before = REGISTRY.get_sample_value("reverserd_attribution_facts_dropped_total") or 0
        await relay._relay(b"not json\n")
        await relay._relay(json.dumps({"facts": [], "dropped": 3}).encode() + b"\n")
        after = REGISTRY.get_sample_value("reverserd_attribution_facts_dropped_total")
        assert after == before + 3
    finally:
        await connection.close()
