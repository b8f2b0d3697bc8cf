"""A GitProvider's ``spec.commit.signing`` Secret, read (or created) and turned into a signer.

Keys as gitops-reverser names them: ``signing.key`` (an OpenSSH or PEM private key: Ed25519,
RSA, or ECDSA on P-256/P-384/P-521; or an armored OpenPGP private key, RSA or Ed25519, whose
passphrase derivation runs in a worker thread, off the event loop), optional ``passphrase``,
and ``signing.pub`` (a copy of the public key, for people; never read). The Secret is read
only from the provider's own namespace, like its credentials (SECURITY.md: the install checks
at admission that whoever writes the GitProvider can read it).

Failing closed: a Secret that is missing (without ``generateWhenMissing``), unreadable, or whose
key cannot sign raises :class:`ProviderProblem`; the committer then makes no commit at all
(never an unsigned one), its targets show why, the journal keeps every change, and the next
attempt reads the Secret again, so fixing it is enough.

``generateWhenMissing`` creates the Secret with a new Ed25519 key only when it does not exist:
a Secret that exists without a usable key is reported, never written into (writing into an
existing Secret would let a GitProvider change any Secret of its namespace).

Parsing a key runs in a worker thread, never on the event loop: even a key within the caps of
:mod:`reverserd.git.signing` costs up to a second, and every tenant's mirroring shares the loop.
A parsed key is kept by the SHA-256 of the Secret's key and passphrase, so reading an unchanged
Secret again (after every failed push) does not derive the key again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections import OrderedDict
from typing import Any

import aiohttp

from reverserd.committer.committer import ProviderProblem
from reverserd.config.model import CommitSigning
from reverserd.git.signing import CommitSigner, SigningKeyError
from reverserd.kube.client import KubeClient, KubeError
from reverserd.kube.paths import secret_path

PRIVATE_KEY = "signing.key"
PUBLIC_KEY = "signing.pub"
PASSPHRASE = "passphrase"

PARSED_KEYS_KEPT = 64
"""Parsed keys kept (least recently used dropped): one per signing provider is all that is
needed, and a key costs a few kilobytes; 64 covers the providers of a large install while
a stream of rotated Secrets cannot grow the memory."""
_parsed: OrderedDict[bytes, CommitSigner] = OrderedDict()


async def load_signer(client: KubeClient, namespace: str, signing: CommitSigning) -> CommitSigner:
    name = signing.secret_name
    secret = await _read(client, namespace, name)
    if secret is None:
        if not signing.generate_when_missing:
            raise ProviderProblem(
                "SigningSecretNotFound",
                f"signing Secret {name!r} not found in namespace {namespace!r}; no commit is"
                f" made until it holds {PRIVATE_KEY!r} (or set generateWhenMissing)",
            )
        secret = await _generate(client, namespace, name)
    data = _text_data(secret, name)
    if PRIVATE_KEY not in data:
        exists = (
            "; generateWhenMissing only creates a Secret that does not exist"
            if signing.generate_when_missing
            else ""
        )
        raise ProviderProblem(
            "SigningKeyInvalid",
            f"signing Secret {name!r} has no key {PRIVATE_KEY!r}{exists}; no commit is made"
            " until it does",
        )
    try:
        return await _parse(data[PRIVATE_KEY], data.get(PASSPHRASE))
    except SigningKeyError as error:
        raise ProviderProblem(
            "SigningKeyInvalid",
            f"signing Secret {name!r} key {PRIVATE_KEY!r}: {error}; no commit is made until"
            " it holds a usable key",
        ) from None


async def _parse(private_key: str, passphrase: str | None) -> CommitSigner:
    """The signer of ``private_key``, parsed in a worker thread unless parsed before."""
    digest = hashlib.sha256()
    for part in (private_key, passphrase or ""):
        encoded = part.encode()
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
    fingerprint = digest.digest()
    signer = _parsed.get(fingerprint)
    if signer is None:
        signer = await asyncio.to_thread(CommitSigner.from_text, private_key, passphrase)
        _parsed[fingerprint] = signer
        while len(_parsed) > PARSED_KEYS_KEPT:
            _parsed.popitem(last=False)
    _parsed.move_to_end(fingerprint)
    return signer


async def _read(client: KubeClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        secret: dict[str, Any] = await client.get(secret_path(namespace, name))
    except KubeError as error:
        if error.status == 404:
            return None
        raise ProviderProblem(
            "ConnectionFailed", f"reading the signing Secret failed: {error}"
        ) from None
    except (aiohttp.ClientError, TimeoutError) as error:
        reason = str(error) or type(error).__name__
        raise ProviderProblem(
            "ConnectionFailed", f"reading the signing Secret failed: {reason}"
        ) from None
    return secret


async def _generate(client: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    """Create Secret ``name`` with a new Ed25519 key; one made meanwhile by someone else wins
    (409) and is read instead."""
    signer = CommitSigner.generate()
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": {
            PRIVATE_KEY: base64.b64encode(signer.private_text().encode()).decode(),
            PUBLIC_KEY: base64.b64encode(signer.public_key.encode() + b"\n").decode(),
        },
    }
    try:
        created: dict[str, Any] = await client.send("POST", secret_path(namespace), body)
    except KubeError as error:
        if error.status == 409:
            existing = await _read(client, namespace, name)
            if existing is not None:
                return existing
        raise ProviderProblem(
            "SigningKeyGenerationFailed", f"creating signing Secret {name!r} failed: {error}"
        ) from None
    except (aiohttp.ClientError, TimeoutError) as error:
        reason = str(error) or type(error).__name__
        raise ProviderProblem(
            "SigningKeyGenerationFailed", f"creating signing Secret {name!r} failed: {reason}"
        ) from None
    return created


def _text_data(secret: dict[str, Any], name: str) -> dict[str, str]:
    data: dict[str, str] = {}
    for key in (PRIVATE_KEY, PASSPHRASE):
        value = (secret.get("data") or {}).get(key)
        if value is None:
            continue
        try:
            data[key] = base64.b64decode(value).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ProviderProblem(
                "SigningKeyInvalid", f"signing Secret {name!r} key {key!r} is not UTF-8 text"
            ) from None
    return data
