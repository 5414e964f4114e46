"""Invoke an activity function the way the Python worker does (through the SDK's converters)."""

from __future__ import annotations

import asyncio
import inspect
import traceback
from dataclasses import dataclass

from azure.functions import meta
from azure.functions.durable_functions import ActivityTriggerConverter

from devhost.durable.functions import FunctionInfo
from devhost.durable.sdk import sdk_warnings_logged


@dataclass(frozen=True)
class ActivityOutcome:
    """An activity's result: JSON output, or the failure the extension records as TaskFailed."""

    ok: bool
    result: str | None = None  # JSON text
    reason: str = ""
    details: str = ""


async def invoke_activity(info: FunctionInfo, input_json: str | None) -> ActivityOutcome:
    """Decode the input, call the function (sync ones in a worker thread), encode its return value."""
    try:
        with sdk_warnings_logged():
            argument = ActivityTriggerConverter.decode(
                meta.Datum(type="json", value=input_json if input_json is not None else "null"),
                trigger_metadata=None,
            )
        function = info.callable
        kwargs = {info.trigger_param: argument}
        if inspect.iscoroutinefunction(function):
            value = await function(**kwargs)
        else:
            value = await asyncio.to_thread(function, **kwargs)
        with sdk_warnings_logged():
            encoded = ActivityTriggerConverter.encode(value, expected_type=None)
        return ActivityOutcome(ok=True, result=str(encoded.value))
    except Exception as exc:
        return ActivityOutcome(
            ok=False,
            reason=f"Activity function '{info.name}' failed: {type(exc).__name__}: {exc}",
            details="".join(traceback.format_exception(exc)),
        )
