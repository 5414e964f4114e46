"""Progress lines of running broadcasts for ``make run`` (``devhost serve``): one line per broadcast every few
seconds, and a summary line when it ends.

Read from the orchestrations' custom status, as the Azure portal shows it (no product import, no extra
storage reads): each ``tenant_lane`` publishes its tenant's cumulative batch totals (``tenantId``,
``totals``: sent, throttled, failed, ...), and a finished ``broadcast`` returns its summary (ledger
``counts`` as ``GET /api/broadcasts/{id}`` reports them, ``throttled``, ``startedAt``, ``completedAt``).
Rates are the change of ``sent`` between two looks, per tenant.

``DEVHOST_PROGRESS_SECONDS`` sets the interval (default 5; ``0`` turns the lines off).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from devhost.durable.store import ACTIVE_STATUSES, InstanceRecord

log = logging.getLogger("devhost.progress")

BROADCAST = "broadcast"
LANE = "tenant_lane"
DEFAULT_INTERVAL = 5.0
# Counts that are failures of one kind or another, in the ledger's words.
_FAILED = ("failed", "unreachable", "stale", "dead_lettered")


class Instances(Protocol):
    async def list_instances(self) -> list[InstanceRecord]: ...


@dataclass
class _Seen:
    sent: dict[str, int] = field(default_factory=dict)  # tenant -> sent at the last look
    at: float = 0.0


@dataclass
class ProgressState:
    """What the previous look saw: running broadcasts and their per-tenant ``sent``."""

    running: dict[str, _Seen] = field(default_factory=dict)


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _short(tenant: str) -> str:
    return tenant[:8]


def progress_lines(
    instances: Iterable[InstanceRecord], state: ProgressState, now: float
) -> tuple[list[str], ProgressState]:
    """The lines for this look, and the state for the next one (pure: ``now`` is monotonic seconds)."""
    records = list(instances)
    lanes = [r for r in records if r.name == LANE]
    lines: list[str] = []
    running: dict[str, _Seen] = {}
    for record in sorted((r for r in records if r.name == BROADCAST), key=lambda r: r.instance_id):
        broadcast_id = record.instance_id
        if record.status in ACTIVE_STATUSES:
            seen = state.running.get(broadcast_id)
            per_tenant = _lane_totals(broadcast_id, lanes)
            sent = {tenant: totals.get("sent", 0) for tenant, totals in per_tenant.items()}
            lines.append(_running_line(record, per_tenant, sent, seen, now))
            running[broadcast_id] = _Seen(sent=sent, at=now)
        elif broadcast_id in state.running:
            lines.append(_summary_line(record))
    return lines, ProgressState(running=running)


def _lane_totals(broadcast_id: str, lanes: Iterable[InstanceRecord]) -> dict[str, dict[str, int]]:
    """Per tenant, the totals its lanes published (a lane's totals are cumulative over its executions)."""
    found: dict[str, dict[str, int]] = {}
    for lane in lanes:
        status = _json(lane.custom_status)
        if not isinstance(status, Mapping):
            continue
        tenant, totals = status.get("tenantId"), status.get("totals")
        if not isinstance(tenant, str) or not isinstance(totals, Mapping):
            continue
        if not lane.instance_id.startswith(f"{broadcast_id}.{tenant}.lane"):
            continue
        into = found.setdefault(tenant, {})
        for key, value in totals.items():
            if isinstance(value, int):
                into[key] = into.get(key, 0) + value
    return found


def _running_line(
    record: InstanceRecord,
    per_tenant: Mapping[str, Mapping[str, int]],
    sent: Mapping[str, int],
    seen: _Seen | None,
    now: float,
) -> str:
    custom = _json(record.custom_status)
    phase = custom.get("phase", "starting") if isinstance(custom, Mapping) else "starting"
    total = sum(sent.values())
    throttled = sum(t.get("throttled", 0) for t in per_tenant.values())
    failed = sum(t.get(k, 0) for t in per_tenant.values() for k in ("failed", "unreachable", "stale"))
    queued = sum(t.get("retryQueued", 0) for t in per_tenant.values())
    parts = []
    for tenant in sorted(per_tenant):
        rate = ""
        if seen is not None and now > seen.at:
            rate = f" {(sent[tenant] - seen.sent.get(tenant, 0)) / (now - seen.at):.1f}/s"
        parts.append(f"{_short(tenant)} {sent[tenant]}{rate}")
    tenants = f" | sent per tenant: {', '.join(parts)}" if parts else ""
    return (
        f"broadcast {record.instance_id} {phase}: sent {total}, throttled {throttled}, failed {failed}, "
        f"retry-queued {queued}{tenants}"
    )


def _summary_line(record: InstanceRecord) -> str:
    output = _json(record.output)
    if not isinstance(output, Mapping):
        return f"broadcast {record.instance_id} ended: {record.status}"
    counts = output.get("counts") if isinstance(output.get("counts"), Mapping) else {}
    assert isinstance(counts, Mapping)
    sent = int(counts.get("sent", 0))
    failed = sum(int(counts.get(k, 0)) for k in _FAILED)
    elapsed = _seconds(output.get("startedAt"), output.get("completedAt"))
    timing = f" in {elapsed:.1f} s ({sent / elapsed:.1f} msg/s)" if elapsed else ""
    others = ", ".join(
        f"{key} {value}"
        for key, value in sorted(counts.items())
        if key not in {"sent", "total", *_FAILED} and isinstance(value, int) and value
    )
    return (
        f"broadcast {record.instance_id} {output.get('phase', record.status)}{timing}: "
        f"total {counts.get('total', sent)}, sent {sent}, failed {failed}, throttled {output.get('throttled', 0)}"
        + (f", {others}" if others else "")
    )


def _seconds(start: object, end: object) -> float | None:
    if not isinstance(start, str) or not isinstance(end, str):
        return None
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return None
    return seconds if seconds > 0 else None


class ProgressReporter:
    """Logs :func:`progress_lines` every ``interval`` seconds until stopped.

    Args:
        runtime: the devhost's Durable runtime (anything with ``list_instances``).
        interval: seconds between looks.
        emit: where a line goes (the ``devhost.progress`` logger by default).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        runtime: Instances,
        interval: float = DEFAULT_INTERVAL,
        *,
        emit: Callable[[str], None] = log.info,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._runtime = runtime
        self._interval = interval
        self._emit = emit
        self._clock = clock or time.monotonic
        self._task: asyncio.Task[None] | None = None
        self._state = ProgressState()

    async def look(self) -> list[str]:
        """One look: emit and return the lines."""
        lines, self._state = progress_lines(await self._runtime.list_instances(), self._state, self._clock())
        for line in lines:
            self._emit(line)
        return lines

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="devhost-progress")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.look()
            except Exception:  # progress is cosmetic: never stop the host over it
                log.exception("progress: could not read the instances")


def interval_from(values: Mapping[str, str]) -> float:
    """``DEVHOST_PROGRESS_SECONDS`` (default 5; 0 or less: off)."""
    raw = values.get("DEVHOST_PROGRESS_SECONDS", "")
    try:
        return float(raw) if raw.strip() else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL
