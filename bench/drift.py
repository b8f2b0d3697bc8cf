"""bench drift: the cost of one drift check of a 10,000-file folder, by what changed.

``BranchRepository`` and :class:`~reverserd.targets.drift.DriftState` in process, against the
test bed's smart-HTTP Git server (no API server, no journal): the steps a target's consumer
takes for a check (:meth:`TargetConsumer._compare`), on a folder of ``--files`` files whose
records the target holds. Timed, each the median of ``--rounds`` checks:

- **first check**: no clean tree known yet (after a start): fetch, then every recorded file read
  and hashed;
- **nothing changed**: fetch, the folder's tree ID and the records compared with those of the
  last clean check; no file read;
- **one file changed** (a person pushed an edit of one file before each check): fetch, the two
  trees compared by walking only the subtrees whose IDs differ, the one changed file read and
  hashed.

Rendering the live object of a drifted file (one per check here) is left out: it is the same
work as one event's commit. Memory: the peak of Python allocations during a check
(``tracemalloc``), and the process's peak RSS.

Targets: nothing changed <= 0.25 s; one file changed <= 0.5 s (a fetch over loopback included).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence

from bench.common import Result, add_common_arguments, benchmark_main, command_line, say, workdir

TARGET_UNCHANGED_S = 0.25
TARGET_ONE_CHANGED_S = 0.5
FOLDER = "live"


def _path(index: int) -> str:
    return f"{FOLDER}/v1/configmaps/bench-{index % 10}/cm-{index:06d}.yaml"


def _content(index: int, version: int) -> bytes:
    return (
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{index:06d}\n"
        f"  namespace: bench-{index % 10}\ndata:\n  version: '{version}'\n"
        + "".join(f"  key{k}: value {k} of {index}\n" for k in range(40))
    ).encode()


def _measure(check: Callable[[], int]) -> tuple[float, float, int]:
    """(seconds, peak MB of Python allocations, files read) of one check."""
    tracemalloc.start()
    started = time.perf_counter()
    files_read = check()
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak / 2**20, files_read


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> Result:
    import pygit2

    from reverserd.config.status import DriftReport
    from reverserd.git import BranchRepository, FileChange
    from reverserd.git.credentials import GitCredentials
    from reverserd.journal import ObjectKey
    from reverserd.targets.drift import DriftState, expected_files
    from reverserd.targets.planning import content_hash
    from testbed.gitservers import GitHttpServer, push_foreign_changes

    result = Result("drift", command_line("bench.drift", argv))
    signature = pygit2.Signature("bench", "bench@example.com")
    size = args.files
    with workdir(args.workdir, args.keep, "drift") as work, GitHttpServer(work / "git") as git:
        remote = git.create_bare_repo("drift")
        credentials = GitCredentials(username=git.username, password=git.password)
        repository = BranchRepository(work / "clone", git.url("drift"), "main", credentials)
        repository.open()
        say(f"{size:,} files: initial commit and push")
        contents = {_path(i): _content(i, 0) for i in range(size)}
        repository.apply(
            [FileChange(path, content) for path, content in contents.items()],
            "reconcile",
            signature,
            signature,
        )
        repository.push()
        records = {
            ObjectKey("", "configmaps", f"bench-{i % 10}", f"cm-{i:06d}"): (
                _path(i),
                content_hash(contents[_path(i)]),
            )
            for i in range(size)
        }
        state = DriftState("bench/mirror", DriftReport())

        def check() -> int:
            """One check as the consumer makes it; returns how many files it read."""
            assert repository.fetch_if_idle()
            tree = repository.folder_tree(FOLDER)
            expected = expected_files(records)
            if state.unchanged(tree, expected):
                return 0
            changed = None
            if state.clean_expected is not None:
                changed = set(repository.changed_files(state.clean_tree, tree, FOLDER))
            candidates = state.candidates(changed, expected)
            for path in candidates:
                current = repository.read(path)
                assert current is not None
                content_hash(current)
            # The edits below are a person's: reverserd's records stay, so the folder counts as
            # clean for the next round (a repair would restore it).
            state.found_clean(tree, expected)
            return len(candidates)

        first = _measure(check)
        unchanged = [_measure(check) for _ in range(args.rounds)]
        one_changed = []
        for round_ in range(args.rounds):
            index = (round_ * 7919) % size
            push_foreign_changes(
                remote, "main", {_path(index): _content(index, round_ + 1)}, "edit"
            )
            one_changed.append(_measure(check))

    def report(label: str, samples: list[tuple[float, float, int]], target: float | None) -> None:
        seconds = statistics.median(sample[0] for sample in samples)
        peak = max(sample[1] for sample in samples)
        read = max(sample[2] for sample in samples)
        result.add(
            f"{size:,} files, {label}: median check / Python peak / files read",
            f"{seconds:.3f} s / {peak:.1f} MB / {read:,}",
            f"<= {target} s" if target is not None else "",
            seconds <= target if target is not None else None,
        )

    report("first check (no clean tree yet)", [first], None)
    report("nothing changed", unchanged, TARGET_UNCHANGED_S)
    report("one file changed", one_changed, TARGET_ONE_CHANGED_S)
    result.add(
        "peak RSS of the benchmark process",
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB",
    )
    result.note(
        "the Git server (lighttpd + git http-backend) runs on the same machine; every check"
        " includes its fetch round trip"
    )
    return result.finish()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.drift", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--files", type=int, default=10_000, help="files in the folder")
    parser.add_argument("--rounds", type=int, default=10, help="checks per case (default 10)")
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
