"""Inbound Bot Framework JWT validation for the bot endpoint (``POST /api/messages``).

The channel (Teams, through the Bot Connector) calls the bot with ``Authorization: Bearer <JWT>``.
:class:`BotAuthenticator` accepts the call only when every Bot Framework rule holds
(``reference/teams-platform-facts.md`` section 2):

1. the header uses the ``Bearer`` scheme;
2. the token is RS256 (``alg: none``, HS256 and every other algorithm are refused before any key is
   looked at, which closes the classic RSA-public-key-as-HMAC-secret confusion attack);
3. the signature verifies with a key published in the JWKS named by the OpenID metadata (``jwks_uri``);
4. that key's ``endorsements`` include the activity's ``channelId``, and the ``channelId`` is the
   configured channel (``msteams``);
5. ``iss`` is in the allow-list (exact, case-sensitive match);
6. ``aud`` is the bot's app id;
7. ``exp`` (required) and ``nbf`` (when present) hold with the clock skew (300 s);
8. the ``serviceurl`` claim equals ``activity["serviceUrl"]`` (scheme and host compared
   case-insensitively, default ports and trailing slashes ignored).

Why not the Agents SDK's ``JwtTokenValidator``: it verifies signature, expiry and audience, keeps the
issuer allow-list opt-in (``VALIDATE_ISSUER``), and has no endorsement or ``serviceurl`` check; its
``PyJWKClient`` keeps only the key material, so the ``endorsements`` of the key are lost before we could
look at them. It also takes no clock and opens its own blocking HTTP connections in a thread. So this
module fetches the metadata and JWKS itself with the injected aiohttp session and verifies with PyJWT,
reusing the SDK's published constants (metadata URL, issuer templates, claim names).

Issuers. The default allow-list is ``https://api.botframework.com``: the issuer of every token the Bot
Connector sends to a bot, single- or multi-tenant, signed by the keys at
``https://login.botframework.com/v1/.well-known/keys`` which carry the ``endorsements``. Entra ID issues
tokens as ``https://login.microsoftonline.com/{tenant}/v2.0`` and ``https://sts.windows.net/{tenant}/``
(the Agents SDK accepts them for agent-to-agent and Copilot flows); :func:`entra_issuers` builds those
two for a tenant and they can be added to ``allowed_issuers``. Entra's own signing keys publish no
``endorsements`` and Entra tokens carry no ``serviceurl`` claim, so with the default metadata URL and
the rules above only channel-issued tokens are ever accepted: this endpoint is for channels, not for
other agents.

Keys are cached for ``key_refresh_interval`` (24 h). A token whose ``kid`` is not cached triggers one
refetch (key rollover), but never more often than ``min_refetch_interval`` (5 min), so a stream of
tokens with made-up ``kid`` values costs nothing upstream. If a refresh fails the previous keys stay in
use. Tokens are never logged; only the reason code and the ``kid`` are.

Every failure raises :class:`AuthenticationError` with an :class:`AuthFailure` reason; the HTTP layer
answers 401 for all of them (``KEYS_UNAVAILABLE`` is our side's fault and may be mapped to 503 instead).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
from microsoft_agents.hosting.core.authorization.agent_auth_configuration import AgentAuthConfiguration
from microsoft_agents.hosting.core.authorization.authentication_constants import AuthenticationConstants

from proactive.errors import AuthenticationError

__all__ = [
    "AuthFailure",
    "AuthenticationError",
    "BotAuthSettings",
    "BotAuthenticator",
    "Claims",
    "VerifiedToken",
]

logger = logging.getLogger(__name__)

BOT_FRAMEWORK_OPENID_METADATA_URL: str = AuthenticationConstants.PUBLIC_ABS_OPENID_METADATA_URL
"""Where the Bot Framework publishes its OpenID metadata (public cloud)."""

BOT_FRAMEWORK_ISSUER: str = AuthenticationConstants.AGENTS_SDK_TOKEN_ISSUER
"""The ``iss`` of tokens the Bot Connector sends to bots (public cloud)."""

TEAMS_CHANNEL_ID = "msteams"
"""The Bot Framework channel id of Microsoft Teams."""

ALLOWED_ALGORITHM = "RS256"

# Metadata and JWKS documents are a few KB; anything far larger is not what we asked for.
_MAX_DOCUMENT_BYTES = 1_000_000
_LOOPBACK_NAMES = frozenset({"localhost"})


class AuthFailure(StrEnum):
    """Why a request was refused; stable codes for logs, metrics and tests."""

    MISSING_TOKEN = "missing_token"
    BAD_SCHEME = "bad_scheme"
    MALFORMED_TOKEN = "malformed_token"
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
    MISSING_KEY_ID = "missing_key_id"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    CHANNEL_NOT_ALLOWED = "channel_not_allowed"
    ENDORSEMENT_MISSING = "endorsement_missing"
    INVALID_ISSUER = "invalid_issuer"
    INVALID_AUDIENCE = "invalid_audience"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    SERVICE_URL_MISMATCH = "service_url_mismatch"
    KEYS_UNAVAILABLE = "keys_unavailable"


def entra_issuers(tenant_id: str) -> tuple[str, str]:
    """The two issuers Entra ID uses for tokens of a tenant (v2 and v1 endpoints).

    Args:
        tenant_id: The tenant GUID.

    Returns:
        ``("https://login.microsoftonline.com/{tenant}/v2.0", "https://sts.windows.net/{tenant}/")``.
    """
    return (
        AuthenticationConstants.VALID_TOKEN_ISSUER_URL_TEMPLATE_V2.format(tenant_id),
        AuthenticationConstants.VALID_TOKEN_ISSUER_URL_TEMPLATE_V1.format(tenant_id),
    )


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _require_trusted_url(url: str, what: str) -> None:
    """Keys must come over HTTPS; plain HTTP is allowed to loopback only (local test servers)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host or not (parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(host))):
        raise ValueError(f"{what} must be an https URL (http only to loopback): {url!r}")


