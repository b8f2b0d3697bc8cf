"""The in-memory write path builds exactly the objects Git would, and a pack Git accepts.

Random commits (files and folders whose names sort differently as files and as folders, nested
folders appearing and disappearing, executable files keeping their mode) are made through
``BranchRepository``; after each flush every tree must equal the tree libgit2's own
``TreeBuilder`` writes for the same files, and ``git fsck --strict`` must accept the clone,
including its delta chains.
"""

from __future__ import annotations

import random
import subprocess
import zlib
from pathlib import Path

import pygit2
import pytest
from pygit2.enums import FileMode

from reverserd.git import BranchRepository, FileChange, objects
from reverserd.git.objects import DELTA_DEPTH
from tests.conftest import AUTHOR, COMMITTER

# Names chosen so that Git's order (a folder compares as if its name ended in "/") differs
# from plain byte order: "a" < "a-b" < "a.b" < "a/" < "a0".
NAMES = ("a", "a-b", "a.b", "a0", "b", "z")


def _reference_tree(repo: pygit2.Repository, files: dict[str, tuple[bytes, int]]) -> pygit2.Oid:
    """The tree libgit2's TreeBuilder writes for ``files`` (path -> (content, mode))."""
    folders: dict[str, dict[str, tuple[bytes, int]]] = {}
    builder = repo.TreeBuilder()
    for path, (content, mode) in files.items():
        head, _, rest = path.partition("/")
        if rest:
            folders.setdefault(head, {})[rest] = (content, mode)
        else:
            builder.insert(head, repo.create_blob(content), mode)
    for name, nested in folders.items():
        builder.insert(name, _reference_tree(repo, nested), FileMode.TREE)
    return builder.write()


def _random_path(rng: random.Random) -> str:
    depth = rng.randint(1, 3)
    return "/".join(
        rng.choice(NAMES) + (".yaml" if level == depth - 1 else "") for level in range(depth)
    )


def test_random_commits_match_libgit2_trees_and_pass_fsck(tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    pygit2.init_repository(str(remote), bare=True, initial_head="main")
    repository = BranchRepository(tmp_path / "clone", remote.as_uri(), "main")
    repository.open()
    rng = random.Random(12)
    files: dict[str, bytes] = {}
    shas: list[tuple[str, dict[str, bytes]]] = []
    for number in range(3 * DELTA_DEPTH):
        changes: list[FileChange] = []
        for _ in range(rng.randint(1, 4)):
            path = _random_path(rng)
            if path in files and rng.random() < 0.4:
                changes.append(FileChange(path, None))
                files.pop(path)
            elif any(other.startswith(path + "/") for other in files) or any(
                path.startswith(other + "/") for other in files
            ):
                continue
            else:
                content = f"{path} {number}\n".encode()
                changes.append(FileChange(path, content))
                files[path] = content
        sha = repository.apply(changes, f"commit {number}", AUTHOR, COMMITTER)
        if sha is not None:
            shas.append((sha, dict(files)))
        if number % 40 == 39:
            repository.flush()
    repository.flush()

    reader = pygit2.Repository(str(tmp_path / "clone"))
    assert len(shas) > 2 * DELTA_DEPTH
    for sha, expected in shas:
        commit = reader.get(sha)
        assert isinstance(commit, pygit2.Commit)
        reference = {path: (content, FileMode.BLOB) for path, content in expected.items()}
        assert commit.tree_id == _reference_tree(reader, reference), sha
    fsck = subprocess.run(
        ["git", f"--git-dir={tmp_path / 'clone'}", "fsck", "--strict", "--full"],
        capture_output=True,
        text=True,
    )
    assert fsck.returncode == 0, fsck.stderr
    assert repository.push() == shas[-1][0]


def test_an_executable_file_keeps_its_mode_and_commit_ids_match_libgit2(tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    upstream = pygit2.init_repository(str(remote), bare=True, initial_head="main")
    builder = upstream.TreeBuilder()
    builder.insert("run.sh", upstream.create_blob(b"#!/bin/sh\n"), FileMode.BLOB_EXECUTABLE)
    upstream.create_commit("refs/heads/main", AUTHOR, COMMITTER, "seed\n", builder.write(), [])
    repository = BranchRepository(tmp_path / "clone", remote.as_uri(), "main")
    repository.open()

    sha = repository.apply([FileChange("run.sh", b"#!/bin/sh\necho\n")], "edit", AUTHOR, COMMITTER)
    repository.flush()

    reader = pygit2.Repository(str(tmp_path / "clone"))
    commit = reader.get(sha)
    assert isinstance(commit, pygit2.Commit)
    assert commit.tree["run.sh"].filemode == FileMode.BLOB_EXECUTABLE
    # The same commit written by libgit2 has the same ID: headers, signatures, message.
    again = reader.create_commit(None, AUTHOR, COMMITTER, "edit", commit.tree_id, commit.parent_ids)
    assert str(again) == sha


def test_changes_going_round_many_folders_never_parse_a_folder_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parsed-tree cache keeps the current version of every folder while changes go round
    them: a version a change edited leaves it, and never pushes a current one out (at 100,000
    files in 100 folders that made most changes re-parse their folder)."""
    folders, files_per_folder = 20, 100
    # Every folder's current version and the levels above fit; stale versions would not.
    monkeypatch.setattr(objects, "TREE_CACHE_ENTRIES", folders * files_per_folder + 500)
    remote = tmp_path / "remote.git"
    pygit2.init_repository(str(remote), bare=True, initial_head="main")
    repository = BranchRepository(tmp_path / "clone", remote.as_uri(), "main")
    repository.open()

    def path(folder: int, file: int) -> str:
        return f"live/v1/configmaps/ns-{folder:02}/cm-{file:03}.yaml"

    initial = [
        FileChange(path(folder, file), f"{folder} {file} 0\n".encode())
        for folder in range(folders)
        for file in range(files_per_folder)
    ]
    repository.apply(initial, "initial", AUTHOR, COMMITTER)
    repository.flush()
    parsed: list[int] = []
    parse = objects.Tree.parse

    def counted(raw: bytes) -> objects.Tree:
        parsed.append(len(raw))
        return parse(raw)

    monkeypatch.setattr(objects.Tree, "parse", staticmethod(counted))
    for number in range(1, 10 * folders + 1):
        folder, file = (number * 7) % folders, number % files_per_folder
        change = FileChange(path(folder, file), f"{folder} {file} {number}\n".encode())
        repository.apply([change], f"change {number}", AUTHOR, COMMITTER)
        if number % 40 == 0:
            repository.flush()
    assert parsed == []


def test_a_delta_stream_of_any_length_inflates_to_its_bytes() -> None:
    """Short deltas are stored, longer ones deflated: zlib reads both back byte for byte."""
    rng = random.Random(5)
    for length in range(2 * objects.STORED_BELOW):
        payload = rng.randbytes(length)
        assert zlib.decompress(objects._delta_stream(payload)) == payload, length
