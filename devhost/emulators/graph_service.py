"""The Graph emulator's behaviour, independent of HTTP framing: routes, directory, installs, limits.

:class:`GraphService` answers a :class:`Call` (method, path under ``/v1.0``, query, JSON body and the
caller's tenant and app id from its token) with a :class:`Reply`. The aiohttp layer in
:mod:`devhost.emulators.graph` and ``$batch`` both go through :meth:`GraphService.dispatch`, so a
request inside a batch is routed, fault-injected, throttled and counted exactly like one sent alone,
which is what Graph does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import random
import re
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from devhost.emulators.graph_model import (
    FaultRule,
    GraphEmulatorConfig,
    TeamConfig,
    TeamsAppConfig,
    TenantConfig,
    UserConfig,
)
from devhost.emulators.windows import Limit, SlidingWindows

JSON_CONTENT_TYPE = "application/json;odata.metadata=minimal;odata.streaming=true;charset=utf-8"
MAX_BATCH_REQUESTS = 20
NOT_FOUND = "Resource '{}' does not exist or one of its queried reference-property objects are not present."
# Keep the last activities' outcomes for /_emulator/stats without growing without bound.
MAX_ACTIVITY_RECORDS = 2000

ERROR_CODES = {
    400: "BadRequest",
    401: "InvalidAuthenticationToken",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    424: "FailedDependency",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceNotAvailable",
    504: "GatewayTimeout",
}


@dataclass(frozen=True)
class Caller:
    """Who is calling, from the bearer token: the tenant it was issued for and the client (app) id."""

    tenant_id: str
    app_id: str


@dataclass
class Call:
    """One Graph request, already authenticated."""

    method: str
    path: str  # under /v1.0, percent-decoded, e.g. "/users/u1/teamwork/installedApps"
    query: Mapping[str, str]
    body: Any
    caller: Caller
    base_url: str  # the emulator's own origin, for absolute @odata.nextLink URLs
    client_request_id: str | None = None
    in_batch: bool = False


@dataclass
class Reply:
    """An answer: status, JSON body (None for no content) and extra headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class GraphError(Exception):
    """Raised by handlers to answer with a Graph error body."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or ERROR_CODES.get(status, "UnknownError")
        self.message = message


def error_body(code: str, message: str, request_id: str, client_request_id: str | None) -> dict[str, Any]:
    """Graph's error body: ``{"error": {"code", "message", "innerError": {...}}}``."""
    inner: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "request-id": request_id,
    }
    if client_request_id:
        inner["client-request-id"] = client_request_id
    return {"error": {"code": code, "message": message, "innerError": inner}}


@dataclass
class Installation:
    """An app installed for a user (personal scope) or in a team."""

    id: str
    tenant_id: str
    scope: str  # "user" | "team"
    owner_id: str  # user id or team id
    app: TeamsAppConfig
    chat_id: str | None


@dataclass
class Stats:
    """What the emulator saw; served by ``GET /_emulator/stats``."""

    requests: dict[str, Counter[str]] = field(default_factory=dict)
    installs: Counter[str] = field(default_factory=Counter)
    uninstalls: Counter[str] = field(default_factory=Counter)
    throttled_by_tenant: Counter[str] = field(default_factory=Counter)
    conflicts: int = 0
    throttled: int = 0
    faults_injected: int = 0
    tokens_issued: int = 0
    activities_posted: int = 0
    activities_delivered: int = 0
    activities_failed: int = 0
    activities: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_ACTIVITY_RECORDS))

    def count(self, label: str, status: int) -> None:
        """Count one answered request under its route label."""
        self.requests.setdefault(label, Counter())[str(status)] += 1
        if status == 409:
            self.conflicts += 1

    def to_json(self) -> dict[str, Any]:
        """The JSON document of ``GET /_emulator/stats``."""
        return {
            "requests": {label: dict(statuses) for label, statuses in sorted(self.requests.items())},
            "installs": dict(self.installs),
            "uninstalls": dict(self.uninstalls),
            "conflicts": self.conflicts,
            "throttled": self.throttled,
            "throttledByTenant": dict(self.throttled_by_tenant),
            "faultsInjected": self.faults_injected,
            "tokensIssued": self.tokens_issued,
            "activities": {
                "posted": self.activities_posted,
                "delivered": self.activities_delivered,
                "failed": self.activities_failed,
                "items": list(self.activities),
            },
        }


