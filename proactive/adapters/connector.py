"""The Bot Connector v3 REST client for proactive sends, with every answer classified into the error tree.

Direct REST with the worker's shared ``aiohttp.ClientSession``, rather than the Agents SDK's
``ConnectorClient``: that client raises on non-2xx without the response body, and the body is what tells
``MessageWritesBlocked`` from ``BotNotInConversationRoster`` (``reference/teams-platform-facts.md``
section 3). Each call:

1. checks the service URL against the :class:`~proactive.outbound.OutboundPolicy` and talks to the URL
   the policy rebuilt, **before** a token is asked for or sent;
2. percent-encodes every id as one path segment (``19:...@thread.tacv2;messageid=...`` holds ``:``,
   ``@`` and ``;``), as the Bot Framework SDKs do (``quote(id, safe='')``), and joins it to the service
   URL whatever its trailing slash;
3. sends no redirects onward (a redirect would carry the token elsewhere);
4. turns every non-2xx answer into exactly one error class by :data:`ERROR_MAP`, and timeouts and
   connection failures into :class:`~proactive.errors.TransportFailure`.

Its ``code`` tells how far a failed request got: ``ConnectFailed`` never reached the service;
``Timeout`` and ``ConnectionLost`` may have been processed (a retry of a send may then duplicate it).
A ``504 Gateway Timeout`` after a ``POST`` (send, create) is such a timeout too: a gateway gave up
waiting, the service may still have processed it, so it is ``TransportFailure`` ``Timeout`` with status
504, not a :class:`~proactive.errors.ServiceBusy` to resend at once. After ``PUT`` and ``DELETE``
(idempotent) it stays ``ServiceBusy``.

Error bodies come in two shapes: ``{"error": {"code", "message"}}``, and for MessageWritesBlocked
``{"errorCode": 209, "message": "{\\"subCode\\": \\"MessageWritesBlocked\\", ...}"}`` (JSON inside a string).
A sub code found inside ``message`` wins over the outer code when the table knows it.

Nothing here logs a token or a message body; errors carry the operation, status and code only.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from proactive.adapters.bot_token import TokenProvider
from proactive.delivery.retry import parse_retry_after
from proactive.errors import (
    ActivityNotFound,
    BotMisconfigured,
    DeliveryError,
    MessageRejected,
    PermanentDeliveryError,
    RecipientUnreachable,
    ReferenceStale,
    ServiceBusy,
    ServiceFailed,
    TenantDisabled,
    Throttled,
    TransportFailure,
)
from proactive.outbound import OutboundPolicy

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "ERROR_MAP",
    "BotConnectorClient",
    "classify_error",
    "error_codes",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 30.0
_MAX_ERROR_BODY_BYTES = 64 * 1024
_SUCCESS = frozenset({200, 201, 202})

ERROR_MAP: Mapping[tuple[int, str | None], type[DeliveryError]] = MappingProxyType(
    {
        # One row per line of the facts sheet, section 3. ``None`` = any other code with that status.
        (400, "BadArgument"): MessageRejected,
        (400, None): MessageRejected,
        (401, "BotNotRegistered"): BotMisconfigured,
        (401, None): BotMisconfigured,
        (403, "MessageWritesBlocked"): RecipientUnreachable,
        (403, "BotDisabledByAdmin"): TenantDisabled,
        (403, "BotNotInConversationRoster"): ReferenceStale,
        # "mark stale; stop": reinstalling cannot undo a block, so the recipient is unreachable (errors.py).
        (403, "ConversationBlockedByUser"): RecipientUnreachable,
        # "install via Graph, then retry once": the reinstall path is the stale-reference path.
        (403, "ForbiddenOperationException"): ReferenceStale,
        (403, "InvalidBotApiHost"): BotMisconfigured,
        (403, "NotEnoughPermissions"): BotMisconfigured,
        (404, "ConversationNotFound"): ReferenceStale,
        (404, "ActivityNotFoundInConversation"): ActivityNotFound,
        (404, None): ReferenceStale,
        (412, None): ServiceBusy,
        (413, None): MessageRejected,
        (429, None): Throttled,
        (500, None): ServiceFailed,  # the docs say do not retry
        (502, None): ServiceBusy,
        (503, None): ServiceBusy,
        (504, None): ServiceBusy,
    }
)
"""``(status, code)`` -> error class; ``(status, None)`` covers that status's unlisted codes.

