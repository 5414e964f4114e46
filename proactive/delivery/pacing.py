"""Admitting one grant's requests at the tenant's pace, so a batch never bursts and a late one still sends.

A grant of the ``tenant_limiter`` entity allows ``tokens`` requests, no earlier than ``notBefore``, no later
than ``sendBy``, and at least ``paceSeconds`` apart. :class:`SlotPacer` is a gate the batch's requests pass
one at a time (retries included): the request at the gate waits until ``at = max(next, now)`` (``next``
starts at ``notBefore``) and starts when it wakes; ``next`` becomes *its start* plus one pace. A request
that wakes late (a busy event loop) is not lost and costs nobody else a slot: it starts at once and the
schedule shifts behind it. When no time is left (the ``tokens`` are used, or the start would lie after
``sendBy``) :meth:`SlotPacer.acquire` answers ``None`` and the caller gives its row back for the next batch.

Guarantee, for the requests :meth:`SlotPacer.acquire` lets through: at most ``tokens``, none before
``notBefore`` or after ``sendBy``, and consecutive starts at least ``pace`` apart, so any window of ``W``
seconds holds at most ``floor(W / pace) + 1`` of them whatever the event loop's delays. The limiter places
the next grant of the tenant one pace after ``sendBy``, so the bound holds across batches too.

Why a gate and not reservations handed out ahead: with many workers each holding a future time, a loop
that wakes them late makes every one of them miss its time; each gives it up and queues again at the end,
so the schedule runs out while almost nothing is sent (a loaded host sent 0-10 rows of 50-token grants).

Times are epoch seconds from an injected ``clock``, waits go through an injected ``sleep`` (STYLE.md rule
12): tests drive the pacer with a fake clock and check every delay exactly.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

__all__ = ["SlotPacer"]

# Epoch seconds near 1.7e9 are floats with a resolution of about 2.4e-7 s, so ``now + (slot - now)``
# can land a hair off ``slot``; one microsecond absorbs that without loosening the guarantee in practice.
_EPSILON = 1e-6


class SlotPacer:
    """Admits the requests of one batch within one grant (see the module docstring).

    Args:
        not_before: epoch seconds; no request before it.
        pace_seconds: least spacing of reserved times (> 0).
        tokens: how many requests the grant allows (the batch's ``limit``).
        send_by: epoch seconds; no request starts after it.
        slack_seconds: lateness that is not counted as lost slots in :attr:`skipped` (>= 0).
        clock: current epoch seconds.
        sleep: awaited until a reserved time comes (``asyncio.sleep`` in production).

    Attributes:
        skipped: paces lost to lateness: a request that woke more than ``slack`` after its time.
        first_start: when the first request let through started (epoch seconds), ``None`` before.
        last_start: when the latest request let through started, ``None`` before.
        first_ready: when the first request asked to start (epoch seconds), ``None`` before: how long the
            batch needed to get ready, which teaches the limiter how far ahead to place grants.
    """

    def __init__(
        self,
        *,
        not_before: float,
        pace_seconds: float,
        tokens: int,
        send_by: float,
        slack_seconds: float = 0.0,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        if not pace_seconds > 0 or not math.isfinite(pace_seconds):
            raise ValueError("pace_seconds must be a positive number")
        if not slack_seconds >= 0 or not math.isfinite(slack_seconds):
            raise ValueError("slack_seconds must not be negative")
        self._not_before = not_before
        self._pace = pace_seconds
        self._tokens = max(0, tokens)
        self._send_by = send_by
        self._slack = slack_seconds
        self._clock = clock
        self._sleep = sleep
        self._origin: float | None = None
        self._next = not_before  # the earliest time the next request may start
        self._taken = 0  # requests let through: at most ``tokens``
        self._gate = asyncio.Lock()  # FIFO: one request at a time waits for its time
        self._exhausted = False
        self.skipped = 0
        self.first_start: float | None = None
        self.last_start: float | None = None
        self.first_ready: float | None = None

    @property
    def origin(self) -> float | None:
        """The first request's time, fixed by the first :meth:`acquire`; ``None`` before."""
        return self._origin

    @property
    def exhausted(self) -> bool:
        """Whether :meth:`acquire` has answered ``None``: it always will from then on."""
        return self._exhausted

    async def acquire(self) -> float | None:
        """Wait at the gate for the next free time and return when the request may start.

        Returns:
            The start time (epoch seconds, the clock read after waking, at least one pace after the
            previous start), or ``None`` when no time is left (all ``tokens`` used, or the start would lie
            after ``send_by``). Once ``None``, always ``None``.
        """
        if self.first_ready is None:
            self.first_ready = self._clock()
        async with self._gate:
            if self._exhausted:
                return None
            at = max(self._next, self._clock())
            if self._taken >= self._tokens or at > self._send_by + _EPSILON:
                self._exhausted = True
                return None
            if self._origin is None:
                self._origin = at
            started = await self._wait_until(at)
            late = started - at - self._slack
            lost = math.ceil(late / self._pace - _EPSILON) if late > _EPSILON else 0
            if started > self._send_by + _EPSILON:
                self.skipped += max(1, lost)
                self._exhausted = True  # woke after the grant ended: this request must not start
                return None
            self.skipped += lost
            self._taken += 1
            self._next = started + self._pace
            self.first_start = started if self.first_start is None else min(self.first_start, started)
            self.last_start = started if self.last_start is None else max(self.last_start, started)
            return started

    async def _wait_until(self, moment: float) -> float:
        now = self._clock()
        # A sleep may end a little early (a monotonic timer against a wall clock): never start early.
        while now < moment - _EPSILON:
            await self._sleep(moment - now)
            now = self._clock()
        return now
