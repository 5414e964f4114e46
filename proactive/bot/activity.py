"""An inbound Teams activity, parsed at the edge into what the bot endpoint uses.

Only the fields capture, consent commands and replies need are read (``reference/teams-platform-facts.md``
section 4); the activity's own ``from`` / ``recipient`` / ``conversation`` objects are kept whole, so the
stored conversation reference has exactly the JSON shape botbuilder's ``get_conversation_reference`` gives.

Why not the Agents SDK's ``Activity`` model: its validation errors do not name the wire field a caller must
fix, and its ``get_conversation_reference`` drops the Teams fields (``aadObjectId``, ``tenantId``) we key
on. Parsing here is small, total and tested; anything missing raises :class:`~proactive.errors.InvalidInput`
whose ``field`` is the dotted camelCase path (``conversation.id``).

Guests and external users. Teams marks them only in member information: ``TeamsChannelAccount.userRole``
is ``"user"``, ``"guest"`` (Entra B2B guest of this tenant) or ``"anonymous"`` (meeting attendee without an
identity); the Bot Framework ``from.role`` is ``"user"`` / ``"bot"`` and says nothing about guests. An
account that names a ``tenantId`` other than the conversation's tenant is an external (federated) user.
So :func:`is_guest_account` flags ``userRole`` ``guest`` / ``anonymous`` and a differing ``tenantId``; a
plain ``from`` without either is a member. Guests are stored (they are recipients like any other) but
flagged, so broadcasts can leave them out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from proactive.errors import InvalidInput

__all__ = [
    "ActivityType",
    "ConversationType",
    "InboundActivity",
    "is_guest_account",
    "parse_activity",
]

_MESSAGE_ID = re.compile(r";messageid=.*$", re.IGNORECASE)
_AT_MENTION = re.compile(r"<at[^>]*>.*?</at>", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]+>")


class ActivityType(StrEnum):
    """The activity types the endpoint acts on; every other type is acknowledged and ignored."""

    MESSAGE = "message"
    CONVERSATION_UPDATE = "conversationUpdate"
    INSTALLATION_UPDATE = "installationUpdate"


class ConversationType(StrEnum):
    """Teams ``conversation.conversationType``."""

    PERSONAL = "personal"
    CHANNEL = "channel"
    GROUP_CHAT = "groupChat"


def _invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(f"{field}: {message}", code="invalid_activity", field=field)


def _object(data: Mapping[str, Any], key: str, path: str, *, required: bool) -> Mapping[str, Any] | None:
    value = data.get(key)
    if value is None:
        if required:
            raise _invalid(path, "is required")
        return None
    if not isinstance(value, Mapping):
        raise _invalid(path, "must be an object")
    return value


def _text(data: Mapping[str, Any] | None, key: str, path: str, *, required: bool = False) -> str | None:
    value = None if data is None else data.get(key)
    if value is None or value == "":
        if required:
            raise _invalid(path, "is required")
        return None
    if not isinstance(value, str):
        raise _invalid(path, "must be a string")
    return value


def _accounts(data: Mapping[str, Any], key: str) -> tuple[Mapping[str, Any], ...]:
    value = data.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(m, Mapping) and isinstance(m.get("id"), str) for m in value
    ):
        raise _invalid(key, "must be a list of accounts with an id")
    return tuple(value)


def is_guest_account(account: Mapping[str, Any] | None, tenant_id: str) -> bool:
    """Whether an account is a guest, an anonymous attendee or a user of another tenant (see module doc)."""
    if account is None:
        return False
    role = account.get("userRole")
    if isinstance(role, str) and role.lower() in {"guest", "anonymous"}:
        return True
    home = account.get("tenantId")
    return isinstance(home, str) and bool(home) and home.lower() != tenant_id.lower()


@dataclass(frozen=True)
class InboundActivity:
    """The parts of an activity the bot endpoint acts on.

    Attributes:
        type: The activity type (any string; see :class:`ActivityType` for the handled ones).
        service_url: ``serviceUrl``: where replies and later proactive sends go.
        tenant_id: ``channelData.tenant.id`` (else ``conversation.tenantId``).
        conversation: The ``conversation`` object as sent.
        conversation_type: ``conversation.conversationType`` (personal when absent and not a group).
        sender: The ``from`` object as sent.
        bot: The ``recipient`` object as sent (the bot).
        raw: The whole activity, for fields read once (``channelData``, ``entities``, ``locale``).
    """

    type: str
    service_url: str
    tenant_id: str
    conversation: Mapping[str, Any]
    conversation_type: str
    sender: Mapping[str, Any]
    bot: Mapping[str, Any]
    raw: Mapping[str, Any]

    @property
    def id(self) -> str | None:
        return _text(self.raw, "id", "id")

    @property
    def conversation_id(self) -> str:
        return str(self.conversation["id"])

    @property
    def channel_data(self) -> Mapping[str, Any]:
        value = self.raw.get("channelData")
        return value if isinstance(value, Mapping) else {}

    def channel_data_id(self, key: str) -> str | None:
        """``channelData.{key}.id`` when present (``team``, ``channel``, ``tenant``)."""
        value = self.channel_data.get(key)
        found = value.get("id") if isinstance(value, Mapping) else None
        return found if isinstance(found, str) and found else None

    @property
    def team_id(self) -> str | None:
        """``channelData.team.id``: the team, which is also the id of its General channel."""
        return self.channel_data_id("team")

    @property
    def channel_id(self) -> str | None:
        """``channelData.channel.id``, else the conversation id without its ``;messageid=`` thread suffix."""
        found = self.channel_data_id("channel")
        if found is None and self.conversation_type == ConversationType.CHANNEL:
            found = _MESSAGE_ID.sub("", self.conversation_id)
        return found

    @property
    def selected_channel_id(self) -> str | None:
        """``channelData.settings.selectedChannel.id``: the channel picked when the app was added to a team."""
        settings = self.channel_data.get("settings")
        selected = settings.get("selectedChannel") if isinstance(settings, Mapping) else None
        found = selected.get("id") if isinstance(selected, Mapping) else None
        return found if isinstance(found, str) and found else None

    @property
    def event_type(self) -> str | None:
        """``channelData.eventType`` (``teamDeleted``, ``channelCreated``, ...)."""
        value = self.channel_data.get("eventType")
        return value if isinstance(value, str) and value else None

    @property
    def action(self) -> str | None:
        """``action`` of an ``installationUpdate`` (``add``, ``remove``, ``add-upgrade``, ``remove-upgrade``)."""
        value = self.raw.get("action")
        return value.lower() if isinstance(value, str) and value else None

    @property
    def members_added(self) -> tuple[Mapping[str, Any], ...]:
        return _accounts(self.raw, "membersAdded")

    @property
    def members_removed(self) -> tuple[Mapping[str, Any], ...]:
        return _accounts(self.raw, "membersRemoved")

    @property
    def bot_id(self) -> str:
        return str(self.bot["id"])

    def bot_added(self) -> bool:
        """Whether ``membersAdded`` names the bot itself (its ``recipient.id``)."""
        return any(member["id"] == self.bot_id for member in self.members_added)

    def bot_removed(self) -> bool:
        """Whether ``membersRemoved`` names the bot itself."""
        return any(member["id"] == self.bot_id for member in self.members_removed)

    @property
    def aad_object_id(self) -> str | None:
        """``from.aadObjectId``: the user's Entra object id."""
        return _text(self.sender, "aadObjectId", "from.aadObjectId")

    @property
    def sender_is_guest(self) -> bool:
        return is_guest_account(self.sender, self.tenant_id)

    @property
    def time_zone(self) -> str | None:
        """The user's IANA time zone: ``localTimezone``, else the ``clientInfo`` entity's ``timezone``."""
        local = self.raw.get("localTimezone")
        if isinstance(local, str) and local.strip():
            return local.strip()
        entities = self.raw.get("entities")
        for entity in entities if isinstance(entities, list) else []:
            if isinstance(entity, Mapping) and entity.get("type") == "clientInfo":
                zone = entity.get("timezone")
                if isinstance(zone, str) and zone.strip():
                    return zone.strip()
        return None

    @property
    def locale(self) -> str | None:
        value = self.raw.get("locale")
        return value if isinstance(value, str) and value else None

    @property
    def text(self) -> str:
        value = self.raw.get("text")
        return value if isinstance(value, str) else ""

    def command_text(self) -> str:
        """The text with ``<at>Bot</at>`` mentions and other markup removed, whitespace collapsed."""
        without_mentions = _AT_MENTION.sub(" ", self.text)
        plain = _TAGS.sub(" ", without_mentions).replace("&nbsp;", " ")
        return " ".join(plain.split())

    def mentions_bot(self) -> bool:
        """Whether the bot is @mentioned (a ``mention`` entity naming the bot, or ``<at>`` markup)."""
        entities = self.raw.get("entities")
        for entity in entities if isinstance(entities, list) else []:
            if isinstance(entity, Mapping) and entity.get("type") == "mention":
                mentioned = entity.get("mentioned")
                if isinstance(mentioned, Mapping) and mentioned.get("id") == self.bot_id:
                    return True
        return bool(_AT_MENTION.search(self.text))


