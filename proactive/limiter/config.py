"""Settings of one tenant's limiter, and the defaults the product's tenants start with."""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from proactive.limiter.contract import MAX_RATE, MAX_SECONDS, Integer, Number
from proactive.models import WireModel

__all__ = [
    "MAX_LEAD",
    "PRODUCT_FIRST_LEAD_SECONDS",
    "PRODUCT_FIRST_START_LAG_SECONDS",
    "LimiterConfig",
    "PositiveSeconds",
    "Rate",
    "Seconds",
    "Share",
    "tenant_defaults",
]


# The first lead and start lag of the product's tenants (tenant_defaults), before reports teach each tenant
# its own: the entity's answer, an orchestrator turn, an activity dispatch and a batch's first storage round
# trips take 0.2-0.5 s on Azure (devhost --latency azure: 0.4-0.7 s on a busy machine): the first lead is the
# slow end with the learning's safety factor (1.25 x 0.5). A grant may start at once and only its sendBy lies
# a lead ahead, so the lead delays no batch of its own; but until the report, the tenant's *other* requesters
# (another broadcast, the welcome and re-drive runs) are placed after that sendBy, so a lead longer than
# needed delays them. Too short, a first batch misses part of its grant and costs a round trip; reports
# correct it either way. The start lag is small (every booking holds it until its report, and it only
# measures lateness after a batch was ready).
PRODUCT_FIRST_LEAD_SECONDS: Final = 0.625
PRODUCT_FIRST_START_LAG_SECONDS: Final = 0.05
# The learned lead never grows past this (tenant_lane starts its activity up to BATCH_START_LEAD, 30 s,
# ahead, so the lead measures dispatch and preparation, never a timer of ours).
MAX_LEAD: Final = 20.0
Seconds = Annotated[Number, Field(ge=0.0, le=MAX_SECONDS)]
PositiveSeconds = Annotated[Number, Field(ge=0.001, le=MAX_SECONDS)]
Rate = Annotated[Number, Field(ge=0.01, le=MAX_RATE)]
Share = Annotated[Number, Field(ge=0.01, le=0.99)]


