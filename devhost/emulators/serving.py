"""Serving on loopback: the emulators' commands (until SIGINT / SIGTERM) and the tests' in-process servers."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable

from aiohttp import web


async def start_on_loopback(
    app: web.Application, port: int = 0, *, shutdown_timeout: float = 2.0
) -> tuple[web.AppRunner, str]:
    """Start serving ``app`` on 127.0.0.1:``port`` (0 = any free port, bound here, so no race for it).

    Returns the runner (the caller cleans it up) and the base URL, ``http://127.0.0.1:P/``. The tests'
    in-process emulators and servers start this way too.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    await web.SockSite(runner, sock).start()
    return runner, f"http://127.0.0.1:{sock.getsockname()[1]}/"


async def serve_on_loopback(
    app: web.Application,
    port: int,
    stop: asyncio.Event,
    *,
    on_bound: Callable[[str], None] | None = None,
) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` (0 = any free port) until ``stop`` is set.

    Prints the base URL (``http://127.0.0.1:P/``) once listening, so a parent process can read it,
    and hands it to ``on_bound`` first (an emulator that builds absolute links needs its own URL).
    """
    runner, base_url = await start_on_loopback(app, port)
    if on_bound is not None:
        on_bound(base_url)
    print(base_url, flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_until_signal(
    app: web.Application, port: int, *, on_bound: Callable[[str], None] | None = None
) -> int:
    """Blocking entry point for ``python -m devhost emulate-*``: serve until SIGINT or SIGTERM."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await serve_on_loopback(app, port, stop, on_bound=on_bound)

    asyncio.run(run())
    return 0
