"""Benchmark: history per orchestration execution versus audience size (devhost counters, no timing claims).

``python -m bench.broadcast_history --recipients 100000`` runs one ``tenants`` broadcast of that many
references through the real replay engine (devhost in-memory runtime, manual clock jumping from timer to
timer, in-memory tables, the contract stand-in sender of the orchestration tests) and prints the devhost
counters: the largest history any execution of ``broadcast`` / ``tenant_broadcast`` replayed, episodes,
continue-as-new count, activity invocations. The claim under test is that the largest history per
execution stays flat as the audience grows.

The parent polls progress at doubling intervals, so its history depends on how long the sends take in
virtual time. Given the manual clock, the stand-in sender takes the time a paced sender spends: one slot
per request at the grant's ``paceSeconds``, the clock moved to the batch's last slot, and
``firstSendAt`` / ``lastSendAt`` reported like ``SendBatchResult``, so the limiter chains the next grant.

Wall and CPU seconds are printed for information only: the stand-in sender counts the tenant's whole
ledger after every batch (``count_by_status``), so a run grows with the square of the audience even though
the table fake reads a page in O(page + log n).

``--latency azure`` (default ``none``; :mod:`devhost.latency`) dispatches work items and timers late as in
Azure: timers fire late in virtual time (so the parent's polls and the limiter see it), the other dispatch
delays cost wall time only (the manual clock does not move while they sleep); expect minutes for 10,000
recipients and more. The profile is recorded with each run (``latency``).

``--write`` also saves the runs to ``bench/results/broadcast_history-<date>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.send_rate import machine
from devhost.durable import DurableRuntime, FunctionIndex, ManualClock, MemoryStore
from devhost.latency import DispatchLatency, LatencyProfile
from devhost.latency import add_arguments as add_latency_arguments
from devhost.latency import from_args as latency_from_args
from proactive import composition
from proactive.adapters.memory_tables import MemoryTables
from proactive.composition import Services
from tests.support.orchestration import (
    START,
    TENANTS,
    FakeSender,
    Harness,
    MaxHistory,
    RuntimeOrchestrations,
    body,
    make_app,
    make_settings,
)

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = (
    ("recipients", "recipients"),
    ("status", "status"),
    ("largestHistoryBroadcast", "largest history, broadcast"),
    ("largestHistoryTenant", "largest history, tenant"),
    ("continueAsNew", "continue-as-new"),
    ("episodes", "episodes"),
    ("activityInvocations", "activities"),
    ("virtualSeconds", "virtual s"),
    ("wallSeconds", "wall s"),
    ("cpuSeconds", "CPU s"),
)


async def run(recipients: int, latency: LatencyProfile | None = None) -> dict[str, Any]:
    """Run one broadcast of ``recipients`` (with ``latency``'s dispatch delays) and return the counters."""
    services = Services(make_settings())
    services.use_stand_ins(tables=MemoryTables())
    clock = ManualClock(START)
    sender = FakeSender(services, clock=clock)
    services.use_stand_ins(send_batch=sender)
    composition._services = services
    composition.utc_now = clock.now  # type: ignore[attr-defined]
    dispatch = DispatchLatency(latency)
    runtime = DurableRuntime(FunctionIndex.from_app(make_app()), MemoryStore(), clock=clock, latency=dispatch)
    history = MaxHistory()
    runtime.stats.history_events_by_instance = history
    started, cpu_started = time.monotonic(), time.process_time()
    async with runtime:
        harness = Harness(runtime, clock, services, sender, RuntimeOrchestrations(runtime), history)
        await harness.seed_references(TENANTS[0], recipients)
        accepted = await harness.service.start(body(tenants=[TENANTS[0]], notification_id="bench"))
        record = await harness.run(accepted.instance_id, within=3600)
    output = json.loads(record.output or "{}")
    return {
        "recipients": recipients,
        "status": record.status,
        "sent": output.get("counts", {}).get("sent"),
        "largestHistoryBroadcast": history.largest.get("bench"),
        "largestHistoryTenant": history.largest.get(f"bench.{TENANTS[0]}"),
        "continueAsNew": runtime.stats.continue_as_new,
        "episodes": runtime.stats.episodes,
        "activityInvocations": runtime.stats.activity_invocations,
        "virtualSeconds": round((clock.now() - START).total_seconds(), 1),
        "wallSeconds": round(time.monotonic() - started, 1),
        "cpuSeconds": round(time.process_time() - cpu_started, 1),
        "latency": dispatch.profile.name,
        "dispatch": dispatch.to_json()["dispatch"],
    }


def table(runs: list[dict[str, Any]]) -> str:
    """The runs as a markdown table (the columns of bench/README.md)."""

    def cell(value: Any) -> str:
        return f"{value:,}" if isinstance(value, int) else str(value)

    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" if key == "status" else "---:" for key, _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cell(r.get(key)) for key, _ in COLUMNS) + " |" for r in runs]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Entry point: one JSON line per size, then the table; ``--write`` saves them to bench/results/."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--recipients", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument(
        "--write", action="store_true", help="also write bench/results/broadcast_history-<date>.json"
    )
    add_latency_arguments(parser)
    args = parser.parse_args(argv)
    latency = latency_from_args(args, os.environ)
    print(f"latency profile {latency.name} (seed {latency.seed})", flush=True)
    runs = []
    for recipients in args.recipients:
        runs.append(asyncio.run(run(recipients, latency)))
        print(json.dumps(runs[-1]), flush=True)
    print()
    print(table(runs))
    if args.write:
        RESULTS.mkdir(exist_ok=True)
        suffix = "" if latency.name == "none" else f"-latency-{latency.name}"
        path = RESULTS / f"broadcast_history-{datetime.now(UTC).date().isoformat()}{suffix}.json"
        document = {
            "benchmark": "broadcast_history",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "latency": latency.to_json(),
            "runs": runs,
        }
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
