"""Graph proactive installation over real HTTP against the Graph emulator, with stores and queues on Azurite.

Three layers, each through the real thing below it:

* :class:`~proactive.adapters.graph.GraphClient`: every Graph answer the installer can see is mapped into
  the error tree (429 -> ``Throttled`` with the emulator's ``Retry-After``, 403 -> ``GraphAccessDenied``,
  404 -> ``DirectoryObjectNotFound``, 5xx -> ``ServiceBusy``, 409 -> "already installed");
* :class:`~proactive.install.installer.Installer`: installs, finds the chat, stores a botbuilder-shaped reference,
  leaves users who blocked the bot alone;
* :class:`~proactive.install.installs.InstallWorker`: a ``installs`` message from Azurite's queue to a stored
  reference, a re-driven ledger row, a requeued 429, a dead letter. Its pacer here is a recording fake of
  the port; the Durable pacer runs in ``test_graph_bootstrap_e2e.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from devhost.azurite import free_port
from devhost.emulators.graph import SERVICE_KEY, build_app
from devhost.emulators.graph_model import (
    ChannelConfig,
    FaultRule,
    GraphEmulatorConfig,
    GroupConfig,
    TeamConfig,
    TeamsAppConfig,
    TenantConfig,
    UserConfig,
)
from devhost.emulators.graph_service import GraphService
from devhost.emulators.serving import start_on_loopback
from proactive.adapters.bot_token import AnonymousTokens
from proactive.adapters.graph import GraphClient, graph_tokens
from proactive.adapters.storage_queues import AzureQueues
from proactive.adapters.table_storage import AzureTables
from proactive.broadcast.audience import AudienceMaterialiser
from proactive.broadcast.request import parse_broadcast_request
from proactive.delivery.ports import InstallRequest, RetryRequest
from proactive.errors import (
    BotMisconfigured,
    DirectoryObjectNotFound,
    GraphAccessDenied,
    MessageRejected,
    OutboundHostRefused,
    ServiceBusy,
    Throttled,
    TransportFailure,
)
from proactive.install.installer import Installer, InstallStatus
from proactive.install.installs import (
    CONSENT_REQUIRED,
    INSTALL_FAILED,
    REINSTALLED,
    InstallHandled,
    InstallRetryLater,
    InstallWorker,
)
from proactive.install.ports import Admission
from proactive.models import (
    DeliveryRecord,
    DeliveryStatus,
    ErrorInfo,
    Notification,
    RecipientKind,
    StoredReference,
)
from proactive.outbound import OutboundPolicy
from proactive.settings import Settings
from proactive.storage.stores import (
    TableDeadLetterStore,
    TableDeliveryLedger,
    TableNotificationStore,
    TableReferenceStore,
)
from tests.support.references import stored_reference

pytestmark = [pytest.mark.azurite]

TENANT = "7e7e7e7e-0000-4000-8000-000000000007"
MANIFEST = "11111111-2222-4333-8444-555555555555"
CATALOG = "catalog-notifier"
BOT = "b0b0b0b0-0000-4000-8000-000000000001"
TEAMS_URL = "https://smba.trafficmanager.net/emea/"
NID = "incident-77"
TEAM = "7e7e7e7e-0000-4000-8000-0000000000aa"  # the team's Entra group id: Graph's team id
GENERAL = "19:general-ops@thread.tacv2"  # its General channel: also the team's Bot Framework id
ALERTS = "19:alerts-ops@thread.tacv2"


def user(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def emulator_config() -> GraphEmulatorConfig:
    users = [UserConfig(id=user(n), display_name=f"User {n}") for n in range(30)]
    users.append(UserConfig(id="guest-1", display_name="Guest", user_type="Guest"))
    groups = [
        GroupConfig(id="ops", members=[user(n) for n in range(0, 10)] + ["ops-nested", "guest-1"]),
        GroupConfig(id="ops-nested", members=[user(n) for n in range(5, 15)] + ["ops"]),
    ]
    app = TeamsAppConfig(id=CATALOG, external_id=MANIFEST, display_name="Notifier", bot_id=BOT)
    teams = [
        TeamConfig(
            id=TEAM, display_name="Ops", channels=[ChannelConfig(id=GENERAL), ChannelConfig(id=ALERTS)]
        )
    ]
    tenant = TenantConfig(id=TENANT, users=users, groups=groups, apps=[app], teams=teams)
    return GraphEmulatorConfig(tenants=[tenant], default_page_size=4)


class StoppedClock:
    """Monotonic seconds for the emulator's windows: still unless a test moves it (no accidental 429)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class RecordingPacer:
    """A fake of the GraphPacer port: admits at once and records every report."""

    reports: list[dict[str, Any]] = field(default_factory=list)
    admissions: int = 0

    async def admit(self, tenant_id: str) -> Admission:
        self.admissions += 1
        return Admission(tokens=1, not_before=0.0)

    async def report(self, tenant_id: str, **outcome: Any) -> None:
        self.reports.append({k: v for k, v in outcome.items() if v and k != "timing"})


