"""``acquire``: paced slots that keep every window of the tenant at its rate.

Teams counts a tenant's requests in sliding windows: at most ``L = floor(rate * W)`` in any ``W``
(``windowSeconds``). A grant is a run of slots ``pace = (W + marginSeconds) / L`` apart; the sender
(:mod:`proactive.delivery.pacing`) starts each request at most ``slackSeconds`` after its slot (``slack < margin``),
so any window holds at most ``L``. Grants are chained like a virtual clock (GCRA): a grant starts one pace
after the previous booking's ``sendBy``, so consecutive batches tile the time line. While a batch is out
its booking runs to ``sendBy = planned + (n - 1) * pace + startLag``, where ``planned = max(start, now +
lead)`` (``lead``: the learned time a batch needs to get ready); its report, or its requester's next
``acquire``, closes it at its last request. A grant starts as soon as the schedule allows (a batch ready
early sends at once on an idle tenant) but never before a ``Retry-After`` hold. Bookings already made keep their place when
the rate changes, so across a change the bound holds with the highest rate in force.

Priority: while urgent and normal demand are both active (each until ``priorityWindowSeconds`` after its
latest ``notBefore``) each has its own lane, normal keeping ``normalShare`` of ``L`` and urgent the rest;
a lane waits only for its own lane and for ``all`` bookings. Otherwise the active one takes the whole rate.
Urgent never waits behind normal bookings made after it; normal is never starved.

Breaker: while open, ``acquire`` answers ``Grant(0)`` until ``openUntil``; then one requester gets a probe
of ``probeTokens`` and the others ``Grant(0)`` until its report (or its ``probeTimeoutSeconds``).
"""

from __future__ import annotations

import math
from typing import Final

from proactive.limiter.config import LimiterConfig
from proactive.limiter.contract import Acquire, Grant, GrantReason, Priority
from proactive.limiter.state import MAX_BOOKED, Booking, Lane, LimiterState, evolve

__all__ = ["EPS", "acquire", "advance", "capacity", "close_booking", "lane_pace"]


# Comparisons on epoch floats (~1.7e9, one ulp is ~2.4e-7 s) need a tolerance well above an ulp and well below
# one token's interval at the highest allowed rate (1 / 10,000 s).
EPS: Final = 1e-6
# Paces between the last slot of ``all`` and the first of a lane (or back): a window can then hold one
# partial slot of each of three streams, and the gap pays for them.
_LANE_CHANGE_PACES: Final = 3.0


def capacity(config: LimiterConfig, rate: float) -> tuple[int, float]:
    """Tokens per window at ``rate`` and the window they apply to (longer than ``W`` only below 1/W)."""
    limit = max(1, math.floor(rate * config.window_seconds + 1e-9))
    return limit, max(config.window_seconds, limit / rate)


def _lane_for(state: LimiterState, priority: Priority, now: float) -> Lane:
    """``all`` unless the other priority's demand is active too: then the priority's own lane."""
    other_active = state.normal_until > now if priority == "urgent" else state.urgent_until > now
    if not other_active or capacity(state.config, state.rate)[0] < 2:
        return "all"
    return priority


def lane_pace(state: LimiterState, lane: Lane) -> tuple[int, float]:
    """Tokens per window of ``lane`` and the pace of its slots: ``(window + margin) / tokens``."""
    config = state.config
    limit, seconds = capacity(config, state.rate)
    if lane != "all":
        normal = min(limit - 1, max(1, math.floor(config.normal_share * limit + 1e-9)))
        limit = normal if lane == "normal" else limit - normal
    return limit, (seconds + config.margin_seconds) / limit


def _conflicts(first: Lane, second: Lane) -> bool:
    """Whether two lanes' slots must not interleave (``urgent`` and ``normal`` share windows by design)."""
    return first == "all" or second == "all" or first == second


def _earliest_start(bookings: tuple[Booking, ...], lane: Lane, pace: float, earliest: float) -> float:
    """The first slot time at or after ``earliest`` that keeps every window within its limit.

    After a booking of the same lane it is one pace (the larger of the two) after that booking's last slot,
    so the lane's slots stay a pace apart. Where ``all`` meets a lane the gap is three paces: a window can
    then hold one partial slot of each of three streams, and the gap pays for them (_LANE_CHANGE_PACES).
    """
    start = earliest
    for booking in bookings:
        if not _conflicts(booking.lane, lane):
            continue
        step = max(booking.pace, pace)
        start = max(start, booking.send_by + (step if booking.lane == lane else _LANE_CHANGE_PACES * step))
    return start


def _insert(bookings: tuple[Booking, ...], booking: Booking) -> tuple[Booking, ...]:
    ordered = sorted((*bookings, booking), key=lambda b: (b.start, b.send_by))
    while len(ordered) > MAX_BOOKED:
        # Merge the two oldest into one ``all`` booking that ends where the later of them ends: every later
        # grant still starts after both (conservative: capacity wasted, never exceeded).
        first, second = ordered[0], ordered[1]
        merged = Booking(
            start=first.start,
            send_by=max(first.send_by, second.send_by),
            pace=max(first.pace, second.pace),
            urgent=first.urgent + second.urgent,
            normal=first.normal + second.normal,
        )
        ordered = sorted((merged, *ordered[2:]), key=lambda b: (b.start, b.send_by))
    return tuple(ordered)


def _prune(bookings: tuple[Booking, ...], now: float, reach: float) -> tuple[Booking, ...]:
    # A new grant starts at or after now; a booking whose last slot lies more than ``reach`` (a window, more
    # than any gap) before that can no longer move it.
    return tuple(b for b in bookings if b.send_by + reach > now)