def parse_activity(data: Any) -> InboundActivity:
    """Check the fields every handled activity needs and wrap it.

    Args:
        data: The decoded JSON body.

    Raises:
        InvalidInput: a required field is missing or has the wrong type; ``field`` names it.
    """
    if not isinstance(data, Mapping):
        raise InvalidInput("the body must be a JSON object (an activity)", code="invalid_activity")
    kind = _text(data, "type", "type", required=True)
    service_url = _text(data, "serviceUrl", "serviceUrl", required=True)
    assert kind is not None and service_url is not None  # required=True
    if not service_url.lower().startswith(("https://", "http://")):
        raise _invalid("serviceUrl", "must be an absolute http(s) URL")
    conversation = _object(data, "conversation", "conversation", required=True)
    assert conversation is not None
    conversation_id = _text(conversation, "id", "conversation.id", required=True)
    assert conversation_id is not None
    sender = _object(data, "from", "from", required=True)
    bot = _object(data, "recipient", "recipient", required=True)
    assert sender is not None and bot is not None
    _text(sender, "id", "from.id", required=True)
    _text(bot, "id", "recipient.id", required=True)
    channel_data = _object(data, "channelData", "channelData", required=False) or {}
    tenant = _object(channel_data, "tenant", "channelData.tenant", required=False)
    tenant_id = _text(tenant, "id", "channelData.tenant.id") or _text(
        conversation, "tenantId", "conversation.tenantId"
    )
    if tenant_id is None:
        raise _invalid("channelData.tenant.id", "is required (or conversation.tenantId)")
    conversation_type = _text(conversation, "conversationType", "conversation.conversationType")
    if conversation_type is None:
        conversation_type = (
            ConversationType.GROUP_CHAT if conversation.get("isGroup") is True else ConversationType.PERSONAL
        )
    return InboundActivity(
        type=kind,
        service_url=service_url,
        tenant_id=tenant_id,
        conversation=conversation,
        conversation_type=conversation_type,
        sender=sender,
        bot=bot,
        raw=data,
    )
