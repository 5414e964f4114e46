"""Configuration, conversation registry and statistics of the Teams emulator (``teams.py``)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from devhost.emulators.teams_faults import FaultRule, RandomFaults, parse_rules

DEFAULT_TENANT = "00000000-0000-0000-0000-0000000000a1"
DEFAULT_BOT_ID = "00000000-0000-0000-0000-0000000000b0"
# Bot Connector limit on one message, counted in UTF-16 (facts sheet, section 3).
MAX_ACTIVITY_BYTES = 100 * 1024
_NAMESPACE = uuid.UUID("5f0b7f4e-0c1e-4a53-9a7e-7e2a3d7c9b11")


@dataclass(frozen=True)
class TeamsEmulatorConfig:
    """Everything the emulator can be told at start (``--config file.json``) or through ``/_emulator/config``.

    Attributes:
        tenant_rate: requests per second per app per tenant (facts sheet: 50, older revision 30).
        tenant_rates: ``tenantId -> rate`` for tenants whose limit differs from ``tenant_rate``.
        require_auth: every ``/v3`` call needs a bearer token this emulator issued and that has not expired.
        seed: seed for random fault rates (``rates``) when the rates do not carry their own, and for the
            call latency draws.
        default_tenant: tenant of requests that name none and target no configured conversation.
        default_bot_id: bot id of requests with no token, no ``from.id`` and no ``bot.id``.
        credentials: ``client_id -> client_secret`` the token endpoint accepts; empty accepts any.
        token_lifetime: seconds an issued token is valid (``expires_in``).
        max_activity_bytes: an activity larger than this (UTF-16) answers 413 MessageSizeTooBig.
        strict_conversations: a conversation the emulator neither created nor was configured with
            answers 404 ConversationNotFound; by default any id is accepted (chats made through Graph are
            not known here).
        conversations: ``id -> {"tenantId", "type": "personal"|"channel"|"groupChat", "members": [...],
            "member_count": N}`` (``member_count`` adds N synthetic members, for paging).
        users: ``[{"aadObjectId", "id": "29:...", "name"}]`` so both ids of one user are known.
        faults: fault rules (see :mod:`devhost.emulators.teams_faults`).
        rates: random fault rates by kind, e.g. ``{"429": 0.1, "503": 0.05, "timeout": 0.02}``.
        rate_operations: operations the random rates apply to (default all).
        rate_retry_after: Retry-After of a random 429.
        timeout_seconds: how long a random "timeout" hangs.
        messaging_endpoint: accepted for symmetry with the Graph emulator; nothing is posted to it.
        call_latency_ms: median delay of every ``/v3`` answer, milliseconds (0: none); log-normal around it
            (:func:`devhost.latency.bot_connector_latency`; the ``azure`` latency profile uses 150).
    """

    tenant_rate: float = 50.0
    tenant_rates: Mapping[str, float] = field(default_factory=dict)
    require_auth: bool = False
    seed: int | None = None
    default_tenant: str = DEFAULT_TENANT
    default_bot_id: str = DEFAULT_BOT_ID
    credentials: Mapping[str, str] = field(default_factory=dict)
    token_lifetime: float = 3600.0
    max_activity_bytes: int = MAX_ACTIVITY_BYTES
    strict_conversations: bool = False
    conversations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    users: tuple[Mapping[str, Any], ...] = ()
    faults: tuple[Mapping[str, Any], ...] = ()
    rates: Mapping[str, float] = field(default_factory=dict)
    rate_operations: tuple[str, ...] = ()
    rate_retry_after: float = 1.0
    timeout_seconds: float = 120.0
    messaging_endpoint: str | None = None
    call_latency_ms: float = 0.0

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TeamsEmulatorConfig:
        """Build a config from JSON; unknown keys are an error so typos do not pass silently.

        Raises:
            ValueError: for unknown keys or invalid fault rules.
        """
        return cls().merged(raw)

    @classmethod
    def from_file(cls, path: str | Path) -> TeamsEmulatorConfig:
        """Read a JSON config file (see :meth:`from_dict`)."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def merged(self, raw: Mapping[str, Any]) -> TeamsEmulatorConfig:
        """This config with the keys of ``raw`` replaced; ``conversations`` are merged by id.

        Raises:
            ValueError: for unknown keys or invalid fault rules.
        """
        known = {f.name for f in fields(self)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(known)}")
        changes: dict[str, Any] = dict(raw)
        if "conversations" in changes:
            changes["conversations"] = {**self.conversations, **changes["conversations"]}
        for name in ("users", "faults", "rate_operations"):
            if name in changes:
                changes[name] = tuple(changes[name])
        if "tenant_rates" in changes:
            changes["tenant_rates"] = {str(k): float(v) for k, v in changes["tenant_rates"].items()}
        if "credentials" in changes:
            changes["credentials"] = dict(changes["credentials"])
        config = replace(self, **changes)
        config.fault_rules()
        config.random_faults()
        return config

    def fault_rules(self) -> list[FaultRule]:
        """Fresh (unused) rule objects for the configured faults."""
        return parse_rules(self.faults)

    def random_faults(self) -> RandomFaults:
        """A fresh seeded generator for the configured rates."""
        return RandomFaults.from_dict(
            {
                "rates": dict(self.rates),
                "seed": self.seed,
                "operations": list(self.rate_operations),
                "retry_after": self.rate_retry_after,
                "seconds": self.timeout_seconds,
            }
        )


