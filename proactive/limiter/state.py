"""What the limiter entity stores: ``LimiterState.to_json()`` (bookings as compact rows).

A stored state that fails validation (another version, a value out of range) is not migrated: the entity
starts from :func:`initial_state` (see :func:`proactive.limiter.entity.apply`).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeAlias, TypeVar

from pydantic import BaseModel, Field, model_serializer, model_validator

from proactive.limiter.config import MAX_LEAD, LimiterConfig, Rate, Seconds
from proactive.limiter.contract import (
    MAX_EPOCH,
    MAX_RATE,
    MAX_SECONDS,
    MAX_TOTAL,
    Count,
    Moment,
    Number,
    Phase,
    Requester,
    Total,
)
from proactive.models import WireModel

__all__ = [
    "MAX_BOOKED",
    "STATE_VERSION",
    "Booking",
    "Breaker",
    "Lane",
    "LimiterState",
    "Stats",
    "evolve",
    "initial_state",
]


Lane: TypeAlias = Literal["all", "urgent", "normal"]
STATE_VERSION: Final = 3
# Bookings are kept only while they can share a window with a new grant (a few per requester), so this is
# reached only by many concurrent requesters. Past it the two oldest merge: capacity wasted, never exceeded.
MAX_BOOKED: Final = 64
_Model = TypeVar("_Model", bound=BaseModel)


def evolve(model: _Model, **changes: Any) -> _Model:
    """``model`` with ``changes`` (no re-validation: the state machine only writes values it computed)."""
    unknown = changes.keys() - type(model).model_fields.keys()
    if unknown:  # model_copy would store them silently
        raise TypeError(f"{type(model).__name__} has no field(s) {sorted(unknown)}")
    return model.model_copy(update=changes)


class Breaker(WireModel):
    """Circuit breaker of one tenant.

    Attributes:
        phase: ``closed``, ``open`` or ``half_open``.
        consecutive_bad: Bad reports in a row while closed.
        open_until: When an open breaker allows a probe.
        cooldown_seconds: Cool-down used by the latest opening (0 before the first one).
        probe_requester: Who holds the half-open probe.
        probe_deadline: When an unreported probe counts as lost.
    """

    phase: Phase = "closed"
    consecutive_bad: Count = 0
    open_until: Moment = 0.0
    cooldown_seconds: Seconds = 0.0
    probe_requester: Requester | None = None
    probe_deadline: Moment = 0.0


class Stats(WireModel):
    """Running totals for ``get`` and telemetry.

    Attributes:
        grants: Grants with tokens.
        granted: Tokens granted.
        refusals: ``Grant(0)`` answers (breaker open or probe in flight).
        reports: Reports received.
        sent: Responses reported as 2xx.
        throttled: Responses reported as 429.
        server_errors: Responses reported as 5xx or timeouts.
        failed: Other failed responses reported.
        decreases: Multiplicative decreases applied.
        breaker_opens: Times the breaker opened.
    """

    grants: Total = 0
    granted: Total = 0
    refusals: Total = 0
    reports: Total = 0
    sent: Total = 0
    throttled: Total = 0
    server_errors: Total = 0
    failed: Total = 0
    decreases: Total = 0
    breaker_opens: Total = 0

    def add(self, **deltas: int) -> Stats:
        """Totals with ``deltas`` added (saturating)."""
        return evolve(self, **{k: min(MAX_TOTAL, getattr(self, k) + v) for k, v in deltas.items()})


_BOOKING_ROW: Final = (
    "start",
    "send_by",
    "pace",
    "urgent",
    "normal",
    "lane",
    "requester",
    "granted_at",
    "open",
)


class Booking(WireModel):
    """One grant on the time line: ``urgent + normal`` requests, one per slot, paced from ``start``.

    The sender starts request ``i`` no earlier than its slot (``origin + i * pace``, ``origin >= start``)
    and at most ``slackSeconds`` after it, never after ``send_by`` (see :mod:`proactive.delivery.pacing`). So the
    booking's requests lie in ``[start, send_by + slack]``, at least ``pace`` apart. Stored as a compact row
    ``[start, sendBy, pace, urgent, normal, lane, requester, grantedAt, open]`` (up to 64 per tenant).

    Attributes:
        start: The grant's ``notBefore``.
        send_by: Latest slot time: the grant's ``sendBy`` while open; the reported last request once closed.
        pace: Seconds between slots.
        urgent: Tokens granted at urgent priority.
        normal: Tokens granted at normal priority (a merged booking may hold both).
        lane: ``all`` (the whole rate), or ``urgent`` / ``normal`` (its share while both are active).
        requester: Who holds it while open (to match the report); ``None`` once closed or merged.
        granted_at: The grant's ``grantedAt`` while open.
        open: The batch has not been reported yet.
    """

    start: Moment
    send_by: Moment
    pace: Annotated[Number, Field(gt=0.0, le=MAX_SECONDS)]
    urgent: Count = 0
    normal: Count = 0
    lane: Lane = "all"
    requester: Requester | None = None
    granted_at: Annotated[Number, Field(ge=0.0, le=MAX_EPOCH)] | None = None
    open: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, data: Any) -> Any:
        if isinstance(data, list | tuple):
            if len(data) != len(_BOOKING_ROW):
                raise ValueError(f"a booking is a row of {len(_BOOKING_ROW)}: {list(_BOOKING_ROW)}")
            return dict(zip(_BOOKING_ROW, data, strict=True))
        return data

    @model_validator(mode="after")
    def _sane(self) -> Booking:
        if self.start > self.send_by or self.tokens < 1:
            raise ValueError("a booking holds at least one token and starts no later than its sendBy")
        return self

    @model_serializer
    def _to_row(self) -> list[Any]:
        return [getattr(self, name) for name in _BOOKING_ROW]

    @property
    def tokens(self) -> int:
        """All tokens of the booking."""
        return self.urgent + self.normal


class LimiterState(WireModel):
    """Everything one tenant's limiter remembers; stored by the entity as :meth:`to_json`.

    Attributes:
        v: State version; a stored state of another version fails validation (and is reset, see
            :func:`apply`).
        config: Settings.
        rate: Effective rate (AIMD), between ``config.floor_rate`` and ``config.rate``.
        clock: Newest ``now`` seen; operations never run earlier than this.
        bookings: Grants that can still constrain a new one, sorted by start.
        start_lag_seconds: Learned lateness of a batch's first slot, allowed to bookings not yet reported.
        lead_seconds: Learned time from a grant to its batch's first ready request: new grants start no
            earlier than ``now`` plus this.
        hold_until: No ``notBefore`` before this (the latest ``Retry-After``).
        last_throttle_at: When the latest 429 was reported.
        streak_started_at: When the current streak of 429s began (``None`` after a quiet memory span).
        last_decrease_at: When the rate was last decreased.
        last_increase_at: When additive increase last credited time.
        urgent_until: Urgent demand is active until then.
        normal_until: Normal demand is active until then.
        breaker: Circuit breaker.
        stats: Running totals.
        ceiling: Accepted rate estimated at the latest decrease (``None`` before one).
        rate_before_decrease: The rate the latest decrease started from (to restore it if the 429s were noise).
        decrease_share: The throttled share of requests that caused the latest decrease.
        noise_share: A throttled share up to this is noise until ``noise_until``.
        noise_until: See ``noise_share``.
    """

    v: Literal[3] = STATE_VERSION
    config: LimiterConfig = Field(default_factory=LimiterConfig)
    rate: Rate = 50.0
    clock: Annotated[Number, Field(ge=0.0, le=MAX_EPOCH)] = 0.0
    bookings: tuple[Booking, ...] = Field(default=(), max_length=MAX_BOOKED)
    start_lag_seconds: Seconds = 0.02
    lead_seconds: Annotated[Number, Field(ge=0.0, le=MAX_LEAD)] = 0.0
    hold_until: Moment = 0.0
    last_throttle_at: Moment | None = None
    streak_started_at: Moment | None = None
    last_decrease_at: Moment | None = None
    last_increase_at: Moment | None = None
    urgent_until: Moment = 0.0
    normal_until: Moment = 0.0
    breaker: Breaker = Field(default_factory=Breaker)
    stats: Stats = Field(default_factory=Stats)
    ceiling: Annotated[Number, Field(ge=0.0, le=MAX_RATE)] | None = None
    rate_before_decrease: Annotated[Number, Field(ge=0.0, le=MAX_RATE)] | None = None
    decrease_share: Annotated[Number, Field(ge=0.0, le=1.0)] | None = None
    noise_share: Annotated[Number, Field(ge=0.0, le=1.0)] = 0.0
    noise_until: Moment = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> LimiterState:
        if not self.config.floor_rate <= self.rate <= self.config.rate:
            raise ValueError("rate must lie between config.floorRate and config.rate")
        if any(a.start > b.start for a, b in zip(self.bookings, self.bookings[1:], strict=False)):
            raise ValueError("bookings must be sorted by start")
        return self


def initial_state(config: LimiterConfig | None = None) -> LimiterState:
    """A fresh limiter: breaker closed, effective rate at the configured ceiling, nothing booked."""
    chosen = config or LimiterConfig()
    return LimiterState(
        config=chosen,
        rate=chosen.rate,
        start_lag_seconds=chosen.start_lag_seconds,
        lead_seconds=chosen.lead_seconds,
    )
