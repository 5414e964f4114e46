"""Admitting one grant's requests at the tenant's pace, so a batch never bursts and a late one still sends.

A grant of the ``tenant_limiter`` entity allows ``tokens`` requests, no earlier than ``notBefore``, no later
than ``sendBy``, and at least ``paceSeconds`` apart. :class:`SlotPacer` admits requests like a generic cell
rate algorithm (GCRA) with a tolerance of ``slack``: every request, retries included, first *reserves* the
earliest free time ``at = max(next, now)`` (``next`` starts at ``notBefore`` and moves one pace past each
reservation), waits until ``at``, and starts. A request that is not ready when its time comes is not lost:
the next reservation is simply made later (``max(next, now)``), so lateness costs time, never a row. When no
time is left (the ``tokens`` are used, or the next free time lies after ``sendBy``) :meth:`SlotPacer.acquire`
answers ``None`` and the caller gives its row back for the next batch.

Guarantee, for every request :meth:`SlotPacer.acquire` lets through:

* it starts at or after its reserved time and at most ``slack`` after it: a worker that wakes later gives
  its reservation up (the reservation is wasted time, counted in :attr:`SlotPacer.skipped`, not a token)
  and reserves again, at ``now`` when nobody waits ahead of it;
* reserved times are at least ``pace`` apart (reserved before their taker awaits anything, so concurrent
  workers never share one) and all lie in ``[notBefore, sendBy]``; at most ``tokens`` requests start.

Why that keeps Teams' sliding window: requests starting inside any window ``[a, a + W]`` have distinct
reserved times in ``[a - slack, a + W]``, a span of ``W + slack`` holding at most
``floor((W + slack) / pace) + 1`` of them. The limiter places the next grant of the tenant one pace after
``sendBy``, so the bound holds across batches too, whatever the event loop's scheduling delays. The limiter
chooses ``pace`` and ``slack`` so the bound stays under the tenant's limit.

Times are epoch seconds from an injected ``clock``, waits go through an injected ``sleep`` (STYLE.md rule
12): tests drive the pacer with a fake clock and check every delay exactly.
"""

from __future__ import annotations

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
        slack_seconds: how late after its reserved time a request may still start (>= 0).
        clock: current epoch seconds.
        sleep: awaited until a reserved time comes (``asyncio.sleep`` in production).

    Attributes:
        skipped: reservations given up because their taker woke more than ``slack`` after them.
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
        self._next = not_before  # the earliest time the next reservation may take
        self._taken = 0  # reservations held or used: at most ``tokens``
        self._exhausted = False
        self.skipped = 0
        self.first_start: float | None = None
        self.last_start: float | None = None
        self.first_ready: float | None = None

    @property
    def origin(self) -> float | None:
        """The first reserved time, fixed by the first :meth:`acquire`; ``None`` before."""
        return self._origin

    @property
    def exhausted(self) -> bool:
        """Whether :meth:`acquire` has answered ``None``: it always will from then on."""
        return self._exhausted

    async def acquire(self) -> float | None:
        """Wait for the next free time and return when the request may start.

        Returns:
            The start time (epoch seconds, the clock read after waking: within ``[at, at + slack]`` of its
            reservation), or ``None`` when no time is left (all ``tokens`` used, or the next free time lies
            after ``send_by``). Once ``None``, always ``None``.
        """
        if self.first_ready is None:
            self.first_ready = self._clock()
        while not self._exhausted:
            at = self._reserve()
            if at is None:
                self._exhausted = True
                return None
            started = await self._wait_until(at)
            if started > min(at + self._slack, self._send_by) + _EPSILON:
                # Woke too late: starting now could crowd a later reservation's request into one window.
                # Give the reservation up (its time is lost, its token is not) and queue again.
                self.skipped += 1
                self._taken -= 1
                if abs(self._next - (at + self._pace)) <= _EPSILON:
                    self._next = at  # nobody reserved after it: the next reservation need not wait for it
                continue
            self.first_start = started if self.first_start is None else min(self.first_start, started)
            self.last_start = started if self.last_start is None else max(self.last_start, started)
            return started
        return None

    def _reserve(self) -> float | None:
        # No await in here: the reservation is made before its taker yields, so no two share a time.
        now = self._clock()
        at = max(self._next, now)
        if self._taken >= self._tokens or at > self._send_by + _EPSILON:
            return None
        if self._origin is None:
            self._origin = at
        self._taken += 1
        self._next = at + self._pace
        return at

    async def _wait_until(self, moment: float) -> float:
        now = self._clock()
        # A sleep may end a little early (a monotonic timer against a wall clock): never start early.
        while now < moment - _EPSILON:
            await self._sleep(moment - now)
            now = self._clock()
        return now
