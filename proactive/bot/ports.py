"""What the bot needs from outside: the channel's token check, a reply channel, the welcome queue."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

__all__ = ["Authenticator", "ReplyBuilder", "ReplySender", "WelcomeQueue"]


class Authenticator(Protocol):
    """Validates the channel's token: from the header alone, then against the activity (``BotAuthenticator``)."""

    async def verify(self, authorization_header: str | None) -> Any: ...

    def bind(self, verified: Any, activity: Mapping[str, Any]) -> object: ...


ReplyBuilder = Callable[[Mapping[str, Any], str], dict[str, Any]]


class ReplySender(Protocol):
    """Sends one activity into a conversation (``BotConnectorClient`` fits)."""

    async def send_activity(
        self, service_url: str, conversation_id: str, activity: Mapping[str, Any]
    ) -> str | None: ...


class WelcomeQueue(Protocol):
    """What the activity handler needs: queue one user's welcome (:class:`Welcomes` implements it)."""

    async def welcome(self, tenant_id: str, aad_object_id: str, bot_name: str | None) -> bool:
        """Store the welcome and hand it to the paced path; ``False`` when it cannot be stored."""
        ...
