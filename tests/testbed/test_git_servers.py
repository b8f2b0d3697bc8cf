"""The Git servers of the test bed behave like real ones towards a pygit2 client.

Every test pushes with pygit2 the way reverserd's committer does (a bare clone, commits built
without a work tree, ``Remote.push``) and checks the outcome in the server's repository.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pygit2
import pytest
from pygit2.enums import CredentialType

from testbed.gitservers import (
    FOREIGN_AUTHOR,
    LOOPBACK,
    SEED_AUTHOR,
    GitHttpServer,
    GitSshServer,
    LogEntry,
    MissingProgramError,
    branch_tip,
    commit_files,
    install_hook,
    libgit2_known_hosts,
    log,
    push_foreign_commit,
    read_tree,
)

# The test's own HTTP requests go to loopback; anything slower than this is a hung server.
HTTP_REQUEST_TIMEOUT_S = 5.0

CLIENT = pygit2.Signature("reverserd", "reverserd@example.invalid")

Credential = pygit2.UserPass | pygit2.KeypairFromMemory


class CredentialsRejected(Exception):
    """The server refused the credentials offered: libgit2 asked for them a second time."""


class ClientCallbacks(pygit2.RemoteCallbacks):
    """Callbacks for one clone or push, recording what the server and libgit2 decided.

    Credentials are offered once. libgit2 asks again only after the server refused them, and
    offering the same ones again would only repeat the refusal: lighttpd delays every refusal
    by a second and libgit2 gives up after fifteen. An SSH host key is accepted exactly when
    libgit2 found it in known_hosts (see ``libgit2_known_hosts``).
    """

    def __init__(self, credential: Credential) -> None:
        super().__init__()
        self._credential = credential
        self.credential_requests = 0
        self.certificate_checks: list[tuple[object, bool, bytes]] = []
        self.rejected_refs: dict[str, str] = {}

    def credentials(
        self, url: str, username_from_url: str | None, allowed_types: CredentialType
    ) -> Credential:
        self.credential_requests += 1
        if self.credential_requests > 1:
            raise CredentialsRejected(url)
        return self._credential

    def certificate_check(self, certificate: None, valid: bool, host: bytes) -> bool:
        self.certificate_checks.append((certificate, valid, host))
        return valid

    def push_update_reference(self, refname: str, message: str | None) -> None:
        # pygit2 does not raise when the server refuses a ref; this is the only place the
        # refusal shows.
        if message is not None:
            self.rejected_refs[refname] = message


def http_callbacks(server: GitHttpServer, password: str | None = None) -> ClientCallbacks:
    return ClientCallbacks(pygit2.UserPass(server.username, password or server.password))


def ssh_callbacks(server: GitSshServer) -> ClientCallbacks:
    return ClientCallbacks(
        pygit2.KeypairFromMemory(
            server.user, server.client_public_key, server.client_private_key, ""
        )
    )


def clone(url: str, dest: Path, callbacks: pygit2.RemoteCallbacks) -> pygit2.Repository:
    return pygit2.clone_repository(url, str(dest), bare=True, callbacks=callbacks)


def commit_locally(
    repo: pygit2.Repository, branch: str, files: Mapping[str, bytes], message: str
) -> str:
    """Commit ``files`` on top of the local ``branch`` of a bare clone; returns the SHA."""
    return str(commit_files(repo, branch, files, message, CLIENT))


def push(
    repo: pygit2.Repository, branch: str, callbacks: pygit2.RemoteCallbacks, force: bool = False
) -> None:
    refspec = f"{'+' if force else ''}refs/heads/{branch}:refs/heads/{branch}"
    repo.remotes["origin"].push([refspec], callbacks=callbacks)


@pytest.fixture
def trusted_ssh_host(git_ssh: GitSshServer, tmp_path: Path) -> Iterator[None]:
    """libgit2 trusts exactly the shared SSH server's real host key."""
    with libgit2_known_hosts(git_ssh.known_hosts, tmp_path / "trusting-home"):
        yield


