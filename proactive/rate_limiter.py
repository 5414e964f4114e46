"""Per-tenant send limiter: a pure state machine behind the ``tenant_limiter@{tenantId}`` entity.

Every operation is ``(state, operation, input) -> (state, decision)``. The module does no I/O, reads no
clock and imports nothing from ``azure``; the entity trigger is a few lines around :func:`apply`, which
never raises: an unknown operation or malformed input returns ``{"error": {"code", "message", "details"}}``
and the state unchanged (Durable would turn an exception into an opaque error result).

Time
    Every time is **epoch seconds (float, UTC)** in state and decisions. Inputs also accept an ISO 8601
    string (``"2026-11-21T09:00:00Z"``; no offset means UTC), so an orchestrator can pass
    ``context.current_utc_datetime.timestamp()`` or ``.isoformat()``. A grant carries ``notBefore`` and,
    for ``create_timer``, ``notBeforeIso``. Orchestrations replay with their episode's time, which can lag:
    an operation whose ``now`` is older than the newest time the entity has seen runs at that newest time,
    so the entity's clock never moves back and no grant is ever earlier than its caller's ``now``.

Paced slots (the ceiling)
    Teams counts a tenant's requests in *sliding* windows: at most ``L = floor(r * W)`` requests in any
    ``W`` = ``windowSeconds`` (1 s) at rate ``r`` (configured ceiling, default 50 msg/s per the facts sheet;
    AIMD may lower the effective rate). A grant is not a burst but a run of **slots** ``pace`` apart, with
    ``pace = (W + m) / L`` (``m`` = ``marginSeconds``, 20 ms: 20.4 ms at 50 msg/s). The sender
    (:mod:`proactive.pacing`) starts each request at a reserved time of its own, at most ``s`` =
    ``slackSeconds`` (5 ms) after it, never before it, never after the grant's ``sendBy``; a request that is
    not ready at its time reserves a later one (the schedule shifts, nothing is caught up in a burst).
    In-process retries take reserved times too. Requests that start at least ``pace`` apart
    within ``s`` of their slots put at most ``floor((W + s) / pace) + 1 = L`` requests in any window of
    ``W``, because ``s < m`` (the rest of the margin absorbs network jitter on the way to Teams).

    Grants of a tenant are chained like a virtual clock (GCRA): a grant's first slot is one ``pace`` after
    the last slot of the previous booking, so consecutive batches tile the time line (50 requests per 1.02 s
    at 50 msg/s, 0.98 of the ceiling) instead of each batch's own duration being added to the period. The
    state keeps a log of *bookings*, one per grant: ``[start, sendBy]`` and its pace. While a batch is out
    its booking runs to ``sendBy = start + (n - 1) * pace + startLag``: the sender may shift its slots by
    up to ``startLag`` when its activity starts late, and the next grant must clear that. A report closes the
    booking at the batch's last request (``lastSendAt``, else the report's ``now``), and the requester's next
    ``acquire`` closes its earlier bookings at that ``now``; so one orchestration per tenant, which reports
    before it asks again, loses nothing to ``startLag``, and concurrent requesters lose only it per batch.
    A report that names its grant (``grantedAt``) and has no ``lastSendAt`` may arrive before the booking's
    start (a pipelined batch started ahead of its ``notBefore`` found nothing to send): the booking is then
    closed at its start and holds no slot. ``startLagSeconds`` (0.02 s) is the first estimate; it then follows the reports' ``firstSendAt`` (twice
    the lag seen, halving with each report).

    One grant holds ``n <= min(want, r * D, max(1, r * maxBookingSeconds))`` tokens (rounded down; 50 by
    default; a lane's share of that while both priorities are active) with ``D = burst / rate`` (``burst``
    defaults to one window of rate), so a 100k-recipient request books one grant and queues for the next
    like everyone else; it cannot lock the tenant out. The product's entity allows grants of ``BATCH_SIZE``
    (:func:`tenant_defaults`; 50 slots, about 1 s).
    Bookings already made keep their place when the rate changes, so across a change the bound holds with
    the highest rate in force (never above the configured one). The log keeps the bookings that can still
    move a new grant (at most 64: past that, the two oldest merge into one ending where the later one ends,
    which wastes capacity but never exceeds it).

Priority (urgent before normal, normal never starved)
    Each priority's demand is *active* until ``priorityWindowSeconds`` (10 s) after the ``notBefore`` of
    its latest request. While only one priority is active its grants take the whole rate (lane ``all``).
    While both are active each has a lane of its own: normal ``Ln = max(1, floor(s * L))`` tokens per
    window and urgent ``L - Ln``, ``s = normalShare`` (0.2; at 50 msg/s: 40 urgent and 10 normal), each lane
    paced ``(W + m) / its tokens``, so together they never exceed ``L``. The two lanes interleave freely; a
    lane's grant waits only for its own lane and for ``all`` bookings (three paces after them, which pays for
    a window holding partial slots of three streams). An urgent request therefore only waits for urgent
    bookings and for bookings made before urgent demand appeared (they were promised: one batch per
    concurrent requester), never behind normal bookings made after it arrived, and normal keeps ``s`` of the
    rate however much urgent asks: starvation-free with a fixed 20 % share. Until ``priorityWindowSeconds``
    after the last urgent request, normal is held to its share even if urgent has gone quiet.

AIMD (feedback from ``report``)
    A report counts responses: ``sent`` (2xx), ``throttled`` (429, with the largest ``retryAfter``),
    ``serverErrors`` (5xx, timeouts) and ``failed`` (other 4xx: about one recipient, neutral for the
    tenant). A batch whose 429s are at most ``noiseFraction`` (5 %) of its responses saw noise (random
    429s): the sender waited each ``Retry-After`` in process, and the report changes nothing. Otherwise
    every 429 makes ``now + retryAfter`` (capped at ``maxHoldSeconds``, 300 s) a floor for every later
    ``notBefore`` of the tenant (the hold). An *isolated* streak's first report, the first 429s for
    ``throttleMemorySeconds`` (10 s), is only a hold: with the window bound above it is jitter, not a lower
    ceiling. Throttling that *persists*, 429s from a batch granted after the limiter had learned of an
    earlier 429 of the same streak, means a real ceiling below the rate: what got through is about
    ``rate * (1 - share)`` (``share`` = 429s / responses), and the rate settles at ``settleFraction`` (0.95)
    of that (floor ``minRate``). 429s from batches granted before the last decrease were caused by the old
    rate and do not decrease it again (reports echo the grant's ``grantedAt``; without it, at most one
    decrease per ``decreaseIntervalSeconds``, 1 s, and only from the second report of a streak on). If the
    next throttled batch after a decrease shows about the same share (at least 70 % of it, and at most 30 %
    of its responses), the 429s did not follow the rate: the decrease is taken back and such shares count as
    noise for ``noiseMemorySeconds`` (60 s). So random 429s never walk the rate down, and a real ceiling of
    30 msg/s under a configured 50 is found from the first persistent report. After ``increaseAfterSeconds``
    (2 s) without a 429 the rate climbs (``increasePerSecond`` per clean second while a 429 is less than
    ``cautiousSeconds`` old, then also by ``increaseFactor`` per second), but above a learned ceiling only
    as a slow probe (``probeAcceleration``), so it settles under a real ceiling instead of sawing around it.

Circuit breaker
    A report is *bad* when ``throttled + serverErrors > badFraction * attempts`` (``badFraction`` 0.5;
    attempts = sent + throttled + serverErrors + failed), *clean* when it has attempts and is not bad,
    *empty* otherwise (ignored). Closed -> open after ``breakerThreshold`` (3) consecutive bad reports; a
    clean report resets the count. Open: ``acquire`` answers ``Grant(0, notBefore=openUntil)`` with
    ``openUntil = max(now + cooldown, holdUntil)``, first cool-down 5 s. Once ``openUntil`` has passed,
    the next requester gets one probe of ``probeTokens`` (1) and the breaker is half-open; the others get
    ``Grant(0)`` and ask again after ``halfOpenPollSeconds`` (1 s). The probe holder's report decides:
    clean closes the breaker and the rate restarts at ``restartFraction`` of the ceiling (0.2: 10 msg/s)
    and climbs by AIMD; bad re-opens with the cool-down doubled (5, 10, 20, 40 ... capped at 300 s). A
    probe not reported within ``probeTimeoutSeconds`` (30 s) counts as lost and the next requester probes.
    Reports that arrive while open come from batches granted before it opened and do not move it.

Operations, inputs and decisions (plain JSON; camelCase keys, snake_case accepted on input)
    - ``acquire {now, want, priority: "urgent"|"normal", requester}`` ->
      ``{"grant": {tokens, notBefore, notBeforeIso, grantedAt, reason, rate, paceSeconds, sendBy, sendByIso,
      slackSeconds}}``
    - ``report {now, sent, throttled, serverErrors, failed, retryAfter, requester, grantedAt, firstSendAt,
      lastSendAt}`` ->
      ``{"report": {rate, phase, holdUntil, openUntil, verdict}}``
    - ``configure {now?, <any config field>}`` -> ``{"config": {...}}`` (fields not given are kept)
    - ``get`` -> ``{"snapshot": {...}}`` (read-only)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias, cast

__all__ = [
    "Acquire",
    "Breaker",
    "Grant",
    "LimiterConfig",
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

Priority: TypeAlias = Literal["urgent", "normal"]
Phase: TypeAlias = Literal["closed", "open", "half_open"]
GrantReason: TypeAlias = Literal["granted", "probe", "breaker_open", "probe_in_flight"]
_GRANT_REASONS: Final = ("granted", "probe", "breaker_open", "probe_in_flight")
Lane: TypeAlias = Literal["all", "urgent", "normal"]
JsonObject: TypeAlias = dict[str, Any]

STATE_VERSION: Final = 3
_V1: Final = 1  # the calendar-of-intervals state, still read (see _migrate_v1)
_V2: Final = 2  # unpaced spans, still read (see _migrate_v2)
# Comparisons on epoch floats (~1.7e9, one ulp is ~2.4e-7 s) need a tolerance well above an ulp and well below
# one token's interval at the highest allowed rate (1 / 10,000 s).
_EPS: Final = 1e-6
_MAX_EPOCH: Final = 1e11  # year 5138: rejects milliseconds passed as seconds and keeps float precision sane
_MAX_RATE: Final = 10_000.0
_MAX_SECONDS: Final = 86_400.0
_MAX_COUNT: Final = 10**9
# Bookings are kept only while they can share a window with a new grant (a few per requester), so this is
# reached only by many concurrent requesters. Past it the two oldest merge: capacity wasted, never exceeded.
_MAX_BOOKED: Final = 64
# How the learned start lag follows reports: twice the lag seen, halving with each report.
_LAG_SAFETY: Final = 2.0
_LAG_DECAY: Final = 0.5
# Paces between the last slot of ``all`` and the first of a lane (or back): see _earliest_start.
_LANE_CHANGE_PACES: Final = 3.0
_MAX_REQUESTER: Final = 512
# A decrease whose next throttled batch still shows this share of its 429s did not help: the 429s are noise,
# and shares up to the seen one times the margin are noise for ``noiseMemorySeconds``.
_NOISE_KEPT: Final = 0.7
_NOISE_MARGIN: Final = 1.5
# A throttled share above this is never taken for noise (random faults that frequent would be an outage).
_NOISE_MAX: Final = 0.3
_SHARE_SAMPLE: Final = 20
# The first lead and start lag of the product's tenants (tenant_defaults), before reports teach each tenant
# its own: the entity's answer, an orchestrator turn, an activity dispatch and a batch's first storage round
# trips take 0.2-0.5 s on Azure (devhost --latency azure: 0.4-0.7 s on a busy machine). The lead is generous
# on purpose: a grant may start at once and only its sendBy lies a lead ahead, so a long lead delays no batch
# (it holds an idle tenant's time a little longer), while a short one makes a first batch miss its grant
# and costs a whole round trip. The start lag is not (every booking holds it until its report, and it only
# measures lateness after a batch was ready).
PRODUCT_FIRST_LEAD_SECONDS: Final = 1.0
PRODUCT_FIRST_START_LAG_SECONDS: Final = 0.05
# The learned lead never grows past this (tenant_lane starts its activity up to BATCH_START_LEAD, 30 s,
# ahead, so the lead measures dispatch and preparation, never a timer of ours).
_MAX_LEAD: Final = 20.0
# How the learned lead follows each report's ready latency (see _close_reported).
_LEAD_SAFETY: Final = 1.25
_LEAD_UP: Final = 0.5
_LEAD_DOWN: Final = 0.2


class LimiterInputError(ValueError):
    """Malformed state or operation input; :func:`apply` turns it into an error decision.

    Attributes:
        code: Machine-readable reason (``invalid_input``, ``unknown_field``, ``invalid_state``, ...).
        details: Field-level details for the error decision.
    """

    def __init__(self, code: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def to_json(self) -> JsonObject:
        """The error decision: ``{"error": {"code", "message", "details"}}``."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


