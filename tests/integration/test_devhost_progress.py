"""``make run``'s progress lines: a real broadcast on the devhost (real replay engine, Teams emulator, Azurite)
watched by :class:`devhost.progress.ProgressReporter`, and the line format on hand-made instance records.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from devhost.durable.store import InstanceRecord
from devhost.progress import ProgressReporter, ProgressState, interval_from, progress_lines
from tests.integration import test_broadcast_api as broadcasts
from tests.integration.test_broadcast_api import TENANT_A, TENANT_B, Api, broadcast
from tests.support.invariants import assert_settled

api = broadcasts.api  # the broadcast API tests' fixture (devhost, emulator, Azurite)
emulator = broadcasts.emulator


def record(
    instance_id: str, name: str, status: str, custom: object = None, output: object = None
) -> InstanceRecord:
    return InstanceRecord(
        instance_id=instance_id,
        name=name,
        status=status,
        input=None,
        created_time="",
        last_updated_time="",
        execution_id="e",
        custom_status=None if custom is None else json.dumps(custom),
        output=None if output is None else json.dumps(output),
    )


def lane(broadcast_id: str, tenant: str, n: int, **totals: int) -> InstanceRecord:
    return record(
        f"{broadcast_id}.{tenant}.lane{n}", "tenant_lane", "Running", {"tenantId": tenant, "totals": totals}
    )


def test_a_running_broadcast_gets_one_line_with_per_tenant_rates_and_a_summary_when_it_ends() -> None:
    running = record("b1", "broadcast", "Running", {"phase": "sending"})
    first, state = progress_lines(
        [
            running,
            lane("b1", TENANT_A, 0, sent=10),
            lane("b1", TENANT_A, 1, sent=5),
            lane("b1", TENANT_B, 0, sent=2),
        ],
        ProgressState(),
        now=100.0,
    )
    assert first == [
        "broadcast b1 sending: sent 17, throttled 0, failed 0, retry-queued 0"
        f" | sent per tenant: {TENANT_A[:8]} 15, {TENANT_B[:8]} 2"
    ]
    second, state = progress_lines(
        [
            running,
            lane("b1", TENANT_A, 0, sent=60, throttled=2),
            lane("b1", TENANT_A, 1, sent=55),
            lane("b1", TENANT_B, 0, sent=2, failed=1, unreachable=1),
            lane("b1.update", TENANT_A, 0, sent=999),  # another operation's lane is not b1's
        ],
        state,
        now=102.0,
    )
    assert second == [
        "broadcast b1 sending: sent 117, throttled 2, failed 2, retry-queued 0"
        f" | sent per tenant: {TENANT_A[:8]} 115 50.0/s, {TENANT_B[:8]} 2 0.0/s"
    ]
    final = {
        "phase": "completed",
        "startedAt": "2026-11-21T09:00:00+00:00",
        "completedAt": "2026-11-21T09:00:10+00:00",
        "throttled": 2,
        "counts": {"total": 120, "sent": 117, "failed": 1, "unreachable": 1, "suppressed": 1, "pending": 0},
    }
    ended, state = progress_lines([record("b1", "broadcast", "Completed", output=final)], state, now=110.0)
    assert ended == [
        "broadcast b1 completed in 10.0 s (11.7 msg/s): total 120, sent 117, failed 2, throttled 2, suppressed 1"
    ]
    assert progress_lines([record("b1", "broadcast", "Completed", output=final)], state, now=115.0)[0] == []


def test_the_interval_setting_defaults_to_five_seconds_and_zero_turns_it_off() -> None:
    assert interval_from({}) == 5.0
    assert interval_from({"DEVHOST_PROGRESS_SECONDS": "0"}) == 0.0
    assert interval_from({"DEVHOST_PROGRESS_SECONDS": "soon"}) == 5.0


@pytest.mark.azurite
async def test_a_broadcast_on_the_devhost_logs_progress_and_a_summary(api: Api) -> None:
    lines: list[str] = []
    reporter = ProgressReporter(api.host.runtime, 0.05, emit=lines.append)
    users = range(30)
    await api.seed(TENANT_A, users)
    reporter.start()
    try:
        response = await api.call("POST", "broadcasts", json=broadcast("progress-1", users))
        assert response.status == 202
        assert_settled(await api.wait_done(response.headers["Location"]))
        for _ in range(100):
            if any("completed" in line for line in lines):
                break
            await asyncio.sleep(0.05)
    finally:
        await reporter.stop()
    assert any(line.startswith("broadcast progress-1 ") and "sent" in line for line in lines)
    [summary] = [line for line in lines if line.startswith("broadcast progress-1 completed")]
    assert "total 30, sent 30, failed 0, throttled 0" in summary
