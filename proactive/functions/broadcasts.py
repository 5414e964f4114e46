"""``/api/broadcasts``: start, follow, cancel, update and recall broadcasts (function key; wiring only).

Every route calls one :class:`~proactive.broadcast.service.BroadcastService` method and maps its answer; a bad
request comes back as the contract's ``{"error": {"code", "message", "details"}}`` with its status.

Starting work (``POST``, ``PATCH``, ``DELETE .../messages``) answers ``202`` with a body of our own,
``Location: .../api/broadcasts/{id}`` and ``Retry-After``; ``GET /api/broadcasts/{id}`` keeps answering
``202`` with the same headers while anything of the broadcast runs and ``200`` once it has finished: the
asynchronous pattern Logic Apps and Power Automate follow. The Durable client's
``create_check_status_response`` is never used: in Azure its URLs carry the extension's system key, which
can terminate and purge any instance and signal the limiter entities.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit, urlunsplit

import azure.durable_functions as df
import azure.functions as func

from proactive.adapters.durable_client import DurableOrchestrations
from proactive.broadcast.service import Accepted, BroadcastService
from proactive.broadcast.status import status_finished
from proactive.composition import services
from proactive.errors import InvalidInput, StorageError
from proactive.functions.http import CONTINUATION_HEADER, json_response, storage_unavailable

bp = df.Blueprint()


def _service(client: df.DurableOrchestrationClient) -> BroadcastService:
    return services().broadcasts(DurableOrchestrations(client))


def _error(exc: InvalidInput) -> func.HttpResponse:
    return json_response(exc.to_body(), status=exc.status)


def _status_url(req: func.HttpRequest, notification_id: str, route_tail: str) -> str:
    """The absolute URL of ``GET /api/broadcasts/{id}``, built from this request's own URL.

    ``route_tail`` is what follows ``broadcasts`` in this route (``""``, ``/{id}``, ``/{id}/messages``), so
    the host and route prefix are the ones the caller used. A caller that authenticated with ``?code=``
    gets its own key back in the URL, so a client that only follows ``Location`` keeps working; a caller
    that sent ``x-functions-key`` gets a URL without a key.
    """
    parts = urlsplit(req.url)
    path = parts.path.rstrip("/")
    base = path[: len(path) - len(route_tail)] if route_tail and path.endswith(route_tail) else path
    code = req.params.get("code")
    query = urlencode({"code": code}) if code else ""
    return str(urlunsplit((parts.scheme, parts.netloc, f"{base}/{notification_id}", query, "")))


def _polling_headers(location: str) -> dict[str, str]:
    return {"Location": location, "Retry-After": str(services().settings.status_retry_after_seconds)}


def _accepted(req: func.HttpRequest, accepted: Accepted, route_tail: str) -> func.HttpResponse:
    location = _status_url(req, accepted.notification_id, route_tail)
    return json_response(accepted.to_json(location), status=202, headers=_polling_headers(location))


@bp.function_name("broadcasts_start")
@bp.route(route="broadcasts", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def broadcasts_start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    try:
        accepted = await _service(client).start(req.get_body())
    except InvalidInput as exc:
        return _error(exc)
    except StorageError as exc:
        return storage_unavailable(exc)
    return _accepted(req, accepted, "")


@bp.function_name("broadcasts_status")
@bp.route(route="broadcasts/{id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def broadcasts_status(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    notification_id = req.route_params["id"]
    try:
        body = await _service(client).status(notification_id)
    except InvalidInput as exc:
        return _error(exc)
    except StorageError as exc:
        return storage_unavailable(exc)
    if status_finished(body):
        return json_response(body)
    location = _status_url(req, notification_id, f"/{notification_id}")
    return json_response(body, status=202, headers=_polling_headers(location))


@bp.function_name("broadcasts_deliveries")
@bp.route(route="broadcasts/{id}/deliveries", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def broadcasts_deliveries(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    try:
        page = await _service(client).deliveries(
            req.route_params["id"],
            statuses=req.params.get("status"),
            page_size=req.params.get("pageSize"),
            continuation=req.params.get("continuation"),
        )
    except InvalidInput as exc:
        return _error(exc)
    except StorageError as exc:
        return storage_unavailable(exc)
    if req.params.get("format") == "csv" or "text/csv" in req.headers.get("Accept", ""):
        headers = {
            "Cache-Control": "no-store",
            **({CONTINUATION_HEADER: page.continuation} if page.continuation else {}),
        }
        return func.HttpResponse(page.to_csv(), status_code=200, mimetype="text/csv", headers=headers)
    return json_response(page.to_json())


@bp.function_name("broadcasts_cancel")
@bp.route(route="broadcasts/{id}/cancel", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def broadcasts_cancel(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    notification_id = req.route_params["id"]
    try:
        body = await _service(client).cancel(notification_id)
    except InvalidInput as exc:
        return _error(exc)
    except StorageError as exc:
        return storage_unavailable(exc)
    # Like the other 202s: the status URL, which answers 200 once the cancellation has finished.
    location = _status_url(req, notification_id, f"/{notification_id}/cancel")
    return json_response(body, status=202, headers=_polling_headers(location))


@bp.function_name("broadcasts_update")
@bp.route(route="broadcasts/{id}", methods=["PATCH"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def broadcasts_update(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    try:
        accepted = await _service(client).update(req.route_params["id"], req.get_body())
    except InvalidInput as exc:
        return _error(exc)
    except StorageError as exc:
        return storage_unavailable(exc)
    return _accepted(req, accepted, f"/{accepted.notification_id}")


@bp.function_name("broadcasts_recall")
@bp.route(route="broadcasts/{id}/messages", methods=["DELETE"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def broadcasts_recall(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    try:
        accepted = await _service(client).recall(req.route_params["id"])
    except InvalidInput as exc:
        return _error(exc)
    except StorageError as exc:
        return storage_unavailable(exc)
    return _accepted(req, accepted, f"/{accepted.notification_id}/messages")
