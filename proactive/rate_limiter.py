"""Per-tenant send limiter: a pure state machine behind the ``tenant_limiter@{tenantId}`` entity.

Every operation is ``(state, operation, input) -> (state, decision)``; no I/O, no clock, nothing from
``azure``. :func:`apply` is the entity's body and never raises (Durable would turn an exception into an
opaque error result): bad input answers ``{"error": {"code", "message", "details"}}`` naming the field and
leaves the state as it was; a stored state that fails validation is logged and replaced by the initial
state (a limiter that refused every operation would stop its tenant for good; a fresh one at worst
overbooks one window, which Teams answers with 429s the feedback handles). Every type here is a
:class:`~proactive.models.WireModel` shared by the orchestration and the entity, camelCase on the wire.

Flow
    ``acquire {now, want, priority, requester}`` -> ``{"grant": Grant}``: up to ``want`` tokens as *slots*
    ``paceSeconds`` apart from ``notBefore``, the last no later than ``sendBy``. ``report {now, sent,
    throttled, serverErrors, failed, retryAfter, requester, grantedAt, firstSendAt, lastSendAt,
    firstReadyAt}`` -> ``{"report": ReportAck}``. ``configure {now?, <config fields>}`` -> ``{"config"}``;
    ``get`` -> ``{"snapshot"}`` (read-only). Times are epoch seconds (inputs also take ISO 8601); the
    entity's clock never moves back, so no grant is earlier than its caller's ``now``.

Invariant: at most ``L = floor(rate * W)`` request starts in any window ``W`` (``windowSeconds``)
    Slots are ``pace = (W + marginSeconds) / L`` apart and the sender (:mod:`proactive.pacing`) starts each
    request at most ``slackSeconds`` (< margin) after its slot, so any window holds at most ``L``. Grants
    are chained like a virtual clock (GCRA): a grant starts one pace after the previous booking's
    ``sendBy``, so consecutive batches tile the time line. While a batch is out its booking runs to
    ``sendBy = start + (n - 1) * pace + startLag``; its report (or its requester's next ``acquire``) closes
    it at its last request. Bookings already made keep their place when the rate changes.

Priority
    While urgent and normal demand are both active each has its own lane (normal keeps ``normalShare`` of
    ``L``); otherwise the active one takes the whole rate (lane ``all``). Urgent never waits behind normal
    bookings made after it; normal is never starved.

Feedback (``report``)
    429s that are at most ``noiseFraction`` of a batch are noise and change nothing. Otherwise
    ``Retry-After`` holds the tenant; the first 429s of a streak are only a hold, persistent ones settle
    the rate at ``settleFraction`` of what got through, a decrease that did not lower the throttled share
    is taken back, and the rate climbs again after ``increaseAfterSeconds``, above a found ceiling only as
    a slow probe. The circuit breaker opens after ``breakerThreshold`` bad reports, probes with one token
    after a doubling cool-down, and restarts at ``restartFraction`` of the ceiling.

The one surprising rule: a report naming its grant may close a booking *before* its start (a batch
started ahead of ``notBefore`` that found nothing to send gives its slots back).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeAlias, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    computed_field,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from proactive.models import WireModel

__all__ = [
    "Acquire",
    "AcquireDecision",
    "Booking",
    "Breaker",
    "Grant",
    "LimiterConfig",
    "LimiterError",
    "LimiterInputError",
    "LimiterState",
    "Priority",
    "Report",
    "ReportAck",
    "Stats",
    "acquire",
    "apply",
    "configure",
    "initial_state",
    "parse_time",
    "report",
    "snapshot",
    "tenant_defaults",
]

_log = logging.getLogger(__name__)

Priority: TypeAlias = Literal["urgent", "normal"]
Phase: TypeAlias = Literal["closed", "open", "half_open"]
GrantReason: TypeAlias = Literal["granted", "probe", "breaker_open", "probe_in_flight"]
Lane: TypeAlias = Literal["all", "urgent", "normal"]
Verdict: TypeAlias = Literal["bad", "clean", "empty"]
JsonObject: TypeAlias = dict[str, Any]

STATE_VERSION: Final = 3
# Comparisons on epoch floats (~1.7e9, one ulp is ~2.4e-7 s) need a tolerance well above an ulp and well below
# one token's interval at the highest allowed rate (1 / 10,000 s).
_EPS: Final = 1e-6
_MAX_EPOCH: Final = 1e11  # year 5138: rejects milliseconds passed as seconds and keeps float precision sane
_FAR: Final = _MAX_EPOCH * 2  # holds and deadlines may lie past _MAX_EPOCH by a cool-down
_MAX_RATE: Final = 10_000.0
_MAX_SECONDS: Final = 86_400.0
_MAX_COUNT: Final = 10**9
_MAX_TOTAL: Final = 2**62  # running totals saturate here, so years of traffic never overflow JSON's range
# Bookings are kept only while they can share a window with a new grant (a few per requester), so this is
# reached only by many concurrent requesters. Past it the two oldest merge: capacity wasted, never exceeded.
_MAX_BOOKED: Final = 64
# How the learned start lag follows reports: twice the lag seen, halving with each report.
_LAG_SAFETY: Final = 2.0
_LAG_DECAY: Final = 0.5
# Paces between the last slot of ``all`` and the first of a lane (or back): a window can then hold one
# partial slot of each of three streams, and the gap pays for them.
_LANE_CHANGE_PACES: Final = 3.0
_MAX_REQUESTER: Final = 512
# A decrease whose next throttled batch still shows this share of its 429s did not help: the 429s are noise,
# and shares up to the seen one times the margin are noise for ``noiseMemorySeconds``.
_NOISE_KEPT: Final = 0.7
_NOISE_MARGIN: Final = 1.5
# A throttled share above this is never taken for noise (random faults that frequent would be an outage).
_NOISE_MAX: Final = 0.3
# A batch's throttled share is taken over at least this many responses: one 429 of two is not half the rate.
_SHARE_SAMPLE: Final = 20
# The first lead and start lag of the product's tenants (tenant_defaults), before reports teach each tenant
# its own: the entity's answer, an orchestrator turn, an activity dispatch and a batch's first storage round
# trips take 0.2-0.5 s on Azure (devhost --latency azure: about 0.4 s). The lead is generous on purpose (a
# first batch that misses its grant costs a whole round trip, a lead too long costs it once); the start
# lag is not (every booking holds it until its report, and with the lead batches are ready in time).
PRODUCT_FIRST_LEAD_SECONDS: Final = 0.5
PRODUCT_FIRST_START_LAG_SECONDS: Final = 0.05
# The learned lead never grows past this (tenant_lane starts its activity up to BATCH_START_LEAD, 30 s,
# ahead, so the lead measures dispatch and preparation, never a timer of ours).
_MAX_LEAD: Final = 20.0
# How the learned lead follows each report's ready latency: 1.25 x the latency seen, up halfway at once,
# down a fifth of the way per report (one slow dispatch raises it for a while instead of doubling it).
_LEAD_SAFETY: Final = 1.25
_LEAD_UP: Final = 0.5
_LEAD_DOWN: Final = 0.2


class LimiterInputError(ValueError):
    """Malformed operation input; :func:`apply` turns it into an error decision.

    Attributes:
        code: Machine-readable reason (``invalid_input``, ``unknown_field``, ``unknown_operation``, ...).
        details: Field-level details for the error decision (``where``, ``field`` or ``fields``).
    """

    def __init__(self, code: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def to_json(self) -> JsonObject:
        """The error decision: ``{"error": {"code", "message", "details"}}``."""
        error = LimiterError(code=self.code, message=self.message, details=self.details)
        return {"error": error.model_dump(mode="json")}


# ----------------------------------------------------------------------------------------------------
# Field types: JSON numbers only (no strings, no booleans, nothing infinite), times as epoch seconds
# ----------------------------------------------------------------------------------------------------


def _number(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _integer(value: object) -> object:
    # JSON writers in other languages may send 20.0 for 20.
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


def _epoch_seconds(value: object) -> float:
    seconds: float
    if isinstance(value, datetime):
        seconds = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError("must be epoch seconds or an ISO 8601 time") from None
        seconds = (parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)).timestamp()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValueError("must be epoch seconds or an ISO 8601 time")
    if not (math.isfinite(seconds) and 0.0 <= seconds <= _MAX_EPOCH):
        raise ValueError("is out of range (epoch seconds between 1970 and year 5138)")
    return seconds


Number = Annotated[float, BeforeValidator(_number)]
Integer = Annotated[int, BeforeValidator(_integer)]
# An input time: epoch seconds, ISO 8601 text (no offset means UTC) or a datetime, stored as epoch seconds.
Epoch = Annotated[float, BeforeValidator(_epoch_seconds)]
Moment = Annotated[float, BeforeValidator(_number), Field(ge=0.0, le=_FAR)]
Count = Annotated[int, BeforeValidator(_integer), Field(ge=0, le=_MAX_COUNT)]
Total = Annotated[int, BeforeValidator(_integer), Field(ge=0, le=_MAX_TOTAL)]
Requester = Annotated[str, Field(max_length=_MAX_REQUESTER)]

_Model = TypeVar("_Model", bound=BaseModel)


def _evolve(model: _Model, **changes: Any) -> _Model:
    """``model`` with ``changes`` (no re-validation: the state machine only writes values it computed)."""
    unknown = changes.keys() - type(model).model_fields.keys()
    if unknown:  # model_copy would store them silently
        raise TypeError(f"{type(model).__name__} has no field(s) {sorted(unknown)}")
    return model.model_copy(update=changes)


def parse_time(value: object, name: str = "now") -> float:
    """Parse a time given as epoch seconds (int/float), an ISO 8601 string or a ``datetime``.

    Args:
        value: Epoch seconds, an ISO 8601 string (naive means UTC) or a ``datetime``.
        name: Field name used in the error.

    Returns:
        Epoch seconds as a float.

    Raises:
        LimiterInputError: The value is not a finite time between 1970 and year 5138.
    """
    try:
        return _epoch_seconds(value)
    except ValueError as exc:
        raise LimiterInputError("invalid_input", f"{name} {exc}", {"field": name}) from None


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


# ----------------------------------------------------------------------------------------------------
# Contract: what the orchestration sends and receives
# ----------------------------------------------------------------------------------------------------


class Acquire(WireModel):
    """Input of ``acquire``.

    Attributes:
        now: Caller's time (epoch seconds).
        want: Tokens wanted (>= 1); the grant may be smaller.
        priority: ``urgent`` or ``normal``.
        requester: Who asks (the orchestration instance id); identifies the half-open probe holder.
    """

    now: Epoch
    want: Annotated[Count, Field(ge=1)]
    priority: Priority = "normal"
    requester: Requester = ""


class Report(WireModel):
    """Input of ``report``: the outcome of one sent batch, counted in responses (attempts), not recipients.

    Attributes:
        now: Caller's time.
        sent: 2xx responses.
        throttled: 429 responses.
        server_errors: 5xx responses, timeouts and connection failures.
        failed: Other failures (400/403/404/413...), neutral for the tenant's health.
        retry_after: Largest ``Retry-After`` seen, in seconds.
        requester: Who reports; decides a half-open probe when it is the probe holder.
        granted_at: ``grantedAt`` of the grant the batch used, so one overload is punished once.
        first_send_at: When the batch's first request started (teaches the start lag).
        last_send_at: When the batch's last request started; the booking ends there (``now`` when not given).
        first_ready_at: When the batch's first request was ready to start (teaches the lead).
    """

    now: Epoch
    sent: Count = 0
    throttled: Count = 0
    server_errors: Count = 0
    failed: Count = 0
    retry_after: Annotated[Number, Field(ge=0.0, le=_MAX_SECONDS)] | None = None
    requester: Requester | None = None
    granted_at: Epoch | None = None
    first_send_at: Epoch | None = None
    last_send_at: Epoch | None = None
    first_ready_at: Epoch | None = None

    @property
    def attempts(self) -> int:
        """All responses the batch saw."""
        return self.sent + self.throttled + self.server_errors + self.failed


class Grant(WireModel):
    """Decision of ``acquire``: from ``not_before``, send up to ``tokens`` requests, one per slot.

    Slot ``i`` is at ``origin + i * pace_seconds`` with ``origin = max(not_before, first request)``; a request
    starts within ``slack_seconds`` after its slot and no slot lies after ``send_by`` (:mod:`proactive.pacing`).
    The wire form adds ``notBeforeIso`` and ``sendByIso`` (read back, they are ignored: they are derived).

    Attributes:
        tokens: Requests the caller may start; 0 only while the breaker is open or a probe is out.
        not_before: Earliest send time (epoch seconds), never before the caller's ``now``.
        granted_at: Entity time of the grant; echo it in the batch's report.
        reason: ``granted``, ``probe``, ``breaker_open`` or ``probe_in_flight``.
        rate: Effective rate when granted, for telemetry.
        pace_seconds: Seconds between slots.
        send_by: The latest slot time.
        slack_seconds: How late after its slot a request may still start.
    """

    tokens: Count
    not_before: Epoch
    granted_at: Epoch
    reason: GrantReason
    rate: Annotated[Number, Field(ge=0.0, le=_MAX_RATE)]
    pace_seconds: Annotated[Number, Field(ge=0.0, le=_MAX_SECONDS)]
    send_by: Epoch
    slack_seconds: Annotated[Number, Field(ge=0.0, le=_MAX_SECONDS)]

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if k not in ("notBeforeIso", "sendByIso")}
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def not_before_iso(self) -> str:
        """``not_before`` as ISO 8601 text (``Z``)."""
        return _iso(self.not_before)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def send_by_iso(self) -> str:
        """``send_by`` as ISO 8601 text (``Z``)."""
        return _iso(self.send_by)

    def not_before_datetime(self) -> datetime:
        """``not_before`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.not_before, tz=UTC)

    def send_by_datetime(self) -> datetime:
        """``send_by`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.send_by, tz=UTC)


