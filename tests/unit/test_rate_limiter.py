"""Tests for the per-tenant send limiter (``proactive.rate_limiter``): rules, properties, simulations.

Time is always injected (epoch seconds around ``T0``); nothing sleeps. Simulations drive the pure functions with
an event queue, the way orchestrations would drive the entity: acquire -> wait until ``notBefore`` -> send ->
report -> acquire again.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from proactive.limiter import (
    Acquire,
    Grant,
    LimiterConfig,
    LimiterState,
    Priority,
    Report,
    acquire,
    apply,
    configure,
    initial_state,
    parse_time,
    report,
    snapshot,
    tenant_defaults,
)

T0 = 1_795_251_600.0  # 2026-11-21T09:00:00Z
TOL = 1e-6


def ask(
    state: LimiterState, now: float, want: int, priority: Priority = "normal", requester: str = "r"
) -> tuple[LimiterState, Grant]:
    return acquire(state, Acquire(now=now, want=want, priority=priority, requester=requester))


def tell(state: LimiterState, now: float, **counts: Any) -> LimiterState:
    new_state, _ = report(state, Report(now=now, **counts))
    return new_state


PACE = (1.0 + LimiterConfig().margin_seconds) / 50  # seconds between slots at 50 msg/s (20.4 ms)
BATCH = 50 * PACE  # a full batch's slots: one window plus margin (1.02 s)
LAG = LimiterConfig().start_lag_seconds  # how late a batch may start its slots until reports teach it
SLACK = LimiterConfig().slack_seconds


def tell_end(
    state: LimiterState, grant: Grant, end: float, requester: str = "r", **counts: Any
) -> LimiterState:
    """Report the batch of ``grant`` as ended at ``end`` (its last request), like tenant_broadcast does."""
    counts.setdefault("sent", grant.tokens)
    counts.setdefault("first_send_at", grant.not_before)
    return tell(state, end, requester=requester, granted_at=grant.granted_at, last_send_at=end, **counts)


def slots(grant: Grant, *, shift: float = 0.0, delay: float = 0.0) -> list[float]:
    """Request start times of ``grant`` as :mod:`proactive.delivery.pacing` may make them.

    ``shift`` moves the origin later (an activity that started late); ``delay`` (<= slack) is how late after
    its slot each request starts. Slots after ``sendBy`` do not exist.
    """
    origin = grant.not_before + shift
    times = [origin + i * grant.pace_seconds for i in range(grant.tokens)]
    return [t + delay for t in times if t <= grant.send_by + 1e-9]


def max_in_closed_window(times: Sequence[float], window: float = 1.0) -> int:
    """Most requests starting in any closed window ``[t, t + window]`` (stricter than Teams' sliding one)."""
    ordered = sorted(times)
    best = left = 0
    for right, time in enumerate(ordered):
        while ordered[left] < time - window - 1e-9:
            left += 1
        best = max(best, right - left + 1)
    return best


def max_in_sliding_window(grants: Sequence[tuple[float, int]], window: float) -> int:
    """Largest number of tokens whose not_before falls in any half-open window [t, t + window).

    Teams' windows slide: a send exactly ``window`` after another is in the next window. 1 µs of float
    tolerance on that edge.
    """
    ordered = sorted(grants)
    best = total = 0
    left = 0
    for time, tokens in ordered:
        total += tokens
        while ordered[left][0] <= time - window + 1e-6:
            total -= ordered[left][1]
            left += 1
        best = max(best, total)
    return best


def max_in_window(grants: Sequence[tuple[float, int]], window: float) -> int:
    """Largest number of tokens whose not_before falls in any closed window [t, t + window]."""
    ordered = sorted(grants)
    best = total = 0
    left = 0
    for time, tokens in ordered:
        total += tokens
        while ordered[left][0] < time - window - 1e-9:
            total -= ordered[left][1]
            left += 1
        best = max(best, total)
    return best


# ----------------------------------------------------------------------------------------------------------
# Token bucket with bookings
# ----------------------------------------------------------------------------------------------------------


def test_defaults_follow_the_facts_sheet_50_per_second_in_a_one_second_window() -> None:
    config = LimiterConfig()
    assert (config.rate, config.burst_tokens, config.slice_seconds, config.window_seconds) == (50, 50, 1, 1)
    assert 0 < config.slack_seconds < config.margin_seconds <= 0.05
    assert initial_state().rate == 50.0


def test_idle_tenant_grants_what_is_wanted_now_as_slots_one_pace_apart() -> None:
    _, grant = ask(initial_state(), T0, 7)
    assert (grant.tokens, grant.not_before, grant.reason) == (7, T0, "granted")
    assert grant.pace_seconds == pytest.approx(PACE)
    assert grant.slack_seconds == SLACK
    # The last slot, plus the lateness allowed to a batch whose activity starts after its timer.
    assert grant.send_by == pytest.approx(T0 + 6 * PACE + LAG)


def test_pace_keeps_any_one_second_window_at_the_rate_even_with_every_request_late_by_the_slack() -> None:
    state, first = ask(initial_state(), T0, 50, requester="a")
    state = tell_end(state, first, T0 + 49 * PACE + SLACK, requester="a")
    _, second = ask(state, T0 + 49 * PACE + SLACK, 50, requester="a")
    # The first batch as late as allowed, the second on time.
    times = slots(first, delay=SLACK) + slots(second)
    assert len(times) == 100
    assert max_in_closed_window(times) == 50


def test_one_grant_never_exceeds_the_window_so_a_huge_request_takes_one_window() -> None:
    state, huge = ask(initial_state(), T0, 100_000, requester="deploy")
    state, small = ask(state, T0, 5, requester="other")
    assert huge.tokens == 50
    assert small.tokens == 5
    # The huge batch has not reported: it may shift by the start lag, and the next grant clears that.
    assert small.not_before == pytest.approx(huge.send_by + PACE)
    assert small.not_before - T0 == pytest.approx(BATCH + LAG)


def test_max_booking_seconds_bounds_one_grant_below_the_burst() -> None:
    state = initial_state(LimiterConfig(rate=50, burst=200, max_booking_seconds=0.5))
    _, grant = ask(state, T0, 1000)
    assert grant.tokens == 25


def test_next_batch_starts_one_pace_after_the_previous_batchs_last_request_so_batches_tile() -> None:
    state, first = ask(initial_state(), T0, 50)
    last = T0 + 49 * PACE + 0.003  # the last request started 3 ms after its slot
    state = tell_end(state, first, last)
    _, second = ask(state, last + 0.001, 50)
    assert second.tokens == 50
    assert second.not_before == pytest.approx(last + PACE)
    # The period is 50 slots, not the batch's duration plus a window.
    assert second.not_before - first.not_before == pytest.approx(BATCH + 0.003)


def test_a_report_without_last_send_at_closes_the_batch_at_its_now() -> None:
    state, first = ask(initial_state(), T0, 10)
    state = tell(state, T0 + 0.3, sent=10, requester="r", granted_at=first.granted_at)
    _, second = ask(state, T0 + 0.3, 10, requester="other")
    assert second.not_before == pytest.approx(T0 + 0.3 + PACE)


def test_a_batch_reported_before_its_start_gives_its_slots_back() -> None:
    # Pipelined: the second grant is booked behind the first, and its batch (started ahead of notBefore)
    # found nothing to send. Its report, naming its grant, frees the slots it would have held.
    state, first = ask(initial_state(), T0, 50, requester="a")
    state, second = ask(state, T0 + 0.1, 50, requester="a#1")
    assert second.not_before == pytest.approx(first.send_by + PACE)
    state = tell(state, T0 + 0.2, sent=0, requester="a#1", granted_at=second.granted_at)
    state = tell_end(state, first, T0 + 49 * PACE, requester="a")
    state, third = ask(state, T0 + 49 * PACE + 0.001, 50, requester="b")
    assert third.not_before == pytest.approx(T0 + 50 * PACE)
    # Without the grant's time a report cannot tell which future booking it meant: it leaves them.
    state, fourth = ask(state, third.not_before, 50, requester="c")
    assert fourth.not_before == pytest.approx(third.send_by + PACE)
    state = tell(state, third.not_before + 0.1, sent=0, requester="c")
    _, fifth = ask(state, third.not_before + 0.1, 50, requester="d")
    assert fifth.not_before == pytest.approx(fourth.send_by + PACE)


def test_the_requesters_next_acquire_ends_its_unreported_batch() -> None:
    state, _ = ask(initial_state(), T0, 50, requester="a")
    state, again = ask(state, T0 + 0.1, 50, requester="a")  # it asks again, so its batch is over
    assert again.not_before == pytest.approx(T0 + 0.1 + PACE)


def test_concurrent_requesters_are_chained_one_batch_after_another() -> None:
    state = initial_state()
    grants = []
    for i in range(10):
        state, grant = ask(state, T0, 20, requester=f"r{i}")
        grants.append(grant)
    assert all(g.tokens == 20 for g in grants)
    for before, after in itertools.pairwise(grants):
        assert after.not_before == pytest.approx(before.send_by + PACE)
    # Whether each batch starts on time or as late as its sendBy allows, no window holds more than 50.
    for late in ((), range(10), range(0, 10, 2), range(1, 10, 2)):
        times = [
            t
            for i, g in enumerate(grants)
            for t in (slots(g, shift=LAG, delay=SLACK) if i in late else slots(g))
        ]
        assert len(times) == 200
        assert max_in_closed_window(times) <= 50


def test_reported_first_sends_teach_the_start_lag_that_separates_concurrent_batches() -> None:
    state = initial_state()
    for _ in range(40):
        state, grant = ask(state, state.clock, 50, requester="a")
        end = grant.not_before + 0.01 + 49 * PACE
        state = tell_end(state, grant, end, requester="a", first_send_at=grant.not_before + 0.01)
    assert state.start_lag_seconds == pytest.approx(0.02, abs=1e-3)  # twice the lag seen (0.25 s decayed)
    state, out = ask(state, state.clock + 5, 25, requester="a")
    assert out.send_by == pytest.approx(out.not_before + 24 * PACE + 0.02, abs=1e-3)
    state, other = ask(state, state.clock, 50, requester="b")
    assert other.not_before == pytest.approx(out.send_by + PACE)


def test_grant_is_never_before_the_callers_now_even_when_an_older_now_arrives() -> None:
    state, _ = ask(initial_state(), T0 + 10, 1)
    state, grant = ask(state, T0 + 5, 1)  # a replaying orchestration with an older episode time
    assert grant.not_before >= T0 + 10
    assert state.clock == T0 + 10


def test_bookings_stay_bounded_and_safe_with_many_concurrent_requesters() -> None:
    state, first = ask(initial_state(), T0, 40, "urgent", "u")
    grants = [first]
    for i in range(200):
        state, grant = ask(state, T0, 10, "normal", f"n{i}")
        grants.append(grant)
    assert len(state.bookings) <= 64
    state, urgent = ask(state, T0, 40, "urgent", "u2")
    grants.append(urgent)
    assert urgent.tokens == 40
    for shift, delay in ((0.0, 0.0), (LAG, SLACK)):
        assert max_in_closed_window([t for g in grants for t in slots(g, shift=shift, delay=delay)]) <= 50


def test_bookings_are_pruned_once_they_cannot_move_a_new_grant() -> None:
    state = initial_state()
    for i in range(5):
        state, _ = ask(state, T0, 50, requester=f"r{i}")
    assert len(state.bookings) == 5
    state, _ = ask(state, T0 + 100, 1)
    assert len(state.bookings) == 1
    assert state.bookings[0].start == T0 + 100


# ----------------------------------------------------------------------------------------------------------
# Priority
# ----------------------------------------------------------------------------------------------------------

URGENT_PACE = (1.0 + LimiterConfig().margin_seconds) / 40  # urgent's lane: 40 of 50 per window
NORMAL_PACE = (1.0 + LimiterConfig().margin_seconds) / 10  # normal's lane: 10 of 50 per window


def test_urgent_request_is_not_queued_behind_normal_requests_made_after_it() -> None:
    state, deploy = ask(initial_state(), T0, 50, "normal", "deploy")
    end = T0 + 49 * PACE
    state = tell_end(state, deploy, end, requester="deploy")
    state, urgent = ask(state, end, 50, "urgent", "incident")
    state, normal = ask(state, end, 50, "normal", "deploy")
    assert (urgent.tokens, normal.tokens) == (40, 10)  # both active: each in its lane, 80 / 20
    assert (urgent.pace_seconds, normal.pace_seconds) == pytest.approx((URGENT_PACE, NORMAL_PACE))
    assert urgent.not_before <= normal.not_before
    state, urgent_again = ask(state, end, 50, "urgent", "incident2")
    assert urgent_again.not_before == pytest.approx(urgent.send_by + URGENT_PACE)  # behind urgent only


def test_urgent_notice_waits_only_for_batches_already_booked_not_the_whole_deploy() -> None:
    state = initial_state()
    for i in range(3):  # three deploy orchestrations, each holding one batch
        state, deploy = ask(state, T0, 100_000, "normal", f"deploy{i}")
    state, urgent = ask(state, T0, 50, "urgent", "incident")
    assert urgent.tokens == 40
    assert urgent.not_before == pytest.approx(deploy.send_by + 3 * URGENT_PACE)
    assert urgent.not_before - T0 <= 3 * (BATCH + LAG) + 3 * URGENT_PACE + TOL


def test_while_urgent_is_active_normal_keeps_its_fixed_share_in_its_own_lane() -> None:
    state, urgent = ask(initial_state(), T0, 40, "urgent", "u")
    state, normal = ask(state, T0, 50, "normal", "n")
    assert normal.tokens == 10  # 20 % of a window at 50 msg/s
    assert normal.pace_seconds == pytest.approx(NORMAL_PACE)
    # urgent was alone when it asked (the whole rate), so the lanes start three paces after its batch
    assert normal.not_before == pytest.approx(urgent.send_by + 3 * NORMAL_PACE)
    state, more = ask(state, T0, 50, "normal", "n2")
    assert more.tokens == 10
    assert more.not_before == pytest.approx(normal.send_by + NORMAL_PACE)
    state, urgent_lane = ask(state, T0, 50, "urgent", "u2")  # beside the normal lane, not after it
    assert urgent_lane.tokens == 40
    assert urgent_lane.not_before < more.not_before
    times = [t for g in (urgent, normal, more, urgent_lane) for t in slots(g, shift=LAG, delay=SLACK)]
    assert max_in_closed_window(times) <= 50


def test_normal_uses_the_full_rate_again_once_urgent_demand_expires() -> None:
    state, urgent = ask(initial_state(), T0, 40, "urgent", "u")
    quiet = urgent.not_before + state.config.priority_window_seconds + 0.1
    state, normal = ask(state, quiet, 50, "normal", "n")
    assert normal.tokens == 50
    assert normal.not_before == quiet
    assert normal.pace_seconds == pytest.approx(PACE)


def test_urgent_alone_uses_the_full_rate() -> None:
    _, grant = ask(initial_state(), T0, 50, "urgent", "u")
    assert grant.tokens == 50
    assert grant.not_before == T0
    assert grant.pace_seconds == pytest.approx(PACE)


# ----------------------------------------------------------------------------------------------------------
# AIMD and Retry-After
# ----------------------------------------------------------------------------------------------------------


def throttled_twice(state: LimiterState, now: float) -> LimiterState:
    """An isolated 429, then one from a batch granted after it: throttling that persists.

    Half of each batch's requests are refused, so about 25 msg/s get through: the rate settles at
    :data:`SETTLED` (0.95 of that) from ``now + 1``.
    """
    state = tell(state, now, sent=10, throttled=10)
    state, grant = ask(state, now + 0.5, 20)
    return tell(state, now + 1, sent=10, throttled=10, granted_at=grant.granted_at)


SETTLED = 0.95 * 25.0


def test_an_isolated_429_is_a_hold_not_a_decrease() -> None:
    state = tell(initial_state(), T0, sent=10, throttled=5, retry_after=0.4)
    assert state.rate == 50.0
    assert state.hold_until == T0 + 0.4
    assert state.stats.decreases == 0


def test_a_batch_too_late_to_send_teaches_the_lead_even_after_its_booking_left_the_log() -> None:
    state, grant = ask(initial_state(), T0, 50)
    for k in range(5):  # other requesters move the clock on: the late batch's booking is pruned
        state, _ = ask(state, T0 + 1 + k, 50, requester=f"other{k}")
    # The batch got ready 2.5 s after its grant, long after its sendBy: it sent nothing.
    state = tell(state, T0 + 6, granted_at=grant.granted_at, first_ready_at=T0 + 2.5)
    assert state.lead_seconds == pytest.approx(0.5 * 1.25 * 2.5)
    state, next_grant = ask(state, T0 + 7, 50)
    # Its slots are planned from the learned lead on: all 50 still fit when the batch is that slow again.
    assert next_grant.send_by >= T0 + 7 + 0.5 * 1.25 * 2.5 + 49 * next_grant.pace_seconds


def test_an_idle_tenants_grant_may_start_at_once_and_plans_its_slots_a_lead_ahead() -> None:
    state = configure(initial_state(), LimiterConfig(rate=50, lead_seconds=0.5, start_lag_seconds=0.05), T0)
    state, grant = ask(state, T0, 3)
    assert grant.tokens == 3
    # A batch ready at once need not wait out the lead on an idle tenant ...
    assert grant.not_before == T0
    # ... and one ready only after the lead still has every slot before sendBy.
    assert grant.send_by == pytest.approx(T0 + 0.5 + 2 * grant.pace_seconds + 0.05)


def test_the_start_lag_counts_lateness_after_the_batch_was_ready_not_its_preparation() -> None:
    state = configure(initial_state(), LimiterConfig(rate=50, lead_seconds=1.0, start_lag_seconds=0.05), T0)
    state, grant = ask(state, T0, 3)
    assert grant.not_before == T0
    # Ready 0.6 s after its grant (claim, lookups), first request 4 ms later: the lag is the 4 ms.
    before = state.start_lag_seconds
    state = tell_end(state, grant, T0 + 0.65, first_ready_at=T0 + 0.6, first_send_at=T0 + 0.604)
    assert state.start_lag_seconds == pytest.approx(max(2 * 0.004, 0.5 * before))
    assert state.start_lag_seconds < 0.6


def test_a_grant_behind_a_booking_starts_after_it_whatever_the_lead() -> None:
    state = configure(initial_state(), LimiterConfig(rate=50, lead_seconds=0.5, start_lag_seconds=0.05), T0)
    state, first = ask(state, T0, 50, requester="a")
    state, second = ask(state, T0 + 0.1, 50, requester="b")
    assert second.not_before >= first.send_by + first.pace_seconds
    assert second.send_by == pytest.approx(second.not_before + 49 * second.pace_seconds + 0.05)


def test_persistent_429s_settle_the_rate_just_under_what_got_through() -> None:
    state = throttled_twice(initial_state(), T0)
    assert state.rate == pytest.approx(SETTLED)
    assert state.ceiling == pytest.approx(25.0)
    assert state.stats.decreases == 1


def test_a_real_ceiling_of_30_under_a_configured_50_is_found_from_the_first_persistent_report() -> None:
    state = tell(initial_state(), T0, sent=30, throttled=20)
    state, grant = ask(state, T0 + 0.5, 50)
    state = tell(state, T0 + 1.5, sent=30, throttled=20, granted_at=grant.granted_at)
    assert 0.9 * 30 <= state.rate <= 30


def test_one_429_in_a_small_batch_is_noise() -> None:
    state = tell(initial_state(), T0, sent=1, throttled=1, retry_after=3.0)
    state, grant = ask(state, T0 + 0.5, 50)
    state = tell(state, T0 + 1.5, sent=1, throttled=1, retry_after=3.0, granted_at=grant.granted_at)
    assert state.rate == 50.0 and state.hold_until == 0.0


def test_a_few_429s_in_a_batch_are_noise_they_neither_hold_nor_lower_the_rate() -> None:
    state = tell(initial_state(), T0, sent=48, throttled=2, retry_after=3.0)
    state, grant = ask(state, T0 + 0.5, 50)
    state = tell(state, T0 + 1.5, sent=48, throttled=2, retry_after=3.0, granted_at=grant.granted_at)
    assert state.rate == 50.0 and state.hold_until == 0.0 and state.stats.decreases == 0


def test_429s_that_do_not_follow_the_rate_are_taken_for_noise_and_the_decrease_is_taken_back() -> None:
    # 10 % random 429s: the first persistent report decreases, the next (granted after it) shows the same
    # share, so the decrease is undone and that share counts as noise for a while.
    state = tell(initial_state(), T0, sent=45, throttled=5)
    state, grant = ask(state, T0 + 0.5, 50)
    state = tell(state, T0 + 1.5, sent=45, throttled=5, granted_at=grant.granted_at)
    assert state.rate < 50.0
    state, grant = ask(state, T0 + 2, 50)
    state = tell(state, T0 + 3, sent=45, throttled=5, granted_at=grant.granted_at)
    assert state.rate == 50.0 and state.noise_until > T0 + 3
    for k in range(10):
        state, grant = ask(state, T0 + 4 + k, 50)
        state = tell(state, T0 + 4.9 + k, sent=45, throttled=5, granted_at=grant.granted_at)
    assert state.rate == 50.0 and state.stats.decreases == 1


def test_after_a_decrease_the_rate_probes_past_the_ceiling_estimate_slowly() -> None:
    state = throttled_twice(initial_state(), T0)  # settled at 23.75 from T0 + 1, ceiling estimate 25
    state = tell(state, T0 + 11, sent=10)
    assert state.rate == pytest.approx(SETTLED + 0.02 * 10**2 / 2)  # 24.75: not above the estimate yet
    state = tell(state, T0 + 61, sent=10)
    assert state.rate == 50.0  # a passing drop is forgotten within a minute


def test_a_429_after_a_quiet_memory_span_starts_a_new_streak() -> None:
    state = tell(initial_state(), T0, throttled=1)
    state = tell(state, T0 + 5, sent=10)
    state, grant = ask(state, T0 + 10.5, 20)
    state = tell(state, T0 + 11, throttled=1, granted_at=grant.granted_at)  # 11 s after the last 429
    assert state.rate == 50.0


def test_rate_never_falls_below_the_floor() -> None:
    state = initial_state()
    for i in range(20):
        state = tell(state, T0 + 2 * i, throttled=20)
    assert state.rate == 1.0


def test_retry_after_is_a_floor_for_every_requester_of_the_tenant() -> None:
    state = tell(initial_state(), T0, sent=10, throttled=10, retry_after=7.5)
    state, first = ask(state, T0 + 1, 5, requester="a")
    state, second = ask(state, T0 + 1, 5, "urgent", requester="b")
    assert first.not_before >= T0 + 7.5
    assert second.not_before >= T0 + 7.5


def test_retry_after_hold_is_capped() -> None:
    state = tell(initial_state(), T0, throttled=20, retry_after=86_400)
    assert state.hold_until == T0 + 300


def test_429s_from_batches_granted_before_the_streak_or_the_decrease_do_not_decrease_again() -> None:
    state, early = ask(initial_state(), T0, 20)
    state = tell(state, T0 + 1, sent=10, throttled=10, granted_at=early.granted_at)  # isolated: hold only
    state = tell(state, T0 + 1.2, sent=10, throttled=10, granted_at=early.granted_at)  # same batch time
    assert state.rate == 50.0
    state, after = ask(state, T0 + 1.5, 20)
    state = tell(state, T0 + 2, sent=10, throttled=10, granted_at=after.granted_at)
    state = tell(state, T0 + 2.5, sent=10, throttled=10, granted_at=after.granted_at)
    state = tell(state, T0 + 3, sent=10, throttled=10, granted_at=early.granted_at)
    assert state.rate == pytest.approx(SETTLED)
    state, fresh = ask(state, T0 + 4, 20)
    # Still half refused at the lower rate (above the noise bound): the ceiling is lower still.
    state = tell(state, T0 + 5, sent=10, throttled=10, granted_at=fresh.granted_at)
    assert state.rate == pytest.approx(0.95 * SETTLED * 0.5)


def test_without_granted_at_at_most_one_decrease_per_interval_and_none_for_the_first_429() -> None:
    state = tell(initial_state(), T0, sent=10, throttled=10)
    state = tell(state, T0 + 0.5, sent=10, throttled=10)
    assert state.rate == 50.0
    state = tell(state, T0 + 1.0, sent=10, throttled=10)
    assert state.rate == pytest.approx(SETTLED)
    state = tell(state, T0 + 1.5, sent=10, throttled=10)
    assert state.rate == pytest.approx(SETTLED)
    state = tell(state, T0 + 2.0, sent=10, throttled=10)
    assert state.rate == pytest.approx(0.95 * SETTLED * 0.5)


def test_rate_does_not_climb_during_the_quiet_period_after_a_429() -> None:
    state = throttled_twice(initial_state(), T0)
    state = tell(state, T0 + 1 + 1.9, sent=10)
    assert state.rate == pytest.approx(SETTLED)


def test_rate_climbs_additively_while_the_last_429_is_recent() -> None:
    # No ceiling estimate here (a configured probe as fast as the climb), so only the additive climb shows.
    state = throttled_twice(initial_state(LimiterConfig(probe_acceleration=1000)), T0)  # from T0 + 1
    state = tell(state, T0 + 4, sent=10)  # one clean second after the 2 s quiet period
    assert state.rate == pytest.approx(SETTLED + 1)
    state = tell(state, T0 + 10, sent=10)
    assert state.rate == pytest.approx(SETTLED + 7)
    state = tell(state, T0 + 1 + state.config.cautious_seconds, sent=10)
    assert state.rate == pytest.approx(50)  # back at the ceiling within the cautious 30 s


def test_rate_climbs_multiplicatively_once_429s_are_long_past_back_to_the_ceiling_within_seconds() -> None:
    config = LimiterConfig(cautious_seconds=0, probe_acceleration=1000)
    state = throttled_twice(initial_state(config), T0)  # from T0 + 1
    state = tell(state, T0 + 4, sent=10)  # one clean second after the 2 s quiet period
    assert state.rate == pytest.approx(SETTLED * 1.25 + 1)
    state = tell(state, T0 + 5, sent=10)
    assert state.rate == pytest.approx((SETTLED * 1.25 + 1) * 1.25 + 1)
    state = tell(state, T0 + 6, sent=10)
    assert state.rate == 50.0  # 5 s after the last 429 (the old additive climb took 30 s)


def test_a_long_clean_stretch_reaches_the_ceiling_without_overflow() -> None:
    state = throttled_twice(initial_state(LimiterConfig(increase_factor=10)), T0)
    state = tell(state, T0 + 86_400, sent=10)
    assert state.rate == 50.0


def test_empty_reports_do_not_raise_the_rate() -> None:
    state = throttled_twice(initial_state(), T0)
    state = tell(state, T0 + 20)
    assert state.rate == pytest.approx(SETTLED)


def test_lower_rate_gives_a_smaller_batch_at_a_slower_pace() -> None:
    state = throttled_twice(initial_state(), T0)
    state, grant = ask(state, T0 + 3, 100)
    assert (grant.tokens, grant.not_before) == (23, T0 + 3)
    assert grant.pace_seconds == pytest.approx((1.0 + state.config.margin_seconds) / 23)
    state, second = ask(state, T0 + 3, 23, requester="other")
    assert second.not_before == pytest.approx(grant.send_by + grant.pace_seconds)


# ----------------------------------------------------------------------------------------------------------
# Circuit breaker
# ----------------------------------------------------------------------------------------------------------


def open_breaker(state: LimiterState, now: float) -> LimiterState:
    for i in range(state.config.breaker_threshold):
        state = tell(state, now + i * 0.01, sent=0, server_errors=5)
    return state


def test_breaker_opens_after_three_consecutive_bad_reports() -> None:
    state = tell(initial_state(), T0, server_errors=5)
    state = tell(state, T0 + 0.1, server_errors=5)
    assert state.breaker.phase == "closed"
    state = tell(state, T0 + 0.2, server_errors=5)
    assert state.breaker.phase == "open"
    assert state.breaker.open_until == pytest.approx(T0 + 0.2 + 5)


def test_a_clean_report_resets_the_bad_streak_and_an_empty_one_does_not() -> None:
    state = tell(initial_state(), T0, server_errors=5)
    state = tell(state, T0, server_errors=5)
    state = tell(state, T0)  # empty: no attempts
    assert state.breaker.consecutive_bad == 2
    state = tell(state, T0, sent=5)
    assert state.breaker.consecutive_bad == 0


@pytest.mark.parametrize(
    ("counts", "verdict"),
    [
        ({"sent": 5, "server_errors": 5}, "clean"),  # exactly half is not dominating
        ({"sent": 4, "server_errors": 3, "throttled": 3}, "bad"),  # 429s and 5xx together dominate
        ({"failed": 10, "server_errors": 2}, "clean"),  # recipient failures are not the tenant's health
        ({"sent": 0}, "empty"),
    ],
)
def test_a_batch_is_bad_when_429s_and_5xx_are_more_than_half_of_its_responses(
    counts: dict[str, Any], verdict: str
) -> None:
    _, ack = report(initial_state(), Report(now=T0, **counts))
    assert ack.verdict == verdict


def test_open_breaker_grants_zero_tokens_until_the_probe_time() -> None:
    state = open_breaker(initial_state(), T0)
    state, grant = ask(state, T0 + 1, 20)
    assert (grant.tokens, grant.reason) == (0, "breaker_open")
    assert grant.not_before == state.breaker.open_until


def test_half_open_grants_one_probe_to_one_requester_and_others_wait() -> None:
    state = open_breaker(initial_state(), T0)
    probe_time = state.breaker.open_until
    state, probe = ask(state, probe_time, 20, requester="a")
    state, other = ask(state, probe_time + 0.1, 20, requester="b")
    assert (probe.tokens, probe.reason) == (1, "probe")
    assert state.breaker.phase == "half_open"
    assert (other.tokens, other.reason) == (0, "probe_in_flight")
    assert other.not_before == pytest.approx(probe_time + 1.1)


def test_clean_probe_closes_the_breaker_and_the_rate_restarts_low() -> None:
    state = open_breaker(initial_state(), T0)
    state, _ = ask(state, state.breaker.open_until, 20, requester="a")
    state = tell(state, state.clock + 0.5, sent=1, requester="a")
    assert state.breaker.phase == "closed"
    assert state.rate == 10.0
    state, grant = ask(state, state.clock + 2, 50, requester="b")  # once the probe's window has passed
    assert grant.tokens == 10


def test_bad_probe_reopens_with_a_doubled_capped_cooldown() -> None:
    state = open_breaker(initial_state(LimiterConfig(max_cooldown_seconds=30)), T0)
    cooldowns = [state.breaker.cooldown_seconds]
    for _ in range(4):
        state, _ = ask(state, state.breaker.open_until, 20, requester="a")
        state = tell(state, state.clock + 0.1, server_errors=1, requester="a")
        assert state.breaker.phase == "open"
        cooldowns.append(state.breaker.cooldown_seconds)
    assert cooldowns == [5, 10, 20, 30, 30]


def test_only_the_probe_holders_report_decides_the_half_open_breaker() -> None:
    state = open_breaker(initial_state(), T0)
    state, _ = ask(state, state.breaker.open_until, 20, requester="a")
    state = tell(state, state.clock, server_errors=20, requester="late-batch")
    assert state.breaker.phase == "half_open"


def test_a_lost_probe_is_replaced_after_its_timeout() -> None:
    state = open_breaker(initial_state(), T0)
    state, _ = ask(state, state.breaker.open_until, 20, requester="a")
    state, grant = ask(state, state.clock + 31, 20, requester="b")
    assert (grant.tokens, grant.reason) == (1, "probe")
    assert state.breaker.probe_requester == "b"


def test_reports_while_open_do_not_change_the_breaker() -> None:
    state = open_breaker(initial_state(), T0)
    before = state.breaker
    state = tell(state, T0 + 1, sent=20)
    assert state.breaker == before


def test_retry_after_longer_than_the_cooldown_delays_the_probe() -> None:
    state = initial_state()
    for i in range(3):
        state = tell(state, T0 + i, throttled=10, retry_after=60)
    assert state.breaker.phase == "open"
    state, grant = ask(state, T0 + 10, 5)
    assert grant.not_before == pytest.approx(T0 + 62)


# ----------------------------------------------------------------------------------------------------------
# configure, get, apply, JSON
# ----------------------------------------------------------------------------------------------------------


def test_configure_moves_a_limiter_at_its_ceiling_to_the_new_ceiling() -> None:
    state = configure(initial_state(), LimiterConfig(rate=30))
    assert (state.rate, state.config.burst_tokens) == (30.0, 30.0)
    _, grant = ask(state, T0, 100)
    assert grant.tokens == 30


def test_configure_keeps_a_throttled_rate_within_the_new_bounds() -> None:
    state = throttled_twice(initial_state(), T0)
    assert configure(state, LimiterConfig(rate=100)).rate == pytest.approx(SETTLED)
    assert configure(state, LimiterConfig(rate=20)).rate == 20.0


def test_small_burst_raises_the_rate_floor_so_one_token_always_fits() -> None:
    config = LimiterConfig(rate=50, burst=10, min_rate=1)
    assert config.floor_rate == 5.0
    state = initial_state(config)
    for i in range(10):
        state = tell(state, T0 + 2 * i, throttled=20)
    _, grant = ask(state, T0 + 100, 10)
    assert state.rate == 5.0
    assert grant.tokens == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"rate": 0},
        {"rate": -1},
        {"rate": "fast"},
        {"burst": 0.5},
        {"normalShare": 1.0},
        {"minRate": 60},
        {"cooldownSeconds": 10, "maxCooldownSeconds": 5},
        {"slackSeconds": 0.02, "marginSeconds": 0.02},
        {"slackSeconds": 0.01, "marginSeconds": 0.0},
        {"breakerThreshold": 1.5},
        {"speed": 3},
    ],
)
def test_invalid_configuration_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        LimiterConfig.from_json(bad)


