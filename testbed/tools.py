"""Binaries the test bed builds from Go modules, cached by version outside the repository.

Each group of tools has its own small wrapper module under ``testbed/`` (so their dependency
graphs never constrain each other) and its own cache folder named by the pinned versions, so a
second run starts in seconds and a version bump never reuses a stale binary. Nothing here is
committed as a binary.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

SOPS_VERSION = "v3.13.3"
AGE_VERSION = "v1.3.2"
SOPS_MODULE_DIR = REPO_ROOT / "testbed" / "gomod-sops"
ENCRYPTION_TOOLS = {
    "sops": "github.com/getsops/sops/v3/cmd/sops",
    "age": "filippo.io/age/cmd/age",
    "age-keygen": "filippo.io/age/cmd/age-keygen",
}


def cache_root() -> Path:
    base = os.environ.get("REVERSERD_TESTBED_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "reverserd-testbed"


def build_go_binaries(
    target: Path,
    module_dir: Path,
    binaries: Mapping[str, str],
    ldflags: str = "",
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Build each missing binary of ``binaries`` (name -> package) into ``target``.

    Each binary is built to a temporary name and renamed into place, so an interrupted build
    never leaves a truncated binary that a later run would trust.
    """
    say = progress or (lambda message: None)
    target.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=mod")
    for name, package in binaries.items():
        final = target / name
        if final.exists():
            continue
        if shutil.which("go") is None:
            raise RuntimeError("the test bed needs Go (1.26) on PATH to build " + name)
        say(f"building {name} from {package} (first run only; this takes a while)")
        started = time.monotonic()
        partial = target / f".{name}.partial"
        command = ["go", "build", "-o", str(partial), "-ldflags", ldflags, package]
        result = subprocess.run(command, cwd=module_dir, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"building {name} failed:\n{result.stderr[-4000:]}")
        partial.rename(final)
        say(f"built {name} in {time.monotonic() - started:.0f} s")
    return target


HELM_VERSION = "v3.22.0"
HELM_PACKAGE = "helm.sh/helm/v3/cmd/helm"
GOMOD_HELM_DIR = REPO_ROOT / "testbed" / "gomod-helm"


def helm_path() -> Path:
    return cache_root() / f"helm-{HELM_VERSION}" / "helm"


def _helm_ldflags(go_mod: str) -> str:
    """What Helm's own release build stamps in.

    Besides its version, Helm is told which Kubernetes version to assume when no cluster is
    asked (``.Capabilities.KubeVersion`` in ``helm template``, the deprecated-API check of
    ``helm lint``). Its Makefile takes it from the client-go it is built with; so does this.
    """
    client_go = re.search(r"^\s*k8s\.io/client-go v0\.(\d+)\.\d+\b", go_mod, re.MULTILINE)
    if client_go is None:
        raise RuntimeError(f"{GOMOD_HELM_DIR / 'go.mod'} does not require k8s.io/client-go")
    flags = {
        "helm.sh/helm/v3/internal/version.version": HELM_VERSION,
        "helm.sh/helm/v3/internal/version.gitTreeState": "clean",
    }
    for package in ("helm.sh/helm/v3/pkg/chartutil", "helm.sh/helm/v3/pkg/lint/rules"):
        flags[f"{package}.k8sVersionMajor"] = "1"
        flags[f"{package}.k8sVersionMinor"] = client_go.group(1)
    return " ".join(f"-X {name}={value}" for name, value in flags.items())


def ensure_helm(progress: Callable[[str], None] | None = None) -> Path:
    """Return the path of the cached Helm binary, building it first if it is missing."""
    go_mod = (GOMOD_HELM_DIR / "go.mod").read_text()
    pinned = re.search(r"^\s*helm\.sh/helm/v3 (v\S+)", go_mod, re.MULTILINE)
    if pinned is None or pinned.group(1) != HELM_VERSION:
        found = pinned.group(1) if pinned else "nothing"
        raise RuntimeError(
            f"{GOMOD_HELM_DIR / 'go.mod'} pins helm.sh/helm/v3 at {found}, "
            f"testbed/tools.py expects {HELM_VERSION}; update one of them"
        )
    folder = helm_path().parent
    build_go_binaries(
        folder, GOMOD_HELM_DIR, {"helm": HELM_PACKAGE}, _helm_ldflags(go_mod), progress
    )
    return helm_path()


def encryption_tools_dir() -> Path:
    return cache_root() / f"sops-{SOPS_VERSION}_age-{AGE_VERSION}"


def ensure_encryption_tools(progress: Callable[[str], None] | None = None) -> Path:
    """The folder holding ``sops``, ``age`` and ``age-keygen``, built first if missing."""
    return build_go_binaries(
        encryption_tools_dir(), SOPS_MODULE_DIR, ENCRYPTION_TOOLS, progress=progress
    )