class ReportAck(WireModel):
    """Decision of ``report``: what the tenant looks like after it.

    Attributes:
        rate: Effective rate.
        phase: Breaker phase.
        hold_until: Floor of every ``notBefore``.
        open_until: When an open breaker allows a probe.
        verdict: How the report was read: ``bad``, ``clean`` or ``empty``.
    """

    rate: float
    phase: Phase
    hold_until: float
    open_until: float
    verdict: Verdict


class LimiterError(WireModel):
    """An error decision's body: the limiter refused the operation and kept its state.

    Attributes:
        code: ``invalid_input``, ``unknown_field``, ``unknown_operation`` or ``internal_error``.
        message: What was wrong, naming the field.
        details: ``where`` (the operation), ``field`` or ``fields``, ``operations``.
    """

    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class AcquireDecision(WireModel):
    """What the entity answers ``acquire``: ``{"grant": ...}``, or ``{"error": ...}`` for a refused input."""

    grant: Grant | None = None
    error: LimiterError | None = None


# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------

_Seconds = Annotated[Number, Field(ge=0.0, le=_MAX_SECONDS)]
_Positive = Annotated[Number, Field(ge=0.001, le=_MAX_SECONDS)]
_Rate = Annotated[Number, Field(ge=0.01, le=_MAX_RATE)]
_Share = Annotated[Number, Field(ge=0.01, le=0.99)]


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
        start_lag_seconds: How late a batch may begin after ``notBefore``, held by every booking until its
            report: the first estimate, then learned from reports (``firstSendAt``).
        lead_seconds: How far after ``acquire`` a grant starts at the earliest: the first estimate of how long
            a batch needs from its grant to its first ready request, then learned (``firstReadyAt``).
        normal_share: Share of the rate normal requests keep while urgent demand is active.
        priority_window_seconds: How long demand of a priority stays active after its latest ``notBefore``.
        decrease_factor: Multiplicative decrease on 429 (kept for configurations that set it).
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

    rate: _Rate = 50.0
    burst: Annotated[Number, Field(ge=1.0, le=_MAX_RATE * 60)] | None = None
    min_rate: _Rate = 1.0
    max_booking_seconds: Annotated[Number, Field(ge=0.001, le=3600.0)] = 1.0
    window_seconds: Annotated[Number, Field(ge=0.001, le=3600.0)] = 1.0
    margin_seconds: Annotated[Number, Field(ge=0.0, le=60.0)] = 0.01
    slack_seconds: Annotated[Number, Field(ge=0.0, le=60.0)] = 0.005
    start_lag_seconds: Annotated[Number, Field(ge=0.0, le=3600.0)] = 0.02
    lead_seconds: Annotated[Number, Field(ge=0.0, le=_MAX_LEAD)] = 0.0
    normal_share: _Share = 0.2
    priority_window_seconds: _Seconds = 10.0
    decrease_factor: _Share = 0.5
    decrease_interval_seconds: _Seconds = 1.0
    increase_per_second: Annotated[Number, Field(ge=0.0, le=_MAX_RATE)] = 1.0
    increase_after_seconds: _Seconds = 2.0
    increase_factor: Annotated[Number, Field(ge=1.0, le=10.0)] = 1.25
    throttle_memory_seconds: _Seconds = 10.0
    cautious_seconds: _Seconds = 30.0
    max_hold_seconds: _Seconds = 300.0
    breaker_threshold: Annotated[Integer, Field(ge=1, le=1000)] = 3
    bad_fraction: Annotated[Number, Field(ge=0.0, le=0.99)] = 0.5
    cooldown_seconds: _Positive = 5.0
    max_cooldown_seconds: _Positive = 300.0
    probe_tokens: Annotated[Integer, Field(ge=1, le=1000)] = 1
    probe_timeout_seconds: _Positive = 30.0
    half_open_poll_seconds: _Positive = 1.0
    restart_fraction: Annotated[Number, Field(ge=0.001, le=1.0)] = 0.2
    noise_fraction: Annotated[Number, Field(ge=0.0, le=0.99)] = 0.05
    settle_fraction: Annotated[Number, Field(ge=0.5, le=1.0)] = 0.95
    probe_acceleration: Annotated[Number, Field(ge=0.0, le=_MAX_RATE)] = 0.02
    noise_memory_seconds: _Seconds = 60.0

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


