"""Real Git servers on loopback, and direct access to the repositories they serve.

reverserd pushes with pygit2 over smart HTTP and SSH. How it behaves on refused credentials,
a wrong host key, a rejected push or a server outage can only be shown against servers that
speak the real protocols, so this module runs them as child processes:

* ``GitHttpServer``: lighttpd running ``git http-backend`` as CGI behind HTTP basic auth,
  with pushes enabled;
* ``GitSshServer``: OpenSSH's sshd with throwaway keys, admitting one client key and
  restricting it to ``git-shell``; it also has a second client key it does not admit, and a
  known_hosts text naming a key it does not have.

Guarantees:

* Everything the servers write (configuration, keys, logs, request buffers, repositories)
  lives under the state directory the caller passes. The one exception is sshd's
  privilege-separation directory ``/run/sshd``, whose path is compiled into sshd.
* Servers listen on 127.0.0.1 only, on a port found free when the server object is created
  and kept across ``restart()``, so URLs stay valid through an outage. ``suspended()`` plays
  the other kind of failure, a server that accepts connections but never answers.
* ``start()`` returns once the port accepts connections, or raises with the server's log.
  ``stop()`` returns once the process has exited. A server is also killed when the thread
  that started it dies, so a test run that is itself killed leaves nothing listening.
* A missing program raises ``MissingProgramError`` naming the Debian package that provides
  it; nothing is silently skipped.
* Repositories refuse non-fast-forward updates (``receive.denyNonFastForwards``), as a
  protected branch on a hosted server does: a push can never rewrite history there, so a
  client that tries is caught.

The repository helpers work on the bare repositories directly, bypassing the servers, to
arrange a starting state (``seed_repo``), to play someone else pushing in between
(``push_foreign_commit``), to make the server refuse pushes as a protected branch does
(``install_hook``), and to read what actually arrived (``branch_tip``, ``read_tree``,
``read_tree_at``, ``changed_paths``, ``log``). ``commit_files`` commits without a work tree into
any repository, a client's clone included.
"""

from __future__ import annotations

import abc
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

import pygit2
from pygit2.enums import FileMode, SortMode

LOOPBACK = "127.0.0.1"

# lighttpd and sshd bind their port within milliseconds; ten seconds absorbs a heavily loaded
# CI runner without letting a server that will never come up hang the run.
READY_TIMEOUT_S = 10.0
# Short enough that start() adds no noticeable latency, long enough not to spin a core.
READY_POLL_INTERVAL_S = 0.02
# A loopback connect is accepted or refused at once; a longer wait would only hide a hang.
CONNECT_PROBE_TIMEOUT_S = 0.5
# Both servers exit on SIGTERM at once; past this a hung server is killed rather than being
# allowed to block teardown.
STOP_GRACE_S = 5.0
# Enough of a server log to show why it failed to start without flooding the error message.
LOG_TAIL_CHARS = 4000

FOREIGN_AUTHOR = pygit2.Signature("Someone Else", "someone.else@example.invalid")
SEED_AUTHOR = pygit2.Signature("Repository Seed", "seed@example.invalid")

# Repository names end up in URLs, file paths and the git-shell command line; keeping them
# to this alphabet rules out traversal and quoting problems in all three.
_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# The hooks git receive-pack runs on the server side of a push (githooks(5)). Other names are
# refused, so a misspelt hook fails the test instead of silently never running.
SERVER_HOOKS = frozenset(
    {
        "pre-receive",
        "update",
        "proc-receive",
        "post-receive",
        "post-update",
        "reference-transaction",
        "push-to-checkout",
    }
)


class MissingProgramError(RuntimeError):
    """A program the test bed needs is not installed."""


class ServerStartError(RuntimeError):
    """A server process exited or did not accept connections in time."""


class LogEntry(NamedTuple):
    """One commit of a branch's history as ``log`` reports it."""

    sha: str
    subject: str
    body: str
    author_name: str


def _find_program(name: str, package: str, extra_dirs: tuple[str, ...] = ()) -> str:
    search_path = os.pathsep.join([os.environ.get("PATH", os.defpath), *extra_dirs])
    found = shutil.which(name, path=search_path)
    if found is None:
        raise MissingProgramError(
            f"{name} not found: install the Debian package {package} (apt-get install -y {package})"
        )
    return found


