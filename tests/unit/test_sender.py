"""``BatchSender`` rule by rule: in-memory tables and queues, the real Teams emulator over HTTP on loopback.

The emulator (``devhost.emulators.teams``) answers every scripted Teams error, 429 with ``Retry-After``,
timeouts and connection resets, so the connector is the real ``BotConnectorClient``; a hand-written
connector appears only where the emulator cannot help (a send Teams accepted whose answer never arrived).
Sleep, clock and jitter are injected: every delay is checked exactly and nothing really waits.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from devhost.emulators.serving import start_on_loopback
from devhost.emulators.teams import build_app
from devhost.emulators.teams_state import TeamsEmulatorConfig
from proactive.adapters.bot_token import AnonymousTokens
from proactive.adapters.connector import BotConnectorClient
from proactive.adapters.memory_queues import MemoryWorkQueue
from proactive.adapters.memory_tables import MemoryEntityTable
from proactive.delivery.batch import PREPARE_AHEAD_SECONDS, BatchSender
from proactive.delivery.contract import Pacing, Reason, RowOutcome, SendBatchInput, SendBatchResult
from proactive.delivery.ledger import claim
from proactive.delivery.ports import BotConnector, RetryRequest
from proactive.delivery.redelivery import reconcile_stuck
from proactive.delivery.retry import RetryPolicy
from proactive.errors import StorageError, TransportFailure
from proactive.models import (
    DeliveryRecord,
    DeliveryStatus,
    Notification,
    NotificationStatus,
    Preferences,
    QuietHours,
    RecipientKind,
)
from proactive.outbound import OutboundPolicy
from proactive.storage.ports import DeliveryLedger, Versioned
from proactive.storage.stores import (
    TableDeliveryLedger,
    TableNotificationStore,
    TablePreferenceStore,
    TableReferenceStore,
)
from tests.support.ids import AadIds
from tests.support.references import stored_reference

TENANT = "11111111-1111-1111-1111-111111111111"
BOT = "28:aaaaaaaa-0000-0000-0000-000000000001"
NOTIFICATION = "deploy-42"
T0 = datetime(2026, 6, 1, 16, 0, tzinfo=UTC)


aad = AadIds(1)


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


class Sleeps:
    """Records every delay; never waits.

    Given a clock, it is virtual time: each sleep moves the clock to the sleeper's wake-up (plus any
    lateness queued in ``late``), so paced sends start at exact moments.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.delays: list[float] = []
        self.clock = clock
        self.late: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.clock is None:
            return
        wake = self.clock.now + timedelta(seconds=seconds + (self.late.pop(0) if self.late else 0.0))
        await asyncio.sleep(0)  # let the other rows run, as a real sleep would
        self.clock.now = max(self.clock.now, wake)


class Half:
    """Jitter source that always draws 0.5."""

    def random(self) -> float:
        return 0.5


@dataclass
class Emulator:
    base: str
    http: aiohttp.ClientSession

    async def faults(self, *rules: Mapping[str, Any]) -> None:
        async with self.http.post(self.base + "_emulator/faults", json=list(rules)) as response:
            assert response.status == 200, await response.text()

    async def stats(self) -> dict[str, Any]:
        async with self.http.get(self.base + "_emulator/stats") as response:
            body: dict[str, Any] = await response.json()
            return body

    async def received(self, conversation_id: str) -> list[dict[str, Any]]:
        conversation = (await self.stats())["conversations"].get(conversation_id)
        return list(conversation["activities"]) if conversation else []


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def emulator(http: aiohttp.ClientSession) -> AsyncIterator[Emulator]:
    app = build_app(TeamsEmulatorConfig(tenant_rate=1000, timeout_seconds=5))
    runner, base_url = await start_on_loopback(app, shutdown_timeout=0.5)
    yield Emulator(base_url, http)
    await runner.cleanup()


