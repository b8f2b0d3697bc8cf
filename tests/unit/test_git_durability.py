"""SIGKILL during the in-memory write path: the clone is consistent and holds what was flushed.

The committer moves a cursor only after a push, and a push flushes first; a commit is therefore
either in the clone on disk before its cursor can move, or lost with the process and redone
from the journal. A child process commits and flushes in a loop, reporting each flushed tip on
stdout, and is killed at various times after its first batch (mid-commit, mid-flush, between
the two). The reopened clone must pass ``git fsck``, its branch must be the last tip reported
flushed or the one whose flush ended just before the kill, and every file of it is readable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pygit2
import pytest

from reverserd.git import BranchRepository

REPO_ROOT = Path(__file__).resolve().parents[2]

_CHILD = textwrap.dedent(
    """
    import sys
    import pygit2
    from reverserd.git import BranchRepository, FileChange

    signature = pygit2.Signature("Writer", "writer@example.com", 1_700_000_000, 0)
    repository = BranchRepository(sys.argv[1], sys.argv[2], "main")
    repository.open()
    seed = [FileChange(f"live/ns/object-{n:05d}.yaml", b"n: 0\\n") for n in range(2000)]
    repository.apply(seed, "seed", signature, signature)
    round = 0
    while True:
        round += 1
        batch = [
            ([FileChange(f"live/ns/object-{(round * 31 + k) % 2000:05d}.yaml",
                         f"round: {round}\\nk: {k}\\n".encode())], f"r{round}-{k}", signature)
            for k in range(40)
        ]
        made = repository.apply_many(batch, signature)
        print("pending", made[-1], flush=True)
        repository.flush()
        print("flushed", repository.head(), flush=True)
    """
)


def _run_and_kill(clone: Path, url: str, delay_s: float) -> tuple[list[str], list[str]]:
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(clone), url],
        stdout=subprocess.PIPE,
        env=environment,
        text=True,
        # Its own process group, so the kill also takes any git it runs (a pack merge), as
        # a container's end would, and nothing keeps writing the clone while it is checked.
        start_new_session=True,
    )
    assert child.stdout is not None
    try:
        first = child.stdout.readline()
        time.sleep(delay_s)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
    output = first + rest
    flushed = [line.split()[1] for line in output.splitlines() if line.startswith("flushed ")]
    pending = [line.split()[1] for line in output.splitlines() if line.startswith("pending ")]
    return flushed, pending


@pytest.mark.parametrize("delay_s", [0.0, 0.05, 0.13, 0.31, 0.7])
def test_a_killed_writer_leaves_a_consistent_clone_with_every_flushed_commit(
    tmp_path: Path, delay_s: float
) -> None:
    remote = tmp_path / "remote.git"
    pygit2.init_repository(str(remote), bare=True, initial_head="main")
    clone = tmp_path / "clone"

    flushed, pending = _run_and_kill(clone, remote.as_uri(), delay_s)

    fsck = subprocess.run(
        ["git", f"--git-dir={clone}", "fsck", "--strict", "--no-dangling"],
        capture_output=True,
        text=True,
    )
    assert fsck.returncode == 0, fsck.stderr
    reopened = BranchRepository(clone, remote.as_uri(), "main")
    reopened.open()
    head = reopened.head()
    if head is None:
        assert not flushed
        return
    history = [str(commit.id) for commit in pygit2.Repository(str(clone)).walk(head)]
    # The branch is a flushed tip, or the one whose flush finished just before the kill.
    assert head in set(flushed) | set(pending[-1:])
    if flushed:
        assert flushed[-1] in history
    # Whatever the branch names is complete: every file of its tree is readable.
    assert len(reopened.list_files("live/ns")) == 2000
    assert reopened.pending() == len(history)
    assert reopened.push() == head
