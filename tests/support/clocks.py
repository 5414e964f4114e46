"""Clocks a test moves by hand, so windows, deadlines and delays are checked exactly without sleeping."""

from __future__ import annotations

from datetime import datetime, timedelta


class FakeClock:
    """Monotonic seconds (``time.monotonic``'s shape) that move only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class WallClock:
    """An aware ``datetime`` (a ``utc_now``-shaped clock) that moves only when the test says so."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta
