"""Benchmark: memory and time of the CSV exports of one broadcast against its size (issue 15).

``python -m bench.csv_export`` starts Azurite, fills the delivery ledger of one broadcast with N rows
(``--rows``, default 10,000 and 100,000: mostly ``sent`` over 40 minutes, some ``failed`` /
``unreachable`` / ``stale`` with error codes), then, for each size, starts a **separate measuring process**
that serves ``function_app`` on the devhost and reads, over real HTTP:

``deliveries``
    the whole ``GET /api/broadcasts/{id}/deliveries?format=csv&pageSize=P`` export, following
    ``X-Continuation-Token`` page after page, as a client downloading every row does;
``report``
    ``GET /api/broadcasts/{id}/report?format=csv``: one request whose handler reads the whole ledger in one
    paged pass (status counts, then rows sent per minute and failures by reason).

The client reads each body in 64 KiB chunks and only counts lines and bytes, so what grows with N is the
server side. Each export runs twice: once for time and peak RSS (``VmHWM`` reset through
``/proc/self/clear_refs`` just before, growth = peak - ``VmRSS`` before), once under ``tracemalloc`` for the
peak of Python allocations above what was allocated before. The measuring process never held the filled
rows (the parent filled them), so its RSS says what serving the export costs. Constant memory means the
10x larger broadcast does not need ~10x the memory.

``--write`` saves the runs to ``bench/results/csv_export-<date>.json`` (``--output PATH`` elsewhere).
Numbers are for information; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from bench.send_rate import machine, process_cpu_seconds
from devhost import azurite
from devhost.azurite import free_port

RESULTS = Path(__file__).resolve().parent / "results"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
NOTIFICATION = "csv-export-bench"
KEY = "bench-key"
CHUNK = 64 * 1024
STARTED = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
SEND_MINUTES = 40
# One row in 50 did not get the message, spread over a few reasons (what the report's failuresByReason groups).
FAILURES = (
    ("failed", "BadRequest", 400),
    ("unreachable", "ConversationBlockedByUser", 403),
    ("stale", "BotNotInConversationRoster", 403),
    ("failed", "ServiceUnavailable", 503),
)


def environment(connection_string: str, prefix: str) -> dict[str, str]:
    """The app settings of one run: Azurite, tables of its own."""
    return {
        "AzureWebJobsStorage": connection_string,
        "BOT_AUTH": "anonymous",
        "TENANT_ALLOW_LIST": TENANT,
        "QUEUE_INSTALLS": f"{prefix}-installs",
        "QUEUE_DELIVERIES_RETRY": f"{prefix}-retry",
        **{
            f"TABLE_{t.upper()}": f"{prefix}{t}"
            for t in ("references", "preferences", "notifications", "deliveries", "deadletters")
        },
    }


# ---------------------------------------------------------------------------------------------- fill


async def fill(environ: dict[str, str], rows: int) -> float:
    """Store the broadcast and ``rows`` ledger rows through the product's own stores; returns seconds."""
    from proactive.composition import Services
    from proactive.models import DeliveryRecord, DeliveryStatus, ErrorInfo, Notification, NotificationStatus
    from proactive.settings import Settings

    started = time.perf_counter()
    services = Services(Settings.from_env(environ))
    try:
        request = {"audience": {"tenants": [TENANT]}, "message": {"text": "Deploy 42 is live"}}
        await services.notifications.create(
            Notification(
                id=NOTIFICATION,
                request=request,
                status=NotificationStatus.COMPLETED,
                created_at=STARTED,
                updated_at=STARTED + timedelta(minutes=SEND_MINUTES),
            )
        )
        step = SEND_MINUTES * 60 / rows

        def record(n: int) -> DeliveryRecord:
            at = STARTED + timedelta(seconds=n * step)
            common: dict[str, Any] = {
                "notification_id": NOTIFICATION,
                "tenant_id": TENANT,
                "recipient_key": f"user:{uuid.UUID(int=0x70000000 + n)}",
                "attempts": 1,
                "conversation_id": f"a:conv-{n}",
                "created_at": STARTED,
                "updated_at": at,
            }
            if n % 50:
                return DeliveryRecord(status=DeliveryStatus.SENT, activity_id=f"1:{n:012d}", **common)
            status, code, http = FAILURES[(n // 50) % len(FAILURES)]
            error = ErrorInfo(code=code, message=f"The Bot Connector answered {http}", http_status=http)
            return DeliveryRecord(status=DeliveryStatus(status), last_error=error, **common)

        ledger = services.deliveries
        batch = 1000
        semaphore = asyncio.Semaphore(4)

        async def add(start: int) -> None:
            async with semaphore:
                await ledger.add_pending([record(n) for n in range(start, min(start + batch, rows))])

        await asyncio.gather(*(add(start) for start in range(0, rows, batch)))
    finally:
        await services.close()
    return time.perf_counter() - started


# ------------------------------------------------------------------------------------------- measure


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def _read(http: aiohttp.ClientSession, url: str) -> tuple[int, int, str | None]:
    """Lines (without the header) and bytes of one CSV response, read in chunks; the next page's token."""
    async with http.get(url, headers={"x-functions-key": KEY}) as response:
        assert response.status == 200, (response.status, await response.text())
        assert response.content_type == "text/csv"
        lines = size = 0
        async for chunk in response.content.iter_chunked(CHUNK):
            lines += chunk.count(b"\n")
            size += len(chunk)
        return lines - 1, size, response.headers.get("X-Continuation-Token")


async def export_deliveries(http: aiohttp.ClientSession, base: str, page_size: int) -> dict[str, Any]:
    rows = size = 0
    token: str | None = None
    seconds: list[float] = []
    while True:
        url = f"{base}/broadcasts/{NOTIFICATION}/deliveries?format=csv&pageSize={page_size}"
        if token:
            url += "&continuation=" + token
        started = time.perf_counter()
        lines, length, token = await _read(http, url)
        seconds.append(time.perf_counter() - started)
        rows, size = rows + lines, size + length
        if not token:
            # A page late in the partition against one early in it: whether a page costs more the further it is.
            first, last = seconds[: max(1, len(seconds) // 10)], seconds[-max(1, len(seconds) // 10) :]
            return {
                "rows": rows,
                "bytes": size,
                "requests": len(seconds),
                "firstTenthPageSeconds": round(sum(first) / len(first), 3),
                "lastTenthPageSeconds": round(sum(last) / len(last), 3),
            }


async def export_report(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    lines, length, _ = await _read(http, f"{base}/broadcasts/{NOTIFICATION}/report?format=csv")
    return {"csvLines": lines, "bytes": length, "requests": 1}


async def _measured(run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    gc.collect()
    before_kib = _status_kib("VmRSS")
    reset = _reset_peak_rss()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    result = await run()
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    peak_kib = _status_kib("VmHWM")
    result.update(
        seconds=round(seconds, 2),
        cpuSeconds=round(cpu_after.ru_utime + cpu_after.ru_stime - cpu.ru_utime - cpu.ru_stime, 2),
        rssBeforeMiB=round(before_kib / 1024, 1),
        rssPeakMiB=round(peak_kib / 1024, 1) if reset else None,
        rssGrowthMiB=round((peak_kib - before_kib) / 1024, 1) if reset else None,
    )
    # Again under tracemalloc: the peak of Python allocations above what was allocated at its start.
    gc.collect()
    tracemalloc.start()
    base_bytes, _ = tracemalloc.get_traced_memory()
    traced = await run()
    _, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert traced["bytes"] == result["bytes"]
    result["tracemallocPeakMiB"] = round((peak_bytes - base_bytes) / 2**20, 2)
    return result


async def measure(environ: dict[str, str], page_size: int) -> dict[str, Any]:
    """In the measuring process: serve function_app on the devhost and time both exports."""
    os.environ.update(environ)
    from devhost.host import DevHost
    from devhost.settings import HostSettings
    from proactive import composition

    app = importlib.import_module("function_app").app
    host = DevHost(app, HostSettings({"DEVHOST_FUNCTION_KEY": KEY}, {}), port=free_port())
    async with aiohttp.ClientSession() as http, host:
        base = f"{host.origin}/api"
        try:
            # Warm up (imports, storage clients, connection pools) on one small page and a 404 report.
            await _read(http, f"{base}/broadcasts/{NOTIFICATION}/deliveries?format=csv&pageSize=1")
            async with http.get(f"{base}/broadcasts/none/report", headers={"x-functions-key": KEY}) as r:
                await r.read()
            deliveries = await _measured(lambda: export_deliveries(http, base, page_size))
            report = await _measured(lambda: export_report(http, base))
        finally:
            await host.runtime.idle()
            await composition.services().close()
    return {"deliveries": deliveries, "report": report}


# ---------------------------------------------------------------------------------------------- main


def run_size(connection_string: str, azurite_pid: int | None, rows: int, page_size: int) -> dict[str, Any]:
    """Fill ``rows`` ledger rows in fresh tables, then measure both exports in a fresh process."""
    prefix = "b" + uuid.uuid4().hex[:12]
    environ = environment(connection_string, prefix)
    print(f"{rows:>7,} rows: filling the ledger ...", flush=True)
    fill_seconds = asyncio.run(fill(environ, rows))
    print(f"{rows:>7,} rows: filled in {fill_seconds:.1f} s; measuring in a fresh process ...", flush=True)
    azurite_cpu = process_cpu_seconds(azurite_pid) if azurite_pid else 0.0
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.csv_export",
            "--measure",
            json.dumps(environ),
            "--page-size",
            str(page_size),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if done.returncode:
        raise RuntimeError(f"measuring process failed:\n{done.stderr[-4000:]}")
    azurite_cpu = (process_cpu_seconds(azurite_pid) if azurite_pid else 0.0) - azurite_cpu
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    # Both exports, each run twice (the second time under tracemalloc), and the warm-up.
    if azurite_pid:
        measured["azuriteCpuSecondsAllPasses"] = round(azurite_cpu, 1)
    deliveries = measured["deliveries"]
    assert deliveries["rows"] == rows, (deliveries["rows"], rows)
    return {"rows": rows, "pageSize": page_size, "fillSeconds": round(fill_seconds, 1), **measured}


def table(runs: list[dict[str, Any]]) -> str:
    header = (
        "| rows | export | requests | MiB out | s | rows/s | CPU s | page s, first / last tenth"
        " | RSS growth MiB | tracemalloc peak MiB |\n"
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [header]
    for run in runs:
        for name in ("deliveries", "report"):
            part = run[name]
            rate = f"{run['rows'] / part['seconds']:,.0f}" if part["seconds"] else "-"
            pages = (
                f"{part['firstTenthPageSeconds']} / {part['lastTenthPageSeconds']}"
                if "firstTenthPageSeconds" in part
                else "-"
            )
            growth = part["rssGrowthMiB"] if part["rssGrowthMiB"] is not None else "-"
            lines.append(
                f"| {run['rows']:,} | {name} | {part['requests']} | {part['bytes'] / 2**20:.1f} | "
                f"{part['seconds']:.1f} | {rate} | {part['cpuSeconds']:.1f} | {pages} | {growth} | "
                f"{part['tracemallocPeakMiB']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(
        "--page-size", type=int, default=1000, help="pageSize of the deliveries export (max 1000)"
    )
    parser.add_argument("--write", action="store_true", help="save to bench/results/csv_export-<date>.json")
    parser.add_argument("--output", type=Path, help="save to this path instead")
    parser.add_argument(
        "--measure", help=argparse.SUPPRESS
    )  # the measuring process: its environment, as JSON
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(asyncio.run(measure(json.loads(args.measure), args.page_size))))
        return 0
    load_before, started = os.getloadavg(), time.monotonic()
    with azurite.running() as instance:
        runs = [
            run_size(instance.connection_string, instance.process.pid, rows, args.page_size)
            for rows in args.rows
        ]
    print(table(runs))
    document = {
        "benchmark": "csv_export",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.csv_export", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "loadAverage": {"start": list(load_before), "end": list(os.getloadavg())},
        "wallSeconds": round(time.monotonic() - started, 1),
        "runs": runs,
    }
    if args.write or args.output:
        path = args.output or RESULTS / f"csv_export-{datetime.now(UTC):%Y-%m-%d}.json"
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
