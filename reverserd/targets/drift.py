"""Drift: files of live objects that someone else changed in a target's folder.

reverserd promises a folder that says what the cluster holds, but anyone with push access can
edit or delete a file in it, and the file of a quiet object would stay wrong until the object
changes. So each target's consumer, when it is caught up and idle, compares its folder on the
remote with what it would write (every :data:`DEFAULT_DRIFT_INTERVAL_S`, flag
``--drift-interval``, and at once on a reconcile request).

**Cheap when nothing moved.** The committer fetches the branch (a tip the clone has transfers
nothing) and answers with the tree ID of the folder. :class:`DriftState` remembers the tree ID
of the last check that found the folder clean, with what the target then expected; the same ID
and the same expectations end the check without reading a file. Otherwise only the files that
differ between the two trees are read (the committer walks only the subtrees whose IDs differ),
together with the files whose record changed since.

**Bounded work however the folder looks.** A file larger than :data:`DRIFT_FILE_LIMIT_BYTES`
counts as drifted unread. A file judged once is not read again while its blob and its record
stay the same (the verdict is cached by both), so a folder that stays drifted costs one read of
its trees per check. Reconcile requests check at most every :data:`RECONCILE_CHECK_GAP_S`.

**Only what the target has processed.** The content a file should hold is the object at the
target's journal position: an object with a newer event, or whose type is not served with a
complete seed now (a removed CRD), is left to the event path this time, so that every change
keeps its own commit and nothing is restored for a type the cluster no longer has.

**What counts as drifted.** Only the file a target recorded writing for an object that is live
now (in the journal's ``objects``), and that its rules would write at an update: missing, or
holding something else than the object as reverserd renders it (a file that parses to the same
object, as an adopted one may, is not drift). A file at another path that names the object is
left alone, and so is every file that names no live object (DESIGN invariant 5): nothing is
ever deleted for drift. Secrets are not checked: their ciphertext differs on every write.

**Modes** (``spec.drift.mode``): ``off``; ``warn``, the ``Drifted`` condition, the
``reverserd_drifted_files`` gauge and one log line per newly drifted file; ``repair``, one commit
restoring exactly the drifted files, whose message lists them.

**No fight with another writer.** A file a repair restored that is found changed again counts
as a fight; after :data:`FIGHT_LIMIT` fights in a row it is held (reported, not repaired) for
:data:`FIGHT_HOLD_S`, and the condition says so. A file found clean ends its fight.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from reverserd.committer.trailers import trailer_lines
from reverserd.config.status import DriftReport
from reverserd.journal import ObjectKey
from reverserd.manifest import SENSITIVE_RESOURCES
from reverserd.metrics import DRIFTED_FILES
from reverserd.targets.planning import FileRecord

log = logging.getLogger(__name__)

# How often an idle target compares its folder with the cluster: a fetch that finds nothing
# new costs one round trip, so five minutes keeps a person's edit short-lived while a thousand
# idle targets cost a few requests a second to their Git servers.
DEFAULT_DRIFT_INTERVAL_S = 300.0
# Repairs of one file in a row that someone changed back before the file counts as contested:
# one is a slip, two may be a person who did not see the first repair, three is a process.
FIGHT_LIMIT = 3
# How long a contested file is left as the other writer wants it (and reported): long enough
# that the two never alternate at the check interval, short enough that it heals the same day
# once the other writer is stopped.
FIGHT_HOLD_S = 3600.0
# The shortest ``--drift-interval``: zero or less would compare the folder on every idle pass of
# the consumer, a fetch a second per target; one second still lets a test see a check follow
# each edit at once.
MIN_DRIFT_INTERVAL_S = 1.0
# Reconcile requests check at once, but no more often than this: whoever may annotate a
# GitTarget could otherwise make every value change cost a fetch and a read of the folder.
# Half a minute is far shorter than any interval worth configuring, so a request still acts
# about as soon as a person expects.
RECONCILE_CHECK_GAP_S = 30.0
# A file in the folder larger than this is drifted without being read: no object renders that
# large (etcd refuses requests over 1.5 MiB by default, and YAML adds little to JSON), and the
# Git server's owner could otherwise hand the daemon a small pack inflating to gigabytes.
DRIFT_FILE_LIMIT_BYTES = 8 * 1024 * 1024
# Files of the folder read per round trip to the Git thread.
DRIFT_READ_BATCH = 1000
# Drifted files a repair commit's message lists by name.
REPAIR_LISTED = 100


@dataclass(frozen=True)
class Drifted:
    """A live object's file that differs from what reverserd writes, and what it should hold."""

    path: str
    key: ObjectKey
    content: bytes


def expected_files(files: dict[ObjectKey, FileRecord]) -> dict[str, tuple[ObjectKey, str]]:
    """Path -> (object, record hash) of the files a drift check compares (no Secrets)."""
    return {
        path: (key, digest)
        for key, (path, digest) in files.items()
        if (key.api_group, key.resource) not in SENSITIVE_RESOURCES
    }


