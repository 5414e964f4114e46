"""Where the durable runtime keeps its state: a small Protocol, and an in-memory implementation.

Three kinds of data, as in the Durable extension's task hub:

* instances: one record per orchestration (status, input/output, how long its history is);
* history: the append-only event list of the current execution of each orchestration;
* messages: per-target inboxes (an orchestration id or an entity's ``@name@key``) holding work
  that has not been applied yet (activity results, timer firings, raised events, entity operations).

The instance record is the commit point: history rows past ``history_length`` are ignored, so a
crash between writing history and updating the record loses nothing that was committed. The
messages an episode (or an entity batch) consumed are deleted *with* that commit, atomically, so a
crash can neither apply a message twice nor lose one; at most :data:`MAX_CONSUMED_PER_COMMIT`
messages are consumed per commit (one Azure Table batch holds 100 operations: the record + 99).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# One table batch = 100 operations: the record upsert plus this many message deletions.
MAX_CONSUMED_PER_COMMIT = 99

TERMINAL_STATUSES = frozenset({"Completed", "Failed", "Terminated"})
ACTIVE_STATUSES = frozenset({"Pending", "Running"})


@dataclass
class InstanceRecord:
    """One orchestration instance, as the status API reports it."""

    instance_id: str
    name: str
    status: str
    input: str | None
    created_time: str
    last_updated_time: str
    execution_id: str
    history_length: int = 0
    output: str | None = None  # JSON text
    custom_status: str | None = None  # JSON text
    parent_instance_id: str | None = None
    parent_execution_id: str | None = None
    parent_task_id: int | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the instance completed, failed or was terminated."""
        return self.status in TERMINAL_STATUSES


@dataclass
class EntityRecord:
    """One durable entity: its state and the operations it already answered (for de-duplication)."""

    entity_id: str  # scheduler id: "@name@key"
    state: str | None = None  # JSON text
    exists: bool = False
    # request id -> response dict (None for signals); bounded, newest last.
    processed: dict[str, dict[str, Any] | None] = field(default_factory=dict)


@dataclass
class Message:
    """A unit of work waiting in a target's inbox."""

    message_id: str
    body: dict[str, Any]


class DurableStore(Protocol):
    """Persistence for the durable runtime; implementations must be safe for one process at a time."""

    async def open(self) -> None:
        """Create tables/queues if needed."""
        ...

    async def close(self) -> None:
        """Release clients."""
        ...

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """Return the instance record, or None."""
        ...

    async def list_instances(self) -> list[InstanceRecord]:
        """Return every instance record."""
        ...

    async def save_instance(
        self, record: InstanceRecord, new_events: list[dict[str, Any]], consumed: Sequence[str] = ()
    ) -> None:
        """Append ``new_events`` to the execution's history, then commit.

        The commit writes the record and deletes the ``consumed`` inbox messages of the instance in
        one atomic step (at most :data:`MAX_CONSUMED_PER_COMMIT` of them).
        """
        ...

    async def load_history(self, record: InstanceRecord) -> list[dict[str, Any]]:
        """Return the first ``record.history_length`` events of the record's execution."""
        ...

    async def delete_instance(self, instance_id: str) -> bool:
        """Delete the record, its history and its inbox; True if it existed."""
        ...

    async def add_messages(self, target: str, bodies: list[tuple[str, dict[str, Any]]]) -> None:
        """Add (message id, body) pairs to a target's inbox; an existing id is overwritten."""
        ...

    async def read_messages(self, target: str, limit: int | None = None) -> list[Message]:
        """Return up to ``limit`` of a target's pending messages in message-id order (ids sort by arrival)."""
        ...

    async def delete_messages(self, target: str, message_ids: list[str]) -> None:
        """Remove processed messages."""
        ...

    async def targets_with_messages(self) -> list[str]:
        """Return every target whose inbox is not empty."""
        ...

    async def get_entity(self, entity_id: str) -> EntityRecord | None:
        """Return an entity record, or None."""
        ...

    async def save_entity(self, record: EntityRecord, consumed: Sequence[str] = ()) -> None:
        """Write an entity record and delete the ``consumed`` messages of its inbox, atomically."""
        ...


