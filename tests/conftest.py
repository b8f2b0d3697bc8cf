"""Shared fixtures: the real control plane and the real Git servers of the test bed; and how
the tests of reverserd.git commit as the committer does.

A component that cannot start fails the test that needs it; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pygit2
import pytest

from reverserd.git import BranchRepository, FileChange
from reverserd.journal import JournalReader, JournalWriter, StoredObject
from testbed.controlplane import ControlPlane, free_port, running_control_plane
from testbed.gitservers import GitHttpServer
from testbed.harness import (
    Reverserd,
    apply,
    create_git_credentials,
    create_namespace,
    delete_mirror_resources,
    install_crd,
)
from testbed.manifests import admission_webhook
from testbed.tools import ensure_encryption_tools

pytest_plugins = ["testbed.pytest_git"]

# Who the commits are by when a test of reverserd.git commits as the committer does.
AUTHOR = pygit2.Signature("Jane Operator", "jane@example.com", 1_700_000_000, 0)
COMMITTER = pygit2.Signature("reverserd", "reverserd@example.com", 1_700_000_000, 0)


def write(repository: BranchRepository, path: str, content: bytes | None, message: str) -> str:
    """Commit one file change (``None`` deletes the file) as the committer does; returns the SHA."""
    sha = repository.apply([FileChange(path, content)], message, AUTHOR, COMMITTER)
    assert sha is not None
    return sha


def fsck(server_repo: Path) -> None:
    """``git fsck --strict`` of a server's bare repository must find nothing wrong."""
    done = subprocess.run(
        ["git", f"--git-dir={server_repo}", "fsck", "--strict", "--no-dangling"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


PACKS_AS_WRITTEN = "no delta search"
"""What the log line of a push that sent the clone's packs as written says."""
BY_LIBGIT2 = "libgit2's pack builder"
"""What the log line of a push libgit2 made says."""


def push_ways(caplog: pytest.LogCaptureFixture) -> list[str]:
    """How each push ``caplog`` saw went: ``as written`` or ``libgit2`` (needs ``push_log``)."""
    return [
        "as written" if PACKS_AS_WRITTEN in record.message else "libgit2"
        for record in caplog.records
        if PACKS_AS_WRITTEN in record.message or BY_LIBGIT2 in record.message
    ]


@pytest.fixture
def push_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Captures the Git layer's debug log, where each push says which way it went."""
    caplog.set_level(logging.DEBUG, logger="reverserd.git.repository")
    return caplog


async def current_objects(
    reader: JournalReader, kinds: Iterable[tuple[str, str]]
) -> list[StoredObject]:
    """The journal's current objects of ``kinds``, every page of one snapshot together."""
    async with reader.snapshot_pages(kinds) as snapshot:
        return [stored async for page in snapshot.pages for stored in page]


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[tuple[JournalWriter, JournalReader]]:
    """A journal in ``tmp_path``, its writer running, and a reader of it."""
    writer = await JournalWriter.open(tmp_path)
    task = asyncio.create_task(writer.run())
    reader = await JournalReader.open(tmp_path)
    yield writer, reader
    task.cancel()
    await reader.close()
    await writer.close()


@pytest.fixture(scope="session")
def tools() -> Path:
    """The folder holding the test bed's ``sops`` and ``age-keygen``."""
    return ensure_encryption_tools()


@pytest.fixture(scope="session")
def age_key(tools: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(identity, recipient) of a test age key."""
    path = tmp_path_factory.mktemp("age") / "key.txt"
    subprocess.run([str(tools / "age-keygen"), "-o", str(path)], check=True, capture_output=True)
    identity = next(line for line in path.read_text().splitlines() if line.startswith("AGE-"))
    recipient = subprocess.run(
        [str(tools / "age-keygen"), "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return identity, recipient


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
    name = create_namespace(control_plane)
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
    secret = create_git_credentials(control_plane, namespace, git_http)
    return Remote(git_http.url(git_repo_name), path, secret)


@pytest.fixture
def daemon(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Reverserd]:
    """A real ``reverserd run`` process (not started yet); always stopped at the end."""
    process = Reverserd(control_plane, tmp_path / "state")
    yield process
    process.ensure_stopped()


@dataclass
class Cleanup:
    """What a test leaves in the shared cluster besides its namespace, removed at teardown."""

    plane: ControlPlane
    namespaces: list[str]
    cluster_objects: list[tuple[str, str]] = field(default_factory=list)

    def new_namespace(self) -> str:
        """Another fresh namespace, whose reverserd resources are removed at teardown."""
        name = create_namespace(self.plane)
        self.namespaces.append(name)
        return name

    def install_crd(self, definition: dict[str, Any]) -> None:
        """Install a CustomResourceDefinition that is deleted at teardown."""
        self.cluster_objects.append(("crd", definition["metadata"]["name"]))
        install_crd(self.plane, definition)


@pytest.fixture
def cleanup(control_plane: ControlPlane, namespace: str) -> Iterator[Cleanup]:
    """A daemon serves every GitTarget in the cluster: each test using this starts without the
    custom resources earlier tests left, so its daemon works for its own targets only."""
    control_plane.kubectl(
        "delete", "watchrules,gittargets,gitproviders", "--all", "--all-namespaces", "--wait=false"
    )
    control_plane.kubectl("delete", "clusterwatchrules", "--all", "--wait=false")
    record = Cleanup(control_plane, [namespace])
    yield record
    for kind, name in reversed(record.cluster_objects):
        control_plane.kubectl("delete", kind, name, "--ignore-not-found", "--wait=false")
    for other in record.namespaces:
        delete_mirror_resources(control_plane, other)


@pytest.fixture
def admission_registered(control_plane: ControlPlane, namespace: str) -> Iterator[int]:
    """The admission webhook registered for ``namespace``; yields the port it calls."""
    port = free_port()
    name = f"reverserd-attribution-{namespace}"
    ca = (control_plane.pki / "ca.crt").read_bytes()
    apply(
        control_plane, admission_webhook(name, f"https://127.0.0.1:{port}/admission", ca, namespace)
    )
    yield port
    control_plane.kubectl("delete", "validatingwebhookconfiguration", name, "--ignore-not-found")