@dataclass
class World:
    """Everything a BatchSender is built from, in memory, plus the emulator."""

    emulator: Emulator
    http: aiohttp.ClientSession
    ledger: TableDeliveryLedger = field(
        default_factory=lambda: TableDeliveryLedger(MemoryEntityTable("deliveries"))
    )
    references: TableReferenceStore = field(
        default_factory=lambda: TableReferenceStore(MemoryEntityTable("references"))
    )
    preferences: TablePreferenceStore = field(
        default_factory=lambda: TablePreferenceStore(MemoryEntityTable("preferences"))
    )
    notifications: TableNotificationStore = field(
        default_factory=lambda: TableNotificationStore(MemoryEntityTable("notifications"))
    )
    clock: Clock = field(default_factory=Clock)
    sleeps: Sleeps = field(default_factory=Sleeps)
    outcomes: list[RowOutcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The queues keep the same (injected) time as the sender, so delayed messages surface on cue.
        self.installs = MemoryWorkQueue("installs", clock=lambda: self.clock().timestamp())
        self.retries = MemoryWorkQueue("deliveries-retry", clock=lambda: self.clock().timestamp())

    def connector(self, timeout: float = 5.0) -> BotConnectorClient:
        return BotConnectorClient(
            self.http, AnonymousTokens(), OutboundPolicy(["127.0.0.1"]), timeout=timeout
        )

    def sender(
        self,
        *,
        connector: BotConnector | None = None,
        max_attempts: int = 4,
        concurrency: int = 4,
        ledger: DeliveryLedger | None = None,
        max_retry_after: float = 60.0,
    ) -> BatchSender:
        return BatchSender(
            ledger=ledger or self.ledger,
            references=self.references,
            preferences=self.preferences,
            notifications=self.notifications,
            connector=connector or self.connector(),
            installs=self.installs,
            retries=self.retries,
            policy=RetryPolicy(
                max_attempts=max_attempts, base_delay=0.5, max_delay=8.0, max_retry_after=max_retry_after
            ),
            clock=self.clock,
            sleep=self.sleeps,
            rng=Half(),
            service_url_allowed=OutboundPolicy(["127.0.0.1"]).allows,
            concurrency=concurrency,
            handoff_delay=60.0,
            on_outcome=self.outcomes.append,
        )

    async def notification(
        self,
        text: str = "Deploy done, {{name}}",
        *,
        category: str | None = None,
        status: NotificationStatus | None = None,
    ) -> None:
        request: dict[str, Any] = {
            "notificationId": NOTIFICATION,
            "audience": {"tenants": [TENANT]},
            "message": {"text": text},
        }
        if category:
            request["category"] = category
        notification = Notification(id=NOTIFICATION, request=request, created_at=T0)
        if status is not None:
            notification = notification.model_copy(update={"status": status})
        existing = await self.notifications.get(NOTIFICATION)
        if existing is None:
            await self.notifications.create(notification)
        else:
            await self.notifications.replace(notification, existing.etag)

    async def user(
        self, index: int, *, service_url: str | None = None, active: bool = True, reason: str | None = None
    ) -> str:
        """A user with a reference (conversation ``a:conv-{index}``) and a pending row; returns its key."""
        key = f"user:{aad(index)}"
        await self.references.upsert(
            stored_reference(
                TENANT,
                aad(index),
                conversation_id=f"a:conv-{index}",
                service_url=service_url or self.emulator.base,
                bot_id=BOT,
                user_id=f"29:user-{index}",
                active=active,
                stale_reason=reason,
                updated_at=T0,
            )
        )
        await self.row(key, {"name": f"User {index}"})
        return key

    async def channel(
        self, channel_id: str, *, team_id: str = "19:team@thread.tacv2", reference: bool = True
    ) -> str:
        key = f"channel:{channel_id}"
        if reference:
            await self.references.upsert(
                stored_reference(
                    TENANT,
                    channel_id,
                    kind=RecipientKind.CHANNEL,
                    conversation_id=channel_id,
                    service_url=self.emulator.base,
                    bot_id=BOT,
                    team_id=team_id,
                    updated_at=T0,
                )
            )
        await self.row(key, {"name": "team"})
        return key

    async def row(self, key: str, data: dict[str, Any]) -> None:
        await self.ledger.add_pending(
            [
                DeliveryRecord(
                    notification_id=NOTIFICATION,
                    tenant_id=TENANT,
                    recipient_key=key,
                    data=data,
                    created_at=T0,
                    updated_at=T0,
                )
            ]
        )

    async def record(self, key: str) -> DeliveryRecord:
        found = await self.ledger.get(NOTIFICATION, TENANT, key)
        assert found is not None
        return found.value

    async def send(
        self, sender: BatchSender | None = None, *, limit: int = 50, **extra: Any
    ) -> SendBatchResult:
        request = SendBatchInput(
            notification_id=NOTIFICATION, tenant_id=TENANT, limit=limit, now=self.clock(), **extra
        )
        return await (sender or self.sender()).send_batch(request)


@pytest.fixture
async def world(emulator: Emulator, http: aiohttp.ClientSession) -> World:
    w = World(emulator, http)
    await w.notification()
    return w


def user_rule(index: int, **rule: Any) -> dict[str, Any]:
    return {"match": {"user": aad(index)}, "operations": ["send"], **rule}


# ---- the happy path and exactly-once -----------------------------------------------------------------


async def test_each_pending_recipient_gets_its_personalised_message_once_and_the_row_records_it(
    world: World,
) -> None:
    keys = [await world.user(i) for i in range(3)]

    result = await world.send()

    assert (result.attempted, result.sent, result.requests, result.remaining) == (3, 3, 3, 0)
    for index, key in enumerate(keys):
        record = await world.record(key)
        [activity] = await world.emulator.received(f"a:conv-{index}")
        assert record.status is DeliveryStatus.SENT and record.attempts == 1
        assert record.activity_id == activity["id"] and record.conversation_id == f"a:conv-{index}"
        assert activity["text"] == f"Deploy done, User {index}"
        assert activity["notificationId"] == NOTIFICATION
    assert [o.status for o in world.outcomes] == [DeliveryStatus.SENT] * 3


async def test_running_the_same_batch_again_sends_nothing_new(world: World) -> None:
    for i in range(3):
        await world.user(i)
    await world.send()

    again = await world.send()

    stats = await world.emulator.stats()
    assert again.attempted == 0 and again.sent == 0 and again.requests == 0
    assert stats["totals"]["activities"] == 3 and stats["duplicates"] == []


async def test_the_limit_bounds_a_batch_and_remaining_says_when_there_is_more(world: World) -> None:
    for i in range(5):
        await world.user(i)

    first = await world.send(limit=2)
    second = await world.send(limit=2)
    third = await world.send(limit=2)

    assert (first.sent, second.sent, third.sent) == (2, 2, 1)
    assert first.remaining > 0 and second.remaining > 0 and third.remaining == 0


async def test_two_concurrent_batches_on_one_partition_never_send_twice(world: World) -> None:
    for i in range(12):
        await world.user(i)

    one, two = await asyncio.gather(world.send(), world.send())

    stats = await world.emulator.stats()
    assert one.sent + two.sent == 12
    assert stats["totals"]["activities"] == 12 and stats["duplicates"] == []


async def test_a_cancelled_notification_sends_nothing(world: World) -> None:
    await world.user(0)
    await world.notification(status=NotificationStatus.CANCELLED)

    result = await world.send()

    assert result.halted == "cancelled" and result.attempted == 0
    assert (await world.record("user:" + aad(0))).status is DeliveryStatus.PENDING


# ---- references ------------------------------------------------------------------------------------


async def test_a_user_without_a_reference_is_installing_and_handed_to_installs_without_any_call(
    world: World,
) -> None:
    key = f"user:{aad(7)}"
    await world.row(key, {"name": "x"})

    result = await world.send()

    record = await world.record(key)
    assert result.stale == 1 and result.requests == 0
    assert record.status is DeliveryStatus.INSTALLING and record.last_error is not None
    assert record.last_error.code == Reason.NO_REFERENCE and record.attempts == 0
    assert world.installs.bodies() == [
        {"tenantId": TENANT, "aadObjectId": aad(7), "reason": "no_reference", "notificationId": NOTIFICATION}
    ]


async def test_a_channel_without_a_reference_is_installing_and_its_team_handed_to_installs(
    world: World,
) -> None:
    key = await world.channel("19:gone@thread.tacv2", reference=False)

    result = await world.send()

    record = await world.record(key)
    assert result.stale == 1 and result.requests == 0 and record.status is DeliveryStatus.INSTALLING
    assert record.last_error is not None and record.last_error.code == Reason.NO_REFERENCE
    assert world.installs.bodies() == [
        {
            "tenantId": TENANT,
            "channelId": "19:gone@thread.tacv2",
            "reason": "no_reference",
            "notificationId": NOTIFICATION,
        }
    ]


async def test_a_user_who_blocked_the_bot_is_unreachable_and_never_reinstalled(world: World) -> None:
    key = await world.user(0, active=False, reason="MessageWritesBlocked")

    result = await world.send()

    assert result.unreachable == 1 and (await world.record(key)).status is DeliveryStatus.UNREACHABLE
    assert world.installs.bodies() == [] and result.requests == 0


async def test_a_reference_whose_service_url_is_refused_is_never_used(world: World) -> None:
    key = await world.user(0, service_url="https://evil.example.com/teams/")

    result = await world.send()

    record = await world.record(key)
    assert result.failed == 1 and result.requests == 0
    assert record.status is DeliveryStatus.FAILED and record.last_error is not None
    assert record.last_error.code == Reason.SERVICE_URL_REFUSED
    assert (await world.emulator.stats())["totals"]["requests"] == 0


# ---- preferences -----------------------------------------------------------------------------------


async def prefer(world: World, index: int, **values: Any) -> None:
    await world.preferences.put(
        Preferences(tenant_id=TENANT, aad_object_id=aad(index), updated_at=T0, **values)
    )


async def test_opted_out_users_are_suppressed_by_all_or_by_category_and_others_are_sent(world: World) -> None:
    await world.notification(category="Deployments")
    keys = [await world.user(i) for i in range(3)]
    await prefer(world, 0, opted_out_all=True)
    await prefer(world, 1, opted_out_categories=("deployments",))
    await prefer(world, 2, opted_out_categories=("incidents",))

    result = await world.send()

    records = [await world.record(k) for k in keys]
    assert (result.suppressed, result.sent, result.requests) == (2, 1, 1)
    assert [r.status for r in records] == [
        DeliveryStatus.SUPPRESSED,
        DeliveryStatus.SUPPRESSED,
        DeliveryStatus.SENT,
    ]
    assert [r.last_error.code if r.last_error else None for r in records] == [
        Reason.OPTED_OUT,
        Reason.OPTED_OUT_CATEGORY,
        None,
    ]


async def test_inside_quiet_hours_a_message_is_deferred_to_the_windows_end_then_sent(world: World) -> None:
    key = await world.user(0)
    await prefer(world, 0, quiet_hours=QuietHours(start="11:00", end="13:00"), time_zone="America/New_York")
    # T0 is 12:00 in New York (EDT): inside; the window ends at 13:00 EDT = 17:00Z.

    deferred = await world.send()
    early = await world.send()
    world.clock.now = T0 + timedelta(hours=1)
    later = await world.send()

    assert deferred.deferred == 1 and deferred.next_deferred_at == T0 + timedelta(hours=1)
    assert deferred.remaining == 0 and deferred.requests == 0
    assert early.attempted == 0 and early.next_deferred_at == T0 + timedelta(hours=1)
    assert later.sent == 1
    record = await world.record(key)
    assert record.status is DeliveryStatus.SENT and record.attempts == 1 and record.not_before is None


async def test_quiet_hours_with_an_unknown_time_zone_use_utc_and_the_record_says_so(world: World) -> None:
    key = await world.user(0)
    await prefer(world, 0, quiet_hours=QuietHours(start="15:00", end="17:00"), time_zone="Nowhere/Land")

    result = await world.send()

    record = await world.record(key)
    assert result.deferred == 1 and record.not_before == T0 + timedelta(hours=1)
    assert record.last_error is not None and "UTC assumed" in record.last_error.message


async def test_urgent_messages_ignore_quiet_hours_but_not_opt_outs(world: World) -> None:
    quiet, opted = await world.user(0), await world.user(1)
    await prefer(world, 0, quiet_hours=QuietHours(start="15:00", end="17:00"), time_zone="UTC")
    await prefer(world, 1, opted_out_all=True, quiet_hours=QuietHours(start="15:00", end="17:00"))

    result = await world.send(urgency="urgent")

    assert (await world.record(quiet)).status is DeliveryStatus.SENT
    assert (await world.record(opted)).status is DeliveryStatus.SUPPRESSED
    assert (result.sent, result.suppressed) == (1, 1)


# ---- retries ---------------------------------------------------------------------------------------


async def test_a_429_is_retried_after_its_retry_after_and_counted(world: World) -> None:
    key = await world.user(0)
    await world.emulator.faults(user_rule(0, kind="429", times=1, retry_after=2.5))

    result = await world.send()

    assert world.sleeps.delays == [2.5]  # max(Retry-After, jitter 0.5 * 0.5)
    assert (result.sent, result.throttled, result.max_retry_after, result.requests) == (1, 1, 2.5, 2)
    assert (await world.record(key)).attempts == 2


async def test_412_and_5xx_are_retried_with_full_jitter_backoff(world: World) -> None:
    await world.user(0)
    await world.emulator.faults(user_rule(0, sequence=["503", "412", "502"]))

    result = await world.send()

    assert world.sleeps.delays == [0.25, 0.5, 1.0]  # 0.5 * min(8, 0.5 * 2**n)
    assert (result.sent, result.server_errors, result.throttled) == (1, 2, 0)


async def test_exhausted_retries_hand_the_row_to_the_retry_queue_and_leave_it_pending(world: World) -> None:
    key = await world.user(0)
    await world.emulator.faults(user_rule(0, kind="503"))

    result = await world.send(world.sender(max_attempts=3))
    again = await world.send()

    record = await world.record(key)
    assert (result.retry_queued, result.server_errors, result.requests) == (1, 3, 3)
    assert record.status is DeliveryStatus.PENDING and record.attempts == 3
    assert record.last_error is not None and record.last_error.code == "ServiceUnavailable"
    assert record.not_before == T0 + timedelta(seconds=60)
    assert world.retries.bodies() == [
        {
            "notificationId": NOTIFICATION,
            "tenantId": TENANT,
            "recipientKey": key,
            "operation": "send",
            "reason": "ServiceUnavailable",
            "uncertain": False,
            "attempt": 1,
            "waits": 0,
        }
    ]
    assert record.redrives == 1
    # The row is the queue's now: the orchestration's next batch leaves it alone.
    assert again.attempted == 0 and again.remaining == 0


async def test_a_retry_after_beyond_the_policy_is_not_slept_but_handed_off_for_that_long(
    world: World,
) -> None:
    key = await world.user(0)
    await world.emulator.faults(user_rule(0, kind="429", times=1, retry_after=600))

    result = await world.send(world.sender(max_retry_after=60))

    assert world.sleeps.delays == [] and result.retry_queued == 1 and result.max_retry_after == 600
    assert (await world.record(key)).not_before == T0 + timedelta(seconds=600)


async def test_a_timeout_is_never_retried_in_process_and_is_counted_as_uncertain(world: World) -> None:
    key = await world.user(0)
    await world.emulator.faults(user_rule(0, kind="timeout", times=1))

    result = await world.send(world.sender(connector=world.connector(timeout=0.2)))

    [message] = world.retries.bodies()
    assert (result.uncertain, result.retry_queued, result.requests, result.server_errors) == (1, 1, 1, 1)
    assert world.sleeps.delays == []
    assert message["uncertain"] is True and message["reason"] == "Timeout"
    assert (await world.record(key)).status is DeliveryStatus.PENDING


async def test_a_504_after_a_send_is_handed_off_as_uncertain_not_resent_in_process(world: World) -> None:
    key = await world.user(0)
    await world.emulator.faults(user_rule(0, kind="504", times=1))

    result = await world.send()

    [message] = world.retries.bodies()
    assert (result.uncertain, result.retry_queued, result.requests) == (1, 1, 1)
    assert world.sleeps.delays == []
    assert message["uncertain"] is True and message["reason"] == "Timeout"
    assert (await world.record(key)).status is DeliveryStatus.PENDING


async def test_a_lost_connection_is_uncertain_too(world: World) -> None:
    await world.user(0)
    await world.emulator.faults(user_rule(0, kind="reset", times=1))

    result = await world.send()

    assert result.uncertain == 1 and result.requests == 1
    assert world.retries.bodies()[0]["reason"] == "ConnectionLost"


async def test_a_connection_that_never_opened_is_retried_like_a_503(world: World) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    await world.user(0, service_url=closed)

    result = await world.send(world.sender(max_attempts=3))

    assert world.sleeps.delays == [0.25, 0.5]
    assert (result.retry_queued, result.uncertain, result.requests) == (1, 0, 3)
    assert world.retries.bodies()[0]["reason"] == "ConnectFailed"


# ---- permanent answers -----------------------------------------------------------------------------


async def test_a_blocked_user_is_unreachable_and_its_reference_deactivated(world: World) -> None:
    key = await world.user(0)
    await world.emulator.faults(user_rule(0, kind="blocked"))

    result = await world.send()

    reference = await world.references.get(TENANT, key)
    assert result.unreachable == 1 and result.requests == 1
    assert (await world.record(key)).status is DeliveryStatus.UNREACHABLE
    assert reference is not None and not reference.active and reference.stale_reason == "MessageWritesBlocked"
    assert world.installs.bodies() == []


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("conversation_not_found", "ConversationNotFound"),
        ("not_in_roster", "BotNotInConversationRoster"),
        ("forbidden_operation", "ForbiddenOperationException"),
    ],
)
async def test_a_stale_conversation_deactivates_the_reference_and_asks_for_a_reinstall(
    world: World, kind: str, code: str
) -> None:
    key = await world.user(0)
    await world.emulator.faults(user_rule(0, kind=kind))

    result = await world.send()
    again = await world.send()

    reference = await world.references.get(TENANT, key)
    record = await world.record(key)
    assert result.stale == 1 and record.status is DeliveryStatus.INSTALLING
    assert record.last_error is not None and record.last_error.code == code
    assert reference is not None and not reference.active and reference.stale_reason == code
    assert world.installs.bodies() == [
        {"tenantId": TENANT, "aadObjectId": aad(0), "reason": code, "notificationId": NOTIFICATION}
    ]
    assert again.attempted == 0


