"""The extension model on hand-built histories, where a test needs events in an exact order.

The orchestrator still runs on the real SDK (``run_episode``); :func:`replay_actions` then does what
the extension does with its output.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.durable_functions.models.DurableOrchestrationContext import DurableOrchestrationContext
from azure.durable_functions.models.utils.json_utils import parse_timespan_attrib

from devhost.durable import FunctionIndex
from devhost.durable import history as h
from devhost.durable.history import EventType
from devhost.durable.orchestration import run_episode
from devhost.durable.shim import ExtensionSettings, Outcome, TimerLimits, replay_actions, timespan
from tests.devhost.apps import patterns

T0 = datetime(2026, 1, 1, tzinfo=UTC)
INDEX = FunctionIndex.from_app(patterns.app)
SETTINGS = ExtensionSettings.of(INDEX.activities, INDEX.orchestrators, INDEX.entities)


def test_timer_limits_reach_the_sdk_as_dotnet_timespans() -> None:
    """``OrchestrationContextToString`` writes ``MaximumShortTimerDuration`` and
    ``LongRunningTimerIntervalLength`` as .NET TimeSpans ("6.00:00:00", "3.00:00:00" for Azure
    Storage), the fields ``DurableOrchestrationContext.from_json`` reads.
    """
    fields = TimerLimits().context_fields()
    assert fields == {
        "longRunningTimerIntervalDuration": "3.00:00:00",
        "maximumShortTimerDuration": "6.00:00:00",
    }
    assert timespan(timedelta(seconds=2.5)) == "00:00:02.5000000"
    assert parse_timespan_attrib(timespan(timedelta(days=1, hours=2, seconds=3))) == timedelta(1, 7203)
    history = [
        h.event(EventType.ORCHESTRATOR_STARTED, T0),
        h.event(EventType.EXECUTION_STARTED, T0, Version=""),
    ]
    context = DurableOrchestrationContext.from_json(
        json.dumps(
            {
                "history": history,
                "instanceId": "i",
                "isReplaying": False,
                "parentInstanceId": None,
                "upperSchemaVersion": 1,
                "upperSchemaVersionNew": 2,
                **fields,
            }
        )
    )
    assert context._maximum_short_timer_duration == timedelta(days=6)
    assert context._long_timer_interval_duration == timedelta(days=3)


def _carry_on_episode(new_events: list[dict[str, Any]]) -> Any:
    started = h.event(
        EventType.EXECUTION_STARTED,
        T0,
        Name="carry_on",
        Version="",
        Input=json.dumps({"gen": 0, "gate": "g"}),
    )
    past = [
        h.event(EventType.ORCHESTRATOR_STARTED, T0),
        started,
        h.event(EventType.TASK_SCHEDULED, T0, 0, Name="gate", Input='"g"'),
        h.event(EventType.ORCHESTRATOR_COMPLETED, T0),
    ]
    later = T0 + timedelta(seconds=5)
    history = [{**e, "IsPlayed": True} for e in past] + [
        h.event(EventType.ORCHESTRATOR_STARTED, later),
        *new_events,
    ]
    context = {
        "history": history,
        "instanceId": "i",
        "isReplaying": True,
        "parentInstanceId": None,
        "input": started["Input"],
        "upperSchemaVersion": 1,
        "upperSchemaVersionNew": 2,
    }
    result = run_episode(INDEX.orchestrators["carry_on"].callable, context)
    return replay_actions(history, result.state, SETTINGS, name="carry_on", instance_id="i", execution_id="e")


def test_event_raised_after_continue_as_new_in_the_same_episode_is_carried_over() -> None:
    """DTFx ``HandleEventRaisedEvent``: once the replay reached ``ContinueAsNew``, later events of the
    episode go to the next execution (Azure Storage's ``BehaviorOnContinueAsNew.Carryover``).
    """
    done = h.event(EventType.TASK_COMPLETED, T0, TaskScheduledId=0, Result='"g"')
    ping = h.event(EventType.EVENT_RAISED, T0, Name="ping", Input="7")
    decision = _carry_on_episode([done, ping])
    assert decision.outcome is Outcome.CONTINUED_AS_NEW
    assert json.loads(decision.continue_as_new_input or "") == {"gen": 1, "gate": "g"}
    assert [(e["Name"], e["Input"]) for e in decision.carryover] == [("ping", "7")]


def test_event_raised_before_the_replay_reaches_continue_as_new_is_dropped() -> None:
    """The same event before the completion that lets the replay reach ``ContinueAsNew``: the
    extension's ``RaiseEvent`` buffers it (nobody waits), and ``ContinueAsNew`` without
    ``preserveUnprocessedEvents`` drops it.
    """
    done = h.event(EventType.TASK_COMPLETED, T0, TaskScheduledId=0, Result='"g"')
    ping = h.event(EventType.EVENT_RAISED, T0, Name="ping", Input="7")
    decision = _carry_on_episode([ping, done])
    assert decision.outcome is Outcome.CONTINUED_AS_NEW
    assert decision.carryover == []
