"""Attribution on a real journal: field managers, facts from webhook payloads, the resolver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest
from prometheus_client import REGISTRY

from reverserd.attribution.facts import Fact, admission_fact, audit_facts
from reverserd.attribution.identity import author_of
from reverserd.attribution.resolver import Resolver
from reverserd.attribution.store import FactWriter, compact_facts, open_fact_connection
from reverserd.journal import JournalEvent, JournalReader, JournalWriter, StreamSpec
from reverserd.journal.origin import digest, newest_write
from reverserd.kube.resources import ResourceType

CONFIGMAPS = StreamSpec(ResourceType("", "v1", "configmaps", "ConfigMap", True))
SECRETS = StreamSpec(ResourceType("", "v1", "secrets", "Secret", True))
ALICE = "system:serviceaccount:team:alice"
BOB = "system:serviceaccount:team:bob"
MALLORY = "system:serviceaccount:team:mallory"


def entry(manager: str, operation: str, when: str, subresource: str = "") -> dict[str, Any]:
    found = {"manager": manager, "operation": operation, "time": when, "fieldsV1": {}}
    return {**found, "subresource": subresource} if subresource else found


def configmap(version: str, uid: str = "u-1", color: str = "blue", **meta: Any) -> dict[str, Any]:
    metadata = {"name": "app", "namespace": "ns", "uid": uid, "resourceVersion": version}
    managed = [entry("kubectl", "Update", f"2026-01-01T00:00:0{version[-1]}Z")]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {**metadata, "managedFields": managed, **meta},
        "data": {"color": color},
    }


def review(
    user: str,
    operation: str,
    new: dict[str, Any] | None,
    old: dict[str, Any] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": f"req-{user}-{operation}",
            "resource": {"group": "", "version": "v1", "resource": "configmaps"},
            "name": "app",
            "namespace": "ns",
            "operation": operation,
            "userInfo": {"username": user, "groups": ["system:authenticated"]},
            "object": new,
            "oldObject": old,
            "dryRun": dry_run,
        },
    }


# Received before every managedFields time of ``configmap()``: the request wrote its response.
RECEIVED = "2026-01-01T00:00:00.500000Z"


def audit_event(
    user: str, verb: str, response: dict[str, Any], code: int = 200, received: str = RECEIVED
) -> dict[str, Any]:
    return {
        "stage": "ResponseComplete",
        "verb": verb,
        "auditID": f"a-{user}-{verb}",
        "user": {"username": user},
        "objectRef": {"resource": "configmaps", "namespace": "ns", "name": "app"},
        "responseStatus": {"code": code},
        "responseObject": response,
        "requestReceivedTimestamp": received,
    }


def test_newest_field_manager_names_the_write() -> None:
    body = {
        "metadata": {
            "managedFields": [
                entry("kubectl-client-side-apply", "Update", "2026-01-01T00:00:01Z"),
                entry("helm", "Apply", "2026-01-01T00:00:05Z"),
                entry("kube-controller-manager", "Update", "2026-01-01T00:00:09Z", "status"),
            ]
        }
    }
    assert newest_write(body)[0] == "helm (Apply)"
    assert newest_write({"metadata": {}})[0] is None


def test_managers_at_the_same_second_are_all_named() -> None:
    when = "2026-01-01T00:00:01Z"
    body = {"metadata": {"managedFields": [entry("b", "Update", when), entry("a", "Apply", when)]}}
    assert newest_write(body)[0] == "a (Apply), b (Update)"


def test_manager_line_holds_no_control_character() -> None:
    body = {"metadata": {"managedFields": [entry("evil\nreverserd-seq: 9", "Update", "t")]}}
    manager = newest_write(body)[0]
    assert manager is not None and "\n" not in manager


def test_service_accounts_and_users_get_stable_signatures() -> None:
    assert author_of(ALICE) == (
        "team/alice (service account)",
        "alice.team.serviceaccount@kubernetes.invalid",
    )
    assert author_of("jane@example.com") == ("jane@example.com", "jane@example.com")
    assert author_of("Kube Admin") == ("Kube Admin", "kube-admin@kubernetes.invalid")


def test_rejected_and_dry_run_requests_are_no_facts() -> None:
    new = configmap("5")
    assert admission_fact(review(ALICE, "UPDATE", new, configmap("4"), dry_run=True)) is None
    rejected = audit_event(ALICE, "patch", {"kind": "Status", "code": 409}, code=409)
    served = audit_event(BOB, "patch", configmap("6"))
    assert [f.username for f in audit_facts({"items": [rejected, served]})] == [BOB]


def test_metadata_level_audit_events_are_no_facts() -> None:
    """Without the response object the produced resourceVersion is unknown: nothing to match."""
    event = audit_event(ALICE, "patch", {})
    del event["responseObject"]
    assert list(audit_facts({"items": [event]})) == []


def test_reviews_no_digest_can_prove_are_no_facts() -> None:
    """A review that does not hold the stored object could match any change from the same
    predecessor, also one another user made after this request was denied."""
    secret = {"metadata": {"name": "app", "uid": "u-9"}, "data": {"password": "aHVudGVyMg=="}}
    request = review(ALICE, "CREATE", secret)
    request["request"]["resource"]["resource"] = "secrets"
    scaled = review(ALICE, "UPDATE", configmap("2"), configmap("1"))
    scaled["request"]["subResource"] = "scale"
    unproven = [
        request,
        scaled,
        review(ALICE, "DELETE", None, configmap("1")),
        review(ALICE, "UPDATE", None, configmap("1")),
    ]
    assert [admission_fact(r) for r in unproven] == [None] * len(unproven)
    assert admission_fact(review(ALICE, "UPDATE", configmap("2"), configmap("1"))) is not None


def test_audit_no_op_answered_with_an_earlier_version_is_no_fact() -> None:
    """Bob re-applied content already in place: the response carries Alice's version."""
    written = audit_event(BOB, "patch", configmap("6"), received="2026-01-01T00:00:06.9Z")
    no_op = audit_event(BOB, "patch", configmap("6"), received="2026-01-01T00:00:07.1Z")
    assert [f.resource_version for f in audit_facts({"items": [written]})] == ["6"]
    assert list(audit_facts({"items": [no_op]})) == []
    unmanaged = configmap("6")
    del unmanaged["metadata"]["managedFields"]
    assert list(audit_facts({"items": [audit_event(BOB, "patch", unmanaged)]})) == []


