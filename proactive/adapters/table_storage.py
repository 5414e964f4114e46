"""Azure Table Storage (and Azurite) behind :class:`~proactive.storage.ports.EntityTable`.

:class:`AzureTables` owns one ``TableServiceClient`` per worker process (built by the composition
root, closed at shutdown). Tables are created on first use, never in a constructor. SDK errors are
translated here, at the boundary, into :mod:`proactive.errors`; :data:`ERROR_MAP` lists them so a
test can pin that every error the SDK raises is mapped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from proactive.adapters.storage_identity import storage_credential
from proactive.errors import ConcurrencyConflict, ProactiveError, RecordNotFound, StorageError
from proactive.settings import StorageAccount
from proactive.storage.paging import decode_continuation, encode_continuation
from proactive.storage.ports import ETAG_FIELD, Entity, Page, Where

# SDK error -> product error, most specific first. TableTransactionError is checked by status code.
ERROR_MAP: tuple[tuple[type[AzureError], type[ProactiveError]], ...] = (
    (ResourceExistsError, ConcurrencyConflict),
    (ResourceModifiedError, ConcurrencyConflict),
    (ResourceNotFoundError, RecordNotFound),
    (AzureError, StorageError),
)


def translate(exc: AzureError) -> ProactiveError:
    """The product error for an SDK error (a transaction keeps its status: 409 -> conflict)."""
    if isinstance(exc, TableTransactionError):
        status = getattr(exc, "status_code", None)
        code = getattr(exc, "error_code", None)
        if status in (409, 412) or code in ("EntityAlreadyExists", "UpdateConditionNotSatisfied"):
            return ConcurrencyConflict(f"batch rejected: {code}")
        return StorageError(f"batch rejected: {code or status}")
    for sdk_type, product_type in ERROR_MAP:
        if isinstance(exc, sdk_type):
            # Never echo the SDK message: it can carry request URLs; the code is enough.
            code = getattr(exc, "error_code", None) or type(exc).__name__
            return product_type(f"table storage: {code}")
    return StorageError(f"table storage: {type(exc).__name__}")


class AzureTables:
    """Factory of :class:`AzureEntityTable` sharing one service client."""

    def __init__(self, service: TableServiceClient, credential: AsyncTokenCredential | None = None) -> None:
        self._service = service
        self._credential = credential  # owned here when identity-based: closed with the client

    @classmethod
    def for_account(cls, account: StorageAccount, *, proxy_from_environment: bool = False) -> AzureTables:
        """Build the client for ``AzureWebJobsStorage`` in either shape (no I/O until the first operation).

        Args:
            account: A connection string, or the table service URI of an identity-based connection.
            proxy_from_environment: As in :meth:`from_connection_string`.
        """
        if not account.identity_based:
            return cls.from_connection_string(
                account.connection_string, proxy_from_environment=proxy_from_environment
            )
        credential = storage_credential(account)
        service = TableServiceClient(
            account.table_service_uri, credential=credential, use_env_settings=proxy_from_environment
        )
        return cls(service, credential)

    @classmethod
    def from_connection_string(
        cls, connection_string: str, *, proxy_from_environment: bool = False
    ) -> AzureTables:
        """Build the client (no I/O happens until the first table operation).

        Args:
            connection_string: The storage account's connection string.
            proxy_from_environment: Read proxy settings and ``~/.netrc`` from the environment
                (``Settings.proxy_from_environment``); off, no request pays for that lookup.
        """
        return cls(
            TableServiceClient.from_connection_string(
                connection_string, use_env_settings=proxy_from_environment
            )
        )

    def table(self, name: str) -> AzureEntityTable:
        return AzureEntityTable(self._service, name)

    async def ping(self) -> None:
        """One cheap round trip, for health checks. Raises StorageError when unreachable."""
        try:
            async for _ in self._service.list_tables(results_per_page=1):
                break
        except AzureError as exc:
            raise translate(exc) from exc

    async def delete_table(self, name: str) -> None:
        try:
            await self._service.delete_table(name)
        except AzureError as exc:
            raise translate(exc) from exc

    async def close(self) -> None:
        await self._service.close()
        if self._credential is not None:
            await self._credential.close()


class AzureEntityTable:
    """One table. Creates itself on first use."""

    def __init__(self, service: TableServiceClient, name: str) -> None:
        self.name = name
        self._service = service
        self._client: TableClient = service.get_table_client(name)
        self._ready = False
        self._lock: asyncio.Lock | None = None

    async def _table(self) -> TableClient:
        if not self._ready:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if not self._ready:
                    try:
                        await self._service.create_table_if_not_exists(self.name)
                    except AzureError as exc:
                        raise translate(exc) from exc
                    self._ready = True
        return self._client

    async def get(self, partition_key: str, row_key: str) -> tuple[Entity, str] | None:
        client = await self._table()
        try:
            entity = await client.get_entity(partition_key, row_key)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise translate(exc) from exc
        return dict(entity), str(entity.metadata["etag"])

    async def insert(self, entity: Entity) -> str:
        return await self._write(lambda c: c.create_entity(entity))

    async def upsert(self, entity: Entity) -> str:
        return await self._write(lambda c: c.upsert_entity(entity, mode=UpdateMode.REPLACE))

    async def replace(self, entity: Entity, etag: str) -> str:
        return await self._write(
            lambda c: c.update_entity(
                entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
            )
        )

    async def merge(self, entity: Entity, etag: str | None = None) -> str:
        condition = MatchConditions.IfNotModified if etag else MatchConditions.Unconditionally
        return await self._write(
            lambda c: c.update_entity(entity, mode=UpdateMode.MERGE, etag=etag, match_condition=condition)
        )

    async def delete(self, partition_key: str, row_key: str, etag: str | None = None) -> None:
        client = await self._table()
        condition = MatchConditions.IfNotModified if etag else MatchConditions.Unconditionally
        try:
            await client.delete_entity(partition_key, row_key, etag=etag, match_condition=condition)
        except AzureError as exc:
            raise translate(exc) from exc

    async def insert_batch(self, entities: Sequence[Entity]) -> None:
        if not entities:
            return
        client = await self._table()
        try:
            await client.submit_transaction([("create", entity) for entity in entities])
        except AzureError as exc:
            raise translate(exc) from exc

    async def query(
        self,
        where: Where,
        *,
        select: Sequence[str] | None = None,
        page_size: int = 1000,
        continuation: str | None = None,
    ) -> Page[Entity]:
        client = await self._table()
        clauses, parameters = _odata_filter(where)
        token = decode_continuation(continuation) if continuation else None
        try:
            pages = client.query_entities(
                clauses,
                parameters=parameters,
                select=list(select) if select else None,
                results_per_page=max(1, min(page_size, 1000)),
            ).by_page(continuation_token=token)  # type: ignore[arg-type]  # tables take a dict
            items: list[Entity] = []
            async for page in pages:
                async for entity in page:
                    row = dict(entity)
                    row[ETAG_FIELD] = entity.metadata["etag"]
                    items.append(row)
                break
            position = pages.continuation_token  # type: ignore[attr-defined]
        except AzureError as exc:
            raise translate(exc) from exc
        next_token = None
        if position:
            next_token = encode_continuation({k: v for k, v in position.items() if v is not None})
        return Page(items, next_token)

    async def _write(self, operation: Any) -> str:
        client = await self._table()
        try:
            metadata = await operation(client)
        except AzureError as exc:
            raise translate(exc) from exc
        return str(metadata["etag"])


def _odata_filter(where: Where) -> tuple[str, dict[str, Any]]:
    clauses: list[str] = []
    parameters: dict[str, Any] = {}
    for index, (name, wanted) in enumerate(sorted(where.items())):
        if not name.isidentifier():
            raise StorageError(f"not a property name: {name!r}")
        alternatives = wanted if isinstance(wanted, tuple) else (wanted,)
        ors = []
        for alt_index, value in enumerate(alternatives):
            parameter = f"p{index}_{alt_index}"
            parameters[parameter] = value
            ors.append(f"{name} eq @{parameter}")
        # Spaces around the parentheses: the SDK substitutes @parameters by splitting on spaces.
        clauses.append(ors[0] if len(ors) == 1 else "( " + " or ".join(ors) + " )")
    return " and ".join(clauses) or "PartitionKey ne ''", parameters
