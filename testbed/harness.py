"""Drive reverserd from outside, as an operator or a harness would: a real ``reverserd run``
process against the test bed's control plane, started, stopped with SIGTERM, killed with SIGKILL.

Also the helpers tests use to load the cluster quickly: kubectl is far too slow for thousands of
objects, so :func:`create_many` talks to the API server concurrently with the admin identity;
and what tests read back: objects and their conditions, the pushed branch, the journal.
Manifests to apply are built by :mod:`testbed.manifests`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from testbed.controlplane import ControlPlane, free_port
from testbed.gitservers import GitHttpServer, LogEntry, branch_tip, log, read_tree
from testbed.manifests import configmap
from testbed.tools import REPO_ROOT

T = TypeVar("T")

# How long a test waits for the mirror to converge before it fails with what it saw.
CONVERGE_TIMEOUT_S = 60.0
# Polling pace while waiting; cheap calls against loopback.
POLL_INTERVAL_S = 0.2
# Concurrent requests when loading objects; the apiserver on 2 cores peaks around this.
LOAD_CONCURRENCY = 32
# The samples a metric family exposes besides its own name (counters, histograms).
METRIC_SAMPLE_SUFFIXES = ("_total", "_created", "_count", "_sum", "_bucket")


class Reverserd:
    """One ``reverserd run`` process with its own state dir and HTTP port."""

    def __init__(
        self,
        plane: ControlPlane,
        state_dir: Path,
        extra_args: Sequence[str] = (),
        kubeconfig: Path | None = None,
        interpreter_args: Sequence[str] = (),
        settings_from_environment: bool = False,
        allow_local_remotes: bool = True,
    ) -> None:
        """``interpreter_args`` go to Python before ``-m reverserd`` (e.g. ``-m cProfile``).

        ``allow_local_remotes`` sets ``REVERSERD_ALLOW_LOCAL_REMOTES``: the test bed's Git
        servers speak plain http on loopback, which reverserd refuses without that opt-in.

        With ``settings_from_environment`` the kubeconfig comes from ``$KUBECONFIG`` and the
        state dir, HTTP address and log format from ``REVERSERD_*`` variables, not flags, as a
        Deployment or systemd unit configures the daemon.
        """
        self.plane = plane
        self.state_dir = state_dir
        self.extra_args = list(extra_args)
        self.interpreter_args = list(interpreter_args)
        self.settings_from_environment = settings_from_environment
        self.allow_local_remotes = allow_local_remotes
        self.kubeconfig = kubeconfig or plane.daemon_kubeconfig
        self.port = free_port()
        self.log_path = state_dir.parent / f"{state_dir.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Reverserd:
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        settings = {
            "KUBECONFIG": str(self.kubeconfig),
            "REVERSERD_STATE_DIR": str(self.state_dir),
            "REVERSERD_HTTP_LISTEN": f"127.0.0.1:{self.port}",
            "REVERSERD_LOG_FORMAT": "json",
        }
        flags = [
            "--kubeconfig",
            settings["KUBECONFIG"],
            "--state-dir",
            settings["REVERSERD_STATE_DIR"],
            "--http-listen",
            settings["REVERSERD_HTTP_LISTEN"],
            "--log-format",
            settings["REVERSERD_LOG_FORMAT"],
        ]
        command = [
            sys.executable,
            *self.interpreter_args,
            "-m",
            "reverserd",
            "run",
            *([] if self.settings_from_environment else flags),
            *self.extra_args,
        ]
        # The daemon runs the code of this tree, whatever else is installed or the caller's cwd.
        environment = dict(os.environ)
        environment["REVERSERD_ALLOW_LOCAL_REMOTES"] = str(self.allow_local_remotes).lower()
        if self.settings_from_environment:
            environment.update(settings)
        search_path = [
            str(REPO_ROOT),
            *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep)),
        ]
        environment["PYTHONPATH"] = os.pathsep.join(search_path)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                env=environment,
            )
        wait_until(lambda: self.get("/healthz") is not None, 30, self.log_tail)
        return self

    def get(self, path: str, token: str | None = None) -> bytes | None:
        """``path`` as a reader the API server authorizes (the admin, unless ``token``), or
        None when the daemon does not answer with 200."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"reverserd exited with {self.process.returncode}: {self.log_tail()}"
            )
        bearer = self.plane.admin_token if token is None else token
        request = urllib.request.Request(self.url + path)
        request.add_header("Authorization", f"Bearer {bearer}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return bytes(response.read())
        except (urllib.error.URLError, OSError):
            return None

    def status(self) -> dict[str, Any]:
        body = self.get("/status")
        if body is None:
            raise RuntimeError("no /status answer")
        result: dict[str, Any] = json.loads(body)
        return result

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples on ``/metrics`` whose labels include ``labels``.

        A metric the daemon does not declare at all raises :class:`KeyError`: a misspelled
        name must fail the test, not read as zero. A declared one without samples yet (no
        label values seen) is zero.
        """
        body = self.get("/metrics")
        if body is None:
            raise RuntimeError("no /metrics answer")
        total = 0.0
        declared: set[str] = set()
        for family in text_string_to_metric_families(body.decode()):
            declared.add(family.name)
            declared.update(family.name + suffix for suffix in METRIC_SAMPLE_SUFFIXES)
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        if name not in declared:
            raise KeyError(f"/metrics declares no metric {name!r}")
        return total

    def stop(self, timeout: float = 20.0) -> float:
        """SIGTERM; returns how long the process took to exit."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout)
        return time.monotonic() - started

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def ensure_stopped(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"message": raw})
        return lines

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def logged_by_reverserd(fragment: str) -> str:
    """``fragment``, once checked to be part of a message reverserd's code logs.

    A test asserting that no log line holds a message would pass silently once the message is
    reworded; passing the text through this makes the rewording fail the test instead.
    """
    if not any(fragment in path.read_text() for path in (REPO_ROOT / "reverserd").rglob("*.py")):
        raise AssertionError(f"reverserd's code logs no message containing {fragment!r}")
    return fragment


