"""The Graph emulator over real HTTP: the msgraph-sdk client the product uses, and raw aiohttp for the rest.

Rates are checked against an injected fake clock (nothing sleeps on them); the only real waits are the
SDK RetryHandler test (one second, the SDK sleeps on its own) and event delivery, awaited through
``/_emulator/stats?settle=true`` or the receiver's queue.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from azure.core.credentials import AccessToken

from devhost.azurite import free_port
from devhost.emulators.graph import SERVICE_KEY, build_app
from devhost.emulators.graph_model import (
    ChannelConfig,
    GraphEmulatorConfig,
    GroupConfig,
    TeamConfig,
    TeamsAppConfig,
    TenantConfig,
    ThrottleConfig,
    UserConfig,
)
from devhost.emulators.graph_service import GraphService
from devhost.emulators.serving import start_on_loopback
from tests.support.clocks import FakeClock

# kiota-abstractions 1.16 warns at import time (DeprecationWarning from its own module), and pytest
# runs with filterwarnings = error; the product's Graph adapter module meets the same warning.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kiota_abstractions.base_request_configuration import RequestConfiguration
    from kiota_authentication_azure.azure_identity_authentication_provider import (
        AzureIdentityAuthenticationProvider,
    )
    from kiota_http.middleware.options import RetryHandlerOption
    from kiota_http.middleware.retry_handler import RetryHandler
    from msgraph import GraphRequestAdapter, GraphServiceClient
    from msgraph.generated.app_catalogs.teams_apps.teams_apps_request_builder import TeamsAppsRequestBuilder
    from msgraph.generated.groups.item.transitive_members.transitive_members_request_builder import (
        TransitiveMembersRequestBuilder,
    )
    from msgraph.generated.models.o_data_errors.o_data_error import ODataError
    from msgraph.generated.models.user import User
    from msgraph.generated.models.user_scope_teams_app_installation import UserScopeTeamsAppInstallation
    from msgraph.generated.users.item.teamwork.installed_apps.installed_apps_request_builder import (
        InstalledAppsRequestBuilder,
    )
    from msgraph_core import GraphClientFactory

# msgraph-sdk 1.65's generated request builders are imported lazily, and each warns when its module
# loads ("This class is deprecated. Please use the generic RequestConfiguration class ..."). The
# product's pyproject needs the same two ignores once it imports msgraph.
pytestmark = [
    pytest.mark.filterwarnings("ignore:This class is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:GetQueryParameters is deprecated:DeprecationWarning"),
]

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
ROOT = Path(__file__).resolve().parents[2]
MANIFEST_ID = "11111111-2222-3333-4444-555555555555"
BOT_ID = "b0b0b0b0-0000-0000-0000-000000000001"
CATALOG_ID_A = "catalog-app-a"
CATALOG_ID_B = "catalog-app-b"


def _users(prefix: str, count: int) -> list[UserConfig]:
    return [
        UserConfig(
            id=f"{prefix}-{n:04d}", display_name=f"User {n}", user_principal_name=f"{prefix}{n}@x.test"
        )
        for n in range(count)
    ]


def directory(*, big_group: bool = False) -> list[TenantConfig]:
    """Two tenants, each with its own users, app catalog entry, groups and a team."""
    tenants = []
    for name, catalog_id in (("a", CATALOG_ID_A), ("b", CATALOG_ID_B)):
        users = _users(f"user-{name}", 40)
        users.append(UserConfig(id=f"guest-{name}", display_name="Guest", user_type="Guest"))
        groups = [
            GroupConfig(id=f"group-{name}", members=[u.id for u in users[:5]] + [f"nested-{name}"]),
            GroupConfig(id=f"nested-{name}", members=[u.id for u in users[3:8]] + [f"group-{name}"]),
        ]
        if big_group:
            extra = _users(f"many-{name}", 1100)
            users.extend(extra)
            half = len(extra) // 2
            # Overlapping halves and a cycle back to the root: every member must still appear once.
            groups.append(
                GroupConfig(id=f"big-{name}", members=[u.id for u in extra[: half + 50]] + [f"sub-{name}"])
            )
            groups.append(
                GroupConfig(id=f"sub-{name}", members=[u.id for u in extra[half:]] + [f"big-{name}"])
            )
        tenants.append(
            TenantConfig(
                id=f"tenant-{name}",
                users=users,
                groups=groups,
                teams=[
                    TeamConfig(
                        id=f"team-{name}",
                        display_name=f"Team {name}",
                        channels=[
                            ChannelConfig(id=f"19:general-{name}@thread.tacv2", display_name="General")
                        ],
                    )
                ],
                apps=[
                    TeamsAppConfig(
                        id=catalog_id, external_id=MANIFEST_ID, display_name="Notifier", bot_id=BOT_ID
                    ),
                    TeamsAppConfig(id=f"other-{name}", external_id="other-manifest", display_name="Other"),
                ],
            )
        )
    return tenants


@dataclass
class Emulator:
    """A running emulator: its base URL, its service (state and stats) and a client session."""

    base: str
    service: GraphService
    session: aiohttp.ClientSession
    clock: FakeClock

    async def token(self, tenant: str, client_id: str = "app-1") -> str:
        form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": "s3cret",
            "scope": GRAPH_SCOPE,
        }
        async with self.session.post(f"{self.base}/{tenant}/oauth2/v2.0/token", data=form) as response:
            assert response.status == 200, await response.text()
            return str((await response.json())["access_token"])

    async def call(
        self, method: str, path: str, token: str, body: Any = None
    ) -> tuple[int, dict[str, str], Any]:
        url = path if path.startswith("http") else f"{self.base}/v1.0{path}"
        headers = {"Authorization": f"Bearer {token}"}
        async with self.session.request(method, url, json=body, headers=headers) as response:
            text = await response.text()
            return response.status, dict(response.headers), json.loads(text) if text else None

    async def install(
        self, token: str, user: str, app: str = CATALOG_ID_A
    ) -> tuple[int, dict[str, str], Any]:
        bind = {"teamsApp@odata.bind": f"https://graph.microsoft.com/v1.0/appCatalogs/teamsApps/{app}"}
        return await self.call("POST", f"/users/{user}/teamwork/installedApps", token, bind)

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/_emulator/stats?settle=true") as response:
            return dict(await response.json())


@asynccontextmanager
async def running(config: GraphEmulatorConfig) -> AsyncIterator[Emulator]:
    clock = FakeClock(5000.0)
    app = build_app(config, clock=clock)
    runner, base_url = await start_on_loopback(app)
    try:
        async with aiohttp.ClientSession() as session:
            yield Emulator(base_url.rstrip("/"), app[SERVICE_KEY], session, clock)
    finally:
        await runner.cleanup()


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with running(GraphEmulatorConfig(tenants=directory())) as instance:
        yield instance


class EmulatorCredential:
    """An ``AsyncTokenCredential`` that gets client-credentials tokens from the emulator's token endpoint.

    azure-identity's ``ClientSecretCredential`` insists on an https authority, so a development
    adapter needs a small credential like this one to talk to the emulator.
    """

    def __init__(self, base: str, tenant: str, client_id: str = "app-1") -> None:
        self.url = f"{base}/{tenant}/oauth2/v2.0/token"
        self.client_id = client_id

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": "s3cret",
            "scope": scopes[0],
        }
        async with httpx.AsyncClient() as client:
            response = await client.post(self.url, data=form)
        response.raise_for_status()
        body = response.json()
        return AccessToken(body["access_token"], int(time.time()) + int(body["expires_in"]))

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> EmulatorCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None


@asynccontextmanager
async def sdk_client(
    emulator: Emulator, tenant: str, *, sdk_retries: bool = False
) -> AsyncIterator[GraphServiceClient]:
    """A ``GraphServiceClient`` on the emulator; by default with the SDK's own 429/503/504 retries off."""
    options = {} if sdk_retries else {RetryHandlerOption.get_key(): RetryHandlerOption(should_retry=False)}
    # msgraph-core's AsyncGraphTransport has no aclose(): closing the client leaves the wrapped
    # transport's connections open, so keep a handle on that transport and close it too.
    transport = httpx.AsyncHTTPTransport()
    http = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(transport=transport, base_url=f"{emulator.base}/v1.0"), options=options
    )
    auth = AzureIdentityAuthenticationProvider(
        EmulatorCredential(emulator.base, tenant), scopes=[GRAPH_SCOPE], allowed_hosts=["127.0.0.1"]
    )
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = f"{emulator.base}/v1.0"
    try:
        yield GraphServiceClient(request_adapter=adapter)
    finally:
        await http.aclose()
        await transport.aclose()