async def test_a_stale_channel_asks_to_reinstall_in_its_team(world: World) -> None:
    await world.channel("19:old@thread.tacv2", team_id="19:teamA@thread.tacv2")
    await world.emulator.faults({"match": {"conversation": "19:old@thread.tacv2"}, "kind": "not_in_roster"})

    result = await world.send()

    assert result.stale == 1
    assert world.installs.bodies() == [
        {"tenantId": TENANT, "teamId": "19:teamA@thread.tacv2", "reason": "BotNotInConversationRoster"}
    ]


@pytest.mark.parametrize(
    ("kind", "code"),
    [("bad_argument", "BadArgument"), ("message_too_big", "MessageSizeTooBig"), ("500", "ServiceError")],
)
async def test_rejected_messages_and_500s_fail_without_a_retry(world: World, kind: str, code: str) -> None:
    key = await world.user(0)
    await world.emulator.faults(user_rule(0, kind=kind))

    result = await world.send()

    record = await world.record(key)
    assert (result.failed, result.requests) == (1, 1) and world.sleeps.delays == []
    assert record.status is DeliveryStatus.FAILED and record.last_error is not None
    assert record.last_error.code == code


async def test_a_missing_placeholder_value_fails_the_row_without_a_call(world: World) -> None:
    key = f"user:{aad(0)}"
    await world.user(0)
    found = await world.ledger.get(NOTIFICATION, TENANT, key)
    assert found is not None
    await world.ledger.replace(found.value.model_copy(update={"data": {}}), found.etag)

    result = await world.send()

    record = await world.record(key)
    assert result.failed == 1 and result.requests == 0
    assert record.last_error is not None and record.last_error.code == Reason.MISSING_PLACEHOLDER


