"""Per-thread windows end to end: many notifications to one channel at once, the Teams emulator over HTTP
enforcing Teams' per-thread limits (7 per 1 s, 8 per 2 s, ...), the windows and the ledger on Azurite.

An alert storm: twelve broadcasts reach the incident channel in the same instant. Without the windows Teams
answers the eighth request with a 429; with them the extra rows wait (``deferred``, ``thread_busy``) until
the thread has room, and every message arrives once without a single 429.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from devhost.emulators.teams import build_app
from devhost.emulators.teams_state import TeamsEmulatorConfig
from proactive.adapters.bot_token import AnonymousTokens
from proactive.adapters.connector import BotConnectorClient
from proactive.adapters.storage_queues import AzureQueues
from proactive.adapters.table_storage import AzureTables
from proactive.delivery.batch import BatchSender
from proactive.delivery.contract import Reason, SendBatchInput, SendBatchResult
from proactive.delivery.retry import RetryPolicy
from proactive.limiter.threads import THREAD_WINDOWS
from proactive.models import (
    ChannelAccount,
    ConversationAccount,
    ConversationReference,
    DeliveryRecord,
    DeliveryStatus,
    Notification,
    RecipientKind,
    StoredReference,
)
from proactive.outbound import OutboundPolicy
from proactive.storage.stores import (
    TableDeliveryLedger,
    TableNotificationStore,
    TablePreferenceStore,
    TableReferenceStore,
    TableThreadWindows,
)

pytestmark = pytest.mark.azurite

TENANT = "33333333-3333-4333-8333-333333333333"
BOT = "28:aaaaaaaa-0000-0000-0000-000000000003"
CHANNEL = "19:incident@thread.tacv2"
ALERTS = 12


@pytest.fixture
async def emulator_base() -> AsyncIterator[str]:
    server = TestServer(build_app(TeamsEmulatorConfig(tenant_rate=5000)), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/"))
    await server.close()


@pytest.mark.parametrize("windows", [True, False], ids=["windows", "no-windows"])
async def test_an_alert_storm_to_one_channel_waits_for_the_thread_instead_of_meeting_429s(
    emulator_base: str, storage_connection_string: str, unique_name: str, windows: bool
) -> None:
    tables = AzureTables.from_connection_string(storage_connection_string)
    queues = AzureQueues.from_connection_string(storage_connection_string)
    ledger = TableDeliveryLedger(tables.table(f"{unique_name}deliveries"))
    references = TableReferenceStore(tables.table(f"{unique_name}references"))
    notifications = TableNotificationStore(tables.table(f"{unique_name}notifications"))
    now = datetime.now(UTC)
    ids = [f"alert-{n}" for n in range(ALERTS)]
    try:
        async with aiohttp.ClientSession() as http:
            await _seed(ledger, references, notifications, emulator_base, ids, now)
            sender = BatchSender(
                ledger=ledger,
                references=references,
                preferences=TablePreferenceStore(tables.table(f"{unique_name}preferences")),
                notifications=notifications,
                connector=BotConnectorClient(http, AnonymousTokens(), OutboundPolicy(["127.0.0.1"])),
                installs=None,
                retries=queues.queue(f"{unique_name}-retry"),
                policy=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, max_retry_after=2.5),
                clock=lambda: datetime.now(UTC),
                sleep=asyncio.sleep,
                rng=random.Random(7),
                service_url_allowed=OutboundPolicy(["127.0.0.1"]).allows,
                threads=TableThreadWindows(tables.table(f"{unique_name}threads")) if windows else None,
            )

            async def send(notification_id: str) -> SendBatchResult:
                request = SendBatchInput(
                    notification_id=notification_id, tenant_id=TENANT, limit=1, now=datetime.now(UTC)
                )
                return await sender.send_batch(request)

            first = await asyncio.gather(*(send(n) for n in ids))
            if not windows:
                # The storm as Teams sees it: the thread's 2-second window is full after 8 requests.
                assert sum(r.throttled for r in first) >= ALERTS - THREAD_WINDOWS[1].requests
                return
            # The extra rows never reached Teams: they wait for the thread's windows.
            assert sum(r.throttled for r in first) == 0
            # At most a window's worth went (fewer when racing senders lost every try and waited a second).
            assert 1 <= sum(r.sent for r in first) <= THREAD_WINDOWS[0].requests
            waiting = [n for n, r in zip(ids, first, strict=True) if r.deferred]
            assert waiting and len(waiting) + sum(r.sent for r in first) == ALERTS
            for notification_id in waiting:
                row = await ledger.get(notification_id, TENANT, f"channel:{CHANNEL}")
                assert row is not None and row.value.status is DeliveryStatus.DEFERRED
                assert row.value.last_error is not None and row.value.last_error.code == Reason.THREAD_BUSY
            # What the lane does with deferred rows: send them once their time has come.
            for _ in range(40):
                await asyncio.gather(*(send(n) for n in waiting))
                waiting = [n for n in waiting if not await _sent(ledger, n)]
                if not waiting:
                    break
                await asyncio.sleep(0.25)
            assert waiting == []
            async with http.get(emulator_base + "_emulator/stats?activities=0") as response:
                stats = await response.json()
            # Exactly once. (Later rounds start as the windows allow by our clock; Teams counts arrivals, and
            # a request slower than ARRIVAL_MARGIN_SECONDS on a loaded machine may meet a 429 and be retried.)
            assert stats["duplicates"] == []
            assert stats["conversations"][CHANNEL]["count"] == ALERTS
    finally:
        await queues.close()
        await tables.close()


async def _sent(ledger: TableDeliveryLedger, notification_id: str) -> bool:
    row = await ledger.get(notification_id, TENANT, f"channel:{CHANNEL}")
    return row is not None and row.value.status is DeliveryStatus.SENT


async def _seed(
    ledger: TableDeliveryLedger,
    references: TableReferenceStore,
    notifications: TableNotificationStore,
    base: str,
    ids: list[str],
    now: datetime,
) -> None:
    await references.upsert(
        StoredReference(
            tenant_id=TENANT,
            kind=RecipientKind.CHANNEL,
            recipient_id=CHANNEL,
            reference=ConversationReference(
                bot=ChannelAccount(id=BOT),
                conversation=ConversationAccount(id=CHANNEL, tenant_id=TENANT, conversation_type="channel"),
                service_url=base,
            ),
            updated_at=now,
        )
    )
    for notification_id in ids:
        request = {
            "notificationId": notification_id,
            "audience": {"channels": [{"tenantId": TENANT, "teamId": "19:team", "channelId": CHANNEL}]},
            "message": {"text": f"Alert {notification_id}"},
        }
        await notifications.create(Notification(id=notification_id, request=request, created_at=now))
        await ledger.add_pending(
            [
                DeliveryRecord(
                    notification_id=notification_id,
                    tenant_id=TENANT,
                    recipient_key=f"channel:{CHANNEL}",
                    created_at=now,
                    updated_at=now,
                )
            ]
        )