def _bind(app: str) -> dict[str, str]:
    return {"teamsApp@odata.bind": f"https://graph.microsoft.com/v1.0/appCatalogs/teamsApps/{app}"}


# --- msgraph-sdk ------------------------------------------------------------------------------------


async def test_sdk_finds_org_catalog_app_by_manifest_external_id(emulator: Emulator) -> None:
    async with sdk_client(emulator, "tenant-a") as client:
        query = TeamsAppsRequestBuilder.TeamsAppsRequestBuilderGetQueryParameters(
            filter=f"externalId eq '{MANIFEST_ID}'"
        )
        found = await client.app_catalogs.teams_apps.get(RequestConfiguration(query_parameters=query))
        missing = await client.app_catalogs.teams_apps.get(
            RequestConfiguration(
                query_parameters=TeamsAppsRequestBuilder.TeamsAppsRequestBuilderGetQueryParameters(
                    filter="externalId eq 'no-such-manifest'"
                )
            )
        )

    assert found is not None
    assert found.value is not None
    assert [(app.id, app.external_id) for app in found.value] == [(CATALOG_ID_A, MANIFEST_ID)]
    assert found.value[0].distribution_method is not None
    assert found.value[0].distribution_method.value == "organization"
    assert missing is not None
    assert missing.value == []


