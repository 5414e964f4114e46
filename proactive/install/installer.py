"""Proactive installation through Graph (ARCHITECTURE.md flow 2): install the app for a user, store a reference.

:meth:`Installer.install_user` for one user of one tenant:

1. a stored reference that is **active** needs nothing (no Graph call): ``reference_exists``;
2. a reference the **user closed** (blocked the bot: ``MessageWritesBlocked`` / ``ConversationBlockedByUser``;
   or ``uninstalled`` / ``bot_removed``) is never reinstalled behind their back: ``user_closed``. Only
   ``reinstall_after_uninstall`` (setting ``GRAPH_REINSTALL_AFTER_UNINSTALL``, for mandatory corporate apps,
   default off) reinstalls after an uninstall; a block is never overridden;
3. the app's org-catalog id by its manifest id (``TEAMS_APP_ID``), cached per tenant; a Store app, which the
   org catalog does not list, is installed by its manifest id;
4. ``POST /users/{id}/teamwork/installedApps`` (201; Graph's 409 "already installed" is success too);
5. after a **201**, Teams posts ``installationUpdate`` / ``conversationUpdate`` to the bot, which captures the
   reference (:mod:`proactive.bot.capture`; Microsoft's flow: "when your app is installed for the user, the
   bot receives a conversationUpdate event notification that contains the necessary information to send the
   proactive message"). The installer waits up to :data:`CAPTURE_WAIT_SECONDS` for that reference and
   reads nothing from Graph: an install then costs one Graph request, so installs run at the tenant's
   POST budget instead of a third of it;
6. after a **409** (no event comes) or when the event is late: the installation
   (``installedApps?$filter=teamsApp/id eq ...``) and its chat (``.../{id}/chat``), then a reference in
   botbuilder's shape (``bot`` ``28:{app id}``, ``user`` with the AAD object id, which the Bot Connector
   accepts in personal scope, ``conversation`` the chat id, ``serviceUrl`` the tenant's) stored
   **unconfirmed** (``confirmedAt`` absent) with a compare-and-swap: it never replaces a reference that
   arrived meanwhile through capture, and Teams' own event later overwrites it and sets ``confirmedAt``.

Every Graph request waits for ``pace()`` first: the caller's admission by the tenant's Graph limiter (one
token per request).

:meth:`Installer.install_team` for a team (its Entra group id): ``POST /teams/{id}/installedApps`` (409 =
already installed), ``GET /teams/{id}/primaryChannel`` for the General channel's id (which is also the
team's Bot Framework id), then channel references, stored like captured ones but unconfirmed, for the
General channel and the channel the broadcast named (a bot in a team may post to any of its channels).

The service URL of a tenant: the user's previous reference, else any active reference of the tenant, else
``TEAMS_SERVICE_URL`` (the public ``https://smba.trafficmanager.net/teams/`` by default), cached per tenant.

Errors are the port's (:mod:`proactive.install.ports`): ``Throttled``, ``ServiceBusy``, ``TransportFailure``
propagate for the caller's pacing and retry; ``GraphAccessDenied`` (no consent, permission missing) and
``DirectoryObjectNotFound`` (no such user, app not in the store) are permanent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from proactive.errors import ServiceBusy
from proactive.install.ports import Graph
from proactive.models import (
    ChannelAccount,
    ConversationAccount,
    ConversationReference,
    RecipientKind,
    StoredReference,
    recipient_key,
)
from proactive.storage.ports import ReferenceStore

__all__ = [
    "BLOCKED_REASONS",
    "CAPTURE_WAIT_SECONDS",
    "UNINSTALL_REASONS",
    "InstallOutcome",
    "InstallStatus",
    "Installer",
    "Pace",
]

logger = logging.getLogger(__name__)

BLOCKED_REASONS = frozenset({"messagewritesblocked", "conversationblockedbyuser"})
"""Stale reasons (lowercase) of a user who blocked the bot: never reinstalled."""

UNINSTALL_REASONS = frozenset({"uninstalled", "bot_removed"})
"""Stale reasons (lowercase) of a user who removed the app: reinstalled only when the setting allows."""

CAPTURE_WAIT_SECONDS = 10.0
"""How long a fresh install waits for Teams' event to bring the reference before reading the chat itself."""

CAPTURE_POLL_SECONDS = (0.2, 0.3, 0.5, 1.0)
"""Waits between looks at the reference store (the last one repeats)."""

Pace = Callable[[], Awaitable[None]]
"""Awaited before each Graph request: the tenant's Graph limiter admits it."""


async def _unpaced() -> None:
    return None


class InstallStatus(StrEnum):
    """What :meth:`Installer.install_user` did."""

    INSTALLED = "installed"  # Graph installed it (201) and the reference is stored
    ALREADY_INSTALLED = "already_installed"  # Graph answered 409; the reference is stored
    REFERENCE_EXISTS = "reference_exists"  # an active reference was there: nothing to do
    USER_CLOSED = "user_closed"  # the user blocked or uninstalled the bot: left alone


