"""Reports (function key; wiring only): ``GET /api/broadcasts/{id}/report`` (JSON or CSV) and
``GET /api/tenants/{tenantId}/audience?kind=inactive|optedOut`` (paged, JSON or CSV).

The services are :class:`~proactive.broadcast.reports.BroadcastReports` and :class:`~proactive.broadcast.reports.TenantAudienceReport`.
"""

from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

from proactive.adapters.durable_client import DurableOrchestrations
from proactive.broadcast.reports import BroadcastReports, TenantAudienceReport, report_csv
from proactive.composition import services
from proactive.errors import InvalidInput, StorageError
from proactive.functions.http import CONTINUATION_HEADER, json_response, storage_unavailable

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
    except StorageError as exc:
        return storage_unavailable(exc)
    if wanted == "csv":
        return func.HttpResponse(
            report_csv(report), status_code=200, mimetype="text/csv", headers={"Cache-Control": "no-store"}
        )
    return json_response(report)


@bp.function_name("tenants_audience")
@bp.route(route="tenants/{tenantId}/audience", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def tenants_audience(req: func.HttpRequest) -> func.HttpResponse:
    s = services()
    report = TenantAudienceReport(
        s.tables.table(s.settings.tables.references),
        s.tables.table(s.settings.tables.preferences),
        tenant_allowed=s.settings.tenant_allowed,
    )
    try:
        page = await report.page(
            req.route_params["tenantId"],
            req.params.get("kind"),
            req.params.get("pageSize"),
            req.params.get("continuation"),
        )
    except InvalidInput as exc:
        return json_response(exc.to_body(), status=exc.status)
    except StorageError as exc:
        return storage_unavailable(exc)
    if req.params.get("format") == "csv":
        headers = {
            "Cache-Control": "no-store",
            **({CONTINUATION_HEADER: page.continuation} if page.continuation else {}),
        }
        return func.HttpResponse(page.to_csv(), status_code=200, mimetype="text/csv", headers=headers)
    return json_response(page.to_json())
