"""bench signing: what SSH commit signing costs per pushed commit, by folder size.

``BranchRepository`` alone, in process, against the test bed's smart-HTTP Git server (no API
server, no journal): for each folder size (default 1,000 and 10,000 files), two clones of two
repositories hold the same folder, one signing every commit (``spec.commit.signing``; an Ed25519
key unless ``--key``), one not. Rounds of single-file commits are made with ``apply_many`` (one
commit per change, as the committer submits them) and pushed, one push per round, alternating
between the clones round by round (and which goes first), so both see the same load on a
shared machine.

Reported per size and clone, each the median of the rounds: commits per second from the first
commit to the end of the push (wall clock), and CPU seconds per commit of this process
(``time.process_time``: building the commits, the pack and the push; the server's own work is
another process), with the CPU of building the commits alone. A loaded machine stretches wall
time much more than CPU time. The overhead of signing is the relative increase of CPU time per
pushed commit; the commit-alone figure shows the signature against the cheapest part.

Target: signing costs at most 10 % per pushed commit on 1,000 and on 10,000 files.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.common import Result, add_common_arguments, benchmark_main, command_line, say, workdir
from bench.git_write import _content, _path

TARGET_OVERHEAD = 0.10


@dataclass(frozen=True)
class _Round:
    apply_cpu: float
    total_cpu: float
    wall: float


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> Result:
    import pygit2
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from reverserd.git import BranchRepository, CommitSigner, FileChange, GitCredentials
    from testbed.gitservers import GitHttpServer

    result = Result("signing", command_line("bench.signing", argv))
    signature = pygit2.Signature("bench", "bench@example.com")
    if args.key == "rsa":
        signer = CommitSigner(rsa.generate_private_key(65537, 3072))
    elif args.key == "ecdsa":
        signer = CommitSigner(ec.generate_private_key(ec.SECP256R1()))
    else:
        signer = CommitSigner.generate()
    sizes = [int(size) for size in args.sizes.split(",")]
    with (
        workdir(args.workdir, args.keep, "signing") as work,
        GitHttpServer(work / "git") as git,
    ):
        credentials = GitCredentials(username=git.username, password=git.password)
        for size in sizes:
            clones: dict[str, BranchRepository] = {}
            for mode, key in (("unsigned", None), ("signed", signer)):
                name = f"{mode}-{size}"
                git.create_bare_repo(name)
                clone = BranchRepository(work / name, git.url(name), "main", credentials, key)
                clone.open()
                clone.apply(
                    [FileChange(_path(i, size), _content(i, 0)) for i in range(size)],
                    "reconcile",
                    signature,
                    signature,
                )
                clone.push()
                clones[mode] = clone
            say(f"{size:,} files: {args.rounds} rounds of {args.commits} commits per clone")
            rounds: dict[str, list[_Round]] = {mode: [] for mode in clones}
            version = 1
            for round_index in range(args.rounds):
                order = list(clones) if round_index % 2 == 0 else list(reversed(clones))
                batch = []
                for _ in range(args.commits):
                    index = (version * 7919) % size
                    change = FileChange(_path(index, size), _content(index, version))
                    batch.append(([change], f"[UPDATE] {index} {version}", signature))
                    version += 1
                for mode in order:
                    started_cpu, started = time.process_time(), time.perf_counter()
                    clones[mode].apply_many(batch, signature)
                    applied_cpu = time.process_time() - started_cpu
                    clones[mode].push()
                    rounds[mode].append(
                        _Round(
                            applied_cpu,
                            time.process_time() - started_cpu,
                            time.perf_counter() - started,
                        )
                    )
            # Medians of the rounds: a burst of other work on the machine spoils a round, not
            # the figure.
            apply_cpu, total_cpu, rate = {}, {}, {}
            for mode, measured in rounds.items():
                apply_cpu[mode] = statistics.median(r.apply_cpu for r in measured) / args.commits
                total_cpu[mode] = statistics.median(r.total_cpu for r in measured) / args.commits
                rate[mode] = args.commits / statistics.median(r.wall for r in measured)
                result.add(
                    f"{size:,} files, {mode}: commits/s pushed (wall) / CPU per commit",
                    f"{rate[mode]:,.0f} / {total_cpu[mode] * 1e6:,.0f} us"
                    f" (commit alone {apply_cpu[mode] * 1e6:,.0f} us)",
                )
            overhead = total_cpu["signed"] / total_cpu["unsigned"] - 1
            result.add(
                f"{size:,} files: signing overhead ({args.key}), CPU per pushed commit",
                f"{overhead:+.1%} (wall {rate['unsigned'] / rate['signed'] - 1:+.1%},"
                f" commit alone {apply_cpu['signed'] / apply_cpu['unsigned'] - 1:+.1%})",
                f"<= {TARGET_OVERHEAD:.0%}",
                overhead <= TARGET_OVERHEAD,
            )
    result.note(
        "CPU time is this process's (time.process_time), medians of the rounds; rounds"
        " alternate between the clones, so both see the same machine load; the Git server"
        " (lighttpd + git http-backend) runs on the same machine"
    )
    return result.finish()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.signing", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--sizes", default="1000,10000", help="files in the tree, comma-separated")
    parser.add_argument(
        "--commits", type=int, default=200, help="commits per round and clone (default 200)"
    )
    parser.add_argument("--rounds", type=int, default=10, help="rounds per size (default 10)")
    parser.add_argument(
        "--key", choices=["ed25519", "rsa", "ecdsa"], default="ed25519", help="signing key type"
    )
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
