"""The product's data, as frozen pydantic models: snake_case in Python, camelCase on the wire.

Everything here round-trips through JSON (``to_json()`` / ``from_json()``), because everything that
passes between functions (HTTP, Durable inputs, queue messages, table rows) is JSON.

:class:`ConversationReference` keeps the exact JSON shape Bot Framework bots store
(``activityId, user, bot, conversation, channelId, locale, serviceUrl``) and keeps any field it does
not know, so references captured by a botbuilder bot import unchanged and export unchanged.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

JsonScalar = str | int | float | bool | None


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC. Pass a clock instead where tests need control."""
    return datetime.now(UTC)


class WireModel(BaseModel):
    """Base of every model: frozen, camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, alias_generator=to_camel, extra="forbid")

    def to_json(self) -> dict[str, Any]:
        """The wire form: camelCase keys, ISO datetimes, ``None`` fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Parse the wire form (a dict, or JSON text).

        Raises:
            pydantic.ValidationError: the data does not fit the model.
        """
        if isinstance(data, str | bytes):
            return cls.model_validate_json(data)
        return cls.model_validate(data)


class _OpenWireModel(WireModel):
    # Bot Framework objects carry fields we do not model (properties, role, ...): keep them.
    model_config = ConfigDict(extra="allow")


class ChannelAccount(_OpenWireModel):
    """A user or bot in a conversation (Bot Framework ``ChannelAccount``)."""

    id: str
    name: str | None = None
    aad_object_id: str | None = None
    role: str | None = None


class ConversationAccount(_OpenWireModel):
    """A conversation (Bot Framework ``ConversationAccount``)."""

    id: str
    is_group: bool | None = None
    conversation_type: str | None = None
    tenant_id: str | None = None
    name: str | None = None
    aad_object_id: str | None = None
    role: str | None = None


class ConversationReference(_OpenWireModel):
    """What a bot needs to message a conversation later (Bot Framework ``ConversationReference``)."""

    activity_id: str | None = None
    user: ChannelAccount | None = None
    bot: ChannelAccount
    conversation: ConversationAccount
    channel_id: str = "msteams"
    locale: str | None = None
    service_url: str

    @field_validator("service_url")
    @classmethod
    def _absolute_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("serviceUrl must be an absolute http(s) URL")
        return value


class RecipientKind(StrEnum):
    """What a broadcast can address, and the prefix of its reference's RowKey."""

    USER = "user"  # personal (1:1) chat, keyed by AAD object id
    CHANNEL = "channel"  # a team's channel, keyed by channel id
    CHAT = "chat"  # a group chat, keyed by conversation id


def recipient_key(kind: RecipientKind, recipient_id: str) -> str:
    """The logical key of a recipient: ``user:{aadObjectId}``, ``channel:{id}`` or ``chat:{id}``."""
    return f"{kind.value}:{recipient_id}"


class StoredReference(WireModel):
    """A conversation reference as the product keeps it, with what it learned about it."""

    tenant_id: str = Field(min_length=1)
    kind: RecipientKind
    recipient_id: str = Field(min_length=1)
    reference: ConversationReference
    active: bool = True
    stale_reason: str | None = None
    time_zone: str | None = None
    team_id: str | None = None
    is_guest: bool = False
    updated_at: AwareDatetime
    confirmed_at: AwareDatetime | None = None

    @property
    def key(self) -> str:
        return recipient_key(self.kind, self.recipient_id)


class Recipient(WireModel):
    """One addressee of a broadcast, with the data that personalises its message."""

    tenant_id: str = Field(min_length=1)
    kind: RecipientKind
    recipient_id: str = Field(min_length=1)
    team_id: str | None = None
    data: dict[str, JsonScalar] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return recipient_key(self.kind, self.recipient_id)


CATEGORY_RULE = "1-64 lowercase letters, digits, '.', '-' or '_', starting with a letter or digit"
_CATEGORY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def normalise_category(value: str) -> str | None:
    """A notification category as stored and compared: trimmed and lowercased; ``None`` when invalid.

    The broadcast API and the bot's ``unsubscribe <category>`` both go through here, so what a user
    opts out of is exactly what a broadcast is tagged with (``"Deployments "`` and ``"deployments"``
    are one category; ``"deployments\n"`` cannot slip past an opt-out as another one).
    """
    candidate = value.strip().lower()
    return candidate if _CATEGORY.fullmatch(candidate) else None


class QuietHours(WireModel):
    """A daily window (local time) in which non-urgent messages wait; may wrap midnight."""

    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    end: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


class Preferences(WireModel):
    """A user's consent: opt-outs (all or by category) and quiet hours."""

    tenant_id: str = Field(min_length=1)
    aad_object_id: str = Field(min_length=1)
    opted_out_all: bool = False
    opted_out_categories: tuple[str, ...] = ()
    quiet_hours: QuietHours | None = None
    time_zone: str | None = None
    updated_at: AwareDatetime

    def allows(self, category: str | None) -> bool:
        """Whether a message of ``category`` may be sent (opt-outs only; quiet hours defer, not forbid)."""
        if self.opted_out_all:
            return False
        return category is None or category.lower() not in {c.lower() for c in self.opted_out_categories}


