"""Which conversation references an activity creates, refreshes or retires, and applying that to the store.

:func:`plan_capture` is pure: activity in, steps out. :class:`ReferenceCapture` applies the steps to a
:class:`~proactive.storage.ports.ReferenceStore`, whose ``update`` changes a row atomically.
The rules (``reference/teams-platform-facts.md`` section 4):

======================================================  ==========================================================
activity                                                steps
======================================================  ==========================================================
``message`` (any scope)                                 upsert the scope's reference
``installationUpdate`` ``add`` / ``add-upgrade``        upsert the scope's reference; in a team also the General
                                                        channel (id = team id) and ``settings.selectedChannel``
``installationUpdate`` ``remove`` / ``remove-upgrade``  deactivate the scope's reference (a team: all its channels)
``conversationUpdate`` bot in ``membersRemoved``        as ``remove``
``conversationUpdate`` ``teamDeleted``                  deactivate every channel of the team
``conversationUpdate`` ``channelDeleted``               deactivate ``channel:{channelData.channel.id}``
``conversationUpdate`` ``channelCreated`` / renamed /   upsert ``channel:{channelData.channel.id}``
restored
``conversationUpdate`` ``teamRestored`` / renamed,      upsert the scope's reference (the activity proves the bot
bot or members added, anything else                     is there)
``conversationUpdate`` only other users removed         nothing: the conversation still works for the bot
======================================================  ==========================================================

Scopes and keys: personal = ``user:{from.aadObjectId}``; channel = ``channel:{channelId}`` with the
reference's conversation id set to the channel id itself (a ``;messageid=`` suffix would make every later
proactive send a reply in that one thread); group chat = ``chat:{conversation.id}``.

Each upsert records the incoming ``serviceUrl``, the time zone when the activity carries one (else the one
stored before), the guest flag, and ``confirmed_at``. A reference that was inactive (uninstalled, stale)
becomes active again: a re-install refreshes it. To keep busy chats from writing a row per message, a
reference that is active, unchanged and confirmed within :data:`CONFIRM_INTERVAL` is not rewritten.

Each upsert is a compare-and-swap on the reference's row (``ReferenceStore.update``), so of
activities applied at the same time for one recipient exactly one sees the reference absent or inactive
and turns it active: :attr:`CaptureResult.newly_active` names a key for one activity only, which is what
the welcome is decided on (Teams delivers a personal install as two activities at the same instant).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from proactive.bot.activity import ActivityType, ConversationType, InboundActivity
from proactive.errors import InvalidInput
from proactive.models import ConversationReference, RecipientKind, StoredReference, recipient_key
from proactive.storage.ports import ReferenceStore

__all__ = [
    "CONFIRM_INTERVAL",
    "CaptureResult",
    "Deactivate",
    "DeactivateTeam",
    "ReferenceCapture",
    "StaleReason",
    "Upsert",
    "conversation_reference",
    "plan_capture",
]

logger = logging.getLogger(__name__)

CONFIRM_INTERVAL = timedelta(hours=1)
"""An unchanged active reference is rewritten at most this often, just to move ``confirmed_at``."""

_INSTALL_ACTIONS = frozenset({"add", "add-upgrade"})
_UNINSTALL_ACTIONS = frozenset({"remove", "remove-upgrade"})
_CHANNEL_UPSERT_EVENTS = frozenset({"channelcreated", "channelrenamed", "channelrestored"})


class StaleReason:
    """Why a reference was deactivated (stored in ``stale_reason``)."""

    UNINSTALLED = "uninstalled"
    BOT_REMOVED = "bot_removed"
    TEAM_DELETED = "team_deleted"
    CHANNEL_DELETED = "channel_deleted"


@dataclass(frozen=True)
class Upsert:
    """Store (or refresh) the reference of one recipient."""

    kind: RecipientKind
    recipient_id: str
    reference: ConversationReference
    team_id: str | None = None
    is_guest: bool = False

    @property
    def key(self) -> str:
        return recipient_key(self.kind, self.recipient_id)


@dataclass(frozen=True)
class Deactivate:
    """Mark one recipient's reference inactive."""

    kind: RecipientKind
    recipient_id: str
    reason: str

    @property
    def key(self) -> str:
        return recipient_key(self.kind, self.recipient_id)


@dataclass(frozen=True)
class DeactivateTeam:
    """Mark every channel reference of a team inactive (uninstalled from the team, team deleted)."""

    team_id: str
    reason: str


CaptureStep = Upsert | Deactivate | DeactivateTeam


