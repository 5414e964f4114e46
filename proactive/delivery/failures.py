"""How a failed send is classified: the row status, the code, the hand-off, and the internal stop signals.

The table in :mod:`proactive.delivery.batch` says which answer becomes which row; this module is that table
as code, so every branch of the sender decides by error type, never by message text (STYLE.md rule 9).
"""

from __future__ import annotations

from datetime import datetime

from proactive.delivery.contract import Reason
from proactive.delivery.ports import InstallRequest
from proactive.errors import (
    DeliveryError,
    MessageRejected,
    OutboundHostRefused,
    ProactiveError,
    RecipientUnreachable,
    ReferenceStale,
    ServiceBusy,
    ServiceFailed,
    TenantDisabled,
    Throttled,
    TransportFailure,
)
from proactive.models import DeliveryStatus, RecipientKind, SendOutcome, SendStatus, StoredReference

__all__ = [
    "MAYBE_DELIVERED",
    "USER_CLOSED",
    "Halt",
    "NoSlot",
    "Release",
    "SlotsGone",
    "ThreadBusy",
    "Uncertain",
    "classify",
    "code_of",
    "install_request",
    "server_error",
    "status_of",
    "transient_outcome",
]

# Reasons a user's reference was closed by the user's own act: never reinstalled behind their back.
USER_CLOSED = frozenset({"messagewritesblocked", "conversationblockedbyuser", "uninstalled"})
# Transport failures after which the request may have been processed (the duplicate window in
# proactive.delivery.batch).
MAYBE_DELIVERED = frozenset({"Timeout", "ConnectionLost"})


class Uncertain(ProactiveError):
    """A send that may have reached Teams: ends the in-process retries (not transient on purpose)."""

    def __init__(self, cause: TransportFailure) -> None:
        super().__init__(str(cause))
        self.cause = cause


class NoSlot(ProactiveError):
    """The grant has no slot left for this request: ends the in-process retries (not transient on purpose)."""


class ThreadBusy(ProactiveError):
    """The thread's windows are full until ``until``: ends the in-process retries (not transient on purpose)."""

    def __init__(self, until: datetime) -> None:
        super().__init__(f"the conversation's per-thread windows are full until {until.isoformat()}")
        self.until = until


class Release(Exception):
    """Internal: give the claimed row back untouched; no request was made for it."""

    code = Reason.TENANT_HALTED
    detail = "batch halted before this send"


class Halt(Release):
    """Internal: the batch was halted before this row was sent."""


class SlotsGone(Release):
    """Internal: the grant had no slot left for this row's first request."""

    code = Reason.NO_SLOT
    detail = "no slot left in this batch's grant; the next batch takes the row"


def install_request(
    tenant_id: str, reference: StoredReference, reason: str, notification_id: str
) -> InstallRequest | None:
    if reference.kind is RecipientKind.USER:
        return InstallRequest(
            tenant_id=tenant_id,
            aad_object_id=reference.recipient_id,
            reason=reason,
            notification_id=notification_id,
        )
    if reference.team_id:
        return InstallRequest(tenant_id=tenant_id, team_id=reference.team_id, reason=reason)
    return None  # a group chat: only its members can add the bot back


def classify(error: ProactiveError) -> tuple[DeliveryStatus, SendStatus]:
    if isinstance(error, RecipientUnreachable):
        return DeliveryStatus.UNREACHABLE, SendStatus.UNREACHABLE
    if isinstance(error, ReferenceStale):
        return DeliveryStatus.STALE, SendStatus.STALE
    if isinstance(error, TenantDisabled):
        return DeliveryStatus.FAILED, SendStatus.TENANT_DISABLED
    if isinstance(error, MessageRejected):
        return DeliveryStatus.FAILED, SendStatus.REJECTED
    return DeliveryStatus.FAILED, SendStatus.FAILED


def code_of(error: ProactiveError) -> str:
    if isinstance(error, OutboundHostRefused):
        return Reason.SERVICE_URL_REFUSED
    if isinstance(error, DeliveryError) and error.code:
        return error.code
    if isinstance(error, DeliveryError) and error.status is not None:
        return f"http_{error.status}"
    return type(error).__name__


def transient_outcome(recipient_key: str, error: ProactiveError, attempts: int) -> SendOutcome:
    """The send outcome of a row whose last answer was transient (429, 5xx, no connection, timeout)."""
    return SendOutcome(
        recipient_key=recipient_key,
        status=SendStatus.THROTTLED if isinstance(error, Throttled) else SendStatus.TRANSIENT,
        attempts=attempts,
        http_status=status_of(error),
        error_code=code_of(error),
        retry_after=error.retry_after if isinstance(error, Throttled) else None,
    )


def status_of(error: ProactiveError) -> int | None:
    return error.status if isinstance(error, DeliveryError) else None


def server_error(error: ProactiveError) -> bool:
    cause = error.cause if isinstance(error, Uncertain) else error
    if isinstance(cause, TransportFailure | ServiceFailed):
        return True
    return isinstance(cause, ServiceBusy) and (cause.status or 0) >= 500
