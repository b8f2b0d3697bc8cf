"""Small packs are merged with whatever ``git`` is installed: ``--geometric`` from Git 2.32 on,
every pack into one before it. Real ``git`` and real clones reached through file://."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from reverserd.git import BranchRepository
from reverserd.git.repository import GEOMETRIC_SINCE, git_version, repack_arguments
from tests.unit.test_clone_healing import clone_with_pushes


def test_the_installed_git_version_is_read() -> None:
    git = shutil.which("git")
    assert git is not None
    version = git_version(git)
    assert len(version) >= 2 and version[0] >= 2, version


def test_a_git_older_than_geometric_repack_merges_every_pack(tmp_path: Path) -> None:
    older = (GEOMETRIC_SINCE[0], GEOMETRIC_SINCE[1] - 1, 0)
    assert "--geometric=2" in repack_arguments(GEOMETRIC_SINCE)
    arguments = repack_arguments(older)
    assert not any(argument.startswith("--geometric") for argument in arguments)

    path, url = clone_with_pushes(tmp_path, 4)
    repository = BranchRepository(path, url, "main")
    repository.open()
    assert repository.pack_count() >= 4
    git = shutil.which("git")
    assert git is not None
    clone = str(path.resolve())
    subprocess.run(
        [git, "-c", f"safe.directory={clone}", f"--git-dir={clone}", *arguments], check=True
    )
    reopened = BranchRepository(path, url, "main")
    reopened.open()
    assert reopened.pack_count() == 1
    reopened.verify()
    assert reopened.read("live/f0.yaml") == b"v0\n"


# A clone of a 2,000-file folder with 17 flushes of 100 one-file commits: 1,700 versions of an
# 80 KB tree, each a delta of the one before, so rebuilding them all fills Git's default 96 MiB
# delta base cache. The flush that finds 17 packs merges them with `git repack`.
_MANY_TREE_VERSIONS = """
import resource, sys
from pathlib import Path
import pygit2
from reverserd.git import BranchRepository, FileChange
from reverserd.git.repository import PACK_LIMIT

work = Path(sys.argv[1])
remote = work / "remote.git"
pygit2.init_repository(str(remote), bare=True, initial_head="main")
repository = BranchRepository(work / "clone", remote.as_uri(), "main")
repository.open()
who = pygit2.Signature("bench", "bench@example.com")
files = [FileChange(f"live/cm-{i:05d}.yaml", f"name: cm-{i}\\n".encode()) for i in range(2000)]
repository.apply(files, "all\\n", who, who)
repository.flush()
for flush in range(PACK_LIMIT):
    commits = [
        ([FileChange(f"live/cm-{(flush * 100 + i) % 2000:05d}.yaml", f"v{flush}.{i}\\n".encode())],
         f"c{flush}.{i}\\n", who)
        for i in range(100)
    ]
    repository.apply_many(commits, who)
    repository.flush()
print(repository.pack_count(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
"""


def test_merging_packs_of_many_tree_versions_keeps_git_small(tmp_path: Path) -> None:
    """The `git repack` a flush runs peaks far below Git's default delta base cache (96 MiB)."""
    result = subprocess.run(
        [sys.executable, "-c", _MANY_TREE_VERSIONS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    packs, peak_mb = (int(field) for field in result.stdout.split())
    assert packs == 1
    assert peak_mb < 60, f"git repack peaked at {peak_mb} MB"
