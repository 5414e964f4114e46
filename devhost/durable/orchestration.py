"""One replay episode on the real ``azure-functions-durable`` engine, and the determinism check.

The Durable extension sends the orchestrator its whole history as JSON and gets back the actions
the code scheduled; it then matches those actions, by sequence number, against what the history
says was scheduled before (DTFx's ``NonDeterministicOrchestrationException`` when they differ).

This module does the same. It builds the context JSON, runs it through the SDK's own
``DurableOrchestrationContext.from_json`` and ``Orchestrator.handle`` (the code behind the trigger's
``handle`` function), and watches the context hand out sequence numbers. Watching, rather than
re-deriving numbers from the action list, matters for ``call_activity_with_retry``: the SDK gives the
retry timer and the next attempt new numbers when the failure is replayed, interleaved with the
other tasks, exactly as DTFx's retry interceptor does.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from azure.durable_functions.models.actions.CallActivityAction import CallActivityAction
from azure.durable_functions.models.actions.CallActivityWithRetryAction import CallActivityWithRetryAction
from azure.durable_functions.models.actions.CallEntityAction import CallEntityAction
from azure.durable_functions.models.actions.CallSubOrchestratorAction import CallSubOrchestratorAction
from azure.durable_functions.models.actions.CallSubOrchestratorWithRetryAction import (
    CallSubOrchestratorWithRetryAction,
)
from azure.durable_functions.models.actions.ContinueAsNewAction import ContinueAsNewAction
from azure.durable_functions.models.actions.CreateTimerAction import CreateTimerAction
from azure.durable_functions.models.actions.NoOpAction import NoOpAction
from azure.durable_functions.models.actions.SignalEntityAction import SignalEntityAction
from azure.durable_functions.models.DurableOrchestrationContext import DurableOrchestrationContext
from azure.durable_functions.models.Task import AtomicTask
from azure.durable_functions.orchestrator import Orchestrator

from devhost.durable.history import SCHEDULED_TYPES, EventType
from devhost.durable.sdk import sdk_warnings_logged

OUT_OF_PROC_MARKER = "$OutOfProcData$:"

# Which history event records each kind of scheduled task.
EVENT_FOR_KIND = {
    "activity": EventType.TASK_SCHEDULED,
    "suborchestration": EventType.SUB_ORCHESTRATION_INSTANCE_CREATED,
    "timer": EventType.TIMER_CREATED,
    "entity_call": EventType.EVENT_SENT,
    "entity_signal": EventType.EVENT_SENT,
}


class NonDeterminismError(Exception):
    """The replay scheduled something other than what the history recorded."""


@dataclass
class ScheduledTask:
    """A task the orchestrator scheduled, under the sequence number the SDK gave it."""

    task_id: int
    kind: str  # activity | suborchestration | timer | entity_call | entity_signal | continue_as_new | http
    name: str = ""  # function name, or the entity operation
    input: str | None = None  # JSON text
    target: str | None = None  # sub-orchestration instance id or entity scheduler id
    fire_at: datetime | None = None
    cancelled: bool = False

    def describe(self) -> str:
        """Human-readable, for error messages."""
        if self.kind == "timer":
            return "a durable timer"
        if self.kind.startswith("entity"):
            return f"{self.kind.replace('_', ' ')} '{self.name}' on {self.target}"
        return f"{self.kind} '{self.name}'"


@dataclass
class EpisodeResult:
    """What one replay produced."""

    done: bool = False
    output: Any = None
    custom_status: Any = None
    error: str | None = None
    details: str = ""
    continue_as_new_input: str | None = None
    tasks: dict[int, ScheduledTask] = field(default_factory=dict)
    action_count: int = 0


def _describe_action(task_id: int, action: Any, now: datetime, parent: Any = None) -> ScheduledTask:
    if isinstance(action, NoOpAction):
        # Placeholders the SDK creates for call_*_with_retry: a timer after a failed attempt,
        # then the next attempt of the wrapped action.
        if action.metadata == "-WithRetry timer":
            delay = timedelta(milliseconds=parent.retry_options.first_retry_interval_in_milliseconds)
            return ScheduledTask(task_id, "timer", fire_at=now + delay)
        return _describe_action(task_id, parent.actions, now)
    if isinstance(action, CallActivityAction | CallActivityWithRetryAction):
        return ScheduledTask(task_id, "activity", action.function_name, action.input_)
    if isinstance(action, CallSubOrchestratorAction | CallSubOrchestratorWithRetryAction):
        return ScheduledTask(
            task_id, "suborchestration", action.function_name, action._input, action.instance_id
        )
    if isinstance(action, CreateTimerAction):
        return ScheduledTask(task_id, "timer", fire_at=action.fire_at, cancelled=action.is_cancelled)
    if isinstance(action, CallEntityAction):
        return ScheduledTask(task_id, "entity_call", action.operation, action.input_, action.instance_id)
    if isinstance(action, SignalEntityAction):
        return ScheduledTask(task_id, "entity_signal", action.operation, action.input_, action.instance_id)
    if isinstance(action, ContinueAsNewAction):
        return ScheduledTask(task_id, "continue_as_new", input=action.input_)
    return ScheduledTask(task_id, "http" if type(action).__name__ == "CallHttpAction" else "unknown")


def run_episode(handle: Any, context: dict[str, Any], now: datetime) -> EpisodeResult:
    """Replay ``context`` (history JSON and all) through the orchestrator behind ``handle``.

    Args:
        handle: the callable ``@app.orchestration_trigger`` registered (``Orchestrator.create``'s handle).
        context: the context the extension would send (``history``, ``instanceId``, ``input``...).
        now: this episode's ``OrchestratorStarted`` time (retry timers are due relative to it).
    """
    ctx = DurableOrchestrationContext.from_json(json.dumps(context))
    ctx._input_expected_type = getattr(handle, "_df_input_type", None)
    result = EpisodeResult()
    tracked: list[tuple[int, Any]] = []

    add_to_open_tasks = ctx._add_to_open_tasks
    record_fire_and_forget = ctx._record_fire_and_forget_action

    def watch_open_tasks(task: Any) -> None:
        before = ctx._sequence_number
        add_to_open_tasks(task)
        if isinstance(task, AtomicTask) and ctx._sequence_number == before + 1:
            tracked.append((before, task))

    def watch_fire_and_forget(action: Any) -> None:
        before = ctx._sequence_number
        record_fire_and_forget(action)
        tracked.append((before, action))

    ctx._add_to_open_tasks = watch_open_tasks  # type: ignore[method-assign]
    ctx._record_fire_and_forget_action = watch_fire_and_forget  # type: ignore[method-assign]

    try:
        # The SDK warns, e.g., when an event arrives before the code waits for it (it defers the
        # event, which is correct); the worker logs such warnings, so do we.
        with sdk_warnings_logged():
            state = json.loads(Orchestrator(handle.orchestrator_function).handle(ctx))
    except Exception as exc:
        message = str(exc)
        if OUT_OF_PROC_MARKER in message:
            message = message.split(OUT_OF_PROC_MARKER, 1)[0].strip()
        cause = exc.__cause__ or exc
        result.error = message or type(cause).__name__
        result.details = "".join(traceback.format_exception(cause))
        state = {}
    result.done = bool(state.get("isDone"))
    result.output = state.get("output")
    result.custom_status = state.get("customStatus", ctx.custom_status)
    result.action_count = sum(len(group) for group in state.get("actions", []))
    for task_id, item in tracked:
        if isinstance(item, AtomicTask):
            scheduled = _describe_action(task_id, item._get_action(), now, item.parent)
        else:
            scheduled = _describe_action(task_id, item, now)
        result.tasks[task_id] = scheduled
        if scheduled.kind == "continue_as_new":
            result.continue_as_new_input = scheduled.input
    return result


def new_tasks(history: list[dict[str, Any]], result: EpisodeResult) -> list[ScheduledTask]:
    """Check the replay against the history and return the tasks scheduled for the first time.

    Raises:
        NonDeterminismError: a sequence number the history used for one thing was used for another,
            or something the history scheduled was not scheduled again by the replay.
    """
    recorded = {e["EventId"]: e for e in history if e["EventType"] in SCHEDULED_TYPES}
    fresh: list[ScheduledTask] = []
    for task_id in sorted(result.tasks):
        task = result.tasks[task_id]
        previous = recorded.get(task_id)
        if previous is None:
            if task.kind != "continue_as_new":
                fresh.append(task)
            continue
        expected_type = EVENT_FOR_KIND.get(task.kind)
        same = previous["EventType"] == expected_type and (
            task.kind == "timer"
            or (task.kind.startswith("entity") and previous.get("InstanceId") == task.target)
            or previous.get("Name") == task.name
        )
        if not same:
            raise NonDeterminismError(
                f"Non-Deterministic workflow detected: a previous execution of this orchestration scheduled "
                f"{_describe_event(previous)} with sequence ID {task_id}, but the current replay scheduled "
                f"{task.describe()} instead. Was a change made to the orchestrator code after this instance "
                "had already started running, or does it read the clock, random numbers or I/O?"
            )
    if result.error is None:
        missing = sorted(set(recorded) - set(result.tasks))
        if missing:
            previous = recorded[missing[0]]
            raise NonDeterminismError(
                f"Non-Deterministic workflow detected: a previous execution of this orchestration scheduled "
                f"{_describe_event(previous)} with sequence ID {missing[0]}, but the current replay execution "
                "hasn't scheduled this task. Was a change made to the orchestrator code after this instance "
                "had already started running, or does it read the clock, random numbers or I/O?"
            )
    return fresh


def _describe_event(evt: dict[str, Any]) -> str:
    etype = evt["EventType"]
    if etype == EventType.TASK_SCHEDULED:
        return f"activity '{evt.get('Name')}'"
    if etype == EventType.SUB_ORCHESTRATION_INSTANCE_CREATED:
        return f"suborchestration '{evt.get('Name')}'"
    if etype == EventType.TIMER_CREATED:
        return "a durable timer"
    return f"an entity operation '{evt.get('Name')}' on {evt.get('InstanceId')}"
