"""Quiet hours in the recipient's time zone: wrapping windows, DST gaps and overlaps, unknown zones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proactive.delivery.quiet_hours import local_instant, quiet_until
from proactive.models import QuietHours

NEW_YORK = "America/New_York"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def window(start: str, end: str) -> QuietHours:
    return QuietHours(start=start, end=end)


def test_inside_a_daytime_window_the_message_waits_until_its_end() -> None:
    decision = quiet_until(window("12:00", "14:00"), "Asia/Kolkata", utc(2026, 6, 1, 7, 0))  # 12:30 IST

    assert decision.until == utc(2026, 6, 1, 8, 30)  # 14:00 IST
    assert decision.zone == "Asia/Kolkata" and not decision.assumed_utc


@pytest.mark.parametrize(
    ("now", "until"),
    [
        (utc(2026, 6, 1, 3, 0), utc(2026, 6, 1, 11, 0)),  # 23:00 EDT -> 07:00 EDT next morning
        (utc(2026, 6, 1, 9, 0), utc(2026, 6, 1, 11, 0)),  # 05:00 EDT, after midnight -> same morning
        (utc(2026, 6, 1, 2, 0), utc(2026, 6, 1, 11, 0)),  # 22:00 EDT exactly: the start is inside
    ],
)
def test_a_window_that_wraps_midnight_holds_both_sides_of_midnight(now: datetime, until: datetime) -> None:
    assert quiet_until(window("22:00", "07:00"), NEW_YORK, now).until == until


@pytest.mark.parametrize(
    "now",
    [
        utc(2026, 6, 1, 11, 0),  # 07:00 EDT: the end is outside (half-open)
        utc(2026, 6, 1, 16, 0),  # noon
        utc(2026, 6, 1, 1, 59),  # 21:59
    ],
)
def test_outside_the_window_nothing_waits(now: datetime) -> None:
    decision = quiet_until(window("22:00", "07:00"), NEW_YORK, now)

    assert decision.until is None and not decision.quiet


def test_an_empty_window_is_never_quiet() -> None:
    assert quiet_until(window("08:00", "08:00"), NEW_YORK, utc(2026, 6, 1, 12, 8)).until is None


def test_a_window_ending_inside_the_spring_forward_gap_ends_at_the_jump() -> None:
    # 2026-03-08 in New York: 02:00 EST jumps to 03:00 EDT (07:00Z); 02:30 never shows on the clock.
    decision = quiet_until(window("01:00", "02:30"), NEW_YORK, utc(2026, 3, 8, 6, 30))  # 01:30 EST

    assert decision.until == utc(2026, 3, 8, 7, 0)


def test_an_overnight_window_across_spring_forward_lasts_one_hour_less() -> None:
    decision = quiet_until(window("22:00", "07:00"), NEW_YORK, utc(2026, 3, 8, 3, 0))  # 22:00 EST

    assert decision.until == utc(2026, 3, 8, 11, 0)  # 07:00 EDT
    assert decision.until - utc(2026, 3, 8, 3, 0) == timedelta(hours=8)


def test_an_overnight_window_across_fall_back_lasts_one_hour_more() -> None:
    decision = quiet_until(window("22:00", "07:00"), NEW_YORK, utc(2026, 11, 1, 2, 0))  # 22:00 EDT

    assert decision.until == utc(2026, 11, 1, 12, 0)  # 07:00 EST
    assert decision.until - utc(2026, 11, 1, 2, 0) == timedelta(hours=10)


def test_an_ambiguous_end_time_is_its_first_occurrence() -> None:
    # 2026-11-01 in New York: 01:00-02:00 happens twice; 01:30 ends at its first showing (EDT, 05:30Z).
    assert local_instant(
        datetime(2026, 11, 1).date(), datetime(2026, 11, 1, 1, 30).time(), ZoneInfo(NEW_YORK)
    ) == (utc(2026, 11, 1, 5, 30))
    decision = quiet_until(window("00:00", "01:30"), NEW_YORK, utc(2026, 11, 1, 5, 0))

    assert decision.until == utc(2026, 11, 1, 5, 30)


@pytest.mark.parametrize("zone", [None, "", "Mars/Olympus_Mons", "../../etc/passwd", "Not A Zone"])
def test_an_unknown_time_zone_is_treated_as_utc_and_says_so(zone: str | None) -> None:
    decision = quiet_until(window("22:00", "07:00"), zone, utc(2026, 6, 1, 23, 0))

    assert decision.until == utc(2026, 6, 2, 7, 0)
    assert decision.assumed_utc and decision.zone == "UTC"


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        quiet_until(window("22:00", "07:00"), NEW_YORK, datetime(2026, 6, 1, 12, 0))


ZONES = st.sampled_from(
    [NEW_YORK, "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Apia", "UTC"]
)
TIMES = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))


@settings(max_examples=300, deadline=None)
@given(
    zone=ZONES,
    start=TIMES,
    end=TIMES,
    now=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 1, 1), timezones=st.just(UTC)),
)
def test_a_window_always_ends_in_the_future_within_a_day_and_outside_itself(
    zone: str, start: str, end: str, now: datetime
) -> None:
    decision = quiet_until(window(start, end), zone, now)

    if decision.until is not None:
        assert now < decision.until <= now + timedelta(hours=25)
        assert quiet_until(window(start, end), zone, decision.until).until != decision.until
