"""Shared fixtures: the real control plane and the real Git servers of the test bed.

A component that cannot start fails the test that needs it; nothing is skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
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


@dataclass
class Cleanup:
    """What a test leaves in the shared cluster besides its namespace, removed at teardown."""

    namespaces: list[str]
    cluster_objects: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture
def cleanup(control_plane: ControlPlane, namespace: str) -> Iterator[Cleanup]:
    """A daemon serves every GitTarget in the cluster: each test using this starts without the
    custom resources earlier tests left, so its daemon works for its own targets only."""
    control_plane.kubectl(
        "delete", "watchrules,gittargets,gitproviders", "--all", "--all-namespaces", "--wait=false"
    )
    control_plane.kubectl("delete", "clusterwatchrules", "--all", "--wait=false")
    record = Cleanup([namespace])
    yield record
    for kind, name in reversed(record.cluster_objects):
        control_plane.kubectl("delete", kind, name, "--ignore-not-found", "--wait=false")
    for other in record.namespaces:
        delete_mirror_resources(control_plane, other)
