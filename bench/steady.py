"""bench steady: a steady stream of changes, and how long each takes to reach the Git server.

A running daemon mirrors a namespace of ConfigMaps to a repository on the test bed's smart-HTTP
Git server, with ``push.interval: 5s``. Once the initial reconcile commit is on the server, the
benchmark patches existing ConfigMaps at a fixed pace (default 200 per second for 60 s, a
bounded loop over loopback only), each patch giving the object a new value and a new
resourceVersion. For every change it records when the API server answered the write, and a
poller reads the server's branch every 150 ms and matches each new commit to its change by the
subject (``[UPDATE] v1/configmaps/<namespace>/<name>``) and the body's ``resourceVersion: N``.
Latency per change = first poll that saw its commit on the server - time of the API write.

Targets: keeps up (every change is on the server within the drain bound after the load ends),
p99 latency <= push interval + 2 s, peak RSS of the process group (the daemon and the processes
it starts, such as ``git repack``, summed every 50 ms) <= 92 MB at 1,000 objects and <= 150 MB
beyond, daemon CPU <= 2 ms per commit.
CPU seconds are read from ``/proc`` per process (the daemon, the Git server with the ``git``
processes it ran, the API server, etcd, the load generator), so they hold on a shared machine
where wall-clock rates do not.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.bed import (
    BenchDaemon,
    create_namespace,
    git_secret,
    load_configmaps,
    mirror,
    stopped_afterwards,
)
from bench.common import (
    FirstTrue,
    GroupPeak,
    Result,
    add_common_arguments,
    benchmark_main,
    children_peak_rss_mb,
    command_line,
    configmap_names,
    cpu_seconds,
    cpu_seconds_with_children,
    descendant_pids,
    fmt_mb,
    fmt_s,
    log_time,
    peak_rss_mb,
    percentile,
    say,
    workdir,
)
from testbed.controlplane import ControlPlane

# Peak RSS of the process group (the daemon and what it starts): the newest upstream's at 1,000
# objects and 200 changes/s, measured the same way; at 10,000 objects and 500 changes/s, 150 MB.
TARGET_RSS_MB = 92.0
LARGE_TARGET_RSS_MB = 150.0
# One core carries 500 commits/s at this cost (the live target's rate on a 10,000-file folder).
TARGET_CPU_PER_COMMIT_MS = 2.0
# p99 latency may exceed the push interval by this much.
LATENCY_SLACK_S = 2.0
NAMESPACE = "bench-steady"
REPO = "steady"
# The server's branch is read this often; it bounds the resolution of every latency.
GIT_POLL_S = 0.15
# Writes in flight at most: enough that a slow API server answer does not delay the pace.
MAX_IN_FLIGHT = 256
# After the drain bound, keep looking this much longer so a miss still reports how late it was.
EXTRA_WAIT_S = 30.0
_RESOURCE_VERSION = re.compile(r"^resourceVersion: (\S+)$", re.MULTILINE)


@dataclass
class Write:
    name: str
    sent: float
    answered: float = 0.0
    resource_version: str = ""
    error: str = ""


class BranchWatcher(threading.Thread):
    """Reads the server's branch every GIT_POLL_S; first-seen time of each (name, rv) commit."""

    def __init__(self, repo_path: Path) -> None:
        super().__init__(daemon=True)
        self.repo_path = repo_path
        self.seen: dict[tuple[str, str], float] = {}
        self.pushes: list[tuple[float, int]] = []
        self.other_commits = 0
        self._halt = threading.Event()
        self._tip: Any = None
        self._lock = threading.Lock()

    def start_from_current_tip(self) -> None:
        import pygit2

        ref = pygit2.Repository(str(self.repo_path)).references.get("refs/heads/main")
        self._tip = None if ref is None else ref.target
        self.start()

    def run(self) -> None:
        while not self._halt.wait(GIT_POLL_S):
            self.poll()

    def poll(self) -> None:
        import pygit2
        from pygit2.enums import SortMode

        repo = pygit2.Repository(str(self.repo_path))
        ref = repo.references.get("refs/heads/main")
        if ref is None or ref.target == self._tip:
            return
        now = time.monotonic()
        walker = repo.walk(ref.target, SortMode.TOPOLOGICAL)
        if self._tip is not None:
            walker.hide(self._tip)
        count = 0
        with self._lock:
            for commit in walker:
                count += 1
                subject, _, body = commit.message.partition("\n")
                found = _RESOURCE_VERSION.search(body)
                if subject.startswith("[UPDATE] ") and found:
                    name = subject.rpartition("/")[2]
                    self.seen.setdefault((name, found.group(1)), now)
                else:
                    self.other_commits += 1
            self.pushes.append((now, count))
        self._tip = ref.target

    def seen_count(self, keys: set[tuple[str, str]]) -> int:
        with self._lock:
            return sum(1 for key in keys if key in self.seen)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def _ssl_context(plane: ControlPlane) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(plane.pki / "ca.crt"))
    context.load_cert_chain(str(plane.pki / "admin.crt"), str(plane.pki / "admin.key"))
    return context


