"""The request pipeline of the Teams emulator: auth, validation, rate windows, faults, operations.

See :mod:`devhost.emulators.teams` for the routes and the order of checks; this module holds the state
of one emulator instance and answers one ``/v3`` call at a time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web

from devhost.emulators.teams_faults import (
    DELAY,
    ERRORS,
    PASS,
    RESET,
    TIMEOUT,
    ErrorAnswer,
    Fault,
    FaultRule,
    RandomFaults,
    RequestFacts,
)
from devhost.emulators.teams_state import (
    Conversation,
    ConversationStats,
    Directory,
    Stats,
    TeamsEmulatorConfig,
    thread_of,
)
from devhost.emulators.windows import Limit, SlidingWindows
from devhost.latency import Delays, bot_connector_latency

_SEND = (Limit(7, 1), Limit(8, 2), Limit(60, 30), Limit(1800, 3600))
_READ = (Limit(14, 1), Limit(16, 2), Limit(120, 30), Limit(3600, 3600))
# Facts sheet section 1, keyed by the operation family that shares one quota.
PER_BOT_PER_THREAD: dict[str, tuple[Limit, ...]] = {
    "send": _SEND,
    "create": _SEND,
    "members": _READ,
    "conversations": _READ,
}
PER_THREAD_ALL_BOTS: dict[str, tuple[Limit, ...]] = {
    "send": (Limit(14, 1), Limit(16, 2)),
    "create": (Limit(14, 1), Limit(16, 2)),
    "members": (Limit(28, 1), Limit(32, 2)),
    "conversations": (Limit(28, 1), Limit(32, 2)),
}
_FAMILY = {"update": "send", "delete": "send"}
_UNAUTHORIZED = {"message": "Authorization has been denied for this request."}

Sleep = Callable[[float], Awaitable[None]]


@dataclass
class _Call:
    """One /v3 request as the checks see it."""

    operation: str
    bot_id: str
    tenant_id: str
    conversation_id: str | None
    body: Any
    users: frozenset[str]

    @property
    def thread(self) -> str:
        return thread_of(self.conversation_id or "")


class _Answer(Exception):
    """Raised inside a handler to answer with a Teams error body."""

    def __init__(self, answer: ErrorAnswer, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(answer.code)
        self.answer = answer
        self.headers = dict(headers or {})


def format_retry_after(seconds: float) -> str:
    """Retry-After text: whole seconds as integers, else milliseconds, never rounded down."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


