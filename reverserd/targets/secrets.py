"""Secrets for one target: encrypted with SOPS, or not written at all.

The journal holds only a Secret's metadata (DESIGN invariant 6), so the value is read from the
API server at the moment its file is written, sanitized (which drops the last-applied annotation
that can hold values in plain text), fingerprinted with the state dir's key, and encrypted by
``sops`` for the GitTarget's recipients (never with a configuration from the repository). An
unchanged fingerprint means an unchanged file, so a restart or a re-seed never
produces a commit for a Secret that did not change, although SOPS ciphertext is randomised.

When encryption is not configured or its keys are broken, the Secret is skipped, counted in
``reverserd_secrets_skipped_total``, logged as a warning naming the Secret and the reason (never
a value; at most once per :data:`SKIP_WARNING_INTERVAL_S` for each Secret) and reported in the
GitTarget's ``EncryptionConfigured`` condition; every other object keeps flowing. Output that
is not ciphertext for exactly those recipients (:class:`NotCiphertext`) is never committed: the
Secret is quarantined, named with the reason in the ``Quarantined`` condition. Once keys
become usable, the target takes a fresh snapshot of its Secrets, so nothing skipped meanwhile
stays missing. A sops run that never got to answer (killed, timed out, not started) is no reason
to skip: it is raised to the consumer, which retries from its cursor after a backoff.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from reverserd.config.status import TargetProgress
from reverserd.encryption.fingerprint import fingerprint
from reverserd.encryption.keys import KeyState, resolve_keys
from reverserd.encryption.sops import EncryptionError, EncryptionUnavailable, NotCiphertext, Sops
from reverserd.journal import ObjectKey
from reverserd.kube.client import KubeClient, KubeError
from reverserd.kube.resources import ResourceType
from reverserd.logs import Throttle
from reverserd.manifest.dropped import FieldPath
from reverserd.manifest.layout import is_excluded_object
from reverserd.metrics import SECRETS_SKIPPED
from reverserd.targets.planning import FilePlan, FileRecord, manifest_of

log = logging.getLogger(__name__)

# Keys are re-read at this pace, so a fixed key Secret or a removed backup warning is noticed.
KEY_REFRESH_S = 30.0
# A Secret that keeps changing while it cannot be encrypted is warned about this often at most.
SKIP_WARNING_INTERVAL_S = 300.0


class SecretWriter:
    def __init__(
        self,
        client: KubeClient,
        sops: Sops,
        fingerprint_key: bytes,
        target: str,
        namespace: str,
        encryption: Mapping[str, Any],
        progress: TargetProgress,
        dropped: Sequence[FieldPath],
    ) -> None:
        self.client = client
        self.dropped = dropped
        self.sops = sops
        self.fingerprint_key = fingerprint_key
        self.target = target
        self.namespace = namespace
        self.encryption = encryption
        self.progress = progress
        self.keys: KeyState | None = None
        self._checked_at = float("-inf")
        self._warnings = Throttle(SKIP_WARNING_INTERVAL_S)

    async def refresh(self) -> bool:
        """Re-read the keys when due; True when they just became usable."""
        if not self.encryption or time.monotonic() - self._checked_at < KEY_REFRESH_S:
            return False
        self._checked_at = time.monotonic()
        before = self.keys
        self.keys = await resolve_keys(self.client, self.sops, self.namespace, self.encryption)
        self.progress.encryption = self.keys
        return self.keys.usable and not (before is not None and before.usable)

    @property
    def writable(self) -> bool:
        return self.keys is not None and self.keys.usable

    def skip(self, key: ObjectKey, why: str) -> None:
        SECRETS_SKIPPED.labels(target=self.target).inc()
        self.progress.secrets_skipped += 1
        self.progress.secret_problem = why
        held_back = self._warnings.allow((key.namespace, key.name))
        if held_back is not None:
            log.warning(
                "Secret %s/%s not written: %s",
                key.namespace,
                key.name,
                why,
                extra={
                    "target": self.target,
                    "secret": f"{key.namespace}/{key.name}",
                    "reason": why,
                    "held_back": held_back,
                },
            )

    async def plan(
        self, key: ObjectKey, rtype: ResourceType, folder: str, known: FileRecord | None
    ) -> FilePlan | None:
        """The encrypted file of the Secret as it is now, or None (unchanged, gone, skipped)."""
        if self.keys is None or not self.keys.usable:
            self.skip(key, self.keys.message if self.keys else "no encryption configured")
            return None
        try:
            live = await self.client.get(rtype.object_path(key.namespace, key.name))
        except KubeError as error:
            if error.status == 404:
                return None  # deleted meanwhile: its DELETE event follows
            raise
        live.setdefault("apiVersion", rtype.api_version)
        live.setdefault("kind", rtype.kind)
        if is_excluded_object(rtype, live):
            return None
        path, plaintext = manifest_of(rtype, live, folder, self.dropped)
        stamp = fingerprint(self.fingerprint_key, plaintext)
        if known == (path, stamp):
            return None
        in_folder = path[len(folder) + 1 :] if folder else path
        try:
            encrypted = await self.sops.encrypt(plaintext, self.keys.recipients, in_folder)
        except EncryptionUnavailable:
            raise  # says nothing about the Secret: the consumer retries from its cursor
        except NotCiphertext:
            raise  # the object is quarantined: shown on the GitTarget, retried, never written
        except EncryptionError as error:
            self.skip(key, str(error))
            return None
        plan = FilePlan()
        plan.write(key, path, encrypted, known, exists=known is not None, record_hash=stamp)
        return plan
