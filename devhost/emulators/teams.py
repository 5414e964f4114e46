"""A local Bot Connector v3 (Teams) emulator with Teams' documented rate limits and error answers.

``python -m devhost emulate-teams --port P [--config file.json] [--tenant-rate 50] [--require-auth]
[--seed N] [--latency azure|none] [--call-latency-ms MS]`` prints its base URL (``http://127.0.0.1:P/``); a conversation reference whose ``serviceUrl``
is that URL sends here. Numbers and bodies: ``shared/reference/teams-platform-facts.md`` sections 1-3.

Routes (``//`` and a trailing ``/`` are tolerated):

- ``POST /v3/conversations`` create (Teams 1:1: the same bot, tenant and user always get the same ``a:`` id;
  with ``channelData.channel.id`` a new channel thread ``<channel>;messageid=<activityId>``);
  ``GET /v3/conversations`` list.
- ``POST /v3/conversations/{id}/activities`` send; ``POST .../activities/{activityId}`` reply;
  ``PUT`` / ``DELETE .../activities/{activityId}`` update / delete (404 ActivityNotFoundInConversation).
- ``GET /v3/conversations/{id}/members``, ``GET .../pagedmembers?pageSize=&continuationToken=``
  (page size 50..500, default 200).
- ``POST /botframework.com/oauth2/v2.0/token`` and ``POST /{tenant}/oauth2/v2.0/token``: client credentials.
- ``GET /_emulator/`` and ``GET /_emulator/conversations/{id}``: a read-only HTML view of conversations and
  what each received (:mod:`devhost.emulators.teams_page`).
- ``GET /_emulator/stats`` (``?timeline=1`` adds ``throttleLog``, every 429 with its time and tenant; each
  activity carries ``receivedAt``), ``POST /_emulator/config`` (``?mode=replace``, default merge),
  ``POST /_emulator/faults`` (a rule, a list of rules, or ``{"rules": [...], "rates": {...}, "seed": N}``),
  ``DELETE /_emulator/faults``, ``POST /_emulator/reset`` (``{"keep_faults": true}`` keeps rules and rates).

Rate limits (429 ``Throttled`` with a ``Retry-After`` a client can wait for and then succeed):

- per bot per thread: send and create 7/1 s, 8/2 s, 60/30 s, 1800/3600 s; members and conversations
  14/1 s, 16/2 s, 120/30 s, 3600/3600 s. Update and delete count as sends (Teams does not document them;
  they are writes to the thread). A channel reply chain is its channel's thread.
- per thread, all bots together: send / create 14/1 s, 16/2 s; members / conversations 28/1 s, 32/2 s.
- per app per tenant: ``tenant_rate`` requests per second (default 50; ``tenant_rates`` per tenant), all
  operations together.

The bot is the token's client id, else the activity's ``from.id`` (``28:`` stripped), else the create body's
``bot.id``, else ``default_bot_id``. The tenant is ``conversation.tenantId``, ``channelData.tenant.id`` or the
create body's ``tenantId``, else the known conversation's tenant, else ``default_tenant``.

Order of checks: auth (401), JSON and ``type`` (400 BadArgument), size (413, the compact JSON counted as
UTF-16), unknown conversation with ``strict_conversations`` (404), rate limits (429; an admitted request uses
quota even if a fault then answers it), scripted faults, random faults, then the operation itself.

Duplicates: the stats count a delivery per conversation and **notification id**, the sender-set
``channelData.proactive.notificationId`` (or ``channelData.notificationId``). The same notification id
accepted twice in one conversation is listed in ``duplicates``; ``byNotification`` counts conversations
reached, so losses are ``expected - conversations``.

Layout: this module is the HTTP wiring and the command line; ``teams_service`` the request pipeline,
``teams_state`` config, directory and stats, ``teams_faults`` the error bodies and fault rules.

Latency: with ``--latency azure`` (or ``DEVHOST_LATENCY=azure``) every ``/v3`` answer waits a log-normal
delay around 150 ms (``--call-latency-ms`` sets another median; sources in :mod:`devhost.latency`), drawn
from ``--seed``. Rate windows admit a request when it arrives; the delay is the service's time to answer.

Unanswered requests: ``reset`` aborts the connection (the client sees a connection error); ``timeout``
hangs for ``seconds`` (default 120) or until reset/shutdown, then answers 504.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from devhost.emulators.serving import run_until_signal
from devhost.emulators.teams_faults import RandomFaults, parse_rules
from devhost.emulators.teams_page import conversation_page, conversations_page
from devhost.emulators.teams_service import (
    PER_BOT_PER_THREAD,
    PER_THREAD_ALL_BOTS,
    Sleep,
    TeamsEmulator,
    bad_argument,
    json_response,
)
from devhost.emulators.teams_state import TeamsEmulatorConfig
from devhost.latency import BOT_CONNECTOR_MEDIAN_MS, ENV_PROFILE, PROFILES

__all__ = [
    "PER_BOT_PER_THREAD",
    "PER_THREAD_ALL_BOTS",
    "TeamsEmulator",
    "TeamsEmulatorConfig",
    "build_app",
    "emulator_key",
    "load_config",
    "main",
]

# ---- HTTP wiring ------------------------------------------------------------------------------------

_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"/v3/conversations"), "create"),
    ("GET", re.compile(r"/v3/conversations"), "conversations"),
    ("POST", re.compile(r"/v3/conversations/(?P<cid>[^/]+)/activities"), "send"),
    ("POST", re.compile(r"/v3/conversations/(?P<cid>[^/]+)/activities/(?P<aid>[^/]+)"), "reply"),
    ("PUT", re.compile(r"/v3/conversations/(?P<cid>[^/]+)/activities/(?P<aid>[^/]+)"), "update"),
    ("DELETE", re.compile(r"/v3/conversations/(?P<cid>[^/]+)/activities/(?P<aid>[^/]+)"), "delete"),
    ("GET", re.compile(r"/v3/conversations/(?P<cid>[^/]+)/members"), "members"),
    ("GET", re.compile(r"/v3/conversations/(?P<cid>[^/]+)/pagedmembers"), "pagedmembers"),
    ("POST", re.compile(r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token"), "token"),
]

_APP_KEY = web.AppKey("teams_emulator", TeamsEmulator)


def build_app(
    config: TeamsEmulatorConfig | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> web.Application:
    """Build the emulator's aiohttp application.

    Args:
        config: starting configuration (defaults: 50 requests/s per tenant, no auth, no faults).
        clock: monotonic seconds for rate windows and token expiry; inject a fake to move time in tests.
        sleep: awaited for scripted delays; inject to observe them without waiting.

    Returns:
        The application; its emulator is ``app[emulator_key()]``. The base URL (for ``serviceUrl``) is taken
        from the first request's host, or set ``emulator.base_url`` yourself.
    """
    emulator = TeamsEmulator(config or TeamsEmulatorConfig(), clock=clock, sleep=sleep)
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[_APP_KEY] = emulator

    async def release(_app: web.Application) -> None:
        emulator.release_hung()

    app.on_shutdown.append(release)
    app.router.add_get("/_emulator/stats", _stats)
    app.router.add_get("/_emulator", _list_page)
    app.router.add_get("/_emulator/", _list_page)
    app.router.add_get("/_emulator/conversations/{cid}", _conversation_page)
    app.router.add_post("/_emulator/config", _config)
    app.router.add_post("/_emulator/faults", _add_faults)
    app.router.add_delete("/_emulator/faults", _clear_faults)
    app.router.add_post("/_emulator/reset", _reset)
    app.router.add_route("*", "/{path:.*}", _dispatch)
    return app


def emulator_key() -> web.AppKey[TeamsEmulator]:
    """The key under which :func:`build_app` stores its :class:`TeamsEmulator`."""
    return _APP_KEY


async def _dispatch(request: web.Request) -> web.StreamResponse:
    emulator = request.app[_APP_KEY]
    if not emulator.base_url:
        emulator.base_url = f"{request.scheme}://{request.host}/"
    path = re.sub(r"/{2,}", "/", request.rel_url.raw_path)
    if len(path) > 1:
        path = path.rstrip("/")
    route = next(
        (
            (name, found)
            for method, pattern, name in _ROUTES
            if method == request.method and (found := pattern.fullmatch(path)) is not None
        ),
        None,
    )
    if route is None:
        error = {"error": {"code": "NotFound", "message": f"No route for {request.method} {path}"}}
        return json_response(error, 404)
    name, found = route
    parts = {key: unquote(value) for key, value in found.groupdict().items()}
    cid, aid = parts.get("cid"), parts.get("aid") or ""
    if name == "token":
        return await _token(request, emulator, parts["tenant"])
    if name in ("create", "conversations"):
        action = emulator.create if name == "create" else emulator.conversations
        return await emulator.handle(request, name, None, action)
    if name in ("send", "reply"):
        return await emulator.handle(request, "send", cid, emulator.send)
    if name == "update":
        return await emulator.handle(request, "update", cid, lambda c: emulator.update(c, aid))
    if name == "delete":
        return await emulator.handle(request, "delete", cid, lambda c: emulator.delete(c, aid))
    if name == "members":
        return await emulator.handle(request, "members", cid, emulator.members)
    query = request.query
    return await emulator.handle(request, "members", cid, lambda c: emulator.paged_members(c, query))


async def _token(request: web.Request, emulator: TeamsEmulator, tenant: str) -> web.StreamResponse:
    form = await request.post()
    grant, client_id = form.get("grant_type"), form.get("client_id")
    secret, scope = form.get("client_secret"), form.get("scope")
    if grant != "client_credentials":
        return json_response(
            {"error": "unsupported_grant_type", "error_description": "Use client_credentials."}, 400
        )
    if not isinstance(client_id, str) or not client_id or not isinstance(scope, str) or not scope:
        missing = {"error": "invalid_request", "error_description": "client_id and scope are required."}
        return json_response(missing, 400)
    expected = emulator.config.credentials.get(client_id)
    if emulator.config.credentials and (expected is None or expected != secret):
        return json_response({"error": "invalid_client", "error_description": "Invalid client secret."}, 401)
    tenant_id = emulator.config.default_tenant if tenant == "botframework.com" else tenant
    return json_response(emulator.issue_token(client_id, tenant_id), 200)


async def _stats(request: web.Request) -> web.StreamResponse:
    emulator = request.app[_APP_KEY]
    activities = request.query.get("activities", "1") not in ("0", "false")
    timeline = request.query.get("timeline", "0") not in ("0", "false")
    document = emulator.stats.to_json(
        activities=activities, only=request.query.get("conversation"), timeline=timeline
    )
    document["faults"] = [rule.describe() for rule in emulator.rules]
    document["rates"] = emulator.random.rates
    return json_response(document, 200)


async def _list_page(request: web.Request) -> web.StreamResponse:
    try:
        limit = max(1, int(request.query.get("limit", "500")))
    except ValueError:
        limit = 500
    page = conversations_page(request.app[_APP_KEY].stats, tenant=request.query.get("tenant"), limit=limit)
    return web.Response(text=page, content_type="text/html")


async def _conversation_page(request: web.Request) -> web.StreamResponse:
    page = conversation_page(request.app[_APP_KEY].stats, request.match_info["cid"])
    if page is None:
        return web.Response(status=404, text="Unknown conversation.", content_type="text/plain")
    return web.Response(text=page, content_type="text/html")


async def _config(request: web.Request) -> web.StreamResponse:
    emulator = request.app[_APP_KEY]
    try:
        raw = await request.json()
        base = TeamsEmulatorConfig() if request.query.get("mode") == "replace" else emulator.config
        config = base.merged(raw)
    except (ValueError, TypeError, AttributeError) as exc:
        return json_response(bad_argument(str(exc)).body, 400)
    emulator.configure(config)
    return json_response({"ok": True}, 200)


async def _add_faults(request: web.Request) -> web.StreamResponse:
    emulator = request.app[_APP_KEY]
    try:
        raw = await request.json()
        if isinstance(raw, list):
            raw = {"rules": raw}
        elif "rules" not in raw and "rates" not in raw:
            raw = {"rules": [raw]}
        rules = parse_rules(raw.get("rules") or [])
        config = emulator.config
        defaults = {"seconds": config.timeout_seconds, "retry_after": config.rate_retry_after}
        random_faults = (
            RandomFaults.from_dict({**defaults, **raw}, seed=config.seed) if "rates" in raw else None
        )
    except (ValueError, TypeError, AttributeError) as exc:
        return json_response(bad_argument(str(exc)).body, 400)
    emulator.rules.extend(rules)
    if random_faults is not None:
        emulator.random = random_faults
    return json_response({"ok": True, "rules": len(emulator.rules)}, 200)


async def _clear_faults(request: web.Request) -> web.StreamResponse:
    emulator = request.app[_APP_KEY]
    emulator.rules = []
    emulator.random = RandomFaults()
    return json_response({"ok": True}, 200)


async def _reset(request: web.Request) -> web.StreamResponse:
    emulator = request.app[_APP_KEY]
    try:
        raw = await request.json() if request.can_read_body else {}
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        return json_response(bad_argument("The body must be a JSON object.").body, 400)
    emulator.configure(emulator.config, keep_faults=bool(raw.get("keep_faults")))
    return json_response({"ok": True}, 200)


# ---- command line -----------------------------------------------------------------------------------


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devhost emulate-teams", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--config", help="JSON config file (see TeamsEmulatorConfig)")
    parser.add_argument("--tenant-rate", type=float, help="requests/s per app per tenant (default 50)")
    parser.add_argument("--require-auth", action="store_true", help="require a token from the token endpoint")
    parser.add_argument("--seed", type=int, help="seed for random fault rates and call latency")
    parser.add_argument(
        "--latency",
        choices=PROFILES,
        help=f"latency profile (default ${ENV_PROFILE} or none); azure: calls answer after about "
        f"{BOT_CONNECTOR_MEDIAN_MS:.0f} ms",
    )
    parser.add_argument(
        "--call-latency-ms", type=float, help="median delay of every /v3 answer in ms (overrides --latency)"
    )
    return parser.parse_args(argv)


def load_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> TeamsEmulatorConfig:
    """The config file's settings with the command-line flags on top (``environ``: ``DEVHOST_LATENCY``)."""
    config = TeamsEmulatorConfig.from_file(args.config) if args.config else TeamsEmulatorConfig()
    overrides: dict[str, Any] = {}
    profile = args.latency or (environ or {}).get(ENV_PROFILE, "").strip() or None
    if args.call_latency_ms is not None:
        overrides["call_latency_ms"] = args.call_latency_ms
    elif profile == "azure":
        overrides["call_latency_ms"] = BOT_CONNECTOR_MEDIAN_MS
    elif profile == "none":
        overrides["call_latency_ms"] = 0.0
    if args.tenant_rate is not None:
        overrides["tenant_rate"] = args.tenant_rate
    if args.require_auth:
        overrides["require_auth"] = True
    if args.seed is not None:
        overrides["seed"] = args.seed
    return config.merged(overrides)


def main(argv: list[str]) -> int:
    """Entry point of ``python -m devhost emulate-teams``."""
    args = _parse_args(argv)
    try:
        config = load_config(args, os.environ)
    except (OSError, ValueError) as exc:
        print(f"emulate-teams: bad config: {exc}", file=sys.stderr)
        return 2

    app = build_app(config)

    def remember_base_url(base_url: str) -> None:
        app[_APP_KEY].base_url = base_url

    return run_until_signal(app, args.port, on_bound=remember_base_url)
