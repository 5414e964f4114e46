"""Clocks for the durable runtime: real time, or a manual clock tests advance by hand.

Durable timers, retry delays and ``current_utc_datetime`` all read the runtime's clock, so a test can
move a timer one hour ahead into the past without sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Where the runtime reads the current UTC time."""

    def now(self) -> datetime:
        """Return the current time, timezone-aware UTC."""
        ...

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Register a callback run whenever time jumps (manual clocks only)."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        """Return ``datetime.now(UTC)``."""
        return datetime.now(UTC)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Wall time never jumps, so listeners are never called."""


class ManualClock:
    """A clock that only moves when told to; listeners (the timer service) wake on every move."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """Return the current manual time."""
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        """Move time forward by ``delta`` and wake the listeners; returns the new time."""
        with self._lock:
            self._now += delta
            now = self._now
        for listener in list(self._listeners):
            listener()
        return now

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Register a callback run after every :meth:`advance`."""
        self._listeners.append(listener)