class TeamsEmulator:
    """State and request handling of one emulator instance (one per :func:`build_app`).

    Args:
        config: the starting configuration.
        clock: monotonic seconds; rate windows and token expiry use it, so tests can move time.
        sleep: awaited for scripted delays and the call latency.
    """

    def __init__(self, config: TeamsEmulatorConfig, *, clock: Callable[[], float], sleep: Sleep) -> None:
        self.clock = clock
        self.sleep = sleep
        self.base_url = ""
        self._secret = secrets.token_bytes(32)
        self._tokens: dict[str, tuple[str, float]] = {}
        self._release = asyncio.Event()
        self._activity_ids = itertools.count(1_700_000_000_000)
        self.configure(config)

    def configure(self, config: TeamsEmulatorConfig, *, keep_faults: bool = False) -> None:
        """Apply a configuration; everything but issued tokens starts afresh (faults too unless kept)."""
        self.config = config
        self.windows = SlidingWindows(self.clock)
        self.directory = Directory(config)
        self.stats = Stats()
        # Restarted with the config, so a reset emulator draws the same delays again for the same seed.
        rng = random.Random(None if config.seed is None else f"{config.seed}:bot-connector")
        latency = bot_connector_latency(config.call_latency_ms) if config.call_latency_ms > 0 else None
        self.call_latency = Delays(latency, rng)
        if not keep_faults:
            self.rules: list[FaultRule] = config.fault_rules()
            self.random: RandomFaults = config.random_faults()
        self._release.set()
        self._release = asyncio.Event()

    def release_hung(self) -> None:
        """Let every request hanging in a ``timeout`` fault finish (used at shutdown)."""
        self._release.set()

    # ---- tokens -------------------------------------------------------------------------------------

    def issue_token(self, client_id: str, tenant_id: str) -> dict[str, Any]:
        """A client-credentials answer; the token is an HS256 JWT only this instance accepts."""
        now = time.time()
        claims = {
            "aud": "https://api.botframework.com",
            "iss": f"https://login.microsoftonline.com/{tenant_id}/v2.0",
            "appid": client_id,
            "azp": client_id,
            "tid": tenant_id,
            "iat": int(now),
            "exp": int(now + self.config.token_lifetime),
            "jti": secrets.token_hex(8),
        }
        token = jwt.encode(claims, self._secret, algorithm="HS256")
        self._tokens[token] = (client_id, self.clock() + self.config.token_lifetime)
        return {
            "token_type": "Bearer",
            "expires_in": int(self.config.token_lifetime),
            "ext_expires_in": int(self.config.token_lifetime),
            "access_token": token,
        }

    def caller(self, request: web.Request) -> str | None:
        """The client id of a valid bearer token, or ``None``."""
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("bearer "):
            return None
        issued = self._tokens.get(header[7:].strip())
        if issued is None or issued[1] <= self.clock():
            return None
        return issued[0]

    # ---- checks -------------------------------------------------------------------------------------

    def check_limits(self, call: _Call) -> float | None:
        """Admit the call against every documented window at once, or return the Retry-After."""
        family = _FAMILY.get(call.operation, call.operation)
        rate = self.config.tenant_rates.get(call.tenant_id, self.config.tenant_rate)
        tenant_limit = [Limit(int(rate), 1.0)] if rate >= 1 else [Limit(1, 1.0 / rate)]
        checks = [
            (("bot-thread", family, call.bot_id, call.thread), PER_BOT_PER_THREAD[family]),
            (("thread", family, call.thread), PER_THREAD_ALL_BOTS[family]),
            (("tenant", call.bot_id, call.tenant_id), tenant_limit),
        ]
        waits = [w for key, limits in checks if (w := self.windows.peek(key, limits)) is not None]
        if waits:
            return max(waits)
        for key, limits in checks:
            self.windows.acquire(key, limits)
        return None

    def pick_fault(self, call: _Call) -> Fault | None:
        """The scripted fault for this call if a rule matches, else a random one, else ``None``."""
        facts = RequestFacts(call.operation, call.conversation_id, call.tenant_id, call.users)
        for rule in self.rules:
            if rule.matches(facts):
                return rule.take()
        return self.random.draw(call.operation)

    async def apply_fault(self, request: web.Request, fault: Fault, call: _Call) -> web.StreamResponse | None:
        """Carry out a fault; ``None`` means go on and answer normally."""
        self.stats.injected[fault.kind] += 1
        if fault.delay > 0:
            await self.sleep(fault.delay)
        if fault.kind in (PASS, DELAY):
            return None
        conversation = self._conversation_stats(call)
        if fault.kind == RESET:
            self.stats.answered(call.operation, conversation, "reset", None)
            if request.transport is not None:
                request.transport.abort()
            # Nothing reaches the client: its connection is gone.
            return web.Response(status=500)
        if fault.kind == TIMEOUT:
            self.stats.answered(call.operation, conversation, "timeout", None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), fault.seconds)
            return json_response(ERRORS["504"].body, 504)
        answer = ERRORS[fault.kind]
        headers = {"Retry-After": format_retry_after(fault.retry_after)} if answer.status == 429 else None
        raise _Answer(answer, headers)

    def _conversation_stats(self, call: _Call) -> ConversationStats | None:
        if call.conversation_id is None:
            return None
        return self._stats_of(call.conversation_id, call.tenant_id)

    def _stats_of(self, conversation_id: str, tenant_id: str) -> ConversationStats:
        """The conversation's stats; one first seen through a request that named no tenant (a reply) was
        filed under the default tenant and takes the first real tenant a later request names."""
        stats = self.stats.conversation(conversation_id, tenant_id)
        if stats.tenant_id == self.config.default_tenant and tenant_id != self.config.default_tenant:
            stats.tenant_id = tenant_id
        return stats

    # ---- the pipeline -------------------------------------------------------------------------------

    async def handle(
        self,
        request: web.Request,
        operation: str,
        conversation_id: str | None,
        action: Callable[[_Call], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Run the checks in the documented order, then ``action``; count the answer; answer after the
        configured call latency (admission to the rate windows happened on arrival, as in the service).
        """
        response = await self._answer(request, operation, conversation_id, action)
        delay = self.call_latency.next()
        if delay > 0:
            await self.sleep(delay)
        return response

    async def _answer(
        self,
        request: web.Request,
        operation: str,
        conversation_id: str | None,
        action: Callable[[_Call], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        call: _Call | None = None
        try:
            client_id = self.caller(request)
            if self.config.require_auth and client_id is None:
                self.stats.answered(operation, None, 401, "Unauthorized")
                return json_response(_UNAUTHORIZED, 401)
            body = await _read_body(request, operation)
            call = self._resolve(operation, conversation_id, body, client_id)
            if operation == "create" and call.conversation_id is None:
                raise _Answer(
                    bad_argument("Teams bots can only create 1:1 chats (one member) or channel threads.")
                )
            self._check_size(body, operation)
            if (
                self.config.strict_conversations
                and operation not in ("create", "conversations")
                and conversation_id not in self.directory.conversations
            ):
                raise _Answer(ERRORS["conversation_not_found"])
            wait = self.check_limits(call)
            if wait is not None:
                raise _Answer(ERRORS["429"], {"Retry-After": format_retry_after(wait)})
            fault = self.pick_fault(call)
            if fault is not None:
                early = await self.apply_fault(request, fault, call)
                if early is not None:
                    return early
            response = await action(call)
            self.stats.answered(operation, self._conversation_stats(call), response.status, None)
            return response
        except _Answer as answer:
            conversation = self._conversation_stats(call) if call is not None else None
            self.stats.answered(
                operation,
                conversation,
                answer.answer.status,
                answer.answer.code,
                tenant_id=call.tenant_id if call is not None else None,
            )
            return json_response(answer.answer.body, answer.answer.status, answer.headers)

    def _resolve(
        self, operation: str, conversation_id: str | None, body: Any, client_id: str | None
    ) -> _Call:
        activity = body if isinstance(body, dict) else {}
        if operation == "create" and isinstance(activity.get("activity"), dict):
            inner = activity["activity"]
        else:
            inner = activity
        known = self.directory.conversations.get(conversation_id or "")
        sender = (inner.get("from") or {}).get("id") or (activity.get("bot") or {}).get("id")
        bot_id = client_id or _strip_28(sender) or self.config.default_bot_id
        tenant = (
            _dig(inner, "conversation", "tenantId")
            or _dig(inner, "channelData", "tenant", "id")
            or activity.get("tenantId")
            or _dig(activity, "channelData", "tenant", "id")
            or (known.tenant_id if known else None)
            or self.config.default_tenant
        )
        users: set[str] = set()
        if known is not None:
            for member in known.members:
                users |= self.directory.user_keys(member)
        users |= self.directory.user_keys(inner.get("recipient"))
        if operation == "create":
            for member in activity.get("members") or []:
                users |= self.directory.user_keys(self.directory.member(member))
            conversation_id = self._create_target(bot_id, str(tenant), activity)
        return _Call(operation, bot_id, str(tenant), conversation_id, body, frozenset(users))

    def _create_target(self, bot_id: str, tenant_id: str, body: Mapping[str, Any]) -> str | None:
        # Rate limits and rules for a create are keyed by the conversation it creates (its thread).
        channel = _dig(body, "channelData", "channel", "id")
        if channel:
            return str(channel)
        members = body.get("members") or []
        if body.get("isGroup") or len(members) != 1 or not isinstance(members[0], Mapping):
            return None
        return self.directory.personal(bot_id, tenant_id, self.directory.member(members[0])).id

    def _check_size(self, body: Any, operation: str) -> None:
        if operation not in ("send", "update", "create") or body is None:
            return
        # Counted on the compact JSON so the answer does not depend on how the client formats it.
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        if len(text.encode("utf-16-le")) > self.config.max_activity_bytes:
            raise _Answer(ERRORS["message_too_big"])

    # ---- operations ---------------------------------------------------------------------------------

    def _store(self, conversation_id: str, tenant_id: str, activity: Mapping[str, Any]) -> str:
        activity_id = str(next(self._activity_ids))
        stats = self._stats_of(conversation_id, tenant_id)
        self.stats.received(stats, activity_id, activity)
        return activity_id

    async def create(self, call: _Call) -> web.StreamResponse:
        body = call.body
        assert call.conversation_id is not None
        activity = body.get("activity")
        if activity is not None and (not isinstance(activity, dict) or not activity.get("type")):
            raise _Answer(bad_argument("The activity needs a 'type'."))
        self.stats.totals["created"] += 1
        answer: dict[str, Any] = {"id": call.conversation_id, "serviceUrl": self.base_url}
        if _dig(body, "channelData", "channel", "id"):
            activity_id = self._store(call.conversation_id, call.tenant_id, activity or {"type": "message"})
            thread_id = f"{call.conversation_id};messageid={activity_id}"
            self.directory.conversations.setdefault(
                thread_id, Conversation(thread_id, call.tenant_id, "channel", [])
            )
            answer.update(id=thread_id, activityId=activity_id)
        elif activity is not None:
            answer["activityId"] = self._store(call.conversation_id, call.tenant_id, activity)
        return json_response(answer, 201)

    async def send(self, call: _Call) -> web.StreamResponse:
        assert call.conversation_id is not None
        activity_id = self._store(call.conversation_id, call.tenant_id, call.body)
        return json_response({"id": activity_id}, 201)

    def _existing(self, call: _Call, activity_id: str) -> dict[str, Any]:
        stats = self.stats.conversations.get(call.conversation_id or "")
        view = stats.activities.get(activity_id) if stats else None
        if view is None or view["deleted"]:
            raise _Answer(ERRORS["activity_not_found"])
        return view

    async def update(self, call: _Call, activity_id: str) -> web.StreamResponse:
        view = self._existing(call, activity_id)
        view["updates"] += 1
        view["text"] = call.body.get("text")
        view["attachments"] = len(call.body.get("attachments") or [])
        self.stats.conversations[call.conversation_id or ""].updates += 1
        self.stats.totals["updates"] += 1
        return json_response({"id": activity_id}, 201)

    async def delete(self, call: _Call, activity_id: str) -> web.StreamResponse:
        view = self._existing(call, activity_id)
        view["deleted"] = True
        self.stats.conversations[call.conversation_id or ""].deletes += 1
        self.stats.totals["deletes"] += 1
        return web.Response(status=200)

    def _members(self, call: _Call) -> list[dict[str, Any]]:
        known = self.directory.conversations.get(call.conversation_id or "")
        members = known.members if known else []
        return [{**m, "tenantId": call.tenant_id} for m in members]

    async def members(self, call: _Call) -> web.StreamResponse:
        return json_response(self._members(call), 200)

    async def paged_members(self, call: _Call, query: Mapping[str, str]) -> web.StreamResponse:
        try:
            size = min(500, max(50, int(query.get("pageSize") or 200)))
            token = query.get("continuationToken")
            start = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
        except ValueError as exc:
            raise _Answer(bad_argument("Invalid pageSize or continuationToken.")) from exc
        members = self._members(call)
        page = members[start : start + size]
        answer: dict[str, Any] = {"members": page}
        if start + size < len(members):
            answer["continuationToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return json_response(answer, 200)

    async def conversations(self, call: _Call) -> web.StreamResponse:
        listed = [
            {"id": c.id, "conversationType": c.type, "tenantId": c.tenant_id, "members": c.members}
            for c in self.directory.conversations.values()
        ]
        return json_response({"conversations": listed}, 200)


async def _read_body(request: web.Request, operation: str) -> Any:
    if request.method not in ("POST", "PUT"):
        return None
    text = await request.text()
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise _Answer(bad_argument("The request body is not valid JSON.")) from exc
    if not isinstance(body, dict):
        raise _Answer(bad_argument("The request body must be a JSON object."))
    if operation in ("send", "update") and not body.get("type"):
        raise _Answer(bad_argument("The activity needs a 'type'."))
    return body


def bad_argument(message: str) -> ErrorAnswer:
    """A 400 BadArgument answer with ``message``."""
    return ErrorAnswer(400, "BadArgument", {"error": {"code": "BadArgument", "message": message}})


def json_response(body: Any, status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON answer with the given status and headers."""
    return web.json_response(body, status=status, headers=headers)


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _strip_28(account_id: Any) -> str | None:
    if not isinstance(account_id, str) or not account_id:
        return None
    return account_id[3:] if account_id.startswith("28:") else account_id
