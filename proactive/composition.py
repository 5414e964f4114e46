"""The composition root: settings resolved once, SDK clients built once per worker process.

``function_app.py`` calls :func:`configure` at import (so a bad setting fails the app at start,
naming the setting); triggers call :func:`services` to reach the adapters. Clients are created on
first use, inside the worker's event loop, and never do I/O in a constructor.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from proactive import __version__, telemetry
from proactive.adapters.agents_activity import build_reply
from proactive.adapters.bot_auth import BotAuthenticator, BotAuthSettings
from proactive.adapters.bot_token import TokenProvider, token_provider
from proactive.adapters.connector import BotConnectorClient
from proactive.adapters.graph import GraphClient, graph_tokens
from proactive.adapters.storage_queues import AzureQueues
from proactive.adapters.table_storage import AzureTables
from proactive.adapters.telemetry_export import OTLP_ENDPOINT, configure_exporters
from proactive.bot import ActivityHandler, BotEndpoint, Welcomes
from proactive.broadcast.activities import BroadcastSteps
from proactive.broadcast.audience import AudienceMaterialiser, stored_request
from proactive.broadcast.ports import JsonSender, Orchestrations
from proactive.broadcast.service import BroadcastService
from proactive.delivery.batch import BatchSender
from proactive.delivery.contract import SendBatchInput
from proactive.delivery.dead_letters import DeadLetterService, DeliveryRedriver
from proactive.delivery.ports import BotConnector
from proactive.delivery.retry import RetryPolicy
from proactive.errors import ConfigurationError, StorageError
from proactive.install.installer import Installer
from proactive.install.installs import InstallWorker
from proactive.install.ports import GraphPacer
from proactive.install.requests import InstallRequests
from proactive.models import utc_now
from proactive.outbound import OutboundPolicy
from proactive.settings import Settings
from proactive.storage.stores import (
    TableDeadLetterStore,
    TableDeliveryLedger,
    TableNotificationStore,
    TablePreferenceStore,
    TableReferenceStore,
    TableThreadWindows,
)
from proactive.telemetry import TimedConnector

HEALTH_TIMEOUT_SECONDS = 3.0


@dataclass
class Services:
    """Everything the triggers need, built lazily from :class:`Settings`."""

    settings: Settings
    _tables: AzureTables | None = field(default=None, init=False)
    _http: aiohttp.ClientSession | None = field(default=None, init=False)
    _connector: BotConnectorClient | None = field(default=None, init=False)
    _bot_endpoint: BotEndpoint | None = field(default=None, init=False)

    def use_stand_ins(
        self,
        *,
        tables: AzureTables | None = None,
        queues: AzureQueues | None = None,
        send_batch: JsonSender | None = None,
    ) -> None:
        """Put stand-ins in place of storage and ``send_batch`` (tests and benchmarks; the app never calls it).

        ``tables`` and ``queues`` are meant for the in-memory fakes (``adapters.memory_tables`` and
        ``adapters.memory_queues``), which serialise like the Azure adapters; ``send_batch`` replaces the
        sender on the wire, so an orchestration can be driven without the Bot Connector.
        """
        if tables is not None:
            self._tables = tables
        if queues is not None:
            self._queues = queues
        if send_batch is not None:
            self._send_batch_json = send_batch

    @property
    def tables(self) -> AzureTables:
        if self._tables is None:
            self._tables = AzureTables.for_account(
                self.settings.storage, proxy_from_environment=self.settings.proxy_from_environment
            )
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

    @property
    def threads(self) -> TableThreadWindows:
        return TableThreadWindows(self.tables.table(self.settings.tables.threads))

    @property
    def dead_letter_service(self) -> DeadLetterService:
        """``/api/deadletters``: every dead letter listed; deliveries re-driven through ``deliveries-retry``."""
        retries = self.queues.queue(self.settings.queues.deliveries_retry)
        delivery_redriver = DeliveryRedriver(
            ledger=self.deliveries, notifications=self.notifications, retries=retries, clock=utc_now
        )
        return DeadLetterService(self.dead_letters, {retries.name: delivery_redriver}, clock=utc_now)

    async def http(self) -> aiohttp.ClientSession:
        """The worker's shared aiohttp session, created on first use inside the running event loop."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def connector(self) -> BotConnectorClient:
        """The Bot Connector client (outbound token, outbound host allow-list)."""
        if self._connector is None:
            session = await self.http()
            tokens = bot_tokens(self.settings, session)
            policy = OutboundPolicy.for_bot_connector(self.settings)
            self._connector = BotConnectorClient(
                session, tokens, policy, timeout=self.settings.send_timeout_seconds
            )
        return self._connector

    @property
    def welcomes(self) -> Welcomes:
        """Stores welcomes as ledger rows and queues them on ``deliveries-retry`` (the paced path)."""
        return Welcomes(
            self.notifications,
            self.deliveries,
            self.queues.queue(self.settings.queues.deliveries_retry),
            clock=utc_now,
        )

    async def bot_endpoint(self) -> BotEndpoint:
        """``POST /api/messages``: JWT-checked when an app id is configured, anonymous otherwise."""
        if self._bot_endpoint is None:
            session = await self.http()
            auth_settings = bot_auth_settings(self.settings)
            authenticator = None if auth_settings is None else BotAuthenticator(auth_settings, session)
            handler = ActivityHandler(
                self.references,
                self.preferences,
                await self.connector(),
                welcomes=self.welcomes,
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
        self._graph = None
        self._installer = None
        if self._tables is not None:
            await self._tables.close()
            self._tables = None
        if self._queues is not None:
            await self._queues.close()
            self._queues = None

    async def health(self) -> dict[str, object]:
        """Version and whether storage answers; nothing else (the route is anonymous)."""
        try:
            await asyncio.wait_for(self.tables.ping(), HEALTH_TIMEOUT_SECONDS)
            storage = "ok"
        except (StorageError, TimeoutError):
            storage = "unreachable"
        return {"status": "ok" if storage == "ok" else "degraded", "version": __version__, "storage": storage}

    # ---- broadcasts (issue 6): the HTTP service, the activities' steps, the sender on the wire ----
    _send_batch_json: JsonSender | None = field(default=None, init=False)
    # Notification id -> its category, for the metrics' ``category`` attribute (a notification's category
    # never changes, so one read per notification per worker; bounded by clearing).
    _categories: dict[str, str] = field(default_factory=dict, init=False)

    @property
    def audience(self) -> AudienceMaterialiser:
        """Writes a broadcast's ledger rows, tenant by tenant."""
        return AudienceMaterialiser(
            self.notifications,
            self.references,
            self.deliveries,
            tenant_allowed=self.settings.tenant_allowed,
            clock=utc_now,
            graph=self.graph,
        )

    def broadcasts(self, orchestrations: Orchestrations) -> BroadcastService:
        """The service behind ``/api/broadcasts`` over this invocation's Durable client."""
        return BroadcastService(
            self.notifications,
            self.deliveries,
            orchestrations,
            tenant_allowed=self.settings.tenant_allowed,
            batch_size=self.settings.batch_size,
            batches_per_execution=self.settings.batches_per_execution,
            clock=utc_now,
        )

    async def broadcast_steps(self) -> BroadcastSteps:
        """What the broadcast activities do."""
        return BroadcastSteps(
            self.notifications, self.deliveries, self.audience, await self.send_batch_json(), clock=utc_now
        )

    _queues: AzureQueues | None = field(default=None, init=False)

    @property
    def queues(self) -> AzureQueues:
        if self._queues is None:
            self._queues = AzureQueues.for_account(
                self.settings.storage, proxy_from_environment=self.settings.proxy_from_environment
            )
        return self._queues

    async def batch_sender(
        self, *, tenant: str | None = None, operation: str = "send", category: str = "none"
    ) -> BatchSender:
        """The sender of ``send_batch`` (stateless between calls: built per use over shared clients).

        With ``tenant``, its outcomes and Bot Connector calls are measured (:mod:`proactive.telemetry`).
        """
        connector: BotConnector = await self.connector()
        on_outcome = None
        if tenant is not None:
            connector = TimedConnector(connector, telemetry.current())
            on_outcome = telemetry.current().outcome_recorder(
                tenant=tenant, operation=operation, category=category
            )
        return BatchSender(
            ledger=self.deliveries,
            references=self.references,
            preferences=self.preferences,
            notifications=self.notifications,
            connector=connector,
            # The Graph bootstrap is on only with an app to install (TEAMS_APP_ID).
            installs=self.install_requests if self.settings.teams_app_id else None,
            retries=self.queues.queue(self.settings.queues.deliveries_retry),
            policy=RetryPolicy.for_sends(self.settings),
            clock=utc_now,
            sleep=asyncio.sleep,
            rng=random.Random(),
            service_url_allowed=OutboundPolicy.for_bot_connector(self.settings).allows,
            concurrency=self.settings.send_concurrency,
            handoff_delay=self.settings.retry_handoff_seconds,
            on_outcome=on_outcome,
            threads=self.threads,
        )

    async def category(self, notification_id: str) -> str:
        """The notification's category for metrics (``none`` without one, or when it cannot be read)."""
        if notification_id not in self._categories:
            if len(self._categories) >= 1024:
                self._categories.clear()
            found = await self.notifications.get(notification_id)
            category = stored_request(found.value).category if found is not None else None
            self._categories[notification_id] = category or "none"
        return self._categories[notification_id]

    async def send_batch_json(self) -> JsonSender:
        """``send_batch`` on the wire (``SendBatchInput`` JSON in, ``SendBatchResult`` JSON out)."""
        if self._send_batch_json is not None:  # a stand-in (use_stand_ins)
            return self._send_batch_json

        async def send(payload: dict[str, Any]) -> dict[str, Any]:
            request = SendBatchInput.from_json(payload)
            instruments = telemetry.current()
            with instruments.batch_span(
                request.notification_id, request.tenant_id, request.operation, request.limit
            ) as span:
                category = await self.category(request.notification_id)
                sender = await self.batch_sender(
                    tenant=request.tenant_id, operation=request.operation, category=category
                )
                result = (await sender.send_batch(request)).to_json()
                instruments.batch_result(span, result)
            return result

        return send

    # ---- Graph bootstrap (issue 14): installs through Graph, audiences from the directory ----

    @functools.cached_property
    def install_requests(self) -> InstallRequests:
        """Queue ``installs`` as senders write it: single-user requests coalesced into one message."""
        return InstallRequests(self.queues.queue(self.settings.queues.installs))

    _graph: GraphClient | None = field(default=None, init=False)
    _installer: Installer | None = field(default=None, init=False)

    async def graph(self) -> GraphClient:
        """The Graph client (per-tenant tokens, the Graph outbound allow-list, ``GRAPH_BASE_URL``)."""
        if self._graph is None:
            session = await self.http()
            self._graph = GraphClient(
                session,
                graph_tokens(self.settings, session),
                OutboundPolicy.for_graph(self.settings),
                base_url=self.settings.graph_base_url,
                timeout=self.settings.send_timeout_seconds,
            )
        return self._graph

    async def installer(self) -> Installer:
        """The installer; one per worker, so its catalog id and service URL caches live as long."""
        if self._installer is None:
            self._installer = Installer(
                await self.graph(),
                self.references,
                teams_app_id=self.settings.teams_app_id,
                bot_app_id=self.settings.bot.app_id or self.settings.teams_app_id,
                default_service_url=self.settings.teams_service_url,
                clock=utc_now,
                reinstall_after_uninstall=self.settings.graph_reinstall_after_uninstall,
            )
        return self._installer

    async def install_worker(self, pacer: GraphPacer) -> InstallWorker:
        """The ``installs`` queue's service over this invocation's pacer."""
        return InstallWorker(
            installer=await self.installer(),
            pacer=pacer,
            ledger=self.deliveries,
            notifications=self.notifications,
            installs=self.queues.queue(self.settings.queues.installs),
            # The name the Functions host gives the poison queue (proactive.function_names.POISON_SUFFIX).
            poison=self.queues.queue(self.settings.queues.installs + "-poison"),
            retries=self.queues.queue(self.settings.queues.deliveries_retry),
            dead_letters=self.dead_letters,
            clock=utc_now,
            sleep=asyncio.sleep,
            admin_consent_url=self._admin_consent_url,
            tenant_allowed=self.settings.tenant_allowed,
        )

    def _admin_consent_url(self, tenant_id: str) -> str:
        client = self.settings.bot.app_id or self.settings.teams_app_id
        return f"{self.settings.authority_host}/{tenant_id}/adminconsent?client_id={client}"


def bot_tokens(settings: Settings, session: aiohttp.ClientSession) -> TokenProvider:
    """The bot's outbound token provider, for ``settings.cloud``'s authority and scope."""
    return token_provider(
        settings.bot,
        session,
        authority_host=settings.authority_host,
        scope=settings.cloud.bot_scope,
        multi_tenant_authority=settings.cloud.multi_tenant_authority,
    )


def bot_auth_settings(settings: Settings) -> BotAuthSettings | None:
    """What inbound tokens must satisfy (issuer and keys of ``settings.cloud``); ``None`` when anonymous."""
    if settings.bot.anonymous:
        return None
    return BotAuthSettings(
        app_id=settings.bot.app_id,
        openid_metadata_url=settings.bot_openid_metadata_url,
        allowed_issuers=(settings.cloud.bot_issuer,),
    )


_services: Services | None = None


def configure(environ: Mapping[str, str]) -> Services:
    """Resolve settings, prepare the services and telemetry export; call once, from ``function_app.py``.

    Raises:
        ConfigurationError: a setting is missing or malformed (the message names it).
    """
    global _services
    quiet_sdk_loggers()
    _services = Services(Settings.from_env(environ))
    # Once per process: Azure Monitor, OTLP or nothing (proactive.adapters.telemetry_export).
    configure_exporters(
        connection_string=_services.settings.app_insights_connection,
        otlp_endpoint=environ.get(OTLP_ENDPOINT, ""),
    )
    return _services


SDK_LOGGERS = ("azure", "msal", "urllib3")
"""Loggers of the SDKs that log every request at INFO: URLs and headers with tenant and user object ids."""


def quiet_sdk_loggers() -> None:
    """Raise the SDK loggers to WARNING in the app itself, not only in devhost.

    The Azure SDK's ``http_logging_policy`` writes each request's URL (table keys: tenant and AAD object
    ids) at INFO, and host.json's ``default: Information`` lets that reach Application Insights. Personal
    data stays out of logs and telemetry; the SDKs' warnings and errors still come through.
    """
    for name in SDK_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


def services() -> Services:
    """The services :func:`configure` prepared."""
    if _services is None:
        raise ConfigurationError("function_app", "configure() was not called before a trigger ran")
    return _services
