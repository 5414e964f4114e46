"""``/api/deadletters`` on the devhost: real HTTP with the function key, queue triggers polling Azurite with
host.json's poison semantics, re-drives through the paced ``tenant_lane`` run on the real replay engine, sends
to the Teams emulator. The world (clock, emulator, app, host) is the re-delivery tests' own fixture.
"""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from proactive import function_names as fn
from proactive.broadcast.status import ledger_counts
from proactive.delivery import redelivery as retries
from proactive.delivery.dead_letters import POISON_HANDLER_FAILED, public_id
from proactive.delivery.ports import RetryRequest
from proactive.errors import StorageError
from proactive.models import DeadLetter, DeliveryStatus, NotificationStatus
from tests.integration import test_redelivery as redelivery
from tests.integration.test_redelivery import (
    KEY,
    TENANT,
    World,
    _empty,
    user_key,
)
from tests.support.invariants import assert_settled

pytestmark = pytest.mark.azurite

world = redelivery.world  # the re-delivery tests' fixture: the same devhost, clock and emulator


async def call(
    world: World, method: str, path: str, *, key: str | None = KEY, **kwargs: Any
) -> tuple[int, Any, Any]:
    headers = {"x-functions-key": key} if key is not None else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{world.host.origin}/api/{path}", headers=headers, **kwargs) as response,
    ):
        if response.content_type == "application/json":
            return response.status, await response.json(), response.headers
        return response.status, await response.text(), response.headers


async def poison(world: World, nid: str, n: int) -> None:
    """A retry message on the poison queue, as the host leaves one whose trigger failed five times."""
    request = RetryRequest(
        notification_id=nid, tenant_id=TENANT, recipient_key=user_key(n), reason="ServiceUnavailable"
    )
    await world.services.queues.queue(world.names["retry"] + fn.POISON_SUFFIX).put(request.to_json())


async def dead_lettered(world: World, nid: str, n: int) -> None:
    async def done() -> bool:
        return (await world.record(nid, n)).status is DeliveryStatus.DEAD_LETTERED

    await world.until(done)


async def test_dead_letter_routes_need_the_function_key(world: World) -> None:
    for key in (None, "wrong"):
        status, _, _ = await call(world, "GET", "deadletters", key=key)
        assert status == 401
        status, _, _ = await call(world, "POST", "deadletters/20261121-eA/redrive", key=key)
        assert status == 401
    status, body, _ = await call(world, "GET", "deadletters")
    assert status == 200 and body == {"items": [], "continuation": None}


@pytest.mark.parametrize(
    ("query", "field", "code"),
    [
        ("pageSize=0", "pageSize", "invalid_page_size"),
        ("pageSize=1001", "pageSize", "invalid_page_size"),
        ("from=2026-13-01", "from", "invalid_date"),
        ("to=yesterday", "to", "invalid_date"),
        ("from=2026-11-22&to=2026-11-21", "from", "invalid_date_range"),
        ("from=2026-01-01&to=2026-11-21", "from", "invalid_date_range"),
        ("tenantId=%01x", "tenantId", "invalid_filter"),
        ("continuation=not-a-token", "continuation", "invalid_continuation"),
        ("continuation=eyJkIjoiMTk5OTAxMDEifQ", "continuation", "invalid_continuation"),
    ],
)
async def test_a_bad_query_answers_400_naming_the_field(
    world: World, query: str, field: str, code: str
) -> None:
    status, body, _ = await call(world, "GET", f"deadletters?{query}")
    assert status == 400
    assert body["error"]["code"] == code and body["error"]["details"][0]["field"] == field


async def test_a_bad_or_unknown_id_answers_400_or_404(world: World) -> None:
    status, body, _ = await call(world, "POST", "deadletters/not-an-id/redrive")
    assert status == 400 and body["error"]["details"][0]["field"] == "id"
    status, body, _ = await call(world, "POST", "deadletters/20261340-eA/redrive")
    assert status == 400 and body["error"]["code"] == "invalid_id"
    status, body, _ = await call(world, "POST", "deadletters/20261121-bm9uZQ/redrive")
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_dead_letters_are_filtered_paged_across_days_and_exported_as_csv(world: World) -> None:
    await world.notification("dl-list", range(1), NotificationStatus.COMPLETED)
    await world.row("dl-list", 0, DeliveryStatus.PENDING)
    await poison(world, "dl-list", 0)  # the real poison path writes one
    await dead_lettered(world, "dl-list", 0)
    store = world.services.dead_letters
    now = world.clock.now()
    for i in range(4):  # and a few more, two of them yesterday, one with a formula for a reason
        await store.add(
            DeadLetter(
                id=f"other:{TENANT}:user:{i}",
                source_queue=world.names["retry"],
                payload={"recipientKey": f"user:{i}"},
                reason="=HYPERLINK(1)" if i == 0 else "retries exhausted (Throttled)",
                created_at=now - timedelta(days=i % 2),
                notification_id="other",
                tenant_id="another-tenant" if i == 3 else TENANT,
                reason_code="Throttled",
            )
        )

    status, body, _ = await call(world, "GET", "deadletters?notificationId=dl-list")
    assert status == 200
    [item] = body["items"]
    assert item["notificationId"] == "dl-list" and item["tenantId"] == TENANT
    assert item["reasonCode"] == "ServiceUnavailable" and item["payload"]["recipientKey"] == user_key(0)
    _, body, _ = await call(world, "GET", f"deadletters?reason=Throttled&tenantId={TENANT}")
    assert len(body["items"]) == 3

    seen: list[str] = []
    pages = 0
    continuation = ""
    while True:
        _, body, _ = await call(world, "GET", f"deadletters?pageSize=2&continuation={continuation}")
        seen.extend(item["id"] for item in body["items"])
        pages += 1
        assert len(body["items"]) <= 2
        if body["continuation"] is None:
            break
        continuation = body["continuation"]
    assert len(seen) == len(set(seen)) == 5 and pages >= 3
    _, body, _ = await call(world, "GET", f"deadletters?to={(now - timedelta(days=1)).date()}")
    assert len(body["items"]) == 2  # yesterday only

    status, text, headers = await call(world, "GET", "deadletters?format=csv&reason=Throttled&pageSize=2")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2 and "X-Continuation-Token" in headers
    assert {row["recipientKey"] for row in rows} <= {"user:0", "user:1", "user:2", "user:3"}
    _, text, _ = await call(world, "GET", "deadletters?format=csv&notificationId=other&tenantId=" + TENANT)
    reasons = {row["reason"] for row in csv.DictReader(io.StringIO(text))}
    assert "'=HYPERLINK(1)" in reasons


