"""A bare local clone of one branch of one remote, written with pygit2 plumbing.

A :class:`BranchRepository` is the Git half of a committer (DESIGN "Committer"): it builds trees
and commits directly in the object database (no work tree, no index), keeps them on the local
branch, and pushes them with a compare-and-swap. It knows nothing of Kubernetes, journals or
targets: it takes file changes and returns commit SHAs.

**Threading.** Every method blocks (disk and network I/O, and pygit2 holds the GIL while it
hashes large blobs). The caller runs each instance on one dedicated worker thread; no method may
be called from the event loop, and each method refuses to run on a thread with a running event
loop. One instance owns its directory: two instances must never share one.

**Refs kept in the clone** (they survive restarts; they are all the state there is):

- ``refs/heads/<branch>``: the local tip. Commits on it that the remote does not have yet are
  *pending*.
- ``refs/reverserd/base``: the remote commit local work is built on, i.e. the last known tip of
  the branch on the remote, or the tip of the remote's default branch while the branch does not
  exist there yet (absent for an empty remote). ``pending()`` counts commits above it.
- ``refs/remotes/origin/<name>``: what the last fetch brought.

**Branch start.** If the branch exists on the remote, local work starts from its tip. If not, it
starts from the remote's default branch (the target of the remote ``HEAD`` symref, whatever its
name); if the remote is empty, the first commit has no parent. The branch is created on the
remote by the first push.

**Guarantees.**

- :meth:`apply` never makes an empty commit: it returns ``None`` when the tree does not change.
  Directories are created as needed and pruned when their last file goes. A path where a
  directory (or a symlink) stands is never overwritten: that raises ``ValueError``.
- A :class:`FileEdit` change is applied, on this instance's thread, to the file as it is on the
  parent the commit is built on; :meth:`rebase_onto_remote` applies it again to the file as the
  remote has it, so a concurrent writer's edit of that file is kept. The edits of pending commits
  are held in memory: replayed after a restart, such a commit writes the file as it made it.
- :meth:`push` pushes without force. The server (and libgit2, or the smart-HTTP push before
  it sends anything) refuses an update that is not a fast-forward from the tip it has, so a
  concurrent writer's commits are never overwritten: :class:`PushRejected` is raised and
  :meth:`rebase_onto_remote` replays the pending commits on top of theirs. The remote tip is
  recorded only after the server accepted.
- Nothing is dropped on failure: after :class:`RemoteUnavailable` every pending commit is still
  on the local branch, and a later push or rebase picks it up.
- A clone opened with a :class:`~reverserd.git.signing.CommitSigner` makes no unsigned commit:
  every commit object is built in one place (:meth:`_commit_on`), which signs it.
- Errors carry the URL with its password masked and a short reason, never a secret.

**Timeouts.** libgit2 has two process-wide socket timeouts, both off by default, which
:func:`configure_network_timeouts` sets (``pygit2.settings.server_connect_timeout`` and
``server_timeout``, i.e. ``GIT_OPT_SET_SERVER_CONNECT_TIMEOUT`` and ``GIT_OPT_SET_SERVER_TIMEOUT``):
a TCP connect timeout, and an I/O timeout that bounds every single socket read or write, for
HTTP(S) and for SSH (libgit2 also hands it to libssh2 as the session timeout); the smart-HTTP
push (:mod:`reverserd.git.smart_http`) reads the same two settings.
:meth:`BranchRepository.open` applies the defaults if the process has not set its own, so no
network call runs without them. Neither bounds name
resolution (left to the system resolver) nor the total length of a transfer that keeps making
progress; ``file://`` remotes are local disk access with no timeout.

**Pushing.** Over smart HTTP(S) and SSH a push sends the packs the flushes since the last push
wrote, joined into one as they are (:func:`~reverserd.git.objects.joined_pack`), with its own
compare-and-swap command (:mod:`reverserd.git.smart_http`, :mod:`reverserd.git.ssh_push`):
nothing is compressed or delta-searched again, so a push costs the daemon little more than
reading those packs. When the clone cannot be sure those packs hold every object the remote
lacks (after a restart with commits pending, and the other cases :meth:`BranchRepository.push`
lists), and to ``file://`` remotes, libgit2 pushes, building the pack it sends by searching
deltas again for every tree the push carries; on a large folder that search is most of such a
push. It runs on
:data:`PUSH_THREADS` threads, and libgit2's re-hashing of every object it reads
(``GIT_OPT_ENABLE_STRICT_HASH_VERIFICATION``, on by default) is turned off for the process by
:meth:`BranchRepository.open`: a push reads each tree several times, and hashing 400 KB trees
again took about a third of it. Git itself does not re-hash objects it reads either; damage on
disk is still caught by zlib's checksum of every stored object, and the server computes the ID
of every object it receives, so a damaged object can never land under the ID of a good one.
A push reads every object it sends from the clone's packs, which libgit2 maps into memory: by
default up to 8 GiB of them, in windows of 1 GiB, so the first push of 100,000 files added its
76 MB of packs to the process's resident memory. The process keeps at most
:data:`PACK_MAP_LIMIT` mapped, in windows of :data:`PACK_MAP_WINDOW`.

**Writes and durability.** New commits, trees and blobs are kept in memory
(:mod:`reverserd.git.objects`), readable at once, and so is the new local tip. :meth:`flush`
writes them as one pack, fsynced, and only then moves ``refs/heads/<branch>`` on disk;
:meth:`push` and :meth:`maintain` flush first. A process killed before a flush loses those
commits and nothing else: the branch on disk still names a complete commit, and since a cursor
moves only after a push (which flushed), the journal still holds every lost change and the
consumer commits it again. Reopening a clone therefore shows what was flushed, not what was
merely applied.

**Maintenance.** Each flush and each fetch adds a pack; :meth:`flush` merges the small ones
once there are more than :data:`PACK_LIMIT`. :meth:`maintain`
runs ``git gc --prune=now`` on the clone (the ``git`` command line tool must be installed): it
packs everything reachable from the refs above into one pack and deletes loose objects and
unreachable leftovers of rebases. pygit2 can write a pack but cannot delete what it replaces;
``git gc`` does both, atomically with respect to readers. ``--prune=now`` is safe because only
this instance writes the clone, ``maintain`` runs on the same thread as the writes, and it waits
while blobs handed over by :meth:`add_blobs` may still be committed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, TypeAlias, TypeVar

import pygit2
from pygit2.enums import DeltaStatus, FileMode, Option, RepositoryOpenFlag, SortMode
from pygit2.remotes import PushUpdate

from reverserd.git import pack_protocol, smart_http
from reverserd.git.credentials import (
    AuthCallbacks,
    AuthenticationRejected,
    GitCredentials,
    Transport,
    build_callbacks,
    parse_remote_url,
    without_url_credentials,
)
from reverserd.git.known_hosts import HostKeyError
from reverserd.git.objects import EMPTY_TREE, ObjectStore, joined_pack, merge_small_packs
from reverserd.redaction import mask_url, redact

if TYPE_CHECKING:
    from reverserd.git.signing import CommitSigner

CONNECT_TIMEOUT_MS = 10_000
"""TCP connect timeout. A reachable Git host accepts within a second; ten seconds tolerate a slow
path while an unreachable host fails soon enough for the committer's backoff to take over."""

IO_TIMEOUT_MS = 60_000
"""Longest a single socket read or write may stall. Servers stream progress while they build
packs, so a minute of total silence means the peer or the network is gone."""

