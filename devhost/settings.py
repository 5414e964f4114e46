"""Local settings the way Core Tools reads them: ``local.settings.json`` ``Values`` plus the environment."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class HostSettings:
    """Everything the devhost reads from ``local.settings.json``, ``host.json`` and the environment."""

    values: Mapping[str, str] = field(default_factory=dict)
    host_json: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, app_dir: Path, environ: Mapping[str, str] | None = None) -> HostSettings:
        """Merge ``local.settings.json`` Values under the environment (the environment wins, like Core Tools)."""
        values: dict[str, str] = {}
        local = app_dir / "local.settings.json"
        if local.exists():
            values.update({k: str(v) for k, v in json.loads(local.read_text()).get("Values", {}).items()})
        values.update(environ if environ is not None else os.environ)
        host = app_dir / "host.json"
        host_json = json.loads(host.read_text()) if host.exists() else {}
        return cls(values, host_json)

    @property
    def storage(self) -> str:
        """``AzureWebJobsStorage`` (default ``UseDevelopmentStorage=true``)."""
        return self.values.get("AzureWebJobsStorage") or "UseDevelopmentStorage=true"

    @property
    def function_key(self) -> str | None:
        """The key non-anonymous routes require (``DEVHOST_FUNCTION_KEY``)."""
        return self.values.get("DEVHOST_FUNCTION_KEY") or None

    def extension(self, *path: str, default: Any = None) -> Any:
        """Read ``host.json`` ``extensions.<path>``."""
        node: Any = self.host_json.get("extensions", {})
        for part in path:
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def route_prefix(self) -> str:
        """``extensions.http.routePrefix`` (default ``api``)."""
        return str(self.extension("http", "routePrefix", default="api")).strip("/")

    @property
    def max_concurrent_activities(self) -> int:
        """``extensions.durableTask.maxConcurrentActivityFunctions`` (default 10 per core)."""
        default = 10 * (os.cpu_count() or 1)
        return int(self.extension("durableTask", "maxConcurrentActivityFunctions", default=default))

    @property
    def task_hub(self) -> str:
        """``extensions.durableTask.hubName`` (default ``TestHubName``, the extension's local default)."""
        return str(self.extension("durableTask", "hubName", default="TestHubName"))
