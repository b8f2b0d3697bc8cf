"""``python -m testbed build|up|demo``: the test bed from the command line.

``build`` makes sure the control plane's binaries and Helm (for the packaging tests) are in the
cache. ``up`` starts the same control plane the tests use plus a smart-HTTP Git server, prints
how to reach them, and keeps them running until interrupted. ``demo`` runs reverserd's main job
end to end on them: the sample GitProvider, GitTarget and WatchRule of
``packaging/examples/quickstart.yaml``, a ConfigMap created, updated and deleted, and the
remote's ``git log --stat``.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
from functools import partial
from pathlib import Path

from testbed.controlplane import ensure_binaries, running_control_plane
from testbed.gitservers import GitHttpServer, log
from testbed.harness import Reverserd, wait_until
from testbed.tools import REPO_ROOT, ensure_encryption_tools, ensure_helm

EXAMPLE = REPO_ROOT / "packaging" / "examples" / "quickstart.yaml"
EXAMPLE_URL = "https://git.example.com/team/cluster-mirror.git"


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


def demo(workdir: Path) -> None:
    with running_control_plane(workdir / "controlplane") as plane:
        with GitHttpServer(workdir / "git") as git:
            repo = git.create_bare_repo("cluster-mirror")
            plane.kubectl("create", "namespace", "demo")
            plane.kubectl(
                "-n",
                "demo",
                "create",
                "secret",
                "generic",
                "git-credentials",
                f"--from-literal=username={git.username}",
                f"--from-literal=password={git.password}",
            )
            sample = EXAMPLE.read_text().replace(EXAMPLE_URL, git.url("cluster-mirror"))
            plane.kubectl("apply", "-f", "-", stdin=sample)
            daemon = Reverserd(plane, workdir / "state")
            _progress(f"starting reverserd (log: {daemon.log_path})")
            try:
                daemon.start()
                steps = [
                    ("create", ["create", "configmap", "settings", "--from-literal=color=blue"]),
                    (
                        "update",
                        ["patch", "configmap", "settings", "-p", '{"data":{"color":"green"}}'],
                    ),
                    ("delete", ["delete", "configmap", "settings"]),
                ]
                for number, (verb, command) in enumerate(steps, start=1):
                    _progress(f"kubectl {verb} configmap demo/settings")
                    plane.kubectl("-n", "demo", *command)
                    wait_until(partial(_has_commits, repo, number), describe=daemon.log_tail)
            finally:
                daemon.ensure_stopped()
            print(
                subprocess.run(
                    ["git", f"--git-dir={repo}", "log", "--stat", "main"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )


def _has_commits(repo: Path, count: int) -> bool:
    return len(_subjects(repo)) >= count


def _subjects(repo: Path) -> list[str]:
    try:
        return [entry.subject for entry in log(repo, "main")]
    except LookupError:
        return []


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build or reuse the cached control plane binaries and Helm")
    for name, text in (
        ("up", "start a control plane and a Git server"),
        ("demo", "run reverserd end to end and print the remote's history"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--workdir", type=Path, default=None)
    arguments = parser.parse_args()
    if arguments.command == "build":
        print(ensure_binaries(progress=_progress))
        print(ensure_encryption_tools(progress=_progress))
        print(ensure_helm(progress=_progress))
        return 0
    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="reverserd-testbed-"))
    {"up": up, "demo": demo}[arguments.command](workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
