"""The stores of :mod:`proactive.storage.ports`, written once over an :class:`~proactive.storage.ports.EntityTable`.

Row layout (ARCHITECTURE.md "Data"): each row holds the model's full JSON in ``body`` (split over
``body1``, ``body2``, ... when longer than one table property may be) plus a few plain columns
that queries filter on (``active``, ``status``) and the original ids (keys may be hashed when ids
are very long, see :mod:`proactive.storage.keys`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from proactive.errors import ConcurrencyConflict, RecordNotFound
from proactive.limiter.threads import ThreadLog, next_start, with_start
from proactive.models import (
    DeadLetter,
    DeliveryRecord,
    DeliveryStatus,
    Notification,
    NotificationStatus,
    Preferences,
    StoredReference,
    WireModel,
)
from proactive.storage.keys import compose, encode_key
from proactive.storage.ports import ETAG_FIELD, Entity, EntityTable, Page, Versioned

M = TypeVar("M", bound=WireModel)

logger = logging.getLogger(__name__)

# A table string property holds at most 64 KiB of UTF-16: 15,000 characters stay under it even when
# every character needs a surrogate pair.
BODY_CHUNK_CHARS = 15_000
# Azure Tables' limit for one entity-group transaction.
MAX_BATCH = 100
# Azure Tables permits at most 15 discrete comparisons in one $filter: the partition key and 14 row keys.
KEYS_PER_QUERY = 14
# Tries of one read-modify-write of a reference before giving up. Each lost try means another writer's
# write took effect in between (and each writer wins once), so k writers racing on one row all get
# through within k tries. A personal install brings two activities for one user at the same instant.
REFERENCE_UPDATE_ATTEMPTS = 5


def to_entity(partition_key: str, row_key: str, model: WireModel, **columns: object) -> Entity:
    """Build the entity for ``model``: keys, plain columns, and the JSON body in chunks."""
    text = model.to_json_text()
    entity: Entity = {"PartitionKey": partition_key, "RowKey": row_key, **columns}
    chunks = [text[i : i + BODY_CHUNK_CHARS] for i in range(0, len(text), BODY_CHUNK_CHARS)] or [""]
    for index, chunk in enumerate(chunks):
        entity["body" if index == 0 else f"body{index}"] = chunk
    return entity


def from_entity(entity: Entity, model: type[M]) -> M:
    """Rebuild the model stored by :func:`to_entity`."""
    parts = [entity["body"]]
    index = 1
    while f"body{index}" in entity:
        parts.append(entity[f"body{index}"])
        index += 1
    return model.from_json("".join(parts))


async def _get_many(table: EntityTable, tenant_id: str, row_ids: Sequence[str], model: type[M]) -> list[M]:
    """Point reads of many rows of one partition as a few concurrent queries (a row key filter each)."""
    row_keys = sorted({encode_key(row_id) for row_id in row_ids})
    chunks = [tuple(row_keys[i : i + KEYS_PER_QUERY]) for i in range(0, len(row_keys), KEYS_PER_QUERY)]

    async def read(chunk: tuple[str, ...]) -> list[M]:
        page = await table.query(
            {"PartitionKey": encode_key(tenant_id), "RowKey": chunk}, page_size=len(chunk)
        )
        return [from_entity(entity, model) for entity in page.items]

    pages = await asyncio.gather(*(read(chunk) for chunk in chunks))
    return [item for page in pages for item in page]


class TableReferenceStore:
    """References: PartitionKey = tenant id, RowKey = ``user:{aad}`` / ``channel:{id}`` / ``chat:{id}``."""

    def __init__(self, table: EntityTable) -> None:
        self._table = table

    async def upsert(self, reference: StoredReference) -> None:
        await self._table.upsert(self._entity(reference))

    async def get(self, tenant_id: str, key: str) -> StoredReference | None:
        found = await self._table.get(encode_key(tenant_id), encode_key(key))
        return from_entity(found[0], StoredReference) if found else None

    async def get_many(self, tenant_id: str, keys: Sequence[str]) -> dict[str, StoredReference]:
        """The stored references of ``keys`` (missing ones left out), a query per 14 keys."""
        found = await _get_many(self._table, tenant_id, keys, StoredReference)
        return {reference.key: reference for reference in found}

    async def update(
        self,
        tenant_id: str,
        key: str,
        change: Callable[[StoredReference | None], StoredReference | None],
        *,
        attempts: int = REFERENCE_UPDATE_ATTEMPTS,
    ) -> tuple[StoredReference | None, StoredReference | None]:
        """Read, change and write one reference as one atomic step (compare-and-swap on the row).

        ``change`` gets the stored reference (``None`` when there is none) and returns the reference to
        store, or ``None`` to leave the row as it is. The write is conditional: an insert when there was
        no row (Azure Tables answers 409 if one appeared meanwhile), a replace under the ETag that was read
        otherwise (412 if the row changed). When another writer got in between, nothing is written and
        ``change`` runs again on what that writer stored, so ``change`` may run several times and must
        have no side effects.

        Returns:
            ``(previous, written)``: the stored reference the successful write replaced (``change`` saw
            exactly this, no other writer came in between), and what was written (``None`` when ``change``
            chose not to write; ``previous`` is then the current row).

        Raises:
            ConcurrencyConflict: the row changed under each of ``attempts`` tries; nothing was written.
            ValueError: ``change`` returned a reference of another tenant or key.
            StorageError: the table failed.
        """
        partition_key, row_key = encode_key(tenant_id), encode_key(key)
        for _ in range(attempts):
            found = await self._table.get(partition_key, row_key)
            previous = from_entity(found[0], StoredReference) if found else None
            wanted = change(previous)
            if wanted is None:
                return previous, None
            if (wanted.tenant_id, wanted.key) != (tenant_id, key):
                raise ValueError(f"update of {key!r} returned the reference {wanted.key!r}")
            try:
                if found is None:
                    await self._table.insert(self._entity(wanted))
                else:
                    await self._table.replace(self._entity(wanted), found[1])
            except (ConcurrencyConflict, RecordNotFound):
                # Another writer got in first (RecordNotFound: it deleted the row): decide again on its row.
                logger.debug("A reference changed while being updated; trying again")
                continue
            return previous, wanted
        raise ConcurrencyConflict(f"a reference changed under each of {attempts} update attempts")

    async def deactivate(
        self, tenant_id: str, key: str, reason: str, at: datetime, *, conversation_id: str | None = None
    ) -> bool:
        """Mark the reference inactive with ``reason``, as a compare-and-swap (:meth:`update`).

        With ``conversation_id`` (a send that failed in that conversation) only a reference that still
        holds that conversation is touched: a reinstall that stored a fresh conversation meanwhile, before
        the read or between the read and the write (the ETag catches that), stays active and unchanged.

        Returns:
            Whether a reference was marked inactive.
        """

        def change(current: StoredReference | None) -> StoredReference | None:
            if current is None:
                return None
            if conversation_id is not None and current.reference.conversation.id != conversation_id:
                return None  # refreshed since the failure: the failure was about another conversation
            return current.model_copy(update={"active": False, "stale_reason": reason, "updated_at": at})

        _, written = await self.update(tenant_id, key, change)
        return written is not None

    async def list_tenant(
        self,
        tenant_id: str,
        *,
        active_only: bool = True,
        page_size: int = 1000,
        continuation: str | None = None,
    ) -> Page[StoredReference]:
        where: dict[str, object] = {"PartitionKey": encode_key(tenant_id)}
        if active_only:
            where["active"] = True
        page = await self._table.query(where, page_size=page_size, continuation=continuation)
        return Page([from_entity(e, StoredReference) for e in page.items], page.continuation)

    @staticmethod
    def _entity(reference: StoredReference) -> Entity:
        return to_entity(
            encode_key(reference.tenant_id),
            encode_key(reference.key),
            reference,
            tenantId=reference.tenant_id,
            recipientKey=reference.key,
            kind=reference.kind.value,
            active=reference.active,
        )


class TablePreferenceStore:
    """Preferences: PartitionKey = tenant id, RowKey = AAD object id."""

    def __init__(self, table: EntityTable) -> None:
        self._table = table

    async def get(self, tenant_id: str, aad_object_id: str) -> Preferences | None:
        found = await self._table.get(encode_key(tenant_id), encode_key(aad_object_id))
        return from_entity(found[0], Preferences) if found else None

    async def get_many(self, tenant_id: str, aad_object_ids: Sequence[str]) -> dict[str, Preferences]:
        """The stored preferences of ``aad_object_ids`` (missing ones left out), a query per 14 ids."""
        found = await _get_many(self._table, tenant_id, aad_object_ids, Preferences)
        return {preferences.aad_object_id: preferences for preferences in found}

    async def put(self, preferences: Preferences) -> None:
        await self._table.upsert(
            to_entity(
                encode_key(preferences.tenant_id),
                encode_key(preferences.aad_object_id),
                preferences,
                tenantId=preferences.tenant_id,
                aadObjectId=preferences.aad_object_id,
            )
        )


class TableNotificationStore:
    """Notifications: PartitionKey = notification id, RowKey = ``meta``; plus the reconciliation index.

    The index (:meth:`reconcile_candidates`) is one partition, :data:`INDEX_PARTITION`, with a row per
    notification whose status reconciliation looks at (``running``, ``completed``, ``failed``,
    ``cancelled``), so the reconcile timer reads running and recently finished notifications instead of
    every notification ever stored. Each status write upserts the index row **before** the notification
    row, so the index is always a superset (a crash between the two leaves an index row whose
    notification says otherwise, which the reader checks). The reader deletes the rows of notifications
    finished longer ago than its lookback (ETag-guarded, so a notification re-indexed meanwhile keeps its
    row). A table written before the index existed is indexed once, by one scan of the ``status`` column,
    marked by the :data:`INDEX_BACKFILLED` row.
    """

    ROW = "meta"
    # Notification ids match [A-Za-z0-9_-]{1,64} (models.Notification), so no notification's partition
    # starts with "~".
    INDEX_PARTITION = "~reconcile"
    INDEX_BACKFILLED = "~backfilled"
    INDEXED = frozenset(
        {
            NotificationStatus.RUNNING,
            NotificationStatus.COMPLETED,
            NotificationStatus.FAILED,
            NotificationStatus.CANCELLED,
        }
    )

    def __init__(self, table: EntityTable) -> None:
        self._table = table

    async def create(self, notification: Notification) -> Versioned[Notification]:
        await self._index(notification)
        etag = await self._table.insert(self._entity(notification))
        return Versioned(notification, etag)

    async def get(self, notification_id: str) -> Versioned[Notification] | None:
        found = await self._table.get(encode_key(notification_id), self.ROW)
        return Versioned(from_entity(found[0], Notification), found[1]) if found else None

    async def replace(self, notification: Notification, etag: str) -> Versioned[Notification]:
        await self._index(notification)
        new_etag = await self._table.replace(self._entity(notification), etag)
        return Versioned(notification, new_etag)

    async def reconcile_candidates(self, *, now: datetime, lookback: timedelta) -> list[Notification]:
        """Running notifications, and finished ones updated within ``lookback``, read from the index.

        Cost: one read of the index partition (running and recently finished notifications, plus those
        finished since the last call) and a point read per row; none of the other notifications is read.
        """
        if await self._table.get(self.INDEX_PARTITION, self.INDEX_BACKFILLED) is None:
            await self._backfill()
        found: list[Notification] = []
        continuation: str | None = None
        while True:
            page = await self._table.query({"PartitionKey": self.INDEX_PARTITION}, continuation=continuation)
            for row in page.items:
                if row["RowKey"] == self.INDEX_BACKFILLED:
                    continue
                current = await self.get(str(row["notificationId"]))
                notification = current.value if current is not None else None
                if notification is not None and _reconcile_due(notification, now, lookback):
                    found.append(notification)
                elif notification is None or notification.status in self.INDEXED:
                    # Gone, or finished before the lookback: drop the row unless it was written meanwhile.
                    with contextlib.suppress(ConcurrencyConflict):
                        await self._table.delete(self.INDEX_PARTITION, row["RowKey"], row[ETAG_FIELD])
            continuation = page.continuation
            if continuation is None:
                return found

    async def _index(self, notification: Notification) -> None:
        if notification.status in self.INDEXED:
            await self._table.upsert(
                {
                    "PartitionKey": self.INDEX_PARTITION,
                    "RowKey": encode_key(notification.id),
                    "notificationId": notification.id,
                    "indexedStatus": notification.status.value,
                }
            )

    async def _backfill(self) -> None:
        for status in sorted(self.INDEXED):
            continuation: str | None = None
            while True:
                page = await self._table.query({"status": status.value}, continuation=continuation)
                for entity in page.items:
                    await self._index(from_entity(entity, Notification))
                continuation = page.continuation
                if continuation is None:
                    break
        await self._table.upsert({"PartitionKey": self.INDEX_PARTITION, "RowKey": self.INDEX_BACKFILLED})
        logger.info("Indexed the notifications table for reconciliation (once)")

    def _entity(self, notification: Notification) -> Entity:
        return to_entity(
            encode_key(notification.id), self.ROW, notification, status=notification.status.value
        )


def _reconcile_due(notification: Notification, now: datetime, lookback: timedelta) -> bool:
    if notification.status is NotificationStatus.RUNNING:
        return True
    updated = notification.updated_at or notification.created_at
    return notification.status in TableNotificationStore.INDEXED and updated >= now - lookback


class TableDeliveryLedger:
    """Deliveries: PartitionKey = ``{notificationId}:{tenantId}``, RowKey = recipient key."""

    def __init__(self, table: EntityTable) -> None:
        self._table = table

    async def add_pending(self, records: Sequence[DeliveryRecord]) -> int:
        by_partition: dict[str, list[Entity]] = {}
        for record in records:
            entity = self._entity(record)
            by_partition.setdefault(entity["PartitionKey"], []).append(entity)
        added = 0
        for entities in by_partition.values():
            for start in range(0, len(entities), MAX_BATCH):
                added += await self._insert_missing(entities[start : start + MAX_BATCH])
        return added

    async def _insert_missing(self, entities: list[Entity]) -> int:
        # Fast path: one atomic batch. If any row exists (a repeated materialisation after a crash),
        # the batch is rejected whole, and rows are inserted one by one, skipping existing ones,
        # so a row that already moved on (sending, sent) is never reset to pending.
        try:
            await self._table.insert_batch(entities)
            return len(entities)
        except ConcurrencyConflict:
            pass
        added = 0
        for entity in entities:
            try:
                await self._table.insert(entity)
                added += 1
            except ConcurrencyConflict:
                continue
        return added

    async def get(
        self, notification_id: str, tenant_id: str, recipient_key: str
    ) -> Versioned[DeliveryRecord] | None:
        found = await self._table.get(compose(notification_id, tenant_id), encode_key(recipient_key))
        return Versioned(from_entity(found[0], DeliveryRecord), found[1]) if found else None

    async def replace(self, record: DeliveryRecord, etag: str) -> Versioned[DeliveryRecord]:
        new_etag = await self._table.replace(self._entity(record), etag)
        return Versioned(record, new_etag)

    async def list(
        self,
        notification_id: str,
        tenant_id: str,
        *,
        statuses: Sequence[DeliveryStatus] | None = None,
        page_size: int = 1000,
        continuation: str | None = None,
    ) -> Page[Versioned[DeliveryRecord]]:
        where: dict[str, object] = {"PartitionKey": compose(notification_id, tenant_id)}
        if statuses:
            where["status"] = tuple(status.value for status in statuses)
        page = await self._table.query(where, page_size=page_size, continuation=continuation)
        return Page(
            [Versioned(from_entity(e, DeliveryRecord), e[ETAG_FIELD]) for e in page.items],
            page.continuation,
        )

    async def count_by_status(self, notification_id: str, tenant_id: str) -> Mapping[DeliveryStatus, int]:
        counts: Counter[DeliveryStatus] = Counter()
        continuation: str | None = None
        where = {"PartitionKey": compose(notification_id, tenant_id)}
        while True:
            page = await self._table.query(where, select=["status"], continuation=continuation)
            counts.update(DeliveryStatus(e["status"]) for e in page.items)
            if page.continuation is None:
                return dict(counts)
            continuation = page.continuation

    @staticmethod
    def _entity(record: DeliveryRecord) -> Entity:
        return to_entity(
            compose(record.notification_id, record.tenant_id),
            encode_key(record.recipient_key),
            record,
            status=record.status.value,
            recipientKey=record.recipient_key,
        )


class TableDeadLetterStore:
    """Dead letters: PartitionKey = UTC day ``yyyymmdd``, RowKey = id.

    Plain columns ``notificationId``, ``tenantId`` and ``reasonCode`` (when known) are what
    ``GET /api/deadletters`` filters on, as equality queries inside a day's partition.
    """

    def __init__(self, table: EntityTable) -> None:
        self._table = table

    async def add(self, entry: DeadLetter) -> None:
        await self._table.upsert(self._entity(entry))

    async def get(self, day: str, entry_id: str) -> Versioned[DeadLetter] | None:
        found = await self._table.get(day, encode_key(entry_id))
        return Versioned(from_entity(found[0], DeadLetter), found[1]) if found else None

    async def replace(self, entry: DeadLetter, etag: str) -> Versioned[DeadLetter]:
        new_etag = await self._table.replace(self._entity(entry), etag)
        return Versioned(entry, new_etag)

    async def list_day(
        self,
        day: str,
        *,
        notification_id: str | None = None,
        tenant_id: str | None = None,
        reason_code: str | None = None,
        page_size: int = 1000,
        continuation: str | None = None,
    ) -> Page[DeadLetter]:
        where: dict[str, object] = {"PartitionKey": day}
        for column, value in (
            ("notificationId", notification_id),
            ("tenantId", tenant_id),
            ("reasonCode", reason_code),
        ):
            if value is not None:
                where[column] = value
        page = await self._table.query(where, page_size=page_size, continuation=continuation)
        return Page([from_entity(e, DeadLetter) for e in page.items], page.continuation)

    @staticmethod
    def _entity(entry: DeadLetter) -> Entity:
        columns: dict[str, object] = {"sourceQueue": entry.source_queue, "reason": entry.reason[:1000]}
        for column, value in (
            ("notificationId", entry.notification_id),
            ("tenantId", entry.tenant_id),
            ("reasonCode", entry.reason_code),
        ):
            if value is not None:
                columns[column] = value
        return to_entity(entry.day, encode_key(entry.id), entry, **columns)


class TableThreadWindows:
    """Per-thread request windows (:mod:`proactive.limiter.threads`) in one table: PartitionKey the tenant,
    RowKey the conversation id, the :class:`ThreadLog` as the body.

    A place is taken by a conditional write (insert, or replace under the ETag read), so two senders (other
    broadcasts, other instances) never both take the last place of a window.
    """

    def __init__(self, table: EntityTable, *, attempts: int = REFERENCE_UPDATE_ATTEMPTS) -> None:
        self._table = table
        self._attempts = attempts

    async def reserve(self, tenant_id: str, conversation_id: str, now: datetime) -> datetime | None:
        """See :class:`proactive.delivery.ports.ThreadWindows`.

        Raises:
            ConcurrencyConflict: the row changed under each try; nothing was taken.
            StorageError: the table failed.
        """
        partition_key, row_key = encode_key(tenant_id), encode_key(conversation_id)
        at = now.timestamp()
        for _ in range(self._attempts):
            found = await self._table.get(partition_key, row_key)
            log = from_entity(found[0], ThreadLog) if found else ThreadLog()
            allowed = next_start(log, at)
            if allowed > at:
                return datetime.fromtimestamp(allowed, UTC)
            entity = to_entity(partition_key, row_key, with_start(log, at))
            try:
                if found is None:
                    await self._table.insert(entity)
                else:
                    await self._table.replace(entity, found[1])
            except (ConcurrencyConflict, RecordNotFound):
                continue  # another sender took a place meanwhile: look again at its log
            return None
        raise ConcurrencyConflict(f"the windows of thread {conversation_id!r} changed under every try")
