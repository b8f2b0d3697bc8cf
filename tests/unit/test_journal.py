"""The journal's guarantees, on a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from reverserd.journal import (
    EventKind,
    JournalReader,
    JournalWriter,
    ObjectKey,
    SeedState,
    StreamSpec,
    TargetPlace,
)
from reverserd.kube.resources import ResourceType
from tests.conftest import current_objects

CONFIGMAPS = StreamSpec(ResourceType("", "v1", "configmaps", "ConfigMap", True))
SECRETS = StreamSpec(ResourceType("", "v1", "secrets", "Secret", True))


def configmap(name: str, version: int, uid: str = "u-1", **extra: Any) -> dict[str, Any]:
    metadata = {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": str(version)}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {**metadata, **extra}}


async def kinds(reader: JournalReader) -> list[tuple[str, str]]:
    return [(e.kind.value, e.name) for e in await reader.events_after(0, 1000)]


async def test_event_kinds_follow_the_objects_life(
    journal: tuple[JournalWriter, JournalReader],
) -> None:
    writer, reader = journal
    await writer.register_stream(CONFIGMAPS)
    await writer.record_changes(CONFIGMAPS, [("ADDED", configmap("a", 1))], "1")
    await writer.record_changes(CONFIGMAPS, [("MODIFIED", configmap("a", 2))], "2")
    await writer.record_changes(CONFIGMAPS, [("MODIFIED", configmap("a", 2))], "2")
    terminating = configmap("a", 3, deletionTimestamp="2026-01-01T00:00:00Z")
    await writer.record_changes(CONFIGMAPS, [("MODIFIED", terminating)], "3")
    await writer.record_changes(CONFIGMAPS, [("DELETED", configmap("a", 4))], "4")
    await writer.record_changes(CONFIGMAPS, [("ADDED", configmap("a", 5, uid="u-2"))], "5")
    assert await kinds(reader) == [
        ("CREATE", "a"),
        ("UPDATE", "a"),
        ("DELETE", "a"),
        ("CREATE", "a"),
    ]
    streams = await reader.streams()
    assert [(s.stream, s.resource_version) for s in streams] == [("v1/configmaps@*", "5")]


async def test_new_uid_under_a_known_name_is_delete_then_create(
    journal: tuple[JournalWriter, JournalReader],
) -> None:
    writer, reader = journal
    await writer.register_stream(CONFIGMAPS)
    await writer.record_changes(CONFIGMAPS, [("ADDED", configmap("a", 1))], "1")
    await writer.record_changes(CONFIGMAPS, [("MODIFIED", configmap("a", 9, uid="u-2"))], "9")
    assert await kinds(reader) == [("CREATE", "a"), ("DELETE", "a"), ("CREATE", "a")]


async def test_complete_seed_deletes_only_what_it_did_not_list(
    journal: tuple[JournalWriter, JournalReader],
) -> None:
    writer, reader = journal
    await writer.register_stream(CONFIGMAPS)
    items = [configmap("a", 1), configmap("b", 2, uid="u-b"), configmap("c", 3, uid="u-c")]
    seed = await writer.begin_seed(CONFIGMAPS, relist=False)
    await writer.record_seed_page(seed, items)
    await writer.finish_seed(seed, "3")
    relist = await writer.begin_seed(CONFIGMAPS, relist=True)
    await writer.record_seed_page(relist, [configmap("a", 1), configmap("c", 7, uid="u-c")])
    await writer.finish_seed(relist, "7")
    assert await kinds(reader) == [
        ("SEED_BEGIN", ""),
        ("CREATE", "a"),
        ("CREATE", "b"),
        ("CREATE", "c"),
        ("SEED_END", ""),
        ("SEED_BEGIN", ""),
        ("UPDATE", "c"),
        ("DELETE", "b"),
        ("SEED_END", ""),
    ]
    (stream,) = await reader.streams()
    assert (stream.seed_state, stream.resource_version, stream.relists) == (
        SeedState.COMPLETE,
        "7",
        1,
    )
    latest = await reader.latest_event(ObjectKey("", "configmaps", "ns", "c"))
    assert latest is not None and (latest.kind, latest.resource_version) == (EventKind.UPDATE, "7")
    assert await reader.latest_event(ObjectKey("", "configmaps", "ns", "b")) is None


async def test_relist_of_one_namespace_deletes_nothing_of_another(
    journal: tuple[JournalWriter, JournalReader],
) -> None:
    writer, reader = journal
    team_a = StreamSpec(CONFIGMAPS.rtype, "team-a")
    team_b = StreamSpec(CONFIGMAPS.rtype, "team-b")
    for stream in (team_a, team_b):
        await writer.register_stream(stream)
        seed = await writer.begin_seed(stream, relist=False)
        await writer.record_seed_page(
            seed,
            [
                configmap("kept", 1, uid=f"{stream.namespace}-kept", namespace=stream.namespace),
                configmap("gone", 2, uid=f"{stream.namespace}-gone", namespace=stream.namespace),
            ],
        )
        await writer.finish_seed(seed, "2")
    relist = await writer.begin_seed(team_a, relist=True)
    await writer.record_seed_page(
        relist, [configmap("kept", 1, uid="team-a-kept", namespace="team-a")]
    )
    await writer.finish_seed(relist, "9")

    deletes = [
        (event.namespace, event.name)
        for event in await reader.events_after(0, 1000)
        if event.kind is EventKind.DELETE
    ]
    assert deletes == [("team-a", "gone")]
    objects = await current_objects(reader, [("", "configmaps")])
    assert sorted((o.key.namespace, o.key.name) for o in objects) == [
        ("team-a", "kept"),
        ("team-b", "gone"),
        ("team-b", "kept"),
    ]


async def test_seed_that_fails_part_way_deletes_nothing(
    journal: tuple[JournalWriter, JournalReader],
) -> None:
    writer, reader = journal
    await writer.register_stream(CONFIGMAPS)
    seed = await writer.begin_seed(CONFIGMAPS, relist=False)
    await writer.record_seed_page(seed, [configmap("a", 1), configmap("b", 2, uid="u-b")])
    await writer.finish_seed(seed, "2")
    broken = await writer.begin_seed(CONFIGMAPS, relist=True)
    await writer.record_seed_page(broken, [configmap("a", 1)])
    # The LIST breaks here: finish_seed is never called.
    assert [k for k, _ in await kinds(reader)].count("DELETE") == 0
    (stream,) = await reader.streams()
    assert stream.seed_state is SeedState.SEEDING
    objects = await current_objects(reader, [("", "configmaps")])
    assert [o.key.name for o in objects] == ["a", "b"]


async def test_snapshot_pages_are_bounded_and_read_one_state_however_long_they_take(
    journal: tuple[JournalWriter, JournalReader],
) -> None:
    writer, reader = journal
    await writer.register_stream(CONFIGMAPS)
    big = "x" * 3000
    items = [configmap(f"cm-{n:02d}", n, uid=f"u-{n}", labels={"pad": big}) for n in range(10)]
    seed = await writer.begin_seed(CONFIGMAPS, relist=False)
    await writer.record_seed_page(seed, items)
    await writer.finish_seed(seed, "10")
    last = await reader.last_seq()
    pages: list[list[str]] = []
    async with reader.snapshot_pages([("", "configmaps")], 4, 7000) as snapshot:
        async for page in snapshot.pages:
            pages.append([stored.key.name for stored in page])
            if len(pages) == 1:
                # Written while the snapshot is read: a later page must not see it.
                changes = [
                    ("DELETED", configmap("cm-09", 10, uid="u-9")),
                    ("ADDED", configmap("cm-10", 11, uid="u-x")),
                ]
                await writer.record_changes(CONFIGMAPS, changes, "11")
    assert snapshot.seq == last
    # Bodies of about 3.1 KB: the third takes a page past 7,000 bytes and ends it, before the
    # limit of four objects.
    assert [name for page in pages for name in page] == [f"cm-{n:02d}" for n in range(10)]
    assert [len(page) for page in pages] == [3, 3, 3, 1]
    now = await current_objects(reader, [("", "configmaps")])
    assert [o.key.name for o in now][-2:] == ["cm-08", "cm-10"]


async def test_snapshot_pages_keep_objects_whose_body_is_missing(
    journal: tuple[JournalWriter, JournalReader], tmp_path: Path
) -> None:
    # The writer never stores an object without a body; a journal damaged or written otherwise
    # must still list every object, or the snapshot would take the rest for deleted.
    writer, reader = journal
    await writer.register_stream(CONFIGMAPS)
    seed = await writer.begin_seed(CONFIGMAPS, relist=False)
    await writer.record_seed_page(seed, [configmap(n, 1, uid=f"u-{n}") for n in "abcde"])
    await writer.finish_seed(seed, "1")
    with sqlite3.connect(tmp_path / "journal.db") as raw:
        raw.execute(
            "UPDATE events SET body = NULL WHERE seq IN"
            " (SELECT seq FROM objects WHERE name IN ('b', 'd', 'e'))"
        )
    async with reader.snapshot_pages([("", "configmaps")], 2, 1) as snapshot:
        names = [stored.key.name async for page in snapshot.pages for stored in page]
    assert names == ["a", "b", "c", "d", "e"]


async def test_secret_values_never_reach_the_database(
    journal: tuple[JournalWriter, JournalReader], tmp_path: Path
) -> None:
    writer, reader = journal
    await writer.register_stream(SECRETS)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": "s",
            "namespace": "ns",
            "uid": "u",
            "resourceVersion": "1",
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": (
                    '{"data":{"p":"c2VjcmV0LXZhbHVl"}}'
                )
            },
        },
        "data": {"p": "c2VjcmV0LXZhbHVl"},
        "stringData": {"q": "plain-secret-value"},
    }
    await writer.record_changes(SECRETS, [("ADDED", secret)], "1")
    (event,) = await reader.events_after(0, 10)
    assert event.body is not None
    assert "data" not in event.body and "stringData" not in event.body
    assert event.body["type"] == "Opaque"
    for path in tmp_path.iterdir():
        content = path.read_bytes()
        assert b"c2VjcmV0LXZhbHVl" not in content, path
        assert b"plain-secret-value" not in content, path


async def test_compaction_keeps_what_objects_or_cursors_still_need(
    journal: tuple[JournalWriter, JournalReader],
) -> None:
    writer, reader = journal
    await writer.register_stream(CONFIGMAPS)
    for version in range(1, 6):
        await writer.record_changes(CONFIGMAPS, [("MODIFIED", configmap("a", version))], None)
    await writer.write_cursor("ns/target", seq=2, covered={})
    await writer.compact()
    assert [e.seq for e in await reader.events_after(0, 100)] == [3, 4, 5]
    await writer.write_cursor("ns/target", seq=5, covered={})
    await writer.compact()
    assert [e.seq for e in await reader.events_after(0, 100)] == [5]
    await writer.record_changes(CONFIGMAPS, [("DELETED", configmap("a", 6))], None)
    await writer.forget_target("ns/target")
    await writer.compact()
    assert await reader.events_after(0, 100) == []


async def test_a_targets_place_is_recorded_until_it_is_forgotten_with_its_state(
    journal: tuple[JournalWriter, JournalReader],
) -> None:
    writer, reader = journal
    place = TargetPlace("https://git.example/r#main", "ns/provider", "live")
    await writer.record_place("ns/target", place)
    await writer.write_cursor(
        "ns/target", seq=0, covered={}, files=[(ObjectKey("", "configmaps", "ns", "a"), "p", "h")]
    )
    await writer.write_cursor("ns/other", seq=0, covered={})
    assert await reader.target_place("ns/target") == place
    assert await reader.journaled_targets() == {"ns/target", "ns/other"}
    await writer.forget_target("ns/target")
    assert await reader.target_place("ns/target") is None
    assert await reader.target_files("ns/target") == {}
    assert await reader.journaled_targets() == {"ns/other"}


async def test_a_cursor_beyond_the_lag_bound_stops_pinning_and_stays_detached(
    journal: tuple[JournalWriter, JournalReader],
) -> None:
    writer, reader = journal
    await writer.register_stream(CONFIGMAPS)
    for version in range(1, 11):
        await writer.record_changes(CONFIGMAPS, [("MODIFIED", configmap("a", version))], None)
    await writer.write_cursor("ns/stuck", seq=1, covered={})
    await writer.write_cursor("ns/busy", seq=8, covered={})
    await writer.compact(max_lag_events=20)
    assert (await reader.events_after(0, 100))[0].seq == 2
    await writer.compact(max_lag_events=5)
    # The stuck cursor (9 behind) is detached: it holds back nothing below the floor, but
    # everything above it, which its consumer (running ahead of its stored cursor) may still
    # read; the busy one (2 behind) holds back nothing more.
    assert writer.resync_floor == 5
    assert [e.seq for e in await reader.events_after(0, 100)] == [6, 7, 8, 9, 10]
    # A late settle of the stuck target below the floor does not pin again: as the journal
    # grows, the floor follows it and at most the lag bound of events is kept.
    await writer.write_cursor("ns/stuck", seq=3, covered={})
    await writer.write_cursor("ns/busy", seq=10, covered={})
    for version in range(11, 21):
        await writer.record_changes(CONFIGMAPS, [("MODIFIED", configmap("a", version))], None)
    await writer.write_cursor("ns/busy", seq=20, covered={})
    await writer.compact(max_lag_events=5)
    assert writer.resync_floor == 15
    assert [e.seq for e in await reader.events_after(0, 100)] == [16, 17, 18, 19, 20]
    reopened = await JournalWriter.open(writer.path.parent)
    assert reopened.resync_floor == 15
    await reopened.close()


async def test_reopened_journal_continues_sequence_and_index(tmp_path: Path) -> None:
    writer = await JournalWriter.open(tmp_path)
    task = asyncio.create_task(writer.run())
    await writer.register_stream(CONFIGMAPS)
    await writer.record_changes(CONFIGMAPS, [("ADDED", configmap("a", 1))], "1")
    task.cancel()
    await writer.close()
    writer = await JournalWriter.open(tmp_path)
    task = asyncio.create_task(writer.run())
    await writer.record_changes(CONFIGMAPS, [("ADDED", configmap("a", 1))], "1")
    await writer.record_changes(CONFIGMAPS, [("MODIFIED", configmap("a", 2))], "2")
    task.cancel()
    await writer.close()
    with sqlite3.connect(tmp_path / "journal.db") as connection:
        rows = connection.execute("SELECT seq, kind FROM events ORDER BY seq").fetchall()
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    assert rows == [(1, EventKind.CREATE.value), (2, EventKind.UPDATE.value)]
    assert mode == "wal"


async def test_failed_transaction_loses_nothing_committed_and_the_journal_recovers(
    journal: tuple[JournalWriter, JournalReader],
) -> None:
    writer, reader = journal
    await writer.register_stream(CONFIGMAPS)
    await writer.record_changes(CONFIGMAPS, [("ADDED", configmap("a", 1))], "1")

    def broken(batch: Any) -> None:
        batch.execute("INSERT INTO no_such_table VALUES (1)")

    failing = asyncio.ensure_future(writer.submit(broken))
    # Queued behind the broken one: it may be computed on the index the failure invalidates.
    follower = asyncio.ensure_future(
        writer.record_changes(CONFIGMAPS, [("ADDED", configmap("b", 1, uid="u-b"))], "2")
    )
    outcomes = await asyncio.gather(failing, follower, return_exceptions=True)
    assert isinstance(outcomes[0], Exception)
    # Whatever the follower's fate, a retry (as a watcher does) journals it exactly once.
    await writer.record_changes(CONFIGMAPS, [("ADDED", configmap("b", 1, uid="u-b"))], "2")
    await writer.record_changes(CONFIGMAPS, [("MODIFIED", configmap("a", 2))], "3")
    assert await kinds(reader) == [("CREATE", "a"), ("CREATE", "b"), ("UPDATE", "a")]
    seqs = [event.seq for event in await reader.events_after(0, 10)]
    assert seqs == sorted(set(seqs))
    (stream,) = await reader.streams()
    assert stream.resource_version == "3"


async def test_on_a_full_disk_a_transaction_that_changed_nothing_does_not_clear_the_failure(
    tmp_path: Path,
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(volume)], check=True)
    try:
        writer = await JournalWriter.open(volume)
        task = asyncio.create_task(writer.run())
        await writer.register_stream(CONFIGMAPS)
        filler = volume / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        large = [
            ("ADDED", configmap(f"big-{n}", n, f"u-{n}", annotations={"x": "y" * 60_000}))
            for n in range(1, 40)
        ]
        with pytest.raises((sqlite3.Error, OSError)):
            await writer.record_changes(CONFIGMAPS, large, "40")
        assert writer.failure is not None and "full" in writer.failure
        # A watch restarting re-registers its stream: nothing to write, so it succeeds.
        await writer.register_stream(CONFIGMAPS)
        assert writer.failure is not None
        filler.unlink()
        await writer.record_changes(CONFIGMAPS, large, "40")
        assert writer.failure is None
        task.cancel()
        await writer.close()
    finally:
        subprocess.run(["umount", "-l", str(volume)], check=False)
