"""What a target folder's ``.sops.yaml`` becomes when reverserd writes Secrets into it, and
what ``age.enabled`` means when a GitTarget omits it (gitops-reverser's default)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from reverserd.config.model import parse_target
from reverserd.encryption.sops import sops_config, sops_config_for

ONE = "age1" + "q" * 58
TWO = "age1" + "p" * 58
THREE = "age1" + "z" * 58

HAND_MADE_COVERING = f"""# kept by the platform team
creation_rules:
  - path_regex: .*\\.sops\\.yaml$
    encrypted_regex: ^(data|stringData)$
    key_groups:
      - age:
          - {ONE}
      - age:
          - {THREE}
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


def test_a_hand_made_rule_covering_reverserds_files_is_kept_byte_for_byte() -> None:
    assert sops_config_for(HAND_MADE_COVERING, [TWO]) == HAND_MADE_COVERING


def test_a_hand_edited_reverserd_file_is_kept() -> None:
    edited = sops_config([ONE]).replace(ONE.encode(), f"{ONE},{THREE}".encode())
    assert sops_config_for(edited, [ONE]) == edited


def test_rules_for_other_files_are_kept_and_reverserds_rule_goes_last() -> None:
    merged = sops_config_for(HAND_MADE_ELSEWHERE, [ONE])
    parsed = yaml.safe_load(merged)
    assert parsed["stores"] == {"yaml": {"indent": 4}}
    assert rules(merged) == [*rules(HAND_MADE_ELSEWHERE), *rules(sops_config([ONE]))]
    # Stable: a second pass changes nothing, new recipients change only reverserd's rule.
    assert sops_config_for(merged, [ONE]) == merged
    again = sops_config_for(merged, [TWO])
    assert rules(again) == [*rules(HAND_MADE_ELSEWHERE), *rules(sops_config([TWO]))]


@pytest.mark.parametrize("content", [b"creation_rules: [unclosed\n", b"- just\n- a list\n"])
def test_a_file_that_is_not_a_sops_config_is_never_overwritten(content: bytes) -> None:
    assert sops_config_for(content, [ONE]) == content


def test_an_empty_file_gets_reverserds_rule() -> None:
    assert rules(sops_config_for(b"", [ONE])) == rules(sops_config([ONE]))


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
