"""The activities Teams sends a bot when Graph installs its app, shaped as Microsoft documents them.

A personal install produces ``installationUpdate`` (``action: add``, ``conversationType: personal``)
and ``conversationUpdate`` with the bot in ``membersAdded``; a team install produces the same pair
in the team's General channel with ``channelData.team`` / ``channel`` / ``settings.selectedChannel``
and ``eventType: teamMemberAdded``. The shapes follow Learn's "Conversation events" and
"Installation update event" samples.

The emulator stamps ``conversation.id`` with the Graph chat id (``19:...``) so a reference captured
from the event and the id ``GET .../installedApps/{id}/chat`` returns agree; real Teams may use an
opaque ``a:...`` id for personal chats, which the Bot Connector accepts as well.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any

from devhost.emulators.graph_model import TeamConfig, TeamsAppConfig, UserConfig


def personal_chat_id(user_id: str, bot_app_id: str) -> str:
    """The 1:1 chat id between a user and a bot, in the form Graph reports it."""
    return f"19:{user_id}_{bot_app_id}@unq.gbl.spaces"


def teams_user_id(aad_object_id: str) -> str:
    """A stable Bot Framework user id (``29:...``) for an Entra object id."""
    return "29:1" + hashlib.sha256(aad_object_id.encode()).hexdigest()[:40]


def _base(
    activity_type: str, *, now: datetime, service_url: str, app: TeamsAppConfig, tenant_id: str
) -> dict[str, Any]:
    return {
        "type": activity_type,
        "id": f"f:{uuid.uuid4()}",
        "timestamp": now.isoformat().replace("+00:00", "Z"),
        "serviceUrl": service_url,
        "channelId": "msteams",
        "recipient": {"id": f"28:{app.bot_app_id}", "name": app.display_name},
        "locale": "en-US",
        "channelData": {"tenant": {"id": tenant_id}},
    }


def personal_install_activities(
    *,
    user: UserConfig,
    app: TeamsAppConfig,
    tenant_id: str,
    chat_id: str,
    service_url: str,
    now: datetime,
    action: str = "add",
) -> list[dict[str, Any]]:
    """Activities for an app installed in (``add``) or removed from (``remove``) a user's personal scope.

    ``add`` gives ``installationUpdate`` then ``conversationUpdate`` (bot in ``membersAdded``);
    ``remove`` gives the ``installationUpdate`` alone.
    """
    sender = {"id": teams_user_id(user.id), "name": user.display_name, "aadObjectId": user.id}
    conversation = {"conversationType": "personal", "tenantId": tenant_id, "id": chat_id}
    install = _base("installationUpdate", now=now, service_url=service_url, app=app, tenant_id=tenant_id)
    install.update({"action": action, "from": sender, "conversation": conversation})
    if action != "add":
        return [install]
    update = _base("conversationUpdate", now=now, service_url=service_url, app=app, tenant_id=tenant_id)
    update.update(
        {
            "from": sender,
            "conversation": conversation,
            "membersAdded": [{"id": f"28:{app.bot_app_id}"}],
        }
    )
    return [install, update]


def team_install_activities(
    *,
    team: TeamConfig,
    app: TeamsAppConfig,
    tenant_id: str,
    installer_app_id: str,
    service_url: str,
    now: datetime,
    action: str = "add",
) -> list[dict[str, Any]]:
    """Activities for an app installed in (``add``) or removed from (``remove``) a team.

    ``add`` gives ``installationUpdate`` then ``conversationUpdate`` (``eventType: teamMemberAdded``);
    ``remove`` gives the ``installationUpdate`` alone.
    """
    general = team.general_channel
    # Graph installs app-only, so the "installer" is the calling application, not a user.
    sender = {"id": f"28:{installer_app_id}", "name": "Microsoft Graph"}
    conversation = {
        "isGroup": True,
        "conversationType": "channel",
        "tenantId": tenant_id,
        "id": general.id,
    }
    team_data = {"id": general.id, "name": team.display_name, "aadGroupId": team.id}
    install = _base("installationUpdate", now=now, service_url=service_url, app=app, tenant_id=tenant_id)
    install.update({"action": action, "from": sender, "conversation": conversation})
    install["channelData"].update(
        {
            "team": team_data,
            "channel": {"id": general.id, "name": general.display_name},
            "settings": {"selectedChannel": {"id": general.id}},
            "source": None,
        }
    )
    if action != "add":
        return [install]
    update = _base("conversationUpdate", now=now, service_url=service_url, app=app, tenant_id=tenant_id)
    update.update(
        {"from": sender, "conversation": conversation, "membersAdded": [{"id": f"28:{app.bot_app_id}"}]}
    )
    update["channelData"].update({"team": team_data, "eventType": "teamMemberAdded"})
    return [install, update]
