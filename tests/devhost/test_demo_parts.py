"""The demo's pieces on their own (issue 17): audience plan, commands, the Logic-Apps-style client against a
small scripted server, the report, the chart. The whole demo against the real stack is ``test_demo.py``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from devhost.demo.audience import (
    AudienceOptions,
    Seeder,
    blocked_faults,
    graph_directory,
    plan_audience,
    quiet_command,
)
from devhost.demo.client import BroadcastApiError, LogicAppClient
from devhost.demo.progress import TenantProgress, plain_line
from devhost.demo.report import PNG_SIGNATURE, delivery_report, parse_csv, rate_series, write_chart
from devhost.demo.run import _quiet_until
from devhost.emulators.graph_model import GraphEmulatorConfig
from devhost.emulators.serving import start_on_loopback
from devhost.run import DEV_FUNCTION_KEY, function_key, next_steps
from devhost.seed import SEED_TENANT, uninstalled_users
from devhost.stack import DEV_TEAMS_APP_ID, catalog_entry, with_directory_users


def test_plan_spreads_users_and_channels_over_tenants_and_picks_disjoint_behaviours() -> None:
    options = AudienceOptions(
        tenants=3, users=200, channels=7, group_chats=2, blocked=0.05, opted_out=0.1, quiet=0.05
    )
    plans = plan_audience(options)

    assert [len(p.users) for p in plans] == [67, 67, 66]
    assert [len(p.channels) for p in plans] == [3, 2, 2]
    assert all(len(p.group_chats) == 2 for p in plans)
    assert len({p.tenant_id for p in plans}) == 3
    for plan in plans:
        assert not (plan.blocked & plan.opted_out) and not (plan.blocked & plan.quiet)
        assert not (plan.opted_out & plan.quiet)
        assert len(plan.blocked) == round(len(plan.users) * 0.05)
        assert plan.recipients == len(plan.users) + len(plan.channels) + 2
        assert sum(c.general for c in plan.channels) == min(2, len(plan.channels))  # one General per team
    assert plan_audience(options) == plans  # deterministic: a run can be repeated
    assert len(blocked_faults(plans)) == sum(len(p.blocked) for p in plans)


def test_quiet_window_covers_now_and_ends_on_a_whole_minute_in_the_users_zone() -> None:
    (plan,) = plan_audience(AudienceOptions(tenants=1, users=1, channels=0, group_chats=0))
    user = plan.users[0]  # Europe/London: UTC+0 in December
    now = datetime(2026, 12, 3, 18, 20, 41, tzinfo=UTC)
    until = _quiet_until(now, 20)

    assert until == datetime(2026, 12, 3, 18, 22, tzinfo=UTC)
    assert _quiet_until(datetime(2026, 12, 3, 18, 20, 40, tzinfo=UTC), 20) == datetime(
        2026, 12, 3, 18, 21, tzinfo=UTC
    )
    assert quiet_command(user, until, now) == "quiet 16:20-18:22"


def test_users_who_never_talked_are_picked_first_left_out_of_capture_and_listed_only_in_graph() -> None:
    options = AudienceOptions(tenants=2, users=100, channels=0, group_chats=0, blocked=0.1, never_talked=0.2)
    plans = plan_audience(options)
    directory = graph_directory(plans)
    seeder = Seeder(None, "http://host", "http://teams")  # type: ignore[arg-type]  # never posts here

    for plan in plans:
        assert len(plan.never_talked) == 10 and len(plan.blocked) == 5  # shares of all 50 users
        assert not plan.never_talked & (plan.blocked | plan.opted_out | plan.quiet)
        assert {u["id"] for u in directory[plan.tenant_id]} == set(plan.never_talked)
        assert len(plan.captured) == 40 and plan.recipients == 50  # the broadcast still has every user
    captured = {a["from"]["aadObjectId"] for a in seeder.installs(plans)}
    assert captured.isdisjoint(set().union(*(plan.never_talked for plan in plans)))
    assert len(captured) == 80


def test_seed_adds_directory_users_to_the_running_graph_config_keeping_the_catalog_and_endpoints() -> None:
    running = {
        "tenants": [{"id": SEED_TENANT, "users": [{"id": "u0"}], "apps": [catalog_entry("my-app")]}],
        "messagingEndpoint": "http://127.0.0.1:7071/api/messages",
        "teamsServiceUrl": "http://127.0.0.1:7072/",
    }
    users = uninstalled_users(SEED_TENANT, 2)
    updated = with_directory_users(running, SEED_TENANT, [*users, {"id": "u0"}], DEV_TEAMS_APP_ID)
    other = with_directory_users(updated, "another-tenant", users, DEV_TEAMS_APP_ID)

    (tenant,) = updated["tenants"]
    assert [u["id"] for u in tenant["users"]] == ["u0", *(u["id"] for u in users)]  # no duplicates
    assert uninstalled_users(SEED_TENANT, 2) == users  # stable ids
    assert tenant["apps"] == [catalog_entry("my-app")]
    assert other["tenants"][1]["apps"][0]["externalId"] == "my-app"  # the app the emulator already lists
    assert other["messagingEndpoint"] == running["messagingEndpoint"]
    assert GraphEmulatorConfig.model_validate(other).tenant("another-tenant") is not None


def test_make_run_key_is_the_fixed_development_key_unless_one_is_set(tmp_path: Path) -> None:
    assert function_key({}, tmp_path) == DEV_FUNCTION_KEY == "local-dev-key"
    assert function_key({"DEVHOST_FUNCTION_KEY": "mine"}, tmp_path) == "mine"


@pytest.fixture
async def scripted_api() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A broadcast API: POST 500 then 202 (Retry-After 3); polls 202 (0.5), 503 (0.25), 202 (0.5), 200."""
    seen: list[dict[str, Any]] = []
    polls = {"n": 0}

    async def start(request: web.Request) -> web.Response:
        seen.append(
            {"method": request.method, "path": request.path, "key": request.headers.get("x-functions-key")}
        )
        if len(seen) == 1:  # the first POST fails like a storage hiccup; the retry policy posts again
            return web.Response(status=500)
        headers = {"Location": "/api/broadcasts/b1", "Retry-After": "3"}
        return web.json_response({"id": "b1", "status": "accepted"}, status=202, headers=headers)

    async def status(request: web.Request) -> web.Response:
        seen.append(
            {"method": request.method, "path": request.path, "key": request.headers.get("x-functions-key")}
        )
        polls["n"] += 1
        if polls["n"] == 2:  # a transient failure: the Logic Apps retry policy tries again
            return web.json_response({}, status=503, headers={"Retry-After": "0.25"})
        if polls["n"] < 4:
            headers = {"Location": "/api/broadcasts/b1", "Retry-After": "0.5"}
            return web.json_response({"status": "running"}, status=202, headers=headers)
        return web.json_response({"status": "completed"})

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "bad"}}, status=400)

    app = web.Application()
    app.router.add_post("/api/broadcasts", start)
    app.router.add_get("/api/broadcasts/b1", status)
    app.router.add_patch("/api/broadcasts/b1", broken)
    runner, base_url = await start_on_loopback(app)
    yield base_url.rstrip("/"), seen
    await runner.cleanup()


async def test_client_follows_location_waiting_retry_after_with_the_function_key_and_retries_a_503(
    scripted_api: tuple[str, list[dict[str, Any]]],
) -> None:
    base, seen = scripted_api
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async with aiohttp.ClientSession() as session:
        client = LogicAppClient(session, base, "k3y", sleep=sleep)
        accepted = await client.start({"audience": {"tenants": ["t"]}, "message": {"text": "x"}})
        final = await client.run(accepted)
        with pytest.raises(BroadcastApiError) as refused:
            await client.update("b1", {"text": "y"})

    assert accepted.location == f"{base}/api/broadcasts/b1"
    assert final == {"status": "completed"}
    # the 500's back-off, the 202's Retry-After, each poll's, the 503's
    assert waits == [1.0, 3.0, 0.5, 0.25, 0.5]
    assert client.retries == 2
    assert [(r["method"], r["path"]) for r in seen] == [("POST", "/api/broadcasts")] * 2 + [
        ("GET", "/api/broadcasts/b1")
    ] * 4
    assert {r["key"] for r in seen} == {"k3y"}
    assert refused.value.status == 400


def test_report_counts_every_row_once_by_status_and_reason() -> None:
    text = (
        "tenantId,recipientKey,status,attempts,activityId,errorCode,errorMessage,httpStatus,notBefore,updatedAt\r\n"
        "t1,user:a,sent,1,1,,,,,\r\n"
        "t1,user:b,unreachable,1,,MessageWritesBlocked,blocked,403,,\r\n"
        "t2,user:c,suppressed,0,,opted_out_category,,,,\r\n"
        "t2,user:d,sent,2,2,,,,,\r\n"
    )
    report = delivery_report(parse_csv(text))

    assert report.total == 4 and report.adds_up()
    assert report.by_status == {"sent": 2, "unreachable": 1, "suppressed": 1}
    assert report.by_reason[("unreachable", "MessageWritesBlocked")] == 1
    assert report.by_tenant["t2"] == {"suppressed": 1, "sent": 1}


