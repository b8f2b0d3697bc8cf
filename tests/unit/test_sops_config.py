"""What a target folder's ``.sops.yaml`` becomes when reverserd writes Secrets into it, what
reverserd accepts from sops before a file may be committed, and what ``age.enabled`` means when
a GitTarget omits it (gitops-reverser's default)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from reverserd.config.model import parse_target
from reverserd.encryption.sops import (
    NotCiphertext,
    check_ciphertext,
    sops_config,
    sops_config_for,
)

ONE = "age1" + "q" * 58
TWO = "age1" + "p" * 58
THREE = "age1" + "z" * 58

# gitops-reverser's bootstrap file: one key group of age recipients, the same selector.
GITOPS_REVERSER = f"""creation_rules:
  - path_regex: '.*\\.sops\\.ya?ml$'
    encrypted_regex: '^(data|stringData)$'
    key_groups:
      - age:
          - "{ONE}"
""".encode()

HAND_MADE_ELSEWHERE = f"""stores:
  yaml:
    indent: 4
creation_rules:
  - path_regex: ^by-hand/.*\\.yaml$
    age: {THREE}
""".encode()


def rules(config: bytes) -> list[dict[str, Any]]:
    parsed: dict[str, Any] = yaml.safe_load(config)
    return list(parsed["creation_rules"])


def test_a_folder_without_one_gets_reverserds_rule() -> None:
    assert sops_config_for(None, [TWO, ONE]) == sops_config([ONE, TWO])
    assert rules(sops_config([ONE, TWO])) == [
        {
            "path_regex": r"\.sops\.yaml$",
            "encrypted_regex": "^(data|stringData)$",
            "age": f"{TWO},{ONE}",  # sorted
        }
    ]


def test_reverserds_own_file_follows_the_recipients() -> None:
    assert sops_config_for(sops_config([ONE]), [TWO]) == sops_config([TWO])
    assert sops_config_for(sops_config([ONE]), [ONE]) == sops_config([ONE])


def test_a_file_that_says_what_the_target_says_is_kept_byte_for_byte() -> None:
    assert sops_config_for(GITOPS_REVERSER, [ONE]) == GITOPS_REVERSER
    # The same file for other recipients says something else: reverserd's rule goes first.
    assert rules(sops_config_for(GITOPS_REVERSER, [TWO]))[0] == rules(sops_config([TWO]))[0]


HOSTILE_RULES = {
    "narrower-regex": {"encrypted_regex": "^nope$", "age": ONE},
    "unencrypted-suffix": {"unencrypted_suffix": "_plain", "age": ONE},
    "extra-recipient": {"encrypted_regex": "^(data|stringData)$", "age": f"{ONE},{THREE}"},
    "second-key-group": {
        "encrypted_regex": "^(data|stringData)$",
        "key_groups": [{"age": [ONE]}, {"age": [THREE]}],
    },
    "kms": {
        "encrypted_regex": "^(data|stringData)$",
        "age": ONE,
        "kms": "arn:aws:kms:eu-west-1:111122223333:key/abcd",
    },
    "vault": {
        "encrypted_regex": "^(data|stringData)$",
        "age": ONE,
        "hc_vault_transit_uri": "http://vault.example:8200/v1/sops/keys/k",
    },
    "pgp": {
        "encrypted_regex": "^(data|stringData)$",
        "pgp": "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4",
    },
}


@pytest.mark.parametrize("hostile", list(HOSTILE_RULES.values()), ids=list(HOSTILE_RULES))
def test_a_rule_that_says_otherwise_is_put_behind_reverserds(hostile: dict[str, Any]) -> None:
    rule = {"path_regex": ".*", **hostile}
    existing = yaml.safe_dump({"creation_rules": [rule]}).encode()
    written = sops_config_for(existing, [ONE])
    assert rules(written) == [*rules(sops_config([ONE])), rule]
    assert sops_config_for(written, [ONE]) == written  # stable once reverserd's rule is first


def test_rules_for_other_files_and_other_keys_are_kept_behind_reverserds_rule() -> None:
    merged = sops_config_for(HAND_MADE_ELSEWHERE, [ONE])
    parsed = yaml.safe_load(merged)
    assert parsed["stores"] == {"yaml": {"indent": 4}}
    assert rules(merged) == [*rules(sops_config([ONE])), *rules(HAND_MADE_ELSEWHERE)]
    assert sops_config_for(merged, [ONE]) == merged
    # New recipients replace reverserd's rule, never add a second one.
    assert rules(sops_config_for(merged, [TWO])) == [
        *rules(sops_config([TWO])),
        *rules(HAND_MADE_ELSEWHERE),
    ]


@pytest.mark.parametrize("content", [b"", b"creation_rules: [unclosed\n", b"- just\n- a list\n"])
def test_a_file_that_is_not_a_sops_config_is_replaced_by_reverserds(content: bytes) -> None:
    assert sops_config_for(content, [ONE]) == sops_config([ONE])


CIPHER = "ENC[AES256_GCM,data:c2VjcmV0,iv:aXZpdml2aXZpdml2,tag:dGFndGFndGFn,type:str]"


def sops_file(**changes: Any) -> dict[str, Any]:
    """A Secret as sops writes it for recipient ONE, with ``changes`` applied on top."""
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": "ns"},
        "data": {"password": CIPHER, "empty": ""},
        "stringData": {"token": CIPHER},
        "sops": {
            "age": [{"recipient": ONE, "enc": "-----BEGIN AGE ENCRYPTED FILE-----\n"}],
            "kms": [],
            "lastmodified": "2026-01-01T00:00:00Z",
            "mac": CIPHER,
            "encrypted_regex": "^(data|stringData)$",
            "version": "3.13.3",
        },
    }
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = document
        for parent in parents:
            node = node[parent]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return document


def check(document: dict[str, Any], recipients: list[str] | None = None) -> None:
    check_ciphertext(yaml.safe_dump(document).encode(), recipients or [ONE])


def test_a_file_of_ciphertext_for_the_targets_recipients_passes() -> None:
    check(sops_file())
    check(sops_file(data=None, stringData=None))


@pytest.mark.parametrize(
    "changes",
    [
        {"data__password": "cGxhaW4="},
        {"stringData__token": "hunter2"},
        {"data__password": "ENC[AES256_GCM,data:c2VjcmV0]"},
        {"data": ["ENC[...]"]},
        {"sops": None},
        {"sops__encrypted_regex": "^nope$"},
        {"sops__unencrypted_suffix": "_plain"},
        {"sops__age": [{"recipient": ONE}, {"recipient": THREE}]},
        {"sops__kms": [{"arn": "arn:aws:kms:eu-west-1:111122223333:key/abcd"}]},
        {"sops__hc_vault": [{"vault_address": "http://vault.example:8200"}]},
    ],
    ids=[
        "data-plaintext",
        "stringData-plaintext",
        "truncated-ciphertext",
        "data-not-a-mapping",
        "no-metadata",
        "narrower-regex",
        "unencrypted-suffix",
        "extra-recipient",
        "kms",
        "vault",
    ],
)
def test_output_that_shows_a_value_or_names_another_reader_is_refused(
    changes: dict[str, Any],
) -> None:
    with pytest.raises(NotCiphertext) as refused:
        check(sops_file(**changes))
    assert "cGxhaW4" not in str(refused.value) and "hunter2" not in str(refused.value)


def test_output_for_fewer_recipients_than_the_target_names_is_refused() -> None:
    with pytest.raises(NotCiphertext):
        check(sops_file(), [ONE, TWO])


def target(encryption: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"providerRef": {"name": "p"}, "branch": "main", "path": "x"}
    if encryption is not None:
        spec["encryption"] = encryption
    return {"metadata": {"namespace": "ns", "name": "t", "generation": 1}, "spec": spec}


@pytest.mark.parametrize(
    "encryption",
    [
        None,
        {"provider": "sops", "secretRef": {"name": "keys"}},
        {"provider": "sops", "age": {"recipients": {"publicKeys": [ONE]}}},
        {"provider": "sops", "age": {"enabled": False, "recipients": {"publicKeys": [ONE]}}},
    ],
    ids=["absent", "no-age", "enabled-omitted", "disabled"],
)
def test_without_age_enabled_the_target_encrypts_nothing(encryption: dict[str, Any] | None) -> None:
    assert parse_target(target(encryption)).encryption == {}


def test_age_enabled_keeps_the_encryption_spec() -> None:
    encryption = {"provider": "sops", "age": {"enabled": True, "recipients": {"publicKeys": [ONE]}}}
    assert parse_target(target(encryption)).encryption == encryption
