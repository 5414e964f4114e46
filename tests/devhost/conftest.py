"""Fixtures for the devhost tests: a durable runtime on the sample app, on each durable store."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from devhost.durable import DurableRuntime, DurableStore, FunctionIndex, ManualClock, MemoryStore
from devhost.durable.azurite_store import AzuriteStore
from tests.devhost.apps import sample

StoreFactory = Callable[[], DurableStore]


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves by hand."""
    return ManualClock()


@pytest.fixture(params=["memory", pytest.param("azurite", marks=pytest.mark.azurite)])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """Build stores of one kind: in memory, or on the session's Azurite under a task hub of this test.

    Every store a test builds shares the test's task hub, so a second runtime sees the first one's state.
    """
    if request.param == "memory":
        shared = MemoryStore()
        return lambda: shared
    connection = request.getfixturevalue("storage_connection_string")
    hub = "Hub" + uuid.uuid4().hex[:12]
    return lambda: AzuriteStore(connection, task_hub=hub)


@pytest.fixture
async def runtime(make_store: StoreFactory) -> AsyncIterator[DurableRuntime]:
    """A runtime on the wall clock."""
    async with DurableRuntime(FunctionIndex.from_app(sample.app), make_store()) as rt:
        yield rt
    assert rt.errors == []


@pytest.fixture
async def manual_runtime(clock: ManualClock, make_store: StoreFactory) -> AsyncIterator[DurableRuntime]:
    """A runtime whose timers fire only when the test advances ``clock``."""
    async with DurableRuntime(FunctionIndex.from_app(sample.app), make_store(), clock=clock) as rt:
        yield rt
    assert rt.errors == []
