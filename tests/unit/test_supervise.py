"""The supervisor restarts a failed task with a growing delay that starts over after health."""

from __future__ import annotations

import pytest

from reverserd import supervise as supervise_module
from reverserd.supervise import HEALTHY_RUN_S, RESTART_INITIAL_S, supervise


async def test_backoff_grows_on_repeated_failures_and_starts_over_after_a_healthy_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    delays: list[float] = []
    # How long each run lasts before it fails; the last run returns.
    durations = [0.0, 0.0, 0.0, HEALTHY_RUN_S, 0.0]

    async def no_wait(delay: float) -> None:
        delays.append(delay)

    async def run() -> None:
        clock[0] += durations.pop(0)
        if durations:
            raise RuntimeError("failed")

    monkeypatch.setattr(supervise_module, "monotonic", lambda: clock[0])
    monkeypatch.setattr(supervise_module.asyncio, "sleep", no_wait)
    await supervise("task", run)
    first = RESTART_INITIAL_S
    assert delays == [first, 2 * first, 4 * first, first]