@dataclass(frozen=True)
class InstallOutcome:
    """The result of one install.

    Attributes:
        status: what happened.
        reference: the reference now stored (``None`` for ``user_closed``).
        reason: for ``user_closed``, the stored stale reason.
    """

    status: InstallStatus
    reference: StoredReference | None = None
    reason: str | None = None

    @property
    def reachable(self) -> bool:
        """Whether the user now has a usable reference."""
        return self.reference is not None and self.reference.active


class Installer:
    """Installs the app for users through Graph and stores their references (see the module docstring).

    Args:
        graph: the Graph port.
        references: the reference store.
        teams_app_id: the app's manifest id (``TEAMS_APP_ID``), the catalog's ``externalId``.
        bot_app_id: the bot's Entra app id (the reference's ``28:`` bot account).
        default_service_url: the Bot Connector URL when the tenant has no reference yet.
        clock: current time, aware UTC.
        reinstall_after_uninstall: reinstall for users who uninstalled the app themselves.
        sleep: awaited between looks for the captured reference.
        capture_wait: seconds a fresh install waits for Teams' event (0: read the chat at once).
    """

    def __init__(
        self,
        graph: Graph,
        references: ReferenceStore,
        *,
        teams_app_id: str,
        bot_app_id: str,
        default_service_url: str,
        clock: Callable[[], datetime],
        reinstall_after_uninstall: bool = False,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        capture_wait: float = CAPTURE_WAIT_SECONDS,
    ) -> None:
        self._graph = graph
        self._references = references
        self._teams_app_id = teams_app_id
        self._bot_app_id = bot_app_id
        self._default_service_url = default_service_url
        self._clock = clock
        self._reinstall_after_uninstall = reinstall_after_uninstall
        self._sleep = sleep or asyncio.sleep
        self._capture_wait = capture_wait
        self._catalog_ids: dict[str, str] = {}
        self._catalog_locks: dict[str, asyncio.Lock] = {}
        self._service_urls: dict[str, str] = {}

    async def install_user(self, tenant_id: str, aad_object_id: str, pace: Pace = _unpaced) -> InstallOutcome:
        """Install the app for one user and store the reference (see the module docstring).

        Args:
            tenant_id: the user's tenant.
            aad_object_id: the user.
            pace: awaited before each Graph request.

        Raises:
            Throttled, ServiceBusy, TransportFailure: retry later.
            GraphAccessDenied, DirectoryObjectNotFound: permanent for this user (or the tenant).
            StorageError: the reference store failed.
        """
        key = recipient_key(RecipientKind.USER, aad_object_id)
        existing = await self._references.get(tenant_id, key)
        if existing is not None and existing.active:
            return InstallOutcome(InstallStatus.REFERENCE_EXISTS, existing)
        if existing is not None and self._closed_by_user(existing.stale_reason):
            return InstallOutcome(InstallStatus.USER_CLOSED, reason=existing.stale_reason)
        catalog_id = await self._catalog_id(tenant_id, pace)
        await pace()
        created = await self._graph.install_for_user(tenant_id, aad_object_id, catalog_id)
        if created:
            captured = await self._captured(tenant_id, key)
            if captured is not None:
                return InstallOutcome(InstallStatus.INSTALLED, captured)
        await pace()
        installation = await self._graph.user_installation(tenant_id, aad_object_id, catalog_id)
        if installation is None:
            # Just installed (or 409) yet not listed: Graph's replication lag; worth another try shortly.
            raise ServiceBusy("the installation is not listed yet", code="InstallationNotListed")
        await pace()
        chat_id = await self._graph.installation_chat_id(tenant_id, aad_object_id, installation.id)
        service_url = await self._service_url(tenant_id, existing)
        stored = await self._store(tenant_id, aad_object_id, chat_id, service_url)
        status = InstallStatus.INSTALLED if created else InstallStatus.ALREADY_INSTALLED
        return InstallOutcome(status, stored)

    async def install_team(
        self, tenant_id: str, team_id: str, channel_id: str | None, pace: Pace = _unpaced
    ) -> InstallOutcome:
        """Install the app in a team and store references for its General channel and ``channel_id``.

        Args:
            tenant_id: the team's tenant.
            team_id: the team's Entra group id (Graph's team id).
            channel_id: the channel a broadcast named (``None``: the General channel only).
            pace: awaited before each Graph request.

        Returns:
            The outcome with the reference of ``channel_id`` (or of the General channel).

        Raises:
            As :meth:`install_user`.
        """
        catalog_id = await self._catalog_id(tenant_id, pace)
        await pace()
        created = await self._graph.install_for_team(tenant_id, team_id, catalog_id)
        await pace()
        general = await self._graph.primary_channel_id(tenant_id, team_id)
        service_url = await self._service_url(tenant_id, None)
        stored = None
        for channel in dict.fromkeys(c for c in (general, channel_id) if c):
            stored = await self._store_channel(tenant_id, channel, general, service_url)
        assert stored is not None
        status = InstallStatus.INSTALLED if created else InstallStatus.ALREADY_INSTALLED
        return InstallOutcome(status, stored)

    async def _captured(self, tenant_id: str, key: str) -> StoredReference | None:
        """The reference Teams' install event brought, if it comes within :data:`CAPTURE_WAIT_SECONDS`."""
        deadline = time.monotonic() + self._capture_wait
        for attempt in range(1_000_000):
            delay = CAPTURE_POLL_SECONDS[min(attempt, len(CAPTURE_POLL_SECONDS) - 1)]
            if time.monotonic() + delay > deadline:
                return None
            await self._sleep(delay)
            found = await self._references.get(tenant_id, key)
            if found is not None and found.active:
                return found
        return None

    def _closed_by_user(self, reason: str | None) -> bool:
        lowered = (reason or "").lower()
        if lowered in BLOCKED_REASONS:
            return True
        return lowered in UNINSTALL_REASONS and not self._reinstall_after_uninstall

    async def _catalog_id(self, tenant_id: str, pace: Pace) -> str:
        key = tenant_id.lower()
        cached = self._catalog_ids.get(key)
        if cached is not None:
            return cached
        # The users of one message start together: one of them looks the app up, the others wait for it.
        async with self._catalog_locks.setdefault(key, asyncio.Lock()):
            cached = self._catalog_ids.get(key)
            if cached is not None:
                return cached
            await pace()
            found = await self._graph.catalog_app_id(tenant_id, self._teams_app_id)
            # The org catalog lists org apps; a Store app is installed by its manifest id.
            catalog_id = found or self._teams_app_id
            self._catalog_ids[key] = catalog_id
            return catalog_id

    async def _service_url(self, tenant_id: str, existing: StoredReference | None) -> str:
        if existing is not None:
            return existing.reference.service_url
        cached = self._service_urls.get(tenant_id.lower())
        if cached is not None:
            return cached
        page = await self._references.list_tenant(tenant_id, active_only=True, page_size=1)
        url = page.items[0].reference.service_url if page.items else self._default_service_url
        self._service_urls[tenant_id.lower()] = url
        return url

    async def _store(
        self, tenant_id: str, aad_object_id: str, chat_id: str, service_url: str
    ) -> StoredReference:
        now = self._clock()
        reference = ConversationReference(
            bot=ChannelAccount(id=f"28:{self._bot_app_id}"),
            user=ChannelAccount(id=aad_object_id, aad_object_id=aad_object_id),
            conversation=ConversationAccount(id=chat_id, conversation_type="personal", tenant_id=tenant_id),
            channel_id="msteams",
            service_url=service_url,
        )

        def change(previous: StoredReference | None) -> StoredReference | None:
            if previous is not None and previous.active:
                return None  # captured (or installed) meanwhile: Teams' own reference wins
            return StoredReference(
                tenant_id=tenant_id,
                kind=RecipientKind.USER,
                recipient_id=aad_object_id,
                reference=reference,
                active=True,
                time_zone=previous.time_zone if previous else None,
                is_guest=previous.is_guest if previous else False,
                updated_at=now,
                confirmed_at=None,  # not confirmed until Teams' installationUpdate / conversationUpdate
            )

        previous, written = await self._references.update(
            tenant_id, recipient_key(RecipientKind.USER, aad_object_id), change
        )
        result = written or previous
        assert result is not None  # change() writes unless an active reference exists
        return result

    async def _store_channel(
        self, tenant_id: str, channel_id: str, team_id: str, service_url: str
    ) -> StoredReference:
        now = self._clock()
        reference = ConversationReference(
            bot=ChannelAccount(id=f"28:{self._bot_app_id}"),
            conversation=ConversationAccount(
                id=channel_id, conversation_type="channel", is_group=True, tenant_id=tenant_id
            ),
            channel_id="msteams",
            service_url=service_url,
        )

        def change(previous: StoredReference | None) -> StoredReference | None:
            if previous is not None and previous.active:
                return None  # captured meanwhile: Teams' own reference wins
            return StoredReference(
                tenant_id=tenant_id,
                kind=RecipientKind.CHANNEL,
                recipient_id=channel_id,
                reference=reference,
                active=True,
                team_id=team_id,  # the General channel's id, as capture stores channelData.team.id
                updated_at=now,
                confirmed_at=None,
            )

        previous, written = await self._references.update(
            tenant_id, recipient_key(RecipientKind.CHANNEL, channel_id), change
        )
        result = written or previous
        assert result is not None
        return result