GC_TIMEOUT_S = 600
"""Upper bound for one ``git gc`` of a clone; repacking a large mirror takes seconds to minutes."""

PACK_LIMIT = 16
"""Packs a clone may hold before :meth:`BranchRepository.flush` merges the small ones. libgit2
looks an object up in every pack in turn, so lookups slow down with each one; merging sixteen
small packs takes about a tenth of a second."""

GEOMETRIC_FACTOR = 2
"""``git repack --geometric`` factor: each pack kept holds at least twice the objects of the
next smaller one, so a merge rewrites only recent, small packs (Git's own suggested value)."""

GEOMETRIC_SINCE = (2, 32)
"""The first Git release with ``git repack --geometric``; an older ``git`` merges every pack
(``git repack -a -d``): slower on a large clone, the same result."""

HANDOVER_GRACE_S = 3600.0
"""How long after :meth:`BranchRepository.add_blobs` :meth:`BranchRepository.maintain` waits:
until their commit, handed-over blobs are unreachable, and ``git gc --prune=now`` would delete
them. A reconcile of 100,000 objects commits within a minute of its last handover; what may
follow it is planning its Secrets (one API read and one ``sops`` run each). Should the grace
still pass, the commit fails (:meth:`BranchRepository._blob_of`), the committer restarts and
the consumers redo the reconcile from their cursors: work is lost, never a change."""

GIT_DELTA_BASE_CACHE = "4m"
"""``core.deltaBaseCacheLimit`` of the ``git repack`` and ``git gc`` runs on a clone. Git keeps
up to 96 MiB of objects it rebuilt from deltas, to rebuild the next ones; a clone's trees are
chains of up to :data:`~reverserd.git.objects.DELTA_DEPTH` deltas of the folder tree, so a
merge of 16 packs filled that cache: the ``git pack-objects`` a repack runs peaked at 119 MB
on a 1,000-file folder and 150 MB on a 10,000-file one, more than the daemon itself. With
4 MiB it peaked at 24 and 56 MB in the same time (0.7 and 4.4 s against 0.9 and 5.6 s, CPU
pressure about 40 %); 1-2 MiB saved 3 MB more, and 8-16 MiB cost 4-12 MB more, for no time."""

REMOTE_NAME = "origin"
FETCH_HEAD = "FETCH_HEAD"
BASE_REF = "refs/reverserd/base"
# The tip the last push carried, and the base it was built on.
PUSHING_REF = "refs/reverserd/pushing"
PUSHED_FROM_REF = "refs/reverserd/pushed-from"

_HEADS = "refs/heads/"
_FILE_MODES = frozenset({FileMode.BLOB, FileMode.BLOB_EXECUTABLE})
_EMPTY_TREE_ID = bytes.fromhex("4b825dc642cb6eb9a060e54bf8d69288fbee4904")
_STALE_PUSH_MARKERS = (
    # libgit2's own check against the tip the server advertised
    "non-fastforwardable",
    "not present locally",
    # reasons receive-pack reports when the ref moved under the push
    "non-fast-forward",
    "fetch first",
    "stale info",
    "cannot lock ref",
    "failed to lock",
    "failed to update ref",
    "already exists",
)
_GIT_ENVIRONMENT_ISOLATION = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
}

T = TypeVar("T")

log = logging.getLogger(__name__)


class RepositoryError(Exception):
    """A Git operation on the clone failed."""


class RemoteError(RepositoryError):
    """A failure talking to the remote: ``url`` is masked, ``reason`` is short and secret-free."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class RemoteUnavailable(RemoteError):
    """The remote could not be reached, refused authentication, or timed out. Retry later."""


class PushRejected(RemoteError):
    """The remote branch moved since the last fetch: rebase onto it, then push again."""


class PushDeclined(RemoteError):
    """The server refused the update for a reason other than a moved branch (a hook, a branch
    protection rule); rebasing does not help, ``reason`` says what the server said."""


class CloneDamaged(RepositoryError):
    """The clone on disk lacks objects its refs need (a pack lost or cut short): it cannot be
    repaired in place. Everything in it can be had again: what was pushed from the remote,
    what was not from the journal (no cursor passed it), so the clone is discarded and cloned
    afresh (:meth:`BranchRepository.discard`)."""


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """File content already added to the clone by :meth:`BranchRepository.add_blobs`.

    A caller that plans many files at once (a reconcile of 100,000 objects) hands each one's
    content over as it is made and keeps only this, instead of holding every file until the
    commit. It is valid for commits made on the same :class:`BranchRepository`.
    """

    oid: bytes


class FileEdit(Protocol):
    """A change to a file made from the file as it is where the commit is built: on the tip
    when the commit is made, and on the remote's tip again when a pending commit is replayed
    after a rebase, so a concurrent writer's edit to the same file is kept."""

    def edited(self, existing: bytes | None) -> bytes | None:
        """The file's new content from ``existing`` (None: there is no file); None leaves the
        file as it is. Runs on the repository's worker thread, never on the event loop. It
        must not raise for any content: an exception fails the whole commit, again at each
        retry."""


@dataclass(frozen=True, slots=True)
class FileChange:
    """Write ``content`` at ``path`` (POSIX, relative), or delete it when ``content`` is None,
    or change it by a :class:`FileEdit`."""

    path: str
    content: bytes | StoredBlob | FileEdit | None

    @property
    def held_bytes(self) -> int:
        """Bytes of content this change keeps in memory until it is committed."""
        return len(self.content) if isinstance(self.content, bytes) else 0


@dataclass(frozen=True)
class _Tip:
    oid: pygit2.Oid | None
    """Where the local branch points; None when it has no commit."""


@dataclass(frozen=True)
class _RemoteState:
    branch_tip: pygit2.Oid | None
    """Tip of the branch on the remote; None if it does not exist there."""
    start: pygit2.Oid | None
    """Where local work is built on: the branch tip, else the default branch tip, else None."""


class _PushCallbacks(AuthCallbacks):
    def __init__(
        self, url: str, credentials: GitCredentials, fence: Callable[[], None] | None
    ) -> None:
        super().__init__(url, credentials)
        self.rejections: dict[str, str] = {}
        self.fence = fence

    def push_negotiation(self, updates: list[PushUpdate]) -> None:
        # Once the remote's refs are known, before any object is sent.
        if self.fence is not None:
            self.fence()

    def push_transfer_progress(
        self, objects_pushed: int, total_objects: int, bytes_pushed: int
    ) -> None:
        # After every chunk of the pack written (smart HTTP and SSH): a push that outlives the
        # fence stops before its last chunk, so before the server could update the branch.
        if self.fence is not None:
            self.fence()

    def push_update_reference(self, refname: str, message: str | None) -> None:
        if message:
            self.rejections[refname] = message


def configure_network_timeouts(
    connect_ms: int = CONNECT_TIMEOUT_MS, io_ms: int = IO_TIMEOUT_MS
) -> None:
    """Set libgit2's process-wide connect and socket I/O timeouts, in milliseconds."""
    if connect_ms <= 0 or io_ms <= 0:
        raise ValueError("network timeouts must be positive (0 would mean none)")
    pygit2.settings.server_connect_timeout = connect_ms
    pygit2.settings.server_timeout = io_ms