async def _paced_patches(
    plane: ControlPlane, names: Sequence[str], rate: float, duration: float
) -> list[Write]:
    """Patch ``names`` round-robin, write ``i`` sent at start + i/rate; returns every write."""
    total = int(rate * duration)
    writes: list[Write] = []
    semaphore = asyncio.Semaphore(MAX_IN_FLIGHT)
    connector = aiohttp.TCPConnector(ssl=_ssl_context(plane), limit=MAX_IN_FLIGHT)
    base = f"{plane.server}/api/v1/namespaces/{NAMESPACE}/configmaps"
    headers = {"Content-Type": "application/merge-patch+json"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def patch(index: int, write: Write) -> None:
            try:
                async with session.patch(
                    f"{base}/{write.name}",
                    json={"data": {"bench-change": str(index)}},
                    headers=headers,
                ) as response:
                    payload = await response.json(content_type=None)
                    write.answered = time.monotonic()
                    if response.status >= 300:
                        write.error = f"{response.status}: {str(payload)[:200]}"
                    else:
                        write.resource_version = str(payload["metadata"]["resourceVersion"])
            except (aiohttp.ClientError, TimeoutError) as error:
                write.error = repr(error)
            finally:
                semaphore.release()

        tasks: list[asyncio.Task[None]] = []
        start = time.monotonic()
        for index in range(total):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await semaphore.acquire()
            write = Write(names[index % len(names)], time.monotonic())
            writes.append(write)
            tasks.append(asyncio.create_task(patch(index, write)))
        await asyncio.gather(*tasks)
    return writes


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> Result:
    from reverserd.config.model import parse_duration
    from testbed.controlplane import running_control_plane
    from testbed.gitservers import GitHttpServer, branch_tip
    from testbed.harness import apply

    interval_s = parse_duration(args.push_interval)
    drain_bound = args.drain_bound if args.drain_bound is not None else 2 * interval_s
    result = Result("steady", command_line("bench.steady", argv))
    names = configmap_names(args.objects)
    with (
        workdir(args.workdir, args.keep, "steady") as work,
        running_control_plane(work / "controlplane") as plane,
        GitHttpServer(work / "git") as server,
    ):
        create_namespace(plane, NAMESPACE)
        load_configmaps(plane, NAMESPACE, args.objects)
        repo_path = server.create_bare_repo(REPO)
        secret = git_secret(plane, NAMESPACE, server)
        apply(
            plane,
            *mirror(NAMESPACE, server.url(REPO), secret, args.push_interval, args.max_commits),
        )
        daemon = BenchDaemon(plane, work / "state", profile=args.profile)
        if args.attribution:
            daemon.extra_args = _attribution_on(plane)
        branch = BranchWatcher(repo_path)
        with stopped_afterwards(daemon):
            daemon.start()
            group = GroupPeak(daemon.pid)
            group.start()
            ready = FirstTrue(lambda: branch_tip(repo_path, "main") is not None)
            ready.start()
            try:
                if ready.wait(120, daemon.alive) is None:
                    raise RuntimeError(f"no reconcile commit on the server: {daemon.log_tail()}")
            finally:
                ready.stop()
            say(
                f"reconcile pushed {time.monotonic() - daemon.started_mono:.1f} s after start;"
                f" patching {args.rate:g}/s for {args.duration:g} s"
            )
            branch.start_from_current_tip()
            try:
                pids = {
                    "reverserd": [daemon.pid],
                    "kube-apiserver": descendant_pids("kube-apiserver"),
                    "etcd": descendant_pids("etcd"),
                }
                cpu_before = {k: sum(cpu_seconds(p) or 0 for p in v) for k, v in pids.items()}
                cpu_before["benchmark"] = time.process_time()
                git_server = descendant_pids("lighttpd")
                server_cpu_before = sum(cpu_seconds_with_children(p) or 0 for p in git_server)
                daemon_cpu_before = cpu_seconds(daemon.pid) or 0.0
                load_started, load_started_wall = time.monotonic(), time.time()
                writes = asyncio.run(_paced_patches(plane, names, args.rate, args.duration))
                load_ended, load_ended_wall = time.monotonic(), time.time()
                cpu_after = {k: sum(cpu_seconds(p) or 0 for p in v) for k, v in pids.items()}
                cpu_after["benchmark"] = time.process_time()
                keys = {(w.name, w.resource_version) for w in writes if w.resource_version}
                last_write = max((w.answered for w in writes), default=load_ended)
                say(
                    f"load done; waiting up to {drain_bound + EXTRA_WAIT_S:.0f} s for the last push"
                )
                deadline = last_write + drain_bound + EXTRA_WAIT_S
                while branch.seen_count(keys) < len(keys) and time.monotonic() < deadline:
                    if not daemon.alive():
                        break
                    time.sleep(0.2)
                branch.poll()
                daemon_cpu = (cpu_seconds(daemon.pid) or 0.0) - daemon_cpu_before
                server_cpu = (
                    sum(cpu_seconds_with_children(p) or 0 for p in git_server) - server_cpu_before
                )
                peak = peak_rss_mb(daemon.pid)
                group.stop()
                webhook_peak = children_peak_rss_mb(daemon.pid)
                outcomes = {
                    outcome: daemon.metric("reverserd_attributions_total", outcome=outcome)
                    for outcome in ("resolved", "unresolved", "ambiguous")
                }
            finally:
                branch.stop()
                group.stop()
        lines = daemon.log_lines()

    ok = [w for w in writes if w.resource_version]
    failed = [w for w in writes if not w.resource_version]
    seen = branch.seen
    missing = sum(1 for w in ok if (w.name, w.resource_version) not in seen)
    visible = [seen[key] for key in keys if key in seen]
    drain = (max(visible) - last_write) if visible else None
    kept_up = missing == 0 and not failed and drain is not None and drain <= drain_bound
    load_s = load_ended - load_started
    result.add(
        "load generator: changes written (API PATCH)",
        f"{len(ok):,} in {load_s:.1f} s = {len(ok) / load_s:.0f}/s"
        + (f"; {len(failed)} failed" if failed else ""),
        f"{args.rate:g}/s for {args.duration:g} s",
        not failed and len(ok) / load_s >= args.rate * 0.95,
    )
    api = [w.answered - w.sent for w in ok]
    if api:
        result.add(
            "  API write latency p50 / p99",
            f"{percentile(api, 0.5) * 1000:.0f} ms / {percentile(api, 0.99) * 1000:.0f} ms",
        )
    in_bound = sum(1 for at in visible if at <= last_write + drain_bound)
    waited = drain_bound + EXTRA_WAIT_S
    result.add(
        "keeps up: changes on the server within the drain bound",
        f"{in_bound:,} of {len(ok):,}; "
        + (
            f"the last one {fmt_s(drain)} after the last write"
            if missing == 0
            else f"{missing:,} still missing {waited:g} s after the last write"
        ),
        f"all within {drain_bound:g} s",
        kept_up,
    )
    target_p99 = interval_s + LATENCY_SLACK_S

    def latency(write: Write) -> float:
        """Seconds until the change was on the server; infinite if it never showed up."""
        at = seen.get((write.name, write.resource_version))
        return math.inf if at is None else at - write.answered

    def shown(value: float) -> str:
        return f"> {waited:g} s (never seen)" if math.isinf(value) else fmt_s(value)

    every = [latency(w) for w in ok]
    if every:
        p99 = percentile(every, 0.99)
        result.add("change -> on server latency p50", shown(percentile(every, 0.5)))
        result.add(
            "change -> on server latency p99", shown(p99), f"<= {target_p99:g} s", p99 <= target_p99
        )
        result.add("change -> on server latency max", shown(max(every)))
        window = min(10.0, args.duration / 3)
        for label, low, high in (
            (f"first {window:g} s", load_started, load_started + window),
            (f"last {window:g} s", load_ended - window, load_ended),
        ):
            part = [latency(w) for w in ok if low <= w.answered <= high]
            if part:
                result.add(
                    f"  p50 / p99 of changes written in the {label}",
                    f"{shown(percentile(part, 0.5))} / {shown(percentile(part, 0.99))}",
                )
    else:
        result.add("change -> on server latency p99", "n/a", f"<= {target_p99:g} s", False)
    pushes = [count for at, count in branch.pushes if at >= load_started]
    if pushes:
        result.add(
            "pushes seen during load + drain, commits per push",
            f"{len(pushes)}, avg {sum(pushes) / len(pushes):.0f} (max {max(pushes)})",
        )
    target_rss_mb = TARGET_RSS_MB if args.objects <= 1_000 else LARGE_TARGET_RSS_MB
    result.add(
        "process group peak RSS (the daemon and what it starts, summed every 50 ms)",
        fmt_mb(group.peak_mb),
        f"<= {target_rss_mb:.0f} MB",
        group.peak_mb <= target_rss_mb,
    )
    result.add("  daemon peak RSS (VmHWM)", fmt_mb(peak))
    child = group.largest_child()
    result.add(
        "  largest process it started: peak RSS (VmHWM)",
        "none seen" if child is None else f"{fmt_mb(child[1])} ({child[0]})",
    )
    if args.attribution:
        result.add("  webhook process peak RSS (VmHWM), not in the daemon's", fmt_mb(webhook_peak))
    result.add(
        "CPU during the load: " + " / ".join(cpu_after),
        " / ".join(f"{(cpu_after[k] - cpu_before[k]) / load_s * 100:.0f}%" for k in cpu_after),
        "(% of one core)",
    )
    created = [
        at
        for line in lines
        if line.get("message") == "Created commit"
        and (at := log_time(line)) is not None
        and load_started_wall <= at <= load_ended_wall
    ]
    result.add(
        "daemon: commits created during the load",
        f"{len(created):,} = {len(created) / load_s:.0f}/s",
        f"{args.rate:g}/s to keep up",
    )
    commits_on_server = sum(pushes)
    if commits_on_server:
        per_commit_ms = daemon_cpu / commits_on_server * 1000
        result.add(
            "daemon CPU per commit, load start to drained (CPU s per 1,000 commits)",
            f"{per_commit_ms:.2f} ms ({daemon_cpu:.1f} s for {commits_on_server:,} commits)",
            f"<= {TARGET_CPU_PER_COMMIT_MS:g} ms",
            per_commit_ms <= TARGET_CPU_PER_COMMIT_MS,
        )
        result.add(
            "Git server CPU per commit (lighttpd and the git processes it ran)",
            f"{server_cpu / commits_on_server * 1000:.2f} ms",
        )
    if args.attribution:
        result.add(
            "daemon: change commits resolved / unresolved / ambiguous",
            " / ".join(f"{count:,.0f}" for count in outcomes.values()),
        )
    failures = [line for line in lines if str(line.get("message", "")).startswith("push to ")]
    result.add(
        "daemon: failed pushes (retried)",
        str(len(failures)) + (f"; first: {_reason(failures[0])}" if failures else ""),
    )
    result.add(
        "GitProvider push.interval / maxCommits; ConfigMaps patched",
        f"{args.push_interval} / {args.max_commits or 'default (20)'}; {args.objects:,}",
    )
    result.note(
        "latencies are measured from the API server's answer to the write to the first poll"
        f" of the server's branch that shows the commit (poll every {GIT_POLL_S * 1000:.0f} ms)"
    )
    if args.profile:
        result.note(f"cProfile of the daemon written to {args.profile}")
    return result.finish()


def _reason(line: dict[str, Any]) -> str:
    """The error of a 'push to ... failed, retrying in N s: <error>' log line, without URLs."""
    return str(line.get("message", "")).rpartition(": ")[2][:80]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.steady", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rate", type=float, default=200.0, help="changes per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument(
        "--objects", type=int, default=1_000, help="ConfigMaps patched round-robin (default 1000)"
    )
    parser.add_argument("--push-interval", default="5s", help="spec.push.interval (default 5s)")
    parser.add_argument(
        "--max-commits",
        type=int,
        help="spec.push.maxCommits (default: unset, so reverserd's default of 20 applies)",
    )
    parser.add_argument(
        "--drain-bound",
        type=float,
        help="seconds after the last write by which every change must be on the server"
        " (default: twice the push interval)",
    )
    parser.add_argument(
        "--attribution",
        action="store_true",
        help="register the admission webhook and run the daemon with --attribution admission",
    )
    add_common_arguments(parser, daemon_profile=True)
    return parser


def _attribution_on(plane: ControlPlane) -> list[str]:
    """Register reverserd's admission webhook for the namespace; the daemon's arguments."""
    from testbed.controlplane import free_port
    from testbed.harness import apply, webhook_arguments
    from testbed.manifests import admission_webhook

    port = free_port()
    url = f"https://127.0.0.1:{port}/admission"
    ca = (plane.pki / "ca.crt").read_bytes()
    apply(plane, admission_webhook("reverserd-bench", url, ca, NAMESPACE))
    return webhook_arguments(plane, "admission", port)


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
