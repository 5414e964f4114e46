"""Azure Storage queues (and Azurite) behind :class:`~proactive.delivery.ports.WorkQueue`.

:class:`AzureQueues` owns one ``QueueServiceClient`` per worker process (built by the composition root,
closed at shutdown). A queue is created on first use, never in a constructor. Messages are the compact JSON
text of an object with no base64 wrapping, matching host.json ``queues.messageEncoding: none``, so the
Functions queue trigger binds the same text. SDK errors become :class:`~proactive.errors.StorageError` here.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.queue.aio import QueueClient, QueueServiceClient

from proactive import json_input
from proactive.adapters.storage_identity import storage_credential
from proactive.delivery.ports import QueueMessage
from proactive.errors import StorageError
from proactive.settings import StorageAccount

__all__ = ["MAX_DELAY_SECONDS", "AzureQueues", "AzureWorkQueue", "whole_seconds"]

MAX_DELAY_SECONDS = 7 * 24 * 3600  # the service's limit for a visibility timeout


def whole_seconds(seconds: float, *, low: int) -> int:
    """Seconds as the service takes them: whole, rounded up (never shorter than asked), within limits."""
    return max(low, min(MAX_DELAY_SECONDS, math.ceil(max(0.0, seconds))))


def _translate(exc: AzureError) -> StorageError:
    # Never echo the SDK message: it can carry request URLs with SAS tokens; the code is enough.
    return StorageError(f"queue storage: {getattr(exc, 'error_code', None) or type(exc).__name__}")


class AzureQueues:
    """Factory of :class:`AzureWorkQueue` sharing one service client."""

    def __init__(self, service: QueueServiceClient, credential: AsyncTokenCredential | None = None) -> None:
        self._service = service
        self._credential = credential  # owned here when identity-based: closed with the client

    @classmethod
    def for_account(cls, account: StorageAccount, *, proxy_from_environment: bool = False) -> AzureQueues:
        """Build the client for ``AzureWebJobsStorage`` in either shape (no I/O until the first operation).

        Args:
            account: A connection string, or the queue service URI of an identity-based connection.
            proxy_from_environment: As in :meth:`from_connection_string`.
        """
        if not account.identity_based:
            return cls.from_connection_string(
                account.connection_string, proxy_from_environment=proxy_from_environment
            )
        credential = storage_credential(account)
        service = QueueServiceClient(
            account.queue_service_uri, credential=credential, use_env_settings=proxy_from_environment
        )
        return cls(service, credential)

    @classmethod
    def from_connection_string(
        cls, connection_string: str, *, proxy_from_environment: bool = False
    ) -> AzureQueues:
        """Build the client (no I/O happens until the first queue operation).

        Args:
            connection_string: The storage account's connection string.
            proxy_from_environment: Read proxy settings and ``~/.netrc`` from the environment
                (``Settings.proxy_from_environment``); off, no request pays for that lookup.
        """
        return cls(
            QueueServiceClient.from_connection_string(
                connection_string, use_env_settings=proxy_from_environment
            )
        )

    def queue(self, name: str) -> AzureWorkQueue:
        return AzureWorkQueue(self._service.get_queue_client(name), name)

    async def close(self) -> None:
        await self._service.close()
        if self._credential is not None:
            await self._credential.close()


class AzureWorkQueue:
    """One queue. Creates itself on first use."""

    def __init__(self, client: QueueClient, name: str) -> None:
        self.name = name
        self._client = client
        self._ready = False
        self._lock: asyncio.Lock | None = None

    async def _queue(self) -> QueueClient:
        if not self._ready:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if not self._ready:
                    try:
                        await self._client.create_queue()
                    except ResourceExistsError:
                        pass
                    except AzureError as exc:
                        raise _translate(exc) from exc
                    self._ready = True
        return self._client

    async def put(self, body: Mapping[str, Any], *, delay: float = 0.0) -> None:
        client = await self._queue()
        text = json.dumps(dict(body), separators=(",", ":"), ensure_ascii=False)
        try:
            await client.send_message(text, visibility_timeout=whole_seconds(delay, low=0))
        except AzureError as exc:
            raise _translate(exc) from exc

    async def receive(
        self, *, max_messages: int = 32, visibility_timeout: float = 30.0
    ) -> list[QueueMessage]:
        client = await self._queue()
        count = max(1, min(32, max_messages))
        received: list[QueueMessage] = []
        try:
            pages = client.receive_messages(
                messages_per_page=count,
                max_messages=count,
                visibility_timeout=whole_seconds(visibility_timeout, low=1),
            )
            async for message in pages:
                received.append(
                    QueueMessage(
                        id=str(message.id),
                        pop_receipt=str(message.pop_receipt),
                        body=_object(message.content),
                        dequeue_count=int(message.dequeue_count or 0),
                    )
                )
        except AzureError as exc:
            raise _translate(exc) from exc
        return received

    async def delete(self, message: QueueMessage) -> None:
        client = await self._queue()
        try:
            await client.delete_message(message.id, message.pop_receipt)
        except AzureError as exc:
            raise _translate(exc) from exc


def _object(content: Any) -> dict[str, Any]:
    try:
        value = json_input.loads(content) if isinstance(content, str | bytes) else content
    except ValueError:
        value = None
    if not isinstance(value, dict):
        # Someone put something that is not ours on the queue; hand it on visibly rather than crash.
        return {"$unparsed": str(content)[:1000]}
    return value
