"""Small packs are merged with whatever ``git`` is installed: ``--geometric`` from Git 2.32 on,
every pack into one before it. Real ``git`` and real clones reached through file://."""

from __future__ import annotations

import shutil
import subprocess
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
