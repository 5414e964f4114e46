"""A Function app written the way the product writes them, for the devhost tests."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import timedelta

import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)

# Side effects the tests can observe (activities run in this process).
EFFECTS: list[str] = []
FLAKY_ATTEMPTS: dict[str, int] = {}


@app.route(route="orchestrators/{name}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def http_start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    body = req.get_body()
    instance_id = await client.start_new(req.route_params["name"], None, json.loads(body) if body else None)
    return client.create_check_status_response(req, instance_id)


@app.route(route="instances/{instance_id}", methods=["GET"])
@app.durable_client_input(client_name="client")
async def http_status(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    status = await client.get_status(req.route_params["instance_id"])
    if not status:
        return func.HttpResponse(status_code=404)
    return func.HttpResponse(json.dumps(status.to_json()), mimetype="application/json")


@app.route(route="instances/{instance_id}/events/{name}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def http_raise(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    await client.raise_event(req.route_params["instance_id"], req.route_params["name"], req.get_json())
    return func.HttpResponse(status_code=202)


@app.route(route="instances/{instance_id}/terminate", methods=["POST"])
@app.durable_client_input(client_name="client")
async def http_terminate(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    await client.terminate(req.route_params["instance_id"], "stopped by test")
    return func.HttpResponse(status_code=202)


@app.route(route="counters/{key}", methods=["POST", "GET"])
@app.durable_client_input(client_name="client")
async def http_counter(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    entity = df.EntityId("counter", req.route_params["key"])
    if req.method == "POST":
        await client.signal_entity(entity, "add", int(req.params.get("amount", "1")))
        return func.HttpResponse(status_code=202)
    state = await client.read_entity_state(entity)
    if not state.entity_exists:
        return func.HttpResponse(status_code=404)
    return func.HttpResponse(json.dumps(state.entity_state), mimetype="application/json")


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("ok")


@app.route(route="echo/{word}/{count:int?}", methods=["GET", "PUT"])
def echo(req: func.HttpRequest) -> func.HttpResponse:
    body = {
        "word": req.route_params.get("word"),
        "count": req.route_params.get("count"),
        "q": req.params.get("q"),
    }
    return func.HttpResponse(json.dumps(body), mimetype="application/json")


@app.route(route="boom", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("boom")


# ---------------------------------------------------------------- orchestrators


@app.orchestration_trigger(context_name="context")
def hello_sequence(context: df.DurableOrchestrationContext):
    names = context.get_input() or ["Tokyo", "Seattle", "London"]
    results = []
    for name in names:
        results.append((yield context.call_activity("say_hello", name)))
    return results


@app.orchestration_trigger(context_name="context")
def fan_out(context: df.DurableOrchestrationContext):
    count = context.get_input()
    tasks = [context.call_activity("double", i) for i in range(count)]
    results = yield context.task_all(tasks)
    context.set_custom_status({"done": len(results)})
    return sum(results)


@app.orchestration_trigger(context_name="context")
def with_timer(context: df.DurableOrchestrationContext):
    hours = context.get_input()
    fire_at = context.current_utc_datetime + timedelta(hours=hours)
    context.set_custom_status("waiting")
    yield context.create_timer(fire_at)
    context.set_custom_status("fired")
    return context.current_utc_datetime.isoformat()


@app.orchestration_trigger(context_name="context")
def parent(context: df.DurableOrchestrationContext):
    first = yield context.call_sub_orchestrator("hello_sequence", ["a", "b"])
    second = yield context.call_sub_orchestrator("hello_sequence", ["c"], f"{context.instance_id}-child")
    return first + second


@app.orchestration_trigger(context_name="context")
def failing_child_parent(context: df.DurableOrchestrationContext):
    try:
        yield context.call_sub_orchestrator("fails", None)
    except Exception as exc:
        return f"caught: {exc}"
    return "not reached"


@app.orchestration_trigger(context_name="context")
def fails(context: df.DurableOrchestrationContext):
    yield context.call_activity("say_hello", "x")
    raise ValueError("orchestrator gave up")


@app.orchestration_trigger(context_name="context")
def activity_failure(context: df.DurableOrchestrationContext):
    try:
        yield context.call_activity("explode", "bad input")
    except Exception as exc:
        return str(exc)
    return "not reached"


@app.orchestration_trigger(context_name="context")
def retrying(context: df.DurableOrchestrationContext):
    key, failures, attempts = context.get_input()
    retry = df.RetryOptions(first_retry_interval_in_milliseconds=1000, max_number_of_attempts=attempts)
    other = context.call_activity("say_hello", "other")
    flaky = context.call_activity_with_retry("flaky", retry, [key, failures])
    try:
        results = yield context.task_all([flaky, other])
    except Exception as exc:
        return {"error": str(exc)}
    return results


@app.orchestration_trigger(context_name="context")
def counting(context: df.DurableOrchestrationContext):
    state = context.get_input()
    n, limit = state["n"], state["limit"]
    yield context.call_activity("say_hello", str(n))
    if n + 1 < limit:
        context.continue_as_new({"n": n + 1, "limit": limit})
        return None
    return n + 1


@app.orchestration_trigger(context_name="context")
def approval(context: df.DurableOrchestrationContext):
    timeout = context.create_timer(context.current_utc_datetime + timedelta(hours=1))
    approved = context.wait_for_external_event("Approval")
    winner = yield context.task_any([approved, timeout])
    if winner == approved:
        timeout.cancel()
        return {"approved": approved.result}
    return "timed out"


@app.orchestration_trigger(context_name="context")
def wait_two_events(context: df.DurableOrchestrationContext):
    a = yield context.wait_for_external_event("A")
    b = yield context.wait_for_external_event("B")
    return [a, b]


@app.orchestration_trigger(context_name="context")
def entity_user(context: df.DurableOrchestrationContext):
    key = context.get_input()
    entity = df.EntityId("counter", key)
    context.signal_entity(entity, "add", 5)
    value = yield context.call_entity(entity, "add", 10)
    try:
        yield context.call_entity(entity, "explode")
    except Exception as exc:
        error = str(exc)
    current = yield context.call_entity(entity, "get")
    return {"after_add": value, "error": error, "current": current}


@app.orchestration_trigger(context_name="context")
def nondeterministic(context: df.DurableOrchestrationContext):
    # Wrong on purpose: uuid4 differs on every replay, so the replay schedules other activities.
    first = "say_hello" if uuid.uuid4().int % 2 else "double"
    yield context.call_activity(first, 1)
    for i in range(20):
        yield context.call_activity("say_hello", str(i))
    return "finished"


@app.orchestration_trigger(context_name="context")
def long_steps(context: df.DurableOrchestrationContext):
    key, steps = context.get_input()
    for i in range(steps):
        yield context.call_activity("record_effect", f"{key}:{i}")
    tasks = [context.call_activity("record_effect", f"{key}:fan{i}") for i in range(5)]
    yield context.task_all(tasks)
    return steps


@app.orchestration_trigger(context_name="context")
def crash_drill(context: df.DurableOrchestrationContext):
    """Waves of activities (one execution each, via continue_as_new), entity signals, then a child,
    a timer and an entity call: everything a restart has to resume.

    Input: ``{"run", "waves", "width", "signals", "timer_seconds", "table"?}`` (+ ``wave``, ``total``).
    """
    cfg = context.get_input()
    run, wave, total = cfg["run"], cfg.get("wave", 0), cfg.get("total", 0)
    entity = df.EntityId("counter", run)
    if wave < cfg["waves"]:
        tasks = [
            context.call_activity("drill_step", {**_drill_target(cfg), "key": f"w{wave}-{i}", "value": i})
            for i in range(cfg["width"])
        ]
        results = yield context.task_all(tasks)
        for _ in range(cfg["signals"]):
            context.signal_entity(entity, "add", 1)  # the last episode before continue_as_new
        context.continue_as_new({**cfg, "wave": wave + 1, "total": total + sum(results)})
        return None
    child = yield context.call_sub_orchestrator(
        "crash_drill_child", {**_drill_target(cfg), "steps": 3}, f"{context.instance_id}-child"
    )
    yield context.create_timer(context.current_utc_datetime + timedelta(seconds=cfg["timer_seconds"]))
    count = yield context.call_entity(entity, "add", 1)
    return {"total": total, "child": child, "count": count}


@app.orchestration_trigger(context_name="context")
def crash_drill_child(context: df.DurableOrchestrationContext):
    cfg = context.get_input()
    results = []
    for i in range(cfg["steps"]):
        step = {"run": cfg["run"], "table": cfg.get("table"), "key": f"child-{i}", "value": 1000 + i}
        results.append((yield context.call_activity("drill_step", step)))
    context.signal_entity(df.EntityId("counter", cfg["run"]), "add", 1)
    return sum(results)


def _drill_target(cfg: dict) -> dict:
    return {"run": cfg["run"], "table": cfg.get("table")}


# ---------------------------------------------------------------- activities


@app.activity_trigger(input_name="name")
def say_hello(name: str) -> str:
    return f"Hello {name}!"


@app.activity_trigger(input_name="value")
async def double(value: int) -> int:
    await asyncio.sleep(0)
    return value * 2


@app.activity_trigger(input_name="payload")
def explode(payload: str) -> str:
    raise ValueError(f"cannot handle {payload}")


@app.activity_trigger(input_name="payload")
def flaky(payload: list) -> str:
    key, failures = payload
    FLAKY_ATTEMPTS[key] = FLAKY_ATTEMPTS.get(key, 0) + 1
    if FLAKY_ATTEMPTS[key] <= failures:
        raise RuntimeError(f"attempt {FLAKY_ATTEMPTS[key]} failed")
    return f"ok after {FLAKY_ATTEMPTS[key]}"


@app.activity_trigger(input_name="marker")
async def record_effect(marker: str) -> str:
    EFFECTS.append(marker)
    await asyncio.sleep(0.01)
    return marker


# run -> keys of drill_step effects applied in this process (when no table is given).
DRILL_EFFECTS: dict[str, set[str]] = {}


@app.activity_trigger(input_name="step")
async def drill_step(step: dict) -> int:
    """Apply one effect, idempotently: a row per key in an Azure table, or a set entry in memory."""
    if step.get("table"):
        from azure.data.tables.aio import TableClient

        async with TableClient.from_connection_string(
            os.environ["AzureWebJobsStorage"],  # noqa: SIM112 - the Functions setting is spelled so
            step["table"],
        ) as table:
            await table.upsert_entity(
                {"PartitionKey": step["run"], "RowKey": step["key"], "Value": step["value"]}
            )
    else:
        DRILL_EFFECTS.setdefault(step["run"], set()).add(step["key"])
        await asyncio.sleep(0)
    return int(step["value"])


# ---------------------------------------------------------------- entities


@app.entity_trigger(context_name="context")
def counter(context: df.DurableEntityContext) -> None:
    value = context.get_state(lambda: 0)
    operation = context.operation_name
    if operation == "add":
        value += context.get_input()
        context.set_state(value)
        context.set_result(value)
    elif operation == "get":
        context.set_result(value)
    elif operation == "explode":
        raise ValueError("counter cannot explode")
    elif operation == "delete":
        context.destruct_on_exit()


# ---------------------------------------------------------------- queue and timer triggers

QUEUE_SEEN: list[tuple[str, int]] = []
TIMER_RUNS: list[bool] = []


@app.queue_trigger(arg_name="msg", queue_name="devhost-jobs", connection="AzureWebJobsStorage")
def job(msg: func.QueueMessage) -> None:
    text = msg.get_body().decode()
    QUEUE_SEEN.append((text, msg.dequeue_count or 0))
    if text.startswith("fail"):
        raise RuntimeError(f"cannot process {text}")


@app.timer_trigger(schedule="0 0 3 * * *", arg_name="timer", run_on_startup=False)
def nightly(timer: func.TimerRequest) -> None:
    TIMER_RUNS.append(timer.past_due)