PUSH_THREADS = max(1, min(4, len(os.sched_getaffinity(0))))
"""Threads libgit2's pack builder searches deltas on during a push: the CPUs this process may
run on, at most four (each committer pushes on its own Git thread, so more would only compete).
One thread costs less CPU per push when every CPU is busy (``bench.git_write`` on a 10,000-file
folder at CPU pressure 57-85 %: 16-27 % less), but on a machine with a CPU to spare the push is
what limits the live rate: ``bench.steady --duration 30`` (1,000 objects, 200 changes/s, one run
each, back to back on two CPUs) gave with one thread 119 commits/s, the last change on the
server 9.52 s after the last write and p99 12.79 s; with two, 159 commits/s, 4.55 s and p99
7.42 s, at the same peak RSS (119 and 117 MB) and CPU per commit (4.31 and 4.08 ms)."""


PACK_MAP_LIMIT = 16 * 2**20
PACK_MAP_WINDOW = 4 * 2**20
"""Bytes of pack files libgit2 keeps mapped, and the size of one mapped piece: pages of a pack
read through a mapping count as the process's memory until it is unmapped. Measured in the
100,000-object cold start: its first push mapped about 7 MB at the peak instead of all 76 MB of
packs (peak 336-339 MB instead of 407-410 MB), and took 4.5-5.2 s instead of about 3.3 s; a push
of 200 commits on a 10,000-file folder took the same 0.52 s. The live benchmark on that folder
(``bench.steady --objects 10000 --rate 200``) peaked at 245-246 MB with these bounds and 222 MB
without, at the same commit rate within the noise; why the bounds cost memory there was not
found."""


def _configure_libgit2() -> None:
    """Process-wide libgit2 options; see "Pushing" in the module docstring."""
    pygit2.option(Option.ENABLE_STRICT_HASH_VERIFICATION, 0)
    pygit2.settings.mwindow_mapped_limit = PACK_MAP_LIMIT
    pygit2.settings.mwindow_size = PACK_MAP_WINDOW


def _ensure_network_timeouts() -> None:
    """Apply the default timeouts unless the process configured its own."""
    if pygit2.settings.server_connect_timeout <= 0 or pygit2.settings.server_timeout <= 0:
        configure_network_timeouts()


def _pack_transport(transport: Transport) -> pack_protocol.PackPush | None:
    """The push that sends the packs a clone wrote as they are, for remotes of ``transport``
    (:meth:`BranchRepository._push_packs`); None where only libgit2 pushes.

    The SSH one is imported when first used: it brings paramiko and cryptography, about 14 MB
    of resident memory that a daemon with no SSH remote never needs."""
    if transport is Transport.HTTP:
        return smart_http.push
    if transport is Transport.SSH:
        from reverserd.git import ssh_push

        return ssh_push.push
    return None


