"""bench seed: a fresh daemon seeds 10,000 ConfigMaps into its journal.

The ConfigMaps are created first (not timed). Then a WatchRule for ``configmaps`` is applied
whose GitTarget does not exist, so the daemon watches and journals but writes nothing to Git,
and ``reverserd run`` starts with an empty state dir. The clock runs from process start until
the stream ``v1/configmaps@<namespace>`` has ``seed_state = complete`` in ``journal.db``
(polled read-only every 20 ms); the daemon's own ``seeded ...`` log line is reported too. Peak
RSS is the daemon's VmHWM read just before it is stopped.

Targets: seed <= 5 s, peak RSS <= 150 MB.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bench.bed import BenchDaemon, create_namespace, load_configmaps, run_until
from bench.common import (
    CONFIGMAPS_STREAM,
    Result,
    add_common_arguments,
    benchmark_main,
    command_line,
    first_log,
    fmt_mb,
    fmt_s,
    message_starts,
    read_journal,
    say,
    seed_complete,
    workdir,
)

TARGET_SEED_S = 5.0
TARGET_RSS_MB = 150.0
# After the seed, the daemon idles this long before its peak RSS is read: the watch that
# follows the seed and the first status writes belong to the start-up too.
SETTLE_S = 2.0
NAMESPACE = "bench-seed"


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> Result:
    from reverserd.journal import JOURNAL_FILE
    from testbed.controlplane import running_control_plane
    from testbed.harness import apply
    from testbed.manifests import mirror_setup

    result = Result("seed", command_line("bench.seed", argv))
    stream = CONFIGMAPS_STREAM.format(namespace=NAMESPACE)
    with (
        workdir(args.workdir, args.keep, "seed") as work,
        running_control_plane(work / "controlplane") as plane,
    ):
        create_namespace(plane, NAMESPACE)
        load_s = load_configmaps(plane, NAMESPACE, args.objects)
        # Only the rule: its GitTarget does not exist, so no consumer and no Git.
        rule = mirror_setup(NAMESPACE, "http://127.0.0.1:9/unused.git", name="seed")[2]
        rule["spec"]["targetRef"]["name"] = "absent"
        apply(plane, rule)

        daemon = BenchDaemon(plane, work / "state", profile=args.profile)
        db = daemon.state_dir / JOURNAL_FILE
        say(f"starting reverserd; waiting for {stream} to be seeded")
        done, peak = run_until(daemon, lambda: seed_complete(db, stream), args.timeout, SETTLE_S)
        lines = daemon.log_lines()
        seed_s = None if done is None else done - daemon.started_mono
        objects = read_journal(
            db,
            "SELECT COUNT(*) FROM objects WHERE stream = ?",
            (stream,),
        )[0][0]
        markers = dict(
            read_journal(
                db,
                "SELECT kind, journaled_at FROM events WHERE stream = ?"
                " AND kind IN ('SEED_BEGIN', 'SEED_END')",
                (stream,),
            )
        )
        database_mb = db.stat().st_size / 2**20

    seeded = first_log(lines, message_starts(f"seeded {stream}"))
    started = first_log(lines, message_starts("reverserd "))
    watching = first_log(lines, message_starts(f"watching {stream}"))
    result.add(
        f"seed of {args.objects:,} ConfigMaps: process start -> seed_state complete",
        fmt_s(seed_s),
        f"<= {TARGET_SEED_S:.0f} s",
        seed_s is not None and seed_s <= TARGET_SEED_S,
    )
    result.add(
        "  same, by the daemon's 'seeded ...' log line",
        fmt_s(daemon.since_start(seeded[0] if seeded else None)),
    )
    result.add(
        "  process start -> 'reverserd ... started' log line",
        fmt_s(daemon.since_start(started[0] if started else None)),
    )
    result.add(
        "  process start -> 'watching ...' log line",
        fmt_s(daemon.since_start(watching[0] if watching else None)),
    )
    if "SEED_BEGIN" in markers and "SEED_END" in markers:
        result.add(
            "  LIST + journal (SEED_BEGIN -> SEED_END journaled_at)",
            fmt_s(markers["SEED_END"] - markers["SEED_BEGIN"]),
        )
    result.add(
        "daemon peak RSS (VmHWM)",
        fmt_mb(peak),
        f"<= {TARGET_RSS_MB:.0f} MB",
        peak is not None and peak <= TARGET_RSS_MB,
    )
    result.add(
        "objects journaled", f"{objects:,} of {args.objects:,}", "all", objects == args.objects
    )
    result.add("journal file size", f"{database_mb:.0f} MB")
    result.add("creating the ConfigMaps (not timed)", f"{load_s:.1f} s")
    if args.profile:
        result.note(f"cProfile of the daemon written to {args.profile}")
    return result.finish()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.seed", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--objects", type=int, default=10_000, help="ConfigMaps to seed (default 10000)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="give up waiting for the seed (s)"
    )
    add_common_arguments(parser, daemon_profile=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
