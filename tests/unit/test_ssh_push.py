"""Where an SSH push goes and what it runs there, read from the remote URL as Git reads it,
and what happens to a key this transport cannot read."""

from __future__ import annotations

import pytest

from reverserd.git import GitCredentials
from reverserd.git.pack_protocol import Unsupported
from reverserd.git.ssh_push import SshTarget, _client_key, ssh_target

HOST = "example.com"


@pytest.mark.parametrize(
    ("url", "target"),
    [
        (
            "ssh://git@example.com/org/repo.git",
            SshTarget("example.com", 22, "git", "/org/repo.git"),
        ),
        ("ssh://example.com:2222/srv/repo", SshTarget("example.com", 2222, None, "/srv/repo")),
        (
            "git+ssh://me@Example.COM/~me/repo.git",
            SshTarget("example.com", 22, "me", "~me/repo.git"),
        ),
        ("ssh://git@[::1]:2200/a%20b.git", SshTarget("::1", 2200, "git", "/a b.git")),
        ("git@example.com:org/repo.git", SshTarget("example.com", 22, "git", "org/repo.git")),
        ("example.com:/srv/repo.git", SshTarget("example.com", 22, None, "/srv/repo.git")),
    ],
)
def test_the_url_gives_host_port_user_and_path_as_git_reads_them(
    url: str, target: SshTarget
) -> None:
    assert ssh_target(url) == target


def test_the_path_is_one_quoted_word_of_the_command_whatever_it_holds() -> None:
    """The server's shell (or git-shell) splits the command: a path with quotes, spaces, ``!``
    or ``;`` stays one argument, as Git's own ``sq_quote`` makes it."""
    target = SshTarget("h", 22, None, "/srv/it's a repo!; rm -rf ~")
    assert target.command == "git-receive-pack '/srv/it'\\''s a repo'\\!'; rm -rf ~'"


@pytest.mark.parametrize(
    "key",
    ["not a key", "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"],
)
def test_a_key_this_transport_cannot_read_leaves_the_push_to_libgit2(key: str) -> None:
    with pytest.raises(Unsupported) as caught:
        _client_key(GitCredentials(ssh_private_key=key))
    assert key not in str(caught.value)
