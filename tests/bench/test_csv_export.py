"""The CSV-export benchmark's pipeline on a small ledger: what its columns count (no timing is checked)."""

from __future__ import annotations

import pytest

from bench.csv_export import run_size

pytestmark = pytest.mark.azurite


def test_the_benchmark_reads_every_row_once_across_pages_and_the_whole_report(
    storage_connection_string: str,
) -> None:
    run = run_size(storage_connection_string, None, rows=1_050, page_size=500)

    deliveries, report = run["deliveries"], run["report"]
    assert deliveries["rows"] == 1_050 and deliveries["requests"] == 3
    # The report: the header-less lines are the status counts, throttled, one per minute sent, one per reason.
    assert report["requests"] == 1 and report["csvLines"] > 40
    for part in (deliveries, report):
        assert part["tracemallocPeakMiB"] > 0
        assert part["rssGrowthMiB"] is None or part["rssGrowthMiB"] >= 0
