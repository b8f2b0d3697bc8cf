"""pytest fixtures for the test bed's real Git servers.

Load with ``pytest_plugins = ["testbed.pytest_git"]``. One HTTP and one SSH server serve the
whole run, because starting lighttpd or sshd (and generating SSH keys) per test would dominate
its duration. Tests stay independent by giving every repository a unique name
(``git_repo_name``). Teardown stops the servers even when tests fail. A test that needs an
outage must create its own server rather than stop a shared one, which later tests rely on.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from testbed.gitservers import GitHttpServer, GitSshServer

# Leaves room for the random suffix within typical 255-byte file name limits, and keeps
# server logs readable.
_MAX_NAME_STEM = 60


@pytest.fixture(scope="session")
def git_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHttpServer]:
    """A running smart-HTTP Git server with basic auth (``username`` / ``password``)."""
    with GitHttpServer(tmp_path_factory.mktemp("git-http")) as server:
        yield server


@pytest.fixture(scope="session")
def git_ssh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitSshServer]:
    """A running SSH Git server admitting ``client_private_key``, with ``known_hosts``."""
    with GitSshServer(tmp_path_factory.mktemp("git-ssh")) as server:
        yield server


@pytest.fixture
def git_repo_name(request: pytest.FixtureRequest) -> str:
    """A repository name unique to this test, recognisable in server state and logs."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-.")[:_MAX_NAME_STEM]
    return f"{stem or 'repo'}-{uuid.uuid4().hex[:8]}"
