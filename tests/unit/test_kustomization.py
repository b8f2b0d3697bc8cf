"""A folder's kustomization.yaml: created, kept in step, and a person's file respected."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import yaml

from reverserd.targets.kustomization import KUSTOMIZATION_MAX_BYTES, ListingEdit


def relisted(
    existing: bytes | None, written: Iterable[str], deleted: Iterable[str] = ()
) -> bytes | None:
    edit = ListingEdit("live/kustomization.yaml", frozenset(written), frozenset(deleted))
    return edit.edited(existing)


def test_a_new_folder_gets_a_kustomization_listing_its_files_sorted() -> None:
    content = relisted(None, {"b.yaml", "a.yaml"})
    assert content is not None
    assert yaml.safe_load(content) == {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["a.yaml", "b.yaml"],
    }
    assert relisted(content, {"a.yaml", "b.yaml"}) is None


def test_a_persons_file_keeps_its_keys_and_other_entries_in_place() -> None:
    theirs = yaml.safe_dump(
        {"namespace": "team-a", "resources": ["../base", "old.yaml", "kept.yaml"]}
    ).encode()
    content = relisted(theirs, {"kept.yaml", "new.yaml"}, ["old.yaml"])
    assert content is not None
    assert yaml.safe_load(content) == {
        "namespace": "team-a",
        "resources": ["../base", "kept.yaml", "new.yaml"],
    }


def test_one_edit_applied_to_two_versions_of_the_file_keeps_what_each_had() -> None:
    """The edit is names to list and to drop, not a content: made on the file as it was, then
    replayed on a version someone changed since, it keeps their change."""
    edit = ListingEdit("live/kustomization.yaml", frozenset({"a.yaml", "b.yaml"}), frozenset())
    before = b"resources:\n- a.yaml\n"
    after = b"namespace: team-a\npatches:\n- path: p.yaml\nresources:\n- a.yaml\n- ../base\n"
    assert edit.edited(before) == b"resources:\n- a.yaml\n- b.yaml\n"
    content = edit.edited(after)
    assert content is not None
    assert yaml.safe_load(content) == {
        "namespace": "team-a",
        "patches": [{"path": "p.yaml"}],
        "resources": ["a.yaml", "../base", "b.yaml"],
    }


@pytest.mark.parametrize(
    "theirs",
    [
        b"- a list\n",
        b"resources: a.yaml\n",
        b"{unparseable: [\n",
        b"resources:\n- a: 1\n",
        b"resources:\n- [a.yaml]\n",
        b"resources:\n- 7\n",
        b"resources:\n- a.yaml\n" + b"# padding\n" * (KUSTOMIZATION_MAX_BYTES // 10),
        b"resources: []\ndeep: " + b"[" * 1000 + b"]" * 1000 + b"\n",
    ],
    ids=["list", "string", "unparseable", "mapping", "nested-list", "number", "oversized", "deep"],
)
def test_what_is_not_reverserds_to_repair_is_left_alone(
    theirs: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    assert relisted(theirs, {"a.yaml", "b.yaml"}, ["c.yaml"]) is None
    assert "live/kustomization.yaml is left untouched" in caplog.text


def test_a_file_at_the_size_limit_is_still_changed() -> None:
    listed = b"resources:\n- a.yaml\n"
    theirs = listed + b"#" * (KUSTOMIZATION_MAX_BYTES - len(listed) - 1) + b"\n"
    assert len(theirs) == KUSTOMIZATION_MAX_BYTES
    content = relisted(theirs, {"a.yaml", "b.yaml"})
    assert content is not None
    assert yaml.safe_load(content) == {"resources": ["a.yaml", "b.yaml"]}


def test_an_objects_own_file_of_that_name_gets_no_listing() -> None:
    assert relisted(None, {"kustomization.yaml", "a.yaml"}) is None
