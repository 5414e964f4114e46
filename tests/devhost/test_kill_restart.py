"""Kill the real ``python -m devhost serve`` process mid-orchestration; the restarted host finishes it.

Issue 4: "a long orchestration interrupted at a random point completes after restart with every
activity's effect applied (activities may run again - at-least-once)". The orchestration
(``crash_drill`` in the sample app) fans out 4 waves of 50 activities, one ``continue_as_new`` per
wave with entity signals in the episode before it, then a sub-orchestration, a durable timer and
an entity call. Each activity upserts a row into an Azurite table, so its effect outlives the host.
The host gets SIGKILL once a seeded random number of activities has started, then starts again on
the same Azurite task hub.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from azure.data.tables.aio import TableClient

from devhost.azurite import die_with_parent, free_port

ROOT = Path(__file__).resolve().parents[2]
KEY = "kill-test-key"
WAVES, WIDTH, SIGNALS, CHILD_STEPS = 4, 50, 5, 3
ACTIVITIES = WAVES * WIDTH + CHILD_STEPS
EXPECTED_COUNT = WAVES * SIGNALS + 2  # the waves' signals, the child's signal, the final call
# Where the first kill falls, per seed: activities started in waves 1-2, waves 3-4, or all of them
# (then the host dies in the child's last steps, the timer or the entity call).
STRATA = ((0, 2 * WIDTH - 1), (2 * WIDTH, WAVES * WIDTH - 1), (WAVES * WIDTH, ACTIVITIES))

pytestmark = [pytest.mark.azurite, pytest.mark.slow]


class Host:
    """One ``python -m devhost serve`` child process on a fixed port and app directory."""

    def __init__(self, app_dir: Path, port: int, storage: str) -> None:
        self.app_dir, self.port, self.storage = app_dir, port, storage
        self.origin = f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "AzureWebJobsStorage": self.storage,
            "DEVHOST_FUNCTION_KEY": KEY,
            "PYTHONPATH": str(ROOT),
        }
        args = [
            "--app",
            "tests.devhost.apps.sample",
            "--app-dir",
            str(self.app_dir),
            "--port",
            str(self.port),
        ]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devhost", "serve", *args],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # never outlives the test run
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        self.log.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def wait_until_up(host: Host, http: aiohttp.ClientSession, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert host.process is not None
        if host.process.poll() is not None:
            raise AssertionError(f"host exited with {host.process.returncode}:\n{host.output()}")
        try:
            async with http.get(f"{host.origin}/api/health") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"host did not come up within {within}s:\n{host.output()}")


async def activities_started(host: Host, http: aiohttp.ClientSession) -> int:
    async with http.get(f"{host.origin}/_devhost/stats") as response:
        return int((await response.json())["activityInvocations"])


async def wait_for_status(
    http: aiohttp.ClientSession, location: str, host: Host, within: float = 90.0
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        async with http.get(location) as response:
            if response.status == 200:
                return dict(await response.json())
            assert response.status == 202, await response.text()
            body = await response.json()
        await asyncio.sleep(0.2)
    raise AssertionError(f"still {body.get('runtimeStatus')} after {within}s:\n{host.output()}")


async def kill_after_activities(host: Host, http: aiohttp.ClientSession, count: int, location: str) -> bool:
    """SIGKILL the host once ``count`` activities started in it; False if the instance finished first."""
    while await activities_started(host, http) < count:
        async with http.get(location) as response:
            if response.status == 200:
                return False
        await asyncio.sleep(0.01)
    host.kill()
    return True


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_host_killed_at_random_points_completes_after_restart_with_every_effect(
    seed: int, storage_connection_string: str, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    rng = random.Random(seed)
    # One run per part of the drill (early waves, late waves, child/timer/entity phase), then a
    # second kill soon after the restart, while the new host is still re-running recovered work.
    first_kill = rng.randint(*STRATA[seed - 1])
    second_kill = rng.randint(0, max(0, min(20, ACTIVITIES - first_kill - 1)))
    run = f"run{seed}-{uuid.uuid4().hex[:8]}"
    effects_table = "drill" + uuid.uuid4().hex[:12]
    hub = "Kill" + uuid.uuid4().hex[:12]
    (tmp_path / "host.json").write_text(
        json.dumps({"version": "2.0", "extensions": {"durableTask": {"hubName": hub}}})
    )
    async with TableClient.from_connection_string(storage_connection_string, effects_table) as effects:
        await effects.create_table()
        host = Host(tmp_path, free_port(), storage_connection_string)
        try:
            host.start()
            await wait_until_up(host, http)
            drill = {
                "run": run, "waves": WAVES, "width": WIDTH, "signals": SIGNALS,
                "timer_seconds": 1, "table": effects_table,
            }  # fmt: skip
            async with http.post(
                f"{host.origin}/api/orchestrators/crash_drill", params={"code": KEY}, json=drill
            ) as response:
                assert response.status == 202, await response.text()
                location = response.headers["Location"]
            kills = []
            for count in (first_kill, second_kill):
                if not await kill_after_activities(host, http, count, location):
                    break
                kills.append(count)
                # Same port, so the status URL handed out before the kill still works.
                host.start()
                await wait_until_up(host, http)
            print(f"seed {seed}: SIGKILL after {kills} activities had started in the host")
            assert kills[:1] == [first_kill]

            status = await wait_for_status(http, location, host)
            assert status["runtimeStatus"] == "Completed", status
            assert status["output"] == {
                "total": WAVES * sum(range(WIDTH)),
                "child": 1000 + 1001 + 1002,
                "count": EXPECTED_COUNT,
            }
            rows = [row async for row in effects.query_entities("PartitionKey eq @r", parameters={"r": run})]
            expected = {f"w{w}-{i}" for w in range(WAVES) for i in range(WIDTH)}
            assert {row["RowKey"] for row in rows} == expected | {f"child-{i}" for i in range(CHILD_STEPS)}
            async with http.get(f"{host.origin}/api/counters/{run}", params={"code": KEY}) as response:
                assert await response.json() == EXPECTED_COUNT  # exactly once across the kills

            assert host.process is not None
            host.process.send_signal(signal.SIGTERM)
            assert host.process.wait(timeout=15) == 0, host.output()
        finally:
            host.close()
            await effects.delete_table()
