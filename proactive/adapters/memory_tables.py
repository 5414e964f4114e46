"""An in-memory :class:`~proactive.storage.ports.EntityTable` that behaves like Azure Table Storage.

It keeps the same entity dicts the real adapter would send, and rejects what the service rejects
(forbidden key characters, over-long keys, oversized properties and entities, batches over 100 or
across partitions), so the contract suite passes against it and against Azurite alike. Used by
unit tests and by the devhost's in-memory mode; never in production.

Rows are indexed like the service indexes them: by partition, with row keys kept sorted, so a
partition query or a page of one costs O(page + log n) rather than a scan of the table. A query that
also filters on a property (``status`` of the delivery ledger) builds, on first use, a per-partition
index of that property's values, kept up to date by every later write; the index only narrows the
candidates, and every candidate is still checked against the whole filter, so the answers are the
same as a scan's.
"""

from __future__ import annotations

import heapq
import itertools
import re
from bisect import bisect_left, insort
from collections.abc import Iterator, Sequence
from typing import Any

from proactive.errors import ConcurrencyConflict, RecordNotFound, StorageError
from proactive.storage.paging import decode_continuation, encode_continuation
from proactive.storage.ports import ETAG_FIELD, Entity, Page, Where

_FORBIDDEN_KEY_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_MAX_KEY_BYTES = 1024
_MAX_STRING_BYTES = 64 * 1024
_MAX_ENTITY_BYTES = 1024 * 1024
_MAX_PROPERTIES = 252  # 255 including PartitionKey, RowKey and Timestamp
_MAX_BATCH = 100
_MAX_PAGE = 1000
_KEYS = ("PartitionKey", "RowKey")
# Filter values a property index can serve. Floats are left to the scan: NaN equals nothing, not even
# itself, so a dict of values could not find every row ``_matches`` accepts.
_INDEXABLE = (str, bool, int, type(None))


def _utf16_size(text: str) -> int:
    return len(text.encode("utf-16-le"))


def _check_entity(entity: Entity) -> None:
    for name in _KEYS:
        key = entity.get(name)
        if not isinstance(key, str):
            raise StorageError(f"{name} must be a string")
        if _FORBIDDEN_KEY_CHARS.search(key) or _utf16_size(key) > _MAX_KEY_BYTES:
            raise StorageError(f"{name} is not a valid table key")
    properties = {k: v for k, v in entity.items() if k not in _KEYS}
    if len(properties) > _MAX_PROPERTIES:
        raise StorageError("too many properties")
    size = 0
    for name, value in entity.items():
        size += _utf16_size(name)
        if isinstance(value, str):
            if _utf16_size(value) > _MAX_STRING_BYTES:
                raise StorageError(f"property {name} is larger than 64 KiB")
            size += _utf16_size(value)
        elif isinstance(value, bool | int | float) or value is None:
            size += 8
        else:
            raise StorageError(f"property {name} has an unsupported type {type(value).__name__}")
    if size > _MAX_ENTITY_BYTES:
        raise StorageError("entity is larger than 1 MiB")


def _matches(entity: Entity, where: Where) -> bool:
    for name, wanted in where.items():
        value = entity.get(name)
        if isinstance(wanted, tuple):
            if value not in wanted:
                return False
        elif value != wanted or type(value) is not type(wanted):
            return False
    return True


def _alternatives(wanted: Any) -> tuple[Any, ...] | None:
    """The values a property filter accepts, or ``None`` when an index cannot serve it."""
    values = wanted if isinstance(wanted, tuple) else (wanted,)
    return values if all(isinstance(v, _INDEXABLE) for v in values) else None


