"""Ports: the I/O the domain needs, as small Protocols. Adapters implement them.

Two layers for storage:

* :class:`EntityTable` is Azure Table Storage reduced to what the product uses (point reads,
  conditional writes, same-partition batches, equality queries with paging). It has two
  implementations: :mod:`proactive.adapters.table_storage` (Azure / Azurite) and
  :mod:`proactive.adapters.memory_tables` (an in-memory fake that stores the very same entity dicts
  and enforces the same key and size rules).
* The stores (:class:`ReferenceStore`, :class:`DeliveryLedger`, ...) are written once over an
  ``EntityTable`` in :mod:`proactive.storage.stores`, so the fake and the real service cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from proactive.models import (
    DeadLetter,
    DeliveryRecord,
    DeliveryStatus,
    Notification,
    Preferences,
    StoredReference,
)

T = TypeVar("T")

# An entity as Azure Tables holds it: PartitionKey, RowKey and typed properties.
Entity = dict[str, Any]
# Query results carry their ETag under this name (never a valid table property name).
ETAG_FIELD = "@etag"
# Equality filters: property -> value, or property -> tuple of alternatives (OR).
Where = Mapping[str, Any]


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a query. ``continuation`` is opaque; ``None`` means there is no more."""

    items: list[T]
    continuation: str | None


@dataclass(frozen=True)
class Versioned(Generic[T]):
    """A value with the ETag it was read (or written) with, for conditional updates."""

    value: T
    etag: str


class EntityTable(Protocol):
    """One Azure table, as the stores use it. Created on first use, never in a constructor.

    Errors: :class:`~proactive.errors.ConcurrencyConflict` for 409/412,
    :class:`~proactive.errors.RecordNotFound` for updates of a missing row,
    :class:`~proactive.errors.StorageError` for everything else.
    """

    name: str

    async def get(self, partition_key: str, row_key: str) -> tuple[Entity, str] | None:
        """The entity and its ETag, or ``None``."""

    async def insert(self, entity: Entity) -> str:
        """Create; ConcurrencyConflict if the row exists. Returns the new ETag."""

    async def upsert(self, entity: Entity) -> str:
        """Create or replace unconditionally. Returns the new ETag."""

    async def replace(self, entity: Entity, etag: str) -> str:
        """Replace if the stored ETag still matches; ConcurrencyConflict otherwise."""

    async def merge(self, entity: Entity, etag: str | None = None) -> str:
        """Merge the given properties into an existing row (conditionally when ``etag`` is given)."""

    async def delete(self, partition_key: str, row_key: str, etag: str | None = None) -> None:
        """Delete (conditionally when ``etag`` is given); deleting a missing row is not an error."""

    async def insert_batch(self, entities: Sequence[Entity]) -> None:
        """Insert up to 100 entities of one partition atomically; ConcurrencyConflict if any exists."""

    async def query(
        self,
        where: Where,
        *,
        select: Sequence[str] | None = None,
        page_size: int = 1000,
        continuation: str | None = None,
    ) -> Page[Entity]:
        """Equality query, results in key order, at most ``page_size`` (<= 1000) per page.

        Each returned entity carries its ETag under :data:`ETAG_FIELD`.
        """


class ReferenceStore(Protocol):
    """Conversation references, one row per (tenant, recipient key)."""

    async def upsert(self, reference: StoredReference) -> None: ...

    async def get(self, tenant_id: str, key: str) -> StoredReference | None: ...

    async def get_many(self, tenant_id: str, keys: Sequence[str]) -> dict[str, StoredReference]:
        """The stored references of ``keys`` by key; keys without one are left out."""
        ...

    async def update(
        self,
        tenant_id: str,
        key: str,
        change: Callable[[StoredReference | None], StoredReference | None],
        *,
        attempts: int = ...,
    ) -> tuple[StoredReference | None, StoredReference | None]:
        """Compare-and-swap: ``change(stored)`` is written only if the row is still what it was given.

        Returns ``(previous, written)``; ``written`` is ``None`` when ``change`` returned ``None``.
        Raises ``ConcurrencyConflict`` when the row kept changing under every attempt.
        """
        ...

    async def deactivate(
        self, tenant_id: str, key: str, reason: str, at: datetime, *, conversation_id: str | None = None
    ) -> bool:
        """Mark inactive with a reason (ETag-guarded); ``False`` when there was no such reference, or when
        ``conversation_id`` is given and the stored reference holds another conversation."""

    async def list_tenant(
        self,
        tenant_id: str,
        *,
        active_only: bool = True,
        page_size: int = 1000,
        continuation: str | None = None,
    ) -> Page[StoredReference]: ...


class PreferenceStore(Protocol):
    """Users' consent and quiet hours."""

    async def get(self, tenant_id: str, aad_object_id: str) -> Preferences | None: ...

    async def get_many(self, tenant_id: str, aad_object_ids: Sequence[str]) -> dict[str, Preferences]:
        """The stored preferences of ``aad_object_ids`` by id; ids without any are left out."""
        ...

    async def put(self, preferences: Preferences) -> None: ...


class NotificationStore(Protocol):
    """Broadcast requests and their status. Insert-only creation gives broadcast-level idempotency."""

    async def create(self, notification: Notification) -> Versioned[Notification]:
        """Store a new notification; ConcurrencyConflict if the id is taken."""

    async def get(self, notification_id: str) -> Versioned[Notification] | None: ...

    async def replace(self, notification: Notification, etag: str) -> Versioned[Notification]: ...


class DeliveryLedger(Protocol):
    """One row per recipient per notification, guarded by ETags (the exactly-once backbone)."""

    async def add_pending(self, records: Sequence[DeliveryRecord]) -> int:
        """Insert rows that do not exist yet (existing rows are left untouched, whatever their
        status): safe to repeat after a crash. Returns how many were new."""

    async def get(
        self, notification_id: str, tenant_id: str, recipient_key: str
    ) -> Versioned[DeliveryRecord] | None: ...

    async def replace(self, record: DeliveryRecord, etag: str) -> Versioned[DeliveryRecord]:
        """Conditional write; ConcurrencyConflict when another writer got there first."""

    async def list(
        self,
        notification_id: str,
        tenant_id: str,
        *,
        statuses: Sequence[DeliveryStatus] | None = None,
        page_size: int = 1000,
        continuation: str | None = None,
    ) -> Page[Versioned[DeliveryRecord]]: ...

    async def count_by_status(self, notification_id: str, tenant_id: str) -> Mapping[DeliveryStatus, int]: ...


class DeadLetterStore(Protocol):
    """Messages that exhausted their retries, by UTC day."""

    async def add(self, entry: DeadLetter) -> None:
        """Create or replace (same id and day: the same dead letter)."""

    async def get(self, day: str, entry_id: str) -> Versioned[DeadLetter] | None: ...

    async def replace(self, entry: DeadLetter, etag: str) -> Versioned[DeadLetter]:
        """Conditional write; ConcurrencyConflict when it changed meanwhile."""

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
        """One day's dead letters (``yyyymmdd``), filtered by equality on the given fields."""
