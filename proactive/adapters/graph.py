"""Microsoft Graph over REST: proactive installation, group members and users (adapter).

Why REST with the shared ``aiohttp`` session instead of ``msgraph-sdk``'s request builders:

* **The emulator must stand in.** Tokens come from ``{AUTHORITY_HOST}/{tenant}/oauth2/v2.0/token``; the
  emulator serves that over plain ``http://127.0.0.1``, which ``azure-identity`` refuses as an authority
  (it requires https). The client-credentials flow of :mod:`proactive.adapters.bot_token` works against
  both and already caches tokens and shares one in-flight refresh, so Graph reuses it per tenant.
* **Errors are mapped by status and code at one boundary**, exactly like the Bot Connector adapter:
  the SDK raises ``ODataError`` with the status buried in ``response_status_code`` and, with its
  ``RetryHandler`` on, sleeps on 429 by itself; our limiter owns retries, so there is nothing to turn off here.
* **Seven calls** (catalog, user and team install, list installations, chat, primary channel, paged
  directory reads) do not need a generated client of thousands of modules; the import cost matters on a
  cold Functions worker.

The certificate and managed-identity credentials still come from ``azure-identity``
(:func:`graph_tokens`). Every URL is checked against the Graph outbound allow-list before a token is sent.

Error mapping (:func:`_error`): 429 -> :class:`~proactive.errors.Throttled` (``Retry-After``, may be
fractional), 500/502/503/504 -> :class:`~proactive.errors.ServiceBusy`, 401/403 ->
:class:`~proactive.errors.GraphAccessDenied` (consent or permission missing), 404 ->
:class:`~proactive.errors.DirectoryObjectNotFound`, 409 -> :class:`~proactive.errors.ConcurrencyConflict`
(the installer treats it as "already installed"), other 4xx -> :class:`~proactive.errors.MessageRejected`,
no answer -> :class:`~proactive.errors.TransportFailure`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from proactive.adapters.bot_token import (
    AsyncCredential,
    AzureCredentialTokens,
    ClientSecretTokens,
    TokenProvider,
)
from proactive.delivery.retry import parse_retry_after
from proactive.errors import (
    ConcurrencyConflict,
    DeliveryError,
    DirectoryObjectNotFound,
    GraphAccessDenied,
    MessageRejected,
    ProactiveError,
    ServiceBusy,
    Throttled,
    TransportFailure,
)
from proactive.install.ports import DirectoryPage, DirectoryUser, UserInstallation
from proactive.outbound import OutboundPolicy
from proactive.settings import BotAuthKind, Settings

__all__ = ["GRAPH_SCOPE", "GraphClient", "graph_tokens"]

logger = logging.getLogger(__name__)

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
_DEV_CLIENT_ID = "devhost-anonymous"
_USER_FIELDS = "id,userType,accountEnabled,displayName"

TokensForTenant = Callable[[str], TokenProvider]


def graph_tokens(settings: Settings, session: aiohttp.ClientSession) -> TokensForTenant:
    """Graph tokens per target tenant, each provider cached (and its token cached until near expiry).

    Client secret and certificate credentials ask the target tenant's authority (the app must be
    consented there). A user-assigned managed identity gets tokens for its own tenant only: cross-tenant
    Graph needs a federated credential (``ClientAssertionCredential``), not built here yet. Anonymous mode
    (devhost) uses the client-credentials form without a secret, which the Graph emulator accepts.
    """
    providers: dict[str, TokenProvider] = {}
    identity = settings.bot

    def for_tenant(tenant_id: str) -> TokenProvider:
        key = tenant_id.lower()
        provider = providers.get(key)
        if provider is not None:
            return provider
        if identity.auth in (BotAuthKind.ANONYMOUS, BotAuthKind.SECRET):
            provider = ClientSecretTokens(
                session,
                client_id=identity.app_id or settings.teams_app_id or _DEV_CLIENT_ID,
                client_secret=str(identity.secret),
                tenant_id=tenant_id,
                authority_host=settings.authority_host,
                scope=GRAPH_SCOPE,
            )
        else:
            from azure.identity.aio import CertificateCredential, ManagedIdentityCredential

            credential: AsyncCredential
            if identity.auth is BotAuthKind.CERTIFICATE:
                credential = CertificateCredential(
                    tenant_id,
                    identity.app_id,
                    certificate_path=identity.certificate_path,
                    authority=settings.authority_host,
                )
            else:
                credential = ManagedIdentityCredential(client_id=identity.app_id)
            provider = AzureCredentialTokens(credential, scope=GRAPH_SCOPE)
        providers[key] = provider
        return provider

    return for_tenant


class GraphClient:
    """The Graph calls of proactive installation and audience resolution (see the module docstring).

    Args:
        session: the worker's shared session (not owned).
        tokens: the token provider of a tenant.
        policy: the Graph outbound allow-list.
        base_url: ``GRAPH_BASE_URL`` (``https://graph.microsoft.com/v1.0`` or the emulator's).
        timeout: seconds per request.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        tokens: TokensForTenant,
        policy: OutboundPolicy,
        *,
        base_url: str,
        timeout: float = 30.0,
    ) -> None:
        self._session = session
        self._tokens = tokens
        self._policy = policy
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    # ---- installation ------------------------------------------------------------------------------

    async def catalog_app_id(self, tenant_id: str, external_id: str) -> str | None:
        """The org-catalog id of the app whose manifest id is ``external_id`` (``None``: not in the catalog)."""
        filter_ = quote(f"externalId eq '{_odata(external_id)}'", safe="")
        body = await self._request(tenant_id, "GET", f"/appCatalogs/teamsApps?$filter={filter_}")
        for item in _values(body):
            if isinstance(item.get("id"), str):
                return str(item["id"])
        return None

    async def install_for_user(self, tenant_id: str, user_id: str, catalog_app_id: str) -> bool:
        """Install the app in the user's personal scope; ``False`` when Graph says it already is (409)."""
        bind = {"teamsApp@odata.bind": f"{self._base}/appCatalogs/teamsApps/{catalog_app_id}"}
        try:
            await self._request(
                tenant_id, "POST", f"/users/{_segment(user_id)}/teamwork/installedApps", json_body=bind
            )
        except ConcurrencyConflict:
            return False
        return True

    async def user_installation(
        self, tenant_id: str, user_id: str, catalog_app_id: str
    ) -> UserInstallation | None:
        """The user's installation of the app, if any."""
        filter_ = quote(f"teamsApp/id eq '{_odata(catalog_app_id)}'", safe="")
        body = await self._request(
            tenant_id,
            "GET",
            f"/users/{_segment(user_id)}/teamwork/installedApps?$expand=teamsApp&$filter={filter_}",
        )
        for item in _values(body):
            if isinstance(item.get("id"), str):
                return UserInstallation(id=str(item["id"]))
        return None

    async def installation_chat_id(self, tenant_id: str, user_id: str, installation_id: str) -> str:
        """The 1:1 chat id of an installation (``19:...@unq.gbl.spaces``)."""
        body = await self._request(
            tenant_id,
            "GET",
            f"/users/{_segment(user_id)}/teamwork/installedApps/{_segment(installation_id)}/chat",
        )
        chat_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(chat_id, str) or not chat_id:
            raise MessageRejected("Graph returned a chat without an id", status=200, code="ChatWithoutId")
        return chat_id

    async def install_for_team(self, tenant_id: str, team_id: str, catalog_app_id: str) -> bool:
        """Install the app in a team (``team_id``: the Entra group id); ``False`` when it already is (409)."""
        bind = {"teamsApp@odata.bind": f"{self._base}/appCatalogs/teamsApps/{catalog_app_id}"}
        try:
            await self._request(
                tenant_id, "POST", f"/teams/{_segment(team_id)}/installedApps", json_body=bind
            )
        except ConcurrencyConflict:
            return False
        return True

    async def primary_channel_id(self, tenant_id: str, team_id: str) -> str:
        """The id of the team's General channel (``19:...@thread.tacv2``), the team's Bot Framework id."""
        body = await self._request(tenant_id, "GET", f"/teams/{_segment(team_id)}/primaryChannel?$select=id")
        channel_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(channel_id, str) or not channel_id:
            raise MessageRejected(
                "Graph returned a channel without an id", status=200, code="ChannelWithoutId"
            )
        return channel_id

    # ---- directory ---------------------------------------------------------------------------------

    async def group_users(self, tenant_id: str, group_id: str, cursor: str | None) -> DirectoryPage:
        """One page of the group's transitive members that are users (``cursor``: a previous ``next``)."""
        path = f"/groups/{_segment(group_id)}/transitiveMembers/microsoft.graph.user?$select={_USER_FIELDS}"
        return await self._directory_page(tenant_id, cursor or path)

    async def tenant_users(self, tenant_id: str, cursor: str | None) -> DirectoryPage:
        """One page of the tenant's users."""
        return await self._directory_page(tenant_id, cursor or f"/users?$select={_USER_FIELDS}")

    async def _directory_page(self, tenant_id: str, path_or_link: str) -> DirectoryPage:
        body = await self._request(tenant_id, "GET", path_or_link)
        users = [
            DirectoryUser(
                id=str(item["id"]),
                guest=str(item.get("userType") or "Member").lower() == "guest",
                enabled=item.get("accountEnabled") is not False,
            )
            for item in _values(body)
            if isinstance(item.get("id"), str)
            and str(item.get("@odata.type", "#microsoft.graph.user")) == "#microsoft.graph.user"
        ]
        link = body.get("@odata.nextLink") if isinstance(body, dict) else None
        return DirectoryPage(users=users, next=link if isinstance(link, str) and link else None)

    # ---- transport ---------------------------------------------------------------------------------

    async def _request(self, tenant_id: str, method: str, path_or_link: str, *, json_body: Any = None) -> Any:
        url = path_or_link if path_or_link.startswith(("http://", "https://")) else self._base + path_or_link
        self._policy.check(url)  # a nextLink is followed only to an allowed host
        token = await self._tokens(tenant_id).token()
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self._session.request(
                method,
                url,
                json=json_body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                text = await response.text()
                if response.status >= 300:
                    raise _error(response.status, text, response.headers.get("Retry-After"))
        except ProactiveError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportFailure(f"Graph unreachable: {type(exc).__name__}", code="Timeout") from exc
        if not text.strip():
            return {}
        try:
            return json.loads(text)
        except ValueError:
            return {}


def _error(status: int, text: str, retry_after: str | None) -> DeliveryError | ConcurrencyConflict:
    """Translate a Graph error answer; only Graph's error code and message are kept."""
    code: str | None = None
    message = ""
    try:
        body = json.loads(text) if text.strip() else None
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code")) if error.get("code") else None
        message = str(error.get("message") or "")[:300]
    summary = f"Graph answered {status} {code or ''}: {message}".strip()
    if status == 429:
        return Throttled(summary, retry_after=parse_retry_after(retry_after, now=time.time()), code=code)
    if status in (500, 502, 503, 504):
        return ServiceBusy(summary, status=status, code=code)
    if status in (401, 403):
        return GraphAccessDenied(summary, status=status, code=code or "Forbidden")
    if status == 404:
        return DirectoryObjectNotFound(summary, status=status, code=code or "NotFound")
    if status == 409:
        return ConcurrencyConflict(summary)
    return MessageRejected(summary, status=status, code=code)


def _values(body: Any) -> list[dict[str, Any]]:
    values = body.get("value") if isinstance(body, dict) else None
    return [item for item in values if isinstance(item, dict)] if isinstance(values, list) else []


def _segment(value: str) -> str:
    return quote(value, safe="")


def _odata(value: str) -> str:
    return value.replace("'", "''")