class _Partition:
    """One partition: its rows, their keys in order, and the property indexes queries asked for.

    Stored entities hold only immutable scalars (``_check_entity`` refuses anything else), so a
    shallow copy in and out isolates callers as well as a deep copy would, at a fraction of the cost.
    """

    __slots__ = ("indexes", "keys", "rows")

    def __init__(self) -> None:
        self.rows: dict[str, tuple[Entity, str]] = {}
        self.keys: list[str] = []  # sorted row keys
        # property name -> value -> sorted row keys of the rows holding that value (missing = None).
        # Values equal in Python (True, 1) share a bucket, as they would pass a tuple filter alike.
        self.indexes: dict[str, dict[Any, list[str]]] = {}

    def put(self, row_key: str, entity: Entity, etag: str) -> None:
        old = self.rows.get(row_key)
        if old is None:
            if self.keys and row_key > self.keys[-1]:
                self.keys.append(row_key)  # rows often arrive in key order: skip the search
            else:
                insort(self.keys, row_key)
        for name, buckets in self.indexes.items():
            value = entity.get(name)
            if old is not None:
                previous = old[0].get(name)
                if previous is value or previous == value:
                    continue  # equal values share a bucket
                _remove_sorted(buckets, previous, row_key)
            insort(buckets.setdefault(value, []), row_key)
        self.rows[row_key] = (entity, etag)

    def remove(self, row_key: str) -> None:
        entity, _ = self.rows.pop(row_key)
        del self.keys[bisect_left(self.keys, row_key)]
        for name, buckets in self.indexes.items():
            _remove_sorted(buckets, entity.get(name), row_key)

    def candidates(self, where: Where, start: str) -> Iterator[str]:
        """Row keys from ``start`` on, in order: every row matching ``where`` and maybe others."""
        for name, wanted in where.items():
            if name in _KEYS:
                continue
            values = _alternatives(wanted)
            if values is None:
                continue
            buckets = self.indexes.get(name)
            if buckets is None:
                buckets = self.indexes[name] = {}
                for row_key in self.keys:
                    buckets.setdefault(self.rows[row_key][0].get(name), []).append(row_key)
            found = {id(b): b for b in (buckets.get(v) for v in values) if b is not None}
            runs = [_from(bucket, start) for bucket in found.values()]
            return runs[0] if len(runs) == 1 else heapq.merge(*runs)
        return _from(self.keys, start)


def _from(keys: list[str], start: str) -> Iterator[str]:
    # Indexing instead of slicing: a page reads only as far as it needs.
    return map(keys.__getitem__, range(bisect_left(keys, start), len(keys)))


def _remove_sorted(buckets: dict[Any, list[str]], value: Any, row_key: str) -> None:
    bucket = buckets[value]
    del bucket[bisect_left(bucket, row_key)]
    if not bucket:
        del buckets[value]


