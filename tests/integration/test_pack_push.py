"""The smart-HTTP push of the packs a clone already wrote, against the test bed's HTTP server.

The server is lighttpd running ``git http-backend`` behind basic auth, so every push ends in
``git receive-pack``, which indexes the pack, checks that the pushed branch reaches only
objects it has (its connectivity check) and runs the repository's hooks. What arrived is read
from the server's bare repository, and ``git fsck`` must accept it. Which way a push went is
read from the log line each way writes: ``pushed ... no delta search`` for the packs as
written, ``libgit2's pack builder`` for the fallback.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from reverserd.git import (
    BranchRepository,
    FileChange,
    GitCredentials,
    PushDeclined,
    PushRejected,
    RemoteUnavailable,
)
from testbed.controlplane import make_pki
from testbed.gitservers import (
    FOREIGN_AUTHOR,
    SEED_AUTHOR,
    GitHttpServer,
    branch_tip,
    install_hook,
    log,
    push_foreign_commit,
    read_tree,
)
from tests.conftest import AUTHOR, COMMITTER, fsck, push_ways, write


def _open(tmp_path: Path, server: GitHttpServer, name: str) -> BranchRepository:
    credentials = GitCredentials(username=server.username, password=server.password)
    repository = BranchRepository(tmp_path / "clone", server.url(name), "main", credentials)
    repository.open()
    return repository


class Fenced(Exception):
    """What a test's fence raises to stop a push."""


class GitHttpsServer(GitHttpServer):
    """The same server behind TLS (lighttpd's ``mod_openssl``), with a certificate for
    127.0.0.1 issued by a CA of the test's own."""

    def __init__(self, state_dir: Path, pki: Path) -> None:
        self._pki = pki
        super().__init__(state_dir)

    def url(self, name: str) -> str:
        return super().url(name).replace("http://", "https://", 1)

    def _write_config(self, backend: str) -> None:
        super()._write_config(backend)
        with self._config_path.open("a") as config:
            config.write(
                'server.modules += ("mod_openssl")\n'
                'ssl.engine = "enable"\n'
                f'ssl.pemfile = "{self._pki / "webhook.crt"}"\n'
                f'ssl.privkey = "{self._pki / "webhook.key"}"\n'
            )


@pytest.fixture
def git_https(tmp_path: Path) -> Iterator[GitHttpsServer]:
    make_pki(tmp_path / "pki")
    (tmp_path / "server").mkdir()
    with GitHttpsServer(tmp_path / "server", tmp_path / "pki") as server:
        yield server


@pytest.fixture
def trusted_ca(tmp_path: Path) -> Iterator[None]:
    """Trust the test's CA for the test's length, as libgit2 and the push read it."""
    settings = pygit2.settings
    before = (settings.ssl_cert_file, settings.ssl_cert_dir)
    settings.set_ssl_cert_locations(str(tmp_path / "pki" / "ca.crt"), None)
    try:
        yield
    finally:
        settings.set_ssl_cert_locations(*before)


def test_commits_of_several_flushes_are_pushed_as_written_and_the_server_accepts_them(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path, push_log: pytest.LogCaptureFixture
) -> None:
    git_http.seed_repo(git_repo_name, "main", {"README.md": b"# seeded\n"}, "Seed")
    repository = _open(tmp_path, git_http, git_repo_name)
    files = {"README.md": b"# seeded\n"}
    for number in range(30):
        path = f"live/v1/configmaps/cm-{number % 7}.yaml"
        files[path] = b"n: %d\n" % number
        write(repository, path, files[path], f"[UPDATE] {number}")
        if number % 10 == 9:
            repository.flush()  # three packs, joined by the push
    tip = write(repository, "live/v1/configmaps/cm-0.yaml", b"n: 0\n", "back to n: 0")
    files["live/v1/configmaps/cm-0.yaml"] = b"n: 0\n"

    assert repository.push() == tip

    server_repo = git_http.repo_path(git_repo_name)
    assert branch_tip(server_repo, "main") == tip
    assert read_tree(server_repo, "main") == files
    assert len(log(server_repo, "main")) == 32
    fsck(server_repo)
    assert push_ways(push_log) == ["as written"]

    again = write(repository, "live/v1/configmaps/cm-1.yaml", b"n: again\n", "again")
    assert repository.push() == again
    assert branch_tip(server_repo, "main") == again
    assert push_ways(push_log) == ["as written", "as written"]
    fsck(server_repo)