def normalize_service_url(url: str) -> str:
    """Canonical form of a service URL for comparison.

    Scheme and host are case-insensitive and a default port means no port (RFC 3986 section 6.2.3);
    the path keeps its case but loses trailing slashes (the Bot Connector is not consistent about them).

    Args:
        url: A service URL as found in an activity or a token.

    Returns:
        The normalised URL, or ``""`` when ``url`` has no scheme or host.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return ""
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not scheme or not host:
        return ""
    if ":" in host:
        host = f"[{host}]"
    if port is not None and (scheme, port) not in {("https", 443), ("http", 80)}:
        host = f"{host}:{port}"
    path = parts.path.rstrip("/")
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{host}{path}{query}"


@dataclass(frozen=True)
class BotAuthSettings:
    """How inbound tokens are validated.

    Attributes:
        app_id: The bot's Entra app id; tokens must carry it as ``aud``.
        openid_metadata_url: Bot Framework OpenID metadata; its ``jwks_uri`` names the signing keys.
        allowed_issuers: Accepted ``iss`` values (exact match). See the module docstring for Entra issuers.
        channel_id: The only channel accepted; the signing key must be endorsed for it.
        clock_skew: Tolerance on ``exp`` and ``nbf``.
        key_refresh_interval: How long fetched keys are trusted before they are fetched again.
        min_refetch_interval: Floor between fetches, whatever triggers them (unknown ``kid``, expiry).
        failure_retry_interval: Floor between fetches while no key was ever fetched successfully, shorter
            so a failed start-up fetch does not lock the bot out for ``min_refetch_interval``.
        fetch_timeout: Total timeout of one metadata or JWKS request, in seconds.
    """

    app_id: str
    openid_metadata_url: str = BOT_FRAMEWORK_OPENID_METADATA_URL
    allowed_issuers: tuple[str, ...] = (BOT_FRAMEWORK_ISSUER,)
    channel_id: str = TEAMS_CHANNEL_ID
    clock_skew: timedelta = timedelta(seconds=300)
    key_refresh_interval: timedelta = timedelta(hours=24)
    min_refetch_interval: timedelta = timedelta(minutes=5)
    failure_retry_interval: timedelta = timedelta(seconds=10)
    fetch_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.app_id.strip():
            raise ValueError("app_id is required for inbound token validation")
        if not self.allowed_issuers or not all(i.strip() for i in self.allowed_issuers):
            raise ValueError("allowed_issuers must list at least one non-empty issuer")
        if not self.channel_id.strip():
            raise ValueError("channel_id must not be empty")
        _require_trusted_url(self.openid_metadata_url, "openid_metadata_url")
        if self.clock_skew < timedelta(0) or self.min_refetch_interval < timedelta(0):
            raise ValueError("clock_skew and min_refetch_interval must not be negative")
        if self.key_refresh_interval <= timedelta(0):
            raise ValueError("key_refresh_interval must be positive")

    @classmethod
    def from_agent_auth_configuration(
        cls, config: AgentAuthConfiguration, **overrides: Any
    ) -> BotAuthSettings:
        """Settings from the Agents SDK's connection configuration (the ``CONNECTIONS__...`` settings).

        Takes the app id (``CLIENT_ID``) and the SDK's issuer list (``ISSUERS``: the configured list, or
        by default the Bot Framework issuer plus the tenant's two Entra issuers), and the US Government
        metadata URL when ``AUTHORITY`` is a ``login.microsoftonline.us`` authority. Unlike the SDK, the
        issuer list is always enforced.

        Args:
            config: The SDK connection configuration of the bot.
            **overrides: Any other :class:`BotAuthSettings` field.

        Raises:
            ValueError: The configuration has no ``CLIENT_ID``.
        """
        if not config.CLIENT_ID:
            raise ValueError("the Agents SDK configuration has no CLIENT_ID")
        values: dict[str, Any] = {"app_id": config.CLIENT_ID, "allowed_issuers": tuple(config.ISSUERS)}
        if "login.microsoftonline.us" in (config.AUTHORITY or "").lower():
            values["openid_metadata_url"] = AuthenticationConstants.GOV_ABS_OPENID_METADATA_URL
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class Claims:
    """What a verified token says about the caller.

    Attributes:
        app_id: The audience the token was issued for (our bot's app id).
        issuer: The token's ``iss``.
        service_url: The ``serviceurl`` claim (equal to the activity's ``serviceUrl`` after normalisation).
        channel_id: The channel the signing key is endorsed for.
        key_id: The ``kid`` of the signing key.
        expires_at: The token's ``exp``.
        claims: All verified claims, read-only.
    """

    app_id: str
    issuer: str
    service_url: str
    channel_id: str
    key_id: str
    expires_at: datetime
    claims: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class VerifiedToken:
    """A token whose signature, issuer, audience and lifetime hold; not yet checked against an activity.

    Attributes:
        key_id: The ``kid`` of the signing key.
        endorsements: The channels that key is endorsed for.
        issuer: The token's ``iss``.
        expires_at: The token's ``exp``.
        claims: All claims, read-only.
    """

    key_id: str
    endorsements: frozenset[str]
    issuer: str
    expires_at: datetime
    claims: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class _SigningKey:
    jwk: jwt.PyJWK
    endorsements: frozenset[str]


class _FetchError(Exception):
    """A metadata or JWKS download failed; never leaves this module."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _KeyCache:
    """The signing keys of one OpenID metadata document, refreshed on a schedule and on rollover."""

    def __init__(
        self, settings: BotAuthSettings, session: aiohttp.ClientSession, clock: Callable[[], datetime]
    ) -> None:
        self._settings = settings
        self._session = session
        self._clock = clock
        self._keys: dict[str, _SigningKey] = {}
        self._fetched_at: datetime | None = None
        self._next_fetch_allowed_at: datetime | None = None
        self._lock = asyncio.Lock()

    def _fresh(self, now: datetime) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < self._settings.key_refresh_interval

    def _may_fetch(self, now: datetime) -> bool:
        return self._next_fetch_allowed_at is None or now >= self._next_fetch_allowed_at

    async def get(self, kid: str) -> _SigningKey:
        """The key with this ``kid``, fetching (within the floors) when stale or unknown."""
        key = self._keys.get(kid)
        if key is not None and self._fresh(self._clock()):
            return key
        # One fetch at a time: concurrent requests that need keys wait for it instead of piling on.
        async with self._lock:
            now = self._clock()
            if not self._fresh(now) and self._may_fetch(now):
                await self._refresh(now)
            key = self._keys.get(kid)
            if key is None and self._may_fetch(now):
                # The kid is attacker-controlled (unverified header): log a bounded prefix only.
                logger.info("Unknown signing key id %r: refetching the JWKS (key rollover)", kid[:64])
                await self._refresh(now)
                key = self._keys.get(kid)
        if key is not None:
            return key
        if not self._keys:
            raise AuthenticationError(AuthFailure.KEYS_UNAVAILABLE, "no signing keys could be fetched")
        raise AuthenticationError(AuthFailure.UNKNOWN_KEY, "signing key is not published")

    async def _refresh(self, now: datetime) -> None:
        try:
            metadata = await self._fetch_json(self._settings.openid_metadata_url)
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise _FetchError("OpenID metadata has no jwks_uri")
            try:
                _require_trusted_url(jwks_uri, "jwks_uri")
            except ValueError as exc:
                raise _FetchError(str(exc)) from exc
            keys = _parse_jwks(await self._fetch_json(jwks_uri))
            if not keys:
                raise _FetchError("JWKS holds no usable RS256 signing key")
        except _FetchError as exc:
            had_keys = bool(self._keys)
            floor = self._settings.min_refetch_interval if had_keys else self._settings.failure_retry_interval
            self._next_fetch_allowed_at = now + floor
            logger.warning(
                "Fetching Bot Framework signing keys failed (%s); %s",
                exc,
                "keeping the previous keys" if had_keys else "no keys available",
            )
            return
        self._keys = keys
        self._fetched_at = now
        self._next_fetch_allowed_at = now + self._settings.min_refetch_interval
        logger.info("Fetched %d Bot Framework signing keys", len(keys))

    async def _fetch_json(self, url: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self._settings.fetch_timeout)
        try:
            async with self._session.get(url, timeout=timeout, allow_redirects=False) as response:
                if response.status != 200:
                    raise _FetchError(f"GET {url} answered {response.status}")
                body = await response.content.read(_MAX_DOCUMENT_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _FetchError(f"GET {url} failed: {type(exc).__name__}") from exc
        if len(body) > _MAX_DOCUMENT_BYTES:
            raise _FetchError(f"GET {url} answered more than {_MAX_DOCUMENT_BYTES} bytes")
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise _FetchError(f"GET {url} answered invalid JSON") from exc
        if not isinstance(document, dict):
            raise _FetchError(f"GET {url} answered JSON that is not an object")
        return document


def _parse_jwks(document: Mapping[str, Any]) -> dict[str, _SigningKey]:
    """RS256-capable signing keys by ``kid``; anything else in the set is skipped, not fatal."""
    keys: dict[str, _SigningKey] = {}
    raw_keys = document.get("keys")
    if not isinstance(raw_keys, list):
        return keys
    for raw in raw_keys:
        if not isinstance(raw, dict):
            continue
        kid = raw.get("kid")
        if not isinstance(kid, str) or not kid or raw.get("kty") != "RSA":
            continue
        if raw.get("use", "sig") != "sig" or raw.get("alg", ALLOWED_ALGORITHM) != ALLOWED_ALGORITHM:
            continue
        endorsements = raw.get("endorsements", [])
        if not isinstance(endorsements, list):
            endorsements = []
        try:
            jwk = jwt.PyJWK(raw, algorithm=ALLOWED_ALGORITHM)
        except jwt.PyJWTError:
            logger.warning("Skipping unreadable signing key %r", kid)
            continue
        keys[kid] = _SigningKey(jwk, frozenset(e for e in endorsements if isinstance(e, str)))
    return keys


class BotAuthenticator:
    """Validates the channel's bearer token on inbound bot activities.

    Construction does no I/O; keys are fetched on first use through the injected session, which the
    composition root owns (and closes).

    Args:
        settings: What to accept.
        session: The shared aiohttp session used to fetch OpenID metadata and JWKS.
        clock: Returns the current time as an aware UTC datetime; injected for tests.
    """

    def __init__(
        self,
        settings: BotAuthSettings,
        session: aiohttp.ClientSession,
        *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._keys = _KeyCache(settings, session, clock)

    async def authenticate(self, authorization_header: str | None, activity: Mapping[str, Any]) -> Claims:
        """Verify the request's bearer token against the activity it came with (:meth:`verify`, then
        :meth:`bind`).

        Args:
            authorization_header: The raw ``Authorization`` header, or None when absent.
            activity: The activity JSON from the request body (``channelId`` and ``serviceUrl`` are read).

        Returns:
            The verified claims.

        Raises:
            AuthenticationError: The request must be refused (401); ``reason`` says why.
        """
        return self.bind(await self.verify(authorization_header), activity)

    async def verify(self, authorization_header: str | None) -> VerifiedToken:
        """Everything the header alone can prove: scheme, algorithm, signature, issuer, audience, lifetime.

        Called before the body is parsed, so a caller without a valid token costs no JSON parsing.

        Raises:
            AuthenticationError: The request must be refused (401); ``reason`` says why.
        """
        try:
            return await self._verify(authorization_header)
        except AuthenticationError as exc:
            # Reason and our own detail only: never the token, never the header.
            logger.warning("Inbound bot request refused: %s", exc)
            raise

    def bind(self, verified: VerifiedToken, activity: Mapping[str, Any]) -> Claims:
        """Check a verified token against the activity: channel, key endorsement, ``serviceurl`` claim.

        Raises:
            AuthenticationError: The request must be refused (401); ``reason`` says why.
        """
        try:
            return self._bind(verified, activity)
        except AuthenticationError as exc:
            logger.warning("Inbound bot request refused: %s", exc)
            raise

    async def _verify(self, authorization_header: str | None) -> VerifiedToken:
        token = _bearer_token(authorization_header)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationError(AuthFailure.MALFORMED_TOKEN, "token header is unreadable") from exc
        # Checked before any key is chosen, so no key is ever used with an algorithm it was not made for.
        if header.get("alg") != ALLOWED_ALGORITHM:
            raise AuthenticationError(AuthFailure.UNSUPPORTED_ALGORITHM, "only RS256 is accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationError(AuthFailure.MISSING_KEY_ID, "token header has no kid")

        key = await self._keys.get(kid)
        payload = _verify_signature(token, key.jwk)

        issuer = payload.get("iss")
        if not isinstance(issuer, str) or issuer not in self._settings.allowed_issuers:
            raise AuthenticationError(AuthFailure.INVALID_ISSUER, "issuer is not allowed")
        if not _audience_matches(payload.get("aud"), self._settings.app_id):
            raise AuthenticationError(AuthFailure.INVALID_AUDIENCE, "token is for another app")
        expires_at = self._check_lifetime(payload)
        return VerifiedToken(kid, key.endorsements, issuer, expires_at, MappingProxyType(dict(payload)))

    def _bind(self, verified: VerifiedToken, activity: Mapping[str, Any]) -> Claims:
        channel_id = activity.get("channelId")
        if channel_id != self._settings.channel_id:
            raise AuthenticationError(AuthFailure.CHANNEL_NOT_ALLOWED, "activity channelId is not accepted")
        if channel_id not in verified.endorsements:
            raise AuthenticationError(AuthFailure.ENDORSEMENT_MISSING, "key not endorsed for channel")
        payload, issuer, kid, expires_at = (
            verified.claims,
            verified.issuer,
            verified.key_id,
            verified.expires_at,
        )

        claimed_url = payload.get(AuthenticationConstants.SERVICE_URL_CLAIM)
        activity_url = activity.get("serviceUrl")
        if (
            not isinstance(claimed_url, str)
            or not isinstance(activity_url, str)
            or not normalize_service_url(claimed_url)
            or normalize_service_url(claimed_url) != normalize_service_url(activity_url)
        ):
            raise AuthenticationError(AuthFailure.SERVICE_URL_MISMATCH, "serviceurl claim differs")

        return Claims(
            app_id=self._settings.app_id,
            issuer=issuer,
            service_url=claimed_url,
            channel_id=channel_id,
            key_id=kid,
            expires_at=expires_at,
            claims=MappingProxyType(dict(payload)),
        )

    def _check_lifetime(self, payload: Mapping[str, Any]) -> datetime:
        now = self._clock()
        skew = self._settings.clock_skew
        exp = _numeric_date(payload, "exp")
        if exp is None:
            raise AuthenticationError(AuthFailure.MALFORMED_TOKEN, "exp claim is missing or not a number")
        if now > exp + skew:
            raise AuthenticationError(AuthFailure.EXPIRED, "token has expired")
        if "nbf" in payload:
            nbf = _numeric_date(payload, "nbf")
            if nbf is None:
                raise AuthenticationError(AuthFailure.MALFORMED_TOKEN, "nbf claim is not a number")
            if now < nbf - skew:
                raise AuthenticationError(AuthFailure.NOT_YET_VALID, "token is not valid yet")
        return exp


def _bearer_token(authorization_header: str | None) -> str:
    if authorization_header is None or not authorization_header.strip():
        raise AuthenticationError(AuthFailure.MISSING_TOKEN, "no Authorization header")
    scheme, _, token = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthenticationError(AuthFailure.BAD_SCHEME, "Authorization scheme is not Bearer")
    token = token.strip()
    if not token:
        raise AuthenticationError(AuthFailure.MISSING_TOKEN, "Bearer token is empty")
    return token


def _verify_signature(token: str, key: jwt.PyJWK) -> dict[str, Any]:
    """Signature only: the claims are checked afterwards with our clock and our rules."""
    options: jwt.types.Options = {
        "verify_signature": True,
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
        "verify_aud": False,
        "verify_iss": False,
        "verify_sub": False,
        "verify_jti": False,
    }
    try:
        return jwt.decode(token, key=key, algorithms=[ALLOWED_ALGORITHM], options=options)
    except jwt.InvalidSignatureError as exc:
        raise AuthenticationError(AuthFailure.BAD_SIGNATURE, "signature does not verify") from exc
    except jwt.InvalidAlgorithmError as exc:
        raise AuthenticationError(AuthFailure.UNSUPPORTED_ALGORITHM, "algorithm not accepted") from exc
    except jwt.PyJWTError as exc:
        raise AuthenticationError(AuthFailure.MALFORMED_TOKEN, "token cannot be decoded") from exc


def _audience_matches(aud: Any, app_id: str) -> bool:
    if isinstance(aud, str):
        return aud == app_id
    # RFC 7519 allows a list of audiences; ours must be one of them.
    return isinstance(aud, list) and app_id in aud


def _numeric_date(payload: Mapping[str, Any], name: str) -> datetime | None:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None
