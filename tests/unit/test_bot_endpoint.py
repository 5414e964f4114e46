"""BotEndpoint statuses that need no Azurite: anonymous mode, unreachable signing keys, storage failures."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proactive.adapters.agents_activity import build_reply
from proactive.adapters.bot_auth import BotAuthenticator, BotAuthSettings
from proactive.adapters.memory_queues import MemoryWorkQueue
from proactive.adapters.memory_tables import MemoryEntityTable
from proactive.bot import ActivityHandler, BotEndpoint
from proactive.bot.endpoint import MAX_BODY_BYTES
from proactive.bot.welcome import Welcomes, welcome_notification_id
from proactive.delivery.ports import RetryRequest
from proactive.errors import StorageError
from proactive.storage.ports import Entity
from proactive.storage.stores import (
    TableDeliveryLedger,
    TableNotificationStore,
    TablePreferenceStore,
    TableReferenceStore,
)
from tests.support.jwt_keys import LocalOpenIdServer

PAYLOADS = Path(__file__).parents[1] / "payloads" / "teams"
APP_ID = "5c1e7a2b-3d4f-4a6b-9c8d-0e1f2a3b4c5d"
NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def body(name: str, **changes: Any) -> bytes:
    data = json.loads((PAYLOADS / f"{name}.json").read_text())
    data.update(changes)
    return json.dumps(data).encode()


class RecordingSender:
    """Stands in for the Bot Connector (the integration tests use the real client and emulator)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Mapping[str, Any]]] = []

    async def send_activity(self, service_url: str, conversation_id: str, activity: Mapping[str, Any]) -> str:
        self.sent.append((service_url, conversation_id, activity))
        return "1"


class BrokenTable(MemoryEntityTable):
    """A table whose writes fail like an unreachable storage account."""

    async def insert(self, entity: Entity) -> str:
        raise StorageError("storage unreachable")

    async def upsert(self, entity: Entity) -> str:
        raise StorageError("storage unreachable")

    async def replace(self, entity: Entity, etag: str) -> str:
        raise StorageError("storage unreachable")


class Welcomed:
    """The welcome path's fakes (tables and queue that serialise like the real ones) and what they hold."""

    def __init__(self) -> None:
        self.notifications = TableNotificationStore(MemoryEntityTable("notifications"))
        self.ledger = TableDeliveryLedger(MemoryEntityTable("deliveries"))
        self.queue = MemoryWorkQueue("deliveries-retry")
        self.welcomes = Welcomes(self.notifications, self.ledger, self.queue, clock=lambda: NOW)

    def queued(self) -> list[RetryRequest]:
        return [RetryRequest.from_json(body) for body in self.queue.bodies()]


def endpoint(
    references: MemoryEntityTable | None = None,
    authenticator: BotAuthenticator | None = None,
    welcomed: Welcomed | None = None,
) -> tuple[BotEndpoint, RecordingSender]:
    sender = RecordingSender()
    handler = ActivityHandler(
        TableReferenceStore(references or MemoryEntityTable("references")),
        TablePreferenceStore(MemoryEntityTable("preferences")),
        sender,
        welcomes=(welcomed or Welcomed()).welcomes,
        tenant_allowed=lambda tenant: True,
        service_url_allowed=lambda url: True,
        clock=lambda: NOW,
        reply_builder=build_reply,
    )
    return BotEndpoint(handler, authenticator), sender


async def test_anonymous_mode_is_announced_once(caplog: pytest.LogCaptureFixture) -> None:
    bot, sender = endpoint()
    with caplog.at_level(logging.WARNING, logger="proactive.bot.endpoint"):
        for _ in range(3):
            answer = await bot.handle(body("personal_message", text="help"), None)
            assert answer.status == 200
    assert [r.getMessage() for r in caplog.records].count(
        "Bot endpoint runs anonymous (BOT_AUTH=anonymous): tokens are not checked"
    ) == 1
    assert len(sender.sent) == 3


@pytest.mark.parametrize("raw", [b"", b"[1, 2]", b"\xff\xfe", b'"text"'])
async def test_bodies_that_are_not_json_objects_are_400(raw: bytes) -> None:
    answer = await endpoint()[0].handle(raw, None)
    assert answer.status == 400 and answer.body["error"]["code"] == "invalid_json"


async def test_a_storage_failure_is_503_and_sends_nothing() -> None:
    bot, sender = endpoint(references=BrokenTable("references"))
    answer = await bot.handle(body("personal_install"), None)
    assert answer.status == 503 and answer.body["error"]["code"] == "storage_unavailable"
    assert sender.sent == []


