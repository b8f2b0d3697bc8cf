"""The SSH push against what a broken or hostile server or Secret can do, and where it goes:
the URL read as libgit2 reads it, the command quoted as Git quotes it.

The exchange with a real sshd and ``git receive-pack`` is tested in
``tests/integration/test_ssh_pack_push.py``; the servers here are made to misbehave: one that
never answers the command request, one that stops reading in the middle of the pack, one that
hangs up with a message that is not text. Each push must end within the I/O timeout, in one of
the push's own errors, with the connection closed.
"""

from __future__ import annotations

import base64
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pygit2
import pytest

from reverserd.git import GitCredentials, configure_network_timeouts
from reverserd.git.pack_protocol import (
    ZERO_ID,
    PackSource,
    Unreachable,
    Unsupported,
    pkt_line,
)
from reverserd.git.ssh_push import SshTarget, _client_key, push, ssh_target

HOST = "example.com"
IO_TIMEOUT_S = 1.0
ADVERTISEMENT = pkt_line(b"0" * 40 + b" capabilities^{}\0report-status ofs-delta\n") + b"0000"


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("ssh://git@example.com/org/repo.git", SshTarget(HOST, 22, "git", "/org/repo.git")),
        ("ssh://example.com:2222/srv/repo", SshTarget(HOST, 2222, None, "/srv/repo")),
        ("git+ssh://me@Example.COM/~me/repo.git", SshTarget(HOST, 22, "me", "~me/repo.git")),
        ("ssh://git@[::1]:2200/a%20b.git", SshTarget("::1", 2200, "git", "/a%20b.git")),
        ("git@example.com:org/repo.git", SshTarget(HOST, 22, "git", "org/repo.git")),
        ("example.com:/srv/repo.git", SshTarget(HOST, 22, None, "/srv/repo.git")),
        ("example.com:/~me/repo.git", SshTarget(HOST, 22, None, "~me/repo.git")),
    ],
)
def test_the_url_gives_host_port_user_and_path_as_the_clone_reads_them(
    url: str, target: SshTarget
) -> None:
    """The path as written: libgit2's fetches do not percent-decode it, and the push must
    reach the repository they read."""
    assert ssh_target(url) == target


def test_the_path_is_one_quoted_word_of_the_command_whatever_it_holds() -> None:
    """The server's shell (or git-shell) splits the command: a path with quotes, spaces, ``!``
    or ``;`` stays one argument, as Git's own ``sq_quote`` makes it."""
    target = SshTarget("h", 22, None, "/srv/it's a repo!; rm -rf ~")
    assert target.command == "git-receive-pack '/srv/it'\\''s a repo'\\!'; rm -rf ~'"


@pytest.mark.parametrize("url", ["example.com:-oProxyCommand=x", "git@example.com:--help"])
def test_a_path_that_would_be_an_option_is_never_sent(url: str) -> None:
    with pytest.raises(Unreachable, match="starts with '-'"):
        ssh_target(url)


def _keygen(path: Path, *options: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-f", str(path), *options],
        check=True,
        capture_output=True,
    )
    return path.read_text()


@pytest.mark.parametrize(
    "key",
    [
        "not a key",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    ],
    ids=["text", "short OpenSSH", "PKCS#8-encrypted"],
)
def test_a_key_this_transport_does_not_read_is_left_to_libgit2(key: str) -> None:
    with pytest.raises(Unsupported):
        _client_key(GitCredentials(ssh_private_key=key))


def test_a_key_with_an_empty_private_section_is_left_to_libgit2(tmp_path: Path) -> None:
    """paramiko fails on malformed keys with assorted errors (here an IndexError), which must
    not escape as anything but the push's own."""
    lines = _keygen(tmp_path / "k", "-N", "").splitlines()
    blob = base64.b64decode("".join(lines[1:-1]))
    cut = blob[: blob.rindex(b"\0\0\0") - 60]  # the private section left truncated
    armored = base64.b64encode(cut).decode()
    text = f"{lines[0]}\n{armored}\n{lines[-1]}\n"
    with pytest.raises(Unsupported):
        _client_key(GitCredentials(ssh_private_key=text))


def test_a_key_asking_for_more_bcrypt_rounds_than_a_signing_key_may_is_not_derived_here(
    tmp_path: Path,
) -> None:
    """Its header names the rounds; 65 are refused before anything is derived (libgit2,
    which pushed with every key before, is left to handle it)."""
    text = _keygen(tmp_path / "k", "-N", "secret", "-a", "65")
    started = time.process_time()
    with pytest.raises(Unsupported, match="bcrypt rounds"):
        _client_key(GitCredentials(ssh_private_key=text, ssh_passphrase="secret"))
    assert time.process_time() - started < 0.2


# -- servers that misbehave ------------------------------------------------------------------

# An SSH server (paramiko's server side) in a process of its own, for one connection: it admits
# any key and answers the command request as MODE says. "silent": never. "stall": with a ref
# advertisement, then the whole process stops (SIGSTOP), reading nothing more, after offering a
# window far larger than any pack, so the client's writes block in the socket, not on the window.
_SERVER = """
import os, signal, socket, sys, threading, time
import paramiko

mode, host_key_path = sys.argv[1], sys.argv[2]
host_key = paramiko.Ed25519Key.from_private_key_file(host_key_path)
advertisement = sys.stdin.buffer.read()

class Admitting(paramiko.ServerInterface):
    def get_allowed_auths(self, username):
        return "publickey"
    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL
    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED
    def check_channel_exec_request(self, channel, command):
        if mode == "silent":
            time.sleep(3600)
        def stall():
            time.sleep(0.2)
            channel.sendall(advertisement)
            os.kill(os.getpid(), signal.SIGSTOP)
        threading.Thread(target=stall, daemon=True).start()
        return True

listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
connection, _ = listener.accept()
transport = paramiko.Transport(connection, default_window_size=2**31 - 1)
transport.add_server_key(host_key)
transport.start_server(server=Admitting())
time.sleep(3600)
"""


