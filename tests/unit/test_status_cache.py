"""/status, / and /metrics share one status computation per second, however many requests
arrive: no caller can make the daemon read the journal more often than that."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from reverserd.web.server import Surface, build_app
from reverserd.web.view import PICTURE_CACHE_S, StatusView

# Requests in one burst: far more than one computation's worth.
BURST = 50


class CountingView(StatusView):
    """The real caching of :class:`StatusView` around a computation that counts its calls."""

    def __init__(self) -> None:
        self._cached = None
        self._computing = asyncio.Lock()
        self.calls = 0

    async def _compute(self) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(0.05)
        return {"targets": [], "watches": [], "journal": {}, "calls": self.calls}


def test_a_burst_of_status_requests_computes_the_status_once() -> None:
    async def yes() -> bool:
        return True

    async def scenario() -> list[int]:
        view = CountingView()
        surface = Surface(status=view.picture, journal_ok=yes, api_ok=yes, role=lambda: "leader")
        async with TestClient(TestServer(build_app(surface))) as client:
            answers = await asyncio.gather(
                *(client.get("/status") for _ in range(BURST)), client.get("/")
            )
            assert all(answer.status == 200 for answer in answers)
            first = view.calls
            await asyncio.sleep(PICTURE_CACHE_S + 0.1)
            assert (await client.get("/status")).status == 200
            return [first, view.calls]

    assert asyncio.run(scenario()) == [1, 2]