# ----------------------------------------------------------------------------------------------------
# Parsing helpers (strict: parse at the edge, reject unknown keys)
# ----------------------------------------------------------------------------------------------------

_CAMEL_BOUNDARY = re.compile(r"(?<!^)(?=[A-Z])")


def _snake(key: str) -> str:
    return _CAMEL_BOUNDARY.sub("_", key).lower()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def parse_time(value: object, name: str = "now") -> float:
    """Parse a time given as epoch seconds (int/float) or an ISO 8601 string into epoch seconds.

    Args:
        value: Epoch seconds, an ISO 8601 string (naive means UTC) or a ``datetime``.
        name: Field name used in the error.

    Returns:
        Epoch seconds as a float.

    Raises:
        LimiterInputError: The value is not a finite time between 1970 and year 5138.
    """
    seconds: float
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise LimiterInputError(
                "invalid_input", f"{name} must be epoch seconds or an ISO 8601 time", {"field": name}
            ) from None
        seconds = (parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)).timestamp()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise LimiterInputError(
            "invalid_input", f"{name} must be epoch seconds or an ISO 8601 time", {"field": name}
        )
    if not (math.isfinite(seconds) and 0.0 <= seconds <= _MAX_EPOCH):
        raise LimiterInputError("invalid_input", f"{name} is out of range", {"field": name})
    return seconds


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