async def test_bot_disabled_by_admin_halts_the_tenant_and_leaves_the_rest_pending(world: World) -> None:
    keys = [await world.user(i) for i in range(4)]
    await world.emulator.faults({"operations": ["send"], "kind": "admin_disabled", "times": 1})

    result = await world.send(world.sender(concurrency=1))

    records = [await world.record(k) for k in keys]
    assert result.halted == "BotDisabledByAdmin" and result.failed == 1 and result.requests == 1
    assert records[0].status is DeliveryStatus.FAILED
    assert [r.status for r in records[1:]] == [DeliveryStatus.PENDING] * 3
    assert all(r.attempts == 0 for r in records[1:])
    assert result.remaining >= 1


async def test_a_halt_releases_rows_already_claimed_by_concurrent_sends(world: World) -> None:
    keys = [await world.user(i) for i in range(6)]
    await world.emulator.faults({"operations": ["send"], "kind": "admin_disabled"})

    result = await world.send(world.sender(concurrency=6))

    statuses = [(await world.record(k)).status for k in keys]
    assert result.halted == "BotDisabledByAdmin"
    assert set(statuses) <= {DeliveryStatus.FAILED, DeliveryStatus.PENDING}
    assert statuses.count(DeliveryStatus.FAILED) == result.failed >= 1