def test_apply_creates_a_new_entity_with_defaults_and_grants() -> None:
    new_state, decision = apply(
        None, "acquire", {"now": T0, "want": 5, "priority": "urgent", "requester": "x"}
    )
    assert decision["grant"]["tokens"] == 5
    assert decision["grant"]["notBeforeIso"] == "2026-11-21T09:00:00Z"
    assert LimiterState.from_json(new_state).stats.granted == 5


def test_apply_uses_the_given_defaults_for_a_new_entity() -> None:
    new_state, decision = apply(None, "acquire", {"now": T0, "want": 100}, defaults=LimiterConfig(rate=30))
    assert decision["grant"]["tokens"] == 30
    assert new_state["config"]["rate"] == 30.0


def test_apply_accepts_iso_times_and_snake_case_keys() -> None:
    state, _ = apply(None, "acquire", {"now": "2026-11-21T09:00:00+00:00", "want": 1})
    state, decision = apply(
        state, "report", {"now": "2026-11-21T09:00:01Z", "throttled": 20, "retry_after": 2, "granted_at": T0}
    )
    assert decision["report"]["holdUntil"] == T0 + 3
    assert decision["report"]["rate"] == 50.0  # an isolated 429: a hold only


def test_apply_accepts_a_datetime_and_a_json_string_state() -> None:
    state, _ = apply(None, "configure", {"rate": 40})
    moment = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
    _, decision = apply(json.dumps(state), "acquire", {"now": moment, "want": 3})
    assert decision["grant"]["notBefore"] == T0


