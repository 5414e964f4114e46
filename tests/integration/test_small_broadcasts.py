"""Small broadcasts deliver under Azure's latencies (the send-path issue's first symptom).

Everything a new user runs with ``make run ARGS='--latency azure'``: function_app on the devhost with its
durable state on Azurite, every table and queue request (durable and product) through the latency proxy
(median 8 ms), every orchestrator, entity, activity and timer work item dispatched late (median 50 ms), and
the Teams emulator answering each call after about 150 ms. Before the send-path rewrite a 1-, 3- or 5-user
broadcast never delivered here: its rows were not ready inside their 25 ms slot and were given back for
ever. The deadline below is a hang guard, not a timing target (those are measured in ``bench/``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from devhost.azurite import free_port
from devhost.durable.azurite_store import AzuriteStore
from devhost.emulators.serving import start_on_loopback
from devhost.emulators.teams import build_app
from devhost.emulators.teams_state import TeamsEmulatorConfig
from devhost.host import DevHost
from devhost.latency import DispatchLatency, LatencyProfile, StorageLatency
from devhost.settings import HostSettings
from proactive import composition
from proactive.models import (
    RecipientKind,
)
from tests.support.function_app import load_function_app
from tests.support.references import stored_reference

pytestmark = [pytest.mark.azurite, pytest.mark.slow]

KEY = "small-key"
TENANT = "5a5a5a5a-1111-4111-8111-111111111111"
HANG_GUARD = 60.0  # seconds; a small broadcast takes a few here


@dataclass
class Small:
    host: DevHost
    http: aiohttp.ClientSession
    emulator: str

    async def seed(self, kind: RecipientKind, ids: list[str]) -> None:
        references = composition.services().references
        for recipient in ids:
            conversation = recipient if kind is RecipientKind.CHANNEL else f"a:small-{recipient}"
            await references.upsert(
                stored_reference(
                    TENANT,
                    recipient,
                    kind=kind,
                    conversation_id=conversation,
                    service_url=self.emulator,
                    bot_id="28:bot",
                    team_id="19:small-team@thread.tacv2" if kind is RecipientKind.CHANNEL else None,
                    updated_at=datetime.now(UTC),
                )
            )

    async def broadcast(self, audience: dict[str, Any]) -> tuple[str, float]:
        """POST a broadcast, wait until the emulator holds its messages; (id, seconds to the last one)."""
        nid = "small-" + uuid.uuid4().hex[:10]
        body = {"notificationId": nid, "audience": audience, "message": {"text": "Deploy 42 is live"}}
        started = time.monotonic()
        async with self.http.post(
            f"{self.host.origin}/api/broadcasts", json=body, headers={"x-functions-key": KEY}
        ) as response:
            assert response.status == 202, await response.text()
            location = response.headers["Location"]
        expected = len(next(iter(audience.values())))
        delivered = 0.0
        while time.monotonic() - started < HANG_GUARD:
            async with self.http.get(f"{self.emulator}_emulator/stats") as response:
                reached = (await response.json())["byNotification"].get(nid, {}).get("conversations", 0)
            if reached >= expected and not delivered:
                delivered = time.monotonic() - started
            async with self.http.get(location, headers={"x-functions-key": KEY}) as response:
                if delivered and response.status == 200:
                    return nid, delivered
            await asyncio.sleep(0.1)
        raise AssertionError(f"{nid}: {reached} of {expected} delivered within {HANG_GUARD} s")

    async def counts(self, nid: str) -> dict[str, Any]:
        async with self.http.get(
            f"{self.host.origin}/api/broadcasts/{nid}", headers={"x-functions-key": KEY}
        ) as response:
            return dict((await response.json())["counts"])

    async def deliveries(self, nid: str) -> dict[str, int]:
        async with self.http.get(f"{self.emulator}_emulator/stats") as response:
            stats = await response.json()
        assert stats["duplicates"] == []
        return dict(stats["byNotification"][nid])


@pytest.fixture
async def small(
    monkeypatch: pytest.MonkeyPatch, storage_connection_string: str, unique_name: str
) -> AsyncIterator[Small]:
    profile = LatencyProfile.named("azure", seed=11)
    config = TeamsEmulatorConfig(call_latency_ms=150.0, seed=11)
    runner, base_url = await start_on_loopback(build_app(config), shutdown_timeout=0.5)
    emulator = base_url
    with StorageLatency(storage_connection_string, profile) as storage:
        environ = {
            "AzureWebJobsStorage": storage.connection_string,
            "BOT_AUTH": "anonymous",
            "DEV_OUTBOUND_HOSTS": "127.0.0.1",
            "TENANT_ALLOW_LIST": TENANT,
            "QUEUE_INSTALLS": f"{unique_name}-installs",
            "QUEUE_DELIVERIES_RETRY": f"{unique_name}-retry",
            **{
                f"TABLE_{t.upper()}": f"{unique_name}{t}"
                for t in ("references", "preferences", "notifications", "deliveries", "deadletters")
            },
        }
        module = load_function_app(monkeypatch, environ)
        hub = "Small" + uuid.uuid4().hex[:10]
        host = DevHost(
            module.app,
            HostSettings({"DEVHOST_FUNCTION_KEY": KEY}, {}),
            store=AzuriteStore(storage.connection_string, task_hub=hub),
            port=free_port(),
            latency=DispatchLatency(profile),
        )
        async with aiohttp.ClientSession() as http, host:
            try:
                yield Small(host, http, emulator)
            finally:
                await host.runtime.idle()
                await composition.services().close()
        assert host.runtime.errors == []
    await runner.cleanup()


@pytest.mark.parametrize("users", [1, 2, 3, 5])
async def test_a_small_user_broadcast_delivers_to_everyone_once(small: Small, users: int) -> None:
    ids = [str(uuid.UUID(int=0x700000 + n)) for n in range(users)]
    await small.seed(RecipientKind.USER, ids)

    nid, seconds = await small.broadcast({"users": [{"tenantId": TENANT, "aadObjectId": i} for i in ids]})

    assert await small.deliveries(nid) == {"conversations": users, "deliveries": users}
    counts = await small.counts(nid)
    assert counts["sent"] == users and counts["pending"] == counts["sending"] == 0
    print(f"{users} users delivered in {seconds:.2f} s")  # shown with -s; the bench measures properly


async def test_a_channel_broadcast_delivers_once(small: Small) -> None:
    channel = "19:small-general@thread.tacv2"
    await small.seed(RecipientKind.CHANNEL, [channel])

    nid, _ = await small.broadcast(
        {"channels": [{"tenantId": TENANT, "teamId": "19:small-team@thread.tacv2", "channelId": channel}]}
    )

    assert await small.deliveries(nid) == {"conversations": 1, "deliveries": 1}
    assert (await small.counts(nid))["sent"] == 1
