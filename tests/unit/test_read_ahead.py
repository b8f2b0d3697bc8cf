"""The watches' read-ahead: a count bound per watch, and one byte budget over all of them that
is never stuck on one large event, starves none, and gets back what a watch leaves behind."""

from __future__ import annotations

import asyncio

from reverserd.watch.watcher import ReadAhead, ReadAheadBudget


async def waits(awaitable: asyncio.Future[None] | asyncio.Task[None]) -> bool:
    await asyncio.sleep(0.05)
    return not awaitable.done()


async def test_the_bytes_are_shared_by_every_watch() -> None:
    budget = ReadAheadBudget(1000)
    first, second = ReadAhead(100, budget), ReadAhead(100, budget)
    for index in range(4):
        await first.put(index, 250)
    late = asyncio.create_task(second.put("late", 250))
    assert await waits(late)
    assert await first.take(1) == [0]
    await asyncio.wait_for(late, 1)
    assert await second.take(10) == ["late"]
    assert await first.take(10) == [1, 2, 3]
    assert budget.held == 0


async def test_a_put_waits_while_its_watch_holds_its_count() -> None:
    ahead = ReadAhead(2, ReadAheadBudget(10**9))
    await ahead.put("a", 1)
    await ahead.put("b", 1)
    end = asyncio.create_task(ahead.put("end"))
    assert await waits(end)
    assert await ahead.take(1) == ["a"]
    await asyncio.wait_for(end, 1)
    assert await ahead.take(10) == ["b", "end"]


async def test_one_event_larger_than_the_budget_passes_when_nothing_else_is_held() -> None:
    budget = ReadAheadBudget(1000)
    ahead = ReadAhead(100, budget)
    await asyncio.wait_for(ahead.put("huge", 5000), 1)
    small = asyncio.create_task(ahead.put("small", 10))
    assert await waits(small)
    assert await ahead.take(10) == ["huge"]
    await asyncio.wait_for(small, 1)
    assert await ahead.take(10) == ["small"]


async def test_a_large_request_is_not_overtaken_by_small_ones() -> None:
    budget = ReadAheadBudget(1000)
    holder, large, small = (ReadAhead(100, budget) for _ in range(3))
    await holder.put("held", 900)
    big = asyncio.create_task(large.put("big", 500))
    assert await waits(big)
    little = asyncio.create_task(small.put("little", 50))  # would fit, but asked later
    assert await waits(little)
    await holder.take(1)
    await asyncio.wait_for(asyncio.gather(big, little), 1)
    assert budget.held == 550


async def test_a_cancelled_request_holds_and_blocks_nothing() -> None:
    budget = ReadAheadBudget(1000)
    holder, gone, next_one = (ReadAhead(100, budget) for _ in range(3))
    await holder.put("held", 900)
    cancelled = asyncio.create_task(gone.put("gone", 500))
    assert await waits(cancelled)
    later = asyncio.create_task(next_one.put("later", 50))
    assert await waits(later)
    cancelled.cancel()
    await asyncio.wait_for(later, 1)
    assert budget.held == 950
    await holder.take(1)
    await next_one.take(1)
    assert budget.held == 0


async def test_a_closed_read_ahead_gives_its_bytes_back() -> None:
    budget = ReadAheadBudget(1000)
    ahead = ReadAhead(100, budget)
    for index in range(3):
        await ahead.put(index, 300)
    ahead.close()
    assert budget.held == 0
    await asyncio.wait_for(ReadAhead(100, budget).put("next", 900), 1)