Operation = Literal["send", "update", "delete"]
"""What a broadcast's run does to its rows: ``send`` new messages, ``update`` or ``delete`` the sent ones."""


class Urgency(StrEnum):
    """``urgent`` ignores quiet hours (never opt-outs) and takes the limiter's urgent lane."""

    NORMAL = "normal"
    URGENT = "urgent"


class NotificationStatus(StrEnum):
    ACCEPTED = "accepted"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class Notification(WireModel):
    """A broadcast request as stored, with its live status and the last counts snapshot."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    request: dict[str, Any]
    status: NotificationStatus = NotificationStatus.ACCEPTED
    created_at: AwareDatetime
    updated_at: AwareDatetime | None = None
    counts: dict[str, int] = Field(default_factory=dict)


class DeliveryStatus(StrEnum):
    """Where one recipient of one notification stands. Terminal states never change again."""

    PENDING = "pending"
    SENDING = "sending"  # claimed by a sender; a crash here is re-driven by reconciliation
    SENT = "sent"
    DEFERRED = "deferred"  # quiet hours: waits for the window's end
    SUPPRESSED = "suppressed"  # opted out
    SKIPPED = "skipped"  # e.g. a channel where the bot is not installed
    UNREACHABLE = "unreachable"  # user blocked the bot
    STALE = "stale"  # no usable reference and no install to wait for (Graph bootstrap off, a group chat)
    INSTALLING = "installing"  # no usable reference; the Graph bootstrap is installing the bot for it
    FAILED = "failed"  # permanent failure of this message
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        # An installing row still moves: to pending (installed, re-driven) or to the install's outcome
        # (failed, dead_lettered, unreachable, cancelled), always through proactive.install.installs.
        return self not in {
            DeliveryStatus.PENDING,
            DeliveryStatus.SENDING,
            DeliveryStatus.DEFERRED,
            DeliveryStatus.INSTALLING,
        }


class ErrorInfo(WireModel):
    """Why something did not happen, as recorded for people and reports."""

    code: str
    message: str = ""
    http_status: int | None = None


class DeliveryRecord(WireModel):
    """One row of the delivery ledger: one recipient of one notification."""

    notification_id: str = Field(min_length=1)
    tenant_id: str = Field(min_length=1)
    recipient_key: str = Field(min_length=1)
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = Field(default=0, ge=0)
    last_error: ErrorInfo | None = None
    activity_id: str | None = None
    conversation_id: str | None = None
    data: dict[str, JsonScalar] = Field(default_factory=dict)
    not_before: AwareDatetime | None = None
    # How many times the row was handed to queue ``deliveries-retry`` after a transient failure; the retry
    # trigger dead-letters a row handed off more than ``policies.MAX_REDRIVES`` times.
    redrives: int = Field(default=0, ge=0)
    # Update (PATCH) and recall (DELETE) of a sent message record their progress here, not as a new
    # status, so counts by status keep meaning "what happened to the delivery". Values:
    # "update:<digest of the message>" (a later PATCH with other content updates again) or "delete".
    last_operation: str | None = None
    last_operation_at: AwareDatetime | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime


class SendStatus(StrEnum):
    """The outcome of one send, by what the caller must do next."""

    SENT = "sent"
    THROTTLED = "throttled"  # 429 after the sender's own retries
    TRANSIENT = "transient"  # 412/5xx/timeouts after the sender's own retries
    UNREACHABLE = "unreachable"
    STALE = "stale"
    TENANT_DISABLED = "tenant_disabled"
    REJECTED = "rejected"  # 400/413: the message is bad
    FAILED = "failed"  # other permanent failures


class SendOutcome(WireModel):
    """What happened to one recipient in one ``send_batch``: a value, never a sentinel number."""

    recipient_key: str
    status: SendStatus
    attempts: int = Field(ge=0)
    http_status: int | None = None
    error_code: str | None = None
    retry_after: float | None = None
    activity_id: str | None = None


class DeadLetter(WireModel):
    """A message that exhausted its retries, kept with the reason for an operator.

    Attributes:
        id: stable per work item (``{notificationId}:{tenantId}:{recipientKey}`` for deliveries), so a
            repeat is an idempotent upsert.
        source_queue: the queue whose messages ran out (names the re-driver, :mod:`proactive.delivery.dead_letters`).
        payload: the message (ids only, never message text).
        reason: why, for people (the row's last error).
        created_at: when it was dead-lettered (its UTC day is the table partition).
        notification_id: the notification, when the message names one (a filter of ``GET /api/deadletters``).
        tenant_id: the tenant, when the message names one (a filter too).
        reason_code: a low-cardinality code (``ServiceUnavailable``, ``malformed_message``, ...): filter and
            metric attribute.
        redriven_at: when an operator last re-drove it (``POST /api/deadletters/{id}/redrive``).
    """

    id: str = Field(min_length=1)
    source_queue: str
    payload: dict[str, Any]
    reason: str
    created_at: AwareDatetime
    notification_id: str | None = None
    tenant_id: str | None = None
    reason_code: str | None = None
    redriven_at: AwareDatetime | None = None

    @property
    def day(self) -> str:
        return self.created_at.astimezone(UTC).strftime("%Y%m%d")
