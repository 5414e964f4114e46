"""The Microsoft 365 Agents SDK's activity schema at the bot endpoint's edge.

Replies are built with the SDK's ``Activity.create_reply`` so their shape (from/recipient swapped,
conversation, channel id, reply-to id, locale) is the one the SDK's own adapters produce. Inbound
activities are still checked field by field by :mod:`proactive.bot.activity` first, because the
SDK's validation errors do not name the wire field a caller has to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from microsoft_agents.activity import Activity, ActivityTypes, TextFormatTypes
from pydantic import ValidationError

from proactive.errors import InvalidInput


def build_reply(inbound: Mapping[str, Any], text: str) -> dict[str, Any]:
    """The wire JSON of a markdown text reply to ``inbound``.

    Only a reply to a ``message`` keeps ``replyToId``: a welcome sent for an install event starts
    its own message rather than answering an event the user never saw.

    Raises:
        InvalidInput: the SDK's schema rejects the inbound activity.
    """
    try:
        activity = Activity.model_validate(dict(inbound))
    except ValidationError as exc:
        raise InvalidInput(
            "the activity does not fit the Bot Framework schema", code="invalid_activity"
        ) from exc
    reply = activity.create_reply(text)
    reply.text_format = TextFormatTypes.markdown
    wire: dict[str, Any] = reply.model_dump(mode="json", by_alias=True, exclude_none=True)
    if activity.type != ActivityTypes.message:
        wire.pop("replyToId", None)
    # Teams stamps its own time; empty lists only add bytes to every reply.
    for key in ("timestamp", "localTimestamp", "attachments", "entities"):
        if not wire.get(key):
            wire.pop(key, None)
    return wire
