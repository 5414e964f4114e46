"""The local stack as one object: Azurite, the Teams and Graph emulators and the host, started and stopped together.

``python -m devhost run`` (``make run``) and ``python -m devhost demo`` (``make demo``) both use it; the demo
puts every part on a free port and sends the children's output to a log file so its live view stays readable.

Graph proactive installation works out of the box: the host gets ``TEAMS_APP_ID`` (:data:`DEV_TEAMS_APP_ID`
unless the environment names another app), and the Graph emulator starts with each of ``graph_tenants`` in
its directory, their app catalog listing that app. Users who never talked to the bot are added to the
directory later (:func:`with_directory_users`: ``devhost seed --uninstalled``, the demo).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from devhost import azurite
from devhost.azurite import die_with_parent, free_port
from devhost.latency import LatencyProfile

# The Teams app of local runs (its manifest id, `TEAMS_APP_ID`), listed in every tenant's app catalog of the
# Graph emulator. Without MicrosoftAppId the bot's id is this one too (proactive.composition), so the bot
# account in the references Graph installs create, and in the install events Teams then posts, is the same
# `28:` id the demo's captured activities name.
DEV_TEAMS_APP_ID: Final = "00000000-0000-0000-0000-0000000000b0"
DEV_CATALOG_ID: Final = "catalog-proactive-dev"


def catalog_entry(teams_app_id: str) -> dict[str, Any]:
    """The Graph emulator's app catalog entry (``TeamsAppConfig`` JSON) of the app ``teams_app_id``."""
    return {
        "id": DEV_CATALOG_ID,
        "externalId": teams_app_id,
        "displayName": "Proactive notifications (local)",
    }


def with_directory_users(
    config: Mapping[str, Any], tenant_id: str, users: Sequence[Mapping[str, Any]], teams_app_id: str
) -> dict[str, Any]:
    """A Graph emulator configuration (``GraphEmulatorConfig`` JSON, as ``GET /_emulator/config`` gives it)
    with ``users`` added to ``tenant_id``'s directory (the tenant and its catalog entry created if missing;
    users already there are left as they are). Post the result to ``/_emulator/config``: a full config
    replaces the running one, which forgets earlier installs (a later install answers 201, not 409)."""
    tenants = [dict(tenant) for tenant in config.get("tenants") or []]
    tenant = next((t for t in tenants if str(t.get("id", "")).lower() == tenant_id.lower()), None)
    if tenant is None:
        # The app the running emulator already lists (make run may name another TEAMS_APP_ID), else ours.
        apps = next((t["apps"] for t in tenants if t.get("apps")), [catalog_entry(teams_app_id)])
        tenant = {"id": tenant_id, "users": [], "apps": apps}
        tenants.append(tenant)
    known = {str(user.get("id")) for user in tenant.get("users") or []}
    tenant["users"] = [*(tenant.get("users") or []), *(u for u in users if str(u.get("id")) not in known)]
    if not tenant.get("apps"):
        tenant["apps"] = [catalog_entry(teams_app_id)]
    return {**config, "tenants": tenants}


@dataclass
class Stack:
    """A running stack: where each part listens, and the processes to stop."""

    host_url: str
    teams_url: str
    graph_url: str
    function_key: str
    storage: str
    azurite: azurite.Azurite | None
    teams_app_id: str = DEV_TEAMS_APP_ID
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    scratch: Path | None = None

    def graph_config(self, directory: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
        """A full Graph emulator configuration: ``directory`` (tenant id -> ``UserConfig`` JSON), each tenant's
        catalog listing the app, install events posted to this host with the Teams emulator as serviceUrl."""
        config: dict[str, Any] = {
            "messagingEndpoint": f"{self.host_url}/api/messages",
            "teamsServiceUrl": f"{self.teams_url}/",
        }
        for tenant_id, users in directory.items():
            config = with_directory_users(config, tenant_id, users, self.teams_app_id)
        return config

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
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

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
    graph_tenants: Sequence[str] = (),
) -> Stack:
    """Start Azurite (in memory), both emulators and the host; ports left ``None`` are free ones.

    Args:
        profile: the latency profile every child gets (one seed for all, so a run can be repeated).
        function_key: the key the host's function-level routes require (``DEVHOST_FUNCTION_KEY``).
        environ: the children's environment (default ``os.environ``); the stack's settings go on top.
        output: where the children's stdout and stderr go (default: inherited).
        teams_args: extra command-line options of ``emulate-teams``.
        graph_tenants: tenants the Graph emulator's directory starts with (no users; the app in their catalog).

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
    # Graph proactive installation needs the app's manifest id (the installs queue is off without it).
    env.setdefault("TEAMS_APP_ID", DEV_TEAMS_APP_ID)
    stack = Stack(
        host_url=f"http://127.0.0.1:{port}",
        teams_url=f"http://127.0.0.1:{teams_port}",
        graph_url=f"http://127.0.0.1:{graph_port}",
        function_key=function_key,
        storage=instance.connection_string,
        azurite=instance,
        teams_app_id=env["TEAMS_APP_ID"],
        scratch=(scratch := Path(tempfile.mkdtemp(prefix="devhost-stack-"))),
    )
    graph_file = scratch / "graph.json"
    graph_file.write_text(json.dumps(stack.graph_config({tenant: [] for tenant in graph_tenants})))
    latency = ["--latency", profile.name, "--latency-seed", str(profile.seed)]
    emulators = {
        "emulate-teams": (teams_port, ["--latency", profile.name, "--seed", str(profile.seed), *teams_args]),
        # Installing the app through Graph posts installationUpdate / conversationUpdate to the bot, with the
        # Teams emulator as serviceUrl, as Teams does (graph_config names both).
        "emulate-graph": (graph_port, ["--config", str(graph_file)]),
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
