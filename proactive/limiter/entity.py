"""The ``tenant_limiter`` entity's body: :func:`apply` parses, dispatches and never raises.

Bad input answers ``{"error": {"code", "message", "details"}}`` naming the field and leaves the state as it
was (Durable would turn an exception into an opaque error result). A stored state that fails validation is
logged and replaced by the initial state: a limiter refusing every operation would stop its tenant for
good, a fresh one overbooks at most one window, which Teams answers with 429s the feedback handles.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ValidationError

from proactive.limiter.admission import acquire, advance, capacity, lane_pace
from proactive.limiter.config import LimiterConfig
from proactive.limiter.contract import (
    Acquire,
    AcquireDecision,
    JsonObject,
    LimiterInputError,
    Report,
    parse_time,
)
from proactive.limiter.feedback import report
from proactive.limiter.state import LimiterState, evolve, initial_state

_Model = TypeVar("_Model", bound=BaseModel)

__all__ = ["OPERATIONS", "apply", "configure", "snapshot"]


_log = logging.getLogger(__name__)
OPERATIONS: Final = ("acquire", "report", "configure", "get")


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
        state, _ = advance(state, now)
    at_ceiling = state.rate >= state.config.rate
    rate = config.rate if at_ceiling else state.rate
    rate = min(config.rate, max(config.floor_rate, rate))
    breaker = state.breaker
    if breaker.cooldown_seconds > config.max_cooldown_seconds:
        breaker = evolve(breaker, cooldown_seconds=config.max_cooldown_seconds)
    return evolve(state, config=config, rate=rate, breaker=breaker)


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
        "windowTokens": capacity(config, state.rate)[0],
        "bookings": len(state.bookings),
        "bookedUntil": max((b.send_by for b in state.bookings), default=None),
        "openBookings": sum(1 for b in state.bookings if b.open),
        "startLagSeconds": state.start_lag_seconds,
        "paceSeconds": lane_pace(state, "all")[1],
        "urgentActive": state.urgent_until > clock,
        "normalActive": state.normal_until > clock,
        "consecutiveBad": state.breaker.consecutive_bad,
        "probeRequester": state.breaker.probe_requester,
        "stats": state.stats.to_json(),
        "config": config.to_json(),
    }


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
        return new_state, AcquireDecision(grant=grant).to_json()
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
