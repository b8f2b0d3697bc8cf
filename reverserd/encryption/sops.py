"""The ``sops`` and ``age-keygen`` command lines, the only cryptography reverserd uses.

reverserd implements no encryption of its own: Secrets are encrypted by the standard ``sops``
binary with age recipients, so the standard ``sops -d`` decrypts every file it writes. Only
``data`` and ``stringData`` are encrypted (``encrypted_regex``), so a reviewer still sees which
Secret changed. Plaintext goes to the child process through a pipe, never through a file.

sops checks the network for a newer version unless told not to; it is told not to, so an
air-gapped cluster never waits on it.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence

ENCRYPTED_REGEX = "^(data|stringData)$"
# sops on a small Secret takes a few tens of milliseconds; this only bounds a hung child.
TOOL_TIMEOUT_S = 30.0
AGE_RECIPIENT = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")


class EncryptionError(Exception):
    """sops or age-keygen failed; the message never contains plaintext or key material."""


async def _run(command: Sequence[str], stdin: bytes) -> bytes:
    environment = {**os.environ, "SOPS_DISABLE_VERSION_CHECK": "1"}
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
        )
    except OSError as error:
        raise EncryptionError(f"cannot run {command[0]}: {error.strerror}") from None
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), TOOL_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise EncryptionError(f"{command[0]} did not finish within {TOOL_TIMEOUT_S} s") from None
    if process.returncode != 0:
        reason = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise EncryptionError(f"{os.path.basename(command[0])} failed: {reason[0][:300]}")
    return out


class Sops:
    def __init__(self, sops: str = "sops", age_keygen: str = "age-keygen") -> None:
        self.sops = sops
        self.age_keygen = age_keygen

    async def encrypt(self, manifest: bytes, recipients: Sequence[str], filename: str) -> bytes:
        """Encrypt a YAML manifest's ``data`` and ``stringData`` for the age recipients."""
        return await _run(
            [
                self.sops, "encrypt",
                "--age", ",".join(recipients),
                "--encrypted-regex", ENCRYPTED_REGEX,
                "--input-type", "yaml", "--output-type", "yaml",
                "--filename-override", filename,
            ],
            manifest,
        )  # fmt: skip

    async def recipient_of(self, identity: str) -> str:
        """The public age recipient of a private ``AGE-SECRET-KEY-1…`` identity."""
        output = await _run([self.age_keygen, "-y"], identity.encode())
        recipient = output.decode().strip()
        if not AGE_RECIPIENT.match(recipient):
            raise EncryptionError("age-keygen returned no recipient")
        return recipient

    async def generate(self) -> tuple[str, str]:
        """A new age identity: (private key text, public recipient)."""
        output = (await _run([self.age_keygen], b"")).decode()
        identity = next(
            (line for line in output.splitlines() if line.startswith("AGE-SECRET-KEY-")), None
        )
        if identity is None:
            raise EncryptionError("age-keygen returned no identity")
        return identity + "\n", await self.recipient_of(identity)


def sops_config(recipients: Sequence[str]) -> bytes:
    """The ``.sops.yaml`` written into a target folder, so editors and ``sops`` agree."""
    return (
        "creation_rules:\n"
        "- path_regex: \\.sops\\.yaml$\n"
        f"  encrypted_regex: '{ENCRYPTED_REGEX}'\n"
        f"  age: {','.join(sorted(recipients))}\n"
    ).encode()
