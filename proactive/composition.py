"""The composition root: settings resolved once, SDK clients built once per worker process.

``function_app.py`` calls :func:`configure` at import (so a bad setting fails the app at start,
naming the setting); triggers call :func:`services` to reach the adapters. Clients are created on
first use, inside the worker's event loop, and never do I/O in a constructor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

from proactive import __version__
from proactive.adapters.agents_activity import build_reply
from proactive.adapters.bot_auth import BotAuthenticator, BotAuthSettings
from proactive.adapters.bot_token import token_provider
from proactive.adapters.connector import BotConnectorClient
from proactive.adapters.table_storage import AzureTables
from proactive.bot import ActivityHandler, BotEndpoint
from proactive.errors import ConfigurationError, StorageError
from proactive.models import utc_now
from proactive.outbound import OutboundPolicy
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
    _http: aiohttp.ClientSession | None = field(default=None, init=False)
    _connector: BotConnectorClient | None = field(default=None, init=False)
    _bot_endpoint: BotEndpoint | None = field(default=None, init=False)

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

    async def http(self) -> aiohttp.ClientSession:
        """The worker's shared aiohttp session, created on first use inside the running event loop."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def connector(self) -> BotConnectorClient:
        """The Bot Connector client (outbound token, outbound host allow-list)."""
        if self._connector is None:
            session = await self.http()
            tokens = token_provider(self.settings.bot, session, authority_host=self.settings.authority_host)
            policy = OutboundPolicy.for_bot_connector(self.settings)
            self._connector = BotConnectorClient(session, tokens, policy)
        return self._connector

    async def bot_endpoint(self) -> BotEndpoint:
        """``POST /api/messages``: JWT-checked when an app id is configured, anonymous otherwise."""
        if self._bot_endpoint is None:
            session = await self.http()
            authenticator = None
            if not self.settings.bot.anonymous:
                auth_settings = BotAuthSettings(
                    app_id=self.settings.bot.app_id, openid_metadata_url=self.settings.bot_openid_metadata_url
                )
                authenticator = BotAuthenticator(auth_settings, session)
            handler = ActivityHandler(
                self.references,
                self.preferences,
                await self.connector(),
                tenant_allowed=self.settings.tenant_allowed,
                service_url_allowed=OutboundPolicy.for_bot_connector(self.settings).allows,
                clock=utc_now,
                reply_builder=build_reply,
            )
            self._bot_endpoint = BotEndpoint(handler, authenticator)
        return self._bot_endpoint

    async def close(self) -> None:
        """Close what was opened (tests and the devhost; the Functions worker just exits)."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._connector = None
        self._bot_endpoint = None
        if self._tables is not None:
            await self._tables.close()
            self._tables = None

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