async def test_a_redrive_sends_the_row_once_through_a_paced_run_and_refuses_it_once_sent(
    world: World,
) -> None:
    await world.notification("dl-redrive", range(1), NotificationStatus.COMPLETED)
    await world.row("dl-redrive", 0, DeliveryStatus.PENDING, redrives=5)
    await poison(world, "dl-redrive", 0)
    await dead_lettered(world, "dl-redrive", 0)
    _, body, _ = await call(world, "GET", "deadletters?notificationId=dl-redrive")
    letter_id = body["items"][0]["id"]

    status, body, _ = await call(world, "POST", f"deadletters/{letter_id}/redrive")
    assert status == 202 and body == {"id": letter_id, "status": "requeued", "rowStatus": "pending"}

    async def sent() -> bool:
        return (await world.record("dl-redrive", 0)).status is DeliveryStatus.SENT

    await world.until(sent)
    await world.until(lambda: _empty(world, world.names["retry"]))
    assert world.received("a:conv-0") == 1
    record = await world.record("dl-redrive", 0)
    assert record.redrives == 0  # its hand-off count started again
    assert await world.redrive_runs("dl-redrive")  # it went through the tenant's paced lane
    _, body, _ = await call(world, "GET", "deadletters?notificationId=dl-redrive")
    assert "redrivenAt" in body["items"][0]

    status, body, _ = await call(world, "POST", f"deadletters/{letter_id}/redrive")
    assert status == 409 and body["error"]["code"] == "already_sent"
    assert world.received("a:conv-0") == 1
    counts = await ledger_counts(world.services.deliveries, "dl-redrive", [TENANT])
    assert_settled({"counts": counts, "status": "completed"})
    assert counts["sent"] == counts["total"] == 1


async def test_a_malformed_dead_letter_cannot_be_redriven(world: World) -> None:
    await world.services.queues.queue(world.names["retry"]).put({"hello": "world"})

    async def lettered() -> bool:
        return len(await world.dead_letters()) == 1

    await world.until(lettered)
    [letter] = await world.dead_letters()
    status, body, _ = await call(world, "POST", f"deadletters/{public_id(letter)}/redrive")
    assert status == 409 and body["error"]["code"] == "not_redrivable"


async def test_a_message_failing_on_the_poison_queue_is_recorded_never_left_on_poison_poison(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = retries.Redelivery.dead_letter
    storage = {"down": True}

    async def dead_letter(self: retries.Redelivery, raw: bytes, *, source_queue: str) -> DeadLetter | None:
        if storage["down"]:
            raise StorageError("table storage: ServiceUnavailable")
        return await original(self, raw, source_queue=source_queue)

    monkeypatch.setattr(retries.Redelivery, "dead_letter", dead_letter)
    await world.notification("dl-pp", range(1), NotificationStatus.COMPLETED)
    await world.row("dl-pp", 0, DeliveryStatus.PENDING)
    await poison(world, "dl-pp", 0)

    async def recorded() -> bool:
        return len(await world.dead_letters()) == 1

    await world.until(recorded)
    poison_queue = world.names["retry"] + fn.POISON_SUFFIX
    await world.until(lambda: _empty(world, poison_queue))
    await world.host.runtime.idle()
    assert await _empty(world, poison_queue + fn.POISON_SUFFIX)
    assert world.host.runtime.stats.queue_poisoned == 0
    _, body, _ = await call(world, "GET", f"deadletters?reason={POISON_HANDLER_FAILED}")
    [item] = body["items"]
    assert item["notificationId"] == "dl-pp" and item["sourceQueue"] == world.names["retry"]
    assert "StorageError" in item["reason"]
    # The row never became dead_lettered; a re-drive puts it back on its paced path.
    storage["down"] = False
    status, body, _ = await call(world, "POST", f"deadletters/{item['id']}/redrive")
    assert status == 202 and body["status"] == "requeued"

    async def sent() -> bool:
        return (await world.record("dl-pp", 0)).status is DeliveryStatus.SENT

    await world.until(sent)