def test_audit_facts_name_the_uid_and_deletes_count_only_when_the_object_is_gone() -> None:
    without_uid = configmap("6")
    del without_uid["metadata"]["uid"]
    gone = {"kind": "Status", "status": "Success", "details": {"name": "app", "uid": "u-1"}}
    terminating = configmap("7", deletionTimestamp="2026-01-01T00:00:07Z")
    found = audit_facts(
        {
            "items": [
                audit_event(ALICE, "patch", without_uid),
                audit_event(ALICE, "delete", terminating),
                audit_event(BOB, "delete", gone),
            ]
        }
    )
    assert [(f.username, f.operation, f.uid) for f in found] == [(BOB, "DELETE", "u-1")]


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[tuple[JournalWriter, JournalReader]]:
    writer = await JournalWriter.open(tmp_path)
    writer.digests = True
    task = asyncio.create_task(writer.run())
    reader = await JournalReader.open(tmp_path)
    await writer.register_stream(CONFIGMAPS)
    yield writer, reader
    task.cancel()
    await reader.close()
    await writer.close()


@pytest.fixture
async def facts(
    tmp_path: Path, journal: tuple[JournalWriter, JournalReader]
) -> AsyncIterator[FactWriter]:
    """Facts written as the webhook process writes them: on a connection of their own."""
    connection = await open_fact_connection(tmp_path)
    yield FactWriter(connection, lambda _, __: None)
    await connection.close()


async def events(reader: JournalReader) -> list[JournalEvent]:
    return await reader.events_after(0, 100)


async def test_admission_fact_matches_only_its_own_change(
    journal: tuple[JournalWriter, JournalReader],
    facts: FactWriter,
) -> None:
    """Alice's update was rejected after admission; Bob's, from the same state, was stored."""
    writer, reader = journal
    created, alices, bobs = configmap("1"), configmap("2", color="red"), configmap("2")
    found = [
        admission_fact(review(ALICE, "CREATE", created)),
        admission_fact(review(ALICE, "UPDATE", alices, created)),
        admission_fact(review(BOB, "UPDATE", bobs, created)),
    ]
    await facts.record([f for f in found if f is not None])
    await writer.record_changes(CONFIGMAPS, [("ADDED", created), ("MODIFIED", bobs)], "2")
    resolver = Resolver(reader.connection, ["admission"], grace_s=0)
    create, update = [await resolver.attribute(e) for e in await events(reader)]
    assert create.lines == (f"user: {ALICE}", "manager: kubectl (Update)")
    assert create.author is not None and create.author.name == "team/alice (service account)"
    assert update.lines[0] == f"user: {BOB}"


async def test_facts_of_two_users_for_one_change_attribute_it_to_no_one(
    journal: tuple[JournalWriter, JournalReader],
    facts: FactWriter,
) -> None:
    writer, reader = journal
    created, changed = configmap("1"), configmap("2", color="red")
    found = [admission_fact(review(user, "UPDATE", changed, created)) for user in (ALICE, BOB)]
    await facts.record([f for f in found if f is not None])
    await writer.record_changes(CONFIGMAPS, [("ADDED", created), ("MODIFIED", changed)], "2")
    resolver = Resolver(reader.connection, ["admission"], grace_s=0)
    update = await resolver.attribute((await events(reader))[1])
    assert update.author is None and update.lines[0] == "user: unresolved"


async def test_seeded_states_are_never_matched_by_admission(
    journal: tuple[JournalWriter, JournalReader],
    facts: FactWriter,
) -> None:
    """A LIST may skip versions: a fact about the version before is no proof for this one."""
    writer, reader = journal
    fact = admission_fact(review(ALICE, "CREATE", configmap("1")))
    assert fact is not None
    await facts.record([fact])
    session = await writer.begin_seed(CONFIGMAPS, relist=False)
    await writer.record_seed_page(session, [configmap("1")])
    resolver = Resolver(reader.connection, ["admission"], grace_s=0)
    seeded = [e for e in await events(reader) if e.kind.value == "CREATE"]
    assert (await resolver.attribute(seeded[0])).author is None


async def created(writer: JournalWriter, reader: JournalReader) -> JournalEvent:
    """The CREATE event of one ConfigMap, journaled from a watch."""
    await writer.record_changes(CONFIGMAPS, [("ADDED", configmap("1"))], "1")
    (event,) = await events(reader)
    return event


async def audit_fact_arrives(facts: FactWriter, resolver: Resolver) -> None:
    """Bob's audit fact for that CREATE reaches the journal and the resolver."""
    found = list(audit_facts({"items": [audit_event(BOB, "create", configmap("1"))]}))
    await facts.record(found)
    await resolver.recorded(found)


async def test_audit_fact_arriving_within_the_grace_window_is_waited_for(
    journal: tuple[JournalWriter, JournalReader],
    facts: FactWriter,
) -> None:
    writer, reader = journal
    event = await created(writer, reader)
    # A grace window far longer than anything else here: ending well inside it can only be
    # the fact's doing, however loaded the machine.
    resolver = Resolver(reader.connection, ["audit"], grace_s=60)

    async def later() -> None:
        await asyncio.sleep(0.3)
        await audit_fact_arrives(facts, resolver)

    started = time.monotonic()
    attribution, _ = await asyncio.gather(resolver.attribute(event), later())
    assert attribution.lines[0] == f"user: {BOB}"
    assert time.monotonic() - started < 30


async def test_without_a_fact_the_wait_ends_with_the_grace_window(
    journal: tuple[JournalWriter, JournalReader],
    facts: FactWriter,
) -> None:
    writer, reader = journal
    event = await created(writer, reader)
    resolver = Resolver(reader.connection, ["audit"], grace_s=0.5)
    started = time.monotonic()
    attribution = await resolver.attribute(event)
    waited = time.monotonic() - started
    assert attribution.author is None and attribution.lines[0] == "user: unresolved"
    assert 0.2 < waited < 2
    late = REGISTRY.get_sample_value("reverserd_attributions_total", {"outcome": "late"}) or 0
    await audit_fact_arrives(facts, resolver)
    assert (
        REGISTRY.get_sample_value("reverserd_attributions_total", {"outcome": "late"}) == late + 1
    )