Handler = Callable[["GraphService", Call, "re.Match[str]"], Awaitable[Reply]]


@dataclass(frozen=True)
class Route:
    """One Graph route: method, path pattern, fault-rule operation name, stats label and handler."""

    method: str
    pattern: re.Pattern[str]
    operation: str  # the FaultRule operation name
    label: str  # how stats name the route
    handler: Handler


_SEG = r"(?P<{}>[^/]+)"


def route(method: str, template: str, operation: str, handler: Handler) -> Route:
    """Build a :class:`Route` from a template such as ``/users/{user}/teamwork/installedApps``."""
    regex = re.escape(template)
    for name in ("user", "installation", "team", "group", "app"):
        regex = regex.replace(re.escape("{" + name + "}"), _SEG.format(name))
    regex = regex.replace(re.escape("{cast}"), r"(?:/(?:microsoft\.)?graph\.(?P<cast>user|group))?")
    template_label = template.replace("{cast}", "")
    return Route(
        method, re.compile(f"^{regex}/?$", re.IGNORECASE), operation, f"{method} {template_label}", handler
    )


class FaultInjector:
    """Scripted and seeded-random failures, per :class:`FaultRule`."""

    def __init__(self, rules: list[FaultRule], seed: int) -> None:
        self.rules = list(rules)
        self._remaining: list[deque[int | str]] = [deque(rule.statuses) for rule in self.rules]
        self._random = random.Random(seed)

    def pick(self, operation: str, tenant_id: str | None) -> FaultRule | None:
        """The rule (with ``status`` set to the status to answer) that fails this request, if any."""
        for index, rule in enumerate(self.rules):
            if rule.operation not in ("*", operation):
                continue
            if rule.tenant is not None and rule.tenant != tenant_id:
                continue
            if self._remaining[index]:
                scripted = self._remaining[index].popleft()
                if scripted == "ok":
                    return None
                return rule.model_copy(update={"status": scripted})
            if rule.rate > 0 and self._random.random() < rule.rate:
                return rule
        return None


def per_second(rate: float) -> Limit:
    """A requests-per-second rate as a sliding-window :class:`Limit`."""
    # Fractional rates (0.5 rps) become "1 per 2 s"; whole rates stay "N per 1 s".
    if rate >= 1:
        return Limit(int(rate), 1.0)
    return Limit(1, 1.0 / rate)


_FILTER_CLAUSE = re.compile(r"^\s*(?P<path>[\w/]+)\s+eq\s+'(?P<value>(?:[^']|'')*)'\s*$", re.IGNORECASE)


def parse_filter(expression: str | None) -> list[tuple[list[str], str]]:
    """Parse ``a eq 'x' and b/c eq 'y'`` (the only $filter forms this project uses)."""
    if not expression:
        return []
    clauses = []
    for part in re.split(r"\s+and\s+", expression.strip(), flags=re.IGNORECASE):
        match = _FILTER_CLAUSE.match(part)
        if match is None:
            raise GraphError(400, f"Invalid filter clause: {part!r}", "BadRequest")
        clauses.append((match["path"].split("/"), match["value"].replace("''", "'")))
    return clauses


def matches(item: Mapping[str, Any], clauses: list[tuple[list[str], str]]) -> bool:
    """Whether ``item`` satisfies every parsed ``$filter`` clause (case-insensitive, like Graph)."""
    for path, expected in clauses:
        value: Any = item
        for key in path:
            # OData property names are case-insensitive enough for this emulator's purposes.
            found = {k.lower(): v for k, v in value.items()} if isinstance(value, Mapping) else {}
            value = found.get(key.lower())
        if value is None or str(value).lower() != expected.lower():
            return False
    return True


def select_properties(item: dict[str, Any], select: str | None) -> dict[str, Any]:
    """Apply ``$select`` (``id`` and ``@odata.*`` annotations always stay)."""
    if not select:
        return item
    wanted = {name.strip().lower() for name in select.split(",")} | {"id"}
    return {k: v for k, v in item.items() if k.startswith("@") or k.lower() in wanted}


