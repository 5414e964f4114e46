"""The HTTP host: triggers, keys, methods, route parameters, the durable client binding and webhooks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import pytest

from devhost.azurite import free_port
from devhost.durable import ManualClock
from devhost.durable.azurite_store import AzuriteStore
from devhost.durable.store import MemoryStore
from devhost.host import DevHost, build_store, compile_route, parse_args
from devhost.host.triggers import Ncrontab
from devhost.settings import HostSettings
from tests.devhost.apps import sample
from tests.devhost.conftest import StoreFactory

KEY = "test-key"


@pytest.fixture
async def host(make_store: StoreFactory) -> AsyncIterator[DevHost]:
    settings = HostSettings({"DEVHOST_FUNCTION_KEY": KEY}, {})
    async with DevHost(sample.app, settings, store=make_store(), port=free_port()) as running:
        yield running
    assert running.runtime.errors == []


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_anonymous_route_is_open(host: DevHost, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{host.origin}/api/health") as response:
        assert response.status == 200 and await response.text() == "ok"


async def test_function_route_needs_the_key_in_header_or_code(
    host: DevHost, http: aiohttp.ClientSession
) -> None:
    url = f"{host.origin}/api/echo/hi"
    async with http.get(url) as response:
        assert response.status == 401
    async with http.get(url, headers={"x-functions-key": "wrong"}) as response:
        assert response.status == 401
    async with http.get(url, headers={"x-functions-key": KEY}) as response:
        assert response.status == 200
    async with http.get(url, params={"code": KEY, "q": "v"}) as response:
        assert response.status == 200
        assert await response.json() == {"word": "hi", "count": None, "q": "v"}


async def test_route_parameters_and_int_constraint(host: DevHost, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{host.origin}/api/echo/hi/3", params={"code": KEY}) as response:
        assert (await response.json())["count"] == "3"
    async with http.get(f"{host.origin}/api/echo/hi/three", params={"code": KEY}) as response:
        assert response.status == 404


async def test_wrong_method_is_405_and_unknown_route_404(host: DevHost, http: aiohttp.ClientSession) -> None:
    async with http.delete(f"{host.origin}/api/echo/hi", params={"code": KEY}) as response:
        assert response.status == 405
    async with http.get(f"{host.origin}/api/nothing-here", params={"code": KEY}) as response:
        assert response.status == 404


async def test_function_exception_is_500(host: DevHost, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{host.origin}/api/boom") as response:
        assert response.status == 500


async def test_check_status_response_is_polled_until_completion(
    host: DevHost, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{host.origin}/api/orchestrators/hello_sequence", params={"code": KEY}, json=["Ada"]
    ) as response:
        assert response.status == 202
        payload = await response.json()
        location = response.headers["Location"]
    assert location == payload["statusQueryGetUri"] and "/runtime/webhooks/durabletask/instances/" in location
    for _ in range(200):
        async with http.get(location) as status:
            if status.status == 200:
                body = await status.json()
                break
            assert status.status == 202
        await asyncio.sleep(0.02)
    assert body["runtimeStatus"] == "Completed" and body["output"] == ["Hello Ada!"]


async def test_webhooks_need_the_key(host: DevHost, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{host.origin}/runtime/webhooks/durabletask/instances/x") as response:
        assert response.status == 401
    async with http.get(
        f"{host.origin}/runtime/webhooks/durabletask/instances/x", params={"code": KEY}
    ) as response:
        assert response.status == 404


async def test_client_raise_event_get_status_and_terminate(
    host: DevHost, http: aiohttp.ClientSession
) -> None:
    instance_id = await host.runtime.start_new("wait_two_events")
    headers = {"x-functions-key": KEY}
    for name, value in (("A", 1), ("B", 2)):
        async with http.post(
            f"{host.origin}/api/instances/{instance_id}/events/{name}", headers=headers, json=value
        ) as r:
            assert r.status == 202
    await host.runtime.wait_for(instance_id)
    async with http.get(f"{host.origin}/api/instances/{instance_id}", headers=headers) as response:
        status = await response.json()
    assert status["runtimeStatus"] == "Completed" and status["output"] == [1, 2]

    waiting = await host.runtime.start_new("wait_two_events")
    async with http.post(f"{host.origin}/api/instances/{waiting}/terminate", headers=headers) as response:
        assert response.status == 202
    record = await host.runtime.wait_for(waiting)
    assert record.status == "Terminated"


async def test_client_signal_and_read_entity_state(host: DevHost, http: aiohttp.ClientSession) -> None:
    headers = {"x-functions-key": KEY}
    async with http.get(f"{host.origin}/api/counters/c1", headers=headers) as response:
        assert response.status == 404
    for amount in (2, 3):
        async with http.post(
            f"{host.origin}/api/counters/c1", headers=headers, params={"amount": amount}
        ) as r:
            assert r.status == 202
    await host.runtime.idle()
    async with http.get(f"{host.origin}/api/counters/c1", headers=headers) as response:
        assert await response.json() == 5


async def test_stats_endpoint_reports_counters(host: DevHost, http: aiohttp.ClientSession) -> None:
    await host.runtime.wait_for(await host.runtime.start_new("hello_sequence", None, '["x"]'))
    async with http.get(f"{host.origin}/_devhost/stats") as response:
        stats = await response.json()
    assert stats["episodes"] == 2 and stats["activityInvocations"] == 1


async def test_admin_api_runs_a_timer_function_on_demand(host: DevHost, http: aiohttp.ClientSession) -> None:
    before = len(sample.TIMER_RUNS)
    async with http.post(f"{host.origin}/admin/functions/nightly", params={"code": KEY}, json={}) as response:
        assert response.status == 202
    await host.runtime.idle()
    assert len(sample.TIMER_RUNS) == before + 1


def test_route_templates_compile_like_azure() -> None:
    pattern = compile_route("broadcasts/{id}/deliveries/{*rest}")
    match = pattern.match("/broadcasts/b1/deliveries/a/b")
    assert match is not None and match.group("id") == "b1" and match.group("rest") == "a/b"
    assert compile_route("x/{n:int}").match("/x/abc") is None


def test_serve_keeps_durable_state_in_storage_unless_told_memory() -> None:
    settings = HostSettings({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}, {})
    stored = build_store(settings, memory=parse_args([]).memory)
    assert isinstance(stored, AzuriteStore) and stored.instances_table == "TestHubNameDevInstances"
    assert isinstance(build_store(settings, memory=parse_args(["--memory"]).memory), MemoryStore)


def test_ncrontab_six_fields_with_seconds() -> None:
    start = ManualClock().now()  # 2026-01-01 00:00:00 UTC, a Thursday
    assert Ncrontab("*/15 * * * * *").next_after(start) == start + timedelta(seconds=15)
    assert Ncrontab("0 0 3 * * *").next_after(start) == start + timedelta(hours=3)
    assert Ncrontab("0 30 9 * * 1").next_after(start) == start + timedelta(days=4, hours=9, minutes=30)
    with pytest.raises(ValueError, match="6 fields"):
        Ncrontab("* * * * *")


@pytest.mark.azurite
async def test_queue_message_failing_max_dequeue_count_lands_in_poison(
    storage_connection_string: str,
) -> None:
    from azure.storage.queue import TextBase64EncodePolicy
    from azure.storage.queue.aio import QueueClient

    from devhost.host.triggers import TriggerService

    settings = HostSettings(
        {"AzureWebJobsStorage": storage_connection_string, "DEVHOST_FUNCTION_KEY": KEY},
        {"extensions": {"queues": {"maxDequeueCount": 2, "visibilityTimeout": "00:00:00"}}},
    )
    host = DevHost(sample.app, settings, port=free_port())
    host.triggers = TriggerService(host, settings, poll_interval=0.05)
    policy = TextBase64EncodePolicy()
    async with QueueClient.from_connection_string(
        storage_connection_string, "devhost-jobs", message_encode_policy=policy
    ) as queue:
        with contextlib.suppress(Exception):
            await queue.create_queue()
        async with host:
            await queue.send_message("fail-me")
            await queue.send_message("good")
            async with QueueClient.from_connection_string(
                storage_connection_string, "devhost-jobs-poison"
            ) as poison:
                moved = []
                for _ in range(200):
                    with contextlib.suppress(Exception):
                        moved = await poison.peek_messages(max_messages=5)
                        if moved:
                            break
                    await asyncio.sleep(0.05)

        assert [base64.b64decode(m.content).decode() for m in moved] == ["fail-me"]
        assert [d for t, d in sample.QUEUE_SEEN if t == "fail-me"] == [1, 2]
        assert ("good", 1) in sample.QUEUE_SEEN
        assert await queue.peek_messages() == []
