"""One replay episode on the real ``azure-functions-durable`` engine.

The Durable extension sends the orchestrator its whole history as JSON and gets back the state the
code reached: whether it is done, its output or error, and every action it has yielded so far
(``OutOfProcOrchestratorState``). This module does the first half: it builds the context the way the
extension does, runs it through the SDK's own ``DurableOrchestrationContext.from_json`` and
``Orchestrator.handle`` (the code behind the trigger's ``handle`` function) and returns that state.
What the extension then does with the actions, numbering and scheduling them, is
:mod:`devhost.durable.shim`.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from typing import Any

from azure.durable_functions.models.DurableOrchestrationContext import DurableOrchestrationContext
from azure.durable_functions.orchestrator import Orchestrator

from devhost.durable.sdk import sdk_warnings_logged

OUT_OF_PROC_MARKER = "$OutOfProcData$:"


@dataclass
class EpisodeResult:
    """What the SDK returned for one episode.

    ``state`` is the JSON the extension parses (``isDone``, ``actions``, ``output``, ``error``,
    ``customStatus``, ``schemaVersion``), also when the orchestrator raised: the SDK then appends it to
    the exception's message after ``$OutOfProcData$:``. It is None when the invocation failed without it.
    """

    state: dict[str, Any] | None = None
    error: str | None = None  # the orchestrator's exception, if it raised
    details: str = ""  # its traceback
    custom_status: Any = None

    @property
    def action_count(self) -> int:
        """How many actions the episode returned (compound ones count as one)."""
        actions = (self.state or {}).get("actions") or []
        return sum(len(group) for group in actions)


def run_episode(handle: Any, context: dict[str, Any]) -> EpisodeResult:
    """Replay ``context`` (history JSON and all) through the orchestrator behind ``handle``.

    Args:
        handle: the callable ``@app.orchestration_trigger`` registered (``Orchestrator.create``'s handle).
        context: the context the extension would send (``history``, ``instanceId``, ``input``...).
    """
    ctx = DurableOrchestrationContext.from_json(json.dumps(context))
    ctx._input_expected_type = getattr(handle, "_df_input_type", None)
    result = EpisodeResult()
    try:
        # The SDK warns, e.g., when an event arrives before the code waits for it (it defers the
        # event, which is correct); the worker logs such warnings, so do we.
        with sdk_warnings_logged():
            result.state = json.loads(Orchestrator(handle.orchestrator_function).handle(ctx))
    except Exception as exc:
        message = str(exc)
        if OUT_OF_PROC_MARKER in message:
            message, state = message.split(OUT_OF_PROC_MARKER, 1)
            result.state = json.loads(state)
            message = message.strip()
        cause = exc.__cause__ or exc
        result.error = message or type(cause).__name__
        result.details = "".join(traceback.format_exception(cause))
    state = result.state or {}
    result.custom_status = state.get("customStatus", ctx.custom_status)
    return result
