"""CSV exports (deliveries, dead letters, reports): RFC 4180 text that a spreadsheet never runs as a formula."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

__all__ = ["csv_text"]

# A cell starting with one of these is a formula to Excel and Sheets (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """``header`` and ``rows`` as CSV with CRLF line ends; ``None`` is an empty cell.

    Cells carry remote services' error text and user-chosen ids: one that starts like a formula gets a
    leading ``'``, so opening the export never runs it.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    return out.getvalue()


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text
