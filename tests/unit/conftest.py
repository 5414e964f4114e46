"""Fixtures of the unit tests: the orchestration harness (:mod:`tests.support.orchestration`), and no Azurite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.orchestration import Harness, running_harness


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    """Settings the ``harness`` starts with; a module overrides this fixture to change them."""
    return {}


@pytest.fixture
async def harness(
    monkeypatch: pytest.MonkeyPatch, settings_overrides: dict[str, str]
) -> AsyncIterator[Harness]:
    """The broadcast functions on the devhost runtime, with a manual clock and :class:`FakeSender`."""
    async with running_harness(monkeypatch, settings_overrides) as running:
        yield running


@pytest.fixture(scope="session")
def storage_connection_string() -> str:
    """Unit tests run without Azurite: a test that needs storage belongs in tests/integration or tests/contract."""
    pytest.fail("a unit test asked for Azurite (storage_connection_string); move it to tests/integration")
