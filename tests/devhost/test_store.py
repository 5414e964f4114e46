"""The durable store contract, on the memory store and on Azurite: what the runtime relies on."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest

from devhost.durable import DurableStore, EntityRecord, InstanceRecord
from devhost.durable.azurite_store import AzuriteStore, table_prefix
from devhost.durable.store import MAX_CONSUMED_PER_COMMIT
from tests.devhost.conftest import StoreFactory

HOSTILE_ID = "tenant/a\\b#c?d%e\x01f"  # every character Azure Tables rejects in a key


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[DurableStore]:
    opened = make_store()
    await opened.open()
    yield opened
    await opened.close()


def record(instance_id: str, length: int = 0, execution: str = "e1", **extra: object) -> InstanceRecord:
    fields: dict[str, object] = {"input": None, **extra}
    return InstanceRecord(
        instance_id=instance_id, name="orch", status="Running",
        created_time="2026-01-01T00:00:00.000000Z", last_updated_time="2026-01-01T00:00:00.000000Z",
        execution_id=execution, history_length=length, **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def events(start: int, count: int) -> list[dict[str, object]]:
    return [{"EventType": 4, "EventId": i, "Name": f"step{i}"} for i in range(start, start + count)]


async def test_instance_round_trips_with_hostile_id_and_values_bigger_than_one_property(
    store: DurableStore,
) -> None:
    big = json.dumps("x" * 100_000)
    saved = record(HOSTILE_ID, input=big, output=big, custom_status='{"a": 1}', parent_instance_id="p/1",
                   parent_execution_id="pe", parent_task_id=7)  # fmt: skip
    await store.save_instance(saved, [])
    assert await store.get_instance(HOSTILE_ID) == saved
    assert [r.instance_id for r in await store.list_instances()] == [HOSTILE_ID]
    assert await store.get_instance("missing") is None


async def test_history_beyond_one_batch_is_appended_and_rows_past_the_commit_are_ignored(
    store: DurableStore,
) -> None:
    await store.save_instance(record("h1", 250), events(0, 250))
    # A crashed episode wrote rows but never committed the record that counts them.
    await store.save_instance(record("h1", 260), events(250, 10))
    loaded = await store.load_history(record("h1", 255))
    assert [e["EventId"] for e in loaded] == list(range(255))


async def test_a_new_execution_starts_with_an_empty_history(store: DurableStore) -> None:
    await store.save_instance(record("can", 3), events(0, 3))
    await store.save_instance(record("can", 0, execution="e2"), [])
    await store.save_instance(record("can", 2, execution="e2"), events(0, 2))
    assert len(await store.load_history(record("can", 2, execution="e2"))) == 2


async def test_commit_consumes_exactly_the_given_messages(store: DurableStore) -> None:
    await store.add_messages("c1", [(f"{i:03d}", {"n": i}) for i in range(5)])
    await store.save_instance(record("c1", 1), events(0, 1), ["001", "003"])
    assert [m.body["n"] for m in await store.read_messages("c1")] == [0, 2, 4]
    assert [m.message_id for m in await store.read_messages("c1", 2)] == ["000", "002"]
    with pytest.raises(ValueError, match="at most"):
        await store.save_instance(record("c1", 1), [], [str(i) for i in range(MAX_CONSUMED_PER_COMMIT + 1)])


async def test_commit_still_lands_when_a_consumed_message_is_already_gone(store: DurableStore) -> None:
    await store.add_messages("g1", [("a", {}), ("b", {})])
    await store.save_instance(record("g1", 1), events(0, 1), ["a", "purged-meanwhile"])
    stored = await store.get_instance("g1")
    assert stored is not None and stored.history_length == 1
    assert [m.message_id for m in await store.read_messages("g1")] == ["b"]


async def test_inboxes_are_ordered_by_id_and_listed_by_target(store: DurableStore) -> None:
    await store.add_messages(HOSTILE_ID, [("b", {"v": 2}), ("a", {"v": 1})])
    await store.add_messages("@counter@k", [("z", {"v": "x" * 70_000})])
    await store.add_messages(HOSTILE_ID, [("a", {"v": "overwritten"})])
    assert [m.body["v"] for m in await store.read_messages(HOSTILE_ID)] == ["overwritten", 2]
    assert sorted(await store.targets_with_messages()) == sorted([HOSTILE_ID, "@counter@k"])
    await store.delete_messages(HOSTILE_ID, ["a", "b", "never-there"])
    assert await store.targets_with_messages() == ["@counter@k"]
    assert len((await store.read_messages("@counter@k"))[0].body["v"]) == 70_000


async def test_entity_state_and_answered_requests_commit_with_the_consumed_messages(
    store: DurableStore,
) -> None:
    await store.add_messages("@counter@k", [("m1", {"id": "r1"}), ("m2", {"id": "r2"})])
    entity = EntityRecord(
        "@counter@k", json.dumps(list(range(20_000))), True, {"r1": {"result": "1"}, "r2": None}
    )
    await store.save_entity(entity, ["m1"])
    assert await store.get_entity("@counter@k") == entity
    assert [m.message_id for m in await store.read_messages("@counter@k")] == ["m2"]
    assert await store.get_instance("@counter@k") is None  # entities are not orchestrations
    assert await store.get_entity("missing") is None


async def test_delete_instance_removes_record_history_and_inbox(store: DurableStore) -> None:
    await store.save_instance(record("d1", 2), events(0, 2))
    await store.add_messages("d1", [("m", {})])
    assert await store.delete_instance("d1") is True
    assert await store.get_instance("d1") is None
    assert await store.read_messages("d1") == []
    assert await store.delete_instance("d1") is False


@pytest.mark.azurite
async def test_two_task_hubs_on_one_account_do_not_see_each_other(storage_connection_string: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    one = AzuriteStore(storage_connection_string, task_hub=f"One{suffix}")
    two = AzuriteStore(storage_connection_string, task_hub=f"Two{suffix}")
    for store in (one, two):
        await store.open()
    try:
        await one.save_instance(record("same-id"), [])
        await one.add_messages("same-id", [("m", {})])
        assert await two.get_instance("same-id") is None
        assert await two.targets_with_messages() == []
        assert (
            one.instances_table == f"One{suffix}DevInstances"
            and two.history_table == f"Two{suffix}DevHistory"
        )
    finally:
        for store in (one, two):
            await store.close()


def test_hub_names_become_valid_table_prefixes() -> None:
    assert table_prefix("ProactiveHub") == "ProactiveHub"
    assert table_prefix("my-hub_2") == "myhub2"
    assert table_prefix("9lives") == "Hub9lives"
