"""The committer: one per repository URL and branch, shared by every target writing there.

Target consumers hand it :class:`Submission` s in journal order. It turns each into one local
commit (or none, when the tree would not change) on a dedicated worker thread, never on the
event loop, and pushes them together by the provider's ``push.interval`` / ``push.maxCommits``.

Only after a push succeeded does it move the targets' cursors (with their record of written
files, in one journal transaction) and report the pushed SHA (DESIGN invariant 1, SPEC 5.2).
A crash before that loses nothing: the cursor still points before the change, the consumer
replays it from the journal, and the change is either already pending in the clone (the replay
changes nothing, and the next push carries it) or already pushed (the replay changes nothing).
Each change is therefore committed once.

Pushes are compare-and-swap. When someone else pushed first, the committer fetches, replays its
pending commits on the new tip (their commits stay), and pushes again. When the remote is down
it retries with backoff, keeping everything; nothing is ever dropped because a push failed.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pygit2

from reverserd.config.status import ProviderHealth, StatusBoard
from reverserd.git import (
    BranchRepository,
    CredentialsError,
    FileChange,
    PushDeclined,
    PushRejected,
    RemoteUnavailable,
    RepositoryError,
)
from reverserd.git.urls import normalize_url
from reverserd.journal import JournalWriter, ObjectKey
from reverserd.metrics import (
    COMMIT_QUEUE,
    COMMITS,
    FILES_DELETED,
    GIT_OPERATIONS,
    OBJECTS_WRITTEN,
    PUSH_DURATION,
    PUSH_FAILURES,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Retry pacing while the remote is down or refuses: quick at first, then at most once a minute.
RETRY_INITIAL_S = 1.0
RETRY_CEILING_S = 60.0
# Someone else pushing between our fetch and push is retried at once, this many times in a row.
MAX_IMMEDIATE_REBASES = 5
# Submissions waiting for the Git thread; a full inbox slows the consumers (they re-read the
# journal, which holds everything anyway) instead of growing memory without bound.
INBOX_DEPTH = 1000
# Commits one push may carry under a backlog: about a second of Git work on two cores, so
# pushes stay frequent while their fixed cost (a round trip, pack negotiation) is shared.
BATCH_LIMIT = 200
# The lines of every commit message that name the target it was made for, and the journal seq
# up to which it reflects that target's events.
TARGET_TRAILER = "target: "
SEQ_TRAILER = "journal-seq"
# How far back a restarting consumer looks for its own commits above its cursor: more than any
# number of commits one push interval can leave unpushed or unacknowledged.
RESUME_SCAN_COMMITS = 20_000
# How long a stopping committer waits for its Git operation in flight (a push is bounded by
# the Git layer's I/O timeout; shutdown must not wait that long).
THREAD_DRAIN_S = 5.0
# Pack the clone after this many commits so it never grows into millions of loose objects.
MAINTAIN_EVERY_COMMITS = 2000


@dataclass
class Submission:
    """One step of a target's journal, ready for Git.

    ``changes`` empty means a marker: the target has processed the journal up to ``seq`` and
    nothing needed writing; its cursor may move there once everything before it is pushed.
    """

    target: str
    seq: int
    covered: dict[str, int]
    changes: list[FileChange] = field(default_factory=list)
    message: str = ""
    author: pygit2.Signature | None = None
    records: list[tuple[ObjectKey, str | None, str]] = field(default_factory=list)
    on_pushed: Callable[[str | None, float], None] | None = None
    commit: str | None = None


class ProviderProblem(Exception):
    """The provider cannot be used yet (e.g. its Secret is missing); ``reason`` goes to status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PushPolicy:
    interval_s: float
    max_commits: int


