"""What a ``deliveries-retry`` message leads to (:func:`proactive.delivery.redrive.decide`), how the tenant's re-drive run
is started or woken (:class:`proactive.delivery.redrive.PacedRuns`), and how a welcome is stored
(:class:`proactive.bot.welcome.Welcomes`). The devhost tests in ``tests/integration/test_redelivery.py`` and
``tests/integration/test_welcomes.py`` run the same paths end to end.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from proactive import function_names as fn
from proactive.adapters.memory_queues import MemoryWorkQueue
from proactive.adapters.memory_tables import MemoryEntityTable
from proactive.bot import Welcomes, welcome_notification_id
from proactive.broadcast.ports import OrchestrationState
from proactive.delivery.ports import RetryRequest
from proactive.delivery.redrive import Action, PacedRuns, decide, recheck_delay
from proactive.models import DeliveryRecord, DeliveryStatus, Notification, NotificationStatus
from proactive.orchestration import policies
from proactive.orchestration.runs import TenantRun
from proactive.orchestration.tenant_broadcast import redrive_instance_id
from proactive.storage.stores import TableDeliveryLedger, TableNotificationStore

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
TENANT = "9f3c2a41-5b6e-4d7a-8c1f-2e4b6a8d0c13"
KEY = "user:0d2b5f7e-8a9c-4b1d-a3e5-f7091b2c3d4e"


def row(status: DeliveryStatus = DeliveryStatus.PENDING, **extra: Any) -> DeliveryRecord:
    return DeliveryRecord(
        notification_id="n1",
        tenant_id=TENANT,
        recipient_key=KEY,
        status=status,
        created_at=NOW,
        updated_at=NOW,
        **extra,
    )


def message(**extra: Any) -> RetryRequest:
    return RetryRequest(
        notification_id="n1", tenant_id=TENANT, recipient_key=KEY, reason="Throttled", **extra
    )


# ---- decide ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status",
    [DeliveryStatus.SENT, DeliveryStatus.SENDING, DeliveryStatus.FAILED, DeliveryStatus.DEAD_LETTERED],
)
def test_a_message_for_a_row_sent_claimed_or_settled_does_nothing(status: DeliveryStatus) -> None:
    assert decide(message(attempt=1), row(status), cancelled=False, now=NOW).action is Action.DONE


def test_a_message_for_a_missing_row_or_a_cancelled_notification_does_nothing() -> None:
    assert decide(message(), None, cancelled=False, now=NOW).action is Action.DONE
    assert decide(message(), row(), cancelled=True, now=NOW).action is Action.DONE


def test_a_row_not_due_yet_waits_exactly_until_its_not_before() -> None:
    decision = decide(
        message(attempt=1), row(not_before=NOW + timedelta(seconds=42.5)), cancelled=False, now=NOW
    )
    assert (decision.action, decision.delay) == (Action.WAIT, 42.5)


def test_a_deferred_row_whose_window_ended_and_a_due_pending_row_start_a_run() -> None:
    ended = row(DeliveryStatus.DEFERRED, not_before=NOW - timedelta(seconds=1))
    assert decide(message(), ended, cancelled=False, now=NOW).action is Action.RUN
    assert decide(message(attempt=1), row(not_before=NOW), cancelled=False, now=NOW).action is Action.RUN


def test_a_row_handed_off_more_than_max_redrives_times_is_dead_lettered() -> None:
    last = decide(message(attempt=policies.MAX_REDRIVES), row(), cancelled=False, now=NOW)
    past = decide(message(attempt=policies.MAX_REDRIVES + 1), row(), cancelled=False, now=NOW)
    assert (last.action, past.action) == (Action.RUN, Action.DEAD_LETTER)


def test_rechecks_of_a_run_under_way_back_off_to_the_cap() -> None:
    delays = [recheck_delay(n) for n in range(8)]
    assert delays[:3] == [5.0, 10.0, 20.0] and delays[-1] == 300.0 and delays == sorted(delays)


# ---- PacedRuns ---------------------------------------------------------------------------------------


@dataclass
class Runs:
    """The Orchestrations port with instances in a dict (what the Durable client would answer)."""

    states: dict[str, str] = field(default_factory=dict)
    started: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)
    refuse_start_as: str | None = None  # the status a concurrent start left when ours is refused
    start_takes: float = 0.0  # a start that takes a storage round trip, as on Azure

    async def start(self, name: str, instance_id: str, payload: dict[str, Any]) -> None:
        await asyncio.sleep(self.start_takes)
        if self.refuse_start_as is not None:
            self.states[instance_id] = self.refuse_start_as
            raise Exception("An Orchestration instance with the status Running already exists.")
        self.started.append((name, instance_id, payload))
        self.states[instance_id] = "Pending"

    async def state(self, instance_id: str) -> OrchestrationState | None:
        status = self.states.get(instance_id)
        return OrchestrationState(runtime_status=status) if status else None

    async def raise_event(self, instance_id: str, name: str, data: Any) -> bool:
        self.events.append((instance_id, name))
        return True


def notification(urgency: str = "urgent") -> Notification:
    request = {"audience": {"tenants": [TENANT]}, "message": {"text": "Deploy 42"}, "urgency": urgency}
    return Notification(id="n1", request=request, status=NotificationStatus.COMPLETED, created_at=NOW)


async def test_a_run_is_started_with_the_broadcasts_urgency_under_the_tenants_redrive_id() -> None:
    runs = Runs(states={redrive_instance_id("n1", TENANT): "Completed"})  # an earlier run ended

    started = await PacedRuns(runs, batch_size=50, batches_per_execution=20).ensure(notification(), TENANT)

    ((name, instance, payload),) = runs.started
    run = TenantRun.from_json(payload)
    assert started and (name, instance) == (fn.TENANT_LANE, "n1." + TENANT + ".redrive")
    assert (run.urgency, run.operation, run.parts, run.batch_size) == ("urgent", "send", 1, 50)


@pytest.mark.parametrize("status", ["Pending", "Running"])
async def test_a_run_under_way_is_woken_not_started_again(status: str) -> None:
    instance = redrive_instance_id("n1", TENANT)
    runs = Runs(states={instance: status})

    started = await PacedRuns(runs, batch_size=50, batches_per_execution=20).ensure(notification(), TENANT)

    assert not started and runs.started == [] and runs.events == [(instance, fn.WAKE_EVENT)]


async def test_a_batch_of_messages_of_one_tenant_starts_one_run_and_wakes_it_for_the_others() -> None:
    runs = Runs(start_takes=0.01)
    paced = PacedRuns(runs, batch_size=50, batches_per_execution=20)

    started = await asyncio.gather(*(paced.ensure(notification(), TENANT) for _ in range(16)))

    assert sorted(started) == [False] * 15 + [True] and len(runs.started) == 1
    assert len(runs.events) == 15


async def test_a_start_refused_because_a_concurrent_message_started_the_run_wakes_it() -> None:
    runs = Runs(refuse_start_as="Running")
    paced = PacedRuns(runs, batch_size=50, batches_per_execution=20)
    assert not await paced.ensure(notification(), TENANT)
    assert runs.events == [(redrive_instance_id("n1", TENANT), fn.WAKE_EVENT)]


async def test_a_start_that_fails_with_no_run_under_way_fails_the_trigger() -> None:
    runs = Runs(refuse_start_as="Failed")
    with pytest.raises(Exception, match="already exists"):
        await PacedRuns(runs, batch_size=50, batches_per_execution=20).ensure(notification(), TENANT)


# ---- Welcomes ----------------------------------------------------------------------------------------


class WelcomeWorld:
    def __init__(self) -> None:
        self.notifications = TableNotificationStore(MemoryEntityTable("notifications"))
        self.ledger = TableDeliveryLedger(MemoryEntityTable("deliveries"))
        self.queue = MemoryWorkQueue("deliveries-retry")
        self.now = NOW
        self.welcomes = Welcomes(self.notifications, self.ledger, self.queue, clock=lambda: self.now)

    async def row(self) -> DeliveryRecord:
        found = await self.ledger.get(welcome_notification_id(TENANT), TENANT, KEY)
        assert found is not None
        return found.value

    async def settle(self, status: DeliveryStatus) -> None:
        found = await self.ledger.get(welcome_notification_id(TENANT), TENANT, KEY)
        assert found is not None
        await self.ledger.replace(found.value.model_copy(update={"status": status}), found.etag)


async def test_a_reinstall_after_the_welcome_was_sent_queues_a_fresh_welcome() -> None:
    world = WelcomeWorld()
    assert await world.welcomes.welcome(TENANT, KEY.removeprefix("user:"), "Contoso Alerts")
    await world.settle(DeliveryStatus.SENT)
    world.now = NOW + timedelta(days=3)

    assert await world.welcomes.welcome(TENANT, KEY.removeprefix("user:"), "Contoso Alerts")

    row = await world.row()
    assert (row.status, row.not_before, row.created_at, row.attempts) == (
        DeliveryStatus.PENDING,
        world.now,
        NOW,
        0,
    )
    assert len(world.queue.bodies()) == 2


@pytest.mark.parametrize("status", [DeliveryStatus.PENDING, DeliveryStatus.DEFERRED, DeliveryStatus.SENDING])
async def test_a_reinstall_while_the_first_welcome_is_on_its_way_leaves_it_to_serve_both(
    status: DeliveryStatus,
) -> None:
    world = WelcomeWorld()
    await world.welcomes.welcome(TENANT, KEY.removeprefix("user:"), None)
    await world.settle(status)

    await world.welcomes.welcome(TENANT, KEY.removeprefix("user:"), None)

    assert (await world.row()).status is status  # the claim still lets exactly one send happen


async def test_a_renamed_bot_updates_the_welcome_text_and_a_tenant_id_that_is_no_guid_stores_nothing() -> (
    None
):
    world = WelcomeWorld()
    await world.welcomes.welcome(TENANT, KEY.removeprefix("user:"), "Old Name")
    await world.welcomes.welcome(TENANT, KEY.removeprefix("user:"), "New Name")
    stored = await world.notifications.get(welcome_notification_id(TENANT))
    assert stored is not None and "New Name" in stored.value.request["message"]["text"]
    assert stored.value.status is NotificationStatus.RUNNING  # always reconciled

    assert not await world.welcomes.welcome("not/a guid", "someone", None)
    assert len(world.queue.bodies()) == 2