@pytest.mark.parametrize(
    ("operation", "operation_input", "code"),
    [
        ("explode", {}, "unknown_operation"),
        (42, {}, "unknown_operation"),
        ("acquire", {"want": 5}, "invalid_input"),
        ("acquire", {"now": T0, "want": 0}, "invalid_input"),
        ("acquire", {"now": T0, "want": True}, "invalid_input"),
        ("acquire", {"now": T0, "want": 5, "priority": "vip"}, "invalid_input"),
        ("acquire", {"now": T0 * 1000, "want": 5}, "invalid_input"),  # milliseconds, not seconds
        ("acquire", {"now": "yesterday", "want": 5}, "invalid_input"),
        ("acquire", {"now": T0, "want": 5, "colour": "red"}, "unknown_field"),
        ("acquire", {"now": T0, "want": 5, "wantTokens": 1}, "unknown_field"),
        ("acquire", [1, 2], "invalid_input"),
        ("report", {"now": T0, "sent": -1}, "invalid_input"),
        ("report", {"now": T0, "retryAfter": math.inf}, "invalid_input"),
        ("report", {"now": T0, "retryAfter": 1, "retry_after": 2}, "invalid_input"),
        ("configure", {"rate": 0}, "invalid_input"),
        ("configure", {"rate": 50, "tenant": "x"}, "unknown_field"),
        ("get", {"anything": 1}, "unknown_field"),
    ],
)
def test_apply_returns_an_error_decision_and_leaves_the_state_unchanged(
    operation: object, operation_input: object, code: str
) -> None:
    state, _ = apply(None, "acquire", {"now": T0, "want": 5})
    frozen = json.dumps(state, sort_keys=True)
    new_state, decision = apply(state, operation, operation_input)
    assert new_state is state
    assert json.dumps(new_state, sort_keys=True) == frozen
    assert decision["error"]["code"] == code
    assert decision["error"]["message"]


