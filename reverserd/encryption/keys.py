"""A GitTarget's ``spec.encryption`` resolved into age recipients, or the reason it cannot be.

Recipients come from ``age.recipients.publicKeys`` and, with ``extractFromSecret``, from every
``*.agekey`` entry of the Secret named by ``encryption.secretRef`` (each entry is an age
identity; its public recipient is derived by ``age-keygen -y``). With ``generateWhenMissing``
and no such Secret, reverserd generates an identity and creates the Secret with it as
``<date>.agekey`` (never writing into a Secret that exists), annotated with the recipient and
``configbutler.ai/backup-warning: REMOVE_AFTER_BACKUP``: the key exists only in the cluster until
someone backs it up, so the target warns until that annotation is removed.

Failing closed: any problem yields a :class:`KeyState` that is not usable, with a reason and a
message for the ``EncryptionConfigured`` condition. Secrets are then not written at all.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reverserd.encryption.sops import AGE_RECIPIENT, EncryptionError, Sops
from reverserd.kube.client import KubeClient, KubeError
from reverserd.kube.paths import InvalidName, secret_path

RECIPIENT_ANNOTATION = "configbutler.ai/age-recipient"
BACKUP_WARNING_ANNOTATION = "configbutler.ai/backup-warning"
BACKUP_WARNING_VALUE = "REMOVE_AFTER_BACKUP"
KEY_SUFFIX = ".agekey"


@dataclass(frozen=True)
class KeyState:
    recipients: tuple[str, ...]
    reason: str
    message: str
    warning: str | None = None

    @property
    def usable(self) -> bool:
        return bool(self.recipients)


def _failed(reason: str, message: str) -> KeyState:
    return KeyState((), reason, message)


async def resolve_keys(
    client: KubeClient, sops: Sops, namespace: str, encryption: Mapping[str, Any]
) -> KeyState:
    if encryption.get("provider", "sops") != "sops":
        return _failed("UnsupportedProvider", "spec.encryption.provider must be sops")
    age = encryption.get("age") or {}
    recipients_spec = age.get("recipients") or {}
    recipients: list[str] = []
    for key in recipients_spec.get("publicKeys") or []:
        if not isinstance(key, str) or not AGE_RECIPIENT.match(key.strip()):
            return _failed(
                "InvalidRecipient", f"publicKeys entry {str(key)[:20]!r}… is not an age1 recipient"
            )
        recipients.append(key.strip())
    warning = None
    secret_name = (encryption.get("secretRef") or {}).get("name")
    wants_secret = recipients_spec.get("extractFromSecret") or recipients_spec.get(
        "generateWhenMissing"
    )
    if wants_secret:
        if not secret_name:
            return _failed("SecretRefMissing", "spec.encryption.secretRef.name is required")
        try:
            path = secret_path(namespace, secret_name)
        except InvalidName as error:
            return _failed("InvalidSpec", f"spec.encryption.secretRef: {error}")
        try:
            secret: dict[str, Any] | None = await client.get(path)
        except KubeError as error:
            if error.status != 404:
                return _failed(
                    "SecretUnreadable", f"reading Secret {secret_name!r}: {error.reason}"
                )
            secret = None
        identities = _identities(secret)
        if identities is None:
            return _failed(
                "SecretMalformed", f"Secret {secret_name!r} has an entry that is not text"
            )
        if not identities and recipients_spec.get("generateWhenMissing"):
            if secret is not None:
                # Writing a key into a Secret that exists would let a GitTarget change any
                # Secret of its namespace; only one nobody made yet is created.
                return _failed(
                    "KeySecretExists",
                    f"Secret {secret_name!r} exists without a *.agekey entry; generateWhenMissing"
                    " only creates a Secret that does not exist: add an age key to it, or name"
                    " a new Secret",
                )
            try:
                secret = await _generate(client, sops, namespace, secret_name)
            except (EncryptionError, KubeError) as error:
                return _failed("KeyGenerationFailed", f"generating an age key failed: {error}")
            identities = _identities(secret) or []
        if recipients_spec.get("extractFromSecret") or recipients_spec.get("generateWhenMissing"):
            for entry, identity in sorted(identities):
                try:
                    recipients.append(await sops.recipient_of(identity))
                except EncryptionError as error:
                    # The error names the tool's complaint (or that it cannot run), never the key.
                    return _failed(
                        "InvalidKey",
                        f"Secret {secret_name!r} entry {entry!r} is not an age identity: {error}",
                    )
        annotations = ((secret or {}).get("metadata") or {}).get("annotations") or {}
        if annotations.get(BACKUP_WARNING_ANNOTATION) == BACKUP_WARNING_VALUE:
            warning = (
                f"back up the age key in Secret {secret_name!r}, then remove its annotation"
                f" {BACKUP_WARNING_ANNOTATION}"
            )
    if not recipients:
        return _failed(
            "NoRecipients",
            "no age recipient: set age.recipients.publicKeys, or extractFromSecret /"
            " generateWhenMissing with a secretRef",
        )
    unique = tuple(sorted(set(recipients)))
    return KeyState(
        unique, "Configured", f"Secrets are encrypted for {len(unique)} age recipient(s)", warning
    )


def _identities(secret: Mapping[str, Any] | None) -> list[tuple[str, str]] | None:
    found = []
    for key, value in ((secret or {}).get("data") or {}).items():
        if not key.endswith(KEY_SUFFIX):
            continue
        try:
            found.append((key, base64.b64decode(value).decode().strip()))
        except (binascii.Error, UnicodeDecodeError):
            return None
    return found


async def _generate(client: KubeClient, sops: Sops, namespace: str, name: str) -> dict[str, Any]:
    """Create Secret ``name`` holding a new age identity; fails (409) if it exists meanwhile."""
    identity, recipient = await sops.generate()
    entry = time.strftime("%Y-%m-%d", time.gmtime()) + KEY_SUFFIX
    encoded = base64.b64encode(identity.encode()).decode()
    annotations = {RECIPIENT_ANNOTATION: recipient, BACKUP_WARNING_ANNOTATION: BACKUP_WARNING_VALUE}
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "type": "Opaque",
        "data": {entry: encoded},
    }
    created: dict[str, Any] = await client.send("POST", secret_path(namespace), body)
    return created