class ChurningTable(MemoryEntityTable):
    """A table in which, once ``churn`` is set, another writer rewrites each row right after it is read."""

    churn = False

    async def get(self, partition_key: str, row_key: str) -> tuple[Entity, str] | None:
        found = await super().get(partition_key, row_key)
        if self.churn and found is not None:
            await super().upsert(found[0])  # same content, new ETag: the reader's conditional write fails
        return found


async def test_a_reference_that_keeps_changing_is_503_and_the_reinstall_is_not_welcomed_yet() -> None:
    table = ChurningTable("references")
    welcomed = Welcomed()
    bot, sender = endpoint(references=table, welcomed=welcomed)
    await bot.handle(body("personal_install"), None)
    await bot.handle(body("personal_uninstall"), None)
    assert len(welcomed.queued()) == 1

    table.churn = True
    answer = await bot.handle(body("personal_install"), None)
    assert answer.status == 503 and answer.body["error"]["code"] == "storage_unavailable"
    assert len(welcomed.queued()) == 1  # Teams redelivers on 503; the redelivery decides about the welcome

    table.churn = False
    assert (await bot.handle(body("personal_install"), None)).status == 200
    assert len(welcomed.queued()) == 2
    assert sender.sent == []  # welcomes are never direct replies


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_unreachable_signing_keys_are_503_not_401(session: aiohttp.ClientSession) -> None:
    async with LocalOpenIdServer([]) as server:
        server.fail_with = 503
        settings = BotAuthSettings(app_id=APP_ID, openid_metadata_url=server.metadata_url)
        bot, sender = endpoint(authenticator=BotAuthenticator(settings, session))
        # A syntactically valid RS256 header with a kid, so the key lookup is reached.
        header = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0"
        answer = await bot.handle(body("personal_message"), f"Bearer {header}.e30.c2ln")
    assert answer.status == 503 and answer.body["error"]["code"] == "keys_unavailable"
    assert sender.sent == []


async def test_json_nested_too_deeply_is_400_not_a_crash() -> None:
    bot, sender = endpoint()
    for raw in (b"[" * 200_000, b'{"a":' * 100_000):
        answer = await bot.handle(raw, None)
        assert answer.status == 400 and answer.body["error"]["code"] == "invalid_json"
    assert sender.sent == []


async def test_a_body_over_1_mb_is_413_and_never_parsed() -> None:
    bot, sender = endpoint()
    oversized = body("personal_message", text="x" * MAX_BODY_BYTES)
    answer = await bot.handle(oversized, None)
    assert answer.status == 413 and answer.body["error"]["code"] == "body_too_large"
    assert sender.sent == []


async def test_the_token_is_checked_before_the_body_is_parsed(session: aiohttp.ClientSession) -> None:
    async with LocalOpenIdServer([]) as server:
        settings = BotAuthSettings(app_id=APP_ID, openid_metadata_url=server.metadata_url)
        bot, sender = endpoint(authenticator=BotAuthenticator(settings, session))
        for raw in (b"[" * 200_000, b"{not json", body("personal_message")):
            answer = await bot.handle(raw, None)
            assert answer.status == 401 and answer.body["error"]["code"] == "unauthorized"
        assert server.metadata_requests == 0  # no key lookup either: the header alone was enough to refuse
    assert sender.sent == []


async def test_a_welcome_is_stored_as_a_pending_row_of_the_tenants_welcome_notification_then_queued() -> None:
    welcomed = Welcomed()
    bot, sender = endpoint(welcomed=welcomed)
    install = json.loads(body("personal_install"))
    tenant, user = install["conversation"]["tenantId"], install["from"]["aadObjectId"]

    assert (await bot.handle(json.dumps(install).encode(), None)).status == 200

    nid = welcome_notification_id(tenant)
    notification = await welcomed.notifications.get(nid)
    assert notification is not None and "stop" in notification.value.request["message"]["text"]
    row = await welcomed.ledger.get(nid, tenant, f"user:{user}")
    assert row is not None and row.value.status.value == "pending" and row.value.not_before == NOW
    (queued,) = welcomed.queued()
    assert (queued.notification_id, queued.recipient_key, queued.reason) == (nid, f"user:{user}", "welcome")
    assert queued.attempt == 0
    assert sender.sent == []  # the paced run sends it, never the endpoint
