"""Management routes during a storage outage: 503 with Retry-After (a caller retries), never a 500."""

from __future__ import annotations

import json

import azure.functions as func

from devhost.azurite import connection_string, free_port
from proactive import composition
from proactive.functions.broadcasts import broadcasts_deliveries, broadcasts_start, broadcasts_status
from proactive.functions.deadletters import deadletters_list
from proactive.functions.http import STORAGE_RETRY_AFTER_SECONDS

BODY = {
    "notificationId": "outage-1",
    "audience": {
        "users": [
            {
                "tenantId": "9f3c2a41-5b6e-4d7a-8c1f-2e4b6a8d0c13",
                "aadObjectId": "0c2d4e6f-1a3b-4c5d-8e9f-a1b2c3d4e5f6",
            }
        ]
    },
    "message": {"text": "hello"},
}


def _request(method: str, path: str, body: bytes = b"", **route: str) -> func.HttpRequest:
    return func.HttpRequest(
        method=method, url=f"http://127.0.0.1:7071/api/{path}", body=body, route_params=route, params={}
    )


async def test_management_routes_answer_503_with_retry_after_while_storage_is_unreachable() -> None:
    port = free_port()  # nothing listens there
    services = composition.configure(
        {"AzureWebJobsStorage": connection_string(port, port, port), "BOT_AUTH": "anonymous"}
    )
    # The durableClient binding as the host passes it, pointing at a Durable endpoint that is down too.
    dead = f"http://127.0.0.1:{free_port()}"
    client = json.dumps(
        {
            "taskHubName": "Outage",
            "creationUrls": {},
            "managementUrls": {},
            "baseUrl": f"{dead}/runtime/webhooks/durabletask",
            "requiredQueryStringParameters": "",
            "rpcBaseUrl": f"{dead}/durabletask/",
        }
    )
    calls = [
        broadcasts_start(_request("POST", "broadcasts", json.dumps(BODY).encode()), client=client),
        broadcasts_status(_request("GET", "broadcasts/outage-1", id="outage-1"), client=client),
        broadcasts_deliveries(
            _request("GET", "broadcasts/outage-1/deliveries", id="outage-1"), client=client
        ),
        deadletters_list(_request("GET", "deadletters")),
    ]
    try:
        for call in calls:
            response = await call
            assert response.status_code == 503, response.get_body()
            assert response.headers["Retry-After"] == str(STORAGE_RETRY_AFTER_SECONDS)
            assert json.loads(response.get_body())["error"]["code"] == "storage_unavailable"
    finally:
        await services.tables.close()
