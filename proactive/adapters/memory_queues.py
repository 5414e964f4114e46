"""An in-memory :class:`~proactive.delivery.ports.WorkQueue` that behaves like an Azure Storage queue.

It stores the same JSON text the real adapter sends (so a body that would not serialise fails here too),
rounds delays up to whole seconds, hides received messages for their visibility timeout, counts dequeues,
and refuses a delete with a stale pop receipt. Time comes from an injected monotonic clock, so unit tests
move it by hand. Used by unit tests and the devhost's in-memory mode; never in production.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from proactive.adapters.storage_queues import whole_seconds
from proactive.delivery.ports import QueueMessage
from proactive.errors import StorageError

__all__ = ["MemoryQueues", "MemoryWorkQueue"]


@dataclass
class _Stored:
    id: str
    text: str
    visible_at: float
    dequeue_count: int = 0
    pop_receipt: str = ""


class MemoryWorkQueue:
    """One in-memory queue.

    Args:
        name: the queue's name.
        clock: monotonic seconds (``time.monotonic`` by default).
    """

    def __init__(self, name: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._messages: list[_Stored] = []
        self._ids = itertools.count(1)

    async def put(self, body: Mapping[str, Any], *, delay: float = 0.0) -> None:
        try:
            text = json.dumps(dict(body), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StorageError("queue storage: the message is not JSON") from exc
        visible_at = self._clock() + whole_seconds(delay, low=0)
        self._messages.append(_Stored(f"m{next(self._ids)}", text, visible_at))

    async def receive(
        self, *, max_messages: int = 32, visibility_timeout: float = 30.0
    ) -> list[QueueMessage]:
        now = self._clock()
        hide = whole_seconds(visibility_timeout, low=1)
        taken: list[QueueMessage] = []
        for stored in self._messages:
            if len(taken) >= max(1, min(32, max_messages)):
                break
            if stored.visible_at > now:
                continue
            stored.dequeue_count += 1
            stored.visible_at = now + hide
            stored.pop_receipt = uuid.uuid4().hex
            taken.append(
                QueueMessage(stored.id, stored.pop_receipt, json.loads(stored.text), stored.dequeue_count)
            )
        return taken

    async def delete(self, message: QueueMessage) -> None:
        for index, stored in enumerate(self._messages):
            if stored.id == message.id:
                if stored.pop_receipt != message.pop_receipt:
                    raise StorageError("queue storage: PopReceiptMismatch")
                del self._messages[index]
                return
        raise StorageError("queue storage: MessageNotFound")

    def bodies(self) -> list[dict[str, Any]]:
        """Every message's body, visible or not, oldest first (for tests and the devhost)."""
        return [json.loads(stored.text) for stored in self._messages]


class MemoryQueues:
    """What :class:`~proactive.adapters.storage_queues.AzureQueues` offers (``Services.queues``), in memory."""

    def __init__(self) -> None:
        self._queues: dict[str, MemoryWorkQueue] = {}

    def queue(self, name: str) -> MemoryWorkQueue:
        """The named queue, created on first use."""
        return self._queues.setdefault(name, MemoryWorkQueue(name))

    async def close(self) -> None:
        """Nothing to release."""