# ----------------------------------------------------------------------------------------------------
# State: what the entity stores (``LimiterState.to_json()``)
# ----------------------------------------------------------------------------------------------------


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
    cooldown_seconds: _Seconds = 0.0
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
        return _evolve(self, **{k: min(_MAX_TOTAL, getattr(self, k) + v) for k, v in deltas.items()})


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
    and at most ``slackSeconds`` after it, never after ``send_by`` (see :mod:`proactive.pacing`). So the
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
    pace: Annotated[Number, Field(gt=0.0, le=_MAX_SECONDS)]
    urgent: Count = 0
    normal: Count = 0
    lane: Lane = "all"
    requester: Requester | None = None
    granted_at: Annotated[Number, Field(ge=0.0, le=_MAX_EPOCH)] | None = None
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
    rate: _Rate = 50.0
    clock: Annotated[Number, Field(ge=0.0, le=_MAX_EPOCH)] = 0.0
    bookings: tuple[Booking, ...] = Field(default=(), max_length=_MAX_BOOKED)
    start_lag_seconds: _Seconds = 0.02
    lead_seconds: Annotated[Number, Field(ge=0.0, le=_MAX_LEAD)] = 0.0
    hold_until: Moment = 0.0
    last_throttle_at: Moment | None = None
    streak_started_at: Moment | None = None
    last_decrease_at: Moment | None = None
    last_increase_at: Moment | None = None
    urgent_until: Moment = 0.0
    normal_until: Moment = 0.0
    breaker: Breaker = Field(default_factory=Breaker)
    stats: Stats = Field(default_factory=Stats)
    ceiling: Annotated[Number, Field(ge=0.0, le=_MAX_RATE)] | None = None
    rate_before_decrease: Annotated[Number, Field(ge=0.0, le=_MAX_RATE)] | None = None
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