def close_booking(booking: Booking, end: float) -> Booking:
    return evolve(
        booking,
        send_by=max(booking.start, min(booking.send_by, end)),
        requester=None,
        granted_at=None,
        open=False,
    )


def _close_started(state: LimiterState, requester: str, now: float) -> LimiterState:
    """An orchestration asks again only once its previous batch is over: its started bookings ended by now."""
    if not any(b.open and b.requester == requester and b.start <= now + EPS for b in state.bookings):
        return state
    bookings = tuple(
        close_booking(b, now) if b.open and b.requester == requester and b.start <= now + EPS else b
        for b in state.bookings
    )
    return evolve(state, bookings=bookings)


def _reach(config: LimiterConfig, rate: float) -> float:
    return capacity(config, rate)[1] + config.margin_seconds


def advance(state: LimiterState, now: float) -> tuple[LimiterState, float]:
    moment = max(now, state.clock)
    # Prune with the longest window any rate in force could use (the configured floor gives the longest).
    reach = max(_reach(state.config, state.rate), _reach(state.config, state.config.floor_rate))
    return evolve(state, clock=moment, bookings=_prune(state.bookings, moment, reach)), moment


def _mark_demand(state: LimiterState, priority: Priority, until: float) -> LimiterState:
    if priority == "urgent":
        return evolve(state, urgent_until=max(state.urgent_until, until))
    return evolve(state, normal_until=max(state.normal_until, until))


def _refuse(
    state: LimiterState, request: Acquire, now: float, not_before: float, reason: GrantReason
) -> tuple[LimiterState, Grant]:
    state = _mark_demand(state, request.priority, not_before + state.config.priority_window_seconds)
    state = evolve(state, stats=state.stats.add(refusals=1))
    at = max(not_before, now)
    pace = lane_pace(state, "all")[1]
    return state, Grant(
        tokens=0,
        not_before=at,
        granted_at=now,
        reason=reason,
        rate=state.rate,
        pace_seconds=pace,
        send_by=at,
        slack_seconds=state.config.slack_seconds,
    )


def _book_grant(
    state: LimiterState, request: Acquire, now: float, most: int, reason: GrantReason
) -> tuple[LimiterState, Grant]:
    config, rate = state.config, state.rate
    if request.requester:
        state = _close_started(state, request.requester, now)
    lane = _lane_for(state, request.priority, now)
    limit, pace = lane_pace(state, lane)
    caps = [
        most,
        max(1, math.floor(limit * config.max_booking_seconds / config.window_seconds + 1e-9)),
        math.floor(rate * config.slice_seconds + 1e-9),
        max(1, math.floor(rate * config.max_booking_seconds + 1e-9)),
    ]
    tokens = max(1, min(caps))
    # The grant may start as soon as the tenant's schedule allows, and its slots are planned from ``lead``
    # ahead (by then its batch is ready, see ``LimiterConfig.lead_seconds``): a batch ready sooner uses an
    # idle tenant's time at once instead of waiting out the lead; one ready later still has all its slots.
    start = _earliest_start(state.bookings, lane, pace, max(now, state.hold_until))
    planned = max(start, now + state.lead_seconds)
    send_by = planned + (tokens - 1) * pace + state.start_lag_seconds
    booking = Booking(
        start=start,
        send_by=send_by,
        pace=pace,
        urgent=tokens if request.priority == "urgent" else 0,
        normal=tokens if request.priority == "normal" else 0,
        lane=lane,
        requester=request.requester or None,
        granted_at=now,
        open=True,
    )
    state = evolve(
        state,
        bookings=_insert(state.bookings, booking),
        stats=state.stats.add(grants=1, granted=tokens),
    )
    state = _mark_demand(state, request.priority, start + config.priority_window_seconds)
    return state, Grant(
        tokens=tokens,
        not_before=start,
        granted_at=now,
        reason=reason,
        rate=rate,
        pace_seconds=pace,
        send_by=send_by,
        slack_seconds=config.slack_seconds,
    )


def _grant_probe(state: LimiterState, request: Acquire, now: float) -> tuple[LimiterState, Grant]:
    state, grant = _book_grant(state, request, now, min(request.want, state.config.probe_tokens), "probe")
    breaker = evolve(
        state.breaker,
        phase="half_open",
        probe_requester=request.requester,
        probe_deadline=grant.not_before + state.config.probe_timeout_seconds,
    )
    return evolve(state, breaker=breaker), grant


def acquire(state: LimiterState, request: Acquire) -> tuple[LimiterState, Grant]:
    """Grant up to ``request.want`` tokens and the time to send them.

    Args:
        state: Current state.
        request: Who wants how many, when, at which priority.

    Returns:
        The new state and the grant. ``tokens > 0`` unless the breaker is open or a half-open probe is out, in
        which case ``tokens == 0`` and ``not_before`` says when to ask again.
    """
    state, now = advance(state, request.now)
    breaker = state.breaker
    if breaker.phase == "open":
        if now < breaker.open_until:
            return _refuse(state, request, now, max(breaker.open_until, state.hold_until), "breaker_open")
        return _grant_probe(state, request, now)
    if breaker.phase == "half_open":
        probe_out = now < breaker.probe_deadline and request.requester != breaker.probe_requester
        if probe_out:
            poll = min(breaker.probe_deadline, now + state.config.half_open_poll_seconds)
            return _refuse(state, request, now, poll, "probe_in_flight")
        # The probe was lost (deadline passed) or its holder asks again without reporting: probe anew.
        return _grant_probe(state, request, now)
    return _book_grant(state, request, now, request.want, "granted")
