"""The bot's outbound token for the Bot Connector: client credentials, cached until shortly before expiry.

``reference/teams-platform-facts.md`` section 2: scope ``https://api.botframework.com/.default``; token
endpoint ``{authority_host}/{tenant_id}/oauth2/v2.0/token`` for single-tenant bots (the norm since new
multi-tenant registrations were deprecated) and ``{authority_host}/botframework.com/oauth2/v2.0/token``
for multi-tenant ones.

Every provider fits :class:`TokenProvider` (``async def token() -> str | None``):

- :class:`AnonymousTokens` (no app id; devhost, like the Bot Framework Emulator): no token, so the
  connector sends no ``Authorization`` header;
- :class:`ClientSecretTokens`: posts the client-credentials form itself with the shared
  ``aiohttp.ClientSession``;
- :class:`AzureCredentialTokens`: wraps an ``azure.identity.aio`` credential, for a certificate
  (``CertificateCredential``) or a user-assigned managed identity (``ManagedIdentityCredential``).

The cached providers refresh ``refresh_margin`` seconds before expiry (5 minutes, or half the lifetime
of a shorter-lived token), and concurrent callers share one in-flight refresh: a batch of 50 sends on a
cold worker makes one token request, and if it fails all 50 see the same error. Failures are translated
into the error tree (unreachable or 5xx: transient; 400/401 such as ``invalid_client``: the bot is
misconfigured), so the sender's retry policy treats a token failure like any other. The secret and the
token are never logged nor put in an exception message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from azure.identity.aio import CertificateCredential, ManagedIdentityCredential

from proactive.delivery.retry import parse_retry_after
from proactive.errors import (
    BotMisconfigured,
    ProactiveError,
    ServiceBusy,
    ServiceFailed,
    Throttled,
    TransportFailure,
)
from proactive.settings import BotAuthKind, BotIdentity

__all__ = [
    "BOT_FRAMEWORK_SCOPE",
    "DEFAULT_REFRESH_MARGIN",
    "MULTI_TENANT_AUTHORITY",
    "AnonymousTokens",
    "AsyncCredential",
    "AzureCredentialTokens",
    "ClientSecretTokens",
    "TokenProvider",
    "token_endpoint",
    "token_provider",
]

logger = logging.getLogger(__name__)

BOT_FRAMEWORK_SCOPE = "https://api.botframework.com/.default"
"""The scope of tokens for the Bot Connector (public cloud)."""

MULTI_TENANT_AUTHORITY = "botframework.com"
"""The authority tenant of multi-tenant bots."""

DEFAULT_REFRESH_MARGIN = 300.0
"""Seconds before expiry at which a cached token is replaced."""

_TOKEN_TIMEOUT_SECONDS = 10.0

Clock = Callable[[], float]


class TokenProvider(Protocol):
    """Gives the bearer token for the Bot Connector, or ``None`` to send no ``Authorization`` header."""

    async def token(self) -> str | None:
        """The current token.

        Raises:
            TransportFailure, ServiceBusy, Throttled: the token service could not answer now.
            BotMisconfigured: it refused the credentials.
        """
        ...


class AnonymousTokens:
    """No app id configured: calls go out without a token (local development only)."""

    async def token(self) -> str | None:
        """Always ``None``."""
        return None


@dataclass(frozen=True)
class _Cached:
    value: str
    refresh_at: float  # on the provider's monotonic clock


class _CachingTokens:
    """One cached token, refreshed by one shared in-flight request."""

    def __init__(self, *, clock: Clock, refresh_margin: float) -> None:
        self._clock = clock
        self._refresh_margin = refresh_margin
        self._cached: _Cached | None = None
        self._inflight: asyncio.Future[str] | None = None

    async def token(self) -> str:
        """The cached token, or a fresh one when it is missing or near expiry (see the module docstring)."""
        cached = self._cached
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.value
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._refresh())
            self._inflight.add_done_callback(self._refresh_done)
        # shield: a caller that gives up (timeout, cancel) must not cancel the refresh the others wait for.
        return await asyncio.shield(self._inflight)

    def invalidate(self) -> None:
        """Forget the cached token, e.g. after the service answered 401 to it."""
        self._cached = None

    async def _refresh(self) -> str:
        started = self._clock()
        value, lifetime = await self._fetch()
        margin = min(self._refresh_margin, max(lifetime, 0.0) / 2)
        self._cached = _Cached(value, started + lifetime - margin)
        return value

    def _refresh_done(self, future: asyncio.Future[str]) -> None:
        self._inflight = None
        if not future.cancelled():
            # Marks the exception as seen when every waiter was cancelled before it arrived.
            future.exception()

    async def _fetch(self) -> tuple[str, float]:
        """Get a new token and its lifetime in seconds."""
        raise NotImplementedError


class ClientSecretTokens(_CachingTokens):
    """Client-credentials tokens with the app's secret, fetched with the shared aiohttp session.

    Args:
        session: the worker's shared session (not owned: never closed here).
        client_id: the bot's app id.
        client_secret: the app's secret (``Settings.bot.secret``).
        tenant_id: the app's tenant; empty for a multi-tenant bot (authority ``botframework.com``).
        authority_host: ``https://login.microsoftonline.com`` or the emulator's base URL.
        scope: the token's scope.
        clock: monotonic seconds; inject to test expiry.
        refresh_margin: refresh this many seconds before expiry.
        timeout: seconds for one token request.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        client_id: str,
        client_secret: str,
        tenant_id: str,
        authority_host: str,
        scope: str = BOT_FRAMEWORK_SCOPE,
        clock: Clock = time.monotonic,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        timeout: float = _TOKEN_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__(clock=clock, refresh_margin=refresh_margin)
        self._session = session
        self._client_id = client_id
        self._client_secret = client_secret
        self.scope = scope
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.token_url = token_endpoint(authority_host, tenant_id)

    def __repr__(self) -> str:
        return f"ClientSecretTokens(client_id={self._client_id!r}, token_url={self.token_url!r})"

    async def _fetch(self) -> tuple[str, float]:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "scope": self.scope,
        }
        try:
            async with self._session.post(
                self.token_url, data=form, timeout=self._timeout, allow_redirects=False
            ) as response:
                if response.status != 200:
                    raise await _token_error(response)
                text = await response.text()
        except ProactiveError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportFailure(
                f"token endpoint unreachable: {type(exc).__name__}", code="TokenEndpointUnreachable"
            ) from exc
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = None
        token = body.get("access_token") if isinstance(body, dict) else None
        lifetime = body.get("expires_in") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token or not isinstance(lifetime, int | float | str):
            raise ServiceFailed("token endpoint answered 200 without access_token / expires_in", status=200)
        try:
            seconds = float(lifetime)
        except ValueError:
            raise ServiceFailed("token endpoint answered a non-numeric expires_in", status=200) from None
        logger.info("Fetched a Bot Connector token for app %s (valid %.0f s)", self._client_id, seconds)
        return token, seconds


