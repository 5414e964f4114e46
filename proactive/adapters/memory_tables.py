"""An in-memory :class:`~proactive.ports.EntityTable` that behaves like Azure Table Storage.

It keeps the same entity dicts the real adapter would send, and rejects what the service rejects
(forbidden key characters, over-long keys, oversized properties and entities, batches over 100 or
across partitions), so the contract suite passes against it and against Azurite alike. Used by
unit tests and by the devhost's in-memory mode; never in production.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Sequence

from proactive.errors import ConcurrencyConflict, RecordNotFound, StorageError
from proactive.paging import decode_continuation, encode_continuation
from proactive.ports import ETAG_FIELD, Entity, Page, Where

_FORBIDDEN_KEY_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_MAX_KEY_BYTES = 1024
_MAX_STRING_BYTES = 64 * 1024
_MAX_ENTITY_BYTES = 1024 * 1024
_MAX_PROPERTIES = 252  # 255 including PartitionKey, RowKey and Timestamp
_MAX_BATCH = 100
_MAX_PAGE = 1000


def _utf16_size(text: str) -> int:
    return len(text.encode("utf-16-le"))


def _check_entity(entity: Entity) -> None:
    for name in ("PartitionKey", "RowKey"):
        key = entity.get(name)
        if not isinstance(key, str):
            raise StorageError(f"{name} must be a string")
        if _FORBIDDEN_KEY_CHARS.search(key) or _utf16_size(key) > _MAX_KEY_BYTES:
            raise StorageError(f"{name} is not a valid table key")
    properties = {k: v for k, v in entity.items() if k not in ("PartitionKey", "RowKey")}
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


class MemoryEntityTable:
    """One table in memory. ``MemoryEntityTable.shared(name)`` is not provided on purpose: tests
    create their own tables so they never see each other's rows."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._rows: dict[tuple[str, str], tuple[Entity, str]] = {}
        self._versions = itertools.count(1)

    def _etag(self) -> str:
        return f'W/"{next(self._versions)}"'

    def _store(self, entity: Entity) -> str:
        etag = self._etag()
        self._rows[(entity["PartitionKey"], entity["RowKey"])] = (copy.deepcopy(dict(entity)), etag)
        return etag

    async def get(self, partition_key: str, row_key: str) -> tuple[Entity, str] | None:
        found = self._rows.get((partition_key, row_key))
        return (copy.deepcopy(found[0]), found[1]) if found else None

    async def insert(self, entity: Entity) -> str:
        _check_entity(entity)
        if (entity["PartitionKey"], entity["RowKey"]) in self._rows:
            raise ConcurrencyConflict("the entity already exists")
        return self._store(entity)

    async def upsert(self, entity: Entity) -> str:
        _check_entity(entity)
        return self._store(entity)

    async def replace(self, entity: Entity, etag: str) -> str:
        _check_entity(entity)
        current = self._rows.get((entity["PartitionKey"], entity["RowKey"]))
        if current is None:
            raise RecordNotFound("the entity does not exist")
        if etag not in ("*", current[1]):
            raise ConcurrencyConflict("the entity changed since it was read")
        return self._store(entity)

    async def merge(self, entity: Entity, etag: str | None = None) -> str:
        current = self._rows.get((entity["PartitionKey"], entity["RowKey"]))
        if current is None:
            raise RecordNotFound("the entity does not exist")
        if etag is not None and etag not in ("*", current[1]):
            raise ConcurrencyConflict("the entity changed since it was read")
        merged = {**current[0], **entity}
        _check_entity(merged)
        return self._store(merged)

    async def delete(self, partition_key: str, row_key: str, etag: str | None = None) -> None:
        current = self._rows.get((partition_key, row_key))
        if current is None:
            return
        if etag is not None and etag not in ("*", current[1]):
            raise ConcurrencyConflict("the entity changed since it was read")
        del self._rows[(partition_key, row_key)]

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
        if any(key in self._rows for key in keys):
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
        next_token: str | None = None
        for key in sorted(self._rows):
            if after is not None and key < after:
                continue
            entity, etag = self._rows[key]
            if not _matches(entity, where):
                continue
            if len(selected) == page_size:
                next_token = _encode_continuation(key)
                break
            row = (
                {name: entity[name] for name in select if name in entity} if select else copy.deepcopy(entity)
            )
            row[ETAG_FIELD] = etag
            selected.append(row)
        return Page(selected, next_token)


def _encode_continuation(key: tuple[str, str]) -> str:
    return encode_continuation({"PartitionKey": key[0], "RowKey": key[1]})


def _decode_continuation(token: str | None) -> tuple[str, str] | None:
    if token is None:
        return None
    position = decode_continuation(token)
    return (position.get("PartitionKey", ""), position.get("RowKey", ""))
