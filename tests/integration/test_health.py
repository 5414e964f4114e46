"""GET /api/health against real storage: version and reachability, nothing else."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import azure.functions as func
import pytest

from devhost.azurite import connection_string, free_port
from proactive import __version__, composition
from proactive.functions.health import health


@pytest.fixture
async def configured(storage_connection_string: str) -> AsyncIterator[None]:
    services = composition.configure(
        {"AzureWebJobsStorage": storage_connection_string, "BOT_AUTH": "anonymous"}
    )
    yield
    await services.tables.close()


def _request() -> func.HttpRequest:
    return func.HttpRequest(method="GET", url="http://127.0.0.1:7071/api/health", body=b"")


async def test_health_reports_version_and_reachable_storage(configured: None) -> None:
    response = await health(_request())
    assert response.status_code == 200
    assert json.loads(response.get_body()) == {"status": "ok", "version": __version__, "storage": "ok"}


async def test_health_reports_unreachable_storage_without_details() -> None:
    port = free_port()  # nothing listens there
    services = composition.configure(
        {"AzureWebJobsStorage": connection_string(port, port, port), "BOT_AUTH": "anonymous"}
    )
    try:
        response = await health(_request())
    finally:
        await services.tables.close()
    body = json.loads(response.get_body())
    assert response.status_code == 503
    assert body == {"status": "degraded", "version": __version__, "storage": "unreachable"}