class LimiterConfig(WireModel):
    """Settings of one tenant's limiter.

    Attributes:
        rate: Configured ceiling in messages per second (Teams: 50 per app per tenant; 30 is a safe floor).
        burst: Most tokens of one grant at the configured rate (scaled with the effective rate); ``None``
            means one window of rate (at least one token).
        min_rate: Floor of the effective rate under AIMD.
        max_booking_seconds: One grant holds at most this many seconds of rate.
        window_seconds: The service's sliding window (Teams: 50 per 1 s).
        margin_seconds: Added to the window when spacing slots (``pace = (W + margin) / L``): the budget for
            a request starting late and for network jitter. Must exceed ``slack_seconds``.
        slack_seconds: A request may start at most this long after its reserved time; the margin keeps
            ``margin - slack`` for jitter on the way to Teams.
        start_lag_seconds: How late a batch may begin after it was allowed and ready, held by every booking
            until its report: the first estimate, then learned from reports (``firstSendAt``).
        lead_seconds: How far after ``acquire`` a grant's slots are planned (its ``sendBy``): the first
            estimate of how long a batch needs from its grant to its first ready request, then learned
            (``firstReadyAt``).
        normal_share: Share of the rate normal requests keep while urgent demand is active.
        priority_window_seconds: How long demand of a priority stays active after its latest ``notBefore``.
        decrease_factor: Unused since feedback settles at ``settle_fraction`` of the accepted rate; kept
            so stored and configured settings that name it stay valid.
        decrease_interval_seconds: Minimum time between two decreases when a report has no ``grantedAt``.
        increase_per_second: Additive increase per clean second.
        increase_after_seconds: Quiet time after the last 429 before the rate climbs.
        increase_factor: Multiplicative increase per clean second (on top of the additive one).
        throttle_memory_seconds: A 429 this long after the previous one starts a new streak (a hold only).
        cautious_seconds: For this long after a 429 the rate climbs only additively (then multiplicatively).
        max_hold_seconds: Cap on how long one ``Retry-After`` may hold the tenant.
        breaker_threshold: Consecutive bad reports that open the breaker.
        bad_fraction: A report is bad when 429s plus 5xx exceed this fraction of its attempts.
        cooldown_seconds: First cool-down of an open breaker.
        max_cooldown_seconds: Cap of the doubling cool-down.
        probe_tokens: Tokens of the half-open probe.
        probe_timeout_seconds: A probe not reported within this is considered lost.
        half_open_poll_seconds: How soon other requesters ask again while a probe is out.
        restart_fraction: Effective rate after a clean probe, as a fraction of ``rate``.
        noise_fraction: A batch whose 429s are at most this share of its requests saw noise, not a ceiling.
        settle_fraction: After a decrease the rate settles at this share of the accepted rate estimated
            from the throttled batch (``rate * (1 - throttled share)``).
        probe_acceleration: Above a learned ceiling the rate may climb only ``a * t**2 / 2`` msg/s, ``t``
            seconds after the decrease (at 0.02, 1.5 msg/s over its estimate after about 12 s).
        noise_memory_seconds: How long a share of 429s found not to follow the rate stays "noise".
    """

    rate: Rate = 50.0
    burst: Annotated[Number, Field(ge=1.0, le=MAX_RATE * 60)] | None = None
    min_rate: Rate = 1.0
    max_booking_seconds: Annotated[Number, Field(ge=0.001, le=3600.0)] = 1.0
    window_seconds: Annotated[Number, Field(ge=0.001, le=3600.0)] = 1.0
    margin_seconds: Annotated[Number, Field(ge=0.0, le=60.0)] = 0.01
    slack_seconds: Annotated[Number, Field(ge=0.0, le=60.0)] = 0.005
    start_lag_seconds: Annotated[Number, Field(ge=0.0, le=3600.0)] = 0.02
    lead_seconds: Annotated[Number, Field(ge=0.0, le=MAX_LEAD)] = 0.0
    normal_share: Share = 0.2
    priority_window_seconds: Seconds = 10.0
    decrease_factor: Share = 0.5
    decrease_interval_seconds: Seconds = 1.0
    increase_per_second: Annotated[Number, Field(ge=0.0, le=MAX_RATE)] = 1.0
    increase_after_seconds: Seconds = 2.0
    increase_factor: Annotated[Number, Field(ge=1.0, le=10.0)] = 1.25
    throttle_memory_seconds: Seconds = 10.0
    cautious_seconds: Seconds = 30.0
    max_hold_seconds: Seconds = 300.0
    breaker_threshold: Annotated[Integer, Field(ge=1, le=1000)] = 3
    bad_fraction: Annotated[Number, Field(ge=0.0, le=0.99)] = 0.5
    cooldown_seconds: PositiveSeconds = 5.0
    max_cooldown_seconds: PositiveSeconds = 300.0
    probe_tokens: Annotated[Integer, Field(ge=1, le=1000)] = 1
    probe_timeout_seconds: PositiveSeconds = 30.0
    half_open_poll_seconds: PositiveSeconds = 1.0
    restart_fraction: Annotated[Number, Field(ge=0.001, le=1.0)] = 0.2
    noise_fraction: Annotated[Number, Field(ge=0.0, le=0.99)] = 0.05
    settle_fraction: Annotated[Number, Field(ge=0.5, le=1.0)] = 0.95
    probe_acceleration: Annotated[Number, Field(ge=0.0, le=MAX_RATE)] = 0.02
    noise_memory_seconds: Seconds = 60.0

    @model_validator(mode="after")
    def _consistent(self) -> LimiterConfig:
        # ``ctx.field`` names the field in the limiter's error decision.
        if self.min_rate > self.rate:
            raise PydanticCustomError("inconsistent", "minRate must not exceed rate", {"field": "minRate"})
        if self.slack_seconds >= self.margin_seconds and not self.slack_seconds == self.margin_seconds == 0:
            raise PydanticCustomError(
                "inconsistent",
                "slackSeconds must be below marginSeconds (or both 0)",
                {"field": "slackSeconds"},
            )
        if self.max_cooldown_seconds < self.cooldown_seconds:
            raise PydanticCustomError(
                "inconsistent",
                "maxCooldownSeconds must be >= cooldownSeconds",
                {"field": "maxCooldownSeconds"},
            )
        return self

    @property
    def burst_tokens(self) -> float:
        """The burst in tokens: ``burst``, or one window of rate and never less than one token."""
        return self.burst if self.burst is not None else max(1.0, self.rate * self.window_seconds)

    @property
    def slice_seconds(self) -> float:
        """``D = burst / rate``: one grant holds at most ``D`` seconds of rate."""
        return self.burst_tokens / self.rate

    @property
    def floor_rate(self) -> float:
        """Lowest effective rate: ``minRate``, raised so one token fits a slice and a window, never above ``rate``."""
        return min(self.rate, max(self.min_rate, 1.0 / self.slice_seconds, 1.0 / self.window_seconds))


def tenant_defaults(rate: float, batch_size: int) -> LimiterConfig:
    """The settings a tenant's limiter starts with: its rate, and grants of up to ``batch_size`` slots.

    A grant is paced, not a burst, so it may span several windows (``batch_size`` 50 at 50 msg/s books
    about 1 s). Longer grants spread the fixed cost of each batch (report, acquire, timer, activity start)
    over more sends; the price is that an urgent request may wait for batches booked before it appeared.
    """
    seconds = max(1.0, batch_size / rate)
    return LimiterConfig(
        rate=rate,
        burst=rate * seconds,
        max_booking_seconds=seconds,
        start_lag_seconds=PRODUCT_FIRST_START_LAG_SECONDS,
        lead_seconds=PRODUCT_FIRST_LEAD_SECONDS,
    )
