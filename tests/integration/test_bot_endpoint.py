"""``POST /api/messages`` end to end: the devhost serves function_app.py, references land in Azurite, replies
reach the Teams emulator, and Bot Framework JWTs are checked against a local OpenID server.

Welcomes are not replies: the endpoint stores them and queues them on ``deliveries-retry`` (no queue trigger
runs here, so they stay queued); their paced delivery is pinned in ``test_welcomes.py``.

Each test gets its own tables, its own emulator and its own DevHost on free 127.0.0.1 ports. Activities are
the realistic payloads in ``tests/payloads/teams`` with ``serviceUrl`` pointed at the emulator (allowed by
``DEV_OUTBOUND_HOSTS=127.0.0.1``, as under the devhost).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import logging
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from devhost.azurite import free_port
from devhost.emulators.serving import start_on_loopback
from devhost.emulators.teams import build_app
from devhost.emulators.teams_state import TeamsEmulatorConfig
from devhost.host import DevHost
from devhost.settings import HostSettings
from proactive import composition
from proactive.bot.welcome import welcome_notification_id
from proactive.delivery.ports import RetryRequest
from proactive.models import ConversationReference, DeliveryStatus, RecipientKind, StoredReference
from tests.support.jwt_keys import (
    LocalOpenIdServer,
    SigningKey,
    bot_claims,
    make_signing_key,
    sign_token,
    tamper_payload,
)

pytestmark = pytest.mark.azurite

PAYLOADS = Path(__file__).parents[1] / "payloads" / "teams"
TENANT = "9f3c2a41-5b6e-4d7a-8c1f-2e4b6a8d0c13"
OTHER_TENANT = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"
APP_ID = "5c1e7a2b-3d4f-4a6b-9c8d-0e1f2a3b4c5d"
USER = "0d2b5f7e-8a9c-4b1d-a3e5-f7091b2c3d4e"
PERSONAL = "a:1HxqZvB9mS0rJpQwE_dXkT7uY3nL5oC8gF2aKbVcMeWzN4iPtRy6sAhDlG-jUf"
TEAM = "19:a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6@thread.tacv2"
CHANNEL = "19:f0e1d2c3b4a5968778695a4b3c2d1e0f@thread.tacv2"
CHAT = "19:meeting_Zjk4NDQ5YzQtY2U2Ni00YmZmLWJiMzktNDQ4ZTI4YjM1ZjQy@thread.v2"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / f"{name}.json").read_text())
    return data


@pytest.fixture(scope="module")
def function_app() -> Iterator[ModuleType]:
    """function_app.py imported once, as the Functions host would; each test configures its own services."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
        patch.setenv("BOT_AUTH", "anonymous")
        patch.delenv("MicrosoftAppId", raising=False)
        sys.modules.pop("function_app", None)
        module = importlib.import_module("function_app")
    yield module
    sys.modules.pop("function_app", None)


@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return make_signing_key("teams-key")