# ----------------------------------------------------------------------------------------------------
# Paced bookings
# ----------------------------------------------------------------------------------------------------


def _capacity(config: LimiterConfig, rate: float) -> tuple[int, float]:
    """Tokens per window at ``rate`` and the window they apply to (longer than ``W`` only below 1/W)."""
    limit = max(1, math.floor(rate * config.window_seconds + 1e-9))
    return limit, max(config.window_seconds, limit / rate)


def _lane_for(state: LimiterState, priority: Priority, now: float) -> Lane:
    """``all`` unless the other priority's demand is active too: then the priority's own lane."""
    other_active = state.normal_until > now if priority == "urgent" else state.urgent_until > now
    if not other_active or _capacity(state.config, state.rate)[0] < 2:
        return "all"
    return priority


def _lane_pace(state: LimiterState, lane: Lane) -> tuple[int, float]:
    """Tokens per window of ``lane`` and the pace of its slots: ``(window + margin) / tokens``."""
    config = state.config
    limit, seconds = _capacity(config, state.rate)
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
    then hold one partial slot of each of three streams, and the gap pays for them (module docstring).
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
    while len(ordered) > _MAX_BOOKED:
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


def _close(booking: Booking, end: float) -> Booking:
    return _evolve(
        booking,
        send_by=max(booking.start, min(booking.send_by, end)),
        requester=None,
        granted_at=None,
        open=False,
    )


