"""``GET /api/broadcasts/{id}/report`` on the devhost: a real broadcast (real replay engine, limiter entity) to
the Teams emulator with a blocked user, the ledger on Azurite.
"""

from __future__ import annotations

import csv
import io

import aiohttp
import pytest

from tests.integration import test_broadcast_api as broadcasts
from tests.integration.test_broadcast_api import TENANT_A, Api, broadcast

pytestmark = pytest.mark.azurite

api = broadcasts.api  # the broadcast API tests' fixture (devhost, emulator, Azurite)
emulator = broadcasts.emulator


async def test_the_report_gives_counts_sends_per_minute_failures_by_reason_as_json_and_csv(api: Api) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            api.emulator + "_emulator/faults",
            json=[{"match": {"conversation": "a:conv-3"}, "operations": ["send"], "kind": "blocked"}],
        ) as response,
    ):
        assert response.status < 300
    users = range(10)
    await api.seed(TENANT_A, users)
    response = await api.call("POST", "broadcasts", json=broadcast("report-1", users))
    assert response.status == 202
    await api.wait_done(response.headers["Location"])

    response = await api.call("GET", "broadcasts/report-1/report")
    assert response.status == 200
    report = await response.json()
    assert report["id"] == "report-1" and report["status"] == "completed"
    assert report["counts"]["sent"] == 9 and report["counts"]["total"] == 10
    assert sum(minute["sent"] for minute in report["perMinute"]) == 9
    assert report["failuresByReason"] == {"unreachable:MessageWritesBlocked": 1}
    assert report["throttledPerSent"] == 0.0

    response = await api.call("GET", "broadcasts/report-1/report?format=csv")
    assert response.status == 200 and response.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert {"section": "count", "key": "sent", "count": "9"} in rows
    assert {"section": "reason", "key": "unreachable:MessageWritesBlocked", "count": "1"} in rows
    assert sum(int(r["count"]) for r in rows if r["section"] == "minute") == 9


async def test_the_report_needs_the_key_and_answers_400_and_404_with_the_field(api: Api) -> None:
    assert (await api.call("GET", "broadcasts/nope/report", key=False)).status == 401
    response = await api.call("GET", "broadcasts/nope/report?format=xml")
    assert response.status == 400
    assert (await response.json())["error"]["details"][0]["field"] == "format"
    response = await api.call("GET", "broadcasts/nope/report")
    assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"
