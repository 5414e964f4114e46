"""Run a batch of entity operations through the SDK's entity handler (JSON in, JSON out)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from devhost.durable.functions import FunctionInfo
from devhost.durable.sdk import sdk_warnings_logged


@dataclass
class EntityBatchResult:
    """The entity's new state and one result per operation (``{"isError", "result"}``)."""

    exists: bool
    state: str | None
    results: list[dict[str, Any]]


def parse_scheduler_id(entity_id: str) -> tuple[str, str]:
    """Split ``@name@key`` into (name, key)."""
    _, name, key = entity_id.split("@", 2)
    return name, key


def scheduler_id(name: str, key: str) -> str:
    """The extension's instance id for an entity: ``@{name lower}@{key}``."""
    return f"@{name.lower()}@{key}"


def run_entity_batch(
    info: FunctionInfo | None,
    entity_id: str,
    state: str | None,
    exists: bool,
    operations: list[dict[str, Any]],
) -> EntityBatchResult:
    """Apply ``operations`` (each ``{"op", "input"}``) in order, like the extension's entity batch.

    An exception in one operation is that operation's error result (the SDK records it, the state
    changes of the other operations stand); a missing entity function fails every operation.
    """
    name, key = parse_scheduler_id(entity_id)
    if info is None:
        error = json.dumps(f"The entity function '{name}' doesn't exist in this app.")
        return EntityBatchResult(exists, state, [{"isError": True, "result": error} for _ in operations])
    context = {
        "self": {"name": name, "key": key},
        "state": state,
        "exists": exists,
        # The extension double-encodes operation inputs: the SDK json.loads, then df_loads them.
        "batch": [{"name": op["op"], "input": json.dumps(op.get("input") or "null")} for op in operations],
    }
    try:
        with sdk_warnings_logged():
            output = json.loads(info.callable(json.dumps(context)))
    except Exception as exc:
        error = json.dumps(f"{type(exc).__name__}: {exc}")
        return EntityBatchResult(exists, state, [{"isError": True, "result": error} for _ in operations])
    now_exists = bool(output.get("entityExists"))
    return EntityBatchResult(now_exists, output.get("entityState") if now_exists else None, output["results"])
