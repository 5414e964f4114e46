"""Every setting of the product, resolved once from the environment.

``Settings.from_env(os.environ)`` is called by the composition root at start. Every default lives here;
nothing else in the product reads the environment. A missing or malformed setting raises
:class:`~proactive.errors.ConfigurationError` naming it, so a bad deployment fails at start rather
than on the first broadcast.

Names follow Azure Functions conventions (``AzureWebJobsStorage``) and the Bot Framework's
(``MicrosoftAppId``, ``MicrosoftAppPassword``, ``MicrosoftAppTenantId``, ``MicrosoftAppType``), so an
existing bot's app settings carry over.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from urllib.parse import urlsplit

from proactive.errors import ConfigurationError

# Always fullmatch: with re.match, "$" also matches before a trailing newline.
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")
_QUEUE_NAME = re.compile(r"(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_POISON_SUFFIX_LENGTH = len("-poison")  # the host appends it; the queue name must leave room
FUNCTION_TIMEOUT_SECONDS = 600.0
"""host.json ``functionTimeout`` (``00:10:00``); a test pins that the two agree."""


class Secret(str):
    """A string that never shows itself in ``repr``, logs or tracebacks of settings."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"


class BotAuthKind(StrEnum):
    """How the bot proves its identity to the Bot Connector and Graph."""

    ANONYMOUS = "anonymous"  # BOT_AUTH=anonymous: local development only (devhost, Bot Framework Emulator)
    SECRET = "secret"  # client secret (MicrosoftAppPassword)
    CERTIFICATE = "certificate"  # PEM file with private key and certificate (MicrosoftAppCertificatePath)
    MANAGED_IDENTITY = "managed_identity"  # user-assigned managed identity (MicrosoftAppType=UserAssignedMSI)


@dataclass(frozen=True)
class BotIdentity:
    """The bot's Entra app registration."""

    app_id: str
    tenant_id: str
    auth: BotAuthKind
    secret: Secret = field(default=Secret(""), repr=False)
    certificate_path: str = ""

    @property
    def anonymous(self) -> bool:
        return self.auth is BotAuthKind.ANONYMOUS


@dataclass(frozen=True)
class Cloud:
    """Where the bot's identity, the Bot Connector and Graph live: one setting (``BOT_CLOUD``) picks all.

    Token scope, accepted issuer, signing keys, authority and the outbound allow-list must name the same
    cloud: a public-cloud token sent to a GCC High host is refused there, and a public-cloud issuer
    accepted beside GCC High hosts mixes two trust domains. Sources: the Bot Framework's public and US
    Government authentication constants (``reference/teams-platform-facts.md`` section 2, the Agents
    SDK's ``AuthenticationConstants``) and Graph's national cloud endpoints.

    Attributes:
        name: the ``BOT_CLOUD`` value.
        authority_host: Entra ID login host for the client-credentials token.
        multi_tenant_authority: the authority tenant of a multi-tenant bot.
        bot_scope: scope of the bot's outbound token.
        bot_issuer: the ``iss`` of tokens the channel sends to the bot.
        openid_metadata_url: where the channel's signing keys are published.
        graph_base_url: Microsoft Graph.
        connector_hosts: Bot Connector hosts that may receive the token (``*.name`` = any subdomain).
        graph_hosts: Graph hosts that may receive the Graph token.
    """

    name: str
    authority_host: str
    multi_tenant_authority: str
    bot_scope: str
    bot_issuer: str
    openid_metadata_url: str
    graph_base_url: str
    connector_hosts: tuple[str, ...]
    graph_hosts: tuple[str, ...]


