"""Welcomes during a mass install go through the tenant's limiter, beside a broadcast, each exactly once.

function_app on the devhost with its queue triggers polling Azurite (``TriggerService``), the Durable
runtime running the re-drive and broadcast orchestrations and the tenant's limiter entity, the Teams
emulator enforcing a tenant ceiling of 10 msg/s over HTTP. The product paces at 8 msg/s, so a welcome sent
past the limiter (as the direct replies were) would show as a 429 at the emulator. The install activities
are the realistic payloads of ``tests/payloads/teams``, posted anonymously like the devhost does.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devhost.azurite import free_port
from devhost.emulators.serving import start_on_loopback
from devhost.emulators.teams import build_app, emulator_key
from devhost.emulators.teams_state import TeamsEmulatorConfig
from devhost.host import DevHost
from devhost.host.triggers import TriggerService
from devhost.settings import HostSettings
from proactive import composition
from proactive.bot import welcome_notification_id
from proactive.models import (
    DeliveryStatus,
)
from proactive.orchestration.tenant_broadcast import redrive_instance_id
from tests.support.function_app import load_function_app
from tests.support.references import stored_reference

pytestmark = pytest.mark.azurite

KEY = "welcome-key"
PAYLOADS = Path(__file__).parents[1] / "payloads" / "teams"
TENANT = "9f3c2a41-5b6e-4d7a-8c1f-2e4b6a8d0c13"  # the tenant of the payloads
HOST_JSON = {
    "extensions": {
        "queues": {"maxDequeueCount": 5, "visibilityTimeout": "00:00:00", "messageEncoding": "none"}
    }
}


def user(n: int) -> str:
    return str(uuid.UUID(int=0x5E1C0 + n))


def install_events(emulator_url: str, n: int) -> list[dict[str, Any]]:
    """The two activities Teams sends for one personal install, as user ``n`` in chat ``a:welcome-n``."""
    events = []
    for name in ("personal_install", "personal_bot_added"):
        data = json.loads((PAYLOADS / f"{name}.json").read_text())
        data["serviceUrl"] = emulator_url
        data["from"].update(aadObjectId=user(n), id=f"29:{user(n)}")
        data["conversation"]["id"] = f"a:welcome-{n}"
        events.append(data)
    return events


@dataclass
class Tenant:
    host: DevHost
    http: aiohttp.ClientSession
    emulator_url: str
    emulator: Any

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        async with self.http.post(
            f"{self.host.origin}/api/{path}", json=body, headers={"x-functions-key": KEY}
        ) as response:
            return response.status, await response.json(content_type=None)

    def received(self, conversation: str) -> list[str]:
        stats = self.emulator.stats.to_json()
        found = stats["conversations"].get(conversation)
        return [activity["text"] for activity in found["activities"]] if found else []

    async def until(self, check: Callable[[], Awaitable[bool]], within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await check():
                return
            await asyncio.sleep(0.1)
        raise AssertionError("condition not reached in time")


@pytest.fixture
async def tenant(
    monkeypatch: pytest.MonkeyPatch, storage_connection_string: str, unique_name: str
) -> AsyncIterator[Tenant]:
    emulator_app = build_app(TeamsEmulatorConfig(tenant_rate=10))
    runner, base_url = await start_on_loopback(emulator_app, shutdown_timeout=0.5)
    emulator_url = base_url
    environ = {
        "AzureWebJobsStorage": storage_connection_string,
        "BOT_AUTH": "anonymous",
        "DEV_OUTBOUND_HOSTS": "127.0.0.1",
        "QUEUE_DELIVERIES_RETRY": f"{unique_name}-retry",
        "QUEUE_INSTALLS": f"{unique_name}-installs",
        "SEND_RATE_PER_TENANT": "8",
        "RETRY_HANDOFF_SECONDS": "1",
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
        async with host, aiohttp.ClientSession() as http:
            yield Tenant(host, http, emulator_url, emulator_app[emulator_key()])
            await host.runtime.idle()
    finally:
        await composition.services().close()
        await runner.cleanup()
    assert host.runtime.errors == []


async def seed_reference(tenant: Tenant, n: int) -> None:
    await composition.services().references.upsert(
        stored_reference(
            TENANT,
            user(n),
            conversation_id=f"a:broadcast-{n}",
            service_url=tenant.emulator_url,
            bot_id="28:bot",
            user_id=f"29:{user(n)}",
            updated_at=datetime.now(UTC),
        )
    )


async def test_a_mass_install_beside_a_broadcast_welcomes_everyone_once_paced_by_the_tenants_limiter(
    tenant: Tenant,
) -> None:
    installs, audience = range(0, 24), range(100, 116)
    for n in audience:
        await seed_reference(tenant, n)
    broadcast = {
        "notificationId": "incident-7",
        "audience": {"users": [{"tenantId": TENANT, "aadObjectId": user(n)} for n in audience]},
        "message": {"text": "Incident 7 is resolved"},
    }

    async def install(n: int) -> list[tuple[int, Any]]:
        # Teams sends both events of one install at the same instant.
        return await asyncio.gather(
            *(tenant.post("messages", event) for event in install_events(tenant.emulator_url, n))
        )

    answers = await asyncio.gather(tenant.post("broadcasts", broadcast), *(install(n) for n in installs))
    assert answers[0][0] == 202
    assert all(status == 200 for pair in answers[1:] for status, _ in pair)

    ledger = composition.services().deliveries
    nid = welcome_notification_id(TENANT)

    async def everyone_reached() -> bool:
        welcomes = [await ledger.get(nid, TENANT, f"user:{user(n)}") for n in installs]
        sent = all(row is not None and row.value.status is DeliveryStatus.SENT for row in welcomes)
        return sent and all(len(tenant.received(f"a:broadcast-{n}")) == 1 for n in audience)

    await tenant.until(everyone_reached)
    await tenant.host.runtime.idle()
    # Every install welcomed exactly once (two events each), every recipient of the broadcast reached once.
    welcomes = [tenant.received(f"a:welcome-{n}") for n in installs]
    assert [len(texts) for texts in welcomes] == [1] * len(installs)
    assert all("stop" in texts[0] for texts in welcomes)
    assert [len(tenant.received(f"a:broadcast-{n}")) for n in audience] == [1] * len(audience)
    # Both went through the tenant's limiter: the emulator's 10 msg/s ceiling never answered 429.
    stats = tenant.emulator.stats.to_json(activities=False)
    assert stats["byStatus"].get("429", 0) == 0 and stats["duplicates"] == []
    # All welcomes of the tenant collapsed into runs of one instance id (one at a time).
    runs = [r for r in await tenant.host.runtime.list_instances() if r.instance_id.endswith(".redrive")]
    assert {r.instance_id for r in runs} == {redrive_instance_id(nid, TENANT)}
