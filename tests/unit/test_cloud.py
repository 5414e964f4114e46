"""BOT_CLOUD: one setting puts the token scope, the accepted issuer, the signing keys, the authority and the
outbound allow-list in the same cloud (public, GCC, GCC High, DoD)."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import pytest

from proactive.adapters.bot_token import ClientSecretTokens
from proactive.composition import bot_auth_settings, bot_tokens
from proactive.errors import ConfigurationError
from proactive.outbound import OutboundPolicy
from proactive.settings import Settings

APP_ID = "11111111-2222-3333-4444-555555555555"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
PRODUCTION = {
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "MicrosoftAppId": APP_ID,
    "MicrosoftAppTenantId": TENANT,
    "MicrosoftAppPassword": "s3cret-value",
    "TENANT_ALLOW_LIST": TENANT,
}
PUBLIC_SERVICE = "https://smba.trafficmanager.net/teams/"
GCC_SERVICE = "https://smba.infra.gcc.teams.microsoft.com/teams"
GCC_HIGH_SERVICE = "https://smba.infra.gov.teams.microsoft.us/teams"
DOD_SERVICE = "https://smba.infra.dod.teams.microsoft.us/teams"


@dataclass(frozen=True)
class Expected:
    login: str
    scope: str
    issuer: str
    keys: str
    graph: str
    services: tuple[str, ...]  # service URLs the bot may call
    foreign: tuple[str, ...]  # other clouds' service URLs and Graph hosts: never


PUBLIC = Expected(
    login="https://login.microsoftonline.com",
    scope="https://api.botframework.com/.default",
    issuer="https://api.botframework.com",
    keys="https://login.botframework.com/v1/.well-known/openidconfiguration",
    graph="https://graph.microsoft.com/v1.0",
    services=(PUBLIC_SERVICE, GCC_SERVICE),
    foreign=(GCC_HIGH_SERVICE, DOD_SERVICE, "https://graph.microsoft.us/v1.0"),
)
GCC_HIGH = Expected(
    login="https://login.microsoftonline.us",
    scope="https://api.botframework.us/.default",
    issuer="https://api.botframework.us",
    keys="https://login.botframework.azure.us/v1/.well-known/openidconfiguration",
    graph="https://graph.microsoft.us/v1.0",
    services=(GCC_HIGH_SERVICE, DOD_SERVICE),
    foreign=(PUBLIC_SERVICE, GCC_SERVICE, "https://graph.microsoft.com/v1.0"),
)
DOD = Expected(
    **{
        **GCC_HIGH.__dict__,
        "graph": "https://dod-graph.microsoft.us/v1.0",
        "foreign": (*GCC_HIGH.foreign, "https://graph.microsoft.us/v1.0"),
    }
)
CLOUDS = {None: PUBLIC, "public": PUBLIC, "gcc": PUBLIC, "gcchigh": GCC_HIGH, "GCCHigh": GCC_HIGH, "dod": DOD}


@pytest.mark.parametrize("cloud", list(CLOUDS))
async def test_one_cloud_setting_sets_scope_issuer_keys_authority_and_allow_list(cloud: str | None) -> None:
    expected = CLOUDS[cloud]
    settings = Settings.from_env({**PRODUCTION, **({"BOT_CLOUD": cloud} if cloud else {})})

    async with aiohttp.ClientSession() as session:
        tokens = bot_tokens(settings, session)
    assert isinstance(tokens, ClientSecretTokens)
    assert tokens.scope == expected.scope
    assert tokens.token_url == f"{expected.login}/{TENANT}/oauth2/v2.0/token"
    inbound = bot_auth_settings(settings)
    assert inbound is not None
    assert inbound.allowed_issuers == (expected.issuer,)
    assert inbound.openid_metadata_url == expected.keys
    assert settings.graph_base_url == expected.graph

    connector, graph = OutboundPolicy.for_bot_connector(settings), OutboundPolicy.for_graph(settings)
    assert all(connector.allows(url) for url in expected.services)
    assert graph.allows(expected.graph)
    assert not any(connector.allows(url) or graph.allows(url) for url in expected.foreign)


async def test_a_multi_tenant_bot_gets_its_clouds_multi_tenant_authority() -> None:
    environ = {**PRODUCTION, "MicrosoftAppType": "MultiTenant", "MicrosoftAppTenantId": ""}
    async with aiohttp.ClientSession() as session:
        public = bot_tokens(Settings.from_env(environ), session)
        government = bot_tokens(Settings.from_env({**environ, "BOT_CLOUD": "gcchigh"}), session)
    assert isinstance(public, ClientSecretTokens) and isinstance(government, ClientSecretTokens)
    assert public.token_url == "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token"
    assert government.token_url == (
        "https://login.microsoftonline.us/MicrosoftServices.onmicrosoft.us/oauth2/v2.0/token"
    )


def test_an_unknown_cloud_fails_at_start_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({**PRODUCTION, "BOT_CLOUD": "china"})
    assert caught.value.setting == "BOT_CLOUD"
