"""What the broadcast service needs from outside: the Durable client, and ``send_batch`` on the wire."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

__all__ = ["TERMINAL", "JsonSender", "OrchestrationState", "Orchestrations"]


JsonSender = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""``send_batch`` on the wire: ``SendBatchInput`` JSON in, ``SendBatchResult`` JSON out."""


TERMINAL: Final = frozenset({"Completed", "Failed", "Terminated", "Canceled"})


@dataclass(frozen=True)
class OrchestrationState:
    """What the service reads of an orchestration instance."""

    runtime_status: str
    custom_status: Any = None
    output: Any = None
    created_time: datetime | None = None
    last_updated_time: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.runtime_status in TERMINAL


class Orchestrations(Protocol):
    """The part of the Durable client the service uses."""

    async def start(self, name: str, instance_id: str, payload: dict[str, Any]) -> None:
        """Start (or restart a finished) orchestration ``name`` under ``instance_id``."""

    async def state(self, instance_id: str) -> OrchestrationState | None:
        """The instance's status, or ``None`` when there is no such instance."""

    async def raise_event(self, instance_id: str, name: str, data: Any) -> bool:
        """Send an external event; ``False`` when the instance is missing or already finished."""