def _status_of_info_refs(server: GitHttpServer, name: str, authorization: str | None) -> int:
    request = urllib.request.Request(f"{server.url(name)}/info/refs?service=git-receive-pack")
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_REQUEST_TIMEOUT_S) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def test_repository_helpers_report_what_was_committed(
    git_http: GitHttpServer, git_repo_name: str
) -> None:
    first = git_http.seed_repo(git_repo_name, "main", {"a/b/one.yaml": b"1\n"}, "Seed one")
    second = git_http.seed_repo(
        git_repo_name, "main", {"two.yaml": b"2\n"}, "Seed two\n\nWith a body.\n"
    )
    path = git_http.repo_path(git_repo_name)
    foreign = push_foreign_commit(path, "main", "a/three.yaml", b"3\n", "Foreign three")

    assert branch_tip(path, "main") == foreign
    assert branch_tip(path, "absent") is None
    assert read_tree(path, "main") == {
        "a/b/one.yaml": b"1\n",
        "two.yaml": b"2\n",
        "a/three.yaml": b"3\n",
    }
    assert log(path, "main") == [
        LogEntry(foreign, "Foreign three", "", FOREIGN_AUTHOR.name),
        LogEntry(second, "Seed two", "With a body.", SEED_AUTHOR.name),
        LogEntry(first, "Seed one", "", SEED_AUTHOR.name),
    ]
    with pytest.raises(LookupError):
        read_tree(path, "absent")


def test_http_refuses_requests_without_the_right_credentials(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path
) -> None:
    git_http.seed_repo(git_repo_name, "main", {"f": b"x"}, "Seed")

    assert _status_of_info_refs(git_http, git_repo_name, None) == 401
    wrong = _basic(git_http.username, "wrong-" + git_http.password)
    assert _status_of_info_refs(git_http, git_repo_name, wrong) == 401
    right = _basic(git_http.username, git_http.password)
    assert _status_of_info_refs(git_http, git_repo_name, right) == 200

    with pytest.raises(pygit2.GitError):
        clone(git_http.url(git_repo_name), tmp_path / "clone", pygit2.RemoteCallbacks())


def test_http_push_with_credentials_reaches_the_server(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path
) -> None:
    git_http.seed_repo(git_repo_name, "main", {"README.md": b"# seeded\n"}, "Seed")
    repo = clone(git_http.url(git_repo_name), tmp_path / "clone", http_callbacks(git_http))
    pushed = commit_locally(repo, "main", {"apps/cm.yaml": b"kind: ConfigMap\n"}, "[CREATE] cm")

    callbacks = http_callbacks(git_http)
    push(repo, "main", callbacks)

    assert callbacks.rejected_refs == {}
    server_repo = git_http.repo_path(git_repo_name)
    assert branch_tip(server_repo, "main") == pushed
    assert read_tree(server_repo, "main") == {
        "README.md": b"# seeded\n",
        "apps/cm.yaml": b"kind: ConfigMap\n",
    }
    assert log(server_repo, "main")[0] == LogEntry(pushed, "[CREATE] cm", "", CLIENT.name)


def test_http_push_with_wrong_password_is_refused(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path
) -> None:
    seeded = git_http.seed_repo(git_repo_name, "main", {"f": b"x"}, "Seed")
    repo = clone(git_http.url(git_repo_name), tmp_path / "clone", http_callbacks(git_http))
    commit_locally(repo, "main", {"f": b"changed"}, "Change")

    callbacks = http_callbacks(git_http, password="wrong-" + git_http.password)
    with pytest.raises(CredentialsRejected):
        push(repo, "main", callbacks)

    assert callbacks.credential_requests == 2
    assert branch_tip(git_http.repo_path(git_repo_name), "main") == seeded


def test_ssh_push_with_known_host_key_reaches_the_server(
    git_ssh: GitSshServer, git_repo_name: str, tmp_path: Path, trusted_ssh_host: None
) -> None:
    git_ssh.seed_repo(git_repo_name, "main", {"README.md": b"# seeded\n"}, "Seed")
    repo = clone(git_ssh.url(git_repo_name), tmp_path / "clone", ssh_callbacks(git_ssh))
    pushed = commit_locally(repo, "main", {"apps/cm.yaml": b"kind: ConfigMap\n"}, "[CREATE] cm")

    callbacks = ssh_callbacks(git_ssh)
    push(repo, "main", callbacks)

    # pygit2 hands over no key for SSH; the verdict is libgit2's own known_hosts lookup.
    assert callbacks.certificate_checks == [(None, True, b"127.0.0.1")]
    assert callbacks.rejected_refs == {}
    server_repo = git_ssh.repo_path(git_repo_name)
    assert branch_tip(server_repo, "main") == pushed
    assert read_tree(server_repo, "main")["apps/cm.yaml"] == b"kind: ConfigMap\n"


