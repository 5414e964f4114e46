"""The ``send_batch`` activity's wire contract: its input and result, the row outcome, the sender's reason codes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from pydantic import AwareDatetime, Field

from proactive.errors import ProactiveError
from proactive.models import DeliveryStatus, Operation, SendOutcome, Urgency, WireModel

__all__ = ["Pacing", "Reason", "RowOutcome", "SendBatchInput", "SendBatchResult", "part_of"]


class Reason:
    """Stable ``last_error.code`` values the sender writes itself (Teams' own codes are kept as they come)."""

    NO_REFERENCE = "no_reference"
    SERVICE_URL_REFUSED = "service_url_refused"
    OPTED_OUT = "opted_out"
    OPTED_OUT_CATEGORY = "opted_out_category"
    QUIET_HOURS = "quiet_hours"
    MISSING_PLACEHOLDER = "missing_placeholder_value"
    RECONCILED = "reconciled"
    TENANT_HALTED = "tenant_halted"
    NO_SLOT = "slot_expired"
    THREAD_BUSY = "thread_busy"


class Pacing(WireModel):
    """The limiter grant's pacing, passed on by the orchestration (see :mod:`proactive.delivery.pacing`).

    Wire form ``{"notBefore", "paceSeconds", "sendBy", "slackSeconds"}``: the grant's ``notBeforeIso``,
    ``paceSeconds``, ``sendByIso`` and ``slackSeconds``. The batch's ``limit`` is the number of slots.

    Attributes:
        not_before: no request starts before it.
        pace_seconds: the least spacing between two request starts.
        send_by: no request starts after it.
        slack_seconds: how late after its slot a request may still start.
    """

    not_before: AwareDatetime
    pace_seconds: float = Field(gt=0, allow_inf_nan=False)
    send_by: AwareDatetime
    slack_seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class SendBatchInput(WireModel):
    """Input of activity ``send_batch`` (JSON from the orchestration).

    Attributes:
        notification_id: the notification.
        tenant_id: the tenant whose ledger partition to work on.
        limit: at most this many rows (the limiter's grant).
        now: the orchestration's time; rows deferred until then or earlier are due.
        urgency: ``urgent`` ignores quiet hours (never opt-outs).
        operation: ``send`` new messages, or ``update`` / ``delete`` the sent ones.
        pacing: spread the batch's requests over the grant's slots, one request per slot, retries
            included; ``None`` (a re-drive, a caller without a paced grant) sends as fast as
            ``concurrency`` allows.
        part: with ``parts`` > 1, the batch takes only rows whose recipient key hashes to this part
            (:func:`part_of`), so a tenant's lanes claim disjoint rows instead of racing for the same ones.
        parts: how many parts the partition has (1: every row).
    """

    notification_id: str = Field(min_length=1)
    tenant_id: str = Field(min_length=1)
    limit: int = Field(ge=0)
    now: AwareDatetime
    urgency: Urgency = Urgency.NORMAL
    operation: Operation = "send"
    pacing: Pacing | None = None
    part: int = Field(default=0, ge=0)
    parts: int = Field(default=1, ge=1)


class SendBatchResult(WireModel):
    """Output of activity ``send_batch``: counts for the orchestration and the limiter.

    Row counts (each claimed row lands in exactly one): ``sent``, ``suppressed``, ``deferred``, ``skipped``,
    ``unreachable``, ``stale``, ``failed``, ``retry_queued`` (handed to ``deliveries-retry``, row
    ``pending``) and ``unrecorded`` (sent or settled but the ledger write failed; row left ``sending`` for
    :func:`reconcile_stuck`). ``attempted`` is their sum. For update/delete, ``sent`` counts rows updated
    or deleted, ``failed`` rows that could not be.

    Response counts for the limiter: ``requests`` (Bot Connector calls made), ``throttled`` (429 answers,
    including retried ones), ``server_errors`` (5xx, timeouts, connection failures), ``max_retry_after``.

    Attributes:
        uncertain: rows whose last send timed out or lost its connection (may have been delivered; the
            documented duplicate window). They are also in ``retry_queued``.
        halted: the error code that stopped this batch for the tenant (``BotDisabledByAdmin``,
            ``BotNotRegistered``, ...), or ``cancelled`` for a cancelled notification; rows not yet sent
            stay ``pending``.
        next_deferred_at: the earliest ``not_before`` of a row deferred past ``now`` (quiet hours).
        remaining: claimable rows left (0 means none at all); otherwise at least 1, counted from the
            ledger pages read. Rows given back because the grant had no slot left for them count here.
        first_send_at: when the batch's first Bot Connector request started; ``None`` without requests.
        last_send_at: when its last request **started** (its slot when paced), so the limiter can time
            the next window from the batch's real sends rather than from when the orchestration heard of
            them; ``None`` without requests.
        first_ready_at: when the batch's first request was ready to start (claimed, looked up, rendered)
            and asked for its time (paced only): teaches the limiter how far ahead to place grants.
        slots_skipped: reservations given up because their worker woke too late for them (paced only).
        cancelled: the notification was cancelled before the batch began (set by the activity, which then
            sends nothing).
        returned: rows this batch claimed and then gave back claimable (no slot left, halted, or left
            ``pending`` for the next batch); also in ``remaining``. A batch running beside this one may have
            read the ledger before they came back, so its ``remaining`` may miss them.
    """

    attempted: int = 0
    sent: int = 0
    suppressed: int = 0
    deferred: int = 0
    skipped: int = 0
    unreachable: int = 0
    stale: int = 0
    failed: int = 0
    retry_queued: int = 0
    unrecorded: int = 0
    uncertain: int = 0
    requests: int = 0
    throttled: int = 0
    server_errors: int = 0
    max_retry_after: float | None = None
    next_deferred_at: AwareDatetime | None = None
    remaining: int = 0
    halted: str | None = None
    elapsed_ms: int = 0
    first_send_at: AwareDatetime | None = None
    last_send_at: AwareDatetime | None = None
    first_ready_at: AwareDatetime | None = None
    slots_skipped: int = 0
    returned: int = 0
    cancelled: bool = False


@dataclass(frozen=True)
class RowOutcome:
    """What became of one claimed row: the row's new status, why, and the send when one was made.

    Attributes:
        recipient_key: the row.
        status: the row's status as written (``pending`` for a hand-off, ``sending`` if unrecorded).
        reason: ``last_error.code`` written, if any.
        send: the send's outcome when a Bot Connector call was made.
        handed_off: a :class:`RetryRequest` was queued.
        uncertain: the last attempt may have been delivered.
        recorded: the ledger write succeeded.
        failures: every error seen on the way (for throttle and server-error counts).
        requests: Bot Connector calls made.
        not_before: the ``not_before`` written (deferrals and hand-offs).
    """

    recipient_key: str
    status: DeliveryStatus
    reason: str | None = None
    send: SendOutcome | None = None
    handed_off: bool = False
    uncertain: bool = False
    recorded: bool = True
    failures: tuple[ProactiveError, ...] = ()
    requests: int = 0
    not_before: datetime | None = None


def part_of(recipient_key: str, parts: int) -> int:
    """The part (of ``parts``) a recipient belongs to: a stable hash, the same in every process."""
    digest = hashlib.blake2b(recipient_key.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % parts
