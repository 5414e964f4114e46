"""``python -m devhost run`` (Azurite + emulators + host) and ``python -m devhost azurite``.

``run --latency azure`` (or ``DEVHOST_LATENCY=azure``) passes one resolved profile and seed to the host
(which delays work items and puts its storage proxy in front of Azurite) and to the Teams emulator (which
delays every Bot Connector answer); see :mod:`devhost.latency`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading

from devhost import azurite
from devhost.azurite import die_with_parent, free_port
from devhost.latency import add_arguments as add_latency_arguments
from devhost.latency import from_args as latency_from_args


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
    add_latency_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Start Azurite (default ports), the Teams and Graph emulators and the host; stop all on a signal."""
    options = parse_args(argv)
    port = options.port
    profile = latency_from_args(options, os.environ)
    # One profile and seed for every child, so a run can be repeated with --latency-seed.
    latency = ["--latency", profile.name, "--latency-seed", str(profile.seed)]
    instance = azurite.start(ports=(10000, 10001, 10002))
    env = {**os.environ, "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    print(f"Azurite: {instance.connection_string}", flush=True)
    # The emulators live on loopback and sign no tokens: the bot runs anonymous (the explicit opt-in the
    # product requires, refused in Azure) and may call loopback (allowed only with anonymous).
    env.setdefault("BOT_AUTH", "anonymous")
    env.setdefault("DEV_OUTBOUND_HOSTS", "127.0.0.1")
    teams_port, graph_port = free_port(), free_port()
    emulators = {
        "emulate-teams": (teams_port, ["--latency", profile.name, "--seed", str(profile.seed)]),
        # Installing the app through Graph posts installationUpdate / conversationUpdate to the bot,
        # with the Teams emulator as serviceUrl, as Teams does.
        "emulate-graph": (
            graph_port,
            ["--messaging-endpoint", f"http://127.0.0.1:{port}/api/messages",
             "--teams-service-url", f"http://127.0.0.1:{teams_port}/"],
        ),
    }  # fmt: skip
    for name, (emulator_port, extra) in emulators.items():
        child = subprocess.Popen(
            [sys.executable, "-m", "devhost", name, "--port", str(emulator_port), *extra],
            env=env,
            preexec_fn=die_with_parent,  # children never outlive `devhost run`, even on SIGKILL
        )
        children.append((name, child))
        env[f"DEVHOST_{name.upper().replace('-', '_')}_URL"] = f"http://127.0.0.1:{emulator_port}"
        print(f"{name}: http://127.0.0.1:{emulator_port}/", flush=True)
    # Graph installs go to the Graph emulator (its directory comes from POST /_emulator/config), and a
    # proactively installed user's messages to the Teams emulator. Anonymous bots only: with an app id the
    # authority host would also serve the bot's own token.
    env.setdefault("GRAPH_BASE_URL", env["DEVHOST_EMULATE_GRAPH_URL"] + "/v1.0")
    env.setdefault("TEAMS_SERVICE_URL", env["DEVHOST_EMULATE_TEAMS_URL"])
    if not env.get("MicrosoftAppId"):
        env.setdefault("AUTHORITY_HOST", env["DEVHOST_EMULATE_GRAPH_URL"])
    # Durable state goes to this Azurite (in memory: it lasts as long as `devhost run`, and survives a
    # restart of the host alone).
    host = subprocess.Popen(
        [sys.executable, "-m", "devhost", "serve", "--port", str(port), *latency],
        env=env,
        preexec_fn=die_with_parent,
    )
    children.append(("host", host))
    seed = f", seed {profile.seed}" if profile.enabled else ""
    print(f"host: http://127.0.0.1:{port}/api/ (latency profile {profile.name}{seed})", flush=True)
    try:
        _wait_for_signal()
    finally:
        for _, child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for _, child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=10)
        instance.stop()
    return 0