@pytest.mark.parametrize(
    "stored",
    ["not json", {"v": 2}, {"v": 1}, [], 7, {**initial_state().to_json(), "rate": 500.0}],
)
def test_an_unusable_stored_state_is_logged_and_replaced_by_the_initial_state(
    stored: object, caplog: pytest.LogCaptureFixture
) -> None:
    # A limiter that refused every operation would stop its tenant for good; a fresh one costs at most a
    # window of overbooking, which the 429 feedback handles.
    defaults = LimiterConfig(rate=30)
    fresh_state, fresh_decision = apply(None, "acquire", {"now": T0, "want": 100}, defaults=defaults)
    with caplog.at_level("WARNING", logger="proactive.limiter.entity"):
        new_state, decision = apply(stored, "acquire", {"now": T0, "want": 100}, defaults=defaults)
    assert (new_state, decision) == (fresh_state, fresh_decision)
    assert decision["grant"]["tokens"] == 30
    assert "stored state unusable" in caplog.text


def test_get_is_read_only_and_shows_the_limiter() -> None:
    state, _ = apply(None, "acquire", {"now": T0, "want": 5, "priority": "urgent"})
    new_state, decision = apply(state, "get", None)
    assert new_state == state
    view = decision["snapshot"]
    assert view["phase"] == "closed"
    assert view["urgentActive"] is True
    assert view["stats"]["granted"] == 5
    assert snapshot(LimiterState.from_json(state)) == view


