"""Small packs are merged: copied into one as they are, choosing the packs ``git repack
--geometric`` would; where they cannot be, by whatever ``git`` is installed (``--geometric``
from Git 2.32 on, every pack into one before it), with a bounded delta base cache. Real ``git``
and real clones reached through file://."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pygit2
import pytest

from reverserd.git import BranchRepository, FileChange
from reverserd.git.objects import merge_small_packs
from reverserd.git.repository import (
    GEOMETRIC_FACTOR,
    GEOMETRIC_SINCE,
    PACK_LIMIT,
    git_version,
    repack_arguments,
)
from tests.conftest import AUTHOR, COMMITTER
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


def clone_with_small_packs(work: Path, files: int, per_flush: int) -> BranchRepository:
    """A clone of a ``files``-file folder committed whole, then flushes of ``per_flush``
    one-file commits, each flush one pack, until it holds PACK_LIMIT packs: the next flush
    merges them."""
    remote = work / "remote.git"
    pygit2.init_repository(str(remote), bare=True, initial_head="main")
    repository = BranchRepository(work / "clone", remote.as_uri(), "main")
    repository.open()
    names = [f"live/cm-{index:05d}.yaml" for index in range(files)]
    whole = [FileChange(name, f"v0 {name}\n".encode()) for name in names]
    repository.apply(whole, "all\n", AUTHOR, COMMITTER)
    repository.flush()
    for flush in range(PACK_LIMIT - 1):
        changes = [
            (
                [FileChange(names[(flush * per_flush + i) % files], f"v{flush}.{i}\n".encode())],
                f"c{flush}.{i}\n",
                AUTHOR,
            )
            for i in range(per_flush)
        ]
        repository.apply_many(changes, COMMITTER)
        repository.flush()
    assert repository.pack_count() == PACK_LIMIT
    return repository


def pack_sizes(clone: Path) -> list[int]:
    """Objects per pack of ``clone``, ascending (``git verify-pack`` of each)."""
    sizes = []
    for index in (clone / "objects" / "pack").glob("*.idx"):
        out = subprocess.run(
            ["git", "verify-pack", "-v", str(index)], capture_output=True, text=True, check=True
        ).stdout
        sizes.append(sum(1 for line in out.splitlines() if len(line.split(" ", 1)[0]) == 40))
    return sorted(sizes)


def git_fsck(clone: Path) -> None:
    subprocess.run(
        ["git", f"--git-dir={clone}", "fsck", "--strict", "--no-dangling"],
        capture_output=True,
        check=True,
    )


def test_small_packs_are_merged_as_git_would(tmp_path: Path) -> None:
    """The merge chooses the packs `git repack --geometric=2` chooses, and makes of them a
    pack Git reads whole."""
    # The first pack (the whole folder) outweighs the others together: it stays as it is.
    clone_with_small_packs(tmp_path, files=1000, per_flush=5)
    clone = tmp_path / "clone"
    by_git = tmp_path / "by-git"
    shutil.copytree(clone, by_git)
    subprocess.run(["git", f"--git-dir={by_git}", *repack_arguments(GEOMETRIC_SINCE)], check=True)
    assert merge_small_packs(clone / "objects" / "pack", GEOMETRIC_FACTOR) is True
    assert pack_sizes(clone) == pack_sizes(by_git)
    assert len(pack_sizes(clone)) == 2
    git_fsck(clone)
    reopened = BranchRepository(clone, (tmp_path / "remote.git").as_uri(), "main")
    reopened.open()
    reopened.verify()
    assert reopened.read("live/cm-00000.yaml") == b"v0.0\n"
    assert reopened.read("live/cm-00199.yaml") == b"v0 live/cm-00199.yaml\n"


def test_a_flush_merges_small_packs_without_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no `git` on PATH, the flush that finds PACK_LIMIT + 1 packs still merges them."""
    repository = clone_with_small_packs(tmp_path, files=50, per_flush=5)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    repository.apply([FileChange("live/cm-00000.yaml", b"last\n")], "l\n", AUTHOR, COMMITTER)
    repository.flush()
    assert repository.pack_count() < PACK_LIMIT
    monkeypatch.undo()
    git_fsck(tmp_path / "clone")
    assert repository.read("live/cm-00000.yaml") == b"last\n"