def _git_http_backend() -> str:
    git = _find_program("git", "git")
    exec_path = subprocess.run(
        [git, "--exec-path"], check=True, capture_output=True, text=True
    ).stdout.strip()
    backend = Path(exec_path) / "git-http-backend"
    if not os.access(backend, os.X_OK):
        raise MissingProgramError(
            f"{backend} not found: install the Debian package git (apt-get install -y git)"
        )
    return str(backend)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _config_path(path: Path) -> str:
    """Render a path for lighttpd's and sshd's configuration languages.

    Both take double-quoted strings, and neither has escaping rules worth relying on, so paths
    that would need escaping are refused instead.
    """
    text = str(path)
    if any(char in text for char in '"\\\n'):
        raise ValueError(f"unsupported character in path {text!r}")
    return text


def _ssh_keygen(keygen: str, key_path: Path, comment: str) -> None:
    subprocess.run(
        [keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key_path)],
        check=True,
        # An existing key makes ssh-keygen ask before overwriting; fail instead of waiting.
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def _public_key(key_path: Path) -> str:
    """The ``type base64`` part of an OpenSSH public key file, without the comment."""
    key_type, key_data = key_path.with_suffix(".pub").read_text().split()[:2]
    return f"{key_type} {key_data}"


class _GitServer(abc.ABC):
    """A server process on a fixed loopback port serving the bare repositories in repos_dir."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.repos_dir = state_dir / "repos"
        self.repos_dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_loopback_port()
        self.log_path = state_dir / "server.log"
        # Every server dies with the thread that started it (PR_SET_PDEATHSIG), so a test run
        # killed before its teardown leaves no listener behind. setpriv applies it before exec,
        # which keeps the fork free of Python code.
        self._setpriv = _find_program("setpriv", "util-linux")
        self._process: subprocess.Popen[bytes] | None = None

    @abc.abstractmethod
    def _argv(self) -> list[str]:
        """The command line that runs the server in the foreground."""

    @abc.abstractmethod
    def url(self, name: str) -> str:
        """The URL a client uses for repository ``name``."""

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until its port accepts connections."""
        if self._process is not None:
            raise RuntimeError(f"{type(self).__name__} on port {self.port} is already started")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self._setpriv, "--pdeathsig", "KILL", "--", *self._argv()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_until_ready(self._process)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server and wait for the process to exit; a no-op when it is not running."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            # A suspended server only acts on SIGTERM once it runs again.
            process.send_signal(signal.SIGCONT)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Freeze the server process (SIGSTOP) while the block runs, then let it go on.

        Its port keeps listening, so the kernel still completes the TCP handshake and queues
        the connection, but nothing is ever read or answered: a hung server, where ``stop()``
        plays one that refuses connections. Requests still queued when the block ends are
        served then.
        """
        process = self._process
        if process is None or process.poll() is not None:
            raise RuntimeError(f"{type(self).__name__} on port {self.port} is not running")
        process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise ServerStartError(
                    f"{type(self).__name__} exited with status {process.returncode}"
                    f" before accepting connections:\n{self._log_tail()}"
                )
            with contextlib.suppress(OSError):
                with socket.create_connection(
                    (LOOPBACK, self.port), timeout=CONNECT_PROBE_TIMEOUT_S
                ):
                    pass
                # Something answered. If our server has exited meanwhile, that was another
                # program holding the port, and the next round reports the exit.
                if process.poll() is None:
                    return
                continue
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"{type(self).__name__} did not accept connections on port {self.port}"
                    f" within {READY_TIMEOUT_S} s:\n{self._log_tail()}"
                )
            time.sleep(READY_POLL_INTERVAL_S)

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]

    def repo_path(self, name: str) -> Path:
        """Where repository ``name`` lives (``<repos_dir>/<name>.git``)."""
        if not _REPO_NAME.fullmatch(name):
            raise ValueError(f"repository name {name!r} does not match {_REPO_NAME.pattern}")
        return self.repos_dir / f"{name}.git"

    def create_bare_repo(self, name: str, default_branch: str = "main") -> Path:
        """Create an empty bare repository whose HEAD names ``default_branch``."""
        path = self.repo_path(name)
        if path.exists():
            raise FileExistsError(f"repository {path} already exists")
        repo = pygit2.init_repository(path, bare=True, initial_head=default_branch)
        repo.config["receive.denyNonFastForwards"] = True
        return path

    def seed_repo(self, name: str, branch: str, files: Mapping[str, bytes], message: str) -> str:
        """Commit ``files`` on ``branch`` of repository ``name`` and return the commit SHA.

        The commit goes on top of the branch tip, keeping files it does not mention. A missing
        repository is created with ``branch`` as its default branch.
        """
        path = self.repo_path(name)
        if not path.exists():
            self.create_bare_repo(name, default_branch=branch)
        return _commit_files(path, branch, files, message, SEED_AUTHOR)


class GitHttpServer(_GitServer):
    """Smart HTTP: lighttpd runs ``git http-backend`` under ``/git/`` behind basic auth.

    Requests without the right username and password get 401, so neither clone nor push
    works without them.
    """

    USERNAME = "reverserd"
    PASSWORD = "loopback-only-token"

    def __init__(self, state_dir: Path, username: str = USERNAME, password: str = PASSWORD) -> None:
        super().__init__(state_dir)
        self.username = username
        self.password = password
        self._lighttpd = _find_program("lighttpd", "lighttpd", ("/usr/sbin", "/sbin"))
        self._config_path = state_dir / "lighttpd.conf"
        self._write_config(_git_http_backend())

    def url(self, name: str) -> str:
        return f"http://{LOOPBACK}:{self.port}/git/{self.repo_path(name).name}"

    def _argv(self) -> list[str]:
        return [self._lighttpd, "-D", "-f", str(self._config_path)]

    def rotate_password(self, password: str) -> None:
        """Accept only ``password`` from now on, as a credential rotation on the server does
        (lighttpd reads its user file for every request; the server keeps running)."""
        self.password = password
        self._write_users()

    def _write_users(self) -> None:
        if ":" in self.username or "\n" in self.username + self.password:
            raise ValueError("username must not contain ':' and neither may contain newlines")
        users = self.state_dir / "htpasswd.plain"
        users.write_text(f"{self.username}:{self.password}\n")
        users.chmod(0o600)

    def _write_config(self, backend: str) -> None:
        self._write_users()
        users = self.state_dir / "htpasswd.plain"
        document_root = self.state_dir / "htdocs"
        uploads = self.state_dir / "uploads"
        document_root.mkdir(exist_ok=True)
        uploads.mkdir(exist_ok=True)
        # The error log is left at its default, stderr, which start() sends to server.log.
        # http.receivepack is switched on explicitly rather than relying on http-backend's
        # rule of enabling it for authenticated users only. Idle keep-alive connections live
        # 75 s, as behind common production front ends (lighttpd's own 5 s would cut a client
        # that spends several seconds packing a large push between two requests).
        self._config_path.write_text(
            f"""\
