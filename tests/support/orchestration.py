"""The orchestration harness: the broadcast functions on the devhost Durable runtime with a manual clock.

The broadcast functions (``proactive.functions.durable``) run on the devhost durable runtime, which drives
the real ``azure-functions-durable`` replay engine (history, replay, determinism checks, timers, entities,
sub-orchestrations, continue-as-new) with a :class:`ManualClock` the harness moves from timer to timer.
Tables are the in-memory fake that serialises like Azure Tables. The sender is :class:`FakeSender`, a
stand-in for ``proactive.delivery.batch.BatchSender`` on the ``send_batch`` JSON contract
(claim the next ``limit`` claimable rows, quiet hours defer, ``remaining``/``nextDeferredAt``), so the
orchestration can be pinned without the Bot Connector. The ``harness`` fixture (tests/unit/conftest.py)
yields a running :class:`Harness`; a module overrides ``settings_overrides`` to change settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.durable_functions as df
import azure.functions as func
import pytest

from devhost.durable import (
    DurableRuntime,
    FunctionIndex,
    InstanceGone,
    InstanceNotFound,
    ManualClock,
    MemoryStore,
)
from devhost.durable.store import InstanceRecord
from proactive import composition
from proactive.adapters.memory_tables import MemoryTables
from proactive.broadcast.ports import OrchestrationState
from proactive.broadcast.service import BroadcastService
from proactive.composition import Services
from proactive.delivery.contract import part_of
from proactive.delivery.ledger import claim
from proactive.functions.durable import bp as durable_blueprint
from proactive.models import (
    DeliveryRecord,
    DeliveryStatus,
    NotificationStatus,
)
from proactive.settings import Settings
from tests.support.references import stored_reference

TENANTS = (
    "11111111-1111-4111-8111-111111111111",
    "22222222-2222-4222-8222-222222222222",
    "33333333-3333-4333-8333-333333333333",
)
FORBIDDEN_TENANT = "99999999-9999-4999-8999-999999999999"
START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def _in_part(part: int, parts: int) -> Callable[[DeliveryRecord], bool]:
    """The rows a batch of part ``part`` of ``parts`` may take, as the real sender picks them."""
    return lambda record: parts == 1 or part_of(record.recipient_key, parts) == part


def user_id(tenant_index: int, n: int) -> str:
    return f"{tenant_index:08x}-0000-4000-8000-{n:012x}"


def body(
    *,
    users: Iterable[tuple[str, str]] = (),
    tenants: Iterable[str] = (),
    channels: Iterable[tuple[str, str, str]] = (),
    notification_id: str | None = None,
    text: str = "Deploy finished",
    **extra: Any,
) -> bytes:
    """A POST /api/broadcasts body."""
    audience: dict[str, Any] = {}
    if users:
        audience["users"] = [{"tenantId": t, "aadObjectId": u} for t, u in users]
    if tenants:
        audience["tenants"] = list(tenants)
    if channels:
        audience["channels"] = [{"tenantId": t, "teamId": team, "channelId": c} for t, team, c in channels]
    payload: dict[str, Any] = {"audience": audience, "message": {"text": text}, **extra}
    if notification_id:
        payload["notificationId"] = notification_id
    return json.dumps(payload).encode()


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class FakeSender:
    """``send_batch`` on the JSON contract, over the real ledger (claims with ETags like the real one).

    ``quiet_until`` defers a recipient key (non-urgent sends) until that time, like quiet hours. With a
    ``clock``, a paced batch takes its time: the clock moves to its last slot, and the result says when its
    first and last requests started, as the real sender does. A batch of a cancelled notification is
    ``halted: cancelled``, as the real sender answers. ``during`` runs a test's step inside call number n
    (1-based), before the batch works: how a test acts mid-broadcast without depending on timers (pipelined
    batches may follow each other without one). ``late_return`` makes call number n give its last row back
    (``returned: 1``) only after call n + 1 has counted what remains: the race between pipelined batches
    that a zero ``remaining`` must survive. ``fail_times`` fails the next n calls, ``fail_calls`` the calls
    with these numbers (an attempt of an activity with a retry policy).
    """

    services: Services
    clock: ManualClock | None = None
    quiet_until: dict[str, datetime] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    done_ops: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)
    op_counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (operation, row) -> calls
    fail_times: int = 0
    fail_calls: set[int] = field(default_factory=set)
    request_times: list[float] = field(default_factory=list)  # when each request started (with a clock)
    halt_with: str | None = None
    during: dict[int, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    late_return: int | None = None
    _held: Any = None

    async def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(payload)
        step = self.during.pop(len(self.calls), None)
        if step is not None:
            await step()
        notification = await self.services.notifications.get(payload["notificationId"])
        if notification is not None and notification.value.status is NotificationStatus.CANCELLED:
            return {"halted": "cancelled", "elapsedMs": 1}
        if self.fail_times or len(self.calls) in self.fail_calls:
            self.fail_times = max(0, self.fail_times - 1)
            raise RuntimeError("storage unreachable")
        if self.halt_with:
            return {"attempted": 1, "failed": 1, "remaining": 5, "halted": self.halt_with}
        ledger = self.services.deliveries
        nid, tenant, limit = payload["notificationId"], payload["tenantId"], payload["limit"]
        now, operation = _parse(payload["now"]), payload["operation"]
        result = {"attempted": 0, "sent": 0, "deferred": 0, "throttled": 0, "serverErrors": 0, "elapsedMs": 1}
        mine = _in_part(payload.get("part", 0), payload.get("parts", 1))
        if operation != "send":
            done = self.done_ops.setdefault((nid, tenant, operation), set())
            sent = await self._rows(nid, tenant, [DeliveryStatus.SENT])
            todo = [r for r in sent if r.recipient_key not in done and mine(r)]
            for row in todo[:limit]:
                done.add(row.recipient_key)
                self.op_counts[(operation, row.recipient_key)] += 1
                result["attempted"] += 1
                result["sent"] += 1
            result["remaining"] = max(0, len(todo) - limit)
            return result
        due = await self._due(nid, tenant, now, limit, mine)
        for index, row in enumerate(due):
            claimed = await claim(ledger, nid, tenant, row.recipient_key, now)
            assert claimed is not None
            if len(self.calls) == self.late_return and index == len(due) - 1:
                self._held, result["returned"] = claimed, 1  # given back during the next call
                continue
            quiet = self.quiet_until.get(row.recipient_key)
            if quiet is not None and quiet > now and payload["urgency"] != "urgent":
                update = {"status": DeliveryStatus.DEFERRED, "not_before": quiet}
                result["deferred"] += 1
            else:
                update = {"status": DeliveryStatus.SENT, "activity_id": f"act-{row.recipient_key}"}
                result["attempted"] += 1
                result["sent"] += 1
            await ledger.replace(claimed.value.model_copy(update=update), claimed.etag)
        self._take_time(payload, result)
        # Counting the whole ledger after every batch made large runs quadratic.
        pending, continuation = 0, None
        while pending <= limit:  # like the real sender: no further than the orchestration needs
            page = await ledger.list(
                nid, tenant, statuses=[DeliveryStatus.PENDING], page_size=limit + 1, continuation=continuation
            )
            pending += sum(1 for item in page.items if mine(item.value))
            continuation = page.continuation
            if continuation is None:
                break
        waiting = [
            r.not_before
            for r in await self._rows(nid, tenant, [DeliveryStatus.DEFERRED])
            if r.not_before and mine(r)
        ]
        result["remaining"] = pending + sum(t <= now for t in waiting)
        future = [t for t in waiting if t > now]
        if not result["remaining"] and future:
            result["nextDeferredAt"] = min(future).isoformat()
        if (
            self._held is not None
            and self.late_return is not None
            and len(self.calls) == self.late_return + 1
        ):
            held, self._held = self._held, None
            await ledger.replace(held.value.model_copy(update={"status": DeliveryStatus.PENDING}), held.etag)
        return result

    def _take_time(self, payload: dict[str, Any], result: dict[str, Any]) -> None:
        pacing, requests = payload.get("pacing"), result["attempted"]
        if self.clock is None or pacing is None or not requests:
            return
        first = max(_parse(pacing["notBefore"]), self.clock.now())
        last = first + timedelta(seconds=(requests - 1) * pacing["paceSeconds"])
        self.request_times.extend(first.timestamp() + i * pacing["paceSeconds"] for i in range(requests))
        if last > self.clock.now():
            self.clock.advance(last - self.clock.now())
        result["firstSendAt"], result["lastSendAt"] = first.isoformat(), last.isoformat()

    async def _due(
        self, nid: str, tenant: str, now: datetime, limit: int, mine: Callable[[DeliveryRecord], bool]
    ) -> list[DeliveryRecord]:
        due: list[DeliveryRecord] = []
        continuation = None
        claimable = [DeliveryStatus.PENDING, DeliveryStatus.DEFERRED]
        while len(due) < limit:
            page = await self.services.deliveries.list(
                nid, tenant, statuses=claimable, page_size=limit, continuation=continuation
            )
            due.extend(
                r
                for r in (v.value for v in page.items)
                if mine(r)
                and (r.status is DeliveryStatus.PENDING or (r.not_before is not None and r.not_before <= now))
            )
            continuation = page.continuation
            if continuation is None:
                break
        return due[:limit]

    async def _rows(self, nid: str, tenant: str, statuses: list[DeliveryStatus]) -> list[DeliveryRecord]:
        rows: list[DeliveryRecord] = []
        continuation = None
        while True:
            page = await self.services.deliveries.list(
                nid, tenant, statuses=statuses, continuation=continuation
            )
            rows.extend(v.value for v in page.items)
            continuation = page.continuation
            if continuation is None:
                return rows


class RuntimeOrchestrations:
    """The service's Orchestrations port straight over the durable runtime (no HTTP)."""

    def __init__(self, runtime: DurableRuntime) -> None:
        self.runtime = runtime
        self.started: list[str] = []

    async def start(self, name: str, instance_id: str, payload: dict[str, Any]) -> None:
        self.started.append(instance_id)
        await self.runtime.start_new(name, instance_id, json.dumps(payload))

    async def state(self, instance_id: str) -> OrchestrationState | None:
        record = await self.runtime.get_instance(instance_id)
        if record is None:
            return None
        custom = json.loads(record.custom_status) if record.custom_status else None
        output = json.loads(record.output) if record.output else None
        return OrchestrationState(record.status, custom, output)

    async def raise_event(self, instance_id: str, name: str, data: Any) -> bool:
        try:
            await self.runtime.raise_event(instance_id, name, json.dumps(data))
        except (InstanceNotFound, InstanceGone):
            return False
        return True


