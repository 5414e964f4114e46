"""``POST /api/messages`` without the Functions types: bytes and a header in, status and JSON body out.

Answers:

- ``200 {}``: handled, or deliberately ignored (other tenant, disallowed ``serviceUrl``, activity types the
  bot does not act on). Teams must not redeliver those.
- ``400 {"error": {"code", "message", "details"}}``: the body is not JSON (nested too deeply included),
  not an object, or misses a field the activity needs (``details[0].field`` names it). Nothing is stored.
- ``401`` (same error shape, code ``unauthorized``): an app id is configured and the Bot Framework JWT is
  missing or fails any check. Nothing is read or stored; the reason goes to the log, not to the caller.
- ``413`` (code ``body_too_large``): the body is over :data:`MAX_BODY_BYTES`; it is not parsed.
- ``503``: our side cannot work right now (signing keys unreachable, storage down); Teams retries.

Order: the size, then the token from the header (signature, issuer, audience, lifetime), then the JSON,
then the token against the activity (channel, endorsement, ``serviceUrl``), then the activity's fields:
a caller without a valid token costs no parsing and learns nothing about what a valid activity needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from proactive import json_input
from proactive.bot.activity import parse_activity
from proactive.bot.handler import ActivityHandler
from proactive.bot.ports import Authenticator
from proactive.errors import AuthenticationError, InvalidInput, StorageError

__all__ = ["MAX_BODY_BYTES", "Authenticator", "BotEndpoint", "EndpointAnswer"]

logger = logging.getLogger(__name__)

_KEYS_UNAVAILABLE = "keys_unavailable"  # AuthFailure.KEYS_UNAVAILABLE: our side's fault, not the caller's


@dataclass(frozen=True)
class EndpointAnswer:
    """The HTTP answer: status and JSON body."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)


MAX_BODY_BYTES = 1024 * 1024
"""Largest accepted activity: Teams messages are capped near 100 KB, so 1 MB leaves room for any real one."""


def _error(status: int, code: str, message: str) -> EndpointAnswer:
    return EndpointAnswer(status, {"error": {"code": code, "message": message, "details": []}})


def _refused(exc: AuthenticationError) -> EndpointAnswer:
    if exc.reason == _KEYS_UNAVAILABLE:
        return _error(503, "keys_unavailable", "token signing keys cannot be fetched; retry later")
    return _error(401, "unauthorized", "a valid Bot Framework token is required")


class BotEndpoint:
    """The bot's messaging endpoint.

    Args:
        handler: Handles authenticated, parsed activities.
        authenticator: Validates the JWT; ``None`` runs anonymous (``BOT_AUTH=anonymous``: local development).
    """

    def __init__(self, handler: ActivityHandler, authenticator: Authenticator | None) -> None:
        self.handler = handler
        self._authenticator = authenticator
        self._announced_anonymous = False

    async def handle(self, body: bytes, authorization: str | None) -> EndpointAnswer:
        """Answer one request (see the module docstring for the statuses)."""
        if len(body) > MAX_BODY_BYTES:
            return _error(413, "body_too_large", f"an activity is at most {MAX_BODY_BYTES:,} bytes")
        verified: Any = None
        if self._authenticator is None:
            if not self._announced_anonymous:
                self._announced_anonymous = True
                logger.warning("Bot endpoint runs anonymous (BOT_AUTH=anonymous): tokens are not checked")
        else:
            try:
                verified = await self._authenticator.verify(authorization)
            except AuthenticationError as exc:
                return _refused(exc)

        try:
            data = json_input.loads(body) if body.strip() else None
        except ValueError:
            return _error(400, "invalid_json", "the body must be a JSON activity")
        if not isinstance(data, dict):
            return _error(400, "invalid_json", "the body must be a JSON object (an activity)")

        if self._authenticator is not None:
            try:
                self._authenticator.bind(verified, data)
            except AuthenticationError as exc:
                return _refused(exc)

        try:
            activity = parse_activity(data)
            outcome = await self.handler.handle(activity)
        except InvalidInput as exc:
            logger.info("Refused an activity: %s", exc.field or exc.code)
            return EndpointAnswer(exc.status, exc.to_body())
        except StorageError as exc:
            logger.error(
                "Storage failed while handling a %s activity: %s", data.get("type"), type(exc).__name__
            )
            return _error(503, "storage_unavailable", "storage is unavailable; retry later")
        if not outcome.handled:
            logger.info("Ignored a %s activity: %s", activity.type, outcome.reason)
        return EndpointAnswer(200, {})
