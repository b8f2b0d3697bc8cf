"""Helm for the packaging tests and for ``packaging/generate.py``, built from its Go module.

Like the control plane binaries, Helm is never downloaded as a binary nor taken from the
machine: it is built once from the pinned module in ``testbed/gomod-helm`` with
``CGO_ENABLED=0 GOTOOLCHAIN=local`` and cached by version under
``~/.cache/reverserd-testbed/helm-<version>/`` (``REVERSERD_TESTBED_CACHE`` overrides the root),
so every machine lints and renders the chart with the same Helm.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from testbed.controlplane import REPO_ROOT, cache_root, go_build

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
    return go_build(GOMOD_HELM_DIR, HELM_PACKAGE, helm_path(), _helm_ldflags(go_mod), progress)