A status not listed at all is permanent ("avoid retrying status codes that aren't specified"):
other 4xx and 3xx -> :class:`PermanentDeliveryError`, other 5xx -> :class:`ServiceFailed`.
"""

_BY_CODE: Mapping[tuple[int, str], tuple[type[DeliveryError], str]] = {
    (status, code.lower()): (error, code) for (status, code), error in ERROR_MAP.items() if code is not None
}


def error_codes(body: bytes) -> list[str]:
    """The error codes a Bot Connector error body names, most specific first (sub code, then code).

    Accepts both shapes of the module docstring; anything else (HTML from a gateway, empty) gives ``[]``.
    """
    try:
        document: Any = json.loads(body)
    except ValueError:
        return []
    if not isinstance(document, dict):
        return []
    error = document.get("error")
    holder: Mapping[str, Any] = error if isinstance(error, dict) else document
    codes: list[str] = []
    message = holder.get("message")
    if isinstance(message, str) and message.lstrip().startswith("{"):
        try:
            inner: Any = json.loads(message)
        except ValueError:
            inner = None
        if isinstance(inner, dict) and isinstance(inner.get("subCode"), str) and inner["subCode"]:
            codes.append(inner["subCode"])
    for key in ("code", "subCode"):
        value = holder.get(key)
        if isinstance(value, str) and value and value not in codes:
            codes.append(value)
    return codes


def classify_error(
    status: int, codes: list[str], *, retry_after: float | None = None, operation: str = "call"
) -> DeliveryError:
    """The error for a non-2xx answer.

    Args:
        status: the HTTP status.
        codes: from :func:`error_codes`, most specific first.
        retry_after: the parsed ``Retry-After`` (used by :class:`Throttled`).
        operation: named in the message (``send``, ``create``, ...).
    """
    error_class: type[DeliveryError] | None = None
    code = codes[0] if codes else None
    for candidate in codes:
        known = _BY_CODE.get((status, candidate.lower()))
        if known is not None:
            error_class, code = known
            break
    if error_class is None:
        error_class = ERROR_MAP.get((status, None)) or (
            ServiceFailed if status >= 500 else PermanentDeliveryError
        )
    message = f"Bot Connector {operation} answered {status}" + (f" {code}" if code else "")
    if error_class is Throttled:
        return Throttled(message, retry_after=retry_after, status=status, code=code)
    return error_class(message, status=status, code=code)


class BotConnectorClient:
    """Proactive calls to the Bot Connector v3 API.

    Args:
        session: the worker's shared session (not owned: never closed here).
        tokens: gives the bearer token (``None`` = anonymous, no ``Authorization`` header).
        outbound_policy: the allow-list every service URL must pass before a token is sent.
        timeout: seconds for one request, connect to last byte.
        wall_clock: epoch seconds, for ``Retry-After`` given as an HTTP date.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        tokens: TokenProvider,
        outbound_policy: OutboundPolicy,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._tokens = tokens
        self._policy = outbound_policy
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._wall_clock = wall_clock

    async def send_activity(
        self, service_url: str, conversation_id: str, activity: Mapping[str, Any]
    ) -> str | None:
        """``POST {serviceUrl}/v3/conversations/{id}/activities``.

        Returns:
            The new activity's id (``None`` if a 2xx answer named none: the message was still accepted,
            so it must not be sent again).

        Raises:
            OutboundHostRefused: the service URL is not allowed; nothing was sent.
            DeliveryError: the classified failure (see :data:`ERROR_MAP`).
        """
        answer = await self._call(
            "send", "POST", service_url, ("conversations", conversation_id, "activities"), activity
        )
        return _string(answer, "id")

    async def create_conversation(
        self, service_url: str, parameters: Mapping[str, Any]
    ) -> tuple[str, str | None]:
        """``POST {serviceUrl}/v3/conversations`` with ConversationParameters.

        Returns:
            ``(conversation_id, activity_id)``; the activity id when ``parameters`` carried an activity.

        Raises:
            OutboundHostRefused: the service URL is not allowed; nothing was sent.
            DeliveryError: the classified failure; :class:`ServiceFailed` for a 2xx without an id.
        """
        answer = await self._call("create", "POST", service_url, ("conversations",), parameters)
        conversation_id = _string(answer, "id")
        if conversation_id is None:
            raise ServiceFailed("Bot Connector create answered without a conversation id", code="NoId")
        return conversation_id, _string(answer, "activityId")

    async def update_activity(
        self, service_url: str, conversation_id: str, activity_id: str, activity: Mapping[str, Any]
    ) -> None:
        """``PUT {serviceUrl}/v3/conversations/{id}/activities/{activityId}``.

        Raises:
            OutboundHostRefused: the service URL is not allowed; nothing was sent.
            DeliveryError: the classified failure (:class:`ActivityNotFound` for an unknown message).
        """
        path = ("conversations", conversation_id, "activities", activity_id)
        await self._call("update", "PUT", service_url, path, activity)

    async def delete_activity(self, service_url: str, conversation_id: str, activity_id: str) -> None:
        """``DELETE {serviceUrl}/v3/conversations/{id}/activities/{activityId}``.

        Raises:
            OutboundHostRefused: the service URL is not allowed; nothing was sent.
            DeliveryError: the classified failure (:class:`ActivityNotFound` for an unknown message).
        """
        path = ("conversations", conversation_id, "activities", activity_id)
        await self._call("delete", "DELETE", service_url, path, None)

    async def _call(
        self,
        operation: str,
        method: str,
        service_url: str,
        segments: tuple[str, ...],
        body: Mapping[str, Any] | None,
    ) -> Any:
        allowed = self._policy.check(service_url)  # before any token exists for this call
        url = URL(allowed.base + "/v3/" + "/".join(quote(s, safe="") for s in segments), encoded=True)
        headers: dict[str, str] = {}
        token = await self._tokens.token()
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self._session.request(
                method,
                url,
                json=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                raise_for_status=False,
            ) as response:
                if response.status in _SUCCESS:
                    text = await response.text()
                    logger.debug("Bot Connector %s on %s: %s", operation, allowed.host, response.status)
                    return _json_or_none(text)
                raw = await response.content.read(_MAX_ERROR_BODY_BYTES)
                error = classify_error(
                    response.status,
                    error_codes(raw),
                    retry_after=parse_retry_after(
                        response.headers.get("Retry-After"), now=self._wall_clock()
                    ),
                    operation=operation,
                )
        except TimeoutError as exc:
            raise TransportFailure(f"Bot Connector {operation} timed out", code="Timeout") from exc
        except aiohttp.ClientConnectorError as exc:
            raise TransportFailure(
                f"Bot Connector {operation}: could not connect", code="ConnectFailed"
            ) from exc
        except aiohttp.ClientError as exc:
            raise TransportFailure(
                f"Bot Connector {operation}: connection lost ({type(exc).__name__})", code="ConnectionLost"
            ) from exc
        logger.debug("Bot Connector %s on %s: %s %s", operation, allowed.host, error.status, error.code)
        if method == "POST" and error.status == 504:
            # A gateway that timed out waiting for Teams after a POST: the message may have been delivered.
            # Resending at once (as for 502/503) risks a duplicate, so it is a timeout, outcome unknown.
            raise TransportFailure(
                f"Bot Connector {operation} answered 504: a gateway timeout, outcome unknown",
                status=504,
                code="Timeout",
            ) from error
        if error.status == 401:
            # A token the service no longer accepts (revoked, clock skew) must not stay cached for an hour.
            invalidate = getattr(self._tokens, "invalidate", None)
            if callable(invalidate):
                invalidate()
        raise error


def _json_or_none(text: str) -> Any:
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _string(answer: Any, key: str) -> str | None:
    value = answer.get(key) if isinstance(answer, dict) else None
    return value if isinstance(value, str) and value else None