@pytest.fixture
def short_timeouts() -> Iterator[None]:
    configure_network_timeouts(connect_ms=2_000, io_ms=int(IO_TIMEOUT_S * 1000))
    try:
        yield
    finally:
        configure_network_timeouts()


@pytest.fixture
def misbehaving(tmp_path: Path) -> Iterator[Callable[[str], tuple[int, str]]]:
    """Starts :data:`_SERVER` in a given mode; returns its port and a known_hosts for it."""
    started: list[subprocess.Popen[bytes]] = []
    host_key = tmp_path / "host"
    _keygen(host_key, "-N", "")

    def start(mode: str) -> tuple[int, str]:
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVER, mode, str(host_key)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        started.append(server)
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(ADVERTISEMENT)
        server.stdin.close()
        port = int(server.stdout.readline())
        public = (tmp_path / "host.pub").read_text().split()
        return port, f"[127.0.0.1]:{port} {public[0]} {public[1]}\n"

    yield start
    for server in started:
        server.kill()
        server.wait()


def _push_new_branch(port: int, credentials: GitCredentials, pack: PackSource) -> bool:
    """Push ``pack`` to create ``main`` in the repository ``r.git`` of the server at ``port``."""
    return push(
        f"ssh://git@127.0.0.1:{port}/r.git",
        credentials,
        "refs/heads/main",
        b"\1" * 20,
        lambda _: ZERO_ID,
        pack,
        None,
    )


def _push_to(tmp_path: Path, port: int, known_hosts: str) -> BaseException | None:
    """Push a pack of 256 MiB on a thread of its own; what it raised, once it ended within
    the I/O timeout and a margin (a push still blocked then fails the test)."""
    credentials = GitCredentials(
        ssh_private_key=_keygen(tmp_path / "client", "-N", ""), known_hosts=known_hosts
    )

    def pack() -> tuple[int, Iterator[bytes]]:
        chunks = [b"PACK\0\0\0\2\0\0\0\1", *([b"x" * 2**20] * 256)]
        return sum(map(len, chunks)), iter(chunks)

    raised: list[BaseException] = []

    def attempt() -> None:
        try:
            _push_new_branch(port, credentials, pack)
        except BaseException as error:
            raised.append(error)

    pushing = threading.Thread(target=attempt, daemon=True)
    pushing.start()
    pushing.join(IO_TIMEOUT_S + 4)
    assert not pushing.is_alive(), "the push is still blocked"
    return raised[0] if raised else None


@pytest.mark.parametrize(
    "mode",
    [
        # paramiko waits for the answer to a command request without a bound of its own.
        "silent",
        # paramiko retries a write that times out for as long as the connection is open.
        "stall",
    ],
    ids=["never answers the command request", "stops reading in the middle of the pack"],
)
def test_a_server_that_stops_taking_part_is_given_up_on_within_the_timeout(
    tmp_path: Path,
    short_timeouts: None,
    misbehaving: Callable[[str], tuple[int, str]],
    mode: str,
) -> None:
    port, known_hosts = misbehaving(mode)
    raised = _push_to(tmp_path, port, known_hosts)
    assert isinstance(raised, Unreachable) and "timed out" in str(raised)


@pytest.mark.parametrize("fails_at", [0, 2], ids=["making the pack", "its second piece"])
def test_what_making_the_pack_raises_is_the_callers_not_the_remotes(
    tmp_path: Path, misbehaving: Callable[[str], tuple[int, str]], fails_at: int
) -> None:
    """The caller (the clone) handles a pack it cannot read; as an unreachable remote it would
    be retried with the same pack for good. The server advertises its refs and then stops, so
    nothing but the pack source can fail here."""
    port, known_hosts = misbehaving("stall")
    credentials = GitCredentials(
        ssh_private_key=_keygen(tmp_path / "client", "-N", ""), known_hosts=known_hosts
    )

    def pieces() -> Iterator[bytes]:
        yield b"PACK\0\0\0\2\0\0\0\1"
        raise ValueError("the pack was cut short")

    def pack() -> tuple[int, Iterator[bytes]]:
        if fails_at == 0:
            raise ValueError("not a pack")
        return 32, pieces()

    with pytest.raises(ValueError, match=r"not a pack|cut short"):
        _push_new_branch(port, credentials, pack)


def test_a_server_that_hangs_up_with_a_message_that_is_not_text_is_unreachable(
    tmp_path: Path, short_timeouts: None
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def hang_up() -> None:
        connection, _ = listener.accept()
        connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
        payload = b"\x01" + struct.pack(">II", 2, 4) + b"\xff\xfe\xfd\xfc" + struct.pack(">I", 0)
        padding = 8 - (len(payload) + 5) % 8
        padding += 8 if padding < 4 else 0
        header = struct.pack(">IB", len(payload) + padding + 1, padding)
        connection.sendall(header + payload + bytes(padding))
        time.sleep(2)
        connection.close()

    threading.Thread(target=hang_up, daemon=True).start()
    credentials = GitCredentials(
        ssh_private_key=_keygen(tmp_path / "client", "-N", ""),
        known_hosts=f"[127.0.0.1]:{port} ssh-ed25519 {'A' * 68}\n",
    )
    with pytest.raises((Unreachable, Unsupported)):
        _push_new_branch(port, credentials, lambda: (0, iter(())))
    assert pygit2.settings.server_timeout == int(IO_TIMEOUT_S * 1000)