_MISSING: Final = object()


class _Fields:
    """Reads one JSON object strictly: typed getters, unknown keys rejected by :meth:`done`."""

    def __init__(self, data: object, where: str, *, snake_case_too: bool) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise LimiterInputError("invalid_input", f"{where} must be a JSON object", {"where": where})
        self._where = where
        self._values: dict[str, object] = {}
        for raw_key, value in data.items():
            if not isinstance(raw_key, str):
                raise LimiterInputError("invalid_input", f"{where} has a non-string key", {"where": where})
            key = _snake(raw_key) if snake_case_too else raw_key
            if key in self._values:
                raise LimiterInputError(
                    "invalid_input", f"{where} repeats field {raw_key!r}", {"where": where, "field": raw_key}
                )
            self._values[key] = value
        self._snake_case_too = snake_case_too
        self._used: set[str] = set()

    def _key(self, name: str) -> str:
        return name if self._snake_case_too else _camel(name)

    def _raw(self, name: str) -> object:
        key = self._key(name)
        self._used.add(key)
        return self._values.get(key, _MISSING)

    def _bad(self, name: str, expected: str) -> LimiterInputError:
        return LimiterInputError(
            "invalid_input",
            f"{self._where}.{_camel(name)} must be {expected}",
            {"where": self._where, "field": _camel(name)},
        )

    def missing(self, name: str) -> LimiterInputError:
        return LimiterInputError(
            "invalid_input",
            f"{self._where}.{_camel(name)} is required",
            {"where": self._where, "field": _camel(name)},
        )

    def has(self, name: str) -> bool:
        return self._key(name) in self._values

    def number(self, name: str, low: float, high: float, default: float | None = None) -> float:
        raw = self._raw(name)
        if raw is _MISSING or raw is None:
            if default is None:
                raise self._bad(name, f"a number in [{low}, {high}]")
            return default
        if not isinstance(raw, int | float) or isinstance(raw, bool):
            raise self._bad(name, f"a number in [{low}, {high}]")
        value = float(raw)
        if not (math.isfinite(value) and low <= value <= high):
            raise self._bad(name, f"a number in [{low}, {high}]")
        return value

    def optional_number(self, name: str, low: float, high: float) -> float | None:
        raw = self._raw(name)
        if raw is _MISSING or raw is None:
            return None
        return self.number(name, low, high)

    def integer(self, name: str, low: int, high: int, default: int | None = None) -> int:
        raw = self._raw(name)
        if raw is _MISSING or raw is None:
            if default is None:
                raise self._bad(name, f"an integer in [{low}, {high}]")
            return default
        # JSON writers in other languages may send 20.0 for 20.
        if isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
            raw = int(raw)
        if not isinstance(raw, int) or isinstance(raw, bool) or not low <= raw <= high:
            raise self._bad(name, f"an integer in [{low}, {high}]")
        return raw

    def time(self, name: str, default: float | None = None) -> float:
        raw = self._raw(name)
        if raw is _MISSING or raw is None:
            if default is None:
                raise self._bad(name, "epoch seconds or an ISO 8601 time")
            return default
        return parse_time(raw, f"{self._where}.{_camel(name)}")

    def optional_time(self, name: str) -> float | None:
        raw = self._raw(name)
        if raw is _MISSING or raw is None:
            return None
        return parse_time(raw, f"{self._where}.{_camel(name)}")

    def text(self, name: str, default: str | None = None, *, choices: Iterable[str] = ()) -> str:
        raw = self._raw(name)
        if raw is _MISSING or raw is None:
            if default is None:
                raise self._bad(name, "a string")
            return default
        allowed = tuple(choices)
        if not isinstance(raw, str) or len(raw) > _MAX_REQUESTER or (allowed and raw not in allowed):
            raise self._bad(
                name, f"one of {list(allowed)}" if allowed else f"a string of <= {_MAX_REQUESTER}"
            )
        return raw

    def optional_text(self, name: str) -> str | None:
        raw = self._raw(name)
        if raw is _MISSING or raw is None:
            return None
        return self.text(name)

    def raw(self, name: str) -> object:
        return self._raw(name)

    def done(self) -> None:
        unknown = sorted(set(self._values) - self._used)
        if unknown:
            raise LimiterInputError(
                "unknown_field",
                f"{self._where} has unknown field(s): {', '.join(_camel(k) for k in unknown)}",
                {"where": self._where, "fields": [_camel(k) for k in unknown]},
            )


# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------

