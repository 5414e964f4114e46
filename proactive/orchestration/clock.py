"""Time helpers for orchestrators: they only ever read ``context.current_utc_datetime``."""

from __future__ import annotations

from collections.abc import Generator
from datetime import UTC, datetime
from typing import Any

from proactive import function_names as fn

Orchestration = Generator[Any, Any, Any]


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


def wait_until(context: Any, fire_at: datetime) -> Orchestration:
    """Wait on a durable timer until ``fire_at`` unless a cancel event arrives first.

    Returns (through ``yield from``) ``True`` when cancelled. A cancel raised while the orchestration was
    not waiting is kept by the SDK and resolves the next wait at once.
    """
    if fire_at <= now(context):
        return False
    timer = context.create_timer(fire_at)
    cancel = context.wait_for_external_event(fn.CANCEL_EVENT)
    winner = yield context.task_any([timer, cancel])
    if winner == timer:
        return False
    timer.cancel()
    return True
