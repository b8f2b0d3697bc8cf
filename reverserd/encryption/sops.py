"""The ``sops`` and ``age-keygen`` command lines, the only cryptography reverserd uses.

reverserd implements no encryption of its own: Secrets are encrypted by the standard ``sops``
binary with age recipients, so the standard ``sops -d`` decrypts every file it writes. Only
``data`` and ``stringData`` are encrypted (``encrypted_regex``), so a reviewer still sees which
Secret changed. Plaintext goes to the child process through a pipe, never through a file.

sops checks the network for a newer version unless told not to; it is told not to, so an
air-gapped cluster never waits on it. A run that never got to answer (the process could not be
started for lack of resources, was killed, or timed out) raises :class:`EncryptionUnavailable`,
which callers retry; any other failure is about the input or the configuration.

A target folder's ``.sops.yaml`` belongs to its people as much as to reverserd: recipients,
key groups and creation rules added by hand are kept (:func:`sops_config_for`), and every file
is encrypted by sops with that very configuration, so whoever the folder's rules name can
decrypt it with the standard ``sops -d``. Only a file exactly as reverserd writes it is
rewritten, when the recipients change.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ENCRYPTED_REGEX = "^(data|stringData)$"
# sops on a small Secret takes a few tens of milliseconds; this only bounds a hung child.
TOOL_TIMEOUT_S = 30.0
AGE_RECIPIENT = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")
# The rule reverserd writes matches every encrypted manifest below the folder.
OWN_PATH_REGEX = "\\.sops\\.yaml$"
# A folder-relative path like the ones reverserd encrypts; an existing rule that matches it
# already covers reverserd's files (sops uses the first rule whose path_regex matches).
PROBE_PATH = "v1/secrets/default/example.sops.yaml"
# Keys of a creation rule that choose what is encrypted; without one, reverserd's regex applies.
SELECTORS = (
    "encrypted_regex",
    "unencrypted_regex",
    "encrypted_suffix",
    "unencrypted_suffix",
    "encrypted_comment_regex",
    "unencrypted_comment_regex",
)
CONFIG_NAME = ".sops.yaml"
# Enough of a SHA-256 to tell one recipient list from another; it only detects hand edits.
RECIPIENTS_DIGEST_LEN = 12
OWN_HEADER = (
    "# Written by reverserd for the age recipients of spec.encryption ({digest}).\n"
    "# Edit it and reverserd keeps your version; delete it to have it written again.\n"
)
APPENDED_HEADER = (
    "# reverserd added the last creation rule, for the age recipients of spec.encryption"
    " ({digest}).\n"
)


class EncryptionError(Exception):
    """sops or age-keygen failed; the message never contains plaintext or key material."""


class EncryptionUnavailable(EncryptionError):
    """The tool did not get to answer (it could not be started for lack of resources, was
    killed by a signal, or timed out): says nothing about the input, so the caller retries."""


# Errors starting a process that are about the machine at the moment, not the configuration
# (a missing or non-executable binary is the configuration's).
TRANSIENT_START_ERRORS = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE})


async def _run(command: Sequence[str], stdin: bytes, cwd: Path | None = None) -> bytes:
    environment = {**os.environ, "SOPS_DISABLE_VERSION_CHECK": "1"}
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
            cwd=cwd,
        )
    except OSError as error:
        message = f"cannot run {command[0]}: {error.strerror}"
        if error.errno in TRANSIENT_START_ERRORS:
            raise EncryptionUnavailable(message) from None
        raise EncryptionError(message) from None
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), TOOL_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise EncryptionUnavailable(
            f"{command[0]} did not finish within {TOOL_TIMEOUT_S} s"
        ) from None
    if process.returncode is not None and process.returncode < 0:
        signal_name = signal.Signals(-process.returncode).name
        raise EncryptionUnavailable(f"{os.path.basename(command[0])} was killed ({signal_name})")
    if process.returncode != 0:
        reason = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise EncryptionError(f"{os.path.basename(command[0])} failed: {reason[0][:300]}")
    return out


class Sops:
    def __init__(self, sops: str = "sops", age_keygen: str = "age-keygen") -> None:
        self.sops = sops
        self.age_keygen = age_keygen

    async def encrypt(self, manifest: bytes, config: bytes, filename: str) -> bytes:
        """Encrypt a YAML manifest as the folder's ``.sops.yaml`` (``config``) says.

        ``filename`` is the file's path relative to the folder, the path sops matches the
        creation rules' ``path_regex`` against, as it does when run in the folder itself.
        """
        selector = _rule_for(_rules(config), filename)
        regex = (
            []
            if selector is not None and _selects(selector)
            else ["--encrypted-regex", ENCRYPTED_REGEX]
        )
        with tempfile.TemporaryDirectory(prefix="reverserd-sops-") as folder:
            (Path(folder) / CONFIG_NAME).write_bytes(config)
            return await _run(
                [
                    self.sops, "--config", str(Path(folder) / CONFIG_NAME), "encrypt",
                    *regex,
                    "--input-type", "yaml", "--output-type", "yaml",
                    "--filename-override", filename,
                ],
                manifest,
                cwd=Path(folder),
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


def _digest(recipients: Sequence[str]) -> str:
    return hashlib.sha256(",".join(sorted(recipients)).encode()).hexdigest()[:RECIPIENTS_DIGEST_LEN]


def sops_config(recipients: Sequence[str]) -> bytes:
    """The ``.sops.yaml`` reverserd writes into a folder that has none, so editors and ``sops``
    agree. Its header names a digest of the recipients, so an added recipient shows the file
    was edited by hand."""
    return (
        OWN_HEADER.format(digest=_digest(recipients)) + "creation_rules:\n"
        f"- path_regex: {OWN_PATH_REGEX}\n"
        f"  encrypted_regex: '{ENCRYPTED_REGEX}'\n"
        f"  age: {','.join(sorted(recipients))}\n"
    ).encode()


def _own_rule(recipients: Sequence[str]) -> dict[str, str]:
    return {
        "path_regex": OWN_PATH_REGEX,
        "encrypted_regex": ENCRYPTED_REGEX,
        "age": ",".join(sorted(recipients)),
    }


def _parse(config: bytes) -> Any:
    try:
        return yaml.safe_load(config)
    except yaml.YAMLError:
        return None


def _rules(config: bytes) -> list[dict[str, Any]]:
    parsed = _parse(config)
    rules = parsed.get("creation_rules") if isinstance(parsed, dict) else None
    return [rule for rule in rules if isinstance(rule, dict)] if isinstance(rules, list) else []


def _matches(rule: dict[str, Any], path: str) -> bool:
    pattern = rule.get("path_regex", rule.get("filename_regex"))
    if pattern is None:
        return True  # sops applies a rule without a path pattern to every file
    try:
        return re.search(str(pattern), path) is not None
    except re.error:
        return False


def _rule_for(rules: list[dict[str, Any]], path: str) -> dict[str, Any] | None:
    return next((rule for rule in rules if _matches(rule, path)), None)


def _selects(rule: dict[str, Any]) -> bool:
    return any(key in rule for key in SELECTORS)


def _is_own_rule(rule: dict[str, Any]) -> bool:
    return (
        set(rule) == {"path_regex", "encrypted_regex", "age"}
        and rule["path_regex"] == OWN_PATH_REGEX
        and rule["encrypted_regex"] == ENCRYPTED_REGEX
    )


def _is_reverserds(config: bytes) -> bool:
    """Whether ``config`` is byte for byte what :func:`sops_config` writes (nobody edited it)."""
    rules = _rules(config)
    if len(rules) != 1 or not _is_own_rule(rules[0]):
        return False
    return config == sops_config(_recipients_of(rules[0]))


def _recipients_of(rule: dict[str, Any]) -> list[str]:
    return str(rule["age"]).split(",")


def sops_config_for(existing: bytes | None, recipients: Sequence[str]) -> bytes:
    """The ``.sops.yaml`` a target folder should hold, given the one it holds now.

    - none, or one exactly as reverserd writes it: reverserd's rule for ``recipients``;
    - one edited or written by hand with a rule that covers reverserd's files: kept byte for
      byte (its recipients and key groups decide who can decrypt);
    - one without such a rule: its rules and other keys kept, reverserd's rule appended last,
      where it changes nothing sops decided before (the first matching rule wins); comments
      of such a file do not survive the rewrite.

    A file that is not a YAML mapping is kept as it is: sops then refuses to encrypt with it,
    and the Secrets are reported as not written instead of the file being overwritten.
    """
    if existing is None or _is_reverserds(existing):
        return sops_config(recipients)
    try:
        parsed = yaml.safe_load(existing)
    except yaml.YAMLError:
        return existing
    if parsed is None:
        parsed = {}
    if not isinstance(parsed, dict):
        return existing
    rules = _rules(existing)
    # The rule reverserd appended before, unedited (the header's digest still matches): it is
    # re-made for the current recipients. Any change to it makes it the folder's own.
    ours = (
        bool(rules)
        and _is_own_rule(rules[-1])
        and existing.startswith(_appended_header(_recipients_of(rules[-1])).encode())
    )
    theirs = rules[:-1] if ours else rules
    if _rule_for(theirs, PROBE_PATH) is not None:
        return existing
    own = _own_rule(recipients)
    if ours and rules[-1] == own:
        return existing
    merged = {**parsed, "creation_rules": [*theirs, own]}
    body = yaml.safe_dump(merged, sort_keys=False, default_flow_style=False)
    return (_appended_header(recipients) + body).encode()


def _appended_header(recipients: Sequence[str]) -> str:
    return APPENDED_HEADER.format(digest=_digest(recipients))
