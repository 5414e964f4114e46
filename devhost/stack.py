"""The local stack as one object: Azurite, the Teams and Graph emulators and the host, started and stopped together.

``python -m devhost run`` (``make run``) and ``python -m devhost demo`` (``make demo``) both use it; the demo
puts every part on a free port and sends the children's output to a log file so its live view stays readable.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO

from devhost import azurite
from devhost.azurite import die_with_parent, free_port
from devhost.latency import LatencyProfile


@dataclass
class Stack:
    """A running stack: where each part listens, and the processes to stop."""

    host_url: str
    teams_url: str
    graph_url: str
    function_key: str
    storage: str
    azurite: azurite.Azurite | None
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def stop(self) -> None:
        """Stop the host, then the emulators, then Azurite (each child gets SIGTERM, then 10 s)."""
        for _, child in reversed(self.children):
            if child.poll() is None:
                child.terminate()
        for _, child in self.children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=5)
        if self.azurite is not None:
            self.azurite.stop()

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until the host answers ``/api/health`` and the Teams emulator its stats.

        Raises:
            RuntimeError: a child exited, or the stack was not ready within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        pending = {
            "host": f"{self.host_url}/api/health",
            "emulate-teams": f"{self.teams_url}/_emulator/stats?activities=0",
        }
        while pending:
            for name, child in self.children:
                if child.poll() is not None:
                    raise RuntimeError(f"{name} exited with {child.returncode} while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready within {timeout:.0f} s: {sorted(pending)}")
            for name, url in list(pending.items()):
                with (
                    contextlib.suppress(OSError, urllib.error.URLError),
                    urllib.request.urlopen(url, timeout=2) as answer,
                ):
                    if answer.status == 200:
                        del pending[name]
            time.sleep(0.2)


def start_stack(
    profile: LatencyProfile,
    *,
    host_port: int | None = None,
    teams_port: int | None = None,
    graph_port: int | None = None,
    azurite_ports: tuple[int, int, int] | None = None,
    function_key: str,
    environ: Mapping[str, str] | None = None,
    output: IO[bytes] | None = None,
    teams_args: tuple[str, ...] = (),
) -> Stack:
    """Start Azurite (in memory), both emulators and the host; ports left ``None`` are free ones.

    Args:
        profile: the latency profile every child gets (one seed for all, so a run can be repeated).
        function_key: the key the host's function-level routes require (``DEVHOST_FUNCTION_KEY``).
        environ: the children's environment (default ``os.environ``); the stack's settings go on top.
        output: where the children's stdout and stderr go (default: inherited).
        teams_args: extra command-line options of ``emulate-teams``.

    Returns:
        The running stack; call :meth:`Stack.stop` however the caller ends (children also die with this
        process, see :func:`devhost.azurite.die_with_parent`).
    """
    instance = azurite.start(ports=azurite_ports)
    port = host_port or free_port()
    teams_port, graph_port = teams_port or free_port(), graph_port or free_port()
    storage = (
        "UseDevelopmentStorage=true" if azurite_ports == (10000, 10001, 10002) else instance.connection_string
    )
    env = {**(environ if environ is not None else os.environ), "AzureWebJobsStorage": storage}
    # The emulators live on loopback and sign no tokens: the bot runs anonymous (the explicit opt-in the
    # product requires, refused in Azure) and may call loopback (allowed only with anonymous).
    env.setdefault("BOT_AUTH", "anonymous")
    env.setdefault("DEV_OUTBOUND_HOSTS", "127.0.0.1")
    env["DEVHOST_FUNCTION_KEY"] = function_key
    stack = Stack(
        host_url=f"http://127.0.0.1:{port}",
        teams_url=f"http://127.0.0.1:{teams_port}",
        graph_url=f"http://127.0.0.1:{graph_port}",
        function_key=function_key,
        storage=instance.connection_string,
        azurite=instance,
    )
    latency = ["--latency", profile.name, "--latency-seed", str(profile.seed)]
    emulators = {
        "emulate-teams": (teams_port, ["--latency", profile.name, "--seed", str(profile.seed), *teams_args]),
        # Installing the app through Graph posts installationUpdate / conversationUpdate to the bot,
        # with the Teams emulator as serviceUrl, as Teams does.
        "emulate-graph": (
            graph_port,
            ["--messaging-endpoint", f"{stack.host_url}/api/messages",
             "--teams-service-url", f"{stack.teams_url}/"],
        ),
    }  # fmt: skip
    try:
        for name, (emulator_port, extra) in emulators.items():
            child = subprocess.Popen(
                [sys.executable, "-m", "devhost", name, "--port", str(emulator_port), *extra],
                env=env,
                stdout=output,
                stderr=output,
                preexec_fn=die_with_parent,  # children never outlive their parent, even on SIGKILL
            )
            stack.children.append((name, child))
            env[f"DEVHOST_{name.upper().replace('-', '_')}_URL"] = f"http://127.0.0.1:{emulator_port}"
        # Graph installs go to the Graph emulator (its directory comes from POST /_emulator/config), and a
        # proactively installed user's messages to the Teams emulator. Anonymous bots only: with an app id
        # the authority host would also serve the bot's own token.
        env.setdefault("GRAPH_BASE_URL", f"{stack.graph_url}/v1.0")
        env.setdefault("TEAMS_SERVICE_URL", stack.teams_url)
        if not env.get("MicrosoftAppId"):
            env.setdefault("AUTHORITY_HOST", stack.graph_url)
        host = subprocess.Popen(
            [sys.executable, "-m", "devhost", "serve", "--port", str(port), *latency],
            env=env,
            stdout=output,
            stderr=output,
            preexec_fn=die_with_parent,
        )
        stack.children.append(("host", host))
    except BaseException:
        stack.stop()
        raise
    return stack
