"""Time helpers for orchestrators: they only ever read ``context.current_utc_datetime``."""

from __future__ import annotations

from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from proactive import function_names as fn

Orchestration = Generator[Any, Any, Any]

# The longest single durable timer an orchestration creates (see wait_until).
MAX_TIMER_SPAN = timedelta(days=1)


def aware(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (the SDK parses history times with ``tzutc``; tests may not)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_iso(value: str) -> datetime:
    """An ISO 8601 time (``Z`` or an offset) as an aware UTC datetime."""
    return aware(datetime.fromisoformat(value.replace("Z", "+00:00")))


def now(context: Any) -> datetime:
    """The orchestration's deterministic current time (the episode's start), aware UTC."""
    return aware(context.current_utc_datetime)


def iso(value: datetime) -> str:
    """JSON-safe ISO text with ``Z`` (orchestrator outputs and custom status must be plain JSON)."""
    return aware(value).isoformat().replace("+00:00", "Z")


class WaitEnd(StrEnum):
    """How :func:`wait_until` ended."""

    TIME = "time"
    CANCELLED = "cancelled"
    WOKEN = "woken"


def wait_until(context: Any, fire_at: datetime, *, wake_event: str | None = None) -> Orchestration:
    """Wait on durable timers until ``fire_at`` unless a cancel event arrives first.

    Returns (through ``yield from``) a :class:`WaitEnd`. A cancel raised while the orchestration was not
    waiting is kept by the SDK and resolves the next wait at once. With ``wake_event``, that event ends the
    wait early too (``WOKEN``). The SDK never forgets an event raised while nobody waited: in the same
    execution it resolves *every* later waiter of that name at once (``deferred_tasks`` is never cleared).
    Harmless for a cancel; after ``WOKEN`` the caller must continue as new before it waits for the wake
    event again.

    A long wait is a chain of timers of at most :data:`MAX_TIMER_SPAN`, each raced against a cancel waiter
    of its own. With Azure Storage the extension makes the SDK split a timer longer than 6 days into
    3-day pieces, and cancelling the SDK's long timer leaves its current piece running (the cancel then
    lands when that piece fires, up to 3 days late); a chain of short timers never reaches that path, and
    the SDK hands an event to its newest waiter, so the cancel always reaches the wait under way.
    """
    while fire_at > now(context):
        step = min(fire_at, now(context) + MAX_TIMER_SPAN)
        timer = context.create_timer(step)
        cancel = context.wait_for_external_event(fn.CANCEL_EVENT)
        waits = [timer, cancel]
        if wake_event is not None:
            waits.append(context.wait_for_external_event(wake_event))
        winner = yield context.task_any(waits)
        if winner != timer:
            timer.cancel()
            return WaitEnd.CANCELLED if winner == cancel else WaitEnd.WOKEN
    return WaitEnd.TIME
