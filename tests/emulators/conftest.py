"""Fixtures shared by the emulator tests: servers started in-process on a free 127.0.0.1 port."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web


class FakeClock:
    """A monotonic clock the test moves by hand, so rate windows are checked exactly without sleeping."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        runners.append(runner)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock)
        await site.start()
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"

    yield serve
    for runner in reversed(runners):
        await runner.cleanup()
