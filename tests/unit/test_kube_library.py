"""The daemon imports only the parts of kubernetes-asyncio it uses, and they work.

Each check runs in a fresh interpreter: what a module imports shows in ``sys.modules`` only
before anything else in the process imported the library whole.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: bed
  cluster:
    server: https://127.0.0.1:6443
    insecure-skip-tls-verify: true
users:
- name: reader
  user:
    token: secret-token
contexts:
- name: bed
  context: {cluster: bed, user: reader}
current-context: bed
"""


def run_fresh(code: str, tmp_path: Path) -> str:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(kubeconfig)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_daemon_connects_without_importing_generated_api_and_model_classes(
    tmp_path: Path,
) -> None:
    out = run_fresh(
        """
        import asyncio, sys
        from pathlib import Path
        import reverserd.cli, reverserd.daemon
        from reverserd.kube.client import KubeClient

        async def main():
            client = await KubeClient.connect(Path(sys.argv[1]))
            headers = {}
            await client.api.update_params_for_auth(headers, [], ["BearerToken"])
            print(client.server, headers["authorization"])
            await client.close()

        asyncio.run(main())
        prefixes = ("kubernetes_asyncio.client.models.", "kubernetes_asyncio.client.api.")
        generated = sorted(name for name in sys.modules if name.startswith(prefixes))
        print(len(generated), generated[:3])
        """,
        tmp_path,
    )
    assert out.splitlines() == ["https://127.0.0.1:6443 Bearer secret-token", "0 []"]


def test_other_users_of_the_library_still_get_all_of_it(tmp_path: Path) -> None:
    out = run_fresh(
        """
        from reverserd.kube import library
        import kubernetes_asyncio
        from kubernetes_asyncio import client, watch
        from kubernetes_asyncio.client.models import V1ConfigMap
        print(client.CoreV1Api.__name__, V1ConfigMap.__name__, watch.Watch.__name__)
        print(client.Configuration is library.Configuration, kubernetes_asyncio.__version__ != "")
        """,
        tmp_path,
    )
    assert out.splitlines() == ["CoreV1Api V1ConfigMap Watch", "True True"]


def test_the_daemon_imports_no_cryptography_until_a_key_or_certificate_is_read(
    tmp_path: Path,
) -> None:
    """The cryptography package (and bcrypt) cost about 9 MB of RSS, paramiko with them about
    14 MB; only signing commits, reading a peer certificate and pushing over SSH need them, so
    neither the CLI nor the daemon imports them."""
    out = run_fresh(
        """
        import sys
        import reverserd.cli, reverserd.daemon
        prefixes = ("cryptography", "bcrypt", "paramiko")
        print(sorted(n for n in sys.modules if n.startswith(prefixes))[:3])
        from reverserd.git import CommitSigner
        CommitSigner.generate()
        print("cryptography" in sys.modules)
        """,
        tmp_path,
    )
    assert out.splitlines() == ["[]", "True"]


def test_the_webhook_process_loads_neither_libgit2_nor_cryptography(tmp_path: Path) -> None:
    """The webhook process only receives facts, stores them and logs: pygit2 (libgit2 and its
    own OpenSSL, about 11 MB) and cryptography are the daemon's, and would be paid for twice."""
    out = run_fresh(
        """
        import sys
        import reverserd.attribution.webhook_process
        print(sorted(n for n in sys.modules if n.startswith(("pygit2", "cryptography")))[:3])
        """,
        tmp_path,
    )
    assert out.splitlines() == ["[]"]
