"""bench cold_start: a fresh daemon mirrors 10,000 existing ConfigMaps into an empty repository.

The ConfigMaps exist before the daemon starts (created first, not timed), together with a
GitProvider, GitTarget and WatchRule pointing at an empty bare repository on the test bed's
smart-HTTP Git server. With ``--namespaces N`` the ConfigMaps are spread evenly over N
namespaces and a ClusterWatchRule (scope ``Namespaced``) selects them; it also selects the few
ConfigMaps the API server keeps in every namespace, which are counted apart. The clock runs
from process start until the branch exists on the server (polled every 20 ms), which is when
the one reconcile commit holding every file is pushed. Peak RSS is the daemon's VmHWM read just
before it is stopped. The daemon's log gives the breakdown.

Targets: 10,000 ConfigMaps in one namespace <= 8 s with peak RSS <= 200 MB; 100,000 over 100
namespaces <= 90 s with peak RSS <= 400 MB (other sizes are held to the nearer of the two).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.bed import (
    BenchDaemon,
    create_namespace,
    git_secret,
    load_configmaps,
    mirror,
    run_until,
    stopped_afterwards,
)
from bench.common import (
    FirstTrue,
    Result,
    add_common_arguments,
    benchmark_main,
    command_line,
    first_log,
    fmt_mb,
    fmt_s,
    log_time,
    message_starts,
    peak_rss_mb,
    say,
    workdir,
)

TARGET_S = 8.0
TARGET_RSS_MB = 200.0
# 100,000 objects over 100 namespaces: the size one replica is meant to carry.
LARGE_OBJECTS = 100_000
LARGE_TARGET_S = 90.0
LARGE_TARGET_RSS_MB = 400.0
# Time for whatever follows the push (status writes, cursor) to show in the peak RSS.
SETTLE_S = 2.0
if TYPE_CHECKING:
    from testbed.controlplane import ControlPlane

NAMESPACE = "bench-cold"
REPO = "cold"


def bench_namespaces(count: int) -> list[str]:
    """The namespaces holding the ConfigMaps: the benchmark's own, or ``count`` numbered ones."""
    if count <= 1:
        return [NAMESPACE]
    return [f"{NAMESPACE}-{index:03d}" for index in range(count)]


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> Result:
    from testbed.controlplane import running_control_plane
    from testbed.gitservers import GitHttpServer, branch_tip, log, read_tree
    from testbed.harness import apply
    from testbed.manifests import cluster_watch_rule

    result = Result("cold_start", command_line("bench.cold_start", argv))
    with (
        workdir(args.workdir, args.keep, "cold") as work,
        running_control_plane(work / "controlplane") as plane,
        GitHttpServer(work / "git") as server,
    ):
        create_namespace(plane, NAMESPACE)
        load_s = 0.0
        spread = bench_namespaces(args.namespaces)
        for index, namespace in enumerate(spread):
            if namespace != NAMESPACE:
                create_namespace(plane, namespace)
            share = args.objects // len(spread) + (index < args.objects % len(spread))
            load_s += load_configmaps(plane, namespace, share)
        repo_path = server.create_bare_repo(REPO)
        secret = git_secret(plane, NAMESPACE, server)
        manifests = mirror(NAMESPACE, server.url(REPO), secret, args.push_interval)
        if args.namespaces > 1:
            rules = [{"resources": ["configmaps"], "scope": "Namespaced"}]
            manifests[2] = cluster_watch_rule(NAMESPACE, NAMESPACE, "mirror", rules)
        apply(plane, *manifests)

        daemon = BenchDaemon(plane, work / "state", profile=args.profile)
        say("starting reverserd; waiting for the reconcile commit on the server")
        pushed, peak = run_until(
            daemon, lambda: branch_tip(repo_path, "main") is not None, args.timeout, SETTLE_S
        )
        lines = daemon.log_lines()
        history = log(repo_path, "main") if pushed is not None else []
        files = read_tree(repo_path, "main") if pushed is not None else {}
        adoption = adopt(plane, work, args.timeout) if args.adopt and pushed is not None else None
        history_after = log(repo_path, "main") if adoption is not None else []

    total = None if pushed is None else pushed - daemon.started_mono
    large = args.objects >= LARGE_OBJECTS
    target_s = LARGE_TARGET_S if large else TARGET_S
    target_rss_mb = LARGE_TARGET_RSS_MB if large else TARGET_RSS_MB
    result.add(
        f"cold start, {args.objects:,} ConfigMaps in {args.namespaces} namespace(s):"
        " process start -> branch on server",
        fmt_s(total),
        f"<= {target_s:.0f} s",
        total is not None and total <= target_s,
    )
    steps = (
        ("'reverserd ... started'", message_starts("reverserd ")),
        ("repository opened (clone + fetch)", message_starts("opened ")),
        ("'seeded ...' (LIST journaled)", message_starts("seeded ")),
        ("'reconcile planned' (snapshot read, rendered)", message_starts("reconcile planned")),
        (
            "reconcile commit created (Git thread)",
            lambda line: (
                line.get("message") == "Created commit"
                and str(line.get("subject", "")).startswith("reconcile")
            ),
        ),
        ("'All events pushed to remote'", message_starts("All events pushed")),
    )
    for label, predicate in steps:
        found = first_log(lines, predicate)
        result.add(
            f"  process start -> {label}", fmt_s(daemon.since_start(found[0] if found else None))
        )
    result.add(
        "daemon peak RSS (VmHWM)",
        fmt_mb(peak),
        f"<= {target_rss_mb:.0f} MB",
        peak is not None and peak <= target_rss_mb,
    )
    ours = {f"/{namespace}/" for namespace in spread}
    yaml_files = sum(
        1 for path in files if path.endswith(".yaml") and any(part in path for part in ours)
    )
    result.add(
        "files on the branch",
        f"{yaml_files:,} of the benchmark's manifests + {len(files) - yaml_files} other",
        f"{args.objects:,} manifests",
        yaml_files == args.objects,
    )
    result.add("commits on the branch", ", ".join(entry.subject for entry in history) or "none")
    if adoption is not None:
        adopter, planned_line, adopter_peak = adoption
        adopted = planned_line.get("files_adopted") if planned_line else None
        first_planned = first_log(lines, message_starts("reconcile planned"))
        created = first_planned[1].get("files_created") if first_planned else None
        result.add(
            "adoption, empty state dir: process start -> 'reconcile planned'",
            fmt_s(adopter.since_start(log_time(planned_line) if planned_line else None)),
        )
        result.add(
            "  files adopted as they are / commits added",
            f"{adopted:,} / {len(history_after) - len(history)}"
            if isinstance(adopted, int)
            else "not planned",
            f"{created} (the files the first daemon wrote) / 0",
            adopted == created and len(history_after) == len(history),
        )
        result.add("  adopting daemon's peak RSS (VmHWM)", fmt_mb(adopter_peak))
    result.add("push.interval of the GitProvider", args.push_interval)
    result.add("creating the ConfigMaps (not timed)", f"{load_s:.1f} s")
    result.note(
        "the reconcile commit is pushed at once, without waiting for the push interval: the"
        " last two breakdown rows differ by the push itself"
    )
    if args.profile:
        result.note(f"cProfile of the daemon written to {args.profile}")
    return result.finish()


