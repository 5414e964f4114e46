"""Per-thread windows (:mod:`proactive.limiter.threads`): the bound holds by construction, and no tighter."""

from __future__ import annotations

import random
from bisect import bisect_left, bisect_right

import pytest

from proactive.limiter.threads import (
    ARRIVAL_MARGIN_SECONDS,
    RECENT,
    THREAD_WINDOWS,
    ThreadLog,
    Window,
    next_start,
    with_start,
)

T0 = 1_800_000_000.0  # a whole hour and minute: bucket edges fall on round numbers


def most_in_any_window(starts: list[float], seconds: float) -> int:
    """The largest number of starts in any half-open window ``(t - seconds, t]``."""
    ordered = sorted(starts)
    return max(
        (bisect_right(ordered, s) - bisect_left(ordered, s - seconds, hi=n) for n, s in enumerate(ordered)),
        default=0,
    )


def greedy(demand: list[float], windows: tuple[Window, ...] = THREAD_WINDOWS) -> list[float]:
    """Start each demanded request as soon as the windows allow (in order), through the wire form."""
    log = ThreadLog()
    starts: list[float] = []
    at = demand[0]
    for wanted in demand:
        at = next_start(log, max(at, wanted), windows)
        log = ThreadLog.from_json(with_start(log, at, windows).to_json())
        starts.append(at)
    return starts


def test_a_burst_gets_the_first_window_at_once_and_waits_for_the_rest() -> None:
    starts = greedy([T0] * 12)
    assert starts[:7] == [T0] * 7
    assert starts[7] == pytest.approx(T0 + 1.0 + ARRIVAL_MARGIN_SECONDS)  # 7 per 1 s
    assert starts[8] == pytest.approx(T0 + 2.0 + ARRIVAL_MARGIN_SECONDS)  # 8 per 2 s


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_storms_never_exceed_any_window_even_with_arrivals_late_by_the_margin(seed: int) -> None:
    rng = random.Random(seed)
    demand: list[float] = []
    moment = T0
    for _ in range(2500):  # bursts and lulls over about two hours
        moment += rng.choice([0.0, 0.01, 0.3, 2.0, 20.0])
        demand.append(moment)
    starts = greedy(demand)
    # Teams sees each start up to the margin later, in any order: the bound holds for every arrival.
    arrivals = [s + rng.uniform(0, ARRIVAL_MARGIN_SECONDS) for s in starts]
    for window in THREAD_WINDOWS:
        assert most_in_any_window(arrivals, window.seconds) <= window.requests, window
    assert starts == sorted(starts) and all(s >= d for s, d in zip(starts, demand, strict=True))


def test_the_hour_window_counts_per_minute_and_frees_whole_minutes() -> None:
    # 1,800 starts, 30 a minute for an hour (within every shorter window), then one more.
    demand = [T0 + minute * 60 + n * 2.0 for minute in range(60) for n in range(30)]
    starts = greedy(demand)
    assert starts == demand  # nothing waited
    later = greedy([*demand, T0 + 3600.0])[-1]
    # The first minute's starts leave the hour once the whole minute has (as late as they could have been).
    assert later == pytest.approx(T0 + 60 + 3600 + ARRIVAL_MARGIN_SECONDS)


def test_the_log_stays_small() -> None:
    log = ThreadLog()
    for n in range(5000):
        log = with_start(log, T0 + n * 0.6)
    assert len(log.recent) <= RECENT and len(log.buckets) <= 62
    assert len(log.to_json_text()) < 4000
