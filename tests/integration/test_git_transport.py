"""reverserd.git over the network: BranchRepository against the test bed's real Git servers.

Every test fetches and pushes through :class:`BranchRepository` the way the committer does, over
smart HTTP (lighttpd, ``git http-backend``, basic auth) or SSH (sshd, ``git-shell``, verified
host keys), then reads what actually arrived straight from the server's bare repository
(``branch_tip``, ``log``, ``read_tree``). The shared servers ``git_http`` and ``git_ssh`` serve
most tests, each in a repository of its own; a test that stops or freezes a server runs its own.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reverserd.git import (
    BranchRepository,
    CredentialsError,
    GitCredentials,
    PushDeclined,
    PushRejected,
    RemoteUnavailable,
    configure_network_timeouts,
    prove_push_access,
)
from reverserd.git.credentials import MAX_CREDENTIAL_REQUESTS
from testbed.gitservers import (
    FOREIGN_AUTHOR,
    LOOPBACK,
    SEED_AUTHOR,
    GitHttpServer,
    GitSshServer,
    branch_tip,
    install_hook,
    log,
    push_foreign_commit,
    read_tree,
)
from tests.conftest import AUTHOR, write

GitServer = GitHttpServer | GitSshServer


# -- helpers -------------------------------------------------------------------------------


def http_credentials(server: GitHttpServer, password: str | None = None) -> GitCredentials:
    return GitCredentials(
        username=server.username,
        password=server.password if password is None else password,
    )


def ssh_credentials(server: GitSshServer, known_hosts: str | None = None) -> GitCredentials:
    return GitCredentials(
        ssh_private_key=server.client_private_key,
        known_hosts=server.known_hosts if known_hosts is None else known_hosts,
    )


def credentials_for(server: GitServer) -> GitCredentials:
    """What a correctly configured provider holds for ``server``."""
    if isinstance(server, GitHttpServer):
        return http_credentials(server)
    return ssh_credentials(server)


def secrets_of(server: GitServer) -> tuple[str, ...]:
    if isinstance(server, GitHttpServer):
        return (server.password,)
    return (server.client_private_key, server.stranger_private_key)


def repository_for(
    tmp_path: Path,
    server: GitServer,
    name: str,
    branch: str = "main",
    credentials: GitCredentials | None = None,
) -> BranchRepository:
    return BranchRepository(
        tmp_path / "clone",
        server.url(name),
        branch,
        credentials if credentials is not None else credentials_for(server),
    )


def history(server_repo: Path, branch: str) -> list[tuple[str, str, str]]:
    """(sha, subject, author) of every commit on the server branch, newest first."""
    return [(entry.sha, entry.subject, entry.author_name) for entry in log(server_repo, branch)]


def subjects(server: GitServer, name: str, branch: str = "main") -> list[str]:
    return [entry.subject for entry in log(server.repo_path(name), branch)]


def assert_no_secret_in(error: BaseException, server: GitServer) -> None:
    shown = f"{error}\n{error!r}"
    for secret in secrets_of(server):
        assert secret not in shown


@pytest.fixture(params=["http", "ssh"])
def git_server(request: pytest.FixtureRequest) -> GitServer:
    """The shared server of each transport in turn."""
    server: GitServer = request.getfixturevalue(f"git_{request.param}")
    return server


@pytest.fixture(params=["http", "ssh"])
def own_git_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GitServer]:
    """A running server of each transport in turn that only this test uses, free to stop."""
    server: GitServer
    if request.param == "http":
        server = GitHttpServer(tmp_path / "server")
    else:
        server = GitSshServer(tmp_path / "server")
    with server:
        yield server


@contextmanager
def short_network_timeouts() -> Iterator[None]:
    """Short socket timeouts, only while a test waits on a server that never answers: a loaded
    machine must not make the surrounding normal operations time out."""
    configure_network_timeouts(connect_ms=1_000, io_ms=500)
    try:
        yield
    finally:
        configure_network_timeouts()


# -- HTTP authentication -------------------------------------------------------------------


def test_http_push_with_the_right_password_moves_the_server_branch_to_the_pushed_commit(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path
) -> None:
    seeded = git_http.seed_repo(git_repo_name, "main", {"README.md": b"# seeded\n"}, "Seed")
    repository = repository_for(tmp_path, git_http, git_repo_name)
    assert repository.open() == seeded

    sha = write(repository, "live/v1/configmaps/a.yaml", b"a: 1\n", "[CREATE] a")
    assert repository.pending() == 1
    assert repository.push() == sha

    server_repo = git_http.repo_path(git_repo_name)
    assert branch_tip(server_repo, "main") == sha
    assert repository.pending() == 0
    assert read_tree(server_repo, "main") == {
        "README.md": b"# seeded\n",
        "live/v1/configmaps/a.yaml": b"a: 1\n",
    }
    assert history(server_repo, "main") == [
        (sha, "[CREATE] a", AUTHOR.name),
        (seeded, "Seed", SEED_AUTHOR.name),
    ]


class Fenced(Exception):
    """What the fence of a test raises to stop a push."""


def test_a_push_whose_fence_closes_while_it_sends_leaves_the_server_branch_alone(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path
) -> None:
    """The fence is asked once the refs are negotiated and after every chunk of pack sent; a
    refusal at the first chunk stops the push before the server updates the branch."""
    seeded = git_http.seed_repo(git_repo_name, "main", {"README.md": b"# seeded\n"}, "Seed")
    repository = repository_for(tmp_path, git_http, git_repo_name)
    repository.open()
    sha = write(repository, "live/v1/configmaps/a.yaml", b"a: 1\n", "[CREATE] a")
    asked = 0

    def fence() -> None:
        nonlocal asked
        asked += 1
        if asked > 1:  # negotiated while the Lease held, lapsed while the pack goes out
            raise Fenced

    with pytest.raises(Fenced):
        repository.push(fence)
    server_repo = git_http.repo_path(git_repo_name)
    assert asked == 2
    assert branch_tip(server_repo, "main") == seeded
    # Nothing is left half done: the next push (renewed in time) lands.
    assert repository.push(lambda: None) == sha
    assert branch_tip(server_repo, "main") == sha


def test_http_wrong_password_is_unavailable_without_showing_it_and_changes_nothing(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path
) -> None:
    seeded = git_http.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    wrong_password = "wrong-" + git_http.password
    repository = repository_for(
        tmp_path, git_http, git_repo_name, credentials=http_credentials(git_http, wrong_password)
    )

    with pytest.raises(RemoteUnavailable, match="rejected the credentials") as refused_fetch:
        repository.open()
    # The clone stays usable: work is kept locally until the credentials are fixed.
    sha = write(repository, "f.yaml", b"changed\n", "Change")
    with pytest.raises(RemoteUnavailable, match="rejected the credentials") as refused_push:
        repository.push()

    for caught in (refused_fetch, refused_push):
        assert wrong_password not in f"{caught.value}\n{caught.value!r}"
        assert caught.value.url == git_http.url(git_repo_name)
    assert repository.head() == sha
    assert repository.pending() == 1
    assert branch_tip(git_http.repo_path(git_repo_name), "main") == seeded
    assert subjects(git_http, git_repo_name) == ["Seed"]


def test_password_in_the_url_is_masked_in_the_error_and_the_display_url(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path
) -> None:
    git_http.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    in_url = "url-s3cret"
    url = git_http.url(git_repo_name).replace(
        f"http://{LOOPBACK}", f"http://{git_http.username}:{in_url}@{LOOPBACK}"
    )
    in_secret = "secret-s3cret"
    credentials = http_credentials(git_http, in_secret)
    repository = BranchRepository(tmp_path / "clone", url, "main", credentials)

    with pytest.raises(RemoteUnavailable) as caught:
        repository.open()

    shown = f"{caught.value}\n{caught.value!r}"
    assert in_url not in shown
    assert in_secret not in shown
    masked = f"http://{git_http.username}:***@{LOOPBACK}:{git_http.port}/git/{git_repo_name}.git"
    assert caught.value.url == repository.display_url == masked


def test_credentials_in_the_url_survive_a_reread_of_the_providers_secret(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path
) -> None:
    """A provider whose URL carries its credentials and that names no Secret: the re-read of
    its credentials after a failed push (rotation) hands over empty ones, and the URL's must
    still be used, as when the clone was opened."""
    git_http.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    url = git_http.url(git_repo_name).replace(
        f"http://{LOOPBACK}", f"http://{git_http.username}:{git_http.password}@{LOOPBACK}"
    )
    repository = BranchRepository(tmp_path / "clone", url, "main")
    repository.open()
    assert repository.use_credentials(GitCredentials()) is False
    sha = write(repository, "f.yaml", b"changed\n", "Change")
    assert repository.push() == sha
    assert branch_tip(git_http.repo_path(git_repo_name), "main") == sha


def test_push_handshake_uses_the_credentials_a_url_carries(
    git_http: GitHttpServer, git_repo_name: str
) -> None:
    """Write access proven by a provider whose URL carries its credentials, as its pushes use
    them; a wrong password in the URL proves nothing."""
    git_http.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")

    def with_password(password: str) -> str:
        return git_http.url(git_repo_name).replace(
            f"http://{LOOPBACK}", f"http://{git_http.username}:{password}@{LOOPBACK}"
        )

    prove_push_access(with_password(git_http.password), GitCredentials())
    with pytest.raises(RemoteUnavailable, match="push handshake failed"):
        prove_push_access(with_password("wrong-" + git_http.password), GitCredentials())


# -- SSH authentication and host keys ------------------------------------------------------


def test_ssh_push_with_the_client_key_and_the_server_in_known_hosts_moves_the_server_branch(
    git_ssh: GitSshServer, git_repo_name: str, tmp_path: Path
) -> None:
    seeded = git_ssh.seed_repo(git_repo_name, "main", {"README.md": b"# seeded\n"}, "Seed")
    repository = repository_for(tmp_path, git_ssh, git_repo_name)
    assert repository.open() == seeded

    sha = write(repository, "live/a.yaml", b"over ssh\n", "[CREATE] a")
    assert repository.push() == sha

    server_repo = git_ssh.repo_path(git_repo_name)
    assert branch_tip(server_repo, "main") == sha
    assert read_tree(server_repo, "main")["live/a.yaml"] == b"over ssh\n"
    assert subjects(git_ssh, git_repo_name) == ["[CREATE] a", "Seed"]


def test_ssh_server_whose_host_key_is_not_in_known_hosts_is_refused_and_nothing_is_pushed(
    git_ssh: GitSshServer, git_repo_name: str, tmp_path: Path
) -> None:
    seeded = git_ssh.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    repository = repository_for(
        tmp_path,
        git_ssh,
        git_repo_name,
        credentials=ssh_credentials(git_ssh, known_hosts=git_ssh.wrong_known_hosts),
    )

    with pytest.raises(RemoteUnavailable, match="does not match known_hosts") as refused_fetch:
        repository.open()
    sha = write(repository, "f.yaml", b"changed\n", "Change")
    with pytest.raises(RemoteUnavailable, match="does not match known_hosts") as refused_push:
        repository.push()

    for caught in (refused_fetch, refused_push):
        assert_no_secret_in(caught.value, git_ssh)
    assert repository.head() == sha
    assert repository.pending() == 1
    assert branch_tip(git_ssh.repo_path(git_repo_name), "main") == seeded


def test_known_hosts_entry_without_the_port_does_not_vouch_for_an_ssh_server_on_another_port(
    git_ssh: GitSshServer, git_repo_name: str, tmp_path: Path
) -> None:
    git_ssh.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    port_22_entry = f"{LOOPBACK} {git_ssh.host_public_key}\n"
    repository = repository_for(
        tmp_path,
        git_ssh,
        git_repo_name,
        credentials=ssh_credentials(git_ssh, known_hosts=port_22_entry),
    )

    with pytest.raises(RemoteUnavailable, match=rf"no entry for \[{LOOPBACK}\]:{git_ssh.port}"):
        repository.open()


def test_ssh_without_known_hosts_is_refused_before_connecting_unless_explicitly_opted_out(
    git_ssh: GitSshServer, git_repo_name: str, tmp_path: Path
) -> None:
    seeded = git_ssh.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    without_known_hosts = GitCredentials(ssh_private_key=git_ssh.client_private_key)

    with pytest.raises(CredentialsError, match="no known_hosts") as caught:
        repository_for(tmp_path, git_ssh, git_repo_name, credentials=without_known_hosts)

    assert_no_secret_in(caught.value, git_ssh)
    assert not (tmp_path / "clone").exists()
    assert branch_tip(git_ssh.repo_path(git_repo_name), "main") == seeded

    opted_out = dataclasses.replace(without_known_hosts, insecure_skip_host_key_check=True)
    repository = repository_for(tmp_path, git_ssh, git_repo_name, credentials=opted_out)
    assert repository.open() == seeded


def test_ssh_key_the_server_does_not_admit_is_given_up_after_a_bounded_number_of_attempts(
    tmp_path: Path,
) -> None:
    # An own server that would let the client go on far longer than the client's own limit.
    with GitSshServer(tmp_path / "server", max_auth_tries=50) as server:
        seeded = server.seed_repo("stranger", "main", {"f.yaml": b"x\n"}, "Seed")
        stranger = dataclasses.replace(
            ssh_credentials(server), ssh_private_key=server.stranger_private_key
        )
        repository = repository_for(tmp_path, server, "stranger", credentials=stranger)

        with pytest.raises(RemoteUnavailable, match="rejected the credentials") as caught:
            repository.open()

    assert_no_secret_in(caught.value, server)
    attempts = server.log_path.read_text().count("Failed publickey")
    assert 1 <= attempts <= MAX_CREDENTIAL_REQUESTS
    assert branch_tip(server.repo_path("stranger"), "main") == seeded


# -- concurrent writers and server refusals ------------------------------------------------


def test_push_behind_a_foreign_commit_is_rejected_and_rebase_lands_ours_on_top_of_theirs(
    git_server: GitServer, git_repo_name: str, tmp_path: Path
) -> None:
    seeded = git_server.seed_repo(git_repo_name, "main", {"live/base.yaml": b"base\n"}, "Seed")
    server_repo = git_server.repo_path(git_repo_name)
    repository = repository_for(tmp_path, git_server, git_repo_name)
    repository.open()
    write(repository, "live/a.yaml", b"a\n", "ours one")
    write(repository, "live/b.yaml", b"b\n", "ours two")
    theirs = push_foreign_commit(server_repo, "main", "docs/notes.md", b"theirs\n", "Their edit")

    with pytest.raises(PushRejected):
        repository.push()
    assert branch_tip(server_repo, "main") == theirs
    assert repository.pending() == 2

    rebuilt = repository.rebase_onto_remote()
    assert len(rebuilt) == 2
    assert repository.push() == rebuilt[-1]

    assert branch_tip(server_repo, "main") == rebuilt[-1]
    assert history(server_repo, "main") == [
        (rebuilt[1], "ours two", AUTHOR.name),
        (rebuilt[0], "ours one", AUTHOR.name),
        (theirs, "Their edit", FOREIGN_AUTHOR.name),
        (seeded, "Seed", SEED_AUTHOR.name),
    ]
    assert read_tree(server_repo, "main") == {
        "docs/notes.md": b"theirs\n",
        "live/a.yaml": b"a\n",
        "live/b.yaml": b"b\n",
        "live/base.yaml": b"base\n",
    }
    assert repository.pending() == 0


def test_push_refused_by_a_server_hook_is_declined_with_its_reason_and_keeps_the_commit(
    git_server: GitServer, git_repo_name: str, tmp_path: Path
) -> None:
    seeded = git_server.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    install_hook(
        git_server.repo_path(git_repo_name),
        "pre-receive",
        "#!/bin/sh\necho 'main is protected' >&2\nexit 1\n",
    )
    repository = repository_for(tmp_path, git_server, git_repo_name)
    repository.open()
    sha = write(repository, "f.yaml", b"changed\n", "Change")

    with pytest.raises(PushDeclined, match="hook declined") as caught:
        repository.push()

    assert caught.value.url == git_server.url(git_repo_name)
    assert repository.head() == sha
    assert repository.pending() == 1
    assert branch_tip(git_server.repo_path(git_repo_name), "main") == seeded


# -- outages -------------------------------------------------------------------------------


def test_push_during_an_outage_is_unavailable_and_lands_once_the_server_is_back(
    own_git_server: GitServer, tmp_path: Path
) -> None:
    server = own_git_server
    seeded = server.seed_repo("outage", "main", {"f.yaml": b"0\n"}, "Seed")
    server_repo = server.repo_path("outage")
    repository = repository_for(tmp_path, server, "outage")
    repository.open()

    server.stop()
    sha = write(repository, "f.yaml", b"1\n", "During the outage")
    with pytest.raises(RemoteUnavailable, match="push failed") as refused_push:
        repository.push()
    with pytest.raises(RemoteUnavailable):
        repository.rebase_onto_remote()
    assert_no_secret_in(refused_push.value, server)
    assert repository.head() == sha
    assert repository.pending() == 1
    assert branch_tip(server_repo, "main") == seeded

    server.start()
    assert repository.push() == sha
    assert branch_tip(server_repo, "main") == sha
    assert repository.pending() == 0


def test_server_that_accepts_but_never_answers_times_out_and_serves_again_afterwards(
    own_git_server: GitServer, tmp_path: Path
) -> None:
    server = own_git_server
    server.seed_repo("hung", "main", {"f.yaml": b"0\n"}, "Seed")
    repository = repository_for(tmp_path, server, "hung")
    repository.open()
    sha = write(repository, "f.yaml", b"1\n", "While the server hangs")

    with server.suspended(), short_network_timeouts():
        started = time.monotonic()
        with pytest.raises(RemoteUnavailable, match=r"(?i)timed out"):
            repository.push()
        assert time.monotonic() - started < 5
    assert branch_tip(server.repo_path("hung"), "main") != sha

    assert repository.push() == sha
    assert branch_tip(server.repo_path("hung"), "main") == sha


# -- branch start --------------------------------------------------------------------------


def test_new_branch_starts_from_the_tip_of_the_server_default_branch_whatever_its_name(
    git_server: GitServer, git_repo_name: str, tmp_path: Path
) -> None:
    server_repo = git_server.create_bare_repo(git_repo_name, default_branch="trunk")
    trunk_tip = git_server.seed_repo(git_repo_name, "trunk", {"README.md": b"docs\n"}, "Seed")
    repository = repository_for(tmp_path, git_server, git_repo_name, branch="feature")

    assert repository.open() is None
    assert repository.head() == trunk_tip
    assert repository.read("README.md") == b"docs\n"
    assert repository.pending() == 0

    sha = write(repository, "live/a.yaml", b"a: 1\n", "Feature work")
    assert repository.push() == sha

    assert branch_tip(server_repo, "feature") == sha
    assert branch_tip(server_repo, "trunk") == trunk_tip
    assert [(entry.sha, entry.subject) for entry in log(server_repo, "feature")] == [
        (sha, "Feature work"),
        (trunk_tip, "Seed"),
    ]
    assert read_tree(server_repo, "feature") == {"README.md": b"docs\n", "live/a.yaml": b"a: 1\n"}
