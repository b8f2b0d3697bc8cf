"""The SSH push of the packs a clone already wrote, against the test bed's sshd.

sshd admits one client key and runs only ``git-shell`` for it, so every push ends in
``git receive-pack`` on the server, which indexes the pack, checks connectivity and runs the
hooks. What arrived is read from the server's bare repository, and ``git fsck`` must accept it.
Which way a push went is read from the log line each way writes (``no delta search`` for the
packs as written, ``libgit2's pack builder`` for the fallback); what the client offered to
authenticate is read from sshd's own log.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from reverserd.git import BranchRepository, GitCredentials, RemoteUnavailable
from reverserd.git.credentials import MAX_CREDENTIAL_REQUESTS
from testbed.gitservers import GitSshServer, branch_tip, read_tree
from tests.conftest import fsck, push_ways, write
from tests.integration.test_pack_push import Fenced


def _credentials(server: GitSshServer) -> GitCredentials:
    return GitCredentials(ssh_private_key=server.client_private_key, known_hosts=server.known_hosts)


def _open(tmp_path: Path, server: GitSshServer, name: str) -> BranchRepository:
    repository = BranchRepository(
        tmp_path / "clone", server.url(name), "main", _credentials(server)
    )
    repository.open()
    return repository


def _key_offers(server: GitSshServer) -> int:
    """How many times sshd saw a client offer a public key, accepted or not."""
    log = server.log_path.read_text()
    return log.count("Accepted publickey") + log.count("Failed publickey")


def test_commits_of_several_flushes_are_pushed_over_ssh_as_written(
    git_ssh: GitSshServer, git_repo_name: str, tmp_path: Path, push_log: pytest.LogCaptureFixture
) -> None:
    git_ssh.seed_repo(git_repo_name, "main", {"README.md": b"# seeded\n"}, "Seed")
    repository = _open(tmp_path, git_ssh, git_repo_name)
    files = {"README.md": b"# seeded\n"}
    server_repo = git_ssh.repo_path(git_repo_name)
    for round_ in range(2):
        for number in range(30):
            path = f"live/v1/configmaps/cm-{number % 7}.yaml"
            files[path] = b"round %d, n: %d\n" % (round_, number)
            tip = write(repository, path, files[path], f"[UPDATE] {round_}.{number}")
            if number % 10 == 9:
                repository.flush()  # three packs, joined by the push

        assert repository.push() == tip
        assert branch_tip(server_repo, "main") == tip
        assert read_tree(server_repo, "main") == files
    assert push_ways(push_log) == ["as written", "as written"]
    fsck(server_repo)


def test_an_ssh_push_whose_fence_closes_at_any_point_leaves_the_server_branch_alone(
    git_ssh: GitSshServer, git_repo_name: str, tmp_path: Path, push_log: pytest.LogCaptureFixture
) -> None:
    """Asked before the command and before every piece of the pack after the first: a refusal
    at any of them, the last (before the pack's checksum) included, closes the connection
    before the server has the whole pack. Each attempt refuses one call later than the one
    before, until a push asks fewer times than that and lands."""
    seeded = git_ssh.seed_repo(git_repo_name, "main", {"README.md": b"# seeded\n"}, "Seed")
    repository = _open(tmp_path, git_ssh, git_repo_name)
    sha = write(repository, "live/v1/configmaps/a.yaml", b"a: 1\n", "[CREATE] a")
    server_repo = git_ssh.repo_path(git_repo_name)
    refused_at = 1
    while True:
        asked = 0

        def fence(refuse_at: int = refused_at) -> None:
            nonlocal asked
            asked += 1
            if asked == refuse_at:  # the Lease lapsed just then
                raise Fenced

        try:
            assert repository.push(fence) == sha
        except Fenced:
            assert branch_tip(server_repo, "main") == seeded, f"landed, refused at {refused_at}"
            refused_at += 1
            continue
        break
    assert asked == refused_at - 1 >= 3  # the command, the first piece's end, the checksum
    assert branch_tip(server_repo, "main") == sha
    assert push_ways(push_log) == ["as written"]


def test_a_host_key_that_changed_after_the_clone_opened_is_refused_before_a_key_is_offered(
    git_ssh: GitSshServer, git_repo_name: str, tmp_path: Path, push_log: pytest.LogCaptureFixture
) -> None:
    seeded = git_ssh.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    repository = _open(tmp_path, git_ssh, git_repo_name)
    write(repository, "f.yaml", b"y\n", "[UPDATE] f")
    repository.use_credentials(
        dataclasses.replace(_credentials(git_ssh), known_hosts=git_ssh.wrong_known_hosts)
    )
    offers = _key_offers(git_ssh)

    with pytest.raises(RemoteUnavailable, match="does not match known_hosts"):
        repository.push()

    assert _key_offers(git_ssh) == offers
    assert branch_tip(git_ssh.repo_path(git_repo_name), "main") == seeded
    # Refused, not handed to libgit2 to try again.
    assert push_ways(push_log) == []


def test_an_ssh_key_the_server_does_not_admit_fails_the_push_after_a_bounded_number_of_offers(
    git_ssh: GitSshServer, git_repo_name: str, tmp_path: Path
) -> None:
    """Refused once here, then once more by libgit2 (a server may take an RSA key only with the
    SHA-1 signatures libgit2 still makes), whose bounded retries end it."""
    seeded = git_ssh.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    repository = _open(tmp_path, git_ssh, git_repo_name)
    write(repository, "f.yaml", b"y\n", "[UPDATE] f")
    stranger = dataclasses.replace(
        _credentials(git_ssh), ssh_private_key=git_ssh.stranger_private_key
    )
    repository.use_credentials(stranger)
    failed = git_ssh.log_path.read_text().count("Failed publickey")

    with pytest.raises(RemoteUnavailable, match="rejected") as caught:
        repository.push()

    assert git_ssh.stranger_private_key not in f"{caught.value}\n{caught.value!r}"
    offers = git_ssh.log_path.read_text().count("Failed publickey") - failed
    assert 2 <= offers <= 1 + MAX_CREDENTIAL_REQUESTS
    assert branch_tip(git_ssh.repo_path(git_repo_name), "main") == seeded


def test_with_the_explicit_opt_out_an_ssh_push_goes_out_as_written_without_known_hosts(
    git_ssh: GitSshServer, git_repo_name: str, tmp_path: Path, push_log: pytest.LogCaptureFixture
) -> None:
    git_ssh.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    unchecked = GitCredentials(
        ssh_private_key=git_ssh.client_private_key, insecure_skip_host_key_check=True
    )
    repository = BranchRepository(tmp_path / "clone", git_ssh.url(git_repo_name), "main", unchecked)
    repository.open()
    sha = write(repository, "f.yaml", b"y\n", "[UPDATE] f")

    assert repository.push() == sha
    assert branch_tip(git_ssh.repo_path(git_repo_name), "main") == sha
    assert push_ways(push_log) == ["as written"]


def test_a_host_known_hosts_lists_nothing_for_is_offered_no_key_by_either_push(
    git_ssh: GitSshServer, git_repo_name: str, tmp_path: Path, push_log: pytest.LogCaptureFixture
) -> None:
    """With no entry for the host (here one for another host), the SSH push leaves it to
    libgit2 before authenticating, and libgit2 refuses the host too."""
    seeded = git_ssh.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    repository = _open(tmp_path, git_ssh, git_repo_name)
    write(repository, "f.yaml", b"y\n", "[UPDATE] f")
    elsewhere = git_ssh.known_hosts.replace("127.0.0.1", "127.0.0.2")
    repository.use_credentials(dataclasses.replace(_credentials(git_ssh), known_hosts=elsewhere))
    offers = _key_offers(git_ssh)

    with pytest.raises(RemoteUnavailable, match="no entry"):
        repository.push()

    assert _key_offers(git_ssh) == offers
    assert branch_tip(git_ssh.repo_path(git_repo_name), "main") == seeded
    assert any("known_hosts lists no host key" in r.message for r in push_log.records)


def test_a_repository_gone_from_the_server_fails_the_push_in_the_servers_words(
    git_ssh: GitSshServer, git_repo_name: str, tmp_path: Path
) -> None:
    git_ssh.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    repository = _open(tmp_path, git_ssh, git_repo_name)
    write(repository, "f.yaml", b"y\n", "[UPDATE] f")
    server_repo = git_ssh.repo_path(git_repo_name)
    server_repo.rename(server_repo.with_name(server_repo.name + ".moved"))

    with pytest.raises(RemoteUnavailable, match=r"the server ended the session: .*repository"):
        repository.push()


def test_a_pack_the_store_cannot_read_is_left_to_libgit2_not_retried_as_an_outage(
    git_ssh: GitSshServer, git_repo_name: str, tmp_path: Path, push_log: pytest.LogCaptureFixture
) -> None:
    """What making the pack raises is the clone's problem, as over smart HTTP: the store stops
    relying on its packs and libgit2 pushes from the objects, instead of the push failing as
    an unreachable remote every time with the same pack."""
    git_ssh.seed_repo(git_repo_name, "main", {"f.yaml": b"x\n"}, "Seed")
    repository = _open(tmp_path, git_ssh, git_repo_name)
    sha = write(repository, "f.yaml", b"y\n", "[UPDATE] f")
    repository.flush()
    (kept,) = repository._object_store().unsent_packs() or []
    kept_path = Path(kept.name)
    kept_copy = kept_path.read_bytes()
    kept_path.write_bytes(b"JUNK" + kept_copy[4:])  # the fault: no pack header

    # libgit2 cannot read the commit from that pack either: an outage of this clone, reported
    # as libgit2's, never as the SSH push's own reading of the pack again and again.
    with pytest.raises(RemoteUnavailable) as failed:
        repository.push()
    assert "is not a pack" not in str(failed.value)
    assert any(
        "pushing with libgit2" in record.message and "is not a pack" in record.message
        for record in push_log.records
    )
    kept_path.write_bytes(kept_copy)
    assert repository.push() == sha
    assert branch_tip(git_ssh.repo_path(git_repo_name), "main") == sha
    assert push_ways(push_log) == ["libgit2"]  # the store no longer relies on its packs