def test_digest_ignores_only_the_resource_version() -> None:
    assert digest(configmap("1")) == digest(
        {**configmap("1"), "metadata": {**configmap("1")["metadata"], "resourceVersion": "9"}}
    )
    assert digest(configmap("1")) != digest(configmap("1", color="red"))


async def test_compaction_keeps_facts_still_needed_and_drops_origins_with_their_events(
    journal: tuple[JournalWriter, JournalReader],
    facts: FactWriter,
) -> None:
    writer, reader = journal
    event = await created(writer, reader)
    await writer.write_cursor("ns/mirror", event.seq, {})
    old = admission_fact(review(ALICE, "CREATE", configmap("1")), now=time.time() - 7200)
    recent = admission_fact(review(BOB, "CREATE", configmap("1")))
    assert old is not None and recent is not None
    await facts.record([old, recent])
    await compact_facts(writer)
    rows = await reader.connection.execute_fetchall("SELECT username FROM attribution_facts")
    assert [row[0] for row in rows] == [BOB]
    await writer.record_changes(CONFIGMAPS, [("MODIFIED", configmap("2"))], "2")
    await writer.write_cursor("ns/mirror", event.seq + 1, {})
    await writer.compact()
    origins = await reader.connection.execute_fetchall("SELECT seq FROM event_origins")
    assert [row[0] for row in origins] == [event.seq + 1]


@pytest.mark.parametrize(
    "later_change",
    [("MODIFIED", configmap("2", color="red")), ("DELETED", configmap("2"))],
    ids=["update", "deletion"],
)
async def test_content_read_live_after_a_later_change_is_attributed_to_no_one(
    journal: tuple[JournalWriter, JournalReader],
    facts: FactWriter,
    later_change: tuple[Literal["MODIFIED", "DELETED"], dict[str, Any]],
) -> None:
    """A Secret's file holds what the API server returned when it was written: with a later
    change already journaled, that may be the later user's content (or none)."""
    writer, reader = journal
    created_fact = admission_fact(review(ALICE, "CREATE", configmap("1")))
    assert created_fact is not None
    await facts.record([created_fact])
    event = await created(writer, reader)
    resolver = Resolver(reader.connection, ["admission"], grace_s=0)
    assert (await resolver.attribute(event, read_live=True)).lines[0] == f"user: {ALICE}"
    await writer.record_changes(CONFIGMAPS, [later_change], "2")
    later = await resolver.attribute(event, read_live=True)
    assert later.author is None and later.lines[0] == "user: unresolved"


