"""The ``sops`` and ``age-keygen`` command lines, the only cryptography reverserd uses.

reverserd implements no encryption of its own: Secrets are encrypted by the standard ``sops``
binary with age recipients, so the standard ``sops -d`` decrypts every file it writes. Only
``data`` and ``stringData`` are encrypted (``encrypted_regex``), so a reviewer still sees which
Secret changed. Plaintext goes to the child process through a pipe, never through a file.

sops checks the network for a newer version unless told not to; it is told not to, so an
air-gapped cluster never waits on it. A run that never got to answer (the process could not be
started for lack of resources, was killed, or timed out) raises :class:`EncryptionUnavailable`,
which callers retry; any other failure is about the input or the configuration.

Encryption is decided on the cluster side only. Anyone with push access can write a folder's
``.sops.yaml``, so sops never reads it: every file is encrypted with a configuration made from
the GitTarget's recipients alone (:func:`sops_config`), and the output is checked before it can
be committed (:func:`check_ciphertext`): every value of ``data`` and ``stringData`` is sops
ciphertext, and the file names exactly the GitTarget's age recipients and no other key source.
The folder's ``.sops.yaml`` is only what editors and people running ``sops`` see
(:func:`sops_config_for`): kept when its rule for reverserd's files says what the GitTarget
says, otherwise rewritten with reverserd's rule first.
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
# The sections of a Secret whose every value must be ciphertext in what reaches Git.
ENCRYPTED_SECTIONS = ("data", "stringData")
# sops on a small Secret takes a few tens of milliseconds; this only bounds a hung child.
TOOL_TIMEOUT_S = 30.0
AGE_RECIPIENT = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")
# A value as sops encrypts it (AES-256-GCM, base64 fields, the plaintext's type).
CIPHERTEXT = re.compile(
    r"^ENC\[AES256_GCM,data:[A-Za-z0-9+/=]*,iv:[A-Za-z0-9+/=]+,tag:[A-Za-z0-9+/=]+,"
    r"type:(str|int|float|bool|bytes)\]$"
)
# The rule reverserd writes matches every encrypted manifest below the folder.
OWN_PATH_REGEX = "\\.sops\\.yaml$"
# A folder-relative path like the ones reverserd encrypts: the rule of a folder's .sops.yaml
# that sops would use for reverserd's files is the first whose path_regex matches it.
PROBE_PATH = "v1/secrets/default/example.sops.yaml"
# Keys of a creation rule (and of a file's sops metadata) that choose what is encrypted.
SELECTORS = (
    "encrypted_regex",
    "unencrypted_regex",
    "encrypted_suffix",
    "unencrypted_suffix",
    "encrypted_comment_regex",
    "unencrypted_comment_regex",
)
# Keys of a creation rule that name who can decrypt, besides age recipients: a rule with any
# of them says something the GitTarget did not.
KEY_SOURCES = (
    "pgp",
    "kms",
    "gcp_kms",
    "azure_keyvault",
    "hc_vault_transit_uri",
    "hckms",
    "key_groups",
    "shamir_threshold",
)
CONFIG_NAME = ".sops.yaml"
# Enough of a SHA-256 to tell one recipient list from another; it only detects hand edits.
RECIPIENTS_DIGEST_LEN = 12
OWN_HEADER = (
    "# Written by reverserd for the age recipients of spec.encryption ({digest}).\n"
    "# reverserd encrypts with the GitTarget's recipients only; a rule that says otherwise is\n"
    "# replaced with its next write.\n"
)
KEPT_HEADER = (
    "# reverserd put the first creation rule here, for the age recipients of spec.encryption"
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


class NotCiphertext(EncryptionError):
    """What sops returned is not a file only the GitTarget's recipients can read; it must not
    reach Git. The message names the section, key or metadata entry, never a value."""


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

    async def encrypt(self, manifest: bytes, recipients: Sequence[str], filename: str) -> bytes:
        """Encrypt a Secret's YAML manifest for ``recipients``, checked before it is returned.

        The configuration sops uses is made here from ``recipients`` alone, in a folder of its
        own: no ``.sops.yaml`` of the repository, nor one above the working directory, is
        read. ``filename`` is the file's path relative to the target folder (it ends in
        ``.sops.yaml``, which reverserd's rule matches). Raises :class:`NotCiphertext` when the
        output would show a value or name another reader.
        """
        with tempfile.TemporaryDirectory(prefix="reverserd-sops-") as folder:
            config = Path(folder) / CONFIG_NAME
            config.write_bytes(sops_config(recipients))
            encrypted = await _run(
                [
                    self.sops, "--config", str(config), "encrypt",
                    "--input-type", "yaml", "--output-type", "yaml",
                    "--filename-override", filename,
                ],
                manifest,
                cwd=Path(folder),
            )  # fmt: skip
        check_ciphertext(encrypted, recipients)
        return encrypted

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


def check_ciphertext(encrypted: bytes, recipients: Sequence[str]) -> None:
    """Raise :class:`NotCiphertext` unless ``encrypted`` is a sops file in which every value
    of ``data`` and ``stringData`` is ciphertext, decryptable by exactly ``recipients``.

    sops leaves an empty string as it is (there is nothing to hide); every other value must
    be in sops' ``ENC[AES256_GCM,...]`` form.
    """
    try:
        parsed = yaml.safe_load(encrypted)
    except yaml.YAMLError:
        raise NotCiphertext("sops output is not YAML") from None
    if not isinstance(parsed, dict):
        raise NotCiphertext("sops output is not a YAML mapping")
    for section in ENCRYPTED_SECTIONS:
        values = parsed.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise NotCiphertext(f"sops output: {section} is not a mapping")
        for key, value in values.items():
            if not isinstance(value, str) or not (value == "" or CIPHERTEXT.match(value)):
                raise NotCiphertext(f"sops output: {section}.{str(key)[:100]} is not ciphertext")
    _check_metadata(parsed.get("sops"), recipients)


def _check_metadata(metadata: Any, recipients: Sequence[str]) -> None:
    if not isinstance(metadata, dict):
        raise NotCiphertext("sops output has no sops metadata")
    if metadata.get("encrypted_regex") != ENCRYPTED_REGEX:
        raise NotCiphertext("sops output: encrypted_regex is not reverserd's")
    for selector in SELECTORS:
        if selector != "encrypted_regex" and metadata.get(selector) is not None:
            raise NotCiphertext(f"sops output: {selector} chooses what is encrypted")
    for name, value in metadata.items():
        # Key sources (kms, pgp, hc_vault, key_groups...) are lists; only age may hold any.
        if name != "age" and isinstance(value, list) and value:
            raise NotCiphertext(f"sops output: key source {str(name)[:40]} is not the GitTarget's")
    age = metadata.get("age")
    named = (
        {entry.get("recipient") for entry in age if isinstance(entry, dict)}
        if isinstance(age, list)
        else set()
    )
    if named != set(recipients):
        raise NotCiphertext("sops output: its age recipients are not the GitTarget's")


def _digest(recipients: Sequence[str]) -> str:
    return hashlib.sha256(",".join(sorted(recipients)).encode()).hexdigest()[:RECIPIENTS_DIGEST_LEN]


def sops_config(recipients: Sequence[str]) -> bytes:
    """The configuration every Secret is encrypted with, and the ``.sops.yaml`` reverserd
    writes into a folder, so editors and ``sops`` agree. Its header names a digest of the
    recipients."""
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


def _rules(parsed: Any) -> list[dict[str, Any]]:
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


def _age_recipients(rule: dict[str, Any]) -> set[str] | None:
    """The age recipients a rule names, or None when it names anything else too."""
    if any(key in rule for key in KEY_SOURCES if key != "key_groups"):
        return None
    groups = rule.get("key_groups")
    if groups is None:
        source = rule.get("age")
    elif "age" in rule or not isinstance(groups, list) or len(groups) != 1:
        return None
    elif not isinstance(groups[0], dict) or set(groups[0]) != {"age"}:
        return None
    else:
        source = groups[0]["age"]
    if isinstance(source, str):
        named = [part.strip() for part in source.split(",")]
    elif isinstance(source, list) and all(isinstance(part, str) for part in source):
        named = [part.strip() for part in source]
    else:
        return None
    return set(named)


def _says_what_the_target_says(rule: dict[str, Any], recipients: Sequence[str]) -> bool:
    """Whether sops run with ``rule`` would encrypt reverserd's files as reverserd does: the
    same selector and the same age recipients, nothing else."""
    selectors = {key: rule[key] for key in SELECTORS if key in rule}
    return selectors == {"encrypted_regex": ENCRYPTED_REGEX} and _age_recipients(rule) == set(
        recipients
    )


def _is_own_shape(rule: dict[str, Any]) -> bool:
    return (
        set(rule) == {"path_regex", "encrypted_regex", "age"}
        and rule["path_regex"] == OWN_PATH_REGEX
        and rule["encrypted_regex"] == ENCRYPTED_REGEX
    )


def sops_config_for(existing: bytes | None, recipients: Sequence[str]) -> bytes:
    """The ``.sops.yaml`` a target folder should hold, given the one it holds now.

    It never changes how reverserd encrypts (:meth:`Sops.encrypt` reads no folder file); it
    tells people and editors the truth about the folder's Secret files:

    - one whose first rule for reverserd's files says what the GitTarget says (same age
      recipients, ``data``/``stringData`` encrypted, no other key source or selector) is kept
      byte for byte (a gitops-reverser bootstrap file, for example);
    - none, an empty or unreadable one, or one with nothing but rules reverserd wrote:
      reverserd's own file;
    - any other: reverserd's rule first (sops uses the first rule that matches), then the
      folder's other rules and keys as they were, minus rules reverserd wrote before; comments
      of such a file do not survive the rewrite.
    """
    if existing is None:
        return sops_config(recipients)
    try:
        parsed = yaml.safe_load(existing)
    except yaml.YAMLError:
        parsed = None
    if not isinstance(parsed, dict):
        return sops_config(recipients)
    rules = _rules(parsed)
    covering = next((rule for rule in rules if _matches(rule, PROBE_PATH)), None)
    if covering is not None and _says_what_the_target_says(covering, recipients):
        return existing
    theirs = [rule for rule in rules if not _is_own_shape(rule)]
    if not theirs and set(parsed) <= {"creation_rules"}:
        return sops_config(recipients)
    merged = {**parsed, "creation_rules": [_own_rule(recipients), *theirs]}
    body = yaml.safe_dump(merged, sort_keys=False, default_flow_style=False)
    return (KEPT_HEADER.format(digest=_digest(recipients)) + body).encode()
