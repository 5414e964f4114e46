"""The one error tree of the product.

Retry decisions go by type, never by message text. Adapters translate SDK and HTTP errors into
these at the boundary (``raise ... from exc``)::

    ProactiveError
    ├── ConfigurationError            a setting is missing or malformed (fails at start)
    ├── InvalidInput                  a caller's request is wrong (HTTP 400/413, names the field)
    ├── AuthenticationError           an inbound token failed validation (HTTP 401)
    ├── OutboundHostRefused           a service URL or Graph host is not on the allow-list
    ├── StorageError                  Table / Queue storage failed
    │   ├── ConcurrencyConflict       ETag mismatch or row already exists: someone else won
    │   └── RecordNotFound
    └── DeliveryError                 what the Bot Connector or Graph answered
        ├── TransientDeliveryError    retry in-process with backoff (bounded attempts)
        │   ├── Throttled             429, carries retry_after
        │   ├── ServiceBusy           412, 502, 503, 504 (504 after PUT / DELETE)
        │   └── TransportFailure      timeout, connection reset, 504 after a POST (outcome unknown)
        └── PermanentDeliveryError    never retried as is
            ├── RecipientUnreachable  403 MessageWritesBlocked / ConversationBlockedByUser
            ├── ReferenceStale        403 BotNotInConversationRoster / ForbiddenOperationException,
            │                         404 ConversationNotFound: reinstall through Graph
            ├── TenantDisabled        403 BotDisabledByAdmin
            ├── MessageRejected       400 BadArgument, 413 MessageSizeTooBig
            ├── ActivityNotFound      404 ActivityNotFoundInConversation (update / delete)
            ├── ServiceFailed         500 (the docs say do not retry)
            ├── BotMisconfigured      401, 403 NotEnoughPermissions / InvalidBotApiHost
            ├── GraphAccessDenied     Graph 401 / 403: admin consent or an application permission missing
            └── DirectoryObjectNotFound  Graph 404: no such user, group, team or app in the tenant
"""

from __future__ import annotations

from typing import Any


class ProactiveError(Exception):
    """Root of every error this product raises on purpose."""


class ConfigurationError(ProactiveError):
    """A setting is missing or malformed.

    Attributes:
        setting: the name of the offending setting, as it appears in the environment.
    """

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class InvalidInput(ProactiveError):
    """A caller's request is wrong. Maps to HTTP 400 (or ``status``) with a JSON error body.

    Attributes:
        code: a stable machine-readable code such as ``invalid_field``.
        field: the request field at fault (dotted path), when there is one.
        details: extra JSON-able detail for the caller.
        status: the HTTP status to answer with.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid_request",
        field: str | None = None,
        details: Any = None,
        status: int = 400,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.details = details
        self.status = status

    def to_body(self) -> dict[str, Any]:
        """The ``{"error": {"code", "message", "details"}}`` body of the HTTP contract."""
        details: Any = self.details
        if details is None and self.field is not None:
            details = [{"field": self.field, "message": str(self)}]
        return {"error": {"code": self.code, "message": str(self), "details": details or []}}


class AuthenticationError(ProactiveError):
    """An inbound request's credentials failed validation. Maps to HTTP 401.

    Attributes:
        reason: a stable short code such as ``expired`` or ``invalid_audience``; never the token.
        detail: a short text we write ourselves (never attacker-controlled claim values).
        status_code: the HTTP status the endpoint answers with.
    """

    status_code = 401

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason
        self.detail = detail


class OutboundHostRefused(ProactiveError):
    """A URL we were about to send a token to is not on the outbound host allow-list."""

    def __init__(self, url_host: str) -> None:
        super().__init__(f"outbound host not allowed: {url_host}")
        self.host = url_host


class StorageError(ProactiveError):
    """Table or Queue storage failed in a way the caller cannot fix by retrying the same call."""


class ConcurrencyConflict(StorageError):
    """The row changed since it was read (ETag mismatch) or already exists: another writer won."""


class RecordNotFound(StorageError):
    """The row does not exist."""


class DeliveryError(ProactiveError):
    """What a remote service (Bot Connector, Graph) answered when it did not accept a call.

    Attributes:
        status: the HTTP status, or ``None`` when no response arrived.
        code: the service's error code or sub code (``MessageWritesBlocked``), when given.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class TransientDeliveryError(DeliveryError):
    """Worth retrying after a delay."""


class Throttled(TransientDeliveryError):
    """429: retry after ``retry_after`` seconds (``None`` when the service gave no header)."""

    def __init__(
        self, message: str, *, retry_after: float | None, status: int = 429, code: str | None = None
    ):
        super().__init__(message, status=status, code=code or "Throttled")
        self.retry_after = retry_after


class ServiceBusy(TransientDeliveryError):
    """412, 502, 503 or 504: the documented retry-with-backoff answers."""


class TransportFailure(TransientDeliveryError):
    """No usable answer: timeout (a gateway's 504 after a POST included), connection reset, DNS failure."""


class PermanentDeliveryError(DeliveryError):
    """Never retried as is; the recipient is recorded with the reason."""


class RecipientUnreachable(PermanentDeliveryError):
    """The user blocked or uninstalled the bot: stop sending to this recipient."""


class ReferenceStale(PermanentDeliveryError):
    """The stored conversation no longer works; reinstalling through Graph may fix it."""


class TenantDisabled(PermanentDeliveryError):
    """A tenant admin blocked the app: stop for the tenant until an activity arrives again."""


class MessageRejected(PermanentDeliveryError):
    """The message itself is bad (400) or too large (413)."""


class ActivityNotFound(PermanentDeliveryError):
    """Update or delete of a message the conversation does not have."""


class ServiceFailed(PermanentDeliveryError):
    """500 ServiceError: the Teams docs say not to retry."""


class BotMisconfigured(PermanentDeliveryError):
    """The bot's registration or permissions are wrong: an operator must act."""


class GraphAccessDenied(PermanentDeliveryError):
    """Graph answered 401 or 403: the tenant's admin has not consented, or a permission is missing.

    The whole tenant is affected, not one recipient: callers record it once per tenant.
    """


class DirectoryObjectNotFound(PermanentDeliveryError):
    """Graph answered 404: the user, group, team or catalog app does not exist in the tenant."""
