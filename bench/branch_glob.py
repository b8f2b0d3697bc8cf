"""bench branch_glob: hostile ``allowedBranches`` patterns are matched in milliseconds.

A GitProvider's author chooses its patterns; one built to make a backtracking matcher take
exponential time (``a*a*...b`` against a long run of ``a``) must cost no more than an ordinary
one, so no tenant can slow the config plane for the others (SCENARIOS 67). Timed in process,
no test bed: one compile and match of the hostile pattern, and one ``resolve`` of a provider
carrying two such patterns with a target whose branch they refuse; the slowest of
:data:`REPEATS` runs of each counts. The unit tests prove the match is linear by counting its
steps; this measures what that costs.

Targets: a match <= 50 ms; a resolve <= 200 ms.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench.common import Result, benchmark_main, command_line

TARGET_MATCH_S = 0.05
TARGET_RESOLVE_S = 0.2
# Enough runs that one slow by a scheduler hiccup shows as the worst, not as the only figure.
REPEATS = 20
HOSTILE_PATTERN = "a*" * 100 + "b"
REFUSED_BRANCH = "a" * 250


def _worst(action: Callable[[], Any]) -> float:
    worst = 0.0
    for _ in range(REPEATS):
        started = time.perf_counter()
        action()
        worst = max(worst, time.perf_counter() - started)
    return worst


def _hostile_caches() -> dict[str, dict[tuple[str, str], Mapping[str, Any]]]:
    """The config plane's caches holding a provider with two hostile patterns and a target
    whose branch they refuse."""
    provider = {
        "kind": "GitProvider",
        "metadata": {"name": "repo", "namespace": "team-a", "generation": 1},
        "spec": {
            "url": "https://git.example.com/team-a/live.git",
            "allowedBranches": ["*a" * 120 + "b"] * 2,
        },
    }
    target = {
        "kind": "GitTarget",
        "metadata": {"name": "mirror", "namespace": "team-a", "generation": 1},
        "spec": {"providerRef": {"name": "repo"}, "branch": REFUSED_BRANCH, "path": "live"},
    }
    return {
        "gitproviders": {("team-a", "repo"): provider},
        "gittargets": {("team-a", "mirror"): target},
        "watchrules": {},
        "clusterwatchrules": {},
    }


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> Result:
    from reverserd.config.model import branch_glob
    from reverserd.config.plane import resolve
    from reverserd.config.status import StatusBoard

    result = Result("branch_glob", command_line("bench.branch_glob", argv))
    match = _worst(lambda: branch_glob(HOSTILE_PATTERN).matches(REFUSED_BRANCH))
    caches = _hostile_caches()
    resolving = _worst(lambda: resolve(caches, None, StatusBoard(), None))
    result.finish()
    result.add(
        "hostile pattern, compile and match (worst)",
        f"{match * 1000:.1f} ms",
        f"<= {TARGET_MATCH_S * 1000:.0f} ms",
        match <= TARGET_MATCH_S,
    )
    result.add(
        "provider with two hostile patterns, resolve (worst)",
        f"{resolving * 1000:.1f} ms",
        f"<= {TARGET_RESOLVE_S * 1000:.0f} ms",
        resolving <= TARGET_RESOLVE_S,
    )
    return result


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="python -m bench.branch_glob", description=__doc__.splitlines()[0]
    )


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
