"""Property-based: whatever arrives from outside, the answer is a 4xx-shaped error or a dead letter.

Arbitrary JSON values, near-valid documents with hostile values, raw bytes (invalid UTF-8, deep nesting)
and query strings go to every parser that sees outside input: ``parse_broadcast_request``, the bot's
endpoint and activity parser, the ``deliveries-retry`` message parser, the queue adapter's body reader,
the deliveries query (``status``, ``pageSize``, ``continuation``) and the ``PATCH`` body. None may raise
anything but :class:`~proactive.errors.InvalidInput` with a 4xx status and the contract's error body.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proactive.adapters.agents_activity import build_reply
from proactive.adapters.memory_queues import MemoryWorkQueue
from proactive.adapters.memory_tables import MemoryEntityTable
from proactive.adapters.storage_queues import _object as queue_body
from proactive.bot import ActivityHandler, BotEndpoint
from proactive.bot.activity import parse_activity
from proactive.bot.welcome import Welcomes
from proactive.broadcast.ports import OrchestrationState
from proactive.broadcast.request import parse_broadcast_request
from proactive.broadcast.service import BroadcastService
from proactive.delivery.redelivery import Redelivery
from proactive.errors import InvalidInput
from proactive.storage.paging import encode_continuation
from proactive.storage.stores import (
    TableDeadLetterStore,
    TableDeliveryLedger,
    TableNotificationStore,
    TablePreferenceStore,
    TableReferenceStore,
)

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
USER = "00000000-0000-4000-8000-000000000001"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["", " ", "\n", "deployments\n", TENANT, TENANT + "\n", "../x", "%2F", "\x00", "²"])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
deep = st.integers(min_value=1, max_value=50_000).flatmap(
    lambda n: st.sampled_from([b"[" * n, b'{"a":' * n, b'{"message":' + b"[" * n])
)
raw_bodies = st.binary(max_size=300) | deep | json_values.map(lambda v: json.dumps(v).encode())


def broadcast_like() -> st.SearchStrategy[dict[str, Any]]:
    """Documents shaped like the contract, with any value in any field."""
    user = st.fixed_dictionaries(
        {"tenantId": st.sampled_from([TENANT, TENANT.upper()]) | json_values, "aadObjectId": json_values},
        optional={"data": json_values},
    )
    audience = st.fixed_dictionaries(
        {},
        optional={
            "users": st.lists(user, max_size=3) | json_values,
            "channels": json_values,
            "tenants": st.lists(st.just(TENANT) | json_values, max_size=3),
            "groups": json_values,
            "includeUninstalled": json_values,
        },
    )
    message = st.fixed_dictionaries(
        {},
        optional={
            "text": st.text(max_size=60) | json_values,
            "adaptiveCard": json_values,
            "summary": json_values,
        },
    )
    return st.fixed_dictionaries(
        {"audience": audience | json_values, "message": message | json_values},
        optional={
            "notificationId": st.from_regex(r"[A-Za-z0-9_-]{1,64}\n?", fullmatch=True) | json_values,
            "category": json_values,
            "urgency": st.sampled_from(["normal", "urgent", "URGENT", "now"]) | json_values,
            "sendAt": st.sampled_from(["2026-12-03T10:00:00Z", "2026-12-03T10:00:00", "tomorrow"])
            | json_values,
        },
    )


def assert_contract_error(error: InvalidInput) -> None:
    assert 400 <= error.status < 500, error.status
    body = error.to_body()
    assert set(body["error"]) == {"code", "message", "details"}
    json.dumps(body)  # the body is JSON-able


# ---- POST /api/broadcasts -------------------------------------------------------------------------------


@FUZZ
@given(raw_bodies)
def test_any_bytes_posted_as_a_broadcast_parse_or_are_a_4xx(raw: bytes) -> None:
    try:
        parse_broadcast_request(raw, now=NOW)
    except InvalidInput as error:
        assert_contract_error(error)


@FUZZ
@given(broadcast_like())
def test_any_near_valid_broadcast_parses_or_is_a_4xx(document: dict[str, Any]) -> None:
    try:
        request = parse_broadcast_request(json.dumps(document).encode(), now=NOW)
    except InvalidInput as error:
        assert_contract_error(error)
        return
    if request.category is not None:
        assert request.category == request.category.strip().lower()
    if request.notification_id is not None:
        assert "\n" not in request.notification_id


# ---- POST /api/messages ---------------------------------------------------------------------------------


class _Sender:
    async def send_activity(self, service_url: str, conversation_id: str, activity: Mapping[str, Any]) -> str:
        return "1"


def _bot() -> BotEndpoint:
    handler = ActivityHandler(
        TableReferenceStore(MemoryEntityTable("references")),
        TablePreferenceStore(MemoryEntityTable("preferences")),
        _Sender(),
        welcomes=Welcomes(
            TableNotificationStore(MemoryEntityTable("notifications")),
            TableDeliveryLedger(MemoryEntityTable("deliveries")),
            MemoryWorkQueue("deliveries-retry"),
            clock=lambda: NOW,
        ),
        tenant_allowed=lambda tenant: True,
        service_url_allowed=lambda url: True,
        clock=lambda: NOW,
        reply_builder=build_reply,
    )
    return BotEndpoint(handler, None)


def activity_like() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "type": st.sampled_from(["message", "installationUpdate", "conversationUpdate"]) | json_values,
            "serviceUrl": st.just("https://smba.trafficmanager.net/emea/") | json_values,
        },
        optional={
            "channelId": st.just("msteams") | json_values,
            "text": st.sampled_from(["stop", "unsubscribe Deployments\n", "quiet 22:00-07:00\n"])
            | json_values,
            "action": st.sampled_from(["add", "remove"]) | json_values,
            "from": st.fixed_dictionaries({"id": json_values, "aadObjectId": json_values}) | json_values,
            "recipient": json_values,
            "conversation": st.fixed_dictionaries(
                {"id": json_values}, optional={"conversationType": json_values, "tenantId": json_values}
            )
            | json_values,
            "channelData": st.fixed_dictionaries({}, optional={"tenant": json_values, "team": json_values})
            | json_values,
            "membersAdded": json_values,
            "entities": json_values,
        },
    )


@FUZZ
@given(raw_bodies | activity_like().map(lambda a: json.dumps(a).encode()))
def test_any_body_on_the_bot_endpoint_is_handled_or_a_4xx(raw: bytes) -> None:
    answer = asyncio.run(_bot().handle(raw, None))
    assert answer.status == 200 or 400 <= answer.status < 500, answer
    if answer.status != 200:
        assert set(answer.body["error"]) == {"code", "message", "details"}


@FUZZ
@given(json_values | activity_like())
def test_the_activity_parser_accepts_or_names_the_field(data: Any) -> None:
    try:
        parse_activity(data)
    except InvalidInput as error:
        assert_contract_error(error)


# ---- queue messages -------------------------------------------------------------------------------------


class NoRuns:
    """Stands in for :class:`~proactive.delivery.redrive.PacedRuns` where no run may start: nothing here is due."""

    async def ensure(self, notification: object, tenant_id: str) -> bool:
        raise AssertionError("nothing here is a pending row to send")


def retry_like() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "notificationId": json_values,
            "tenantId": st.just(TENANT) | json_values,
            "recipientKey": st.just(f"user:{USER}") | json_values,
            "reason": json_values,
            "uncertain": json_values,
            "operation": st.sampled_from(["send", "update", "delete"]) | json_values,
        },
    )


@FUZZ
@given(raw_bodies | retry_like().map(lambda m: json.dumps(m).encode()))
def test_any_retry_queue_message_is_redriven_or_dead_lettered_never_a_crash(raw: bytes) -> None:
    redelivery = Redelivery(
        ledger=TableDeliveryLedger(MemoryEntityTable("deliveries")),
        notifications=TableNotificationStore(MemoryEntityTable("notifications")),
        dead_letters=TableDeadLetterStore(MemoryEntityTable("deadletters")),
        retries=MemoryWorkQueue("deliveries-retry"),
        clock=lambda: NOW,
    )

    async def both() -> None:
        await redelivery.redrive(raw, NoRuns())
        await redelivery.dead_letter(raw, source_queue="deliveries-retry")

    asyncio.run(both())


@FUZZ
@given(raw_bodies.map(lambda b: b.decode("utf-8", "replace")) | raw_bodies)
def test_the_queue_adapter_reads_any_content_as_an_object(content: str | bytes) -> None:
    assert isinstance(queue_body(content), dict)


# ---- GET /api/broadcasts/{id}/deliveries and PATCH /api/broadcasts/{id} -----------------------------------


class _Finished:
    async def start(self, name: str, instance_id: str, payload: dict[str, Any]) -> None:
        return None

    async def state(self, instance_id: str) -> OrchestrationState | None:
        return OrchestrationState("Completed") if "." not in instance_id else None

    async def raise_event(self, instance_id: str, name: str, data: Any) -> bool:
        return False


async def _service_with_one_broadcast() -> BroadcastService:
    service = BroadcastService(
        TableNotificationStore(MemoryEntityTable("notifications")),
        TableDeliveryLedger(MemoryEntityTable("deliveries")),
        _Finished(),
        tenant_allowed=lambda tenant: True,
        batch_size=5,
        batches_per_execution=2,
        clock=lambda: NOW,
    )
    body = {
        "notificationId": "fuzzed",
        "audience": {"users": [{"tenantId": TENANT, "aadObjectId": USER}]},
        "message": {"text": "Deploy 42"},
    }
    await service.start(json.dumps(body).encode())
    return service


query_text = (
    st.none()
    | st.text(max_size=20)
    | st.sampled_from(["²", "-1", " 5", "1000", "1001", "0", "sent,failed", "sent,,", "٣"])
)
continuations = (
    query_text
    | st.dictionaries(
        st.sampled_from(["t", "c", "x"]), st.text(max_size=8) | st.sampled_from(["-1", "0", "²", "99"])
    ).map(encode_continuation)
    | deep.map(lambda raw: base64.urlsafe_b64encode(raw).decode())
)


@FUZZ
@given(statuses=query_text, page_size=query_text, continuation=continuations)
def test_any_deliveries_query_pages_or_is_a_4xx(
    statuses: str | None, page_size: str | None, continuation: str | None
) -> None:
    async def query() -> None:
        service = await _service_with_one_broadcast()
        try:
            await service.deliveries(
                "fuzzed", statuses=statuses, page_size=page_size, continuation=continuation
            )
        except InvalidInput as error:
            assert_contract_error(error)

    asyncio.run(query())


@FUZZ
@given(raw_bodies | json_values.map(lambda m: json.dumps({"message": m}).encode()))
def test_any_patch_body_updates_or_is_a_4xx(raw: bytes) -> None:
    async def patch() -> None:
        service = await _service_with_one_broadcast()
        try:
            await service.update("fuzzed", raw)
        except InvalidInput as error:
            assert_contract_error(error)

    asyncio.run(patch())
