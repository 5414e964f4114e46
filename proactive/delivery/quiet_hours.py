"""Quiet hours: is a moment inside a recipient's daily quiet window, and when does the window end?

Pure functions over ``zoneinfo``; no clock is read here (the caller passes ``now``).

Rules:

* A window ``start``-``end`` is half-open in local wall time: ``22:00-07:00`` holds 22:00 and 06:59 but not
  07:00. ``start > end`` wraps midnight; ``start == end`` is an empty window (nothing is quiet).
* Local wall times become instants as "the first instant at which the local clock reads that time or later":
  on a spring-forward day a window ending at 02:30 (a time that does not exist) ends at the jump (03:00 new
  time); on a fall-back day an ambiguous 01:30 is its first occurrence. So a window never ends early and
  never holds a message longer than the clock says it should.
* An unknown or malformed time zone is treated as UTC and the answer says so (``assumed_utc``), so a record
  can tell people why a message arrived at an odd hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from proactive.models import QuietHours

__all__ = ["QuietDecision", "local_instant", "quiet_until", "resolve_zone"]


@dataclass(frozen=True)
class QuietDecision:
    """Where ``now`` stands against a quiet window.

    Attributes:
        until: the end of the window (UTC) when ``now`` is inside it, else ``None``.
        zone: the time zone name used (``"UTC"`` when assumed).
        assumed_utc: the recipient's time zone was unknown or invalid, so UTC was used.
    """

    until: datetime | None
    zone: str
    assumed_utc: bool

    @property
    def quiet(self) -> bool:
        return self.until is not None


def resolve_zone(name: str | None) -> tuple[tzinfo, str, bool]:
    """The ``tzinfo`` for an IANA name: ``(zone, name used, assumed_utc)``; UTC when unknown."""
    if name:
        try:
            return ZoneInfo(name), name, False
        except (ZoneInfoNotFoundError, ValueError, OSError):
            # ValueError/OSError: names such as "../etc/passwd" or "" that zoneinfo refuses outright.
            pass
    return UTC, "UTC", True


def _parse(hhmm: str) -> time:
    hours, minutes = hhmm.split(":")
    return time(int(hours), int(minutes))


def local_instant(day: date, wall: time, zone: tzinfo) -> datetime:
    """The first UTC instant at which the local clock in ``zone`` reads ``wall`` on ``day`` or later."""
    naive = datetime.combine(day, wall)
    first = naive.replace(tzinfo=zone, fold=0)
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive:
        return first.astimezone(UTC)  # exists (fold=0 is the earlier of two occurrences)
    # A spring-forward gap: the wall time never shows. Local time only moves forward inside the gap, so
    # search between the two readings of the offset for the first instant whose wall time is >= ``wall``.
    low = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = first.astimezone(UTC)
    low, high = min(low, high), max(low, high)
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).replace(tzinfo=None) >= naive:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def quiet_until(hours: QuietHours, time_zone: str | None, now: datetime) -> QuietDecision:
    """Whether ``now`` falls inside the daily quiet window, and if so when it ends.

    Args:
        hours: the window in local wall time (``HH:MM``), possibly wrapping midnight.
        time_zone: the recipient's IANA time zone; unknown or ``None`` means UTC (flagged).
        now: a timezone-aware moment.

    Returns:
        The decision; ``until`` is the window's end in UTC when ``now`` is inside it.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    zone, name, assumed = resolve_zone(time_zone)
    start, end = _parse(hours.start), _parse(hours.end)
    if start == end:
        return QuietDecision(None, name, assumed)
    today = now.astimezone(zone).date()
    wraps = start > end
    # Windows that can hold ``now``: the one starting yesterday (only when it wraps into today) and today's.
    for offset in (-1, 0):
        day = today + timedelta(days=offset)
        opens = local_instant(day, start, zone)
        closes = local_instant(day + timedelta(days=1) if wraps else day, end, zone)
        if opens <= now < closes:
            return QuietDecision(closes, name, assumed)
    return QuietDecision(None, name, assumed)