class Committer:
    def __init__(
        self,
        key: str,
        clone_lock: asyncio.Lock,
        connect: Callable[[], Awaitable[BranchRepository]],
        journal: JournalWriter,
        board: StatusBoard,
        committer_identity: tuple[str, str],
        policy: PushPolicy,
        provider_keys: Callable[[], Sequence[str]],
    ) -> None:
        self.key = key
        self.clone_lock = clone_lock
        self.connect = connect
        self.repository: BranchRepository
        self.journal = journal
        self.board = board
        self.identity = committer_identity
        self.policy = policy
        self.provider_keys = provider_keys
        self.ready = asyncio.Event()
        self.last_error: str | None = None
        self.last_push_time: float | None = None
        self.pushed_sha: str | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="git")
        self._inbox: collections.deque[Submission] = collections.deque()
        self._inbox_changed = asyncio.Condition()
        # Held while submissions are taken and committed, so that what a restarting consumer
        # reads from the branch is never missing a batch that is half way to it.
        self._applying = asyncio.Lock()
        self._unpushed: list[Submission] = []
        self._first_unpushed_at: float | None = None
        self._commits_since_maintain = 0

    async def on_git_thread(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    async def read(self, path: str) -> bytes | None:
        return await self.on_git_thread(lambda: self.repository.read(path))

    async def list_files(self, prefix: str) -> list[str]:
        return await self.on_git_thread(lambda: self.repository.list_files(prefix))

    async def submit(self, submission: Submission) -> None:
        async with self._inbox_changed:
            await self._inbox_changed.wait_for(lambda: len(self._inbox) < INBOX_DEPTH)
            self._inbox.append(submission)
            self._inbox_changed.notify_all()

    async def resume_point(self, target: str, cursor: int) -> int:
        """The newest journal seq of ``target`` already committed on the local branch.

        A consumer (re)starting from its cursor must not commit again what is already in the
        clone, pushed or not: replaying an older change on top of a newer state is not a no-op
        (an UPDATE replayed after its DELETE would bring the file back). Submissions of the
        target still waiting here are dropped first; the consumer replays them from the journal.
        """
        async with self._applying:
            async with self._inbox_changed:
                kept = [item for item in self._inbox if item.target != target]
                self._inbox.clear()
                self._inbox.extend(kept)
                self._inbox_changed.notify_all()
            messages = await self.on_git_thread(
                functools.partial(self.repository.recent_commits, RESUME_SCAN_COMMITS)
            )
        return committed_seq(messages, target, cursor)

    def _report(self, ok: bool, reason: str, message: str) -> None:
        self.last_error = None if ok else message
        for key in self.provider_keys():
            self.board.report_provider(key, ProviderHealth(ok, reason, message))

    async def run(self) -> None:
        async with self.clone_lock:
            try:
                await self._open()
                while True:
                    await self._take_submissions()
                    if self._push_due():
                        await self._push_with_retries()
            finally:
                # Let a Git operation in flight finish (bounded) before another committer may
                # open this clone; whatever it did not finish is redone from the journal.
                self._thread.shutdown(wait=False, cancel_futures=True)
                try:
                    await asyncio.wait_for(asyncio.to_thread(self._thread.shutdown), THREAD_DRAIN_S)
                except TimeoutError:
                    log.warning("Git operation on %s still running at stop", self.key)

    async def _open(self) -> None:
        delay = RETRY_INITIAL_S
        while True:
            try:
                self.repository = await self.connect()
                tip = await self.on_git_thread(self.repository.open)
                log.info(
                    "opened %s",
                    self.key,
                    extra={
                        "remote_tip": tip,
                        "pending": await self.on_git_thread(self.repository.pending),
                    },
                )
                self._report(True, "Ready", f"connected to {self.repository.display_url}")
                self.ready.set()
                if await self.on_git_thread(self.repository.pending):
                    self._first_unpushed_at = time.monotonic()
                return
            except ProviderProblem as error:
                self._report(False, error.reason, str(error))
                log.warning("cannot use %s, retrying in %.0f s: %s", self.key, delay, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_CEILING_S)
            except (RemoteUnavailable, CredentialsError) as error:
                self._report(False, "ConnectionFailed", str(error))
                log.warning("cannot reach %s, retrying in %.0f s: %s", self.key, delay, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_CEILING_S)

    def _push_due(self) -> bool:
        if self._first_unpushed_at is None:
            return False
        commits = sum(1 for item in self._unpushed if item.commit)
        waited = time.monotonic() - self._first_unpushed_at
        return commits >= self.policy.max_commits or waited >= self.policy.interval_s

    async def _take_submissions(self) -> None:
        """Wait for work or for the push deadline; commit what has arrived.

        At most :data:`BATCH_LIMIT` commits (or ``push.maxCommits`` if larger) wait for one push,
        so a backlog never postpones a due push by more than about a second of Git work, while
        a burst is not pushed in needlessly small pieces.
        """
        timeout = None
        if self._first_unpushed_at is not None:
            timeout = max(0.0, self._first_unpushed_at + self.policy.interval_s - time.monotonic())
        async with self._inbox_changed:
            try:
                await asyncio.wait_for(
                    self._inbox_changed.wait_for(lambda: bool(self._inbox)), timeout
                )
            except TimeoutError:
                return
        async with self._applying:
            await self._apply_batch()

    async def _apply_batch(self) -> None:
        unpushed = sum(1 for item in self._unpushed if item.commit)
        room = max(1, max(self.policy.max_commits, BATCH_LIMIT) - unpushed)
        async with self._inbox_changed:
            batch = [self._inbox.popleft() for _ in range(min(room, len(self._inbox)))]
            self._inbox_changed.notify_all()
        if not batch:
            return
        default_author = pygit2.Signature(*self.identity)
        committer = pygit2.Signature(*self.identity)
        writes = [item for item in batch if item.changes]
        shas = await self.on_git_thread(
            functools.partial(
                self.repository.apply_many,
                [(item.changes, item.message, item.author or default_author) for item in writes],
                committer,
            )
        )
        for item, sha in zip(writes, shas, strict=True):
            item.commit = sha
            if sha:
                COMMITS.labels(target=item.target).inc()
                self._commits_since_maintain += 1
                log.info(
                    "Created commit",
                    extra={
                        "target": item.target,
                        "commit": sha,
                        "seq": item.seq,
                        "subject": item.message.splitlines()[0],
                    },
                )
        for item in batch:
            self._unpushed.append(item)
            COMMIT_QUEUE.labels(target=item.target).inc()
        pending = await self.on_git_thread(self.repository.pending)
        if pending and self._first_unpushed_at is None:
            self._first_unpushed_at = time.monotonic()
        if not pending:
            # Nothing for the remote: markers and no-op replays are settled at once.
            await self._settle(self.pushed_sha, time.time())

    async def _push_with_retries(self) -> None:
        delay = RETRY_INITIAL_S
        rebases = 0
        while True:
            started = time.monotonic()
            try:
                pushing = await self.on_git_thread(self.repository.pending_commits)
                sha = await self.on_git_thread(self.repository.push)
            except PushRejected as error:
                GIT_OPERATIONS.labels(operation="push", result="rejected").inc()
                log.info("remote moved, rebuilding on its tip: %s", error)
                await self._rebase_or_wait(rebases < MAX_IMMEDIATE_REBASES, delay)
                rebases += 1
                continue
            except (RemoteUnavailable, PushDeclined, RepositoryError) as error:
                GIT_OPERATIONS.labels(operation="push", result="failed").inc()
                PUSH_FAILURES.labels(reason=type(error).__name__).inc()
                self._report(False, "ConnectionFailed", str(error))
                log.warning("push to %s failed, retrying in %.0f s: %s", self.key, delay, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_CEILING_S)
                await self._take_submissions_nowait()
                continue
            PUSH_DURATION.observe(time.monotonic() - started)
            GIT_OPERATIONS.labels(operation="push", result="success").inc()
            self._report(True, "Ready", f"pushed to {self.repository.display_url}")
            self.last_push_time = time.time()
            await self._settle(sha, self.last_push_time, newest_per_target(pushing))
            log.info("All events pushed to remote", extra={"remote": self.key, "commit": sha})
            if self._commits_since_maintain >= MAINTAIN_EVERY_COMMITS:
                await self.on_git_thread(self.repository.maintain)
                self._commits_since_maintain = 0
            return

    async def _rebase_or_wait(self, immediately: bool, delay: float) -> None:
        if not immediately:
            await asyncio.sleep(delay)
        try:
            await self.on_git_thread(self.repository.rebase_onto_remote)
        except RemoteUnavailable as error:
            self._report(False, "ConnectionFailed", str(error))
            await asyncio.sleep(delay)

    async def _take_submissions_nowait(self) -> None:
        """While a push is being retried, keep committing what arrives (nothing waits in RAM)."""
        if self._inbox:
            await self._take_submissions()

    async def _settle(
        self, sha: str | None, pushed_at: float, newest: Mapping[str, str] | None = None
    ) -> None:
        """Everything taken so far is in the remote: move cursors, then tell the consumers.

        ``newest`` maps each target to its newest commit in this push (after any rebuild on a
        foreign tip, SHAs differ from those made locally, so they are read from the pushed
        commits' ``target:`` lines).
        """
        settled, self._unpushed = self._unpushed, []
        self._first_unpushed_at = None
        self.pushed_sha = sha
        by_target: dict[str, list[Submission]] = {}
        for item in settled:
            by_target.setdefault(item.target, []).append(item)
        for target, items in by_target.items():
            records: dict[ObjectKey, tuple[ObjectKey, str | None, str]] = {}
            for item in items:
                for record in item.records:
                    records[record[0]] = record
            last = items[-1]
            await self.journal.write_cursor(target, last.seq, last.covered, list(records.values()))
            committed = [item for item in items if item.commit]
            COMMIT_QUEUE.labels(target=target).dec(len(items))
            if committed:
                written = sum(
                    1 for item in committed for c in item.changes if c.content is not None
                )
                deleted = sum(1 for item in committed for c in item.changes if c.content is None)
                OBJECTS_WRITTEN.labels(target=target).inc(written)
                FILES_DELETED.labels(target=target).inc(deleted)
        for item in settled:
            if item.on_pushed is not None:
                item.on_pushed((newest or {}).get(item.target), pushed_at)


def committed_seq(commits: Sequence[tuple[str, str]], target: str, cursor: int) -> int:
    """The newest journal seq of ``target`` in ``commits`` (newest first), not below ``cursor``.

    Stops at the first commit of the target at or below the cursor: everything older is
    already covered by the cursor.
    """
    newest = cursor
    for _, message in commits:
        fields = dict(line.split(": ", 1) for line in message.splitlines() if ": " in line)
        if fields.get(TARGET_TRAILER.rstrip(": ")) != target or SEQ_TRAILER not in fields:
            continue
        seq = int(fields[SEQ_TRAILER])
        if seq <= cursor:
            break
        newest = max(newest, seq)
    return newest


def newest_per_target(commits: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Target -> its newest commit, from commits listed newest first."""
    newest: dict[str, str] = {}
    for sha, message in commits:
        for line in message.splitlines():
            if line.startswith(TARGET_TRAILER):
                newest.setdefault(line[len(TARGET_TRAILER) :].strip(), sha)
    return newest


def committer_key(url: str, branch: str) -> str:
    """The writer's identity: the repository in its normal form (no credentials) and branch."""
    return f"{normalize_url(url)}#{branch}"


def clone_dir(state_dir: Path, key: str) -> Path:
    return state_dir / "repos" / hashlib.sha256(key.encode()).hexdigest()[:16]
