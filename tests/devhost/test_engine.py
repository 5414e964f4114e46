"""The durable runtime on the real replay engine, in memory: results match the SDK's documented semantics."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from devhost.durable import DurableRuntime, InstanceGone, ManualClock, UnknownFunction
from devhost.durable.history import EventType
from tests.devhost.apps import sample


async def run(
    rt: DurableRuntime, name: str, value: object = None, within: float = 30.0
) -> tuple[str, object]:
    iid = await rt.start_new(name, None, json.dumps(value) if value is not None else None)
    record = await rt.wait_for(iid, within)
    return record.status, json.loads(record.output) if record.output else None


async def test_activity_sequence_returns_results_in_order(runtime: DurableRuntime) -> None:
    assert await run(runtime, "hello_sequence", ["A", "B", "C"]) == (
        "Completed",
        ["Hello A!", "Hello B!", "Hello C!"],
    )
    assert runtime.stats.activity_invocations == 3
    assert runtime.stats.episodes == 4  # start + one per completion


async def test_fan_out_of_1000_activities_aggregates_every_result(runtime: DurableRuntime) -> None:
    iid = await runtime.start_new("fan_out", None, "1000")
    record = await runtime.wait_for(iid, 60)
    assert record.status == "Completed"
    assert json.loads(record.output) == sum(2 * i for i in range(1000))
    assert json.loads(record.custom_status or "null") == {"done": 1000}
    assert runtime.stats.activity_invocations == 1000
    history = await runtime.get_history(iid)
    scheduled = [e for e in history if e["EventType"] == EventType.TASK_SCHEDULED]
    assert sorted(e["EventId"] for e in scheduled) == list(range(1000))


async def test_sub_orchestrations_return_their_output_to_the_parent(runtime: DurableRuntime) -> None:
    iid = await runtime.start_new("parent")
    record = await runtime.wait_for(iid)
    assert json.loads(record.output or "") == ["Hello a!", "Hello b!", "Hello c!"]
    child = await runtime.get_instance(f"{iid}-child")
    assert child is not None and child.status == "Completed" and child.parent_instance_id == iid


async def test_failed_sub_orchestration_surfaces_as_exception_in_parent(runtime: DurableRuntime) -> None:
    status, output = await run(runtime, "failing_child_parent")
    assert status == "Completed"
    assert isinstance(output, str) and "orchestrator gave up" in output
    failed = [r for r in await runtime.list_instances() if r.name == "fails"]
    assert failed[0].status == "Failed"
    assert "Orchestrator function 'fails' failed: orchestrator gave up" in json.loads(failed[0].output or "")


async def test_activity_exception_is_recorded_as_task_failed_with_reason_and_details(
    runtime: DurableRuntime,
) -> None:
    iid = await runtime.start_new("activity_failure")
    record = await runtime.wait_for(iid)
    assert "Activity function 'explode' failed: ValueError: cannot handle bad input" in json.loads(
        record.output or ""
    )
    failed = [e for e in await runtime.get_history(iid) if e["EventType"] == EventType.TASK_FAILED]
    assert len(failed) == 1 and "Traceback" in failed[0]["Details"]


async def test_retry_reschedules_after_failures_until_success(
    manual_runtime: DurableRuntime, clock: ManualClock
) -> None:
    sample.FLAKY_ATTEMPTS.pop("r1", None)
    iid = await manual_runtime.start_new("retrying", None, json.dumps(["r1", 2, 5]))
    for fired in range(1, 3):
        await _until(manual_runtime, lambda: manual_runtime.pending_timers == 1)
        clock.advance(timedelta(seconds=1))
        await _until(manual_runtime, lambda: manual_runtime.stats.timers_fired == fired)  # noqa: B023
    record = await manual_runtime.wait_for(iid)
    assert json.loads(record.output or "") == ["ok after 3", "Hello other!"]
    assert sample.FLAKY_ATTEMPTS["r1"] == 3


async def test_retry_gives_up_after_max_attempts(manual_runtime: DurableRuntime, clock: ManualClock) -> None:
    sample.FLAKY_ATTEMPTS.pop("r2", None)
    iid = await manual_runtime.start_new("retrying", None, json.dumps(["r2", 10, 2]))
    await _until(manual_runtime, lambda: manual_runtime.pending_timers == 1)
    clock.advance(timedelta(seconds=1))
    # After the last attempt DTFx's RetryInterceptor still awaits a timer, but one due at once
    # ("Dummy timer for back-compat"), so no further clock advance is needed.
    record = await manual_runtime.wait_for(iid)
    assert manual_runtime.stats.timers_fired == 2
    assert "attempt 2 failed" in json.loads(record.output or "")["error"]
    assert sample.FLAKY_ATTEMPTS["r2"] == 2


async def test_timer_one_hour_ahead_fires_when_the_clock_advances(
    manual_runtime: DurableRuntime, clock: ManualClock
) -> None:
    start = clock.now()
    iid = await manual_runtime.start_new("with_timer", None, "1")
    await _until(manual_runtime, lambda: manual_runtime.pending_timers == 1)
    record = await manual_runtime.get_instance(iid)
    assert (
        record is not None
        and record.status == "Running"
        and json.loads(record.custom_status or "") == "waiting"
    )
    clock.advance(timedelta(minutes=59))
    await manual_runtime.idle()
    assert (await manual_runtime.get_instance(iid)).status == "Running"  # type: ignore[union-attr]
    clock.advance(timedelta(minutes=1))
    record = await manual_runtime.wait_for(iid)
    assert json.loads(record.output or "") == (start + timedelta(hours=1)).isoformat()
    assert json.loads(record.custom_status or "") == "fired"


async def test_continue_as_new_restarts_with_new_input_and_fresh_history(runtime: DurableRuntime) -> None:
    iid = await runtime.start_new("counting", None, json.dumps({"n": 0, "limit": 4}))
    record = await runtime.wait_for(iid)
    assert json.loads(record.output or "") == 4
    assert runtime.stats.continue_as_new == 3
    history = await runtime.get_history(iid)
    assert sum(e["EventType"] == EventType.TASK_SCHEDULED for e in history) == 1  # only the last execution
    assert json.loads(record.input or "") == {"n": 3, "limit": 4}


async def test_external_event_wins_task_any_against_timer(manual_runtime: DurableRuntime) -> None:
    iid = await manual_runtime.start_new("approval")
    await _until(manual_runtime, lambda: manual_runtime.pending_timers == 1)
    await manual_runtime.raise_event(iid, "Approval", json.dumps({"by": "ada"}))
    record = await manual_runtime.wait_for(iid)
    assert json.loads(record.output or "") == {"approved": {"by": "ada"}}


async def test_timer_wins_task_any_when_no_event_arrives(
    manual_runtime: DurableRuntime, clock: ManualClock
) -> None:
    iid = await manual_runtime.start_new("approval")
    await _until(manual_runtime, lambda: manual_runtime.pending_timers == 1)
    clock.advance(timedelta(hours=2))
    assert json.loads((await manual_runtime.wait_for(iid)).output or "") == "timed out"


async def test_event_raised_before_the_code_waits_is_kept(runtime: DurableRuntime) -> None:
    iid = await runtime.start_new("wait_two_events")
    await runtime.raise_event(iid, "B", json.dumps(2))
    await runtime.raise_event(iid, "A", json.dumps(1))
    assert json.loads((await runtime.wait_for(iid)).output or "") == [1, 2]


async def test_terminate_stops_a_waiting_instance_and_further_events_are_refused(
    runtime: DurableRuntime,
) -> None:
    iid = await runtime.start_new("wait_two_events")
    await runtime.idle()
    await runtime.terminate(iid, "no longer needed")
    record = await runtime.wait_for(iid)
    assert record.status == "Terminated" and json.loads(record.output or "") == "no longer needed"
    with pytest.raises(InstanceGone):
        await runtime.raise_event(iid, "A", "1")


async def test_entities_call_and_signal_keep_state_between_operations(runtime: DurableRuntime) -> None:
    status, output = await run(runtime, "entity_user", "k-1")
    assert status == "Completed"
    # The signal (add 5) was sent before the call (add 10): one operation at a time, in order.
    assert output == {"after_add": 15, "error": "counter cannot explode", "current": 15}
    await runtime.signal_entity("counter", "k-1", "add", "7")
    await runtime.idle()
    assert await runtime.read_entity_state("Counter", "k-1") == (True, "22")


async def test_entity_operations_run_one_at_a_time_under_concurrent_signals(runtime: DurableRuntime) -> None:
    for _ in range(200):
        await runtime.signal_entity("counter", "busy", "add", "1")
    await runtime.idle()
    assert await runtime.read_entity_state("counter", "busy") == (True, "200")
    assert runtime.stats.entity_operations == 200


async def test_entity_destruct_on_exit_deletes_state(runtime: DurableRuntime) -> None:
    await runtime.signal_entity("counter", "gone", "add", "1")
    await runtime.signal_entity("counter", "gone", "delete")
    await runtime.idle()
    assert await runtime.read_entity_state("counter", "gone") == (False, None)


async def test_nondeterministic_orchestrator_fails_with_a_clear_error(runtime: DurableRuntime) -> None:
    status, output = await run(runtime, "nondeterministic")
    assert status == "Failed"
    assert isinstance(output, str) and "Non-Deterministic workflow detected" in output
    assert "sequence number 0" in output  # DTFx's words for a name that changed at an id
    assert runtime.stats.nondeterminism_failures == 1


async def test_unknown_orchestrator_is_refused(runtime: DurableRuntime) -> None:
    with pytest.raises(UnknownFunction):
        await runtime.start_new("no_such_orchestrator")


async def test_counters_track_episodes_history_and_actions(runtime: DurableRuntime) -> None:
    iid = await runtime.start_new("hello_sequence", None, json.dumps(["x"]))
    await runtime.wait_for(iid)
    stats = runtime.stats.as_dict()
    assert (
        stats["episodes"] == 2 and stats["activityInvocations"] == 1 and stats["actions"] == 2
    )  # each episode re-sends every action
    assert stats["historyEventsByInstance"][iid] == len(await runtime.get_history(iid)) - 2


async def _until(rt: DurableRuntime, condition: object, within: float = 10.0) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)
    await rt.idle()
