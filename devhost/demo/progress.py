"""Per-tenant progress of a running broadcast, read the way an operator could: the Durable HTTP API.

Each ``tenant_lane`` instance (``{notificationId}.{tenantId}[.laneN]``) keeps its running totals in its
custom status; the tenant's ``tenant_limiter`` entity state holds its ceiling, effective rate, breaker and
hold. :class:`ProgressReader` sums the lanes per tenant and keeps a short history for the current rate;
:func:`render` (``rich``) and :func:`plain_line` show it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from rich.console import Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from devhost.demo.client import LogicAppClient

WEBHOOKS = "runtime/webhooks/durabletask"
# Lane totals that end a row for good (deferred rows come back and end as one of these).
DONE_FIELDS = ("sent", "suppressed", "skipped", "unreachable", "stale", "failed")


@dataclass
class TenantProgress:
    """What the view shows for one tenant."""

    tenant_id: str
    name: str
    total: int
    totals: dict[str, int] = field(default_factory=dict)
    rate: float = 0.0
    ceiling: float | None = None
    limiter_rate: float | None = None
    breaker: str = "closed"
    holding: float = 0.0
    limiter_throttled: int = 0

    def count(self, name: str) -> int:
        return int(self.totals.get(name, 0))

    @property
    def done(self) -> int:
        return min(self.total, sum(self.count(name) for name in DONE_FIELDS))

    @property
    def waiting(self) -> int:
        """Rows deferred by quiet hours and not delivered yet (the lanes count deferrals; a deferred row
        that is later sent counts as sent, so what is still open bounds what can still wait)."""
        return max(0, min(self.count("deferred"), self.total - self.done))

    @property
    def failed(self) -> int:
        """Rows that will not be delivered for a reason other than the user's choice."""
        return self.count("failed") + self.count("unreachable") + self.count("stale") + self.count("skipped")


def _state(raw: Any) -> dict[str, Any]:
    """An entity state as stored (a JSON document, possibly itself JSON-encoded)."""
    while isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return raw if isinstance(raw, dict) else {}


