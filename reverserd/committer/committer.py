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

**A committer is disposable.** It owns its clone (behind a lock), its Git thread and its inbox
for exactly one run. Anything unexpected ends that run for good: the committer marks itself
stopped, submitters get :class:`CommitterStopped`, and :class:`~reverserd.committer.branch.Branch`
builds a fresh one after a backoff. Submissions it had taken but not pushed are not carried
over in memory: their consumers replay them from the journal (their cursors never passed them),
and :meth:`Committer.resume_point` keeps a replay from committing twice what is already in the
clone. The clone stays locked until the stopped committer's Git operation in flight has ended,
so a successor never works on it concurrently (DESIGN invariant 8).

**A damaged clone heals.** A clone that lacks objects its refs need (a pack lost on disk) cannot
be repaired in place. When a Git call fails, and after a push could not go out, the clone is
checked (:meth:`~reverserd.git.BranchRepository.verify`, at most every
:data:`CLONE_CHECK_INTERVAL_S` after push failures); a damaged one stops the committer, and its
successor, which checks the clone when it opens it, deletes it and clones the branch afresh:
what was pushed comes from the remote, what was not is replayed from the journal by the
consumers (no cursor passed it).

**Push outcomes** are handled by what a retry can change:

- the branch moved (someone else pushed): fetch, rebuild the pending commits on the new tip
  (their commits stay) and push again at once, a few times in a row;
- the remote is unreachable, refuses the credentials, or declines the update (a hook, a
  protected branch, a ref that cannot be created such as ``env/prod`` beside ``env``): back off
  (up to a minute), say why in status, and keep turning new submissions into local commits
  meanwhile, so the first push after recovery carries everything. After a failure to reach the
  remote, the provider's Secret is read again, so rotated credentials are used from the next
  try on, without a restart. A rejection after which the
  fetched tip did not move is such a refusal too: rebuilding would not change the answer.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pygit2

from reverserd.committer.trailers import committed_seq, newest_per_target
from reverserd.config.status import ProviderHealth, StatusBoard
from reverserd.git import (
    BranchRepository,
    CloneDamaged,
    CredentialsError,
    FileChange,
    GitCredentials,
    PushDeclined,
    PushRejected,
    RemoteUnavailable,
    RepositoryError,
    StoredBlob,
    stores_its_remote,
)
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

if TYPE_CHECKING:
    from reverserd.git.signing import CommitSigner

log = logging.getLogger(__name__)
T = TypeVar("T")

# Retry pacing while the remote is down or refuses: quick at first, then at most once a minute.
RETRY_INITIAL_S = 1.0
RETRY_CEILING_S = 60.0
# Someone else pushing between our fetch and push is retried at once, this many times in a row.
MAX_IMMEDIATE_REBASES = 5
# Submissions (and bytes of file content) waiting for the Git thread; a full inbox slows the
# consumers (they re-read the journal, which holds everything anyway) instead of growing memory
# without bound: a burst of large objects waits in the journal, not in RAM.
INBOX_DEPTH = 1000
INBOX_BYTES = 32 * 2**20
# Commits one push may carry under a backlog: about a second of Git work on two cores, so
# pushes stay frequent while their fixed cost (a round trip, pack negotiation) is shared.
BATCH_LIMIT = 200
# File content one push may carry under a backlog of large objects: a pack the server starts
# receiving within seconds (front ends drop a request body that stays idle for a minute).
PUSH_BYTES = 32 * 2**20
# A failing push checks the clone (a walk of its history) at most this often: a remote that is
# down for an hour must not make every retry walk a large history again.
CLONE_CHECK_INTERVAL_S = 60.0
# Full repack (git gc, seconds on a large clone) after this many commits: commits write packs
# and flushes merge the small ones, so it only drops rebase leftovers and leaves one pack.
MAINTAIN_EVERY_COMMITS = 50_000
# How often a drain (:meth:`Committer.push_committed`) looks whether everything is pushed.
DRAIN_POLL_S = 0.05


