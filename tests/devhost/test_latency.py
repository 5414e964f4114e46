"""The latency profile (``devhost.latency``): seeded delays, the engine's dispatch hook, the storage proxy.

Timings are only bounded from below or compared with the ``none`` profile: the machine is shared, so
a test never asserts that something was fast, only that the profile made it wait.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from devhost.azurite import free_port
from devhost.durable import DurableRuntime, FunctionIndex, ManualClock, MemoryStore
from devhost.durable.azurite_store import AzuriteStore
from devhost.durable.history import EventType, parse_iso
from devhost.durable.store import InstanceRecord
from devhost.host import parse_args, serve
from devhost.latency import (
    AZURE_DISPATCH,
    AZURE_STORAGE,
    DispatchLatency,
    LatencyProfile,
    LogNormal,
    StorageLatency,
    WorkKind,
    add_arguments,
    from_args,
    parse_connection_string,
)
from tests.devhost.apps import sample

# ---- the delay generator -------------------------------------------------------------------------------


def draws(profile: LatencyProfile, count: int) -> list[float]:
    latency = DispatchLatency(profile)
    return [latency.delays[WorkKind.ACTIVITY].next() for _ in range(count)]


def test_the_same_seed_draws_the_same_delays_and_another_seed_others() -> None:
    first = draws(LatencyProfile.named("azure", seed=42), 50)
    again = draws(LatencyProfile.named("azure", seed=42), 50)
    other = draws(LatencyProfile.named("azure", seed=43), 50)

    assert first == again
    assert first != other


def test_azure_dispatch_delays_have_a_50_ms_median_a_long_tail_and_a_1_s_cap() -> None:
    delays = draws(LatencyProfile.named("azure", seed=7), 20_000)

    assert 0.045 <= statistics.median(delays) <= 0.055
    assert max(delays) <= AZURE_DISPATCH.cap == 1.0
    assert sum(d > 0.3 for d in delays) / len(delays) > 0.02  # the tail: p90 ~180 ms, p99 ~500 ms


def test_azure_storage_delays_have_an_8_ms_median() -> None:
    latency = StorageLatency("UseDevelopmentStorage=true", LatencyProfile.named("azure", seed=7))
    delays = [latency.delays.next() for _ in range(20_000)]

    assert 0.007 <= statistics.median(delays) <= 0.009
    assert max(delays) <= AZURE_STORAGE.cap


def test_a_zero_sigma_distribution_always_draws_its_median_and_none_draws_nothing() -> None:
    profile = LatencyProfile.named("azure", seed=1)
    assert LogNormal(0.02, 0.0, 1.0).draw(profile.stream("x")) == pytest.approx(0.02)
    assert draws(LatencyProfile.named("none", seed=1), 3) == [0.0, 0.0, 0.0]


async def test_the_none_profile_never_sleeps_and_arms_timers_on_time() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    latency = DispatchLatency(sleep=sleep)
    for kind in WorkKind:
        await latency.before_work(kind)

    assert slept == []
    assert latency.timer_delay() == timedelta(0)
    assert not latency.profile.enabled


async def test_the_azure_profile_sleeps_each_draw_before_the_work_item() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    latency = DispatchLatency(LatencyProfile.named("azure", seed=5), sleep=sleep)
    await latency.before_work(WorkKind.ORCHESTRATOR)
    await latency.before_work(WorkKind.ACTIVITY)

    assert len(slept) == 2 and all(0 < s <= 1.0 for s in slept)
    assert latency.to_json()["dispatch"]["activity"]["count"] == 1


def test_the_profile_comes_from_the_environment_and_the_command_line_wins() -> None:
    env = {"DEVHOST_LATENCY": "azure", "DEVHOST_LATENCY_SEED": "11"}
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    from_env = from_args(parser.parse_args([]), env)
    from_cli = from_args(parser.parse_args(["--latency", "none", "--latency-seed", "3"]), env)
    default = from_args(parser.parse_args([]), {})

    assert (from_env.name, from_env.seed, from_env.enabled) == ("azure", 11, True)
    assert (from_cli.name, from_cli.seed, from_cli.enabled) == ("none", 3, False)
    assert default.name == "none"
    with pytest.raises(ValueError, match="unknown latency profile"):
        LatencyProfile.from_env({"DEVHOST_LATENCY": "slow"})


def test_the_profile_serialises_every_number_for_benchmark_results() -> None:
    document = LatencyProfile.named("azure", seed=9).to_json()

    assert json.loads(json.dumps(document)) == document
    assert document["dispatch"]["medianMs"] == 50
    assert document["storage"]["medianMs"] == 8
    assert document["botConnector"]["medianMs"] == 150
    assert LatencyProfile.named("none", seed=9).to_json()["dispatch"] is None


def test_development_storage_expands_to_azurite_default_endpoints() -> None:
    pairs = parse_connection_string("UseDevelopmentStorage=true")

    assert pairs["TableEndpoint"] == "http://127.0.0.1:10002/devstoreaccount1"
    assert pairs["QueueEndpoint"] == "http://127.0.0.1:10001/devstoreaccount1"
    assert pairs["AccountKey"].endswith("==")  # values keep their '='


def test_storage_that_is_not_local_or_a_profile_without_storage_latency_is_left_alone() -> None:
    remote = "DefaultEndpointsProtocol=https;AccountName=prod;AccountKey=a2V5;EndpointSuffix=core.windows.net"
    with StorageLatency(remote, LatencyProfile.named("azure", seed=1)) as latency:
        assert latency.connection_string == remote and not latency.proxies
    with StorageLatency("UseDevelopmentStorage=true", LatencyProfile.named("none", seed=1)) as latency:
        assert latency.connection_string == "UseDevelopmentStorage=true" and not latency.proxies


# ---- the engine's hook -----------------------------------------------------------------------------------


def _gaps(history: list[dict[str, object]]) -> tuple[list[float], list[float]]:
    """(activity gaps, orchestrator gaps) in seconds, from the history's timestamps.

    Activity: TaskScheduled -> its TaskCompleted (dispatch of the activity, and its run).
    Orchestrator: a TaskCompleted -> the OrchestratorStarted of the episode that applied it (which
    precedes the events it applies in history).
    """
    scheduled: dict[int, float] = {}
    activity: list[float] = []
    orchestrator: list[float] = []
    episode_started = 0.0
    for event in history:
        moment = parse_iso(str(event["Timestamp"])).timestamp()
        if event["EventType"] == EventType.ORCHESTRATOR_STARTED:
            episode_started = moment
        elif event["EventType"] == EventType.TASK_SCHEDULED:
            scheduled[int(str(event["EventId"]))] = moment
        elif event["EventType"] == EventType.TASK_COMPLETED:
            activity.append(moment - scheduled[int(str(event["TaskScheduledId"]))])
            orchestrator.append(episode_started - moment)
    return activity, orchestrator


async def _run_sequence(latency: DispatchLatency) -> tuple[list[float], list[float], DurableRuntime]:
    names = [f"n{i}" for i in range(8)]
    async with DurableRuntime(FunctionIndex.from_app(sample.app), MemoryStore(), latency=latency) as rt:
        iid = await rt.start_new("hello_sequence", None, json.dumps(names))
        record = await rt.wait_for(iid, within=60)
        assert record.status == "Completed"
        assert json.loads(record.output or "") == [f"Hello {n}!" for n in names]
        activity, orchestrator = _gaps(await rt.get_history(iid))
    assert rt.errors == []
    assert len(activity) == len(orchestrator) == len(names)
    return activity, orchestrator, rt


async def test_azure_profile_delays_every_work_item_of_an_orchestration_and_it_still_completes() -> None:
    fast_activity, fast_orchestrator, _ = await _run_sequence(DispatchLatency())
    activity, orchestrator, rt = await _run_sequence(
        DispatchLatency(LatencyProfile.named("azure", seed=2024))
    )

    # Median dispatch delay is 50 ms; seen from history it must be well above what 'none' shows.
    assert statistics.median(activity) >= 0.020
    assert statistics.median(orchestrator) >= 0.020
    assert statistics.median(activity) > statistics.median(fast_activity)
    assert statistics.median(orchestrator) > statistics.median(fast_orchestrator)
    dispatch = rt.latency.to_json()["dispatch"]
    assert dispatch["activity"]["count"] == 8
    assert dispatch["orchestrator"]["count"] >= 9  # the start, then one episode per result at least


async def test_azure_profile_fires_a_timer_after_its_fire_time_and_records_the_requested_time(
    clock: ManualClock,
) -> None:
    latency = DispatchLatency(LatencyProfile.named("azure", seed=3))
    async with DurableRuntime(
        FunctionIndex.from_app(sample.app), MemoryStore(), clock=clock, latency=latency
    ) as rt:
        started = clock.now()
        iid = await rt.start_new("with_timer", None, "1")
        await _until(lambda: rt.pending_timers == 1)
        late = timedelta(seconds=latency.delays[WorkKind.TIMER].recent[-1])
        assert timedelta(0) < late <= timedelta(seconds=1)

        clock.advance(timedelta(hours=1))  # the requested fire time: not yet dispatched
        await rt.idle()
        assert rt.pending_timers == 1
        clock.advance(late)
        record = await rt.wait_for(iid, within=30)

    assert record.status == "Completed"
    fired = [e for e in await rt.get_history(iid) if e["EventType"] == EventType.TIMER_FIRED]
    assert parse_iso(fired[0]["FireAt"]) == started + timedelta(hours=1)


async def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


# ---- the storage proxy, against the session's Azurite ----------------------------------------------------

FIXED_50_MS = LatencyProfile("fixed", seed=1, storage=LogNormal(median=0.05, sigma=0.0, cap=1.0))


@pytest.mark.azurite
def test_the_proxy_passes_table_traffic_and_delays_each_request(storage_connection_string: str) -> None:
    name = "lat" + uuid.uuid4().hex[:12]
    with StorageLatency(storage_connection_string, FIXED_50_MS) as latency:
        proxied = parse_connection_string(latency.connection_string)
        original = parse_connection_string(storage_connection_string)
        assert proxied["TableEndpoint"] != original["TableEndpoint"]
        assert proxied["BlobEndpoint"] == original["BlobEndpoint"]  # blobs go direct

        table = TableClient.from_connection_string(latency.connection_string, name)
        table.create_table()
        table.upsert_entity({"PartitionKey": "p", "RowKey": "r1", "text": "é / ü", "n": 1})
        table.submit_transaction(
            [("upsert", {"PartitionKey": "p", "RowKey": f"b{i}", "n": i}) for i in range(3)]
        )
        started = time.monotonic()
        got = [table.get_entity("p", "r1") for _ in range(5)]
        elapsed = time.monotonic() - started
        rows = sorted(e["RowKey"] for e in table.query_entities("PartitionKey eq 'p'"))
        table.delete_table()
        table.close()

    assert [g["text"] for g in got] == ["é / ü"] * 5
    assert rows == ["b0", "b1", "b2", "r1"]
    assert elapsed >= 5 * 0.05  # five reads, each delayed 50 ms on its way in
    assert latency.requests >= 9
    assert latency.delays.count == latency.requests


@pytest.mark.azurite
def test_the_proxy_passes_queue_traffic(storage_connection_string: str) -> None:
    name = "lat" + uuid.uuid4().hex[:12]
    with StorageLatency(storage_connection_string, LatencyProfile.named("azure", seed=8)) as latency:
        queue = QueueClient.from_connection_string(latency.connection_string, name)
        queue.create_queue()
        for i in range(3):
            queue.send_message(f"message {i}")
        received = list(queue.receive_messages(messages_per_page=10, max_messages=10))
        for message in received:
            queue.delete_message(message)
        left = queue.get_queue_properties().approximate_message_count
        queue.delete_queue()
        queue.close()

    assert sorted(m.content for m in received) == ["message 0", "message 1", "message 2"]
    assert left == 0
    assert latency.requests >= 10
    assert 0.001 < latency.delays.total / latency.delays.count < 0.1


@pytest.mark.azurite
async def test_the_durable_store_works_through_the_proxy_from_the_event_loop(
    storage_connection_string: str,
) -> None:
    with StorageLatency(storage_connection_string, FIXED_50_MS) as latency:
        store = AzuriteStore(latency.connection_string, task_hub="Lat" + uuid.uuid4().hex[:10])
        await store.open()
        try:
            now = "2026-01-01T00:00:00.000000Z"
            record = InstanceRecord("i1", "hello_sequence", "Running", None, now, now, "e1")
            await store.save_instance(record, [])
            loaded = await store.get_instance("i1")
        finally:
            await store.close()

    assert loaded is not None and loaded.status == "Running"
    assert latency.requests >= 3


@pytest.mark.azurite
async def test_serve_with_the_azure_profile_runs_an_orchestration_through_delays_and_the_proxy(
    storage_connection_string: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "host.json").write_text(
        json.dumps({"extensions": {"durableTask": {"hubName": "Lat" + uuid.uuid4().hex[:10]}}})
    )
    # serve() points os.environ at its proxy (for the app); monkeypatch puts the original back after.
    monkeypatch.setenv("AzureWebJobsStorage", storage_connection_string)
    monkeypatch.setenv("DEVHOST_FUNCTION_KEY", "k")
    port = free_port()
    app = ["--app", "tests.devhost.apps.sample:app", "--app-dir", str(tmp_path)]
    options = parse_args(["--port", str(port), *app, "--latency", "azure", "--latency-seed", "17"])
    stop = asyncio.Event()
    server = asyncio.create_task(serve(options, stop))
    origin = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await _until_serving(http, origin, server)
            proxied = os.environ["AzureWebJobsStorage"]  # noqa: SIM112 - the Functions setting's name
            async with http.post(
                f"{origin}/api/orchestrators/hello_sequence", params={"code": "k"}, json=["Ada", "Bo"]
            ) as response:
                assert response.status == 202
                location = response.headers["Location"]
            body = await _poll(http, location)
            async with http.get(f"{origin}/_devhost/stats") as response:
                stats = await response.json()
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)

    assert body["runtimeStatus"] == "Completed" and body["output"] == ["Hello Ada!", "Hello Bo!"]
    assert (
        parse_connection_string(proxied)["TableEndpoint"]
        != parse_connection_string(storage_connection_string)["TableEndpoint"]
    )
    assert stats["latency"]["profile"] == "azure" and stats["latency"]["seed"] == 17
    assert stats["latency"]["dispatch"]["activity"]["count"] == 2
    assert stats["latency"]["dispatch"]["orchestrator"]["count"] >= 3


async def _until_serving(http: aiohttp.ClientSession, origin: str, server: asyncio.Task[None]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert not server.done(), server.exception()
        with contextlib.suppress(aiohttp.ClientConnectionError):
            async with http.get(f"{origin}/_devhost/stats") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise TimeoutError("serve did not start")


async def _poll(http: aiohttp.ClientSession, location: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with http.get(location) as status:
            if status.status == 200:
                body: dict[str, object] = await status.json()
                return body
        await asyncio.sleep(0.05)
    raise TimeoutError("orchestration did not complete")