def test_configure_through_apply_changes_only_the_given_fields() -> None:
    state, decision = apply(None, "get", None)
    assert state is None  # get never creates the entity
    assert decision["snapshot"]["rate"] == 50.0
    new_state, decision = apply(state, "configure", {"now": T0, "rate": 30, "normal_share": 0.3})
    assert decision["config"]["rate"] == 30.0
    assert decision["config"]["normalShare"] == 0.3
    assert decision["config"]["breakerThreshold"] == 3
    assert new_state["rate"] == 30.0


def test_parse_time_treats_naive_iso_as_utc() -> None:
    assert parse_time("2026-11-21T09:00:00") == T0
    assert parse_time("2026-11-21T10:00:00+01:00") == T0


# ----------------------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------------------

REQUESTERS = ["a", "b", "c", "d"]

acquire_ops = st.builds(
    lambda dt, want, priority, who: ("acquire", dt, {"want": want, "priority": priority, "requester": who}),
    st.floats(0, 2.0),
    st.integers(1, 150),
    st.sampled_from(["urgent", "normal"]),
    st.sampled_from(REQUESTERS),
)
report_ops = st.builds(
    lambda dt, sent, throttled, errors, failed, retry, target, echo: (
        "report",
        dt,
        {
            "sent": sent,
            "throttled": throttled,
            "serverErrors": errors,
            "failed": failed,
            "retryAfter": retry,
            "target": target,
            "echo": echo,
        },
    ),
    st.floats(0, 2.0),
    st.integers(0, 30),
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(0, 2),
    st.none() | st.floats(0, 5.0),
    st.none() | st.integers(0, 7),  # which started batch reports (None: a report nobody can place)
    st.booleans(),  # whether it says when its requests started and ended
)
configs = st.builds(
    lambda rate, burst, share, threshold, margin_slack, lag: LimiterConfig(
        rate=rate,
        burst=burst,
        min_rate=min(1.0, rate),
        normal_share=share,
        breaker_threshold=threshold,
        margin_seconds=margin_slack[0],
        slack_seconds=margin_slack[1],
        start_lag_seconds=lag,
    ),
    st.floats(1.0, 120.0),
    st.none() | st.floats(1.0, 150.0),
    st.floats(0.05, 0.5),
    st.integers(1, 4),
    st.sampled_from([(0.005, 0.002), (0.02, 0.01), (0.05, 0.049)]),
    st.sampled_from([0.0, 0.03, 1.0]),
)
# How a sender uses a grant: origin shifted by a share of what sendBy allows, each request late by a share of
# the slack (per request, from the random source).
senders = st.tuples(st.sampled_from([0.0, 0.5, 1.0]), st.randoms(use_true_random=False))


