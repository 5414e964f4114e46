"""The Teams (Bot Connector v3) emulator: documented rate limits, error answers, faults and stats.

Real HTTP against an in-process server on 127.0.0.1; rate windows use an injected clock, so limits are
checked exactly and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from devhost.emulators.teams import build_app, emulator_key, load_config
from devhost.emulators.teams_state import TeamsEmulatorConfig, teams_user_id
from tests.emulators.conftest import ServeApp
from tests.support.clocks import FakeClock

TENANT = "11111111-1111-1111-1111-111111111111"
OTHER_TENANT = "22222222-2222-2222-2222-222222222222"
APP_ID = "aaaaaaaa-0000-0000-0000-000000000001"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Teams:
    """A running emulator and a client session for it."""

    base: str
    http: aiohttp.ClientSession
    clock: FakeClock
    app: web.Application

    async def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        async with self.http.request(method, self.base + path, **kwargs) as response:
            text = await response.text()
            body = json.loads(text) if text else None
            return Reply(response.status, dict(response.headers), body)

    async def create(self, user: str, tenant: str = TENANT, bot: str = APP_ID, **extra: Any) -> Reply:
        body = {
            "bot": {"id": f"28:{bot}"},
            "members": [{"id": user}],
            "channelData": {"tenant": {"id": tenant}},
        }
        return await self.call("POST", "v3/conversations", json={**body, **extra})

    async def send(
        self, conversation_id: str, text: str = "hi", *, bot: str = APP_ID, tenant: str = TENANT, **extra: Any
    ) -> Reply:
        activity = {
            "type": "message",
            "text": text,
            "from": {"id": f"28:{bot}"},
            "conversation": {"id": conversation_id, "tenantId": tenant},
            **extra,
        }
        return await self.call("POST", f"v3/conversations/{conversation_id}/activities", json=activity)

    async def faults(self, rule: Any) -> None:
        reply = await self.call("POST", "_emulator/faults", json=rule)
        assert reply.status == 200, reply.body

    async def stats(self) -> dict[str, Any]:
        return (await self.call("GET", "_emulator/stats")).body


StartTeams = Callable[..., Awaitable[Teams]]


@pytest.fixture
async def start_teams(serve_app: ServeApp, fake_clock: FakeClock) -> AsyncIterator[StartTeams]:
    """Start an emulator with the fake clock; returns a :class:`Teams`."""
    async with aiohttp.ClientSession() as http:

        async def start(config: TeamsEmulatorConfig | None = None, **kwargs: Any) -> Teams:
            app = build_app(config or TeamsEmulatorConfig(), clock=fake_clock, **kwargs)
            return Teams(await serve_app(app), http, fake_clock, app)

        yield start


@pytest.fixture
async def teams(start_teams: StartTeams) -> Teams:
    return await start_teams()


async def sends(teams: Teams, conversation_id: str, count: int, **kwargs: Any) -> list[int]:
    return [(await teams.send(conversation_id, f"m{i}", **kwargs)).status for i in range(count)]


# ---- conversations and activities -------------------------------------------------------------------


async def test_creating_the_same_personal_chat_twice_returns_the_same_conversation_id(teams: Teams) -> None:
    first = await teams.create("aad-user-1")
    again = await teams.create("aad-user-1")
    by_teams_id = await teams.create(teams_user_id("aad-user-1"))
    other = await teams.create("aad-user-2")

    assert first.status == 201
    assert first.body["id"].startswith("a:")
    assert first.body["serviceUrl"] == teams.base
    assert again.body["id"] == first.body["id"] == by_teams_id.body["id"]
    assert other.body["id"] != first.body["id"]


async def test_create_with_an_activity_delivers_it_and_returns_its_id(teams: Teams) -> None:
    reply = await teams.create("aad-user-1", activity={"type": "message", "text": "welcome"})

    stats = await teams.stats()
    delivered = stats["conversations"][reply.body["id"]]["activities"]
    assert [a["text"] for a in delivered] == ["welcome"]
    assert reply.body["activityId"] == delivered[0]["id"]


async def test_channel_create_starts_a_thread_with_a_message_id(teams: Teams) -> None:
    channel = "19:general@thread.tacv2"
    body = {
        "isGroup": True,
        "bot": {"id": f"28:{APP_ID}"},
        "activity": {"type": "message", "text": "new thread"},
        "channelData": {"channel": {"id": channel}, "tenant": {"id": TENANT}},
    }
    reply = await teams.call("POST", "v3/conversations", json=body)

    assert reply.status == 201
    assert reply.body["id"] == f"{channel};messageid={reply.body['activityId']}"
    answer = await teams.send(reply.body["id"], "a reply in the thread")
    assert answer.status == 201


async def test_group_chat_create_is_a_bad_argument(teams: Teams) -> None:
    body = {"isGroup": True, "bot": {"id": f"28:{APP_ID}"}, "members": [{"id": "a"}, {"id": "b"}]}
    reply = await teams.call("POST", "v3/conversations", json=body)

    assert reply.status == 400
    assert reply.body["error"]["code"] == "BadArgument"


async def test_send_reply_update_and_delete_round_trip(teams: Teams) -> None:
    cid = (await teams.create("aad-user-1")).body["id"]
    sent = await teams.send(cid, "v1")
    reply = await teams.call(
        "POST", f"v3/conversations/{cid}/activities/{sent.body['id']}", json={"type": "message", "text": "re"}
    )
    updated = await teams.call(
        "PUT", f"v3/conversations/{cid}/activities/{sent.body['id']}", json={"type": "message", "text": "v2"}
    )
    deleted = await teams.call("DELETE", f"v3/conversations/{cid}/activities/{sent.body['id']}")
    deleted_again = await teams.call("DELETE", f"v3/conversations/{cid}/activities/{sent.body['id']}")

    assert (sent.status, reply.status, updated.status, deleted.status) == (201, 201, 201, 200)
    assert updated.body == {"id": sent.body["id"]}
    assert deleted_again.status == 404
    assert deleted_again.body["error"]["code"] == "ActivityNotFoundInConversation"
    stats = await teams.stats()
    first = stats["conversations"][cid]["activities"][0]
    assert (first["text"], first["updates"], first["deleted"]) == ("v2", 1, True)
    assert (stats["totals"]["updates"], stats["totals"]["deletes"]) == (1, 1)


async def test_update_of_an_unknown_activity_is_activity_not_found(teams: Teams) -> None:
    reply = await teams.call("PUT", "v3/conversations/a:x/activities/123", json={"type": "message"})

    assert reply.status == 404
    assert reply.body == {
        "error": {"code": "ActivityNotFoundInConversation", "message": "Activity not found in conversation."}
    }


async def test_service_url_with_double_or_trailing_slash_still_routes(teams: Teams) -> None:
    cid = (await teams.create("aad-user-1")).body["id"]
    activity = {"type": "message", "text": "x"}

    double = await teams.call("POST", f"/v3/conversations/{cid}/activities", json=activity)
    trailing = await teams.call("POST", f"v3/conversations/{cid}/activities/", json=activity)

    assert (double.status, trailing.status) == (201, 201)


async def test_members_and_paged_members_page_between_50_and_500(start_teams: StartTeams) -> None:
    channel = "19:big@thread.tacv2"
    config = TeamsEmulatorConfig(conversations={channel: {"tenantId": TENANT, "member_count": 450}})
    teams = await start_teams(config)

    everyone = await teams.call("GET", f"v3/conversations/{channel}/members")
    pages, token = [], None
    while True:
        query = f"?continuationToken={token}" if token else ""
        page = await teams.call("GET", f"v3/conversations/{channel}/pagedmembers{query}")
        pages.append(len(page.body["members"]))
        token = page.body.get("continuationToken")
        if token is None:
            break
    small = await teams.call("GET", f"v3/conversations/{channel}/pagedmembers?pageSize=10")
    large = await teams.call("GET", f"v3/conversations/{channel}/pagedmembers?pageSize=9999")

    assert len(everyone.body) == 450
    assert all(m["id"].startswith("29:") and m["aadObjectId"] for m in everyone.body)
    assert pages == [200, 200, 50]
    assert len(small.body["members"]) == 50
    assert len(large.body["members"]) == 450


# ---- rate limits (facts sheet, section 1) -----------------------------------------------------------


async def test_eighth_send_within_one_second_to_one_conversation_is_throttled(teams: Teams) -> None:
    cid = (await teams.create("aad-user-1")).body["id"]
    teams.clock.advance(10)
    statuses = []
    for i in range(20):
        statuses.append((await teams.send(cid, f"m{i}")).status)
        teams.clock.advance(1 / 32)  # binary-exact steps, so the Retry-After below is exact too

    assert statuses == [201] * 7 + [429] * 13
    throttled = await teams.send(cid)
    assert throttled.body == {
        "error": {
            "code": "Throttled",
            "message": "Too many requests. Retry after the time in the Retry-After header.",
        }
    }
    # The first send was at t=10; the 1 s window frees at t=11, which is 0.375 s after 20 x 1/32 s.
    assert throttled.headers["Retry-After"] == "0.375"


async def test_two_second_window_admits_eight_sends(teams: Teams) -> None:
    cid = (await teams.create("aad-user-1")).body["id"]
    teams.clock.advance(10)
    first_second = await sends(teams, cid, 7)
    teams.clock.advance(1.0)
    eighth = await teams.send(cid)
    teams.clock.advance(0.5)
    ninth = await teams.send(cid)

    assert first_second == [201] * 7
    assert eighth.status == 201
    assert ninth.status == 429
    assert ninth.headers["Retry-After"] == "0.5"


async def test_thirty_second_window_admits_sixty_sends(teams: Teams) -> None:
    cid = (await teams.create("aad-user-1")).body["id"]
    teams.clock.advance(10)
    bursts = []
    for _second in range(15):
        bursts.append(await sends(teams, cid, 4))  # 4 per second stays inside 7/1 s and 8/2 s
        teams.clock.advance(1.0)
    sixty_first = await teams.send(cid)

    assert bursts == [[201] * 4] * 15
    assert sixty_first.status == 429
    # Bursts at t=10 ... 24; now t=25, and the 30 s window frees when the t=10 burst leaves, at t=40.
    assert sixty_first.headers["Retry-After"] == "15"


async def test_hour_window_admits_1800_sends_to_one_user(teams: Teams) -> None:
    cid = (await teams.create("aad-user-1")).body["id"]
    teams.clock.advance(10)
    start = teams.clock.now
    statuses = []
    for _ in range(1800):
        statuses.append((await teams.send(cid)).status)
        teams.clock.advance(0.5)  # 2 per second stays inside the 1 s, 2 s and 30 s windows
    over = await teams.send(cid)

    assert statuses.count(201) == 1800
    assert over.status == 429
    assert float(over.headers["Retry-After"]) == pytest.approx(3600 - (teams.clock.now - start), abs=0.001)
    teams.clock.advance(float(over.headers["Retry-After"]))
    assert (await teams.send(cid)).status == 201


async def test_all_bots_together_get_fourteen_sends_per_second_per_thread(teams: Teams) -> None:
    channel = "19:shared@thread.tacv2"
    teams.clock.advance(10)
    bot_a = await sends(teams, channel, 8, bot="bot-a")
    bot_b = await sends(teams, channel, 7, bot="bot-b")
    bot_c = await teams.send(channel, bot="bot-c")

    assert bot_a == [201] * 7 + [429]
    assert bot_b == [201] * 7
    assert bot_c.status == 429
    assert bot_c.body["error"]["code"] == "Throttled"


async def test_get_members_allows_fourteen_per_second_per_bot(teams: Teams) -> None:
    cid = (await teams.create("aad-user-1")).body["id"]
    teams.clock.advance(10)
    statuses = [(await teams.call("GET", f"v3/conversations/{cid}/members")).status for _ in range(15)]

    assert statuses == [200] * 14 + [429]


async def test_one_tenant_at_100_per_second_gets_about_50_per_second(teams: Teams) -> None:
    conversations = []
    for i in range(60):
        conversations.append((await teams.create(f"aad-{i}")).body["id"])
        teams.clock.advance(0.1)  # creates count against the tenant's 50/s too
    teams.clock.advance(10)
    accepted_per_second = []
    for _second in range(3):
        accepted = 0
        for i in range(100):
            accepted += (await teams.send(conversations[i % 60])).status == 201
            teams.clock.advance(0.01)
        accepted_per_second.append(accepted)

    assert accepted_per_second == [50, 50, 50]


async def test_tenant_rate_is_configurable_and_per_tenant(start_teams: StartTeams) -> None:
    teams = await start_teams(TeamsEmulatorConfig(tenant_rate=30))
    teams.clock.advance(10)
    in_tenant = [(await teams.send(f"a:chat-{i}")).status for i in range(31)]
    other_tenant = await teams.send("a:elsewhere", tenant=OTHER_TENANT)

    assert in_tenant == [201] * 30 + [429]
    assert other_tenant.status == 201


async def test_waiting_retry_after_lets_a_client_succeed_on_its_first_retry(teams: Teams) -> None:
    cid = (await teams.create("aad-user-1")).body["id"]
    teams.clock.advance(10)
    waits = []
    for i in range(150):
        reply = await teams.send(cid, f"m{i}")
        if reply.status == 429:
            waits.append(float(reply.headers["Retry-After"]))
            teams.clock.advance(waits[-1])
            reply = await teams.send(cid, f"m{i}")
        assert reply.status == 201
        teams.clock.advance(0.01)

    # Every window shows up: the 1 s (7), 2 s (8) and 30 s (60) limits all forced a wait.
    assert any(w > 2 for w in waits)
    assert any(w < 1 for w in waits)


# ---- scripted errors (facts sheet, section 3) -------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("not_in_roster", 403, "BotNotInConversationRoster"),
        ("conversation_not_found", 404, "ConversationNotFound"),
        ("admin_disabled", 403, "BotDisabledByAdmin"),
        ("forbidden_operation", 403, "ForbiddenOperationException"),
        ("conversation_blocked", 403, "ConversationBlockedByUser"),
        ("bot_not_registered", 401, "BotNotRegistered"),
        ("412", 412, "PreconditionFailed"),
        ("500", 500, "ServiceError"),
        ("502", 502, "BadGateway"),
        ("503", 503, "ServiceUnavailable"),
        ("504", 504, "GatewayTimeout"),
        ("MessageSizeTooBig", 413, "MessageSizeTooBig"),
    ],
)
async def test_scripted_error_answers_with_the_documented_status_and_body(
    teams: Teams, kind: str, status: int, code: str
) -> None:
    cid = (await teams.create("aad-user-1")).body["id"]
    await teams.faults({"match": {"user": "aad-user-1"}, "kind": kind})

    reply = await teams.send(cid)

    assert reply.status == status
    assert reply.body["error"]["code"] == code
    assert isinstance(reply.body["error"]["message"], str)


async def test_blocked_user_answers_message_writes_blocked_as_a_json_string_in_message(teams: Teams) -> None:
    cid = (await teams.create("aad-user-1")).body["id"]
    await teams.faults({"match": {"user": teams_user_id("aad-user-1")}, "kind": "blocked"})

    reply = await teams.send(cid)

    assert reply.status == 403
    assert reply.body["errorCode"] == 209
    assert json.loads(reply.body["message"])["subCode"] == "MessageWritesBlocked"


async def test_injected_429_carries_the_rules_retry_after(teams: Teams) -> None:
    await teams.faults({"match": {"conversation": "a:c"}, "kind": "429", "times": 1, "retry_after": 0.35})

    reply = await teams.send("a:c")

    assert (reply.status, reply.headers["Retry-After"]) == (429, "0.35")
    assert (await teams.send("a:c")).status == 201


async def test_next_two_sends_answer_503_then_succeed(teams: Teams) -> None:
    await teams.faults({"match": {"conversation": "a:c"}, "kind": 503, "times": 2})

    statuses = [(await teams.send("a:c")).status for _ in range(3)]
    elsewhere = await teams.send("a:other")

    assert statuses == [503, 503, 201]
    assert elsewhere.status == 201


async def test_sequence_rule_answers_in_order_and_only_for_its_operations(teams: Teams) -> None:
    await teams.faults(
        {"match": {"tenant": TENANT}, "operations": ["send"], "sequence": ["412", "ok", "502"]}
    )

    members = await teams.call("GET", "v3/conversations/a:c/members")
    statuses = [(await teams.send("a:c")).status for _ in range(4)]
    other_tenant = await teams.send("a:d", tenant=OTHER_TENANT)

    assert members.status == 200
    assert statuses == [412, 201, 502, 201]
    assert other_tenant.status == 201


async def test_faults_from_the_config_apply_from_the_start(start_teams: StartTeams) -> None:
    config = TeamsEmulatorConfig.from_dict(
        {"faults": [{"match": {"user": "aad-blocked"}, "operations": ["create"], "kind": "admin_disabled"}]}
    )
    teams = await start_teams(config)

    blocked = await teams.create("aad-blocked")
    fine = await teams.create("aad-fine")

    assert blocked.status == 403
    assert blocked.body["error"]["code"] == "BotDisabledByAdmin"
    assert fine.status == 201


async def test_slow_rule_delays_the_answer_through_the_injected_sleep(start_teams: StartTeams) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    teams = await start_teams(sleep=sleep)
    await teams.faults({"kind": "delay", "delay": 2.5, "times": 1})

    reply = await teams.send("a:c")

    assert reply.status == 201
    assert slept == [2.5]


async def test_connection_reset_reaches_the_client_as_a_connection_error(teams: Teams) -> None:
    await teams.faults({"kind": "reset", "times": 1})

    with pytest.raises(aiohttp.ClientConnectionError):
        await teams.send("a:c")
    assert (await teams.send("a:c")).status == 201
    stats = await teams.stats()
    assert stats["byStatus"]["reset"] == 1
    assert stats["conversations"]["a:c"]["count"] == 1


async def test_timeout_hangs_longer_than_the_clients_timeout(teams: Teams) -> None:
    await teams.faults({"kind": "timeout", "times": 1, "seconds": 60})

    with pytest.raises(asyncio.TimeoutError):
        await teams.call(
            "POST",
            "v3/conversations/a:c/activities",
            json={"type": "message"},
            timeout=aiohttp.ClientTimeout(0.2),
        )
    assert (await teams.send("a:c")).status == 201
    assert (await teams.stats())["byStatus"]["timeout"] == 1


async def test_random_fault_rates_are_reproducible_with_a_seed(start_teams: StartTeams) -> None:
    rates = {"rates": {"429": 0.1, "503": 0.05, "timeout": 0.02}, "seed": 7}
    config = TeamsEmulatorConfig(timeout_seconds=0.01)

    async def run(seed: int) -> list[int]:
        teams = await start_teams(config)
        await teams.faults({**rates, "seed": seed})
        statuses = []
        for i in range(300):
            statuses.append((await teams.send(f"a:chat-{i % 30}")).status)
            teams.clock.advance(0.1)
        return statuses

    first, again, other = await run(7), await run(7), await run(8)

    assert first == again
    assert first != other
    counts = {status: first.count(status) for status in (429, 503, 504)}
    assert 15 <= counts[429] <= 45
    assert 5 <= counts[503] <= 30
    assert 1 <= counts[504] <= 15
    assert first.count(201) == 300 - sum(counts.values())


async def test_message_over_100_kb_in_utf16_is_too_big_even_if_small_in_utf8(teams: Teams) -> None:
    ascii_60k = "x" * 60_000  # 60 KB as UTF-8, 120 KB as UTF-16
    fits = "x" * 45_000

    too_big = await teams.send("a:c", ascii_60k)
    ok = await teams.send("a:c", fits)

    assert too_big.status == 413
    assert too_big.body["error"]["code"] == "MessageSizeTooBig"
    assert ok.status == 201


async def test_malformed_json_and_activity_without_type_are_bad_arguments(teams: Teams) -> None:
    malformed = await teams.call(
        "POST",
        "v3/conversations/a:c/activities",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    untyped = await teams.call("POST", "v3/conversations/a:c/activities", json={"text": "no type"})

    for reply in (malformed, untyped):
        assert reply.status == 400
        assert reply.body["error"]["code"] == "BadArgument"


async def test_strict_conversations_answer_conversation_not_found_for_unknown_ids(
    start_teams: StartTeams,
) -> None:
    teams = await start_teams(TeamsEmulatorConfig(strict_conversations=True))
    created = (await teams.create("aad-user-1")).body["id"]

    unknown = await teams.send("a:never-created")
    known = await teams.send(created)

    assert unknown.status == 404
    assert unknown.body["error"]["code"] == "ConversationNotFound"
    assert known.status == 201


# ---- stats and control --------------------------------------------------------------------------------


async def test_stats_count_accepted_throttled_failures_and_duplicates_exactly(teams: Teams) -> None:
    await teams.faults({"match": {"conversation": "a:blocked"}, "kind": "blocked"})
    proactive = {"channelData": {"proactive": {"notificationId": "n-1"}}}
    teams.clock.advance(10)

    await teams.send("a:one", "first", **proactive)
    await teams.send("a:one", "again", **proactive)  # a duplicate delivery of n-1
    await teams.send("a:two", "first", **proactive)
    await teams.send("a:two", "other", channelData={"notificationId": "n-2"})
    await teams.send("a:blocked", **proactive)
    await sends(teams, "a:three", 8)  # the 8th is throttled

    stats = await teams.stats()
    assert stats["totals"] == {
        "requests": 13,
        "accepted": 11,
        "throttled": 1,
        "failed": 1,
        "activities": 11,
    }
    assert stats["byStatus"] == {"201": 11, "429": 1, "403": 1}
    assert stats["byCode"] == {"Throttled": 1, "MessageWritesBlocked": 1}
    assert stats["duplicates"] == [
        {
            "conversationId": "a:one",
            "notificationId": "n-1",
            "count": 2,
            "activityIds": stats["conversations"]["a:one"]["activityIds"],
        }
    ]
    assert stats["byNotification"] == {
        "n-1": {"conversations": 2, "deliveries": 3},
        "n-2": {"conversations": 1, "deliveries": 1},
    }
    assert [a["text"] for a in stats["conversations"]["a:two"]["activities"]] == ["first", "other"]
    assert stats["conversations"]["a:three"]["throttled"] == 1
    assert stats["conversations"]["a:blocked"]["byCode"] == {"MessageWritesBlocked": 1}


async def test_reset_clears_stats_windows_and_faults_unless_kept(teams: Teams) -> None:
    teams.clock.advance(10)
    await sends(teams, "a:c", 7)
    await teams.faults({"match": {"conversation": "a:c"}, "kind": "503"})

    await teams.call("POST", "_emulator/reset", json={"keep_faults": True})
    kept = await teams.send("a:c")
    await teams.call("POST", "_emulator/reset")
    cleared = [(await teams.send("a:c")).status for _ in range(7)]

    assert kept.status == 503
    assert cleared == [201] * 7
    assert (await teams.stats())["totals"]["accepted"] == 7


async def test_config_endpoint_merges_and_replaces(teams: Teams) -> None:
    merged = await teams.call("POST", "_emulator/config", json={"tenant_rate": 2})
    teams.clock.advance(10)
    limited = [(await teams.send(f"a:{i}")).status for i in range(3)]
    replaced = await teams.call("POST", "_emulator/config?mode=replace", json={})
    after = [(await teams.send(f"a:{i}")).status for i in range(3)]
    typo = await teams.call("POST", "_emulator/config", json={"tenant_rat": 2})

    assert (merged.status, replaced.status) == (200, 200)
    assert limited == [201, 201, 429]
    assert after == [201, 201, 201]
    assert typo.status == 400


# ---- auth -------------------------------------------------------------------------------------------------


async def token(teams: Teams, client_id: str, secret: str = "s", tenant: str = "botframework.com") -> Reply:
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": secret,
        "scope": "https://api.botframework.com/.default",
    }
    return await teams.call("POST", f"{tenant}/oauth2/v2.0/token", data=form)


async def test_require_auth_accepts_only_unexpired_tokens_it_issued(start_teams: StartTeams) -> None:
    teams = await start_teams(TeamsEmulatorConfig(require_auth=True, credentials={APP_ID: "secret"}))
    issued = await token(teams, APP_ID, "secret", tenant=TENANT)
    wrong_secret = await token(teams, APP_ID, "nope")
    bearer = {"Authorization": f"Bearer {issued.body['access_token']}"}
    activity = {"type": "message", "text": "x"}

    anonymous = await teams.call("POST", "v3/conversations/a:c/activities", json=activity)
    forged = await teams.call(
        "POST", "v3/conversations/a:c/activities", json=activity, headers={"Authorization": "Bearer forged"}
    )
    authorized = await teams.call("POST", "v3/conversations/a:c/activities", json=activity, headers=bearer)
    teams.clock.advance(3600)
    expired = await teams.call("POST", "v3/conversations/a:c/activities", json=activity, headers=bearer)

    assert issued.status == 200
    assert issued.body["token_type"] == "Bearer"
    assert issued.body["expires_in"] == 3600
    assert wrong_secret.status == 401
    assert (anonymous.status, forged.status, authorized.status, expired.status) == (401, 401, 201, 401)
    assert anonymous.body == {"message": "Authorization has been denied for this request."}


async def test_token_client_id_is_the_bot_for_per_bot_limits(teams: Teams) -> None:
    bearers = []
    for client in ("bot-a", "bot-b"):
        access = (await token(teams, client)).body["access_token"]
        bearers.append({"Authorization": f"Bearer {access}"})
    activity = {"type": "message", "from": {"id": "28:same-sender"}}
    teams.clock.advance(10)

    async def post(headers: dict[str, str]) -> int:
        return (
            await teams.call("POST", "v3/conversations/a:c/activities", json=activity, headers=headers)
        ).status

    first = [await post(bearers[0]) for _ in range(8)]
    second = [await post(bearers[1]) for _ in range(7)]

    assert first == [201] * 7 + [429]
    assert second == [201] * 7


async def test_token_endpoint_rejects_other_grants(teams: Teams) -> None:
    reply = await teams.call("POST", "botframework.com/oauth2/v2.0/token", data={"grant_type": "password"})

    assert reply.status == 400
    assert reply.body["error"] == "unsupported_grant_type"


# ---- the real clients -------------------------------------------------------------------------------------


async def test_agents_sdk_connector_client_creates_and_sends_against_the_emulator(teams: Teams) -> None:
    from microsoft_agents.activity import Activity, ChannelAccount, ConversationParameters
    from microsoft_agents.hosting.core.connector.client import ConnectorClient

    client = ConnectorClient(teams.base, token="")
    try:
        created = await client.conversations.create_conversation(
            ConversationParameters(
                bot=ChannelAccount(id=f"28:{APP_ID}"),
                members=[ChannelAccount(id="aad-user-1")],
                tenant_id=TENANT,
                channel_data={"tenant": {"id": TENANT}},
            )
        )
        sent = await client.conversations.send_to_conversation(
            created.id,
            Activity(type="message", text="from the SDK", channel_data={"notificationId": "sdk-1"}),
        )
        await teams.faults({"match": {"conversation": created.id}, "kind": "blocked", "times": 1})
        with pytest.raises(aiohttp.ClientResponseError) as send_error:
            await client.conversations.send_to_conversation(created.id, Activity(type="message", text="x"))
        await teams.faults({"match": {"user": "aad-user-1"}, "kind": "503", "times": 1})
        with pytest.raises(aiohttp.ClientResponseError) as create_error:
            await client.conversations.create_conversation(
                ConversationParameters(members=[ChannelAccount(id="aad-user-1")], tenant_id=TENANT)
            )
    finally:
        await client.close()

    assert created.id.startswith("a:")
    assert created.service_url == teams.base
    stats = await teams.stats()
    assert stats["conversations"][created.id]["activities"][0]["text"] == "from the SDK"
    assert stats["conversations"][created.id]["activities"][0]["id"] == sent.id
    # send_to_conversation puts the response body in the error's message ...
    assert send_error.value.status == 403
    assert "MessageWritesBlocked" in send_error.value.message
    # ... create_conversation does not: only the status (and headers, e.g. Retry-After) survive.
    assert create_error.value.status == 503
    assert "ServiceUnavailable" not in create_error.value.message


def test_load_config_reads_the_file_and_flags_override_it(tmp_path: Path) -> None:
    path = tmp_path / "teams.json"
    path.write_text(json.dumps({"tenant_rate": 30, "faults": [{"kind": "blocked", "match": {"user": "u"}}]}))

    from devhost.emulators.teams import _parse_args

    config = load_config(_parse_args(["--config", str(path), "--require-auth", "--seed", "9"]))
    plain = load_config(_parse_args(["--config", str(path), "--tenant-rate", "60"]))

    assert (config.tenant_rate, config.require_auth, config.seed) == (30, True, 9)
    assert len(config.fault_rules()) == 1
    assert plain.tenant_rate == 60


def test_command_line_prints_its_base_url_and_serves(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    with subprocess.Popen(
        [sys.executable, "-m", "devhost", "emulate-teams", "--port", "0"],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            base = process.stdout.readline().strip()

            async def create() -> int:
                async with (
                    aiohttp.ClientSession() as http,
                    http.post(base + "v3/conversations", json={"members": [{"id": "u"}]}) as response,
                ):
                    return response.status

            status = asyncio.run(create())
        finally:
            process.terminate()
            process.wait(timeout=10)

    assert base.startswith("http://127.0.0.1:")
    assert status == 201
    assert process.returncode == 0


def test_emulator_key_exposes_the_running_state() -> None:
    app = build_app(TeamsEmulatorConfig(tenant_rate=7))

    assert app[emulator_key()].config.tenant_rate == 7


async def test_a_rule_on_a_channel_also_covers_its_reply_threads(teams: Teams) -> None:
    channel = "19:general@thread.tacv2"
    await teams.faults({"match": {"conversation": channel}, "kind": "not_in_roster"})

    thread = await teams.send(f"{channel};messageid=1700000000000")
    other = await teams.send("19:random@thread.tacv2")

    assert thread.status == 403
    assert thread.body["error"]["code"] == "BotNotInConversationRoster"
    assert other.status == 201


async def test_updates_and_deletes_count_against_the_send_windows(teams: Teams) -> None:
    # A DELETE has no body, so the bot is known from its token; every call here uses the same one.
    access = (await token(teams, APP_ID)).body["access_token"]
    bearer = {"Authorization": f"Bearer {access}"}
    activity = {"type": "message", "text": "v1"}
    teams.clock.advance(10)
    sent = [
        await teams.call("POST", "v3/conversations/a:c/activities", json=activity, headers=bearer)
        for _ in range(7)
    ]
    path = f"v3/conversations/a:c/activities/{sent[0].body['id']}"

    update = await teams.call("PUT", path, json={"type": "message", "text": "v2"}, headers=bearer)
    delete = await teams.call("DELETE", path, headers=bearer)
    teams.clock.advance(float(update.headers["Retry-After"]))
    retried = await teams.call("DELETE", path, headers=bearer)

    assert [r.status for r in sent] == [201] * 7
    assert (update.status, delete.status, retried.status) == (429, 429, 200)


# ---- call latency (the ``azure`` latency profile) ---------------------------------------------------


async def test_call_latency_delays_every_v3_answer_with_seeded_draws_around_the_median(
    start_teams: StartTeams,
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    config = TeamsEmulatorConfig(call_latency_ms=150, seed=4)
    teams = await start_teams(config, sleep=sleep)
    created = await teams.create("aad-user-1")
    statuses = await sends(teams, created.body["id"], 5)
    first_run = list(slept)
    assert (await teams.call("POST", "_emulator/reset", json={})).status == 200
    slept.clear()
    await teams.create("aad-user-1")
    await sends(teams, created.body["id"], 5)

    assert statuses == [201] * 5
    assert len(first_run) == 6  # one draw per /v3 call, none for the _emulator routes
    assert all(0 < s <= 3.0 for s in first_run)
    assert 0.05 < sorted(first_run)[3] < 0.45  # around the 150 ms median
    assert slept == first_run  # a reset restarts the seeded draws


async def test_no_call_latency_by_default(start_teams: StartTeams) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    teams = await start_teams(sleep=sleep)
    await teams.create("aad-user-1")

    assert slept == []


def test_latency_flag_sets_the_call_latency_and_an_explicit_median_wins() -> None:
    from devhost.emulators.teams import _parse_args

    azure = load_config(_parse_args(["--latency", "azure"]))
    from_env = load_config(_parse_args([]), {"DEVHOST_LATENCY": "azure"})
    explicit = load_config(_parse_args(["--latency", "azure", "--call-latency-ms", "80"]))
    none = load_config(_parse_args(["--latency", "none"]), {"DEVHOST_LATENCY": "azure"})

    assert (azure.call_latency_ms, from_env.call_latency_ms) == (150, 150)
    assert explicit.call_latency_ms == 80
    assert none.call_latency_ms == 0
