"""The parts of kubernetes-asyncio the daemon uses, without the generated API and model classes.

The daemon needs the library's configuration loading (kubeconfig with exec plugins, OIDC and
token files; the in-cluster service account with its token refresh) and its ``ApiClient``,
which owns the HTTP session and signs each request. It never uses the generated API classes
or models: bodies stay plain JSON. But importing any part of the library runs the package
``__init__`` of ``kubernetes_asyncio`` and ``kubernetes_asyncio.client``, which import every
API class and about 800 model classes: about 36 MB of memory a running daemon never touches.

So this module registers those two packages, and ``kubernetes_asyncio.client.models``, as
deferred: their modules exist (so their submodules import normally) but their ``__init__``
runs only when something asks them for a name that is neither theirs yet nor a submodule.
Then it imports the submodules the configuration loaders and ``ApiClient`` are made of.
Another user of the library in the same process (a test, a plugin) still sees the whole
library: its first access to a name such as ``kubernetes_asyncio.client.CoreV1Api`` runs the
deferred ``__init__``.

If the library was imported whole before this module, that copy is used as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

# The packages whose __init__ imports the generated classes, parents first.
DEFERRED_PACKAGES = (
    "kubernetes_asyncio",
    "kubernetes_asyncio.client",
    "kubernetes_asyncio.client.models",
)


def _defer(name: str) -> None:
    """Register package ``name`` without running its ``__init__`` until a missing name is read."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"{name} is not installed", name=name)
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def deferred_attribute(attribute: str) -> Any:
        # ``from package import submodule`` asks for the name before importing it: a submodule
        # is imported alone. Any other name runs the __init__, once: afterwards the module holds
        # every name it defines.
        if importlib.util.find_spec(f"{name}.{attribute}") is not None:
            return importlib.import_module(f"{name}.{attribute}")
        del module.__dict__["__getattr__"]
        loader.exec_module(module)
        return getattr(module, attribute)

    module.__dict__["__getattr__"] = deferred_attribute
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


for _package in DEFERRED_PACKAGES:
    _defer(_package)

# The pieces, by their module paths (the package __init__ files would pull everything in).
configuration = importlib.import_module("kubernetes_asyncio.client.configuration")
api_client = importlib.import_module("kubernetes_asyncio.client.api_client")
_client_package = sys.modules["kubernetes_asyncio.client"]
# kube_config takes both from the client package by name; give it them without the rest.
for _name, _value in (
    ("Configuration", configuration.Configuration),
    ("ApiClient", api_client.ApiClient),
):
    if _name not in _client_package.__dict__:
        setattr(_client_package, _name, _value)
kube_config = importlib.import_module("kubernetes_asyncio.config.kube_config")
incluster_config = importlib.import_module("kubernetes_asyncio.config.incluster_config")

Configuration: type[Any] = configuration.Configuration
ApiClient: type[Any] = api_client.ApiClient
load_kube_config = kube_config.load_kube_config
load_incluster_config = incluster_config.load_incluster_config

__all__ = ["ApiClient", "Configuration", "load_incluster_config", "load_kube_config"]
