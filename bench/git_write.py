"""bench git_write: commits per second and push cost of the Git write path, by folder size.

``BranchRepository`` alone, in process, against the test bed's smart-HTTP Git server (or, with
``--transport ssh``, its sshd; no API server, no journal): for each folder size (default 1,000,
10,000 and 100,000 files, the largest spread over 100 sub-folders as 100 namespaces would be),
one commit holding every file is pushed, then rounds of single-file commits are made with
``apply_many`` (one commit per change, the way the committer submits them) and pushed, each
round as one push. Reported per size: the initial commit and its push, commits per second of
``apply_many`` (hashing and building trees in memory), the flush (the pack written and fsynced)
and the push (the packs the flushes wrote sent as they are, the server indexing them), so the
Git part of a replica's capacity can be read off directly. CPU seconds are reported too, per
1,000 commits: this process's (every thread of it: what the daemon's Git thread spends) and the
Git server's (lighttpd or sshd, and the ``git`` processes it ran), which wall-clock times on a
shared machine do not separate.

Target: ``apply_many`` >= 500 commits/s on a 10,000-file folder (the live target's rate).
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import (
    Result,
    add_common_arguments,
    benchmark_main,
    command_line,
    configmap_manifest,
    cpu_seconds_with_children,
    descendant_pids,
    say,
    workdir,
)

if TYPE_CHECKING:
    import pygit2

    from testbed.gitservers import GitHttpServer, GitSshServer

TARGET_COMMITS_PER_S = 500.0
TARGET_FOLDER = 10_000
SERVER_PROCESSES = {"http": "lighttpd", "ssh": "sshd"}
"""The Git server's process per transport: its CPU, with what it ran, is the server's."""
# A folder of 100,000 files is not realistic; a namespace of that size would be. Larger trees
# are spread over this many sub-folders.
FILES_PER_FOLDER_MAX = 10_000
SPREAD_FOLDERS = 100


def _path(index: int, files: int) -> str:
    if files <= FILES_PER_FOLDER_MAX:
        return f"live/v1/configmaps/bench/cm-{index:06d}.yaml"
    return f"live/v1/configmaps/bench-{index % SPREAD_FOLDERS:03d}/cm-{index:06d}.yaml"


def _content(index: int, version: int) -> bytes:
    manifest = configmap_manifest("bench", f"cm-{index:06d}", index)
    manifest["metadata"]["resourceVersion"] = str(version)
    lines = [f"{key}: {value!r}" for key, value in manifest.items()]
    return ("\n".join(lines) + "\n").encode()


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> Result:
    import pygit2

    from testbed.gitservers import GitHttpServer, GitSshServer

    result = Result("git_write", command_line("bench.git_write", argv))
    signature = pygit2.Signature("bench", "bench@example.com")
    sizes = [int(size) for size in args.sizes.split(",")]
    with workdir(args.workdir, args.keep, "git-write") as work:
        git: GitHttpServer | GitSshServer
        if args.transport == "ssh":
            git = GitSshServer(work / "git")
        else:
            git = GitHttpServer(work / "git")
        with git:
            _measure(args, result, work, git, sizes, signature)
    result.add(
        "peak RSS of the benchmark process",
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB",
    )
    result.note(
        f"the Git server ({SERVER_PROCESSES[args.transport]} running git receive-pack) runs on"
        " the same machine; its index-pack is part of each push"
    )
    return result.finish()


def _measure(
    args: argparse.Namespace,
    result: Result,
    work: Path,
    git: GitHttpServer | GitSshServer,
    sizes: Sequence[int],
    signature: pygit2.Signature,
) -> None:
    from reverserd.git import BranchRepository, FileChange
    from reverserd.git.credentials import GitCredentials
    from testbed.gitservers import GitSshServer

    servers = descendant_pids(SERVER_PROCESSES[args.transport])

    def server_cpu() -> float:
        return sum(cpu_seconds_with_children(pid) or 0.0 for pid in servers)

    if isinstance(git, GitSshServer):
        credentials = GitCredentials(
            ssh_private_key=git.client_private_key, known_hosts=git.known_hosts
        )
    else:
        credentials = GitCredentials(username=git.username, password=git.password)
    for size in sizes:
        name = f"size-{size}"
        git.create_bare_repo(name)
        repository = BranchRepository(work / name, git.url(name), "main", credentials)
        repository.open()
        say(f"{size:,} files: initial commit")
        started = time.perf_counter()
        repository.apply(
            [FileChange(_path(i, size), _content(i, 0)) for i in range(size)],
            "reconcile",
            signature,
            signature,
        )
        initial_commit = time.perf_counter() - started
        started = time.perf_counter()
        repository.push()
        initial_push = time.perf_counter() - started
        apply_s = flush_s = push_s = 0.0
        apply_cpu = flush_cpu = push_cpu = 0.0
        server_before = server_cpu()
        version = 1
        for _ in range(args.rounds):
            batch = []
            for _ in range(args.commits):
                index = (version * 7919) % size
                change = FileChange(_path(index, size), _content(index, version))
                batch.append(([change], f"[UPDATE] {index} {version}", signature))
                version += 1
            started, cpu = time.perf_counter(), time.process_time()
            repository.apply_many(batch, signature)
            apply_s += time.perf_counter() - started
            apply_cpu += time.process_time() - cpu
            started, cpu = time.perf_counter(), time.process_time()
            repository.flush()
            flush_s += time.perf_counter() - started
            flush_cpu += time.process_time() - cpu
            started, cpu = time.perf_counter(), time.process_time()
            repository.push()
            push_s += time.perf_counter() - started
            push_cpu += time.process_time() - cpu
        server_s = server_cpu() - server_before
        commits = args.rounds * args.commits
        rate = commits / apply_s
        is_target = size == TARGET_FOLDER
        result.add(
            f"{size:,} files: initial commit / its push",
            f"{initial_commit:.2f} s / {initial_push:.2f} s",
        )
        result.add(
            f"{size:,} files: apply_many, one commit per change",
            f"{rate:,.0f} commits/s",
            f">= {TARGET_COMMITS_PER_S:.0f}/s" if is_target else "",
            rate >= TARGET_COMMITS_PER_S if is_target else None,
        )
        result.add(
            f"{size:,} files: flush / push per {args.commits} commits",
            f"{flush_s / args.rounds:.3f} s / {push_s / args.rounds:.2f} s"
            f" (push: {commits / push_s:,.0f} commits/s)",
        )
        per_thousand = 1000 / commits
        result.add(
            f"{size:,} files: CPU s per 1,000 commits: apply / flush / push (this process)",
            f"{apply_cpu * per_thousand:.2f} / {flush_cpu * per_thousand:.2f}"
            f" / {push_cpu * per_thousand:.2f}"
            f" = {(apply_cpu + flush_cpu + push_cpu) / commits * 1000:.2f} ms per commit",
        )
        result.add(
            f"{size:,} files: Git server CPU per commit (receiving the pushes)",
            f"{server_s / commits * 1000:.2f} ms",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.git_write", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--sizes", default="1000,10000,100000", help="files in the tree, comma-separated"
    )
    parser.add_argument("--commits", type=int, default=200, help="commits per push (default 200)")
    parser.add_argument("--rounds", type=int, default=5, help="pushes per size (default 5)")
    parser.add_argument(
        "--transport",
        choices=sorted(SERVER_PROCESSES),
        default="http",
        help="push over smart HTTP (lighttpd) or SSH (sshd); default http",
    )
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