def make_installation_id(owner_id: str, app_id: str) -> str:
    """The installation id of ``app_id`` for a user or team."""
    # Graph's installation ids are base64 of "<owner>##<catalog app id>"; kept for realism.
    return base64.b64encode(f"{owner_id}##{app_id}".encode()).decode()


def app_json(app: TeamsAppConfig) -> dict[str, Any]:
    """A ``teamsApp`` resource."""
    return {
        "id": app.id,
        "externalId": app.external_id,
        "displayName": app.display_name,
        "distributionMethod": app.distribution_method,
    }


def user_json(user: UserConfig) -> dict[str, Any]:
    """A ``user`` resource with the properties the emulator knows."""
    return {
        "@odata.type": "#microsoft.graph.user",
        "id": user.id,
        "displayName": user.display_name,
        "userPrincipalName": user.user_principal_name,
        "mail": user.mail,
        "userType": user.user_type,
    }


class GraphService:
    """Directory, installations, limits, faults and stats of one emulator instance.

    Args:
        config: the directory and behaviour.
        clock: monotonic seconds, for rate limits (tests inject a fake).
        routes: the Graph routes it answers (:data:`devhost.emulators.graph_handlers.ROUTES`).
    """

    def __init__(
        self, config: GraphEmulatorConfig, clock: Callable[[], float], routes: Sequence[Route] = ()
    ) -> None:
        self.clock = clock
        self.routes = list(routes)
        self.windows = SlidingWindows(clock)
        self.stats = Stats()
        self.session: aiohttp.ClientSession | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self.installations: dict[str, Installation] = {}
        self.configure(config)

    # --- configuration and lifecycle -------------------------------------------------------------

    def configure(self, config: GraphEmulatorConfig) -> None:
        """Replace the directory and behaviour; installations and rate windows start afresh."""
        self.config = config
        self.faults = FaultInjector(config.faults, config.seed)
        self.installations.clear()
        self.windows.reset()

    def set_faults(self, rules: list[FaultRule], seed: int | None = None) -> None:
        """Replace the fault rules (and restart their sequences)."""
        update: dict[str, Any] = {"faults": rules}
        if seed is not None:
            update["seed"] = seed
        self.config = self.config.model_copy(update=update)
        self.faults = FaultInjector(self.config.faults, self.config.seed)

    def reset(self) -> None:
        """Forget installs, rate windows, stats and fault progress; keep the configuration."""
        self.configure(self.config)
        self.stats = Stats()

    async def settle(self) -> None:
        """Wait until every activity delivery started so far has finished."""
        while self._deliveries:
            await asyncio.gather(*list(self._deliveries), return_exceptions=True)

    # --- dispatch -----------------------------------------------------------------------------------

    async def dispatch(self, call: Call) -> Reply:
        """Route, fault-inject, throttle, handle and count one request."""
        request_id = str(uuid.uuid4())
        route, match = self._find(call)
        label = route.label if route else f"{call.method} (unknown)"
        try:
            if route is None or match is None:
                raise GraphError(400, f"Resource not found for the segment '{call.path}'.", "BadRequest")
            fault = self.faults.pick(route.operation, call.caller.tenant_id)
            if fault is not None:
                self.stats.faults_injected += 1
                headers = {"Retry-After": format_seconds(fault.retry_after)} if fault.retry_after else {}
                reply = Reply(fault.status, None, headers)
                message = "Injected fault." if fault.status != 429 else "Too many requests."
                raise _ReplyError(reply, message)
            reply = await route.handler(self, call, match)
        except GraphError as exc:
            reply = Reply(exc.status, error_body(exc.code, exc.message, request_id, call.client_request_id))
        except _ReplyError as exc:
            reply = exc.reply
            code = ERROR_CODES.get(reply.status, "UnknownError")
            reply.body = error_body(code, exc.message, request_id, call.client_request_id)
        if reply.status == 429:
            self.stats.throttled += 1
            self.stats.throttled_by_tenant[call.caller.tenant_id] += 1
        self.stats.count(label, reply.status)
        reply.headers.setdefault("request-id", request_id)
        if call.client_request_id:
            reply.headers.setdefault("client-request-id", call.client_request_id)
        return reply

    def _find(self, call: Call) -> tuple[Route | None, re.Match[str] | None]:
        path_matched: tuple[Route, re.Match[str]] | None = None
        for route in self.routes:
            match = route.pattern.match(call.path)
            if match is None:
                continue
            if route.method == call.method:
                return route, match
            path_matched = path_matched or (route, match)
        if path_matched is not None:
            raise_method = Route(
                call.method, path_matched[0].pattern, "*", path_matched[0].label, _not_allowed
            )
            return raise_method, path_matched[1]
        return None, None

    def throttle(self, call: Call, operation: str, per_tenant: float | None, per_app: float | None) -> None:
        """Admit the request under both the per-tenant and the per-app window, or raise 429."""
        app_id, tenant_id = call.caller.app_id, call.caller.tenant_id
        keys: list[tuple[tuple[str, ...], list[Limit]]] = []
        if per_tenant is not None:
            keys.append(((operation, "tenant", app_id, tenant_id.lower()), [per_second(per_tenant)]))
        if per_app is not None:
            keys.append(((operation, "app", app_id), [per_second(per_app)]))
        self.admit(keys)

    def admit(self, keys: list[tuple[tuple[str, ...], list[Limit]]]) -> None:
        """Record one request under every ``(key, limits)`` pair, or raise 429 with the longest wait."""
        # Peek at every window first: a request refused by one window must not use up another's quota.
        waits = [wait for key, limits in keys if (wait := self.windows.peek(key, limits)) is not None]
        if waits:
            retry_after = max(waits)
            headers = {"Retry-After": self._retry_after(retry_after)}
            message = "Too many requests. Please retry after the time given in the Retry-After header."
            raise _ReplyError(Reply(429, None, headers), message)
        for key, limits in keys:
            self.windows.acquire(key, limits)

    def _retry_after(self, seconds: float) -> str:
        if self.config.throttle.integer_retry_after:
            return str(max(1, int(-(-seconds // 1))))
        return format_seconds(seconds)

    # --- directory lookups --------------------------------------------------------------------------

    def tenant(self, call: Call) -> TenantConfig:
        """The caller's tenant (a token for an unconfigured tenant cannot be issued, but configs change)."""
        tenant = self.config.tenant(call.caller.tenant_id)
        if tenant is None:
            raise GraphError(
                401, "The tenant of the access token is not known.", "InvalidAuthenticationToken"
            )
        return tenant

    def user(self, call: Call, user_ref: str) -> UserConfig:
        """A user of the caller's tenant, by object id or user principal name; 404 otherwise."""
        for user in self.tenant(call).users:
            if user_ref.lower() in (user.id.lower(), user.user_principal_name.lower()):
                return user
        raise GraphError(
            404,
            NOT_FOUND.format(user_ref),
            "Request_ResourceNotFound",
        )

    def team(self, call: Call, team_id: str) -> TeamConfig:
        """A team of the caller's tenant; 404 otherwise."""
        for team in self.tenant(call).teams:
            if team.id.lower() == team_id.lower():
                return team
        raise GraphError(404, f"No team found with Group Id {team_id}", "NotFound")

    def app_from_bind(self, call: Call) -> TeamsAppConfig:
        """The catalog app named by ``teamsApp@odata.bind``; 400 when missing, 404 when unknown."""
        body = call.body if isinstance(call.body, dict) else {}
        bind = body.get("teamsApp@odata.bind")
        if not isinstance(bind, str) or "teamsApps" not in bind:
            raise GraphError(400, "The 'teamsApp@odata.bind' property is required.", "BadRequest")
        # Both ".../teamsApps/{id}" and ".../teamsApps('{id}')" are accepted by Graph.
        app_id = re.split(r"teamsApps", bind, maxsplit=1)[1].strip("/()'")
        for app in self.tenant(call).apps:
            if app.id == app_id:
                return app
        raise GraphError(404, f"The Teams app '{app_id}' was not found in the app catalog.", "NotFound")

    def installation(self, call: Call, scope: str, owner_id: str, installation_id: str) -> Installation:
        """An existing installation of the caller's tenant; 404 otherwise."""
        found = self.installations.get(installation_id)
        if (
            found is None
            or found.scope != scope
            or found.owner_id.lower() != owner_id.lower()
            or found.tenant_id.lower() != call.caller.tenant_id.lower()
        ):
            raise GraphError(404, f"The app installation '{installation_id}' was not found.", "NotFound")
        return found

    def page(self, call: Call, items: list[dict[str, Any]]) -> Reply:
        """One page of ``items`` with ``$top`` and an absolute ``@odata.nextLink`` while more remain."""
        top_text = call.query.get("$top")
        try:
            top = int(top_text) if top_text is not None else self.config.default_page_size
        except ValueError:
            raise GraphError(400, f"Invalid page size specified: '{top_text}'.", "BadRequest") from None
        if not 1 <= top <= self.config.max_page_size:
            raise GraphError(
                400,
                f"Invalid page size specified: '{top}'. "
                f"Must be between 1 and {self.config.max_page_size} inclusive.",
                "Request_UnsupportedQuery",
            )
        offset = _decode_skiptoken(call.query.get("$skiptoken"))
        clauses = parse_filter(call.query.get("$filter"))
        matching = [item for item in items if matches(item, clauses)]
        chunk = [
            select_properties(item, call.query.get("$select")) for item in matching[offset : offset + top]
        ]
        body: dict[str, Any] = {
            "@odata.context": f"{call.base_url}/v1.0/$metadata#directoryObjects",
            "value": chunk,
        }
        if offset + top < len(matching):
            params = {k: v for k, v in call.query.items() if k != "$skiptoken"}
            params["$top"] = str(top)
            params["$skiptoken"] = _encode_skiptoken(offset + top)
            query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
            body["@odata.nextLink"] = f"{call.base_url}/v1.0{call.path}?{query}"
        return Reply(200, body)

    # --- events -------------------------------------------------------------------------------------

    def post_activities(self, activities: list[dict[str, Any]]) -> None:
        """Deliver activities to the configured messaging endpoint in the background, in order."""
        endpoint = self.config.messaging_endpoint
        if not endpoint or not activities:
            return
        task = asyncio.get_running_loop().create_task(self._deliver(endpoint, activities))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, endpoint: str, activities: list[dict[str, Any]]) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        for activity in activities:
            record: dict[str, Any] = {
                "type": activity["type"],
                "action": activity.get("action"),
                "tenantId": activity["channelData"]["tenant"]["id"],
                "conversationId": activity["conversation"]["id"],
                "status": None,
                "error": None,
            }
            self.stats.activities_posted += 1
            try:
                timeout = aiohttp.ClientTimeout(total=10)
                async with self.session.post(endpoint, json=activity, timeout=timeout) as response:
                    record["status"] = response.status
                    await response.read()
                ok = 200 <= response.status < 300
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                # Delivery failures are the bot's problem to show, not the emulator's: count, never raise.
                record["error"] = f"{type(exc).__name__}: {exc}"
                ok = False
            if ok:
                self.stats.activities_delivered += 1
            else:
                self.stats.activities_failed += 1
            self.stats.activities.append(record)

    async def close(self) -> None:
        """Finish pending deliveries and close the outbound session."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settle(), timeout=15)
        if self.session is not None:
            await self.session.close()
            self.session = None


class _ReplyError(Exception):
    def __init__(self, reply: Reply, message: str) -> None:
        super().__init__(message)
        self.reply = reply
        self.message = message


def format_seconds(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds without a fraction, else up to milliseconds."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:.3f}".rstrip("0")


def _encode_skiptoken(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def _decode_skiptoken(token: str | None) -> int:
    if not token:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["o"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise GraphError(400, "The $skiptoken is not valid.", "BadRequest") from None
    if not isinstance(offset, int) or offset < 0:
        raise GraphError(400, "The $skiptoken is not valid.", "BadRequest")
    return offset


def now_utc() -> datetime:
    """The current UTC time (timestamps on events and chats; not used for rate limits)."""
    return datetime.now(UTC)


async def _not_allowed(service: GraphService, call: Call, match: re.Match[str]) -> Reply:
    raise GraphError(405, f"The HTTP method '{call.method}' is not allowed for this resource.", "BadRequest")
