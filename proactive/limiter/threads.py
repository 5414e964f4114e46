"""Per-thread windows: how many requests one bot may start in one conversation (facts file section 1).

Teams counts request starts per bot and thread in sliding windows: 7 per 1 s, 8 per 2 s, 60 per 30 s,
1,800 per hour. A tenant's limiter never sees them; they bite when one channel or group chat receives many
messages (an alert storm posting each alert to the incident channel: 60 per 30 s is 2 per second). A
:class:`ThreadLog` (kept per thread in storage, see :class:`proactive.storage.stores.TableThreadWindows`) holds the
recent starts; :func:`next_start` says when one more start keeps every window within its bound, and
:func:`with_start` records one.

The log is exact for the windows up to 30 s (the last :data:`RECENT` starts) and counts the hour per
minute, each minute's starts taken as late as they could have been, so the hour bound holds too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field

from proactive.models import WireModel

__all__ = ["THREAD_WINDOWS", "ThreadLog", "Window", "next_start", "with_start"]


@dataclass(frozen=True)
class Window:
    """At most ``requests`` starts in any ``seconds``-long sliding window."""

    requests: int
    seconds: float


# Per bot per thread, "send to conversation" (teams-platform-facts.md section 1).
THREAD_WINDOWS: tuple[Window, ...] = (Window(7, 1.0), Window(8, 2.0), Window(60, 30.0), Window(1800, 3600.0))
# Teams counts a request when it arrives, we when we start it: their gap varies by the network's jitter
# (tens to a few hundred milliseconds), so every window is kept this much longer than Teams keeps it.
ARRIVAL_MARGIN_SECONDS = 0.25
# Starts kept exactly: enough for every window of at most this many requests.
RECENT = 60
# Starts of longer windows are counted per bucket of this many seconds.
BUCKET_SECONDS = 60


class ThreadLog(WireModel):
    """Recent request starts of one bot in one thread (epoch seconds)."""

    recent: list[float] = Field(default_factory=list)  # ascending, at most RECENT
    buckets: dict[int, int] = Field(default_factory=dict)  # bucket index (start // BUCKET_SECONDS) -> starts


def next_start(log: ThreadLog, now: float, windows: Sequence[Window] = THREAD_WINDOWS) -> float:
    """The earliest moment at or after ``now`` when one more start keeps every window within its bound.

    A start at ``t`` is allowed when fewer than ``requests`` earlier starts lie in ``(t - span, t]``, that
    is when the ``requests``-th most recent start is at most ``t - span`` (``span``: the window's seconds
    and :data:`ARRIVAL_MARGIN_SECONDS`).
    """
    at = now
    for window in windows:
        span = window.seconds + ARRIVAL_MARGIN_SECONDS
        if window.requests <= RECENT:
            if len(log.recent) >= window.requests:
                at = max(at, log.recent[-window.requests] + span)
            continue
        # Counted per bucket: a bucket's starts leave the window when its last possible start does.
        counts = sorted(log.buckets.items())
        total = sum(count for _, count in counts)
        for index, count in counts:
            if total < window.requests:
                break
            total -= count
            at = max(at, (index + 1) * BUCKET_SECONDS + span)
    return at


def with_start(log: ThreadLog, at: float, windows: Sequence[Window] = THREAD_WINDOWS) -> ThreadLog:
    """``log`` with a start at ``at`` added and what no window can see any more left out."""
    longest_exact = max((w.seconds for w in windows if w.requests <= RECENT), default=0.0)
    longest_exact += ARRIVAL_MARGIN_SECONDS
    longest = max((w.seconds for w in windows), default=0.0) + ARRIVAL_MARGIN_SECONDS
    recent = sorted([*log.recent, at])[-RECENT:]
    recent = [start for start in recent if start > at - longest_exact]
    bucket = int(at // BUCKET_SECONDS)
    oldest = int((at - longest) // BUCKET_SECONDS)
    buckets = {index: count for index, count in log.buckets.items() if index >= oldest}
    buckets[bucket] = buckets.get(bucket, 0) + 1
    return ThreadLog(recent=recent, buckets=buckets)
