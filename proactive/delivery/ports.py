"""Ports of delivery beyond :mod:`proactive.storage.ports`: the Bot Connector, the work queues, the re-driver.

* :class:`BotConnector` is what :class:`~proactive.adapters.connector.BotConnectorClient` already offers for
  proactive messages (send, update, delete), so the client fits as is.
* :class:`WorkQueue` is an Azure Storage queue reduced to what the product uses: put a JSON message (optionally
  invisible for a while), receive, delete. Adapters: :mod:`proactive.adapters.storage_queues` (Azure / Azurite)
  and :mod:`proactive.adapters.memory_queues` (in-memory fake); one contract suite runs against both.
* The two hand-off messages, :class:`InstallRequest` (queue ``installs``, read by the Graph bootstrap) and
  :class:`RetryRequest` (queue ``deliveries-retry``, read by its queue trigger), are wire models so producer
  and consumer parse the same shape.
* :class:`Redriver` re-drives the dead letters of one source queue; :data:`Sleep` and :class:`UniformSource`
  are the in-process retries' clock and randomness, injected so tests check delays exactly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import Field, model_validator

from proactive.models import DeadLetter, WireModel

__all__ = [
    "MAX_INSTALL_USERS",
    "BotConnector",
    "InstallRequest",
    "QueueMessage",
    "RedriveResult",
    "Redriver",
    "RetryRequest",
    "Sleep",
    "ThreadWindows",
    "UniformSource",
    "WorkQueue",
]


class BotConnector(Protocol):
    """The Bot Connector calls of a proactive sender (``BotConnectorClient`` implements it).

    Every method raises the error tree: :class:`~proactive.errors.OutboundHostRefused` before anything is
    sent to a refused service URL, :class:`~proactive.errors.DeliveryError` subclasses for the answers.
    """

    async def send_activity(
        self, service_url: str, conversation_id: str, activity: Mapping[str, Any]
    ) -> str | None:
        """Post ``activity``; the new activity id (``None`` if a 2xx named none: still accepted)."""

    async def update_activity(
        self, service_url: str, conversation_id: str, activity_id: str, activity: Mapping[str, Any]
    ) -> None:
        """Replace a sent activity."""

    async def delete_activity(self, service_url: str, conversation_id: str, activity_id: str) -> None:
        """Delete a sent activity."""


class ThreadWindows(Protocol):
    """Per-thread request windows shared by every sender (:mod:`proactive.limiter.threads`).

    Adapter: :class:`proactive.storage.stores.TableThreadWindows` (one row per thread, ETag-guarded).
    """

    async def reserve(self, tenant_id: str, conversation_id: str, now: datetime) -> datetime | None:
        """Take a place for a request starting at ``now``: ``None`` when taken, else the first start the
        windows allow (nothing was taken)."""


@dataclass(frozen=True)
class QueueMessage:
    """One received message.

    Attributes:
        id: the queue's message id.
        pop_receipt: proves this receiver holds the message; needed to delete it.
        body: the JSON object that was put.
        dequeue_count: how many times it has been received, this time included.
    """

    id: str
    pop_receipt: str
    body: dict[str, Any]
    dequeue_count: int


class WorkQueue(Protocol):
    """A storage queue of JSON objects. Created on first use, never in a constructor.

    Messages are plain JSON text (host.json ``messageEncoding: none``), so a Functions queue trigger reads
    exactly what :meth:`put` wrote. Errors: :class:`~proactive.errors.StorageError`.
    """

    name: str

    async def put(self, body: Mapping[str, Any], *, delay: float = 0.0) -> None:
        """Add a message, invisible for ``delay`` seconds (rounded up to whole seconds, at most 7 days)."""

    async def receive(
        self, *, max_messages: int = 32, visibility_timeout: float = 30.0
    ) -> list[QueueMessage]:
        """Take up to ``max_messages`` (1..32) visible messages, hiding them for ``visibility_timeout``."""

    async def delete(self, message: QueueMessage) -> None:
        """Remove a received message for good."""


class InstallRequest(WireModel):
    """Queue ``installs``: ask the Graph bootstrap to (re)install the bot for users or a team.

    Wire form ``{"tenantId", "aadObjectId" | "aadObjectIds" | "teamId" / "channelId", "reason"}``; ``reason``
    is the Teams error code or sender reason that made the reference useless (``ConversationNotFound``,
    ``no_reference``, ...). ``aadObjectIds`` carries up to :data:`MAX_INSTALL_USERS` (32) users of one tenant in
    one message (what :class:`~proactive.install.requests.InstallRequests` writes), so one queue message,
    one limiter grant and one report serve them all. ``channelId`` names a channel of the broadcast's
    audience whose team has no reference: the team to install comes from ``teamId`` or, when absent, from
    that audience. ``notificationId`` (optional) names the broadcast whose ledger rows wait for this install:
    once installed, those rows are re-driven in the same broadcast (:mod:`proactive.install.installs`).
    ``throttled`` counts how often Graph's 429 put the message back (each time visible after
    ``Retry-After``); ``failures`` the transient failures of earlier copies (a copy put back starts a new
    dequeue count).
    """

    tenant_id: str = Field(min_length=1)
    aad_object_id: str | None = None
    aad_object_ids: tuple[str, ...] | None = Field(default=None, min_length=1, max_length=32)
    team_id: str | None = None
    channel_id: str | None = None
    reason: str = Field(min_length=1)
    notification_id: str | None = None
    throttled: int | None = Field(default=None, ge=1)
    failures: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_target(self) -> InstallRequest:
        users = self.aad_object_id is not None or self.aad_object_ids is not None
        team = self.team_id is not None or self.channel_id is not None
        if users == team or (self.aad_object_id is not None and self.aad_object_ids is not None):
            raise ValueError(
                "an install request names users (aadObjectId or aadObjectIds) or a team (teamId and/or "
                "channelId), exactly one of them"
            )
        return self

    @property
    def users(self) -> tuple[str, ...]:
        """The users to install for (empty for a team install)."""
        if self.aad_object_ids is not None:
            return self.aad_object_ids
        return (self.aad_object_id,) if self.aad_object_id is not None else ()

    def for_users(self, users: tuple[str, ...] | list[str], **update: Any) -> InstallRequest:
        """The same request for ``users`` only (a put-back copy), one user in the single-user form."""
        users = tuple(users)
        single = len(users) == 1
        return self.model_copy(
            update={
                "aad_object_id": users[0] if single else None,
                "aad_object_ids": None if single else users,
                **update,
            }
        )


MAX_INSTALL_USERS = 32
"""Users per ``installs`` message: their installs' first requests fit one Graph limiter grant (its most)."""