@dataclass
class World:
    graph: GraphClient
    service: GraphService
    references: TableReferenceStore
    ledger: TableDeliveryLedger
    notifications: TableNotificationStore
    dead_letters: TableDeadLetterStore
    queues: AzureQueues
    name: str
    http: aiohttp.ClientSession
    pacer: RecordingPacer = field(default_factory=RecordingPacer)

    def installer(self, **options: Any) -> Installer:
        # This emulator posts no install events (no messaging endpoint): read the chat at once.
        options.setdefault("capture_wait", 0.0)
        return Installer(
            self.graph,
            self.references,
            teams_app_id=MANIFEST,
            bot_app_id=BOT,
            default_service_url=TEAMS_URL,
            clock=lambda: datetime.now(UTC),
            **options,
        )

    def worker(self, tenant_allowed: Any = None, **options: Any) -> InstallWorker:
        async def no_sleep(seconds: float) -> None:
            return None

        return InstallWorker(
            tenant_allowed=tenant_allowed or (lambda tenant: True),
            installer=self.installer(**options),
            pacer=self.pacer,
            ledger=self.ledger,
            notifications=self.notifications,
            installs=self.queues.queue(f"{self.name}-installs"),
            poison=self.queues.queue(f"{self.name}-installs-poison"),
            retries=self.queues.queue(f"{self.name}-retry"),
            dead_letters=self.dead_letters,
            clock=lambda: datetime.now(UTC),
            sleep=no_sleep,
            admin_consent_url=lambda tenant: (
                f"https://login.microsoftonline.com/{tenant}/adminconsent?client_id={BOT}"
            ),
        )

    def fault(self, operation: str, *statuses: int, retry_after: float | None = None) -> None:
        rule = FaultRule.model_validate(
            {"operation": operation, "statuses": list(statuses), "retryAfter": retry_after}
        )
        self.service.set_faults([rule])

    async def stale_row(
        self, aad: str, status: DeliveryStatus = DeliveryStatus.STALE, key: str | None = None
    ) -> None:
        now = datetime.now(UTC)
        if await self.notifications.get(NID) is None:
            audience = {
                "tenants": [TENANT],
                "channels": [{"tenantId": TENANT, "teamId": team, "channelId": ALERTS} for team in (TEAM,)],
            }
            await self.notifications.create(
                Notification(
                    id=NID, request={"audience": audience, "message": {"text": "hi"}}, created_at=now
                )
            )
        record = DeliveryRecord(
            notification_id=NID,
            tenant_id=TENANT,
            recipient_key=key or f"user:{aad}",
            status=status,
            last_error=ErrorInfo(code="no_reference"),
            created_at=now,
            updated_at=now,
        )
        await self.ledger.add_pending([record])
        found = await self.ledger.get(NID, TENANT, record.recipient_key)
        assert found is not None
        # add_pending writes pending rows; the sender would have recorded stale or installing.
        if found.value.status is not status:
            await self.ledger.replace(record, found.etag)

    async def row(self, aad: str) -> DeliveryRecord:
        found = await self.ledger.get(NID, TENANT, f"user:{aad}")
        assert found is not None
        return found.value

    async def messages(self, queue: str) -> list[dict[str, Any]]:
        received = await self.queues.queue(f"{self.name}-{queue}").receive(max_messages=32)
        return [m.body for m in received]


