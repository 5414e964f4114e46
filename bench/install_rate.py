"""Graph proactive installs per second per tenant against the Graph emulator's per-tenant limit (issue 14).

One tenant of ``--users`` users who never talked to the bot; ``POST /api/broadcasts`` with
``{"tenants": [...], "includeUninstalled": true}`` on the devhost (function_app, the Durable replay engine,
Azurite), the Graph emulator over HTTP with its per-tenant limits at ``--limit`` requests per second (POST
installedApps and GET installedApps each, Graph's 2026 table: 30), the product's ``GRAPH_RATE_PER_TENANT``
the same, and the Teams emulator for the sends. Every line runs in its own process (a fresh import of the
app, a fresh Azurite):

``current``
    the code of this tree.
``before`` (``--baseline REV``, default the merge base of issue 14's throughput work)
    this tree with ``proactive/`` and ``function_app.py`` taken from ``REV`` (same devhost, same emulators,
    same driver): the before number, measured in the same run.

Columns: ``rate`` = installs / (last install - first install + 1 s), so an installer that keeps exactly the
limit scores the limit (as ``bench/send_rate.py``'s rate); ``steady`` = the installs from the 10th to the
90th percentile over their time span; ``fraction`` = rate / limit; Graph calls and 429s per install;
seconds from the POST until every user has the message; duplicates and the most rows seen ``installing``.

    .venv/bin/python -m bench.install_rate                      # both lines, 300 users, writes results
    .venv/bin/python -m bench.install_rate --lines current --users 100 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TENANT = "9d9d9d9d-0000-4000-8000-0000000000b1"
MANIFEST = "22222222-3333-4444-8555-6666666666b1"
BOT = "b0b0b0b0-0000-4000-8000-0000000000b1"
KEY = "bench-key"
DEFAULT_BASELINE = "900cc99"  # main before the issue 14 throughput work


def aad(n: int) -> str:
    return f"00000000-0000-4000-9000-{n:012d}"


async def _serve(app: Any) -> tuple[Any, str]:
    from aiohttp import web

    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return runner, f"http://127.0.0.1:{sock.getsockname()[1]}/"


async def measure(users: int, limit: float, within: float) -> dict[str, Any]:
    """One line in this process: start everything, broadcast, sample, stop."""
    import aiohttp

    from devhost import azurite
    from devhost.azurite import free_port
    from devhost.emulators import graph as graph_emulator
    from devhost.emulators import teams as teams_emulator
    from devhost.emulators.graph_model import (
        GraphEmulatorConfig,
        TeamsAppConfig,
        TenantConfig,
        ThrottleConfig,
        UserConfig,
    )
    from devhost.emulators.teams_state import TeamsEmulatorConfig
    from devhost.host import DevHost
    from devhost.host.triggers import TriggerService
    from devhost.settings import HostSettings

    with azurite.running() as instance:
        port = free_port()
        teams_runner, teams = await _serve(teams_emulator.build_app(TeamsEmulatorConfig(seed=3)))
        app = TeamsAppConfig(id="catalog-notifier", external_id=MANIFEST, display_name="Notifier", bot_id=BOT)
        directory = [UserConfig(id=aad(n), display_name=f"User {n}") for n in range(users)]
        graph_app = graph_emulator.build_app(
            GraphEmulatorConfig(
                tenants=[TenantConfig(id=TENANT, users=directory, apps=[app])],
                messaging_endpoint=f"http://127.0.0.1:{port}/api/messages",
                teams_service_url=teams,
                throttle=ThrottleConfig(install_per_tenant=limit, read_per_tenant=limit),
            )
        )
        graph_runner, graph = await _serve(graph_app)
        environ = {
            "AzureWebJobsStorage": instance.connection_string,
            "BOT_AUTH": "anonymous",
            "DEV_OUTBOUND_HOSTS": "127.0.0.1",
            "TENANT_ALLOW_LIST": TENANT,
            "TEAMS_APP_ID": MANIFEST,
            "GRAPH_BASE_URL": f"{graph}v1.0",
            "AUTHORITY_HOST": graph,
            "TEAMS_SERVICE_URL": teams,
            "GRAPH_RATE_PER_TENANT": str(limit),
        }
        for name in ("MicrosoftAppId", "WEBSITE_INSTANCE_ID"):
            os.environ.pop(name, None)
        os.environ.update(environ)
        module = importlib.import_module("function_app")
        from proactive import composition
        from proactive.broadcast.status import ledger_counts

        host_json = {
            "extensions": {
                "queues": {"maxDequeueCount": 5, "visibilityTimeout": "00:00:01", "messageEncoding": "none"}
            }
        }
        settings = HostSettings({**environ, "DEVHOST_FUNCTION_KEY": KEY}, host_json)
        host = DevHost(module.app, settings, port=port)
        host.triggers = TriggerService(host, settings, poll_interval=0.1)
        service = graph_app[graph_emulator.SERVICE_KEY]
        samples: list[tuple[float, int]] = []
        nid = "install-rate"
        result: dict[str, Any] = {}
        try:
            async with aiohttp.ClientSession() as http, host:

                async def sample() -> None:
                    while True:
                        samples.append((time.monotonic(), service.stats.installs.get(TENANT, 0)))
                        await asyncio.sleep(0.05)

                sampler = asyncio.ensure_future(sample())
                started = time.monotonic()
                cpu = time.process_time()
                body = {
                    "notificationId": nid,
                    "audience": {"tenants": [TENANT], "includeUninstalled": True},
                    "message": {"text": "bench"},
                }
                async with http.post(
                    f"{host.origin}/api/broadcasts", json=body, headers={"x-functions-key": KEY}
                ) as response:
                    assert response.status == 202, await response.text()
                deliveries = composition.services().deliveries
                counts: dict[str, int] = {}
                max_installing = 0
                done_at = None
                while time.monotonic() - started < within:
                    counts = await ledger_counts(deliveries, nid, [TENANT])
                    max_installing = max(max_installing, counts.get("installing", 0))
                    if counts.get("sent", 0) >= users:
                        done_at = time.monotonic()
                        break
                    await asyncio.sleep(0.5)
                sampler.cancel()
                cpu = time.process_time() - cpu
                await host.runtime.idle()
                async with http.get(f"{teams}_emulator/stats?activities=0") as response:
                    teams_stats = await response.json()
                graph_stats = service.stats.to_json()
                calls = sum(
                    n
                    for label, by in graph_stats["requests"].items()
                    if "oauth2" not in label
                    for n in by.values()
                )
                result = _rates(samples, users)
                installs = graph_stats["installs"].get(TENANT, 0)
                result.update(
                    users=users,
                    limit=limit,
                    fraction=round(result["rate"] / limit, 3) if result.get("rate") else None,
                    installs=installs,
                    graphCalls=calls,
                    callsPerInstall=round(calls / installs, 2) if installs else None,
                    throttled=graph_stats["throttled"],
                    throttledPer1k=round(1000 * graph_stats["throttled"] / installs, 1) if installs else None,
                    allSentSeconds=round(done_at - started, 1) if done_at else None,
                    counts=counts,
                    maxInstalling=max_installing,
                    duplicates=len(teams_stats.get("duplicates", [])),
                    clientCpuSeconds=round(cpu, 1),
                    graphRequests=graph_stats["requests"],
                )
        finally:
            await composition.services().close()
            await graph_runner.cleanup()
            await teams_runner.cleanup()
        return result


def _rates(samples: list[tuple[float, int]], users: int) -> dict[str, Any]:
    def first_at(count: int) -> float | None:
        return next((t for t, n in samples if n >= count), None)

    final = samples[-1][1] if samples else 0
    start, end = first_at(1), first_at(final) if final else None
    if start is None or end is None:
        return {"rate": None, "steady": None}
    low, high = max(1, int(0.1 * final)), max(2, int(0.9 * final))
    t_low, t_high = first_at(low), first_at(high)
    steady = (high - low) / (t_high - t_low) if t_low is not None and t_high and t_high > t_low else None
    per_second: list[int] = []
    for second in range(int(end - start) + 1):
        upto = [n for t, n in samples if t <= start + second + 1.0]
        per_second.append((upto[-1] if upto else 0) - sum(per_second))
    return {
        "installsPerSecond": per_second,
        "rate": round(final / (end - start + 1.0), 2),
        "steady": round(steady, 2) if steady else None,
        "installSeconds": round(end - start, 2),
    }


def _baseline_tree(rev: str, into: Path) -> Path:
    """This tree with ``proactive/`` and ``function_app.py`` of ``rev``."""
    tree = into / "tree"
    shutil.copytree(
        ROOT,
        tree,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", "node_modules", ".venv*", "__pycache__", "*.egg-info", ".*cache"
        ),
    )
    shutil.rmtree(tree / "proactive")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "proactive", "function_app.py"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    (tree / "node_modules").symlink_to(ROOT / "node_modules")
    return tree


def _run_line(name: str, cwd: Path, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        path = Path(out.name)
    command = [
        sys.executable,
        "-m",
        "bench.install_rate",
        "--measure",
        str(path),
        "--users",
        str(args.users),
        "--limit",
        str(args.limit),
        "--within",
        str(args.within),
    ]
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    result: dict[str, Any] = json.loads(path.read_text())
    path.unlink()
    result["line"] = name
    return result


def main(argv: list[str]) -> int:
    """Run the lines, print the table, write ``bench/results/install_rate-<date>.json``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", nargs="+", default=["before", "current"], choices=["before", "current"])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--limit", type=float, default=30.0, help="the emulator's per-tenant Graph limits")
    parser.add_argument("--within", type=float, default=300.0, help="seconds a line may take")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="revision of the 'before' line")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # one line in this process
    args = parser.parse_args(argv)
    if args.measure is not None:
        result = asyncio.run(measure(args.users, args.limit, args.within))
        args.measure.write_text(json.dumps(result))
        return 0
    load_before, wall = os.getloadavg(), time.monotonic()
    revision = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for line in args.lines:
            cwd = ROOT if line == "current" else _baseline_tree(args.baseline, Path(scratch))
            results.append(_run_line(line, cwd, args))
    print(f"\n{args.users} users, one tenant, emulator limit {args.limit:g}/s per tenant (POST and GET each)")
    header = ("line", "rate/s", "steady/s", "fraction", "calls/inst", "429/1k", "all sent s", "dupes")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        row = (r["line"], r["rate"], r["steady"], r["fraction"], r["callsPerInstall"])
        row += (r["throttledPer1k"], r["allSentSeconds"], r["duplicates"])
        print("| " + " | ".join(str(v) for v in row) + " |")
    document = {
        "command": "python -m bench.install_rate " + " ".join(argv),
        "revision": revision,
        "baseline": args.baseline,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wallSeconds": round(time.monotonic() - wall, 1),
        "loadAverage": {
            "start": [round(v, 2) for v in load_before],
            "end": [round(v, 2) for v in os.getloadavg()],
        },
        "lines": results,
    }
    if not args.no_write:
        path = args.output or ROOT / "bench" / "results" / f"install_rate-{datetime.now(UTC):%Y-%m-%d}.json"
        path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
