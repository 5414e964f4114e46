"""``send_batch`` end to end: the real Teams emulator over HTTP, the ledger and queues on Azurite.

300 recipients in one tenant; the emulator answers 10 % of sends 429, 5 % 5xx and 2 % hang until the client
times out, 10 users have blocked the bot and 10 have stale conversations, 5 have no reference at all and 5
opted out. Two workers run ``send_batch`` on the same partition at once until nothing is claimable, the
``deliveries-retry`` queue is drained as its re-drive run would (``send_batch`` once the rows are due), stuck
rows are reconciled,
and then: every deliverable recipient received exactly one message (the emulator's per-conversation counts
and duplicate list), every other one is recorded with its reason, and the counts add up.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from devhost.emulators.serving import start_on_loopback
from devhost.emulators.teams import build_app
from devhost.emulators.teams_state import TeamsEmulatorConfig
from proactive.adapters.bot_token import AnonymousTokens
from proactive.adapters.connector import BotConnectorClient
from proactive.adapters.storage_queues import AzureQueues
from proactive.adapters.table_storage import AzureTables
from proactive.delivery.batch import BatchSender
from proactive.delivery.contract import Pacing, SendBatchInput, SendBatchResult
from proactive.delivery.redelivery import reconcile_stuck
from proactive.delivery.retry import RetryPolicy
from proactive.models import (
    DeliveryRecord,
    DeliveryStatus,
    Notification,
    Preferences,
)
from proactive.outbound import OutboundPolicy
from proactive.storage.stores import (
    TableDeliveryLedger,
    TableNotificationStore,
    TablePreferenceStore,
    TableReferenceStore,
)
from tests.support.ids import AadIds
from tests.support.references import stored_reference

pytestmark = pytest.mark.azurite

TENANT = "22222222-2222-2222-2222-222222222222"
BOT = "28:aaaaaaaa-0000-0000-0000-000000000002"
NOTIFICATION = "incident-300"
USERS = 300
BLOCKED = range(0, 10)
STALE = range(10, 20)
NO_REFERENCE = range(20, 25)
OPTED_OUT = range(25, 30)


aad = AadIds(0x300000)


def conversation(index: int) -> str:
    return f"a:conv-{index}"


@pytest.fixture
async def emulator_base() -> AsyncIterator[str]:
    config = TeamsEmulatorConfig(
        tenant_rate=5000,
        seed=20260601,
        rates={"429": 0.10, "503": 0.03, "502": 0.02, "timeout": 0.02},
        rate_operations=("send",),
        rate_retry_after=0.05,
        timeout_seconds=3,
        faults=(
            *({"match": {"user": aad(i)}, "kind": "blocked"} for i in BLOCKED),
            *({"match": {"user": aad(i)}, "kind": "conversation_not_found"} for i in STALE),
        ),
    )
    runner, base_url = await start_on_loopback(build_app(config), shutdown_timeout=0.5)
    yield base_url
    await runner.cleanup()


async def test_300_recipients_with_faults_each_get_exactly_one_message_and_every_other_is_recorded(
    emulator_base: str, storage_connection_string: str, unique_name: str
) -> None:
    tables = AzureTables.from_connection_string(storage_connection_string)
    queues = AzureQueues.from_connection_string(storage_connection_string)
    async with aiohttp.ClientSession() as http:
        try:
            await run_scenario(http, tables, queues, emulator_base, unique_name)
        finally:
            await queues.close()
            await tables.close()


async def run_scenario(
    http: aiohttp.ClientSession, tables: AzureTables, queues: AzureQueues, base: str, name: str
) -> None:
    ledger = TableDeliveryLedger(tables.table(f"{name}deliveries"))
    references = TableReferenceStore(tables.table(f"{name}references"))
    preferences = TablePreferenceStore(tables.table(f"{name}preferences"))
    notifications = TableNotificationStore(tables.table(f"{name}notifications"))
    installs, retries = queues.queue(f"{name}-installs"), queues.queue(f"{name}-retry")
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    await seed(ledger, references, preferences, notifications, base, now)
    connector = BotConnectorClient(http, AnonymousTokens(), OutboundPolicy(["127.0.0.1"]), timeout=0.5)

    def worker(seed_value: int) -> BatchSender:
        return BatchSender(
            ledger=ledger,
            references=references,
            preferences=preferences,
            notifications=notifications,
            connector=connector,
            installs=installs,
            retries=retries,
            policy=RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05, max_retry_after=1.0),
            clock=lambda: datetime.now(UTC),
            sleep=asyncio.sleep,
            rng=random.Random(seed_value),
            service_url_allowed=OutboundPolicy(["127.0.0.1"]).allows,
            concurrency=16,
            handoff_delay=0.0,
        )

    async def drive(sender: BatchSender) -> list[SendBatchResult]:
        results: list[SendBatchResult] = []
        for _ in range(40):
            request = SendBatchInput(notification_id=NOTIFICATION, tenant_id=TENANT, limit=50, now=now)
            result = await sender.send_batch(request)
            results.append(result)
            if result.remaining == 0:
                break
        return results

    # Two workers on the same partition at once (a replayed orchestration, a duplicated activity).
    first, second = await asyncio.gather(drive(worker(1)), drive(worker(2)))
    batches = first + second
    redriven = await drain_retries(worker(3), retries, ledger)
    reconciled = await reconcile_stuck(
        ledger, NOTIFICATION, TENANT, now=datetime.now(UTC), older_than=timedelta(0)
    )
    stats_before_rerun = await stats(http, base)
    rerun = await worker(4).send_batch(
        SendBatchInput(notification_id=NOTIFICATION, tenant_id=TENANT, limit=500, now=now)
    )
    final = await stats(http, base)

    # Exactly one message per deliverable recipient, no duplicates, nothing new on a re-run.
    deliverable = [i for i in range(USERS) if i not in {*BLOCKED, *STALE, *NO_REFERENCE, *OPTED_OUT}]
    received = {cid: entry["count"] for cid, entry in final["conversations"].items()}
    assert final["duplicates"] == []
    assert all(received.get(conversation(i)) == 1 for i in deliverable)
    assert sum(received.values()) == len(deliverable) == 270
    assert final["byNotification"][NOTIFICATION] == {"conversations": 270, "deliveries": 270}
    assert rerun.attempted == 0 and rerun.remaining == 0
    assert final["totals"]["activities"] == stats_before_rerun["totals"]["activities"]
    # The faults really happened.
    assert final["byStatus"].get("429", 0) > 0 and final["byStatus"].get("503", 0) > 0
    assert final["injected"].get("timeout", 0) > 0

    # Every other recipient is recorded with its reason, and the ledger's counts add up.
    counts = await ledger.count_by_status(NOTIFICATION, TENANT)
    assert counts == {
        DeliveryStatus.SENT: 270,
        DeliveryStatus.UNREACHABLE: 10,
        DeliveryStatus.INSTALLING: 15,  # handed to the Graph bootstrap, which settles them
        DeliveryStatus.SUPPRESSED: 5,
    }
    reasons = await reasons_by_status(ledger)
    assert reasons[DeliveryStatus.UNREACHABLE] == Counter({"MessageWritesBlocked": 10})
    assert reasons[DeliveryStatus.INSTALLING] == Counter({"ConversationNotFound": 10, "no_reference": 5})
    assert reasons[DeliveryStatus.SUPPRESSED] == Counter({"opted_out": 5})
    install_requests = await drain(installs)
    assert sorted(m["aadObjectId"] for m in install_requests) == sorted(
        aad(i) for i in (*STALE, *NO_REFERENCE)
    )

    # The batch results agree with the ledger: each recipient settled once, by one worker.
    sent = sum(b.sent for b in batches) + redriven
    assert sent == 270
    assert sum(b.unreachable for b in batches) == 10 and sum(b.stale for b in batches) == 15
    assert sum(b.suppressed for b in batches) == 5
    assert sum(b.throttled for b in batches) > 0 and sum(b.server_errors for b in batches) > 0
    assert reconciled == 0


PACED_USERS = 100
PACE = 0.025  # 40 request starts a second against the emulator's 50 per tenant per second
SLACK = 0.01


class Stamped:
    """The real connector, noting the wall-clock start of every call."""

    def __init__(self, inner: BotConnectorClient) -> None:
        self.inner = inner
        self.starts: list[float] = []

    async def send_activity(
        self, service_url: str, conversation_id: str, activity: Mapping[str, Any]
    ) -> str | None:
        self.starts.append(time.time())
        return await self.inner.send_activity(service_url, conversation_id, activity)

    async def update_activity(
        self, service_url: str, conversation_id: str, activity_id: str, activity: Mapping[str, Any]
    ) -> None:
        raise AssertionError("not used")

    async def delete_activity(self, service_url: str, conversation_id: str, activity_id: str) -> None:
        raise AssertionError("not used")


async def test_paced_batches_spread_their_sends_so_the_tenants_window_never_throttles(
    storage_connection_string: str, unique_name: str
) -> None:
    """Real time, Azurite, and the emulator's sliding window at 50 requests per second per tenant.

    Batches of 50 are paced at 40 per second and driven back to back (each grant starting one pace after
    the previous batch's last send, as the limiter does): no 429, every recipient exactly once, and the
    sends' starts keep the pacer's bound in every one-second window.
    """
    runner, base_url = await start_on_loopback(
        build_app(TeamsEmulatorConfig(tenant_rate=50, timeout_seconds=3)), shutdown_timeout=0.5
    )
    base = base_url
    tables = AzureTables.from_connection_string(storage_connection_string)
    queues = AzureQueues.from_connection_string(storage_connection_string)
    try:
        async with aiohttp.ClientSession() as http:
            await run_paced(http, tables, queues, base, unique_name)
    finally:
        await queues.close()
        await tables.close()
        await runner.cleanup()


async def run_paced(
    http: aiohttp.ClientSession, tables: AzureTables, queues: AzureQueues, base: str, name: str
) -> None:
    ledger = TableDeliveryLedger(tables.table(f"{name}deliveries"))
    references = TableReferenceStore(tables.table(f"{name}references"))
    now = datetime.now(UTC)
    await seed(
        ledger,
        references,
        TablePreferenceStore(tables.table(f"{name}preferences")),
        TableNotificationStore(tables.table(f"{name}notifications")),
        base,
        now,
        users=PACED_USERS,
        opted_out=range(0),
        no_reference=range(0),
    )
    connector = Stamped(BotConnectorClient(http, AnonymousTokens(), OutboundPolicy(["127.0.0.1"]), timeout=3))
    sender = BatchSender(
        ledger=ledger,
        references=references,
        preferences=TablePreferenceStore(tables.table(f"{name}preferences")),
        notifications=TableNotificationStore(tables.table(f"{name}notifications")),
        connector=connector,
        installs=queues.queue(f"{name}-installs"),
        retries=queues.queue(f"{name}-retry"),
        policy=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, max_retry_after=1.0),
        clock=lambda: datetime.now(UTC),
        sleep=asyncio.sleep,
        rng=random.Random(7),
        service_url_allowed=OutboundPolicy(["127.0.0.1"]).allows,
        concurrency=32,
    )

    results: list[SendBatchResult] = []
    not_before = datetime.now(UTC)
    for _ in range(20):
        limit = 50
        pacing = Pacing(
            not_before=not_before,
            pace_seconds=PACE,
            send_by=not_before + timedelta(seconds=(limit - 1) * PACE + 1.0),
            slack_seconds=SLACK,
        )
        result = await sender.send_batch(
            SendBatchInput(
                notification_id=NOTIFICATION, tenant_id=TENANT, limit=limit, now=now, pacing=pacing
            )
        )
        results.append(result)
        if result.last_send_at is not None:
            not_before = result.last_send_at + timedelta(seconds=PACE)
        if result.remaining == 0:
            break
    final = await stats(http, base)

    assert results[-1].remaining == 0
    assert final["byNotification"][NOTIFICATION] == {"conversations": PACED_USERS, "deliveries": PACED_USERS}
    assert final["duplicates"] == [] and final["byStatus"].get("429", 0) == 0
    assert await ledger.count_by_status(NOTIFICATION, TENANT) == {DeliveryStatus.SENT: PACED_USERS}
    assert sum(r.sent for r in results) == sum(r.requests for r in results) == PACED_USERS
    starts = sorted(connector.starts)
    most = max(bisect_right(starts, s + 1.0 - 1e-9) - n for n, s in enumerate(starts))
    assert most <= math.floor((1.0 + SLACK) / PACE) + 1
    first, last = results[0].first_send_at, results[-1].last_send_at
    assert first is not None and last is not None
    assert abs(first.timestamp() - starts[0]) < 0.05 and abs(last.timestamp() - starts[-1]) < 0.05
    # Paced, 100 sends take at least 99 paces: the batches did not burst.
    assert starts[-1] - starts[0] >= (PACED_USERS - 1) * PACE - 1e-3


async def seed(
    ledger: TableDeliveryLedger,
    references: TableReferenceStore,
    preferences: TablePreferenceStore,
    notifications: TableNotificationStore,
    base: str,
    now: datetime,
    *,
    users: int = USERS,
    opted_out: range = OPTED_OUT,
    no_reference: range = NO_REFERENCE,
) -> None:
    request = {
        "notificationId": NOTIFICATION,
        "audience": {"tenants": [TENANT]},
        "message": {"text": "Incident resolved, {{name}}."},
        "category": "incidents",
    }
    await notifications.create(Notification(id=NOTIFICATION, request=request, created_at=now))
    await ledger.add_pending(
        [
            DeliveryRecord(
                notification_id=NOTIFICATION,
                tenant_id=TENANT,
                recipient_key=f"user:{aad(i)}",
                data={"name": f"User {i}"},
                created_at=now,
                updated_at=now,
            )
            for i in range(users)
        ]
    )
    gate = asyncio.Semaphore(16)

    async def reference(index: int) -> None:
        async with gate:
            await references.upsert(
                stored_reference(
                    TENANT,
                    aad(index),
                    conversation_id=conversation(index),
                    service_url=base,
                    bot_id=BOT,
                    user_id=f"29:user-{index}",
                    updated_at=now,
                )
            )

    await asyncio.gather(*(reference(i) for i in range(users) if i not in no_reference))
    for index in opted_out:
        await preferences.put(
            Preferences(tenant_id=TENANT, aad_object_id=aad(index), opted_out_all=True, updated_at=now)
        )


async def drain_retries(sender: BatchSender, retries: Any, ledger: TableDeliveryLedger) -> int:
    """What a ``deliveries-retry`` message leads to: a re-drive run's ``send_batch`` over the due rows
    (the trigger itself never sends; :mod:`proactive.delivery.redrive`). Hand-offs come back as new messages."""
    sent = 0
    for _ in range(30):
        messages = await retries.receive(max_messages=32, visibility_timeout=1)
        if not messages:
            page = await ledger.list(
                NOTIFICATION, TENANT, statuses=[DeliveryStatus.PENDING, DeliveryStatus.SENDING]
            )
            if not page.items:
                return sent
            await asyncio.sleep(0.5)
            continue
        for message in messages:
            await retries.delete(message)
        result = await sender.send_batch(
            SendBatchInput(notification_id=NOTIFICATION, tenant_id=TENANT, limit=500, now=datetime.now(UTC))
        )
        sent += result.sent
    raise AssertionError("the retry queue did not drain")


async def drain(queue: Any) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []
    while messages := await queue.receive(max_messages=32, visibility_timeout=60):
        for message in messages:
            bodies.append(message.body)
            await queue.delete(message)
    return bodies


async def reasons_by_status(ledger: TableDeliveryLedger) -> dict[DeliveryStatus, Counter[str]]:
    found: dict[DeliveryStatus, Counter[str]] = {}
    continuation = None
    while True:
        page = await ledger.list(NOTIFICATION, TENANT, continuation=continuation)
        for row in page.items:
            code = row.value.last_error.code if row.value.last_error else ""
            found.setdefault(row.value.status, Counter())[code] += 1
        continuation = page.continuation
        if continuation is None:
            return found


async def stats(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(base + "_emulator/stats?activities=0") as response:
        body: dict[str, Any] = await response.json()
        return body
