"""The ``installs`` queue as the sender writes it: single-user install requests coalesced into one message.

A broadcast to a tenant nobody installed yet hands every row to the Graph bootstrap, one
:class:`~proactive.delivery.ports.InstallRequest` per user, from up to ``SEND_CONCURRENCY`` rows at once. One
queue message per user costs the install worker one dequeue, one limiter admission, one report and one
notification read per install; measured on the devhost that overhead, not Graph, held installs to a
seventh of the tenant's Graph budget (``bench/install_rate.py``). :class:`InstallRequests` is a
:class:`~proactive.delivery.ports.WorkQueue` that merges the single-user requests put within
:data:`WINDOW_SECONDS` of each other for the same tenant, broadcast and reason into one ``aadObjectIds``
message of up to :data:`~proactive.delivery.ports.MAX_INSTALL_USERS` users, which the worker installs under
one grant.

Each ``put`` returns only once the message holding its request is on the queue (and raises what that put
raised), so a caller that records its row after ``put`` still never records a row whose install was not
queued. Other messages (team installs, anything that is not an install request) pass straight through.
State is per event loop; nothing is shared across processes.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from proactive.delivery.ports import MAX_INSTALL_USERS, InstallRequest, QueueMessage, WorkQueue

__all__ = ["WINDOW_SECONDS", "InstallRequests"]

WINDOW_SECONDS = 0.5
"""How long the first request of a message waits for others (a send batch's rows arrive within ms)."""

_Key = tuple[str, str | None, str]


@dataclass
class _Pending:
    users: list[str] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    first: InstallRequest | None = None
    timer: asyncio.TimerHandle | None = None


class InstallRequests:
    """A :class:`~proactive.delivery.ports.WorkQueue` over ``installs`` that coalesces user installs.

    Args:
        queue: the ``installs`` queue.
        window: seconds a message waits for more users before it is put.
    """

    def __init__(self, queue: WorkQueue, *, window: float = WINDOW_SECONDS) -> None:
        self._queue = queue
        self._window = window
        self.name = queue.name
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_Key, _Pending]] = (
            weakref.WeakKeyDictionary()
        )
        self._tasks: set[asyncio.Task[None]] = set()

    async def put(self, body: Mapping[str, Any], *, delay: float = 0.0) -> None:
        """Put ``body``; a single-user install request waits to share a message (see the module docstring)."""
        request = _single_user(body)
        if request is None or delay > 0:
            await self._queue.put(body, delay=delay)
            return
        loop = asyncio.get_running_loop()
        pending_by_key = self._loops.setdefault(loop, {})
        key = (request.tenant_id.lower(), request.notification_id, request.reason)
        pending = pending_by_key.setdefault(key, _Pending(first=request))
        waiter: asyncio.Future[None] = loop.create_future()
        if request.aad_object_id not in pending.users:
            pending.users.append(str(request.aad_object_id))
        pending.waiters.append(waiter)
        if len(pending.users) >= MAX_INSTALL_USERS:
            self._flush(pending_by_key, key)
        elif pending.timer is None:
            pending.timer = loop.call_later(self._window, self._flush, pending_by_key, key)
        await waiter

    def _flush(self, pending_by_key: dict[_Key, _Pending], key: _Key) -> None:
        pending = pending_by_key.pop(key, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._put(pending))
        self._tasks.add(task)  # held until done, so the put is not garbage-collected
        task.add_done_callback(self._tasks.discard)

    async def _put(self, pending: _Pending) -> None:
        assert pending.first is not None
        message = pending.first.for_users(pending.users)
        try:
            await self._queue.put(message.to_json())
        except Exception as exc:  # every request of this message sees the failure
            for waiter in pending.waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for waiter in pending.waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def receive(
        self, *, max_messages: int = 32, visibility_timeout: float = 30.0
    ) -> list[QueueMessage]:
        """The queue's own ``receive``."""
        return await self._queue.receive(max_messages=max_messages, visibility_timeout=visibility_timeout)

    async def delete(self, message: QueueMessage) -> None:
        """The queue's own ``delete``."""
        await self._queue.delete(message)


def _single_user(body: Mapping[str, Any]) -> InstallRequest | None:
    try:
        request = InstallRequest.from_json(dict(body))
    except (ValueError, ValidationError):
        return None
    if request.aad_object_id is None or request.throttled or request.failures:
        return None
    return request
