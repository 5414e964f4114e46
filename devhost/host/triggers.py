"""Queue triggers (polling Azurite like the host) and timer triggers (NCRONTAB schedules).

Queue semantics follow host.json ``extensions.queues``: ``batchSize`` (16), ``maxDequeueCount`` (5),
``visibilityTimeout`` (0) and ``messageEncoding`` (base64). A message whose handler fails is made
visible again after ``visibilityTimeout``; once it has been dequeued ``maxDequeueCount`` times and
fails again it moves to ``<queue>-poison``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any, Protocol

from azure.core.exceptions import ResourceExistsError
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue import TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from devhost.durable import DurableRuntime, FunctionIndex
from devhost.durable.functions import FunctionInfo
from devhost.settings import HostSettings

log = logging.getLogger("devhost.triggers")


def _timespan_seconds(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, int | float):
        return float(value)
    hours, minutes, seconds = str(value).split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


# ---------------------------------------------------------------- NCRONTAB

_RANGES = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]


def _field_values(text: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/")
            step = int(step_text)
        if part == "*":
            start, end = low, high
        elif "-" in part:
            start, end = (int(x) for x in part.split("-"))
        else:
            start = end = int(part)
            if step != 1:
                end = high
        values.update(range(start, end + 1, step))
    return {7 % 7 if v == 7 and high == 6 else v for v in values}


class Ncrontab:
    """A six-field NCRONTAB expression: ``second minute hour day month day-of-week``."""

    def __init__(self, expression: str) -> None:
        fields = expression.split()
        if len(fields) != 6:
            raise ValueError(f"NCRONTAB needs 6 fields (with seconds), got {expression!r}")
        self.expression = expression
        self.fields = [_field_values(f, lo, hi) for f, (lo, hi) in zip(fields, _RANGES, strict=True)]

    def next_after(self, moment: datetime) -> datetime:
        """The first matching second strictly after ``moment``."""
        seconds, minutes, hours, days, months, weekdays = self.fields
        candidate = moment.replace(microsecond=0) + timedelta(seconds=1)
        for _ in range(366 * 24 * 60 * 60):
            if candidate.month not in months:
                candidate = (
                    candidate.replace(day=1, hour=0, minute=0, second=0) + timedelta(days=32)
                ).replace(day=1)
                continue
            weekday = (candidate.weekday() + 1) % 7  # NCRONTAB: Sunday = 0
            if candidate.day not in days or weekday not in weekdays:
                candidate = candidate.replace(hour=0, minute=0, second=0) + timedelta(days=1)
                continue
            if candidate.hour not in hours:
                candidate = candidate.replace(minute=0, second=0) + timedelta(hours=1)
                continue
            if candidate.minute not in minutes:
                candidate = candidate.replace(second=0) + timedelta(minutes=1)
                continue
            if candidate.second not in seconds:
                candidate += timedelta(seconds=1)
                continue
            return candidate
        raise ValueError(f"{self.expression!r} never fires")


# ---------------------------------------------------------------- service


class TriggerHost(Protocol):
    """What the triggers need of the host (:class:`~devhost.host.DevHost` fits): no import of it, no cycle."""

    index: FunctionIndex
    runtime: DurableRuntime

    async def invoke(self, info: FunctionInfo, trigger_value: Any) -> Any:
        """Call a function with its trigger value and its durable client binding."""


class TriggerService:
    """Runs the app's queue and timer triggers inside a :class:`~devhost.host.DevHost`."""

    def __init__(self, host: TriggerHost, settings: HostSettings, *, poll_interval: float = 0.2) -> None:
        self.host = host
        self.settings = settings
        self.poll_interval = poll_interval
        self._tasks: list[asyncio.Task[None]] = []
        queues = settings.extension("queues", default={}) or {}
        self.batch_size = min(int(queues.get("batchSize", 16)), 32)
        self.max_dequeue_count = int(queues.get("maxDequeueCount", 5))
        self.visibility_timeout = _timespan_seconds(queues.get("visibilityTimeout"), 0.0)
        self.base64 = str(queues.get("messageEncoding", "base64")).lower() == "base64"

    async def start(self) -> None:
        """Start one poller per queue trigger and one scheduler per timer trigger."""
        for info in self.host.index.queues:
            self._tasks.append(asyncio.create_task(self._poll_queue(info), name=f"queue {info.name}"))
        for info in self.host.index.timers:
            self._tasks.append(asyncio.create_task(self._run_timer(info), name=f"timer {info.name}"))

    async def stop(self) -> None:
        """Cancel the pollers and schedulers."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    def _connection(self, info: FunctionInfo) -> str:
        name = info.trigger.get("connection") or "AzureWebJobsStorage"
        return (
            self.settings.values.get(name)
            or self.settings.values.get(f"{name}__connectionString")
            or self.settings.storage
        )

    async def _poll_queue(self, info: FunctionInfo) -> None:
        queue_name = info.trigger["queueName"]
        connection = self._connection(info)
        # Loopback only: no proxy, and no ~/.netrc read on a worker thread for every request.
        queue = QueueClient.from_connection_string(connection, queue_name, use_env_settings=False)
        # The poison copy keeps the queue's encoding (host.json messageEncoding), so its own trigger
        # reads the same text the first one did.
        poison = QueueClient.from_connection_string(
            connection,
            f"{queue_name}-poison",
            message_encode_policy=TextBase64EncodePolicy() if self.base64 else None,
            use_env_settings=False,
        )
        async with queue, poison:
            with contextlib.suppress(ResourceExistsError):
                await queue.create_queue()
            delay = self.poll_interval
            while True:
                try:
                    handled = await self._poll_once(info, queue, poison)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("polling queue %s failed", queue_name)
                    handled = 0
                delay = self.poll_interval if handled else min(delay * 2, 2.0)
                await asyncio.sleep(delay)

    async def _poll_once(self, info: FunctionInfo, queue: QueueClient, poison: QueueClient) -> int:
        messages = [
            m async for m in queue.receive_messages(max_messages=self.batch_size, visibility_timeout=30)
        ]
        if messages:
            await asyncio.gather(*(self._handle(info, queue, poison, m) for m in messages))
        return len(messages)

    async def _handle(
        self, info: FunctionInfo, queue: QueueClient, poison: QueueClient, message: Any
    ) -> None:
        self.host.runtime.stats.queue_messages += 1
        text = message.content or ""
        body = text.encode()
        if self.base64:
            with contextlib.suppress(binascii.Error, ValueError):
                body = base64.b64decode(text, validate=True)
        argument = QueueMessage(
            id=message.id,
            body=body,
            dequeue_count=message.dequeue_count,
            insertion_time=message.inserted_on,
            expiration_time=message.expires_on,
            pop_receipt=message.pop_receipt,
        )
        try:
            await self.host.invoke(info, argument)
        except Exception as exc:
            log.warning("queue function %s failed (dequeue %s): %s", info.name, message.dequeue_count, exc)
            if message.dequeue_count >= self.max_dequeue_count:
                with contextlib.suppress(ResourceExistsError):
                    await poison.create_queue()
                await poison.send_message(body.decode(errors="replace"))
                await queue.delete_message(message)
                self.host.runtime.stats.queue_poisoned += 1
            else:
                await queue.update_message(message, visibility_timeout=int(self.visibility_timeout))
            return
        await queue.delete_message(message)

    async def _run_timer(self, info: FunctionInfo) -> None:
        schedule = Ncrontab(info.trigger["schedule"])
        clock = self.host.runtime.clock
        if info.trigger.get("runOnStartup"):
            await self._fire_timer(info)
        due = schedule.next_after(clock.now())
        while True:
            now = clock.now()
            if now >= due:
                await self._fire_timer(info)
                due = schedule.next_after(now)
                continue
            await asyncio.sleep(min(1.0, (due - now).total_seconds()))

    async def _fire_timer(self, info: FunctionInfo) -> None:
        self.host.runtime.stats.timer_trigger_runs += 1
        try:
            await self.host.invoke(info, TimerRequest(past_due=False))
        except Exception:
            log.exception("timer function %s failed", info.name)
