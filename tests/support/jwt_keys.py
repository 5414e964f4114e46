"""Locally signed Bot Framework tokens and a local OpenID metadata + JWKS server for tests.

Typical use::

    key = make_signing_key()                       # RSA 2048, endorsed for "msteams"
    async with LocalOpenIdServer([key]) as server:  # http://127.0.0.1:<port>, real HTTP
        settings = BotAuthSettings(app_id=APP_ID, openid_metadata_url=server.metadata_url)
        token = sign_token(key, bot_claims(app_id=APP_ID, service_url=SERVICE_URL, now=NOW))
        headers = {"Authorization": f"Bearer {token}"}

The server counts the requests it answered (``metadata_requests``, ``jwks_requests``), can publish or
withdraw keys while running (key rollover) and can be made to fail (``fail_with = 503``).
``unsigned_token`` and ``hmac_token`` build the forged tokens PyJWT refuses to produce.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from devhost.emulators.serving import start_on_loopback

BOT_FRAMEWORK_ISSUER = "https://api.botframework.com"
METADATA_PATH = "/v1/.well-known/openidconfiguration"
JWKS_PATH = "/v1/.well-known/keys"


@dataclass(frozen=True)
class SigningKey:
    """An RSA key pair as the Bot Framework publishes it: a ``kid`` and the channels that endorse it.

    Attributes:
        kid: Key id, put in the JWKS and in the header of tokens signed with this key.
        private_key: The private half, used to sign test tokens.
        endorsements: Channel ids listed in the key's ``endorsements``; None omits the field.
    """

    kid: str
    private_key: rsa.RSAPrivateKey
    endorsements: tuple[str, ...] | None = ("msteams",)

    def public_jwk(self) -> dict[str, Any]:
        """The key as one entry of a JWKS, with ``endorsements`` like login.botframework.com's."""
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig"})
        if self.endorsements is not None:
            jwk["endorsements"] = list(self.endorsements)
        return jwk

    def public_pem(self) -> bytes:
        """The public key in PEM form (what a confusion attacker would use as an HMAC secret)."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def with_endorsements(self, endorsements: tuple[str, ...] | None) -> SigningKey:
        """The same key pair published with other endorsements."""
        return SigningKey(self.kid, self.private_key, endorsements)


def make_signing_key(
    kid: str | None = None, endorsements: tuple[str, ...] | None = ("msteams",)
) -> SigningKey:
    """Generate a fresh RSA 2048 key (about 0.1 s; share keys across tests where you can)."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey(kid or f"test-{uuid.uuid4().hex[:12]}", private_key, endorsements)


def bot_claims(
    *,
    app_id: str,
    service_url: str,
    now: datetime,
    issuer: str = BOT_FRAMEWORK_ISSUER,
    lifetime: timedelta = timedelta(hours=1),
    not_before: datetime | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Claims shaped like a Bot Connector token to a bot; ``extra`` overrides or adds claims.

    Args:
        app_id: The bot's app id (``aud``).
        service_url: The ``serviceurl`` claim.
        now: Issue time; ``nbf`` defaults to it and ``exp`` to ``now + lifetime``.
        issuer: ``iss``.
        lifetime: Time from ``now`` to ``exp``.
        not_before: ``nbf`` if not ``now``.
        **extra: More claims; a value of None removes the claim.
    """
    issued = int(now.timestamp())
    claims: dict[str, Any] = {
        "serviceurl": service_url,
        "nbf": int((not_before or now).timestamp()),
        "exp": issued + int(lifetime.total_seconds()),
        "iss": issuer,
        "aud": app_id,
    }
    claims.update(extra)
    return {name: value for name, value in claims.items() if value is not None}


def sign_token(
    key: SigningKey,
    claims: Mapping[str, Any],
    *,
    algorithm: str = "RS256",
    kid: str | None = None,
    include_kid: bool = True,
    headers: Mapping[str, Any] | None = None,
) -> str:
    """Sign ``claims`` with ``key`` (RS256 unless told).

    The header's ``kid`` is the key's unless ``kid`` is given, and absent with ``include_kid=False``.
    """
    header: dict[str, Any] = {"kid": kid or key.kid} if include_kid else {}
    header.update(headers or {})
    return jwt.encode(dict(claims), key.private_key, algorithm=algorithm, headers=header)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(value: Mapping[str, Any]) -> str:
    return _b64url(json.dumps(dict(value), separators=(",", ":")).encode())


def unsigned_token(claims: Mapping[str, Any], *, kid: str | None = None) -> str:
    """An ``alg: none`` token with an empty signature."""
    header: dict[str, Any] = {"alg": "none", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    return f"{_segment(header)}.{_segment(claims)}."


def hmac_token(secret: bytes, claims: Mapping[str, Any], *, kid: str, algorithm: str = "HS256") -> str:
    """An HMAC-signed token, built by hand because PyJWT refuses a PEM public key as HMAC secret."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[algorithm]
    signing_input = f"{_segment({'alg': algorithm, 'typ': 'JWT', 'kid': kid})}.{_segment(claims)}"
    signature = hmac.new(secret, signing_input.encode("ascii"), digest).digest()
    return f"{signing_input}.{_b64url(signature)}"


def tamper_payload(token: str, **changes: Any) -> str:
    """The token with claims changed but the original signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return f"{header}.{_segment(claims)}.{signature}"


class LocalOpenIdServer:
    """OpenID metadata and JWKS over real HTTP on 127.0.0.1, shaped like login.botframework.com.

    Use as an async context manager (or ``start()`` / ``close()``). The key set can change while it
    runs; each request serves the keys published at that moment.

    Attributes:
        metadata_requests: How many metadata requests were answered.
        jwks_requests: How many JWKS requests were answered.
        fail_with: When set, both endpoints answer this HTTP status instead of their document.
    """

    def __init__(self, keys: Iterable[SigningKey] = (), *, issuer: str = BOT_FRAMEWORK_ISSUER) -> None:
        self.issuer = issuer
        self._keys: dict[str, SigningKey] = {key.kid: key for key in keys}
        self.metadata_requests = 0
        self.jwks_requests = 0
        self.fail_with: int | None = None
        self._runner: web.AppRunner | None = None
        self._base_url = ""

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` once started."""
        if not self._base_url:
            raise RuntimeError("LocalOpenIdServer is not started")
        return self._base_url

    @property
    def metadata_url(self) -> str:
        """The OpenID metadata URL to configure the authenticator with."""
        return self.base_url + METADATA_PATH

    @property
    def jwks_url(self) -> str:
        """The JWKS URL the metadata points to."""
        return self.base_url + JWKS_PATH

    def publish(self, key: SigningKey) -> None:
        """Add (or replace, by ``kid``) a key in the served JWKS."""
        self._keys[key.kid] = key

    def withdraw(self, kid: str) -> None:
        """Remove a key from the served JWKS."""
        self._keys.pop(kid, None)

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        app = web.Application()
        app.router.add_get(METADATA_PATH, self._metadata)
        app.router.add_get(JWKS_PATH, self._jwks)
        self._runner, base_url = await start_on_loopback(app)
        self._base_url = base_url.rstrip("/")

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LocalOpenIdServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _metadata(self, request: web.Request) -> web.Response:
        self.metadata_requests += 1
        if self.fail_with is not None:
            return web.Response(status=self.fail_with)
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": "https://invalid.botframework.com",
                "jwks_uri": self.jwks_url,
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_requests += 1
        if self.fail_with is not None:
            return web.Response(status=self.fail_with)
        return web.json_response({"keys": [key.public_jwk() for key in self._keys.values()]})