@pytest.fixture
async def world(storage_connection_string: str, unique_name: str) -> AsyncIterator[World]:
    app = build_app(emulator_config(), clock=StoppedClock())
    runner, base_url = await start_on_loopback(app, shutdown_timeout=0.5)
    base = base_url.rstrip("/")
    settings = Settings.from_env(
        {
            "AzureWebJobsStorage": storage_connection_string,
            "BOT_AUTH": "anonymous",
            "AUTHORITY_HOST": base,
            "GRAPH_BASE_URL": f"{base}/v1.0",
            "DEV_OUTBOUND_HOSTS": "127.0.0.1",
            "TEAMS_APP_ID": MANIFEST,
        }
    )
    tables = AzureTables.from_connection_string(storage_connection_string)
    queues = AzureQueues.from_connection_string(storage_connection_string)
    try:
        async with aiohttp.ClientSession() as http:
            graph = GraphClient(
                http,
                graph_tokens(settings, http),
                OutboundPolicy.for_graph(settings),
                base_url=settings.graph_base_url,
            )
            yield World(
                graph=graph,
                service=app[SERVICE_KEY],
                references=TableReferenceStore(tables.table(f"{unique_name}refs")),
                ledger=TableDeliveryLedger(tables.table(f"{unique_name}deliveries")),
                notifications=TableNotificationStore(tables.table(f"{unique_name}notifications")),
                dead_letters=TableDeadLetterStore(tables.table(f"{unique_name}deadletters")),
                queues=queues,
                name=unique_name,
                http=http,
            )
    finally:
        await tables.close()
        await queues.close()
        await runner.cleanup()


# ---- adapter ----------------------------------------------------------------------------------------


async def test_the_adapter_installs_then_409_means_already_installed(world: World) -> None:
    assert await world.graph.catalog_app_id(TENANT, MANIFEST) == CATALOG
    assert await world.graph.catalog_app_id(TENANT, "not-in-catalog") is None

    assert await world.graph.install_for_user(TENANT, user(1), CATALOG) is True
    assert await world.graph.install_for_user(TENANT, user(1), CATALOG) is False
    installation = await world.graph.user_installation(TENANT, user(1), CATALOG)
    assert installation is not None
    assert await world.graph.user_installation(TENANT, user(2), CATALOG) is None
    chat = await world.graph.installation_chat_id(TENANT, user(1), installation.id)
    assert chat == f"19:{user(1)}_{BOT}@unq.gbl.spaces"


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (429, Throttled, "TooManyRequests"),
        (403, GraphAccessDenied, "Forbidden"),
        (401, GraphAccessDenied, None),
        (404, DirectoryObjectNotFound, None),
        (500, ServiceBusy, None),
        (502, ServiceBusy, None),
        (503, ServiceBusy, None),
        (504, ServiceBusy, None),
        (400, MessageRejected, None),
    ],
)
async def test_every_graph_error_answer_is_mapped_into_the_error_tree(
    world: World, status: int, error: type[Exception], code: str | None
) -> None:
    world.fault("installUser", status, retry_after=1.5)

    with pytest.raises(error) as raised:
        await world.graph.install_for_user(TENANT, user(1), CATALOG)

    assert getattr(raised.value, "status", None) == status
    if isinstance(raised.value, Throttled):
        assert raised.value.retry_after == pytest.approx(1.5)
    if code is not None:
        assert getattr(raised.value, "code", None) == code


async def test_a_next_link_to_another_host_is_refused_before_the_token_leaves(world: World) -> None:
    with pytest.raises(OutboundHostRefused):
        await world.graph.group_users(TENANT, "ops", "https://evil.example/v1.0/groups/ops/transitiveMembers")
    assert world.service.stats.to_json()["tokensIssued"] == 0


async def test_no_answer_is_a_transport_failure(world: World) -> None:
    graph = GraphClient(
        world.http,
        lambda tenant: AnonymousTokens(),
        OutboundPolicy(["127.0.0.1"]),
        base_url=f"http://127.0.0.1:{free_port()}/v1.0",  # nothing listens there
    )
    with pytest.raises(TransportFailure):
        await graph.catalog_app_id(TENANT, MANIFEST)


async def test_a_tenant_the_token_service_does_not_know_is_a_permanent_failure(world: World) -> None:
    with pytest.raises(BotMisconfigured) as raised:
        await world.graph.catalog_app_id("0e0e0e0e-0000-4000-8000-00000000000e", MANIFEST)
    assert raised.value.code == "invalid_request"


async def test_an_unknown_user_is_directory_object_not_found(world: World) -> None:
    with pytest.raises(DirectoryObjectNotFound) as raised:
        await world.graph.install_for_user(TENANT, "no-such-user", CATALOG)
    assert raised.value.status == 404 and raised.value.code == "Request_ResourceNotFound"


async def test_group_users_follow_next_links_through_nested_groups_and_keep_guests_marked(
    world: World,
) -> None:
    users: list[str] = []
    guests: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await world.graph.group_users(TENANT, "ops", cursor)
        pages += 1
        users += [u.id for u in page.users if not u.guest]
        guests += [u.id for u in page.users if u.guest]
        cursor = page.next
        if cursor is None:
            break
    assert pages > 2  # page size 4
    assert sorted(users) == [user(n) for n in range(15)]  # transitive, each once, no groups
    assert guests == ["guest-1"]


# ---- installer --------------------------------------------------------------------------------------


async def test_install_stores_an_unconfirmed_botbuilder_shaped_reference(world: World) -> None:
    outcome = await world.installer().install_user(TENANT, user(3))

    assert outcome.status is InstallStatus.INSTALLED
    stored = await world.references.get(TENANT, f"user:{user(3)}")
    assert stored is not None and stored.active and stored.confirmed_at is None
    wire = stored.reference.to_json()
    assert wire == {
        "user": {"id": user(3), "aadObjectId": user(3)},
        "bot": {"id": f"28:{BOT}"},
        "conversation": {
            "id": f"19:{user(3)}_{BOT}@unq.gbl.spaces",
            "conversationType": "personal",
            "tenantId": TENANT,
        },
        "channelId": "msteams",
        "serviceUrl": TEAMS_URL,
    }
    # A second request finds the active reference and calls Graph no more.
    before = world.service.stats.to_json()
    again = await world.installer().install_user(TENANT, user(3))
    assert again.status is InstallStatus.REFERENCE_EXISTS
    assert world.service.stats.to_json()["requests"] == before["requests"]


async def test_an_app_installed_already_is_success_and_takes_the_tenants_service_url(world: World) -> None:
    other = "https://smba.trafficmanager.net/amer/"
    await world.references.upsert(
        stored_reference(
            TENANT,
            user(20),
            conversation_id="a:other",
            service_url=other,
            bot_id=f"28:{BOT}",
            conversation_in_tenant=False,
            updated_at=datetime.now(UTC),
        )
    )
    assert await world.graph.install_for_user(TENANT, user(4), CATALOG) is True  # installed by hand

    outcome = await world.installer().install_user(TENANT, user(4))

    assert outcome.status is InstallStatus.ALREADY_INSTALLED
    assert outcome.reference is not None and outcome.reference.reference.service_url == other


@pytest.mark.parametrize("reason", ["MessageWritesBlocked", "ConversationBlockedByUser", "uninstalled"])
async def test_a_user_who_closed_the_bot_is_never_reinstalled(world: World, reason: str) -> None:
    await world.references.upsert(
        stored_reference(
            TENANT,
            user(5),
            conversation_id="a:closed",
            service_url=TEAMS_URL,
            bot_id=f"28:{BOT}",
            active=False,
            stale_reason=reason,
            conversation_in_tenant=False,
            updated_at=datetime.now(UTC),
        )
    )

    outcome = await world.installer().install_user(TENANT, user(5))

    assert outcome.status is InstallStatus.USER_CLOSED and outcome.reason == reason
    assert world.service.stats.to_json()["installs"] == {}


async def test_the_setting_allows_reinstalling_after_an_uninstall_but_never_after_a_block(
    world: World,
) -> None:
    for n, reason in ((6, "uninstalled"), (7, "MessageWritesBlocked")):
        await world.references.upsert(
            stored_reference(
                TENANT,
                user(n),
                conversation_id=f"a:{n}",
                service_url=TEAMS_URL,
                bot_id=f"28:{BOT}",
                active=False,
                stale_reason=reason,
                conversation_in_tenant=False,
                updated_at=datetime.now(UTC),
            )
        )
    installer = world.installer(reinstall_after_uninstall=True)

    assert (await installer.install_user(TENANT, user(6))).status is InstallStatus.INSTALLED
    assert (await installer.install_user(TENANT, user(7))).status is InstallStatus.USER_CLOSED