server.modules = ("mod_alias", "mod_setenv", "mod_auth", "mod_authn_file", "mod_cgi")
server.bind = "{LOOPBACK}"
server.port = {self.port}
server.document-root = "{_config_path(document_root)}"
server.upload-dirs = ("{_config_path(uploads)}")
server.max-keep-alive-idle = 75
alias.url = ("/git/" => "{_config_path(Path(backend))}/")
auth.backend = "plain"
auth.backend.plain.userfile = "{_config_path(users)}"
auth.require = ("/git/" => ("method" => "basic", "realm" => "git", "require" => "valid-user"))
$HTTP["url"] =^ "/git/" {{
    cgi.assign = ("" => "")
    setenv.set-environment = (
        "GIT_PROJECT_ROOT" => "{_config_path(self.repos_dir)}",
        "GIT_HTTP_EXPORT_ALL" => "1",
        "GIT_CONFIG_COUNT" => "1",
        "GIT_CONFIG_KEY_0" => "http.receivepack",
        "GIT_CONFIG_VALUE_0" => "true",
    )
}}
"""
        )


class GitSshServer(_GitServer):
    """SSH: sshd admits one client key, for the current user, and only to run ``git-shell``.

    Logging in as the current user works whether or not that is root (root may log in with a
    key only), and the forced ``git-shell`` command keeps the key from doing anything but
    fetch and push. Repository URLs carry the absolute path of the bare repository.

    ``max_auth_tries`` is sshd's ``MaxAuthTries`` (default 6): sshd hangs up on a connection
    after that many failed authentication attempts. Raise it to see how long a client keeps
    offering a refused key when the server does not end the exchange first.
    """

    def __init__(self, state_dir: Path, max_auth_tries: int = 6) -> None:
        if max_auth_tries < 1:
            raise ValueError("max_auth_tries must be at least 1")
        super().__init__(state_dir)
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self._sshd = _find_program("sshd", "openssh-server", ("/usr/sbin", "/sbin"))
        keygen = _find_program("ssh-keygen", "openssh-client")
        git_shell = _find_program("git-shell", "git")
        keys_dir = state_dir / "keys"
        keys_dir.mkdir(exist_ok=True)
        host_key = keys_dir / "host_ed25519"
        self.client_key_path = keys_dir / "client_ed25519"
        impostor_key = keys_dir / "impostor_ed25519"
        stranger_key = keys_dir / "stranger_ed25519"
        _ssh_keygen(keygen, host_key, "git test bed host key")
        _ssh_keygen(keygen, self.client_key_path, "git test bed client key")
        _ssh_keygen(keygen, impostor_key, "a host key the server does not have")
        _ssh_keygen(keygen, stranger_key, "a client key the server does not admit")

        self.host_public_key = _public_key(host_key)
        self.client_public_key = _public_key(self.client_key_path)
        self.client_private_key = self.client_key_path.read_text()
        self.stranger_private_key = stranger_key.read_text()
        """A well-formed client key that is not in authorized_keys."""
        self.known_hosts = f"[{LOOPBACK}]:{self.port} {self.host_public_key}\n"
        self.wrong_known_hosts = f"[{LOOPBACK}]:{self.port} {_public_key(impostor_key)}\n"

        authorized_keys = state_dir / "authorized_keys"
        authorized_keys.write_text(
            f'command="{git_shell} -c \\"$SSH_ORIGINAL_COMMAND\\"",restrict'
            f" {self.client_public_key}\n"
        )
        self._config_path = state_dir / "sshd_config"
        # StrictModes would refuse authorized_keys because a directory on its path (/tmp) is
        # world-writable. UsePAM is off because PAM's session modules fail in containers and
        # nothing here needs them.
        self._config_path.write_text(
            f"""\