class MaxHistory(dict[str, int]):
    """``Stats.history_events_by_instance`` that also keeps each instance's largest replayed history."""

    def __init__(self) -> None:
        super().__init__()
        self.largest: dict[str, int] = {}

    def __setitem__(self, key: str, value: int) -> None:
        super().__setitem__(key, value)
        self.largest[key] = max(self.largest.get(key, 0), value)


@dataclass
class Harness:
    runtime: DurableRuntime
    clock: ManualClock
    services: Services
    sender: FakeSender
    orchestrations: RuntimeOrchestrations
    history: MaxHistory

    @property
    def service(self) -> BroadcastService:
        return self.services.broadcasts(self.orchestrations)

    async def settle(self, within: float = 60.0) -> None:
        """Run until nothing is busy and no timer is due (time does not move)."""
        await self.runtime.idle(within)

    async def run(
        self, instance_id: str, *, until: datetime | None = None, within: float = 120.0
    ) -> InstanceRecord:
        """Move the clock from timer to timer until the instance ends (or the clock would pass ``until``)."""
        deadline = time.monotonic() + within
        while True:
            await self.runtime.idle(within)
            record = await self.runtime.get_instance(instance_id)
            assert record is not None
            if record.is_terminal:
                return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"{instance_id} still {record.status}")
            heap = self.runtime._timers._heap  # the next durable timer: where a test clock should jump
            now = self.clock.now()
            if heap and heap[0][0] > now:
                if until is not None and heap[0][0] > until:
                    return record
                self.clock.advance(heap[0][0] - now)
            else:
                await asyncio.sleep(0.002)

    async def seed_references(self, tenant: str, count: int, *, tenant_index: int = 9) -> list[str]:
        references = self.services.references
        keys = []
        for n in range(count):
            aad = user_id(tenant_index, n)
            await references.upsert(
                stored_reference(
                    tenant,
                    aad,
                    conversation_id=f"a:{aad}",
                    service_url="https://smba.trafficmanager.net/teams/",
                    bot_id="28:bot",
                    conversation_in_tenant=False,
                    updated_at=START,
                )
            )
            keys.append(f"user:{aad}")
        return keys


