"""Concurrent installs of one tenant share one limiter grant, slot by slot (proactive.install.graph_pacing)."""

from __future__ import annotations

import asyncio

import pytest

from proactive.errors import TransportFailure
from proactive.install.graph_pacing import CoalescingAdmissions
from proactive.limiter import Grant


def grant(tokens: int, not_before: float = 100.0, pace: float = 0.1) -> Grant:
    return Grant(
        tokens=tokens,
        not_before=not_before,
        granted_at=99.0,
        reason="granted" if tokens else "breaker_open",
        rate=10.0,
        pace_seconds=pace,
        send_by=not_before + tokens * pace,
        slack_seconds=0.005,
    )


class FakeLimiter:
    """Answers acquire with the next scripted grant (capped at what was wanted) and records the wants."""

    def __init__(self, *grants: Grant) -> None:
        self.grants = list(grants)
        self.wants: list[tuple[str, int]] = []

    async def acquire(self, tenant_id: str, want: int) -> Grant:
        self.wants.append((tenant_id, want))
        await asyncio.sleep(0.01)
        scripted = self.grants.pop(0)
        return scripted.model_copy(update={"tokens": min(scripted.tokens, want)})


async def test_concurrent_admissions_of_a_tenant_share_one_grant_in_slot_order() -> None:
    limiter = FakeLimiter(grant(10))
    admissions = CoalescingAdmissions()

    got = await asyncio.gather(*(admissions.admit("t1", limiter.acquire) for _ in range(5)))

    assert limiter.wants == [("t1", 5)]
    assert [a.not_before for a in got] == pytest.approx([100.0, 100.1, 100.2, 100.3, 100.4])
    assert all(a.tokens == 1 and a.granted_at == 99.0 for a in got)


async def test_callers_beyond_the_grant_wait_for_the_next_one_and_tenants_stay_apart() -> None:
    limiter = FakeLimiter(grant(2), grant(5, not_before=200.0), grant(5, not_before=300.0))
    admissions = CoalescingAdmissions()

    got = await asyncio.gather(
        *(admissions.admit("t1", limiter.acquire) for _ in range(3)), admissions.admit("t2", limiter.acquire)
    )

    assert sorted(limiter.wants) == [("t1", 1), ("t1", 3), ("t2", 1)]
    first_grant = sorted(a.not_before for a in got[:3])
    assert first_grant[:2] == pytest.approx([100.0, 100.1]) and first_grant[2] >= 200.0


async def test_a_closed_limiter_answers_every_waiting_caller_with_no_tokens() -> None:
    limiter = FakeLimiter(grant(0, not_before=150.0))
    admissions = CoalescingAdmissions()

    got = await asyncio.gather(*(admissions.admit("t1", limiter.acquire) for _ in range(3)))

    assert [(a.tokens, a.not_before) for a in got] == [(0, 150.0)] * 3


async def test_a_failed_acquire_reaches_every_caller_of_that_grant_and_the_next_caller_asks_again() -> None:
    admissions = CoalescingAdmissions()

    async def failing(tenant_id: str, want: int) -> Grant:
        raise TransportFailure("admission timed out")

    results = await asyncio.gather(
        *(admissions.admit("t1", failing) for _ in range(2)), return_exceptions=True
    )
    assert all(isinstance(r, TransportFailure) for r in results)

    later = await admissions.admit("t1", FakeLimiter(grant(1)).acquire)
    assert later.tokens == 1
