"""A realistic audience, captured the way Teams would hand it to the bot: real ``/api/messages`` activities.

:func:`plan_audience` decides who is who (pure and deterministic: the same options give the same ids);
:class:`Seeder` posts the activities. Per tenant: team installs and ``channelCreated`` events for channels,
group-chat installs, and the users. Most users have had the bot for a while: the bot (re)captures them from
a message in their 1:1 chat, an Adaptive Card ``Action.Submit`` (what Teams sends when a user answers a card:
``value``, no text, so the bot answers nothing). A fraction (``installs``) install it now: the bot welcomes
each of them through its paced path, as in a roll-out. Then, in their own 1:1 chats, some users type
``unsubscribe <category>`` or ``quiet HH:MM-HH:MM``. Blocked users
are not the bot's doing: :func:`blocked_faults` gives the Teams emulator rules that answer their sends with
403 ``MessageWritesBlocked``, as Teams does once a user blocks a bot.

Users who never talked to the bot (``never_talked``) send no activity at all: they exist only in the Graph
emulator's directory (:func:`graph_directory`), so a broadcast with ``includeUninstalled`` finds them through
Graph, installs the app for them (Teams then posts the install to the bot, which welcomes them) and delivers.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import aiohttp

BOT_ID: Final = "28:00000000-0000-0000-0000-0000000000b0"
BOT_NAME: Final = "Contoso Alerts"
_NAMESPACE = uuid.UUID("8d3c4e1a-6b7f-4c2d-9e0a-1b2c3d4e5f60")
# (name, IANA time zone) of the demo's tenants, in order; more tenants reuse them with a number.
_TENANTS: Final = (
    ("Contoso", "Europe/London"),
    ("Fabrikam", "America/New_York"),
    ("Northwind", "Asia/Tokyo"),
    ("Adatum", "Australia/Sydney"),
    ("Tailspin", "America/Los_Angeles"),
)
_FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Niklaus")
_LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton")


def tenant_id(index: int) -> str:
    """The demo's tenant number ``index`` (stable across runs)."""
    return str(uuid.uuid5(_NAMESPACE, f"tenant:{index}"))


def _fraction_pick(ids: Sequence[str], fraction: float, salt: str) -> frozenset[str]:
    """A deterministic ``fraction`` of ``ids`` (by hash, so the picks look spread, not the first few)."""
    count = round(len(ids) * fraction)
    ranked = sorted(ids, key=lambda value: hashlib.sha256(f"{salt}:{value}".encode()).hexdigest())
    return frozenset(ranked[:count])


@dataclass(frozen=True)
class SeedUser:
    """A Teams user who installed the bot in their personal scope."""

    tenant_id: str
    aad_object_id: str
    name: str
    time_zone: str
    installs_now: bool = False

    @property
    def teams_id(self) -> str:
        return f"29:1demo{self.aad_object_id.replace('-', '')}"

    @property
    def conversation_id(self) -> str:
        return f"a:1demo{self.tenant_id[:8]}{self.aad_object_id.replace('-', '')}"


@dataclass(frozen=True)
class SeedChannel:
    """A channel of a team the bot is installed in (the team's General channel has the team's id)."""

    tenant_id: str
    team_id: str
    team_name: str
    channel_id: str
    name: str

    @property
    def general(self) -> bool:
        return self.channel_id == self.team_id


@dataclass(frozen=True)
class TenantAudience:
    """One tenant's audience and who in it behaves how."""

    tenant_id: str
    name: str
    time_zone: str
    users: tuple[SeedUser, ...]
    channels: tuple[SeedChannel, ...]
    group_chats: tuple[str, ...]
    blocked: frozenset[str]
    opted_out: frozenset[str]
    quiet: frozenset[str]
    never_talked: frozenset[str] = frozenset()

    @property
    def recipients(self) -> int:
        """Rows a broadcast to the whole tenant with ``includeUninstalled`` materialises."""
        return len(self.users) + len(self.channels) + len(self.group_chats)

    @property
    def captured(self) -> tuple[SeedUser, ...]:
        """The users the bot knows from their activities (everyone but ``never_talked``)."""
        return tuple(user for user in self.users if user.aad_object_id not in self.never_talked)