@dataclass
class Batch:
    """One grant as the sender used it: its request start times, cut short when the batch was over."""

    grant: Grant
    requester: str
    times: list[float]
    open: bool = True

    def end(self, now: float) -> None:
        self.times = [t for t in self.times if t <= now + 1e-9]
        self.open = False


def requests_of(grant: Grant, sender: tuple[float, Any]) -> list[float]:
    shift_share, rng = sender
    shift = shift_share * max(0.0, grant.send_by - grant.not_before)
    return [t + rng.uniform(0, grant.slack_seconds) for t in slots(grant, shift=shift)]


def run_ops(
    config: LimiterConfig | None,
    ops: list[tuple[str, float, dict[str, Any]]],
    sender: tuple[float, Any] = (0.0, None),
) -> tuple[list[Batch], list[LimiterState]]:
    """Drive the entity through :func:`apply` (JSON state) like orchestrations and senders would.

    An acquire ends the requester's started batches (an orchestration asks again only after its batch), a
    report ends the batch it names (nothing of a batch starts after its report's ``now``). Returns every
    batch with its request times and every state.
    """
    if sender[1] is None:
        sender = (sender[0], random.Random(0))
    state_json: Any = None if config is None else initial_state(config).to_json()
    now = T0
    batches: list[Batch] = []
    states = [LimiterState.from_json(state_json) if state_json else initial_state()]
    for kind, dt, values in ops:
        now += dt
        values = dict(values)
        if kind == "acquire":
            for batch in batches:
                if batch.open and batch.requester == values["requester"] and batch.grant.not_before <= now:
                    batch.end(now)
        elif kind == "report":
            target, echo = values.pop("target"), values.pop("echo")
            started = [b for b in batches if b.open and b.grant.not_before <= now]
            if target is not None and started:
                batch = started[target % len(started)]
                batch.end(now)
                values |= {"requester": batch.requester, "grantedAt": batch.grant.granted_at}
                if echo and batch.times:
                    values |= {"firstSendAt": min(batch.times), "lastSendAt": max(batch.times)}
        state_json, decision = apply(state_json, kind, values | {"now": now})
        assert "error" not in decision, decision
        if kind == "acquire":
            grant = decision["grant"]
            assert grant["notBefore"] >= now - 1e-9
            if grant["tokens"]:
                parsed = Grant.from_json(grant)
                batches.append(Batch(parsed, values["requester"], requests_of(parsed, sender)))
        states.append(LimiterState.from_json(state_json))
    return batches, states


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs, st.lists(acquire_ops | report_ops, min_size=1, max_size=60), senders)
def test_property_requests_in_any_one_second_window_never_exceed_the_rate(
    config: LimiterConfig, ops: list[tuple[str, float, dict[str, Any]]], sender: tuple[float, Any]
) -> None:
    batches, states = run_ops(config, ops, sender)
    assert all(config.floor_rate - 1e-9 <= s.rate <= config.rate for s in states)
    # Requests starting in any closed window of W, each batch's as the sender placed them (late start, late
    # requests): at most rate * W at the highest effective rate in force, never above the configured one.
    rate = max(s.rate for s in states)
    per_window = max(1, math.floor(rate * config.window_seconds + 1e-9))
    times = [t for batch in batches for t in batch.times]
    assert max_in_closed_window(times, config.window_seconds) <= per_window


configure_ops = st.builds(
    lambda dt, rate, burst: ("configure", dt, {"rate": rate, "burst": burst}),
    st.floats(0, 2.0),
    st.floats(1.0, 120.0),
    st.none() | st.floats(1.0, 150.0),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(acquire_ops | report_ops | configure_ops, min_size=1, max_size=50), senders)
def test_property_window_bound_holds_across_reconfiguration_with_the_largest_rate(
    ops: list[tuple[str, float, dict[str, Any]]], sender: tuple[float, Any]
) -> None:
    batches, states = run_ops(None, ops, sender)
    per_window = max(1, math.floor(max(s.rate for s in states) + 1e-9))  # the window stays 1 s
    assert max_in_closed_window([t for batch in batches for t in batch.times]) <= per_window


@settings(max_examples=60, deadline=None)
@given(configs, st.lists(acquire_ops | report_ops, min_size=1, max_size=40))
def test_property_state_json_round_trips_exactly(
    config: LimiterConfig, ops: list[tuple[str, float, dict[str, Any]]]
) -> None:
    _, states = run_ops(config, ops)
    for state in states:
        wire = json.loads(json.dumps(state.to_json(), allow_nan=False))
        assert wire == state.to_json()
        assert LimiterState.from_json(wire) == state


