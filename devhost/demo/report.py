"""What the demo leaves behind: the delivery report, the CSV export and the delivery-rate chart.

The report is computed from the CSV the API exports (``GET /api/broadcasts/{id}/deliveries?format=csv``), so
the numbers on screen and in the file are the same rows. The chart comes from the Teams emulator's own
record (``receivedAt`` of every activity, ``throttleLog`` of every 429): what Teams saw, not what the sender
believes it did.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class DeliveryReport:
    """Rows by status, by (status, reason) and by tenant."""

    total: int
    by_status: Counter[str]
    by_reason: Counter[tuple[str, str]]
    by_tenant: dict[str, Counter[str]]

    def adds_up(self) -> bool:
        """Every row has exactly one status."""
        return sum(self.by_status.values()) == self.total == sum(self.by_reason.values())


def parse_csv(text: str) -> list[dict[str, str]]:
    """The export's rows as dicts (header names as keys)."""
    return list(csv.DictReader(io.StringIO(text)))


def delivery_report(rows: Iterable[Mapping[str, str]]) -> DeliveryReport:
    """Count the export's rows; the reason is the row's ``errorCode`` (``-`` when there is none)."""
    by_status: Counter[str] = Counter()
    by_reason: Counter[tuple[str, str]] = Counter()
    by_tenant: dict[str, Counter[str]] = {}
    total = 0
    for row in rows:
        total += 1
        status = row["status"]
        by_status[status] += 1
        by_reason[(status, row.get("errorCode") or "-")] += 1
        by_tenant.setdefault(row["tenantId"], Counter())[status] += 1
    return DeliveryReport(total, by_status, by_reason, by_tenant)


def never_talked_outcome(rows: Iterable[Mapping[str, str]], keys: Collection[str]) -> Counter[str]:
    """Statuses of the rows of ``keys`` (the users who never talked to the bot, reached through Graph)."""
    return Counter(row["status"] for row in rows if row.get("recipientKey") in keys)


def write_csv(text: str, directory: Path, notification_id: str) -> Path:
    """Write the export as the API gave it; returns the file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"deliveries-{notification_id}.csv"
    path.write_text(text, encoding="utf-8", newline="")
    return path


@dataclass(frozen=True)
class RateSeries:
    """Per tenant: messages Teams accepted per second, and when it answered 429."""

    start: float
    seconds: int
    accepted: dict[str, list[int]]
    throttled: dict[str, list[float]]


def rate_series(
    stats: Mapping[str, Any], notification_id: str, tenants: Sequence[str], *, operation: str = "send"
) -> RateSeries:
    """Bucket the emulator's activities of ``notification_id`` per tenant per second, and its 429s.

    Args:
        stats: ``GET /_emulator/stats?timeline=1``.
        notification_id: whose activities count (welcomes and replies are left out).
        tenants: the tenants to chart.
        operation: which 429s to mark (the throttle log names the operation).
    """
    times: dict[str, list[float]] = {tenant: [] for tenant in tenants}
    for conversation in (stats.get("conversations") or {}).values():
        for activity in conversation.get("activities") or []:
            if activity.get("notificationId") != notification_id or not activity.get("receivedAt"):
                continue
            # The message's own tenant: the emulator files a conversation it first saw through a reply
            # that named no tenant (a command's confirmation) under its default tenant.
            tenant = ((activity.get("channelData") or {}).get("tenant") or {}).get("id") or conversation.get(
                "tenantId"
            )
            if tenant in times:
                times[tenant].append(float(activity["receivedAt"]))
    everything = [at for values in times.values() for at in values]
    start = min(everything) if everything else 0.0
    end = max(everything) if everything else 0.0
    throttled: dict[str, list[float]] = {tenant: [] for tenant in tenants}
    for event in stats.get("throttleLog") or []:
        tenant = event.get("tenantId")
        at = float(event.get("at") or 0.0)
        if tenant in throttled and event.get("operation") == operation and start - 1 <= at <= end + 1:
            throttled[tenant].append(at - start)
    seconds = max(1, math.ceil(end - start) + 1)
    accepted = {tenant: [0] * seconds for tenant in tenants}
    for tenant, values in times.items():
        for at in values:
            accepted[tenant][min(seconds - 1, int(at - start))] += 1
    return RateSeries(start, seconds, accepted, throttled)


def write_chart(
    series: RateSeries,
    names: Mapping[str, str],
    ceilings: Mapping[str, float],
    path: Path,
    *,
    title: str = "Delivery rate per tenant",
) -> Path:
    """A PNG (matplotlib, Agg backend): messages/s per tenant, its ceiling dashed, 429s as red crosses."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = pyplot.subplots(figsize=(10, 5), dpi=100)
    try:
        x = list(range(series.seconds))
        colours = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
        for index, (tenant, counts) in enumerate(series.accepted.items()):
            colour = colours[index % len(colours)]
            label = names.get(tenant, tenant[:8])
            axes.step(x, counts, where="post", color=colour, label=f"{label} accepted/s")
            ceiling = ceilings.get(tenant)
            if ceiling:
                axes.axhline(ceiling, color=colour, linestyle="--", linewidth=1, alpha=0.7)
            marks = series.throttled.get(tenant) or []
            if marks:
                axes.plot(
                    marks,
                    [ceiling or max(counts or [0])] * len(marks),
                    "x",
                    color="red",
                    markersize=7,
                    label=f"{label} 429 ({len(marks)})",
                )
        axes.set_xlabel("seconds since the first message")
        axes.set_ylabel("messages per second (Teams emulator)")
        axes.set_title(f"{title} (dashed: the tenant's limit)")
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(loc="upper right", fontsize="small")
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        pyplot.close(figure)
    return path
