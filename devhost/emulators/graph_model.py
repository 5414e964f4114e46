"""Configuration of the Microsoft Graph emulator: the directory it serves and how it behaves.

The same model is read from ``--config file.json``, from ``POST /_emulator/config`` and built in
tests. On the wire it is camelCase (``userPrincipalName``, ``installRatePerTenant``), in Python
snake_case; both spellings are accepted when parsing.

Example::

    {
      "tenants": [{
        "id": "tenant-a",
        "users": [{"id": "u1", "displayName": "Ada", "userPrincipalName": "ada@a.test"}],
        "groups": [{"id": "g1", "members": ["u1", "g2"]}, {"id": "g2", "members": []}],
        "teams": [{"id": "t1", "displayName": "Ops", "channels": [{"id": "19:general@thread.tacv2"}]}],
        "apps": [{"id": "catalog-id", "externalId": "manifest-id", "displayName": "Notifier"}]
      }],
      "messagingEndpoint": "http://127.0.0.1:7071/api/messages",
      "throttle": {"installPerTenant": 30},
      "faults": [{"operation": "installUser", "statuses": [503, 504]}]
    }
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

PUBLIC_TEAMS_SERVICE_URL = "https://smba.trafficmanager.net/teams/"


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class UserConfig(_Model):
    """An Entra ID user of one tenant."""

    id: str
    display_name: str = ""
    user_principal_name: str = ""
    user_type: Literal["Member", "Guest"] = "Member"
    mail: str | None = None


class GroupConfig(_Model):
    """An Entra ID group; ``members`` holds user ids and group ids of the same tenant (nesting)."""

    id: str
    display_name: str = ""
    members: list[str] = Field(default_factory=list)


class ChannelConfig(_Model):
    """A channel of a team; the first channel of a team is its General channel."""

    id: str
    display_name: str = "General"


class TeamConfig(_Model):
    """A team (its id is the Entra group id, as in Graph)."""

    id: str
    display_name: str = ""
    channels: list[ChannelConfig] = Field(default_factory=list)

    @property
    def general_channel(self) -> ChannelConfig:
        """The General channel, whose id is also the team's Bot Framework id."""
        if self.channels:
            return self.channels[0]
        return ChannelConfig(id=f"19:{self.id}@thread.tacv2")


class TeamsAppConfig(_Model):
    """An app catalog entry. ``id`` is the catalog id, ``external_id`` the manifest id.

    ``bot_id`` is the Entra app id of the app's bot (the ``28:<botId>`` recipient of the events the
    emulator posts); it defaults to ``external_id``, as manifests often reuse the bot's id.
    """

    id: str
    external_id: str
    display_name: str = ""
    distribution_method: Literal["organization", "store", "sideloaded"] = "organization"
    version: str = "1.0.0"
    bot_id: str | None = None

    @property
    def bot_app_id(self) -> str:
        """The bot's app id (without the ``28:`` prefix)."""
        return self.bot_id or self.external_id


class TenantConfig(_Model):
    """One tenant's directory."""

    id: str
    users: list[UserConfig] = Field(default_factory=list)
    groups: list[GroupConfig] = Field(default_factory=list)
    teams: list[TeamConfig] = Field(default_factory=list)
    apps: list[TeamsAppConfig] = Field(default_factory=list)
    # client id -> client secret; empty means any client id with any secret gets a token.
    clients: dict[str, str] = Field(default_factory=dict)


class ThrottleConfig(_Model):
    """Requests per second, per app per tenant and per app over all tenants (Graph 2026 table).

    ``None`` switches a limit off. ``chat_per_chat`` is the optional 1 rps per chat on the chat lookup.
    """

    install_per_tenant: float | None = 30
    install_per_app: float | None = 300
    read_per_tenant: float | None = 30
    read_per_app: float | None = 1500
    delete_per_tenant: float | None = 15
    delete_per_app: float | None = 150
    chat_per_chat: float | None = None
    # Graph sends whole seconds in practice; fractional values exercise clients that parse them.
    integer_retry_after: bool = False


FaultOperation = Literal[
    "*",
    "token",
    "catalog",
    "listUserApps",
    "getUserApp",
    "installUser",
    "uninstallUser",
    "chat",
    "listTeamApps",
    "primaryChannel",
    "getTeamApp",
    "installTeam",
    "uninstallTeam",
    "transitiveMembers",
    "members",
    "users",
    "user",
    "batch",
]


class FaultRule(_Model):
    """A scripted failure for one operation (or ``"*"``), optionally only in one tenant.

    ``statuses`` are answered in order by the next matching requests (e.g. ``[503, "ok", 504]``;
    ``"ok"`` lets one request through, as in the Teams emulator's sequences); once they are used up,
    ``rate`` (0..1, drawn from the emulator's seeded random generator) answers ``status``.
    """

    operation: FaultOperation = "*"
    tenant: str | None = None
    statuses: list[int | Literal["ok"]] = Field(default_factory=list)
    rate: float = Field(default=0.0, ge=0.0, le=1.0)
    status: int = 503
    retry_after: float | None = None


class GraphEmulatorConfig(_Model):
    """Everything the Graph emulator serves and how it behaves."""

    tenants: list[TenantConfig] = Field(default_factory=list)
    throttle: ThrottleConfig = Field(default_factory=ThrottleConfig)
    faults: list[FaultRule] = Field(default_factory=list)
    seed: int = 0
    # The bot's messaging endpoint (e.g. http://127.0.0.1:7071/api/messages); None: post no events.
    messaging_endpoint: str | None = None
    # The serviceUrl stamped on posted activities: where the bot must answer (the Teams emulator).
    teams_service_url: str = PUBLIC_TEAMS_SERVICE_URL
    # $top default and maximum for /users and /groups/{id}/transitiveMembers, as Graph documents.
    default_page_size: int = Field(default=100, ge=1)
    max_page_size: int = Field(default=999, ge=1)

    @model_validator(mode="after")
    def _unique_tenants(self) -> GraphEmulatorConfig:
        ids = [tenant.id for tenant in self.tenants]
        if len(ids) != len(set(ids)):
            raise ValueError("tenant ids must be unique")
        return self

    def tenant(self, tenant_id: str) -> TenantConfig | None:
        """The tenant with this id (case-insensitive, as Entra ids are GUIDs), if configured."""
        for tenant in self.tenants:
            if tenant.id.lower() == tenant_id.lower():
                return tenant
        return None
