"""The relay from the webhook process to the daemon never stops on a line it cannot use."""

from __future__ import annotations

import asyncio

from reverserd.attribution.webhook_process import _lines

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
