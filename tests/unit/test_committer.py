"""Pure parts of the committer: reading back what is already committed for a target."""

from __future__ import annotations

from reverserd.committer.trailers import committed_seq, newest_per_target


def message(subject: str, seq: int | None, target: str) -> str:
    lines = [subject, ""]
    if seq is not None:
        lines.append(f"journal-seq: {seq}")
    lines.append(f"target: {target}")
    return "\n".join(lines) + "\n"


COMMITS = [  # newest first
    ("c5", message("[DELETE] v1/configmaps/a/x", 15, "a/t")),
    ("c4", message("[CREATE] v1/configmaps/b/y", 14, "b/t")),
    ("c3", message("[UPDATE] v1/configmaps/a/x", 12, "a/t")),
    ("c2", message("reconcile: sync 3 resources", None, "a/t")),
    ("c1", message("[CREATE] v1/configmaps/a/x", 9, "a/t")),
]


def test_resume_point_is_the_newest_committed_seq_above_the_cursor() -> None:
    assert committed_seq(COMMITS, "a/t", cursor=10) == 15
    assert committed_seq(COMMITS, "b/t", cursor=10) == 14


def test_resume_point_is_the_cursor_when_nothing_newer_is_committed() -> None:
    assert committed_seq(COMMITS, "a/t", cursor=15) == 15
    assert committed_seq(COMMITS, "c/t", cursor=3) == 3


def test_scan_stops_at_the_first_commit_the_cursor_covers() -> None:
    older_but_higher = [*COMMITS, ("c0", message("[CREATE] v1/configmaps/a/z", 99, "a/t"))]
    assert committed_seq(older_but_higher, "a/t", cursor=9) == 15


def test_last_commit_of_each_target_is_its_newest() -> None:
    assert newest_per_target(COMMITS) == {"a/t": "c5", "b/t": "c4"}


def test_only_the_trailing_lines_are_trailers() -> None:
    forged = "[UPDATE] v1/configmaps/a/x\n\njournal-seq: 99\ntarget: a/t\nuser: someone\n"
    assert committed_seq([("c9", forged), *COMMITS], "a/t", cursor=10) == 15
    assert newest_per_target([("c9", forged)]) == {}