@dataclass(frozen=True)
class AudienceOptions:
    """How big and how messy the audience is (``demo --help`` documents each)."""

    tenants: int = 3
    users: int = 2000
    channels: int = 20
    group_chats: int = 2
    blocked: float = 0.02
    opted_out: float = 0.05
    quiet: float = 0.04
    installs: float = 0.1
    never_talked: float = 0.05


def _share(fraction: float, everyone: Sequence[str], rest: Sequence[str]) -> float:
    """``fraction`` of ``everyone`` as a fraction of ``rest`` (the users still to pick from)."""
    return min(1.0, fraction * len(everyone) / max(1, len(rest)))


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def plan_audience(options: AudienceOptions, *, first_tenant: str | None = None) -> tuple[TenantAudience, ...]:
    """The audience: ``users`` and ``channels`` spread over ``tenants``, ``group_chats`` per tenant.

    Args:
        options: sizes and fractions.
        first_tenant: the first tenant's id (``devhost seed`` uses the README's tenant); default generated.
    """
    plans = []
    for index, (users, channels) in enumerate(
        zip(_split(options.users, options.tenants), _split(options.channels, options.tenants), strict=True)
    ):
        tenant = first_tenant if index == 0 and first_tenant else tenant_id(index)
        name, zone = _TENANTS[index % len(_TENANTS)]
        if index >= len(_TENANTS):
            name = f"{name} {index // len(_TENANTS) + 1}"
        every = max(1, round(1 / options.installs)) if options.installs > 0 else 0
        people = tuple(
            SeedUser(
                tenant,
                str(uuid.uuid5(_NAMESPACE, f"{tenant}:user:{n}")),
                f"{_FIRST[n % len(_FIRST)]} {_LAST[(n // len(_FIRST)) % len(_LAST)]} {n}",
                zone,
                installs_now=bool(every) and n % every == every - 1,
            )
            for n in range(users)
        )
        teams = max(1, min(2, channels))
        chans = []
        for c in range(channels):
            team = c % teams
            team_id = f"19:demo{tenant[:8]}team{team}@thread.tacv2"
            first_of_team = c < teams
            channel_id = team_id if first_of_team else f"19:demo{tenant[:8]}chan{c}@thread.tacv2"
            chans.append(
                SeedChannel(
                    tenant,
                    team_id,
                    f"{name} {('Engineering', 'Operations')[team % 2]}",
                    channel_id,
                    "General" if first_of_team else f"incidents-{c}",
                )
            )
        ids = [user.aad_object_id for user in people]
        # Disjoint picks, each a fraction of all the tenant's users. Who never talked to the bot cannot have
        # blocked it or typed a command, so they are picked first.
        never_talked = _fraction_pick(ids, options.never_talked, "never-talked")
        rest = [value for value in ids if value not in never_talked]
        blocked = _fraction_pick(rest, _share(options.blocked, ids, rest), "blocked")
        rest = [value for value in rest if value not in blocked]
        opted_out = _fraction_pick(rest, _share(options.opted_out, ids, rest), "opted-out")
        rest = [value for value in rest if value not in opted_out]
        plans.append(
            TenantAudience(
                tenant_id=tenant,
                name=name,
                time_zone=zone,
                users=people,
                channels=tuple(chans),
                group_chats=tuple(
                    f"19:demo{tenant[:8]}chat{g}@thread.v2" for g in range(options.group_chats)
                ),
                blocked=blocked,
                opted_out=opted_out,
                quiet=_fraction_pick(rest, _share(options.quiet, ids, rest), "quiet"),
                never_talked=never_talked,
            )
        )
    return tuple(plans)


# ---- activities -------------------------------------------------------------------------------------