def _close_reported(state: LimiterState, outcome: Report, end: float, now: float) -> LimiterState:
    """Close the open booking a report belongs to at its last request, and learn how late it started."""
    if outcome.requester is None and outcome.granted_at is None:
        return state  # nothing tells which batch this was: it keeps its sendBy until it leaves the log
    for index, booking in enumerate(state.bookings):
        # A booking named by its grant may be closed before its start: a batch started ahead of its
        # notBefore that sent nothing gives its slots back (closed at its start, it holds none).
        early = booking.start > now + _EPS
        if not booking.open or (early and (outcome.granted_at is None or outcome.last_send_at is not None)):
            continue
        if outcome.requester is not None and booking.requester != outcome.requester:
            continue
        if outcome.granted_at is not None and abs((booking.granted_at or 0.0) - outcome.granted_at) > _EPS:
            continue
        bookings = (*state.bookings[:index], _close(booking, end), *state.bookings[index + 1 :])
        state = _evolve(state, bookings=bookings)
        if outcome.first_send_at is not None:
            lag = max(0.0, outcome.first_send_at - booking.start)
            learned = max(_LAG_SAFETY * lag, _LAG_DECAY * state.start_lag_seconds)
            state = _evolve(state, start_lag_seconds=min(learned, _MAX_SECONDS))
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
    return _evolve(state, lead_seconds=min(max(0.0, learned), _MAX_LEAD))


