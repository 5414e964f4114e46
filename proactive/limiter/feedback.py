"""``report``: what one batch's responses teach the tenant's limiter.

- The booking closes at the batch's last request; its first request teaches the start lag, its first ready
  request the lead. The surprising rule: a report naming its grant may close a booking *before* its start
  (a batch started ahead of ``notBefore`` that found nothing to send gives its slots back).
- 429s that are at most ``noiseFraction`` of a batch (and shares found not to follow the rate) are noise and
  change nothing. Otherwise ``Retry-After`` holds the tenant; the first 429s of a streak are only a hold;
  persistent ones (from a batch granted after the limiter knew of the streak) settle the rate at
  ``settleFraction`` of what got through, once per overload. A decrease that did not lower the throttled
  share is taken back. After ``increaseAfterSeconds`` the rate climbs again, above a found ceiling only as a
  slow probe.
- Breaker: ``breakerThreshold`` bad reports in a row (429s + 5xx over ``badFraction`` of the attempts) open
  it; a clean probe closes it and restarts at ``restartFraction`` of the ceiling, a bad one re-opens it with
  the cool-down doubled. Reports while open come from batches granted before and move nothing.
"""

from __future__ import annotations

import math
from typing import Final, Literal

from proactive.limiter.admission import EPS, advance, close_booking
from proactive.limiter.config import MAX_LEAD, LimiterConfig
from proactive.limiter.contract import MAX_SECONDS, Report, ReportAck
from proactive.limiter.state import Breaker, LimiterState, evolve

__all__ = ["report"]


# How the learned start lag follows reports: twice the lag seen, halving with each report.
_LAG_SAFETY: Final = 2.0
_LAG_DECAY: Final = 0.5
# A decrease whose next throttled batch still shows this share of its 429s did not help: the 429s are noise,
# and shares up to the seen one times the margin are noise for ``noiseMemorySeconds``.
_NOISE_KEPT: Final = 0.7
_NOISE_MARGIN: Final = 1.5
# A throttled share above this is never taken for noise (random faults that frequent would be an outage).
_NOISE_MAX: Final = 0.3
# A batch's throttled share is taken over at least this many responses: one 429 of two is not half the rate.
_SHARE_SAMPLE: Final = 20
# How the learned lead follows each report's ready latency: 1.25 x the latency seen, up halfway at once,
# down a fifth of the way per report (one slow dispatch raises it for a while instead of doubling it).
_LEAD_SAFETY: Final = 1.25
_LEAD_UP: Final = 0.5
_LEAD_DOWN: Final = 0.2


def _close_reported(state: LimiterState, outcome: Report, end: float, now: float) -> LimiterState:
    """Close the open booking a report belongs to at its last request, and learn how late it started."""
    if outcome.requester is None and outcome.granted_at is None:
        return state  # nothing tells which batch this was: it keeps its sendBy until it leaves the log
    for index, booking in enumerate(state.bookings):
        # A booking named by its grant may be closed before its start: a batch started ahead of its
        # notBefore that sent nothing gives its slots back (closed at its start, it holds none).
        early = booking.start > now + EPS
        if not booking.open or (early and (outcome.granted_at is None or outcome.last_send_at is not None)):
            continue
        if outcome.requester is not None and booking.requester != outcome.requester:
            continue
        if outcome.granted_at is not None and abs((booking.granted_at or 0.0) - outcome.granted_at) > EPS:
            continue
        bookings = (*state.bookings[:index], close_booking(booking, end), *state.bookings[index + 1 :])
        state = evolve(state, bookings=bookings)
        if outcome.first_send_at is not None:
            # Lateness after the batch was both allowed and ready: the lead covers getting ready.
            began = max(booking.start, outcome.first_ready_at or booking.start)
            lag = max(0.0, outcome.first_send_at - began)
            learned = max(_LAG_SAFETY * lag, _LAG_DECAY * state.start_lag_seconds)
            state = evolve(state, start_lag_seconds=min(learned, MAX_SECONDS))
        return state
    return state