async def test_sdk_installs_for_user_then_lists_it_and_reinstall_raises_odata_error_409(
    emulator: Emulator,
) -> None:
    user = "user-a-0001"
    async with sdk_client(emulator, "tenant-a") as client:
        installed_apps = client.users.by_user_id(user).teamwork.installed_apps
        query = InstalledAppsRequestBuilder.InstalledAppsRequestBuilderGetQueryParameters(
            expand=["teamsApp"], filter=f"teamsApp/id eq '{CATALOG_ID_A}'"
        )
        before = await installed_apps.get(RequestConfiguration(query_parameters=query))
        created = await installed_apps.post(
            UserScopeTeamsAppInstallation(additional_data=_bind(CATALOG_ID_A))
        )
        after = await installed_apps.get(RequestConfiguration(query_parameters=query))
        with pytest.raises(ODataError) as conflict:
            await installed_apps.post(UserScopeTeamsAppInstallation(additional_data=_bind(CATALOG_ID_A)))

    assert before is not None
    assert before.value == []
    assert created is None  # 201 Created with no body, as Graph documents
    assert after is not None
    assert after.value is not None
    assert len(after.value) == 1
    assert after.value[0].teams_app is not None
    assert after.value[0].teams_app.external_id == MANIFEST_ID
    assert conflict.value.response_status_code == 409
    assert conflict.value.error is not None
    assert conflict.value.error.code == "Conflict"


async def test_sdk_reads_personal_chat_id_of_installation(emulator: Emulator) -> None:
    user = "user-a-0002"
    async with sdk_client(emulator, "tenant-a") as client:
        installed_apps = client.users.by_user_id(user).teamwork.installed_apps
        await installed_apps.post(UserScopeTeamsAppInstallation(additional_data=_bind(CATALOG_ID_A)))
        listed = await installed_apps.get(
            RequestConfiguration(
                query_parameters=InstalledAppsRequestBuilder.InstalledAppsRequestBuilderGetQueryParameters(
                    filter=f"teamsApp/id eq '{CATALOG_ID_A}'"
                )
            )
        )
        assert listed is not None
        assert listed.value
        installation_id = listed.value[0].id
        assert installation_id is not None
        chat = await installed_apps.by_user_scope_teams_app_installation_id(installation_id).chat.get()

    assert chat is not None
    assert chat.id == f"19:{user}_{BOT_ID}@unq.gbl.spaces"
    assert chat.chat_type is not None
    assert chat.chat_type.value == "oneOnOne"
    assert chat.tenant_id == "tenant-a"


async def test_sdk_pages_transitive_members_reaching_each_member_exactly_once() -> None:
    config = GraphEmulatorConfig(tenants=directory(big_group=True))
    async with running(config) as emulator, sdk_client(emulator, "tenant-a") as client:
        if True:
            members = client.groups.by_group_id("big-a").transitive_members
            query = TransitiveMembersRequestBuilder.TransitiveMembersRequestBuilderGetQueryParameters(top=250)
            page = await members.get(RequestConfiguration(query_parameters=query))
            seen: list[str] = []
            pages = 0
            while page is not None:
                pages += 1
                seen.extend(str(member.id) for member in page.value or [] if isinstance(member, User))
                if not page.odata_next_link:
                    break
                assert page.odata_next_link.startswith(
                    f"{emulator.base}/v1.0/groups/big-a/transitiveMembers?"
                )
                page = await members.with_url(page.odata_next_link).get()

    expected = {f"many-a-{n:04d}" for n in range(1100)}
    assert len(seen) == len(expected)
    assert set(seen) == expected
    assert pages == 5  # 1,100 users + the nested group = 1,101 entries at 250 a page


async def test_sdk_429_surfaces_as_odata_error_with_retry_after_when_sdk_retries_are_off(
    emulator: Emulator,
) -> None:
    emulator.service.set_faults([], seed=0)
    emulator.service.config = emulator.service.config.model_copy(
        update={"throttle": ThrottleConfig(install_per_tenant=1)}
    )
    async with sdk_client(emulator, "tenant-a") as client:
        await client.users.by_user_id("user-a-0004").teamwork.installed_apps.post(
            UserScopeTeamsAppInstallation(additional_data=_bind(CATALOG_ID_A))
        )
        with pytest.raises(ODataError) as throttled:
            await client.users.by_user_id("user-a-0005").teamwork.installed_apps.post(
                UserScopeTeamsAppInstallation(additional_data=_bind(CATALOG_ID_A))
            )

    assert throttled.value.response_status_code == 429
    assert throttled.value.error is not None
    assert throttled.value.error.code == "TooManyRequests"
    headers = {k.lower(): v for k, v in (throttled.value.response_headers or {}).items()}
    assert float(headers["retry-after"]) == pytest.approx(1.0)


