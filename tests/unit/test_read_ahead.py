"""The watch's read-ahead: bounded by count and by wire size, never stuck on one large event."""

from __future__ import annotations

import asyncio

from reverserd.watch.watcher import ReadAhead


async def test_a_put_waits_while_the_bytes_are_spent_and_goes_on_once_some_are_taken() -> None:
    ahead = ReadAhead(max_events=100, max_bytes=1000)
    for index in range(4):
        await ahead.put(index, 250)
    late = asyncio.create_task(ahead.put(4, 250))
    await asyncio.sleep(0.05)
    assert not late.done()
    assert await ahead.take(1) == [0]
    await asyncio.wait_for(late, 1)
    assert await ahead.take(10) == [1, 2, 3, 4]


async def test_a_put_waits_while_the_count_is_spent() -> None:
    ahead = ReadAhead(max_events=2, max_bytes=10**9)
    await ahead.put("a")
    await ahead.put("b")
    late = asyncio.create_task(ahead.put("c"))
    await asyncio.sleep(0.05)
    assert not late.done()
    assert await ahead.take(1) == ["a"]
    await asyncio.wait_for(late, 1)


async def test_one_event_larger_than_the_bound_still_passes_alone() -> None:
    ahead = ReadAhead(max_events=100, max_bytes=1000)
    await asyncio.wait_for(ahead.put("huge", 5000), 1)
    taker = asyncio.create_task(ahead.take(10))
    assert await asyncio.wait_for(taker, 1) == ["huge"]
    waiting = asyncio.create_task(ahead.take(10))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await ahead.put("next", 10)
    assert await asyncio.wait_for(waiting, 1) == ["next"]
