"""The in-process retry policy (``proactive.delivery.retry``): exact delays with a seeded rng and a recording sleep."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proactive.delivery.retry import (
    Failed,
    RetryPolicy,
    Succeeded,
    backoff_delay,
    call_with_retries,
    parse_retry_after,
)
from proactive.errors import (
    ConcurrencyConflict,
    MessageRejected,
    OutboundHostRefused,
    ProactiveError,
    RecipientUnreachable,
    ReferenceStale,
    ServiceBusy,
    ServiceFailed,
    Throttled,
    TransportFailure,
)
from proactive.settings import Settings

SEED = 20261121


class RecordingSleep:
    """Records every delay instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def scripted(*answers: ProactiveError | str) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """An operation that raises or returns the given answers in order; also returns its call counter."""
    calls = [0]

    async def operation() -> str:
        answer = answers[min(calls[0], len(answers) - 1)]
        calls[0] += 1
        if isinstance(answer, ProactiveError):
            raise answer
        return answer

    return operation, calls


def expected_jitter(seed: int, windows: Sequence[float]) -> list[float]:
    rng = random.Random(seed)
    return [rng.random() * window for window in windows]


def busy() -> ServiceBusy:
    return ServiceBusy("503", status=503)


async def test_transient_failures_are_retried_with_full_jitter_exponential_delays() -> None:
    operation, calls = scripted(busy(), busy(), TransportFailure("reset"), "activity-1")
    sleep = RecordingSleep()
    policy = RetryPolicy(max_attempts=5, base_delay=0.5, max_delay=30.0)

    result = await call_with_retries(operation, policy=policy, sleep=sleep, rng=random.Random(SEED))

    assert isinstance(result, Succeeded)
    assert result.value == "activity-1"
    assert result.attempts == 4 == calls[0]
    assert sleep.delays == expected_jitter(SEED, [0.5, 1.0, 2.0])
    assert list(result.delays) == sleep.delays
    assert [type(e) for e in result.failures] == [ServiceBusy, ServiceBusy, TransportFailure]


async def test_the_jitter_window_stops_growing_at_the_cap() -> None:
    operation, _ = scripted(*([busy()] * 6), "ok")
    sleep = RecordingSleep()
    policy = RetryPolicy(max_attempts=7, base_delay=1.0, max_delay=5.0)

    await call_with_retries(operation, policy=policy, sleep=sleep, rng=random.Random(SEED))

    assert sleep.delays == expected_jitter(SEED, [1.0, 2.0, 4.0, 5.0, 5.0, 5.0])


async def test_retry_after_is_the_floor_of_the_delay() -> None:
    # Jitter windows 0.5 and 1.0: below Retry-After 2.5, so the wait is exactly Retry-After; then a
    # Throttled without a header falls back to plain jitter.
    operation, _ = scripted(
        Throttled("429", retry_after=2.5),
        Throttled("429", retry_after=0.25),
        Throttled("429", retry_after=None),
        "ok",
    )
    sleep = RecordingSleep()
    policy = RetryPolicy(max_attempts=5, base_delay=0.5, max_delay=30.0)

    result = await call_with_retries(operation, policy=policy, sleep=sleep, rng=random.Random(SEED))

    jitter = expected_jitter(SEED, [0.5, 1.0, 2.0])
    assert result.ok
    assert sleep.delays == [2.5, max(0.25, jitter[1]), jitter[2]]


async def test_a_retry_after_longer_than_the_in_process_limit_ends_the_call_with_throttled() -> None:
    operation, calls = scripted(Throttled("429", retry_after=120.0), "ok")
    sleep = RecordingSleep()

    result = await call_with_retries(
        operation, policy=RetryPolicy(max_attempts=5, max_retry_after=60.0), sleep=sleep, rng=random.Random(1)
    )

    assert isinstance(result, Failed)
    assert isinstance(result.error, Throttled) and result.error.retry_after == 120.0
    assert result.retryable_later
    assert calls[0] == 1 and sleep.delays == []