def adopt(
    plane: ControlPlane, work: Path, timeout: float
) -> tuple[BenchDaemon, dict[str, Any] | None, float | None]:
    """A second daemon, with an empty state dir, syncs the folder the first one pushed: every
    file already says what it would write, so it adopts them all and commits nothing."""
    adopter = BenchDaemon(plane, work / "state-adopt")
    planned = FirstTrue(
        lambda: first_log(adopter.log_lines(), message_starts("reconcile planned")) is not None
    )
    planned.start()
    say("starting a daemon with an empty state dir; waiting for it to adopt the folder")
    with stopped_afterwards(adopter):
        try:
            adopter.start()
            if planned.wait(timeout, adopter.alive) is not None:
                time.sleep(SETTLE_S)
            peak = peak_rss_mb(adopter.pid)
        finally:
            planned.stop()
    found = first_log(adopter.log_lines(), message_starts("reconcile planned"))
    return adopter, found[1] if found else None, peak


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cold_start", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--objects", type=int, default=10_000, help="ConfigMaps to mirror (default 10000)"
    )
    parser.add_argument(
        "--push-interval",
        default="5s",
        help="GitProvider spec.push.interval (default 5s, the GitProvider's own default, which"
        " the targets are stated for; the test harness uses 1s)",
    )
    parser.add_argument(
        "--namespaces",
        type=int,
        default=1,
        help="spread the ConfigMaps over this many namespaces (default 1; more than one uses"
        " a ClusterWatchRule)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after (s)")
    parser.add_argument(
        "--adopt",
        action="store_true",
        help="then start a second daemon with an empty state dir on the same folder: it must"
        " adopt every file and commit nothing (its time and peak RSS are reported)",
    )
    add_common_arguments(parser, daemon_profile=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
