"""Conformance of the durable engine with the Durable extension's handling of Python orchestrators.

Each test pins one behaviour of the extension's ``OutOfProcOrchestrationShim`` and of DurableTask.Core
(DTFx) under it, as :mod:`devhost.durable.shim` reproduces them; the docstrings name the source.
Orchestrators: :mod:`tests.devhost.apps.patterns`. Timers are driven by a manual clock.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest

from devhost.durable import DurableRuntime, FunctionIndex, ManualClock, MemoryStore, TimerLimits
from devhost.durable.history import EventType, parse_iso
from tests.devhost.apps import patterns

# Azure Storage's 6 days / 3 days, shrunk so that a test can walk through a split timer.
LIMITS = TimerLimits(maximum_short_timer=timedelta(seconds=6), long_timer_interval=timedelta(seconds=3))

SCHEDULING = (
    EventType.TASK_SCHEDULED,
    EventType.TIMER_CREATED,
    EventType.SUB_ORCHESTRATION_INSTANCE_CREATED,
    EventType.EVENT_SENT,
)


@pytest.fixture
async def rt(clock: ManualClock) -> AsyncIterator[DurableRuntime]:
    """A runtime on the patterns app, in memory, with Azure Storage's timer limits."""
    index = FunctionIndex.from_app(patterns.app)
    async with DurableRuntime(index, MemoryStore(), clock=clock) as runtime:
        yield runtime
    assert runtime.errors == []


@pytest.fixture
async def rt_short(clock: ManualClock) -> AsyncIterator[DurableRuntime]:
    """The same with the timer limits shrunk to seconds."""
    index = FunctionIndex.from_app(patterns.app)
    async with DurableRuntime(index, MemoryStore(), clock=clock, timer_limits=LIMITS) as runtime:
        yield runtime
    assert runtime.errors == []


