"""The Durable extension's HTTP API (``/runtime/webhooks/durabletask/...``) and the client binding JSON.

``DurableOrchestrationClient`` talks HTTP to ``rpcBaseUrl``; the status URLs it hands out point at
``baseUrl``. Both are served here, so starters, ``create_check_status_response`` and Logic-Apps style
polling (202 + ``Location`` while running, 200 with the output when done) work against the devhost.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any
from urllib.parse import quote

from aiohttp import web

from devhost.durable.engine import (
    DurableRuntime,
    InstanceExists,
    InstanceGone,
    InstanceNotFound,
    UnknownFunction,
)
from devhost.durable.store import InstanceRecord

WEBHOOK_PREFIX = "/runtime/webhooks/durabletask"
RPC_PREFIX = "/durabletask"  # like the extension's local-only rpcBaseUrl path


def client_binding(runtime: DurableRuntime, origin: str, key: str | None) -> dict[str, Any]:
    """The JSON the host passes to a ``durableClient`` binding.

    Args:
        runtime: the durable runtime (for the task hub name).
        origin: ``http://127.0.0.1:<port>``.
        key: the function key to put in management URLs (``code=``), or None.
    """
    base = f"{origin}{WEBHOOK_PREFIX}"
    hub = runtime.task_hub
    query = f"taskHub={hub}&connection=Storage" + (f"&code={quote(key)}" if key else "")
    instance = f"{base}/instances/INSTANCEID"
    return {
        "taskHubName": hub,
        "creationUrls": {
            "createNewInstancePostUri": f"{base}/orchestrators/{{functionName}}[/{{instanceId}}]?{query}",
            "createAndWaitOnNewInstancePostUri": (
                f"{base}/orchestrators/{{functionName}}[/{{instanceId}}]?timeout={{timeoutInSeconds}}"
                f"&pollingInterval={{intervalInSeconds}}&{query}"
            ),
        },
        "managementUrls": {
            "id": "INSTANCEID",
            "statusQueryGetUri": f"{instance}?{query}",
            "sendEventPostUri": f"{instance}/raiseEvent/{{eventName}}?{query}",
            "terminatePostUri": f"{instance}/terminate?reason={{text}}&{query}",
            "rewindPostUri": f"{instance}/rewind?reason={{text}}&{query}",
            "purgeHistoryDeleteUri": f"{instance}?{query}",
            "restartPostUri": f"{instance}/restart?{query}",
            "suspendPostUri": f"{instance}/suspend?reason={{text}}&{query}",
            "resumePostUri": f"{instance}/resume?reason={{text}}&{query}",
        },
        "baseUrl": base,
        "requiredQueryStringParameters": f"code={quote(key)}" if key else "",
        "rpcBaseUrl": f"{origin}{RPC_PREFIX}/",
    }


def status_payload(record: InstanceRecord, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The status JSON of ``GET instances/{id}``."""
    payload: dict[str, Any] = {
        "name": record.name,
        "instanceId": record.instance_id,
        "runtimeStatus": record.status,
        "input": json.loads(record.input) if record.input else None,
        "customStatus": json.loads(record.custom_status) if record.custom_status else None,
        "output": json.loads(record.output) if record.output else None,
        "createdTime": record.created_time,
        "lastUpdatedTime": record.last_updated_time,
    }
    if history is not None:
        payload["historyEvents"] = history
    return payload