class _AccessToken(Protocol):
    @property
    def token(self) -> str: ...

    @property
    def expires_on(self) -> int: ...


class AsyncCredential(Protocol):
    """The part of ``azure.core.credentials_async.AsyncTokenCredential`` used here."""

    async def get_token(self, *scopes: str) -> _AccessToken: ...

    async def close(self) -> None: ...


class AzureCredentialTokens(_CachingTokens):
    """Tokens from an ``azure.identity.aio`` credential (certificate, managed identity).

    azure-identity caches too; the cache here adds the shared in-flight refresh and the same error
    translation as :class:`ClientSecretTokens`.

    Args:
        credential: the credential; closed by :meth:`close`.
        scope: the token's scope.
        clock: monotonic seconds for the cache.
        wall_clock: epoch seconds, to turn the credential's ``expires_on`` into a lifetime.
        refresh_margin: refresh this many seconds before expiry.
    """

    def __init__(
        self,
        credential: AsyncCredential,
        *,
        scope: str = BOT_FRAMEWORK_SCOPE,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
    ) -> None:
        super().__init__(clock=clock, refresh_margin=refresh_margin)
        self._credential = credential
        self._scope = scope
        self._wall_clock = wall_clock

    async def close(self) -> None:
        """Close the wrapped credential (its own HTTP pipeline)."""
        await self._credential.close()

    async def _fetch(self) -> tuple[str, float]:
        # Imported here: azure.core is only needed on this path, and its exception types are the contract.
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

        try:
            access = await self._credential.get_token(self._scope)
        except ClientAuthenticationError as exc:
            raise BotMisconfigured(
                f"credential refused: {type(exc).__name__}", code="CredentialUnavailable"
            ) from exc
        except (ServiceRequestError, aiohttp.ClientError, TimeoutError) as exc:
            raise TransportFailure(
                f"token service unreachable: {type(exc).__name__}", code="TokenEndpointUnreachable"
            ) from exc
        return access.token, float(access.expires_on) - self._wall_clock()


def token_endpoint(authority_host: str, tenant_id: str) -> str:
    """``{authority_host}/{tenant or botframework.com}/oauth2/v2.0/token``, whatever the trailing slash."""
    tenant = tenant_id or MULTI_TENANT_AUTHORITY
    return f"{authority_host.rstrip('/')}/{tenant}/oauth2/v2.0/token"


def token_provider(
    identity: BotIdentity,
    session: aiohttp.ClientSession,
    *,
    authority_host: str,
    scope: str = BOT_FRAMEWORK_SCOPE,
    multi_tenant_authority: str = MULTI_TENANT_AUTHORITY,
    clock: Clock = time.monotonic,
) -> TokenProvider:
    """The provider for the configured identity (composition root helper).

    Args:
        identity: ``Settings.bot``.
        session: the shared session, for the client-secret flow.
        authority_host: ``Settings.authority_host``.
        scope: ``Settings.cloud.bot_scope``.
        multi_tenant_authority: ``Settings.cloud.multi_tenant_authority``.
        clock: monotonic seconds.
    """
    if identity.auth is BotAuthKind.ANONYMOUS:
        return AnonymousTokens()
    tenant = identity.tenant_id or multi_tenant_authority
    if identity.auth is BotAuthKind.SECRET:
        return ClientSecretTokens(
            session,
            client_id=identity.app_id,
            client_secret=str(identity.secret),
            tenant_id=tenant,
            authority_host=authority_host,
            scope=scope,
            clock=clock,
        )
    credential: AsyncCredential
    if identity.auth is BotAuthKind.CERTIFICATE:
        credential = CertificateCredential(
            tenant, identity.app_id, certificate_path=identity.certificate_path, authority=authority_host
        )
    else:
        credential = ManagedIdentityCredential(client_id=identity.app_id)
    return AzureCredentialTokens(credential, scope=scope, clock=clock)


async def _token_error(response: aiohttp.ClientResponse) -> ProactiveError:
    """Translate a non-200 token answer. Only the OAuth ``error`` code is kept, never the body."""
    error = ""
    try:
        body: Any = await response.json(content_type=None)
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            error = body["error"][:64]
    except (aiohttp.ClientError, ValueError):
        pass
    status = response.status
    message = f"token endpoint answered {status} {error}".rstrip()
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), now=time.time())
        return Throttled(message, retry_after=retry_after, code=error or None)
    if status >= 500:
        return ServiceBusy(message, status=status, code=error or None)
    return BotMisconfigured(message, status=status, code=error or None)
