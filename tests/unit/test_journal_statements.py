"""How the journal writer's rows reach SQLite: events and origins as multi-row statements of
bound values, the ``objects`` table kept by triggers on ``events``, and an older journal
upgraded in place."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from reverserd.journal import JournalWriter, StreamSpec
from reverserd.journal import writer as writer_module
from reverserd.journal.migrations import (
    MigrationNumberTaken,
    migrate,
    migrations_dir,
    pending_migrations,
)
from reverserd.kube.resources import ResourceType

CONFIGMAPS = StreamSpec(ResourceType("", "v1", "configmaps", "ConfigMap", True))
CONFIGMAPS_IN_NS = StreamSpec(ResourceType("", "v1", "configmaps", "ConfigMap", True), "ns")
WIDGETS_V1 = StreamSpec(ResourceType("example.com", "v1", "widgets", "Widget", True))
WIDGETS_V2 = StreamSpec(ResourceType("example.com", "v2", "widgets", "Widget", True))
OBJECT_COLUMNS = (
    "api_group, resource, namespace, name, api_version, uid, resource_version, stream, seq"
)


def body(name: str, version: int, uid: str = "u-1", namespace: str = "ns", **extra: Any) -> Any:
    metadata = {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": str(version)}
    managed = [{"manager": "kubectl", "operation": "Update", "time": "2026-01-01T00:00:00Z"}]
    return {"kind": "X", "metadata": {**metadata, "managedFields": managed, **extra}, "n": version}


def index_rows(writer: JournalWriter) -> list[tuple[Any, ...]]:
    """The writer's in-memory index as ``objects`` rows: what the triggers must have written."""
    return sorted(
        (
            group,
            resource,
            namespace,
            name,
            e.api_version,
            e.uid,
            e.resource_version,
            e.stream,
            e.seq,
        )
        for (group, resource), entries in writer.index._by_type.items()
        for (namespace, name), e in entries.items()
    )


def table_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        return sorted(connection.execute(f"SELECT {OBJECT_COLUMNS} FROM objects").fetchall())


async def test_objects_rows_equal_the_writers_index_through_every_kind_of_event(
    tmp_path: Path,
) -> None:
    writer = await JournalWriter.open(tmp_path)
    task = asyncio.create_task(writer.run())
    for stream in (CONFIGMAPS, CONFIGMAPS_IN_NS, WIDGETS_V1, WIDGETS_V2):
        await writer.register_stream(stream)
    seed = await writer.begin_seed(CONFIGMAPS, relist=False)
    # c twice: the one in "other" outlives the deletion of the one in "ns".
    listed = [body("a", 1), body("b", 2, "u-b"), body("c", 3, "u-c"), body("c", 3, "u-o", "other")]
    await writer.record_seed_page(seed, [*listed, body("z", 3, "u-z", "other")])
    await writer.finish_seed(seed, "3")
    # Several operations in one transaction, the same object changing twice within it.
    await asyncio.gather(
        writer.record_changes(
            CONFIGMAPS, [("MODIFIED", body("a", 4)), ("MODIFIED", body("a", 5))], "5"
        ),
        writer.record_changes(CONFIGMAPS_IN_NS, [("MODIFIED", body("b", 6, "u-b2"))], "6"),
        writer.record_changes(
            CONFIGMAPS,
            [("MODIFIED", body("c", 7, "u-c", deletionTimestamp="2026-01-01T00:00:00Z"))],
            "7",
        ),
        writer.record_changes(
            WIDGETS_V1, [("ADDED", body("w", 8, "u-w")), ("ADDED", body("v", 8, "u-v"))], "8"
        ),
    )
    # A new preferred version of the same object, an unchanged state, a deletion.
    await writer.record_changes(WIDGETS_V2, [("MODIFIED", body("w", 8, "u-w"))], "9")
    await writer.record_changes(CONFIGMAPS, [("MODIFIED", body("a", 5))], "9")
    await writer.record_changes(WIDGETS_V1, [("DELETED", body("v", 10, "u-v"))], "10")
    relist = await writer.begin_seed(CONFIGMAPS, relist=True)
    await writer.record_seed_page(
        relist, [body("a", 5), body("b", 6, "u-b2"), body("c", 3, "u-o", "other")]
    )
    await writer.finish_seed(relist, "11")
    task.cancel()
    expected = index_rows(writer)
    await writer.close()

    assert table_rows(tmp_path / "journal.db") == expected
    assert expected == [
        ("", "configmaps", "ns", "a", "v1", "u-1", "5", "v1/configmaps@*", 9),
        ("", "configmaps", "ns", "b", "v1", "u-b2", "6", "v1/configmaps@ns", 11),
        ("", "configmaps", "other", "c", "v1", "u-o", "3", "v1/configmaps@*", 5),
        ("example.com", "widgets", "ns", "w", "v2", "u-w", "8", "example.com/v2/widgets@*", 15),
    ]
    # Reopened, the index is read back from the rows the triggers wrote.
    reopened = await JournalWriter.open(tmp_path)
    assert index_rows(reopened) == expected
    await reopened.close()


