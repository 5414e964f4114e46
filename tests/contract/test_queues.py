"""The work-queue contract, run against the in-memory fake and against Azurite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from proactive.adapters.memory_queues import MemoryWorkQueue
from proactive.adapters.storage_queues import AzureQueues
from proactive.delivery.ports import WorkQueue
from proactive.errors import StorageError

QueueFactory = Callable[[], WorkQueue]


@pytest.fixture(params=["memory", "azurite"])
async def new_queue(request: pytest.FixtureRequest, unique_name: str) -> AsyncIterator[QueueFactory]:
    counter = iter(range(1000))
    if request.param == "memory":
        yield lambda: MemoryWorkQueue(f"{unique_name}-{next(counter)}")
        return
    queues = AzureQueues.from_connection_string(request.getfixturevalue("storage_connection_string"))
    try:
        yield lambda: queues.queue(f"{unique_name}-{next(counter)}")
    finally:
        await queues.close()


async def test_a_put_message_is_received_as_the_same_json_object_once(new_queue: QueueFactory) -> None:
    queue = new_queue()
    body = {"tenantId": "t-1", "aadObjectId": "ü-1", "reason": "ConversationNotFound", "n": 3, "ok": True}

    await queue.put(body)
    [message] = await queue.receive(visibility_timeout=30)
    again = await queue.receive()

    assert message.body == body
    assert message.dequeue_count == 1
    assert again == []


async def test_receiving_from_a_queue_that_does_not_exist_yet_creates_it_empty(
    new_queue: QueueFactory,
) -> None:
    assert await new_queue().receive() == []


async def test_a_delayed_message_is_invisible_until_its_delay_passes(new_queue: QueueFactory) -> None:
    queue = new_queue()

    await queue.put({"id": 1}, delay=60)
    await queue.put({"id": 2})

    assert [m.body for m in await queue.receive()] == [{"id": 2}]


async def test_a_deleted_message_never_comes_back_and_an_unheld_receipt_is_refused(
    new_queue: QueueFactory,
) -> None:
    queue = new_queue()
    await queue.put({"id": 1})
    [message] = await queue.receive(visibility_timeout=1)

    await queue.delete(message)
    await asyncio.sleep(1.2)

    assert await queue.receive() == []
    with pytest.raises(StorageError):
        await queue.delete(message)


async def test_an_undeleted_message_reappears_after_its_visibility_timeout_with_a_higher_dequeue_count(
    new_queue: QueueFactory,
) -> None:
    queue = new_queue()
    await queue.put({"id": 1})
    [first] = await queue.receive(visibility_timeout=1)

    await asyncio.sleep(1.2)
    [second] = await queue.receive(visibility_timeout=30)

    assert second.body == first.body == {"id": 1}
    assert (first.dequeue_count, second.dequeue_count) == (1, 2)
    await queue.delete(second)
    assert await queue.receive() == []