# ---- worker -----------------------------------------------------------------------------------------


def closed_reference(aad: str, reason: str) -> StoredReference:
    return stored_reference(
        TENANT,
        aad,
        conversation_id="a:closed",
        service_url=TEAMS_URL,
        bot_id=f"28:{BOT}",
        active=False,
        stale_reason=reason,
        conversation_in_tenant=False,
        updated_at=datetime.now(UTC),
    )


def message(aad: str, **extra: Any) -> bytes:
    body = InstallRequest(tenant_id=TENANT, aad_object_id=aad, reason="no_reference", **extra).to_json()
    return json.dumps(body).encode()


async def test_an_installed_user_s_row_is_redriven_once_in_the_same_broadcast(world: World) -> None:
    await world.stale_row(user(8))
    worker = world.worker()

    result = await worker.handle(message(user(8), notification_id=NID))

    assert result.handled is InstallHandled.INSTALLED and result.redriven
    row = await world.row(user(8))
    assert row.status is DeliveryStatus.PENDING and row.not_before is not None
    assert row.last_operation == REINSTALLED
    assert await world.messages("retry") == [
        RetryRequest(
            notification_id=NID, tenant_id=TENANT, recipient_key=f"user:{user(8)}", reason=REINSTALLED
        ).to_json()
    ]
    # One token per Graph request: the catalog lookup (cached afterwards), the install and, as this emulator
    # posts no install event, the installation and its chat.
    assert world.pacer.admissions == 4 and world.pacer.reports == [{"sent": 4}]

    # The same row stale again (its re-drive failed the same way) is not re-driven a second time.
    stale = row.model_copy(update={"status": DeliveryStatus.STALE})
    found = await world.ledger.get(NID, TENANT, f"user:{user(8)}")
    assert found is not None
    await world.ledger.replace(stale, found.etag)
    await world.references.deactivate(TENANT, f"user:{user(8)}", "ConversationNotFound", datetime.now(UTC))
    again = await worker.handle(message(user(8), notification_id=NID))
    assert again.handled is InstallHandled.INSTALLED and not again.redriven
    assert (await world.row(user(8))).status is DeliveryStatus.STALE


async def test_a_users_message_installs_each_under_one_report_and_redrives_their_installing_rows(
    world: World,
) -> None:
    users = [user(n) for n in (11, 12, 13)]
    for aad in users:
        await world.stale_row(aad, DeliveryStatus.INSTALLING)
    body = InstallRequest(
        tenant_id=TENANT, aad_object_ids=tuple(users), reason="no_reference", notification_id=NID
    )

    result = await world.worker().handle(json.dumps(body.to_json()).encode())

    assert result.by_user == {aad: InstallHandled.INSTALLED for aad in users}
    assert [(await world.row(aad)).status for aad in users] == [DeliveryStatus.PENDING] * 3
    assert len(await world.messages("retry")) == 3
    # One report for the message: the catalog lookup once, then install, installation and chat per user.
    assert world.pacer.reports == [{"sent": 1 + 3 * 3}] and world.pacer.admissions == 10
    assert world.service.stats.to_json()["installs"] == {TENANT: 3}


async def test_a_user_who_closed_the_bot_meanwhile_leaves_the_installing_row_unreachable(
    world: World,
) -> None:
    await world.stale_row(user(14), DeliveryStatus.INSTALLING)
    await world.references.upsert(closed_reference(user(14), "MessageWritesBlocked"))

    result = await world.worker().handle(message(user(14), notification_id=NID))

    assert result.handled is InstallHandled.USER_CLOSED
    row = await world.row(user(14))
    assert row.status is DeliveryStatus.UNREACHABLE and row.last_error is not None
    assert row.last_error.code == "MessageWritesBlocked"
    assert world.pacer.admissions == 0 and world.service.stats.to_json()["installs"] == {}


async def test_a_channel_whose_team_has_no_reference_is_installed_in_the_team_and_redriven(
    world: World,
) -> None:
    key = f"channel:{ALERTS}"
    await world.stale_row("", DeliveryStatus.INSTALLING, key=key)
    request = InstallRequest(tenant_id=TENANT, channel_id=ALERTS, reason="no_reference", notification_id=NID)

    result = await world.worker().handle(json.dumps(request.to_json()).encode())

    assert result.handled is InstallHandled.INSTALLED and result.redriven
    assert result.outcome is not None and result.outcome.status is InstallStatus.INSTALLED
    found = await world.ledger.get(NID, TENANT, key)
    assert found is not None and found.value.status is DeliveryStatus.PENDING
    # The team's General channel and the channel the broadcast named, stored as capture would.
    for channel in (GENERAL, ALERTS):
        stored = await world.references.get(TENANT, f"channel:{channel}")
        assert stored is not None and stored.active and stored.confirmed_at is None
        assert stored.team_id == GENERAL and stored.reference.conversation.id == channel
        assert stored.reference.conversation.conversation_type == "channel"
        assert stored.reference.service_url == TEAMS_URL
    calls = world.service.stats.to_json()["requests"]
    assert calls["POST /teams/{team}/installedApps"] == {"201": 1}
    assert calls["GET /teams/{team}/primaryChannel"] == {"200": 1}

    # Installed already (409): the same references, nothing installed twice.
    again = await world.worker().handle(json.dumps(request.to_json()).encode())
    assert again.outcome is not None and again.outcome.status is InstallStatus.ALREADY_INSTALLED
    assert world.service.stats.to_json()["requests"]["POST /teams/{team}/installedApps"] == {
        "201": 1,
        "409": 1,
    }


async def test_a_team_known_only_by_its_bot_framework_id_fails_its_row_with_the_reason(world: World) -> None:
    key = f"channel:{ALERTS}"
    await world.stale_row("", DeliveryStatus.INSTALLING, key=key)
    request = InstallRequest(
        tenant_id=TENANT, team_id=GENERAL, channel_id=ALERTS, reason="x", notification_id=NID
    )

    result = await world.worker().handle(json.dumps(request.to_json()).encode())

    assert result.error_code == "team_not_addressable"
    found = await world.ledger.get(NID, TENANT, key)
    assert found is not None and found.value.status is DeliveryStatus.FAILED
    assert found.value.last_error is not None and "Entra group id" in found.value.last_error.message
    assert world.pacer.admissions == 0


async def test_a_429_puts_the_message_back_after_retry_after(world: World) -> None:
    world.fault("installUser", 429, retry_after=1)

    result = await world.worker().handle(message(user(9)))

    assert result.handled is InstallHandled.REQUEUED and result.error_code == "Throttled"
    assert world.pacer.reports == [{"sent": 1, "throttled": 1, "retry_after": 1.0}]  # the catalog went
    assert await world.messages("installs") == []  # invisible for the Retry-After
    await asyncio.sleep(1.3)
    assert await world.messages("installs") == [
        InstallRequest(tenant_id=TENANT, aad_object_id=user(9), reason="no_reference", throttled=1).to_json()
    ]


async def test_a_transient_graph_failure_raises_so_the_queue_redelivers(world: World) -> None:
    world.fault("chat", 503)

    with pytest.raises(InstallRetryLater):
        await world.worker().handle(message(user(10)))

    assert world.pacer.reports == [{"sent": 3, "server_errors": 1}]  # catalog, install, installation


async def test_the_fifth_failure_across_put_back_copies_goes_to_the_poison_queue(world: World) -> None:
    world.service.set_faults([FaultRule(operation="installUser", status=503, rate=1.0)])
    worker = world.worker()

    # A copy put back earlier (e.g. while the limiter held the tenant) after two failed deliveries,
    # delivered for the third time now: 2 + 2 earlier failures, this one is the fifth.
    result = await worker.handle(message(user(14), failures=2), dequeue_count=3)

    assert result.handled is InstallHandled.POISONED
    poisoned = await world.messages("installs-poison")
    assert poisoned == [
        InstallRequest(tenant_id=TENANT, aad_object_id=user(14), reason="no_reference", failures=5).to_json()
    ]
    with pytest.raises(InstallRetryLater):
        await worker.handle(message(user(15)), dequeue_count=4)  # the fourth: the queue redelivers


async def test_no_consent_fails_the_rows_and_records_the_tenant_once(world: World) -> None:
    world.service.set_faults([FaultRule(operation="installUser", status=403, rate=1.0)])
    for n in (11, 12):
        await world.stale_row(user(n))

    results = [await world.worker().handle(message(user(n), notification_id=NID)) for n in (11, 12)]

    assert [r.handled for r in results] == [InstallHandled.FAILED] * 2
    for n in (11, 12):
        row = await world.row(user(n))
        assert row.status is DeliveryStatus.FAILED and row.last_error is not None
        assert row.last_error.code == INSTALL_FAILED and row.last_error.message.startswith(CONSENT_REQUIRED)
        assert row.last_error.http_status == 403
    day = datetime.now(UTC).strftime("%Y%m%d")
    letters = (await world.dead_letters.list_day(day)).items
    assert [letter.id for letter in letters] == [f"consent:{TENANT}"]
    url = f"https://login.microsoftonline.com/{TENANT}/adminconsent?client_id={BOT}"
    assert letters[0].payload["adminConsentUrl"] == url and url in letters[0].reason


async def test_an_unknown_user_fails_with_graph_s_code(world: World) -> None:
    await world.stale_row("gone-user")

    result = await world.worker().handle(message("gone-user", notification_id=NID))

    assert result.handled is InstallHandled.FAILED and result.error_code == "Request_ResourceNotFound"
    row = await world.row("gone-user")
    assert row.status is DeliveryStatus.FAILED and row.last_error is not None
    assert row.last_error.code == INSTALL_FAILED and "Request_ResourceNotFound" in row.last_error.message


async def test_a_poisoned_install_becomes_a_dead_letter_and_its_row_dead_lettered(world: World) -> None:
    await world.stale_row(user(13))

    entry = await world.worker().dead_letter(message(user(13), notification_id=NID, throttled=3))

    assert entry.id == f"install:{TENANT}:{user(13)}"
    assert entry.reason == "install retries exhausted (no_reference, throttled 3 times)"
    day = entry.created_at.strftime("%Y%m%d")
    assert [d.id for d in (await world.dead_letters.list_day(day)).items] == [entry.id]
    row = await world.row(user(13))
    assert row.status is DeliveryStatus.DEAD_LETTERED and row.last_error is not None
    assert row.last_error.code == INSTALL_FAILED


async def test_malformed_team_and_foreign_tenant_requests_are_dead_lettered_at_once(world: World) -> None:
    worker = world.worker(tenant_allowed=lambda tenant: tenant == TENANT)
    malformed = await worker.handle(b'{"tenantId": ""}')
    team = await worker.handle(
        json.dumps(InstallRequest(tenant_id=TENANT, team_id="team-1", reason="x").to_json()).encode()
    )
    other = "0f0f0f0f-0000-4000-8000-00000000000f"
    foreign = [
        await worker.handle(
            json.dumps(InstallRequest(tenant_id=t, aad_object_id=user(1), reason="x").to_json()).encode()
        )
        for t in (other, "../common")
    ]

    assert malformed.handled is InstallHandled.DEAD_LETTERED
    # Graph installs a team by its Entra group id only.
    assert team.handled is InstallHandled.DEAD_LETTERED and team.error_code == "team_not_addressable"
    assert [r.error_code for r in foreign] == ["tenant_not_allowed"] * 2
    assert world.pacer.admissions == 0 and world.service.stats.to_json()["tokensIssued"] == 0


# ---- audiences ---------------------------------------------------------------------------------------


async def materialise_all(materialiser: AudienceMaterialiser, tenant: str) -> tuple[int, list[str | None]]:
    """Run materialise calls as the orchestration does, until the cursor is None; (rows added, cursors)."""
    cursor: str | None = None
    added = 0
    cursors: list[str | None] = []
    while True:
        page = await materialiser.materialise(NID, tenant, cursor)
        added += page.added
        cursor = page.cursor
        cursors.append(cursor)
        if cursor is None:
            return added, cursors


async def big_directory_world(world: World) -> None:
    members = [UserConfig(id=f"10000000-0000-4000-8000-{n:012d}") for n in range(2500)]
    guests = [UserConfig(id=f"20000000-0000-4000-8000-{n:012d}", user_type="Guest") for n in range(7)]
    groups = [
        GroupConfig(id=GROUP, members=[m.id for m in members[:1400]] + [NESTED] + [g.id for g in guests]),
        GroupConfig(id=NESTED, members=[m.id for m in members[1300:]] + [GROUP]),  # overlap and a cycle
        GroupConfig(id=EMPTY, members=[]),
    ]
    app = TeamsAppConfig(id=CATALOG, external_id=MANIFEST, display_name="Notifier", bot_id=BOT)
    tenant = TenantConfig(id=TENANT, users=members + guests, groups=groups, apps=[app])
    world.service.configure(GraphEmulatorConfig(tenants=[tenant], default_page_size=100))


GROUP = "0aaaaaaa-0000-4000-8000-00000000000a"
NESTED = "0bbbbbbb-0000-4000-8000-00000000000b"
EMPTY = "0ccccccc-0000-4000-8000-00000000000c"
MISSING = "0ddddddd-0000-4000-8000-00000000000d"


async def store_request(world: World, audience: dict[str, Any]) -> None:
    body = {"notificationId": NID, "audience": audience, "message": {"text": "hi"}}
    parsed = parse_broadcast_request(json.dumps(body).encode(), now=datetime.now(UTC))
    await world.notifications.create(
        Notification(id=NID, request=parsed.to_json(), created_at=datetime.now(UTC))
    )


def materialiser(world: World, rows_per_call: int) -> AudienceMaterialiser:
    async def graph() -> GraphClient:
        return world.graph

    return AudienceMaterialiser(
        world.notifications,
        world.references,
        world.ledger,
        tenant_allowed=lambda tenant: True,
        clock=lambda: datetime.now(UTC),
        rows_per_call=rows_per_call,
        graph=graph,
    )


async def test_a_2500_member_group_is_materialised_over_pages_and_calls_once_each_without_guests(
    world: World,
) -> None:
    await big_directory_world(world)
    groups = [{"tenantId": TENANT, "groupId": g} for g in (GROUP, MISSING, EMPTY)]
    await store_request(world, {"groups": groups})

    added, cursors = await materialise_all(materialiser(world, rows_per_call=1000), TENANT)

    assert added == 2500  # each member once, the guests and the unknown group left out
    assert len(cursors) == 3 and all(c is not None and c.startswith("g:0:http") for c in cursors[:-1])
    rows = []
    continuation = None
    while True:
        page = await world.ledger.list(NID, TENANT, continuation=continuation)
        rows += [r.value for r in page.items]
        continuation = page.continuation
        if continuation is None:
            break
    assert len(rows) == 2500 and all(r.status is DeliveryStatus.PENDING for r in rows)
    assert not any(r.recipient_key.startswith("user:20000000") for r in rows)
    calls = world.service.stats.to_json()["requests"]
    assert calls["GET /groups/{group}/transitiveMembers"] == {"200": 27, "404": 1}


async def test_guests_are_included_when_asked_and_a_repeated_call_adds_nothing(world: World) -> None:
    await big_directory_world(world)
    await store_request(world, {"groups": [{"tenantId": TENANT, "groupId": GROUP}], "includeGuests": True})

    added, _ = await materialise_all(materialiser(world, rows_per_call=5000), TENANT)
    again, _ = await materialise_all(materialiser(world, rows_per_call=5000), TENANT)

    assert (added, again) == (2507, 0)


async def test_include_uninstalled_adds_the_directory_after_the_references(world: World) -> None:
    await store_request(world, {"tenants": [TENANT], "includeUninstalled": True})
    await world.references.upsert(
        stored_reference(
            TENANT,
            "19:ops@thread.tacv2",
            kind=RecipientKind.CHANNEL,
            conversation_id="19:ops@thread.tacv2",
            service_url=TEAMS_URL,
            bot_id=f"28:{BOT}",
            team_id="19:team@thread.tacv2",
            conversation_in_tenant=False,
            updated_at=datetime.now(UTC),
        )
    )

    added, cursors = await materialise_all(materialiser(world, rows_per_call=10), TENANT)

    assert added == 1 + 30  # the channel's reference, then 30 members (the guest left out)
    assert any(c is not None and c.startswith("d:http") for c in cursors)


async def test_a_tenant_without_graph_consent_keeps_its_other_rows(world: World) -> None:
    world.service.set_faults([FaultRule(operation="transitiveMembers", status=403, rate=1.0)])
    await store_request(
        world,
        {
            "users": [{"tenantId": TENANT, "aadObjectId": user(1)}],
            "groups": [{"tenantId": TENANT, "groupId": GROUP}],
        },
    )

    added, cursors = await materialise_all(materialiser(world, rows_per_call=10), TENANT)

    assert (added, cursors) == (1, [None])
