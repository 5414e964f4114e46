"""``GET /api/health``: anonymous, reports the version and whether storage is reachable."""

from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

from proactive.composition import services
from proactive.functions.http import json_response

bp = df.Blueprint()


@bp.function_name("health")
@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    report = await services().health()
    return json_response(report, status=200 if report["storage"] == "ok" else 503)