# ---- pacing ----------------------------------------------------------------------------------------


class Stamped:
    """The real connector, noting when each call started; ``takes`` moves the clock on during each call."""

    def __init__(self, inner: BotConnectorClient, clock: Clock, takes: timedelta = timedelta(0)) -> None:
        self.inner = inner
        self.clock = clock
        self.takes = takes
        self.starts: list[datetime] = []

    def _start(self) -> None:
        self.starts.append(self.clock())

    async def send_activity(
        self, service_url: str, conversation_id: str, activity: Mapping[str, Any]
    ) -> str | None:
        self._start()
        try:
            return await self.inner.send_activity(service_url, conversation_id, activity)
        finally:
            self.clock.now += self.takes

    async def update_activity(
        self, service_url: str, conversation_id: str, activity_id: str, activity: Mapping[str, Any]
    ) -> None:
        self._start()
        await self.inner.update_activity(service_url, conversation_id, activity_id, activity)

    async def delete_activity(self, service_url: str, conversation_id: str, activity_id: str) -> None:
        self._start()
        await self.inner.delete_activity(service_url, conversation_id, activity_id)


@pytest.fixture
def paced(world: World) -> World:
    """The world on virtual time: sleeping moves its clock."""
    world.sleeps = Sleeps(world.clock)
    return world


def pacing(
    not_before: float = 0.0, send_by: float = 60.0, *, pace: float = 0.25, slack: float = 0.0
) -> Pacing:
    """A grant's pacing, its times in seconds after T0."""
    return Pacing(
        not_before=T0 + timedelta(seconds=not_before),
        pace_seconds=pace,
        send_by=T0 + timedelta(seconds=send_by),
        slack_seconds=slack,
    )


def after(*seconds: float) -> list[datetime]:
    return [T0 + timedelta(seconds=s) for s in seconds]


async def test_a_paced_batch_starts_its_sends_one_pace_apart_from_not_before(paced: World) -> None:
    for i in range(4):
        await paced.user(i)
    connector = Stamped(paced.connector(), paced.clock)

    result = await paced.send(paced.sender(connector=connector), pacing=pacing(not_before=1.0))

    assert sorted(connector.starts) == after(1.0, 1.25, 1.5, 1.75)
    assert (result.sent, result.requests, result.remaining, result.slots_skipped) == (4, 4, 0, 0)
    assert (result.first_send_at, result.last_send_at) == (
        T0 + timedelta(seconds=1),
        T0 + timedelta(seconds=1.75),
    )
    # Through the pacer's gate: the first waits for notBefore, each next one a pace after the previous start.
    assert sorted(paced.sleeps.delays) == [0.25, 0.25, 0.25, 1.0]


async def test_a_batch_started_long_before_its_grant_claims_rows_only_shortly_before_it(paced: World) -> None:
    # Rows claimed are 'sending', and reconciliation re-drives rows 'sending' past its deadline: a batch
    # the orchestration started 30 s early waits until PREPARE_AHEAD_SECONDS before notBefore, and reports
    # its ready time less that wait (the limiter learns dispatch and preparation, not our own wait).
    await paced.user(0)
    connector = Stamped(paced.connector(), paced.clock)

    result = await paced.send(paced.sender(connector=connector), pacing=pacing(not_before=30.0, send_by=90.0))

    assert connector.starts == after(30.0)
    assert paced.sleeps.delays[0] == pytest.approx(30.0 - PREPARE_AHEAD_SECONDS)
    assert result.first_ready_at == T0  # preparation takes no virtual time; the 28 s wait is not counted
    assert result.sent == 1