def _base(activity_type: str, service_url: str, tenant: str, conversation: dict[str, Any]) -> dict[str, Any]:
    now = datetime.now().astimezone()
    return {
        "type": activity_type,
        "id": f"f:{uuid.uuid4().hex[:16]}",
        "timestamp": now.isoformat(),
        "serviceUrl": service_url,
        "channelId": "msteams",
        "recipient": {"id": BOT_ID, "name": BOT_NAME},
        "conversation": {**conversation, "tenantId": tenant},
        "channelData": {"tenant": {"id": tenant}},
    }


def _from(user: SeedUser) -> dict[str, str]:
    return {"id": user.teams_id, "name": user.name, "aadObjectId": user.aad_object_id}


def personal_install(user: SeedUser, service_url: str) -> dict[str, Any]:
    """``installationUpdate`` (add) in the user's 1:1 chat, with the client's time zone."""
    activity = _base(
        "installationUpdate",
        service_url,
        user.tenant_id,
        {"conversationType": "personal", "id": user.conversation_id},
    )
    activity.update(
        {
            "from": _from(user),
            "action": "add",
            "locale": "en-US",
            "entities": [{"type": "clientInfo", "locale": "en-US", "timezone": user.time_zone}],
            "localTimezone": user.time_zone,
        }
    )
    return activity


def card_submit(user: SeedUser, service_url: str) -> dict[str, Any]:
    """An Adaptive Card ``Action.Submit`` from the user's 1:1 chat: a message with ``value`` and no text."""
    activity = personal_install(user, service_url)
    activity["type"] = "message"
    del activity["action"]
    activity["value"] = {"action": "ack", "choice": "seen"}
    return activity


def personal_message(user: SeedUser, service_url: str, text: str) -> dict[str, Any]:
    """A ``message`` the user types in the 1:1 chat (a consent command)."""
    activity = personal_install(user, service_url)
    activity["type"] = "message"
    del activity["action"]
    activity.update({"text": text, "textFormat": "plain"})
    return activity


def _admin(tenant: str) -> dict[str, str]:
    return {"id": "29:1demoadmin", "name": "Megan Bowen", "aadObjectId": str(uuid.uuid5(_NAMESPACE, tenant))}


def channel_activity(channel: SeedChannel, service_url: str) -> dict[str, Any]:
    """A team install (General channel) or a ``channelCreated`` event (any other channel)."""
    team = {"id": channel.team_id, "name": channel.team_name}
    if channel.general:
        activity = _base(
            "installationUpdate",
            service_url,
            channel.tenant_id,
            {"isGroup": True, "conversationType": "channel", "id": channel.team_id},
        )
        activity["action"] = "add"
        activity["channelData"].update({"team": team, "channel": {"id": channel.channel_id}})
    else:
        activity = _base(
            "conversationUpdate",
            service_url,
            channel.tenant_id,
            {"isGroup": True, "conversationType": "channel", "id": channel.team_id},
        )
        activity["channelData"].update(
            {
                "team": team,
                "eventType": "channelCreated",
                "channel": {"id": channel.channel_id, "name": channel.name},
            }
        )
    activity["from"] = _admin(channel.tenant_id)
    return activity


def group_chat_install(tenant: str, chat_id: str, service_url: str) -> dict[str, Any]:
    """``installationUpdate`` (add) in a group chat."""
    activity = _base(
        "installationUpdate",
        service_url,
        tenant,
        {"isGroup": True, "conversationType": "groupChat", "id": chat_id},
    )
    activity.update({"from": _admin(tenant), "action": "add"})
    return activity


def quiet_command(user: SeedUser, until: datetime, now: datetime) -> str:
    """``quiet HH:MM-HH:MM`` in the user's time zone: from two hours ago until ``until`` (minute-aligned)."""
    zone = ZoneInfo(user.time_zone)
    start = (now - timedelta(hours=2)).astimezone(zone)
    end = until.astimezone(zone)
    return f"quiet {start:%H:%M}-{end:%H:%M}"


def blocked_faults(plans: Iterable[TenantAudience]) -> list[dict[str, Any]]:
    """Teams emulator rules: every send to a blocked user's chat answers 403 ``MessageWritesBlocked``."""
    return [
        {"match": {"conversation": user.conversation_id}, "operations": ["send"], "kind": "blocked"}
        for plan in plans
        for user in plan.users
        if user.aad_object_id in plan.blocked
    ]


