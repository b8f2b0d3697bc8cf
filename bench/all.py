"""Run every benchmark once, in order, with its defaults, printing each table as it finishes.

``python -m bench.all`` took 3 minutes on two cores (each benchmark starts its own
control plane). ``--only`` picks a subset. Exit status: 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

from bench import (
    branch_glob,
    cold_start,
    drift,
    forwarding,
    git_write,
    journal_append,
    loop_lag,
    seed,
    selector,
    shards,
    signing,
    steady,
    targets,
)
from bench.common import REPO_ROOT, Result, say, use_this_checkout

BENCHMARKS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[..., Result]]] = {
    "journal_append": (journal_append.build_parser, journal_append.run),
    "git_write": (git_write.build_parser, git_write.run),
    "signing": (signing.build_parser, signing.run),
    "seed": (seed.build_parser, seed.run),
    "cold_start": (cold_start.build_parser, cold_start.run),
    "steady": (steady.build_parser, steady.run),
    "loop_lag": (loop_lag.build_parser, loop_lag.run),
    "branch_glob": (branch_glob.build_parser, branch_glob.run),
    "targets": (targets.build_parser, targets.run),
    "shards": (shards.build_parser, shards.run),
    "forwarding": (forwarding.build_parser, forwarding.run),
    "selector": (selector.build_parser, selector.run),
    "drift": (drift.build_parser, drift.run),
}


def main(argv: Sequence[str] | None = None) -> int:
    use_this_checkout()
    parser = argparse.ArgumentParser(
        prog="python -m bench.all", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of {', '.join(BENCHMARKS)}",
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    results: list[Result] = []
    started = time.monotonic()
    for name in chosen:
        build_parser, run = BENCHMARKS[name]
        say(f"--- bench {name} ---")
        result = run(build_parser().parse_args([]), [])
        result.command = f"PYTHONPATH={REPO_ROOT} python -m bench.{name}"
        print(result.render() + "\n", flush=True)
        results.append(result)
    missed = [r.name for r in results if r.missed]
    print(
        f"== {len(results)} benchmarks in {time.monotonic() - started:.0f} s; "
        + ("all targets met" if not missed else f"targets missed in: {', '.join(missed)}")
    )
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