def _close_started(state: LimiterState, requester: str, now: float) -> LimiterState:
    """An orchestration asks again only once its previous batch is over: its started bookings ended by now."""
    if not any(b.open and b.requester == requester and b.start <= now + _EPS for b in state.bookings):
        return state
    bookings = tuple(
        _close(b, now) if b.open and b.requester == requester and b.start <= now + _EPS else b
        for b in state.bookings
    )
    return _evolve(state, bookings=bookings)


# ----------------------------------------------------------------------------------------------------
# Operations
# ----------------------------------------------------------------------------------------------------


def _reach(config: LimiterConfig, rate: float) -> float:
    return _capacity(config, rate)[1] + config.margin_seconds


def _advance(state: LimiterState, now: float) -> tuple[LimiterState, float]:
    moment = max(now, state.clock)
    # Prune with the longest window any rate in force could use (the configured floor gives the longest).
    reach = max(_reach(state.config, state.rate), _reach(state.config, state.config.floor_rate))
    return _evolve(state, clock=moment, bookings=_prune(state.bookings, moment, reach)), moment


def _mark_demand(state: LimiterState, priority: Priority, until: float) -> LimiterState:
    if priority == "urgent":
        return _evolve(state, urgent_until=max(state.urgent_until, until))
    return _evolve(state, normal_until=max(state.normal_until, until))


