"""``/api/deadletters``: list dead letters and re-drive one (function key; wiring only).

``GET /api/deadletters`` (``notificationId``, ``tenantId``, ``reason``, ``from``, ``to``, ``pageSize``,
``continuation``; JSON, or CSV with ``?format=csv`` / ``Accept: text/csv``, the next page's token then in
``X-Continuation-Token``) and ``POST /api/deadletters/{id}/redrive`` (``202`` once the work is back on its
paced path). Bad input answers the contract's ``{"error": {"code", "message", "details"}}`` naming the
field; the service is :class:`~proactive.delivery.dead_letters.DeadLetterService`.
"""

from __future__ import annotations

import azure.durable_functions as df
import azure.functions as func

from proactive.composition import services
from proactive.errors import InvalidInput, StorageError
from proactive.functions.http import CONTINUATION_HEADER, json_response, storage_unavailable

bp = df.Blueprint()


@bp.function_name("deadletters_list")
@bp.route(route="deadletters", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def deadletters_list(req: func.HttpRequest) -> func.HttpResponse:
    service = services().dead_letter_service
    try:
        page = await service.list(service.parse_query(dict(req.params)))
    except InvalidInput as exc:
        return json_response(exc.to_body(), status=exc.status)
    except StorageError as exc:
        return storage_unavailable(exc)
    if req.params.get("format") == "csv" or "text/csv" in req.headers.get("Accept", ""):
        headers = {
            "Cache-Control": "no-store",
            **({CONTINUATION_HEADER: page.continuation} if page.continuation else {}),
        }
        return func.HttpResponse(page.to_csv(), status_code=200, mimetype="text/csv", headers=headers)
    return json_response(page.to_json())


@bp.function_name("deadletters_redrive")
@bp.route(route="deadletters/{id}/redrive", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def deadletters_redrive(req: func.HttpRequest) -> func.HttpResponse:
    try:
        body = await services().dead_letter_service.redrive(req.route_params["id"])
    except InvalidInput as exc:
        return json_response(exc.to_body(), status=exc.status)
    except StorageError as exc:
        return storage_unavailable(exc)
    return json_response(body, status=202)
