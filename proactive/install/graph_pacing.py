"""One limiter grant for the installs a worker runs at once: coalesce admissions per tenant.

A Functions worker runs up to ``batchSize`` (16) ``installs`` messages at once, usually of the same tenant.
Asking the tenant's limiter entity once per install would cost one orchestration and one entity operation
each, and one entity serves roughly 64 operations per second (``durable-functions-python-notes.md``): with
a report per install too, that is the whole budget at 30 installs per second. :class:`CoalescingAdmissions`
asks once for everyone waiting (``want`` = how many wait) and hands out the grant's slots in order, slot
``i`` at ``notBefore + i * paceSeconds``; callers beyond the grant's tokens wait for the next grant, and
when the limiter grants nothing (its breaker is open) every waiting caller gets that answer.

Per event loop and tenant; nothing is shared across processes (each worker asks the entity for itself,
and the entity keeps every worker's grants within the tenant's rate).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from proactive.install.ports import Admission
from proactive.limiter import Grant

__all__ = ["MAX_WANT", "CoalescingAdmissions"]

MAX_WANT = 32
"""Most slots asked for at once (the Functions host runs at most 32 queue messages at once)."""

Acquire = Callable[[str, int], Awaitable[Grant]]


@dataclass
class _Waiting:
    callers: list[asyncio.Future[Admission]] = field(default_factory=list)
    draining: bool = False
    task: asyncio.Task[None] | None = None  # held so the running drain is not garbage-collected


class CoalescingAdmissions:
    """Coalesces concurrent admissions of one tenant into one grant (see the module docstring)."""

    def __init__(self) -> None:
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Waiting]] = (
            weakref.WeakKeyDictionary()
        )

    async def admit(self, tenant_id: str, acquire: Acquire) -> Admission:
        """One install's admission; ``acquire(tenant, want)`` asks the limiter when no grant is on its way.

        Raises:
            Whatever ``acquire`` raised, for every caller that waited on it.
        """
        loop = asyncio.get_running_loop()
        waiting = self._loops.setdefault(loop, {}).setdefault(tenant_id.lower(), _Waiting())
        future: asyncio.Future[Admission] = loop.create_future()
        waiting.callers.append(future)
        if not waiting.draining:
            waiting.draining = True
            waiting.task = loop.create_task(self._drain(tenant_id, waiting, acquire))
        return await future

    async def _drain(self, tenant_id: str, waiting: _Waiting, acquire: Acquire) -> None:
        try:
            while waiting.callers:
                await asyncio.sleep(0)  # let callers started in the same tick join this grant
                batch = waiting.callers[:MAX_WANT]
                del waiting.callers[: len(batch)]
                try:
                    grant = await acquire(tenant_id, len(batch))
                except Exception as exc:  # every caller of this grant sees the failure
                    for caller in batch:
                        if not caller.done():
                            caller.set_exception(exc)
                    continue
                if grant.tokens < 1:
                    for caller in batch:
                        if not caller.done():
                            caller.set_result(Admission(0, grant.not_before, grant.granted_at))
                    continue
                for index, caller in enumerate(batch[: grant.tokens]):
                    slot = grant.not_before + index * grant.pace_seconds
                    if not caller.done():
                        caller.set_result(Admission(1, slot, grant.granted_at, grant.pace_seconds))
                waiting.callers[:0] = batch[grant.tokens :]  # first in line for the next grant
        finally:
            waiting.draining = False
