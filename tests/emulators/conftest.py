"""Fixtures shared by the emulator tests: servers started in-process on a free 127.0.0.1 port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from devhost.emulators.serving import start_on_loopback
from tests.support.clocks import FakeClock


@pytest.fixture
def fake_clock() -> FakeClock:
    """A fresh :class:`FakeClock` at t = 1000 s."""
    return FakeClock()


ServeApp = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def serve_app() -> AsyncIterator[ServeApp]:
    """Start aiohttp applications on 127.0.0.1 free ports; each call returns the base URL (with ``/``).

    Every application started is cleaned up when the test ends.
    """
    runners: list[web.AppRunner] = []

    async def serve(app: web.Application) -> str:
        runner, base_url = await start_on_loopback(app, shutdown_timeout=1.0)
        runners.append(runner)
        return base_url

    yield serve
    for runner in reversed(runners):
        await runner.cleanup()
