"""The Bot Connector client, token providers and outbound policy against the real Teams emulator over HTTP.

The emulator (``devhost.emulators.teams``) runs in-process on a free 127.0.0.1 port with an injected clock, so
token expiry and rate windows are moved by hand and nothing sleeps. A small middleware on the emulator app
records every request that reached it (path as sent, whether it carried a token), so tests can check what
never reached it, and how many token requests were made.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from devhost.emulators.serving import start_on_loopback
from devhost.emulators.teams import build_app
from devhost.emulators.teams_faults import ERRORS
from devhost.emulators.teams_state import TeamsEmulatorConfig
from proactive.adapters.bot_token import (
    AnonymousTokens,
    AzureCredentialTokens,
    ClientSecretTokens,
    TokenProvider,
    token_endpoint,
    token_provider,
)
from proactive.adapters.connector import ERROR_MAP, BotConnectorClient, classify_error, error_codes
from proactive.errors import (
    ActivityNotFound,
    BotMisconfigured,
    DeliveryError,
    MessageRejected,
    OutboundHostRefused,
    PermanentDeliveryError,
    RecipientUnreachable,
    ReferenceStale,
    ServiceBusy,
    ServiceFailed,
    TenantDisabled,
    Throttled,
    TransportFailure,
)
from proactive.outbound import OutboundPolicy
from proactive.settings import BotAuthKind, BotIdentity, Secret
from tests.support.clocks import FakeClock

TENANT = "11111111-1111-1111-1111-111111111111"
APP_ID = "aaaaaaaa-0000-0000-0000-000000000001"
SECRET = "s3cr3t-value-never-logged"
CHANNEL_THREAD = "19:abcDEF123@thread.tacv2;messageid=1700000000001"
PERSONAL = "a:1Xyz-PQR_stu:vw"


@dataclass(frozen=True)
class Seen:
    method: str
    raw_path: str
    authorization: str | None


@dataclass
class Emulator:
    """A running Teams emulator, what reached it, and a session for test-side calls."""

    base: str
    port: int
    clock: FakeClock
    http: aiohttp.ClientSession
    seen: list[Seen] = field(default_factory=list)

    def requests(self, *, tokens: bool = False) -> list[Seen]:
        """Requests that reached the emulator: ``/v3`` calls, or (``tokens``) token requests."""
        marker = "/oauth2/v2.0/token" if tokens else "/v3/"
        return [s for s in self.seen if marker in s.raw_path]

    async def faults(self, *rules: Mapping[str, Any]) -> None:
        async with self.http.post(self.base + "_emulator/faults", json=list(rules)) as response:
            assert response.status == 200, await response.text()

    async def stats(self) -> dict[str, Any]:
        async with self.http.get(self.base + "_emulator/stats") as response:
            body: dict[str, Any] = await response.json()
            return body


StartEmulator = Callable[..., Awaitable[Emulator]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The shared session the adapters are given, as the composition root would."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def start_emulator(http: aiohttp.ClientSession) -> AsyncIterator[StartEmulator]:
    runners: list[web.AppRunner] = []

    async def start(config: TeamsEmulatorConfig | None = None, clock: FakeClock | None = None) -> Emulator:
        clock = clock or FakeClock()
        app = build_app(config or TeamsEmulatorConfig(), clock=clock)
        seen: list[Seen] = []

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            seen.append(Seen(request.method, request.rel_url.raw_path, request.headers.get("Authorization")))
            response: web.StreamResponse = await handler(request)
            return response

        app.middlewares.append(record)
        runner, base_url = await start_on_loopback(app, shutdown_timeout=1.0)
        runners.append(runner)
        return Emulator(base_url, runner.addresses[0][1], clock, http, seen)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def emulator(start_emulator: StartEmulator) -> Emulator:
    return await start_emulator()


def client(
    http: aiohttp.ClientSession,
    tokens: TokenProvider | None = None,
    *,
    dev_hosts: tuple[str, ...] = ("127.0.0.1",),
    timeout: float = 10.0,
) -> BotConnectorClient:
    return BotConnectorClient(http, tokens or AnonymousTokens(), OutboundPolicy(dev_hosts), timeout=timeout)


def secret_tokens(
    http: aiohttp.ClientSession, emulator: Emulator, *, tenant: str = TENANT, secret: str = SECRET
) -> ClientSecretTokens:
    return ClientSecretTokens(
        http,
        client_id=APP_ID,
        client_secret=secret,
        tenant_id=tenant,
        authority_host=emulator.base,
        clock=emulator.clock,
    )


def message(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"type": "message", "text": text, "from": {"id": f"28:{APP_ID}"}, **extra}


def personal_chat(user: str = "aad-user-1", **extra: Any) -> dict[str, Any]:
    return {
        "bot": {"id": f"28:{APP_ID}"},
        "members": [{"id": user}],
        "channelData": {"tenant": {"id": TENANT}},
        **extra,
    }


# ---- the error table (facts sheet, section 3), pinned row by row -------------------------------------

FACTS_TABLE: list[tuple[int, str | None, type[DeliveryError]]] = [
    (400, "BadArgument", MessageRejected),
    (401, "BotNotRegistered", BotMisconfigured),
    (403, "MessageWritesBlocked", RecipientUnreachable),
    (403, "BotDisabledByAdmin", TenantDisabled),
    (403, "BotNotInConversationRoster", ReferenceStale),
    (403, "ConversationBlockedByUser", RecipientUnreachable),
    (403, "ForbiddenOperationException", ReferenceStale),
    (403, "InvalidBotApiHost", BotMisconfigured),
    (403, "NotEnoughPermissions", BotMisconfigured),
    (404, "ConversationNotFound", ReferenceStale),
    (404, "ActivityNotFoundInConversation", ActivityNotFound),
    (412, "PreconditionFailed", ServiceBusy),
    (413, "MessageSizeTooBig", MessageRejected),
    (429, "Throttled", Throttled),
    (500, "ServiceError", ServiceFailed),
    (502, None, ServiceBusy),
    (503, None, ServiceBusy),
    (504, None, ServiceBusy),
]


@pytest.mark.parametrize(("status", "code", "expected"), FACTS_TABLE)
def test_every_row_of_the_facts_table_maps_to_its_error_class(
    status: int, code: str | None, expected: type[DeliveryError]
) -> None:
    error = classify_error(status, [code] if code else [], retry_after=1.5)

    assert type(error) is expected
    assert error.status == status
    assert ERROR_MAP.get((status, code), ERROR_MAP.get((status, None))) is expected


def test_the_error_map_has_no_row_the_facts_table_lacks() -> None:
    table = {(status, code) for status, code, _ in FACTS_TABLE}
    defaults = {(status, None) for status, _, _ in FACTS_TABLE}

    assert set(ERROR_MAP) <= table | defaults


@pytest.mark.parametrize(
    ("status", "codes", "expected"),
    [
        (403, ["SomethingNew"], PermanentDeliveryError),  # unknown 4xx: permanent, never retried
        (409, [], PermanentDeliveryError),
        (418, ["Teapot"], PermanentDeliveryError),
        (302, [], PermanentDeliveryError),
        (501, [], ServiceFailed),  # unknown 5xx: the docs say retry only 502/503/504
        (507, [], ServiceFailed),
        (404, [], ReferenceStale),  # a bare 404 on a conversation path
        (403, ["messagewritesblocked"], RecipientUnreachable),  # codes compare case-insensitively
        (403, ["MessageWritesBlocked", "Forbidden"], RecipientUnreachable),
        (403, ["Unknown", "BotDisabledByAdmin"], TenantDisabled),  # the first known code wins
        (412, ["Whatever"], ServiceBusy),
    ],
)
def test_statuses_and_codes_outside_the_table_are_classified_conservatively(
    status: int, codes: list[str], expected: type[DeliveryError]
) -> None:
    assert type(classify_error(status, codes)) is expected


@pytest.mark.parametrize(
    ("body", "codes"),
    [
        (
            b'{"error":{"code":"BotNotInConversationRoster","message":"The bot is not part of the roster."}}',
            ["BotNotInConversationRoster"],
        ),
        (
            b'{"errorCode":209,"message":"{\\"subCode\\":\\"MessageWritesBlocked\\",\\"details\\":\\"Thread is blocked\\"}"}',
            ["MessageWritesBlocked"],
        ),
        (
            b'{"error":{"code":"Forbidden","message":"{\\"subCode\\":\\"MessageWritesBlocked\\"}"}}',
            ["MessageWritesBlocked", "Forbidden"],
        ),
        (b'{"error":{"code":"X","message":"{not json"}}', ["X"]),
        (b"<html>502 Bad Gateway</html>", []),
        (b"", []),
        (b"[1, 2]", []),
        (b'{"message": "no code here"}', []),
    ],
)
def test_error_codes_reads_both_body_shapes(body: bytes, codes: list[str]) -> None:
    assert error_codes(body) == codes


# ---- successes -------------------------------------------------------------------------------------


async def test_create_then_send_returns_the_ids_the_emulator_assigned(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    connector = client(http)

    conversation_id, no_activity = await connector.create_conversation(emulator.base, personal_chat())
    activity_id = await connector.send_activity(emulator.base, conversation_id, message())

    stats = await emulator.stats()
    assert conversation_id.startswith("a:") and no_activity is None
    assert activity_id is not None
    assert stats["conversations"][conversation_id]["activityIds"] == [activity_id]


async def test_create_with_an_activity_returns_its_activity_id(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    connector = client(http)

    conversation_id, activity_id = await connector.create_conversation(
        emulator.base, personal_chat(activity=message("welcome"))
    )

    stats = await emulator.stats()
    assert activity_id is not None
    assert stats["conversations"][conversation_id]["activityIds"] == [activity_id]


async def test_a_new_channel_thread_returns_the_thread_id_and_its_first_activity(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    parameters = {
        "isGroup": True,
        "activity": message("new thread"),
        "channelData": {"channel": {"id": "19:general@thread.tacv2"}, "tenant": {"id": TENANT}},
    }

    thread_id, activity_id = await client(http).create_conversation(emulator.base, parameters)

    assert thread_id == f"19:general@thread.tacv2;messageid={activity_id}"


@pytest.mark.parametrize("conversation_id", [CHANNEL_THREAD, PERSONAL, "29:1 with space/and?query#frag"])
@pytest.mark.parametrize("suffix", ["", "/", "//"])
async def test_conversation_ids_are_one_percent_encoded_path_segment_whatever_the_trailing_slash(
    emulator: Emulator, http: aiohttp.ClientSession, conversation_id: str, suffix: str
) -> None:
    service_url = emulator.base.rstrip("/") + suffix

    activity_id = await client(http).send_activity(service_url, conversation_id, message())

    stats = await emulator.stats()
    assert stats["conversations"][conversation_id]["activityIds"] == [activity_id]
    [sent] = emulator.requests()
    assert sent.raw_path.startswith("/v3/conversations/") and sent.raw_path.endswith("/activities")
    segment = sent.raw_path.removeprefix("/v3/conversations/").removesuffix("/activities")
    assert "/" not in segment and ":" not in segment and ";" not in segment and "@" not in segment
    assert "%3A" in segment


async def test_update_and_delete_reach_the_sent_activity(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    connector = client(http)
    activity_id = await connector.send_activity(emulator.base, CHANNEL_THREAD, message("v1"))
    assert activity_id is not None

    await connector.update_activity(emulator.base, CHANNEL_THREAD, activity_id, message("v2"))
    await connector.delete_activity(emulator.base, CHANNEL_THREAD, activity_id)

    stats = await emulator.stats()
    conversation = stats["conversations"][CHANNEL_THREAD]
    assert conversation["updates"] == 1 and conversation["deletes"] == 1
    [view] = conversation["activities"]
    assert view["text"] == "v2" and view["deleted"] is True
    methods = [(s.method, s.raw_path.rsplit("/", 1)[-1]) for s in emulator.requests()]
    assert methods == [("POST", "activities"), ("PUT", activity_id), ("DELETE", activity_id)]


async def test_update_of_an_unknown_activity_is_activity_not_found(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(ActivityNotFound) as raised:
        await client(http).update_activity(emulator.base, CHANNEL_THREAD, "404404", message())

    assert raised.value.code == "ActivityNotFoundInConversation"
    with pytest.raises(ActivityNotFound):
        await client(http).delete_activity(emulator.base, CHANNEL_THREAD, "404404")


# ---- every scripted error, classified -------------------------------------------------------------

EMULATOR_KINDS: dict[str, type[DeliveryError]] = {
    "bad_argument": MessageRejected,
    "bot_not_registered": BotMisconfigured,
    "blocked": RecipientUnreachable,
    "admin_disabled": TenantDisabled,
    "not_in_roster": ReferenceStale,
    "conversation_blocked": RecipientUnreachable,
    "forbidden_operation": ReferenceStale,
    "invalid_bot_api_host": BotMisconfigured,
    "not_enough_permissions": BotMisconfigured,
    "conversation_not_found": ReferenceStale,
    "activity_not_found": ActivityNotFound,
    "412": ServiceBusy,
    "message_too_big": MessageRejected,
    "429": Throttled,
    "500": ServiceFailed,
    "502": ServiceBusy,
    "503": ServiceBusy,
    "504": TransportFailure,  # after a POST: a gateway timeout, outcome unknown
}


def test_every_error_the_emulator_can_answer_is_covered_here() -> None:
    assert set(EMULATOR_KINDS) == set(ERRORS)


@pytest.mark.parametrize(("kind", "expected"), sorted(EMULATOR_KINDS.items()))
async def test_each_scripted_emulator_error_raises_its_class(
    emulator: Emulator, http: aiohttp.ClientSession, kind: str, expected: type[DeliveryError]
) -> None:
    await emulator.faults({"kind": kind, "times": 1, "retry_after": 2.5})
    connector = client(http)

    with pytest.raises(DeliveryError) as raised:
        await connector.send_activity(emulator.base, PERSONAL, message())

    error = raised.value
    assert type(error) is expected
    assert error.status == ERRORS[kind].status
    assert error.code == ("Timeout" if kind == "504" else ERRORS[kind].code)
    if expected is Throttled:
        assert isinstance(error, Throttled) and error.retry_after == 2.5
    # The rule is spent: the next send goes through.
    assert await connector.send_activity(emulator.base, PERSONAL, message()) is not None


async def test_message_writes_blocked_body_is_read_from_the_json_inside_message(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    assert "errorCode" in ERRORS["blocked"].body  # the odd shape, not {"error": {...}}
    await emulator.faults({"kind": "MessageWritesBlocked", "times": 1})

    with pytest.raises(RecipientUnreachable) as raised:
        await client(http).send_activity(emulator.base, PERSONAL, message())

    assert raised.value.code == "MessageWritesBlocked" and raised.value.status == 403


async def test_the_emulators_own_rate_limit_answers_throttled_with_its_retry_after(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    connector = client(http)
    for _ in range(7):  # 7 per second per bot per thread
        await connector.send_activity(emulator.base, PERSONAL, message())

    with pytest.raises(Throttled) as raised:
        await connector.send_activity(emulator.base, PERSONAL, message())

    assert raised.value.retry_after is not None and 0 < raised.value.retry_after <= 1.0
    emulator.clock.advance(raised.value.retry_after)
    assert await connector.send_activity(emulator.base, PERSONAL, message()) is not None


async def test_a_real_oversized_message_is_rejected_with_413(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(MessageRejected) as raised:
        await client(http).send_activity(emulator.base, PERSONAL, message("x" * 60_000))

    assert raised.value.status == 413 and raised.value.code == "MessageSizeTooBig"


async def test_a_real_invalid_activity_is_rejected_with_400(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(MessageRejected) as raised:
        await client(http).send_activity(emulator.base, PERSONAL, {"text": "no type"})

    assert raised.value.status == 400 and raised.value.code == "BadArgument"


# ---- transport failures ----------------------------------------------------------------------------


async def test_a_connection_reset_is_a_transport_failure(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    await emulator.faults({"kind": "reset", "times": 1})

    with pytest.raises(TransportFailure) as raised:
        await client(http).send_activity(emulator.base, PERSONAL, message())

    assert raised.value.code == "ConnectionLost" and raised.value.status is None


async def test_a_hanging_request_times_out_as_a_transport_failure(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    await emulator.faults({"kind": "timeout", "times": 1, "seconds": 30})

    with pytest.raises(TransportFailure) as raised:
        await client(http, timeout=0.3).send_activity(emulator.base, PERSONAL, message())

    assert raised.value.code == "Timeout"


async def test_a_closed_port_is_a_transport_failure_that_never_reached_the_service(
    http: aiohttp.ClientSession,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Bound and closed, never listening: the connection is refused.

    with pytest.raises(TransportFailure) as raised:
        await client(http).send_activity(f"http://127.0.0.1:{port}/", PERSONAL, message())

    assert raised.value.code == "ConnectFailed"


# ---- outbound policy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "service_url",
    [
        "http://127.0.0.1:{port}/",  # the emulator itself, but the policy allows another port only
        "http://localhost:{port}/",
        "http://smba.trafficmanager.net@127.0.0.1:{port}/",
    ],
)
async def test_a_refused_service_url_never_receives_a_request_nor_a_token(
    start_emulator: StartEmulator, http: aiohttp.ClientSession, service_url: str
) -> None:
    emulator = await start_emulator(TeamsEmulatorConfig(require_auth=True, credentials={APP_ID: SECRET}))
    tokens = secret_tokens(http, emulator)
    connector = client(http, tokens, dev_hosts=(f"127.0.0.1:{emulator.port + 1}",))
    url = service_url.format(port=emulator.port)

    with pytest.raises(OutboundHostRefused):
        await connector.send_activity(url, PERSONAL, message())
    with pytest.raises(OutboundHostRefused):
        await connector.create_conversation(url, personal_chat())

    stats = await emulator.stats()
    assert stats["totals"]["requests"] == 0
    assert emulator.requests() == [] and emulator.requests(tokens=True) == []


async def test_redirects_are_not_followed(start_emulator: StartEmulator, http: aiohttp.ClientSession) -> None:
    # A service that answers 307 to elsewhere: following it would carry the token off the allow-list.
    target = await start_emulator()
    redirector = web.Application()

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(target.base + request.path.lstrip("/"))

    redirector.router.add_route("*", "/{tail:.*}", redirect)
    runner, base_url = await start_on_loopback(redirector)
    try:
        connector = client(http, dev_hosts=(base_url.removeprefix("http://").rstrip("/"),))
        with pytest.raises(PermanentDeliveryError) as raised:
            await connector.send_activity(base_url, PERSONAL, message())
    finally:
        await runner.cleanup()

    assert raised.value.status == 307
    assert target.seen == []


# ---- tokens ----------------------------------------------------------------------------------------


async def test_anonymous_mode_sends_no_authorization_header(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    await client(http).send_activity(emulator.base, PERSONAL, message())

    [sent] = emulator.requests()
    assert sent.authorization is None


async def test_anonymous_calls_are_refused_when_the_emulator_requires_auth(
    start_emulator: StartEmulator, http: aiohttp.ClientSession
) -> None:
    emulator = await start_emulator(TeamsEmulatorConfig(require_auth=True))

    with pytest.raises(BotMisconfigured) as raised:
        await client(http).send_activity(emulator.base, PERSONAL, message())

    assert raised.value.status == 401


async def test_require_auth_accepts_our_token_fetched_once_and_reused_across_many_sends(
    start_emulator: StartEmulator, http: aiohttp.ClientSession
) -> None:
    emulator = await start_emulator(TeamsEmulatorConfig(require_auth=True, credentials={APP_ID: SECRET}))
    connector = client(http, secret_tokens(http, emulator))

    for index in range(12):
        await connector.send_activity(emulator.base, f"a:user-{index}", message())

    stats = await emulator.stats()
    assert stats["totals"]["accepted"] == 12
    [token_request] = emulator.requests(tokens=True)
    assert token_request.raw_path == f"/{TENANT}/oauth2/v2.0/token"
    [header] = {s.authorization for s in emulator.requests()}
    assert header is not None and header.startswith("Bearer ")


async def test_concurrent_callers_share_one_token_request(
    start_emulator: StartEmulator, http: aiohttp.ClientSession
) -> None:
    emulator = await start_emulator(TeamsEmulatorConfig(require_auth=True, credentials={APP_ID: SECRET}))
    connector = client(http, secret_tokens(http, emulator))

    ids = await asyncio.gather(
        *(connector.send_activity(emulator.base, f"a:user-{index}", message()) for index in range(20))
    )

    assert len(set(ids)) == 20
    assert len(emulator.requests(tokens=True)) == 1


async def test_the_token_is_refreshed_five_minutes_before_it_expires(
    start_emulator: StartEmulator, http: aiohttp.ClientSession
) -> None:
    config = TeamsEmulatorConfig(require_auth=True, credentials={APP_ID: SECRET}, token_lifetime=3600)
    emulator = await start_emulator(config)
    connector = client(http, secret_tokens(http, emulator))

    await connector.send_activity(emulator.base, "a:user-1", message())
    emulator.clock.advance(3600 - 300 - 1)
    await connector.send_activity(emulator.base, "a:user-2", message())
    tokens_before_margin = len(emulator.requests(tokens=True))
    emulator.clock.advance(2)
    await connector.send_activity(emulator.base, "a:user-3", message())

    assert tokens_before_margin == 1
    assert len(emulator.requests(tokens=True)) == 2
    first, second, third = (s.authorization for s in emulator.requests())
    assert first == second != third


async def test_a_token_the_service_rejects_is_dropped_and_the_next_call_fetches_a_new_one(
    start_emulator: StartEmulator, http: aiohttp.ClientSession
) -> None:
    # The emulator's clock runs ahead of ours: it considers our cached token expired and answers 401.
    emulator = await start_emulator(TeamsEmulatorConfig(require_auth=True, credentials={APP_ID: SECRET}))
    tokens = ClientSecretTokens(
        http,
        client_id=APP_ID,
        client_secret=SECRET,
        tenant_id=TENANT,
        authority_host=emulator.base,
        clock=FakeClock(),
    )
    connector = client(http, tokens)
    await connector.send_activity(emulator.base, "a:user-1", message())
    emulator.clock.advance(3601)

    with pytest.raises(BotMisconfigured):
        await connector.send_activity(emulator.base, "a:user-2", message())
    await connector.send_activity(emulator.base, "a:user-3", message())

    assert len(emulator.requests(tokens=True)) == 2


async def test_a_multi_tenant_bot_uses_the_botframework_authority(
    start_emulator: StartEmulator, http: aiohttp.ClientSession
) -> None:
    emulator = await start_emulator(TeamsEmulatorConfig(require_auth=True))
    tokens = secret_tokens(http, emulator, tenant="")

    await client(http, tokens).send_activity(emulator.base, PERSONAL, message())

    [token_request] = emulator.requests(tokens=True)
    assert token_request.raw_path == "/botframework.com/oauth2/v2.0/token"
    assert tokens.token_url == token_endpoint(emulator.base, "")


async def test_a_wrong_secret_is_bot_misconfigured_and_the_secret_is_never_logged(
    start_emulator: StartEmulator, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator = await start_emulator(TeamsEmulatorConfig(require_auth=True, credentials={APP_ID: "other"}))
    tokens = secret_tokens(http, emulator)

    with pytest.raises(BotMisconfigured) as raised:
        await client(http, tokens).send_activity(emulator.base, PERSONAL, message())

    assert raised.value.status == 401 and raised.value.code == "invalid_client"
    assert emulator.requests() == []  # no /v3 call without a token
    assert SECRET not in caplog.text and SECRET not in str(raised.value) and SECRET not in repr(tokens)


async def test_neither_the_token_nor_the_message_is_logged(
    start_emulator: StartEmulator, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator = await start_emulator(TeamsEmulatorConfig(require_auth=True, credentials={APP_ID: SECRET}))
    connector = client(http, secret_tokens(http, emulator))
    await connector.send_activity(emulator.base, PERSONAL, message("private text one"))
    await emulator.faults({"kind": "blocked", "times": 1})
    with pytest.raises(RecipientUnreachable) as raised:
        await connector.send_activity(emulator.base, PERSONAL, message("private text two"))

    [seen_token] = {s.authorization for s in emulator.requests()}
    assert seen_token is not None
    token = seen_token.removeprefix("Bearer ")
    for text in (token, SECRET, "private text"):
        assert text not in caplog.text and text not in str(raised.value)


async def test_an_unreachable_token_endpoint_is_a_transport_failure(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tokens = ClientSecretTokens(
        http,
        client_id=APP_ID,
        client_secret=SECRET,
        tenant_id=TENANT,
        authority_host=f"http://127.0.0.1:{port}",
    )

    with pytest.raises(TransportFailure):
        await client(http, tokens).send_activity(emulator.base, PERSONAL, message())

    assert emulator.requests() == []


async def test_a_failed_refresh_is_shared_by_concurrent_callers_and_retried_by_the_next(
    http: aiohttp.ClientSession,
) -> None:
    answers = [web.json_response({"error": "temporarily_unavailable"}, status=503)]
    requests = 0

    async def token(request: web.Request) -> web.StreamResponse:
        nonlocal requests
        requests += 1
        await asyncio.sleep(0.05)  # keep the request in flight while the others arrive
        if answers:
            return answers.pop()
        return web.json_response({"access_token": "t-2", "expires_in": 3600, "token_type": "Bearer"})

    app = web.Application()
    app.router.add_post("/{tenant}/oauth2/v2.0/token", token)
    runner, base_url = await start_on_loopback(app)
    try:
        tokens = ClientSecretTokens(
            http,
            client_id=APP_ID,
            client_secret=SECRET,
            tenant_id=TENANT,
            authority_host=base_url.rstrip("/"),
        )
        results = await asyncio.gather(*(tokens.token() for _ in range(5)), return_exceptions=True)
        again = await tokens.token()
    finally:
        await runner.cleanup()

    assert all(isinstance(r, ServiceBusy) and r.status == 503 for r in results)
    assert again == "t-2"
    assert requests == 2


# ---- azure.identity credentials (certificate, managed identity) ------------------------------------


class CountingCredential:
    """A stand-in for an ``azure.identity.aio`` credential: nothing real can issue these tokens offline."""

    def __init__(self, wall_clock: Callable[[], float], lifetime: float = 3600.0) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.closed = False
        self.fail: Exception | None = None
        self._wall_clock = wall_clock
        self._lifetime = lifetime

    async def get_token(self, *scopes: str) -> AccessToken:
        self.calls.append(scopes)
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        return AccessToken(f"cred-{len(self.calls)}", int(self._wall_clock() + self._lifetime))

    async def close(self) -> None:
        self.closed = True


async def test_an_azure_credential_is_asked_once_for_the_bot_framework_scope_and_refreshed_near_expiry() -> (
    None
):
    clock, wall = FakeClock(), FakeClock(1_795_251_600.0)
    credential = CountingCredential(wall)
    tokens = AzureCredentialTokens(credential, clock=clock, wall_clock=wall)

    first = await asyncio.gather(*(tokens.token() for _ in range(10)))
    clock.advance(3600 - 301)
    wall.advance(3600 - 301)
    cached = await tokens.token()
    clock.advance(2)
    wall.advance(2)
    refreshed = await tokens.token()
    await tokens.close()

    assert set(first) == {"cred-1"} and cached == "cred-1" and refreshed == "cred-2"
    assert credential.calls == [("https://api.botframework.com/.default",)] * 2
    assert credential.closed


async def test_an_azure_credential_failure_is_translated() -> None:
    credential = CountingCredential(time.time)
    credential.fail = ClientAuthenticationError("no identity")

    with pytest.raises(BotMisconfigured):
        await AzureCredentialTokens(credential).token()


def write_certificate(path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bot-test")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) + certificate.public_bytes(serialization.Encoding.PEM)
    path.write_bytes(pem)
    return path


async def test_token_provider_builds_the_provider_for_each_kind_of_identity(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    authority = "https://login.microsoftonline.com"
    anonymous = token_provider(BotIdentity("", "", BotAuthKind.ANONYMOUS), http, authority_host=authority)
    secret = token_provider(
        BotIdentity(APP_ID, TENANT, BotAuthKind.SECRET, secret=Secret(SECRET)), http, authority_host=authority
    )
    certificate_path = write_certificate(tmp_path / "bot.pem")
    certificate = token_provider(
        BotIdentity(APP_ID, TENANT, BotAuthKind.CERTIFICATE, certificate_path=str(certificate_path)),
        http,
        authority_host=authority,
    )
    managed = token_provider(
        BotIdentity(APP_ID, TENANT, BotAuthKind.MANAGED_IDENTITY), http, authority_host=authority
    )

    assert isinstance(anonymous, AnonymousTokens) and await anonymous.token() is None
    assert isinstance(secret, ClientSecretTokens)
    assert secret.token_url == f"{authority}/{TENANT}/oauth2/v2.0/token"
    assert isinstance(certificate, AzureCredentialTokens) and isinstance(managed, AzureCredentialTokens)
    await certificate.close()
    await managed.close()


async def test_a_504_after_a_send_is_a_timeout_but_after_an_update_stays_busy(
    emulator: Emulator, http: aiohttp.ClientSession
) -> None:
    connector = client(http)
    await emulator.faults({"kind": "504", "times": 1})
    with pytest.raises(TransportFailure) as sent:
        await connector.send_activity(emulator.base, PERSONAL, message())
    assert (sent.value.code, sent.value.status) == ("Timeout", 504)

    activity_id = await connector.send_activity(emulator.base, PERSONAL, message())
    assert activity_id is not None
    await emulator.faults({"kind": "504", "times": 1})
    with pytest.raises(ServiceBusy) as updated:
        await connector.update_activity(emulator.base, PERSONAL, activity_id, message())
    assert updated.value.status == 504
