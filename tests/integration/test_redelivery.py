"""The re-delivery triggers as the host runs them: function_app on the devhost with its queue and timer
triggers (devhost ``TriggerService`` polling real Azurite queues with host.json's poison semantics), the
re-drive runs on the devhost's Durable runtime (the real replay engine, the tenant's limiter entity), the
ledger and dead letters on Azurite, sends to the Teams emulator over HTTP.

One clock for all of it (:class:`ShiftedClock`: wall time plus an offset a test can move forward), read by
the Durable runtime (orchestration time, timers), the sender and the triggers, so a test can let a quiet
window end without waiting for it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue.aio import QueueClient

from devhost.azurite import free_port
from devhost.emulators.serving import start_on_loopback
from devhost.emulators.teams import build_app, emulator_key
from devhost.emulators.teams_state import TeamsEmulatorConfig
from devhost.host import DevHost
from devhost.host.triggers import TriggerService
from devhost.settings import HostSettings
from proactive import composition
from proactive import function_names as fn
from proactive.broadcast.request import parse_broadcast_request
from proactive.delivery.contract import Reason
from proactive.delivery.ports import RetryRequest
from proactive.delivery.redelivery import notifications_to_reconcile
from proactive.functions import redelivery as retries
from proactive.models import (
    DeliveryRecord,
    DeliveryStatus,
    Notification,
    NotificationStatus,
    Preferences,
    QuietHours,
)
from proactive.orchestration import policies
from proactive.orchestration.tenant_broadcast import redrive_instance_id
from tests.support.function_app import load_function_app
from tests.support.ids import AadIds
from tests.support.references import stored_reference

pytestmark = pytest.mark.azurite

KEY = "retries-key"
TENANT = "cccccccc-3333-4333-8333-333333333333"
# host.json's queue semantics (maxDequeueCount 5, messageEncoding none), made visible again at once.
HOST_JSON = {
    "extensions": {
        "queues": {"maxDequeueCount": 5, "visibilityTimeout": "00:00:00", "messageEncoding": "none"}
    }
}


class ShiftedClock:
    """Wall time plus an offset that only moves forward; the runtime's timers wake on every move."""

    def __init__(self) -> None:
        self.offset = timedelta(0)
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def advance(self, delta: timedelta) -> None:
        self.offset += delta
        for listener in list(self._listeners):
            listener()


aad = AadIds(0x700000)


def user_key(n: int) -> str:
    return f"user:{aad(n)}"


