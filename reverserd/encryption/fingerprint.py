"""Keyed fingerprints of Secret plaintext: change detection without storing the value.

SOPS ciphertext is randomised, so comparing encrypted files cannot tell whether a Secret
changed; comparing a hash of the plaintext could, but a bare hash of a short password can be
brute-forced. reverserd stores HMAC-SHA256 under a random key kept in the state dir instead
(``fingerprint.key``, mode 0600): without that key the fingerprint reveals nothing, and an
unchanged Secret yields the same fingerprint after any restart or re-seed, so it never produces a
new commit.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

KEY_FILE = "fingerprint.key"
KEY_BYTES = 32


def load_or_create_key(state_dir: Path) -> bytes:
    path = state_dir / KEY_FILE
    if path.exists():
        return path.read_bytes()
    state_dir.mkdir(parents=True, exist_ok=True)
    key = os.urandom(KEY_BYTES)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(key)
    return key


def fingerprint(key: bytes, plaintext: bytes) -> str:
    return "hmac-sha256:" + hmac.new(key, plaintext, hashlib.sha256).hexdigest()