# name -> (kind, low, high); kind "f" float, "i" int, "o" optional float. Drives validation and JSON.
_CONFIG_SPEC: Final[dict[str, tuple[str, float, float]]] = {
    "rate": ("f", 0.01, _MAX_RATE),
    "burst": ("o", 1.0, _MAX_RATE * 60),
    "min_rate": ("f", 0.01, _MAX_RATE),
    "max_booking_seconds": ("f", 0.001, 3600.0),
    "window_seconds": ("f", 0.001, 3600.0),
    "margin_seconds": ("f", 0.0, 60.0),
    "slack_seconds": ("f", 0.0, 60.0),
    "start_lag_seconds": ("f", 0.0, 3600.0),
    "lead_seconds": ("f", 0.0, 20.0),
    "normal_share": ("f", 0.01, 0.99),
    "priority_window_seconds": ("f", 0.0, _MAX_SECONDS),
    "decrease_factor": ("f", 0.01, 0.99),
    "decrease_interval_seconds": ("f", 0.0, _MAX_SECONDS),
    "increase_per_second": ("f", 0.0, _MAX_RATE),
    "increase_after_seconds": ("f", 0.0, _MAX_SECONDS),
    "increase_factor": ("f", 1.0, 10.0),
    "throttle_memory_seconds": ("f", 0.0, _MAX_SECONDS),
    "cautious_seconds": ("f", 0.0, _MAX_SECONDS),
    "max_hold_seconds": ("f", 0.0, _MAX_SECONDS),
    "breaker_threshold": ("i", 1, 1000),
    "bad_fraction": ("f", 0.0, 0.99),
    "cooldown_seconds": ("f", 0.001, _MAX_SECONDS),
    "max_cooldown_seconds": ("f", 0.001, _MAX_SECONDS),
    "probe_tokens": ("i", 1, 1000),
    "probe_timeout_seconds": ("f", 0.001, _MAX_SECONDS),
    "half_open_poll_seconds": ("f", 0.001, _MAX_SECONDS),
    "restart_fraction": ("f", 0.001, 1.0),
    "noise_fraction": ("f", 0.0, 0.99),
    "settle_fraction": ("f", 0.5, 1.0),
    "probe_acceleration": ("f", 0.0, _MAX_RATE),
    "noise_memory_seconds": ("f", 0.0, _MAX_SECONDS),
}


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    """Settings of one tenant's limiter; every number of the module docstring is a field here.

    Attributes:
        rate: Configured ceiling in messages per second (Teams: 50 per app per tenant; 30 is a safe floor).
        burst: Most tokens of one grant at the configured rate (scaled with the effective rate); ``None``
            means one window of rate (at least one token).
        min_rate: Floor of the effective rate under AIMD.
        max_booking_seconds: One grant holds at most this many seconds of rate.
        window_seconds: The service's sliding window (Teams: 50 per 1 s): at most ``rate * window`` tokens
            may be sent in any window.
        margin_seconds: Added to the window when spacing slots (``pace = (W + margin) / L``): the budget for
            a request starting late and for network jitter. Must exceed ``slack_seconds``.
        slack_seconds: A request may start at most this long after its reserved time (the sender reserves
            a later time when it wakes later), so the margin keeps ``margin - slack`` for jitter on the way
            to Teams.
        start_lag_seconds: How late a batch may begin after ``notBefore``, held by every booking until its
            report: the first estimate, then learned from reports (``firstSendAt``). Grants start a learned
            lead ahead and ``tenant_lane`` starts its activity as soon as it has the grant, so batches are
            rarely late and the estimate is small. A batch later than it sends fewer rows (the rest are
            given back), never more than the rate.
        lead_seconds: How far after ``acquire`` a grant starts at the earliest: the first estimate of how long
            a batch needs from its grant to its first ready request (the orchestration's turn, the activity's
            dispatch, the claim and lookups), then learned from reports (``firstReadyAt``). Placing grants
            that far ahead means a batch is ready when its time comes instead of losing it.
        normal_share: Share of the rate normal requests keep while urgent demand is active.
        priority_window_seconds: How long demand of a priority stays active after its latest ``notBefore``.
        decrease_factor: Multiplicative decrease on 429.
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
        noise_fraction: A batch whose 429s are at most this share of its requests saw noise, not a ceiling:
            its 429s hold nothing and lower nothing (the sender honoured each ``Retry-After`` in process).
        settle_fraction: After a decrease the rate settles at this share of the accepted rate estimated
            from the throttled batch (``rate * (1 - throttled share)``).
        probe_acceleration: Above a learned ceiling the rate may climb only ``a * t**2 / 2`` msg/s, ``t``
            seconds after the decrease (``a`` this value, msg/s per s²): a lower real ceiling is probed slowly
            (at 0.02, 1.5 msg/s over its estimate after about 12 s), a passing drop is forgotten within a
            minute (25 msg/s back in about 50 s).
        noise_memory_seconds: How long a share of 429s found not to follow the rate stays "noise".
    """

    rate: float = 50.0
    burst: float | None = None
    min_rate: float = 1.0
    max_booking_seconds: float = 1.0
    window_seconds: float = 1.0
    margin_seconds: float = 0.01
    slack_seconds: float = 0.005
    start_lag_seconds: float = 0.02
    lead_seconds: float = 0.0
    normal_share: float = 0.2
    priority_window_seconds: float = 10.0
    decrease_factor: float = 0.5
    decrease_interval_seconds: float = 1.0
    increase_per_second: float = 1.0
    increase_after_seconds: float = 2.0
    increase_factor: float = 1.25
    throttle_memory_seconds: float = 10.0
    cautious_seconds: float = 30.0
    max_hold_seconds: float = 300.0
    breaker_threshold: int = 3
    bad_fraction: float = 0.5
    cooldown_seconds: float = 5.0
    max_cooldown_seconds: float = 300.0
    probe_tokens: int = 1
    probe_timeout_seconds: float = 30.0
    half_open_poll_seconds: float = 1.0
    restart_fraction: float = 0.2
    noise_fraction: float = 0.05
    settle_fraction: float = 0.95
    probe_acceleration: float = 0.02
    noise_memory_seconds: float = 60.0

    def __post_init__(self) -> None:
        # Validate through the same path as JSON so Python can never build a config JSON would refuse; store
        # ints given for float fields as floats so the JSON form is the same however the config was made.
        _check_config_values(self.to_json())
        for name, (kind, _, _) in _CONFIG_SPEC.items():
            value = getattr(self, name)
            if kind != "i" and value is not None:
                object.__setattr__(self, name, float(value))

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

    def to_json(self) -> JsonObject:
        """Plain JSON with camelCase keys."""
        return {_camel(name): getattr(self, name) for name in _CONFIG_SPEC}

    @classmethod
    def from_json(cls, data: object, *, where: str = "config") -> LimiterConfig:
        """Parse and validate; missing fields take their defaults.

        Raises:
            LimiterInputError: A field is unknown, of the wrong type or out of range.
        """
        reader = _Fields(data, where, snake_case_too=True)
        values = _read_config_fields(reader, {f.name: f.default for f in fields(cls)})
        reader.done()
        return cls(**values)


