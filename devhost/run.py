"""``python -m devhost run`` (Azurite + emulators + host) and ``python -m devhost azurite``.

``run --latency azure`` (or ``DEVHOST_LATENCY=azure``) passes one resolved profile and seed to the host
(which delays work items and puts its storage proxy in front of Azurite) and to the Teams emulator (which
delays every Bot Connector answer); see :mod:`devhost.latency`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from devhost import azurite
from devhost.latency import add_arguments as add_latency_arguments
from devhost.latency import from_args as latency_from_args
from devhost.seed import SEED_TENANT
from devhost.settings import HostSettings
from devhost.stack import start_stack

# Fixed for local runs so the README's commands work as written; never used outside devhost.
DEV_FUNCTION_KEY: Final = "local-dev-key"
TEAMS_PORT: Final = 7072
GRAPH_PORT: Final = 7073


def azurite_main(argv: list[str]) -> int:
    """Run Azurite in memory until Ctrl-C / SIGTERM, printing its connection string."""
    instance = azurite.start()
    print(f"Azurite running; AzureWebJobsStorage={instance.connection_string}", flush=True)
    _wait_for_signal()
    instance.stop()
    return 0


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # Wait in short slices: the main thread must get back to the interpreter for the handler to run.
    while not stop.wait(0.5):
        pass


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options of ``run``."""
    parser = argparse.ArgumentParser(prog="python -m devhost run", description=__doc__)
    parser.add_argument("--port", type=int, default=7071, help="the host's port (default 7071)")
    parser.add_argument(
        "--teams-port", type=int, default=TEAMS_PORT, help=f"the Teams emulator's port (default {TEAMS_PORT})"
    )
    parser.add_argument(
        "--graph-port", type=int, default=GRAPH_PORT, help=f"the Graph emulator's port (default {GRAPH_PORT})"
    )
    add_latency_arguments(parser)
    return parser.parse_args(argv)


def function_key(environ: Mapping[str, str], app_dir: Path) -> str:
    """The key for local runs: ``DEVHOST_FUNCTION_KEY`` (environment or ``local.settings.json``), else the fixed
    development key :data:`DEV_FUNCTION_KEY`, so the README's examples work as written. Development only: a
    deployed app's keys are Azure's."""
    return HostSettings.load(app_dir, environ).function_key or DEV_FUNCTION_KEY


def _python() -> str:
    """This interpreter as the user can type it (``.venv/bin/python`` under ``make run``)."""
    try:
        return str(Path(sys.executable).relative_to(Path.cwd()))
    except ValueError:
        return sys.executable


def next_steps(
    host_url: str, teams_url: str, key: str, graph_url: str = f"http://127.0.0.1:{GRAPH_PORT}"
) -> str:
    """What to type next: capture a test user, broadcast to them, see it arrive (printed by ``run``)."""
    return f"""
Try it (in another terminal):
  {_python()} -m devhost seed --users 5 --host {host_url} --teams-url {teams_url}
  curl -si -X POST "{host_url}/api/broadcasts?code={key}" -H 'content-type: application/json' \\
    -d '{{"audience": {{"tenants": ["{SEED_TENANT}"]}}, "message": {{"text": "Hello from make run"}}}}'
  open {teams_url}/_emulator/ to see what each conversation received
Users who never talked to the bot (known only to Graph; add "includeUninstalled": true to the audience):
  {_python()} -m devhost seed --users 0 --uninstalled 3 --graph-url {graph_url}
"""


def main(argv: list[str]) -> int:
    """Start Azurite (default ports), the Teams and Graph emulators and the host; stop all on a signal."""
    options = parse_args(argv)
    profile = latency_from_args(options, os.environ)
    key = function_key(os.environ, Path.cwd())
    stack = start_stack(
        profile,
        host_port=options.port,
        teams_port=options.teams_port,
        graph_port=options.graph_port,
        azurite_ports=(10000, 10001, 10002),
        function_key=key,
        graph_tenants=(
            SEED_TENANT,
        ),  # so `seed --uninstalled` and includeUninstalled work as the README says
    )
    try:
        print(f"Azurite: {stack.storage}", flush=True)
        print(f"emulate-teams: {stack.teams_url}/  (conversations: {stack.teams_url}/_emulator/)", flush=True)
        print(f"emulate-graph: {stack.graph_url}/", flush=True)
        seed = f", seed {profile.seed}" if profile.enabled else ""
        print(f"host: {stack.host_url}/api/ (latency profile {profile.name}{seed})", flush=True)
        stack.wait_ready()
        print(f"function key (development only; set DEVHOST_FUNCTION_KEY to change it): {key}", flush=True)
        print(next_steps(stack.host_url, stack.teams_url, key, stack.graph_url), flush=True)
        _wait_for_signal()
    finally:
        stack.stop()
    return 0
