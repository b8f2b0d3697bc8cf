"""Keep a long-running task alive: one target's or one watch's bug must not stop the others.

A supervised task that fails unexpectedly is logged with its traceback, counted in
``reverserd_task_restarts_total``, and restarted after a growing delay (``on_failure`` lets the
owner show the failure in status meanwhile); after a run that lasted :data:`HEALTHY_RUN_S`,
the delay starts over. Its state lives in the journal, so a restart resumes where it stood. A
task that returns is done; one that raises is never left dead. Cancellation of the supervised
task itself (shutdown, reconfiguration) passes through untouched; a ``CancelledError`` that
reaches it without that (a future it awaited was cancelled by its owner, such as a Git thread's
queue dropped when a committer stops) is a failure like any other: passed on, it would end the
task silently, and an ``asyncio.TaskGroup`` ignores a child that ends cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from time import monotonic

from reverserd.metrics import TASK_RESTARTS

log = logging.getLogger(__name__)

# Restart pacing: quick enough for a transient fault, slow enough not to spin on a permanent one.
RESTART_INITIAL_S = 1.0
RESTART_CEILING_S = 60.0
# A run that lasted this long was healthy: its failure is a new fault, restarted after the
# initial delay, not the next round of an old one (which would wait up to the ceiling, and
# for the webhook process every second of that is a second without attribution).
HEALTHY_RUN_S = 2 * RESTART_CEILING_S


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    on_failure: Callable[[BaseException], None] | None = None,
) -> None:
    delay = RESTART_INITIAL_S
    while True:
        started = monotonic()
        try:
            await run()
            return
        except (Exception, asyncio.CancelledError) as error:
            if isinstance(error, asyncio.CancelledError) and _cancelled_by_owner():
                raise
            if monotonic() - started >= HEALTHY_RUN_S:
                delay = RESTART_INITIAL_S
            log.error("%s failed, restarting in %.0f s", name, delay, exc_info=error)
            TASK_RESTARTS.labels(task=name).inc()
            if on_failure is not None:
                on_failure(error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_CEILING_S)


def _cancelled_by_owner() -> bool:
    """Whether the running task itself was asked to stop (not just a future it awaited)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0