@dataclass
class World:
    host: DevHost
    emulator_url: str
    emulator: Any
    names: dict[str, str]
    storage: str
    clock: ShiftedClock

    @property
    def services(self) -> composition.Services:
        return composition.services()

    async def notification(
        self, nid: str, users: range, status: NotificationStatus, *, urgency: str = "normal", **extra: Any
    ) -> None:
        body = {
            "notificationId": nid,
            "audience": {"users": [{"tenantId": TENANT, "aadObjectId": aad(n)} for n in users]},
            "message": {"text": "Maintenance tonight"},
            "urgency": urgency,
        }
        request = parse_broadcast_request(json.dumps(body).encode(), now=datetime.now(UTC))
        now = datetime.now(UTC)
        await self.services.notifications.create(
            Notification(
                id=nid, request=request.to_json(), status=status, created_at=now, updated_at=now, **extra
            )
        )
        for n in users:
            await self.services.references.upsert(
                stored_reference(
                    TENANT,
                    aad(n),
                    conversation_id=f"a:conv-{n}",
                    service_url=self.emulator_url,
                    bot_id="28:bot",
                    user_id=f"29:u{n}",
                    updated_at=now,
                )
            )

    async def row(
        self, nid: str, n: int, status: DeliveryStatus, *, age: timedelta = timedelta(0), **extra: Any
    ) -> None:
        at = self.clock.now() - age
        record = DeliveryRecord(
            notification_id=nid,
            tenant_id=TENANT,
            recipient_key=user_key(n),
            status=status,
            created_at=at,
            updated_at=at,
            **extra,
        )
        await self.services.deliveries.add_pending([record])

    async def record(self, nid: str, n: int) -> DeliveryRecord:
        found = await self.services.deliveries.get(nid, TENANT, user_key(n))
        assert found is not None
        return found.value

    async def put_retry(
        self, nid: str, n: int, *, reason: str = "ServiceUnavailable", attempt: int = 1
    ) -> None:
        request = RetryRequest(
            notification_id=nid, tenant_id=TENANT, recipient_key=user_key(n), reason=reason, attempt=attempt
        )
        await self.services.queues.queue(self.names["retry"]).put(request.to_json())

    async def faults(self, *rules: dict[str, Any]) -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.post(self.emulator_url + "_emulator/faults", json=list(rules)) as response,
        ):
            assert response.status < 300

    async def redrive_runs(self, nid: str) -> list[Any]:
        """The re-drive run instances of ``nid`` (one per tenant at most, whatever the messages)."""
        instance = redrive_instance_id(nid, TENANT)
        return [r for r in await self.host.runtime.list_instances() if r.instance_id == instance]

    async def run_finished(self, nid: str) -> bool:
        runs = await self.redrive_runs(nid)
        return bool(runs) and all(r.is_terminal for r in runs)

    async def limiter(self) -> dict[str, Any]:
        exists, state = await self.host.runtime.read_entity_state(fn.TENANT_LIMITER, TENANT)
        assert exists and state is not None
        loaded: dict[str, Any] = json.loads(state)
        return loaded

    async def until(self, check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("condition not reached in time")

    def received(self, conversation: str) -> int:
        stats = self.emulator.stats.to_json(activities=False)
        return int(stats["conversations"].get(conversation, {}).get("count", 0))

    async def dead_letters(self) -> list[Any]:
        day = datetime.now(UTC).strftime("%Y%m%d")
        return list((await self.services.dead_letters.list_day(day)).items)


@pytest.fixture
async def world(
    monkeypatch: pytest.MonkeyPatch, storage_connection_string: str, unique_name: str
) -> AsyncIterator[World]:
    clock = ShiftedClock()
    monkeypatch.setattr(composition, "utc_now", clock.now)
    monkeypatch.setattr(retries, "utc_now", clock.now)
    # Re-check a row whose run is under way after 0.2 s, not 15 s: these tests run one handful of rows.
    monkeypatch.setattr(policies, "REDRIVE_RECHECK_FIRST", timedelta(seconds=0.2))
    monkeypatch.setattr(policies, "REDRIVE_RECHECK_MAX", timedelta(seconds=1))
    # The emulator enforces a tenant ceiling of 10 msg/s and the product paces at 8: a send past the
    # limiter would show up as a 429 there.
    config = TeamsEmulatorConfig(
        tenant_rate=10, faults=({"match": {"user": aad(9)}, "operations": ["send"], "kind": "503"},)
    )
    emulator_app = build_app(config)
    runner, base_url = await start_on_loopback(emulator_app, shutdown_timeout=0.5)
    emulator_url = base_url
    names = {"retry": f"{unique_name}-retry", "installs": f"{unique_name}-installs"}
    environ = {
        "AzureWebJobsStorage": storage_connection_string,
        "BOT_AUTH": "anonymous",
        "DEV_OUTBOUND_HOSTS": "127.0.0.1",
        "QUEUE_DELIVERIES_RETRY": names["retry"],
        "QUEUE_INSTALLS": names["installs"],
        # Test timings: short backoff, no hand-off delay.
        "MAX_SEND_ATTEMPTS": "2",
        "SEND_TIMEOUT_SECONDS": "2",
        "SEND_RETRY_BASE_SECONDS": "0.01",
        "SEND_RETRY_MAX_SECONDS": "0.02",
        "RETRY_HANDOFF_SECONDS": "0",
        "SEND_RATE_PER_TENANT": "8",
        **{
            f"TABLE_{t.upper()}": f"{unique_name}{t}"
            for t in ("references", "preferences", "notifications", "deliveries", "deadletters")
        },
    }
    module = load_function_app(monkeypatch, environ)
    settings = HostSettings({**environ, "DEVHOST_FUNCTION_KEY": KEY}, HOST_JSON)
    host = DevHost(module.app, settings, port=free_port(), clock=clock)
    host.triggers = TriggerService(host, settings, poll_interval=0.05)
    try:
        async with host:
            yield World(
                host, emulator_url, emulator_app[emulator_key()], names, storage_connection_string, clock
            )
            await host.runtime.idle()
    finally:
        await composition.services().close()
        await runner.cleanup()
    assert host.runtime.errors == []


async def run_timer(world: World, name: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{world.host.origin}/admin/functions/{name}", headers={"x-functions-key": KEY}, json={}
        ) as response,
    ):
        assert response.status == 202
    await world.host.runtime.idle()