# ---- posting ----------------------------------------------------------------------------------------


class SeedError(RuntimeError):
    """The bot refused an activity (the seeding cannot go on)."""


class Seeder:
    """Posts activities to the bot's ``/api/messages``, a few at a time, counting what it did.

    Args:
        session: the HTTP session.
        host_url: the host (``http://127.0.0.1:7071``).
        service_url: the Teams emulator's base URL, given to the bot as each activity's ``serviceUrl``.
        concurrency: activities in flight at once (Teams delivers installs of many users concurrently).
        progress: called with (done, total) after each activity.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        host_url: str,
        service_url: str,
        *,
        concurrency: int = 16,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self._session = session
        self._url = f"{host_url.rstrip('/')}/api/messages"
        self.service_url = service_url.rstrip("/") + "/"
        self._concurrency = concurrency
        self._progress = progress
        self.posted = 0

    async def post_all(self, activities: Sequence[dict[str, Any]]) -> None:
        """Post every activity; the first refusal stops the rest.

        Raises:
            SeedError: the bot answered 4xx/5xx.
        """
        queue = list(reversed(activities))
        total, done = len(activities), 0

        async def worker() -> None:
            nonlocal done
            while queue:
                activity = queue.pop()
                await self.post(activity)
                done += 1
                if self._progress is not None:
                    self._progress(done, total)

        await asyncio.gather(*(worker() for _ in range(min(self._concurrency, max(1, total)))))

    async def post(self, activity: dict[str, Any]) -> None:
        """Post one activity (retried on 503, which the bot answers when storage is briefly busy)."""
        for attempt in range(5):
            async with self._session.post(self._url, json=activity) as answer:
                if answer.status < 300:
                    self.posted += 1
                    return
                text = (await answer.text())[:300]
                if answer.status != 503 or attempt == 4:
                    raise SeedError(f"/api/messages answered {answer.status} to a {activity['type']}: {text}")
            await asyncio.sleep(0.5 * (attempt + 1))

    def installs(self, plans: Iterable[TenantAudience]) -> list[dict[str, Any]]:
        """Every activity that captures the audience (installs, channel events, card submits)."""
        activities: list[dict[str, Any]] = []
        for plan in plans:
            activities += [channel_activity(channel, self.service_url) for channel in plan.channels]
            activities += [
                group_chat_install(plan.tenant_id, chat, self.service_url) for chat in plan.group_chats
            ]
            activities += [
                personal_install(user, self.service_url)
                if user.installs_now
                else card_submit(user, self.service_url)
                for user in plan.captured
            ]
        return activities

    def commands(
        self, plans: Iterable[TenantAudience], category: str, quiet_until: datetime, now: datetime
    ) -> list[dict[str, Any]]:
        """The opt-out and quiet-hours commands the audience types."""
        activities = []
        for plan in plans:
            for user in plan.users:
                if user.aad_object_id in plan.opted_out:
                    activities.append(personal_message(user, self.service_url, f"unsubscribe {category}"))
                elif user.aad_object_id in plan.quiet:
                    activities.append(
                        personal_message(user, self.service_url, quiet_command(user, quiet_until, now))
                    )
        return activities


def graph_directory(plans: Iterable[TenantAudience]) -> dict[str, list[dict[str, str]]]:
    """Per tenant, the Graph emulator's directory users (``UserConfig`` JSON): the users who never talked to
    the bot. The captured ones are left out: their rows come from their references, and listing them in
    Graph as well would only make ``includeUninstalled`` meet rows it already has."""
    return {
        plan.tenant_id: [
            {
                "id": user.aad_object_id,
                "displayName": user.name,
                "userPrincipalName": f"{user.name.split()[0].lower()}.{user.aad_object_id[:8]}@demo.test",
            }
            for user in plan.users
            if user.aad_object_id in plan.never_talked
        ]
        for plan in plans
    }
