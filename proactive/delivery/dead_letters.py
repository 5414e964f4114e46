"""Dead letters an operator can see and re-drive (``GET /api/deadletters``, ``POST .../{id}/redrive``).

Generic over the queue a dead letter came from: :class:`DeadLetterService` lists any dead letter, and
re-drives it through the :class:`Redriver` registered for its ``source_queue``. Today that is
:class:`DeliveryRedriver` for ``deliveries-retry``; the installs queue registers its own once it exists.

Listing (:meth:`DeadLetterService.list`)
    The table is partitioned by UTC day, so a query walks the days of ``from``..``to`` (inclusive, newest
    first, at most :data:`MAX_DAYS`; default the last :data:`DEFAULT_DAYS` days) with equality filters on
    ``notificationId``, ``tenantId`` and ``reasonCode`` inside each day. The continuation token is opaque:
    the day to go on with and the table's own continuation inside it.

Public ids
    A dead letter is addressed by ``{yyyymmdd}-{base64url(id)}`` (:func:`public_id`): the day finds the
    partition, and the stored id (which holds ``:`` and Teams conversation ids) never has to survive a URL
    path unescaped.

Re-driving a delivery (:class:`DeliveryRedriver`)
    The row goes back through the paced path, never straight to Teams: the ``dead_lettered`` ledger row is
    reset to ``pending`` (ETag-guarded, ``redrives`` back to 0 so it gets its full hand-offs again), then a
    :class:`~proactive.delivery.ports.RetryRequest` goes on ``deliveries-retry``, whose trigger starts or
    wakes the tenant's paced ``tenant_lane`` run (:mod:`proactive.delivery.redrive`). Idempotent: a row already
    ``pending``/``deferred`` (an earlier re-drive) only gets the reminder again, which the trigger collapses
    into the one run and the ledger claim lets send once; a row ``sending`` is left alone. A row already
    ``sent`` is refused with 409 ``already_sent``, any other settled row with 409 ``not_redrivable``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from pydantic import ValidationError

from proactive import json_input, telemetry
from proactive.csv_export import csv_text
from proactive.delivery.ports import Redriver, RedriveResult, RetryRequest, WorkQueue
from proactive.errors import ConcurrencyConflict, InvalidInput
from proactive.models import DeadLetter, DeliveryStatus, NotificationStatus
from proactive.storage.paging import decode_continuation, encode_continuation
from proactive.storage.ports import DeadLetterStore, DeliveryLedger, NotificationStore

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_DAYS",
    "MAX_DAYS",
    "MAX_DEQUEUE_COUNT",
    "POISON_HANDLER_FAILED",
    "DeadLetterPage",
    "DeadLetterQuery",
    "DeadLetterService",
    "DeliveryRedriver",
    "parse_public_id",
    "public_id",
    "record_poison_failure",
]

logger = logging.getLogger(__name__)

DEFAULT_DAYS: Final = 7
MAX_DAYS: Final = 92
DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000
REDRIVE_REASON: Final = "redrive"
# Mirrors host.json ``extensions.queues.maxDequeueCount``: after this many failed deliveries the host moves
# a message to ``<queue>-poison`` (and a poison queue's own message to ``-poison-poison``, which nothing reads).
MAX_DEQUEUE_COUNT: Final = 5
POISON_HANDLER_FAILED: Final = "poison_handler_failed"
CSV_COLUMNS: Final = (
    "id",
    "createdAt",
    "sourceQueue",
    "notificationId",
    "tenantId",
    "recipientKey",
    "reasonCode",
    "reason",
    "redrivenAt",
)
_ID_PATTERN = re.compile(r"^([0-9]{8})-([A-Za-z0-9_-]{1,1400})$")
_FILTER_PATTERN = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")
_DATE_PATTERN = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def public_id(entry: DeadLetter) -> str:
    """The id of ``entry`` in the API: ``{yyyymmdd}-{base64url(id)}``."""
    encoded = base64.urlsafe_b64encode(entry.id.encode()).decode().rstrip("=")
    return f"{entry.day}-{encoded}"


def parse_public_id(value: str) -> tuple[str, str]:
    """``(day, stored id)`` of a public id.

    Raises:
        InvalidInput: 400 naming ``id`` when it is not one :func:`public_id` makes.
    """
    match = _ID_PATTERN.match(value)
    if match is not None:
        day, encoded = match.groups()
        try:
            datetime.strptime(day, "%Y%m%d")
            stored = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (ValueError, binascii.Error, UnicodeDecodeError):
            pass
        else:
            if stored:
                return day, stored
    raise InvalidInput("not a dead letter id", code="invalid_id", field="id")


@dataclass(frozen=True)
class DeadLetterQuery:
    """What ``GET /api/deadletters`` asks for, parsed and checked."""

    first_day: date
    last_day: date
    notification_id: str | None = None
    tenant_id: str | None = None
    reason_code: str | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    continuation: str | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str], *, today: date) -> DeadLetterQuery:
        """Parse the query string (``notificationId``, ``tenantId``, ``reason``, ``from``, ``to``,
        ``pageSize``, ``continuation``).

        Raises:
            InvalidInput: 400 naming the field at fault.
        """
        last = _date(params.get("to"), "to") or today
        first = _date(params.get("from"), "from") or last - timedelta(days=DEFAULT_DAYS - 1)
        if first > last:
            raise InvalidInput("'from' is after 'to'", code="invalid_date_range", field="from")
        if (last - first).days + 1 > MAX_DAYS:
            raise InvalidInput(
                f"a query spans at most {MAX_DAYS} days", code="invalid_date_range", field="from"
            )
        return cls(
            first_day=first,
            last_day=last,
            notification_id=_filter(params.get("notificationId"), "notificationId"),
            tenant_id=_filter(params.get("tenantId"), "tenantId"),
            reason_code=_filter(params.get("reason"), "reason"),
            page_size=_page_size(params.get("pageSize")),
            continuation=params.get("continuation") or None,
        )

    def days(self) -> list[str]:
        """The days to read, newest first, as partition keys."""
        count = (self.last_day - self.first_day).days + 1
        return [(self.last_day - timedelta(days=i)).strftime("%Y%m%d") for i in range(count)]


def _date(raw: str | None, name: str) -> date | None:
    if raw is None or raw == "":
        return None
    if _DATE_PATTERN.match(raw):
        try:
            return date.fromisoformat(raw)
        except ValueError:
            pass
    raise InvalidInput(f"{name} must be a date YYYY-MM-DD", code="invalid_date", field=name)


def _filter(raw: str | None, name: str) -> str | None:
    if raw is None or raw == "":
        return None
    if not _FILTER_PATTERN.match(raw):
        raise InvalidInput(f"{name} must be 1 to 256 printable characters", code="invalid_filter", field=name)
    return raw


def _page_size(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_PAGE_SIZE
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise InvalidInput(
            f"pageSize must be a whole number from 1 to {MAX_PAGE_SIZE}",
            code="invalid_page_size",
            field="pageSize",
        )
    return int(raw)


def dead_letter_item(entry: DeadLetter) -> dict[str, Any]:
    """The public JSON of one dead letter (its payload holds ids only)."""
    item: dict[str, Any] = {
        "id": public_id(entry),
        "createdAt": entry.created_at.isoformat(),
        "sourceQueue": entry.source_queue,
        "reason": entry.reason,
        "payload": entry.payload,
    }
    for key, value in (
        ("notificationId", entry.notification_id),
        ("tenantId", entry.tenant_id),
        ("reasonCode", entry.reason_code),
        ("redrivenAt", entry.redriven_at.isoformat() if entry.redriven_at else None),
    ):
        if value is not None:
            item[key] = value
    return item


@dataclass(frozen=True)
class DeadLetterPage:
    """One page of dead letters and the continuation of the next."""

    items: list[dict[str, Any]]
    continuation: str | None

    def to_json(self) -> dict[str, Any]:
        return {"items": self.items, "continuation": self.continuation}

    def to_csv(self) -> str:
        """RFC 4180 CSV with a header (:func:`~proactive.csv_export.csv_text`)."""

        def row(item: dict[str, Any]) -> list[object]:
            payload = item.get("payload") or {}
            recipient = payload.get("recipientKey", "") if isinstance(payload, dict) else ""
            cells: list[object] = [item.get(column, "") for column in CSV_COLUMNS]
            cells[CSV_COLUMNS.index("recipientKey")] = recipient
            return cells

        return csv_text(CSV_COLUMNS, (row(item) for item in self.items))


def _not_redrivable(message: str, code: str = "not_redrivable") -> InvalidInput:
    return InvalidInput(message, code=code, field="id", status=409)


class DeliveryRedriver:
    """Re-drives a dead-lettered delivery through ``deliveries-retry`` (module docstring).

    Args:
        ledger: the delivery ledger.
        notifications: the notifications (a cancelled one is never re-driven).
        retries: queue ``deliveries-retry``.
        clock: current time (aware UTC).
    """

    def __init__(
        self,
        *,
        ledger: DeliveryLedger,
        notifications: NotificationStore,
        retries: WorkQueue,
        clock: Callable[[], datetime],
    ) -> None:
        self._ledger = ledger
        self._notifications = notifications
        self._retries = retries
        self._clock = clock

    async def redrive(self, entry: DeadLetter) -> RedriveResult:
        try:
            request = RetryRequest.from_json(entry.payload)
        except ValidationError:
            raise _not_redrivable(
                "this dead letter holds no delivery to re-drive (malformed message)"
            ) from None
        found = await self._notifications.get(request.notification_id)
        if found is None:
            raise _not_redrivable("the notification no longer exists")
        if found.value.status is NotificationStatus.CANCELLED:
            raise _not_redrivable("the notification was cancelled", code="notification_cancelled")
        for _ in range(5):
            versioned = await self._ledger.get(
                request.notification_id, request.tenant_id, request.recipient_key
            )
            if versioned is None:
                raise _not_redrivable("the delivery's ledger row no longer exists")
            row = versioned.value
            if row.status is DeliveryStatus.SENT:
                raise _not_redrivable("the delivery was already sent", code="already_sent")
            if row.status is DeliveryStatus.SENDING:
                return RedriveResult("in_progress", {"rowStatus": row.status.value})
            if row.status is DeliveryStatus.DEAD_LETTERED:
                reset = row.model_copy(
                    update={
                        "status": DeliveryStatus.PENDING,
                        "not_before": None,
                        "redrives": 0,
                        "updated_at": self._clock(),
                    }
                )
                try:
                    await self._ledger.replace(reset, versioned.etag)
                except ConcurrencyConflict:
                    continue  # changed meanwhile: look again
            elif row.status not in (DeliveryStatus.PENDING, DeliveryStatus.DEFERRED):
                raise _not_redrivable(f"the delivery is {row.status.value}")
            reminder = RetryRequest(
                notification_id=request.notification_id,
                tenant_id=request.tenant_id,
                recipient_key=request.recipient_key,
                reason=REDRIVE_REASON,
                attempt=0,
            )
            await self._retries.put(reminder.to_json())
            return RedriveResult("requeued", {"rowStatus": DeliveryStatus.PENDING.value})
        raise ConcurrencyConflict("the ledger row kept changing while it was re-driven")


class DeadLetterService:
    """The service behind ``/api/deadletters`` (module docstring).

    Args:
        store: the dead letters.
        redrivers: the re-driver of each source queue's dead letters.
        clock: current time (aware UTC).
    """

    def __init__(
        self,
        store: DeadLetterStore,
        redrivers: Mapping[str, Redriver],
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._redrivers = redrivers
        self._clock = clock

    def parse_query(self, params: Mapping[str, str]) -> DeadLetterQuery:
        """Parse ``GET /api/deadletters``'s query string (400 naming the field)."""
        return DeadLetterQuery.parse(params, today=self._clock().astimezone(UTC).date())

    async def list(self, query: DeadLetterQuery) -> DeadLetterPage:
        """One page of dead letters, newest day first.

        Raises:
            InvalidInput: 400 for a continuation this query did not make.
        """
        days = query.days()
        index, token = 0, None
        if query.continuation:
            position = decode_continuation(query.continuation)
            if position.get("d") not in days:
                raise InvalidInput(
                    "malformed continuation token", code="invalid_continuation", field="continuation"
                )
            index, token = days.index(position["d"]), position.get("c") or None
        items: list[dict[str, Any]] = []
        while index < len(days):
            page = await self._store.list_day(
                days[index],
                notification_id=query.notification_id,
                tenant_id=query.tenant_id,
                reason_code=query.reason_code,
                page_size=query.page_size - len(items),
                continuation=token,
            )
            items.extend(dead_letter_item(entry) for entry in page.items)
            if page.continuation is not None:
                next_position = {"d": days[index], "c": page.continuation}
                return DeadLetterPage(items, encode_continuation(next_position))
            index, token = index + 1, None
            if len(items) >= query.page_size:
                more = index < len(days)
                return DeadLetterPage(items, encode_continuation({"d": days[index]}) if more else None)
        return DeadLetterPage(items, None)

    async def redrive(self, entry_id: str) -> dict[str, Any]:
        """``POST /api/deadletters/{id}/redrive``: re-drive one dead letter and mark it re-driven.

        Raises:
            InvalidInput: 400 bad id, 404 unknown id, 409 when it cannot be re-driven.
        """
        day, stored_id = parse_public_id(entry_id)
        found = await self._store.get(day, stored_id)
        if found is None:
            raise InvalidInput("no dead letter with this id", code="not_found", field="id", status=404)
        entry = found.value
        redriver = self._redrivers.get(entry.source_queue)
        if redriver is None:
            raise _not_redrivable(f"dead letters of queue {entry.source_queue!r} cannot be re-driven")
        result = await redriver.redrive(entry)
        marked = entry.model_copy(update={"redriven_at": self._clock()})
        # A concurrent re-drive (or a fresh dead-lettering) wrote it meanwhile: theirs stands.
        with contextlib.suppress(ConcurrencyConflict):
            await self._store.replace(marked, found.etag)
        logger.info("Re-drove a dead letter of %s: %s", entry.source_queue, result.status)
        return {"id": entry_id, "status": result.status, **result.detail}


