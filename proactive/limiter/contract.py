"""What the orchestration and the limiter entity exchange: operation inputs, decisions and their field types.

Wire names are camelCase (snake_case accepted on input); times are epoch seconds (inputs also take ISO 8601
text or a datetime; no offset means UTC). Numbers are JSON numbers: no strings, no booleans, nothing
infinite.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeAlias

from pydantic import BeforeValidator, Field, computed_field, model_validator

from proactive.models import WireModel

__all__ = [
    "FAR",
    "MAX_COUNT",
    "MAX_EPOCH",
    "MAX_RATE",
    "MAX_REQUESTER",
    "MAX_SECONDS",
    "MAX_TOTAL",
    "Acquire",
    "AcquireDecision",
    "Count",
    "Epoch",
    "Grant",
    "GrantReason",
    "Integer",
    "JsonObject",
    "LimiterError",
    "LimiterInputError",
    "Moment",
    "Number",
    "Phase",
    "Priority",
    "Report",
    "ReportAck",
    "Requester",
    "Total",
    "Verdict",
    "iso",
    "parse_time",
]


Priority: TypeAlias = Literal["urgent", "normal"]
Phase: TypeAlias = Literal["closed", "open", "half_open"]
GrantReason: TypeAlias = Literal["granted", "probe", "breaker_open", "probe_in_flight"]
Verdict: TypeAlias = Literal["bad", "clean", "empty"]
JsonObject: TypeAlias = dict[str, Any]

# Bounds of every input, so a bad value is refused at the edge instead of poisoning the stored state.
MAX_EPOCH: Final = 1e11  # year 5138: rejects milliseconds passed as seconds and keeps float precision sane
FAR: Final = MAX_EPOCH * 2  # holds and deadlines may lie past MAX_EPOCH by a cool-down
MAX_RATE: Final = 10_000.0
MAX_SECONDS: Final = 86_400.0
MAX_COUNT: Final = 10**9
MAX_TOTAL: Final = 2**62  # running totals saturate here, so years of traffic never overflow JSON's range
MAX_REQUESTER: Final = 512


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
    if not (math.isfinite(seconds) and 0.0 <= seconds <= MAX_EPOCH):
        raise ValueError("is out of range (epoch seconds between 1970 and year 5138)")
    return seconds


Number = Annotated[float, BeforeValidator(_number)]
Integer = Annotated[int, BeforeValidator(_integer)]
# An input time: epoch seconds, ISO 8601 text (no offset means UTC) or a datetime, stored as epoch seconds.
Epoch = Annotated[float, BeforeValidator(_epoch_seconds)]
Moment = Annotated[float, BeforeValidator(_number), Field(ge=0.0, le=FAR)]
Count = Annotated[int, BeforeValidator(_integer), Field(ge=0, le=MAX_COUNT)]
Total = Annotated[int, BeforeValidator(_integer), Field(ge=0, le=MAX_TOTAL)]
Requester = Annotated[str, Field(max_length=MAX_REQUESTER)]


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


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


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
    retry_after: Annotated[Number, Field(ge=0.0, le=MAX_SECONDS)] | None = None
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
    starts within ``slack_seconds`` after its slot and no slot lies after ``send_by`` (:mod:`proactive.delivery.pacing`).
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
    rate: Annotated[Number, Field(ge=0.0, le=MAX_RATE)]
    pace_seconds: Annotated[Number, Field(ge=0.0, le=MAX_SECONDS)]
    send_by: Epoch
    slack_seconds: Annotated[Number, Field(ge=0.0, le=MAX_SECONDS)]

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
        return iso(self.not_before)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def send_by_iso(self) -> str:
        """``send_by`` as ISO 8601 text (``Z``)."""
        return iso(self.send_by)

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