async def test_sdk_default_retry_handler_retries_429_by_itself_after_whole_second_retry_after() -> None:
    config = GraphEmulatorConfig(
        tenants=directory(),
        faults=[{"operation": "listUserApps", "statuses": [429], "retryAfter": 1}],  # type: ignore[list-item]
    )
    async with running(config) as emulator, sdk_client(emulator, "tenant-a", sdk_retries=True) as client:
        result = await client.users.by_user_id("user-a-0006").teamwork.installed_apps.get()
        stats = await emulator.stats()

    assert result is not None
    assert result.value == []
    assert stats["requests"]["GET /users/{user}/teamwork/installedApps"] == {"429": 1, "200": 1}


def test_sdk_retry_handler_ignores_fractional_retry_after() -> None:
    # Canary for a dependency quirk the product's Graph adapter must handle itself: "0.5" does not
    # parse, so the SDK falls back to its own backoff (3 s base delay) instead of Graph's hint.
    handler = RetryHandler()
    assert handler._parse_retry_after("2") == 2
    assert handler._parse_retry_after("0.5") is None


# --- tokens and tenants ------------------------------------------------------------------------------


async def test_token_endpoint_refuses_unknown_tenant_and_wrong_scope(emulator: Emulator) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": "app-1",
        "client_secret": "x",
        "scope": GRAPH_SCOPE,
    }
    async with emulator.session.post(f"{emulator.base}/tenant-zz/oauth2/v2.0/token", data=form) as response:
        unknown = (response.status, await response.json())
    bad_scope = {**form, "scope": "https://api.botframework.com/.default"}
    async with emulator.session.post(
        f"{emulator.base}/tenant-a/oauth2/v2.0/token", data=bad_scope
    ) as response:
        scope = (response.status, await response.json())

    assert unknown[0] == 400
    assert unknown[1]["error_codes"] == [90002]
    assert scope[0] == 400
    assert scope[1]["error"] == "invalid_scope"


async def test_token_carries_tenant_and_client_id(emulator: Emulator) -> None:
    token = await emulator.token("tenant-b", client_id="client-42")
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))

    assert (payload["tid"], payload["appid"], payload["aud"]) == (
        "tenant-b",
        "client-42",
        "https://graph.microsoft.com",
    )


async def test_request_without_or_with_forged_token_is_401_with_graph_error_body(emulator: Emulator) -> None:
    async with emulator.session.get(f"{emulator.base}/v1.0/users") as response:
        missing = (response.status, await response.json())
    status, _, forged = await emulator.call("GET", "/users", "eyJhbGciOiJub25lIn0.eyJ0aWQiOiJ0ZW5hbnQtYSJ9.")

    assert missing[0] == 401
    assert missing[1]["error"]["code"] == "InvalidAuthenticationToken"
    assert set(missing[1]["error"]["innerError"]) >= {"date", "request-id"}
    assert status == 401
    assert forged["error"]["code"] == "InvalidAuthenticationToken"


async def test_user_of_another_tenant_is_404_for_install_list_and_chat(emulator: Emulator) -> None:
    token_a, token_b = await emulator.token("tenant-a"), await emulator.token("tenant-b")
    assert (await emulator.install(token_b, "user-b-0001", CATALOG_ID_B))[0] == 201
    _, _, listed = await emulator.call("GET", "/users/user-b-0001/teamwork/installedApps", token_b)
    installation_id = listed["value"][0]["id"]

    install = await emulator.install(token_a, "user-b-0001", CATALOG_ID_A)
    listing = await emulator.call("GET", "/users/user-b-0001/teamwork/installedApps", token_a)
    chat = await emulator.call(
        "GET", f"/users/user-b-0001/teamwork/installedApps/{installation_id}/chat", token_a
    )
    app_of_b = await emulator.install(token_a, "user-a-0001", CATALOG_ID_B)

    assert [install[0], listing[0], chat[0], app_of_b[0]] == [404, 404, 404, 404]
    assert install[2]["error"]["code"] == "Request_ResourceNotFound"
    assert app_of_b[2]["error"]["code"] == "NotFound"


# --- throttling -------------------------------------------------------------------------------------


async def test_31st_install_within_a_second_is_throttled_and_its_retry_after_suffices(
    emulator: Emulator,
) -> None:
    token_a, token_b = await emulator.token("tenant-a"), await emulator.token("tenant-b")
    statuses = []
    for n in range(30):
        statuses.append((await emulator.install(token_a, f"user-a-{n:04d}"))[0])
        emulator.clock.advance(0.01)  # 30 installs over 0.3 s
    status, headers, body = await emulator.install(token_a, "user-a-0030")
    other_tenant = await emulator.install(token_b, "user-b-0000", CATALOG_ID_B)
    retry_after = float(headers["Retry-After"])
    emulator.clock.advance(retry_after)
    after_wait = await emulator.install(token_a, "user-a-0030")

    assert statuses == [201] * 30
    assert status == 429
    assert body["error"]["code"] == "TooManyRequests"
    assert retry_after == pytest.approx(0.7)  # the first install leaves the 1 s window at t = 1.0
    assert other_tenant[0] == 201
    assert after_wait[0] == 201