def _learn_lead(state: LimiterState, outcome: Report) -> LimiterState:
    """Follow how long batches take from their grant to their first ready request (the report alone says
    it, so a report that comes after its booking left the log still teaches: a batch that was too late to
    send anything is exactly the one the lead must learn from)."""
    if outcome.first_ready_at is None or outcome.granted_at is None:
        return state
    ready = max(0.0, outcome.first_ready_at - outcome.granted_at)
    target = _LEAD_SAFETY * ready
    # Up halfway at once, down a fifth of the way per report: one slow dispatch (a tail of a second on
    # Azure) raises the lead for a while instead of doubling it, and a fast spell lowers it slowly.
    step = _LEAD_UP if target > state.lead_seconds else _LEAD_DOWN
    learned = state.lead_seconds + step * (target - state.lead_seconds)
    return evolve(state, lead_seconds=min(max(0.0, learned), MAX_LEAD))


def _verdict(config: LimiterConfig, outcome: Report) -> Literal["bad", "clean", "empty"]:
    attempts = outcome.attempts
    if attempts == 0:
        return "empty"
    if outcome.throttled + outcome.server_errors > config.bad_fraction * attempts:
        return "bad"
    return "clean"


def _open(state: LimiterState, now: float, cooldown: float) -> LimiterState:
    breaker = Breaker(
        phase="open",
        consecutive_bad=0,
        open_until=max(now + cooldown, state.hold_until),
        cooldown_seconds=cooldown,
    )
    return evolve(state, breaker=breaker, stats=state.stats.add(breaker_opens=1))


def _aimd(state: LimiterState, outcome: Report, now: float) -> LimiterState:
    config = state.config
    if outcome.throttled > 0:
        # A small batch says little: its share is taken over at least _SHARE_SAMPLE responses, so one 429 of
        # two requests is noise, not a ceiling at half the rate.
        share = outcome.throttled / max(_SHARE_SAMPLE, outcome.attempts)
        noise = max(config.noise_fraction, state.noise_share if now < state.noise_until else 0.0)
        if share <= noise:
            # Noise (a few 429s in a batch): the sender waited each Retry-After in process; the tenant's rate
            # did not cause them, so they neither hold the tenant nor lower its rate.
            return state
        hold = now + min(outcome.retry_after or 0.0, config.max_hold_seconds)
        last, streak = state.last_throttle_at, state.streak_started_at
        if streak is None or last is None or now - last > config.throttle_memory_seconds:
            # Isolated: the first 429s in a while. The sender waited its Retry-After in-process; hold only.
            return evolve(
                state, last_throttle_at=now, streak_started_at=now, hold_until=max(state.hold_until, hold)
            )
        state = evolve(state, last_throttle_at=now, hold_until=max(state.hold_until, hold))
        decreased = state.last_decrease_at
        if outcome.granted_at is not None:
            # Persistent: granted after the limiter knew of the streak (and held), and throttled all the same.
            # Batches granted before the last decrease were sized by the old rate: already punished.
            persists = outcome.granted_at >= streak - EPS
            fresh = decreased is None or outcome.granted_at > decreased
        else:
            persists = now - streak >= config.decrease_interval_seconds
            fresh = decreased is None or now - decreased >= config.decrease_interval_seconds
        if not (persists and fresh):
            return state
        previous_share, previous_rate = state.decrease_share, state.rate_before_decrease
        if (
            decreased is not None
            and previous_share is not None
            and previous_rate is not None
            and now - decreased <= config.throttle_memory_seconds
            and share >= _NOISE_KEPT * previous_share
            and share <= _NOISE_MAX
        ):
            # The last decrease did not lower the throttled share: the 429s do not follow the rate (random
            # faults). Take the decrease back and call shares like this one noise for a while.
            return evolve(
                state,
                rate=min(config.rate, max(state.rate, previous_rate)),
                ceiling=None,
                rate_before_decrease=None,
                decrease_share=None,
                noise_share=min(0.99, share * _NOISE_MARGIN),
                noise_until=now + config.noise_memory_seconds,
                last_increase_at=now,
            )
        # A ceiling below the rate: what got through is about rate * (1 - share); settle just under it.
        accepted = state.rate * (1.0 - share)
        rate = max(
            config.floor_rate, min(state.rate * config.settle_fraction, accepted * config.settle_fraction)
        )
        return evolve(
            state,
            rate=rate,
            ceiling=accepted,
            rate_before_decrease=state.rate,
            decrease_share=share,
            last_decrease_at=now,
            last_increase_at=now,
            stats=state.stats.add(decreases=1),
        )
    if outcome.attempts == 0 or state.breaker.phase != "closed":
        return state
    if state.last_throttle_at is not None and now - state.last_throttle_at > config.throttle_memory_seconds:
        state = evolve(state, streak_started_at=None)
    if state.rate >= config.rate:
        return evolve(state, last_increase_at=now)
    credit_from = state.last_increase_at if state.last_increase_at is not None else now
    if state.last_throttle_at is not None:
        credit_from = max(credit_from, state.last_throttle_at + config.increase_after_seconds)
    if now <= credit_from:
        return state
    clean = now - credit_from
    if state.last_throttle_at is not None and now - state.last_throttle_at <= config.cautious_seconds:
        # The service throttled at about this rate moments ago, and batches already booked carry any overshoot
        # for seconds before their 429s come back: probe additively until the 429s are long past.
        grown = state.rate + config.increase_per_second * clean
    elif clean * math.log(config.increase_factor) >= math.log(config.rate / state.rate):
        # In log space: a long clean stretch would overflow factor ** seconds; any that reaches the ceiling will do.
        grown = config.rate
    else:
        grown = state.rate * config.increase_factor**clean + config.increase_per_second * clean
    if state.ceiling is not None and state.last_decrease_at is not None:
        # A real ceiling was found below the rate: climb past its estimate only slowly (a probe), so the
        # rate settles under it instead of sawing around it.
        since = now - state.last_decrease_at
        probe = config.settle_fraction * state.ceiling + config.probe_acceleration * since * since / 2
        grown = min(grown, max(state.rate, probe))
    return evolve(state, rate=min(config.rate, grown), last_increase_at=now)