@dataclass
class DriftState:
    """What one target's consumer remembers between drift checks (see the module docstring)."""

    target: str
    report: DriftReport
    clean_tree: str | None = None
    clean_expected: dict[str, str] | None = None
    """Path -> record hash at the last clean check; None before the first one."""
    due_at: float = 0.0
    fights: dict[str, int] = field(default_factory=dict)
    held_until: dict[str, float] = field(default_factory=dict)
    last_repaired: set[str] = field(default_factory=set)
    verdicts: dict[str, tuple[str, str, bool]] = field(default_factory=dict)
    """Path -> (blob ID, record hash, drifted) of each file judged since the last clean check."""
    requested_check_at: float | None = None
    """When (monotonic) the last check that a reconcile request asked for ran."""

    def request_due(self, now: float) -> bool:
        """Whether a reconcile request may check now (:data:`RECONCILE_CHECK_GAP_S`)."""
        last = self.requested_check_at
        return last is None or now >= last + RECONCILE_CHECK_GAP_S

    def cached_verdict(self, path: str, blob: str, digest: str) -> bool | None:
        """Whether ``path`` was found drifted with this blob and record; None: not judged."""
        found = self.verdicts.get(path)
        return found[2] if found is not None and found[:2] == (blob, digest) else None

    def judged(self, path: str, blob: str, digest: str, drifted: bool) -> None:
        self.verdicts[path] = (blob, digest, drifted)

    def forget_verdicts_except(self, paths: Iterable[str]) -> None:
        """Keep the verdicts of ``paths`` only (files no longer expected are no concern)."""
        kept = set(paths)
        self.verdicts = {p: v for p, v in self.verdicts.items() if p in kept}

    def unchanged(self, tree: str | None, expected: dict[str, tuple[ObjectKey, str]]) -> bool:
        """Whether the folder and the expectations are those of the last clean check."""
        return (
            self.clean_expected is not None
            and tree == self.clean_tree
            and self.clean_expected == {path: digest for path, (_, digest) in expected.items()}
        )

    def candidates(
        self, changed: set[str] | None, expected: dict[str, tuple[ObjectKey, str]]
    ) -> list[str]:
        """The expected files to read: every one before the first clean check, then those the
        tree diff names (``changed``) or whose record changed since."""
        if self.clean_expected is None or changed is None:
            return sorted(expected)
        before = self.clean_expected
        return sorted(
            path
            for path, (_, digest) in expected.items()
            if path in changed or before.get(path) != digest
        )

    def found_clean(self, tree: str | None, expected: dict[str, tuple[ObjectKey, str]]) -> None:
        self.clean_tree = tree
        self.clean_expected = {path: digest for path, (_, digest) in expected.items()}
        self.fights.clear()
        self.held_until.clear()
        self.last_repaired.clear()
        self.verdicts.clear()

    def triage(self, drifted: list[Drifted], now: float) -> tuple[list[Drifted], list[Drifted]]:
        """(files to repair, files held because another writer keeps changing them back)."""
        paths = {item.path for item in drifted}
        self.fights = {p: n for p, n in self.fights.items() if p in paths}
        self.held_until = {p: t for p, t in self.held_until.items() if p in paths}
        repair: list[Drifted] = []
        held: list[Drifted] = []
        for item in drifted:
            if item.path in self.last_repaired:
                self.fights[item.path] = self.fights.get(item.path, 0) + 1
            if self.fights.get(item.path, 0) >= FIGHT_LIMIT and item.path not in self.held_until:
                self.held_until[item.path] = now + FIGHT_HOLD_S
                log.warning(
                    "drift repair backed off: another writer keeps changing the file back",
                    extra={"target": self.target, "path": item.path, "hold_s": FIGHT_HOLD_S},
                )
            until = self.held_until.get(item.path)
            if until is not None and now < until:
                held.append(item)
                continue
            if until is not None:
                del self.held_until[item.path]
                self.fights.pop(item.path, None)
            repair.append(item)
        self.last_repaired = {item.path for item in repair}
        return repair, held

    def show(self, drifted: list[Drifted], held: list[Drifted], mode: str, at: float) -> None:
        """Report a check: the status, the gauge, and a log line per newly drifted file."""
        report = self.report
        before = set(report.drifted)
        for item in drifted:
            if item.path not in before:
                log.warning(
                    "drifted file",
                    extra={"target": self.target, "path": item.path, "mode": mode},
                )
        report.checked_at, report.error = at, None
        report.drifted = sorted(item.path for item in drifted)
        report.held = sorted(item.path for item in held)
        DRIFTED_FILES.labels(target=self.target).set(len(drifted))


def repair_message(paths: list[str], target: str) -> str:
    """Subject and body of a repair commit: what it restores, and the target's trailer."""
    listed = [f"- {path}" for path in paths[:REPAIR_LISTED]]
    if len(paths) > REPAIR_LISTED:
        listed.append(f"- and {len(paths) - REPAIR_LISTED} more")
    lines = [
        f"repair: restore {len(paths)} drifted file(s)",
        "",
        "Files of live objects changed or deleted outside reverserd, restored to what the"
        " cluster holds:",
        *listed,
        "",
        *trailer_lines(target, None),
    ]
    return "\n".join(lines) + "\n"
