"""Inbound Bot Framework JWT validation, against a local OpenID metadata + JWKS server over real HTTP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from microsoft_agents.hosting.core.authorization.agent_auth_configuration import AgentAuthConfiguration

from proactive.adapters.bot_auth import (
    AuthenticationError,
    AuthFailure,
    BotAuthenticator,
    BotAuthSettings,
    entra_issuers,
    normalize_service_url,
)
from tests.support.clocks import WallClock
from tests.support.jwt_keys import (
    LocalOpenIdServer,
    SigningKey,
    bot_claims,
    hmac_token,
    make_signing_key,
    sign_token,
    tamper_payload,
    unsigned_token,
)

APP_ID = "11111111-2222-3333-4444-555555555555"
TENANT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
SERVICE_URL = "https://smba.trafficmanager.net/teams/"
START = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def teams_key() -> SigningKey:
    return make_signing_key("teams-key")


@pytest.fixture(scope="module")
def webchat_key() -> SigningKey:
    return make_signing_key("webchat-key", endorsements=("webchat", "directline"))


@pytest.fixture(scope="module")
def bare_key() -> SigningKey:
    return make_signing_key("bare-key", endorsements=None)


@pytest.fixture(scope="module")
def stranger_key() -> SigningKey:
    """Never published."""
    return make_signing_key("stranger-key")


@pytest.fixture
async def server(
    teams_key: SigningKey, webchat_key: SigningKey, bare_key: SigningKey
) -> AsyncIterator[LocalOpenIdServer]:
    async with LocalOpenIdServer([teams_key, webchat_key, bare_key]) as local:
        yield local


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def clock() -> WallClock:
    return WallClock(START)


def make_authenticator(
    server: LocalOpenIdServer, session: aiohttp.ClientSession, clock: WallClock, **overrides: Any
) -> BotAuthenticator:
    settings = BotAuthSettings(app_id=APP_ID, openid_metadata_url=server.metadata_url, **overrides)
    return BotAuthenticator(settings, session, clock=clock)


@pytest.fixture
def authenticator(
    server: LocalOpenIdServer, session: aiohttp.ClientSession, clock: WallClock
) -> BotAuthenticator:
    return make_authenticator(server, session, clock)


def activity(service_url: str = SERVICE_URL, channel_id: str = "msteams") -> dict[str, Any]:
    return {"type": "message", "channelId": channel_id, "serviceUrl": service_url, "text": "hi"}


def claims(now: datetime = START, **overrides: Any) -> dict[str, Any]:
    return bot_claims(app_id=APP_ID, service_url=SERVICE_URL, now=now, **overrides)


def bearer(token: str) -> str:
    return f"Bearer {token}"


async def refused(authenticator: BotAuthenticator, header: str | None, body: dict[str, Any]) -> AuthFailure:
    with pytest.raises(AuthenticationError) as caught:
        await authenticator.authenticate(header, body)
    assert caught.value.status_code == 401
    return caught.value.reason


# --- accepted ---------------------------------------------------------------------------------------


async def test_valid_channel_token_is_accepted_with_its_claims(
    authenticator: BotAuthenticator, teams_key: SigningKey
) -> None:
    result = await authenticator.authenticate(bearer(sign_token(teams_key, claims())), activity())

    assert result.app_id == APP_ID
    assert result.issuer == "https://api.botframework.com"
    assert result.service_url == SERVICE_URL
    assert result.channel_id == "msteams"
    assert result.key_id == "teams-key"
    assert result.expires_at == START + timedelta(hours=1)
    assert result.claims["aud"] == APP_ID


async def test_constructor_does_no_io_and_keys_are_fetched_once_for_many_requests(
    server: LocalOpenIdServer, session: aiohttp.ClientSession, clock: WallClock, teams_key: SigningKey
) -> None:
    authenticator = make_authenticator(server, session, clock)
    assert (server.metadata_requests, server.jwks_requests) == (0, 0)

    for _ in range(3):
        await authenticator.authenticate(bearer(sign_token(teams_key, claims())), activity())

    assert (server.metadata_requests, server.jwks_requests) == (1, 1)


@pytest.mark.parametrize(
    "activity_url",
    [
        "https://smba.trafficmanager.net/teams",
        "HTTPS://SMBA.TrafficManager.NET/teams/",
        "https://smba.trafficmanager.net:443/teams//",
    ],
)
async def test_service_url_matches_after_normalisation(
    authenticator: BotAuthenticator, teams_key: SigningKey, activity_url: str
) -> None:
    result = await authenticator.authenticate(bearer(sign_token(teams_key, claims())), activity(activity_url))

    assert result.service_url == SERVICE_URL


async def test_expired_token_within_clock_skew_is_accepted(
    authenticator: BotAuthenticator, teams_key: SigningKey, clock: WallClock
) -> None:
    clock.advance(timedelta(hours=1, seconds=299))

    result = await authenticator.authenticate(bearer(sign_token(teams_key, claims())), activity())

    assert result.key_id == teams_key.kid


async def test_configured_entra_issuer_is_accepted(
    server: LocalOpenIdServer, session: aiohttp.ClientSession, clock: WallClock, teams_key: SigningKey
) -> None:
    issuers = ("https://api.botframework.com", *entra_issuers(TENANT_ID))
    authenticator = make_authenticator(server, session, clock, allowed_issuers=issuers)
    token = sign_token(teams_key, claims(issuer=f"https://login.microsoftonline.com/{TENANT_ID}/v2.0"))

    result = await authenticator.authenticate(bearer(token), activity())

    assert result.issuer == f"https://login.microsoftonline.com/{TENANT_ID}/v2.0"
    assert entra_issuers(TENANT_ID)[1] == f"https://sts.windows.net/{TENANT_ID}/"


async def test_concurrent_first_requests_share_one_key_fetch(
    authenticator: BotAuthenticator, server: LocalOpenIdServer, teams_key: SigningKey
) -> None:
    token = bearer(sign_token(teams_key, claims()))

    results = await asyncio.gather(*(authenticator.authenticate(token, activity()) for _ in range(5)))

    assert [result.key_id for result in results] == [teams_key.kid] * 5
    assert (server.metadata_requests, server.jwks_requests) == (1, 1)


# --- refused: header ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, AuthFailure.MISSING_TOKEN),
        ("", AuthFailure.MISSING_TOKEN),
        ("Bearer ", AuthFailure.MISSING_TOKEN),
        ("Basic dXNlcjpwYXNz", AuthFailure.BAD_SCHEME),
        ("Token abc.def.ghi", AuthFailure.BAD_SCHEME),
        ("Bearer not-a-jwt", AuthFailure.MALFORMED_TOKEN),
    ],
)
async def test_missing_or_malformed_authorization_header_is_refused(
    authenticator: BotAuthenticator, header: str | None, reason: AuthFailure
) -> None:
    assert await refused(authenticator, header, activity()) == reason


# --- refused: algorithm and signature -----------------------------------------------------------------


async def test_unsigned_alg_none_token_is_refused(
    authenticator: BotAuthenticator, teams_key: SigningKey
) -> None:
    token = unsigned_token(claims(), kid=teams_key.kid)

    assert await refused(authenticator, bearer(token), activity()) == AuthFailure.UNSUPPORTED_ALGORITHM


async def test_hs256_signed_with_the_public_key_as_secret_is_refused(
    authenticator: BotAuthenticator, teams_key: SigningKey, server: LocalOpenIdServer
) -> None:
    token = hmac_token(teams_key.public_pem(), claims(), kid=teams_key.kid)

    assert await refused(authenticator, bearer(token), activity()) == AuthFailure.UNSUPPORTED_ALGORITHM
    assert server.jwks_requests == 0  # refused before any key was looked up


async def test_other_rsa_algorithm_is_refused(authenticator: BotAuthenticator, teams_key: SigningKey) -> None:
    token = sign_token(teams_key, claims(), algorithm="PS256")

    assert await refused(authenticator, bearer(token), activity()) == AuthFailure.UNSUPPORTED_ALGORITHM


async def test_tampered_payload_is_refused(authenticator: BotAuthenticator, teams_key: SigningKey) -> None:
    token = tamper_payload(sign_token(teams_key, claims()), serviceurl="https://evil.example.com/")

    assert await refused(authenticator, bearer(token), activity()) == AuthFailure.BAD_SIGNATURE


async def test_token_signed_by_unpublished_key_claiming_a_published_kid_is_refused(
    authenticator: BotAuthenticator, stranger_key: SigningKey, teams_key: SigningKey
) -> None:
    token = sign_token(stranger_key, claims(), kid=teams_key.kid)

    assert await refused(authenticator, bearer(token), activity()) == AuthFailure.BAD_SIGNATURE


async def test_token_signed_by_unknown_key_is_refused(
    authenticator: BotAuthenticator, stranger_key: SigningKey
) -> None:
    token = sign_token(stranger_key, claims())

    assert await refused(authenticator, bearer(token), activity()) == AuthFailure.UNKNOWN_KEY


async def test_token_without_kid_is_refused(authenticator: BotAuthenticator, teams_key: SigningKey) -> None:
    token = sign_token(teams_key, claims(), include_kid=False)

    assert await refused(authenticator, bearer(token), activity()) == AuthFailure.MISSING_KEY_ID


# --- refused: endorsements and channel ----------------------------------------------------------------


async def test_key_endorsed_for_other_channels_only_is_refused(
    authenticator: BotAuthenticator, webchat_key: SigningKey
) -> None:
    token = sign_token(webchat_key, claims())

    assert await refused(authenticator, bearer(token), activity()) == AuthFailure.ENDORSEMENT_MISSING


async def test_key_without_endorsements_is_refused(
    authenticator: BotAuthenticator, bare_key: SigningKey
) -> None:
    token = sign_token(bare_key, claims())

    assert await refused(authenticator, bearer(token), activity()) == AuthFailure.ENDORSEMENT_MISSING


async def test_activity_from_another_channel_is_refused(
    authenticator: BotAuthenticator, webchat_key: SigningKey
) -> None:
    token = sign_token(webchat_key, claims())

    assert await refused(authenticator, bearer(token), activity(channel_id="webchat")) == (
        AuthFailure.CHANNEL_NOT_ALLOWED
    )


# --- refused: claims ----------------------------------------------------------------------------------


async def test_wrong_audience_is_refused(authenticator: BotAuthenticator, teams_key: SigningKey) -> None:
    token = sign_token(teams_key, claims(aud="99999999-0000-0000-0000-000000000000"))

    assert await refused(authenticator, bearer(token), activity()) == AuthFailure.INVALID_AUDIENCE


async def test_wrong_issuer_is_refused(authenticator: BotAuthenticator, teams_key: SigningKey) -> None:
    token = sign_token(teams_key, claims(issuer=f"https://login.microsoftonline.com/{TENANT_ID}/v2.0"))

    assert await refused(authenticator, bearer(token), activity()) == AuthFailure.INVALID_ISSUER


async def test_issuer_match_is_exact(authenticator: BotAuthenticator, teams_key: SigningKey) -> None:
    token = sign_token(teams_key, claims(issuer="https://API.botframework.com/"))

    assert await refused(authenticator, bearer(token), activity()) == AuthFailure.INVALID_ISSUER


async def test_expired_token_beyond_clock_skew_is_refused(
    authenticator: BotAuthenticator, teams_key: SigningKey, clock: WallClock
) -> None:
    clock.advance(timedelta(hours=1, seconds=301))

    assert (
        await refused(authenticator, bearer(sign_token(teams_key, claims())), activity())
        == AuthFailure.EXPIRED
    )


async def test_token_without_exp_is_refused(authenticator: BotAuthenticator, teams_key: SigningKey) -> None:
    token = sign_token(teams_key, claims(exp=None))

    assert await refused(authenticator, bearer(token), activity()) == AuthFailure.MALFORMED_TOKEN


async def test_not_yet_valid_token_is_refused_beyond_skew_and_accepted_within(
    authenticator: BotAuthenticator, teams_key: SigningKey
) -> None:
    too_early = sign_token(teams_key, claims(not_before=START + timedelta(seconds=301)))
    early = sign_token(teams_key, claims(not_before=START + timedelta(seconds=299)))

    assert await refused(authenticator, bearer(too_early), activity()) == AuthFailure.NOT_YET_VALID
    assert (await authenticator.authenticate(bearer(early), activity())).key_id == teams_key.kid


@pytest.mark.parametrize(
    "activity_url",
    [
        "https://evil.example.com/teams/",
        "http://smba.trafficmanager.net/teams/",
        "https://smba.trafficmanager.net/TEAMS/",
        "https://smba.trafficmanager.net:8443/teams/",
        "",
    ],
)
async def test_service_url_claim_mismatch_is_refused(
    authenticator: BotAuthenticator, teams_key: SigningKey, activity_url: str
) -> None:
    token = sign_token(teams_key, claims())

    assert (
        await refused(authenticator, bearer(token), activity(activity_url))
        == AuthFailure.SERVICE_URL_MISMATCH
    )


async def test_missing_service_url_claim_is_refused(
    authenticator: BotAuthenticator, teams_key: SigningKey
) -> None:
    token = sign_token(teams_key, claims(serviceurl=None))

    assert await refused(authenticator, bearer(token), activity()) == AuthFailure.SERVICE_URL_MISMATCH


# --- key cache ------------------------------------------------------------------------------------------


async def test_key_rollover_is_accepted_after_one_refetch(
    authenticator: BotAuthenticator, server: LocalOpenIdServer, teams_key: SigningKey, clock: WallClock
) -> None:
    await authenticator.authenticate(bearer(sign_token(teams_key, claims())), activity())
    new_key = make_signing_key("rolled-key")
    server.publish(new_key)
    clock.advance(timedelta(minutes=6))  # past the refetch floor, far from the 24 h refresh

    result = await authenticator.authenticate(bearer(sign_token(new_key, claims())), activity())

    assert result.key_id == "rolled-key"
    assert server.jwks_requests == 2


async def test_unknown_kids_do_not_refetch_the_jwks_on_every_request(
    authenticator: BotAuthenticator,
    server: LocalOpenIdServer,
    teams_key: SigningKey,
    stranger_key: SigningKey,
    clock: WallClock,
) -> None:
    await authenticator.authenticate(bearer(sign_token(teams_key, claims())), activity())
    clock.advance(timedelta(minutes=6))

    reasons = []
    for number in range(10):
        token = sign_token(stranger_key, claims(), kid=f"made-up-{number}")
        reasons.append(await refused(authenticator, bearer(token), activity()))
        clock.advance(timedelta(seconds=10))

    assert reasons == [AuthFailure.UNKNOWN_KEY] * 10
    assert server.jwks_requests == 2  # the first fetch and one rollover refetch; then the floor holds
    clock.advance(timedelta(minutes=5))
    await refused(authenticator, bearer(sign_token(stranger_key, claims(), kid="made-up-x")), activity())
    assert server.jwks_requests == 3


async def test_keys_are_refreshed_after_the_refresh_interval(
    authenticator: BotAuthenticator, server: LocalOpenIdServer, teams_key: SigningKey, clock: WallClock
) -> None:
    await authenticator.authenticate(bearer(sign_token(teams_key, claims())), activity())
    server.withdraw(teams_key.kid)
    clock.advance(timedelta(hours=23))
    fresh = claims(now=clock.now)
    await authenticator.authenticate(bearer(sign_token(teams_key, fresh)), activity())
    assert server.jwks_requests == 1

    clock.advance(timedelta(hours=1))
    fresh = claims(now=clock.now)

    assert (
        await refused(authenticator, bearer(sign_token(teams_key, fresh)), activity())
        == AuthFailure.UNKNOWN_KEY
    )
    assert server.jwks_requests == 2


async def test_failed_refresh_keeps_the_previous_keys(
    authenticator: BotAuthenticator, server: LocalOpenIdServer, teams_key: SigningKey, clock: WallClock
) -> None:
    await authenticator.authenticate(bearer(sign_token(teams_key, claims())), activity())
    server.fail_with = 503
    clock.advance(timedelta(hours=24))
    fresh = claims(now=clock.now)

    result = await authenticator.authenticate(bearer(sign_token(teams_key, fresh)), activity())

    assert result.key_id == teams_key.kid
    assert server.metadata_requests == 2


async def test_unreachable_metadata_refuses_with_keys_unavailable_and_retries_later(
    authenticator: BotAuthenticator, server: LocalOpenIdServer, teams_key: SigningKey, clock: WallClock
) -> None:
    server.fail_with = 500
    token = sign_token(teams_key, claims())

    assert await refused(authenticator, bearer(token), activity()) == AuthFailure.KEYS_UNAVAILABLE
    assert await refused(authenticator, bearer(token), activity()) == AuthFailure.KEYS_UNAVAILABLE
    assert server.metadata_requests == 1

    server.fail_with = None
    clock.advance(timedelta(seconds=10))
    assert (await authenticator.authenticate(bearer(token), activity())).key_id == teams_key.kid


# --- hygiene ----------------------------------------------------------------------------------------------


async def test_refusals_are_logged_without_the_token(
    authenticator: BotAuthenticator, teams_key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    token = sign_token(teams_key, claims(aud="someone-else"))
    caplog.set_level(logging.DEBUG, logger="proactive.adapters.bot_auth")

    reason = await refused(authenticator, bearer(token), activity())

    assert reason == AuthFailure.INVALID_AUDIENCE
    assert "invalid_audience" in caplog.text
    signature = token.rsplit(".", 1)[1]
    assert signature not in caplog.text
    assert token.split(".")[1] not in caplog.text


def test_settings_refuse_plain_http_metadata_except_on_loopback() -> None:
    with pytest.raises(ValueError, match="https"):
        BotAuthSettings(app_id=APP_ID, openid_metadata_url="http://login.botframework.com/v1/.well-known/x")
    assert BotAuthSettings(app_id=APP_ID, openid_metadata_url="http://127.0.0.1:1/x").app_id == APP_ID
    with pytest.raises(ValueError, match="app_id"):
        BotAuthSettings(app_id=" ")


def test_settings_from_agents_sdk_configuration_enforce_its_issuers() -> None:
    config = AgentAuthConfiguration(client_id=APP_ID, tenant_id=TENANT_ID)

    settings = BotAuthSettings.from_agent_auth_configuration(config, clock_skew=timedelta(seconds=60))

    assert settings.app_id == APP_ID
    assert set(settings.allowed_issuers) == {"https://api.botframework.com", *entra_issuers(TENANT_ID)}
    assert settings.openid_metadata_url == "https://login.botframework.com/v1/.well-known/openidconfiguration"
    assert settings.clock_skew == timedelta(seconds=60)


def test_normalize_service_url_ignores_case_of_scheme_and_host_and_trailing_slash() -> None:
    assert (
        normalize_service_url("HTTPS://Smba.TrafficManager.net/amer/")
        == "https://smba.trafficmanager.net/amer"
    )
    assert normalize_service_url("not a url") == ""