async def record_poison_failure(
    handle: Callable[[], Awaitable[object]],
    raw: bytes,
    *,
    source_queue: str,
    dequeue_count: int,
    store: DeadLetterStore,
    clock: Callable[[], datetime],
) -> None:
    """Run a poison queue's handler so that its message never ends on ``<queue>-poison-poison``.

    A failure before the last delivery propagates (the host delivers the message again). On the last one
    (``dequeue_count`` >= :data:`MAX_DEQUEUE_COUNT`) the failure is logged and recorded as a dead letter
    with reason code :data:`POISON_HANDLER_FAILED` (re-drivable when its payload is a delivery's), and
    the message completes. When even that record cannot be written (storage down), the error log with
    the message's ids is the record: a ``-poison-poison`` queue would be no better, as nothing reads it.

    Args:
        handle: the poison trigger's work.
        raw: the message body.
        source_queue: the queue the message first came from (names its re-driver).
        dequeue_count: the host's delivery count of this message.
        store: where dead letters go.
        clock: current time (aware UTC).
    """
    try:
        await handle()
    except Exception as exc:
        if dequeue_count < MAX_DEQUEUE_COUNT:
            raise
        text = raw.decode(errors="replace")
        digest = hashlib.sha256(text.encode()).hexdigest()[:32]
        payload = _payload(text)
        notification_id, tenant_id = _id_of(payload, "notificationId"), _id_of(payload, "tenantId")
        # "Dead-lettered" first: infra/modules/alerts.bicep alerts on log lines that start so.
        logger.error(
            "Dead-lettered a %s-poison message whose handler failed %d times (%s) "
            "(notification %s, tenant %s, digest %s)",
            source_queue,
            dequeue_count,
            type(exc).__name__,
            notification_id,
            tenant_id,
            digest,
            exc_info=exc,
        )
        entry = DeadLetter(
            id=f"{POISON_HANDLER_FAILED}:{digest}",
            source_queue=source_queue,
            payload=payload,
            reason=f"the poison queue's handler failed {dequeue_count} times ({type(exc).__name__})",
            created_at=clock(),
            notification_id=notification_id,
            tenant_id=tenant_id,
            reason_code=POISON_HANDLER_FAILED,
        )
        telemetry.current().dead_lettered(source_queue, POISON_HANDLER_FAILED)
        try:
            await store.add(entry)
        except Exception:
            logger.exception("The failed poison message could not be recorded either (digest %s)", digest)


def _payload(text: str) -> dict[str, Any]:
    try:
        body = json_input.loads(text.encode())
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {"raw": text[:2000]}


def _id_of(payload: Mapping[str, Any], key: str) -> str | None:
    value = payload.get(key)
    return value if isinstance(value, str) and _FILTER_PATTERN.match(value) else None
