"""bench selector: what a rule's objectSelector saves on a 10,000-object namespace.

The ConfigMaps are created first through the API with concurrency (not timed); each carries a
``tier`` label of ``frontend``, ``backend`` or ``batch`` (about a third each). Then two fresh
daemons run one after the other, each with an empty state dir and an empty repository on the
test bed's smart-HTTP Git server: the first with a WatchRule for ``configmaps`` and no selector,
the second with the same rule and ``objectSelector: {matchLabels: {tier: batch}}``. For each,
the clock runs from process start until the reconcile commit is on the server; then the
journal (events and objects of the stream) and the pushed tree are counted.

Selectors are matched when a target reads the journal, never in the watch (see
``reverserd/config/rules.py`` for why), so both daemons journal every object; what the selector
saves is rendering, Git objects and the push. No target: this is a measurement.
"""

from __future__ import annotations

import argparse
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
)
from bench.common import (
    CONFIGMAPS_STREAM,
    Result,
    add_common_arguments,
    benchmark_main,
    command_line,
    fmt_mb,
    fmt_s,
    read_journal,
    say,
    workdir,
)

if TYPE_CHECKING:
    from testbed.controlplane import ControlPlane
    from testbed.gitservers import GitHttpServer

NAMESPACE = "bench-selector"
SELECTOR = {"matchLabels": {"tier": "batch"}}
# Time for whatever follows the push (status writes, cursor) to show in the peak RSS.
SETTLE_S = 2.0


def mirror_once(
    plane: ControlPlane,
    server: GitHttpServer,
    secret: str,
    work: Path,
    name: str,
    selector: dict[str, Any] | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Run one fresh daemon mirroring the namespace into repository ``name``; what it did."""
    from reverserd.journal import JOURNAL_FILE
    from testbed.gitservers import branch_tip, read_tree
    from testbed.harness import apply, delete_mirror_resources

    repo_path = server.create_bare_repo(name)
    manifests = mirror(NAMESPACE, server.url(name), secret, args.push_interval)
    if selector is not None:
        manifests[2]["spec"]["rules"][0]["objectSelector"] = selector
    apply(plane, *manifests)
    daemon = BenchDaemon(plane, work / f"state-{name}")
    say(f"starting reverserd ({name}); waiting for the reconcile commit on the server")
    pushed, peak = run_until(
        daemon, lambda: branch_tip(repo_path, "main") is not None, args.timeout, SETTLE_S
    )
    delete_mirror_resources(plane, NAMESPACE)
    db = daemon.state_dir / JOURNAL_FILE
    stream = CONFIGMAPS_STREAM.format(namespace=NAMESPACE)
    files = read_tree(repo_path, "main") if pushed is not None else {}
    return {
        "seconds": None if pushed is None else pushed - daemon.started_mono,
        "events": read_journal(
            db,
            "SELECT COUNT(*) FROM events WHERE stream = ? AND kind = 'CREATE'",
            (stream,),
        )[0][0],
        "objects": read_journal(db, "SELECT COUNT(*) FROM objects WHERE stream = ?", (stream,))[0][
            0
        ],
        "files": sum(1 for path in files if path.startswith("live-cluster/v1/configmaps/")),
        "peak_mb": peak,
    }


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> Result:
    from testbed.controlplane import running_control_plane
    from testbed.gitservers import GitHttpServer

    result = Result("selector", command_line("bench.selector", argv))
    with (
        workdir(args.workdir, args.keep, "selector") as work,
        running_control_plane(work / "controlplane") as plane,
        GitHttpServer(work / "git") as server,
    ):
        create_namespace(plane, NAMESPACE)
        load_s = load_configmaps(plane, NAMESPACE, args.objects)
        secret = git_secret(plane, NAMESPACE, server)
        without = mirror_once(plane, server, secret, work, "all", None, args)
        with_selector = mirror_once(plane, server, secret, work, "batch", SELECTOR, args)

    for label, found in (("no selector", without), ("objectSelector tier=batch", with_selector)):
        result.add(f"{label}: CREATE events journaled", f"{found['events']:,}")
        result.add(f"{label}: objects in the journal", f"{found['objects']:,}")
        result.add(f"{label}: files in the reconcile commit", f"{found['files']:,}")
        result.add(f"{label}: process start -> reconcile on the server", fmt_s(found["seconds"]))
        result.add(f"{label}: daemon peak RSS (VmHWM)", fmt_mb(found["peak_mb"]))
    result.add("creating the ConfigMaps (not timed)", f"{load_s:.1f} s")
    return result.finish()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.selector", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--objects", type=int, default=10_000, help="ConfigMaps in the namespace (default 10000)"
    )
    parser.add_argument(
        "--push-interval", default="1s", help="the GitProvider's push.interval (default 1s)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="give up waiting for a reconcile (s)"
    )
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