class MemoryStore:
    """A :class:`DurableStore` in process memory (unit tests; ``serve --memory``).

    Records are deep-copied in and out so callers cannot change stored state by accident, like a
    real store that serialises.
    """

    def __init__(self) -> None:
        self._instances: dict[str, InstanceRecord] = {}
        self._history: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._inbox: dict[str, dict[str, dict[str, Any]]] = {}
        self._entities: dict[str, EntityRecord] = {}

    async def open(self) -> None:
        """Nothing to create."""

    async def close(self) -> None:
        """Nothing to release."""

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """Return a copy of the record, or None."""
        record = self._instances.get(instance_id)
        return copy.deepcopy(record) if record else None

    async def list_instances(self) -> list[InstanceRecord]:
        """Return copies of all records."""
        return [copy.deepcopy(r) for r in self._instances.values()]

    async def save_instance(
        self, record: InstanceRecord, new_events: list[dict[str, Any]], consumed: Sequence[str] = ()
    ) -> None:
        """Append the events, store the record and drop the consumed messages."""
        _check_consumed(consumed)
        key = (record.instance_id, record.execution_id)
        history = self._history.setdefault(key, [])
        start = record.history_length - len(new_events)
        del history[start:]
        history.extend(copy.deepcopy(new_events))
        # Like the Azurite store: only the current execution's history is kept.
        for old in [k for k in self._history if k[0] == record.instance_id and k != key]:
            del self._history[old]
        self._instances[record.instance_id] = copy.deepcopy(record)
        await self.delete_messages(record.instance_id, list(consumed))

    async def load_history(self, record: InstanceRecord) -> list[dict[str, Any]]:
        """Return a copy of the committed history."""
        history = self._history.get((record.instance_id, record.execution_id), [])
        return copy.deepcopy(history[: record.history_length])

    async def delete_instance(self, instance_id: str) -> bool:
        """Forget the instance, its histories and its inbox."""
        existed = self._instances.pop(instance_id, None) is not None
        for key in [k for k in self._history if k[0] == instance_id]:
            del self._history[key]
        self._inbox.pop(instance_id, None)
        return existed

    async def add_messages(self, target: str, bodies: list[tuple[str, dict[str, Any]]]) -> None:
        """Queue messages in insertion order."""
        inbox = self._inbox.setdefault(target, {})
        for message_id, body in bodies:
            inbox[message_id] = copy.deepcopy(body)

    async def read_messages(self, target: str, limit: int | None = None) -> list[Message]:
        """Return the inbox (or its first ``limit`` messages) in message-id order, like a table's rows."""
        inbox = sorted(self._inbox.get(target, {}).items())[:limit]
        return [Message(mid, copy.deepcopy(body)) for mid, body in inbox]

    async def delete_messages(self, target: str, message_ids: list[str]) -> None:
        """Drop the given messages."""
        inbox = self._inbox.get(target, {})
        for message_id in message_ids:
            inbox.pop(message_id, None)
        if not inbox:
            self._inbox.pop(target, None)

    async def targets_with_messages(self) -> list[str]:
        """Return targets with a non-empty inbox."""
        return [target for target, inbox in self._inbox.items() if inbox]

    async def get_entity(self, entity_id: str) -> EntityRecord | None:
        """Return a copy of the entity record, or None."""
        record = self._entities.get(entity_id)
        return copy.deepcopy(record) if record else None

    async def save_entity(self, record: EntityRecord, consumed: Sequence[str] = ()) -> None:
        """Store a copy of the entity record and drop the consumed messages."""
        _check_consumed(consumed)
        self._entities[record.entity_id] = copy.deepcopy(record)
        await self.delete_messages(record.entity_id, list(consumed))


def _check_consumed(consumed: Sequence[str]) -> None:
    # The memory store could do more, but then the engine would pass tests it fails on Azurite.
    if len(consumed) > MAX_CONSUMED_PER_COMMIT:
        raise ValueError(f"{len(consumed)} messages in one commit; at most {MAX_CONSUMED_PER_COMMIT}")