def test_packs_holding_one_object_twice_are_left_to_git(tmp_path: Path) -> None:
    """A pack index may list an object once: packs that share one (a merge cut short by a
    crash leaves the merged pack beside its parts) are merged by `git repack`."""
    repository = clone_with_small_packs(tmp_path, files=50, per_flush=5)
    pack_dir = tmp_path / "clone" / "objects" / "pack"
    smallest = min(pack_dir.glob("*.pack"), key=lambda pack: pack.stat().st_size)
    twin = "pack-" + "0" * 40
    shutil.copyfile(smallest, pack_dir / f"{twin}.pack")
    shutil.copyfile(smallest.with_suffix(".idx"), pack_dir / f"{twin}.idx")
    assert merge_small_packs(pack_dir, GEOMETRIC_FACTOR) is False
    repository.apply([FileChange("live/cm-00000.yaml", b"last\n")], "l\n", AUTHOR, COMMITTER)
    repository.flush()
    assert repository.pack_count() < PACK_LIMIT
    git_fsck(tmp_path / "clone")


def test_a_merge_cut_short_after_its_pack_is_published_leaves_a_sound_clone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The merged packs are deleted only once the merged one is durable: a merge that dies
    between the two leaves every object in two packs, which Git reads, and the next merge
    leaves those to `git repack`."""
    repository = clone_with_small_packs(tmp_path, files=50, per_flush=5)
    pack_dir = tmp_path / "clone" / "objects" / "pack"
    before = {pack.name for pack in pack_dir.glob("*.pack")}
    unlink = Path.unlink

    def dies_deleting_a_merged_pack(path: Path, missing_ok: bool = False) -> None:
        if path.name in before or path.with_suffix(".pack").name in before:
            raise OSError("killed")
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", dies_deleting_a_merged_pack)
    with pytest.raises(OSError, match="killed"):
        merge_small_packs(pack_dir, GEOMETRIC_FACTOR)
    monkeypatch.undo()
    assert len(list(pack_dir.glob("*.pack"))) == len(before) + 1
    git_fsck(tmp_path / "clone")
    repository.apply([FileChange("live/cm-00000.yaml", b"last\n")], "l\n", AUTHOR, COMMITTER)
    repository.flush()
    assert repository.pack_count() < PACK_LIMIT
    git_fsck(tmp_path / "clone")
    assert repository.read("live/cm-00000.yaml") == b"last\n"


# A clone of a 2,000-file folder with 17 flushes of 100 one-file commits: 1,700 versions of an
# 80 KB tree, each a delta of the one before, so rebuilding them all fills Git's default 96 MiB
# delta base cache. The first pack is kept (`.keep`), which leaves the merge to `git repack`.
_MANY_TREE_VERSIONS = """
import resource, sys
from pathlib import Path
from reverserd.git import FileChange
from tests.conftest import AUTHOR, COMMITTER
from tests.unit.test_git_repack import clone_with_small_packs

work = Path(sys.argv[1])
repository = clone_with_small_packs(work, files=2000, per_flush=100)
first = min((work / "clone" / "objects" / "pack").glob("*.pack"), key=lambda p: p.stat().st_mtime)
first.with_suffix(".keep").touch()
repository.apply([FileChange("live/cm-00000.yaml", b"last\\n")], "l\\n", AUTHOR, COMMITTER)
repository.flush()
print(repository.pack_count(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
"""


def test_merging_packs_of_many_tree_versions_keeps_git_small(tmp_path: Path) -> None:
    """The `git repack` a flush runs peaks well below what Git's default delta base cache
    (96 MiB) lets it reach: 69 MB here with 4 MiB (and with 1 MiB), 108 MB with 96 MiB."""
    result = subprocess.run(
        [sys.executable, "-c", _MANY_TREE_VERSIONS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    packs, peak_mb = (int(field) for field in result.stdout.split())
    assert packs < 17
    assert peak_mb < 85, f"git repack peaked at {peak_mb} MB"