@pytest.mark.parametrize("known_hosts", ["impostor", "empty"])
def test_ssh_push_to_a_host_with_an_unknown_key_is_refused(
    git_ssh: GitSshServer, git_repo_name: str, tmp_path: Path, known_hosts: str
) -> None:
    seeded = git_ssh.seed_repo(git_repo_name, "main", {"f": b"x"}, "Seed")
    with libgit2_known_hosts(git_ssh.known_hosts, tmp_path / "trusting-home"):
        repo = clone(git_ssh.url(git_repo_name), tmp_path / "clone", ssh_callbacks(git_ssh))
    commit_locally(repo, "main", {"f": b"changed"}, "Change")

    content = git_ssh.wrong_known_hosts if known_hosts == "impostor" else ""
    callbacks = ssh_callbacks(git_ssh)
    with libgit2_known_hosts(content, tmp_path / "distrusting-home"):
        with pytest.raises(pygit2.CertificateError):
            push(repo, "main", callbacks)

    assert callbacks.certificate_checks == [(None, False, b"127.0.0.1")]
    assert callbacks.credential_requests == 0
    assert branch_tip(git_ssh.repo_path(git_repo_name), "main") == seeded


def test_ssh_refuses_the_client_key_it_does_not_admit(
    git_ssh: GitSshServer, git_repo_name: str, tmp_path: Path, trusted_ssh_host: None
) -> None:
    git_ssh.seed_repo(git_repo_name, "main", {"f": b"x"}, "Seed")
    assert git_ssh.stranger_private_key != git_ssh.client_private_key
    stranger = ClientCallbacks(
        pygit2.KeypairFromMemory(git_ssh.user, None, git_ssh.stranger_private_key, "")
    )

    with pytest.raises(CredentialsRejected):
        clone(git_ssh.url(git_repo_name), tmp_path / "clone", stranger)

    assert stranger.credential_requests == 2


def test_pygit2_accepts_any_ssh_host_key_unless_certificate_check_is_overridden(
    git_ssh: GitSshServer, git_repo_name: str, tmp_path: Path
) -> None:
    """Pins why every SSH client of the project must override certificate_check.

    pygit2's default certificate_check defers to libgit2, and pygit2 turns that deferral into
    acceptance for SSH, whatever libgit2 found in known_hosts.
    """
    git_ssh.seed_repo(git_repo_name, "main", {"f": b"x"}, "Seed")
    key = pygit2.KeypairFromMemory(
        git_ssh.user, git_ssh.client_public_key, git_ssh.client_private_key, ""
    )
    with libgit2_known_hosts(git_ssh.wrong_known_hosts, tmp_path / "distrusting-home"):
        repo = clone(git_ssh.url(git_repo_name), tmp_path / "clone", pygit2.RemoteCallbacks(key))

    assert str(repo.references["refs/heads/main"].target) == branch_tip(
        git_ssh.repo_path(git_repo_name), "main"
    )


def behind_a_foreign_commit(
    server: GitHttpServer, name: str, tmp_path: Path
) -> tuple[pygit2.Repository, Path, str]:
    """A clone with a local commit made after someone else pushed on top of what it cloned.

    Returns the clone, the server's repository and the foreign commit.
    """
    server.seed_repo(name, "main", {"f": b"x"}, "Seed")
    repo = clone(server.url(name), tmp_path / "clone", http_callbacks(server))
    server_repo = server.repo_path(name)
    foreign = push_foreign_commit(server_repo, "main", "human.md", b"hi\n", "Human edit")
    commit_locally(repo, "main", {"f": b"ours"}, "Ours")
    return repo, server_repo, foreign


def test_push_behind_a_foreign_commit_is_refused_by_the_client(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path
) -> None:
    repo, server_repo, foreign = behind_a_foreign_commit(git_http, git_repo_name, tmp_path)

    with pytest.raises(pygit2.GitError, match="not present locally"):
        push(repo, "main", http_callbacks(git_http))

    assert branch_tip(server_repo, "main") == foreign


def test_forced_push_behind_a_foreign_commit_is_refused_by_the_server(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path
) -> None:
    repo, server_repo, foreign = behind_a_foreign_commit(git_http, git_repo_name, tmp_path)

    callbacks = http_callbacks(git_http)
    push(repo, "main", callbacks, force=True)

    assert callbacks.rejected_refs == {"refs/heads/main": "non-fast-forward"}
    assert branch_tip(server_repo, "main") == foreign
    assert read_tree(server_repo, "main")["human.md"] == b"hi\n"


