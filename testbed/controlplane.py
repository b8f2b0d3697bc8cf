"""A real Kubernetes control plane on loopback: etcd and kube-apiserver built from Go modules.

Everything reverserd does depends on how a real API server behaves (resourceVersions, bookmarks,
``410 Gone``, CRDs being established, RBAC), so the tests run against the real thing, never a mock.

The binaries are built once from the pinned Go module in ``testbed/gomod`` and cached by version
under ``~/.cache/reverserd-testbed/<versions>/`` (override with ``REVERSERD_TESTBED_CACHE``), so a
warm start takes seconds. Nothing here is committed as a binary.

A started control plane has:

- a private PKI (CA, serving certificate for 127.0.0.1, an admin client certificate in
  ``system:masters``, a serving certificate for reverserd's webhooks on 127.0.0.1 and the client
  certificate the API server's audit backend presents to them), written with the ``openssl``
  command line;
- a static token file with an admin identity and a restricted identity for the daemon
  (user ``reverserd``, bound to the ClusterRole in ``packaging/rbac``);
- a kubeconfig per identity;
- the project's CRDs applied and ``Established``;
- the watch cache disabled for :data:`WATCH_CACHE_OFF_RESOURCE`, so that after
  :meth:`ControlPlane.compact_etcd` a watch resumed from an older resourceVersion of that resource
  receives ``410 Gone`` deterministically (with the watch cache on, the window depends on cache
  size and timing).

Every process is started as a child and stopped by PID, also when a test fails.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from testbed.tools import REPO_ROOT, build_go_binaries, cache_root

GOMOD_DIR = REPO_ROOT / "testbed" / "gomod"
CRD_DIR = REPO_ROOT / "packaging" / "crds"
RBAC_FILE = REPO_ROOT / "packaging" / "rbac" / "clusterrole.yaml"
SECRET_WRITER_FILE = REPO_ROOT / "packaging" / "rbac" / "secret-writer.yaml"
# On by default in every install: a custom resource's creator must be able to read what it names.
ADMISSION_POLICY_FILE = REPO_ROOT / "packaging" / "admission" / "creator-access.yaml"
# Where the tests run leader election; the daemon may use Leases in this namespace only, as the
# chart's Role allows in the release namespace.
LEASE_NAMESPACE = "default"

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
VERSIONS_KEY = f"kubernetes-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}"

# Built from the wrapper module; kubectl comes from the same tree so tests never depend on
# whichever (older, self-throttling) kubectl the machine happens to have.
BINARIES = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    "etcd": "go.etcd.io/etcd/server/v3",
}

# A namespaced core type that nothing else in the test bed uses, with no controllers acting on
# it. Its watch cache is off so that etcd compaction makes a resumed watch fail with 410.
WATCH_CACHE_OFF_RESOURCE = "podtemplates"

# The apiserver needs about 3 s from cached binaries; a loaded CI machine can take much longer
# when it also runs tests, so the bound is generous while still failing a hung start.
READY_TIMEOUT_S = 90.0
# SIGTERM first so etcd closes its database cleanly; SIGKILL after this long.
STOP_GRACE_S = 10.0

ADMIN_TOKEN_USER = "testbed-admin"
DAEMON_USER = "reverserd"
DAEMON_GROUP = "reverserd"


def cache_dir() -> Path:
    return cache_root() / VERSIONS_KEY


def _version_ldflags() -> str:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    stamp = {
        "gitVersion": KUBERNETES_VERSION,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
    }
    flags = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{key}={value}" for key, value in stamp.items()]
    return " ".join(flags)


def ensure_binaries(progress: Callable[[str], None] | None = None) -> Path:
    """Return the cache folder holding the control plane's binaries, building missing ones."""
    return build_go_binaries(cache_dir(), GOMOD_DIR, BINARIES, _version_ldflags(), progress)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path) -> None:
    """CA, serving and client certificates (apiserver, admin, webhook, audit client), SA key."""
    directory.mkdir(parents=True, exist_ok=True)
    days = "3650"
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=directory)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=reverserd-testbed-ca",
        "-days",
        days,
        "-out",
        "ca.crt",
        cwd=directory,
    )
    (directory / "serving.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n"
        "extendedKeyUsage=serverAuth\n"
    )
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subject, ext in (
        ("apiserver", "/CN=kube-apiserver", "serving.ext"),
        ("admin", "/O=system:masters/CN=testbed-admin-cert", "client.ext"),
        ("webhook", "/CN=reverserd-webhook", "serving.ext"),
        ("audit-client", "/CN=kube-apiserver-audit", "client.ext"),
    ):
        _openssl("genrsa", "-out", f"{name}.key", "2048", cwd=directory)
        _openssl(
            "req",
            "-new",
            "-key",
            f"{name}.key",
            "-subj",
            subject,
            "-out",
            f"{name}.csr",
            cwd=directory,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            days,
            "-extfile",
            ext,
            "-out",
            f"{name}.crt",
            cwd=directory,
        )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=directory)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)