class CommitterStopped(Exception):
    """The committer has stopped for good; its branch starts a fresh one.

    A consumer that gets this restarts from its cursor with the branch's new committer.
    """


@dataclass
class Submission:
    """One step of a target's journal, ready for Git.

    ``changes`` empty means a marker: the target has processed the journal up to ``seq`` and
    nothing needed writing; its cursor may move there once everything before it is pushed.
    Once committed, ``changes`` is released (the clone holds them) and only counted.
    ``push_now`` makes its commit due for a push at once instead of after ``push.interval``.
    """

    target: str
    seq: int
    covered: dict[str, int]
    changes: list[FileChange] = field(default_factory=list)
    message: str = ""
    author: pygit2.Signature | None = None
    records: list[tuple[ObjectKey, str | None, str]] = field(default_factory=list)
    on_pushed: Callable[[str | None, float], None] | None = None
    on_quarantined: Callable[[Mapping[ObjectKey, str]], None] | None = None
    quarantine: dict[ObjectKey, str | None] = field(default_factory=dict)
    push_now: bool = False
    commit: str | None = None
    files_written: int = 0
    files_deleted: int = 0


class NotOwner(Exception):
    """The fencing check refused a push: another replica may own the branch now."""


class LocalWorkPending(Exception):
    """Commits or submissions wait for a push: the branch is not compared now (the push
    fetches anyway); a drift check tries again later."""


