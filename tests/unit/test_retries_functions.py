"""The re-delivery triggers as the host runs them: function_app on the devhost with its queue and timer
triggers (devhost ``TriggerService`` polling real Azurite queues with host.json's poison semantics), the
ledger and dead letters on Azurite, sends to the Teams emulator over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue.aio import QueueClient

from devhost.azurite import free_port
from devhost.durable.triggers import TriggerService
from devhost.emulators.teams import build_app, emulator_key
from devhost.emulators.teams_state import TeamsEmulatorConfig
from devhost.host import DevHost
from devhost.settings import HostSettings
from proactive import composition
from proactive.broadcast_request import parse_broadcast_request
from proactive.functions import retries
from proactive.models import (
    ChannelAccount,
    ConversationAccount,
    ConversationReference,
    DeliveryRecord,
    DeliveryStatus,
    Notification,
    NotificationStatus,
    RecipientKind,
    StoredReference,
)
from proactive.sender import Reason
from proactive.sender_ports import RetryRequest
from tests.support.function_app import load_function_app

pytestmark = pytest.mark.azurite

KEY = "retries-key"
TENANT = "cccccccc-3333-4333-8333-333333333333"
# host.json's queue semantics (maxDequeueCount 5, messageEncoding none), made visible again at once.
HOST_JSON = {
    "extensions": {
        "queues": {"maxDequeueCount": 5, "visibilityTimeout": "00:00:00", "messageEncoding": "none"}
    }
}


def aad(n: int) -> str:
    return str(uuid.UUID(int=0x700000 + n))


def user_key(n: int) -> str:
    return f"user:{aad(n)}"


@dataclass
class World:
    host: DevHost
    emulator_url: str
    emulator: Any
    names: dict[str, str]
    storage: str

    @property
    def services(self) -> composition.Services:
        return composition.services()

    async def notification(self, nid: str, users: range, status: NotificationStatus, **extra: Any) -> None:
        body = {
            "notificationId": nid,
            "audience": {"users": [{"tenantId": TENANT, "aadObjectId": aad(n)} for n in users]},
            "message": {"text": "Maintenance tonight"},
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
                StoredReference(
                    tenant_id=TENANT,
                    kind=RecipientKind.USER,
                    recipient_id=aad(n),
                    reference=ConversationReference(
                        bot=ChannelAccount(id="28:bot"),
                        user=ChannelAccount(id=f"29:u{n}", aad_object_id=aad(n)),
                        conversation=ConversationAccount(id=f"a:conv-{n}", tenant_id=TENANT),
                        service_url=self.emulator_url,
                    ),
                    updated_at=now,
                )
            )

    async def row(
        self, nid: str, n: int, status: DeliveryStatus, *, age: timedelta = timedelta(0), **extra: Any
    ) -> None:
        at = datetime.now(UTC) - age
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

    async def put_retry(self, nid: str, n: int, *, reason: str = "ServiceUnavailable") -> None:
        request = RetryRequest(
            notification_id=nid, tenant_id=TENANT, recipient_key=user_key(n), reason=reason
        )
        await self.services.queues.queue(self.names["retry"]).put(request.to_json())

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
    config = TeamsEmulatorConfig(
        tenant_rate=1000, faults=({"match": {"user": aad(9)}, "operations": ["send"], "kind": "503"},)
    )
    emulator_app = build_app(config)
    runner = web.AppRunner(emulator_app, shutdown_timeout=0.5)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    emulator_url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
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
        **{
            f"TABLE_{t.upper()}": f"{unique_name}{t}"
            for t in ("references", "preferences", "notifications", "deliveries", "deadletters")
        },
    }
    module = load_function_app(monkeypatch, environ)
    settings = HostSettings({**environ, "DEVHOST_FUNCTION_KEY": KEY}, HOST_JSON)
    host = DevHost(module.app, settings, port=free_port())
    host.triggers = TriggerService(host, settings, poll_interval=0.05)
    try:
        async with host:
            yield World(host, emulator_url, emulator_app[emulator_key()], names, storage_connection_string)
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


async def test_a_row_that_keeps_failing_is_poisoned_after_max_dequeue_count_and_dead_lettered(
    world: World,
) -> None:
    await world.notification("retry-poison", range(9, 10), NotificationStatus.COMPLETED)
    await world.row("retry-poison", 9, DeliveryStatus.PENDING)
    await world.put_retry("retry-poison", 9)

    async def dead() -> bool:
        return (await world.record("retry-poison", 9)).status is DeliveryStatus.DEAD_LETTERED

    await world.until(dead)
    record = await world.record("retry-poison", 9)
    [letter] = await world.dead_letters()
    assert world.host.runtime.stats.queue_poisoned == 1
    assert letter.source_queue == world.names["retry"]
    assert letter.payload["recipientKey"] == user_key(9)
    assert letter.reason.startswith("retries exhausted (ServiceUnavailable")
    # Five deliveries of the message, each with the sender's two in-process attempts; nothing got through.
    assert record.attempts == 10 and world.received("a:conv-9") == 0
    assert await _empty(world, world.names["retry"] + retries.POISON_SUFFIX)


async def test_a_poison_message_for_a_row_sent_meanwhile_writes_no_dead_letter(world: World) -> None:
    await world.notification("poison-late", range(1), NotificationStatus.COMPLETED)
    await world.row("poison-late", 0, DeliveryStatus.SENT)
    request = RetryRequest(
        notification_id="poison-late", tenant_id=TENANT, recipient_key=user_key(0), reason="Throttled"
    )
    await world.services.queues.queue(world.names["retry"] + retries.POISON_SUFFIX).put(request.to_json())

    await world.until(lambda: _empty(world, world.names["retry"] + retries.POISON_SUFFIX))
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
    await world.notification("live", range(3, 5), NotificationStatus.RUNNING)
    await world.row("live", 3, DeliveryStatus.PENDING, age=old)  # waits for its turn at the limiter
    await world.row("live", 4, DeliveryStatus.SENDING, age=old)
    await world.notification("stopped", range(5, 6), NotificationStatus.CANCELLED)
    await world.row("stopped", 5, DeliveryStatus.SENDING, age=old)

    await run_timer(world, retries.RECONCILE)

    async def settled() -> bool:
        rows = [await world.record("done", n) for n in range(3)] + [await world.record("live", 4)]
        return all(r.status is DeliveryStatus.SENT for r in rows[:1] + rows[2:])

    await world.until(settled)
    assert (await world.record("done", 1)).status is DeliveryStatus.SENDING
    assert (await world.record("live", 3)).status is DeliveryStatus.PENDING
    stopped = await world.record("stopped", 5)
    assert stopped.status is DeliveryStatus.CANCELLED and stopped.last_error is not None
    assert stopped.last_error.code == Reason.RECONCILED
    assert [world.received(f"a:conv-{n}") for n in range(6)] == [1, 0, 1, 0, 1, 0]


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
    table = world.services.tables.table(world.services.settings.tables.notifications)

    found = await retries.notifications_to_reconcile(table, now=datetime.now(UTC))

    assert sorted(n.id for n in found) == ["finished-new", "running-old"]


async def _empty(world: World, queue: str) -> bool:
    # The approximate count includes messages a trigger holds invisible; receiving would steal them.
    async with QueueClient.from_connection_string(world.storage, queue) as client:
        try:
            properties = await client.get_queue_properties()
        except ResourceNotFoundError:
            return True
        return int(properties.approximate_message_count or 0) == 0