def conversation_reference(
    activity: InboundActivity, conversation_id: str | None = None
) -> ConversationReference:
    """The botbuilder-shaped reference of ``activity`` (optionally for another conversation id of the team).

    Raises:
        InvalidInput: the activity's accounts do not fit the Bot Framework shape (names the field).
    """
    conversation = dict(activity.conversation)
    data: dict[str, Any] = {
        "user": dict(activity.sender),
        "bot": dict(activity.bot),
        "conversation": conversation,
        "channelId": activity.raw.get("channelId") or "msteams",
        "serviceUrl": activity.service_url,
    }
    if conversation_id is not None:
        conversation["id"] = conversation_id
    elif activity.id is not None:
        data["activityId"] = activity.id
    if activity.locale is not None:
        data["locale"] = activity.locale
    try:
        return ConversationReference.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        parts = [str(part) for part in first["loc"]]
        # Report the activity's own field names: the reference's user / bot are its from / recipient.
        parts[:1] = [_WIRE_NAMES.get(parts[0], parts[0])] if parts else ["activity"]
        location = ".".join(parts)
        raise InvalidInput(f"{location}: {first['msg']}", code="invalid_activity", field=location) from None


_WIRE_NAMES = {"user": "from", "bot": "recipient"}


def _personal_id(activity: InboundActivity) -> str:
    aad = activity.aad_object_id
    if aad is None:
        raise InvalidInput(
            "from.aadObjectId: is required in personal scope",
            code="invalid_activity",
            field="from.aadObjectId",
        )
    return aad


def _scope_upserts(activity: InboundActivity, *, install: bool = False) -> list[CaptureStep]:
    scope = activity.conversation_type
    if scope == ConversationType.PERSONAL:
        reference = conversation_reference(activity)
        return [
            Upsert(RecipientKind.USER, _personal_id(activity), reference, is_guest=activity.sender_is_guest)
        ]
    if scope == ConversationType.CHANNEL:
        team_id = activity.team_id
        channel_ids = [activity.channel_id]
        if install:
            # The General channel's id is the team id; the picked channel is where the user wants messages.
            channel_ids += [team_id, activity.selected_channel_id]
        unique = list(dict.fromkeys(c for c in channel_ids if c))
        return [
            Upsert(RecipientKind.CHANNEL, channel, conversation_reference(activity, channel), team_id=team_id)
            for channel in unique
        ]
    return [Upsert(RecipientKind.CHAT, activity.conversation_id, conversation_reference(activity))]


def _scope_removal(activity: InboundActivity, reason: str) -> list[CaptureStep]:
    scope = activity.conversation_type
    if scope == ConversationType.PERSONAL:
        return [Deactivate(RecipientKind.USER, _personal_id(activity), reason)]
    if scope == ConversationType.CHANNEL:
        team = activity.team_id or activity.channel_id
        return [DeactivateTeam(team, reason)] if team else []
    return [Deactivate(RecipientKind.CHAT, activity.conversation_id, reason)]


def plan_capture(activity: InboundActivity) -> tuple[CaptureStep, ...]:
    """The capture steps for ``activity`` (the table in the module docstring); empty for other types.

    Raises:
        InvalidInput: a field the steps need is missing (``from.aadObjectId`` in personal scope, ...).
    """
    kind = activity.type
    if kind == ActivityType.MESSAGE:
        return tuple(_scope_upserts(activity))
    if kind == ActivityType.INSTALLATION_UPDATE:
        action = activity.action
        if action in _INSTALL_ACTIONS:
            return tuple(_scope_upserts(activity, install=True))
        if action in _UNINSTALL_ACTIONS:
            return tuple(_scope_removal(activity, StaleReason.UNINSTALLED))
        raise InvalidInput(
            "action: must be add, remove, add-upgrade or remove-upgrade",
            code="invalid_activity",
            field="action",
        )
    if kind != ActivityType.CONVERSATION_UPDATE:
        return ()
    if activity.bot_removed():
        return tuple(_scope_removal(activity, StaleReason.BOT_REMOVED))
    event = (activity.event_type or "").lower()
    if event == "teamdeleted":
        team = activity.team_id
        return (DeactivateTeam(team, StaleReason.TEAM_DELETED),) if team else ()
    if event in {"channeldeleted", *_CHANNEL_UPSERT_EVENTS}:
        channel = activity.channel_data_id("channel")
        if channel is None:
            raise InvalidInput(
                "channelData.channel.id: is required for channel events",
                code="invalid_activity",
                field="channelData.channel.id",
            )
        if event == "channeldeleted":
            return (Deactivate(RecipientKind.CHANNEL, channel, StaleReason.CHANNEL_DELETED),)
        reference = conversation_reference(activity, channel)
        return (Upsert(RecipientKind.CHANNEL, channel, reference, team_id=activity.team_id),)
    if activity.members_removed and not activity.members_added:
        return ()
    return tuple(_scope_upserts(activity, install=activity.bot_added()))