_PUBLIC = Cloud(
    name="public",
    authority_host="https://login.microsoftonline.com",
    multi_tenant_authority="botframework.com",
    bot_scope="https://api.botframework.com/.default",
    bot_issuer="https://api.botframework.com",
    openid_metadata_url="https://login.botframework.com/v1/.well-known/openidconfiguration",
    graph_base_url="https://graph.microsoft.com/v1.0",
    # GCC (Moderate) tenants are served by the commercial Bot Framework from *.teams.microsoft.com.
    connector_hosts=("*.botframework.com", "smba.trafficmanager.net", "*.teams.microsoft.com"),
    graph_hosts=("graph.microsoft.com",),
)
_US_GOVERNMENT = Cloud(
    name="gcchigh",
    authority_host="https://login.microsoftonline.us",
    multi_tenant_authority="MicrosoftServices.onmicrosoft.us",
    bot_scope="https://api.botframework.us/.default",
    bot_issuer="https://api.botframework.us",
    openid_metadata_url="https://login.botframework.azure.us/v1/.well-known/openidconfiguration",
    graph_base_url="https://graph.microsoft.us/v1.0",
    connector_hosts=("*.botframework.us", "*.teams.microsoft.us"),
    graph_hosts=("graph.microsoft.us",),
)
CLOUDS: Mapping[str, Cloud] = {
    "public": _PUBLIC,
    "gcc": replace(_PUBLIC, name="gcc"),  # GCC Moderate: the commercial cloud's identity and hosts
    "gcchigh": _US_GOVERNMENT,
    "dod": replace(
        _US_GOVERNMENT,
        name="dod",
        graph_base_url="https://dod-graph.microsoft.us/v1.0",
        graph_hosts=("dod-graph.microsoft.us",),
    ),
}
"""Every ``BOT_CLOUD`` value."""


@dataclass(frozen=True)
class TableNames:
    references: str = "references"
    preferences: str = "preferences"
    notifications: str = "notifications"
    deliveries: str = "deliveries"
    deadletters: str = "deadletters"
    threads: str = "threads"


@dataclass(frozen=True)
class QueueNames:
    deliveries_retry: str = "deliveries-retry"
    installs: str = "installs"


_PROXY_VARIABLES = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"})
_STORAGE_ACCOUNT_NAME = re.compile(r"^[a-z0-9]{3,24}$")


@dataclass(frozen=True)
class StorageAccount:
    """The storage account of ``AzureWebJobsStorage``: the product's tables and queues live beside the host's.

    Either shape the Functions host accepts: a connection string (Azurite, classic plans), or an
    identity-based connection (``AzureWebJobsStorage__accountName`` and friends, as Flex Consumption
    templates set it), where the adapters authenticate with a managed identity or ``DefaultAzureCredential``.
    """

    connection_string: Secret = field(default=Secret(""), repr=False)
    table_service_uri: str = ""
    queue_service_uri: str = ""
    # "managedidentity" = ManagedIdentityCredential only (what the host does in Azure with that value);
    # empty = DefaultAzureCredential (environment, workload and managed identity, then developer logins).
    credential: str = ""
    client_id: str = ""  # a user-assigned identity's client id; empty = the system-assigned identity

    @property
    def identity_based(self) -> bool:
        """Whether the adapters authenticate with an Entra token rather than the connection string."""
        return not self.connection_string

    @property
    def managed_identity_only(self) -> bool:
        """Whether ``__credential=managedidentity`` asks for the app's managed identity and nothing else."""
        return self.credential == "managedidentity"


def _storage_account(env: _Env) -> StorageAccount:
    """``AzureWebJobsStorage`` as the Functions host reads it: a connection string wins, as in the host."""
    connection_string = env.text("AzureWebJobsStorage", "")
    if connection_string:
        return StorageAccount(connection_string=Secret(connection_string))
    account = env.text("AzureWebJobsStorage__accountName", "")
    if account and not _STORAGE_ACCOUNT_NAME.match(account):
        raise ConfigurationError(
            "AzureWebJobsStorage__accountName",
            "must be a storage account name (3-24 lowercase letters, digits)",
        )
    table_uri = env.text("AzureWebJobsStorage__tableServiceUri", "")
    queue_uri = env.text("AzureWebJobsStorage__queueServiceUri", "")
    if not (account or table_uri or queue_uri):
        raise ConfigurationError(
            "AzureWebJobsStorage",
            "is required: a connection string, or AzureWebJobsStorage__accountName "
            "for an identity-based connection",
        )
    # Explicit service URIs (sovereign clouds, private endpoints) win over the public-cloud defaults.
    table_uri = table_uri or (f"https://{account}.table.core.windows.net" if account else "")
    queue_uri = queue_uri or (f"https://{account}.queue.core.windows.net" if account else "")
    if not table_uri:
        raise ConfigurationError("AzureWebJobsStorage__tableServiceUri", "is required without __accountName")
    if not queue_uri:
        raise ConfigurationError("AzureWebJobsStorage__queueServiceUri", "is required without __accountName")
    for name, uri in (
        ("AzureWebJobsStorage__tableServiceUri", table_uri),
        ("AzureWebJobsStorage__queueServiceUri", queue_uri),
    ):
        if urlsplit(uri).scheme != "https" or not urlsplit(uri).hostname:
            # A bearer token is only ever sent over TLS (the SDK refuses otherwise, later and less clearly).
            raise ConfigurationError(name, f"must be an https URL, got {uri!r}")
    credential = env.text("AzureWebJobsStorage__credential", "").lower()
    if credential not in {"", "managedidentity"}:
        raise ConfigurationError("AzureWebJobsStorage__credential", "must be managedidentity or unset")
    client_id = env.text("AzureWebJobsStorage__clientId", "")
    if client_id and not _GUID.match(client_id):
        raise ConfigurationError(
            "AzureWebJobsStorage__clientId", "must be a user-assigned identity's client id, a GUID"
        )
    return StorageAccount(
        table_service_uri=table_uri.rstrip("/"),
        queue_service_uri=queue_uri.rstrip("/"),
        credential=credential,
        client_id=client_id,
    )