async def until(
    rt: DurableRuntime, condition: Callable[[], bool], within: float = 10.0, *, settle: bool = True
) -> None:
    """Wait for ``condition``, then (``settle``) for the runtime to be idle."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)
    if settle:
        await rt.idle()


async def fire_next_timer(rt: DurableRuntime, clock: ManualClock, step: timedelta) -> None:
    """Wait for an armed timer, move the clock by ``step`` and wait until a timer fired and all settled."""
    fired = rt.stats.timers_fired
    await until(rt, lambda: rt.pending_timers >= 1)
    clock.advance(step)
    await until(rt, lambda: rt.stats.timers_fired > fired)


async def start(rt: DurableRuntime, name: str, value: Any = None) -> str:
    return await rt.start_new(name, None, json.dumps(value) if value is not None else None)


async def status(rt: DurableRuntime, iid: str) -> str:
    record = await rt.get_instance(iid)
    assert record is not None
    return record.status


async def output(rt: DurableRuntime, iid: str) -> Any:
    record = await rt.wait_for(iid)
    return record.status, json.loads(record.output) if record.output else None


async def scheduled(rt: DurableRuntime, iid: str) -> list[tuple[int, int, str]]:
    """(EventId, EventType, what) of every scheduling event of the current execution."""
    rows = []
    for evt in await rt.get_history(iid):
        if evt["EventType"] in SCHEDULING:
            what = evt.get("Name") or ""
            if evt["EventType"] == EventType.EVENT_SENT:
                request = json.loads(evt["Input"])
                what = f"{'signal' if request['signal'] else 'call'} {request['op']}"
            rows.append((evt["EventId"], evt["EventType"], what))
    return rows


def key() -> str:
    return uuid.uuid4().hex


# ------------------------------------------------------------------------------------------ task_any


async def test_task_any_winner_awaited_again_then_new_work_gets_the_next_id(rt: DurableRuntime) -> None:
    """``ProcessAsyncActionsV2`` awaits a ``WhenAny`` until one child completes and then invokes the
    next action; re-yielding the winner adds no action, so the later activity takes DTFx's next id
    (``TaskOrchestrationContext.idCounter``), the one the SDK expects.
    """
    iid = await start(rt, "any_then_await_winner")
    assert await output(rt, iid) == ("Completed", ["Hello fast!", "Hello after!"])
    assert await scheduled(rt, iid) == [
        (0, EventType.TASK_SCHEDULED, "hello"),
        (1, EventType.TIMER_CREATED, ""),
        (2, EventType.TASK_SCHEDULED, "hello"),
    ]


async def test_uncancelled_task_any_timer_keeps_the_instance_running_until_it_fires(
    rt: DurableRuntime, clock: ManualClock
) -> None:
    """DTFx completes an orchestration only when no task is open (``TaskOrchestrationExecutor.ExecuteCore``:
    ``if (!this.context.HasOpenTasks)``): the SDK is done, but the losing timer it did not cancel holds
    the instance in Running until the timer fires.
    """
    iid = await start(rt, "any_then_await_winner", "keep timer")
    await until(rt, lambda: rt.stats.activity_invocations == 2)
    assert await status(rt, iid) == "Running"
    clock.advance(timedelta(hours=1))
    assert await output(rt, iid) == ("Completed", ["Hello fast!", "Hello after!"])


async def test_timer_cancelled_in_task_any_stays_scheduled_but_does_not_hold_completion(
    rt: DurableRuntime, clock: ManualClock
) -> None:
    """``InvokeAPIFromAction`` creates a cancelled timer and then cancels its token: DTFx's ``CreateTimer``
    keeps the action (a ``TimerCreated`` and a durable timer that fires later for nothing) but drops the
    task from ``openTasks``, so the orchestration completes at once.
    """
    iid = await start(rt, "approval")
    await until(rt, lambda: rt.pending_timers == 1)
    await rt.raise_event(iid, "Approval", json.dumps({"by": "ada"}))
    assert await output(rt, iid) == ("Completed", {"approved": {"by": "ada"}})
    assert await scheduled(rt, iid) == [(0, EventType.TIMER_CREATED, "")]
    assert rt.pending_timers == 1
    clock.advance(timedelta(hours=2))
    await until(rt, lambda: rt.pending_timers == 0)
    assert await status(rt, iid) == "Completed"


# ------------------------------------------------------------------------------------------ retries


async def test_task_all_with_retries_numbers_timers_and_attempts_as_failures_replay(
    rt: DurableRuntime, clock: ManualClock
) -> None:
    """``call_activity_with_retry`` runs DTFx's ``RetryInterceptor``: each failed attempt gets a timer
    (due ``CurrentUtcDateTime`` + the interval, i.e. the failure's episode + 1 s) and, once it fired, a
    re-attempt, numbered when the failure and the timer are replayed, interleaved across the
    ``task_all``'s children. The SDK numbers the same way, so every result reaches its task.
    """
    a, b, c = key(), key(), key()
    iid = await start(rt, "retry_all", [[a, 1], [b, 0], [c, 2]])
    while await status(rt, iid) in ("Pending", "Running"):
        await fire_next_timer(rt, clock, timedelta(seconds=1))
    assert await output(rt, iid) == ("Completed", ["ok after 2", "ok after 1", "ok after 3"])
    rows = await scheduled(rt, iid)
    assert [row[0] for row in rows] == list(range(9))
    assert [row[1] for row in rows].count(EventType.TIMER_CREATED) == 3
    assert rows[:3] == [(i, EventType.TASK_SCHEDULED, "flaky") for i in range(3)]
    for evt in await rt.get_history(iid):
        if evt["EventType"] == EventType.TIMER_CREATED:
            assert parse_iso(evt["FireAt"]) == parse_iso(evt["Timestamp"]) + timedelta(seconds=1)


async def test_retry_after_the_last_attempt_awaits_a_timer_due_at_once(
    rt: DurableRuntime, clock: ManualClock
) -> None:
    """``RetryInterceptor.Invoke``: after the last failed attempt DTFx still creates a timer (the SDK
    waits for it), but due at ``CurrentUtcDateTime`` ("Dummy timer for back-compat"), then fails.
    """
    a = key()
    iid = await start(rt, "retry_all", [[a, 5]])
    for _ in range(2):
        await fire_next_timer(rt, clock, timedelta(seconds=1))
    state, reason = await output(rt, iid)
    assert state == "Failed" and "attempt 3 failed" in reason
    timers = [e for e in await rt.get_history(iid) if e["EventType"] == EventType.TIMER_CREATED]
    assert len(timers) == 3
    assert parse_iso(timers[-1]["FireAt"]) == parse_iso(timers[-1]["Timestamp"])


# ------------------------------------------------------------------------------------------ entities


async def test_entity_signals_and_calls_are_sent_in_action_order(rt: DurableRuntime) -> None:
    """Signals are fire-and-forget actions recorded when called, calls when yielded; the shim sends each
    as an ``EventSent`` (named "op") under DTFx's next id in action order, and the entity runs them in
    that order.
    """
    entity = key()
    iid = await start(rt, "entity_order", entity)
    assert await output(rt, iid) == ("Completed", [11, 111])
    assert await scheduled(rt, iid) == [
        (0, EventType.EVENT_SENT, "signal add"),
        (1, EventType.EVENT_SENT, "call add"),
        (2, EventType.EVENT_SENT, "signal add"),
        (3, EventType.EVENT_SENT, "call get"),
    ]


async def test_yielded_signal_is_sent_twice_and_never_resumes(rt: DurableRuntime) -> None:
    """A yielded ``signal_entity`` puts its action in the list twice (once when called, once when
    yielded); ``InvokeAPIFromAction`` sends both and treats them as done, while the SDK waits for a
    completion of the yielded task that never comes.
    """
    entity = key()
    iid = await start(rt, "yielded_signal", entity)
    await until(rt, lambda: rt.stats.entity_operations == 2)
    assert await status(rt, iid) == "Running"
    assert await rt.read_entity_state("counter", entity) == (True, "2")
    with pytest.raises(TimeoutError):
        await rt.wait_for(iid, within=1.0)


# ------------------------------------------------------------------------------------------ continue-as-new


async def test_event_raised_before_continue_as_new_and_not_awaited_is_dropped(rt: DurableRuntime) -> None:
    """The extension continues as new with ``preserveUnprocessedEvents`` false
    (``DurableOrchestrationContext.ContinueAsNew``): an event the execution received but never waited
    for was buffered by ``RaiseEvent`` and is lost; the next execution waits for a new one.
    """
    gate = key()
    iid = await start(rt, "carry_on", {"gen": 0, "gate": gate})
    await until(rt, lambda: gate in patterns.GATES, settle=False)
    await rt.raise_event(iid, "ping", json.dumps(1))
    await until(rt, lambda: rt.stats.episodes == 2, settle=False)  # "ping" is in the history
    patterns.GATES[gate].set()
    await until(rt, lambda: rt.stats.continue_as_new == 1)
    record = await rt.get_instance(iid)
    assert record is not None and record.status == "Running" and json.loads(record.input or "")["gen"] == 1
    await rt.raise_event(iid, "ping", json.dumps(2))
    assert await output(rt, iid) == ("Completed", 2)


# ------------------------------------------------------------------------------------------ long timers


async def test_long_timer_is_split_with_the_provider_limits(
    rt_short: DurableRuntime, clock: ManualClock
) -> None:
    """The context carries ``maximumShortTimerDuration``/``longRunningTimerIntervalDuration``
    (``OrchestrationTriggerAttributeBindingProvider``), so the SDK (replay schema V3) splits a timer
    further away than the first into timers of the second, as with Azure Storage's 6 and 3 days.
    """
    start_at = clock.now()
    iid = await start(rt_short, "long_wait", 10)
    for seconds in (3, 3, 4):
        await fire_next_timer(rt_short, clock, timedelta(seconds=seconds))
    assert await output(rt_short, iid) == ("Completed", "Hello expired!")
    fire_at = [
        parse_iso(e["FireAt"])
        for e in await rt_short.get_history(iid)
        if e["EventType"] == EventType.TIMER_CREATED
    ]
    assert fire_at == [start_at + timedelta(seconds=s) for s in (3, 6, 10)]


async def test_long_timer_cancelled_midway_still_holds_later_work_until_each_part_fires(
    rt_short: DurableRuntime, clock: ManualClock
) -> None:
    """The SDK's long timer is a ``WhenAll`` of its current part, and each next part is a new top-level
    ``CreateTimer`` action; ``cancel()`` marks none of them. The shim's ``WhenAny`` completes when the
    first part fires, so the walk then awaits the next part: work yielded after the cancel waits for it,
    and the orchestration completes only once the last part, at the original deadline, fired.
    """
    iid = await start(rt_short, "long_wait", 10)
    await fire_next_timer(rt_short, clock, timedelta(seconds=3))  # the SDK adds the second part
    await rt_short.raise_event(iid, "stop", "null")
    await rt_short.idle()
    assert rt_short.stats.activity_invocations == 0  # behind the second part in the walk
    await fire_next_timer(rt_short, clock, timedelta(seconds=3))
    assert rt_short.stats.activity_invocations == 1
    assert await status(rt_short, iid) == "Running"  # the walk now awaits the third part
    await fire_next_timer(rt_short, clock, timedelta(seconds=4))
    assert await output(rt_short, iid) == ("Completed", "Hello stopped!")


# ------------------------------------------------------------------------------------------ invalid patterns


async def test_two_in_flight_with_a_retried_newer_activity_fails_as_on_the_extension(
    rt: DurableRuntime, clock: ManualClock
) -> None:
    """issue 603 (Azure/azure-functions-durable-python): ``task_any([newer_with_retry, older])`` is one
    ``WhenAny`` that the shim leaves once ``older`` completed, while the SDK waits for ``newer`` before
    yielding new work. Replayed, the shim gives that new work the id the retry timer or re-attempt of
    ``newer`` had, and DTFx fails the orchestration with a non-determinism error.
    """
    flaky = key()
    iid = await start(rt, "two_in_flight", [flaky, 1])
    await until(rt, lambda: rt.pending_timers == 1)
    clock.advance(timedelta(seconds=1))
    state, reason = await output(rt, iid)
    assert state == "Failed"
    assert reason.startswith("Non-Deterministic workflow detected: ")
    assert rt.stats.nondeterminism_failures == 1


async def test_two_in_flight_without_a_failed_attempt_completes(rt: DurableRuntime) -> None:
    """The same orchestration whose newer activity succeeds at once: the shim's and the SDK's ids agree."""
    iid = await start(rt, "two_in_flight", [key(), 0])
    assert await output(rt, iid) == ("Completed", ["Hello older!", "ok after 1", "Hello after!"])


async def test_two_in_flight_with_new_work_before_the_retried_activity_mixes_up_results(
    rt: DurableRuntime, clock: ManualClock
) -> None:
    """The shape of proactive's ``tenant_broadcast``: ``task_any([newer_with_retry, older])`` with ``older``
    already scheduled is a ``WhenAny`` of ``newer`` alone, so the shim's walk waits for ``newer`` while the
    SDK goes on once ``older`` completed and yields new work. That work is not scheduled (the walk has not
    reached it), and ``newer``'s retry timer takes the id the SDK gave it: the timer's completion resolves
    the new activity (to None), and later completions land one task off. The orchestration completes with
    wrong results, as on the extension (issue 603 describes the hanging variant).
    """
    older, newer = key(), key()
    iid = await start(rt, "two_in_flight_behind", [older, newer])
    await until(rt, lambda: older in patterns.GATES and newer in patterns.GATES, settle=False)
    patterns.GATES[older].set()
    await until(rt, lambda: rt.stats.episodes == 3, settle=False)  # older done; the SDK yielded "between"
    await asyncio.sleep(0.05)
    assert rt.stats.activity_invocations == 2  # older and newer's first attempt: "between" waits for newer
    patterns.GATES[newer].set()
    await fire_next_timer(rt, clock, timedelta(seconds=1))
    assert rt.stats.activity_invocations == 4  # older, newer twice, "between" only once newer is done
    assert await output(rt, iid) == ("Completed", [older, None, "Hello between!"])


# ------------------------------------------------------------------------------------------ schema V1


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("any_then_await_winner", None, ["Hello fast!", "Hello after!"]),
        ("retry_all", [["v1-a", 0], ["v1-b", 0]], ["ok after 1", "ok after 1"]),
    ],
)
async def test_original_replay_schema_walks_action_sets(
    clock: ManualClock, name: str, value: Any, expected: Any
) -> None:
    """With ``upperSchemaVersion`` 0 the SDK returns one action set per yield, and the shim
    (``ProcessAsyncActionsV1``) invokes each set and awaits ``WhenAny`` of it.
    """
    for attempt_key in ("v1-a", "v1-b"):
        patterns.ATTEMPTS.pop(attempt_key, None)
    index = FunctionIndex.from_app(patterns.app)
    async with DurableRuntime(index, MemoryStore(), clock=clock, replay_schema=0) as runtime:
        iid = await start(runtime, name, value)
        assert await output(runtime, iid) == ("Completed", expected)
        assert runtime.errors == []
