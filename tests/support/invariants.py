"""Invariants a finished broadcast must satisfy, asserted after fault tests (issue 15)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proactive.models import DeliveryStatus

# Where a recipient of a finished broadcast can end: every status but the three that are still on their way.
SETTLED = tuple(s.value for s in DeliveryStatus if s.terminal)
UNSETTLED = tuple(s.value for s in DeliveryStatus if not s.terminal)


def assert_settled(status: Mapping[str, Any]) -> None:
    """``total = sent + failed + suppressed + skipped + unreachable + stale + dead_lettered + cancelled`` (a row
    still ``installing`` is unsettled: the install ends it in one of these) and
    nothing ``pending``, ``sending`` or ``deferred``, and the broadcast is no longer running."""
    counts = status["counts"]
    assert counts["total"] == sum(counts.get(name, 0) for name in SETTLED), counts
    assert all(counts.get(name, 0) == 0 for name in UNSETTLED), counts
    assert status["status"] != "running" and status.get("runtimeStatus") not in ("Running", "Pending"), status