class BranchRepository:
    """One branch of one remote, mirrored in a bare clone at ``path``. See the module docstring."""

    def __init__(
        self,
        path: Path | str,
        url: str,
        branch: str,
        credentials: GitCredentials | None = None,
        signer: CommitSigner | None = None,
    ) -> None:
        """With ``signer``, every commit this clone makes is signed by it (see
        :mod:`reverserd.git.signing`), commits rebuilt on a moved remote included."""
        if not pygit2.reference_is_valid_name(_HEADS + branch):
            raise ValueError(f"invalid branch name {branch!r}")
        self._path = Path(path)
        # Kept in memory only: credentials handed over later are merged with the URL's again.
        self._given_url = url
        # Nothing secret in the URL libgit2 sees: it would be written into the clone.
        self._url, self._credentials = without_url_credentials(
            url, credentials if credentials is not None else GitCredentials()
        )
        self._branch = branch
        self._signer = signer
        build_callbacks(self._url, self._credentials)
        self._local_ref = _HEADS + branch
        self._repo: pygit2.Repository | None = None
        self._store: ObjectStore | None = None
        self._unflushed_tip: _Tip | None = None
        self._handed_over_at = -HANDOVER_GRACE_S
        self.dropped_in_rebuild: dict[str, str] = {}
        """Path -> why: writes the last :meth:`rebase_onto_remote` could not replay."""
        self._edits: dict[bytes, list[FileChange]] = {}
        # Pending commit -> its FileEdit changes, so a replay edits the file as the remote has
        # it instead of writing back the whole file. In memory only: a pending commit replayed
        # after a restart writes its file as it made it.
        self.display_url = mask_url(url)
        """The URL with any password masked, for logs and status."""

    def use_credentials(self, credentials: GitCredentials) -> bool:
        """Use ``credentials`` for the next network operation (its Secret was rotated); returns
        whether they differ from the current ones. Raises CredentialsError, keeping the
        current ones, if they are unusable for this URL. What the URL itself carries still
        comes first, as it did when the clone was opened."""
        _, credentials = without_url_credentials(self._given_url, credentials)
        build_callbacks(self._url, credentials)
        changed = credentials != self._credentials
        self._credentials = credentials
        return changed

    def use_signer(self, signer: CommitSigner) -> bool:
        """Sign with ``signer`` from now on (its Secret holds a new key); the pending commits
        are rebuilt signed by it. Returns whether the key differs from the current one."""
        if self._signer is not None and self._signer.public_key == signer.public_key:
            return False
        self._signer = signer
        self._sign_pending()
        return True

    def verify(self) -> None:
        """Raise :class:`CloneDamaged` unless every commit the clone's refs reach, the tree of
        each, and every object of the local tip's tree are there (a walk of the history: run
        when something failed, and when a clone is opened)."""
        repo = self._open_repo()
        try:
            tips = [
                target
                for name in repo.references
                if isinstance(target := repo.references[name].target, pygit2.Oid)
            ]
            if self._unflushed_tip is not None and self._unflushed_tip.oid is not None:
                tips.append(self._unflushed_tip.oid)
            if not tips:
                return
            walker = repo.walk(tips[0], SortMode.NONE)
            for tip in tips[1:]:
                walker.push(tip)
            for commit in walker:
                if commit.tree_id not in repo:
                    raise CloneDamaged(f"tree {commit.tree_id} of commit {commit.id} is missing")
            tree = self._tip_tree()
            folders = [tree] if tree is not None else []
            while folders:
                for entry in folders.pop():
                    if entry.id not in repo:
                        raise CloneDamaged(f"object {entry.id} of the tip's tree is missing")
                    if isinstance(entry, pygit2.Tree):
                        folders.append(entry)
        except (pygit2.GitError, KeyError) as error:
            raise CloneDamaged(f"an object the branch needs is missing: {error}") from None

    def discard(self) -> None:
        """Delete the clone from disk (it is damaged); the next :meth:`open` clones afresh."""
        if self._repo is not None:
            self._repo.free()
        if self._store is not None:
            self._store.forget_sent()
        self._repo, self._store, self._unflushed_tip = None, None, None
        self._edits = {}
        shutil.rmtree(self._path, ignore_errors=True)

    def open(self) -> str | None:
        """Create or open the clone, fetch through an in-memory remote; return the branch tip.

        Returns the SHA of the branch on the remote, or None when it does not exist there. If
        the fetch fails with :class:`RemoteUnavailable`, the clone is still open and usable;
        :meth:`rebase_onto_remote` retries the fetch.
        """
        _ensure_off_event_loop()
        _ensure_network_timeouts()
        _configure_libgit2()
        self._attach(self._open_or_init())
        self._forget_stored_remote()
        self._sign_pending()
        state = self._fetch()
        self._follow_remote(state)
        if not self.pending():
            # Everything in the clone is on the remote: from here on, the store knows which
            # packs hold what a push must send. With commits pending from before a restart it
            # does not, until a push by libgit2 has landed them.
            self._object_store().mark_sent()
        return _sha(state.branch_tip)

    def head(self) -> str | None:
        """SHA of the local tip, or None before the first commit."""
        return _sha(self._local_tip())

    def apply(
        self,
        changes: Sequence[FileChange],
        message: str,
        author: pygit2.Signature,
        committer: pygit2.Signature,
    ) -> str | None:
        """Commit ``changes`` on the local tip; return the new SHA, or None if nothing changed.

        Raises ValueError for an invalid path, or for a write where a directory or symlink
        stands (deleting such a path, or a path that does not exist, changes nothing).
        """
        return self.apply_many([(changes, message, author)], committer)[0]

    def apply_many(
        self,
        commits: Sequence[tuple[Sequence[FileChange], str, pygit2.Signature]],
        committer: pygit2.Signature,
    ) -> list[str | None]:
        """Commit each ``(changes, message, author)`` in order; one SHA (or None) per entry.

        The commits are kept in memory (see :mod:`reverserd.git.objects`) and written to the
        clone, with the branch ref, by the next :meth:`flush` or :meth:`push`: a crash before
        that leaves the branch where it was on disk, and the commits are redone from the journal.
        """
        self._open_repo()
        parent = self._local_tip()
        made: list[str | None] = []
        for changes, message, author in commits:
            oid = self._commit_on(parent, changes, message, author, committer)
            made.append(str(oid) if oid is not None else None)
            if oid is not None:
                parent = oid
        if any(made):
            self._move_local(parent)
        return made

    def add_blobs(self, contents: Sequence[bytes]) -> list[StoredBlob]:
        """Add file contents to the clone for a later commit (see :class:`StoredBlob`).

        They are pending objects like a commit's own: durable with the next :meth:`flush`, and
        harmless if never committed (nothing points at them).
        """
        store = self._object_store()
        self._handed_over_at = time.monotonic()
        return [StoredBlob(store.add_blob(content)) for content in contents]

    def flush(self) -> None:
        """Make every commit so far durable in the clone: one pack, then the branch ref.

        Once more than :data:`PACK_LIMIT` packs exist, the small ones are merged as
        ``git repack --geometric`` chooses them (leaving the large ones alone), so a clone that
        pushes one commit at a time does not collect thousands of packs between two
        :meth:`maintain`: copied into one pack as they are
        (:func:`~reverserd.git.objects.merge_small_packs`), or by ``git repack`` when they
        cannot be.
        """
        store = self._object_store()
        store.flush()
        if self._unflushed_tip is not None:
            tip, self._unflushed_tip = self._unflushed_tip, None
            self._set_ref(self._local_ref, tip.oid)
        if self.pack_count() > PACK_LIMIT:
            if merge_small_packs(self._path / "objects" / "pack", GEOMETRIC_FACTOR):
                self._release_packs()
                return
            git = shutil.which("git")
            if git is not None:
                self._run_git(git, repack_arguments(git_version(git)))
                self._release_packs()

    def read(self, path: str) -> bytes | None:
        """Content of the file at ``path`` on the local tip, or None if there is none."""
        parts = _split_path(path)
        tree = self._tip_tree()
        if tree is None:
            return None
        try:
            found = tree["/".join(parts)]
        except KeyError:
            return None
        return found.data if isinstance(found, pygit2.Blob) else None

    def blob_ids(self, paths: Sequence[str]) -> dict[str, str | None]:
        """ID of the file at each path on the local tip (None: there is none), read from the
        trees only, so that a caller can skip contents it has already judged."""
        tree = self._tip_tree()
        found: dict[str, str | None] = {}
        for path in paths:
            entry = None
            if tree is not None:
                try:
                    entry = tree["/".join(_split_path(path))]
                except KeyError:
                    entry = None
            found[path] = str(entry.id) if isinstance(entry, pygit2.Blob) else None
        return found

    def read_blobs(self, ids: Sequence[str], max_bytes: int) -> dict[str, bytes | None]:
        """Content of each blob, or None for one larger than ``max_bytes``: its size comes
        from the object's header, so an oversized file is never inflated into memory."""
        repo = self._open_repo()
        contents: dict[str, bytes | None] = {}
        for oid in ids:
            _, size = repo.odb.read_header(pygit2.Oid(hex=oid))
            blob = repo[oid] if size <= max_bytes else None
            contents[oid] = blob.data if isinstance(blob, pygit2.Blob) else None
        return contents

    def list_files(self, prefix: str = "") -> list[str]:
        """Sorted paths of all files inside the folder ``prefix`` ("" is the whole tree)."""
        folder = prefix.rstrip("/")
        parts = _split_path(folder) if folder else ()
        tree = self._tip_tree()
        if tree is None:
            return []
        if parts:
            try:
                found = tree["/".join(parts)]
            except KeyError:
                return []
            if not isinstance(found, pygit2.Tree):
                return []
            tree = found
        return sorted(_walk_files(tree, folder))

    def fetch_if_idle(self) -> bool:
        """With no local commit pending, fetch the branch and move the local tip to the
        remote's (someone else's commits included); returns False, doing nothing, while commits
        wait for a push (the push fetches, and rebuilds them on whatever it finds).

        Fetching is cheap when nothing moved: the remote advertises its tip, and a tip the
        clone already has transfers no objects.
        """
        if self.pending():
            return False
        # Nothing pending: an in-memory tip, if any, is the base itself.
        self._unflushed_tip = None
        self._follow_remote(self._fetch())
        return True

    def folder_tree(self, prefix: str) -> str | None:
        """ID of the tree of folder ``prefix`` ("" is the root) at the local tip; None if absent."""
        tree = self._tip_tree()
        folder = prefix.strip("/")
        if tree is not None and folder:
            found = _entry_at(tree, folder)
            tree = found if isinstance(found, pygit2.Tree) else None
        return str(tree.id) if tree is not None else None

    def changed_files(self, old: str | None, new: str | None, prefix: str) -> list[str]:
        """Sorted paths of files that differ between two trees of folder ``prefix`` (added,
        removed or changed), found by descending only into subtrees whose IDs differ: a folder
        of 10,000 files with one changed reads one path of trees, not 10,000 entries."""
        repo = self._open_repo()

        def tree_of(oid: str | None) -> pygit2.Tree | None:
            found = repo.get(oid) if oid is not None else None
            return found if isinstance(found, pygit2.Tree) else None

        return sorted(_differing_files(tree_of(old), tree_of(new), prefix.strip("/")))

    def unwritable(self, changes: Sequence[FileChange]) -> dict[str, str]:
        """Path -> why a write of ``changes`` cannot be applied on the local tip.

        A path is unwritable when it is invalid, when a folder (or symlink) stands where the
        file goes, or when a file stands where one of its folders must be. Deletions never are.
        """
        return _unwritable_on(self._tip_tree(), changes)

    def remote_base(self) -> str | None:
        """SHA of the remote commit local work is built on (``refs/reverserd/base``)."""
        return _sha(self._target(BASE_REF))

    def pending(self) -> int:
        """Number of local commits the remote does not have (above the base)."""
        local = self._local_tip()
        if local is None:
            return 0
        return self._count_above(local, self._target(BASE_REF))

    def own_commits(self) -> list[tuple[str, str]]:
        """(SHA, message) of the branch's commits this clone made and the remote may lack a
        record of, newest first: the pending ones, and those of the last push if they are
        still on the branch (the server may have taken them just before a crash).

        Commits anyone else pushed are never among them, whatever their messages say.
        """
        repo = self._open_repo()
        local = self._local_tip()
        if local is None:
            return []
        found = self.pending_commits()
        pushing, pushed_from = self._target(PUSHING_REF), self._target(PUSHED_FROM_REF)
        if pushing is not None and (pushing == local or repo.descendant_of(local, pushing)):
            walker = repo.walk(pushing, SortMode.TOPOLOGICAL)
            for hidden in (pushed_from, self._target(BASE_REF)):
                if hidden is not None and hidden != pushing:
                    walker.hide(hidden)
            seen = {sha for sha, _ in found}
            found += [(str(c.id), c.message) for c in walker if str(c.id) not in seen]
        return found

    def pending_commits(self) -> list[tuple[str, str]]:
        """(SHA, message) of every pending commit, newest first."""
        repo = self._open_repo()
        local = self._local_tip()
        if local is None:
            return []
        walker = repo.walk(local, SortMode.TOPOLOGICAL)
        base = self._target(BASE_REF)
        if base is not None:
            walker.hide(base)
        return [(str(commit.id), commit.message) for commit in walker]

    def push(self, fence: Callable[[], None] | None = None) -> str:
        """Push the local branch without force; return the SHA the remote branch now has.

        ``fence`` is called once the remote's refs are known and between pieces of the pack
        sent; what it raises aborts the push before the server has the whole pack (so it
        updates no ref) and is raised here.

        Over smart HTTP(S) and SSH, when the clone knows which packs hold every object the
        remote may lack (:meth:`_push_packs`), it sends those packs, joined, with its own
        compare-and-swap command: no delta search. Otherwise libgit2 pushes, building its pack
        itself: to ``file://`` remotes; after a restart with commits pending (the packs written
        before it are not known), or an :meth:`open` whose fetch failed; while blobs handed
        over by :meth:`add_blobs` may still be committed after a libgit2 push (it sends only
        what the branch reaches); after pushes failed for so long that the store stopped
        keeping the packs; when the server lacks ``report-status`` or ``ofs-delta``; over HTTP
        when it redirects or asks for an authentication other than basic; over SSH when it
        has no host key algorithm in common with the known_hosts entries, or the key is in a
        form :mod:`reverserd.git.ssh_push` does not read; when the remote branch is not where
        the pending commits start but still below them; and for the push after a server could
        not take a pack.

        With nothing pending, returns the local tip without contacting the remote. Raises
        :class:`PushRejected` when the remote branch moved, :class:`PushDeclined` when the
        server refused for another reason, :class:`RemoteUnavailable` on connection,
        authentication or timeout errors, and :class:`RepositoryError` if there is no commit.
        """
        local = self._local_tip()
        if local is None:
            raise RepositoryError(f"nothing to push to {self.display_url}: no commit yet")
        self.flush()
        if local == self._target(BASE_REF):
            return str(local)
        # Which commits this push carries, kept before it starts (and after the flush made
        # them durable): if the server takes them and the process dies before it learns so,
        # own_commits() still knows they are ours.
        self._set_ref(PUSHED_FROM_REF, self._target(BASE_REF))
        self._set_ref(PUSHING_REF, local)
        store = self._object_store()
        packs = store.unsent_packs()
        if packs is not None and self._push_packs(local, packs, fence):
            store.mark_sent()
        else:
            self._push_with_libgit2(fence)
            if time.monotonic() - self._handed_over_at < HANDOVER_GRACE_S:
                # Blobs handed over and flushed before this push may be committed after it;
                # libgit2 sent only what the branch reaches, so the remote may lack them.
                store.forget_sent()
            else:
                store.mark_sent()
        self._set_ref(_tracking_ref(self._local_ref), local)
        self._set_ref(BASE_REF, local)
        self._edits = {}
        return str(local)

    def _push_packs(
        self, local: pygit2.Oid, packs: Sequence[BinaryIO], fence: Callable[[], None] | None
    ) -> bool:
        """Push ``local`` with ``packs`` (the store's packs since the last push); False when
        libgit2 must push instead (the server updated nothing).

        The remote has every object reachable from the base, and every object flushed up to
        the last push (it took that push's pack whole); every object made since is in
        ``packs``. So when the branch on the remote is the base, or descends from it (a push
        whose answer was lost landed), or is absent while the base is absent or advertised,
        nothing is missing. Commits replayed on a moved remote (:meth:`rebase_onto_remote`)
        keep this: they are new objects in ``packs`` on a base the remote advertises.

        Over smart HTTP(S) and SSH; ``file://`` remotes and local paths are libgit2's.
        """
        transport = _pack_transport(parse_remote_url(self._url).transport)
        if transport is None:
            return False
        repo = self._open_repo()
        base = self._target(BASE_REF)

        def choose_old(advertisement: pack_protocol.Advertisement) -> bytes:
            raw = advertisement.refs.get(self._local_ref)
            if raw is None:
                if base is None or base.raw in advertisement.refs.values():
                    return pack_protocol.ZERO_ID
                raise pack_protocol.Unsupported("the base is not on the remote")
            tip = pygit2.Oid(raw=raw)
            if tip == local or tip == base:
                return raw
            if tip not in repo or not repo.descendant_of(local, tip):
                raise PushRejected(
                    self.display_url,
                    f"the remote branch moved to {tip} (fetch first): not a fast-forward",
                )
            if base is None or repo.descendant_of(tip, base):
                return raw
            raise pack_protocol.Unsupported("the remote branch is below the base")

        try:
            updated = transport(
                self._url,
                self._credentials,
                self._local_ref,
                local.raw,
                choose_old,
                lambda: joined_pack(packs),
                fence,
            )
        except pack_protocol.Unsupported as why:
            log.debug("%s: pushing with libgit2: %s", self.display_url, why)
            return False
        except ValueError as error:
            # A pack the store kept is not readable as one: let libgit2 find the objects.
            log.warning("%s: pushing with libgit2: %s", self.display_url, error)
            self._object_store().forget_sent()
            return False
        except pack_protocol.Unreachable as error:
            reason = redact(error.reason, self._credentials)
            if _is_stale(reason):
                raise PushRejected(self.display_url, reason) from None
            raise RemoteUnavailable(self.display_url, f"push failed: {reason}") from None
        except pack_protocol.Refused as refusal:
            reason = redact(refusal.reason, self._credentials)
            if refusal.short:
                # The server could not take the pack, or found an object missing: the next
                # push lets libgit2 work out what to send.
                self._object_store().forget_sent()
            if _is_stale(reason):
                raise PushRejected(self.display_url, reason) from None
            raise PushDeclined(self.display_url, reason) from None
        finally:
            # As after libgit2's push: what libgit2 cached per pack while commits were made
            # goes, so it does not grow with the packs each push adds.
            self._release_packs()
        log.debug(
            "%s: pushed %s with %d pack(s) as written, no delta search",
            self.display_url,
            local if updated else "nothing (the remote had it)",
            len(packs),
        )
        return True

    def _push_with_libgit2(self, fence: Callable[[], None] | None) -> None:
        """Push the local branch with libgit2, which builds the pack it sends itself."""
        callbacks = _PushCallbacks(self._url, self._credentials, fence)
        refspec = f"{self._local_ref}:{self._local_ref}"
        try:
            self._remote().push([refspec], callbacks=callbacks, threads=PUSH_THREADS)
        except (HostKeyError, AuthenticationRejected) as error:
            raise self._unavailable("push", error) from None
        except pygit2.GitError as error:
            if _is_stale(str(error)):
                raise PushRejected(self.display_url, self._reason(error)) from None
            raise self._unavailable("push", error) from None
        finally:
            self._release_packs()
        refusal = callbacks.rejections.get(self._local_ref)
        if refusal is not None:
            reason = redact(refusal, self._credentials)
            if _is_stale(refusal):
                raise PushRejected(self.display_url, reason)
            raise PushDeclined(self.display_url, reason)
        log.debug("%s: pushed with libgit2's pack builder", self.display_url)

    def rebase_onto_remote(self) -> list[str]:
        """Fetch, then replay the pending commits, oldest first, on the remote tip.

        Each pending commit is re-created from its own file changes (against its parent) with
        its message, author and committer; one whose changes are already there is dropped.
        Commits of other writers stay below ours. Returns the SHAs of the new commits.
        """
        repo = self._open_repo()
        old_base = self._target(BASE_REF)
        state = self._fetch()
        local = self._local_tip()
        ours: list[pygit2.Commit] = []
        if local is not None:
            walker = repo.walk(local, SortMode.TOPOLOGICAL | SortMode.REVERSE)
            for known in (old_base, state.start):
                if known is not None:
                    walker.hide(known)
            ours = list(walker)
        self.dropped_in_rebuild = {}
        rebuilt = self._replay(ours, state.start)
        self._set_ref(BASE_REF, state.start)
        return rebuilt

    def _replay(self, commits: Sequence[pygit2.Commit], parent: pygit2.Oid | None) -> list[str]:
        """Re-create ``commits`` (oldest first) on ``parent`` from their own file changes, with
        their messages, authors and committers (signed, with a signer), and move the local
        branch to the last; returns the new SHAs. A commit whose changes are already there is
        dropped."""
        repo = self._open_repo()
        rebuilt = []
        for commit in commits:
            edits = self._edits.pop(commit.id.raw, [])
            edited = {change.path for change in edits}
            changes = [
                change for change in self._changes_of(commit) if change.path not in edited
            ] + edits
            # A person may have put a file where one of ours needs a folder: that write is
            # dropped (and reported), the rest of the commit is kept.
            parent_commit = _commit_or_none(repo, parent)
            blocked = _unwritable_on(
                parent_commit.tree if parent_commit is not None else None, changes
            )
            self.dropped_in_rebuild.update(blocked)
            changes = [change for change in changes if change.path not in blocked]
            oid = self._commit_on(parent, changes, commit.message, commit.author, commit.committer)
            if oid is not None:
                parent = oid
                rebuilt.append(str(oid))
        self._move_local(parent)
        return rebuilt

    def _sign_pending(self) -> None:
        """Rebuild the pending commits the signer did not sign (made before signing was
        configured, or with a key since replaced) on the same base, so that nothing unsigned
        is ever pushed from a clone that signs."""
        signer, local = self._signer, self._local_tip()
        if signer is None or local is None:
            return
        repo = self._open_repo()
        walker = repo.walk(local, SortMode.TOPOLOGICAL | SortMode.REVERSE)
        base = self._target(BASE_REF)
        if base is not None:
            walker.hide(base)
        pending = list(walker)
        if all(signer.signed(commit.gpg_signature[0]) for commit in pending):
            return
        self.dropped_in_rebuild = {}
        self._replay(pending, base)

    def maintain(self) -> bool:
        """Pack the clone and drop loose and unreachable objects (``git gc --prune=now``).

        Returns False, doing nothing, within :data:`HANDOVER_GRACE_S` of :meth:`add_blobs`:
        blobs handed over for a commit not made yet must not be pruned.
        """
        self._open_repo()
        if time.monotonic() - self._handed_over_at < HANDOVER_GRACE_S:
            return False
        self.flush()
        git = shutil.which("git")
        if git is None:
            raise RepositoryError("maintenance needs the git command line tool on PATH")
        self._run_git(git, ["gc", "--quiet", "--prune=now"])
        self._attach(self._open_existing())
        return True

    def pack_count(self) -> int:
        """Number of packs in the clone: one per flush, merged by :meth:`flush` and
        :meth:`maintain`."""
        return sum(1 for _ in (self._path / "objects" / "pack").glob("*.pack"))

    def loose_object_count(self) -> int:
        """Number of loose objects in the clone (what :meth:`maintain` packs away)."""
        objects = self._path / "objects"
        return sum(
            1
            for fanout in objects.iterdir()
            if fanout.is_dir() and len(fanout.name) == 2 and _is_hex(fanout.name)
            for _ in fanout.iterdir()
        )

    # -- local plumbing -------------------------------------------------------------------

    def _open_repo(self) -> pygit2.Repository:
        _ensure_off_event_loop()
        if self._repo is None:
            raise RepositoryError("BranchRepository.open() has not been called")
        return self._repo

    def _attach(self, repo: pygit2.Repository) -> None:
        """Use ``repo``; nothing is pending when called (at open, and after ``git gc``)."""
        if self._repo is not None:
            self._repo.free()
        self._repo = repo
        if self._store is None:
            self._store = ObjectStore(repo, self._path / "objects")
        else:
            self._store.attach(repo)

    def _release_packs(self) -> None:
        """Close the clone's pack files, dropping what libgit2 caches for each one.

        libgit2 keeps every pack it has read open, each with its own cache of delta bases (up
        to 16 MB). With one new pack per push that memory would grow with every push; after a
        push (everything is flushed then) the packs are closed and reopened on next use.
        """
        repo = self._open_repo()
        repo.free()
        self._object_store().attach(repo)

    def _object_store(self) -> ObjectStore:
        self._open_repo()
        assert self._store is not None
        return self._store

    def _local_tip(self) -> pygit2.Oid | None:
        """The local branch: the newest commit made, flushed or not."""
        if self._unflushed_tip is not None:
            return self._unflushed_tip.oid
        return self._target(self._local_ref)

    def _move_local(self, tip: pygit2.Oid | None) -> None:
        """Move the local branch in memory; :meth:`flush` writes the ref after the objects."""
        self._unflushed_tip = _Tip(tip)

    def _open_or_init(self) -> pygit2.Repository:
        if (self._path / "HEAD").is_file():
            return self._open_existing()
        self._path.mkdir(parents=True, exist_ok=True)
        return pygit2.init_repository(str(self._path), bare=True, initial_head=self._branch)

    def _open_existing(self) -> pygit2.Repository:
        return pygit2.Repository(str(self._path), RepositoryOpenFlag.NO_SEARCH)

    def _forget_stored_remote(self) -> None:
        """The remote lives in memory only (:meth:`_remote`); a clone made by an older version
        kept its URL, token included, in the config: it goes."""
        repo = self._open_repo()
        if REMOTE_NAME in repo.remotes.names():
            repo.remotes.delete(REMOTE_NAME)

    def _remote(self) -> pygit2.Remote:
        """The remote, never written to the clone's config: a URL may carry a query token."""
        return self._open_repo().remotes.create_anonymous(self._url)

    def _target(self, name: str) -> pygit2.Oid | None:
        reference = self._open_repo().references.get(name)
        if reference is None:
            return None
        target = reference.target
        return target if isinstance(target, pygit2.Oid) else None

    def _set_ref(self, name: str, target: pygit2.Oid | None) -> None:
        references = self._open_repo().references
        if target is not None:
            references.create(name, target, force=True)
        elif name in references:
            references.delete(name)

    def _tip_tree(self) -> pygit2.Tree | None:
        commit = _commit_or_none(self._open_repo(), self._local_tip())
        return commit.tree if commit is not None else None

    def _count_above(self, tip: pygit2.Oid, base: pygit2.Oid | None) -> int:
        repo = self._open_repo()
        if base is None:
            return sum(1 for _ in repo.walk(tip))
        ahead, _behind = repo.ahead_behind(tip, base)
        return ahead

    def _commit_on(
        self,
        parent: pygit2.Oid | None,
        changes: Sequence[FileChange],
        message: str,
        author: pygit2.Signature,
        committer: pygit2.Signature,
    ) -> pygit2.Oid | None:
        """Write a commit of ``changes`` on ``parent`` (no ref moves); None if nothing changed."""
        repo = self._open_repo()
        store = self._object_store()
        planned = _nest(changes)
        old_tree: bytes | None = None
        if parent is not None:
            commit = repo[parent]
            assert isinstance(commit, pygit2.Commit)
            old_tree = commit.tree_id.raw
        new_tree = self._write_tree(old_tree, planned, ())
        if new_tree is None:
            new_tree = store.add_tree(EMPTY_TREE, None, (0, 0))
        if new_tree == (old_tree if old_tree is not None else _EMPTY_TREE_ID):
            return None
        parents: list[bytes] = [parent.raw] if parent is not None else []
        made = store.add_commit(new_tree, parents, author, committer, message, self._signer)
        edits = [c for c in changes if not isinstance(c.content, bytes | StoredBlob | None)]
        if edits:
            self._edits[made] = edits
        return pygit2.Oid(raw=made)

    def _write_tree(
        self, tree_id: bytes | None, changes: _Folder, where: tuple[str, ...]
    ) -> bytes | None:
        """Write tree ``tree_id`` with ``changes`` (see :func:`_nest`); None if it ends up empty.
        Unchanged, it returns ``tree_id`` itself and writes nothing."""
        store = self._object_store()
        tree = store.tree(tree_id) if tree_id is not None else EMPTY_TREE
        edits: dict[bytes, tuple[int, bytes] | None] = {}
        for name, change in changes.items():
            key = name.encode()
            existing = tree.lookup(key)
            path = "/".join((*where, name))
            if isinstance(change, dict):
                if existing is not None and existing[0] != FileMode.TREE:
                    if _only_deletes(change):
                        continue
                    raise ValueError(f"cannot write under {path}: it is not a folder")
                old = existing[1] if existing is not None else None
                subtree = self._write_tree(old, change, (*where, name))
                if subtree is not None:
                    if subtree != old:
                        edits[key] = (FileMode.TREE, subtree)
                elif existing is not None:
                    edits[key] = None
                continue
            is_file = existing is not None and existing[0] in _FILE_MODES
            if change is None:
                if is_file:
                    edits[key] = None
                continue
            if existing is not None and not is_file:
                raise ValueError(f"cannot write {path}: something other than a file is there")
            if not isinstance(change, bytes | StoredBlob):
                change = change.edited(store.blob(existing[1]) if existing else None)
                if change is None:
                    continue
            blob = self._blob_of(change)
            if existing is None:
                edits[key] = (FileMode.BLOB, blob)
            elif existing[1] != blob:
                edits[key] = (existing[0], blob)
        if not edits:
            return tree_id if len(tree) else None
        new, first, end = tree.edited(edits)
        if not len(new):
            return None
        return store.add_tree(new, tree_id, (first, end))

    def _blob_of(self, content: bytes | StoredBlob) -> bytes:
        store = self._object_store()
        if isinstance(content, bytes):
            return store.add_blob(content)
        if content.oid not in store and pygit2.Oid(raw=content.oid) not in self._open_repo().odb:
            # Added through another BranchRepository (a committer since replaced): committing
            # it would make a commit whose file cannot be read.
            raise RepositoryError(f"blob {content.oid.hex()} is not in the clone")
        return content.oid

    def _changes_of(self, commit: pygit2.Commit) -> list[FileChange]:
        """The files ``commit`` wrote or deleted relative to its first parent."""
        repo = self._open_repo()
        if commit.parents:
            diff = commit.parents[0].tree.diff_to_tree(commit.tree)
        else:
            diff = commit.tree.diff_to_tree(swap=True)
        changes = []
        for delta in diff.deltas:
            if delta.status == DeltaStatus.DELETED:
                changes.append(FileChange(delta.old_file.path, None))
            elif delta.new_file.mode in _FILE_MODES:
                blob = repo[delta.new_file.id]
                assert isinstance(blob, pygit2.Blob)
                changes.append(FileChange(delta.new_file.path, blob.data))
        return changes

    # -- network --------------------------------------------------------------------------

    def _fetch(self) -> _RemoteState:
        """Learn the remote's branches, fetch the one local work builds on, record it."""
        remote = self._remote()
        heads = self._network("list remote branches", lambda cb: remote.list_heads(callbacks=cb))
        advertised = {head.name: head for head in heads if head.name}
        source = self._local_ref if self._local_ref in advertised else _default_branch(advertised)
        if source != self._local_ref:
            self._set_ref(_tracking_ref(self._local_ref), None)
        if source is None:
            return _RemoteState(branch_tip=None, start=None)
        tracking = _tracking_ref(source)
        try:
            self._network("fetch", lambda cb: remote.fetch([f"+{source}:{tracking}"], callbacks=cb))
        finally:
            # libgit2 writes the URL into FETCH_HEAD; nothing here reads it.
            (self._path / FETCH_HEAD).unlink(missing_ok=True)
        start = self._target(tracking)
        return _RemoteState(branch_tip=start if source == self._local_ref else None, start=start)

    def _follow_remote(self, state: _RemoteState) -> None:
        """Move the local branch to the remote start point unless it holds unpushed work."""
        repo = self._open_repo()
        local = self._local_tip()
        if local is not None and self._count_above(local, self._target(BASE_REF)) > 0:
            contained = state.start is not None and (
                state.start == local or repo.descendant_of(state.start, local)
            )
            if not contained:
                return
        self._set_ref(self._local_ref, state.start)
        self._set_ref(BASE_REF, state.start)

    def _run_git(self, git: str, arguments: list[str]) -> None:
        """Run ``git <arguments>`` on the clone, isolated from user and system configuration,
        its delta base cache bounded (:data:`GIT_DELTA_BASE_CACHE`)."""
        directory = str(self._path.resolve())
        command = [
            git,
            "-c",
            f"safe.directory={directory}",
            "-c",
            f"core.deltaBaseCacheLimit={GIT_DELTA_BASE_CACHE}",
            f"--git-dir={directory}",
            *arguments,
        ]
        environment = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        environment.update(_GIT_ENVIRONMENT_ISOLATION)
        what = f"git {arguments[0]}"
        try:
            subprocess.run(
                command,
                env=environment,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=GC_TIMEOUT_S,
                check=True,
            )
        except subprocess.TimeoutExpired:
            raise RepositoryError(f"{what} took longer than {GC_TIMEOUT_S}s") from None
        except subprocess.CalledProcessError as error:
            detail = error.stderr.decode(errors="replace").strip()[-500:]
            raise RepositoryError(f"{what} failed: {redact(detail, self._credentials)}") from None

    def _network(self, action: str, operation: Callable[[AuthCallbacks], T]) -> T:
        try:
            return operation(build_callbacks(self._url, self._credentials))
        except (pygit2.GitError, HostKeyError, AuthenticationRejected) as error:
            raise self._unavailable(action, error) from None

    def _unavailable(self, action: str, error: Exception) -> RemoteUnavailable:
        return RemoteUnavailable(self.display_url, f"{action} failed: {self._reason(error)}")

    def _reason(self, error: Exception) -> str:
        return redact(str(error), self._credentials) or type(error).__name__