def test_rate_series_buckets_one_notifications_messages_per_second_and_marks_its_429s(tmp_path: Path) -> None:
    def conversation(tenant: str, *times: float, nid: str = "n1") -> dict[str, Any]:
        return {"tenantId": tenant, "activities": [{"notificationId": nid, "receivedAt": at} for at in times]}

    stats = {
        "conversations": {
            "a": conversation("t1", 100.0, 100.5, 101.2),
            "b": conversation("t2", 100.9),
            "c": conversation("t1", 100.1, nid="welcome-t1"),  # another notification: not counted
            # first seen through a reply without a tenant: filed under the default one; the message names t2
            "d": {
                "tenantId": "default",
                "activities": [
                    {"notificationId": "n1", "receivedAt": 102.0, "channelData": {"tenant": {"id": "t2"}}}
                ],
            },
        },
        "throttleLog": [
            {"at": 100.7, "tenantId": "t2", "operation": "send"},
            {"at": 100.8, "tenantId": "t2", "operation": "create"},
            {"at": 50.0, "tenantId": "t1", "operation": "send"},  # long before: another run
        ],
    }
    series = rate_series(stats, "n1", ["t1", "t2"])

    assert series.start == 100.0 and series.seconds == 3
    assert series.accepted == {"t1": [2, 1, 0], "t2": [1, 0, 1]}
    assert series.throttled == {"t1": [], "t2": [pytest.approx(0.7)]}
    path = write_chart(series, {"t1": "Contoso"}, {"t1": 50, "t2": 35}, tmp_path / "chart.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_plain_progress_line_names_every_number() -> None:
    progress = TenantProgress(
        "t1",
        "Contoso",
        100,
        {"sent": 60, "throttled": 3, "deferred": 4, "suppressed": 5},
        rate=49.5,
        ceiling=50,
    )
    line = plain_line(progress)

    assert line.startswith("Contoso: 65/100 done, sent 60, 429 3, failed 0, deferred 4, opted out 5")
    assert "rate 49.5/50 msg/s" in line and "\x1b" not in line


def test_make_run_prints_the_seed_command_and_the_readmes_first_broadcast() -> None:
    from tests.devhost.test_demo import _readme_first_broadcast

    path, body = _readme_first_broadcast()
    text = next_steps("http://127.0.0.1:7071", "http://127.0.0.1:7072", DEV_FUNCTION_KEY)

    assert "-m devhost seed --users 5 --host http://127.0.0.1:7071 --teams-url http://127.0.0.1:7072" in text
    assert f'"http://127.0.0.1:7071{path}"' in text
    printed = json.loads(text.split("-d '", 1)[1].split("'", 1)[0])
    assert printed == body
    assert "http://127.0.0.1:7072/_emulator/" in text


def test_live_view_renders_a_row_per_tenant_with_bar_counts_rate_and_limiter() -> None:
    from rich.console import Console

    from devhost.demo.progress import render

    tenants = {
        "t1": TenantProgress(
            "t1", "Contoso", 10, {"sent": 5, "throttled": 2}, rate=12.0, ceiling=50, limiter_rate=40
        ),
        "t2": TenantProgress(
            "t2", "Fabrikam", 10, {}, breaker="open", ceiling=50, limiter_rate=25, holding=1.5
        ),
    }
    console = Console(record=True, width=160, force_terminal=True)
    console.print(render(tenants, "poll 3 (12 s): 202 running"))
    text = console.export_text()

    assert "Contoso" in text and "5/10" in text and "12.0/50" in text and "40/50 closed" in text
    assert "25/50 open, hold 1.5s" in text
    assert "poll 3 (12 s): 202 running" in text