def test_a_fence_that_closes_in_the_middle_of_the_pack_leaves_the_server_branch_alone(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path, push_log: pytest.LogCaptureFixture
) -> None:
    seeded = git_http.seed_repo(git_repo_name, "main", {"README.md": b"# seeded\n"}, "Seed")
    repository = _open(tmp_path, git_http, git_repo_name)
    noise = random.Random(3)
    changes = [FileChange(f"data/{n}.bin", noise.randbytes(40_000)) for n in range(40)]
    tip = repository.apply(changes, "a pack of many pieces", AUTHOR, COMMITTER)
    asked = 0

    def fence() -> None:
        nonlocal asked
        asked += 1
        if asked == 6:  # the advertisement and four pieces of pack passed, then the lease lapsed
            raise Fenced

    with pytest.raises(Fenced):
        repository.push(fence)

    server_repo = git_http.repo_path(git_repo_name)
    assert asked == 6
    assert branch_tip(server_repo, "main") == seeded
    assert repository.pending() == 1
    assert repository.push(lambda: None) == tip
    assert branch_tip(server_repo, "main") == tip
    assert read_tree(server_repo, "main")["data/7.bin"] == changes[7].content
    fsck(server_repo)
    assert push_ways(push_log) == ["as written"]


def test_a_moved_remote_is_refused_before_sending_and_the_rebuilt_commits_land_as_written(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path, push_log: pytest.LogCaptureFixture
) -> None:
    seeded = git_http.seed_repo(git_repo_name, "main", {"live/base.yaml": b"base\n"}, "Seed")
    server_repo = git_http.repo_path(git_repo_name)
    repository = _open(tmp_path, git_http, git_repo_name)
    write(repository, "live/a.yaml", b"a\n", "ours one")
    write(repository, "live/b.yaml", b"b\n", "ours two")
    theirs = push_foreign_commit(server_repo, "main", "docs/notes.md", b"theirs\n", "Their edit")

    with pytest.raises(PushRejected, match="fetch first"):
        repository.push()
    assert branch_tip(server_repo, "main") == theirs

    rebuilt = repository.rebase_onto_remote()
    assert repository.push() == rebuilt[-1]

    assert [(e.sha, e.subject, e.author_name) for e in log(server_repo, "main")] == [
        (rebuilt[1], "ours two", AUTHOR.name),
        (rebuilt[0], "ours one", AUTHOR.name),
        (theirs, "Their edit", FOREIGN_AUTHOR.name),
        (seeded, "Seed", SEED_AUTHOR.name),
    ]
    fsck(server_repo)
    assert push_ways(push_log) == ["as written"]


def test_a_wrong_password_is_unavailable_without_showing_it(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path
) -> None:
    seeded = git_http.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    repository = _open(tmp_path, git_http, git_repo_name)
    wrong = "wrong-" + git_http.password
    repository.use_credentials(GitCredentials(username=git_http.username, password=wrong))
    sha = write(repository, "f.yaml", b"changed\n", "Change")

    with pytest.raises(RemoteUnavailable, match="rejected the credentials") as caught:
        repository.push()

    assert wrong not in f"{caught.value}\n{caught.value!r}"
    assert caught.value.url == git_http.url(git_repo_name)
    assert branch_tip(git_http.repo_path(git_repo_name), "main") == seeded
    repository.use_credentials(
        GitCredentials(username=git_http.username, password=git_http.password)
    )
    assert repository.push() == sha


def test_a_hook_refusal_is_declined_with_its_reason_and_the_commit_lands_once_allowed(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path, push_log: pytest.LogCaptureFixture
) -> None:
    seeded = git_http.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    server_repo = git_http.repo_path(git_repo_name)
    hook = install_hook(server_repo, "pre-receive", "#!/bin/sh\necho 'protected' >&2\nexit 1\n")
    repository = _open(tmp_path, git_http, git_repo_name)
    sha = write(repository, "f.yaml", b"changed\n", "Change")

    with pytest.raises(PushDeclined, match="pre-receive hook declined"):
        repository.push()
    assert branch_tip(server_repo, "main") == seeded
    assert repository.pending() == 1

    hook.unlink()
    assert repository.push() == sha
    assert branch_tip(server_repo, "main") == sha
    assert push_ways(push_log) == ["as written"]