@pytest.mark.parametrize(
    "error",
    [
        RecipientUnreachable("403", status=403, code="MessageWritesBlocked"),
        ReferenceStale("404", status=404),
        MessageRejected("413", status=413),
        ServiceFailed("500", status=500),
        OutboundHostRefused("evil.com"),
        ConcurrencyConflict("etag"),
    ],
)
async def test_permanent_errors_are_never_retried(error: ProactiveError) -> None:
    operation, calls = scripted(error, "ok")
    sleep = RecordingSleep()

    result = await call_with_retries(operation, policy=RetryPolicy(5), sleep=sleep, rng=random.Random(1))

    assert isinstance(result, Failed)
    assert result.error is error and result.attempts == 1 == calls[0]
    assert sleep.delays == [] and not result.retryable_later


async def test_attempts_are_bounded_and_the_last_transient_error_is_returned() -> None:
    errors = [busy() for _ in range(10)]
    operation, calls = scripted(*errors)
    sleep = RecordingSleep()

    result = await call_with_retries(operation, policy=RetryPolicy(3), sleep=sleep, rng=random.Random(1))

    assert isinstance(result, Failed)
    assert result.attempts == 3 == calls[0]
    assert len(sleep.delays) == 2
    assert result.error is errors[2] and result.failures == tuple(errors[:3])
    assert result.retryable_later


async def test_one_attempt_means_no_retry() -> None:
    operation, calls = scripted(busy(), "ok")

    result = await call_with_retries(
        operation, policy=RetryPolicy(1), sleep=RecordingSleep(), rng=random.Random(1)
    )

    assert not result.ok and calls[0] == 1


async def test_unwrap_returns_the_value_or_reraises_the_error() -> None:
    error = RecipientUnreachable("blocked", status=403)
    ok_operation, _ = scripted("id-7")
    bad_operation, _ = scripted(error)
    policy = RetryPolicy(2)

    ok = await call_with_retries(ok_operation, policy=policy, sleep=RecordingSleep(), rng=random.Random(1))
    bad = await call_with_retries(bad_operation, policy=policy, sleep=RecordingSleep(), rng=random.Random(1))

    assert ok.unwrap() == "id-7"
    with pytest.raises(RecipientUnreachable) as raised:
        bad.unwrap()
    assert raised.value is error


async def test_errors_outside_the_tree_propagate() -> None:
    async def broken() -> str:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await call_with_retries(broken, policy=RetryPolicy(5), sleep=RecordingSleep(), rng=random.Random(1))


async def test_on_retry_hears_every_retry_with_its_delay() -> None:
    operation, _ = scripted(busy(), Throttled("429", retry_after=3.0), "ok")
    heard: list[tuple[int, str, float]] = []

    await call_with_retries(
        operation,
        policy=RetryPolicy(5),
        sleep=RecordingSleep(),
        rng=random.Random(SEED),
        on_retry=lambda attempt, error, delay: heard.append((attempt, type(error).__name__, delay)),
    )

    assert heard == [(1, "ServiceBusy", expected_jitter(SEED, [0.5])[0]), (2, "Throttled", 3.0)]


@given(
    retry=st.integers(min_value=0, max_value=200),
    base=st.floats(min_value=0.0, max_value=10.0),
    cap=st.floats(min_value=0.0, max_value=120.0),
    seed=st.integers(),
)
def test_jitter_stays_within_zero_and_the_capped_window(
    retry: int, base: float, cap: float, seed: int
) -> None:
    policy = RetryPolicy(max_attempts=5, base_delay=base, max_delay=cap)

    delay = backoff_delay(policy, retry, busy(), random.Random(seed))

    assert delay is not None
    assert 0.0 <= delay <= min(cap, base * 2.0 ** min(retry, 64))


def test_the_send_policy_takes_its_attempts_from_settings() -> None:
    settings = Settings.from_env(
        {
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "BOT_AUTH": "anonymous",
            "MAX_SEND_ATTEMPTS": "7",
        }
    )

    assert RetryPolicy.for_sends(settings).max_attempts == 7


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(0)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(3, base_delay=-1)


NOW = datetime(2026, 11, 21, 9, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),
        ("1.5", 1.5),
        (" 0.25 ", 0.25),
        ("0", 0.0),
        ("-4", 0.0),
        (format_datetime(datetime(2026, 11, 21, 9, 0, 30, tzinfo=UTC), usegmt=True), 30.0),
        ("Sat, 21 Nov 2026 09:00:10 -0000", 10.0),
        ("Sat, 21 Nov 2026 08:00:00 GMT", 0.0),  # in the past
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_retry_after_parses_seconds_and_http_dates(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds
