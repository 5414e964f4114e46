"""The Microsoft Graph port: what proactive installation and audience resolution need from Graph.

:class:`~proactive.adapters.graph.GraphClient` implements :class:`Graph` over REST; tests run it against
the Graph emulator (``devhost/emulators/graph.py``). Every method raises the error tree
(:mod:`proactive.errors`): ``Throttled`` with ``retry_after`` for 429, ``GraphAccessDenied`` for 401/403,
``DirectoryObjectNotFound`` for 404, ``ServiceBusy`` / ``TransportFailure`` for what is worth retrying.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["DirectoryPage", "DirectoryUser", "Graph", "UserInstallation"]


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

    async def group_users(self, tenant_id: str, group_id: str, cursor: str | None) -> DirectoryPage:
        """A page of the group's transitive members that are users."""
        ...

    async def tenant_users(self, tenant_id: str, cursor: str | None) -> DirectoryPage:
        """A page of the tenant's users."""
        ...