async def test_in_process_retries_take_slots_of_their_own(paced: World) -> None:
    await paced.user(0)
    await paced.user(1)
    await paced.emulator.faults(user_rule(0, kind="503", times=1))
    connector = Stamped(paced.connector(), paced.clock)

    result = await paced.send(paced.sender(connector=connector), pacing=pacing())

    assert sorted(connector.starts) == after(0.0, 0.25, 0.5)
    assert (result.sent, result.requests, result.server_errors) == (2, 3, 1)
    assert result.last_send_at == T0 + timedelta(seconds=0.5)


async def test_a_row_without_a_slot_is_released_pending_counted_remaining_and_sent_once_by_the_next_batch(
    paced: World,
) -> None:
    keys = [await paced.user(i) for i in range(3)]

    first = await paced.send(limit=3, pacing=pacing(send_by=0.25))  # two slots for three rows
    [released] = [r for r in [await paced.record(k) for k in keys] if r.status is DeliveryStatus.PENDING]
    second = await paced.send(limit=3, pacing=pacing(not_before=1.0, send_by=2.0))

    assert (first.attempted, first.sent, first.requests, first.remaining) == (2, 2, 2, 1)
    assert released.attempts == 0 and released.not_before is None
    assert released.last_error is not None and released.last_error.code == Reason.NO_SLOT == "slot_expired"
    assert (second.sent, second.remaining) == (1, 0)
    assert (await paced.record(released.recipient_key)).attempts == 1
    stats = await paced.emulator.stats()
    assert stats["totals"]["activities"] == 3 and stats["duplicates"] == []
    assert paced.retries.bodies() == []


async def test_rows_not_started_once_the_slots_are_gone_are_left_unclaimed(paced: World) -> None:
    keys = [await paced.user(i) for i in range(3)]

    result = await paced.send(paced.sender(concurrency=1), limit=3, pacing=pacing(send_by=0.0))

    sent, released, untouched = [await paced.record(k) for k in keys]
    assert (result.sent, result.requests, result.remaining) == (1, 1, 2)
    assert sent.status is DeliveryStatus.SENT
    # The row that found no slot was claimed and given back; the one after it was never claimed.
    assert released.status is DeliveryStatus.PENDING and released.last_error is not None
    assert released.last_error.code == Reason.NO_SLOT and released.attempts == 0
    assert untouched.status is DeliveryStatus.PENDING and untouched.last_error is None


async def test_a_retry_without_a_slot_leaves_the_row_pending_with_its_attempt_counted_once(
    paced: World,
) -> None:
    key, other = await paced.user(0), await paced.user(1)
    await paced.emulator.faults(user_rule(0, kind="503", times=1))

    first = await paced.send(limit=2, pacing=pacing())  # two slots: both go to first attempts
    after_first = await paced.record(key)
    second = await paced.send(limit=2)

    assert (first.attempted, first.sent, first.requests, first.server_errors) == (2, 1, 2, 1)
    assert (first.retry_queued, first.remaining) == (0, 1)
    assert after_first.status is DeliveryStatus.PENDING and after_first.attempts == 1
    assert after_first.not_before is None and paced.retries.bodies() == []
    assert after_first.last_error is not None and after_first.last_error.code == Reason.NO_SLOT
    assert "ServiceUnavailable" in after_first.last_error.message
    assert (second.sent, second.remaining) == (1, 0)
    assert (await paced.record(key)).attempts == 2 and (await paced.record(other)).attempts == 1
    assert len(await paced.emulator.received("a:conv-0")) == 1
    assert (await paced.emulator.stats())["duplicates"] == []


async def test_a_row_that_needs_no_request_hands_its_slot_to_a_spare_row(paced: World) -> None:
    keys = [await paced.user(i) for i in range(4)]
    await prefer(paced, 1, opted_out_all=True)

    result = await paced.send(limit=3, pacing=pacing())

    # Three slots: the opted-out row used none, so the fourth row took the third slot.
    assert (result.sent, result.suppressed, result.requests, result.remaining) == (3, 1, 3, 0)
    assert [(await paced.record(k)).status for k in keys] == [
        DeliveryStatus.SENT,
        DeliveryStatus.SUPPRESSED,
        DeliveryStatus.SENT,
        DeliveryStatus.SENT,
    ]


async def test_a_paced_batch_claims_no_more_rows_than_it_has_slots(paced: World) -> None:
    keys = [await paced.user(i) for i in range(6)]

    result = await paced.send(paced.sender(concurrency=6), limit=2, pacing=pacing())

    records = [await paced.record(k) for k in keys]
    # Two slots: two rows claimed and sent; the spare candidates were never claimed (no claim, no release).
    assert (result.sent, result.requests, result.returned, result.remaining) == (2, 2, 0, 4)
    assert [r.status for r in records].count(DeliveryStatus.SENT) == 2
    assert all(
        r.attempts == 0 and r.last_error is None for r in records if r.status is DeliveryStatus.PENDING
    )


async def test_overlapping_paced_batches_lose_no_slot_to_each_others_claims(paced: World) -> None:
    # Pipelined batches of one tenant read the same pending rows; a claim lost to the other batch gives
    # its slot to a spare row, so both batches fill their grants and no row is sent twice.
    for i in range(8):
        await paced.user(i)

    one, two = await asyncio.gather(
        paced.send(limit=4, pacing=pacing(pace=0.25)),
        paced.send(limit=4, pacing=pacing(not_before=1.0, pace=0.25)),
    )

    stats = await paced.emulator.stats()
    assert (one.sent, two.sent) == (4, 4)
    assert stats["totals"]["activities"] == 8 and stats["duplicates"] == []


