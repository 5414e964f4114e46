"""Issue 14 end to end: users who never talked to the bot get the broadcast they were in, exactly once.

``POST /api/broadcasts`` on the devhost (function_app, the Durable replay engine, Azurite) to 30 users of one
tenant: 5 with a stored reference, 22 with none who exist in the directory, 1 whom Graph does not know, 1 who
blocked the bot, 1 whose Graph install is throttled twice. The sender records the unreferenced ones ``stale``
and puts an ``InstallRequest`` naming the broadcast on ``installs``; the devhost's queue trigger asks the
tenant's ``graph_limiter`` entity through a ``graph_admission`` orchestration, installs through the Graph
emulator over HTTP (which posts Teams' ``installationUpdate`` / ``conversationUpdate`` to ``/api/messages``,
as Teams does), stores the reference, returns the row to ``pending`` and queues its re-drive on
``deliveries-retry``, whose trigger sends it to the Teams emulator.

The proof: the Teams emulator holds exactly one message of this broadcast for each of the 5 + 22 + 1
reachable users and no duplicate; the unknown user is ``failed`` with ``install_failed`` and Graph's code;
the blocked user is ``unreachable`` and was never installed; Graph's 429s were put back and retried.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from devhost.azurite import free_port
from devhost.emulators import graph as graph_emulator
from devhost.emulators import teams as teams_emulator
from devhost.emulators.graph_model import (
    FaultRule,
    GraphEmulatorConfig,
    GroupConfig,
    TeamsAppConfig,
    TenantConfig,
    ThrottleConfig,
    UserConfig,
)
from devhost.emulators.serving import start_on_loopback
from devhost.emulators.teams_state import TeamsEmulatorConfig
from devhost.host import DevHost
from devhost.host.triggers import TriggerService
from devhost.settings import HostSettings
from proactive import composition
from proactive.broadcast.status import ledger_counts
from proactive.install.installs import INSTALL_FAILED
from proactive.models import (
    DeliveryStatus,
)
from tests.support.function_app import load_function_app
from tests.support.ids import AadIds
from tests.support.references import stored_reference

pytestmark = [pytest.mark.azurite, pytest.mark.slow]

KEY = "graph-e2e-key"
TENANT = "9d9d9d9d-0000-4000-8000-000000000009"
MANIFEST = "22222222-3333-4444-8555-666666666666"
BOT = "b0b0b0b0-0000-4000-8000-000000000002"
NID = "graph-bootstrap-1"
REFERENCED, NEW, UNKNOWN, BLOCKED, THROTTLED = range(0, 5), range(5, 27), 27, 28, 29


aad = AadIds(0x0000000000004000_9000_000000000000)


@dataclass
class Run:
    host: DevHost
    http: aiohttp.ClientSession
    teams: str
    graph: str
    graph_app: web.Application

    async def call(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        response = await self.http.request(
            method, f"{self.host.origin}/api/{path}", headers={"x-functions-key": KEY}, **kwargs
        )
        await response.read()
        return response

    async def teams_stats(self) -> dict[str, Any]:
        async with self.http.get(f"{self.teams}_emulator/stats?activities=0") as response:
            return dict(await response.json())


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    return await start_on_loopback(app, shutdown_timeout=0.5)


@dataclass
class Setup:
    """What a scenario changes: the directory, Graph faults, Teams faults, the Graph rate on both sides."""

    users: list[UserConfig]
    groups: list[GroupConfig] = field(default_factory=list)
    graph_faults: list[FaultRule] = field(default_factory=list)
    teams_faults: tuple[dict[str, Any], ...] = ()
    graph_rate: float = 30.0
    emulator_rate: float | None = None  # the emulator's per-tenant limits; graph_rate when None


@asynccontextmanager
async def running(
    monkeypatch: pytest.MonkeyPatch, storage: str, name: str, setup: Setup
) -> AsyncIterator[Run]:
    port = free_port()
    teams_runner, teams = await _serve(
        teams_emulator.build_app(TeamsEmulatorConfig(seed=3, faults=setup.teams_faults))
    )
    app = TeamsAppConfig(id="catalog-notifier", external_id=MANIFEST, display_name="Notifier", bot_id=BOT)
    rate = setup.graph_rate
    limit = setup.emulator_rate or rate
    graph_config = GraphEmulatorConfig(
        tenants=[TenantConfig(id=TENANT, users=setup.users, groups=setup.groups, apps=[app])],
        messaging_endpoint=f"http://127.0.0.1:{port}/api/messages",
        teams_service_url=teams,
        faults=setup.graph_faults,
        throttle=ThrottleConfig(install_per_tenant=limit, read_per_tenant=limit),
    )
    graph_app = graph_emulator.build_app(graph_config)
    graph_runner, graph = await _serve(graph_app)
    environ = {
        "AzureWebJobsStorage": storage,
        "BOT_AUTH": "anonymous",
        "DEV_OUTBOUND_HOSTS": "127.0.0.1",
        "TENANT_ALLOW_LIST": TENANT,
        "TEAMS_APP_ID": MANIFEST,
        "GRAPH_BASE_URL": f"{graph}v1.0",
        "AUTHORITY_HOST": graph,
        "TEAMS_SERVICE_URL": teams,
        "GRAPH_RATE_PER_TENANT": str(rate),
        "QUEUE_INSTALLS": f"{name}-installs",
        "QUEUE_DELIVERIES_RETRY": f"{name}-retry",
        **{
            f"TABLE_{t.upper()}": f"{name}{t}"
            for t in ("references", "preferences", "notifications", "deliveries", "deadletters")
        },
    }
    module = load_function_app(monkeypatch, environ)
    host_json = {
        "extensions": {
            "queues": {"maxDequeueCount": 5, "visibilityTimeout": "00:00:01", "messageEncoding": "none"}
        }
    }
    settings = HostSettings({**environ, "DEVHOST_FUNCTION_KEY": KEY}, host_json)
    host = DevHost(module.app, settings, port=port)
    host.triggers = TriggerService(host, settings, poll_interval=0.1)
    try:
        async with aiohttp.ClientSession() as http, host:
            yield Run(host, http, teams, graph, graph_app)
            await host.runtime.idle()
    finally:
        await composition.services().close()
        await graph_runner.cleanup()
        await teams_runner.cleanup()
    assert host.runtime.errors == []


@pytest.fixture
async def run(
    monkeypatch: pytest.MonkeyPatch, storage_connection_string: str, unique_name: str
) -> AsyncIterator[Run]:
    users = [UserConfig(id=aad(n), display_name=f"User {n}") for n in range(30) if n != UNKNOWN]
    faults = [FaultRule(operation="installUser", statuses=[429, 429], retry_after=1.0)]
    setup = Setup(users=users, graph_faults=faults)
    async with running(monkeypatch, storage_connection_string, unique_name, setup) as started:
        yield started


async def seed(run: Run) -> None:
    references = composition.services().references
    now = datetime.now(UTC)
    for n in (*REFERENCED, BLOCKED):
        await references.upsert(
            stored_reference(
                TENANT,
                aad(n),
                conversation_id=f"a:known-{n}",
                service_url=run.teams,
                bot_id=f"28:{BOT}",
                user_id=f"29:{n}",
                active=n != BLOCKED,
                stale_reason="MessageWritesBlocked" if n == BLOCKED else None,
                updated_at=now,
            )
        )


async def settled(run: Run, within: float = 120.0, nid: str = NID) -> dict[str, int]:
    """Wait until no row is pending, sending or installing (installs and re-drives done)."""
    services = composition.services()
    deadline = time.monotonic() + within
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = await ledger_counts(services.deliveries, nid, [TENANT])
        if counts["total"] and not (counts["pending"] or counts["sending"] or counts["installing"]):
            return counts
        await asyncio.sleep(0.2)
    raise AssertionError(f"rows still open: {counts}")


async def test_users_without_a_reference_are_installed_and_sent_the_broadcast_exactly_once(run: Run) -> None:
    await seed(run)
    body = {
        "notificationId": NID,
        "audience": {"users": [{"tenantId": TENANT, "aadObjectId": aad(n)} for n in range(30)]},
        "message": {"text": "Incident 14: all hands."},
    }
    started = time.monotonic()
    response = await run.call("POST", "broadcasts", json=body)
    assert response.status == 202, await response.text()

    counts = await settled(run)
    elapsed = time.monotonic() - started
    await run.host.runtime.idle()

    stats = await run.teams_stats()
    reached = stats["byNotification"][NID]
    assert stats["duplicates"] == []
    assert reached["conversations"] == reached["deliveries"] == len(REFERENCED) + len(NEW) + 1
    assert counts["sent"] == len(REFERENCED) + len(NEW) + 1
    assert counts["unreachable"] == 1 and counts["failed"] == 1 and counts["total"] == 30

    deliveries = composition.services().deliveries
    unknown = await deliveries.get(NID, TENANT, f"user:{aad(UNKNOWN)}")
    assert unknown is not None and unknown.value.status is DeliveryStatus.FAILED
    assert unknown.value.last_error is not None and unknown.value.last_error.code == INSTALL_FAILED
    assert "Request_ResourceNotFound" in unknown.value.last_error.message
    blocked = await deliveries.get(NID, TENANT, f"user:{aad(BLOCKED)}")
    assert blocked is not None and blocked.value.status is DeliveryStatus.UNREACHABLE

    # Graph: one install per new user (the blocked one never), the two injected 429s were retried.
    graph_stats = run.graph_app[graph_emulator.SERVICE_KEY].stats.to_json()
    assert graph_stats["installs"] == {TENANT: len(NEW) + 1}
    # Every new user's reference is stored and active (the installer's, or Teams' captured one).
    references = composition.services().references
    for n in (*NEW, THROTTLED):
        stored = await references.get(TENANT, f"user:{aad(n)}")
        # Teams' installationUpdate / conversationUpdate (posted by the Graph emulator) confirmed it.
        assert stored is not None and stored.active and stored.confirmed_at is not None
        assert stored.reference.conversation.id == f"19:{aad(n)}_{BOT}@unq.gbl.spaces"
    assert graph_stats["throttled"] == 2  # both put back after their Retry-After, none lost
    print(
        f"\nGraph bootstrap: 23 installs and 28 deliveries in {elapsed:.1f}s; Graph {graph_stats['requests']}"
    )


async def broadcast(run: Run, nid: str, audience: dict[str, Any]) -> None:
    body = {"notificationId": nid, "audience": audience, "message": {"text": f"{nid}: please read."}}
    response = await run.call("POST", "broadcasts", json=body)
    assert response.status == 202, await response.text()


async def test_a_tenant_of_200_users_who_never_talked_to_the_bot_is_installed_and_reached_once(
    monkeypatch: pytest.MonkeyPatch, storage_connection_string: str, unique_name: str
) -> None:
    users = [UserConfig(id=aad(n), display_name=f"User {n}") for n in range(200)]
    users.append(UserConfig(id="guest-0", display_name="Guest", user_type="Guest"))
    setup = Setup(users=users, graph_rate=60.0)
    nid = "whole-tenant-200"
    async with running(monkeypatch, storage_connection_string, unique_name, setup) as run:
        service = run.graph_app[graph_emulator.SERVICE_KEY]
        samples: list[tuple[float, int]] = []

        async def sample_installs() -> None:
            while True:
                samples.append((time.monotonic(), service.stats.installs.get(TENANT, 0)))
                await asyncio.sleep(0.1)

        statuses: list[dict[str, int]] = []

        async def sample_status() -> None:
            while True:
                response = await run.call("GET", f"broadcasts/{nid}")
                if response.status in (200, 202):
                    statuses.append((await response.json())["counts"])
                await asyncio.sleep(0.3)

        sampler = asyncio.ensure_future(sample_installs())
        started = time.monotonic()
        await broadcast(run, nid, {"tenants": [TENANT], "includeUninstalled": True})
        status_sampler = asyncio.ensure_future(sample_status())
        counts = await settled(run, within=240.0, nid=nid)
        elapsed = time.monotonic() - started
        sampler.cancel()
        status_sampler.cancel()
        # While users are installed, the status counts them as installing, and every count adds up.
        assert max(c["installing"] for c in statuses) > 0
        assert all(c["total"] == sum(v for k, v in c.items() if k != "total") for c in statuses)
        # The install phase's own rate: from the 20th to the 180th install (ramp-up and tail left out).
        t20 = next(t for t, n in samples if n >= 20)
        t180 = next(t for t, n in samples if n >= 180)
        install_rate = 160 / (t180 - t20)
        await run.host.runtime.idle()

        stats = await run.teams_stats()
        reached = stats["byNotification"][nid]
        assert stats["duplicates"] == []
        assert reached["conversations"] == reached["deliveries"] == 200
        assert counts["sent"] == counts["total"] == 200  # the guest is not in the audience
        graph_stats = run.graph_app[graph_emulator.SERVICE_KEY].stats.to_json()
        assert graph_stats["installs"] == {TENANT: 200}
        calls = sum(sum(by.values()) for by in graph_stats["requests"].values())
        throttled = graph_stats["throttled"]
        assert throttled * 1000 <= 5 * calls, f"{throttled} Graph 429s in {calls} calls"
        references = composition.services().references
        stored = [await references.get(TENANT, f"user:{aad(n)}") for n in range(200)]
        assert all(ref is not None and ref.active for ref in stored)
        print(
            f"\nWhole tenant: 200 installs and deliveries in {elapsed:.1f}s; installs {install_rate:.1f}/s "
            f"(budget {setup.graph_rate:.0f}/s: one Graph request per install once Teams' event brings "
            "the reference), "
            f"{calls} Graph calls, {throttled} 429s"
        )


async def test_a_group_audience_reaches_transitive_members_once_and_leaves_guests_out(
    monkeypatch: pytest.MonkeyPatch, storage_connection_string: str, unique_name: str
) -> None:
    users = [UserConfig(id=aad(n), display_name=f"User {n}") for n in range(12)]
    users.append(UserConfig(id=aad(99), display_name="Guest", user_type="Guest"))
    ops, nested = "0aaaaaaa-0000-4000-8000-00000000000a", "0bbbbbbb-0000-4000-8000-00000000000b"
    groups = [
        GroupConfig(id=ops, members=[aad(n) for n in range(0, 6)] + [nested, aad(99)]),
        GroupConfig(id=nested, members=[aad(n) for n in range(4, 10)] + [ops]),  # overlap and a cycle
    ]
    setup = Setup(users=users, groups=groups)
    nid = "group-ops"
    async with running(monkeypatch, storage_connection_string, unique_name, setup) as run:
        await seed_reference(run, 0)  # one member already has a reference
        await broadcast(run, nid, {"groups": [{"tenantId": TENANT, "groupId": ops}]})
        counts = await settled(run, nid=nid)
        await run.host.runtime.idle()

        stats = await run.teams_stats()
        assert stats["duplicates"] == []
        assert stats["byNotification"][nid]["deliveries"] == 10 == counts["sent"] == counts["total"]
        graph_stats = run.graph_app[graph_emulator.SERVICE_KEY].stats.to_json()
        assert graph_stats["installs"] == {TENANT: 9}  # everyone but the one with a reference
        rows = await composition.services().deliveries.list(nid, TENANT)
        assert f"user:{aad(99)}" not in {r.value.recipient_key for r in rows.items}


async def test_a_stale_reference_is_healed_by_a_reinstall_and_retried_once(
    monkeypatch: pytest.MonkeyPatch, storage_connection_string: str, unique_name: str
) -> None:
    users = [UserConfig(id=aad(n), display_name=f"User {n}") for n in range(3)]
    lost = {"match": {"conversation": "a:known-1"}, "operations": ["send"], "kind": "not_in_roster"}
    setup = Setup(users=users, teams_faults=(lost,))
    nid = "healed"
    async with running(monkeypatch, storage_connection_string, unique_name, setup) as run:
        for n in range(3):
            await seed_reference(run, n)
        await broadcast(run, nid, {"users": [{"tenantId": TENANT, "aadObjectId": aad(n)} for n in range(3)]})
        counts = await settled(run, nid=nid)
        await run.host.runtime.idle()

        stats = await run.teams_stats()
        assert stats["duplicates"] == []
        assert counts["sent"] == 3 == stats["byNotification"][nid]["conversations"]
        by_conversation = Counter(
            cid for cid, entry in stats["conversations"].items() for _ in range(entry["count"])
        )
        assert by_conversation["a:known-1"] == 0  # refused there, delivered in the reinstalled chat
        healed = await composition.services().deliveries.get(nid, TENANT, f"user:{aad(1)}")
        assert healed is not None and healed.value.last_operation == "reinstalled"
        assert healed.value.conversation_id == f"19:{aad(1)}_{BOT}@unq.gbl.spaces"
        graph_stats = run.graph_app[graph_emulator.SERVICE_KEY].stats.to_json()
        assert graph_stats["installs"] == {TENANT: 1}


async def seed_reference(run: Run, n: int) -> None:
    await composition.services().references.upsert(
        stored_reference(
            TENANT,
            aad(n),
            conversation_id=f"a:known-{n}",
            service_url=run.teams,
            bot_id=f"28:{BOT}",
            user_id=f"29:{n}",
            updated_at=datetime.now(UTC),
        )
    )


async def test_an_install_that_keeps_failing_is_dead_lettered_from_the_poison_queue(
    monkeypatch: pytest.MonkeyPatch, storage_connection_string: str, unique_name: str
) -> None:
    users = [UserConfig(id=aad(n), display_name=f"User {n}") for n in range(2)]
    # (A failing chat lookup after a successful install heals by itself: Teams' event brings the reference.)
    broken = FaultRule(operation="installUser", status=503, rate=1.0)
    setup = Setup(users=users, graph_faults=[broken])
    nid = "poisoned"
    async with running(monkeypatch, storage_connection_string, unique_name, setup) as run:
        await seed_reference(run, 0)
        await broadcast(run, nid, {"users": [{"tenantId": TENANT, "aadObjectId": aad(n)} for n in range(2)]})
        # Three 503s open the Graph limiter's breaker; its probes (5 s, then 10 s later) are the 4th and 5th.
        counts = await settled(run, within=90.0, nid=nid)
        await run.host.runtime.idle()

        assert counts["sent"] == 1 and counts["dead_lettered"] == 1 and counts["total"] == 2
        row = await composition.services().deliveries.get(nid, TENANT, f"user:{aad(1)}")
        assert row is not None and row.value.last_error is not None
        assert row.value.last_error.code == INSTALL_FAILED
        day = datetime.now(UTC).strftime("%Y%m%d")
        letters = (await composition.services().dead_letters.list_day(day)).items
        assert [(d.id, d.source_queue) for d in letters] == [
            (f"install:{TENANT}:{aad(1)}", f"{unique_name}-installs")
        ]
        calls = run.graph_app[graph_emulator.SERVICE_KEY].stats.to_json()["requests"]
        assert calls["POST /users/{user}/teamwork/installedApps"] == {"503": 5}  # maxDequeueCount


async def test_graph_429s_from_a_lower_real_limit_lose_no_install(
    monkeypatch: pytest.MonkeyPatch, storage_connection_string: str, unique_name: str
) -> None:
    users = [UserConfig(id=aad(n), display_name=f"User {n}") for n in range(60)]
    # The app believes 60 requests/s; the tenant's real Graph limit is 10: the limiter must learn it.
    setup = Setup(users=users, graph_rate=60.0, emulator_rate=10.0)
    nid = "throttled-tenant"
    async with running(monkeypatch, storage_connection_string, unique_name, setup) as run:
        await broadcast(run, nid, {"users": [{"tenantId": TENANT, "aadObjectId": aad(n)} for n in range(60)]})
        counts = await settled(run, within=240.0, nid=nid)
        await run.host.runtime.idle()

        stats = await run.teams_stats()
        assert stats["duplicates"] == []
        assert counts["sent"] == counts["total"] == 60 == stats["byNotification"][nid]["conversations"]
        graph_stats = run.graph_app[graph_emulator.SERVICE_KEY].stats.to_json()
        assert graph_stats["installs"] == {TENANT: 60}
        assert graph_stats["throttled"] > 0  # the real limit was hit, and every install still happened
        print(f"\nThrottled tenant: 60 installs, {graph_stats['throttled']} Graph 429s")
