"""Benchmark: history per orchestration execution versus audience size (devhost counters, no timing claims).

``python -m bench.broadcast_history --recipients 100000`` runs one ``tenants`` broadcast of that many
references through the real replay engine (devhost in-memory runtime, manual clock jumping from timer to
timer, in-memory tables, the contract stand-in sender of the orchestration tests) and prints the devhost
counters: the largest history any execution of ``broadcast`` / ``tenant_broadcast`` replayed, episodes,
continue-as-new count, activity invocations. The claim under test is that the largest history per
execution stays flat as the audience grows; wall time is printed for information only (the in-memory
table fake scans every row per query, so it grows faster than the product would).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from devhost.durable import DurableRuntime, FunctionIndex, ManualClock, MemoryStore
from proactive import composition
from proactive.composition import Services
from tests.unit.test_orchestration_harness import (
    START,
    TENANTS,
    FakeSender,
    Harness,
    MaxHistory,
    MemoryTables,
    RuntimeOrchestrations,
    body,
    make_app,
    make_settings,
)


async def run(recipients: int) -> dict[str, Any]:
    """Run one broadcast of ``recipients`` and return the counters."""
    services = Services(make_settings())
    services._tables = MemoryTables()  # type: ignore[assignment]
    sender = FakeSender(services)
    services._send_batch_json = sender
    composition._services = services
    clock = ManualClock(START)
    composition.utc_now = clock.now  # type: ignore[assignment]
    runtime = DurableRuntime(FunctionIndex.from_app(make_app()), MemoryStore(), clock=clock)
    history = MaxHistory()
    runtime.stats.history_events_by_instance = history
    started = time.monotonic()
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
        "virtualSeconds": (clock.now() - START).total_seconds(),
        "wallSeconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str]) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    for recipients in parser.parse_args(argv).recipients:
        print(json.dumps(asyncio.run(run(recipients))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
