"""Orchestration patterns whose fate on the real Durable extension the engine conformance tests pin.

Some of them are wrong on purpose (``two_in_flight``, ``two_in_flight_behind``, ``yielded_signal``):
the extension fails, hangs or mixes up results on them, and devhost must too.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import azure.durable_functions as df

app = df.DFApp()

RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=1000, max_number_of_attempts=3)

# Activities run in the test's event loop: a test opens a gate to let an activity finish.
GATES: dict[str, asyncio.Event] = {}
ATTEMPTS: dict[str, int] = {}


@app.orchestration_trigger(context_name="context")
def any_then_await_winner(context: df.DurableOrchestrationContext):
    """``task_any`` of an activity and a timer; the winner is yielded again later, then new work."""
    fast = context.call_activity("hello", "fast")
    timeout = context.create_timer(context.current_utc_datetime + timedelta(hours=1))
    winner = yield context.task_any([fast, timeout])
    again = yield winner  # already completed: no new action
    after = yield context.call_activity("hello", "after")
    if context.get_input() != "keep timer":
        timeout.cancel()
    return [again, after]


@app.orchestration_trigger(context_name="context")
def retry_all(context: df.DurableOrchestrationContext):
    """``task_all`` of activities with retry policies; the input says how often each fails first."""
    keys = context.get_input()
    tasks = [context.call_activity_with_retry("flaky", RETRY, [key, failures]) for key, failures in keys]
    return (yield context.task_all(tasks))


@app.orchestration_trigger(context_name="context")
def approval(context: df.DurableOrchestrationContext):
    """An event against a timer; the timer is cancelled when the event wins."""
    timeout = context.create_timer(context.current_utc_datetime + timedelta(hours=1))
    approved = context.wait_for_external_event("Approval")
    winner = yield context.task_any([approved, timeout])
    if winner == approved:
        timeout.cancel()
        return {"approved": approved.result}
    return "timed out"


@app.orchestration_trigger(context_name="context")
def entity_order(context: df.DurableOrchestrationContext):
    """Signals and calls to one entity, interleaved."""
    entity = df.EntityId("counter", context.get_input())
    call = context.call_entity(entity, "add", 10)  # created first, yielded (and so scheduled) later
    context.signal_entity(entity, "add", 1)
    after_call = yield call
    context.signal_entity(entity, "add", 100)
    current = yield context.call_entity(entity, "get")
    return [after_call, current]


@app.orchestration_trigger(context_name="context")
def yielded_signal(context: df.DurableOrchestrationContext):
    """Wrong on purpose: a signal is yielded (see durable-functions-python-notes)."""
    yield context.signal_entity(df.EntityId("counter", context.get_input()), "add", 1)
    return "resumed"


@app.orchestration_trigger(context_name="context")
def carry_on(context: df.DurableOrchestrationContext):
    """Generation 0 waits for a gated activity, then continues as new; generation 1 waits for "ping"."""
    state = context.get_input()
    if state["gen"] == 0:
        yield context.call_activity("gate", state["gate"])
        context.continue_as_new({**state, "gen": 1})
        return None
    return (yield context.wait_for_external_event("ping"))


@app.orchestration_trigger(context_name="context")
def long_wait(context: df.DurableOrchestrationContext):
    """A timer ``seconds`` ahead against a "stop" event; the timer is cancelled when stopped."""
    seconds = context.get_input()
    timer = context.create_timer(context.current_utc_datetime + timedelta(seconds=seconds))
    stop = context.wait_for_external_event("stop")
    winner = yield context.task_any([timer, stop])
    if winner == stop:
        timer.cancel()
        outcome = "stopped"
    else:
        outcome = "expired"
    return (yield context.call_activity("hello", outcome))


@app.orchestration_trigger(context_name="context")
def two_in_flight(context: df.DurableOrchestrationContext):
    """Two activities in flight, the way proactive's ``tenant_broadcast`` keeps them (do not copy).

    Both are scheduled by one ``task_any``; the newer one, with retries, is awaited alone after the
    older one won, and only then is new work yielded. Input ``[key, failures]`` of the newer one.
    """
    key, failures = context.get_input()
    older = context.call_activity("hello", "older")
    newer = context.call_activity_with_retry("flaky", RETRY, [key, failures])
    yield context.task_any([newer, older])
    first = yield older
    second = yield newer  # alone
    after = yield context.call_activity("hello", "after")
    return [first, second, after]


@app.orchestration_trigger(context_name="context")
def two_in_flight_behind(context: df.DurableOrchestrationContext):
    """Two activities in flight, the newer one yielded beside an older one already scheduled (do not copy).

    Like ``tenant_broadcast``: the older activity was scheduled by an earlier ``task_any``, so
    ``task_any([newer, older])`` returns with ``older`` while its action holds ``newer`` alone; new work
    is yielded before ``newer`` is awaited alone. Input ``[older gate, newer key]``.
    """
    older_gate, newer_key = context.get_input()
    older = context.call_activity("gate", older_gate)
    yield context.task_any([older, context.create_timer(context.current_utc_datetime)])
    newer = context.call_activity_with_retry("fail_once", RETRY, newer_key)
    yield context.task_any([newer, older])
    first = yield older
    between = yield context.call_activity("hello", "between")
    second = yield newer  # alone
    return [first, between, second]


@app.activity_trigger(input_name="name")
def hello(name: str) -> str:
    return f"Hello {name}!"


@app.activity_trigger(input_name="payload")
def flaky(payload: list) -> str:
    key, failures = payload
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if ATTEMPTS[key] <= failures:
        raise RuntimeError(f"attempt {ATTEMPTS[key]} failed")
    return f"ok after {ATTEMPTS[key]}"


@app.activity_trigger(input_name="key")
async def fail_once(key: str) -> str:
    """Fails its first attempt once the gate ``key`` opens; later attempts succeed."""
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if ATTEMPTS[key] == 1:
        await GATES.setdefault(key, asyncio.Event()).wait()
        raise RuntimeError("first attempt failed")
    return f"ok after {ATTEMPTS[key]}"


@app.activity_trigger(input_name="key")
async def gate(key: str) -> str:
    await GATES.setdefault(key, asyncio.Event()).wait()
    return key


@app.entity_trigger(context_name="context")
def counter(context: df.DurableEntityContext) -> None:
    value = context.get_state(lambda: 0)
    if context.operation_name == "add":
        value += context.get_input()
        context.set_state(value)
    context.set_result(value)