class WebhookApi:
    """aiohttp handlers for the instance and entity management endpoints."""

    def __init__(self, runtime: DurableRuntime, origin: str, key: str | None, *, rpc: bool = False) -> None:
        self.runtime = runtime
        self.origin = origin
        self.key = key
        self.rpc = rpc

    async def _body_json(self, request: web.Request) -> str | None:
        """The request's JSON payload as JSON text, or None.

        The Python client serialises inputs with ``df_dumps`` and then posts that string as JSON, so
        on the RPC path the body is a JSON string holding the real JSON text.

        Raises:
            json.JSONDecodeError: the body is not JSON.
        """
        raw = await request.text()
        if not raw.strip():
            return None
        value = json.loads(raw)
        if self.rpc and isinstance(value, str):
            with contextlib.suppress(json.JSONDecodeError):
                json.loads(value)
                return value
        return json.dumps(value)

    def add_routes(self, app: web.Application, prefix: str) -> None:
        """Mount the API under ``prefix``."""
        app.router.add_post(prefix + "/orchestrators/{name}", self.start)
        app.router.add_post(prefix + "/orchestrators/{name}/{instance_id}", self.start)
        app.router.add_get(prefix + "/instances/", self.list_instances)
        app.router.add_get(prefix + "/instances", self.list_instances)
        app.router.add_get(prefix + "/instances/{instance_id}", self.status)
        app.router.add_delete(prefix + "/instances/{instance_id}", self.purge)
        app.router.add_post(prefix + "/instances/{instance_id}/raiseEvent/{event}", self.raise_event)
        app.router.add_post(prefix + "/instances/{instance_id}/terminate", self.terminate)
        app.router.add_post(prefix + "/entities/{name}/{key}", self.signal_entity)
        app.router.add_get(prefix + "/entities/{name}/{key}", self.read_entity)

    def management_payload(self, instance_id: str) -> dict[str, str]:
        """``id``, ``statusQueryGetUri``... for one instance."""
        urls = client_binding(self.runtime, self.origin, self.key)["managementUrls"]
        return {k: v.replace("INSTANCEID", quote(instance_id, safe="")) for k, v in urls.items()}

    async def start(self, request: web.Request) -> web.Response:
        """Start an orchestration; 202 with the management payload."""
        try:
            input_json = await self._body_json(request)
        except json.JSONDecodeError:
            return web.json_response({"ExceptionMessage": "Invalid JSON content"}, status=400)
        try:
            instance_id = await self.runtime.start_new(
                request.match_info["name"], request.match_info.get("instance_id"), input_json
            )
        except UnknownFunction as exc:
            return web.json_response({"ExceptionMessage": str(exc)}, status=400)
        except InstanceExists as exc:
            return web.json_response({"ExceptionMessage": str(exc)}, status=409)
        payload = self.management_payload(instance_id)
        return web.json_response(payload, status=202, headers={"Location": payload["statusQueryGetUri"]})

    async def status(self, request: web.Request) -> web.Response:
        """Instance status: 202 while running, 200 completed, 400 failed/terminated, 404 unknown."""
        instance_id = request.match_info["instance_id"]
        record = await self.runtime.get_instance(instance_id)
        if record is None:
            return web.json_response(None, status=404)
        show_history = request.query.get("showHistory", "").lower() == "true"
        history = await self.runtime.get_history(instance_id) if show_history else None
        payload = status_payload(record, history)
        if request.query.get("showInput", "true").lower() == "false":
            payload.pop("input")
        if record.status in {"Pending", "Running", "ContinuedAsNew"}:
            location = self.management_payload(instance_id)["statusQueryGetUri"]
            return web.json_response(payload, status=202, headers={"Location": location, "Retry-After": "1"})
        if record.status == "Completed":
            return web.json_response(payload, status=200)
        failed_500 = request.query.get("returnInternalServerErrorOnFailure", "").lower() == "true"
        return web.json_response(payload, status=500 if failed_500 and record.status == "Failed" else 400)

    async def list_instances(self, request: web.Request) -> web.Response:
        """Every instance's status (filters: ``runtimeStatus``, ``instanceIdPrefix``)."""
        wanted = {s for s in request.query.get("runtimeStatus", "").split(",") if s}
        prefix = request.query.get("instanceIdPrefix", "")
        records = [
            r
            for r in await self.runtime.list_instances()
            if (not wanted or r.status in wanted) and r.instance_id.startswith(prefix)
        ]
        return web.json_response([status_payload(r) for r in records])

    async def purge(self, request: web.Request) -> web.Response:
        """Delete an instance's history: 200 ``{"instancesDeleted": 1}`` or 404."""
        deleted = await self.runtime.purge(request.match_info["instance_id"])
        return web.json_response({"instancesDeleted": int(deleted)}, status=200 if deleted else 404)

    async def raise_event(self, request: web.Request) -> web.Response:
        """Raise an external event: 202, 404 unknown, 410 finished."""
        try:
            data = await self._body_json(request)
        except json.JSONDecodeError:
            return web.json_response(
                {"Message": "Only application/json request content is supported"}, status=400
            )
        try:
            await self.runtime.raise_event(
                request.match_info["instance_id"], request.match_info["event"], data
            )
        except InstanceNotFound:
            return web.json_response(None, status=404)
        except InstanceGone:
            return web.json_response(None, status=410)
        return web.json_response(None, status=202)

    async def terminate(self, request: web.Request) -> web.Response:
        """Terminate: 202, 404 unknown, 410 finished."""
        try:
            await self.runtime.terminate(request.match_info["instance_id"], request.query.get("reason", ""))
        except InstanceNotFound:
            return web.json_response(None, status=404)
        except InstanceGone:
            return web.json_response(None, status=410)
        return web.json_response(None, status=202)

    async def signal_entity(self, request: web.Request) -> web.Response:
        """Signal an entity operation (``?op=``): 202."""
        try:
            input_json = await self._body_json(request)
        except json.JSONDecodeError:
            return web.json_response({"Message": "Invalid JSON content"}, status=400)
        await self.runtime.signal_entity(
            request.match_info["name"], request.match_info["key"], request.query.get("op", ""), input_json
        )
        return web.json_response(None, status=202)

    async def read_entity(self, request: web.Request) -> web.Response:
        """An entity's state: 200 with the state, or 404."""
        exists, state = await self.runtime.read_entity_state(
            request.match_info["name"], request.match_info["key"]
        )
        if not exists:
            return web.json_response(None, status=404)
        return web.Response(text=state or "null", content_type="application/json")
