"""AzureWebJobsStorage in both shapes the Functions host accepts: connection string and identity-based.

Flex Consumption templates set ``AzureWebJobsStorage__accountName`` (plus ``__credential`` and, for a
user-assigned identity, ``__clientId``) and no connection string; the product's table and queue clients must
then authenticate with the app's identity, as the host does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

from devhost.emulators.serving import start_on_loopback
from proactive.adapters.storage_identity import storage_credential
from proactive.adapters.storage_queues import AzureQueues
from proactive.adapters.table_storage import AzureTables
from proactive.errors import ConfigurationError
from proactive.settings import Settings, StorageAccount
from tests.support.function_app import load_function_app

CLIENT_ID = "0f0e0d0c-0b0a-0908-0706-050403020100"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
BOT = {
    "MicrosoftAppId": "11111111-2222-3333-4444-555555555555",
    "MicrosoftAppTenantId": TENANT,
    "MicrosoftAppPassword": "s3cret",
    "TENANT_ALLOW_LIST": TENANT,
}
FLEX = {
    **BOT,
    "AzureWebJobsStorage__accountName": "proactivest01",
    "AzureWebJobsStorage__credential": "managedidentity",
}
AZURITE = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"


def test_a_connection_string_is_used_as_is_and_never_shown() -> None:
    storage = Settings.from_env({**BOT, "AzureWebJobsStorage": AZURITE}).storage
    assert storage.connection_string == AZURITE and not storage.identity_based
    assert "AccountKey" not in repr(storage)


def test_the_flex_consumption_shape_derives_public_cloud_endpoints_from_the_account_name() -> None:
    storage = Settings.from_env(FLEX).storage
    assert storage.identity_based and storage.managed_identity_only
    assert storage.table_service_uri == "https://proactivest01.table.core.windows.net"
    assert storage.queue_service_uri == "https://proactivest01.queue.core.windows.net"
    assert storage.client_id == ""  # the system-assigned identity


def test_explicit_service_uris_win_and_a_user_assigned_client_id_is_kept() -> None:
    storage = Settings.from_env(
        {
            **BOT,
            "AzureWebJobsStorage__tableServiceUri": "https://acct.table.core.usgovcloudapi.net/",
            "AzureWebJobsStorage__queueServiceUri": "https://acct.queue.core.usgovcloudapi.net",
            "AzureWebJobsStorage__clientId": CLIENT_ID,
        }
    ).storage
    assert storage.table_service_uri == "https://acct.table.core.usgovcloudapi.net"
    assert storage.queue_service_uri == "https://acct.queue.core.usgovcloudapi.net"
    assert storage.client_id == CLIENT_ID and not storage.managed_identity_only  # DefaultAzureCredential


def test_a_connection_string_wins_over_identity_settings_as_in_the_functions_host() -> None:
    storage = Settings.from_env({**FLEX, "AzureWebJobsStorage": AZURITE}).storage
    assert not storage.identity_based and storage.table_service_uri == ""


def test_a_flex_consumption_app_with_only_identity_based_storage_indexes_every_function(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_connection = load_function_app(monkeypatch, {**BOT, "AzureWebJobsStorage": AZURITE})
    expected = {f.get_function_name() for f in with_connection.app.get_functions()}
    flex = load_function_app(monkeypatch, FLEX)
    assert {f.get_function_name() for f in flex.app.get_functions()} == expected
    assert "broadcasts_start" in expected


@pytest.mark.parametrize(
    ("environ", "setting"),
    [
        (BOT, "AzureWebJobsStorage"),
        ({**BOT, "AzureWebJobsStorage__accountName": "Not_An_Account"}, "AzureWebJobsStorage__accountName"),
        (
            {**BOT, "AzureWebJobsStorage__tableServiceUri": "https://acct.table.core.windows.net"},
            "AzureWebJobsStorage__queueServiceUri",
        ),
        (
            {**BOT, "AzureWebJobsStorage__queueServiceUri": "https://acct.queue.core.windows.net"},
            "AzureWebJobsStorage__tableServiceUri",
        ),
        (
            {**FLEX, "AzureWebJobsStorage__tableServiceUri": "http://acct.table.core.windows.net"},
            "AzureWebJobsStorage__tableServiceUri",
        ),
        ({**FLEX, "AzureWebJobsStorage__credential": "secret"}, "AzureWebJobsStorage__credential"),
        ({**FLEX, "AzureWebJobsStorage__clientId": "my-identity"}, "AzureWebJobsStorage__clientId"),
    ],
)
def test_a_bad_storage_setting_fails_naming_it(environ: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(environ)
    assert caught.value.setting == setting


async def test_identity_based_adapters_use_the_service_uris_and_a_managed_identity() -> None:
    account = Settings.from_env(FLEX).storage
    tables = AzureTables.for_account(account)
    queues = AzureQueues.for_account(account)
    try:
        assert tables._service.url.startswith("https://proactivest01.table.core.windows.net")
        assert queues._service.url.startswith("https://proactivest01.queue.core.windows.net")
        assert isinstance(tables._service.credential, ManagedIdentityCredential)
        assert isinstance(queues._service.credential, ManagedIdentityCredential)
    finally:
        await tables.close()
        await queues.close()


async def test_without_credential_managedidentity_the_adapters_use_default_azure_credential() -> None:
    account = StorageAccount(
        table_service_uri="https://acct.table.core.windows.net",
        queue_service_uri="https://acct.queue.core.windows.net",
    )
    tables = AzureTables.for_account(account)
    try:
        assert isinstance(tables._service.credential, DefaultAzureCredential)
    finally:
        await tables.close()


async def test_connection_string_adapters_carry_no_token_credential() -> None:
    account = Settings.from_env({**BOT, "AzureWebJobsStorage": AZURITE}).storage
    tables = AzureTables.for_account(account)
    queues = AzureQueues.for_account(account)
    try:
        assert tables._credential is None and queues._credential is None
        assert tables._service.url.startswith("http://127.0.0.1:10002/devstoreaccount1")
    finally:
        await tables.close()
        await queues.close()


@dataclass
class IdentityEndpoint:
    """The App Service / Functions managed identity endpoint (``IDENTITY_ENDPOINT``), served locally."""

    url: str = ""
    requests: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def identity_endpoint(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[IdentityEndpoint]:
    endpoint = IdentityEndpoint()

    async def token(request: web.Request) -> web.Response:
        endpoint.requests.append({**request.query, "header": request.headers.get("X-IDENTITY-HEADER", "")})
        return web.json_response(
            {"access_token": "t0ken", "expires_on": "4102444800", "resource": request.query["resource"],
             "token_type": "Bearer"}
        )  # fmt: skip

    app = web.Application()
    app.router.add_get("/msi/token", token)
    runner, base_url = await start_on_loopback(app)
    endpoint.url = f"{base_url}msi/token"
    for name in ("MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint.url)
    monkeypatch.setenv("IDENTITY_HEADER", "header-secret")
    try:
        yield endpoint
    finally:
        await runner.cleanup()


async def test_the_managed_identity_credential_asks_for_a_storage_token_as_the_configured_identity(
    identity_endpoint: IdentityEndpoint,
) -> None:
    account = Settings.from_env({**FLEX, "AzureWebJobsStorage__clientId": CLIENT_ID}).storage
    credential = storage_credential(account)
    try:
        token = await credential.get_token("https://storage.azure.com/.default")
    finally:
        await credential.close()
    assert token.token == "t0ken"
    [request] = identity_endpoint.requests
    assert request["resource"] == "https://storage.azure.com"
    assert request["client_id"] == CLIENT_ID
    assert request["header"] == "header-secret"