async def test_concurrent_facts_share_commits_and_a_failed_commit_fails_each_request(
    tmp_path: Path, journal: tuple[JournalWriter, JournalReader]
) -> None:
    _, reader = journal
    announced: list[int] = []
    connection = await open_fact_connection(tmp_path)
    writer = FactWriter(connection, lambda found, _: announced.append(len(found)))
    fact = admission_fact(review(ALICE, "CREATE", configmap("1")))
    assert fact is not None
    await asyncio.gather(*(writer.record([fact]) for _ in range(20)))
    rows = await reader.connection.execute_fetchall("SELECT count(*) FROM attribution_facts")
    assert next(iter(rows))[0] == 20 and sum(announced) == 20
    assert len(announced) < 20, "every request made its own commit"

    await connection.close()
    results = await asyncio.gather(
        *(writer.record([fact]) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(result, Exception) for result in results)
    assert sum(announced) == 20


def forged(operation: str, prior: str, digest_of: dict[str, Any] | None, **key: str) -> Fact:
    """A fact as an unauthenticated caller could have it journaled, whatever it claims."""
    return Fact(
        source="admission",
        operation=operation,
        api_group="",
        resource=key.get("resource", "configmaps"),
        namespace="ns",
        name="app",
        uid="u-1",
        resource_version=None,
        prior_resource_version=prior,
        digest=None if digest_of is None else digest(digest_of),
        username=MALLORY,
        groups=(),
        request_uid=None,
        received_at=time.time(),
    )


async def test_only_a_digest_of_the_stored_object_attributes_a_change(
    journal: tuple[JournalWriter, JournalReader],
    facts: FactWriter,
) -> None:
    """Whether a change needs a digest is decided by its event: claims without one, or with the
    digest of the deleted object's last state, attribute neither updates, deletes nor Secrets,
    and cannot turn a proven change into an unresolved one."""
    writer, reader = journal
    created, changed = configmap("1"), configmap("2", color="red")
    genuine = admission_fact(review(ALICE, "UPDATE", changed, created))
    assert genuine is not None
    await facts.record(
        [
            genuine,
            forged("UPDATE", "1", None),
            forged("UPDATE", "1", configmap("2", color="green")),
            forged("DELETE", "2", None),
            forged("DELETE", "2", changed),
            forged("CREATE", "", None, resource="secrets"),
        ]
    )
    await writer.register_stream(SECRETS)
    secret = {"metadata": {"name": "app", "namespace": "ns", "uid": "u-1", "resourceVersion": "4"}}
    await writer.record_changes(CONFIGMAPS, [("ADDED", created), ("MODIFIED", changed)], "2")
    # Deleted as it was: its last state, at a new resourceVersion the digest ignores.
    deleted = {**changed, "metadata": {**changed["metadata"], "resourceVersion": "3"}}
    await writer.record_changes(CONFIGMAPS, [("DELETED", deleted)], "3")
    await writer.record_changes(SECRETS, [("ADDED", secret)], "4")
    resolver = Resolver(reader.connection, ["admission"], grace_s=0)
    found = [(await resolver.attribute(e)).lines[0] for e in await events(reader)]
    unresolved = "user: unresolved"
    assert found == [unresolved, f"user: {ALICE}", unresolved, unresolved]


def test_fields_beyond_the_kubernetes_limits_make_no_fact() -> None:
    """A real request always fits; a longer field can only be a forgery or a flood."""
    assert admission_fact(review(ALICE, "CREATE", configmap("1"))) is not None
    long_name = review(ALICE, "CREATE", configmap("1"))
    long_name["request"]["name"] = "n" * 254
    long_uid = review(ALICE, "CREATE", configmap("1", uid="u" * 129))
    long_user = review("u" * 257, "CREATE", configmap("1"))
    long_namespace = review(ALICE, "CREATE", configmap("1"))
    long_namespace["request"]["namespace"] = "n" * 64
    long_prior = review(ALICE, "UPDATE", configmap("2"), configmap("1" * 65))
    bad_groups = review(ALICE, "CREATE", configmap("1"))
    bad_groups["request"]["userInfo"]["groups"] = {"not": "a list"}
    long_group = review(ALICE, "CREATE", configmap("1"))
    long_group["request"]["userInfo"]["groups"] = ["g" * 257]
    hostile = [long_name, long_uid, long_user, long_namespace, long_prior, bad_groups, long_group]
    assert [admission_fact(r) for r in hostile] == [None] * len(hostile)
    long_version = audit_event(BOB, "patch", configmap("6" * 65))
    assert list(audit_facts({"items": [long_version]})) == []
    assert list(audit_facts({"items": "not a list"})) == []


async def test_facts_table_keeps_the_newest_facts_and_counts_the_dropped(
    tmp_path: Path, journal: tuple[JournalWriter, JournalReader]
) -> None:
    _, reader = journal
    dropped: list[int] = []
    connection = await open_fact_connection(tmp_path)
    writer = FactWriter(connection, lambda _, count: dropped.append(count), kept=3)
    found = [admission_fact(review(f"user-{i}", "CREATE", configmap("1"))) for i in range(5)]
    for fact in found:
        assert fact is not None
        await writer.record([fact])
    rows = await reader.connection.execute_fetchall(
        "SELECT username FROM attribution_facts ORDER BY id"
    )
    assert [row[0] for row in rows] == ["user-2", "user-3", "user-4"]
    assert dropped == [0, 0, 0, 1, 1]
    await connection.close()
