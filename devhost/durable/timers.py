"""Durable timers: a heap of (fire_at, callback) woken by the clock.

With a :class:`~devhost.durable.clock.ManualClock` nothing fires until the test advances time;
with the system clock the service sleeps until the earliest timer (at most one second at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Awaitable, Callable
from datetime import datetime

from devhost.durable.clock import Clock

FireCallback = Callable[[], Awaitable[None]]


class TimerService:
    """Fires callbacks when the clock reaches their time."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._heap: list[tuple[datetime, int, FireCallback]] = []
        self._counter = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        clock.subscribe(self._on_clock_moved)

    def _on_clock_moved(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        """Start the firing loop on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="devhost-timers")

    async def stop(self) -> None:
        """Stop the loop; pending timers are dropped (they are re-armed from history on restart)."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    def arm(self, fire_at: datetime, callback: FireCallback) -> None:
        """Run ``callback`` once the clock reaches ``fire_at``."""
        heapq.heappush(self._heap, (fire_at, next(self._counter), callback))
        self._wake.set()

    @property
    def pending(self) -> int:
        """How many timers wait to fire."""
        return len(self._heap)

    async def _run(self) -> None:
        while True:
            now = self._clock.now()
            due: list[FireCallback] = []
            while self._heap and self._heap[0][0] <= now:
                due.append(heapq.heappop(self._heap)[2])
            for callback in due:
                await callback()
            timeout = 1.0
            if self._heap:
                timeout = max(0.0, min(1.0, (self._heap[0][0] - self._clock.now()).total_seconds()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # unlike wait_for, never swallows a cancel
                    await self._wake.wait()