@pytest.mark.parametrize("protocol", ["http", "ssh"])
def test_outage_refuses_pushes_until_the_server_is_back_on_the_same_url(
    protocol: str, tmp_path: Path
) -> None:
    # An own server: stopping a shared one would fail whichever test ran during the outage.
    server: GitHttpServer | GitSshServer
    if protocol == "http":
        server = GitHttpServer(tmp_path / "server")
    else:
        server = GitSshServer(tmp_path / "server")

    def callbacks() -> ClientCallbacks:
        if isinstance(server, GitHttpServer):
            return http_callbacks(server)
        return ssh_callbacks(server)

    trust: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if isinstance(server, GitSshServer):
        trust = libgit2_known_hosts(server.known_hosts, tmp_path / "trusting-home")
    with server, trust:
        server.seed_repo("outage", "main", {"f": b"0"}, "Seed")
        url, port = server.url("outage"), server.port
        repo = clone(url, tmp_path / "clone", callbacks())
        server_repo = server.repo_path("outage")

        server.stop()
        assert not server.running
        during_outage = commit_locally(repo, "main", {"f": b"1"}, "During the outage")
        with pytest.raises(pygit2.GitError, match="Connection refused"):
            push(repo, "main", callbacks())
        assert branch_tip(server_repo, "main") != during_outage

        server.start()
        assert (server.url("outage"), server.port) == (url, port)
        push(repo, "main", callbacks())
        assert branch_tip(server_repo, "main") == during_outage

        server.restart()
        after_restart = commit_locally(repo, "main", {"f": b"2"}, "After restart()")
        push(repo, "main", callbacks())
        assert branch_tip(server_repo, "main") == after_restart
    assert not server.running


def test_suspended_server_accepts_connections_but_answers_only_once_resumed(
    tmp_path: Path,
) -> None:
    with GitHttpServer(tmp_path / "server") as server:
        server.seed_repo("hung", "main", {"f": b"0"}, "Seed")
        request = b"GET /git/hung.git/info/refs HTTP/1.0\r\n\r\n"

        with server.suspended(), socket.create_connection((LOOPBACK, server.port)) as hung:
            hung.settimeout(0.5)
            hung.sendall(request)
            with pytest.raises(TimeoutError):
                hung.recv(1)
            assert server.running

        right = _basic(server.username, server.password)
        assert _status_of_info_refs(server, "hung", right) == 200
        with server.suspended():
            server.stop()
        assert not server.running


def test_installed_pre_receive_hook_refuses_pushes(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path
) -> None:
    seeded = git_http.seed_repo(git_repo_name, "main", {"f": b"x"}, "Seed")
    server_repo = git_http.repo_path(git_repo_name)
    install_hook(server_repo, "pre-receive", "#!/bin/sh\necho 'main is frozen' >&2\nexit 1\n")
    repo = clone(git_http.url(git_repo_name), tmp_path / "clone", http_callbacks(git_http))
    commit_locally(repo, "main", {"f": b"changed"}, "Change")

    callbacks = http_callbacks(git_http)
    push(repo, "main", callbacks)

    assert callbacks.rejected_refs == {"refs/heads/main": "pre-receive hook declined"}
    assert branch_tip(server_repo, "main") == seeded
    with pytest.raises(ValueError, match="not a server-side hook"):
        install_hook(server_repo, "pre-recieve", "#!/bin/sh\nexit 1\n")
    with pytest.raises(ValueError, match="interpreter line"):
        install_hook(server_repo, "pre-receive", "exit 1\n")


def test_empty_repository_gets_its_default_branch_from_the_first_push(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path
) -> None:
    server_repo = git_http.create_bare_repo(git_repo_name, default_branch="trunk")
    assert pygit2.Repository(str(server_repo)).references["HEAD"].target == "refs/heads/trunk"

    repo = clone(git_http.url(git_repo_name), tmp_path / "clone", http_callbacks(git_http))
    assert repo.is_empty
    pushed = commit_locally(repo, "trunk", {"first.yaml": b"1\n"}, "First")
    push(repo, "trunk", http_callbacks(git_http))

    assert branch_tip(server_repo, "trunk") == pushed
    assert branch_tip(server_repo, "main") is None
    heads = repo.remotes["origin"].list_heads(callbacks=http_callbacks(git_http))
    assert {(head.name, head.symref_target) for head in heads} == {
        ("HEAD", "refs/heads/trunk"),
        ("refs/heads/trunk", None),
    }


def test_a_missing_program_names_the_package_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(MissingProgramError, match="apt-get install -y util-linux"):
        GitHttpServer(tmp_path / "server")
