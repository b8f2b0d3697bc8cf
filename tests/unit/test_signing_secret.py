"""Reading a signing Secret: the key is parsed in a worker thread, never on the event loop that
every tenant's mirroring shares, and an unchanged Secret read again is not parsed again."""

from __future__ import annotations

import threading
from typing import Any, cast

import pytest

from reverserd.committer import signing
from reverserd.config.model import CommitSigning
from reverserd.git import CommitSigner
from reverserd.kube.client import KubeClient
from testbed.manifests import secret


class SecretsOf:
    """Answers GETs of Secrets from a dict (the API server's role is not under test here)."""

    def __init__(self, secrets: dict[str, dict[str, Any]]) -> None:
        self.secrets = secrets

    async def get(self, path: str) -> dict[str, Any]:
        return self.secrets[path.rsplit("/", 1)[1]]


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread each parse of a key ran on, in order."""
    threads: list[str] = []
    parse = CommitSigner.from_text

    def recorded(text: str, passphrase: str | None = None) -> CommitSigner:
        threads.append(threading.current_thread().name)
        return parse(text, passphrase)

    monkeypatch.setattr(CommitSigner, "from_text", recorded)
    return threads


async def test_a_key_is_parsed_off_the_event_loop_and_once_while_the_secret_is_unchanged(
    parses: list[str],
) -> None:
    first, second = CommitSigner.generate(), CommitSigner.generate()
    secrets = {"signing": secret("ns", "signing", {"signing.key": first.private_text()})}
    client = cast(KubeClient, SecretsOf(secrets))
    settings = CommitSigning("signing", generate_when_missing=False)

    loaded = await signing.load_signer(client, "ns", settings)
    assert loaded.public_key == first.public_key
    assert parses and threading.main_thread().name not in parses
    assert (await signing.load_signer(client, "ns", settings)) is loaded
    assert len(parses) == 1

    secrets["signing"] = secret("ns", "signing", {"signing.key": second.private_text()})
    assert (await signing.load_signer(client, "ns", settings)).public_key == second.public_key
    assert len(parses) == 2
    with_passphrase = {"signing.key": second.private_text(), "passphrase": "unused"}
    secrets["signing"] = secret("ns", "signing", with_passphrase)
    with pytest.raises(signing.ProviderProblem) as refused:
        await signing.load_signer(client, "ns", settings)
    assert refused.value.reason == "SigningKeyInvalid"
    assert len(parses) == 3
