"""Discover a Function app's functions from ``app.get_functions()``: the only registry of names.

The worker indexes a v2-model app the same way; this module sorts what it finds by trigger type
and remembers each function's binding JSON (route, methods, authLevel, queueName, schedule...).
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.functions as func


@dataclass(frozen=True)
class FunctionInfo:
    """One registered function: its name, trigger binding and the callable the worker would invoke."""

    name: str
    trigger_type: str
    trigger: dict[str, Any]
    bindings: tuple[dict[str, Any], ...]
    callable: Any

    @property
    def trigger_param(self) -> str:
        """The Python parameter the trigger binds to."""
        return str(self.trigger["name"])

    def binding_param(self, binding_type: str) -> str | None:
        """The parameter name of the first input binding of ``binding_type``, if any."""
        for binding in self.bindings:
            if binding.get("type") == binding_type and binding.get("direction", "IN").upper() == "IN":
                return str(binding["name"])
        return None


@dataclass
class FunctionIndex:
    """The app's functions grouped by trigger type (durable names are matched like the extension)."""

    functions: dict[str, FunctionInfo] = field(default_factory=dict)
    orchestrators: dict[str, FunctionInfo] = field(default_factory=dict)
    activities: dict[str, FunctionInfo] = field(default_factory=dict)
    entities: dict[str, FunctionInfo] = field(default_factory=dict)  # lower-cased names
    http: list[FunctionInfo] = field(default_factory=list)
    queues: list[FunctionInfo] = field(default_factory=list)
    timers: list[FunctionInfo] = field(default_factory=list)

    @classmethod
    def from_app(cls, app: func.FunctionApp) -> FunctionIndex:
        """Index an app. ``get_functions()`` is not idempotent, so the cached bindings are reset first."""
        app.functions_bindings = None  # type: ignore[attr-defined]
        index = cls()
        for function in app.get_functions():
            bindings = tuple(json.loads(raw) for raw in function.get_raw_bindings())
            trigger = next(b for b in bindings if b["type"].endswith("Trigger"))
            ttype = trigger["type"]
            name = function.get_function_name()
            info = FunctionInfo(name, ttype, trigger, bindings, function.get_user_function())
            index.functions[name] = info
            if ttype == "orchestrationTrigger":
                index.orchestrators[trigger.get("orchestration") or name] = info
            elif ttype == "activityTrigger":
                index.activities[trigger.get("activity") or name] = info
            elif ttype == "entityTrigger":
                index.entities[(trigger.get("entityName") or name).lower()] = info
            elif ttype == "httpTrigger":
                index.http.append(info)
            elif ttype == "queueTrigger":
                index.queues.append(info)
            elif ttype == "timerTrigger":
                index.timers.append(info)
        return index


def load_app(spec: str, app_dir: Path | None = None) -> func.FunctionApp:
    """Import ``module`` or ``module:attribute`` (default attribute ``app``) and return the app.

    Args:
        spec: e.g. ``function_app`` or ``tests.devhost.apps.sample:app``.
        app_dir: directory put first on ``sys.path`` (the Function app root), default the cwd.
    """
    module_name, _, attribute = spec.partition(":")
    root = str((app_dir or Path.cwd()).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module(module_name)
    app = getattr(module, attribute or "app")
    if not isinstance(app, func.FunctionRegister):
        raise TypeError(f"{spec} is not a FunctionApp/DFApp (got {type(app).__name__})")
    return app