async def test_rows_split_over_several_statements_keep_their_order_bytes_and_origins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A few rows and bodies per statement: many statements in one transaction.
    monkeypatch.setattr(writer_module, "MAX_STATEMENT_BODY_BYTES", 400)
    monkeypatch.setattr(writer_module, "ROWS_PER_STATEMENT", 4)
    writer = await JournalWriter.open(tmp_path)
    task = asyncio.create_task(writer.run())
    await writer.register_stream(CONFIGMAPS)
    statements: list[tuple[int, int]] = []
    split = writer_module.insert_statements

    def counting(head: str, row: str, width: int, values: list[Any]) -> list[tuple[str, list[Any]]]:
        made = split(head, row, width, values)
        if head == writer_module.EVENTS_INSERT:
            for _, parameters in made:
                bodies = parameters[width - 1 :: width]
                statements.append((len(parameters) // width, sum(len(b) for b in bodies)))
        return made

    monkeypatch.setattr(writer_module, "insert_statements", counting)
    sent = [body(f"o{i}", 10 + i, f"u-{i}", note="é" * i) for i in range(40)]
    await writer.record_changes(CONFIGMAPS, [("ADDED", b) for b in sent], "50")
    task.cancel()
    # Every body is 100-300 bytes: one statement holds a few, never more than either limit.
    assert sum(rows for rows, _ in statements) == len(sent)
    assert len(statements) >= len(sent) // 4
    assert max(rows for rows, _ in statements) <= 4 and max(size for _, size in statements) <= 400
    await writer.close()
    with sqlite3.connect(tmp_path / "journal.db") as connection:
        rows = connection.execute(
            "SELECT e.name, e.body, typeof(e.body), o.manager, o.prior_resource_version,"
            " o.managers FROM events e JOIN event_origins o USING (seq) ORDER BY e.seq"
        ).fetchall()
    assert len(rows) == len(sent)
    for (name, stored, kind, manager, prior, managers), original in zip(rows, sent, strict=True):
        metadata = {k: v for k, v in original["metadata"].items() if k != "managedFields"}
        assert name == metadata["name"] and kind == "text"
        assert json.loads(stored) == {**original, "metadata": metadata}
        assert (manager, prior, json.loads(managers)) == ("kubectl (Update)", "", ["kubectl"])


@pytest.mark.parametrize("value", [2**70, "\ud800 lone surrogate"])
async def test_bodies_orjson_refuses_are_journaled_as_json_text(tmp_path: Path, value: Any) -> None:
    writer = await JournalWriter.open(tmp_path)
    task = asyncio.create_task(writer.run())
    await writer.register_stream(CONFIGMAPS)
    await writer.record_changes(CONFIGMAPS, [("ADDED", body("odd", 1, data=value))], "1")
    task.cancel()
    await writer.close()
    with sqlite3.connect(tmp_path / "journal.db") as connection:
        ((stored, kind),) = connection.execute("SELECT body, typeof(body) FROM events").fetchall()
    assert kind == "text"
    assert json.loads(stored)["metadata"]["data"] == value


async def test_a_journal_of_the_previous_schema_upgrades_in_place(tmp_path: Path) -> None:
    previous = tmp_path / "migrations"
    previous.mkdir()
    for path in migrations_dir().glob("*.sql"):
        if int(path.name[:4]) < 8:
            shutil.copy(path, previous)
    state = tmp_path / "state"
    state.mkdir()
    # Rows as the writer of schema 7 wrote them: events and their objects rows, bound one by one.
    with sqlite3.connect(state / "journal.db", isolation_level=None) as connection:
        connection.execute("PRAGMA journal_mode = WAL")
        assert migrate(connection, previous) == 7
        for seq, name in ((1, "old"), (2, "gone")):
            connection.execute(
                "INSERT INTO events (seq, stream, kind, api_group, api_version, resource,"
                " namespace, name, uid, resource_version, journaled_at, body)"
                " VALUES (?, 'v1/configmaps@*', 'CREATE', '', 'v1', 'configmaps', 'ns', ?, ?, ?,"
                " 0, '{}')",
                (seq, name, f"u-{name}", str(seq)),
            )
            connection.execute(
                f"INSERT INTO objects ({OBJECT_COLUMNS}) VALUES"
                " ('', 'configmaps', 'ns', ?, 'v1', ?, ?, 'v1/configmaps@*', ?)",
                (name, f"u-{name}", str(seq), seq),
            )
    writer = await JournalWriter.open(state)
    task = asyncio.create_task(writer.run())
    await writer.register_stream(CONFIGMAPS)
    await writer.record_changes(
        CONFIGMAPS,
        [
            ("MODIFIED", body("old", 3, "u-old")),
            ("DELETED", body("gone", 4, "u-gone")),
            ("ADDED", body("new", 5, "u-new")),
        ],
        "5",
    )
    task.cancel()
    expected = index_rows(writer)
    await writer.close()
    assert table_rows(state / "journal.db") == expected
    assert [row[3:9] for row in expected] == [
        ("new", "v1", "u-new", "5", "v1/configmaps@*", 5),
        ("old", "v1", "u-old", "3", "v1/configmaps@*", 3),
    ]
    with sqlite3.connect(state / "journal.db") as connection:
        newest = max(int(path.name[:4]) for path in migrations_dir().glob("*.sql"))
        assert connection.execute("PRAGMA user_version").fetchone()[0] == newest
        # The page size of an existing journal stays; only a new journal gets the larger one.
        assert connection.execute("PRAGMA page_size").fetchone()[0] == 4096


async def test_a_new_journal_has_large_pages(tmp_path: Path) -> None:
    writer = await JournalWriter.open(tmp_path)
    await writer.close()
    with sqlite3.connect(tmp_path / "journal.db") as connection:
        assert connection.execute("PRAGMA page_size").fetchone()[0] == writer_module.PAGE_SIZE
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_two_migrations_with_one_number_are_refused_before_any_runs(tmp_path: Path) -> None:
    for path in migrations_dir().glob("*.sql"):
        shutil.copy(path, tmp_path)
    assert [number for number, _ in pending_migrations(0, tmp_path)] == sorted(
        int(path.name[:4]) for path in migrations_dir().glob("*.sql")
    )
    (tmp_path / "0002_also_second.sql").write_text("CREATE TABLE never (x);")
    with sqlite3.connect(":memory:") as connection:
        with pytest.raises(MigrationNumberTaken, match="0002"):
            migrate(connection, tmp_path)
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 0


async def test_a_burst_is_written_in_transactions_of_a_bounded_number_of_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Six callers queued at once: three transactions of two callers each, not one of all six,
    # and each batch after the first is built while its predecessor is already being written,
    # never before that write has started (the two would take turns instead of overlapping).
    monkeypatch.setattr(writer_module, "EVENTS_PER_COMMIT", 10)
    writer = await JournalWriter.open(tmp_path)
    task = asyncio.create_task(writer.run())
    await writer.register_stream(CONFIGMAPS)
    written: list[int] = []
    writes_started_at_prepare: list[int] = []
    write, prepare = writer._write, writer._prepare

    async def counting(batch: Any) -> bool:
        written.append(sum(len(i.events) for i in batch.inserts) // writer_module.EVENTS_WIDTH)
        return await write(batch)

    def watching(first: Any) -> Any:
        writes_started_at_prepare.append(len(written))
        return prepare(first)

    monkeypatch.setattr(writer, "_write", counting)
    monkeypatch.setattr(writer, "_prepare", watching)
    calls = [
        writer.record_changes(
            CONFIGMAPS,
            [("ADDED", body(f"o{k}-{i}", 10 * k + i, f"u-{k}-{i}")) for i in range(5)],
            None,
        )
        for k in range(6)
    ]
    await asyncio.gather(*calls)
    task.cancel()
    await writer.close()
    assert written == [10, 10, 10]
    assert writes_started_at_prepare == [0, 1, 2]
    with sqlite3.connect(tmp_path / "journal.db") as connection:
        assert connection.execute("SELECT COUNT(*) FROM objects").fetchone()[0] == 30


async def test_the_writer_never_checkpoints_and_its_own_checkpoints_reach_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpoint after every transaction: the database file then holds the events while the
    # writer is open, though the writer's own connection never checkpoints.
    monkeypatch.setattr(writer_module, "CHECKPOINT_AFTER_BYTES", 1)
    writer = await JournalWriter.open(tmp_path)
    assert list(await writer.connection.execute_fetchall("PRAGMA wal_autocheckpoint")) == [(0,)]
    task = asyncio.create_task(writer.run())
    await writer.register_stream(CONFIGMAPS)
    empty = (tmp_path / "journal.db").stat().st_size
    sent = [body(f"o{i}", i, f"u-{i}", note="x" * 1000) for i in range(200)]
    await writer.record_changes(CONFIGMAPS, [("ADDED", b) for b in sent], "200")
    await writer._checkpointing
    task.cancel()
    assert (tmp_path / "journal.db").stat().st_size >= empty + 200 * 1000
    await writer.close()


async def test_a_failing_checkpoint_is_logged_and_the_writes_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(writer_module, "CHECKPOINT_AFTER_BYTES", 1)
    writer = await JournalWriter.open(tmp_path)
    writer._checkpointer.close()  # every checkpoint now fails
    task = asyncio.create_task(writer.run())
    await writer.register_stream(CONFIGMAPS)
    for round_ in range(3):
        await writer.record_changes(
            CONFIGMAPS, [("ADDED", body(f"o{round_}", round_, f"u-{round_}"))], str(round_)
        )
        assert writer._checkpointing is not None
        await writer._checkpointing
    task.cancel()
    await writer.close()
    assert "journal checkpoint failed" in caplog.text
    with sqlite3.connect(tmp_path / "journal.db") as connection:
        assert connection.execute("SELECT COUNT(*) FROM objects").fetchone()[0] == 3
