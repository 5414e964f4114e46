"""The install ports: what proactive installation and audience resolution need from Graph, and the Graph pacer.

:class:`~proactive.adapters.graph.GraphClient` implements :class:`Graph` over REST; tests run it against
the Graph emulator (``devhost/emulators/graph.py``). Every method raises the error tree
(:mod:`proactive.errors`): ``Throttled`` with ``retry_after`` for 429, ``GraphAccessDenied`` for 401/403,
``DirectoryObjectNotFound`` for 404, ``ServiceBusy`` / ``TransportFailure`` for what is worth retrying.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Admission",
    "DirectoryPage",
    "DirectoryUser",
    "Graph",
    "GraphPacer",
    "ReportTiming",
    "UserInstallation",
]


@dataclass(frozen=True)
class UserInstallation:
    """The app installed in one user's personal scope."""

    id: str


@dataclass(frozen=True)
class DirectoryUser:
    """A user as an audience needs it: the object id, whether a guest, whether the account is enabled."""

    id: str
    guest: bool = False
    enabled: bool = True


@dataclass(frozen=True)
class DirectoryPage:
    """One page of users; ``next`` is Graph's absolute ``@odata.nextLink`` (``None``: the last page)."""

    users: list[DirectoryUser]
    next: str | None


class Graph(Protocol):
    """Graph calls, one tenant at a time (the token is the tenant's)."""

    async def catalog_app_id(self, tenant_id: str, external_id: str) -> str | None:
        """The org-catalog id of the app with manifest id ``external_id``, or ``None``."""
        ...

    async def install_for_user(self, tenant_id: str, user_id: str, catalog_app_id: str) -> bool:
        """Install for the user; ``False`` when it was already installed (Graph's 409)."""
        ...

    async def user_installation(
        self, tenant_id: str, user_id: str, catalog_app_id: str
    ) -> UserInstallation | None:
        """The user's installation of the app, or ``None``."""
        ...

    async def installation_chat_id(self, tenant_id: str, user_id: str, installation_id: str) -> str:
        """The chat id of the installation's 1:1 chat with the bot."""
        ...

    async def install_for_team(self, tenant_id: str, team_id: str, catalog_app_id: str) -> bool:
        """Install in the team (its Entra group id); ``False`` when it was already installed (Graph's 409)."""
        ...

    async def primary_channel_id(self, tenant_id: str, team_id: str) -> str:
        """The id of the team's General channel."""
        ...

    async def group_users(self, tenant_id: str, group_id: str, cursor: str | None) -> DirectoryPage:
        """A page of the group's transitive members that are users."""
        ...

    async def tenant_users(self, tenant_id: str, cursor: str | None) -> DirectoryPage:
        """A page of the tenant's users."""
        ...


@dataclass(frozen=True)
class Admission:
    """The limiter's answer: ``tokens`` (0 while its breaker is open) from ``not_before`` (epoch seconds).

    ``granted_at`` is echoed in the report, so the limiter learns how long an install takes from its grant to
    its first request (its *lead*) and punishes one overload once. ``pace_seconds`` is the grant's spacing:
    a request that reaches its slot late still keeps that far from the tenant's previous one.
    """

    tokens: int
    not_before: float
    granted_at: float | None = None
    pace_seconds: float = 0.0


class GraphPacer(Protocol):
    """The tenant's Graph limiter, as a queue trigger can use it."""

    async def admit(self, tenant_id: str) -> Admission:
        """Ask for one install's slot."""
        ...

    async def report(
        self,
        tenant_id: str,
        *,
        sent: int = 0,
        throttled: int = 0,
        server_errors: int = 0,
        failed: int = 0,
        retry_after: float | None = None,
        timing: ReportTiming | None = None,
    ) -> None:
        """Tell the limiter how the install's Graph calls went."""
        ...


@dataclass(frozen=True)
class ReportTiming:
    """When the install had its grant, was ready to call Graph and made its first call (epoch seconds)."""

    granted_at: float | None
    ready_at: float
    sent_at: float
