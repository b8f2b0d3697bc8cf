"""``python -m testbed build|up``: the test bed from the command line.

``build`` makes sure the control plane's binaries are in the cache. ``up`` starts the same
control plane the tests use plus a smart-HTTP Git server, prints how to reach them, and keeps
them running until interrupted.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

from testbed.controlplane import ensure_binaries, running_control_plane
from testbed.gitservers import GitHttpServer


def _progress(message: str) -> None:
    print(f"testbed: {message}", file=sys.stderr, flush=True)


def up(workdir: Path) -> None:
    with running_control_plane(workdir / "controlplane") as plane:
        with GitHttpServer(workdir / "git") as git:
            git.create_bare_repo("mirror")
            print(f"admin kubeconfig:     {plane.admin_kubeconfig}")
            print(f"reverserd kubeconfig: {plane.daemon_kubeconfig}")
            print(f"kubectl:              {plane.kubectl_path}")
            print(f"git remote:           {git.url('mirror')}")
            print(f"git credentials:      {git.username} / {git.password}")
            print("running; Ctrl-C stops everything", flush=True)
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build or reuse the cached control plane binaries")
    start = commands.add_parser("up", help="start a control plane and a Git server")
    start.add_argument("--workdir", type=Path, default=None)
    arguments = parser.parse_args()
    if arguments.command == "build":
        print(ensure_binaries(progress=_progress))
        return 0
    up(arguments.workdir or Path(tempfile.mkdtemp(prefix="reverserd-testbed-")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