def _read_config_fields(reader: _Fields, base: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every config field from ``reader``; a missing one takes ``base[name]`` (required when ``base`` is None)."""
    values: dict[str, Any] = {}
    for name, (kind, low, high) in _CONFIG_SPEC.items():
        current = None if base is None else base[name]
        if base is None and kind == "o" and not reader.has(name):
            raise reader.missing(name)
        if kind == "i":
            values[name] = reader.integer(name, int(low), int(high), default=current)
        elif kind == "o":
            values[name] = reader.optional_number(name, low, high) if reader.has(name) else current
        else:
            values[name] = reader.number(name, low, high, default=current)
    return values


def _check_config_values(values: Mapping[str, Any]) -> None:
    reader = _Fields(values, "config", snake_case_too=True)
    _read_config_fields(reader, None)
    reader.done()
    if values["minRate"] > values["rate"]:
        raise LimiterInputError(
            "invalid_input", "config.minRate must not exceed config.rate", {"field": "minRate"}
        )
    margin, slack = values["marginSeconds"], values["slackSeconds"]
    if slack >= margin and not slack == margin == 0:
        raise LimiterInputError(
            "invalid_input",
            "config.slackSeconds must be below config.marginSeconds (or both 0)",
            {"field": "slackSeconds"},
        )
    if values["maxCooldownSeconds"] < values["cooldownSeconds"]:
        raise LimiterInputError(
            "invalid_input",
            "config.maxCooldownSeconds must be >= config.cooldownSeconds",
            {"field": "maxCooldownSeconds"},
        )


# ----------------------------------------------------------------------------------------------------
# State
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Breaker:
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
    consecutive_bad: int = 0
    open_until: float = 0.0
    cooldown_seconds: float = 0.0
    probe_requester: str | None = None
    probe_deadline: float = 0.0

    def to_json(self) -> JsonObject:
        """Plain JSON with camelCase keys."""
        return {
            "phase": self.phase,
            "consecutiveBad": self.consecutive_bad,
            "openUntil": self.open_until,
            "cooldownSeconds": self.cooldown_seconds,
            "probeRequester": self.probe_requester,
            "probeDeadline": self.probe_deadline,
        }

    @classmethod
    def from_json(cls, data: object) -> Breaker:
        """Parse strictly (state is written only by :meth:`to_json`)."""
        reader = _Fields(data, "state.breaker", snake_case_too=False)
        phase = reader.text("phase", choices=("closed", "open", "half_open"))
        result = cls(
            phase=cast(Phase, phase),
            consecutive_bad=reader.integer("consecutive_bad", 0, _MAX_COUNT),
            open_until=reader.number("open_until", 0.0, _MAX_EPOCH * 2),
            cooldown_seconds=reader.number("cooldown_seconds", 0.0, _MAX_SECONDS),
            probe_requester=reader.optional_text("probe_requester"),
            probe_deadline=reader.number("probe_deadline", 0.0, _MAX_EPOCH * 2),
        )
        reader.done()
        return result


_STAT_FIELDS: Final = (
    "grants",
    "granted",
    "refusals",
    "reports",
    "sent",
    "throttled",
    "server_errors",
    "failed",
    "decreases",
    "breaker_opens",
)


@dataclass(frozen=True, slots=True)
class Stats:
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

    grants: int = 0
    granted: int = 0
    refusals: int = 0
    reports: int = 0
    sent: int = 0
    throttled: int = 0
    server_errors: int = 0
    failed: int = 0
    decreases: int = 0
    breaker_opens: int = 0

    def to_json(self) -> JsonObject:
        """Plain JSON with camelCase keys."""
        return {_camel(name): getattr(self, name) for name in _STAT_FIELDS}

    @classmethod
    def from_json(cls, data: object) -> Stats:
        """Parse strictly."""
        reader = _Fields(data, "state.stats", snake_case_too=False)
        values = {name: reader.integer(name, 0, 2**62) for name in _STAT_FIELDS}
        reader.done()
        return cls(**values)

    def add(self, **deltas: int) -> Stats:
        """Totals with ``deltas`` added (saturating, so years of traffic never overflow the JSON range)."""
        return replace(self, **{k: min(2**62, getattr(self, k) + v) for k, v in deltas.items()})


@dataclass(frozen=True, slots=True)
class Booking:
    """One grant on the time line: ``urgent + normal`` requests, one per slot, paced from ``start``.

    The sender starts request ``i`` no earlier than its slot (``origin + i * pace``, ``origin >= start``)
    and at most ``slackSeconds`` after it, never after ``send_by`` (see :mod:`proactive.pacing`). So the
    booking's requests lie in ``[start, send_by + slack]``, at least ``pace`` apart.

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

    start: float
    send_by: float
    pace: float
    urgent: int = 0
    normal: int = 0
    lane: Lane = "all"
    requester: str | None = None
    granted_at: float | None = None
    open: bool = False

    @property
    def tokens(self) -> int:
        """All tokens of the booking."""
        return self.urgent + self.normal

    def to_json(self) -> list[Any]:
        """Compact JSON: ``[start, sendBy, pace, urgent, normal, lane, requester, grantedAt, open]``."""
        return [
            self.start,
            self.send_by,
            self.pace,
            self.urgent,
            self.normal,
            self.lane,
            self.requester,
            self.granted_at,
            self.open,
        ]


@dataclass(frozen=True, slots=True)
class LimiterState:
    """Everything one tenant's limiter remembers; stored by the entity as :meth:`to_json`.

    Attributes:
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

    config: LimiterConfig = field(default_factory=LimiterConfig)
    rate: float = 50.0
    clock: float = 0.0
    bookings: tuple[Booking, ...] = ()
    start_lag_seconds: float = 0.02
    lead_seconds: float = 0.0
    hold_until: float = 0.0
    last_throttle_at: float | None = None
    streak_started_at: float | None = None
    last_decrease_at: float | None = None
    last_increase_at: float | None = None
    urgent_until: float = 0.0
    normal_until: float = 0.0
    breaker: Breaker = field(default_factory=Breaker)
    stats: Stats = field(default_factory=Stats)
    ceiling: float | None = None
    rate_before_decrease: float | None = None
    decrease_share: float | None = None
    noise_share: float = 0.0
    noise_until: float = 0.0

    def to_json(self) -> JsonObject:
        """Plain JSON (floats, ints, strings, lists, nulls) with camelCase keys; round-trips exactly."""
        return {
            "v": STATE_VERSION,
            "config": self.config.to_json(),
            "rate": self.rate,
            "clock": self.clock,
            "bookings": [booking.to_json() for booking in self.bookings],
            "startLagSeconds": self.start_lag_seconds,
            "leadSeconds": self.lead_seconds,
            "holdUntil": self.hold_until,
            "lastThrottleAt": self.last_throttle_at,
            "streakStartedAt": self.streak_started_at,
            "lastDecreaseAt": self.last_decrease_at,
            "lastIncreaseAt": self.last_increase_at,
            "urgentUntil": self.urgent_until,
            "normalUntil": self.normal_until,
            "breaker": self.breaker.to_json(),
            "stats": self.stats.to_json(),
            "ceiling": self.ceiling,
            "rateBeforeDecrease": self.rate_before_decrease,
            "decreaseShare": self.decrease_share,
            "noiseShare": self.noise_share,
            "noiseUntil": self.noise_until,
        }

    @classmethod
    def from_json(cls, data: object) -> LimiterState:
        """Parse a stored state strictly.

        Raises:
            LimiterInputError: ``code="invalid_state"`` when anything is missing, unknown or out of range.
        """
        try:
            reader = _Fields(data, "state", snake_case_too=False)
            version = reader.integer("v", 0, 1000)
            if version not in (_V1, _V2, STATE_VERSION):
                raise LimiterInputError("invalid_state", f"state version {version} is not {STATE_VERSION}")
            config = LimiterConfig.from_json(reader.raw("config"), where="state.config")
            rate = reader.number("rate", config.floor_rate, config.rate)
            far = _MAX_EPOCH * 2
            clock = reader.number("clock", 0.0, _MAX_EPOCH)
            start_lag, streak_started_at = config.start_lag_seconds, None
            lead = config.lead_seconds
            if version == _V1:
                bookings = _migrate_v2(_migrate_v1(reader.raw("booked"), config), config, rate)
            elif version == _V2:
                bookings = _migrate_v2(_parse_v2_bookings(reader.raw("bookings")), config, rate)
                reader.number("batch_seconds", 0.0, _MAX_SECONDS)  # replaced by the start lag
                streak_started_at = reader.optional_number("streak_started_at", 0.0, far)
            else:
                bookings = _parse_bookings(reader.raw("bookings"))
                start_lag = reader.number("start_lag_seconds", 0.0, _MAX_SECONDS)
                if reader.has("lead_seconds"):
                    lead = reader.number("lead_seconds", 0.0, _MAX_LEAD)
                streak_started_at = reader.optional_number("streak_started_at", 0.0, far)
            state = cls(
                config=config,
                rate=rate,
                clock=clock,
                bookings=bookings,
                start_lag_seconds=start_lag,
                lead_seconds=lead,
                hold_until=reader.number("hold_until", 0.0, far),
                last_throttle_at=reader.optional_number("last_throttle_at", 0.0, far),
                streak_started_at=streak_started_at,
                last_decrease_at=reader.optional_number("last_decrease_at", 0.0, far),
                last_increase_at=reader.optional_number("last_increase_at", 0.0, far),
                urgent_until=reader.number("urgent_until", 0.0, far),
                normal_until=reader.number("normal_until", 0.0, far),
                breaker=Breaker.from_json(reader.raw("breaker")),
                stats=Stats.from_json(reader.raw("stats")),
                **_read_feedback(reader, config),
            )
            reader.done()
            return state
        except LimiterInputError as exc:
            raise LimiterInputError(
                "invalid_state", f"stored state is unusable: {exc.message}", exc.details
            ) from exc


def _read_feedback(reader: _Fields, config: LimiterConfig) -> dict[str, Any]:
    """The feedback fields of a state (absent from states stored before they existed: defaults)."""
    far = _MAX_EPOCH * 2
    values: dict[str, Any] = {}
    if reader.has("ceiling"):
        values["ceiling"] = reader.optional_number("ceiling", 0.0, _MAX_RATE)
    if reader.has("rate_before_decrease"):
        values["rate_before_decrease"] = reader.optional_number("rate_before_decrease", 0.0, _MAX_RATE)
    if reader.has("decrease_share"):
        values["decrease_share"] = reader.optional_number("decrease_share", 0.0, 1.0)
    if reader.has("noise_share"):
        values["noise_share"] = reader.number("noise_share", 0.0, 1.0)
    if reader.has("noise_until"):
        values["noise_until"] = reader.number("noise_until", 0.0, far)
    return values


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_COUNT


def _parse_bookings(raw: object) -> tuple[Booking, ...]:
    problem = LimiterInputError(
        "invalid_state",
        "state.bookings must be [start, sendBy, pace, urgent, normal, lane, requester, grantedAt, open] "
        "sorted by start",
    )
    if not isinstance(raw, list) or len(raw) > _MAX_BOOKED:
        raise problem
    result: list[Booking] = []
    previous_start = -math.inf
    for item in raw:
        if not (isinstance(item, list) and len(item) == 9):
            raise problem
        start, send_by, pace, urgent, normal, lane, requester, granted_at, is_open = item
        times_ok = _is_number(start) and _is_number(send_by) and previous_start <= start <= send_by
        if not (times_ok and send_by <= _MAX_EPOCH * 2 and _is_number(pace) and 0 < pace <= _MAX_SECONDS):
            raise problem
        if not (_is_count(urgent) and _is_count(normal) and urgent + normal >= 1):
            raise problem
        if lane not in ("all", "urgent", "normal") or not isinstance(is_open, bool):
            raise problem
        if requester is not None and not (isinstance(requester, str) and len(requester) <= _MAX_REQUESTER):
            raise problem
        if granted_at is not None and not (_is_number(granted_at) and 0 <= granted_at <= _MAX_EPOCH):
            raise problem
        result.append(
            Booking(
                float(start),
                float(send_by),
                float(pace),
                urgent,
                normal,
                cast(Lane, lane),
                requester,
                None if granted_at is None else float(granted_at),
                is_open,
            )
        )
        previous_start = float(start)
    return tuple(result)


@dataclass(frozen=True, slots=True)
class _SpanV2:
    """A version 2 booking: ``tokens`` sent anywhere in ``[start, end]`` (no pacing)."""

    start: float
    end: float
    tokens: int


def _migrate_v2(spans: tuple[_SpanV2, ...], config: LimiterConfig, rate: float) -> tuple[Booking, ...]:
    """Version 2 spans as bookings that keep every later slot a whole window clear of them.

    A span's sends may lie anywhere in it, so its booking ends a window (plus margin) after the span: a new
    grant, which starts one pace after that, shares no window with them. Conservative, and gone in seconds.
    """
    limit, seconds = _capacity(config, rate)
    pace = (seconds + config.margin_seconds) / limit
    reach = seconds + config.margin_seconds
    return tuple(Booking(span.start, span.end + reach, pace, 0, span.tokens) for span in spans)


def _parse_v2_bookings(raw: object) -> tuple[_SpanV2, ...]:
    problem = LimiterInputError(
        "invalid_state",
        "state.bookings must be [start, end, urgent, normal, requester, grantedAt, open] sorted by start",
    )
    if not isinstance(raw, list) or len(raw) > _MAX_BOOKED:
        raise problem
    result: list[_SpanV2] = []
    previous_start = -math.inf
    for item in raw:
        if not (isinstance(item, list) and len(item) == 7):
            raise problem
        start, end, urgent, normal, _requester, _granted_at, _open = item
        if not (_is_number(start) and _is_number(end) and previous_start <= start <= end <= _MAX_EPOCH * 2):
            raise problem
        if not (_is_count(urgent) and _is_count(normal) and urgent + normal >= 1):
            raise problem
        result.append(_SpanV2(float(start), float(end), urgent + normal))
        previous_start = float(start)
    return tuple(result)


def _migrate_v1(raw: object, config: LimiterConfig) -> tuple[_SpanV2, ...]:
    """A version 1 calendar as one booking that fills every window its intervals could reach.

    Version 1 sent a grant up to one slice before its interval, so ``[first - D, last end]`` covers every send
    it allowed; a full window's worth of tokens there keeps new grants clear of them: conservative, and gone
    within seconds.
    """
    if not isinstance(raw, list) or len(raw) > _MAX_BOOKED:
        raise LimiterInputError("invalid_state", "state.booked must be a list of [start, end] pairs")
    pairs: list[tuple[float, float]] = []
    for pair in raw:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise LimiterInputError("invalid_state", "state.booked must be a list of [start, end] pairs")
        start, end = pair
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in pair):
            raise LimiterInputError("invalid_state", "state.booked must hold finite numbers")
        if not (0 <= start < end <= _MAX_EPOCH * 2):
            raise LimiterInputError("invalid_state", "state.booked must hold [start, end] with start < end")
        pairs.append((float(start), float(end)))
    if not pairs:
        return ()
    first = max(0.0, min(start for start, _ in pairs) - config.slice_seconds)
    last = max(end for _, end in pairs)
    return (_SpanV2(first, last, max(1, math.ceil(config.rate * config.window_seconds))),)


def tenant_defaults(rate: float, batch_size: int) -> LimiterConfig:
    """The settings a tenant's limiter starts with: its rate, and grants of up to ``batch_size`` slots.

    A grant is paced, not a burst, so it may span several windows: ``BATCH_SIZE`` 50 at 50 msg/s books
    about 1 s. Longer grants spread the fixed cost of each batch (report, acquire, timer, activity start:
    milliseconds here, hundreds of milliseconds on Azure) over more sends; the price is that an urgent
    request may wait for batches booked before it appeared, one per concurrent requester.
    """
    seconds = max(1.0, batch_size / rate)
    return LimiterConfig(
        rate=rate,
        burst=rate * seconds,
        max_booking_seconds=seconds,
        start_lag_seconds=PRODUCT_FIRST_START_LAG_SECONDS,
        lead_seconds=PRODUCT_FIRST_LEAD_SECONDS,
    )


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
# Operation inputs and decisions
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acquire:
    """Input of ``acquire``.

    Attributes:
        now: Caller's time (epoch seconds).
        want: Tokens wanted (>= 1); the grant may be smaller.
        priority: ``urgent`` or ``normal``.
        requester: Who asks (the orchestration instance id); identifies the half-open probe holder.
    """

    now: float
    want: int
    priority: Priority = "normal"
    requester: str = ""

    @classmethod
    def from_json(cls, data: object) -> Acquire:
        """Parse an operation input (camelCase or snake_case keys)."""
        reader = _Fields(data, "acquire", snake_case_too=True)
        result = cls(
            now=reader.time("now"),
            want=reader.integer("want", 1, _MAX_COUNT),
            priority=cast(Priority, reader.text("priority", "normal", choices=("urgent", "normal"))),
            requester=reader.text("requester", ""),
        )
        reader.done()
        return result

    def to_json(self) -> JsonObject:
        """Plain JSON with camelCase keys."""
        return {"now": self.now, "want": self.want, "priority": self.priority, "requester": self.requester}


@dataclass(frozen=True, slots=True)
class Report:
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
        first_ready_at: When the batch's first request was ready to start (teaches the lead).
        last_send_at: When the batch's last request started; the booking ends there (``now`` when not given).
    """

    now: float
    sent: int = 0
    throttled: int = 0
    server_errors: int = 0
    failed: int = 0
    retry_after: float | None = None
    requester: str | None = None
    granted_at: float | None = None
    first_send_at: float | None = None
    last_send_at: float | None = None
    first_ready_at: float | None = None

    @property
    def attempts(self) -> int:
        """All responses the batch saw."""
        return self.sent + self.throttled + self.server_errors + self.failed

    @classmethod
    def from_json(cls, data: object) -> Report:
        """Parse an operation input (camelCase or snake_case keys)."""
        reader = _Fields(data, "report", snake_case_too=True)
        result = cls(
            now=reader.time("now"),
            sent=reader.integer("sent", 0, _MAX_COUNT, default=0),
            throttled=reader.integer("throttled", 0, _MAX_COUNT, default=0),
            server_errors=reader.integer("server_errors", 0, _MAX_COUNT, default=0),
            failed=reader.integer("failed", 0, _MAX_COUNT, default=0),
            retry_after=reader.optional_number("retry_after", 0.0, _MAX_SECONDS),
            requester=reader.optional_text("requester"),
            granted_at=reader.optional_time("granted_at"),
            first_send_at=reader.optional_time("first_send_at"),
            last_send_at=reader.optional_time("last_send_at"),
            first_ready_at=reader.optional_time("first_ready_at"),
        )
        reader.done()
        return result

    def to_json(self) -> JsonObject:
        """Plain JSON with camelCase keys."""
        return {
            "now": self.now,
            "sent": self.sent,
            "throttled": self.throttled,
            "serverErrors": self.server_errors,
            "failed": self.failed,
            "retryAfter": self.retry_after,
            "requester": self.requester,
            "grantedAt": self.granted_at,
            "firstSendAt": self.first_send_at,
            "lastSendAt": self.last_send_at,
            "firstReadyAt": self.first_ready_at,
        }


@dataclass(frozen=True, slots=True)
class Grant:
    """Decision of ``acquire``: from ``not_before``, send up to ``tokens`` requests, one per slot.

    Slot ``i`` is at ``origin + i * pace_seconds`` with ``origin = max(not_before, first request)``; a request
    starts within ``slack_seconds`` after its slot and no slot lies after ``send_by`` (:mod:`proactive.pacing`).

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

    tokens: int
    not_before: float
    granted_at: float
    reason: GrantReason
    rate: float
    pace_seconds: float
    send_by: float
    slack_seconds: float

    def to_json(self) -> JsonObject:
        """Plain JSON with camelCase keys, plus ``notBeforeIso`` / ``sendByIso`` for the orchestration."""
        return {
            "tokens": self.tokens,
            "notBefore": self.not_before,
            "notBeforeIso": _iso(self.not_before),
            "grantedAt": self.granted_at,
            "reason": self.reason,
            "rate": self.rate,
            "paceSeconds": self.pace_seconds,
            "sendBy": self.send_by,
            "sendByIso": _iso(self.send_by),
            "slackSeconds": self.slack_seconds,
        }

    @classmethod
    def from_json(cls, data: object) -> Grant:
        """Parse a grant decision's ``grant`` (what :meth:`to_json` wrote; the ISO copies are ignored).

        Raises:
            LimiterInputError: a field is missing, unknown or out of range.
        """
        reader = _Fields(data, "grant", snake_case_too=False)
        for copy in ("not_before_iso", "send_by_iso"):
            reader.optional_text(copy)
        grant = cls(
            tokens=reader.integer("tokens", 0, _MAX_COUNT),
            not_before=reader.time("not_before"),
            granted_at=reader.time("granted_at"),
            reason=cast(GrantReason, reader.text("reason", choices=_GRANT_REASONS)),
            rate=reader.number("rate", 0.0, _MAX_RATE),
            pace_seconds=reader.number("pace_seconds", 0.0, _MAX_SECONDS),
            send_by=reader.time("send_by"),
            slack_seconds=reader.number("slack_seconds", 0.0, _MAX_SECONDS),
        )
        reader.done()
        return grant

    def not_before_datetime(self) -> datetime:
        """``not_before`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.not_before, tz=UTC)

    def send_by_datetime(self) -> datetime:
        """``send_by`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.send_by, tz=UTC)


