"""Spreading one grant's requests over its slots, so a batch never bursts (the limiter's pacing contract).

A grant of the ``tenant_limiter`` entity allows ``tokens`` requests, no earlier than ``notBefore``, no later
than ``sendBy``, and at least ``paceSeconds`` apart. :class:`SlotPacer` turns that into slots: slot ``i``
is at ``origin + i * pace``, where ``origin = max(notBefore, the time of the first request for a slot)``
(a batch that starts late does not crowd its slots together to catch up). Every Bot Connector request,
retries included, first takes a slot from the pacer; when none is left it gets ``None`` and the caller
gives its row back for the next batch.

Guarantee, for every request :meth:`SlotPacer.acquire` lets through:

* it starts at or after its slot (slots are never used early) and at most ``slack`` after it (a worker
  that wakes later loses the slot, counted in :attr:`SlotPacer.skipped`, and takes the next free one);
* at most one request per slot (a slot is reserved before its taker awaits anything, so concurrent
  workers never share one), and no request starts after ``sendBy`` or beyond ``tokens`` slots.

Why that keeps Teams' sliding window: requests starting inside any window ``[a, a + W]`` own distinct
slots whose times lie in ``[a - slack, a + W]``, a span of ``W + slack`` holding at most
``floor((W + slack) / pace) + 1`` slot times. So any window of ``W`` seconds holds at most that many
request starts, whatever the event loop's scheduling delays: lateness costs slots (throughput), never
the bound. The limiter chooses ``pace`` and ``slack`` so the bound stays under the tenant's limit.

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
    """Hands out the slots of one grant to the requests of one batch (see the module docstring).

    Args:
        not_before: epoch seconds; no slot before it.
        pace_seconds: spacing of the slots (> 0).
        tokens: how many slots the grant has (the batch's ``limit``).
        send_by: epoch seconds; no request starts after it.
        slack_seconds: how late after its slot a request may still start (>= 0).
        clock: current epoch seconds.
        sleep: awaited until a slot comes (``asyncio.sleep`` in production).

    Attributes:
        skipped: slots lost because their taker woke more than ``slack`` after them.
        first_start: when the first request let through started (epoch seconds), ``None`` before.
        last_start: when the latest request let through started, ``None`` before.
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
        self._next = 0  # slots are handed out in order: every slot below this is reserved or gone
        self._exhausted = False
        self.skipped = 0
        self.first_start: float | None = None
        self.last_start: float | None = None

    @property
    def origin(self) -> float | None:
        """Slot 0's time, fixed by the first :meth:`acquire`; ``None`` before."""
        return self._origin

    @property
    def exhausted(self) -> bool:
        """Whether :meth:`acquire` has answered ``None``: it always will from then on."""
        return self._exhausted

    async def acquire(self) -> float | None:
        """Wait for the next free slot and return when the request may start.

        Returns:
            The start time (epoch seconds, the clock read after waking: within ``[slot, slot + slack]``),
            or ``None`` when no slot is left (all ``tokens`` used or lost, or the next lies after
            ``send_by``). Once ``None``, always ``None``: slots only move forward.
        """
        while not self._exhausted:
            slot = self._reserve()
            if slot is None:
                self._exhausted = True
                return None
            started = await self._wait_until(slot)
            if started > min(slot + self._slack, self._send_by) + _EPSILON:
                # Woke too late: starting now could crowd the next slot's request into one window.
                self.skipped += 1
                continue
            self.first_start = started if self.first_start is None else min(self.first_start, started)
            self.last_start = started if self.last_start is None else max(self.last_start, started)
            return started
        return None

    def _reserve(self) -> float | None:
        # No await in here: the reservation is made before its taker yields, so no two share a slot.
        now = self._clock()
        if self._origin is None:
            self._origin = max(self._not_before, now)
        index = self._next
        # Skip slots more than ``slack`` in the past: using one would start a request outside its slot.
        behind = now - self._slack - self._origin
        if behind > 0:
            index = max(index, math.floor(behind / self._pace))
        while self._origin + index * self._pace + self._slack < now - _EPSILON:
            index += 1
        slot = self._origin + index * self._pace
        if index >= self._tokens or slot > self._send_by + _EPSILON:
            return None
        self._next = index + 1
        return slot

    async def _wait_until(self, moment: float) -> float:
        now = self._clock()
        # A sleep may end a little early (a monotonic timer against a wall clock): never start early.
        while now < moment - _EPSILON:
            await self._sleep(moment - now)
            now = self._clock()
        return now
