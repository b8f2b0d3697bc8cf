"""A folder's kustomization.yaml: created, kept in step, and a person's file respected."""

from __future__ import annotations

import yaml

from reverserd.targets.kustomization import updated_kustomization


def test_a_new_folder_gets_a_kustomization_listing_its_files_sorted() -> None:
    content = updated_kustomization(None, {"b.yaml", "a.yaml"}, ())
    assert content is not None
    assert yaml.safe_load(content) == {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["a.yaml", "b.yaml"],
    }
    assert updated_kustomization(content, {"a.yaml", "b.yaml"}, ()) is None


def test_a_persons_file_keeps_its_keys_and_other_entries_in_place() -> None:
    theirs = yaml.safe_dump(
        {"namespace": "team-a", "resources": ["../base", "old.yaml", "kept.yaml"]}
    ).encode()
    content = updated_kustomization(theirs, {"kept.yaml", "new.yaml"}, ["old.yaml"])
    assert content is not None
    assert yaml.safe_load(content) == {
        "namespace": "team-a",
        "resources": ["../base", "kept.yaml", "new.yaml"],
    }


def test_what_is_not_reverserds_to_repair_is_left_alone() -> None:
    assert updated_kustomization(b"- a list\n", {"a.yaml"}, ()) is None
    assert updated_kustomization(b"resources: a.yaml\n", {"a.yaml"}, ()) is None
    assert updated_kustomization(b"{unparseable: [\n", {"a.yaml"}, ()) is None
    # An object's own file has the name: the folder gets no listing.
    assert updated_kustomization(None, {"kustomization.yaml", "a.yaml"}, ()) is None