class RetryRequest(WireModel):
    """Queue ``deliveries-retry``: one ledger row to (re)drive outside its broadcast's own run.

    Written for a row whose in-process retries ran out (the sender's hand-off), a row reconciliation
    found stuck, and a welcome (:mod:`proactive.bot.welcome`). The trigger never sends itself: it makes
    sure a paced run of the row's tenant takes the row (:mod:`proactive.delivery.redrive`).

    Attributes:
        notification_id: the notification.
        tenant_id: the recipient's tenant.
        recipient_key: the row's key (``user:{aad}``, ``channel:{id}``, ...).
        operation: what to re-drive (only ``send`` is handed off today).
        reason: the last error's code (``Throttled``, ``ServiceUnavailable``, ``Timeout``, ...), or
            ``reconciled`` / ``welcome``.
        uncertain: the last attempt may have been delivered (a timeout or a lost connection): a re-drive
            may duplicate it (the one documented duplicate window, see :mod:`proactive.delivery.batch`).
        attempt: which hand-off of the row this is (its ``DeliveryRecord.redrives`` when written; 0 for a
            first send such as a welcome). Past ``policies.MAX_REDRIVES`` the row is dead-lettered.
        waits: how often the trigger already put this message back because the row was not due yet or a
            run of the tenant was under way (spaces the re-checks out; never a reason to give up).
    """

    notification_id: str = Field(min_length=1)
    tenant_id: str = Field(min_length=1)
    recipient_key: str = Field(min_length=1)
    operation: Literal["send"] = "send"
    reason: str
    uncertain: bool = False
    attempt: int = Field(default=0, ge=0)
    waits: int = Field(default=0, ge=0)


@dataclass(frozen=True)
class RedriveResult:
    """What a re-drive did: ``requeued`` (a message is on its way) or ``in_progress`` (a sender has it)."""

    status: str
    detail: dict[str, Any]


class Redriver(Protocol):
    """Re-drives the dead letters of one source queue."""

    async def redrive(self, entry: DeadLetter) -> RedriveResult:
        """Put the work back on its paced path.

        Raises:
            InvalidInput: 409 when the work cannot or must not be re-driven (already done, settled).
        """


Sleep = Callable[[float], Awaitable[None]]
"""``asyncio.sleep`` in production; a recorder in tests."""


class UniformSource(Protocol):
    """Where jitter comes from: ``random.Random`` (seeded in tests) fits."""

    def random(self) -> float:
        """A float in [0, 1)."""
        ...