@dataclass(frozen=True, slots=True)
class ReportAck:
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
    verdict: Literal["bad", "clean", "empty"]

    def to_json(self) -> JsonObject:
        """Plain JSON with camelCase keys."""
        return {
            "rate": self.rate,
            "phase": self.phase,
            "holdUntil": self.hold_until,
            "openUntil": self.open_until,
            "verdict": self.verdict,
        }


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
            first.start,
            max(first.send_by, second.send_by),
            max(first.pace, second.pace),
            first.urgent + second.urgent,
            first.normal + second.normal,
        )
        ordered = sorted((merged, *ordered[2:]), key=lambda b: (b.start, b.send_by))
    return tuple(ordered)


def _prune(bookings: tuple[Booking, ...], now: float, reach: float) -> tuple[Booking, ...]:
    # A new grant starts at or after now; a booking whose last slot lies more than ``reach`` (a window, more
    # than any gap) before that can no longer move it.
    return tuple(b for b in bookings if b.send_by + reach > now)


def _close(booking: Booking, end: float) -> Booking:
    return Booking(
        booking.start,
        max(booking.start, min(booking.send_by, end)),
        booking.pace,
        booking.urgent,
        booking.normal,
        booking.lane,
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
        state = replace(state, bookings=bookings)
        if outcome.first_send_at is not None:
            # Lateness after the batch was both allowed and ready: the lead covers getting ready.
            began = max(booking.start, outcome.first_ready_at or booking.start)
            lag = max(0.0, outcome.first_send_at - began)
            learned = max(_LAG_SAFETY * lag, _LAG_DECAY * state.start_lag_seconds)
            state = replace(state, start_lag_seconds=min(learned, _MAX_SECONDS))
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
    return replace(state, lead_seconds=min(max(0.0, learned), _MAX_LEAD))


def _close_started(state: LimiterState, requester: str, now: float) -> LimiterState:
    """An orchestration asks again only once its previous batch is over: its started bookings ended by now."""
    if not any(b.open and b.requester == requester and b.start <= now + _EPS for b in state.bookings):
        return state
    bookings = tuple(
        _close(b, now) if b.open and b.requester == requester and b.start <= now + _EPS else b
        for b in state.bookings
    )
    return replace(state, bookings=bookings)


# ----------------------------------------------------------------------------------------------------
# Operations
# ----------------------------------------------------------------------------------------------------


def _reach(config: LimiterConfig, rate: float) -> float:
    return _capacity(config, rate)[1] + config.margin_seconds


def _advance(state: LimiterState, now: float) -> tuple[LimiterState, float]:
    moment = max(now, state.clock)
    # Prune with the longest window any rate in force could use (the configured floor gives the longest).
    reach = max(_reach(state.config, state.rate), _reach(state.config, state.config.floor_rate))
    return replace(state, clock=moment, bookings=_prune(state.bookings, moment, reach)), moment


def _mark_demand(state: LimiterState, priority: Priority, until: float) -> LimiterState:
    if priority == "urgent":
        return replace(state, urgent_until=max(state.urgent_until, until))
    return replace(state, normal_until=max(state.normal_until, until))


def _refuse(
    state: LimiterState, request: Acquire, now: float, not_before: float, reason: GrantReason
) -> tuple[LimiterState, Grant]:
    state = _mark_demand(state, request.priority, not_before + state.config.priority_window_seconds)
    state = replace(state, stats=state.stats.add(refusals=1))
    at = max(not_before, now)
    pace = _lane_pace(state, "all")[1]
    return state, Grant(0, at, now, reason, state.rate, pace, at, state.config.slack_seconds)


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
    # The grant may start as soon as the tenant's schedule allows, and its slots are planned from ``lead``
    # ahead (by then its batch is ready, see ``LimiterConfig.lead_seconds``): a batch ready sooner uses an
    # idle tenant's time at once instead of waiting out the lead; one ready later still has all its slots.
    start = _earliest_start(state.bookings, lane, pace, max(now, state.hold_until))
    planned = max(start, now + state.lead_seconds)
    send_by = planned + (tokens - 1) * pace + state.start_lag_seconds
    booking = Booking(
        start,
        send_by,
        pace,
        tokens if request.priority == "urgent" else 0,
        tokens if request.priority == "normal" else 0,
        lane,
        request.requester or None,
        now,
        True,
    )
    state = replace(
        state,
        bookings=_insert(state.bookings, booking),
        stats=state.stats.add(grants=1, granted=tokens),
    )
    state = _mark_demand(state, request.priority, start + config.priority_window_seconds)
    return state, Grant(tokens, start, now, reason, rate, pace, send_by, config.slack_seconds)


def _grant_probe(state: LimiterState, request: Acquire, now: float) -> tuple[LimiterState, Grant]:
    state, grant = _book_grant(state, request, now, min(request.want, state.config.probe_tokens), "probe")
    breaker = replace(
        state.breaker,
        phase="half_open",
        probe_requester=request.requester,
        probe_deadline=grant.not_before + state.config.probe_timeout_seconds,
    )
    return replace(state, breaker=breaker), grant


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
    return replace(state, breaker=breaker, stats=state.stats.add(breaker_opens=1))


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
            return replace(
                state, last_throttle_at=now, streak_started_at=now, hold_until=max(state.hold_until, hold)
            )
        state = replace(state, last_throttle_at=now, hold_until=max(state.hold_until, hold))
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
            return replace(
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
        return replace(
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
        state = replace(state, streak_started_at=None)
    if state.rate >= config.rate:
        return replace(state, last_increase_at=now)
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
    return replace(state, rate=min(config.rate, grown), last_increase_at=now)


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
    state = replace(
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
                state = replace(state, breaker=replace(breaker, consecutive_bad=0))
            elif breaker.consecutive_bad + 1 >= config.breaker_threshold:
                state = _open(state, now, config.cooldown_seconds)
            else:
                state = replace(state, breaker=replace(breaker, consecutive_bad=breaker.consecutive_bad + 1))
        elif breaker.phase == "half_open" and outcome.requester in (None, breaker.probe_requester):
            if verdict == "bad":
                cooldown = min(
                    config.max_cooldown_seconds, max(breaker.cooldown_seconds, config.cooldown_seconds) * 2
                )
                state = _open(state, now, cooldown)
            else:
                restart = max(config.floor_rate, min(state.rate, config.restart_fraction * config.rate))
                state = replace(state, breaker=Breaker(), rate=restart, last_increase_at=now)
        # While open, reports come from batches granted before it opened: they say nothing about recovery.
    breaker = state.breaker
    ack = ReportAck(state.rate, breaker.phase, state.hold_until, breaker.open_until, verdict)
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
        breaker = replace(breaker, cooldown_seconds=config.max_cooldown_seconds)
    return replace(state, config=config, rate=rate, breaker=breaker)


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


def _load(stored: object, defaults: LimiterConfig | None) -> LimiterState:
    if stored is None:
        return initial_state(defaults)
    if isinstance(stored, str):
        try:
            stored = json.loads(stored)
        except ValueError:
            raise LimiterInputError("invalid_state", "stored state is not JSON") from None
        if stored is None:
            return initial_state(defaults)
    return LimiterState.from_json(stored)


def _dispatch(
    current: LimiterState, operation: str, operation_input: object
) -> tuple[LimiterState, JsonObject]:
    if operation == "acquire":
        new_state, grant = acquire(current, Acquire.from_json(operation_input))
        return new_state, {"grant": grant.to_json()}
    if operation == "report":
        new_state, ack = report(current, Report.from_json(operation_input))
        return new_state, {"report": ack.to_json()}
    if operation == "configure":
        reader = _Fields(operation_input, "configure", snake_case_too=True)
        now = reader.optional_time("now")
        changes = {name: reader.raw(name) for name in _CONFIG_SPEC if reader.has(name)}
        reader.done()
        merged = {**current.config.to_json(), **{_camel(k): v for k, v in changes.items()}}
        new_config = LimiterConfig.from_json(merged, where="configure")
        new_state = configure(current, new_config, now)
        return new_state, {"config": new_config.to_json()}
    if operation == "get":
        if operation_input not in (None, {}):
            _Fields(operation_input, "get", snake_case_too=True).done()
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
            for a new entity).
        operation: ``acquire``, ``report``, ``configure`` or ``get``.
        operation_input: The operation's JSON input.
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
