"""Shared fixtures: the real control plane and the real Git servers of the test bed.

A component that cannot start fails the test that needs it; nothing is skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.controlplane import ControlPlane, running_control_plane
from testbed.gitservers import GitHttpServer
from testbed.harness import Reverserd, delete_mirror_resources

pytest_plugins = ["testbed.pytest_git"]


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    workdir: Path = tmp_path_factory.mktemp("controlplane")
    with running_control_plane(workdir) as plane:
        yield plane


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace for one test.

    Its reverserd resources are removed afterwards, so daemons of later tests (which see the
    whole cluster) do not keep mirroring for targets of finished tests. The namespace itself
    stays: the test bed runs no namespace controller to empty it.
    """
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    delete_mirror_resources(control_plane, name)


@dataclass
class Remote:
    """A bare repository on the test bed's HTTP Git server, and the Secret to reach it."""

    url: str
    path: Path
    secret: str


@pytest.fixture
def remote(
    control_plane: ControlPlane, git_http: GitHttpServer, git_repo_name: str, namespace: str
) -> Remote:
    path = git_http.create_bare_repo(git_repo_name)
    control_plane.kubectl(
        "create",
        "secret",
        "generic",
        "git-credentials",
        "-n",
        namespace,
        f"--from-literal=username={git_http.username}",
        f"--from-literal=password={git_http.password}",
    )
    return Remote(git_http.url(git_repo_name), path, "git-credentials")


@pytest.fixture
def daemon(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Reverserd]:
    """A real ``reverserd run`` process (not started yet); always stopped at the end."""
    process = Reverserd(control_plane, tmp_path / "state")
    yield process
    process.ensure_stopped()