async def test_rows_given_back_are_counted_as_returned(paced: World) -> None:
    for i in range(3):
        await paced.user(i)

    result = await paced.send(limit=3, pacing=pacing(send_by=0.25))  # two slots for three rows

    assert (result.sent, result.returned, result.remaining) == (2, 1, 1)


async def test_a_late_wake_is_reported_as_a_skipped_slot(paced: World) -> None:
    await paced.user(0)
    await paced.user(1)
    paced.sleeps.late.append(0.375)  # the second row wakes for slot 1 (0.25) at 0.625: past its slack

    result = await paced.send(pacing=pacing(slack=0.125))

    assert (result.sent, result.slots_skipped) == (2, 1)
    assert result.last_send_at == T0 + timedelta(seconds=0.625)  # slot 2 (0.5), still within its slack


async def test_update_and_delete_calls_take_slots_and_a_row_without_one_waits_for_the_next_batch(
    paced: World,
) -> None:
    for i in range(3):
        await paced.user(i)
    await paced.send()
    await paced.notification(text="Rolled back, {{name}}")
    connector = Stamped(paced.connector(), paced.clock)
    sender = paced.sender(connector=connector)

    updated = await paced.send(sender, operation="update", pacing=pacing(1.0, send_by=1.25))
    rest = await paced.send(sender, operation="update", pacing=pacing(2.0))

    assert (updated.sent, updated.remaining, updated.requests) == (2, 1, 2)
    assert (rest.sent, rest.remaining) == (1, 0)
    assert sorted(connector.starts) == after(1.0, 1.25, 2.0)
    assert (await paced.emulator.stats())["totals"]["updates"] == 3


async def test_without_pacing_first_and_last_send_are_the_starts_of_the_first_and_last_requests(
    world: World,
) -> None:
    for i in range(3):
        await world.user(i)
    connector = Stamped(world.connector(), world.clock, takes=timedelta(seconds=1))

    result = await world.send(world.sender(connector=connector, concurrency=1))
    nothing = await world.send()

    assert connector.starts == after(0.0, 1.0, 2.0)
    assert (result.first_send_at, result.last_send_at, result.slots_skipped) == (T0, after(2.0)[0], 0)
    assert (nothing.first_send_at, nothing.last_send_at) == (None, None)


# ---- the duplicate window, reconciliation and re-drives --------------------------------------------


class FailingRecords:
    """A ledger whose writes of ``sent`` rows fail: a crash between Teams accepting and the record."""

    def __init__(self, inner: TableDeliveryLedger) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def replace(self, record: DeliveryRecord, etag: str) -> Versioned[DeliveryRecord]:
        if record.status is DeliveryStatus.SENT:
            raise StorageError("table storage: ServerBusy")
        return await self.inner.replace(record, etag)


async def test_a_send_that_could_not_be_recorded_stays_sending_until_reconciled_then_is_redriven(
    world: World,
) -> None:
    key = await world.user(0)

    crashed = await world.send(world.sender(ledger=FailingRecords(world.ledger)))  # type: ignore[arg-type]
    world.clock.now = T0 + timedelta(minutes=5)
    too_soon = await reconcile_stuck(
        world.ledger, NOTIFICATION, TENANT, now=world.clock(), older_than=timedelta(minutes=15)
    )
    world.clock.now = T0 + timedelta(minutes=20)
    reconciled = await reconcile_stuck(
        world.ledger, NOTIFICATION, TENANT, now=world.clock(), older_than=timedelta(minutes=15)
    )
    redriven = await world.send()

    stats = await world.emulator.stats()
    assert crashed.unrecorded == 1 and crashed.sent == 0
    assert (too_soon, reconciled, redriven.sent) == (0, 1, 1)
    assert (await world.record(key)).status is DeliveryStatus.SENT
    # The documented window: Teams got it twice.
    [duplicate] = stats["duplicates"]
    assert duplicate["conversationId"] == "a:conv-0" and duplicate["count"] == 2


async def test_reconciliation_leaves_settled_and_recently_claimed_rows_alone(world: World) -> None:
    sent, fresh = await world.user(0), await world.user(1)
    await world.send(limit=1)
    await claim(world.ledger, NOTIFICATION, TENANT, fresh, world.clock())

    moved = await reconcile_stuck(
        world.ledger, NOTIFICATION, TENANT, now=world.clock(), older_than=timedelta(minutes=15)
    )

    assert moved == 0
    assert (await world.record(sent)).status is DeliveryStatus.SENT
    assert (await world.record(fresh)).status is DeliveryStatus.SENDING


async def test_a_handed_off_row_is_taken_by_a_later_batch_once_due_and_never_before(world: World) -> None:
    # What the re-drive run does with the row the retry message names: a batch after notBefore takes it.
    key = await world.user(0)
    await world.emulator.faults(user_rule(0, kind="503", times=3))
    await world.send(world.sender(max_attempts=3))
    [message] = world.retries.bodies()
    too_early = await world.send()
    world.clock.now = T0 + timedelta(seconds=60)

    due = await world.send()
    again = await world.send()

    assert RetryRequest.from_json(message).attempt == 1
    assert too_early.attempted == 0 and too_early.remaining == 0
    assert due.sent == 1 and again.attempted == 0
    record = await world.record(key)
    assert record.status is DeliveryStatus.SENT and record.redrives == 1
    assert len(await world.emulator.received("a:conv-0")) == 1