def report(state: LimiterState, outcome: Report) -> tuple[LimiterState, ReportAck]:
    """Feed back one batch's outcome: its span's end, ``Retry-After`` hold, AIMD, circuit breaker.

    Args:
        state: Current state.
        outcome: Response counts of one batch.

    Returns:
        The new state and an acknowledgement with the rate and breaker phase after the report.
    """
    state, now = advance(state, outcome.now)
    config = state.config
    verdict = _verdict(config, outcome)
    state = evolve(
        state,
        stats=state.stats.add(
            reports=1,
            sent=outcome.sent,
            throttled=outcome.throttled,
            server_errors=outcome.server_errors,
            failed=outcome.failed,
        ),
    )
    end = now if outcome.last_send_at is None else min(now, outcome.last_send_at)
    state = _close_reported(state, outcome, end, now)
    state = _learn_lead(state, outcome)
    state = _aimd(state, outcome, now)
    breaker = state.breaker
    if verdict != "empty":
        if breaker.phase == "closed":
            if verdict == "clean":
                state = evolve(state, breaker=evolve(breaker, consecutive_bad=0))
            elif breaker.consecutive_bad + 1 >= config.breaker_threshold:
                state = _open(state, now, config.cooldown_seconds)
            else:
                state = evolve(state, breaker=evolve(breaker, consecutive_bad=breaker.consecutive_bad + 1))
        elif breaker.phase == "half_open" and outcome.requester in (None, breaker.probe_requester):
            if verdict == "bad":
                cooldown = min(
                    config.max_cooldown_seconds, max(breaker.cooldown_seconds, config.cooldown_seconds) * 2
                )
                state = _open(state, now, cooldown)
            else:
                restart = max(config.floor_rate, min(state.rate, config.restart_fraction * config.rate))
                state = evolve(state, breaker=Breaker(), rate=restart, last_increase_at=now)
        # While open, reports come from batches granted before it opened: they say nothing about recovery.
    breaker = state.breaker
    ack = ReportAck(
        rate=state.rate,
        phase=breaker.phase,
        hold_until=state.hold_until,
        open_until=breaker.open_until,
        verdict=verdict,
    )
    return state, ack