ListenAddress {LOOPBACK}:{self.port}
HostKey "{_config_path(host_key)}"
PidFile none
AuthorizedKeysFile "{_config_path(authorized_keys)}"
AllowUsers {self.user}
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
MaxAuthTries {max_auth_tries}
LogLevel VERBOSE
"""
        )

    def url(self, name: str) -> str:
        return f"ssh://{self.user}@{LOOPBACK}:{self.port}{self.repo_path(name)}"

    def _argv(self) -> list[str]:
        if os.geteuid() == 0:
            # sshd refuses to start as root without its privilege-separation directory, and
            # minimal images do not ship it.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        return [self._sshd, "-D", "-e", "-f", str(self._config_path)]


@contextlib.contextmanager
def libgit2_known_hosts(known_hosts: str, home: Path) -> Iterator[None]:
    """Have libgit2 judge SSH host keys against ``known_hosts`` while the block runs.

    pygit2 passes ``certificate_check`` no key for SSH (``certificate`` is always None), but
    libgit2 compares the server's key with ``<home directory>/.ssh/known_hosts`` itself and
    passes the verdict as ``valid``. This writes ``known_hosts`` to ``home/.ssh/known_hosts``
    and points libgit2's home directory there. A callback that returns ``valid`` then accepts
    exactly the keys listed. libgit2's home directory is process-wide, so the previous one is
    restored on exit.
    """
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    (ssh_dir / "known_hosts").write_text(known_hosts)
    previous = pygit2.settings.homedir
    pygit2.settings.homedir = str(home)
    try:
        yield
    finally:
        # libgit2 reports an undeterminable home directory as "" and pygit2 types it None.
        pygit2.settings.homedir = previous or ""


def commit_files(
    repo: pygit2.Repository,
    branch: str,
    files: Mapping[str, bytes | None],
    message: str,
    author: pygit2.Signature,
) -> pygit2.Oid:
    """Commit ``files`` on top of ``branch`` of ``repo`` (bare or not), without a work tree.

    A content of None deletes the file. Files the commit does not mention stay as they are; a
    missing branch is created with this as its first commit. ``author`` also commits. Returns
    the new commit's id.
    """
    ref_name = f"refs/heads/{branch}"
    index = pygit2.Index()
    parents: list[pygit2.Oid] = []
    tip = repo.references.get(ref_name)
    if tip is not None:
        parent = repo[tip.target].peel(pygit2.Commit)
        index.read_tree(parent.tree)
        parents.append(parent.id)
    for file_path, content in files.items():
        if content is None:
            index.remove(file_path)
        else:
            index.add(pygit2.IndexEntry(file_path, repo.create_blob(content), FileMode.BLOB))
    # create_commit moves the branch only if its tip is still the parent read above, so a push
    # arriving meanwhile makes this fail instead of being overwritten.
    tree_id = index.write_tree(repo)
    oid: pygit2.Oid = repo.create_commit(ref_name, author, author, message, tree_id, parents)
    return oid


def _commit_files(
    repo_path: Path,
    branch: str,
    files: Mapping[str, bytes | None],
    message: str,
    author: pygit2.Signature,
) -> str:
    return str(commit_files(pygit2.Repository(str(repo_path)), branch, files, message, author))


def push_foreign_commit(
    repo_path: Path, branch: str, path: str, content: bytes, message: str
) -> str:
    """Play someone else pushing: commit ``path`` on top of ``branch`` in the bare repository.

    The commit is authored by ``FOREIGN_AUTHOR``. Returns its SHA.
    """
    return _commit_files(repo_path, branch, {path: content}, message, FOREIGN_AUTHOR)


def verify_commit(
    repo_path: Path, sha: str, email: str, public_key: str, scratch: Path
) -> subprocess.CompletedProcess[str]:
    """``git verify-commit`` of ``sha`` in the repository at ``repo_path``, trusting only
    ``public_key`` (authorized_keys form) as the SSH signing key of ``email``; an
    allowed-signers file for that is written into ``scratch``. Returns git's result (its
    verdict is on stderr)."""
    allowed = scratch / "allowed_signers"
    allowed.write_text(f"{email} {public_key}\n")
    return subprocess.run(
        [
            "git",
            f"--git-dir={repo_path}",
            "-c",
            "gpg.format=ssh",
            "-c",
            f"gpg.ssh.allowedSignersFile={allowed}",
            "verify-commit",
            sha,
        ],
        capture_output=True,
        text=True,
    )


@dataclass(frozen=True)
class OpenPGPKeyring:
    """A GnuPG home made by ``gpg`` holding one new key pair, and that key's armored export."""

    home: Path
    private_key: str
    fingerprint: str

    def close(self) -> None:
        """Stop the gpg-agent ``gpg`` started for this home, and remove the home."""
        subprocess.run(
            ["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"], capture_output=True
        )
        shutil.rmtree(self.home, ignore_errors=True)


