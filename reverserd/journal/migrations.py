"""Schema changes happen only through the numbered ``.sql`` files in ``migrations/``.

Each file ``NNNN_name.sql`` is applied once, in order, inside one transaction together with the
bump of SQLite's ``user_version``, so a crash mid-migration leaves the previous schema intact.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
from pathlib import Path

MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations_dir() -> Path:
    """The source tree's ``migrations/`` or, for an installed package, its shared data copy."""
    override = os.environ.get("REVERSERD_MIGRATIONS_DIR")
    candidates = [Path(override)] if override else []
    candidates += [
        Path(__file__).resolve().parents[2] / "migrations",
        Path(sys.prefix) / "share" / "reverserd" / "migrations",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no migrations folder among {', '.join(map(str, candidates))}")


class MigrationNumberTaken(Exception):
    """Two migration files share a number: a journal at that version would skip one of them."""


def pending_migrations(current: int, folder: Path) -> list[tuple[int, Path]]:
    """The migrations above ``current``, in order; raises :class:`MigrationNumberTaken`."""
    numbered: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        match = MIGRATION_FILE.match(path.name)
        if match is None:
            continue
        number = int(match.group(1))
        if number in numbered:
            raise MigrationNumberTaken(f"{numbered[number].name} and {path.name} share {number}")
        numbered[number] = path
    return [(number, path) for number, path in sorted(numbered.items()) if number > current]


def migrate(connection: sqlite3.Connection, folder: Path | None = None) -> int:
    """Bring the schema up to date; returns the resulting schema version."""
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    for number, path in pending_migrations(version, folder or migrations_dir()):
        script = path.read_text()
        connection.executescript(
            f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
        )
        version = number
    return version