def _digest(*parts: str, size: int = 24) -> str:
    raw = hashlib.sha256("|".join(parts).encode()).digest()
    return base64.b32encode(raw).decode().lower().rstrip("=")[:size]


def teams_user_id(aad_object_id: str) -> str:
    """The ``29:`` id the emulator gives a user it only knows by Entra object id (stable across runs)."""
    return f"29:1{_digest('user', aad_object_id, size=40)}"


def thread_of(conversation_id: str) -> str:
    """The thread a conversation id belongs to: a channel reply chain counts as its channel."""
    return conversation_id.split(";messageid=", 1)[0]


@dataclass
class Conversation:
    """A conversation the emulator knows: created through it, or configured."""

    id: str
    tenant_id: str
    type: str
    members: list[dict[str, Any]]


class Directory:
    """Users and conversations: id mapping, personal-chat creation, member lists."""

    def __init__(self, config: TeamsEmulatorConfig) -> None:
        self._by_id: dict[str, dict[str, Any]] = {}
        self.conversations: dict[str, Conversation] = {}
        self._personal: dict[tuple[str, str, str], str] = {}
        for user in config.users:
            self.remember(dict(user))
        for conversation_id, raw in config.conversations.items():
            self.conversations[conversation_id] = self._configured(conversation_id, raw, config)

    def _configured(
        self, conversation_id: str, raw: Mapping[str, Any], config: TeamsEmulatorConfig
    ) -> Conversation:
        members = [self.member(m) for m in raw.get("members", [])]
        for index in range(int(raw.get("member_count", 0))):
            aad = str(uuid.uuid5(_NAMESPACE, f"{conversation_id}:{index}"))
            members.append(self.member({"aadObjectId": aad, "name": f"User {index}"}))
        kind = raw.get("type") or ("personal" if conversation_id.startswith("a:") else "channel")
        return Conversation(conversation_id, raw.get("tenantId", config.default_tenant), kind, members)

    def remember(self, user: dict[str, Any]) -> dict[str, Any]:
        """Index a user under both of its ids."""
        for key in ("id", "aadObjectId"):
            if user.get(key):
                self._by_id[user[key]] = user
        return user

    def member(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """A full channel account for a user given by ``29:`` id or Entra object id."""
        given = str(raw.get("id") or raw.get("aadObjectId") or "")
        known = self._by_id.get(given) or self._by_id.get(str(raw.get("aadObjectId") or ""))
        if known is not None:
            return known
        user: dict[str, Any]
        if given.startswith("29:"):
            user = {"id": given, "aadObjectId": raw.get("aadObjectId")}
        else:
            aad = str(raw.get("aadObjectId") or given)
            user = {"id": teams_user_id(aad), "aadObjectId": aad}
        user["name"] = raw.get("name") or f"User {str(user['id'])[-6:]}"
        user["userRole"] = "user"
        return self.remember(user)

    def user_keys(self, account: Mapping[str, Any] | None) -> set[str]:
        """Both ids of a user as rules may name it."""
        if not account:
            return set()
        keys = {str(account[k]) for k in ("id", "aadObjectId") if account.get(k)}
        for key in list(keys):
            known = self._by_id.get(key)
            if known:
                keys |= {str(known[k]) for k in ("id", "aadObjectId") if known.get(k)}
        return keys

    def personal(self, bot_id: str, tenant_id: str, user: dict[str, Any]) -> Conversation:
        """The 1:1 conversation of a bot and a user; creating it twice gives the same id."""
        key = (bot_id, tenant_id, user["id"])
        conversation_id = self._personal.get(key)
        if conversation_id is None:
            conversation_id = f"a:1{_digest('personal', *key, size=48)}"
            self._personal[key] = conversation_id
        conversation = self.conversations.get(conversation_id)
        if conversation is None:
            conversation = Conversation(conversation_id, tenant_id, "personal", [user])
            self.conversations[conversation_id] = conversation
        return conversation


def _activity_view(activity_id: str, activity: Mapping[str, Any], received_at: float) -> dict[str, Any]:
    channel_data = activity.get("channelData") or {}
    attachments = activity.get("attachments") or []
    return {
        "id": activity_id,
        "clientActivityId": activity.get("id"),
        "type": activity.get("type"),
        "text": activity.get("text"),
        "attachments": len(attachments),
        "attachmentTypes": [a.get("contentType") for a in attachments if isinstance(a, Mapping)],
        "notificationId": notification_id(activity),
        "replyToId": activity.get("replyToId"),
        "receivedAt": received_at,
        "updates": 0,
        "deleted": False,
        "channelData": channel_data or None,
    }


def notification_id(activity: Mapping[str, Any]) -> str | None:
    """The sender's dedupe key: ``channelData.proactive.notificationId``, else ``.notificationId``."""
    channel_data = activity.get("channelData")
    if not isinstance(channel_data, Mapping):
        return None
    proactive = channel_data.get("proactive")
    if isinstance(proactive, Mapping) and proactive.get("notificationId"):
        return str(proactive["notificationId"])
    value = channel_data.get("notificationId")
    return str(value) if value else None


@dataclass
class ConversationStats:
    """What one conversation received and how requests to it were answered."""

    tenant_id: str
    activities: dict[str, dict[str, Any]] = field(default_factory=dict)
    updates: int = 0
    deletes: int = 0
    throttled: int = 0
    failed: int = 0
    by_code: Counter[str] = field(default_factory=Counter)


# Throttled answers kept for ``?timeline=1`` (a demo's chart); older ones are dropped past this.
MAX_THROTTLE_LOG = 100_000


class Stats:
    """Counters behind ``GET /_emulator/stats``.

    Args:
        wall: Unix time for ``receivedAt`` and the throttle log (the rate windows use the monotonic clock).
    """

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.throttle_log: list[dict[str, Any]] = []
        self.totals: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.by_code: Counter[str] = Counter()
        self.by_operation: dict[str, Counter[str]] = {}
        self.injected: Counter[str] = Counter()
        self.conversations: dict[str, ConversationStats] = {}

    def conversation(self, conversation_id: str, tenant_id: str) -> ConversationStats:
        """The stats of one conversation, created on first use."""
        stats = self.conversations.get(conversation_id)
        if stats is None:
            stats = self.conversations[conversation_id] = ConversationStats(tenant_id)
        return stats

    def answered(
        self,
        operation: str,
        conversation: ConversationStats | None,
        status: int | str,
        code: str | None,
        *,
        tenant_id: str | None = None,
    ) -> None:
        """Count one answer (``status`` is ``"reset"`` or ``"timeout"`` for requests never answered).

        ``tenant_id`` is the request's own tenant for the throttle log (a conversation first seen through a
        reply that named no tenant is filed under the default tenant)."""
        outcome = "accepted" if isinstance(status, int) and status < 300 else "failed"
        if status == 429:
            outcome = "throttled"
            if len(self.throttle_log) < MAX_THROTTLE_LOG:
                tenant = tenant_id or (conversation.tenant_id if conversation is not None else None)
                self.throttle_log.append({"at": self.wall(), "tenantId": tenant, "operation": operation})
        self.totals["requests"] += 1
        self.totals[outcome] += 1
        self.by_status[str(status)] += 1
        if code:
            self.by_code[code] += 1
        self.by_operation.setdefault(operation, Counter())[outcome] += 1
        if conversation is not None and outcome != "accepted":
            setattr(conversation, outcome, getattr(conversation, outcome) + 1)
            if code:
                conversation.by_code[code] += 1

    def received(
        self, conversation: ConversationStats, activity_id: str, activity: Mapping[str, Any]
    ) -> None:
        """Record an accepted activity."""
        conversation.activities[activity_id] = _activity_view(activity_id, activity, self.wall())
        self.totals["activities"] += 1

    def duplicates(self) -> list[dict[str, Any]]:
        """Notifications that reached one conversation more than once (by :func:`notification_id`)."""
        found: list[dict[str, Any]] = []
        for conversation_id, stats in self.conversations.items():
            seen: dict[str, list[str]] = {}
            for activity_id, view in stats.activities.items():
                if view["notificationId"]:
                    seen.setdefault(view["notificationId"], []).append(activity_id)
            found.extend(
                {
                    "conversationId": conversation_id,
                    "notificationId": nid,
                    "count": len(ids),
                    "activityIds": ids,
                }
                for nid, ids in seen.items()
                if len(ids) > 1
            )
        return found

    def by_notification(self) -> dict[str, dict[str, int]]:
        """Per notification id: conversations reached and deliveries, so losses are countable."""
        result: dict[str, dict[str, int]] = {}
        for stats in self.conversations.values():
            reached: Counter[str] = Counter(
                v["notificationId"] for v in stats.activities.values() if v["notificationId"]
            )
            for nid, count in reached.items():
                entry = result.setdefault(nid, {"conversations": 0, "deliveries": 0})
                entry["conversations"] += 1
                entry["deliveries"] += count
        return result

    def to_json(
        self, *, activities: bool = True, only: str | None = None, timeline: bool = False
    ) -> dict[str, Any]:
        """The stats document; ``activities=False`` leaves out the per-activity lists, ``timeline=True`` adds
        ``throttleLog`` (every 429 answered: ``at`` Unix time, ``tenantId``, ``operation``)."""
        conversations = {}
        for conversation_id, stats in self.conversations.items():
            if only is not None and conversation_id != only:
                continue
            entry: dict[str, Any] = {
                "tenantId": stats.tenant_id,
                "count": len(stats.activities),
                "activityIds": list(stats.activities),
                "updates": stats.updates,
                "deletes": stats.deletes,
                "throttled": stats.throttled,
                "failed": stats.failed,
                "byCode": dict(stats.by_code),
            }
            if activities:
                entry["activities"] = list(stats.activities.values())
            conversations[conversation_id] = entry
        totals = {"requests": 0, "accepted": 0, "throttled": 0, "failed": 0, "activities": 0}
        totals.update(self.totals)
        document = {
            "totals": totals,
            "byStatus": dict(self.by_status),
            "byCode": dict(self.by_code),
            "byOperation": {op: dict(counts) for op, counts in self.by_operation.items()},
            "injected": dict(self.injected),
            "conversations": conversations,
            "duplicates": self.duplicates(),
            "byNotification": self.by_notification(),
        }
        if timeline:
            document["throttleLog"] = list(self.throttle_log)
        return document
