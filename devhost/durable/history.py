"""History events in the shape the Durable extension sends to the Python replay engine.

Each builder returns a plain dict (``EventType``, ``EventId``, ``IsPlayed``, ``Timestamp`` plus the
event's own fields), exactly what ``azure.durable_functions`` parses into ``HistoryEvent`` objects.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from azure.durable_functions.models.history.HistoryEventType import HistoryEventType as EventType

__all__ = [
    "COMPLETION_KEYS",
    "SCHEDULED_TYPES",
    "EventType",
    "completion_key",
    "event",
    "iso",
    "parse_iso",
    "scheduling_key",
]

# Events that schedule work, keyed by their EventId (the orchestrator's sequence number).
SCHEDULED_TYPES = frozenset(
    {
        EventType.TASK_SCHEDULED,
        EventType.SUB_ORCHESTRATION_INSTANCE_CREATED,
        EventType.TIMER_CREATED,
        EventType.EVENT_SENT,
    }
)

# Completion events and the field that names the task they complete.
COMPLETION_KEYS: dict[int, str] = {
    EventType.TASK_COMPLETED: "TaskScheduledId",
    EventType.TASK_FAILED: "TaskScheduledId",
    EventType.SUB_ORCHESTRATION_INSTANCE_COMPLETED: "TaskScheduledId",
    EventType.SUB_ORCHESTRATION_INSTANCE_FAILED: "TaskScheduledId",
    EventType.TIMER_FIRED: "TimerId",
}


def iso(moment: datetime) -> str:
    """Format a datetime the way the extension does: ISO 8601, UTC, ``Z`` suffix."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    """Parse an ISO timestamp (``Z`` or offset) into an aware UTC datetime."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def event(event_type: EventType, when: datetime, event_id: int = -1, **fields: Any) -> dict[str, Any]:
    """Build one history event dict.

    Args:
        event_type: the ``HistoryEventType``.
        when: the event's timestamp.
        event_id: the sequence number for scheduling events, -1 otherwise.
        **fields: the event-specific fields (``Name``, ``Input``, ``TaskScheduledId``...).
    """
    return {
        "EventType": int(event_type),
        "EventId": event_id,
        "IsPlayed": False,
        "Timestamp": iso(when),
        **fields,
    }


def completion_key(evt: dict[str, Any]) -> tuple[str, Any] | None:
    """The identity of the task an event completes (to drop duplicate deliveries), or None."""
    etype = evt["EventType"]
    field = COMPLETION_KEYS.get(etype)
    if field is not None:
        kind = "timer" if etype == EventType.TIMER_FIRED else "task"
        return (kind, evt[field])
    if etype == EventType.EVENT_RAISED and evt.get("EntityResponse"):
        return ("entity", evt["Name"])
    return None


def scheduling_key(evt: dict[str, Any]) -> tuple[str, Any] | None:
    """The identity a scheduling event gives its task (what :func:`completion_key` of its result is)."""
    etype = evt["EventType"]
    if etype in (EventType.TASK_SCHEDULED, EventType.SUB_ORCHESTRATION_INSTANCE_CREATED):
        return ("task", evt["EventId"])
    if etype == EventType.TIMER_CREATED:
        return ("timer", evt["EventId"])
    if etype == EventType.EVENT_SENT:
        return ("entity", json.loads(evt["Input"])["id"])
    return None