@dataclass(frozen=True)
class CaptureResult:
    """What applying the steps did.

    Attributes:
        stored: keys written (new or refreshed).
        unchanged: keys already active and recently confirmed (not rewritten).
        deactivated: keys marked inactive.
        newly_active: keys this activity turned from absent or inactive to active (first install,
            re-install). Atomic per key: of concurrent activities only the one whose write did it has it.
    """

    stored: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    deactivated: tuple[str, ...] = ()
    newly_active: frozenset[str] = field(default_factory=frozenset)


class ReferenceCapture:
    """Applies capture steps to the reference store.

    Args:
        references: The store.
        clock: The current time, aware UTC.
    """

    def __init__(self, references: ReferenceStore, clock: Callable[[], datetime]) -> None:
        self._references = references
        self._clock = clock

    async def apply(self, activity: InboundActivity, steps: tuple[CaptureStep, ...]) -> CaptureResult:
        """Apply ``steps`` for ``activity``'s tenant, in order.

        Raises:
            StorageError: the store failed; steps before it may have been applied (each is idempotent).
                :class:`~proactive.errors.ConcurrencyConflict` when a reference kept changing under us.
        """
        stored: list[str] = []
        unchanged: list[str] = []
        deactivated: list[str] = []
        newly_active: set[str] = set()
        now = self._clock()
        tenant = activity.tenant_id
        for step in steps:
            if isinstance(step, Upsert):
                written, was_active = await self._upsert(tenant, step, activity.time_zone, now)
                (stored if written else unchanged).append(step.key)
                if not was_active:
                    newly_active.add(step.key)
            elif isinstance(step, Deactivate):
                if await self._references.deactivate(tenant, step.key, step.reason, now):
                    deactivated.append(step.key)
            else:
                deactivated.extend(await self._deactivate_team(tenant, step, now))
        return CaptureResult(tuple(stored), tuple(unchanged), tuple(deactivated), frozenset(newly_active))

    async def _upsert(
        self, tenant: str, step: Upsert, time_zone: str | None, now: datetime
    ) -> tuple[bool, bool]:
        """Store the reference of ``step``; ``(written, was_active)``, as of the write that counted."""

        def change(previous: StoredReference | None) -> StoredReference | None:
            candidate = StoredReference(
                tenant_id=tenant,
                kind=step.kind,
                recipient_id=step.recipient_id,
                reference=step.reference,
                active=True,
                stale_reason=None,
                time_zone=time_zone or (previous.time_zone if previous else None),
                team_id=step.team_id or (previous.team_id if previous else None),
                is_guest=step.is_guest,
                updated_at=now,
                confirmed_at=now,
            )
            if previous is not None and previous.active and _same(previous, candidate):
                confirmed = previous.confirmed_at or previous.updated_at
                if now - confirmed < CONFIRM_INTERVAL:
                    return None
            return candidate

        # A plain read then write would let two activities both see "not active" and both report the
        # key newly active (two welcomes); the conditional write lets only one of them get there.
        previous, written = await self._references.update(tenant, step.key, change)
        return written is not None, previous is not None and previous.active

    async def _deactivate_team(self, tenant: str, step: DeactivateTeam, now: datetime) -> list[str]:
        keys = {recipient_key(RecipientKind.CHANNEL, step.team_id)}
        continuation: str | None = None
        while True:
            page = await self._references.list_tenant(tenant, active_only=True, continuation=continuation)
            keys.update(
                ref.key
                for ref in page.items
                if ref.kind is RecipientKind.CHANNEL and ref.team_id == step.team_id
            )
            continuation = page.continuation
            if continuation is None:
                break
        done = []
        for key in sorted(keys):
            if await self._references.deactivate(tenant, key, step.reason, now):
                done.append(key)
        return done


def _same(previous: StoredReference, candidate: StoredReference) -> bool:
    def comparable(ref: StoredReference) -> Mapping[str, Any]:
        data = ref.to_json()
        for volatile in ("updatedAt", "confirmedAt"):
            data.pop(volatile, None)
        data.get("reference", {}).pop("activityId", None)
        return data

    return comparable(previous) == comparable(candidate)