@dataclass(frozen=True)
class Settings:
    """The resolved configuration. Build with :meth:`from_env`; never mutate."""

    storage: StorageAccount
    bot: BotIdentity
    teams_app_id: str
    tenant_allow_list: frozenset[str] | None  # None = every tenant (explicit "*")
    send_rate_per_tenant: float
    send_rate_overrides: Mapping[str, float]
    graph_rate_per_tenant: float
    batch_size: int
    batches_per_execution: int
    max_send_attempts: int
    send_concurrency: int
    send_timeout_seconds: float
    send_retry_base_seconds: float
    send_retry_max_seconds: float
    send_max_retry_after_seconds: float
    retry_handoff_seconds: float
    reconcile_after_seconds: float
    tables: TableNames
    queues: QueueNames
    cloud: Cloud
    graph_base_url: str
    authority_host: str
    bot_openid_metadata_url: str
    dev_outbound_hosts: frozenset[str]
    status_retry_after_seconds: int = 5
    app_insights_connection: Secret = field(default=Secret(""), repr=False)
    # Whether the storage clients read proxy settings (and ~/.netrc) from the environment: only when a proxy
    # variable is set. aiohttp reads ~/.netrc on a worker thread for *every* request of a client that
    # trusts the environment, a quarter of the devhost's CPU per message over Azurite.
    proxy_from_environment: bool = False
    # Graph proactive installs (issue 14): the Bot Connector URL of a tenant none of whose references is
    # known yet, and whether users who uninstalled the app themselves may be reinstalled (mandatory apps).
    teams_service_url: str = "https://smba.trafficmanager.net/teams"
    graph_reinstall_after_uninstall: bool = False

    def tenant_allowed(self, tenant_id: str) -> bool:
        """Whether activities, references and broadcasts of ``tenant_id`` may be handled."""
        return self.tenant_allow_list is None or tenant_id.lower() in self.tenant_allow_list

    def send_rate_for(self, tenant_id: str) -> float:
        """Messages per second allowed for ``tenant_id`` (override, else the default)."""
        return self.send_rate_overrides.get(tenant_id.lower(), self.send_rate_per_tenant)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Resolve every setting from ``environ`` (``os.environ`` or a test dict).

        Raises:
            ConfigurationError: a required setting is missing or a value is malformed; the
                message names the setting.
        """
        env = _Env(environ)
        bot = _bot_identity(env)
        cloud_name = env.text("BOT_CLOUD", "public").lower()
        if cloud_name not in CLOUDS:
            raise ConfigurationError("BOT_CLOUD", f"must be one of {', '.join(CLOUDS)}, got {cloud_name!r}")
        cloud = CLOUDS[cloud_name]
        allow_default = "*" if bot.anonymous else None
        if not env.boolean("FUNCTION_KEY_REQUIRED", True):
            # The auth level is fixed in each trigger's decorator; a setting that claimed to lift it would
            # be read and silently ignored. Put Entra ID (Easy Auth, API Management) in front instead.
            raise ConfigurationError(
                "FUNCTION_KEY_REQUIRED",
                "is no longer supported: management routes always need a function key; remove the setting",
            )
        dev_outbound_hosts = env.host_list("DEV_OUTBOUND_HOSTS")
        if dev_outbound_hosts and not bot.anonymous:
            # A loopback or private host on the allow-list would receive the bot's real token.
            raise ConfigurationError(
                "DEV_OUTBOUND_HOSTS", "is for local development only and needs BOT_AUTH=anonymous"
            )
        tables = TableNames(
            **{
                name: env.table_name(f"TABLE_{name.upper()}", default)
                for name, default in TableNames().__dict__.items()
            }
        )
        queues = QueueNames(
            deliveries_retry=env.queue_name("QUEUE_DELIVERIES_RETRY", QueueNames.deliveries_retry),
            installs=env.queue_name("QUEUE_INSTALLS", QueueNames.installs),
        )
        return cls(
            storage=_storage_account(env),
            bot=bot,
            teams_app_id=env.text("TEAMS_APP_ID", ""),
            tenant_allow_list=env.tenant_list("TENANT_ALLOW_LIST", allow_default),
            send_rate_per_tenant=env.number("SEND_RATE_PER_TENANT", 50.0, low=0.1, high=1000.0),
            send_rate_overrides=env.rate_overrides("SEND_RATE_OVERRIDES"),
            graph_rate_per_tenant=env.number("GRAPH_RATE_PER_TENANT", 30.0, low=0.1, high=300.0),
            batch_size=env.integer("BATCH_SIZE", 50, low=1, high=1000),
            batches_per_execution=env.integer("BATCHES_PER_EXECUTION", 20, low=1, high=1000),
            max_send_attempts=env.integer("MAX_SEND_ATTEMPTS", 5, low=1, high=20),
            # Rows a send_batch works on at once. Paced at 20 ms a slot, a request that takes 300 ms (real
            # Teams) keeps about 15 in flight, plus rows in their claim and lookups: 32 keeps every slot fed.
            send_concurrency=env.integer("SEND_CONCURRENCY", 32, low=1, high=256),
            send_timeout_seconds=env.number("SEND_TIMEOUT_SECONDS", 30.0, low=0.1, high=300.0),
            send_retry_base_seconds=env.number("SEND_RETRY_BASE_SECONDS", 0.5, low=0.0, high=60.0),
            send_retry_max_seconds=env.number("SEND_RETRY_MAX_SECONDS", 30.0, low=0.0, high=600.0),
            # A longer Retry-After ends the in-process retries: the limiter and the retry queue own that wait.
            send_max_retry_after_seconds=env.number(
                "SEND_MAX_RETRY_AFTER_SECONDS", 60.0, low=0.0, high=3600.0
            ),
            # How long a row handed to the deliveries-retry queue waits before it is tried again.
            retry_handoff_seconds=env.number("RETRY_HANDOFF_SECONDS", 60.0, low=0.0, high=3600.0),
            # Rows 'sending' longer than this are re-driven; it must exceed host.json functionTimeout
            # (10 min) so a send still in flight is never re-driven.
            reconcile_after_seconds=_reconcile_after(env),
            tables=tables,
            queues=queues,
            cloud=cloud,
            # GRAPH_BASE_URL, AUTHORITY_HOST and BOT_OPENID_METADATA_URL default to BOT_CLOUD's; set them only
            # to point at an emulator or a test server.
            graph_base_url=env.url("GRAPH_BASE_URL", cloud.graph_base_url),
            # The client secret or certificate assertion goes there: never over plain http. An anonymous bot
            # (local development only, refused in Azure) has no secret to lose: it may use a loopback
            # emulator (devhost run points Graph's token requests at its Graph emulator).
            authority_host=env.url(
                "AUTHORITY_HOST", cloud.authority_host, https_only=True, loopback_http=bot.anonymous
            ),
            # The signing keys come from there: https, or http to loopback only (a local test server), the
            # rule BotAuthSettings enforces, checked here so a bad value fails at start, not on a request.
            bot_openid_metadata_url=env.url(
                "BOT_OPENID_METADATA_URL",
                cloud.openid_metadata_url,
                https_only=True,
                loopback_http=True,
            ),
            dev_outbound_hosts=dev_outbound_hosts,
            # Retry-After of the 202 answers: how often Logic Apps and Power Automate poll the status URL.
            status_retry_after_seconds=env.integer("STATUS_RETRY_AFTER_SECONDS", 5, low=1, high=600),
            app_insights_connection=Secret(env.text("APPLICATIONINSIGHTS_CONNECTION_STRING", "")),
            teams_service_url=env.url("TEAMS_SERVICE_URL", "https://smba.trafficmanager.net/teams"),
            graph_reinstall_after_uninstall=env.boolean("GRAPH_REINSTALL_AFTER_UNINSTALL", False),
            proxy_from_environment=any(
                value.strip() for key, value in environ.items() if key.upper() in _PROXY_VARIABLES
            ),
        )


def _reconcile_after(env: _Env) -> float:
    """``RECONCILE_AFTER_SECONDS``, which must exceed the host's ``functionTimeout``.

    A row still ``sending`` may belong to a ``send_batch`` that is alive until the function times out;
    re-driving it earlier sends the message twice. The timeout is host.json's, unless the app setting
    ``AzureFunctionsJobHost__functionTimeout`` overrides it (the host's own override mechanism).
    """
    name = "AzureFunctionsJobHost__functionTimeout"
    raw = env.text(name, "")
    timeout = FUNCTION_TIMEOUT_SECONDS
    if raw:
        match = re.fullmatch(r"(?:([0-9]+)\.)?([0-9]{1,2}):([0-9]{2}):([0-9]{2})", raw)
        if match is None:
            raise ConfigurationError(
                name, f"must be a bounded time span like 00:10:00 (reconciliation needs one), got {raw!r}"
            )
        days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
        timeout = float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    value = env.number("RECONCILE_AFTER_SECONDS", 900.0, low=1.0, high=86_400.0)
    if value <= timeout:
        raise ConfigurationError(
            "RECONCILE_AFTER_SECONDS",
            f"must exceed functionTimeout ({timeout:g} s), or a send still in flight is re-driven; got {value:g}",
        )
    return value


def _bot_identity(env: _Env) -> BotIdentity:
    mode = env.text("BOT_AUTH", "").lower()
    if mode not in {"", BotAuthKind.ANONYMOUS.value}:
        raise ConfigurationError(
            "BOT_AUTH", f"must be 'anonymous' (local development) or unset, got {mode!r}"
        )
    app_id = env.text("MicrosoftAppId", "")
    if mode == BotAuthKind.ANONYMOUS.value:
        # Anonymous means anyone can post activities: plant references, opt users out. Never in Azure.
        if env.text("WEBSITE_INSTANCE_ID", ""):
            raise ConfigurationError(
                "BOT_AUTH",
                "anonymous is refused in Azure (WEBSITE_INSTANCE_ID is set): configure MicrosoftAppId",
            )
        if app_id:
            raise ConfigurationError("BOT_AUTH", "anonymous cannot be combined with MicrosoftAppId")
        return BotIdentity(app_id="", tenant_id="", auth=BotAuthKind.ANONYMOUS)
    if not app_id:
        raise ConfigurationError(
            "MicrosoftAppId",
            "is required (the bot's Entra app id); for local development without tokens set BOT_AUTH=anonymous",
        )
    if not _GUID.fullmatch(app_id):
        raise ConfigurationError("MicrosoftAppId", "must be the bot's Entra application (client) id, a GUID")
    tenant_id = env.text("MicrosoftAppTenantId", "")
    app_type = env.text("MicrosoftAppType", "SingleTenant")
    if app_type not in {"SingleTenant", "MultiTenant", "UserAssignedMSI"}:
        raise ConfigurationError("MicrosoftAppType", "must be SingleTenant, MultiTenant or UserAssignedMSI")
    if app_type != "MultiTenant" and not _GUID.fullmatch(tenant_id):
        # New multi-tenant bot registrations were deprecated after 2025-07-31: single tenant is the norm.
        raise ConfigurationError(
            "MicrosoftAppTenantId", f"is required (a GUID) when MicrosoftAppType={app_type}"
        )
    if app_type == "UserAssignedMSI":
        return BotIdentity(app_id=app_id, tenant_id=tenant_id, auth=BotAuthKind.MANAGED_IDENTITY)
    secret = env.text("MicrosoftAppPassword", "")
    certificate = env.text("MicrosoftAppCertificatePath", "")
    if secret and certificate:
        raise ConfigurationError(
            "MicrosoftAppPassword", "set either it or MicrosoftAppCertificatePath, not both"
        )
    if certificate:
        return BotIdentity(app_id, tenant_id, BotAuthKind.CERTIFICATE, certificate_path=certificate)
    if not secret:
        raise ConfigurationError(
            "MicrosoftAppPassword",
            "is required when MicrosoftAppId is set (or set MicrosoftAppCertificatePath, "
            "or MicrosoftAppType=UserAssignedMSI)",
        )
    return BotIdentity(app_id, tenant_id, BotAuthKind.SECRET, secret=Secret(secret))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class _Env:
    environ: Mapping[str, str]

    def text(self, name: str, default: str) -> str:
        return self.environ.get(name, default).strip()

    def required(self, name: str) -> str:
        value = self.text(name, "")
        if not value:
            raise ConfigurationError(name, "is required")
        return value

    def number(self, name: str, default: float, *, low: float, high: float) -> float:
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigurationError(name, f"must be a number, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigurationError(name, f"must be between {low:g} and {high:g}, got {raw}")
        return value

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        raw = self.text(name, "")
        if not raw:
            return default
        if not re.fullmatch(r"[0-9]+", raw):
            raise ConfigurationError(name, f"must be a whole number, got {raw!r}")
        value = int(raw)
        if not low <= value <= high:
            raise ConfigurationError(name, f"must be between {low} and {high}, got {raw}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.text(name, "").lower()
        if not raw:
            return default
        if raw in {"1", "true", "yes"}:
            return True
        if raw in {"0", "false", "no"}:
            return False
        raise ConfigurationError(name, f"must be true or false, got {raw!r}")

    def url(self, name: str, default: str, *, https_only: bool = False, loopback_http: bool = False) -> str:
        raw = self.text(name, "") or default
        try:
            parts = urlsplit(raw)
            parts.port  # noqa: B018 - raises ValueError for a malformed port
        except ValueError:
            raise ConfigurationError(name, f"must be an absolute URL, got {raw!r}") from None
        schemes = {"https"} if https_only else {"http", "https"}
        if loopback_http and _is_loopback(parts.hostname or ""):
            schemes = {"http", "https"}
        if parts.scheme not in schemes or not parts.hostname:
            wanted = "an absolute https URL" if https_only else "an absolute http(s) URL"
            raise ConfigurationError(name, f"must be {wanted}, got {raw!r}")
        return raw.rstrip("/")

    def tenant_list(self, name: str, default: str | None) -> frozenset[str] | None:
        raw = self.text(name, "")
        if not raw:
            if default is None:
                raise ConfigurationError(
                    name, "is required when MicrosoftAppId is set: tenant ids separated by commas, or *"
                )
            raw = default
        if raw == "*":
            return None
        tenants = {item.strip().lower() for item in raw.split(",") if item.strip()}
        bad = sorted(t for t in tenants if not _GUID.fullmatch(t))
        if bad or not tenants:
            raise ConfigurationError(name, f"must be tenant GUIDs separated by commas, or *; bad: {bad}")
        return frozenset(tenants)

    def rate_overrides(self, name: str) -> Mapping[str, float]:
        raw = self.text(name, "")
        overrides: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in raw.split(","))):
            tenant, sep, rate = item.partition("=")
            try:
                value = float(rate)
            except ValueError:
                value = -1.0
            if not sep or not _GUID.fullmatch(tenant.strip()) or not 0.1 <= value <= 1000:
                raise ConfigurationError(name, f"expected tenantId=rate pairs (0.1..1000), got {item!r}")
            overrides[tenant.strip().lower()] = value
        return overrides

    def host_list(self, name: str) -> frozenset[str]:
        raw = self.text(name, "")
        hosts = {item.strip().lower() for item in raw.split(",") if item.strip()}
        for host in hosts:
            if not re.fullmatch(r"[a-z0-9.\-]+(:[0-9]{1,5})?", host):
                raise ConfigurationError(name, f"expected host or host:port entries, got {host!r}")
        return frozenset(hosts)

    def table_name(self, name: str, default: str) -> str:
        value = self.text(name, default)
        if not _TABLE_NAME.fullmatch(value):
            raise ConfigurationError(name, f"is not a valid table name (letters and digits, 3-63): {value!r}")
        return value

    def queue_name(self, name: str, default: str) -> str:
        value = self.text(name, default)
        if not _QUEUE_NAME.fullmatch(value) or len(value) > 63 - _POISON_SUFFIX_LENGTH:
            raise ConfigurationError(
                name, f"is not a valid queue name (lowercase, digits, dashes): {value!r}"
            )
        return value