def _kubeconfig(server: str, ca: Path, user: dict[str, str]) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "testbed", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": "user"}}],
        "current-context": "testbed",
    }
    return json.dumps(config, indent=2)


@dataclass
class ControlPlane:
    """etcd + kube-apiserver in ``workdir``; start with :meth:`start`, stop with :meth:`stop`."""

    workdir: Path
    audit_policy: Path | None = None
    audit_webhook_url: str | None = None
    audit_log: Path | None = None
    """With ``audit_policy``: also write the audit events as JSON lines to this file."""
    bin_dir: Path = field(default_factory=cache_dir)
    etcd_port: int = 0
    api_port: int = 0
    admin_token: str = ""
    daemon_token: str = ""
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def daemon_kubeconfig(self) -> Path:
        return self.workdir / "reverserd.kubeconfig"

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    def start(self) -> ControlPlane:
        self.workdir.mkdir(parents=True, exist_ok=True)
        make_pki(self.pki)
        self.admin_token = base64.urlsafe_b64encode(os.urandom(24)).decode()
        self.daemon_token = base64.urlsafe_b64encode(os.urandom(24)).decode()
        (self.workdir / "tokens.csv").write_text(
            f'{self.admin_token},{ADMIN_TOKEN_USER},uid-admin,"system:masters"\n'
            f'{self.daemon_token},{DAEMON_USER},uid-reverserd,"{DAEMON_GROUP}"\n'
        )
        self.etcd_port = free_port()
        self._start_etcd()
        self.api_port = free_port()
        self._start_apiserver()
        self._write_kubeconfigs()
        self._install_project_resources()
        return self

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(
            self.workdir / f"{name}.log", "ab"
        )  # closed here; the child keeps its own descriptor
        self._processes[name] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()

    def _start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{free_port()}"
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=testbed",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=testbed={peer}",
                # Test data is disposable; fsync would only make every test slower.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait_until("etcd", lambda: self._http_ok(f"{self.etcd_url}/health"))

    def _start_apiserver(self) -> None:
        pki = self.pki
        command = [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.api_port}",
            "--endpoint-reconciler-type=none",
            "--authorization-mode=RBAC",
            "--disable-admission-plugins=ServiceAccount",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--service-cluster-ip-range=10.0.0.0/24",
            f"--cert-dir={self.workdir / 'certs'}",
            f"--watch-cache-sizes={WATCH_CACHE_OFF_RESOURCE}#0",
        ]
        if self.audit_policy is not None:
            command.append(f"--audit-policy-file={self.audit_policy}")
        if self.audit_policy is not None and self.audit_webhook_url is not None:
            hook = self.workdir / "audit-webhook.kubeconfig"
            client = {
                "client-certificate": str(pki / "audit-client.crt"),
                "client-key": str(pki / "audit-client.key"),
            }
            hook.write_text(_kubeconfig(self.audit_webhook_url, pki / "ca.crt", client))
            command += [
                f"--audit-webhook-config-file={hook}",
                "--audit-webhook-mode=batch",
                "--audit-webhook-batch-max-wait=1s",
                # The default (10 s) leaves a batch that met a restarting reverserd far outside
                # any grace window; reverserd's README recommends the same.
                "--audit-webhook-initial-backoff=1s",
            ]
        if self.audit_policy is not None and self.audit_log is not None:
            command.append(f"--audit-log-path={self.audit_log}")
        self._spawn("kube-apiserver", command)
        self._wait_until("kube-apiserver", self._apiserver_ready)

    def restart_apiserver(self) -> None:
        """Stop and start kube-apiserver on the same port; etcd and its data stay.

        Every open watch breaks and clients must resume, which is how a test makes a daemon
        reconnect after :meth:`compact_etcd`.
        """
        with self.apiserver_down():
            pass

    @contextmanager
    def apiserver_down(self) -> Iterator[None]:
        """kube-apiserver is stopped inside the block and started again (same port) after it."""
        self._stop_process("kube-apiserver")
        try:
            yield
        finally:
            self._start_apiserver()

    def _apiserver_ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        request = urllib.request.Request(
            f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _wait_until(self, name: str, probe: Callable[[], bool]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        process = self._processes[name]
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}: {self.log_tail(name)}"
                )
            if probe():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} not ready after {READY_TIMEOUT_S} s: {self.log_tail(name)}")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def _write_kubeconfigs(self) -> None:
        ca = self.pki / "ca.crt"
        self.admin_kubeconfig.write_text(
            _kubeconfig(
                self.server,
                ca,
                {
                    "client-certificate": str(self.pki / "admin.crt"),
                    "client-key": str(self.pki / "admin.key"),
                },
            )
        )
        self.daemon_kubeconfig.write_text(
            _kubeconfig(self.server, ca, {"token": self.daemon_token})
        )

    def service_account_token(self, namespace: str, name: str) -> str:
        """A token of a new service account allowed to change anything in ``namespace``."""
        self.kubectl("create", "serviceaccount", name, "-n", namespace)
        self.kubectl(
            "create",
            "rolebinding",
            f"{name}-admin",
            "-n",
            namespace,
            "--clusterrole=cluster-admin",
            f"--serviceaccount={namespace}:{name}",
        )
        return self.kubectl("create", "token", name, "-n", namespace, "--duration=1h").strip()

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        """Run the test bed's own kubectl as admin and return its stdout."""
        result = subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={self.admin_kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def _install_project_resources(self) -> None:
        self.kubectl("apply", "-f", str(CRD_DIR))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        # The tests use generateWhenMissing, so the daemon also gets the optional Secret writes.
        for path in (RBAC_FILE, SECRET_WRITER_FILE, ADMISSION_POLICY_FILE):
            self.kubectl("apply", "-f", str(path))
        for role in ("reverserd", "reverserd-secret-writer"):
            self.kubectl(
                "create",
                "clusterrolebinding",
                f"{role}-testbed",
                f"--clusterrole={role}",
                f"--user={DAEMON_USER}",
            )
        self.kubectl(
            "create",
            "role",
            "reverserd-leader-election",
            "-n",
            LEASE_NAMESPACE,
            # list: a sharded replica finds its group's bucket and member Leases in one call.
            "--verb=get,list,create,update",
            "--resource=leases.coordination.k8s.io",
        )
        self.kubectl(
            "create",
            "rolebinding",
            "reverserd-leader-election",
            "-n",
            LEASE_NAMESPACE,
            "--role=reverserd-leader-election",
            f"--user={DAEMON_USER}",
        )

    def compact_etcd(self) -> int:
        """Compact etcd so that every resourceVersion handed out so far is expired.

        A marker key is written first: a watch resumes *after* its resourceVersion, so compacting
        only at the newest revision would still let a watch from the revision just before it
        start (and fail with an internal error instead of 410). Any watch of
        :data:`WATCH_CACHE_OFF_RESOURCE` that resumes from an older resourceVersion now receives
        ``410 Gone``. Returns the compaction revision.
        """
        marker = {"key": _b64("/reverserd-testbed/compaction-marker"), "value": _b64("x")}
        revision = int(self._etcd_call("/v3/kv/put", marker)["header"]["revision"])
        self._etcd_call("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def _etcd_call(self, path: str, body: Mapping[str, object]) -> dict[str, dict[str, str]]:
        request = urllib.request.Request(
            self.etcd_url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, dict[str, str]] = json.loads(response.read())
            return result

    def _stop_process(self, name: str) -> None:
        process = self._processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        self._stop_process("kube-apiserver")
        self._stop_process("etcd")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@contextmanager
def running_control_plane(workdir: Path | None = None) -> Iterator[ControlPlane]:
    """Build if needed, start, yield, and always stop."""
    ensure_binaries(progress=lambda message: print(f"testbed: {message}", file=sys.stderr))
    owned = workdir is None
    directory = Path(tempfile.mkdtemp(prefix="reverserd-testbed-")) if owned else workdir
    assert directory is not None
    plane = ControlPlane(directory)
    try:
        yield plane.start()
    finally:
        plane.stop()
        if owned:
            shutil.rmtree(directory, ignore_errors=True)
