"""JSON from outside the process: nesting too deep is a ValueError (a 4xx or a dead letter), never a crash."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from proactive import json_input
from proactive.adapters.memory_queues import MemoryWorkQueue
from proactive.adapters.memory_tables import MemoryEntityTable
from proactive.delivery.redelivery import Redelivery
from proactive.delivery.redrive import Action
from proactive.errors import InvalidInput
from proactive.storage.paging import decode_continuation, encode_continuation
from proactive.storage.stores import TableDeadLetterStore, TableDeliveryLedger, TableNotificationStore

DEEP = [b"[" * 200_000, b'{"a":' * 100_000, "[" * 200_000]


@pytest.mark.parametrize("raw", DEEP)
def test_deep_nesting_is_a_value_error(raw: bytes | str) -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        json_input.loads(raw)


def test_ordinary_json_is_read_as_json() -> None:
    assert json_input.loads(b'{"a": [1, 2]}') == {"a": [1, 2]}
    with pytest.raises(UnicodeDecodeError):
        json_input.loads(b"\xff")


def test_a_continuation_token_holding_deep_json_is_invalid_input() -> None:
    token = base64.urlsafe_b64encode(b"[" * 200_000).decode()
    with pytest.raises(InvalidInput) as caught:
        decode_continuation(token)
    assert caught.value.field == "continuation"
    assert decode_continuation(encode_continuation({"t": "1"})) == {"t": "1"}


@pytest.mark.parametrize("raw", [DEEP[0], DEEP[1]])
async def test_a_deep_retry_queue_message_is_dead_lettered_as_malformed(raw: bytes) -> None:
    dead_letters = TableDeadLetterStore(MemoryEntityTable("deadletters"))

    class NoRuns:
        async def ensure(self, notification: object, tenant_id: str) -> bool:
            raise AssertionError("a malformed message must not start a run")

    redelivery = Redelivery(
        ledger=TableDeliveryLedger(MemoryEntityTable("deliveries")),
        notifications=TableNotificationStore(MemoryEntityTable("notifications")),
        dead_letters=dead_letters,
        retries=MemoryWorkQueue("deliveries-retry"),
        clock=lambda: datetime(2026, 12, 3, tzinfo=UTC),
    )
    decision = await redelivery.redrive(raw, NoRuns())  # type: ignore[arg-type]
    assert decision.action is Action.DONE and decision.why == "malformed message"
    letter = await redelivery.dead_letter(raw, source_queue="deliveries-retry")
    assert letter is not None and letter.reason.startswith("malformed_message")
