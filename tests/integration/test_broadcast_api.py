"""``/api/broadcasts`` end to end: function_app on the devhost (HTTP + the real Durable replay engine),
the real sender against the Teams emulator over HTTP, tables and queues on Azurite.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from devhost.azurite import free_port
from devhost.emulators.serving import start_on_loopback
from devhost.emulators.teams import build_app
from devhost.emulators.teams_state import TeamsEmulatorConfig
from devhost.host import DevHost
from devhost.settings import HostSettings
from proactive import composition
from proactive.storage.paging import encode_continuation
from tests.support.function_app import load_function_app
from tests.support.ids import AadIds
from tests.support.references import stored_reference

pytestmark = pytest.mark.azurite

KEY = "integration-key"
TENANT_A = "aaaaaaaa-1111-4111-8111-111111111111"
TENANT_B = "bbbbbbbb-2222-4222-8222-222222222222"


aad = AadIds(0x600000)


@dataclass
class Api:
    host: DevHost
    http: aiohttp.ClientSession
    emulator: str

    @property
    def base(self) -> str:
        return f"{self.host.origin}/api"

    async def call(
        self, method: str, path: str, *, key: bool = True, **kwargs: Any
    ) -> aiohttp.ClientResponse:
        headers = {"x-functions-key": KEY} if key else {}
        response = await self.http.request(method, f"{self.base}/{path}", headers=headers, **kwargs)
        await response.read()
        return response

    async def wait_done(self, location: str, within: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            async with self.http.get(location, headers={"x-functions-key": KEY}) as response:
                if response.status == 200:
                    return dict(await response.json())
                assert response.status == 202
            await asyncio.sleep(0.05)
        raise TimeoutError(location)

    async def emulator_stats(self) -> dict[str, Any]:
        async with self.http.get(f"{self.emulator}_emulator/stats") as response:
            return dict(await response.json())

    async def seed(self, tenant: str, users: range) -> None:
        references = composition.services().references
        for n in users:
            await references.upsert(
                stored_reference(
                    tenant,
                    aad(n),
                    conversation_id=f"a:conv-{n}",
                    service_url=self.emulator,
                    bot_id="28:bot",
                    updated_at=datetime.now(UTC),
                )
            )


@pytest.fixture
async def emulator() -> AsyncIterator[str]:
    runner, base_url = await start_on_loopback(build_app(TeamsEmulatorConfig()), shutdown_timeout=0.5)
    yield base_url
    await runner.cleanup()


@pytest.fixture
async def api(
    monkeypatch: pytest.MonkeyPatch, storage_connection_string: str, unique_name: str, emulator: str
) -> AsyncIterator[Api]:
    environ = {
        "AzureWebJobsStorage": storage_connection_string,
        "BOT_AUTH": "anonymous",
        "DEV_OUTBOUND_HOSTS": "127.0.0.1",
        "TENANT_ALLOW_LIST": f"{TENANT_A},{TENANT_B}",
        "BATCH_SIZE": "5",
        "STATUS_RETRY_AFTER_SECONDS": "1",
        "QUEUE_INSTALLS": f"{unique_name}-installs",
        "QUEUE_DELIVERIES_RETRY": f"{unique_name}-retry",
        **{
            f"TABLE_{t.upper()}": f"{unique_name}{t}"
            for t in ("references", "preferences", "notifications", "deliveries", "deadletters")
        },
    }
    module = load_function_app(monkeypatch, environ)
    host = DevHost(module.app, HostSettings({"DEVHOST_FUNCTION_KEY": KEY}, {}), port=free_port())
    async with aiohttp.ClientSession() as http, host:
        try:
            yield Api(host, http, emulator)
        finally:
            await host.runtime.idle()
            await composition.services().close()
    assert host.runtime.errors == []


def broadcast(
    notification_id: str | None, users: range, tenant: str = TENANT_A, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "audience": {"users": [{"tenantId": tenant, "aadObjectId": aad(n)} for n in users]},
        "message": {"text": "Deploy 42 finished"},
        **extra,
    }
    if notification_id:
        body["notificationId"] = notification_id
    return body


async def _sent(api: Api, notification_id: str, users: range, tenant: str = TENANT_A) -> dict[str, Any]:
    await api.seed(tenant, users)
    response = await api.call("POST", "broadcasts", json=broadcast(notification_id, users, tenant))
    assert response.status == 202
    return await api.wait_done(response.headers["Location"])


async def test_post_answers_202_with_location_and_polling_reaches_completion(api: Api) -> None:
    await api.seed(TENANT_A, range(12))
    await api.seed(TENANT_B, range(100, 104))
    body = broadcast("deploy-42", range(12))
    body["audience"]["tenants"] = [TENANT_B]
    response = await api.call("POST", "broadcasts", json=body)
    assert response.status == 202
    payload = await response.json()
    status_url = f"{api.base}/broadcasts/deploy-42"
    assert payload == {"id": "deploy-42", "status": "accepted", "statusUri": status_url}
    assert response.headers["Location"] == status_url and response.headers["Retry-After"] == "1"
    done = await api.wait_done(response.headers["Location"])
    assert done["runtimeStatus"] == "Completed" and done["status"] == "completed"

    status = await (await api.call("GET", "broadcasts/deploy-42")).json()
    assert status["status"] == "completed"
    assert status["counts"]["sent"] == 16 and status["counts"]["total"] == 16
    assert status["startedAt"] and status["completedAt"] and status["throttled"] == 0
    stats = await api.emulator_stats()
    assert stats["byNotification"]["deploy-42"] == {"conversations": 16, "deliveries": 16}
    assert stats["duplicates"] == []


async def follow_async_pattern(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str], within: float = 30.0
) -> tuple[int, dict[str, Any], list[aiohttp.ClientResponse]]:
    """The asynchronous request-response pattern as Logic Apps and Power Automate run it.

    POST; while the answer is 202, wait its ``Retry-After`` and GET its ``Location`` with the same
    authentication as the first request; the first non-202 answer is the result. Returns its status, its
    body and every answer seen.
    """
    seen: list[aiohttp.ClientResponse] = []
    response = await http.post(url, json=body, headers=headers)
    await response.read()
    seen.append(response)
    deadline = time.monotonic() + within
    while response.status == 202 and time.monotonic() < deadline:
        await asyncio.sleep(float(response.headers["Retry-After"]))
        response = await http.get(response.headers["Location"], headers=headers)
        await response.read()
        seen.append(response)
    return response.status, dict(await response.json()), seen


@pytest.mark.parametrize("key_in", ["header", "query"])
async def test_a_logic_apps_style_client_follows_location_to_the_finished_status(
    api: Api, key_in: str
) -> None:
    await api.seed(TENANT_A, range(4))
    url, headers = f"{api.base}/broadcasts", {"x-functions-key": KEY}
    if key_in == "query":
        url, headers = f"{url}?code={KEY}", {}
    status, result, seen = await follow_async_pattern(
        api.http, url, broadcast(f"pattern-{key_in}", range(4)), headers
    )
    assert status == 200, result
    assert result["status"] == "completed" and result["counts"]["sent"] == 4
    assert len(seen) >= 2 and all(r.status == 202 for r in seen[:-1])
    assert "Location" not in seen[-1].headers
    for response in seen:
        # Never the Durable management URLs: in Azure they carry the extension's system key.
        assert "webhooks" not in json.dumps(dict(response.headers)) + await response.text()
    assert (await api.emulator_stats())["byNotification"][f"pattern-{key_in}"]["deliveries"] == 4


async def test_the_status_location_needs_the_function_key(api: Api) -> None:
    await api.seed(TENANT_A, range(1))
    response = await api.call("POST", "broadcasts", json=broadcast("keyed", range(1)))
    assert "code=" not in response.headers["Location"]  # the key came in a header: none in the URL
    async with api.http.get(response.headers["Location"]) as keyless:
        assert keyless.status == 401
    await api.wait_done(response.headers["Location"])


async def test_the_same_notification_id_answers_with_the_existing_broadcast(api: Api) -> None:
    await api.seed(TENANT_A, range(3))
    first = await api.call("POST", "broadcasts", json=broadcast("once-only", range(3)))
    second = await api.call("POST", "broadcasts", json=broadcast("once-only", range(3)))
    assert (first.status, second.status) == (202, 202)
    assert (await first.json())["id"] == (await second.json())["id"] == "once-only"
    await api.wait_done(first.headers["Location"])
    clash = await api.call("POST", "broadcasts", json=broadcast("once-only", range(2)))
    assert clash.status == 409 and (await clash.json())["error"]["code"] == "notification_conflict"
    assert [r.instance_id for r in await api.host.runtime.list_instances() if r.name == "broadcast"] == [
        "once-only"
    ]
    assert (await api.emulator_stats())["byNotification"]["once-only"]["deliveries"] == 3


async def test_deliveries_as_json_and_csv_with_status_filter_and_paging(api: Api) -> None:
    await _sent(api, "report-me", range(7))
    seen: list[str] = []
    params: dict[str, str] = {"pageSize": "3"}
    while True:
        page = await (await api.call("GET", "broadcasts/report-me/deliveries", params=params)).json()
        assert len(page["items"]) <= 3
        seen.extend(item["recipientKey"] for item in page["items"])
        if page["continuation"] is None:
            break
        params = {"pageSize": "3", "continuation": page["continuation"]}
    assert sorted(seen) == sorted(f"user:{aad(n)}" for n in range(7))
    failed = await (
        await api.call("GET", "broadcasts/report-me/deliveries", params={"status": "failed"})
    ).json()
    assert failed == {"items": [], "continuation": None}

    response = await api.call(
        "GET", "broadcasts/report-me/deliveries", params={"format": "csv", "pageSize": "5"}
    )
    assert response.status == 200 and response.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert len(rows) == 5 and {r["status"] for r in rows} == {"sent"} and all(r["activityId"] for r in rows)
    assert response.headers["X-Continuation-Token"]
    bad = await api.call("GET", "broadcasts/report-me/deliveries", params={"status": "nope"})
    assert bad.status == 400 and (await bad.json())["error"]["code"] == "invalid_status"


async def test_cancel_before_send_at_sends_nothing(api: Api) -> None:
    await api.seed(TENANT_A, range(3))
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    response = await api.call("POST", "broadcasts", json=broadcast("cancel-me", range(3), sendAt=send_at))
    assert response.status == 202
    await api.host.runtime.idle()
    status = await (await api.call("GET", "broadcasts/cancel-me")).json()
    assert status["status"] == "scheduled" and status["sendAt"]
    cancelled = await api.call("POST", "broadcasts/cancel-me/cancel")
    assert cancelled.status == 202
    assert cancelled.headers["Location"] == response.headers["Location"] == f"{api.base}/broadcasts/cancel-me"
    done = await api.wait_done(response.headers["Location"])
    assert done["status"] == "cancelled"
    status = await (await api.call("GET", "broadcasts/cancel-me")).json()
    assert status["status"] == "cancelled" and status["counts"]["total"] == 0
    assert "cancel-me" not in (await api.emulator_stats())["byNotification"]
    again = await api.call("POST", "broadcasts/cancel-me/cancel")
    assert again.status == 409


async def test_patch_and_delete_go_through_the_paced_fan_out(api: Api) -> None:
    await _sent(api, "fix-me", range(6))
    patch = await api.call("PATCH", "broadcasts/fix-me", json={"message": {"text": "Deploy 42 rolled back"}})
    assert patch.status == 202 and patch.headers["Location"]
    assert patch.headers["Location"] == f"{api.base}/broadcasts/fix-me"
    assert (await patch.json())["operation"] == "update"
    done = await api.wait_done(patch.headers["Location"])
    assert done["operations"]["update"] | {"instanceId": ""} == {
        "runtimeStatus": "Completed",
        "phase": "completed",
        "instanceId": "",
    }
    stats = await api.emulator_stats()
    conversations = [stats["conversations"][f"a:conv-{n}"] for n in range(6)]
    assert [c["updates"] for c in conversations] == [1] * 6

    recall = await api.call("DELETE", "broadcasts/fix-me/messages")
    assert recall.status == 202
    assert recall.headers["Location"] == f"{api.base}/broadcasts/fix-me"
    done = await api.wait_done(recall.headers["Location"])
    assert done["operations"]["delete"]["phase"] == "completed"
    stats = await api.emulator_stats()
    assert [stats["conversations"][f"a:conv-{n}"]["deletes"] for n in range(6)] == [1] * 6
    status = await (await api.call("GET", "broadcasts/fix-me")).json()
    assert status["operations"]["update"]["runtimeStatus"] == "Completed"
    assert status["operations"]["delete"]["runtimeStatus"] == "Completed"


BAD_BODIES: list[tuple[str, bytes, int, str]] = [
    ("not json", b"{", 400, "invalid_json"),
    ("not an object", b"[]", 400, "not_an_object"),
    (
        "bad guid",
        json.dumps(
            broadcast("bad-guid", range(0)) | {"audience": {"users": [{"tenantId": "x", "aadObjectId": "y"}]}}
        ).encode(),
        400,
        "invalid_guid",
    ),
    (
        "empty audience",
        json.dumps({"notificationId": "empty", "audience": {}, "message": {"text": "x"}}).encode(),
        400,
        "empty_audience",
    ),
    (
        "no message",
        json.dumps({"notificationId": "mute", "audience": {"tenants": [TENANT_A]}}).encode(),
        400,
        "missing_field",
    ),
    ("bad id", json.dumps(broadcast("a/b", range(1))).encode(), 400, "invalid_notification_id"),
    (
        "too large",
        json.dumps(broadcast("huge", range(1)) | {"message": {"text": "x" * 90_000}}).encode(),
        413,
        "message_too_large",
    ),
    (
        "tenant not allowed",
        json.dumps(broadcast("elsewhere", range(1), tenant="cccccccc-3333-4333-8333-333333333333")).encode(),
        403,
        "tenant_not_allowed",
    ),
]


async def test_every_bad_input_class_returns_the_contract_body_and_starts_nothing(api: Api) -> None:
    for name, raw, status, code in BAD_BODIES:
        response = await api.call("POST", "broadcasts", data=raw)
        assert response.status == status, name
        error = (await response.json())["error"]
        assert set(error) == {"code", "message", "details"}, name
        assert code in {error["code"], *(d.get("code") for d in error["details"])}, (name, error)
    assert await api.host.runtime.list_instances() == []
    for notification_id in ("bad-guid", "empty", "mute", "huge", "elsewhere"):
        assert (await api.call("GET", f"broadcasts/{notification_id}")).status == 404


async def test_every_route_needs_the_function_key(api: Api) -> None:
    for method, path in [
        ("POST", "broadcasts"),
        ("GET", "broadcasts/x"),
        ("GET", "broadcasts/x/deliveries"),
        ("POST", "broadcasts/x/cancel"),
        ("PATCH", "broadcasts/x"),
        ("DELETE", "broadcasts/x/messages"),
    ]:
        response = await api.call(method, path, key=False, json=broadcast("keyless", range(1)))
        assert response.status == 401, (method, path)
    assert await api.host.runtime.list_instances() == []


def _token(position: dict[str, str]) -> str:
    return encode_continuation(position)


async def test_malformed_queries_and_bodies_on_sent_broadcasts_answer_4xx_naming_the_field(api: Api) -> None:
    await _sent(api, "probe-me", range(2))
    deep = base64.urlsafe_b64encode(b"[" * 5_000).decode()  # deeper than the recursion limit, under 8 KB
    cases: list[tuple[str, str, dict[str, Any], int, str, str]] = [
        ("GET", "deliveries", {"params": {"pageSize": "²"}}, 400, "invalid_page_size", "pageSize"),
        ("GET", "deliveries", {"params": {"pageSize": "-1"}}, 400, "invalid_page_size", "pageSize"),
        ("GET", "deliveries", {"params": {"pageSize": " 5"}}, 400, "invalid_page_size", "pageSize"),
        ("GET", "deliveries", {"params": {"continuation": _token({"t": "-1", "c": ""})}}, 400, "invalid_continuation", "continuation"),
        ("GET", "deliveries", {"params": {"continuation": _token({"t": "²", "c": ""})}}, 400, "invalid_continuation", "continuation"),
        ("GET", "deliveries", {"params": {"continuation": _token({"t": "7", "c": ""})}}, 400, "invalid_continuation", "continuation"),
        ("GET", "deliveries", {"params": {"continuation": deep}}, 400, "invalid_continuation", "continuation"),
        ("GET", "deliveries", {"params": {"continuation": "%%%"}}, 400, "invalid_continuation", "continuation"),
        ("PATCH", "", {"data": b"[" * 200_000}, 400, "invalid_json", ""),
        ("PATCH", "", {"data": io.BytesIO(b'{"message":' + b"[" * 3_000_000)}, 413, "body_too_large", ""),
    ]  # fmt: skip
    for method, tail, kwargs, status, code, field in cases:
        response = await api.call(method, f"broadcasts/probe-me{'/' + tail if tail else ''}", **kwargs)
        assert response.status == status, (method, tail, kwargs.get("params"), await response.text())
        error = (await response.json())["error"]
        assert error["code"] == code and error["details"][0]["field"] == field, error
    stats = await api.emulator_stats()
    assert stats["conversations"]["a:conv-0"]["updates"] == 0  # no PATCH went through