async def test_per_app_limit_spans_tenants_and_other_apps_are_separate() -> None:
    throttle = ThrottleConfig(install_per_tenant=30, install_per_app=3)
    async with running(GraphEmulatorConfig(tenants=directory(), throttle=throttle)) as emulator:
        token_a, token_b = await emulator.token("tenant-a"), await emulator.token("tenant-b")
        other_app = await emulator.token("tenant-b", client_id="app-2")
        first = [
            (await emulator.install(token_a, "user-a-0000"))[0],
            (await emulator.install(token_a, "user-a-0001"))[0],
            (await emulator.install(token_b, "user-b-0000", CATALOG_ID_B))[0],
        ]
        fourth = await emulator.install(token_b, "user-b-0001", CATALOG_ID_B)
        by_other_app = await emulator.install(other_app, "user-b-0001", CATALOG_ID_B)

    assert first == [201, 201, 201]
    assert fourth[0] == 429
    assert float(fourth[1]["Retry-After"]) == 1.0
    assert by_other_app[0] == 201


async def test_integer_retry_after_rounds_the_wait_up_to_whole_seconds() -> None:
    throttle = ThrottleConfig(install_per_tenant=1, integer_retry_after=True)
    async with running(GraphEmulatorConfig(tenants=directory(), throttle=throttle)) as emulator:
        token = await emulator.token("tenant-a")
        await emulator.install(token, "user-a-0000")
        emulator.clock.advance(0.6)
        _, headers, _ = await emulator.install(token, "user-a-0001")

    assert headers["Retry-After"] == "1"  # 0.4 s rounded up


async def test_get_and_delete_installed_apps_have_their_own_limits() -> None:
    throttle = ThrottleConfig(read_per_tenant=2, delete_per_tenant=1)
    async with running(GraphEmulatorConfig(tenants=directory(), throttle=throttle)) as emulator:
        token = await emulator.token("tenant-a")
        await emulator.install(token, "user-a-0000")
        await emulator.install(token, "user-a-0001")
        path = "/users/user-a-{}/teamwork/installedApps"
        reads = [(await emulator.call("GET", path.format("0000"), token))[0] for _ in range(3)]
        emulator.clock.advance(1)
        ids = [
            (await emulator.call("GET", path.format(u), token))[2]["value"][0]["id"] for u in ("0000", "0001")
        ]
        deletes = [
            (await emulator.call("DELETE", f"{path.format(u)}/{i}", token))[0]
            for u, i in zip(("0000", "0001"), ids, strict=True)
        ]
        reinstall = await emulator.install(token, "user-a-0000")

    assert reads == [200, 200, 429]
    assert deletes == [204, 429]
    assert reinstall[0] == 201  # installs are metered apart from reads and deletes


async def test_chat_lookup_can_be_limited_to_one_per_second_per_chat() -> None:
    throttle = ThrottleConfig(chat_per_chat=1)
    async with running(GraphEmulatorConfig(tenants=directory(), throttle=throttle)) as emulator:
        token = await emulator.token("tenant-a")
        await emulator.install(token, "user-a-0000")
        _, _, listed = await emulator.call("GET", "/users/user-a-0000/teamwork/installedApps", token)
        chat_path = f"/users/user-a-0000/teamwork/installedApps/{listed['value'][0]['id']}/chat"
        first, second = (
            await emulator.call("GET", chat_path, token),
            await emulator.call("GET", chat_path, token),
        )
        emulator.clock.advance(1)
        third = await emulator.call("GET", chat_path, token)

    assert [first[0], second[0], third[0]] == [200, 429, 200]


# --- $batch -----------------------------------------------------------------------------------------


async def test_batch_of_more_than_20_requests_is_400(emulator: Emulator) -> None:
    token = await emulator.token("tenant-a")
    requests = [{"id": str(n), "method": "GET", "url": "/users?$top=1"} for n in range(21)]
    status, _, body = await emulator.call("POST", "/$batch", token, {"requests": requests})
    ok_status, _, ok_body = await emulator.call("POST", "/$batch", token, {"requests": requests[:20]})

    assert status == 400
    assert body["error"]["code"] == "BadRequest"
    assert ok_status == 200
    assert [r["status"] for r in ok_body["responses"]] == [200] * 20


