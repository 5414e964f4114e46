"""Contract of EntityTable: the fake and Azurite must answer every case the same way."""

from __future__ import annotations

import asyncio

import pytest

from proactive.errors import ConcurrencyConflict, RecordNotFound, StorageError
from proactive.storage.keys import encode_key
from proactive.storage.ports import ETAG_FIELD
from tests.contract.conftest import TableFactory


def row(pk: str, rk: str, **props: object) -> dict[str, object]:
    return {"PartitionKey": pk, "RowKey": rk, **props}


async def test_get_of_a_missing_row_is_none(new_table: TableFactory) -> None:
    assert await new_table().get("p", "r") is None


async def test_insert_round_trips_every_property_type(new_table: TableFactory) -> None:
    table = new_table()
    etag = await table.insert(row("p", "r", text="héllo ✓ 𝄞", flag=True, count=42, ratio=0.25))
    found = await table.get("p", "r")
    assert found is not None
    entity, read_etag = found
    assert read_etag == etag
    assert {k: entity[k] for k in ("text", "flag", "count", "ratio")} == {
        "text": "héllo ✓ 𝄞",
        "flag": True,
        "count": 42,
        "ratio": 0.25,
    }


async def test_second_insert_of_a_row_conflicts(new_table: TableFactory) -> None:
    table = new_table()
    await table.insert(row("p", "r", v=1))
    with pytest.raises(ConcurrencyConflict):
        await table.insert(row("p", "r", v=2))
    found = await table.get("p", "r")
    assert found is not None and found[0]["v"] == 1


async def test_upsert_replaces_whole_row(new_table: TableFactory) -> None:
    table = new_table()
    await table.upsert(row("p", "r", a=1, b=2))
    await table.upsert(row("p", "r", a=3))
    found = await table.get("p", "r")
    assert found is not None
    assert found[0]["a"] == 3 and "b" not in found[0]


async def test_replace_with_stale_etag_conflicts_and_keeps_the_winner(new_table: TableFactory) -> None:
    table = new_table()
    first = await table.insert(row("p", "r", v=1))
    await table.replace(row("p", "r", v=2), first)
    with pytest.raises(ConcurrencyConflict):
        await table.replace(row("p", "r", v=3), first)
    found = await table.get("p", "r")
    assert found is not None and found[0]["v"] == 2


async def test_replace_of_a_missing_row_is_not_found(new_table: TableFactory) -> None:
    table = new_table()
    await table.insert(row("p", "other"))
    with pytest.raises(RecordNotFound):
        await table.replace(row("p", "missing", v=1), "W/\"datetime'2020-01-01T00%3A00%3A00Z'\"")


async def test_concurrent_conditional_replaces_exactly_one_wins(new_table: TableFactory) -> None:
    table = new_table()
    etag = await table.insert(row("p", "r", owner="nobody"))
    results = await asyncio.gather(
        *(table.replace(row("p", "r", owner=f"w{i}"), etag) for i in range(5)), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, str)]
    assert len(winners) == 1
    assert all(isinstance(r, ConcurrencyConflict) for r in results if not isinstance(r, str))


async def test_merge_keeps_other_properties_and_checks_etag(new_table: TableFactory) -> None:
    table = new_table()
    etag = await table.insert(row("p", "r", a=1, b=2))
    await table.merge(row("p", "r", b=3), etag)
    found = await table.get("p", "r")
    assert found is not None and (found[0]["a"], found[0]["b"]) == (1, 3)
    with pytest.raises(ConcurrencyConflict):
        await table.merge(row("p", "r", b=4), etag)


async def test_delete_is_idempotent_and_conditional(new_table: TableFactory) -> None:
    table = new_table()
    etag = await table.insert(row("p", "r"))
    await table.upsert(row("p", "r", changed=True))
    with pytest.raises(ConcurrencyConflict):
        await table.delete("p", "r", etag)
    await table.delete("p", "r")
    await table.delete("p", "r")
    assert await table.get("p", "r") is None


async def test_batch_inserts_atomically_and_rejects_all_if_one_exists(new_table: TableFactory) -> None:
    table = new_table()
    await table.insert_batch([row("p", f"r{i:03}", i=i) for i in range(100)])
    page = await table.query({"PartitionKey": "p"})
    assert len(page.items) == 100
    await table.insert(row("q", "r005"))
    with pytest.raises(ConcurrencyConflict):
        await table.insert_batch([row("q", f"r{i:03}") for i in range(10)])
    page = await table.query({"PartitionKey": "q"})
    assert [e["RowKey"] for e in page.items] == ["r005"]


async def test_paging_over_more_than_1000_rows_returns_each_row_once_in_key_order(
    new_table: TableFactory,
) -> None:
    table = new_table()
    for start in range(0, 1234, 100):
        await table.insert_batch(
            [row("p", f"r{i:05}", even=i % 2 == 0) for i in range(start, min(start + 100, 1234))]
        )
    seen: list[str] = []
    continuation = None
    pages = 0
    while True:
        page = await table.query({"PartitionKey": "p"}, continuation=continuation)
        pages += 1
        assert len(page.items) <= 1000
        seen.extend(e["RowKey"] for e in page.items)
        if page.continuation is None:
            break
        continuation = page.continuation
    assert pages >= 2
    assert seen == [f"r{i:05}" for i in range(1234)]


async def test_query_filters_by_equality_alternatives_and_selects(new_table: TableFactory) -> None:
    table = new_table()
    statuses = ["pending", "sent", "failed", "sent"]
    await table.insert_batch([row("p", f"r{i}", status=s, n=i) for i, s in enumerate(statuses)])
    await table.insert(row("other", "r9", status="sent"))
    page = await table.query({"PartitionKey": "p", "status": ("sent", "failed")}, select=["status"])
    assert [e["status"] for e in page.items] == ["sent", "failed", "sent"]
    assert all("n" not in e and e[ETAG_FIELD] for e in page.items)
    small = await table.query({"PartitionKey": "p"}, page_size=3)
    assert len(small.items) == 3 and small.continuation is not None
    rest = await table.query({"PartitionKey": "p"}, page_size=3, continuation=small.continuation)
    assert [e["RowKey"] for e in rest.items] == ["r3"] and rest.continuation is None


async def test_a_query_across_partitions_pages_through_matches_once_each_in_key_order(
    new_table: TableFactory,
) -> None:
    table = new_table()
    for pk in ("b", "a", "c"):
        await table.insert_batch([row(pk, f"r{i}", status="sent" if i % 3 else "running") for i in range(5)])

    async def running() -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        continuation = None
        while True:
            page = await table.query({"status": "running"}, page_size=2, continuation=continuation)
            assert len(page.items) <= 2
            seen.extend((e["PartitionKey"], e["RowKey"]) for e in page.items)
            if page.continuation is None:
                return seen
            continuation = page.continuation

    assert await running() == [("a", "r0"), ("a", "r3"), ("b", "r0"), ("b", "r3"), ("c", "r0"), ("c", "r3")]
    # Rows moving into and out of the filter after a first query are seen by the next one.
    await table.upsert(row("a", "r1", status="running"))
    await table.merge(row("b", "r0", status="sent"))
    await table.delete("c", "r0")
    assert await running() == [("a", "r0"), ("a", "r1"), ("a", "r3"), ("b", "r3"), ("c", "r3")]
    page = await table.query({"PartitionKey": ("c", "a"), "status": ("running",)})
    assert [(e["PartitionKey"], e["RowKey"]) for e in page.items] == [
        ("a", "r0"),
        ("a", "r1"),
        ("a", "r3"),
        ("c", "r3"),
    ]


HOSTILE_IDS = [
    "slash/inside",
    "back\\slash",
    "hash#tag",
    "question?mark",
    "percent%2Fencoded",
    "tab\tand\nnewline\x00nul\x7fdel\x9fc1",
    "19:abc@thread.tacv2;messageid=1",
    "emoji 🚀 and ünïcode",
    "x" * 2000,
]


@pytest.mark.parametrize("hostile", HOSTILE_IDS, ids=lambda s: s[:20].encode("unicode_escape").decode())
async def test_hostile_ids_are_stored_and_found_through_encoded_keys(
    new_table: TableFactory, hostile: str
) -> None:
    table = new_table()
    pk, rk = encode_key(hostile), encode_key(hostile + "-row")
    await table.insert(row(pk, rk, original=hostile[:1000]))
    found = await table.get(pk, rk)
    assert found is not None and found[0]["original"] == hostile[:1000]
    page = await table.query({"PartitionKey": pk})
    assert [e["RowKey"] for e in page.items] == [rk]


async def test_encoded_keys_of_different_ids_never_collide(new_table: TableFactory) -> None:
    table = new_table()
    ids = ["a/b", "a%2Fb", "a%252Fb", "a#b", "a?b", "a\\b", "x" * 2000, "x" * 2001]
    for value in ids:
        await table.insert(row("p", encode_key(value), original=value[:100]))
    page = await table.query({"PartitionKey": "p"})
    assert len(page.items) == len(ids)


@pytest.mark.parametrize("bad_key", ["a/b", "a\\b", "a#b", "a?b", "a\x01b"])
async def test_raw_forbidden_characters_in_a_key_are_refused(new_table: TableFactory, bad_key: str) -> None:
    table = new_table()
    with pytest.raises(StorageError):
        await table.insert(row("p", bad_key))


async def test_a_property_over_64_kib_is_refused(new_table: TableFactory) -> None:
    table = new_table()
    with pytest.raises(StorageError):
        await table.insert(row("p", "r", big="x" * 40_000))  # 80,000 bytes as UTF-16