class MemoryEntityTable:
    """One table in memory. ``MemoryEntityTable.shared(name)`` is not provided on purpose: tests
    create their own tables so they never see each other's rows."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._partitions: dict[str, _Partition] = {}
        self._partition_keys: list[str] = []  # sorted, only partitions that hold rows
        self._versions = itertools.count(1)

    def _etag(self) -> str:
        return f'W/"{next(self._versions)}"'

    def _find(self, partition_key: str, row_key: str) -> tuple[Entity, str] | None:
        partition = self._partitions.get(partition_key)
        return partition.rows.get(row_key) if partition is not None else None

    def _store(self, entity: Entity) -> str:
        etag = self._etag()
        partition_key = entity["PartitionKey"]
        partition = self._partitions.get(partition_key)
        if partition is None:
            partition = self._partitions[partition_key] = _Partition()
            insort(self._partition_keys, partition_key)
        partition.put(entity["RowKey"], dict(entity), etag)
        return etag

    async def get(self, partition_key: str, row_key: str) -> tuple[Entity, str] | None:
        found = self._find(partition_key, row_key)
        return (dict(found[0]), found[1]) if found else None

    async def insert(self, entity: Entity) -> str:
        _check_entity(entity)
        if self._find(entity["PartitionKey"], entity["RowKey"]) is not None:
            raise ConcurrencyConflict("the entity already exists")
        return self._store(entity)

    async def upsert(self, entity: Entity) -> str:
        _check_entity(entity)
        return self._store(entity)

    async def replace(self, entity: Entity, etag: str) -> str:
        _check_entity(entity)
        current = self._find(entity["PartitionKey"], entity["RowKey"])
        if current is None:
            raise RecordNotFound("the entity does not exist")
        if etag not in ("*", current[1]):
            raise ConcurrencyConflict("the entity changed since it was read")
        return self._store(entity)

    async def merge(self, entity: Entity, etag: str | None = None) -> str:
        current = self._find(entity["PartitionKey"], entity["RowKey"])
        if current is None:
            raise RecordNotFound("the entity does not exist")
        if etag is not None and etag not in ("*", current[1]):
            raise ConcurrencyConflict("the entity changed since it was read")
        merged = {**current[0], **entity}
        _check_entity(merged)
        return self._store(merged)

    async def delete(self, partition_key: str, row_key: str, etag: str | None = None) -> None:
        current = self._find(partition_key, row_key)
        if current is None:
            return
        if etag is not None and etag not in ("*", current[1]):
            raise ConcurrencyConflict("the entity changed since it was read")
        partition = self._partitions[partition_key]
        partition.remove(row_key)
        if not partition.rows:
            del self._partitions[partition_key]
            del self._partition_keys[bisect_left(self._partition_keys, partition_key)]

    async def insert_batch(self, entities: Sequence[Entity]) -> None:
        if not entities:
            return
        if len(entities) > _MAX_BATCH:
            raise StorageError(f"a batch holds at most {_MAX_BATCH} operations")
        partitions = {e["PartitionKey"] for e in entities}
        if len(partitions) != 1:
            raise StorageError("a batch must stay within one partition")
        keys = [(e["PartitionKey"], e["RowKey"]) for e in entities]
        if len(set(keys)) != len(keys):
            raise StorageError("a batch cannot touch one entity twice")
        for entity in entities:
            _check_entity(entity)
        if any(self._find(*key) is not None for key in keys):
            raise ConcurrencyConflict("an entity of the batch already exists; nothing was written")
        for entity in entities:
            self._store(entity)

    async def query(
        self,
        where: Where,
        *,
        select: Sequence[str] | None = None,
        page_size: int = 1000,
        continuation: str | None = None,
    ) -> Page[Entity]:
        page_size = max(1, min(page_size, _MAX_PAGE))
        after = _decode_continuation(continuation)
        selected: list[Entity] = []
        rest, key_is_str = _rest_of(where)
        for partition_key in self._partitions_for(where, after):
            partition = self._partitions[partition_key]
            start = after[1] if after is not None and partition_key == after[0] else ""
            for row_key in partition.candidates(where, start):
                entity, etag = partition.rows[row_key]
                if key_is_str and type(entity["PartitionKey"]) is not str:
                    continue
                if rest and not _matches(entity, rest):
                    continue
                if len(selected) == page_size:
                    return Page(selected, _encode_continuation((partition_key, row_key)))
                row = {name: entity[name] for name in select if name in entity} if select else dict(entity)
                row[ETAG_FIELD] = etag
                selected.append(row)
        return Page(selected, None)

    def _partitions_for(self, where: Where, after: tuple[str, str] | None) -> list[str]:
        """The partitions that can hold matching rows at or after ``after``, in key order."""
        if "PartitionKey" in where:
            wanted = where["PartitionKey"]
            values = wanted if isinstance(wanted, tuple) else (wanted,)
            # Equal keys share a dict slot (and ``_matches`` still checks each row), so this never
            # drops a partition the scan would have read.
            keys = sorted(set(self._partition_keys_of(values)))
        else:
            keys = self._partition_keys
        if after is None:
            return keys
        return keys[bisect_left(keys, after[0]) :]

    def _partition_keys_of(self, values: tuple[Any, ...]) -> Iterator[str]:
        for value in values:
            if isinstance(value, str) and value in self._partitions:
                yield value


def _rest_of(where: Where) -> tuple[Where, bool]:
    """What ``_matches`` still has to check on the rows of the partitions ``_partitions_for`` chose.

    Their ``PartitionKey`` equals a wanted value already, so only a plain-string filter's type check
    remains (``True`` in the answer); a tuple filter is settled. Anything unusual is left whole.
    """
    if "PartitionKey" not in where:
        return where, False
    wanted = where["PartitionKey"]
    if not isinstance(wanted, tuple) and type(wanted) is not str:
        return where, False
    return {k: v for k, v in where.items() if k != "PartitionKey"}, not isinstance(wanted, tuple)


def _encode_continuation(key: tuple[str, str]) -> str:
    return encode_continuation({"PartitionKey": key[0], "RowKey": key[1]})


def _decode_continuation(token: str | None) -> tuple[str, str] | None:
    if token is None:
        return None
    position = decode_continuation(token)
    return (position.get("PartitionKey", ""), position.get("RowKey", ""))


class MemoryTables:
    """What :class:`~proactive.adapters.table_storage.AzureTables` offers (``Services.tables``), in memory."""

    def __init__(self) -> None:
        self._tables: dict[str, MemoryEntityTable] = {}

    def table(self, name: str) -> MemoryEntityTable:
        """The named table, created on first use."""
        return self._tables.setdefault(name, MemoryEntityTable(name))

    async def ping(self) -> None:
        """Always reachable."""

    async def close(self) -> None:
        """Nothing to release."""