@functools.cache
def git_version(git: str) -> tuple[int, ...]:
    """The version of the ``git`` binary, e.g. (2, 39, 5); () when it cannot be told."""
    try:
        found = subprocess.run(
            [git, "--version"], capture_output=True, text=True, timeout=GC_TIMEOUT_S, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", found)
    return tuple(int(part) for part in match.groups() if part is not None) if match else ()


def repack_arguments(version: tuple[int, ...]) -> list[str]:
    """How to merge a clone's small packs with a ``git`` of ``version``."""
    if version >= GEOMETRIC_SINCE:
        return ["repack", "-d", "-q", f"--geometric={GEOMETRIC_FACTOR}"]
    return ["repack", "-a", "-d", "-q"]


def stores_its_remote(path: Path) -> bool:
    """Whether the clone at ``path`` keeps its remote, URL and maybe a token with it, in its
    config, as clones made before remotes lived in memory only (:meth:`BranchRepository._remote`)
    did."""
    try:
        config = (path / "config").read_text(errors="replace")
    except OSError:
        return False
    return f'[remote "{REMOTE_NAME}"]' in config


# libgit2's git_direction for a push (pygit2 exports no name for it).
_GIT_DIRECTION_PUSH = 1


def prove_push_access(url: str, credentials: GitCredentials) -> None:
    """Open the push handshake with ``url`` and close it; raise if the server refuses it.

    The handshake is the first step of every push: over smart HTTP a request for the
    ``git-receive-pack`` service, over SSH the ``git-receive-pack`` command. Hosting services
    authorize it before they answer (GitHub, GitLab, Gitea and Bitbucket refuse it to a
    read-only token or deploy key; ``git http-backend`` serves it only to an authenticated user),
    so an answer shows these credentials may push, without writing anything. Runs on a scratch
    repository that is gone afterwards; raises :class:`RemoteUnavailable` with a message safe
    to show.
    """
    _ensure_off_event_loop()
    _ensure_network_timeouts()
    _configure_libgit2()
    # As a clone does: what the URL carries leaves it and joins the credentials.
    bare_url, credentials = without_url_credentials(url, credentials)
    with tempfile.TemporaryDirectory(prefix="reverserd-handshake-") as scratch:
        remote = pygit2.init_repository(scratch, bare=True).remotes.create_anonymous(bare_url)
        try:
            remote.connect(build_callbacks(bare_url, credentials), _GIT_DIRECTION_PUSH)
        except (pygit2.GitError, HostKeyError, AuthenticationRejected) as error:
            reason = redact(str(error), credentials) or type(error).__name__
            raise RemoteUnavailable(mask_url(url), f"push handshake failed: {reason}") from None


def _ensure_off_event_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError("BranchRepository blocks; call it from its worker thread, not the loop")


_Folder: TypeAlias = dict[str, "_Folder | bytes | StoredBlob | FileEdit | None"]
"""One commit's changes below a folder: name -> new content (None deletes), or a subfolder's
changes. Built once per commit, so a reconcile of 100,000 files splits each path once."""


def _nest(changes: Sequence[FileChange]) -> _Folder:
    root: _Folder = {}
    for change in changes:
        *folders, name = _split_path(change.path)
        folder = root
        for part in folders:
            inner = folder.setdefault(part, {})
            if not isinstance(inner, dict):
                raise ValueError(f"{change.path} is changed both as a file and as a folder")
            folder = inner
        if isinstance(folder.get(name), dict):
            raise ValueError(f"{change.path} is changed both as a file and as a folder")
        folder[name] = change.content
    return root


def _only_deletes(folder: _Folder) -> bool:
    return all(
        _only_deletes(change) if isinstance(change, dict) else change is None
        for change in folder.values()
    )


def _split_path(path: str) -> tuple[str, ...]:
    """Validate a POSIX relative path and split it into segments."""
    parts = tuple(path.split("/"))
    if (
        not path
        or path.startswith("/")
        or "\0" in path
        or any(part in ("", ".", "..") or part.lower() == ".git" for part in parts)
    ):
        raise ValueError(f"invalid repository path {path!r}")
    return parts


def _unwritable_on(tree: pygit2.Tree | None, changes: Sequence[FileChange]) -> dict[str, str]:
    """Path -> why writing it on ``tree`` is impossible; see :meth:`BranchRepository.unwritable`."""
    blocked: dict[str, str] = {}
    for change in changes:
        if change.content is None:
            continue
        try:
            parts = _split_path(change.path)
        except ValueError as error:
            blocked[change.path] = str(error)
            continue
        node: pygit2.Object | None = tree
        for depth, part in enumerate(parts):
            node = _entry(node, part) if isinstance(node, pygit2.Tree) else None
            if node is None:
                break
            here = "/".join(parts[: depth + 1])
            if depth == len(parts) - 1:
                if node.filemode not in _FILE_MODES:
                    blocked[change.path] = (
                        f"cannot write {here}: something other than a file is there"
                    )
            elif not isinstance(node, pygit2.Tree):
                blocked[change.path] = f"cannot write under {here}: it is not a folder"
                break
    return blocked


def _entry(tree: pygit2.Tree | None, name: str) -> pygit2.Object | None:
    if tree is None or name not in tree:
        return None
    return tree[name]


def _entry_at(tree: pygit2.Tree, path: str) -> pygit2.Object | None:
    try:
        return tree["/".join(_split_path(path))]
    except KeyError:
        return None


def _differing_files(
    old: pygit2.Tree | None, new: pygit2.Tree | None, folder: str
) -> Iterator[str]:
    """Files that differ between ``old`` and ``new`` (either may be absent), below ``folder``."""
    before = {str(entry.name): entry for entry in old} if old is not None else {}
    after = {str(entry.name): entry for entry in new} if new is not None else {}
    for name in before.keys() | after.keys():
        first, second = before.get(name), after.get(name)
        if first is not None and second is not None and first.id == second.id:
            continue
        path = f"{folder}/{name}" if folder else name
        first_tree = first if isinstance(first, pygit2.Tree) else None
        second_tree = second if isinstance(second, pygit2.Tree) else None
        if first_tree is not None or second_tree is not None:
            yield from _differing_files(first_tree, second_tree, path)
        if isinstance(first, pygit2.Blob) or isinstance(second, pygit2.Blob):
            yield path


def _walk_files(tree: pygit2.Tree, folder: str) -> Iterator[str]:
    for entry in tree:
        path = f"{folder}/{entry.name}" if folder else str(entry.name)
        if isinstance(entry, pygit2.Tree):
            yield from _walk_files(entry, path)
        elif isinstance(entry, pygit2.Blob):
            yield path


def _commit_or_none(repo: pygit2.Repository, oid: pygit2.Oid | None) -> pygit2.Commit | None:
    if oid is None:
        return None
    commit = repo.get(oid)
    assert isinstance(commit, pygit2.Commit)
    return commit


def _default_branch(advertised: Mapping[str, pygit2.remotes.RemoteHead]) -> str | None:
    head = advertised.get("HEAD")
    target = head.symref_target if head is not None else None
    if target is None or not target.startswith(_HEADS) or target not in advertised:
        return None
    return target


def _tracking_ref(local_ref: str) -> str:
    return f"refs/remotes/{REMOTE_NAME}/{local_ref.removeprefix(_HEADS)}"


def _is_stale(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in _STALE_PUSH_MARKERS)


def _is_hex(text: str) -> bool:
    return all(char in "0123456789abcdef" for char in text)


def _sha(oid: pygit2.Oid | None) -> str | None:
    return str(oid) if oid is not None else None
