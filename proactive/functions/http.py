"""Small helpers shared by HTTP triggers."""

from __future__ import annotations

import json
import logging
from typing import Any

import azure.functions as func

logger = logging.getLogger(__name__)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    """A JSON response with the right content type and no caching of management data."""
    return func.HttpResponse(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        mimetype="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


# How long a caller waits before trying again after a storage failure (the platform's own blips last seconds).
STORAGE_RETRY_AFTER_SECONDS = 5


def storage_unavailable(error: Exception) -> func.HttpResponse:
    """``503`` with ``Retry-After`` for a storage failure: the request can succeed later, it is not a bug (a
    ``500`` would make Logic Apps and Power Automate stop instead of retrying). The failure is logged."""
    logger.warning("Storage failed while answering a request: %s: %s", type(error).__name__, error)
    body = {"error": {"code": "storage_unavailable", "message": "storage is unavailable; retry later"}}
    return json_response(body, status=503, headers={"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)})


# A paged CSV answer carries the next page's token in this header (the CSV body has no room for it).
CONTINUATION_HEADER = "X-Continuation-Token"
