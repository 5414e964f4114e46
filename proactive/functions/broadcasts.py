"""``/api/broadcasts``: start, follow, cancel, update and recall broadcasts (function key; wiring only).

Every route calls one :class:`~proactive.broadcasts.BroadcastService` method and maps its answer; a bad
request comes back as the contract's ``{"error": {"code", "message", "details"}}`` with its status.
"""

from __future__ import annotations

from typing import Any

import azure.durable_functions as df
import azure.functions as func

from proactive.broadcasts import BroadcastService, OrchestrationState
from proactive.composition import services
from proactive.errors import InvalidInput
from proactive.functions.http import json_response

bp = df.Blueprint()

CONTINUATION_HEADER = "X-Continuation-Token"


class DurableOrchestrations:
    """The :class:`~proactive.broadcasts.Orchestrations` port over the Durable client binding."""

    def __init__(self, client: df.DurableOrchestrationClient) -> None:
        self._client = client

    async def start(self, name: str, instance_id: str, payload: dict[str, Any]) -> None:
        await self._client.start_new(name, instance_id, payload)

    async def state(self, instance_id: str) -> OrchestrationState | None:
        status = await self._client.get_status(instance_id)
        if not status or status.runtime_status is None:
            return None
        return OrchestrationState(
            runtime_status=status.runtime_status.value,
            custom_status=status.custom_status,
            output=status.output,
            created_time=status.created_time,
            last_updated_time=status.last_updated_time,
        )

    async def raise_event(self, instance_id: str, name: str, data: Any) -> bool:
        try:
            await self._client.raise_event(instance_id, name, data)
        except Exception:  # the SDK raises a bare Exception for 404 (no instance) and 410 (finished)
            return False
        return True


def _service(client: df.DurableOrchestrationClient) -> BroadcastService:
    return services().broadcasts(DurableOrchestrations(client))


def _error(exc: InvalidInput) -> func.HttpResponse:
    return json_response(exc.to_body(), status=exc.status)


def _accepted(
    client: df.DurableOrchestrationClient, req: func.HttpRequest, instance_id: str
) -> func.HttpResponse:
    # 202 + Location + the Durable status payload: what Logic Apps and Power Automate poll natively.
    response: func.HttpResponse = client.create_check_status_response(req, instance_id)
    return response


@bp.function_name("broadcasts_start")
@bp.route(route="broadcasts", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def broadcasts_start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    try:
        accepted = await _service(client).start(req.get_body())
    except InvalidInput as exc:
        return _error(exc)
    return _accepted(client, req, accepted.instance_id)


@bp.function_name("broadcasts_status")
@bp.route(route="broadcasts/{id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def broadcasts_status(
    req: func.HttpRequest, client: df.DurableOrchestrationClient
) -> func.HttpResponse:
    try:
        return json_response(await _service(client).status(req.route_params["id"]))
    except InvalidInput as exc:
        return _error(exc)


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
    try:
        return json_response(await _service(client).cancel(req.route_params["id"]), status=202)
    except InvalidInput as exc:
        return _error(exc)


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
    return _accepted(client, req, accepted.instance_id)


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
    return _accepted(client, req, accepted.instance_id)