def openpgp_keyring(algorithm: str, email: str, passphrase: str = "") -> OpenPGPKeyring:
    """A new OpenPGP key (``gpg --quick-gen-key`` ``algorithm``: ``rsa2048``, ``ed25519``,
    ``future-default``) in a fresh GnuPG home, exported as ``gpg --export-secret-keys --armor``
    writes it (protected by ``passphrase`` unless empty). The home is under the system temporary
    directory: gpg-agent's socket path must stay short. Call :meth:`OpenPGPKeyring.close`."""
    home = Path(tempfile.mkdtemp(prefix="gpg-"))
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback"]
    secret = ["--passphrase", passphrase]
    subprocess.run(
        [*gpg, *secret, "--quick-gen-key", f"Signer <{email}>", algorithm, "sign", "never"],
        capture_output=True,
        check=True,
    )
    exported = subprocess.run(
        [*gpg, *secret, "--armor", "--export-secret-keys", email],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    listing = subprocess.run(
        [*gpg, "--with-colons", "--list-keys", email], capture_output=True, text=True, check=True
    ).stdout
    fingerprint = next(
        line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")
    )
    return OpenPGPKeyring(home, exported, fingerprint)


def verify_commit_openpgp(
    repo_path: Path, sha: str, keyring: Path
) -> subprocess.CompletedProcess[str]:
    """``git verify-commit`` of ``sha`` with ``gpg.format=openpgp``, trusting the GnuPG home
    ``keyring``. Returns git's result (gpg's verdict is on stderr)."""
    return subprocess.run(
        ["git", f"--git-dir={repo_path}", "-c", "gpg.format=openpgp", "verify-commit", sha],
        capture_output=True,
        text=True,
        env={**os.environ, "GNUPGHOME": str(keyring)},
    )


def push_foreign_changes(
    repo_path: Path, branch: str, files: Mapping[str, bytes | None], message: str
) -> str:
    """Play a person editing the branch: one commit by ``FOREIGN_AUTHOR`` writing ``files``
    (None deletes the file) on top of ``branch``. Returns its SHA."""
    return _commit_files(repo_path, branch, files, message, FOREIGN_AUTHOR)


def install_hook(repo_path: Path, name: str, script: str) -> Path:
    """Make ``script`` the server-side hook ``name`` of the bare repository at ``repo_path``.

    Both servers run git receive-pack, which runs the hook for every push that reaches it;
    a ``pre-receive`` hook exiting non-zero refuses the whole push, as a branch protection
    rule does; what it prints to stderr reaches the client as progress output. ``script``
    must start with ``#!``. An existing hook of that name is replaced. Returns its path.
    """
    if name not in SERVER_HOOKS:
        raise ValueError(f"{name!r} is not a server-side hook: one of {sorted(SERVER_HOOKS)}")
    if not script.startswith("#!"):
        raise ValueError("a hook script must start with an interpreter line (#!)")
    if not (repo_path / "HEAD").is_file():
        raise FileNotFoundError(f"no bare repository at {repo_path}")
    hooks = repo_path / "hooks"
    hooks.mkdir(exist_ok=True)
    hook = hooks / name
    hook.write_text(script)
    hook.chmod(0o755)
    return hook


def branch_tip(repo_path: Path, branch: str) -> str | None:
    """The SHA ``branch`` points at, or None if the branch does not exist."""
    ref = pygit2.Repository(str(repo_path)).references.get(f"refs/heads/{branch}")
    return None if ref is None else str(ref.target)


def _branch_commit(repo: pygit2.Repository, branch: str) -> pygit2.Commit:
    ref = repo.references.get(f"refs/heads/{branch}")
    if ref is None:
        raise LookupError(f"branch {branch!r} does not exist in {repo.path}")
    return repo[ref.target].peel(pygit2.Commit)


def _files(repo: pygit2.Repository, commit: pygit2.Commit) -> dict[str, bytes]:
    files: dict[str, bytes] = {}

    def collect(tree: pygit2.Tree, prefix: str) -> None:
        for entry in tree:
            obj = repo[entry.id]
            if isinstance(obj, pygit2.Tree):
                collect(obj, f"{prefix}{entry.name}/")
            elif isinstance(obj, pygit2.Blob):
                files[f"{prefix}{entry.name}"] = obj.data

    collect(commit.tree, "")
    return files


def read_tree(repo_path: Path, branch: str) -> dict[str, bytes]:
    """Every file on ``branch``, by slash-separated path. Raises LookupError if it is missing."""
    repo = pygit2.Repository(str(repo_path))
    return _files(repo, _branch_commit(repo, branch))


def read_tree_at(repo_path: Path, sha: str) -> dict[str, bytes]:
    """Every file of the commit ``sha``, by slash-separated path."""
    repo = pygit2.Repository(str(repo_path))
    return _files(repo, repo[sha].peel(pygit2.Commit))


def changed_paths(repo_path: Path, sha: str) -> set[str]:
    """Paths the commit ``sha`` added, changed or removed compared with its first parent."""
    commit = pygit2.Repository(str(repo_path))[sha].peel(pygit2.Commit)
    if commit.parents:
        diff = commit.parents[0].tree.diff_to_tree(commit.tree)
    else:
        diff = commit.tree.diff_to_tree(swap=True)
    return {delta.new_file.path for delta in diff.deltas} | {
        delta.old_file.path for delta in diff.deltas
    }


def log(repo_path: Path, branch: str) -> list[LogEntry]:
    """The history of ``branch``, newest first. Raises LookupError if it is missing."""
    repo = pygit2.Repository(str(repo_path))
    entries: list[LogEntry] = []
    for commit in repo.walk(_branch_commit(repo, branch).id, SortMode.TOPOLOGICAL | SortMode.TIME):
        subject, _, rest = commit.message.partition("\n")
        entries.append(LogEntry(str(commit.id), subject, rest.strip("\n"), commit.author.name))
    return entries


class Authorship(NamedTuple):
    """Who a commit is by, and its message."""

    message: str
    author_name: str
    author_email: str
    committer_name: str


def authorship(repo_path: Path, branch: str) -> list[Authorship]:
    """Author, committer and message of each commit of ``branch``, newest first; empty while
    the branch does not exist."""
    repo = pygit2.Repository(str(repo_path))
    if repo.references.get(f"refs/heads/{branch}") is None:
        return []
    return [
        Authorship(commit.message, commit.author.name, commit.author.email, commit.committer.name)
        for commit in repo.walk(
            _branch_commit(repo, branch).id, SortMode.TOPOLOGICAL | SortMode.TIME
        )
    ]
