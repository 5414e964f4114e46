"""``GET /api/broadcasts/{id}/report``: the per-broadcast report as JSON or CSV (function key; wiring only).

The service is :class:`~proactive.reports.BroadcastReports`.
"""

from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

from proactive.composition import services
from proactive.errors import InvalidInput
from proactive.functions.broadcasts import DurableOrchestrations
from proactive.functions.http import json_response
from proactive.reports import BroadcastReports, report_csv

bp = df.Blueprint()


@bp.function_name("broadcasts_report")
@bp.route(route="broadcasts/{id}/report", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def broadcasts_report(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    wanted = req.params.get("format") or "json"
    if wanted not in ("json", "csv"):
        error = InvalidInput("format must be json or csv", code="invalid_format", field="format")
        return json_response(error.to_body(), status=error.status)
    s = services()
    reports = BroadcastReports(
        s.notifications, s.deliveries, s.broadcasts(DurableOrchestrations(client)).status
    )
    try:
        report = await reports.report(req.route_params["id"])
    except InvalidInput as exc:
        return json_response(exc.to_body(), status=exc.status)
    if wanted == "csv":
        return func.HttpResponse(
            report_csv(report), status_code=200, mimetype="text/csv", headers={"Cache-Control": "no-store"}
        )
    return json_response(report)
