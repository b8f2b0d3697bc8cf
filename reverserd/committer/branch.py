"""The writer of one repository + branch across committer failures.

A :class:`~reverserd.committer.committer.Committer` lives for one run: anything unexpected (a
credentials read that times out, a journal write that fails while settling, a tree the branch
cannot hold, a failing maintenance pack) stops it for good. A :class:`Branch` then reports the
failure for the provider and every target on the branch (``Ready=False``, reason
``CommitterFailed``), counts it in ``reverserd_committer_restarts_total``, waits a growing delay
and builds a fresh committer: a new Git thread, a new inbox, the clone reopened from disk once
the old committer's last Git operation has ended. Consumers notice the replacement
(:class:`~reverserd.committer.committer.CommitterStopped`) and replay from their cursors, so
nothing the stopped committer had not pushed is lost, and nothing it committed is committed twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from reverserd.committer.committer import Committer
from reverserd.config.status import ProviderHealth, StatusBoard
from reverserd.metrics import COMMITTER_RESTARTS
from reverserd.supervise import supervise

log = logging.getLogger(__name__)


class Branch:
    def __init__(
        self,
        key: str,
        display: str,
        make: Callable[[], Committer],
        board: StatusBoard,
        provider_keys: Callable[[], Sequence[str]],
    ) -> None:
        self.key = key
        self.display = display
        self._make = make
        self._board = board
        self._provider_keys = provider_keys
        self.current = make()
        self._replaced = asyncio.Event()

    async def run(self) -> None:
        await supervise(f"committer {self.display}", self._run_fresh, self._failed)

    async def _run_fresh(self) -> None:
        if self.current.stopped:
            self.current = self._make()
            replaced, self._replaced = self._replaced, asyncio.Event()
            replaced.set()
        await self.current.run()

    def _failed(self, error: BaseException) -> None:
        COMMITTER_RESTARTS.labels(remote=self.display).inc()
        health = ProviderHealth(
            False,
            "CommitterFailed",
            f"committer failed ({type(error).__name__}: {error}); a fresh one resumes from"
            " the journal after a backoff, nothing is lost",
        )
        self._board.report_branch(self.key, health)
        for provider in self._provider_keys():
            self._board.report_provider(provider, health)

    async def committer(self) -> Committer:
        """The committer to write through, once it has reached the repository."""
        while True:
            committer, replaced = self.current, self._replaced
            if committer.stopped:
                await replaced.wait()
                continue
            waits = [asyncio.ensure_future(e.wait()) for e in (replaced, committer.ready)]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
            if committer.ready.is_set() and not committer.stopped:
                return committer