def webhook_arguments(plane: ControlPlane, sources: str, port: int) -> list[str]:
    """``reverserd run`` arguments for the attribution ``sources`` with the webhook on
    127.0.0.1:``port``, serving the test bed's webhook certificate and trusting its CA for the
    audit client certificate."""
    pki = plane.pki
    return [
        f"--attribution={sources}",
        f"--webhook-listen=127.0.0.1:{port}",
        f"--webhook-tls-cert={pki / 'webhook.crt'}",
        f"--webhook-tls-key={pki / 'webhook.key'}",
        f"--webhook-client-ca={pki / 'ca.crt'}",
    ]


def wait_until(
    probe: Callable[[], T | bool | None],
    timeout: float = CONVERGE_TIMEOUT_S,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll until ``probe`` returns something truthy; fail with ``describe()`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | bool | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last and not isinstance(last, bool):
            return last
        if last:
            return cast(T, last)
        time.sleep(POLL_INTERVAL_S)
    detail = describe() if describe else repr(last)
    raise AssertionError(f"condition not met within {timeout} s: {detail}")


def _ssl_context(plane: ControlPlane) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(plane.pki / "ca.crt"))
    context.load_cert_chain(str(plane.pki / "admin.crt"), str(plane.pki / "admin.key"))
    return context


def _token_ssl_context(plane: ControlPlane) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(plane.pki / "ca.crt"))


def collection(manifest: dict[str, Any], plural: str) -> str:
    """The API path of the collection ``manifest`` belongs to."""
    api_version = manifest["apiVersion"]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    namespace = (manifest.get("metadata") or {}).get("namespace")
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


async def send_all(
    plane: ControlPlane,
    requests: Iterable[tuple[str, str, dict[str, Any] | None]],
    token: str | None = None,
) -> list[dict[str, Any]]:
    """Send (method, path, body) requests concurrently, as admin or as the holder of ``token``;
    a PATCH is a merge patch. Returns the answers in order."""
    semaphore = asyncio.Semaphore(LOAD_CONCURRENCY)
    context = _ssl_context(plane) if token is None else _token_ssl_context(plane)
    connector = aiohttp.TCPConnector(ssl=context, limit=LOAD_CONCURRENCY)
    auth = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(connector=connector, headers=auth) as session:

        async def one(method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
            async with semaphore:
                headers = (
                    {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
                )
                async with session.request(
                    method, plane.server + path, json=body, headers=headers
                ) as response:
                    text = await response.text()
                    if response.status >= 300:
                        raise RuntimeError(f"{method} {path}: {response.status} {text[:300]}")
                    result: dict[str, Any] = json.loads(text) if text else {}
                    return result

        return await asyncio.gather(*(one(m, p, b) for m, p, b in requests))


def create_many(
    plane: ControlPlane, manifests: Sequence[dict[str, Any]], plural: str
) -> list[dict[str, Any]]:
    """Create objects through the API, concurrently (about 900 objects/s on two cores).

    Returns the API server's answers (the created objects, in the order of ``manifests``).
    """
    return asyncio.run(send_all(plane, [("POST", collection(m, plural), m) for m in manifests]))


def patch_many(
    plane: ControlPlane, manifests: Sequence[dict[str, Any]], plural: str, patch: dict[str, Any]
) -> list[dict[str, Any]]:
    """Merge-patch each object; returns the patched objects in the order of ``manifests``."""
    requests = [
        ("PATCH", f"{collection(m, plural)}/{m['metadata']['name']}", patch) for m in manifests
    ]
    return asyncio.run(send_all(plane, requests))


def delete_many(
    plane: ControlPlane, manifests: Sequence[dict[str, Any]], plural: str
) -> list[dict[str, Any]]:
    """Delete each object; returns the API server's answers in the order of ``manifests``."""
    requests = [
        ("DELETE", f"{collection(m, plural)}/{m['metadata']['name']}", None) for m in manifests
    ]
    return asyncio.run(send_all(plane, requests))


def apply(plane: ControlPlane, *manifests: dict[str, Any]) -> None:
    """Create or update ``manifests`` with ``kubectl apply``."""
    plane.kubectl("apply", "-f", "-", stdin="\n".join(json.dumps(m) for m in manifests))


def install_crd(plane: ControlPlane, definition: dict[str, Any]) -> None:
    """Apply a CustomResourceDefinition and wait until the API server serves its type."""
    apply(plane, definition)
    name = definition["metadata"]["name"]
    plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")


def create_namespace(plane: ControlPlane, prefix: str = "t") -> str:
    """A new namespace with a unique name starting with ``prefix``."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    plane.kubectl("create", "namespace", name)
    return name


def create_git_credentials(
    plane: ControlPlane,
    namespace: str,
    server: GitHttpServer,
    password: str | None = None,
    name: str = "git-credentials",
) -> str:
    """A Secret ``name`` with the HTTP server's user and ``password`` (by default the right
    one), as a GitProvider's ``secretRef`` names it; returns ``name``."""
    plane.kubectl(
        "create",
        "secret",
        "generic",
        name,
        "-n",
        namespace,
        f"--from-literal=username={server.username}",
        f"--from-literal=password={server.password if password is None else password}",
    )
    return name


def merge_patch(
    plane: ControlPlane, kind: str, namespace: str, name: str, patch: dict[str, Any]
) -> dict[str, Any]:
    """Merge-patch one object with kubectl; returns the patched object."""
    return kubectl_json(
        plane, "patch", kind, name, "-n", namespace, "--type=merge", "-p", json.dumps(patch)
    )


def delete_mirror_resources(plane: ControlPlane, namespace: str) -> None:
    """Remove every GitProvider, GitTarget and WatchRule of ``namespace``.

    The test bed has no namespace controller, so deleting a namespace would leave its objects in
    place; a later daemon of the same test run would then pick up the stale targets and push to
    their repositories. Tests that create mirror resources remove them with this.
    """
    plane.kubectl(
        "delete",
        "watchrules,gittargets,gitproviders",
        "--all",
        "-n",
        namespace,
        "--ignore-not-found",
        "--wait=false",
    )


# -- reading the cluster ----------------------------------------------------------------------


def kubectl_json(plane: ControlPlane, *args: str, stdin: str | None = None) -> dict[str, Any]:
    """What ``kubectl <args> -o json`` prints, parsed."""
    result: dict[str, Any] = json.loads(plane.kubectl(*args, "-o", "json", stdin=stdin))
    return result


def get_object(plane: ControlPlane, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
    """One object as the API server has it; ``namespace`` is None for a cluster-scoped one."""
    scope = ["-n", namespace] if namespace else []
    return kubectl_json(plane, "get", kind, name, *scope)


def resource_status(
    plane: ControlPlane, kind: str, namespace: str | None, name: str
) -> dict[str, Any]:
    """The object's ``status``; empty while it has none."""
    status: dict[str, Any] = get_object(plane, kind, namespace, name).get("status") or {}
    return status


def conditions(
    plane: ControlPlane, kind: str, namespace: str | None, name: str
) -> dict[str, dict[str, Any]]:
    """The object's status conditions by type."""
    found = resource_status(plane, kind, namespace, name).get("conditions") or []
    return {item["type"]: item for item in found}


def wait_condition(
    plane: ControlPlane,
    kind: str,
    namespace: str | None,
    name: str,
    type_: str,
    status: str,
    reason: str | None = None,
    timeout: float = CONVERGE_TIMEOUT_S,
    daemon: Reverserd | None = None,
) -> dict[str, Any]:
    """Wait until condition ``type_`` has ``status`` (and ``reason``, if given); returns it.

    A failure shows the object's conditions, and the log of ``daemon`` if given.
    """

    def matching() -> dict[str, Any] | None:
        found = conditions(plane, kind, namespace, name).get(type_)
        if found and found["status"] == status and (reason is None or found["reason"] == reason):
            return found
        return None

    def describe() -> str:
        seen = f"{kind} {namespace}/{name} conditions: {conditions(plane, kind, namespace, name)}"
        return f"{seen}; log: {daemon.log_tail()}" if daemon else seen

    return wait_until(matching, timeout, describe)


def wait_synced(
    plane: ControlPlane, namespace: str, name: str = "mirror", daemon: Reverserd | None = None
) -> None:
    """Wait until the GitTarget's initial snapshot is pushed (condition SnapshotSynced)."""
    wait_condition(plane, "gittarget", namespace, name, "SnapshotSynced", "True", daemon=daemon)


def wait_target_refused(
    plane: ControlPlane, namespace: str, name: str, reason: str
) -> dict[str, Any]:
    """Wait until the GitTarget is refused for ``reason`` (Validated False), check that Ready
    says the same, and return the Validated condition."""
    validated = wait_condition(plane, "gittarget", namespace, name, "Validated", "False", reason)
    ready = conditions(plane, "gittarget", namespace, name)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", reason), ready
    return validated


def wait_last_commit_is_tip(
    plane: ControlPlane,
    namespace: str,
    repo: Path,
    name: str = "mirror",
    branch: str = "main",
    timeout: float = CONVERGE_TIMEOUT_S,
) -> dict[str, Any]:
    """Wait until the GitTarget's ``status.lastCommit`` is the tip of ``branch``; returns the
    status."""

    def probe() -> dict[str, Any] | None:
        status = resource_status(plane, "gittarget", namespace, name)
        tip = branch_tip(repo, branch)
        return status if tip is not None and status.get("lastCommit") == tip else None

    return wait_until(
        probe,
        timeout,
        lambda: (
            f"tip {branch_tip(repo, branch)};"
            f" status {resource_status(plane, 'gittarget', namespace, name)}"
        ),
    )


def target_report(daemon: Reverserd, target: str) -> dict[str, Any] | None:
    """The daemon's ``/status`` entry for ``target``; None while it has none."""
    for item in daemon.status()["targets"]:
        if item["target"] == target:
            return dict(item)
    return None


def caught_up(daemon: Reverserd, *targets: str) -> bool:
    """Every target is live and its cursor is at the end of the journal (all of it pushed)."""
    for target in targets:
        report = target_report(daemon, target)
        if report is None or not report["ready"] or report["lag_events"] != 0:
            return False
    return True


# -- reading the pushed branch ----------------------------------------------------------------


def history(repo: Path, branch: str = "main") -> list[LogEntry]:
    """The branch's commits, oldest first; empty while the branch does not exist."""
    try:
        return list(reversed(log(repo, branch)))
    except LookupError:
        return []


def subjects(repo: Path, branch: str = "main") -> list[str]:
    """Commit subjects of ``branch``, oldest first; empty while the branch does not exist."""
    return [entry.subject for entry in history(repo, branch)]


def tree(repo: Path, branch: str = "main") -> dict[str, bytes]:
    """Every file on ``branch`` by path; empty while the branch does not exist."""
    try:
        return read_tree(repo, branch)
    except LookupError:
        return {}


def wait_for_subjects(
    repo: Path,
    daemon: Reverserd,
    *wanted: str,
    branch: str = "main",
    timeout: float = CONVERGE_TIMEOUT_S,
) -> list[str]:
    """Wait until the branch holds at least as many commits with each subject as ``wanted``;
    returns all its subjects, oldest first."""
    need = Counter(wanted)

    def probe() -> list[str] | None:
        found = subjects(repo, branch)
        have = Counter(found)
        return found if all(have[s] >= n for s, n in need.items()) else None

    return wait_until(
        probe,
        timeout,
        lambda: (
            f"wanted {list(wanted)}; subjects {subjects(repo, branch)}; log: {daemon.log_tail()}"
        ),
    )


def later_change(
    plane: ControlPlane,
    namespace: str,
    repo: Path,
    daemon: Reverserd,
    name: str = "later",
    branch: str = "main",
) -> str:
    """Create the ConfigMap ``name`` and wait for its commit on ``branch``; returns its subject.

    A target commits in journal order and a push carries every commit before it, so once this
    change is on the branch, nothing made before it is still on its way: what the branch lacks
    then never comes. That proves absence without sleeping for a guessed time.
    """
    apply(plane, configmap(namespace, name))
    subject = f"[CREATE] v1/configmaps/{namespace}/{name}"
    wait_for_subjects(repo, daemon, subject, branch=branch)
    return subject


# -- reading the journal, as an operator would with sqlite3 -----------------------------------


def query_journal(
    daemon: Reverserd, sql: str, params: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    """One read-only query against the daemon's journal (the daemon may be running)."""
    path = daemon.state_dir / "journal.db"
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def cursor_seq(daemon: Reverserd, target: str) -> int | None:
    """The journal seq up to which ``target`` has pushed; None before its first push."""
    rows = query_journal(daemon, "SELECT seq FROM cursors WHERE target = ?", (target,))
    return int(rows[0][0]) if rows else None
