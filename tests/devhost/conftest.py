"""Fixtures for the devhost tests: a durable runtime on the sample app."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from devhost.durable import DurableRuntime, FunctionIndex, ManualClock
from tests.devhost.apps import sample


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves by hand."""
    return ManualClock()


@pytest.fixture
async def runtime() -> AsyncIterator[DurableRuntime]:
    """An in-memory runtime on the wall clock."""
    async with DurableRuntime(FunctionIndex.from_app(sample.app)) as rt:
        yield rt
    assert rt.errors == []


@pytest.fixture
async def manual_runtime(clock: ManualClock) -> AsyncIterator[DurableRuntime]:
    """An in-memory runtime whose timers fire only when the test advances ``clock``."""
    async with DurableRuntime(FunctionIndex.from_app(sample.app), clock=clock) as rt:
        yield rt
    assert rt.errors == []
