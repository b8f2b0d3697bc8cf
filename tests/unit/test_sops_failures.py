"""A sops run that never got to answer is retried; one that refused is an error about the input.

Real child processes: a stand-in for the sops binary that is killed, or that refuses.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reverserd.encryption.sops import EncryptionError, EncryptionUnavailable, Sops

# A recipient of the right shape; the stand-in never reads it.
AGE_RECIPIENT = "age1" + "q" * 58


@pytest.mark.parametrize(
    ("script", "unavailable"),
    [("kill -9 $$", True), ("echo 'no key' >&2; exit 1", False)],
)
async def test_sops_killed_is_unavailable_and_sops_refusing_is_an_error(
    tmp_path: Path, script: str, unavailable: bool
) -> None:
    fake = tmp_path / "sops"
    fake.write_text(f"#!/bin/sh\ncat > /dev/null\n{script}\n")
    fake.chmod(0o755)
    with pytest.raises(EncryptionError) as raised:
        await Sops(str(fake)).encrypt(b"kind: Secret\n", [AGE_RECIPIENT], "a.sops.yaml")
    assert isinstance(raised.value, EncryptionUnavailable) is unavailable