async def test_each_hand_off_counts_in_the_row_and_in_its_retry_message(world: World) -> None:
    key = await world.user(0)
    await world.emulator.faults(user_rule(0, kind="503"))
    await world.send(world.sender(max_attempts=2))
    world.clock.now = T0 + timedelta(seconds=60)

    await world.send(world.sender(max_attempts=2))

    attempts = [RetryRequest.from_json(body).attempt for body in world.retries.bodies()]
    record = await world.record(key)
    assert attempts == [1, 2]
    assert record.status is DeliveryStatus.PENDING and record.redrives == 2 and record.attempts == 4


class AcceptedButUnanswered:
    """Teams processed the send but the answer was lost: the emulator cannot do this one."""

    def __init__(self, inner: BotConnectorClient) -> None:
        self.inner = inner
        self.calls = 0

    async def send_activity(
        self, service_url: str, conversation_id: str, activity: Mapping[str, Any]
    ) -> str | None:
        self.calls += 1
        await self.inner.send_activity(service_url, conversation_id, activity)
        raise TransportFailure(
            "Bot Connector send: connection lost (ServerDisconnectedError)", code="ConnectionLost"
        )

    async def update_activity(self, *args: Any) -> None:
        raise AssertionError("not used")

    async def delete_activity(self, *args: Any) -> None:
        raise AssertionError("not used")


async def test_an_accepted_send_whose_answer_was_lost_is_not_resent_in_process(world: World) -> None:
    key = await world.user(0)
    connector = AcceptedButUnanswered(world.connector())

    result = await world.send(world.sender(connector=connector))

    assert connector.calls == 1 and result.uncertain == 1
    assert len(await world.emulator.received("a:conv-0")) == 1
    assert (await world.record(key)).last_error is not None


# ---- update and delete -----------------------------------------------------------------------------


async def test_update_then_delete_reach_every_sent_message_once_each(world: World) -> None:
    keys = [await world.user(i) for i in range(3)]
    await world.send()
    await world.notification(text="Rolled back, {{name}}")

    updated = await world.send(operation="update")
    repeated = await world.send(operation="update")
    deleted = await world.send(operation="delete")
    after_delete = await world.send(operation="update")

    stats = await world.emulator.stats()
    assert (updated.sent, repeated.attempted, deleted.sent, after_delete.attempted) == (3, 0, 3, 0)
    assert stats["totals"]["updates"] == 3 and stats["totals"]["deletes"] == 3
    [view] = await world.emulator.received("a:conv-1")
    assert view["text"] == "Rolled back, User 1" and view["deleted"] is True
    record = await world.record(keys[1])
    assert record.status is DeliveryStatus.SENT and record.last_operation == "delete"


async def test_deleting_a_message_teams_no_longer_has_is_dropped(world: World) -> None:
    key = await world.user(0)
    await world.send()
    await world.emulator.faults({"operations": ["delete"], "kind": "activity_not_found", "times": 1})

    result = await world.send(operation="delete")

    record = await world.record(key)
    assert result.sent == 1 and result.remaining == 0
    assert record.last_error is not None and record.last_error.code == "ActivityNotFoundInConversation"


async def test_an_update_that_keeps_failing_transiently_stays_remaining_for_the_next_batch(
    world: World,
) -> None:
    key = await world.user(0)
    await world.send()
    await world.emulator.faults({"operations": ["update"], "kind": "503"})

    result = await world.send(world.sender(max_attempts=2), operation="update")

    assert (result.sent, result.retry_queued, result.remaining, result.server_errors) == (0, 0, 1, 2)
    assert (await world.record(key)).last_operation is None


def test_the_activity_input_and_result_travel_as_camel_case_json() -> None:
    wire = {
        "notificationId": NOTIFICATION,
        "tenantId": TENANT,
        "limit": 50,
        "now": "2026-06-01T16:00:00Z",
        "urgency": "urgent",
        "operation": "send",
    }
    request = SendBatchInput.from_json(wire)
    result = SendBatchResult(sent=3, throttled=1, max_retry_after=2.5, next_deferred_at=T0, remaining=0)

    assert request.limit == 50 and request.now == T0 and request.urgency == "urgent"
    assert request.pacing is None
    assert SendBatchResult.from_json(result.to_json()) == result
    assert (
        result.to_json()["maxRetryAfter"] == 2.5
        and result.to_json()["nextDeferredAt"] == "2026-06-01T16:00:00Z"
    )


def test_pacing_and_the_send_times_travel_as_camel_case_json() -> None:
    wire: dict[str, Any] = {
        "notificationId": NOTIFICATION,
        "tenantId": TENANT,
        "limit": 50,
        "now": "2026-06-01T16:00:00Z",
        "pacing": {
            "notBefore": "2026-06-01T16:00:01Z",
            "paceSeconds": 0.02,
            "sendBy": "2026-06-01T16:00:03Z",
            "slackSeconds": 0.005,
        },
    }
    request = SendBatchInput.from_json(wire)
    result = SendBatchResult(
        sent=1, first_send_at=T0, last_send_at=T0 + timedelta(seconds=1), slots_skipped=2
    )

    assert request.pacing == pacing(1.0, 3.0, pace=0.02, slack=0.005)
    assert SendBatchInput.from_json(request.to_json()) == request
    assert {k: result.to_json()[k] for k in ("firstSendAt", "lastSendAt", "slotsSkipped")} == {
        "firstSendAt": "2026-06-01T16:00:00Z",
        "lastSendAt": "2026-06-01T16:00:01Z",
        "slotsSkipped": 2,
    }
    without_slack = {k: v for k, v in wire["pacing"].items() if k != "slackSeconds"}
    assert Pacing.from_json(without_slack).slack_seconds == 0.0


@pytest.mark.parametrize("pace", [0, -0.02, "inf"])
def test_a_pacing_without_a_positive_pace_is_refused(pace: object) -> None:
    with pytest.raises(ValidationError):
        Pacing.from_json(
            {"notBefore": "2026-06-01T16:00:01Z", "paceSeconds": pace, "sendBy": "2026-06-01T16:00:03Z"}
        )
