"""bench shards: N sharded replicas, per-replica memory, and the takeover of a killed replica.

``--namespaces`` namespaces with ``--objects`` ConfigMaps each and ``--targets`` GitTargets,
each on its own branch of one repository on the test bed's smart-HTTP Git server (a WatchRule
of its own namespace's ConfigMaps each, the targets spread over the namespaces round robin,
each namespace with its own GitProvider), are created before ``--replicas`` ``reverserd run
--shards`` processes start, each with its own state dir and the production lease duration
unless ``--lease-duration`` says otherwise. With one namespace every target selects the same
objects, so every replica watches them all; with as many namespaces as targets the targets
select disjoint objects, and each replica watches only its branches' share. Once
the replicas hold balanced shares and every branch holds the objects, each replica's peak RSS
(VmHWM) is read. Then the replica holding the most branches is SIGKILLed and one ConfigMap is
created at once; the clock runs until the survivors hold every bucket, and until that change is
on every branch the dead replica held.

Targets: takeover (every bucket held again) within the lease duration plus two retry periods
plus 2 s (21 s with the default 15 s Lease).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Sequence

from bench.bed import BenchDaemon, create_namespace, git_secret, load_configmaps
from bench.common import (
    Result,
    add_common_arguments,
    benchmark_main,
    command_line,
    fmt_mb,
    fmt_s,
    peak_rss_mb,
    say,
    workdir,
)

NAMESPACE = "bench-shards"
REPO = "shards"
# Beyond the lease duration: a survivor may first see the dead replica's last renewal one retry
# period late (it lists every retry period), takes the bucket in the round after expiry (another
# retry period), and the round's writes and this benchmark's polling take up to 2 s more.
RETRY_PERIODS_IN_BOUND = 2
ROUND_WORK_S = 2.0


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> Result:
    from reverserd.git.urls import branch_key
    from reverserd.kube.lease import LeaseTiming
    from reverserd.kube.shards import bucket_of
    from testbed.controlplane import LEASE_NAMESPACE, running_control_plane
    from testbed.gitservers import GitHttpServer, read_tree
    from testbed.harness import apply, create_many, wait_until
    from testbed.manifests import configmap, git_provider, git_target, watch_rule

    result = Result("shards", command_line("bench.shards", argv))
    with (
        workdir(args.workdir, args.keep, "shards") as work,
        running_control_plane(work / "controlplane") as plane,
        GitHttpServer(work / "git") as server,
    ):
        server.create_bare_repo(REPO)
        url = server.url(REPO)
        namespaces = [
            NAMESPACE if args.namespaces == 1 else f"{NAMESPACE}-{index:03d}"
            for index in range(args.namespaces)
        ]
        for namespace in namespaces:
            create_namespace(plane, namespace)
            secret = git_secret(plane, namespace, server)
            load_configmaps(plane, namespace, args.objects)
            apply(plane, git_provider(namespace, "repo", url, secret=secret, branches=["b*"]))
        branches = [f"b{index:03d}" for index in range(args.targets)]
        home = {b: namespaces[index % len(namespaces)] for index, b in enumerate(branches)}
        create_many(
            plane,
            [git_target(home[b], b, "repo", "live", b) for b in branches],
            "gittargets",
        )
        rules = [watch_rule(home[b], b, b, [{"resources": ["configmaps"]}]) for b in branches]
        create_many(plane, rules, "watchrules")
        sharding = [
            "--shards", str(args.shards),
            "--shard-lease-duration", str(args.lease_duration),
            "--leader-election-namespace", LEASE_NAMESPACE,
            "--leader-election-id", "bench-shards",
        ]  # fmt: skip
        daemons = {
            f"replica-{index}": BenchDaemon(
                plane,
                work / f"replica-{index}",
                extra_args=[*sharding, "--replica-id", f"replica-{index}"],
            )
            for index in range(args.replicas)
        }

        def held(daemon: BenchDaemon) -> set[int]:
            return set(daemon.status()["shards"]["held"])

        def balanced(live: list[BenchDaemon]) -> bool:
            shares = [held(d) for d in live]
            every = sorted(index for share in shares for index in share)
            sizes = [len(share) for share in shares]
            return every == list(range(args.shards)) and max(sizes) - min(sizes) <= 1

        def files(branch: str) -> set[str]:
            try:
                return set(read_tree(server.repo_path(REPO), branch))
            except LookupError:
                return set()

        def folder(branch: str) -> str:
            return f"live/v1/configmaps/{home[branch]}"

        try:
            started = time.monotonic()
            for daemon in daemons.values():
                daemon.start()
            wait_until(lambda: balanced(list(daemons.values())), args.timeout)
            expected = args.objects
            wait_until(
                lambda: all(
                    sum(1 for f in files(b) if f.startswith(folder(b))) >= expected
                    for b in branches
                ),
                args.timeout,
            )
            synced_s = time.monotonic() - started
            say(f"{args.targets} branches synced by {args.replicas} replicas in {synced_s:.1f} s")
            rss = {name: peak_rss_mb(d.pid) for name, d in daemons.items()}

            def bucket(branch: str) -> int:
                return bucket_of(branch_key(url, branch), args.shards)

            counts = Counter(
                name for name, d in daemons.items() for b in branches if bucket(b) in held(d)
            )
            victim = counts.most_common(1)[0][0]
            lost = [b for b in branches if bucket(b) in held(daemons[victim])]
            daemons[victim].kill()
            killed = time.monotonic()
            apply(plane, *(configmap(namespace, "after-kill") for namespace in namespaces))
            survivors = [d for name, d in daemons.items() if name != victim]
            wait_until(lambda: balanced(survivors), args.timeout)
            takeover_s = time.monotonic() - killed
            wait_until(
                lambda: all(f"{folder(b)}/after-kill.yaml" in files(b) for b in lost),
                args.timeout,
            )
            written_s = time.monotonic() - killed
        finally:
            for daemon in daemons.values():
                daemon.ensure_stopped()

    result.add(
        f"{args.replicas} replicas, {args.targets} branches, {args.namespaces} namespaces of"
        f" {args.objects} objects: synced",
        fmt_s(synced_s),
    )
    for name, peak in sorted(rss.items()):
        result.add(f"  {name} peak RSS (VmHWM) before the kill", fmt_mb(peak))
    retry_period = LeaseTiming.scaled(args.lease_duration).retry_period_s
    bound = args.lease_duration + RETRY_PERIODS_IN_BOUND * retry_period + ROUND_WORK_S
    result.add(
        f"kill {victim} ({len(lost)} branches): every bucket held again",
        fmt_s(takeover_s),
        f"<= {bound:.0f} s",
        takeover_s <= bound,
    )
    result.add("  a change made at the kill on every branch it held", fmt_s(written_s))
    return result.finish()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.shards", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--replicas", type=int, default=3, help="reverserd processes (3)")
    parser.add_argument("--targets", type=int, default=30, help="GitTargets, one a branch (30)")
    parser.add_argument("--objects", type=int, default=200, help="ConfigMaps a namespace (200)")
    parser.add_argument(
        "--namespaces", type=int, default=1, help="namespaces the targets spread over (1)"
    )
    parser.add_argument("--shards", type=int, default=16, help="bucket Leases (16)")
    parser.add_argument("--lease-duration", type=int, default=15, help="seconds (15)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after (300 s)")
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
