"""The test bed as the benchmarks use it: a daemon that knows when it started, and loaders.

Everything here wraps :mod:`testbed`; nothing talks to a mock.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import FirstTrue, configmap_manifest, configmap_names, peak_rss_mb, say
from testbed.controlplane import ControlPlane
from testbed.gitservers import GitHttpServer
from testbed.harness import Reverserd, create_many
from testbed.manifests import mirror_setup

# The daemon answers /healthz within a couple of seconds; a profiled one is slower to start.
HEALTHZ_TIMEOUT_S = 60.0
# Objects per create_many call: progress output without slowing the load down.
LOAD_CHUNK = 2500


class BenchDaemon(Reverserd):
    """A ``reverserd run`` process that records when it was started.

    With ``profile`` set, the daemon runs under ``python -m cProfile -o <profile>``; the profile
    is written when it exits on SIGTERM. cProfile sees the event loop's thread only, not the Git
    worker thread or SQLite's connection threads.
    """

    def __init__(
        self,
        plane: ControlPlane,
        state_dir: Path,
        profile: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        profiling = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
        super().__init__(plane, state_dir, extra_args=extra_args, interpreter_args=profiling)
        self.profile = profile
        self.started_wall = 0.0
        self.started_mono = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> BenchDaemon:
        self.started_wall, self.started_mono = time.time(), time.monotonic()
        super().start()
        return self

    def since_start(self, wall: float | None) -> float | None:
        return None if wall is None else wall - self.started_wall


def run_until(
    daemon: BenchDaemon, done: Callable[[], bool], timeout: float, settle_s: float
) -> tuple[float | None, float | None]:
    """Start ``daemon``, wait until ``done`` holds (probed on its own thread), let it settle for
    ``settle_s`` and stop it: when ``done`` first held (monotonic; None on timeout or when the
    daemon died) and its peak RSS in MB."""
    probe = FirstTrue(done)
    probe.start()
    with stopped_afterwards(daemon):
        try:
            daemon.start()
            reached = probe.wait(timeout, daemon.alive)
            if reached is not None:
                time.sleep(settle_s)
            peak = peak_rss_mb(daemon.pid)
        finally:
            probe.stop()
    return reached, peak


@contextmanager
def stopped_afterwards(daemon: BenchDaemon) -> Iterator[BenchDaemon]:
    """SIGTERM the daemon when the block ends (SIGKILL if it does not exit in time)."""
    try:
        yield daemon
    finally:
        if daemon.alive():
            try:
                daemon.stop(30)
            except subprocess.TimeoutExpired:
                say("daemon did not exit within 30 s of SIGTERM; killing it")
        daemon.ensure_stopped()


def create_namespace(plane: ControlPlane, name: str) -> None:
    plane.kubectl("create", "namespace", name)


def load_configmaps(plane: ControlPlane, namespace: str, count: int) -> float:
    """Create ``count`` realistic ConfigMaps in ``namespace``; returns the seconds it took."""
    started = time.monotonic()
    manifests = [
        configmap_manifest(namespace, name, index)
        for index, name in enumerate(configmap_names(count))
    ]
    for first in range(0, count, LOAD_CHUNK):
        create_many(plane, manifests[first : first + LOAD_CHUNK], "configmaps")
        say(f"created {min(first + LOAD_CHUNK, count)}/{count} ConfigMaps in {namespace}")
    return time.monotonic() - started


def git_secret(plane: ControlPlane, namespace: str, server: GitHttpServer) -> str:
    plane.kubectl(
        "create",
        "secret",
        "generic",
        "git-credentials",
        "-n",
        namespace,
        f"--from-literal=username={server.username}",
        f"--from-literal=password={server.password}",
    )
    return "git-credentials"


def mirror(
    namespace: str, url: str, secret: str, interval: str, max_commits: int | None = None
) -> list[dict[str, Any]]:
    """GitProvider, GitTarget and WatchRule for the namespace's ConfigMaps."""
    manifests = mirror_setup(namespace, url, secret=secret, interval=interval)
    if max_commits is not None:
        manifests[0]["spec"]["push"]["maxCommits"] = max_commits
    return manifests