async def test_batch_items_are_throttled_individually() -> None:
    throttle = ThrottleConfig(install_per_tenant=3)
    async with running(GraphEmulatorConfig(tenants=directory(), throttle=throttle)) as emulator:
        token = await emulator.token("tenant-a")
        requests = [
            {
                "id": f"i{n}",
                "method": "POST",
                "url": f"/users/user-a-{n:04d}/teamwork/installedApps",
                "headers": {"Content-Type": "application/json"},
                "body": _bind(CATALOG_ID_A),
            }
            for n in range(5)
        ]
        requests.append({"id": "catalog", "method": "GET", "url": "/appCatalogs/teamsApps"})
        status, _, body = await emulator.call("POST", "/$batch", token, {"requests": requests})
        stats = await emulator.stats()

    by_id = {item["id"]: item for item in body["responses"]}
    assert status == 200
    assert [by_id[f"i{n}"]["status"] for n in range(5)] == [201, 201, 201, 429, 429]
    assert float(by_id["i3"]["headers"]["Retry-After"]) == 1.0
    assert by_id["i4"]["body"]["error"]["code"] == "TooManyRequests"
    assert by_id["catalog"]["status"] == 200
    assert len(by_id["catalog"]["body"]["value"]) == 2
    assert stats["throttled"] == 2
    assert stats["installs"] == {"tenant-a": 3}


async def test_batch_accepts_the_python_sdk_item_shape_and_fails_dependents_of_failures(
    emulator: Emulator,
) -> None:
    # msgraph-core's BatchRequestItem sends "/v1.0/..." urls, snake_case "depends_on" and non-object
    # bodies base64-encoded; its batch module cannot be imported here (it needs the undeclared
    # "deprecated" package), so the shape is sent by hand.
    token = await emulator.token("tenant-a")
    encoded = base64.b64encode(json.dumps(_bind(CATALOG_ID_A)).encode()).decode()
    requests = [
        {
            "id": "1",
            "method": "POST",
            "url": "/v1.0/users/user-a-0003/teamwork/installedApps",
            "body": encoded,
        },
        {
            "id": "2",
            "method": "GET",
            "url": "/v1.0/users/user-a-0003/teamwork/installedApps",
            "depends_on": ["1"],
        },
        {"id": "3", "method": "GET", "url": "/users/user-b-0001/teamwork/installedApps"},
        {"id": "4", "method": "GET", "url": "/users/user-a-0003", "dependsOn": ["3"]},
    ]
    status, _, body = await emulator.call("POST", "/$batch", token, {"requests": requests})

    assert status == 200
    assert {item["id"]: item["status"] for item in body["responses"]} == {
        "1": 201,
        "2": 200,
        "3": 404,
        "4": 424,
    }


# --- directory paging -------------------------------------------------------------------------------


async def test_users_paging_with_top_reaches_every_user_once_through_absolute_next_links() -> None:
    async with running(GraphEmulatorConfig(tenants=directory(big_group=True))) as emulator:
        token = await emulator.token("tenant-b")
        url: str | None = f"{emulator.base}/v1.0/users?$top=333&$select=id,displayName"
        seen: list[str] = []
        while url:
            status, _, page = await emulator.call("GET", url, token)
            assert status == 200
            seen.extend(user["id"] for user in page["value"])
            url = page.get("@odata.nextLink")
            assert url is None or url.startswith(f"{emulator.base}/v1.0/users?")
        too_big = await emulator.call("GET", "/users?$top=1000", token)

    assert len(seen) == len(set(seen)) == 40 + 1 + 1100
    assert all(user_id.startswith(("user-b", "guest-b", "many-b")) for user_id in seen)
    assert too_big[0] == 400


async def test_transitive_members_include_nested_groups_once_despite_cycles(emulator: Emulator) -> None:
    token = await emulator.token("tenant-a")
    _, _, page = await emulator.call("GET", "/groups/group-a/transitiveMembers", token)
    _, _, users_only = await emulator.call(
        "GET", "/groups/group-a/transitiveMembers/microsoft.graph.user", token
    )
    _, _, direct = await emulator.call("GET", "/groups/group-a/members", token)

    ids = [member["id"] for member in page["value"]]
    assert sorted(ids) == sorted([f"user-a-{n:04d}" for n in range(8)] + ["nested-a", "group-a"])
    assert len(users_only["value"]) == 8
    assert len(direct["value"]) == 6


# --- installs, chats and events ---------------------------------------------------------------------


@asynccontextmanager
async def receiver(status: int = 200) -> AsyncIterator[tuple[str, asyncio.Queue[dict[str, Any]]]]:
    """A stand-in bot messaging endpoint that records what it receives."""
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def messages(request: web.Request) -> web.Response:
        await received.put(await request.json())
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/api/messages", messages)
    runner, base_url = await start_on_loopback(app)
    try:
        yield f"{base_url}api/messages", received
    finally:
        await runner.cleanup()


async def _next(queue: asyncio.Queue[dict[str, Any]]) -> dict[str, Any]:
    return await asyncio.wait_for(queue.get(), timeout=10)