@dataclass
class Bot:
    """A running endpoint with its emulator, stores and an HTTP client."""

    host: DevHost
    emulator_url: str
    http: aiohttp.ClientSession
    services: composition.Services

    @property
    def url(self) -> str:
        return f"{self.host.origin}/api/messages"

    def activity(self, name: str, **changes: Any) -> dict[str, Any]:
        data = load(name)
        data["serviceUrl"] = self.emulator_url
        data.update(changes)
        return data

    async def post(self, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
        async with self.http.post(self.url, data=raw, headers=headers) as response:
            return response.status, await response.json(content_type=None)

    async def received(self, conversation_id: str) -> list[str]:
        """Texts the emulator accepted in a conversation."""
        async with self.http.get(self.emulator_url + "_emulator/stats") as response:
            stats = await response.json()
        conversation = stats["conversations"].get(conversation_id)
        return [activity["text"] for activity in conversation["activities"]] if conversation else []

    async def reference(self, key: str, tenant: str = TENANT) -> StoredReference | None:
        return await self.services.references.get(tenant, key)

    async def stored_count(self, tenant: str = TENANT) -> int:
        page = await self.services.references.list_tenant(tenant, active_only=False)
        return len(page.items)

    async def queued_welcomes(self) -> list[RetryRequest]:
        """The welcomes waiting on ``deliveries-retry`` (taken off it: call once per test)."""
        queue = self.services.queues.queue(self.services.settings.queues.deliveries_retry)
        messages = await queue.receive(max_messages=32, visibility_timeout=300)
        return [RetryRequest.from_json(message.body) for message in messages]

    async def welcome_row(self, user: str = USER, tenant: str = TENANT) -> DeliveryStatus | None:
        found = await self.services.deliveries.get(welcome_notification_id(tenant), tenant, f"user:{user}")
        return found.value.status if found is not None else None


StartBot = Callable[..., Awaitable[Bot]]


@pytest.fixture
async def start_bot(
    function_app: ModuleType, storage_connection_string: str, unique_name: str
) -> AsyncIterator[StartBot]:
    runners: list[web.AppRunner] = []
    hosts: list[DevHost] = []
    opened: list[composition.Services] = []
    http = aiohttp.ClientSession()

    async def start(emulator: TeamsEmulatorConfig | None = None, **env: str) -> Bot:
        runner, base_url = await start_on_loopback(
            build_app(emulator or TeamsEmulatorConfig()), shutdown_timeout=1.0
        )
        runners.append(runner)
        emulator_url = base_url
        anonymous = "MicrosoftAppId" not in env
        environ = {
            "AzureWebJobsStorage": storage_connection_string,
            "TABLE_REFERENCES": unique_name + "refs",
            "TABLE_PREFERENCES": unique_name + "prefs",
            "TABLE_NOTIFICATIONS": unique_name + "notes",
            "TABLE_DELIVERIES": unique_name + "deliveries",
            "QUEUE_DELIVERIES_RETRY": unique_name + "-retry",
            **({"BOT_AUTH": "anonymous", "DEV_OUTBOUND_HOSTS": "127.0.0.1"} if anonymous else {}),
            **{k: v.replace("{emulator}", emulator_url) for k, v in env.items()},
        }
        services = composition.configure(environ)
        if not anonymous:
            # Settings refuse DEV_OUTBOUND_HOSTS with JWT on and an http AUTHORITY_HOST (a deployment must
            # never hand its token to loopback, nor its secret to plain http); only this test widens them,
            # so the emulator on loopback issues the token and sees the one the bot sends.
            services.settings = dataclasses.replace(
                services.settings,
                dev_outbound_hosts=frozenset({"127.0.0.1"}),
                authority_host=emulator_url.rstrip("/"),
            )
        opened.append(services)
        function_app.app.functions_bindings = None  # get_functions() is not idempotent
        host = DevHost(function_app.app, HostSettings({}, {}), port=free_port())
        await host.start()
        hosts.append(host)
        return Bot(host, emulator_url, http, services)

    yield start
    for host in hosts:
        await host.stop()
        assert host.runtime.errors == []
    for services in opened:
        await services.close()
    for runner in runners:
        await runner.cleanup()
    await http.close()


@pytest.fixture
async def bot(start_bot: StartBot) -> Bot:
    return await start_bot()


# ---- capture -------------------------------------------------------------------------------------


async def test_personal_install_stores_the_reference_and_queues_one_welcome(bot: Bot) -> None:
    assert await bot.post(bot.activity("personal_install")) == (200, {})
    assert await bot.post(bot.activity("personal_bot_added")) == (200, {})  # Teams sends both

    stored = await bot.reference(f"user:{USER}")
    assert stored is not None and stored.active and stored.kind is RecipientKind.USER
    assert stored.reference.service_url == bot.emulator_url
    assert stored.reference.conversation.id == PERSONAL
    assert stored.confirmed_at is not None
    # Stored first (the row), queued for the paced path; never sent behind the limiter's back.
    assert await bot.welcome_row() is DeliveryStatus.PENDING
    (queued,) = await bot.queued_welcomes()
    assert queued.notification_id == welcome_notification_id(TENANT) and queued.reason == "welcome"
    notification = await bot.services.notifications.get(welcome_notification_id(TENANT))
    assert notification is not None
    welcome = notification.value.request["message"]["text"]
    assert "Contoso Alerts" in welcome and "stop" in welcome and "because" in welcome
    assert await bot.received(PERSONAL) == []


RACE_ROUNDS = 15


def for_user(data: dict[str, Any], user: str, chat: str) -> dict[str, Any]:
    """``data`` as if another user (with their own personal chat) had caused it."""
    data["from"].update(aadObjectId=user, id=f"29:{user}")
    data["conversation"]["id"] = chat
    return data


async def test_install_events_arriving_together_queue_one_welcome_per_install(
    start_bot: StartBot, caplog: pytest.LogCaptureFixture
) -> None:
    # Teams delivers installationUpdate add and conversationUpdate membersAdded for the same install at
    # the same instant. A generous tenant rate keeps the emulator's throttling from hiding a welcome.
    bot = await start_bot(TeamsEmulatorConfig(tenant_rate=10_000.0))
    with caplog.at_level(logging.DEBUG, logger="proactive.storage.stores"):
        for index in range(RACE_ROUNDS):
            user, chat = f"00000000-0000-4000-8000-{index:012d}", f"a:race-{index}"
            for _install in ("first install", "re-install after an uninstall"):
                pair = [
                    for_user(bot.activity(name), user, chat)
                    for name in ("personal_install", "personal_bot_added")
                ]
                assert await asyncio.gather(*(bot.post(event) for event in pair)) == [(200, {})] * 2
                assert (await bot.post(for_user(bot.activity("personal_uninstall"), user, chat)))[0] == 200
    queued = Counter(request.recipient_key for request in await bot.queued_welcomes())
    users = [f"user:00000000-0000-4000-8000-{index:012d}" for index in range(RACE_ROUNDS)]
    assert [queued[user] for user in users] == [2] * RACE_ROUNDS  # two installs each, one welcome per install
    assert (await bot.services.bot_endpoint()).handler.counters["welcomes_queued"] == 2 * RACE_ROUNDS
    # The two requests did overlap (their conditional writes collided), so the test exercised the race.
    assert any("changed while being updated" in record.getMessage() for record in caplog.records)


async def test_message_records_time_zone_and_guest_flag(bot: Bot) -> None:
    message = bot.activity("personal_message", text="status")
    message["from"]["userRole"] = "guest"
    assert (await bot.post(message))[0] == 200
    stored = await bot.reference(f"user:{USER}")
    assert stored is not None and stored.time_zone == "Europe/Berlin" and stored.is_guest
    (reply,) = await bot.received(PERSONAL)
    assert "Notifications" in reply or "all notifications" in reply


async def test_uninstall_and_reinstall_deactivate_then_refresh(bot: Bot) -> None:
    await bot.post(bot.activity("personal_install"))
    await bot.post(bot.activity("personal_uninstall"))
    gone = await bot.reference(f"user:{USER}")
    assert gone is not None and not gone.active and gone.stale_reason == "uninstalled"
    await bot.post(bot.activity("personal_install"))
    back = await bot.reference(f"user:{USER}")
    assert back is not None and back.active and back.stale_reason is None
    assert len(await bot.queued_welcomes()) == 2  # a re-install is welcomed again


async def test_team_install_stores_general_and_selected_channel_then_team_deletion_retires_them(
    bot: Bot,
) -> None:
    assert (await bot.post(bot.activity("team_install")))[0] == 200
    general = await bot.reference(f"channel:{TEAM}")
    selected = await bot.reference(f"channel:{CHANNEL}")
    assert general is not None and general.team_id == TEAM and general.reference.conversation.id == TEAM
    assert selected is not None and selected.reference.conversation.id == CHANNEL
    assert await bot.received(TEAM) == []  # no welcome broadcast into channels

    assert (await bot.post(bot.activity("channel_created")))[0] == 200
    assert (await bot.post(bot.activity("team_member_removed")))[0] == 200
    assert await bot.stored_count() == 3
    assert (await bot.post(bot.activity("team_deleted")))[0] == 200
    page = await bot.services.references.list_tenant(TENANT, active_only=True)
    assert page.items == []
    retired = await bot.reference(f"channel:{CHANNEL}")
    assert retired is not None and retired.stale_reason == "team_deleted"


async def test_group_chat_install_and_bot_removal(bot: Bot) -> None:
    await bot.post(bot.activity("group_chat_install"))
    stored = await bot.reference(f"chat:{CHAT}")
    assert stored is not None and stored.active
    await bot.post(bot.activity("group_chat_uninstall"))
    stored = await bot.reference(f"chat:{CHAT}")
    assert stored is not None and not stored.active


async def test_team_bot_removed_retires_the_team(bot: Bot) -> None:
    await bot.post(bot.activity("team_bot_added"))
    assert (await bot.reference(f"channel:{TEAM}")) is not None
    await bot.post(bot.activity("team_bot_removed"))
    stored = await bot.reference(f"channel:{TEAM}")
    assert stored is not None and not stored.active and stored.stale_reason == "bot_removed"


# ---- commands ------------------------------------------------------------------------------------


async def test_consent_commands_write_preferences_and_confirm(bot: Bot) -> None:
    for text in ("STOP", "start", "unsubscribe deployments", "quiet 22:00-07:00"):
        assert (await bot.post(bot.activity("personal_message", text=text)))[0] == 200
    preferences = await bot.services.preferences.get(TENANT, USER)
    assert preferences is not None
    assert not preferences.opted_out_all and preferences.opted_out_categories == ("deployments",)
    assert preferences.quiet_hours is not None and preferences.quiet_hours.start == "22:00"
    assert preferences.time_zone == "Europe/Berlin"
    replies = await bot.received(PERSONAL)
    assert len(replies) == 4
    assert "won't receive" in replies[0] and "deployments" in replies[2] and "22:00" in replies[3]


async def test_commands_in_a_channel_point_to_the_personal_chat(bot: Bot) -> None:
    message = bot.activity("channel_message_mention")
    assert (await bot.post(message))[0] == 200
    assert await bot.services.preferences.get(TENANT, USER) is None
    (reply,) = await bot.received(message["conversation"]["id"])  # answered in the thread
    assert "1:1" in reply
    assert (await bot.reference(f"channel:{CHANNEL}")) is not None


async def test_group_chat_mention_gets_the_pointer_too(bot: Bot) -> None:
    await bot.post(bot.activity("group_chat_message"))
    (reply,) = await bot.received(CHAT)
    assert "1:1" in reply


async def test_a_failing_reply_does_not_lose_the_capture(start_bot: StartBot) -> None:
    failing = TeamsEmulatorConfig(faults=({"operations": ["send"], "kind": "MessageWritesBlocked"},))
    bot = await start_bot(failing)
    assert await bot.post(bot.activity("personal_message", text="stop")) == (200, {})
    preferences = await bot.services.preferences.get(TENANT, USER)
    assert preferences is not None and preferences.opted_out_all
    assert (await bot.reference(f"user:{USER}")) is not None
    handler = (await bot.services.bot_endpoint()).handler
    assert handler.counters["reply_failed"] == 1


# ---- bad input, allow-lists ------------------------------------------------------------------------


async def test_malformed_json_is_400_with_the_error_shape(bot: Bot) -> None:
    status, body = await bot.post(b"{not json")
    assert status == 400 and body["error"]["code"] == "invalid_json"
    assert set(body["error"]) == {"code", "message", "details"}


async def test_a_missing_field_is_400_naming_it_and_nothing_is_stored(bot: Bot) -> None:
    message = bot.activity("personal_message")
    del message["from"]["aadObjectId"]
    status, body = await bot.post(message)
    assert status == 400
    assert body["error"]["details"][0]["field"] == "from.aadObjectId"
    message = bot.activity("personal_install")
    del message["conversation"]["id"]
    status, body = await bot.post(message)
    assert status == 400 and body["error"]["details"][0]["field"] == "conversation.id"
    assert await bot.stored_count() == 0
    assert await bot.received(PERSONAL) == []


async def test_another_tenants_activity_is_acknowledged_and_ignored(start_bot: StartBot) -> None:
    bot = await start_bot(TENANT_ALLOW_LIST=TENANT)
    foreign = bot.activity("personal_install")
    foreign["channelData"]["tenant"]["id"] = OTHER_TENANT
    foreign["conversation"]["tenantId"] = OTHER_TENANT
    assert await bot.post(foreign) == (200, {})
    assert await bot.stored_count(OTHER_TENANT) == 0
    assert await bot.received(PERSONAL) == []
    assert (await bot.services.bot_endpoint()).handler.counters["ignored_tenant"] == 1


async def test_a_service_url_off_the_allow_list_is_neither_stored_nor_called(bot: Bot) -> None:
    planted = bot.activity(
        "personal_install", serviceUrl="https://smba.trafficmanager.net.evil.example/teams/"
    )
    assert await bot.post(planted) == (200, {})
    assert await bot.stored_count() == 0


# ---- botbuilder references -----------------------------------------------------------------------


async def test_a_botbuilder_reference_imports_and_can_be_sent_to(bot: Bot) -> None:
    raw = load("botbuilder_reference")
    raw["serviceUrl"] = bot.emulator_url
    reference = ConversationReference.from_json(raw)
    now = datetime.now(UTC)
    imported = StoredReference(
        tenant_id=TENANT, kind=RecipientKind.USER, recipient_id=USER, reference=reference, updated_at=now
    )
    await bot.services.references.upsert(imported)
    stored = await bot.reference(f"user:{USER}")
    assert stored is not None and stored.reference.to_json() == raw  # unchanged, unknown fields kept

    connector = await bot.services.connector()
    sent = await connector.send_activity(
        stored.reference.service_url,
        stored.reference.conversation.id,
        {"type": "message", "text": "imported"},
    )
    assert sent is not None and await bot.received(PERSONAL) == ["imported"]

    # A later message from that user refreshes the imported row in place.
    await bot.post(bot.activity("personal_message", text="help"))
    refreshed = await bot.reference(f"user:{USER}")
    assert (
        refreshed is not None
        and refreshed.time_zone == "Europe/Berlin"
        and refreshed.confirmed_at is not None
    )


# ---- JWT -----------------------------------------------------------------------------------------


@pytest.fixture
async def openid(signing_key: SigningKey) -> AsyncIterator[LocalOpenIdServer]:
    async with LocalOpenIdServer([signing_key]) as server:
        yield server


@pytest.fixture
async def secured(start_bot: StartBot, openid: LocalOpenIdServer) -> Bot:
    # The emulator accepts /v3 calls only with a token it issued to this app id and secret.
    emulator = TeamsEmulatorConfig(require_auth=True, credentials={APP_ID: "test-secret"})
    return await start_bot(
        emulator,
        MicrosoftAppId=APP_ID,
        MicrosoftAppPassword="test-secret",
        MicrosoftAppTenantId=TENANT,
        TENANT_ALLOW_LIST=TENANT,
        BOT_OPENID_METADATA_URL=openid.metadata_url,
    )


def token(key: SigningKey, service_url: str, **overrides: Any) -> str:
    now = overrides.pop("now", datetime.now(UTC))
    return sign_token(key, bot_claims(app_id=APP_ID, service_url=service_url, now=now, **overrides))


async def test_a_valid_token_is_accepted_and_the_reply_carries_the_bots_token(
    secured: Bot, signing_key: SigningKey
) -> None:
    headers = {"Authorization": "Bearer " + token(signing_key, secured.emulator_url)}
    assert await secured.post(secured.activity("personal_message", text="help"), headers) == (200, {})
    assert (await secured.reference(f"user:{USER}")) is not None
    assert len(await secured.received(PERSONAL)) == 1


@pytest.mark.parametrize("problem", ["missing", "expired", "wrong_audience", "tampered", "other_service_url"])
async def test_an_invalid_token_is_401_and_nothing_is_stored(
    secured: Bot, signing_key: SigningKey, problem: str
) -> None:
    url = secured.emulator_url
    good = token(signing_key, url)
    headers = {
        "missing": {},
        "expired": {
            "Authorization": "Bearer " + token(signing_key, url, now=datetime.now(UTC) - timedelta(hours=3))
        },
        "wrong_audience": {"Authorization": "Bearer " + token(signing_key, url, aud="someone-else")},
        "tampered": {"Authorization": "Bearer " + tamper_payload(good, aud=APP_ID, serviceurl=url + "x")},
        "other_service_url": {
            "Authorization": "Bearer " + token(signing_key, "https://smba.trafficmanager.net/amer/")
        },
    }[problem]
    status, body = await secured.post(secured.activity("personal_message", text="stop"), headers)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert await secured.stored_count() == 0
    assert await secured.services.preferences.get(TENANT, USER) is None
    assert await secured.received(PERSONAL) == []
