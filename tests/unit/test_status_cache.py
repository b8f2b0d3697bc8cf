"""/status and / share one status computation per second, however many requests arrive."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from reverserd.web.server import STATUS_CACHE_S, Surface, build_app

# Requests in one burst: far more than one computation's worth.
BURST = 50


def test_a_burst_of_status_requests_computes_the_status_once() -> None:
    calls = 0

    async def status() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return {"targets": [], "watches": [], "journal": {}, "calls": calls}

    async def yes() -> bool:
        return True

    async def scenario() -> list[int]:
        surface = Surface(status=status, journal_ok=yes, api_ok=yes, role=lambda: "leader")
        async with TestClient(TestServer(build_app(surface))) as client:
            answers = await asyncio.gather(
                *(client.get("/status") for _ in range(BURST)), client.get("/")
            )
            assert all(answer.status == 200 for answer in answers)
            first = calls
            await asyncio.sleep(STATUS_CACHE_S + 0.1)
            assert (await client.get("/status")).status == 200
            return [first, calls]

    assert asyncio.run(scenario()) == [1, 2]