class ProgressReader:
    """Polls lanes and limiter entities for one notification.

    Args:
        client: the caller (its key also opens the Durable HTTP API).
        notification_id: the broadcast.
        tenants: ``(tenantId, name, rows)`` in display order.
        clock: monotonic seconds (for the rate).
        window: seconds of history the current rate spans.
    """

    def __init__(
        self,
        client: LogicAppClient,
        notification_id: str,
        tenants: Sequence[tuple[str, str, int]],
        *,
        clock: Callable[[], float] = time.monotonic,
        window: float = 5.0,
    ) -> None:
        self._client = client
        self._id = notification_id
        self.tenants = {tid: TenantProgress(tid, name, rows) for tid, name, rows in tenants}
        self._clock = clock
        self._window = window
        self._history: dict[str, deque[tuple[float, int]]] = {tid: deque() for tid in self.tenants}
        self.status: dict[str, Any] = {}

    async def poll(self) -> dict[str, TenantProgress]:
        """Read every lane and limiter once; returns the tenants' progress (unchanged when a read fails:
        the view is cosmetic, the broadcast's own status is what the caller follows)."""
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            await self._read()
        return self.tenants

    async def _read(self) -> None:
        status, instances = await self._client.get_json(
            f"{WEBHOOKS}/instances?instanceIdPrefix={self._id}.&showInput=false"
        )
        sums: dict[str, dict[str, int]] = {tid: {} for tid in self.tenants}
        for instance in instances if status == 200 and isinstance(instances, list) else []:
            name = str(instance.get("instanceId", ""))
            if name.startswith((f"{self._id}.update", f"{self._id}.delete")):
                continue
            custom = instance.get("customStatus")
            if not isinstance(custom, dict) or custom.get("tenantId") not in sums:
                continue
            for key, value in (custom.get("totals") or {}).items():
                if isinstance(value, int):
                    sums[custom["tenantId"]][key] = sums[custom["tenantId"]].get(key, 0) + value
        now = self._clock()
        for tid, progress in self.tenants.items():
            progress.totals = sums[tid]
            history = self._history[tid]
            history.append((now, progress.count("sent")))
            while len(history) > 2 and now - history[0][0] > self._window:
                history.popleft()
            (t0, s0), (t1, s1) = history[0], history[-1]
            progress.rate = (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0
            code, raw = await self._client.get_json(f"{WEBHOOKS}/entities/tenant_limiter/{tid}")
            if code == 200:
                self._limiter(progress, _state(raw))

    @staticmethod
    def _limiter(progress: TenantProgress, state: dict[str, Any]) -> None:
        config = state.get("config") or {}
        if isinstance(config.get("rate"), int | float):
            progress.ceiling = float(config["rate"])
        if isinstance(state.get("rate"), int | float):
            progress.limiter_rate = float(state["rate"])
        breaker = state.get("breaker") or {}
        progress.breaker = str(breaker.get("phase") or "closed")
        hold = state.get("holdUntil")
        clock = state.get("clock")
        progress.holding = (
            max(0.0, float(hold) - float(clock))
            if isinstance(hold, int | float) and isinstance(clock, int | float)
            else 0.0
        )
        stats = state.get("stats") or {}
        progress.limiter_throttled = int(stats.get("throttled") or 0)


def limiter_text(progress: TenantProgress) -> str:
    """``50/50 closed`` (effective rate / ceiling in msg/s, breaker), ``hold 1.2s`` while a Retry-After holds."""
    if progress.ceiling is None:
        return "not asked yet"
    effective = progress.limiter_rate if progress.limiter_rate is not None else progress.ceiling
    text = f"{effective:.0f}/{progress.ceiling:.0f} {progress.breaker}"
    if progress.holding > 0.05:
        text += f", hold {progress.holding:.1f}s"
    return text


def render(tenants: dict[str, TenantProgress], headline: str) -> Group:
    """The live view: one row per tenant (bar, counts, rate vs ceiling, limiter), then the headline."""
    table = Table(expand=False, box=None, padding=(0, 1))
    for column in (
        "tenant",
        "progress",
        "sent",
        "429",
        "failed",
        "deferred",
        "opted out",
        "msg/s",
        "limiter",
    ):
        table.add_column(
            column, justify="right" if column not in ("tenant", "progress", "limiter") else "left"
        )
    for progress in tenants.values():
        ceiling = f"{progress.ceiling:.0f}" if progress.ceiling is not None else "?"
        table.add_row(
            progress.name,
            ProgressBar(total=max(1, progress.total), completed=progress.done, width=16),
            f"{progress.count('sent')}/{progress.total}",
            Text(str(progress.count("throttled")), style="yellow" if progress.count("throttled") else ""),
            Text(str(progress.failed), style="red" if progress.failed else ""),
            str(progress.waiting),
            str(progress.count("suppressed")),
            f"{progress.rate:5.1f}/{ceiling}",
            limiter_text(progress),
        )
    legend = "msg/s: now / ceiling; limiter: effective rate / ceiling, breaker state"
    return Group(table, Text(legend, style="dim"), Text(headline))


def plain_line(progress: TenantProgress) -> str:
    """The same facts as one line, for logs and pipes (stdout not a terminal)."""
    ceiling = f"{progress.ceiling:.0f}" if progress.ceiling is not None else "?"
    return (
        f"{progress.name}: {progress.done}/{progress.total} done, sent {progress.count('sent')}, "
        f"429 {progress.count('throttled')}, failed {progress.failed}, deferred {progress.waiting}, "
        f"opted out {progress.count('suppressed')}, rate {progress.rate:.1f}/{ceiling} msg/s, "
        f"limiter {limiter_text(progress)}"
    )
