"""The send-rate benchmark's own pieces: the ramp measure, the fixed-pause baseline, the durable store counter.

Nothing here checks a timing of the product; these pin what the benchmark's columns mean.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bench.send_rate import (
    CountingStore,
    FixedPauseStats,
    Recipient,
    World,
    quiet_seconds,
    ramp,
    run_fixed_pause,
)
from devhost.durable import MemoryStore
from devhost.durable.store import InstanceRecord
from devhost.emulators.teams import build_app
from devhost.emulators.teams_state import TeamsEmulatorConfig


def steady(rate: float, seconds: float, start: float = 0.0) -> list[float]:
    """Accepted-send times at ``rate`` per second for ``seconds``."""
    return [start + i / rate for i in range(int(rate * seconds))]


def test_ramp_of_a_sender_at_the_ceiling_reaches_it_after_one_window_and_stays() -> None:
    measured = ramp(steady(30, 20), 0.0, 30.0)

    assert measured["reachSeconds"] == pytest.approx(2.0, abs=0.11)
    assert measured["settleSeconds"] == pytest.approx(2.0, abs=0.11)
    assert measured["minSteadyRate"] is not None and measured["minSteadyRate"] >= 29


def test_ramp_of_a_sender_that_saws_reaches_the_level_but_never_settles() -> None:
    # Alternating 4 s at 30/s and 4 s at 15/s: above 0.9 x 30 at times, never for good.
    times: list[float] = []
    for block in range(6):
        times += steady(30 if block % 2 == 0 else 15, 4, start=4.0 * block)
    measured = ramp(times, 0.0, 30.0)

    assert measured["reachSeconds"] is not None and measured["reachSeconds"] <= 4
    assert measured["settleSeconds"] is None


def test_ramp_of_a_slow_start_settles_when_the_rate_is_reached() -> None:
    times = steady(10, 6) + steady(30, 14, start=6.0)
    measured = ramp(times, 0.0, 30.0)

    assert measured["reachSeconds"] == pytest.approx(measured["settleSeconds"])
    assert 7.5 <= (measured["settleSeconds"] or 0) <= 8.1


def test_ramp_without_sends_is_empty() -> None:
    assert ramp([], None, 50.0)["reachSeconds"] is None


def test_quiet_seconds_add_only_the_gaps_longer_than_the_bound() -> None:
    assert quiet_seconds([5.0, 0.0, 1.0, 1.5, 9.0], 2.0) == pytest.approx(3.5 + 4.0)
    assert quiet_seconds([], 2.0) == 0.0


def test_world_config_names_the_emulators_settings() -> None:
    assert World(tenant_rate=30).config() == {"tenant_rate": 30, "rates": {}, "rate_operations": ["send"]}
    assert World(random_429=0.1).config()["rates"] == {"429": 0.1}
    # Accepted by the emulator as a config (unknown keys would raise).
    TeamsEmulatorConfig().merged(World(tenant_rate=30, random_429=0.1).config())


@pytest.fixture
async def teams() -> AsyncIterator[str]:
    server = TestServer(build_app(TeamsEmulatorConfig(tenant_rate=5)), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/"))
    finally:
        await server.close()


async def test_fixed_pause_delivers_everyone_once_and_sends_nothing_while_paused(teams: str) -> None:
    recipients = [Recipient("00000000-0000-0000-0000-0000000000aa", i) for i in range(12)]
    stats = FixedPauseStats()
    async with aiohttp.ClientSession() as http:
        clock = await asyncio.wait_for(
            run_fixed_pause(http, teams, recipients, "n-1", concurrency=8, pause_seconds=0.6, stats=stats),
            30,
        )
        async with http.get(teams + "_emulator/stats?activities=0") as response:
            document = await response.json()

    reached = document["byNotification"]["n-1"]
    assert reached == {"conversations": 12, "deliveries": 12}
    assert document["duplicates"] == []
    # 5/s against 8 workers: the first burst meets 429s, a retry (ignoring Retry-After) meets more, then the
    # whole sender pauses and every message taken meanwhile goes back on the queue with the fixed delay.
    assert stats.pauses >= 1
    assert stats.retries >= 1
    assert stats.requeued >= stats.pauses
    assert stats.pause_episodes >= 1
    assert len(stats.starts) == document["totals"]["requests"]
    assert clock.throttled == document["byStatus"]["429"]
    starts = sorted(t for times in clock.starts.values() for t in times)
    # After the first pause no send starts for about the pause, less the scaled 15 s of 660.
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert max(gaps) >= 0.5


async def test_counting_store_reports_history_rows_per_execution() -> None:
    store = CountingStore(MemoryStore())
    record = InstanceRecord("i-1", "tenant_lane", "Running", None, "t", "t", "e-1", history_length=3)
    await store.save_instance(record, [{"EventType": n} for n in range(3)])
    record.history_length = 7
    await store.save_instance(record, [{"EventType": n} for n in range(4)])
    record.execution_id, record.history_length = "e-2", 0
    await store.save_instance(record, [])
    record.history_length = 5
    await store.save_instance(record, [{"EventType": n} for n in range(5)])
    assert await store.get_instance("i-1") is not None

    history = store.history()
    assert history["executions"] == 2
    assert history["rowsPerExecutionMax"] == 7
    assert history["rowsPerExecutionMean"] == 6.0
    assert history["historyRowsWritten"] == 12
    assert history["byOrchestrator"]["tenant_lane"]["executions"] == 2
    assert history["storeCalls"]["save_instance"] == 4
    assert history["storeCalls"]["get_instance"] == 1
