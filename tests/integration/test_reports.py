"""``GET /api/broadcasts/{id}/report`` on the devhost: a real broadcast (real replay engine, limiter entity) to
the Teams emulator with a blocked user, the ledger on Azurite.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from proactive import composition
from proactive.models import Preferences
from tests.integration import test_broadcast_api as broadcasts
from tests.integration.test_broadcast_api import TENANT_A, Api, aad, broadcast
from tests.support.invariants import assert_settled

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
    assert_settled(report)
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


async def test_the_tenant_audience_report_lists_who_is_unreachable_and_who_opted_out(api: Api) -> None:
    services = composition.services()
    await api.seed(TENANT_A, range(6))
    now = datetime.now(UTC)
    await services.references.deactivate(TENANT_A, f"user:{aad(1)}", "uninstalled", now)
    await services.references.deactivate(TENANT_A, f"user:{aad(2)}", "MessageWritesBlocked", now)
    await services.references.deactivate(TENANT_A, f"user:{aad(3)}", "=cmd|' /C calc'!A0", now)
    await services.preferences.put(
        Preferences(tenant_id=TENANT_A, aad_object_id=aad(4), opted_out_all=True, updated_at=now)
    )
    await services.preferences.put(
        Preferences(
            tenant_id=TENANT_A, aad_object_id=aad(5), opted_out_categories=("deployments",), updated_at=now
        )
    )
    await services.preferences.put(Preferences(tenant_id=TENANT_A, aad_object_id=aad(0), updated_at=now))

    seen: list[dict[str, Any]] = []
    continuation = ""
    for _ in range(10):
        response = await api.call(
            "GET", f"tenants/{TENANT_A}/audience?kind=inactive&pageSize=2&continuation={continuation}"
        )
        assert response.status == 200
        body = await response.json()
        seen.extend(body["items"])
        if body["continuation"] is None:
            break
        continuation = body["continuation"]
    assert sorted((i["recipientKey"], i["reason"]) for i in seen) == sorted(
        [
            (f"user:{aad(1)}", "uninstalled"),
            (f"user:{aad(2)}", "MessageWritesBlocked"),
            (f"user:{aad(3)}", "=cmd|' /C calc'!A0"),
        ]
    )

    response = await api.call("GET", f"tenants/{TENANT_A}/audience?kind=optedOut")
    items = (await response.json())["items"]
    assert sorted((i["recipientKey"], i["reason"], tuple(i.get("categories", ()))) for i in items) == [
        (f"user:{aad(4)}", "all", ()),
        (f"user:{aad(5)}", "categories", ("deployments",)),
    ]

    response = await api.call("GET", f"tenants/{TENANT_A}/audience?kind=inactive&format=csv")
    assert response.status == 200 and response.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert len(rows) == 3 and "'=cmd|' /C calc'!A0" in {r["reason"] for r in rows}


async def test_the_tenant_audience_report_checks_key_tenant_and_input(api: Api) -> None:
    assert (await api.call("GET", f"tenants/{TENANT_A}/audience?kind=inactive", key=False)).status == 401
    response = await api.call("GET", "tenants/cccccccc-9999-4999-8999-999999999999/audience?kind=inactive")
    assert response.status == 403 and (await response.json())["error"]["code"] == "tenant_not_allowed"
    for query, field in (("kind=everyone", "kind"), ("kind=inactive&pageSize=0", "pageSize")):
        response = await api.call("GET", f"tenants/{TENANT_A}/audience?{query}")
        assert response.status == 400
        assert (await response.json())["error"]["details"][0]["field"] == field
    response = await api.call("GET", f"tenants/{TENANT_A}/audience?kind=inactive&continuation=x")
    assert response.status == 400