async def test_personal_install_posts_installation_update_and_conversation_update() -> None:
    async with receiver() as (endpoint, received):
        config = GraphEmulatorConfig(
            tenants=directory(), messaging_endpoint=endpoint, teams_service_url="http://127.0.0.1:1/teams/"
        )
        async with running(config) as emulator:
            token = await emulator.token("tenant-a")
            await emulator.install(token, "user-a-0007")
            install, update = await _next(received), await _next(received)
            stats = await emulator.stats()

    chat_id = f"19:user-a-0007_{BOT_ID}@unq.gbl.spaces"
    assert install["type"] == "installationUpdate"
    assert install["action"] == "add"
    assert install["conversation"] == {"conversationType": "personal", "tenantId": "tenant-a", "id": chat_id}
    assert install["from"]["aadObjectId"] == "user-a-0007"
    assert install["from"]["id"].startswith("29:")
    assert install["recipient"]["id"] == f"28:{BOT_ID}"
    assert install["channelData"]["tenant"] == {"id": "tenant-a"}
    assert install["serviceUrl"] == "http://127.0.0.1:1/teams/"
    assert install["channelId"] == "msteams"
    assert update["type"] == "conversationUpdate"
    assert update["membersAdded"] == [{"id": f"28:{BOT_ID}"}]
    assert update["conversation"]["id"] == chat_id
    assert stats["activities"]["posted"] == 2
    assert stats["activities"]["delivered"] == 2


async def test_team_install_posts_team_channel_and_selected_channel() -> None:
    async with (
        receiver() as (endpoint, received),
        running(GraphEmulatorConfig(tenants=directory(), messaging_endpoint=endpoint)) as emulator,
    ):
        if True:
            token = await emulator.token("tenant-b")
            status, _, _ = await emulator.call(
                "POST", "/teams/team-b/installedApps", token, _bind(CATALOG_ID_B)
            )
            again = await emulator.call("POST", "/teams/team-b/installedApps", token, _bind(CATALOG_ID_B))
            install, update = await _next(received), await _next(received)

    general = "19:general-b@thread.tacv2"
    assert (status, again[0]) == (201, 409)
    assert install["type"] == "installationUpdate"
    assert install["conversation"]["conversationType"] == "channel"
    assert install["channelData"]["team"] == {"id": general, "name": "Team b", "aadGroupId": "team-b"}
    assert install["channelData"]["channel"]["id"] == general
    assert install["channelData"]["settings"] == {"selectedChannel": {"id": general}}
    assert update["channelData"]["eventType"] == "teamMemberAdded"
    assert update["membersAdded"] == [{"id": f"28:{BOT_ID}"}]


async def test_team_uninstall_posts_installation_update_remove() -> None:
    async with (
        receiver() as (endpoint, received),
        running(GraphEmulatorConfig(tenants=directory(), messaging_endpoint=endpoint)) as emulator,
    ):
        token = await emulator.token("tenant-a")
        await emulator.call("POST", "/teams/team-a/installedApps", token, _bind(CATALOG_ID_A))
        _, _, listed = await emulator.call("GET", "/teams/team-a/installedApps?$expand=teamsApp", token)
        deleted = await emulator.call(
            "DELETE", f"/teams/team-a/installedApps/{listed['value'][0]['id']}", token
        )
        events = [await _next(received) for _ in range(3)]
        stats = await emulator.stats()

    assert listed["value"][0]["teamsApp"]["externalId"] == MANIFEST_ID
    assert deleted[0] == 204
    assert [(e["type"], e.get("action")) for e in events] == [
        ("installationUpdate", "add"),
        ("conversationUpdate", None),
        ("installationUpdate", "remove"),
    ]
    assert events[2]["channelData"]["team"]["aadGroupId"] == "team-a"
    assert (stats["installs"], stats["uninstalls"]) == ({"tenant-a": 1}, {"tenant-a": 1})


async def test_failed_event_delivery_is_counted_not_raised() -> None:
    async with receiver(status=500) as (endpoint, received):
        closed = f"http://127.0.0.1:{free_port()}/api/messages"
        async with running(GraphEmulatorConfig(tenants=directory(), messaging_endpoint=closed)) as emulator:
            token = await emulator.token("tenant-a")
            unreachable = await emulator.install(token, "user-a-0000")
            stats_closed = await emulator.stats()
            emulator.service.configure(
                emulator.service.config.model_copy(update={"messaging_endpoint": endpoint})
            )
            answered_500 = await emulator.install(token, "user-a-0000")
            stats = await emulator.stats()
        assert received.qsize() == 2

    assert unreachable[0] == 201
    assert answered_500[0] == 201
    assert stats_closed["activities"]["failed"] == 2
    assert stats_closed["activities"]["items"][0]["error"]
    assert stats["activities"]["failed"] == 4
    assert stats["activities"]["items"][-1]["status"] == 500


async def test_uninstall_then_reinstall_succeeds(emulator: Emulator) -> None:
    token = await emulator.token("tenant-a")
    await emulator.install(token, "user-a-0009")
    _, _, listed = await emulator.call(
        "GET", "/users/user-a-0009/teamwork/installedApps?$expand=teamsApp", token
    )
    item_path = f"/users/user-a-0009/teamwork/installedApps/{listed['value'][0]['id']}"
    deleted = await emulator.call("DELETE", item_path, token)
    gone = await emulator.call("GET", item_path, token)
    reinstalled = await emulator.install(token, "user-a-0009")

    assert listed["value"][0]["teamsApp"]["id"] == CATALOG_ID_A
    assert [deleted[0], gone[0], reinstalled[0]] == [204, 404, 201]


