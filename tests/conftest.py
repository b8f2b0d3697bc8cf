"""Shared fixtures: the real control plane and the real Git servers of the test bed.

A component that cannot start fails the test that needs it; nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.controlplane import ControlPlane, running_control_plane

pytest_plugins = ["testbed.pytest_git"]


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    workdir: Path = tmp_path_factory.mktemp("controlplane")
    with running_control_plane(workdir) as plane:
        yield plane
