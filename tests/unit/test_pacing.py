"""``SlotPacer``: requests pace apart, never early, one at a time through its gate; a late wake costs time,
not a row, and shifts the schedule instead of wasting the times of the requests behind it.

A virtual clock drives most tests: ``sleep`` moves time to the sleeper's wake-up (plus any lateness the test
injects), so every start and every delay is exact. Times are whole seconds plus binary fractions (0.25) so
float sums compare exactly. One test runs on the real event loop and wall clock.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from bisect import bisect_right

import pytest

from proactive.delivery.pacing import SlotPacer

T = 1_780_000_000.0  # epoch seconds, 2026
PACE = 0.25


class VirtualTime:
    """A clock that only moves when someone sleeps; ``late`` adds lateness to the next wake-ups."""

    def __init__(self, now: float = T) -> None:
        self.now = now
        self.delays: list[float] = []
        self.late: list[float] = []
        self.early: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        wake = self.now + seconds + (self.late.pop(0) if self.late else 0.0)
        wake -= self.early.pop(0) if self.early else 0.0
        await asyncio.sleep(0)  # let other workers run, as a real sleep would
        self.now = max(self.now, wake)


def pacer(
    time_: VirtualTime,
    *,
    not_before: float = T,
    tokens: int = 10,
    send_by: float = T + 100,
    slack: float = 0.0,
    pace: float = PACE,
) -> SlotPacer:
    return SlotPacer(
        not_before=not_before,
        pace_seconds=pace,
        tokens=tokens,
        send_by=send_by,
        slack_seconds=slack,
        clock=time_.clock,
        sleep=time_.sleep,
    )


async def test_requests_start_one_pace_apart_from_not_before() -> None:
    time_ = VirtualTime(T - 1)
    slots = pacer(time_)

    starts = [await slots.acquire() for _ in range(4)]

    assert starts == [T, T + 0.25, T + 0.5, T + 0.75]
    assert time_.delays == [1.0, 0.25, 0.25, 0.25]
    assert (slots.origin, slots.first_start, slots.last_start, slots.skipped) == (T, T, T + 0.75, 0)


async def test_a_first_request_after_not_before_becomes_the_origin_instead_of_catching_up() -> None:
    time_ = VirtualTime(T + 10)
    slots = pacer(time_, not_before=T)

    starts = [await slots.acquire() for _ in range(3)]

    assert slots.origin == T + 10
    assert starts == [T + 10, T + 10.25, T + 10.5]


async def test_a_late_wake_gives_up_its_time_but_the_request_still_starts_at_once() -> None:
    time_ = VirtualTime()
    slots = pacer(time_, slack=0.125)
    await slots.acquire()  # reserved and started at T
    time_.late.append(0.375)  # reserved T + 0.25, woken for at T + 0.625: past its slack

    start = await slots.acquire()

    # The request goes at once and the schedule shifts behind it; the lost pace is counted.
    assert start == T + 0.625 and slots.skipped == 1
    assert time_.delays == [0.25]
    assert await slots.acquire() == T + 0.875  # one pace after the shifted start


async def test_a_wake_within_the_slack_keeps_its_slot() -> None:
    time_ = VirtualTime()
    slots = pacer(time_, slack=0.125)
    await slots.acquire()
    time_.late.append(0.125)

    assert await slots.acquire() == T + 0.375
    assert slots.skipped == 0


async def test_slots_that_went_by_unclaimed_are_not_used_late_so_there_is_no_catch_up_burst() -> None:
    time_ = VirtualTime()
    slots = pacer(time_, slack=0.125)
    await slots.acquire()
    time_.now = T + 1.0625  # idle: slots 1..3 went by with nobody asking

    starts = [await slots.acquire(), await slots.acquire()]

    assert starts == [T + 1.0625, T + 1.3125]  # at once, then one pace later: no catch-up
    assert slots.skipped == 0  # nobody was late for them: they were never reserved


async def test_a_sleep_that_ends_early_is_slept_again_so_no_request_starts_before_its_slot() -> None:
    time_ = VirtualTime()
    slots = pacer(time_)
    await slots.acquire()
    time_.early.append(0.125)

    assert await slots.acquire() == T + 0.25
    assert time_.delays == [0.25, 0.125]


async def test_no_slot_is_given_beyond_the_tokens_and_then_never_again() -> None:
    time_ = VirtualTime()
    slots = pacer(time_, tokens=2)

    starts = [await slots.acquire() for _ in range(4)]

    assert starts == [T, T + 0.25, None, None]
    assert slots.exhausted and time_.now == T + 0.25


async def test_no_slot_lies_after_send_by() -> None:
    time_ = VirtualTime()
    slots = pacer(time_, send_by=T + 0.5)

    starts = [await slots.acquire() for _ in range(4)]

    assert starts == [T, T + 0.25, T + 0.5, None]


async def test_a_request_never_starts_after_send_by_even_within_its_slack() -> None:
    time_ = VirtualTime()
    slots = pacer(time_, send_by=T + 0.25, slack=0.125)
    await slots.acquire()
    time_.late.append(0.0625)  # slot 1 is at send_by; waking after it is too late whatever the slack

    assert await slots.acquire() is None
    assert slots.skipped == 1


async def test_a_batch_whose_send_by_has_passed_gets_no_slot_at_all() -> None:
    time_ = VirtualTime(T + 5)
    slots = pacer(time_, send_by=T + 1)

    assert await slots.acquire() is None
    assert (slots.first_start, slots.last_start) == (None, None)


async def test_requests_count_against_the_tokens_and_lost_time_does_not() -> None:
    time_ = VirtualTime()
    slots = pacer(time_, tokens=3, slack=0.0)
    await slots.acquire()
    time_.late.append(0.125)  # due at T + 0.25, woken at T + 0.375: it starts then

    assert await slots.acquire() == T + 0.375
    assert await slots.acquire() == T + 0.625  # the third request: lateness cost time, not a token
    assert await slots.acquire() is None
    assert slots.skipped == 1


async def test_concurrent_workers_never_share_a_slot() -> None:
    time_ = VirtualTime()
    slots = pacer(time_, tokens=6)

    starts = await asyncio.gather(*(slots.acquire() for _ in range(8)))

    assert sorted(s for s in starts if s is not None) == [T + i * PACE for i in range(6)]
    assert starts.count(None) == 2


async def test_on_the_real_event_loop_starts_keep_their_slots_and_the_window_bound() -> None:
    pace, slack, tokens = 0.01, 0.05, 40
    slots = SlotPacer(
        not_before=time.time() + 0.02,
        pace_seconds=pace,
        tokens=tokens,
        send_by=time.time() + 60,
        slack_seconds=slack,
        clock=time.time,
        sleep=asyncio.sleep,
    )

    async def worker() -> list[float]:
        mine: list[float] = []
        while (start := await slots.acquire()) is not None:
            mine.append(start)
            await asyncio.sleep(0.003)  # a request in flight
        return mine

    starts = sorted(s for mine in await asyncio.gather(*(worker() for _ in range(8))) for s in mine)

    origin = slots.origin
    assert origin is not None
    assert starts[0] >= origin
    assert starts and len(starts) <= tokens
    assert all(b - a >= pace - 1e-6 for a, b in itertools.pairwise(starts))
    window = 0.1
    most = max(bisect_right(starts, s + window) - n for n, s in enumerate(starts))
    assert most <= math.floor((window + slack) / pace) + 1


@pytest.mark.parametrize(("pace", "slack"), [(0.0, 0.0), (-1.0, 0.0), (math.inf, 0.0), (0.1, -0.1)])
def test_a_pace_that_is_not_positive_or_a_negative_slack_is_refused(pace: float, slack: float) -> None:
    time_ = VirtualTime()
    with pytest.raises(ValueError, match="seconds"):
        pacer(time_, pace=pace, slack=slack)


async def test_many_workers_woken_late_on_a_busy_loop_still_use_the_grant_instead_of_losing_their_times() -> (
    None
):
    # Every wake comes 1.5 paces late (a loaded event loop). Reservations handed out ahead would all be missed
    # and queued again behind each other until sendBy; through the gate each request starts when it wakes.
    time_ = VirtualTime()
    time_.late.extend([0.375] * 40)
    slots = pacer(time_, tokens=10, send_by=T + 10 * PACE * 2.5, slack=0.0)

    starts = await asyncio.gather(*(slots.acquire() for _ in range(16)))

    sent = sorted(s for s in starts if s is not None)
    assert len(sent) == 10  # every token used within the grant
    assert all(b - a >= PACE for a, b in itertools.pairwise(sent))
    assert sent[-1] <= T + 10 * PACE * 2.5
