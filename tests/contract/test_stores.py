"""Contract of the stores (references, preferences, notifications, ledger, dead letters) on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from proactive.delivery.ledger import claim, claim_listed
from proactive.errors import ConcurrencyConflict
from proactive.models import (
    ConversationReference,
    DeadLetter,
    DeliveryRecord,
    DeliveryStatus,
    Notification,
    NotificationStatus,
    Preferences,
    QuietHours,
    RecipientKind,
    StoredReference,
)
from proactive.storage.stores import (
    TableDeadLetterStore,
    TableDeliveryLedger,
    TableNotificationStore,
    TablePreferenceStore,
    TableReferenceStore,
    TableThreadWindows,
    to_entity,
)
from tests.contract.conftest import TableFactory

NOW = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
HOSTILE_TENANT = "tenant/with#odd?chars\\"
OTHER_TENANT = "0b3d7e21-5c4a-4f8e-9a6b-1d2c3e4f5a6b"


def reference(tenant: str, aad: str, *, active: bool = True) -> StoredReference:
    return StoredReference(
        tenant_id=tenant,
        kind=RecipientKind.USER,
        recipient_id=aad,
        reference=ConversationReference.from_json(
            {
                "activityId": "f:123",
                "user": {"id": f"29:{aad}", "aadObjectId": aad, "name": "Ada"},
                "bot": {"id": "28:bot", "name": "Notifier"},
                "conversation": {"id": f"a:{aad}", "conversationType": "personal", "tenantId": tenant},
                "channelId": "msteams",
                "serviceUrl": "https://smba.trafficmanager.net/emea/",
            }
        ),
        active=active,
        time_zone="Europe/Paris",
        updated_at=NOW,
    )


def delivery(notification: str, tenant: str, key: str, status: DeliveryStatus = DeliveryStatus.PENDING):
    return DeliveryRecord(
        notification_id=notification,
        tenant_id=tenant,
        recipient_key=key,
        status=status,
        created_at=NOW,
        updated_at=NOW,
    )


@pytest.mark.parametrize("tenant", [TENANT, HOSTILE_TENANT])
@pytest.mark.parametrize(
    "aad", ["00000000-0000-0000-0000-000000000001", "id/with\\all#the?bad\x01chars", "x" * 600]
)
async def test_reference_round_trips_with_hostile_and_long_ids(
    new_table: TableFactory, tenant: str, aad: str
) -> None:
    store = TableReferenceStore(new_table())
    stored = reference(tenant, aad)
    await store.upsert(stored)
    assert await store.get(tenant, stored.key) == stored
    assert await store.get(tenant, "user:someone-else") is None


@pytest.mark.parametrize("tenant", [TENANT, HOSTILE_TENANT])
async def test_get_many_reads_every_stored_reference_asked_for_over_several_queries(
    new_table: TableFactory, tenant: str
) -> None:
    store = TableReferenceStore(new_table())
    ids = [f"u{i:02}" for i in range(31)] + ["id/with\\all#the?bad\x01chars", "x" * 600]
    stored = {ref.key: ref for ref in (reference(tenant, aad) for aad in ids)}
    await asyncio.gather(*(store.upsert(ref) for ref in stored.values()))
    await store.upsert(reference(tenant, "not-asked-for"))
    await store.upsert(reference(OTHER_TENANT, "u00"))  # same key, other partition
    asked = [*stored, "user:never-seen"]
    # 34 keys: more than one query's worth (14), each key once whatever the order asked in.
    assert await store.get_many(tenant, [*asked, asked[0]]) == stored
    assert await store.get_many(tenant, []) == {}


async def test_preferences_get_many_leaves_out_users_without_preferences(new_table: TableFactory) -> None:
    store = TablePreferenceStore(new_table())
    stored = {
        aad: Preferences(tenant_id=TENANT, aad_object_id=aad, opted_out_all=True, updated_at=NOW)
        for aad in (f"u{i}" for i in range(20))
    }
    await asyncio.gather(*(store.put(prefs) for prefs in stored.values()))
    assert await store.get_many(TENANT, [*stored, "u/none"]) == stored


async def test_claim_listed_takes_the_row_only_while_it_is_as_listed(new_table: TableFactory) -> None:
    ledger = TableDeliveryLedger(new_table())
    await ledger.add_pending([delivery("n1", TENANT, "user:u1"), delivery("n1", TENANT, "user:u2")])
    listed = {row.value.recipient_key: row for row in (await ledger.list("n1", TENANT)).items}
    claimed = await claim_listed(ledger, listed["user:u1"], NOW)
    assert (
        claimed is not None and claimed.value.status is DeliveryStatus.SENDING and claimed.value.attempts == 1
    )
    assert await claim_listed(ledger, listed["user:u1"], NOW) is None  # its ETag is gone: claimed once
    # A row changed after it was listed (another claimer, reconciliation) is not claimed from the old read.
    assert await claim(ledger, "n1", TENANT, "user:u2", NOW) is not None
    assert await claim_listed(ledger, listed["user:u2"], NOW) is None


async def test_reference_upsert_refreshes_and_deactivate_records_reason(new_table: TableFactory) -> None:
    store = TableReferenceStore(new_table())
    await store.upsert(reference(TENANT, "u1"))
    refreshed = reference(TENANT, "u1").model_copy(update={"time_zone": "Asia/Tokyo"})
    await store.upsert(refreshed)
    assert (await store.get(TENANT, "user:u1")) == refreshed
    assert await store.deactivate(TENANT, "user:u1", "uninstalled", NOW + timedelta(hours=1))
    gone = await store.get(TENANT, "user:u1")
    assert gone is not None and not gone.active and gone.stale_reason == "uninstalled"
    assert not await store.deactivate(TENANT, "user:never-seen", "uninstalled", NOW)


async def test_list_tenant_pages_over_1000_active_references_only(new_table: TableFactory) -> None:
    store = TableReferenceStore(new_table())
    await asyncio.gather(
        *(store.upsert(reference(TENANT, f"u{i:04}", active=i % 10 != 0)) for i in range(1100))
    )
    await store.upsert(reference("other-tenant", "u0001"))
    keys: list[str] = []
    continuation = None
    while True:
        page = await store.list_tenant(TENANT, continuation=continuation)
        keys.extend(r.key for r in page.items)
        if page.continuation is None:
            break
        continuation = page.continuation
    assert len(keys) == len(set(keys)) == 990
    assert all(r.tenant_id == TENANT for r in (await store.list_tenant(TENANT, page_size=5)).items)
    everything = await store.list_tenant(TENANT, active_only=False, page_size=1000)
    assert len(everything.items) == 1000 and everything.continuation is not None


async def test_reference_update_inserts_replaces_or_leaves_the_row_as_change_decides(
    new_table: TableFactory,
) -> None:
    store = TableReferenceStore(new_table())
    first = reference(HOSTILE_TENANT, "u/1")
    assert await store.update(HOSTILE_TENANT, first.key, lambda previous: first) == (None, first)

    seen: list[StoredReference | None] = []

    def keep(previous: StoredReference | None) -> None:
        seen.append(previous)

    assert await store.update(HOSTILE_TENANT, first.key, keep) == (first, None)
    assert seen == [first] and await store.get(HOSTILE_TENANT, first.key) == first

    moved = first.model_copy(update={"time_zone": "Asia/Tokyo"})
    assert await store.update(HOSTILE_TENANT, first.key, lambda previous: moved) == (first, moved)
    assert await store.get(HOSTILE_TENANT, first.key) == moved


async def test_reference_update_refuses_a_reference_of_another_key(new_table: TableFactory) -> None:
    store = TableReferenceStore(new_table())
    with pytest.raises(ValueError, match="returned the reference 'user:u2'"):
        await store.update(TENANT, "user:u1", lambda previous: reference(TENANT, "u2"))
    assert await store.get(TENANT, "user:u2") is None


async def test_concurrent_reference_updates_each_build_on_the_last_and_one_finds_no_row(
    new_table: TableFactory,
) -> None:
    """Five writers at once: none is lost, so each saw exactly the row it replaced (compare-and-swap)."""
    store = TableReferenceStore(new_table())
    writers = [f"w{i}" for i in range(5)]

    def adding(writer: str) -> Callable[[StoredReference | None], StoredReference]:
        def change(previous: StoredReference | None) -> StoredReference:
            base = previous or reference(TENANT, "u1", active=False)
            marks = [*(base.stale_reason or "").split(), writer]
            return base.model_copy(update={"stale_reason": " ".join(marks), "active": True})

        return change

    results = await asyncio.gather(*(store.update(TENANT, "user:u1", adding(w)) for w in writers))
    assert [previous for previous, _ in results].count(None) == 1  # one insert; the rest replaced it
    stored = await store.get(TENANT, "user:u1")
    assert stored is not None and sorted((stored.stale_reason or "").split()) == writers
    # Every write replaced a different predecessor: the writes form one chain, nothing overwritten.
    predecessors = [previous.stale_reason if previous else None for previous, _ in results]
    assert len(set(predecessors)) == len(writers)


async def test_preferences_round_trip_and_overwrite(new_table: TableFactory) -> None:
    store = TablePreferenceStore(new_table())
    prefs = Preferences(
        tenant_id=HOSTILE_TENANT,
        aad_object_id="u/1",
        opted_out_categories=("deployments",),
        quiet_hours=QuietHours(start="22:00", end="07:00"),
        time_zone="America/New_York",
        updated_at=NOW,
    )
    assert await store.get(HOSTILE_TENANT, "u/1") is None
    await store.put(prefs)
    assert await store.get(HOSTILE_TENANT, "u/1") == prefs
    everything_off = prefs.model_copy(update={"opted_out_all": True})
    await store.put(everything_off)
    assert await store.get(HOSTILE_TENANT, "u/1") == everything_off


async def test_notification_create_is_insert_only(new_table: TableFactory) -> None:
    store = TableNotificationStore(new_table())
    note = Notification(id="deploy-2026-11-21-42", request={"message": {"text": "hi"}}, created_at=NOW)
    created = await store.create(note)
    with pytest.raises(ConcurrencyConflict):
        await store.create(note.model_copy(update={"request": {"message": {"text": "other"}}}))
    found = await store.get(note.id)
    assert found is not None and found.value == note and found.etag == created.etag


async def test_notification_replace_is_guarded_by_etag(new_table: TableFactory) -> None:
    store = TableNotificationStore(new_table())
    created = await store.create(Notification(id="n1", request={}, created_at=NOW))
    updated = await store.replace(created.value.model_copy(update={"counts": {"sent": 3}}), created.etag)
    with pytest.raises(ConcurrencyConflict):
        await store.replace(created.value.model_copy(update={"counts": {"sent": 1}}), created.etag)
    found = await store.get("n1")
    assert found is not None and found.value.counts == {"sent": 3} and found.etag == updated.etag


async def test_notification_with_an_80_kb_message_round_trips(new_table: TableFactory) -> None:
    store = TableNotificationStore(new_table())
    text = "🚀 deploy notice " * 5000  # ~85,000 characters, many outside the BMP
    note = Notification(id="big", request={"message": {"text": text}}, created_at=NOW)
    await store.create(note)
    found = await store.get("big")
    assert found is not None and found.value.request["message"]["text"] == text


async def test_ledger_add_pending_is_idempotent_and_never_resets_progress(new_table: TableFactory) -> None:
    ledger = TableDeliveryLedger(new_table())
    records = [delivery("n1", TENANT, f"user:u{i:03}") for i in range(150)]
    assert await ledger.add_pending(records) == 150
    first = await ledger.get("n1", TENANT, "user:u007")
    assert first is not None
    await ledger.replace(
        first.value.model_copy(update={"status": DeliveryStatus.SENT, "activity_id": "1"}), first.etag
    )
    assert await ledger.add_pending([*records, delivery("n1", TENANT, "user:new")]) == 1
    again = await ledger.get("n1", TENANT, "user:u007")
    assert again is not None and again.value.status is DeliveryStatus.SENT


async def test_two_claims_of_one_ledger_row_exactly_one_wins(new_table: TableFactory) -> None:
    ledger = TableDeliveryLedger(new_table())
    await ledger.add_pending([delivery("n1", TENANT, "user:u1")])
    results = await asyncio.gather(*(claim(ledger, "n1", TENANT, "user:u1", NOW) for _ in range(6)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert winners[0].value.status is DeliveryStatus.SENDING and winners[0].value.attempts == 1
    assert await claim(ledger, "n1", TENANT, "user:u1", NOW) is None


async def test_claim_skips_rows_that_are_settled_or_missing(new_table: TableFactory) -> None:
    ledger = TableDeliveryLedger(new_table())
    await ledger.add_pending(
        [
            delivery("n1", TENANT, "user:sent", DeliveryStatus.SENT),
            delivery("n1", TENANT, "user:later", DeliveryStatus.DEFERRED),
        ]
    )
    assert await claim(ledger, "n1", TENANT, "user:sent", NOW) is None
    assert await claim(ledger, "n1", TENANT, "user:missing", NOW) is None
    deferred = await claim(ledger, "n1", TENANT, "user:later", NOW)
    assert deferred is not None and deferred.value.status is DeliveryStatus.SENDING


async def test_ledger_lists_by_status_with_paging_and_counts(new_table: TableFactory) -> None:
    ledger = TableDeliveryLedger(new_table())
    statuses = [DeliveryStatus.PENDING, DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SUPPRESSED]
    records = [delivery("n/1", HOSTILE_TENANT, f"user:u{i:04}", statuses[i % 4]) for i in range(1204)]
    await ledger.add_pending(records)
    await ledger.add_pending([delivery("n/1", "another-tenant", "user:u0000")])
    sent_keys: list[str] = []
    continuation = None
    while True:
        page = await ledger.list(
            "n/1", HOSTILE_TENANT, statuses=[DeliveryStatus.SENT], page_size=200, continuation=continuation
        )
        sent_keys.extend(v.value.recipient_key for v in page.items)
        if page.continuation is None:
            break
        continuation = page.continuation
    assert len(sent_keys) == len(set(sent_keys)) == 301
    counts = await ledger.count_by_status("n/1", HOSTILE_TENANT)
    assert counts == {
        DeliveryStatus.PENDING: 301,
        DeliveryStatus.SENT: 301,
        DeliveryStatus.FAILED: 301,
        DeliveryStatus.SUPPRESSED: 301,
    }


async def test_dead_letters_are_kept_by_day(new_table: TableFactory) -> None:
    store = TableDeadLetterStore(new_table())
    entry = DeadLetter(
        id="m/1#x", source_queue="deliveries-retry", payload={"a": 1}, reason="429 x5", created_at=NOW
    )
    await store.add(entry)
    await store.add(entry.model_copy(update={"id": "m2", "created_at": NOW + timedelta(days=1)}))
    page = await store.list_day("20261121")
    assert page.items == [entry]


async def test_dead_letters_filter_by_notification_tenant_and_reason_and_replace_under_their_etag(
    new_table: TableFactory,
) -> None:
    store = TableDeadLetterStore(new_table())
    base = DeadLetter(
        id="n1:t/1:user:a",
        source_queue="deliveries-retry",
        payload={"a": 1},
        reason="retries exhausted (Throttled)",
        created_at=NOW,
        notification_id="n1",
        tenant_id="t/1",
        reason_code="Throttled",
    )
    other = base.model_copy(update={"id": "n2:t/1:user:b", "notification_id": "n2", "reason_code": "x#?"})
    legacy = DeadLetter(id="old", source_queue="q", payload={}, reason="r", created_at=NOW)
    for entry in (base, other, legacy):
        await store.add(entry)
    assert (await store.list_day("20261121", notification_id="n1")).items == [base]
    assert (await store.list_day("20261121", tenant_id="t/1", reason_code="x#?")).items == [other]
    assert len((await store.list_day("20261121")).items) == 3
    found = await store.get("20261121", base.id)
    assert found is not None and found.value == base
    marked = base.model_copy(update={"redriven_at": NOW})
    await store.replace(marked, found.etag)
    with pytest.raises(ConcurrencyConflict):
        await store.replace(marked, found.etag)
    assert (await store.get("20261121", base.id)) is not None
    assert await store.get("20261122", base.id) is None


def _notification(nid: str, status: NotificationStatus, at: datetime) -> Notification:
    return Notification(id=nid, request={}, status=status, created_at=at, updated_at=at)


async def test_the_reconcile_index_reads_running_and_recently_finished_notifications_only(
    new_table: TableFactory,
) -> None:
    table = new_table()
    store = TableNotificationStore(table)
    now, old = NOW, NOW - timedelta(days=3)
    await store.create(_notification("running", NotificationStatus.ACCEPTED, old))
    found = await store.get("running")
    assert found is not None
    await store.replace(found.value.model_copy(update={"status": NotificationStatus.RUNNING}), found.etag)
    await store.create(_notification("finished-new", NotificationStatus.FAILED, now - timedelta(hours=1)))
    await store.create(_notification("finished-old", NotificationStatus.COMPLETED, old))
    await store.create(_notification("accepted", NotificationStatus.ACCEPTED, now))

    candidates = await store.reconcile_candidates(now=now, lookback=timedelta(days=1))

    assert sorted(n.id for n in candidates) == ["finished-new", "running"]
    index = await table.query({"PartitionKey": TableNotificationStore.INDEX_PARTITION})
    # The row of the notification finished before the lookback is gone; accepted ones were never indexed.
    assert sorted(e["RowKey"] for e in index.items) == ["finished-new", "running", "~backfilled"]


async def test_a_table_written_before_the_index_is_indexed_once_then_only_the_index_is_read(
    new_table: TableFactory,
) -> None:
    table = new_table()
    store = TableNotificationStore(table)
    legacy = _notification("legacy-running", NotificationStatus.RUNNING, NOW - timedelta(days=9))
    await table.insert(to_entity("legacy-running", "meta", legacy, status="running"))

    assert [n.id for n in await store.reconcile_candidates(now=NOW, lookback=timedelta(days=1))] == [
        "legacy-running"
    ]
    # A row that bypassed the store (no index row) is not found by a scan any more: only the index is read.
    stray = _notification("stray", NotificationStatus.RUNNING, NOW)
    await table.insert(to_entity("stray", "meta", stray, status="running"))
    assert [n.id for n in await store.reconcile_candidates(now=NOW, lookback=timedelta(days=1))] == [
        "legacy-running"
    ]


async def test_deactivate_for_a_failed_conversation_leaves_a_reinstalled_reference_active(
    new_table: TableFactory,
) -> None:
    store = TableReferenceStore(new_table())
    old = reference(TENANT, "u2")
    await store.upsert(old)
    reinstalled = old.model_copy(
        update={
            "reference": old.reference.model_copy(
                update={"conversation": old.reference.conversation.model_copy(update={"id": "a:fresh"})}
            ),
            "updated_at": NOW + timedelta(minutes=1),
        }
    )
    await store.upsert(reinstalled)

    assert not await store.deactivate(TENANT, old.key, "ConversationNotFound", NOW, conversation_id="a:u2")
    assert await store.get(TENANT, old.key) == reinstalled
    assert await store.deactivate(TENANT, old.key, "ConversationNotFound", NOW, conversation_id="a:fresh")
    gone = await store.get(TENANT, old.key)
    assert gone is not None and not gone.active and gone.stale_reason == "ConversationNotFound"


async def test_deactivate_never_overwrites_a_reinstall_that_lands_between_its_read_and_its_write(
    new_table: TableFactory,
) -> None:
    table = new_table()
    store = TableReferenceStore(table)
    old = reference(TENANT, "u3")
    await store.upsert(old)
    reinstalled = old.model_copy(
        update={
            "reference": old.reference.model_copy(
                update={"conversation": old.reference.conversation.model_copy(update={"id": "a:fresh"})}
            ),
            "time_zone": "Asia/Tokyo",
        }
    )
    real_get = table.get

    async def get_then_reinstall(partition_key: str, row_key: str):  # type: ignore[no-untyped-def]
        found = await real_get(partition_key, row_key)
        if found is not None and not raced:
            raced.append(True)
            await TableReferenceStore(table).upsert(reinstalled)  # the reinstall wins the race
        return found

    raced: list[bool] = []
    table.get = get_then_reinstall  # type: ignore[method-assign]
    try:
        assert not await store.deactivate(
            TENANT, old.key, "ConversationNotFound", NOW, conversation_id="a:u3"
        )
    finally:
        table.get = real_get  # type: ignore[method-assign]
    assert raced and await store.get(TENANT, old.key) == reinstalled


async def test_thread_windows_take_places_until_a_window_is_full_even_when_senders_race(
    new_table: TableFactory,
) -> None:
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    windows = TableThreadWindows(new_table(), attempts=20)
    thread = "19:incident@thread.tacv2"
    # Ten senders at the same instant: seven places in the 1-second window, no more, whoever wins each race.
    answers = await asyncio.gather(*(windows.reserve(HOSTILE_TENANT, thread, now) for _ in range(10)))
    assert answers.count(None) == 7
    assert {answer for answer in answers if answer is not None} == {now + timedelta(seconds=1.25)}
    # Another thread has windows of its own; the full one opens again once its time has come.
    assert await windows.reserve(HOSTILE_TENANT, "19:other@thread.tacv2", now) is None
    assert await windows.reserve(HOSTILE_TENANT, thread, now + timedelta(seconds=1.25)) is None
