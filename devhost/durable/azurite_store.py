"""The durable runtime's state in Azure Table Storage (Azurite locally): survives a killed host.

Two tables per task hub, named after host.json ``extensions.durableTask.hubName`` so two hubs on
one storage account never share rows (``Dev`` in the names keeps them apart from the tables the
real Durable extension creates for the same hub, whose schema is different):

``{hub}DevInstances``, one partition per *target* (an orchestration id, or an entity's ``@name@key``)
    * row ``record``: the instance record (status, input, output, execution id, history length...)
      or, for an entity, its state and the request ids it already answered;
    * rows ``m-{message id}``: the target's inbox (activity results, timer firings, raised events,
      entity operations), sorted by id, which sorts by arrival.
``{hub}DevHistory``, one partition per orchestration
    * rows ``{execution id}-{index:08d}``: the history events of the current execution.

Why inboxes are table rows and not queues: the commit of an episode must delete the messages the
episode consumed *in the same atomic step* as the record update, or a crash between the two would
apply an external event twice (completions carry task ids and are de-duplicated anyway; events do
not). Only a table batch inside one partition gives that atomicity, so the inbox lives in the record's
partition. Tables also give ordered reads (queues are not FIFO), a complete view of pending work for
recovery after a restart, and need no polling: the host is one process and wakes targets itself.

Write order, and why a crash anywhere leaves a state recovery can finish:

1. history rows are appended (batches of <= 100 in the instance's partition); rows past the
   record's ``history_length`` are ignored, so a crash here loses nothing committed;
2. the commit batch upserts the record and deletes the consumed messages (at most
   :data:`~devhost.durable.store.MAX_CONSUMED_PER_COMMIT`, so record + deletes fit one batch);
3. history of earlier executions (before a ``continue_as_new``) is deleted, best effort.

Values bigger than one property (32K UTF-16 characters) are split over ``Name``, ``Name_1``... with
``NameParts`` saying how many; one row holds at most about 1 MB (an Azure Tables limit).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from devhost.durable.store import MAX_CONSUMED_PER_COMMIT, EntityRecord, InstanceRecord, Message

log = logging.getLogger("devhost.durable.store")

RECORD_ROW = "record"
MESSAGE_PREFIX = "m-"
MESSAGE_END = "m."  # "." sorts right after "-": the upper bound of the inbox range
BATCH_LIMIT = 100  # operations per table batch (Azurite answers malformed over 100)
BATCH_BYTES = 3_000_000  # a batch request may carry 4 MiB; keep a margin for the envelope
PROPERTY_CHARS = 30_000  # a string property holds 64 KiB of UTF-16
ROW_BYTES = 960_000  # an entity holds 1 MiB; keep a margin for keys and names
# How many answered request ids an entity keeps, in bytes of JSON; older ones are dropped first.
PROCESSED_BYTES = 600_000

_KEY_FORBIDDEN = re.compile(r"[%/\\#?\x00-\x1f\x7f-\x9f]")


class RowTooLarge(ValueError):
    """A value does not fit in one table row (Azure Tables caps an entity at 1 MiB)."""


def table_key(value: str) -> str:
    """Percent-encode the characters Azure Tables rejects in keys (and ``%`` itself, so it reverses)."""
    return _KEY_FORBIDDEN.sub(lambda m: f"%{ord(m.group()):02X}", value)


def table_prefix(task_hub: str) -> str:
    """The task hub name as a table-name prefix (letters and digits, starting with a letter)."""
    cleaned = re.sub(r"[^A-Za-z0-9]", "", task_hub)
    if not cleaned or not cleaned[0].isalpha():
        cleaned = "Hub" + cleaned
    return cleaned[:45]


def _put_text(row: dict[str, Any], name: str, text: str | None) -> None:
    if text is None:
        return
    parts = [text[i : i + PROPERTY_CHARS] for i in range(0, len(text), PROPERTY_CHARS)] or [""]
    row[name] = parts[0]
    for i, part in enumerate(parts[1:], start=1):
        row[f"{name}_{i}"] = part
    if len(parts) > 1:
        row[f"{name}Parts"] = len(parts)


def _get_text(row: dict[str, Any], name: str) -> str | None:
    if name not in row:
        return None
    parts = int(row.get(f"{name}Parts", 1))
    return str(row[name]) + "".join(str(row[f"{name}_{i}"]) for i in range(1, parts))


def _row_bytes(row: dict[str, Any]) -> int:
    return sum(2 * len(v) if isinstance(v, str) else 8 for v in row.values()) + 64 * len(row)


def _checked(row: dict[str, Any], what: str) -> dict[str, Any]:
    size = _row_bytes(row)
    if size > ROW_BYTES:
        raise RowTooLarge(f"{what} needs about {size} bytes; one table row holds 1 MiB")
    return row


class AzuriteStore:
    """A :class:`~devhost.durable.store.DurableStore` on Azure Table Storage / Azurite.

    Args:
        connection_string: ``AzureWebJobsStorage``.
        task_hub: host.json ``extensions.durableTask.hubName``; prefixes the table names.
        service: an existing client to use instead (tests); it is not closed by :meth:`close`.
    """

    def __init__(
        self,
        connection_string: str,
        *,
        task_hub: str = "TestHubName",
        service: TableServiceClient | None = None,
    ) -> None:
        self._connection_string = connection_string
        self._owns_service = service is None
        self._service = service
        prefix = table_prefix(task_hub)
        self.instances_table = f"{prefix}DevInstances"
        self.history_table = f"{prefix}DevHistory"
        self._instances: TableClient | None = None
        self._history: TableClient | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Build the client and create both tables if they do not exist."""
        if self._service is None:
            # Loopback only: no proxy, and no ~/.netrc read on a worker thread for every request.
            self._service = TableServiceClient.from_connection_string(
                self._connection_string, use_env_settings=False
            )
        for name in (self.instances_table, self.history_table):
            with contextlib.suppress(ResourceExistsError):
                await self._service.create_table(name)
        self._instances = self._service.get_table_client(self.instances_table)
        self._history = self._service.get_table_client(self.history_table)

    async def close(self) -> None:
        """Close the table clients (and the service client when this store built it)."""
        for client in (self._instances, self._history):
            if client is not None:
                await client.close()
        self._instances = self._history = None
        if self._owns_service and self._service is not None:
            await self._service.close()
            self._service = None

    @property
    def _inst(self) -> TableClient:
        if self._instances is None:
            raise RuntimeError("AzuriteStore is not open")
        return self._instances

    @property
    def _hist(self) -> TableClient:
        if self._history is None:
            raise RuntimeError("AzuriteStore is not open")
        return self._history

    # ------------------------------------------------------------------ instances

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """Return the instance record, or None."""
        row = await self._get_record(instance_id)
        if row is None or row.get("Kind") != "orchestration":
            return None
        return _instance_from_row(row)

    async def list_instances(self) -> list[InstanceRecord]:
        """Return every orchestration record (a scan: the devhost holds few)."""
        rows = self._inst.query_entities(
            "RowKey eq @rk and Kind eq @kind", parameters={"rk": RECORD_ROW, "kind": "orchestration"}
        )
        return [_instance_from_row(row) async for row in rows]

    async def save_instance(
        self, record: InstanceRecord, new_events: list[dict[str, Any]], consumed: Sequence[str] = ()
    ) -> None:
        """Append the history rows, then commit record + consumed-message deletions in one batch."""
        pk = table_key(record.instance_id)
        first = record.history_length - len(new_events)
        history_ops = [
            (
                "upsert",
                _checked(self._history_row(pk, record.execution_id, first + i, evt), "a history event"),
                {"mode": UpdateMode.REPLACE},
            )
            for i, evt in enumerate(new_events)
        ]
        await self._submit(self._hist, history_ops)
        await self._commit(record.instance_id, _instance_row(record), consumed)
        if record.history_length == 0:
            await self._drop_other_executions(pk, record.execution_id)

    async def load_history(self, record: InstanceRecord) -> list[dict[str, Any]]:
        """Return the first ``record.history_length`` events of the record's execution."""
        if record.history_length == 0:
            return []
        prefix = f"{record.execution_id}-"
        rows = self._hist.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={
                "pk": table_key(record.instance_id),
                "lo": prefix,
                "hi": f"{record.execution_id}.",
            },
        )
        events: list[dict[str, Any]] = []
        async for row in rows:
            if int(row["RowKey"][len(prefix) :]) >= record.history_length:
                break
            events.append(json.loads(_get_text(row, "Event") or "null"))
        if len(events) != record.history_length:
            raise RuntimeError(
                f"history of {record.instance_id} has {len(events)} events, its record says "
                f"{record.history_length}: the store was changed outside the devhost"
            )
        return events

    async def delete_instance(self, instance_id: str) -> bool:
        """Delete the record, its inbox and its history; True if the record existed."""
        existed = await self.get_instance(instance_id) is not None
        pk = table_key(instance_id)
        for client in (self._hist, self._inst):
            rows = client.query_entities(
                "PartitionKey eq @pk", parameters={"pk": pk}, select=["PartitionKey", "RowKey"]
            )
            await self._submit(client, [("delete", dict(row)) async for row in rows])
        return existed

    # ------------------------------------------------------------------ inboxes

    async def add_messages(self, target: str, bodies: list[tuple[str, dict[str, Any]]]) -> None:
        """Upsert the messages into the target's inbox (an existing id is overwritten)."""
        pk = table_key(target)
        ops = []
        for message_id, body in bodies:
            row = {"PartitionKey": pk, "RowKey": MESSAGE_PREFIX + table_key(message_id), "Target": target}
            _put_text(row, "Body", json.dumps(body))
            ops.append(("upsert", _checked(row, "a message"), {"mode": UpdateMode.REPLACE}))
        if len(ops) == 1:
            await self._inst.upsert_entity(ops[0][1], mode=UpdateMode.REPLACE)
        else:
            await self._submit(self._inst, ops)

    async def read_messages(self, target: str, limit: int | None = None) -> list[Message]:
        """Return up to ``limit`` pending messages of a target, oldest first."""
        rows = self._inst.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": table_key(target), "lo": MESSAGE_PREFIX, "hi": MESSAGE_END},
            results_per_page=min(limit or 1000, 1000),
        )
        messages: list[Message] = []
        async for row in rows:
            message_id = re.sub(
                r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), row["RowKey"][len(MESSAGE_PREFIX) :]
            )
            messages.append(Message(message_id, json.loads(_get_text(row, "Body") or "{}")))
            if limit is not None and len(messages) >= limit:
                break
        return messages

    async def delete_messages(self, target: str, message_ids: list[str]) -> None:
        """Delete messages; ids already gone are ignored."""
        pk = table_key(target)
        for message_id in message_ids:
            with contextlib.suppress(ResourceNotFoundError):
                await self._inst.delete_entity(pk, MESSAGE_PREFIX + table_key(message_id))

    async def targets_with_messages(self) -> list[str]:
        """Every target whose inbox is not empty (a scan, used once at start-up)."""
        rows = self._inst.query_entities(
            "RowKey ge @lo and RowKey lt @hi",
            parameters={"lo": MESSAGE_PREFIX, "hi": MESSAGE_END},
            select=["Target"],
        )
        return sorted({str(row["Target"]) async for row in rows})

    # ------------------------------------------------------------------ entities

    async def get_entity(self, entity_id: str) -> EntityRecord | None:
        """Return an entity record, or None."""
        row = await self._get_record(entity_id)
        if row is None or row.get("Kind") != "entity":
            return None
        processed = json.loads(_get_text(row, "Processed") or "[]")
        return EntityRecord(
            entity_id=entity_id,
            state=_get_text(row, "State"),
            exists=bool(row.get("Exists", False)),
            processed={request_id: answer for request_id, answer in processed},
        )

    async def save_entity(self, record: EntityRecord, consumed: Sequence[str] = ()) -> None:
        """Commit the entity's state, its answered request ids and the consumed-message deletions."""
        row: dict[str, Any] = {"Kind": "entity", "Id": record.entity_id, "Exists": record.exists}
        _put_text(row, "State", record.state)
        processed = list(record.processed.items())
        encoded = json.dumps(processed)
        while len(encoded) > PROCESSED_BYTES and processed:
            # The window only has to cover re-deliveries of recent requests (see the engine).
            processed = processed[max(1, len(processed) // 10) :]
            encoded = json.dumps(processed)
        _put_text(row, "Processed", encoded)
        await self._commit(record.entity_id, row, consumed)

    # ------------------------------------------------------------------ helpers

    async def _get_record(self, target: str) -> dict[str, Any] | None:
        try:
            return dict(await self._inst.get_entity(table_key(target), RECORD_ROW))
        except ResourceNotFoundError:
            return None

    def _history_row(self, pk: str, execution_id: str, index: int, evt: dict[str, Any]) -> dict[str, Any]:
        row = {"PartitionKey": pk, "RowKey": f"{execution_id}-{index:08d}"}
        _put_text(row, "Event", json.dumps(evt))
        return row

    async def _commit(self, target: str, row: dict[str, Any], consumed: Sequence[str]) -> None:
        if len(consumed) > MAX_CONSUMED_PER_COMMIT:
            raise ValueError(f"{len(consumed)} messages in one commit; at most {MAX_CONSUMED_PER_COMMIT}")
        pk = table_key(target)
        record = _checked({"PartitionKey": pk, "RowKey": RECORD_ROW, **row}, f"the record of {target}")
        ops: list[Any] = [("upsert", record, {"mode": UpdateMode.REPLACE})]
        ops += [("delete", {"PartitionKey": pk, "RowKey": MESSAGE_PREFIX + table_key(m)}) for m in consumed]
        try:
            await self._inst.submit_transaction(ops)
        except TableTransactionError as exc:
            if getattr(exc, "error_code", None) != "ResourceNotFound":
                raise
            # A consumed message vanished (the instance was purged meanwhile): commit without it.
            log.warning("commit of %s: a consumed message was already gone", target)
            await self._inst.upsert_entity(record, mode=UpdateMode.REPLACE)
            await self.delete_messages(target, list(consumed))

    async def _drop_other_executions(self, pk: str, execution_id: str) -> None:
        rows = self._hist.query_entities(
            "PartitionKey eq @pk", parameters={"pk": pk}, select=["PartitionKey", "RowKey"]
        )
        stale = [("delete", dict(row)) async for row in rows if not row["RowKey"].startswith(execution_id)]
        await self._submit(self._hist, stale)

    async def _submit(self, client: TableClient, ops: list[Any]) -> None:
        """Submit same-partition operations in batches of <= 100 operations and <= 3 MB."""
        batch: list[Any] = []
        size = 0
        for op in ops:
            op_size = _row_bytes(op[1])
            if batch and (len(batch) == BATCH_LIMIT or size + op_size > BATCH_BYTES):
                await client.submit_transaction(batch)
                batch, size = [], 0
            batch.append(op)
            size += op_size
        if batch:
            await client.submit_transaction(batch)


def _instance_row(record: InstanceRecord) -> dict[str, Any]:
    row: dict[str, Any] = {
        "Kind": "orchestration",
        "Id": record.instance_id,
        "Name": record.name,
        "Status": record.status,
        "CreatedTime": record.created_time,
        "LastUpdatedTime": record.last_updated_time,
        "ExecutionId": record.execution_id,
        "HistoryLength": record.history_length,
    }
    if record.parent_instance_id is not None:
        row["ParentInstanceId"] = record.parent_instance_id
        row["ParentExecutionId"] = record.parent_execution_id or ""
    if record.parent_task_id is not None:
        row["ParentTaskId"] = record.parent_task_id
    _put_text(row, "Input", record.input)
    _put_text(row, "Output", record.output)
    _put_text(row, "CustomStatus", record.custom_status)
    return row


def _instance_from_row(row: dict[str, Any]) -> InstanceRecord:
    return InstanceRecord(
        instance_id=str(row["Id"]),
        name=str(row["Name"]),
        status=str(row["Status"]),
        input=_get_text(row, "Input"),
        created_time=str(row["CreatedTime"]),
        last_updated_time=str(row["LastUpdatedTime"]),
        execution_id=str(row["ExecutionId"]),
        history_length=int(row["HistoryLength"]),
        output=_get_text(row, "Output"),
        custom_status=_get_text(row, "CustomStatus"),
        parent_instance_id=row.get("ParentInstanceId"),
        parent_execution_id=row.get("ParentExecutionId") or None,
        parent_task_id=int(row["ParentTaskId"]) if "ParentTaskId" in row else None,
    )
