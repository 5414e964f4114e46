"""The sender's in-process retry policy: full-jitter exponential backoff, bounded attempts.

Which failures are retried is decided by **type** (``STYLE.md`` rule 9): a
:class:`~proactive.errors.TransientDeliveryError` (429, 412, 502, 503, 504, timeouts, resets) is retried;
every other :class:`~proactive.errors.ProactiveError` ends the call at once. Anything that is not a
``ProactiveError`` is a bug and propagates untouched.

Delays ("full jitter", AWS Architecture Blog, *Exponential Backoff And Jitter*): before retry ``n``
(``n = 0`` for the first retry) the policy waits ``uniform(0, min(cap, base * 2**n))``. When the failure is
:class:`~proactive.errors.Throttled` with a ``retry_after``, that is a floor: the wait is
``max(retry_after, jitter)``, so the service's answer is honoured and callers throttled together still
spread out. A ``retry_after`` longer than ``max_retry_after`` is not waited for in-process (an activity
should not sleep for minutes): the call ends with the ``Throttled`` error, and the layer above (the
limiter and the ``deliveries-retry`` queue, ``ARCHITECTURE.md`` flows 5 and 6) owns that wait.

``sleep`` and ``rng`` are injected, so tests check every delay exactly. The result is a value,
:class:`Succeeded` or :class:`Failed`, with the number of attempts and every failure seen, so the sender
builds its ``SendOutcome`` with a ``match`` instead of nested ``try`` blocks; :meth:`Failed.unwrap`
re-raises when raising suits the caller better.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import ClassVar, Generic, Literal, NoReturn, TypeVar

from proactive.delivery.ports import Sleep, UniformSource
from proactive.errors import ProactiveError, Throttled, TransientDeliveryError
from proactive.settings import Settings

__all__ = [
    "Failed",
    "RetryPolicy",
    "RetryResult",
    "Succeeded",
    "backoff_delay",
    "call_with_retries",
    "parse_retry_after",
]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    Attributes:
        max_attempts: total attempts including the first (``Settings.max_send_attempts``), at least 1.
        base_delay: seconds; the jitter window before the first retry.
        max_delay: seconds; the jitter window never grows beyond it.
        max_retry_after: the longest ``Retry-After`` waited for in-process; longer ends the call.
    """

    max_attempts: int
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must not be negative")

    @classmethod
    def for_sends(cls, settings: Settings) -> RetryPolicy:
        """The Bot Connector send policy: attempts and backoff delays from ``Settings``."""
        return cls(
            max_attempts=settings.max_send_attempts,
            base_delay=settings.send_retry_base_seconds,
            max_delay=settings.send_retry_max_seconds,
            max_retry_after=settings.send_max_retry_after_seconds,
        )

    def window(self, retry: int) -> float:
        """The jitter window before retry ``retry`` (0-based): ``min(max_delay, base_delay * 2**retry)``."""
        # 2**retry overflows nothing in Python, but the float product can: cap the exponent first.
        return min(self.max_delay, self.base_delay * 2.0 ** min(retry, 64))


def backoff_delay(policy: RetryPolicy, retry: int, error: ProactiveError, rng: UniformSource) -> float | None:
    """The wait before retry ``retry`` (0-based) after ``error``, or ``None`` if it must not be retried.

    Draws exactly one number from ``rng`` for every retryable error, so a seeded generator gives the same
    delays whatever mix of errors came before.
    """
    if not isinstance(error, TransientDeliveryError):
        return None
    jitter = rng.random() * policy.window(retry)
    if isinstance(error, Throttled) and error.retry_after is not None:
        if error.retry_after > policy.max_retry_after:
            return None
        return max(error.retry_after, jitter)
    return jitter


@dataclass(frozen=True)
class Succeeded(Generic[T]):
    """The operation returned ``value`` on attempt ``attempts``.

    Attributes:
        value: what the operation returned.
        attempts: how many calls were made (1 = no retry).
        failures: the errors of the earlier attempts, oldest first (429s the limiter should hear about).
        delays: the seconds slept before each retry.
    """

    value: T
    attempts: int
    failures: tuple[ProactiveError, ...] = ()
    delays: tuple[float, ...] = ()

    ok: ClassVar[Literal[True]] = True

    def unwrap(self) -> T:
        """The value."""
        return self.value


@dataclass(frozen=True)
class Failed:
    """The operation did not succeed.

    Attributes:
        error: the last error: a permanent one, a transient one after the last attempt, or a
            ``Throttled`` whose ``retry_after`` exceeded the policy's ``max_retry_after``.
        attempts: how many calls were made.
        failures: every error, oldest first; ``failures[-1] is error``.
        delays: the seconds slept before each retry.
    """

    error: ProactiveError
    attempts: int
    failures: tuple[ProactiveError, ...] = ()
    delays: tuple[float, ...] = ()

    ok: ClassVar[Literal[False]] = False

    @property
    def retryable_later(self) -> bool:
        """Whether the error is transient: worth handing to a later, out-of-process retry."""
        return isinstance(self.error, TransientDeliveryError)

    def unwrap(self) -> NoReturn:
        """Raise the last error."""
        raise self.error


RetryResult = Succeeded[T] | Failed
"""What :func:`call_with_retries` returns."""


async def call_with_retries(
    operation: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    sleep: Sleep,
    rng: UniformSource,
    on_retry: Callable[[int, ProactiveError, float], None] | None = None,
) -> Succeeded[T] | Failed:
    """Call ``operation`` until it succeeds, fails permanently, or runs out of attempts.

    Args:
        operation: makes one attempt; called afresh each time (build request bodies inside it or before).
        policy: attempts and delays.
        sleep: awaited with each delay.
        rng: jitter source.
        on_retry: told ``(attempt_that_failed, error, delay)`` before each sleep, e.g. to count retries.

    Returns:
        :class:`Succeeded` with the value, or :class:`Failed` with the last ``ProactiveError``.
        Exceptions that are not ``ProactiveError`` (bugs, cancellation) propagate.
    """
    failures: list[ProactiveError] = []
    delays: list[float] = []
    attempt = 0
    while True:
        attempt += 1
        try:
            value = await operation()
        except ProactiveError as error:
            failures.append(error)
            delay = backoff_delay(policy, attempt - 1, error, rng) if attempt < policy.max_attempts else None
            if delay is None:
                return Failed(error, attempt, tuple(failures), tuple(delays))
            if on_retry is not None:
                on_retry(attempt, error, delay)
            delays.append(delay)
            await sleep(delay)
        else:
            return Succeeded(value, attempt, tuple(failures), tuple(delays))


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number (may be fractional) or an HTTP date.

    Args:
        value: the header, or ``None``.
        now: epoch seconds, to turn a date into a delay.

    Returns:
        Seconds (0 for a date in the past), or ``None`` when there is no usable header.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:  # "-0000" parses naive; HTTP dates are always GMT
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