def make_settings(**overrides: str) -> Settings:
    env = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "BOT_AUTH": "anonymous",
        "TENANT_ALLOW_LIST": ",".join(TENANTS),
        "SEND_RATE_PER_TENANT": "50",
        "BATCH_SIZE": "50",
        "BATCHES_PER_EXECUTION": "5",
        **overrides,
    }
    return Settings.from_env(env)


def make_app() -> df.DFApp:
    app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(durable_blueprint)
    return app


@contextlib.asynccontextmanager
async def running_harness(
    monkeypatch: pytest.MonkeyPatch, settings_overrides: dict[str, str]
) -> AsyncIterator[Harness]:
    """A started runtime over in-memory tables and :class:`FakeSender`; checks it saw no error at the end."""
    services = Services(make_settings(**settings_overrides))
    services.use_stand_ins(tables=MemoryTables())
    clock = ManualClock(START)
    sender = FakeSender(services, clock=clock)
    services.use_stand_ins(send_batch=sender)
    monkeypatch.setattr(composition, "_services", services)
    monkeypatch.setattr(composition, "utc_now", lambda: clock.now())
    runtime = DurableRuntime(FunctionIndex.from_app(make_app()), MemoryStore(), clock=clock)
    history = MaxHistory()
    runtime.stats.history_events_by_instance = history
    async with runtime:
        yield Harness(runtime, clock, services, sender, RuntimeOrchestrations(runtime), history)
    assert runtime.errors == []
    assert runtime.stats.nondeterminism_failures == 0
