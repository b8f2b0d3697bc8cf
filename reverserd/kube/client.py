"""A thin, plain-JSON client for the API server.

kubernetes-asyncio loads the configuration (kubeconfig or in-cluster, including token refresh)
and owns the HTTP session; requests go through its ``call_api`` with ``_preload_content=False``
so responses are parsed straight into dicts. Only those parts of the library are imported
(:mod:`reverserd.kube.library`), never its generated API and model classes. Every call carries
a timeout: a hung API server must never hang the daemon.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from reverserd.kube import jsontext, library

# Lists of large pages and status writes finish well within this on a healthy server.
REQUEST_TIMEOUT_S = 60.0
# A watch is a long-lived response: only connecting is bounded here; the watcher bounds silence.
WATCH_CONNECT_TIMEOUT_S = 15.0
MERGE_PATCH = "application/merge-patch+json"
# Responses and watch lines from this size on are decoded on a worker thread.
LARGE_LINE_BYTES = 256 * 1024
# Where a pod finds its service account; present means in-cluster configuration applies.
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
# Relative to the home directory, as kubectl reads it.
DEFAULT_KUBECONFIG = Path(".kube/config")


def kubeconfig_path(
    flag: Path | None,
    environ: Mapping[str, str] = os.environ,
    in_cluster_token: Path = IN_CLUSTER_TOKEN,
) -> Path | None:
    """The kubeconfig to load, or ``None`` for the in-cluster service account.

    The order kubectl and controller-runtime users expect: the flag, then ``$KUBECONFIG`` (its
    first entry, the file kubectl writes to), then the in-cluster service account, then
    ``~/.kube/config``. With none of them ``None`` is returned and the in-cluster loader says
    what is missing.
    """
    if flag is not None:
        return flag
    entries = [entry for entry in environ.get("KUBECONFIG", "").split(os.pathsep) if entry]
    if entries:
        return Path(entries[0]).expanduser()
    if environ.get("KUBERNETES_SERVICE_HOST") and in_cluster_token.exists():
        return None
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    default = home / DEFAULT_KUBECONFIG
    return default if default.exists() else None


@dataclass
class KubeError(Exception):
    """A non-2xx answer from the API server, with its Status reason and message."""

    status: int
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"


class KubeClient:
    def __init__(self, api: Any) -> None:
        self.api = api

    @classmethod
    async def connect(cls, kubeconfig: Path | None, context: str | None = None) -> KubeClient:
        """From the kubeconfig :func:`kubeconfig_path` picks, else the in-cluster account."""
        kubeconfig = kubeconfig_path(kubeconfig)
        configuration = library.Configuration()
        if kubeconfig is not None:
            await library.load_kube_config(
                config_file=str(kubeconfig), context=context, client_configuration=configuration
            )
        else:
            library.load_incluster_config(client_configuration=configuration)
        return cls(library.ApiClient(configuration))

    @property
    def server(self) -> str:
        return str(self.api.configuration.host)

    async def close(self) -> None:
        await self.api.close()

    async def _call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        limits: aiohttp.ClientTimeout | float = REQUEST_TIMEOUT_S,
    ) -> aiohttp.ClientResponse:
        response: aiohttp.ClientResponse = await self.api.call_api(
            path,
            method,
            query_params=list((params or {}).items()),
            header_params={"Accept": accept, "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=limits,
        )
        if response.status >= 300:
            text = await response.text()
            response.release()
            raise error_from_status(response.status, text)
        return response

    async def get(self, path: str, params: Mapping[str, str | int] | None = None) -> Any:
        return await self.get_with_accept(path, "application/json", params)

    async def get_with_accept(
        self, path: str, accept: str, params: Mapping[str, str | int] | None = None
    ) -> Any:
        response = await self._call("GET", path, params, accept=accept)
        try:
            return await decode(await response.read())
        finally:
            response.release()

    async def send(
        self, method: str, path: str, body: Any, content_type: str = "application/json"
    ) -> Any:
        response = await self._call(method, path, body=body, content_type=content_type)
        try:
            return await response.json(content_type=None)
        finally:
            response.release()

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> Any:
        return await self.send("PATCH", path, patch, MERGE_PATCH)

    async def stream_lines(
        self, path: str, params: Mapping[str, str | int], read_timeout: float
    ) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """Yield the length and the decoded JSON of each line of a streaming response (a watch)
        until the server ends it.

        ``read_timeout`` bounds silence between lines: a connection that went quiet without
        closing raises ``asyncio.TimeoutError`` instead of hanging forever.
        """
        timeout = aiohttp.ClientTimeout(
            total=None, connect=WATCH_CONNECT_TIMEOUT_S, sock_read=read_timeout
        )
        response = await self._call("GET", path, params, limits=timeout)
        try:
            async for line in response.content:
                if line.strip():
                    yield len(line), await decode(line)
        finally:
            response.release()


async def decode(raw: bytes) -> Any:
    """JSON from the API server; large documents are decoded off the event loop (aiohttp hands
    over buffered lines without yielding, so a burst of large objects would hold it), and an
    object nested too deep to decode becomes a stand-in (:mod:`reverserd.kube.jsontext`)."""
    if len(raw) >= LARGE_LINE_BYTES:
        return await asyncio.to_thread(jsontext.loads, raw)
    return jsontext.loads(raw)


def error_from_status(status: int, text: str) -> KubeError:
    try:
        body = json.loads(text)
        return KubeError(status, str(body.get("reason", "")), str(body.get("message", text)))
    except (ValueError, AttributeError):
        return KubeError(status, "", text[:500])