async def test_install_without_bind_is_400(emulator: Emulator) -> None:
    token = await emulator.token("tenant-a")
    status, _, body = await emulator.call("POST", "/users/user-a-0000/teamwork/installedApps", token, {})

    assert status == 400
    assert body["error"]["code"] == "BadRequest"


# --- faults, stats, control -------------------------------------------------------------------------


async def test_scripted_fault_sequence_then_success(emulator: Emulator) -> None:
    token = await emulator.token("tenant-a")
    faults = {"faults": [{"operation": "installUser", "tenant": "tenant-a", "statuses": [503, "ok", 504]}]}
    async with emulator.session.post(f"{emulator.base}/_emulator/faults", json=faults) as response:
        assert response.status == 204
    statuses = [(await emulator.install(token, f"user-a-{n:04d}"))[0] for n in range(4)]
    stats = await emulator.stats()

    assert statuses == [503, 201, 504, 201]
    assert stats["faultsInjected"] == 2


async def test_seeded_fault_rate_repeats_after_reset(emulator: Emulator) -> None:
    token = await emulator.token("tenant-a")
    faults = {"faults": [{"operation": "users", "rate": 0.5, "status": 503}], "seed": 7}

    async def run() -> list[int]:
        async with emulator.session.post(f"{emulator.base}/_emulator/faults", json=faults) as response:
            assert response.status == 204
        return [(await emulator.call("GET", "/users?$top=1", token))[0] for _ in range(12)]

    first, second = await run(), await run()

    assert first == second
    assert set(first) == {200, 503}


async def test_stats_count_requests_by_route_and_status_exactly(emulator: Emulator) -> None:
    token = await emulator.token("tenant-a")
    emulator.service.config = emulator.service.config.model_copy(
        update={"throttle": ThrottleConfig(install_per_tenant=2)}
    )
    await emulator.install(token, "user-a-0000")
    await emulator.install(token, "user-a-0000")  # 409, uses quota
    await emulator.install(token, "user-a-0001")  # 429
    await emulator.install(token, "nobody")  # 404
    await emulator.call("GET", "/appCatalogs/teamsApps", token)
    stats = await emulator.stats()

    assert stats["requests"] == {
        "POST /users/{user}/teamwork/installedApps": {"201": 1, "409": 1, "429": 1, "404": 1},
        "GET /appCatalogs/teamsApps": {"200": 1},
        "POST /{tenant}/oauth2/v2.0/token": {"200": 1},
    }
    assert stats["installs"] == {"tenant-a": 1}
    assert (stats["conflicts"], stats["throttled"], stats["tokensIssued"]) == (1, 1, 1)

    async with emulator.session.post(f"{emulator.base}/_emulator/reset") as response:
        assert response.status == 204
    assert (await emulator.stats())["requests"] == {}
    assert (await emulator.install(token, "user-a-0000"))[0] == 201  # reset forgot the installation


async def test_config_endpoint_replaces_directory(emulator: Emulator) -> None:
    token = await emulator.token("tenant-a")
    config = {"tenants": [{"id": "tenant-a", "users": [{"id": "solo", "userPrincipalName": "solo@a.test"}]}]}
    async with emulator.session.post(f"{emulator.base}/_emulator/config", json=config) as response:
        assert response.status == 204
    _, _, users = await emulator.call("GET", "/users", token)
    by_upn = await emulator.call("GET", "/users/solo@a.test", token)
    async with emulator.session.post(f"{emulator.base}/_emulator/config", json={"tenants": 3}) as response:
        rejected = response.status

    assert [user["id"] for user in users["value"]] == ["solo"]
    assert by_upn[0] == 200
    assert by_upn[2]["id"] == "solo"
    assert rejected == 400


# --- command line -----------------------------------------------------------------------------------


async def test_command_line_prints_base_url_and_serves(tmp_path: Path) -> None:
    config_file = tmp_path / "graph.json"
    config_file.write_text(GraphEmulatorConfig(tenants=directory()).model_dump_json(by_alias=True))
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *[
            sys.executable,
            "-m",
            "devhost",
            "emulate-graph",
            "--port",
            str(port),
            "--config",
            str(config_file),
        ],
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        async with aiohttp.ClientSession() as session:
            emulator = Emulator(line.strip().rstrip("/"), None, session, FakeClock(5000.0))  # type: ignore[arg-type]
            token = await emulator.token("tenant-a")
            status, _, body = await emulator.call("GET", "/users?$top=2", token)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=10)

    assert line.strip() == f"http://127.0.0.1:{port}/"
    assert status == 200
    assert len(body["value"]) == 2
