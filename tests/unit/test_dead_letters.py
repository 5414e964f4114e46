"""The dead-letter service over the in-memory table and queue fakes (which serialise like Azurite)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from proactive.adapters.memory_queues import MemoryWorkQueue
from proactive.adapters.memory_tables import MemoryEntityTable
from proactive.delivery.dead_letters import (
    MAX_DEQUEUE_COUNT,
    DeadLetterQuery,
    DeadLetterService,
    DeliveryRedriver,
    parse_public_id,
    public_id,
    record_poison_failure,
)
from proactive.delivery.ports import RetryRequest
from proactive.errors import InvalidInput, StorageError
from proactive.models import DeadLetter, DeliveryRecord, DeliveryStatus, Notification, NotificationStatus
from proactive.storage.stores import TableDeadLetterStore, TableDeliveryLedger, TableNotificationStore

NOW = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
TENANT = "t-1"
KEY = "user:aad-1"


class World:
    def __init__(self) -> None:
        self.letters = TableDeadLetterStore(MemoryEntityTable("deadletters"))
        self.ledger = TableDeliveryLedger(MemoryEntityTable("deliveries"))
        self.notifications = TableNotificationStore(MemoryEntityTable("notifications"))
        self.retries = MemoryWorkQueue("deliveries-retry")
        redriver = DeliveryRedriver(
            ledger=self.ledger, notifications=self.notifications, retries=self.retries, clock=lambda: NOW
        )
        self.service = DeadLetterService(self.letters, {"deliveries-retry": redriver}, clock=lambda: NOW)

    async def dead_lettered_row(self, status: DeliveryStatus = DeliveryStatus.DEAD_LETTERED) -> DeadLetter:
        await self.notifications.create(
            Notification(id="n1", request={}, status=NotificationStatus.COMPLETED, created_at=NOW)
        )
        await self.ledger.add_pending(
            [
                DeliveryRecord(
                    notification_id="n1",
                    tenant_id=TENANT,
                    recipient_key=KEY,
                    status=status,
                    redrives=6,
                    created_at=NOW,
                    updated_at=NOW,
                )
            ]
        )
        request = RetryRequest(notification_id="n1", tenant_id=TENANT, recipient_key=KEY, reason="Throttled")
        entry = DeadLetter(
            id=f"n1:{TENANT}:{KEY}",
            source_queue="deliveries-retry",
            payload=request.to_json(),
            reason="retries exhausted (Throttled)",
            created_at=NOW,
            notification_id="n1",
            tenant_id=TENANT,
            reason_code="Throttled",
        )
        await self.letters.add(entry)
        return entry


async def test_a_repeated_redrive_resets_the_row_once_and_only_queues_the_reminder_again() -> None:
    world = World()
    entry = await world.dead_lettered_row()
    first = await world.service.redrive(public_id(entry))
    second = await world.service.redrive(public_id(entry))
    assert first["status"] == second["status"] == "requeued"
    row = await world.ledger.get("n1", TENANT, KEY)
    assert row is not None and row.value.status is DeliveryStatus.PENDING and row.value.redrives == 0
    reminders = [RetryRequest.from_json(body) for body in world.retries.bodies()]
    assert [(r.recipient_key, r.attempt, r.reason) for r in reminders] == [(KEY, 0, "redrive")] * 2
    stored = await world.letters.get(entry.day, entry.id)
    assert stored is not None and stored.value.redriven_at == NOW


@pytest.mark.parametrize(
    ("status", "code"),
    [(DeliveryStatus.SENT, "already_sent"), (DeliveryStatus.FAILED, "not_redrivable")],
)
async def test_a_settled_row_is_refused_with_409_and_nothing_is_queued(
    status: DeliveryStatus, code: str
) -> None:
    world = World()
    entry = await world.dead_lettered_row(status)
    with pytest.raises(InvalidInput) as caught:
        await world.service.redrive(public_id(entry))
    assert caught.value.status == 409 and caught.value.code == code
    assert world.retries.bodies() == []


async def test_a_row_being_sent_is_left_to_its_sender() -> None:
    world = World()
    entry = await world.dead_lettered_row(DeliveryStatus.SENDING)
    assert (await world.service.redrive(public_id(entry)))["status"] == "in_progress"
    assert world.retries.bodies() == []


async def test_a_dead_letter_of_a_queue_without_a_redriver_is_refused() -> None:
    world = World()
    entry = DeadLetter(id="x", source_queue="installs", payload={}, reason="r", created_at=NOW)
    await world.letters.add(entry)
    with pytest.raises(InvalidInput) as caught:
        await world.service.redrive(public_id(entry))
    assert caught.value.status == 409


def test_public_ids_round_trip_whatever_the_stored_id_holds() -> None:
    for stored in ("n1:t:user:a", "n:t:channel:19:abc@thread.tacv2;messageid=1", "a/b#c?d\\e", "é"):
        entry = DeadLetter(id=stored, source_queue="q", payload={}, reason="r", created_at=NOW)
        assert parse_public_id(public_id(entry)) == ("20261121", stored)


def test_the_default_query_reads_the_last_seven_days_newest_first() -> None:
    query = DeadLetterQuery.parse({}, today=date(2026, 11, 21))
    assert query.days() == [f"202611{d}" for d in range(21, 14, -1)]


async def test_a_poison_handler_failing_on_its_last_delivery_is_recorded_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    letters = TableDeadLetterStore(MemoryEntityTable("deadletters"))
    raw = RetryRequest(notification_id="n1", tenant_id=TENANT, recipient_key=KEY, reason="x").to_json_text()

    async def failing() -> None:
        raise StorageError("table storage: ServiceUnavailable")

    with pytest.raises(StorageError):  # an earlier delivery: the host tries again
        await record_poison_failure(
            failing, raw.encode(), source_queue="q", dequeue_count=4, store=letters, clock=lambda: NOW
        )
    assert (await letters.list_day("20261121")).items == []
    await record_poison_failure(
        failing, raw.encode(), source_queue="q", dequeue_count=5, store=letters, clock=lambda: NOW
    )
    [entry] = (await letters.list_day("20261121")).items
    assert entry.reason_code == "poison_handler_failed" and entry.notification_id == "n1"
    assert entry.payload["recipientKey"] == KEY
    # The dead-letter alert (infra/modules/alerts.bicep) matches log lines starting "Dead-lettered".
    assert any(r.getMessage().startswith("Dead-lettered") for r in caplog.records if r.levelname == "ERROR")


def test_the_last_delivery_count_mirrors_host_json() -> None:
    host = json.loads((Path(__file__).parents[2] / "host.json").read_text())
    assert host["extensions"]["queues"]["maxDequeueCount"] == MAX_DEQUEUE_COUNT
