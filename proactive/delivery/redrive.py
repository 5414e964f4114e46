"""Re-drives through the tenant's limiter: what the ``deliveries-retry`` trigger does with one row.

A row reaches queue ``deliveries-retry`` when the sender handed it off (its in-process retries ran out, or
``Retry-After`` was too long to wait in process), when reconciliation found it stuck, or as a welcome
(:mod:`proactive.bot.welcome`). The trigger **never sends**. Every send to Teams goes through a paced
``tenant_lane`` (acquire a grant from the tenant's ``tenant_limiter`` entity -> ``send_batch`` -> report),
so a re-drive takes the tenant's grants, reports its 429s and ``Retry-After``, keeps the broadcast's urgency
(the limiter's priority, and ``urgent`` ignores quiet hours) and waits out a quiet-hours window on a durable
timer instead of leaving the row ``deferred`` for ever.

Why this shape: a Durable client (which is what a queue trigger gets) can signal an entity but not call it
and wait for its answer, so a trigger cannot take a grant itself. Only an orchestration can. The smallest
valid design reuses the broadcast's own lane: the trigger makes sure one ``tenant_lane`` instance runs for
the row's notification and tenant, under the deterministic id
:func:`~proactive.orchestration.tenant_broadcast.redrive_instance_id`, and that lane's ``send_batch`` takes
every due row of the partition (``pending`` with ``notBefore`` passed, ``deferred`` whose window ended),
exactly as the broadcast's lanes do. The ledger row is the work item; the message is only the reminder
that the row needs a run.

:func:`decide` (pure) says what one message leads to:

============================================  ===============================================================
the row                                        action
============================================  ===============================================================
missing, not ``pending``/``deferred``          ``done``: sent, claimed or settled elsewhere; the message is
(sent, sending, failed, ...), or the           complete and nothing is sent (a retry message for a row already
notification is cancelled                      sent does nothing)
handed off more than ``MAX_REDRIVES`` times    ``dead_letter`` (a dead letter with the row's last error, then the
                                               row ``dead_lettered``, as the poison queue does)
``notBefore`` (``Retry-After``, a quiet        ``wait``: the message goes back to the queue, invisible until
window's end) still ahead                      then (the count of the hand-off is unchanged)
due                                            ``run``: start the tenant's re-drive run
============================================  ===============================================================

:class:`PacedRuns` starts the run, or finds it under way (``Pending``/``Running``): then it raises the lane's
wake event (a lane asleep until a deferred row's window ends takes the due row at once) and the message
goes back for a re-check after :func:`recheck_delay` (15 s doubling to 5 min, counted in
``RetryRequest.waits``). The re-check closes the one gap of collapsing: the run may have read the ledger
just before the row became due and finished without it; the re-check then finds the run ended and starts a
new one. A row the run sent makes the re-check ``done``. So many retry messages of one tenant lead to one
paced run, and no row is stranded.

Bounds (STYLE.md rule 11): the row's ``redrives`` counts hand-offs (each failed re-drive hands the row off
again with ``attempt`` + 1) and the trigger dead-letters past :data:`~proactive.orchestration.policies.MAX_REDRIVES`;
waits for a run under way are not attempts and are bounded by the run's own life. A trigger that fails
(storage unreachable) is redelivered by the host and, after ``maxDequeueCount``, poisoned and dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from proactive import function_names as fn
from proactive.broadcast.audience import stored_request
from proactive.broadcast.ports import Orchestrations
from proactive.delivery.ledger import CLAIMABLE
from proactive.delivery.ports import RetryRequest
from proactive.models import DeliveryRecord, Notification
from proactive.orchestration import policies
from proactive.orchestration.runs import TenantRun
from proactive.orchestration.tenant_broadcast import redrive_instance_id

__all__ = ["MAX_QUEUE_DELAY", "Action", "Decision", "PacedRuns", "decide", "recheck_delay"]

logger = logging.getLogger(__name__)

# A storage queue hides a message for at most 7 days.
MAX_QUEUE_DELAY = 7 * 24 * 3600.0

# One start at a time per run instance in this worker process (keyed by event loop and instance id). The
# host hands a batch of queue messages (host.json batchSize 16) to one worker at once, and many of them
# name the same tenant; the client's "is it running? start it" is a read then a write, so without this they
# would all start the same instance id together (the devhost and the extension both check, then create).
# Workers of other processes can still race in that window; a second run is harmless (claims), only waste.
# An entry lives while some start of its instance waits or runs.
_STARTS: dict[tuple[int, str], _Start] = {}


@dataclass
class _Start:
    lock: asyncio.Lock
    users: int = 0


class Action(StrEnum):
    """What a ``deliveries-retry`` message leads to."""

    DONE = "done"
    DEAD_LETTER = "dead_letter"
    WAIT = "wait"
    RUN = "run"


@dataclass(frozen=True)
class Decision:
    """The action for one message, with the delay before the message comes back (``wait``) and why."""

    action: Action
    delay: float = 0.0
    why: str = ""


def decide(request: RetryRequest, row: DeliveryRecord | None, *, cancelled: bool, now: datetime) -> Decision:
    """What one message leads to (the table in the module docstring)."""
    if row is None:
        return Decision(Action.DONE, why="ledger row not found")
    if cancelled:
        return Decision(Action.DONE, why="notification cancelled")
    if row.status not in CLAIMABLE:
        return Decision(Action.DONE, why=f"row is {row.status.value}")
    if request.attempt > policies.MAX_REDRIVES:
        return Decision(Action.DEAD_LETTER, why=f"handed off {request.attempt} times")
    if row.not_before is not None and row.not_before > now:
        delay = min(MAX_QUEUE_DELAY, (row.not_before - now).total_seconds())
        return Decision(Action.WAIT, delay=delay, why="not due yet")
    return Decision(Action.RUN, why="due")


def recheck_delay(waits: int) -> float:
    """Seconds before a message whose run was under way is checked again (the ``waits``-th time)."""
    first = policies.REDRIVE_RECHECK_FIRST.total_seconds()
    cap = policies.REDRIVE_RECHECK_MAX.total_seconds()
    return float(min(cap, first * 2.0 ** min(waits, 20)))


class PacedRuns:
    """Starts, or wakes, the re-drive run (a ``tenant_lane``) of a notification and tenant.

    Args:
        orchestrations: the Durable client of this invocation, behind its port.
        batch_size: tokens the run asks per grant (``Settings.batch_size``).
        batches_per_execution: batches before it continues as new (``Settings.batches_per_execution``).
    """

    def __init__(
        self, orchestrations: Orchestrations, *, batch_size: int, batches_per_execution: int
    ) -> None:
        self._orchestrations = orchestrations
        self._batch_size = batch_size
        self._batches_per_execution = batches_per_execution

    async def ensure(self, notification: Notification, tenant_id: str) -> bool:
        """Start the run; ``False`` when one was already under way (it was woken instead).

        Raises:
            Exception: the client could not start the run and none is under way (the trigger fails and
                the queue delivers the message again).
        """
        instance_id = redrive_instance_id(notification.id, tenant_id)
        key = (id(asyncio.get_running_loop()), instance_id)
        start = _STARTS.setdefault(key, _Start(asyncio.Lock()))
        start.users += 1
        try:
            async with start.lock:
                return await self._ensure(notification, tenant_id, instance_id)
        finally:
            start.users -= 1
            if start.users == 0:
                del _STARTS[key]

    async def _ensure(self, notification: Notification, tenant_id: str, instance_id: str) -> bool:
        if await self._running(instance_id):
            await self._orchestrations.raise_event(instance_id, fn.WAKE_EVENT, None)
            return False
        run = TenantRun(
            notification_id=notification.id,
            tenant_id=tenant_id,
            urgency=stored_request(notification).urgency,
            operation="send",
            batch_size=self._batch_size,
            batches_per_execution=self._batches_per_execution,
            redrive=True,
        )
        try:
            await self._orchestrations.start(fn.TENANT_LANE, instance_id, run.to_json())
        except Exception:
            # Another message of the tenant started it between our read and our start (the extension
            # refuses a second start of a running instance id): that run takes the row.
            if not await self._running(instance_id):
                raise
            await self._orchestrations.raise_event(instance_id, fn.WAKE_EVENT, None)
            return False
        logger.info("Started re-drive run %s", instance_id)
        return True

    async def _running(self, instance_id: str) -> bool:
        state = await self._orchestrations.state(instance_id)
        return state is not None and not state.terminal