@settings(max_examples=40, deadline=None)
@given(st.lists(acquire_ops | report_ops, min_size=1, max_size=40))
def test_property_apply_over_json_matches_the_python_api(
    ops: list[tuple[str, float, dict[str, Any]]],
) -> None:
    """What the entity does (JSON state between operations) is exactly what the pure functions do."""
    state_json: Any = None
    state = initial_state()
    now = T0
    for kind, dt, values in ops:
        now += dt
        wire_input = {k: v for k, v in values.items() if k not in ("echo", "target")} | {"now": now}
        state_json, decision = apply(json.loads(json.dumps(state_json)), kind, wire_input)
        if kind == "acquire":
            state, grant = acquire(state, Acquire.from_json(wire_input))
            assert decision == {"grant": grant.to_json()}
        else:
            state, ack = report(state, Report.from_json(wire_input))
            assert decision == {"report": ack.to_json()}
        assert state_json == state.to_json()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
field_names = st.sampled_from(
    ["now", "want", "priority", "requester", "sent", "throttled", "serverErrors", "retryAfter", "grantedAt",
     "rate", "burst", "failed", "retry_after", "normalShare", "x"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.none() | st.just(initial_state().to_json()) | json_values,
    st.sampled_from(["acquire", "report", "configure", "get"]) | st.text(max_size=6) | json_values,
    st.dictionaries(field_names | st.text(max_size=6), json_values | st.floats(T0 - 10, T0 + 10), max_size=6)
    | json_values,
)
def test_property_apply_never_raises_and_errors_leave_the_state_untouched(
    stored: Any, operation: Any, operation_input: Any
) -> None:
    before = json.dumps(stored, sort_keys=True, default=repr)
    new_state, decision = apply(stored, operation, operation_input)
    assert isinstance(decision, dict)
    assert len(decision) == 1
    if "error" in decision:
        assert new_state is stored
        assert json.dumps(stored, sort_keys=True, default=repr) == before
        assert set(decision["error"]) == {"code", "message", "details"}
        assert decision["error"]["code"] != "internal_error"
    else:
        json.dumps(new_state, allow_nan=False)
        json.dumps(decision, allow_nan=False)


# ----------------------------------------------------------------------------------------------------------
# Simulations
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Requester:
    name: str
    want: int
    priority: Priority = "normal"
    sent: int = 0
    waits: list[float] = field(default_factory=list)
    log: list[tuple[float, int]] = field(default_factory=list)


@dataclass
class Sim:
    """Event-driven tenant: requesters loop acquire -> wait -> send -> report, with injected latency.

    A batch sends one request per slot from ``notBefore`` (``lag`` later when given), each through ``send``;
    its report, with ``firstSendAt`` / ``lastSendAt``, reaches the limiter ``latency`` seconds after the
    last request, as ``tenant_broadcast`` reports after the activity returns. ``grants`` holds every
    request as ``(time, 1)``.
    """

    state: LimiterState
    send: Callable[[float, int], tuple[int, int, int, float | None]]  # -> sent, throttled, 5xx, retry-after
    latency: float = 0.25
    lag: float = 0.0
    grants: list[tuple[float, int]] = field(default_factory=list)
    rate_trace: list[tuple[float, float]] = field(default_factory=list)
    phase_trace: list[tuple[float, str]] = field(default_factory=list)

    def _send_batch(self, grant: Grant) -> tuple[list[float], int, int, int, float | None]:
        times = slots(grant, shift=self.lag)
        sent = throttled = errors = 0
        retry_after: float | None = None
        for moment in times:
            ok, refused, failed, wait = self.send(moment, 1)
            sent, throttled, errors = sent + ok, throttled + refused, errors + failed
            if wait is not None:
                retry_after = max(retry_after or 0.0, wait)
            self.grants.append((moment, 1))
        return times, sent, throttled, errors, retry_after

    def run(
        self, requesters: Sequence[Requester], until: float, starts: Sequence[float] | None = None
    ) -> None:
        # Events: (time, seq, requester index, kind, payload); a report is its own event at its time, so the
        # limiter sees every operation in time order, as the entity would.
        queue: list[tuple[float, int, int, str, Any]] = []
        for i, when in enumerate(starts or [T0] * len(requesters)):
            heapq.heappush(queue, (when, 0, i, "acquire", None))
        seq = 1
        while queue:
            now, _, index, kind, payload = heapq.heappop(queue)
            if now >= until:
                continue
            who = requesters[index]
            if kind == "acquire":
                self.state, grant = acquire(
                    self.state,
                    Acquire(now=now, want=who.want, priority=who.priority, requester=who.name),
                )
                self.phase_trace.append((now, self.state.breaker.phase))
                if grant.tokens == 0:
                    heapq.heappush(queue, (grant.not_before, seq, index, "acquire", None))
                else:
                    who.waits.append(grant.not_before - now)
                    heapq.heappush(queue, (grant.not_before, seq, index, "send", grant))
            elif kind == "send":
                grant = payload
                times, sent, throttled, errors, retry_after = self._send_batch(grant)
                who.sent += sent
                who.log.append((now, sent))
                outcome = Report(
                    now=(times[-1] if times else now) + self.latency,
                    sent=sent,
                    throttled=throttled,
                    server_errors=errors,
                    retry_after=retry_after,
                    requester=who.name,
                    granted_at=grant.granted_at,
                    first_send_at=times[0] if times else None,
                    last_send_at=times[-1] if times else None,
                )
                heapq.heappush(queue, (outcome.now, seq, index, "report", outcome))
            else:
                self.state, _ = report(self.state, payload)
                self.rate_trace.append((now, self.state.rate))
                self.phase_trace.append((now, self.state.breaker.phase))
                heapq.heappush(queue, (now, seq, index, "acquire", None))
            seq += 1

    def tokens_between(self, start: float, end: float) -> int:
        return sum(n for t, n in self.grants if start <= t < end)


def always_ok(now: float, tokens: int) -> tuple[int, int, int, float | None]:
    return tokens, 0, 0, None


def test_simulation_three_hours_at_the_edge_of_the_rate_achieves_95_percent_and_never_exceeds_it() -> None:
    hours = 3
    sim = Sim(initial_state(), always_ok)
    requesters = [Requester(f"orch{i}", 20) for i in range(10)]
    sim.run(requesters, T0 + hours * 3600)
    achieved = sim.tokens_between(T0, T0 + hours * 3600) / (hours * 3600)
    assert achieved >= 0.95 * 50
    for window in (0.0, 1.0, 2.0, 30.0):
        assert max_in_window(sim.grants, window) <= 50 * window + 50 + 1e-6
    assert min(r.sent for r in requesters) > 0.9 * max(r.sent for r in requesters)  # fair among equals


class TeamsTenant:
    """Server side of one tenant: a token bucket at ``rate(t)`` msg/s (burst one second); 429 beyond it."""

    def __init__(self, rate: Callable[[float], float]) -> None:
        self.rate = rate
        self.level = rate(T0)
        self.at = T0
        self.accepted: list[tuple[float, int]] = []
        self.throttled: list[tuple[float, int]] = []

    def __call__(self, now: float, tokens: int) -> tuple[int, int, int, float | None]:
        rate = self.rate(now)
        self.level = min(rate, self.level + rate * (now - self.at))
        self.at = now
        accepted = max(0, min(tokens, math.floor(self.level + 1e-9)))
        self.level -= accepted
        refused = tokens - accepted
        self.accepted.append((now, accepted))
        if refused:
            self.throttled.append((now, refused))
            return accepted, refused, 0, round((1 - self.level) / rate + 0.05, 3)  # Retry-After, fractional
        return accepted, 0, 0, None

    def accepted_between(self, start: float, end: float) -> int:
        return sum(n for t, n in self.accepted if start <= t < end)

    def throttled_between(self, start: float, end: float) -> int:
        return sum(n for t, n in self.throttled if start <= t < end)


def test_simulation_teams_like_throttling_aimd_backs_off_during_a_drop_and_recovers_after() -> None:
    drop_start, drop_end, end = T0 + 300, T0 + 600, T0 + 900
    server = TeamsTenant(lambda t: 25.0 if drop_start <= t < drop_end else 50.0)
    sim = Sim(initial_state(), server)
    sim.run([Requester(f"orch{i}", 20) for i in range(10)], end)

    def rate_at(moment: float) -> float:
        return [rate for t, rate in sim.rate_trace if t <= moment][-1]

    # At the limiter's own rate the server never throttles: the limiter's output conforms to its bucket.
    assert server.throttled_between(T0, drop_start) == 0
    assert server.accepted_between(T0, drop_start) >= 0.95 * 50 * 300
    # During the drop AIMD halves within seconds and then saws below the server's 25 msg/s. Ten requesters
    # keep about 4 s of batches booked ahead, so a 429 acts on batches booked after those: the feedback delay.
    assert rate_at(drop_start + 6) <= 25.0
    during = server.accepted_between(drop_start + 30, drop_end) / (drop_end - drop_start - 30)
    throttled = server.throttled_between(drop_start + 30, drop_end)
    assert 0.6 * 25 <= during <= 25 * 1.05
    assert throttled <= 0.2 * server.accepted_between(drop_start + 30, drop_end)
    assert sim.state.stats.breaker_opens == 0  # 429s with progress do not trip the breaker
    # After the drop the rate climbs back to the ceiling within a minute and the tenant runs at 50 msg/s again.
    assert rate_at(drop_end + 60) == 50.0
    assert server.accepted_between(drop_end + 60, end) >= 0.95 * 50 * (end - drop_end - 60)
    assert server.throttled_between(drop_end + 60, end) == 0


def test_simulation_urgent_is_served_first_and_normal_is_never_starved() -> None:
    sim = Sim(initial_state(), always_ok)
    normal = [Requester(f"deploy{i}", 50, "normal") for i in range(3)]
    urgent = [Requester(f"incident{i}", 50, "urgent") for i in range(3)]
    # Deploys saturate the tenant alone for 30 s, then an incident broadcast joins for 120 s.
    sim.run(normal + urgent, T0 + 150, starts=[T0] * 3 + [T0 + 30] * 3)
    # The first incident batch waits behind the deploy batches already booked (one per deploy orchestration,
    # after the batch in progress), not the deploy; the other two incident orchestrations asked at the same
    # instant and queue one urgent batch each behind it, in urgent's lane.
    first_urgent_waits = sorted(r.waits[0] for r in urgent)
    assert first_urgent_waits[0] <= (3 + 1) * BATCH + 3 * URGENT_PACE + TOL
    assert all(wait <= first_urgent_waits[0] + i * BATCH + TOL for i, wait in enumerate(first_urgent_waits))
    urgent_waits = [w for r in urgent for w in r.waits[3:]]
    # Three incident orchestrations share urgent's 40 tokens per window: each waits at most three batches.
    assert max(urgent_waits) <= len(urgent) * BATCH + TOL
    alone = sum(n for r in normal for t, n in r.log if t < T0 + 30) / 30
    assert alone >= 0.95 * 50  # before the incident the deploys had the whole rate
    both_active = (T0 + 40, T0 + 150)
    span = both_active[1] - both_active[0]
    normal_rate = sum(n for r in normal for t, n in r.log if both_active[0] <= t < both_active[1]) / span
    urgent_rate = sum(n for r in urgent for t, n in r.log if both_active[0] <= t < both_active[1]) / span
    assert urgent_rate >= 0.75 * 50  # urgent gets ~80 % while both are active
    assert normal_rate >= 0.95 * 0.2 * 50  # never starved: at least its 20 % share
    assert urgent_rate >= 3.5 * normal_rate
    assert urgent_rate + normal_rate >= 0.95 * 50
    assert max_in_sliding_window(sim.grants, 1.0) <= 50


@settings(max_examples=12, deadline=None)
@given(
    urgent_count=st.integers(1, 5),
    normal_count=st.integers(1, 3),
    urgent_want=st.integers(10, 200),
    latency=st.floats(0.05, 0.6),
    share=st.sampled_from([0.1, 0.2, 0.3]),
)
def test_property_normal_keeps_its_share_whatever_urgent_demand(
    urgent_count: int, normal_count: int, urgent_want: int, latency: float, share: float
) -> None:
    sim = Sim(initial_state(LimiterConfig(normal_share=share)), always_ok, latency=latency)
    normal = [Requester(f"n{i}", 50, "normal") for i in range(normal_count)]
    urgent = [Requester(f"u{i}", urgent_want, "urgent") for i in range(urgent_count)]
    sim.run(normal + urgent, T0 + 60)
    settled = T0 + 5
    normal_rate = sum(n for r in normal for t, n in r.log if t >= settled) / (T0 + 60 - settled)
    # A lane batch spans a window and its requester asks again ``latency`` after it: alone, one requester
    # leaves the lane idle for that long each time (more requesters fill the gaps).
    busy = min(1.0, normal_count * BATCH / (BATCH + latency))
    assert normal_rate >= 0.9 * share * 50 * busy
    # Urgent first: an urgent request only ever waits behind the other urgent requesters' bookings (one urgent
    # batch of at most a window each), never behind normal ones, however many normal requesters there are.
    urgent_waits = [w for r in urgent for w in r.waits[10:]]
    assert max(urgent_waits) <= urgent_count * BATCH + 0.01
    assert max_in_sliding_window(sim.grants, 1.0) <= 50


def test_simulation_breaker_opens_probes_backs_off_and_closes_when_the_tenant_recovers() -> None:
    outage_start, outage_end = T0 + 10, T0 + 50

    def flaky(now: float, tokens: int) -> tuple[int, int, int, float | None]:
        if outage_start <= now < outage_end:
            return 0, 0, tokens, None
        return tokens, 0, 0, None

    sim = Sim(initial_state(), flaky)
    sim.run([Requester(f"orch{i}", 20) for i in range(3)], T0 + 200)
    phases = [phase for _, phase in sim.phase_trace]
    transitions = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    # Probes at 5, 10 and 20 s cool-downs fail during the outage; the one after a 40 s cool-down succeeds.
    assert transitions == ["closed", "open", *["half_open", "open"] * 3, "half_open", "closed"]
    # While the breaker was open or half-open only 1-token probes went out.
    opened_at = next(t for t, p in sim.phase_trace if p == "open")
    closed_again = next(t for t, p in sim.phase_trace if t > opened_at and p == "closed")
    assert all(n == 1 for t, n in sim.grants if opened_at + 1 < t < closed_again - 1)
    # Cool-downs doubled while the outage lasted: 5, 10, 20 (then the probe after 50 s succeeds).
    assert closed_again >= outage_end
    assert closed_again <= outage_end + 40 + 5
    # The rate restarted low and climbed back to the ceiling.
    restart_rate = next(rate for t, rate in sim.rate_trace if t >= closed_again)
    assert restart_rate <= 12.0
    assert sim.state.rate == 50.0
    assert sim.state.stats.breaker_opens >= 3


def test_tenant_defaults_let_one_paced_grant_hold_batch_size_slots_over_several_windows() -> None:
    config = tenant_defaults(50, 150)
    state, grant = ask(initial_state(config), T0, 1000, requester="deploy")
    assert grant.tokens == 150  # three windows of slots, not a burst of 150
    assert grant.pace_seconds == pytest.approx(PACE)
    times = slots(grant, shift=LAG, delay=SLACK)
    assert len(times) == 150 and max_in_closed_window(times) <= 50
    state, urgent = ask(state, T0, 1000, "urgent", "incident")
    assert urgent.tokens == 120  # urgent's lane: 40 a window, three windows
    assert tenant_defaults(50, 20).max_booking_seconds == 1.0  # never less than one window
