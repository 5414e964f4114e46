"""The composition root: settings resolved once, SDK clients built once per worker process.

``function_app.py`` calls :func:`configure` at import (so a bad setting fails the app at start,
naming the setting); triggers call :func:`services` to reach the adapters. Clients are created on
first use, inside the worker's event loop, and never do I/O in a constructor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from proactive import __version__
from proactive.adapters.table_storage import AzureTables
from proactive.errors import ConfigurationError, StorageError
from proactive.settings import Settings
from proactive.stores import (
    TableDeadLetterStore,
    TableDeliveryLedger,
    TableNotificationStore,
    TablePreferenceStore,
    TableReferenceStore,
)

HEALTH_TIMEOUT_SECONDS = 3.0


@dataclass
class Services:
    """Everything the triggers need, built lazily from :class:`Settings`."""

    settings: Settings
    _tables: AzureTables | None = field(default=None, init=False)

    @property
    def tables(self) -> AzureTables:
        if self._tables is None:
            self._tables = AzureTables.from_connection_string(self.settings.storage_connection)
        return self._tables

    @property
    def references(self) -> TableReferenceStore:
        return TableReferenceStore(self.tables.table(self.settings.tables.references))

    @property
    def preferences(self) -> TablePreferenceStore:
        return TablePreferenceStore(self.tables.table(self.settings.tables.preferences))

    @property
    def notifications(self) -> TableNotificationStore:
        return TableNotificationStore(self.tables.table(self.settings.tables.notifications))

    @property
    def deliveries(self) -> TableDeliveryLedger:
        return TableDeliveryLedger(self.tables.table(self.settings.tables.deliveries))

    @property
    def dead_letters(self) -> TableDeadLetterStore:
        return TableDeadLetterStore(self.tables.table(self.settings.tables.deadletters))

    async def health(self) -> dict[str, object]:
        """Version and whether storage answers; nothing else (the route is anonymous)."""
        try:
            await asyncio.wait_for(self.tables.ping(), HEALTH_TIMEOUT_SECONDS)
            storage = "ok"
        except (StorageError, TimeoutError):
            storage = "unreachable"
        return {"status": "ok" if storage == "ok" else "degraded", "version": __version__, "storage": storage}


_services: Services | None = None


def configure(environ: Mapping[str, str]) -> Services:
    """Resolve settings and prepare the services; call once, from ``function_app.py``.

    Raises:
        ConfigurationError: a setting is missing or malformed (the message names it).
    """
    global _services
    _services = Services(Settings.from_env(environ))
    return _services


def services() -> Services:
    """The services :func:`configure` prepared."""
    if _services is None:
        raise ConfigurationError("function_app", "configure() was not called before a trigger ran")
    return _services
