"""The trailer lines that end every commit reverserd makes for a target: written and read here.

A commit made for a target ends with::

    journal-seq: <seq>
    target: <namespace>/<name>

``target`` names the GitTarget the commit was made for (its last commit, shown in status, is read
back from these lines). ``journal-seq`` is the journal position the target's consumer had
reached when it handed the commit over: every event of the target up to it was handed over
before (committed, or judged to need nothing). After a restart, the newest such seq among the
commits this clone made is the consumer's resume point: events up to it are replayed for their
records only, never committed again. A commit therefore carries the consumer's position, never
an older event's seq (a quarantined object retried from its old event is committed at the
position it is retried at). A reconcile commit carries the target line only.

Only the trailing lines are read: what comes before them (an object's name, a user name) is
escaped when written, but never trusted to be a trailer.
"""

from __future__ import annotations

from collections.abc import Sequence

TARGET_FIELD = "target"
SEQ_FIELD = "journal-seq"


def trailer_lines(target: str, seq: int | None) -> list[str]:
    """The lines that end a commit made for ``target`` at journal position ``seq``."""
    lines = [] if seq is None else [f"{SEQ_FIELD}: {seq}"]
    return [*lines, f"{TARGET_FIELD}: {target}"]


def read_trailers(message: str) -> tuple[str, int | None] | None:
    """(target, seq or None) from a commit message's trailing lines; None if it has none."""
    lines = message.rstrip("\n").splitlines()
    if not lines or not lines[-1].startswith(f"{TARGET_FIELD}: "):
        return None
    target = lines[-1][len(TARGET_FIELD) + 2 :].strip()
    seq = None
    if len(lines) >= 2 and lines[-2].startswith(f"{SEQ_FIELD}: "):
        value = lines[-2][len(SEQ_FIELD) + 2 :].strip()
        seq = int(value) if value.isdecimal() else None
    return target, seq


def committed_seq(commits: Sequence[tuple[str, str]], target: str, cursor: int) -> int:
    """The newest journal seq of ``target`` in ``commits`` (newest first), not below ``cursor``.

    Stops at the first commit of the target at or below the cursor: the seqs of a target's
    commits only grow along the branch, so everything older is covered by the cursor.
    """
    newest = cursor
    for _, message in commits:
        found = read_trailers(message)
        if found is None or found[0] != target or found[1] is None:
            continue
        if found[1] <= cursor:
            break
        newest = max(newest, found[1])
    return newest


def newest_per_target(commits: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Target -> its newest commit, from commits listed newest first."""
    newest: dict[str, str] = {}
    for sha, message in commits:
        found = read_trailers(message)
        if found is not None:
            newest.setdefault(found[0], sha)
    return newest
