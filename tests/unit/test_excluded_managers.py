"""excludeFieldManagers: which managers a change has, and when it is left out."""

from __future__ import annotations

from typing import Any

from reverserd.journal import EventKind
from reverserd.journal.origin import newest_write
from reverserd.targets.consumer import made_only_by

FLUX = frozenset({"kustomize-controller"})


def entry(manager: str, when: str, subresource: str = "") -> dict[str, Any]:
    found = {"manager": manager, "operation": "Apply", "time": when, "fieldsV1": {}}
    return {**found, "subresource": subresource} if subresource else found


def test_the_managers_of_a_change_are_those_of_the_newest_entries_of_the_object() -> None:
    body = {
        "metadata": {
            "managedFields": [
                entry("kubectl-client-side-apply", "2026-01-01T10:00:00Z"),
                entry("kustomize-controller", "2026-01-01T10:05:00Z"),
                entry("helm", "2026-01-01T10:05:00Z"),
                entry("status-writer", "2026-01-01T10:09:00Z", subresource="status"),
            ]
        }
    }
    assert newest_write(body)[1] == ["helm", "kustomize-controller"]
    assert newest_write({"metadata": {}})[1] == []


def test_a_change_is_left_out_only_when_every_manager_of_it_is_excluded() -> None:
    assert made_only_by(["kustomize-controller"], FLUX, EventKind.UPDATE)
    assert made_only_by(["kustomize-controller"], FLUX, EventKind.CREATE)
    assert not made_only_by(["helm", "kustomize-controller"], FLUX, EventKind.UPDATE)
    assert not made_only_by(["kubectl-edit"], FLUX, EventKind.UPDATE)
    # Unknown managers and deletions are always committed.
    assert not made_only_by(None, FLUX, EventKind.UPDATE)
    assert not made_only_by([], FLUX, EventKind.UPDATE)
    assert not made_only_by(["kustomize-controller"], FLUX, EventKind.DELETE)
    assert not made_only_by(["kustomize-controller"], frozenset(), EventKind.UPDATE)