def test_after_a_restart_with_commits_pending_libgit2_pushes_them_then_packs_go_as_written(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path, push_log: pytest.LogCaptureFixture
) -> None:
    git_http.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    server_repo = git_http.repo_path(git_repo_name)
    before = _open(tmp_path, git_http, git_repo_name)
    pending = write(before, "f.yaml", b"before the restart\n", "Before")
    before.flush()  # durable, never pushed: the process dies here

    after = _open(tmp_path, git_http, git_repo_name)
    assert after.pending() == 1
    assert after.push() == pending
    sha = write(after, "f.yaml", b"after the restart\n", "After")
    assert after.push() == sha

    assert [entry.subject for entry in log(server_repo, "main")] == ["After", "Before", "Seed"]
    fsck(server_repo)
    assert push_ways(push_log) == ["libgit2", "as written"]


def test_a_blob_handed_over_before_a_push_and_committed_after_it_reaches_the_server(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path, push_log: pytest.LogCaptureFixture
) -> None:
    """The handed-over blob went out in the first push's pack, unreachable there; the second
    push does not carry it again, and the server's connectivity check finds it."""
    git_http.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    server_repo = git_http.repo_path(git_repo_name)
    repository = _open(tmp_path, git_http, git_repo_name)
    [stored] = repository.add_blobs([b"handed over\n"])
    write(repository, "f.yaml", b"first\n", "First")
    repository.push()

    sha = repository.apply(
        [FileChange("live/handed.yaml", stored)], "Uses the blob", AUTHOR, COMMITTER
    )
    assert repository.push() == sha

    assert read_tree(server_repo, "main")["live/handed.yaml"] == b"handed over\n"
    fsck(server_repo)
    assert push_ways(push_log) == ["as written", "as written"]


def test_packs_that_lack_an_object_are_declined_by_the_server_and_libgit2_pushes_next(
    git_http: GitHttpServer, git_repo_name: str, tmp_path: Path, push_log: pytest.LogCaptureFixture
) -> None:
    """Should the store's account of what the remote lacks be wrong, the server's
    connectivity check refuses the update, and the next push does not rely on it."""
    seeded = git_http.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    server_repo = git_http.repo_path(git_repo_name)
    repository = _open(tmp_path, git_http, git_repo_name)
    write(repository, "f.yaml", b"one\n", "One")
    repository.flush()
    repository._object_store().mark_sent()  # the fault: the pack of "One" counted as sent
    sha = write(repository, "f.yaml", b"two\n", "Two")

    with pytest.raises(PushDeclined, match="missing necessary objects"):
        repository.push()
    assert branch_tip(server_repo, "main") == seeded

    assert repository.push() == sha
    assert [entry.subject for entry in log(server_repo, "main")] == ["Two", "One", "Seed"]
    fsck(server_repo)
    assert push_ways(push_log) == ["libgit2"]


def test_https_pushes_as_written_and_a_server_whose_certificate_is_not_trusted_is_refused(
    git_https: GitHttpsServer,
    trusted_ca: None,
    tmp_path: Path,
    push_log: pytest.LogCaptureFixture,
) -> None:
    seeded = git_https.seed_repo("tls", "main", {"f.yaml": b"x\n"}, "Seed")
    server_repo = git_https.repo_path("tls")
    repository = _open(tmp_path, git_https, "tls")
    sha = write(repository, "f.yaml", b"over TLS\n", "Over TLS")
    assert repository.push() == sha
    assert branch_tip(server_repo, "main") == sha
    assert push_ways(push_log) == ["as written"]

    pygit2.settings.set_ssl_cert_locations(None, str(tmp_path / "nowhere"))
    later = write(repository, "f.yaml", b"to a stranger\n", "Refused")
    with pytest.raises(RemoteUnavailable, match=r"(?i)certificate verify failed"):
        repository.push()
    assert branch_tip(server_repo, "main") == sha
    assert seeded != sha != later