def _refuse(
    state: LimiterState, request: Acquire, now: float, not_before: float, reason: GrantReason
) -> tuple[LimiterState, Grant]:
    state = _mark_demand(state, request.priority, not_before + state.config.priority_window_seconds)
    state = _evolve(state, stats=state.stats.add(refusals=1))
    at = max(not_before, now)
    pace = _lane_pace(state, "all")[1]
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
    limit, pace = _lane_pace(state, lane)
    caps = [
        most,
        max(1, math.floor(limit * config.max_booking_seconds / config.window_seconds + 1e-9)),
        math.floor(rate * config.slice_seconds + 1e-9),
        max(1, math.floor(rate * config.max_booking_seconds + 1e-9)),
    ]
    tokens = max(1, min(caps))
    # A grant starts ``lead`` ahead: by then its batch is ready (see ``LimiterConfig.lead_seconds``).
    start = _earliest_start(state.bookings, lane, pace, max(now + state.lead_seconds, state.hold_until))
    send_by = start + (tokens - 1) * pace + state.start_lag_seconds
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
    state = _evolve(
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
    breaker = _evolve(
        state.breaker,
        phase="half_open",
        probe_requester=request.requester,
        probe_deadline=grant.not_before + state.config.probe_timeout_seconds,
    )
    return _evolve(state, breaker=breaker), grant


def acquire(state: LimiterState, request: Acquire) -> tuple[LimiterState, Grant]:
    """Grant up to ``request.want`` tokens and the time to send them.

    Args:
        state: Current state.
        request: Who wants how many, when, at which priority.

    Returns:
        The new state and the grant. ``tokens > 0`` unless the breaker is open or a half-open probe is out, in
        which case ``tokens == 0`` and ``not_before`` says when to ask again.
    """
    state, now = _advance(state, request.now)
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
    return _evolve(state, breaker=breaker, stats=state.stats.add(breaker_opens=1))


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
            return _evolve(
                state, last_throttle_at=now, streak_started_at=now, hold_until=max(state.hold_until, hold)
            )
        state = _evolve(state, last_throttle_at=now, hold_until=max(state.hold_until, hold))
        decreased = state.last_decrease_at
        if outcome.granted_at is not None:
            # Persistent: granted after the limiter knew of the streak (and held), and throttled all the same.
            # Batches granted before the last decrease were sized by the old rate: already punished.
            persists = outcome.granted_at >= streak - _EPS
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
            return _evolve(
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
        return _evolve(
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
        state = _evolve(state, streak_started_at=None)
    if state.rate >= config.rate:
        return _evolve(state, last_increase_at=now)
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
    return _evolve(state, rate=min(config.rate, grown), last_increase_at=now)


def report(state: LimiterState, outcome: Report) -> tuple[LimiterState, ReportAck]:
    """Feed back one batch's outcome: its span's end, ``Retry-After`` hold, AIMD, circuit breaker.

    Args:
        state: Current state.
        outcome: Response counts of one batch.

    Returns:
        The new state and an acknowledgement with the rate and breaker phase after the report.
    """
    state, now = _advance(state, outcome.now)
    config = state.config
    verdict = _verdict(config, outcome)
    state = _evolve(
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
                state = _evolve(state, breaker=_evolve(breaker, consecutive_bad=0))
            elif breaker.consecutive_bad + 1 >= config.breaker_threshold:
                state = _open(state, now, config.cooldown_seconds)
            else:
                state = _evolve(state, breaker=_evolve(breaker, consecutive_bad=breaker.consecutive_bad + 1))
        elif breaker.phase == "half_open" and outcome.requester in (None, breaker.probe_requester):
            if verdict == "bad":
                cooldown = min(
                    config.max_cooldown_seconds, max(breaker.cooldown_seconds, config.cooldown_seconds) * 2
                )
                state = _open(state, now, cooldown)
            else:
                restart = max(config.floor_rate, min(state.rate, config.restart_fraction * config.rate))
                state = _evolve(state, breaker=Breaker(), rate=restart, last_increase_at=now)
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


def configure(state: LimiterState, config: LimiterConfig, now: float | None = None) -> LimiterState:
    """Replace the settings; the effective rate follows a ceiling change.

    A limiter running at its ceiling moves to the new ceiling; one held down by AIMD keeps its rate, clamped
    into the new ``[floor_rate, rate]``. Bookings already made stand.

    Args:
        state: Current state.
        config: New settings.
        now: Optional time, to advance the entity clock.

    Returns:
        The new state.
    """
    if now is not None:
        state, _ = _advance(state, now)
    at_ceiling = state.rate >= state.config.rate
    rate = config.rate if at_ceiling else state.rate
    rate = min(config.rate, max(config.floor_rate, rate))
    breaker = state.breaker
    if breaker.cooldown_seconds > config.max_cooldown_seconds:
        breaker = _evolve(breaker, cooldown_seconds=config.max_cooldown_seconds)
    return _evolve(state, config=config, rate=rate, breaker=breaker)


def snapshot(state: LimiterState) -> JsonObject:
    """A read-only view for ``get``: phase, rates, holds, bookings, demand and totals."""
    config = state.config
    clock = state.clock
    return {
        "phase": state.breaker.phase,
        "rate": state.rate,
        "configuredRate": config.rate,
        "burst": config.burst_tokens,
        "effectiveBurst": state.rate * config.slice_seconds,
        "clock": clock,
        "holdUntil": state.hold_until,
        "openUntil": state.breaker.open_until,
        "window": state.config.window_seconds,
        "windowTokens": _capacity(config, state.rate)[0],
        "bookings": len(state.bookings),
        "bookedUntil": max((b.send_by for b in state.bookings), default=None),
        "openBookings": sum(1 for b in state.bookings if b.open),
        "startLagSeconds": state.start_lag_seconds,
        "paceSeconds": _lane_pace(state, "all")[1],
        "urgentActive": state.urgent_until > clock,
        "normalActive": state.normal_until > clock,
        "consecutiveBad": state.breaker.consecutive_bad,
        "probeRequester": state.breaker.probe_requester,
        "stats": state.stats.to_json(),
        "config": config.to_json(),
    }


# ----------------------------------------------------------------------------------------------------
# Entity entry point
# ----------------------------------------------------------------------------------------------------

OPERATIONS: Final = ("acquire", "report", "configure", "get")


def _field_name(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _input_error(exc: ValidationError, where: str) -> LimiterInputError:
    """The first problem of ``exc`` as an error naming its field (unknown fields are listed together)."""
    problems = exc.errors()
    unknown = [_field_name(p["loc"]) for p in problems if p["type"] == "extra_forbidden"]
    if unknown:
        return LimiterInputError(
            "unknown_field",
            f"{where} has unknown field(s): {', '.join(unknown)}",
            {"where": where, "fields": unknown},
        )
    first = problems[0]
    field = _field_name(first["loc"]) or str(first.get("ctx", {}).get("field", ""))
    message = str(first["msg"]).removeprefix("Value error, ")
    if not field:
        return LimiterInputError("invalid_input", f"{where}: {message}", {"where": where})
    return LimiterInputError("invalid_input", f"{where}.{field}: {message}", {"where": where, "field": field})


def _by_name(model: type[BaseModel], data: object, where: str) -> dict[str, Any]:
    """``data``'s keys as ``model``'s field names (camelCase or snake_case given; each field at most once)."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise LimiterInputError("invalid_input", f"{where} must be a JSON object", {"where": where})
    names = {key: name for name, info in model.model_fields.items() for key in (name, info.alias or name)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = names.get(key) if isinstance(key, str) else None
        if name is None:
            values[str(key)] = value  # left for the model to refuse as unknown
        elif name in values:
            raise LimiterInputError(
                "invalid_input", f"{where} repeats field {key!r}", {"where": where, "field": key}
            )
        else:
            values[name] = value
    return values


def _parse(model: type[_Model], data: object, where: str) -> _Model:
    try:
        return model.model_validate(_by_name(model, data, where))
    except ValidationError as exc:
        raise _input_error(exc, where) from None


def _load(stored: object, defaults: LimiterConfig | None) -> LimiterState:
    """The stored state, or a fresh one for a new entity or for a stored state that fails validation."""
    if stored is None:
        return initial_state(defaults)
    try:
        return LimiterState.from_json(stored)
    except ValidationError as exc:
        first = exc.errors()[0]
        _log.warning(
            "tenant limiter: stored state unusable (%s at %s); starting from the initial state",
            first["msg"],
            _field_name(first["loc"]) or "the top level",
        )
        return initial_state(defaults)


def _configure(current: LimiterState, operation_input: object) -> tuple[LimiterState, JsonObject]:
    changes = _by_name(LimiterConfig, operation_input, "configure")
    moment = changes.pop("now", None)
    now = None if moment is None else parse_time(moment, "configure.now")
    new_config = _parse(LimiterConfig, {**current.config.model_dump(), **changes}, "configure")
    return configure(current, new_config, now), {"config": new_config.to_json()}


def _dispatch(
    current: LimiterState, operation: str, operation_input: object
) -> tuple[LimiterState, JsonObject]:
    if operation == "acquire":
        new_state, grant = acquire(current, _parse(Acquire, operation_input, "acquire"))
        return new_state, {"grant": grant.to_json()}
    if operation == "report":
        new_state, ack = report(current, _parse(Report, operation_input, "report"))
        return new_state, {"report": ack.to_json()}
    if operation == "configure":
        return _configure(current, operation_input)
    if operation == "get":
        unknown = sorted(map(str, operation_input)) if isinstance(operation_input, Mapping) else []
        if unknown:
            raise LimiterInputError(
                "unknown_field",
                f"get has unknown field(s): {', '.join(unknown)}",
                {"where": "get", "fields": unknown},
            )
        return current, {"snapshot": snapshot(current)}
    raise LimiterInputError(
        "unknown_operation",
        f"unknown operation {str(operation)[:64]!r}",
        {"operations": list(OPERATIONS)},
    )


def apply(
    state: object,
    operation: object,
    operation_input: object = None,
    *,
    defaults: LimiterConfig | None = None,
) -> tuple[Any, JsonObject]:
    """Run one entity operation; never raises.

    Args:
        state: The stored state (``LimiterState.to_json()`` output, the same as a JSON string, or ``None``
            for a new entity). One that fails validation is logged and replaced by the initial state.
        operation: ``acquire``, ``report``, ``configure`` or ``get``.
        operation_input: The operation's JSON input (camelCase keys; snake_case accepted).
        defaults: Settings for a new entity (e.g. the tenant's rate from ``Settings.send_rate_for``).

    Returns:
        ``(new_state_json, decision_json)``. On any error the state is returned exactly as given and the
        decision is ``{"error": {"code", "message", "details"}}``.
    """
    try:
        current = _load(state, defaults)
        if not isinstance(operation, str):
            raise LimiterInputError(
                "unknown_operation", "operation must be a string", {"operations": list(OPERATIONS)}
            )
        new_state, decision = _dispatch(current, operation, operation_input)
        if operation == "get":
            return state, decision  # read-only: not even a new entity's defaults get stored
        return new_state.to_json(), decision
    except LimiterInputError as exc:
        return state, exc.to_json()
    except Exception as exc:  # last line of defence: entity code must never raise (STYLE.md rule 3)
        error = LimiterInputError(
            "internal_error", f"{type(exc).__name__} while running {str(operation)[:64]!r}"
        )
        return state, error.to_json()