class ProviderProblem(Exception):
    """The provider cannot be used yet (e.g. its Secret is missing); ``reason`` goes to status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PushPolicy:
    interval_s: float
    max_commits: int


@dataclass
class _PushState:
    """When the next push may be tried, and how long the one after a failure waits."""

    retry_at: float = 0.0
    delay_s: float = RETRY_INITIAL_S
    immediate_rebases: int = 0

    def failed(self) -> float:
        """Schedule the next try after the current delay; returns that delay."""
        delay = self.delay_s
        self.retry_at = time.monotonic() + delay
        self.delay_s = min(delay * 2, RETRY_CEILING_S)
        return delay

    def succeeded(self) -> None:
        self.retry_at, self.delay_s, self.immediate_rebases = 0.0, RETRY_INITIAL_S, 0

    @property
    def waiting(self) -> bool:
        return time.monotonic() < self.retry_at


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
        proved_write_access: Callable[[], Awaitable[None]],
        credentials: Callable[[], Awaitable[GitCredentials]] | None = None,
        may_push: Callable[[], bool] | None = None,
        signer: Callable[[], Awaitable[CommitSigner | None]] | None = None,
    ) -> None:
        """``credentials`` reads the provider's Secret again (it may have been rotated), and
        ``signer`` its signing key (a server that requires signatures by a registered key
        refuses commits signed with one since replaced).

        ``may_push`` is the fencing check of a sharded replica: asked on the Git thread right
        before every push (so before every retry of the fetch-rebase loop too) and while the
        push sends; False means the Lease of this branch may lapse before the push ends and
        another replica may write it.
        """
        self.key = key
        self.may_push = may_push
        # Called after every push that carried commits: the credentials can write the branch.
        self.proved_write_access = proved_write_access
        self.clone_lock = clone_lock
        self.connect = connect
        self.repository: BranchRepository
        self.journal = journal
        self.board = board
        self.identity = committer_identity
        self.policy = policy
        self.provider_keys = provider_keys
        self.credentials = credentials
        self.signer = signer
        self.ready = asyncio.Event()
        self.stopped = False
        self.last_error: str | None = None
        self.last_push_time: float | None = None
        self.pushed_sha: str | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="git")
        self._inbox: collections.deque[Submission] = collections.deque()
        self._inbox_bytes = 0
        self._inbox_changed = asyncio.Condition()
        # Held while submissions are taken and committed, so that what a restarting consumer
        # reads from the branch is never missing a batch that is half way to it.
        self._applying = asyncio.Lock()
        self._unpushed: list[Submission] = []
        self._unpushed_bytes = 0
        self._first_unpushed_at: float | None = None
        self._push = _PushState()
        self._commits_since_maintain = 0
        self._damage: CloneDamaged | None = None
        self._checked_at = float("-inf")
        # Set by a drain: everything committed is pushed at once, whatever the push policy.
        self._draining = False

    async def on_git_thread(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the Git thread; :class:`CommitterStopped` once this committer has
        stopped, also for work that was still queued when it stopped (the thread's queue is
        dropped then, and a caller must learn why, not take it for its own cancellation)."""
        if self.stopped:
            raise CommitterStopped(self.key)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, work)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.stopped and task is not None and not task.cancelling():
                raise CommitterStopped(self.key) from None
            raise
        except (pygit2.GitError, KeyError) as error:
            # An object missing from the clone fails calls this way: see whether it is damaged.
            if await self._clone_damaged():
                raise CommitterStopped(self.key) from error
            raise

    async def _clone_damaged(self) -> bool:
        """Check the clone; a damaged one stops this committer (its successor rebuilds it)."""
        if self._damage is None:
            self._checked_at = time.monotonic()
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._thread, self.repository.verify
                )
            except CloneDamaged as damage:
                log.error("the clone of %s is damaged: %s", self.key, damage)
                self._damage = damage
                async with self._inbox_changed:
                    self._inbox_changed.notify_all()
        return self._damage is not None

    async def read(self, path: str) -> bytes | None:
        return await self.on_git_thread(lambda: self.repository.read(path))

    async def list_files(self, prefix: str) -> list[str]:
        return await self.on_git_thread(lambda: self.repository.list_files(prefix))

    async def remote_folder(self, prefix: str) -> str | None:
        """Fetch the branch and return the tree ID of folder ``prefix`` as the remote has it
        (None: no such folder). Raises :class:`LocalWorkPending` while anything waits for a
        push, and RemoteUnavailable when the remote cannot be reached (nothing changes then).
        """
        async with self._applying:
            if self._inbox or self._unpushed:
                raise LocalWorkPending(self.key)
            if not await self.on_git_thread(self.repository.fetch_if_idle):
                raise LocalWorkPending(self.key)
            return await self.on_git_thread(lambda: self.repository.folder_tree(prefix))

    async def changed_files(self, old: str | None, new: str | None, prefix: str) -> set[str]:
        """Files that differ between two trees of folder ``prefix`` (see
        :meth:`~reverserd.git.BranchRepository.changed_files`)."""
        return set(
            await self.on_git_thread(lambda: self.repository.changed_files(old, new, prefix))
        )

    async def blob_ids(self, paths: Sequence[str]) -> dict[str, str | None]:
        """The blob ID of each file at the local tip (None: there is none)."""
        return await self.on_git_thread(lambda: self.repository.blob_ids(paths))

    async def read_blobs(self, ids: Sequence[str], max_bytes: int) -> dict[str, bytes | None]:
        """The content of each blob, None for one larger than ``max_bytes`` (left unread)."""
        return await self.on_git_thread(lambda: self.repository.read_blobs(ids, max_bytes))

    async def store_blobs(self, contents: Sequence[bytes]) -> list[StoredBlob]:
        """Hand file contents to the clone now, for a submission that follows (a reconcile of
        many files, which then holds none of them in memory)."""
        return await self.on_git_thread(lambda: self.repository.add_blobs(contents))

    async def submit(self, submission: Submission) -> None:
        size = content_bytes([submission])

        def room() -> bool:
            if self.stopped or not self._inbox:
                return True
            return len(self._inbox) < INBOX_DEPTH and self._inbox_bytes + size <= INBOX_BYTES

        async with self._inbox_changed:
            await self._inbox_changed.wait_for(room)
            if self.stopped:
                raise CommitterStopped(self.key)
            self._inbox.append(submission)
            self._inbox_bytes += size
            self._inbox_changed.notify_all()

    async def push_committed(self) -> None:
        """Push at once what was handed to this committer, and return once none of it waits
        for the remote: the drain of a graceful hand-over, whose caller stopped the consumers
        first and bounds the wait. Every push still asks the fence, so nothing lands once the
        Lease may have passed on; a push that fails keeps its retry pacing."""
        async with self._inbox_changed:
            self._draining = True
            self._inbox_changed.notify_all()
        # Polled: a submission is in the inbox, in a batch being committed (the applying lock
        # is held), or committed and not pushed yet; only once it is in none of the three has
        # it been pushed.
        while self._inbox or self._applying.locked() or self._unpushed:
            if self.stopped:
                raise CommitterStopped(self.key)
            await asyncio.sleep(DRAIN_POLL_S)

    async def resume_point(self, target: str, cursor: int) -> int:
        """The newest journal seq of ``target`` already committed on the local branch.

        A consumer (re)starting from its cursor must not commit again what is already in the
        clone, pushed or not: replaying an older change on top of a newer state is not a no-op
        (an UPDATE replayed after its DELETE would bring the file back). Submissions of the
        target still waiting here are dropped first; the consumer replays them from the journal.

        Only commits this clone made count (pending, or carried by the last push): anyone with
        push access can write a commit whose trailers name a target and a seq, and trusting it
        would make the target skip real changes (DESIGN invariant 9).
        """
        async with self._applying:
            await self._drop_waiting(target)
            messages = await self.on_git_thread(self.repository.own_commits)
        return committed_seq(messages, target, cursor)

    async def forget(self, target: str) -> None:
        """Drop everything of a target that went away, so its cursor is never written again.

        Commits already made for it stay in the clone and are pushed with the rest; only the
        bookkeeping that would re-create its cursor is dropped.
        """
        async with self._applying:
            await self._drop_waiting(target)
            self._unpushed = [item for item in self._unpushed if item.target != target]

    async def _drop_waiting(self, target: str) -> None:
        async with self._inbox_changed:
            kept = [item for item in self._inbox if item.target != target]
            self._inbox.clear()
            self._inbox.extend(kept)
            self._inbox_bytes = content_bytes(kept)
            self._inbox_changed.notify_all()

    def _report(self, ok: bool, reason: str, message: str) -> None:
        self.last_error = None if ok else message
        health = ProviderHealth(ok, reason, message)
        self.board.report_branch(self.key, health)
        for key in self.provider_keys():
            self.board.report_provider(key, health)

    async def run(self) -> None:
        """Own the clone until cancelled, or until anything raises; a committer runs once."""
        if self.stopped:
            raise CommitterStopped(self.key)
        if self.clone_lock.locked():
            log.info("waiting for the clone of %s: a Git operation is still running", self.key)
        await self.clone_lock.acquire()
        log.info("opening the clone of %s", self.key)
        try:
            await self._open()
            while True:
                await self._commit_until_push_due()
                await self._push_once()
        finally:
            await self._stop()

    async def _stop(self) -> None:
        self.stopped = True
        self.ready.clear()
        async with self._inbox_changed:
            self._inbox.clear()
            self._inbox_bytes = 0
            self._inbox_changed.notify_all()
        self._thread.shutdown(wait=False, cancel_futures=True)
        loop = asyncio.get_running_loop()
        lock, thread = self.clone_lock, self._thread

        def release_when_idle() -> None:
            # The clone stays locked until the Git operation in flight (a push can take up to
            # the I/O timeout) has ended; whatever it did not finish is redone from the journal.
            thread.shutdown(wait=True)
            try:
                loop.call_soon_threadsafe(lock.release)
            except RuntimeError:
                pass  # the event loop is gone: the process is exiting

        threading.Thread(target=release_when_idle, name="git-drain", daemon=True).start()

    async def _open(self) -> None:
        delay = RETRY_INITIAL_S
        while True:
            try:
                self.repository = await self.connect()
                tip = await self.on_git_thread(self._open_sound_clone)
                pending = await self.on_git_thread(self.repository.pending)
                log.info("opened %s", self.key, extra={"remote_tip": tip, "pending": pending})
                self._report(True, "Ready", f"connected to {self.repository.display_url}")
                if pending:
                    self._first_unpushed_at = time.monotonic()
                self.ready.set()
                return
            except ProviderProblem as error:
                self._report(False, error.reason, str(error))
                log.warning("cannot use %s, retrying in %.0f s: %s", self.key, delay, error)
            except (RemoteUnavailable, CredentialsError) as error:
                self._report(False, "ConnectionFailed", str(error))
                log.warning("cannot reach %s, retrying in %.0f s: %s", self.key, delay, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_CEILING_S)

    def _open_sound_clone(self) -> str | None:
        """Open the clone (on the Git thread); one that is damaged is deleted and cloned again.

        Only a clone found damaged is deleted: one that fails to open for another reason (a
        full disk) is kept, and the failure ends this committer as any other would.
        """
        repository = self.repository
        failure: pygit2.GitError | KeyError | None = None
        try:
            tip = repository.open()
        except (pygit2.GitError, KeyError) as error:
            failure = error
        try:
            repository.verify()
        except CloneDamaged as damage:
            log.error("the clone of %s is damaged (%s): cloning it again", self.key, damage)
            repository.discard()
            return repository.open()
        except RepositoryError:
            pass  # not even opened: nothing to check, the failure says why
        if failure is not None:
            raise failure
        return tip

    def _unpushed_commits(self) -> int:
        return sum(1 for item in self._unpushed if item.commit)

    def _push_full(self) -> bool:
        """Enough waits for the remote, or a commit asked for it, that a push should not wait
        for the interval."""
        return (
            self._draining
            or self._unpushed_commits() >= self.policy.max_commits
            or self._unpushed_bytes >= PUSH_BYTES
            or any(item.push_now and item.commit for item in self._unpushed)
        )

    def _push_due(self) -> bool:
        if self._first_unpushed_at is None or self._push.waiting:
            return False
        waited = time.monotonic() - self._first_unpushed_at
        return self._push_full() or waited >= self.policy.interval_s

    def _seconds_until_push_due(self) -> float | None:
        """None while nothing waits for the remote."""
        if self._first_unpushed_at is None:
            return None
        due = max(self._first_unpushed_at + self.policy.interval_s, self._push.retry_at)
        if self._push_full():
            due = max(time.monotonic(), self._push.retry_at)
        return max(0.0, due - time.monotonic())

    async def _commit_until_push_due(self) -> None:
        """Commit submissions as they arrive (also while a push waits for its retry)."""
        while not self._push_due():
            timeout = self._seconds_until_push_due()
            async with self._inbox_changed:
                try:
                    await asyncio.wait_for(
                        self._inbox_changed.wait_for(
                            lambda: (
                                bool(self._inbox)
                                or self._damage is not None
                                or (self._draining and self._push_due())
                            )
                        ),
                        timeout,
                    )
                except TimeoutError:
                    continue
            if self._damage is not None:
                raise self._damage
            async with self._applying:
                await self._apply_batch()

    def _batch_room(self) -> tuple[int, int]:
        """How many submissions, and bytes of their content, the next batch may take.

        At most :data:`BATCH_LIMIT` commits (or ``push.maxCommits`` if larger) and
        :data:`PUSH_BYTES` wait for one due push, so a backlog never postpones it by more than
        about a second of Git work, and its pack stays small. While a push waits for its retry,
        nothing is postponed: batches are full.
        """
        limit = max(self.policy.max_commits, BATCH_LIMIT)
        if self._push.waiting:
            return limit, PUSH_BYTES
        return max(1, limit - self._unpushed_commits()), PUSH_BYTES - self._unpushed_bytes

    async def _apply_batch(self) -> None:
        async with self._inbox_changed:
            count, budget = self._batch_room()
            batch: list[Submission] = []
            while self._inbox and len(batch) < count:
                size = content_bytes([self._inbox[0]])
                if batch and size > budget:
                    break
                batch.append(self._inbox.popleft())
                budget -= size
            self._inbox_bytes -= content_bytes(batch)
            self._inbox_changed.notify_all()
        if not batch:
            return
        writes = [item for item in batch if item.changes]
        committed_bytes = content_bytes(writes)
        try:
            shas = await self._commit(writes)
        except ValueError:
            # Some submission writes where the branch cannot hold a file (a person pushed a
            # file where a folder must be): find it, and commit the rest without it.
            shas = []
            for index, item in enumerate(writes):
                shas.append(await self._commit_writable(item, writes[:index]))
        for item, sha in zip(writes, shas, strict=True):
            item.commit = sha
            if sha:
                # A FileEdit (a kustomization listing) may have changed nothing: not counted.
                item.files_written = sum(
                    1 for c in item.changes if isinstance(c.content, bytes | StoredBlob)
                )
                item.files_deleted = sum(1 for c in item.changes if c.content is None)
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
            item.changes = []
        for item in batch:
            self._unpushed.append(item)
            COMMIT_QUEUE.labels(target=item.target).inc()
        self._unpushed_bytes += committed_bytes
        pending = await self.on_git_thread(self.repository.pending)
        if pending and self._first_unpushed_at is None:
            self._first_unpushed_at = time.monotonic()
        if not pending:
            # Nothing for the remote: markers and no-op replays are settled at once.
            await self._settle(self.pushed_sha, time.time())

    async def _commit(self, writes: Sequence[Submission]) -> list[str | None]:
        author = pygit2.Signature(*self.identity)
        return await self.on_git_thread(
            functools.partial(
                self.repository.apply_many,
                [(item.changes, item.message, item.author or author) for item in writes],
                pygit2.Signature(*self.identity),
            )
        )

    async def _commit_writable(
        self, item: Submission, committed_before: Sequence[Submission]
    ) -> str | None:
        """Commit ``item`` without the files the branch cannot hold; quarantine their objects.

        ``committed_before`` are the submissions of the same batch committed just before it:
        a rebuild on the remote's tip may drop their writes too, not only those of earlier
        batches.
        """
        unwritable = functools.partial(self.repository.unwritable, item.changes)
        blocked = await self.on_git_thread(unwritable)
        if blocked:
            # The local tip may be behind a person who already freed the path: look first.
            try:
                await self.on_git_thread(self.repository.rebase_onto_remote)
            except RemoteUnavailable:
                pass
            else:
                rebuilt = [*self._unpushed, *committed_before]
                self._quarantine_paths(self.repository.dropped_in_rebuild, rebuilt)
                blocked = await self.on_git_thread(unwritable)
        item.changes = [change for change in item.changes if change.path not in blocked]
        self._quarantine_paths(blocked, [item])
        if not item.changes:
            return None
        return (await self._commit([item]))[0]

    def _quarantine_paths(
        self, blocked: Mapping[str, str], items: Sequence[Submission] | None = None
    ) -> None:
        """The objects whose files are ``blocked`` are not written: no record, quarantined."""
        if not blocked:
            return
        log.warning(
            "objects quarantined: their files cannot be written on the branch",
            extra={"remote": self.key, "paths": sorted(blocked)},
        )
        for item in self._unpushed if items is None else items:
            held = {k: blocked[p] for k, p, _ in item.records if p is not None and p in blocked}
            if not held:
                continue
            item.records = [record for record in item.records if record[1] not in blocked]
            item.quarantine.update(held)
            if item.on_quarantined is not None:
                item.on_quarantined(held)

    async def _push_once(self) -> None:
        """One push attempt; its outcome decides when the next one may run."""
        started = time.monotonic()
        try:
            pushing = await self.on_git_thread(self.repository.pending_commits)
            sha = await self.on_git_thread(self._fenced_push)
        except NotOwner as error:
            self._push_failed("NotOwner", str(error))
            return
        except PushRejected as error:
            GIT_OPERATIONS.labels(operation="push", result="rejected").inc()
            await self._rebuild_after_rejection(error)
            return
        except PushDeclined as error:
            self._push_failed(
                "PushRefused",
                f"{error}; the server refuses this update whatever reverserd does: check its"
                " hooks and branch protection, or choose another branch",
            )
            await self._reload_signer()
            return
        except RemoteUnavailable as error:
            self._push_failed("ConnectionFailed", str(error))
            await self._reload_credentials()
            await self._reload_signer()
            # A push also fails this way when the clone lacks an object it must send.
            if time.monotonic() - self._checked_at >= CLONE_CHECK_INTERVAL_S:
                if await self._clone_damaged():
                    assert self._damage is not None
                    raise self._damage from error
            return
        PUSH_DURATION.observe(time.monotonic() - started)
        GIT_OPERATIONS.labels(operation="push", result="success").inc()
        self._push.succeeded()
        self._report(True, "Ready", f"pushed to {self.repository.display_url}")
        self.last_push_time = time.time()
        async with self._applying:
            await self._settle(sha, self.last_push_time, newest_per_target(pushing))
        log.info("All events pushed to remote", extra={"remote": self.key, "commit": sha})
        if pushing:
            await self.proved_write_access()
        if self._commits_since_maintain >= MAINTAIN_EVERY_COMMITS:
            if await self.on_git_thread(self.repository.maintain):
                self._commits_since_maintain = 0

    def _fenced_push(self) -> str:
        """Push (on the Git thread) only while this replica may still write the branch.

        Asked before the push starts and again by the push itself, after negotiating and after
        every chunk of pack it sends: a check before the start alone would let a long push (each
        socket read or write may take the whole Git I/O timeout) land after the Lease passed on.
        """
        self._fence()
        return self.repository.push(self._fence if self.may_push is not None else None)

    def _fence(self) -> None:
        if self.may_push is not None and not self.may_push():
            raise NotOwner(
                f"this replica no longer holds the Lease of {self.key}: nothing is pushed, the"
                " branch's owner writes it from its own journal"
            )

    async def _rebuild_after_rejection(self, rejection: PushRejected) -> None:
        """Rebuild on the remote's tip when it moved; a rejection it does not explain waits."""
        try:
            before = await self.on_git_thread(self.repository.remote_base)
            await self.on_git_thread(self.repository.rebase_onto_remote)
            after = await self.on_git_thread(self.repository.remote_base)
        except RemoteUnavailable as error:
            self._push_failed("ConnectionFailed", str(error))
            await self._reload_credentials()
            return
        self._quarantine_paths(self.repository.dropped_in_rebuild)
        if before == after:
            self._push_failed(
                "PushRefused",
                f"{rejection}, although the branch did not move; a fetch cannot fix this (for"
                " example a branch named like an existing branch's folder, env/prod beside env):"
                " rename the branch or the conflicting ref on the server",
            )
            return
        log.info("remote moved, rebuilt on its tip: %s", rejection)
        self._push.immediate_rebases += 1
        if self._push.immediate_rebases > MAX_IMMEDIATE_REBASES:
            self._push_failed("RemoteBusy", f"{rejection}; the branch keeps moving, waiting")

    async def _reload_credentials(self) -> None:
        """Read the provider's Secret again after the remote could not be reached: rotated
        credentials are used from the next try on. A Secret that cannot be read or used now
        leaves the current credentials in place (the push failure stays in status)."""
        if self.credentials is None:
            return
        try:
            fresh = await self.credentials()
            changed = await self.on_git_thread(lambda: self.repository.use_credentials(fresh))
        except (ProviderProblem, CredentialsError, OSError, TimeoutError) as error:
            log.warning("cannot re-read the credentials of %s: %s", self.key, error)
            return
        if changed:
            log.info("credentials of %s changed, using them from now on", self.key)

    async def _reload_signer(self) -> None:
        """Read the signing key again after a push failed: a replaced key is used from now on,
        and the pending commits are signed again with it. A key that cannot be read or used
        now leaves the current one in place (nothing is ever committed unsigned)."""
        if self.signer is None:
            return
        try:
            fresh = await self.signer()
        except (ProviderProblem, OSError, TimeoutError) as error:
            log.warning("cannot re-read the signing key of %s: %s", self.key, error)
            return
        if fresh is None:
            return
        if await self.on_git_thread(lambda: self.repository.use_signer(fresh)):
            log.info("signing key of %s changed, pending commits signed again", self.key)

    def _push_failed(self, reason: str, message: str) -> None:
        GIT_OPERATIONS.labels(operation="push", result="failed").inc()
        PUSH_FAILURES.labels(reason=reason).inc()
        delay = self._push.failed()
        self._report(False, reason, message)
        log.warning("push to %s failed, retrying in %.0f s: %s", self.key, delay, message)

    async def _settle(
        self, sha: str | None, pushed_at: float, newest: Mapping[str, str] | None = None
    ) -> None:
        """Everything taken so far is in the remote: move cursors, then tell the consumers.

        ``newest`` maps each target to its newest commit in this push (after any rebuild on a
        foreign tip, SHAs differ from those made locally, so they are read from the pushed
        commits' ``target:`` lines).
        """
        settled = self._unpushed
        by_target: dict[str, list[Submission]] = {}
        for item in settled:
            by_target.setdefault(item.target, []).append(item)
        for target, items in by_target.items():
            records: dict[ObjectKey, tuple[ObjectKey, str | None, str]] = {}
            quarantine: dict[ObjectKey, str | None] = {}
            for item in items:
                for record in item.records:
                    records[record[0]] = record
                quarantine.update(item.quarantine)
            last = items[-1]
            await self.journal.write_cursor(
                target, last.seq, last.covered, list(records.values()), quarantine
            )
        # Only once every cursor is written: a failing write leaves everything unsettled, to be
        # replayed by a fresh committer's consumers.
        self._unpushed, self._unpushed_bytes = [], 0
        self._first_unpushed_at = None
        self.pushed_sha = sha
        for target, items in by_target.items():
            COMMIT_QUEUE.labels(target=target).dec(len(items))
            OBJECTS_WRITTEN.labels(target=target).inc(sum(item.files_written for item in items))
            FILES_DELETED.labels(target=target).inc(sum(item.files_deleted for item in items))
        for item in settled:
            if item.on_pushed is not None:
                item.on_pushed((newest or {}).get(item.target), pushed_at)


def content_bytes(items: Iterable[Submission]) -> int:
    """File content the submissions carry: what they hold in memory until committed."""
    return sum(change.held_bytes for item in items for change in item.changes)


def clone_dir(state_dir: Path, key: str, owner: str) -> Path:
    """The clone of branch ``key`` as written for namespace ``owner``.

    Each owner has its own: when a branch changes hands, the new owner starts from the remote
    and never pushes what the previous owner committed but did not push.
    """
    identity = f"{owner}\n{key}"
    return state_dir / "repos" / hashlib.sha256(identity.encode()).hexdigest()[:16]


def remove_clones_of_older_versions(state_dir: Path) -> list[Path]:
    """Delete the clones an older version made; returns them.

    Clones are named per owner now (:func:`clone_dir`), so no name leads to an older clone any
    more, and its config may still hold a URL with a token in it (older versions stored their
    remote there): left alone it would keep that credential on disk for good. A clone is a cache:
    what it held and the remote lacks is committed again from the journal, whose cursors move
    only after a push.
    """
    repos = state_dir / "repos"
    removed = [path for path in sorted(repos.glob("*")) if stores_its_remote(path)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