async def test_the_retry_trigger_sends_a_handed_off_row_once_and_completes_the_message(world: World) -> None:
    await world.notification("retry-ok", range(1), NotificationStatus.RUNNING)
    await world.row("retry-ok", 0, DeliveryStatus.PENDING)
    await world.put_retry("retry-ok", 0)
    await world.put_retry("retry-ok", 0)  # a duplicated message: the claim lets one send

    async def sent() -> bool:
        return (await world.record("retry-ok", 0)).status is DeliveryStatus.SENT

    await world.until(sent)
    await world.until(lambda: _empty(world, world.names["retry"]))
    assert world.received("a:conv-0") == 1
    assert world.host.runtime.stats.queue_poisoned == 0


async def test_a_row_that_keeps_failing_is_dead_lettered_after_max_redrives_hand_offs(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two re-drives instead of five: three bad batches in a row would open the tenant's breaker, whose
    # cool-downs (10 s, doubling) are the limiter's business, not this test's.
    monkeypatch.setattr(policies, "MAX_REDRIVES", 2)
    await world.notification("retry-poison", range(9, 10), NotificationStatus.COMPLETED)
    # As the sender leaves a row it handed off the first time.
    await world.row("retry-poison", 9, DeliveryStatus.PENDING, redrives=1)
    await world.put_retry("retry-poison", 9, attempt=1)

    async def dead() -> bool:
        return (await world.record("retry-poison", 9)).status is DeliveryStatus.DEAD_LETTERED

    await world.until(dead)
    record = await world.record("retry-poison", 9)
    [letter] = await world.dead_letters()
    assert letter.source_queue == world.names["retry"]
    assert letter.payload["recipientKey"] == user_key(9) and letter.payload["attempt"] == 3
    assert letter.reason.startswith("retries exhausted (ServiceUnavailable")
    # Re-drives 1 and 2 each made the sender's two in-process attempts through a paced run and reported
    # their 5xx to the tenant's limiter; the third hand-off was dead-lettered, not sent.
    assert record.redrives == 3 and record.attempts == 4 and world.received("a:conv-9") == 0
    assert (await world.limiter())["stats"]["serverErrors"] == 4
    assert world.host.runtime.stats.queue_poisoned == 0
    await world.until(lambda: _empty(world, world.names["retry"]))


async def test_a_poison_message_for_a_row_sent_meanwhile_writes_no_dead_letter(world: World) -> None:
    await world.notification("poison-late", range(1), NotificationStatus.COMPLETED)
    await world.row("poison-late", 0, DeliveryStatus.SENT)
    request = RetryRequest(
        notification_id="poison-late", tenant_id=TENANT, recipient_key=user_key(0), reason="Throttled"
    )
    await world.services.queues.queue(world.names["retry"] + fn.POISON_SUFFIX).put(request.to_json())

    await world.until(lambda: _empty(world, world.names["retry"] + fn.POISON_SUFFIX))
    await world.host.runtime.idle()
    assert (await world.record("poison-late", 0)).status is DeliveryStatus.SENT
    assert await world.dead_letters() == []


async def test_a_malformed_retry_message_is_dead_lettered_at_once_not_redelivered(world: World) -> None:
    await world.services.queues.queue(world.names["retry"]).put({"hello": "world"})

    async def lettered() -> bool:
        return len(await world.dead_letters()) == 1

    await world.until(lettered)
    [letter] = await world.dead_letters()
    assert letter.reason.startswith("malformed_message") and json.loads(letter.payload["raw"]) == {
        "hello": "world"
    }
    assert world.host.runtime.stats.queue_poisoned == 0


async def test_the_reconcile_timer_redrives_stuck_rows_and_leaves_the_orchestrations_rows_alone(
    world: World,
) -> None:
    old = timedelta(minutes=20)
    await world.notification("done", range(0, 3), NotificationStatus.COMPLETED)
    await world.row("done", 0, DeliveryStatus.SENDING, age=old)  # a sender died holding it
    await world.row("done", 1, DeliveryStatus.SENDING)  # a live send: younger than the deadline
    # A hand-off whose message was lost: due long ago, never touched since.
    await world.row("done", 2, DeliveryStatus.PENDING, age=old, not_before=datetime.now(UTC) - old)
    await world.notification("live", range(3, 4), NotificationStatus.RUNNING)
    await world.row("live", 3, DeliveryStatus.PENDING, age=old)  # waits for its turn at the limiter
    await world.notification("live-stuck", range(4, 5), NotificationStatus.RUNNING)
    await world.row("live-stuck", 4, DeliveryStatus.SENDING, age=old)
    await world.notification("stopped", range(5, 6), NotificationStatus.CANCELLED)
    await world.row("stopped", 5, DeliveryStatus.SENDING, age=old)
    # A quiet window that ended long ago, and the run that deferred the row is gone.
    await world.notification("quiet", range(6, 8), NotificationStatus.COMPLETED)
    await world.row("quiet", 6, DeliveryStatus.DEFERRED, age=old, not_before=datetime.now(UTC) - old)
    # A window that ended a moment ago: a live lane wakes for it, reconciliation leaves it alone.
    await world.row("quiet", 7, DeliveryStatus.DEFERRED, not_before=datetime.now(UTC))

    await run_timer(world, fn.RECONCILE)

    async def settled() -> bool:
        rows = [await world.record("done", n) for n in (0, 2)]
        rows += [await world.record("live-stuck", 4)]
        # Row 7 was due too, so the re-drive run of "quiet" takes it along with row 6 (paced: a slot apart).
        rows += [await world.record("quiet", 6), await world.record("quiet", 7)]
        return all(r.status is DeliveryStatus.SENT for r in rows)

    await world.until(settled)
    assert (await world.record("done", 1)).status is DeliveryStatus.SENDING
    assert (await world.record("live", 3)).status is DeliveryStatus.PENDING
    assert await world.redrive_runs("live") == []  # the broadcast's own row: never queued
    stopped = await world.record("stopped", 5)
    assert stopped.status is DeliveryStatus.CANCELLED and stopped.last_error is not None
    assert stopped.last_error.code == Reason.RECONCILED
    assert [world.received(f"a:conv-{n}") for n in range(8)] == [1, 0, 1, 0, 1, 0, 1, 1]


async def test_a_redrive_takes_the_tenants_grants_reports_its_429s_and_honours_retry_after(
    world: World,
) -> None:
    await world.notification("throttled", range(1, 2), NotificationStatus.COMPLETED, urgency="urgent")
    await world.row("throttled", 1, DeliveryStatus.PENDING, redrives=1)
    # Both in-process attempts of the first re-drive answer 429 with Retry-After 2 s.
    await world.faults(
        {"match": {"user": aad(1)}, "operations": ["send"], "kind": "429", "times": 2, "retry_after": 2}
    )
    started = world.clock.now()
    await world.put_retry("throttled", 1, attempt=1)

    async def sent() -> bool:
        return (await world.record("throttled", 1)).status is DeliveryStatus.SENT

    await world.until(sent)
    record = await world.record("throttled", 1)
    assert world.received("a:conv-1") == 1
    # Handed off once more (a second re-drive), which waited for Retry-After before it was sent.
    assert record.redrives == 2 and record.updated_at - started >= timedelta(seconds=2)
    stats = (await world.limiter())["stats"]
    assert stats["throttled"] == 2 and stats["sent"] == 1 and stats["grants"] >= 2
    # The re-drive run kept the broadcast's urgency (the limiter's priority; quiet hours ignored).
    [run] = await world.redrive_runs("throttled")
    assert json.loads(run.input or "{}")["urgency"] == "urgent"
    await world.until(lambda: _empty(world, world.names["retry"]))
    assert world.emulator.stats.by_status["429"] == 2


async def test_a_row_that_meets_quiet_hours_on_a_redrive_is_sent_when_the_window_ends(world: World) -> None:
    await world.notification("night", range(2, 3), NotificationStatus.COMPLETED)
    now = world.clock.now()
    quiet = QuietHours(
        start=(now - timedelta(hours=1)).strftime("%H:%M"), end=(now + timedelta(hours=1)).strftime("%H:%M")
    )
    await world.services.preferences.put(
        Preferences(
            tenant_id=TENANT, aad_object_id=aad(2), quiet_hours=quiet, time_zone="UTC", updated_at=now
        )
    )
    await world.row("night", 2, DeliveryStatus.PENDING, redrives=1)
    await world.put_retry("night", 2, attempt=1)

    async def deferred() -> bool:
        return (await world.record("night", 2)).status is DeliveryStatus.DEFERRED

    await world.until(deferred)
    held = await world.record("night", 2)
    assert held.last_error is not None and held.last_error.code == Reason.QUIET_HOURS
    assert held.not_before is not None and held.not_before > now
    await world.host.runtime.idle()
    [run] = await world.redrive_runs("night")
    assert not run.is_terminal  # the run sleeps on a durable timer until the window ends
    assert world.received("a:conv-2") == 0

    world.clock.advance(held.not_before - now + timedelta(seconds=1))

    async def sent() -> bool:
        return (await world.record("night", 2)).status is DeliveryStatus.SENT

    await world.until(sent)
    await world.until(lambda: world.run_finished("night"))
    assert world.received("a:conv-2") == 1


async def test_a_retry_message_for_a_row_already_sent_does_nothing(world: World) -> None:
    await world.notification("already", range(3, 4), NotificationStatus.COMPLETED)
    await world.row("already", 3, DeliveryStatus.SENT)
    await world.put_retry("already", 3)
    await world.put_retry("already", 3)

    await world.until(lambda: _empty(world, world.names["retry"]))
    await world.host.runtime.idle()
    assert await world.redrive_runs("already") == []
    assert world.received("a:conv-3") == 0
    assert (await world.record("already", 3)).status is DeliveryStatus.SENT


async def test_many_retry_messages_of_one_tenant_collapse_into_one_paced_run(world: World) -> None:
    users = range(20, 44)
    await world.notification("many", users, NotificationStatus.COMPLETED)
    for n in users:  # as hand-offs leave them: pending, due now
        await world.row("many", n, DeliveryStatus.PENDING, redrives=1, not_before=world.clock.now())
    await asyncio.gather(*(world.put_retry("many", n) for n in users))

    async def all_sent() -> bool:
        return all([(await world.record("many", n)).status is DeliveryStatus.SENT for n in users])

    await world.until(all_sent, within=60)
    await world.until(lambda: _empty(world, world.names["retry"]))
    await world.host.runtime.idle()
    assert [world.received(f"a:conv-{n}") for n in users] == [1] * len(users)
    # One run sent them all, through the tenant's limiter, under the emulator's ceiling (no 429).
    assert world.host.runtime.stats.orchestrations_started == 1
    assert (await world.limiter())["stats"]["sent"] == len(users)
    assert world.emulator.stats.by_status.get("429", 0) == 0


async def test_only_running_and_recently_finished_notifications_are_reconciled(world: World) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=3)
    await world.notification("running-old", range(1), NotificationStatus.RUNNING)
    await world.notification("finished-new", range(1), NotificationStatus.FAILED)
    await world.notification("accepted", range(1), NotificationStatus.ACCEPTED)
    ancient = parse_broadcast_request(
        json.dumps(
            {"audience": {"users": [{"tenantId": TENANT, "aadObjectId": aad(1)}]}, "message": {"text": "x"}}
        ).encode(),
        now=long_ago,
    )
    await world.services.notifications.create(
        Notification(
            id="finished-old",
            request=ancient.model_copy(update={"notification_id": "finished-old"}).to_json(),
            status=NotificationStatus.COMPLETED,
            created_at=long_ago,
            updated_at=long_ago,
        )
    )
    found = await notifications_to_reconcile(world.services.notifications, now=datetime.now(UTC))

    assert sorted(n.id for n in found) == ["finished-new", "running-old"]


async def _empty(world: World, queue: str) -> bool:
    # The approximate count includes messages a trigger holds invisible; receiving would steal them.
    async with QueueClient.from_connection_string(world.storage, queue) as client:
        try:
            properties = await client.get_queue_properties()
        except ResourceNotFoundError:
            return True
        return int(properties.approximate_message_count or 0) == 0
