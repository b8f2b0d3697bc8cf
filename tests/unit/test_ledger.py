"""The ledger's index of file names per folder stays equal to its file records."""

from __future__ import annotations

import random

from reverserd.journal import ObjectKey
from reverserd.targets.ledger import TargetLedger
from reverserd.targets.planning import FilePlan


def _by_folder(ledger: TargetLedger) -> dict[str, set[str]]:
    folders: dict[str, set[str]] = {}
    for path, _ in ledger.files.values():
        folder, _, name = path.rpartition("/")
        folders.setdefault(folder, set()).add(name)
    return folders


def test_names_per_folder_follow_writes_moves_deletes_and_quarantine() -> None:
    ledger = TargetLedger("ns/target", lambda held: None)
    chance = random.Random(7)
    keys = [ObjectKey("", "configmaps", f"ns{n % 3}", f"cm{n}") for n in range(40)]
    folders = ["", "team", "team/a", "other"]
    for _ in range(2000):
        key = chance.choice(keys)
        roll = chance.random()
        if roll < 0.1:
            ledger.hold({key: "too large"})
        else:
            plan = FilePlan()
            path = None if roll < 0.3 else f"{chance.choice(folders)}/{key.name}.yaml".lstrip("/")
            plan.records.append((key, path, "sha"))
            ledger.remember(plan)
        every = set(folders) | {"nowhere"}
        assert ledger.names_in(every) == {
            folder: _by_folder(ledger).get(folder, set()) for folder in every
        }
