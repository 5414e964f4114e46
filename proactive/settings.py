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

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit

from proactive.errors import ConfigurationError

_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_QUEUE_NAME = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_POISON_SUFFIX_LENGTH = len("-poison")  # the host appends it; the queue name must leave room


class Secret(str):
    """A string that never shows itself in ``repr``, logs or tracebacks of settings."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"


class BotAuthKind(StrEnum):
    """How the bot proves its identity to the Bot Connector and Graph."""

    ANONYMOUS = "anonymous"  # no app id: local development (devhost, like the Bot Framework Emulator)
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
class TableNames:
    references: str = "references"
    preferences: str = "preferences"
    notifications: str = "notifications"
    deliveries: str = "deliveries"
    deadletters: str = "deadletters"


@dataclass(frozen=True)
class QueueNames:
    deliveries_retry: str = "deliveries-retry"
    installs: str = "installs"


_PROXY_VARIABLES = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"})


@dataclass(frozen=True)
class Settings:
    """The resolved configuration. Build with :meth:`from_env`; never mutate."""

    storage_connection: Secret = field(repr=False)
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
    graph_base_url: str
    authority_host: str
    bot_openid_metadata_url: str
    dev_outbound_hosts: frozenset[str]
    function_key_required: bool = True
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
        allow_default = "*" if bot.anonymous else None
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
            storage_connection=Secret(env.required("AzureWebJobsStorage")),
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
            reconcile_after_seconds=env.number("RECONCILE_AFTER_SECONDS", 900.0, low=1.0, high=86_400.0),
            tables=tables,
            queues=queues,
            graph_base_url=env.url("GRAPH_BASE_URL", "https://graph.microsoft.com/v1.0"),
            authority_host=env.url("AUTHORITY_HOST", "https://login.microsoftonline.com"),
            bot_openid_metadata_url=env.url(
                "BOT_OPENID_METADATA_URL", "https://login.botframework.com/v1/.well-known/openidconfiguration"
            ),
            dev_outbound_hosts=env.host_list("DEV_OUTBOUND_HOSTS"),
            function_key_required=env.boolean("FUNCTION_KEY_REQUIRED", True),
            app_insights_connection=Secret(env.text("APPLICATIONINSIGHTS_CONNECTION_STRING", "")),
            teams_service_url=env.url("TEAMS_SERVICE_URL", "https://smba.trafficmanager.net/teams"),
            graph_reinstall_after_uninstall=env.boolean("GRAPH_REINSTALL_AFTER_UNINSTALL", False),
            proxy_from_environment=any(
                value.strip() for key, value in environ.items() if key.upper() in _PROXY_VARIABLES
            ),
        )


def _bot_identity(env: _Env) -> BotIdentity:
    app_id = env.text("MicrosoftAppId", "")
    if not app_id:
        return BotIdentity(app_id="", tenant_id="", auth=BotAuthKind.ANONYMOUS)
    if not _GUID.match(app_id):
        raise ConfigurationError("MicrosoftAppId", "must be the bot's Entra application (client) id, a GUID")
    tenant_id = env.text("MicrosoftAppTenantId", "")
    app_type = env.text("MicrosoftAppType", "SingleTenant")
    if app_type not in {"SingleTenant", "MultiTenant", "UserAssignedMSI"}:
        raise ConfigurationError("MicrosoftAppType", "must be SingleTenant, MultiTenant or UserAssignedMSI")
    if app_type != "MultiTenant" and not _GUID.match(tenant_id):
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

    def url(self, name: str, default: str) -> str:
        raw = self.text(name, "") or default
        parts = urlsplit(raw)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigurationError(name, f"must be an absolute http(s) URL, got {raw!r}")
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
        bad = sorted(t for t in tenants if not _GUID.match(t))
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
            if not sep or not _GUID.match(tenant.strip()) or not 0.1 <= value <= 1000:
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
        if not _TABLE_NAME.match(value):
            raise ConfigurationError(name, f"is not a valid table name (letters and digits, 3-63): {value!r}")
        return value

    def queue_name(self, name: str, default: str) -> str:
        value = self.text(name, default)
        if not _QUEUE_NAME.match(value) or len(value) > 63 - _POISON_SUFFIX_LENGTH:
            raise ConfigurationError(
                name, f"is not a valid queue name (lowercase, digits, dashes): {value!r}"
            )
        return value
