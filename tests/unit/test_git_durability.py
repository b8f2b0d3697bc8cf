"""SIGKILL during the in-memory write path: the clone is consistent and holds what was flushed.

The committer moves a cursor only after a push, and a push flushes first; a commit is therefore
either in the clone on disk before its cursor can move, or lost with the process and redone
from the journal. A child process commits and flushes in a loop, reporting each flushed tip on
stdout, and is killed at various times after its first batch (mid-commit, mid-flush, between
the two). The reopened clone must pass ``git fsck``, its branch must be the last tip reported
flushed or the one whose flush ended just before the kill, and every file of it is readable.

A SIGKILL leaves the page cache to the kernel, which still writes it; a power cut does not. What
survives one is modelled as POSIX promises it: a file's data as of its last ``fsync``, a
directory's entries as of the directory's last ``fsync``. A flush must leave every object it
wrote readable from that state.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pygit2
import pytest

from reverserd.git import BranchRepository
from reverserd.git.objects import ObjectStore

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


class PowerCut:
    """Tracks what of ``directory`` a power cut would leave: the entries its last ``fsync``
    saw, each with its data as of that file's last ``fsync`` (empty if none: data written and
    never synced may be lost). What was there before tracking started counts as durable."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.entries = self._listing()
        self.data = {
            inode: (self.directory / name).read_bytes() for name, inode in self.entries.items()
        }
        self._real_fsync = os.fsync

    def _listing(self) -> dict[str, int]:
        return {path.name: path.stat().st_ino for path in self.directory.iterdir()}

    def fsync(self, descriptor: int) -> None:
        self._real_fsync(descriptor)
        synced = Path(os.readlink(f"/proc/self/fd/{descriptor}"))
        info = os.fstat(descriptor)
        if stat.S_ISDIR(info.st_mode):
            if synced == self.directory:
                self.entries = self._listing()
        else:
            self.data[info.st_ino] = synced.read_bytes()

    def survivors(self) -> dict[str, bytes]:
        return {name: self.data.get(inode, b"") for name, inode in self.entries.items()}


def test_a_power_cut_right_after_a_flush_keeps_every_flushed_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clone = tmp_path / "clone"
    repo = pygit2.init_repository(str(clone), bare=True, initial_head="main")
    store = ObjectStore(repo, clone / "objects")
    contents = [f"object {n}\n".encode() * (n + 1) for n in range(50)]
    oids = [store.add_blob(content) for content in contents]
    cut = PowerCut(clone / "objects" / "pack")
    monkeypatch.setattr(os, "fsync", cut.fsync)
    store.flush()
    monkeypatch.undo()
    assert len(store) == 0

    # The clone as the machine finds it when power returns.
    after = tmp_path / "after-the-cut"
    shutil.copytree(clone, after, ignore=shutil.ignore_patterns("pack"))
    (after / "objects" / "pack").mkdir()
    for name, data in cut.survivors().items():
        (after / "objects" / "pack" / name).write_bytes(data)
    survived = pygit2.Repository(str(after))
    for oid, content in zip(oids, contents, strict=True):
        assert survived.get(pygit2.Oid(raw=oid)) is not None, oid.hex()
        assert survived[pygit2.Oid(raw=oid)].data == content
