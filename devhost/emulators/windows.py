"""Sliding-window rate limits, as Teams and Graph document them ("N requests per T seconds").

A :class:`SlidingWindows` keeps, per key, the times of the requests it admitted and checks every
window of a :class:`Limit` set at once. When a request would exceed a window, the answer is the
time until enough old requests leave that window for one more to fit: the ``Retry-After`` a
well-behaved client can wait for and then succeed on its first retry.

Rejected requests are not recorded (they did not happen, as far as the quota is concerned), so a
client hammering through 429s does not push its own window further out.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Limit:
    """At most ``count`` requests in any ``seconds``-long window."""

    count: int
    seconds: float

    def __post_init__(self) -> None:
        if self.count < 1 or self.seconds <= 0:
            raise ValueError(f"a limit needs count >= 1 and seconds > 0, got {self.count}/{self.seconds}s")


@dataclass
class SlidingWindows:
    """Per-key request logs checked against several windows at once.

    Args:
        clock: returns the current time in seconds (monotonic); injected so tests control time.
    """

    clock: Callable[[], float]
    _log: dict[Hashable, deque[float]] = field(default_factory=dict)

    def acquire(self, key: Hashable, limits: Sequence[Limit]) -> float | None:
        """Admit one request for ``key`` if every limit allows it.

        Returns:
            ``None`` when admitted (and recorded); otherwise the seconds to wait (> 0).
        """
        wait = self.peek(key, limits)
        if wait is None:
            self._log.setdefault(key, deque()).append(self.clock())
        return wait

    def peek(self, key: Hashable, limits: Sequence[Limit]) -> float | None:
        """Like :meth:`acquire` but records nothing."""
        if not limits:
            return None
        now = self.clock()
        log = self._log.get(key)
        if log is None:
            return None
        longest = max(limit.seconds for limit in limits)
        while log and log[0] <= now - longest:
            log.popleft()
        if not log:
            # Forget idle keys (one per chat or conversation) so memory follows live traffic only.
            del self._log[key]
            return None
        wait = 0.0
        for limit in limits:
            # Requests still inside this window are those newer than now - seconds.
            inside = _count_newer_than(log, now - limit.seconds)
            if inside >= limit.count:
                # The (inside - count + 1)-th oldest request inside the window must leave first.
                leaving = log[len(log) - inside + (inside - limit.count)]
                wait = max(wait, leaving + limit.seconds - now)
        if wait <= 0:
            return None
        # Round up to milliseconds so that waiting exactly this long is always enough.
        # Float noise can turn 0.2 into 0.201; that errs on the safe side, which is the point.
        return math.ceil(wait * 1000) / 1000

    def reset(self) -> None:
        self._log.clear()


def _count_newer_than(log: deque[float], threshold: float) -> int:
    # The log is sorted; bisect from the right without copying the deque.
    lo, hi = 0, len(log)
    while lo < hi:
        mid = (lo + hi) // 2
        if log[mid] > threshold:
            hi = mid
        else:
            lo = mid + 1
    return len(log) - lo
