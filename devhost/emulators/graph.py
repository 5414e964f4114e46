"""A local Microsoft Graph emulator for proactive app installation, built from section 5 of
``shared/reference/teams-platform-facts.md``.

``python -m devhost emulate-graph --port P [--config file.json] [--install-rate 30]
[--messaging-endpoint URL] [--teams-service-url URL]`` prints its base URL (``http://127.0.0.1:P``);
Graph calls go to ``{base}/v1.0/...``, tokens come from ``{base}/{tenantId}/oauth2/v2.0/token``.

Routes (under ``/v1.0``; see :mod:`devhost.emulators.graph_service` for their behaviour):

- ``GET /appCatalogs/teamsApps?$filter=externalId eq '...'`` (also ``id``, ``distributionMethod``)
- ``GET|POST /users/{id}/teamwork/installedApps`` (``$expand=teamsApp``, ``$filter=teamsApp/id eq '...'``;
  POST ``{"teamsApp@odata.bind": ".../appCatalogs/teamsApps/{id}"}`` -> 201, 409 when installed),
  ``GET|DELETE .../installedApps/{installationId}``, ``GET .../installedApps/{installationId}/chat``
- ``GET|POST /teams/{id}/installedApps``, ``GET|DELETE /teams/{id}/installedApps/{installationId}``
- ``GET /groups/{id}/transitiveMembers`` and ``/members`` (optionally ``/microsoft.graph.user``),
  ``GET /users``, ``GET /users/{id}``: ``$top`` (default 100, max 999), ``$skiptoken``, absolute
  ``@odata.nextLink``
- ``POST /$batch``: at most 20 requests, each routed, throttled and answered on its own

The caller's tenant and app come from its bearer token, an HS256 JWT this emulator signs (claims ``tid``,
``appid``, ``aud`` = ``https://graph.microsoft.com``); a user of another tenant is 404. Installs, reads
and deletes of installedApps are throttled per app per tenant and per app (30/300, 30/1500, 15/150 rps)
with 429 ``TooManyRequests`` and ``Retry-After``.

Control routes: ``GET /_emulator/stats[?settle=true]`` (``settle`` waits for pending event deliveries),
``POST /_emulator/reset``, ``GET|POST /_emulator/config`` (a full :class:`GraphEmulatorConfig`; replaces
the directory and forgets installs), ``POST /_emulator/faults`` (``{"faults": [...], "seed": 1}``).
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from devhost.emulators.graph_handlers import ROUTES
from devhost.emulators.graph_model import FaultRule, GraphEmulatorConfig
from devhost.emulators.graph_service import (
    JSON_CONTENT_TYPE,
    Call,
    Caller,
    GraphService,
    Reply,
    error_body,
)
from devhost.emulators.serving import run_until_signal

__all__ = ["SERVICE_KEY", "GraphEmulatorConfig", "build_app", "main"]

SERVICE_KEY: web.AppKey[GraphService] = web.AppKey("graph_service", GraphService)
_SECRET_KEY: web.AppKey[bytes] = web.AppKey("graph_token_secret", bytes)
_WALL_CLOCK_KEY: web.AppKey[Callable[[], float]] = web.AppKey("graph_wall_clock")

GRAPH_AUDIENCE = "https://graph.microsoft.com"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
TOKEN_LIFETIME_SECONDS = 3599


def build_app(
    config: GraphEmulatorConfig,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> web.Application:
    """Build the emulator's aiohttp application.

    Args:
        config: directory and behaviour.
        clock: monotonic seconds for the rate limits; tests inject a fake to avoid sleeping.
        wall_clock: epoch seconds for token ``iat`` / ``exp``.

    Returns:
        The application; ``app[SERVICE_KEY]`` is its :class:`GraphService` (state, stats).
    """
    app = web.Application()
    service = GraphService(config, clock, ROUTES)
    app[SERVICE_KEY] = service
    app[_SECRET_KEY] = secrets.token_bytes(32)
    app[_WALL_CLOCK_KEY] = wall_clock
    app.router.add_post("/{tenant}/oauth2/v2.0/token", _token)
    app.router.add_get("/_emulator/stats", _stats)
    app.router.add_post("/_emulator/reset", _reset)
    app.router.add_get("/_emulator/config", _get_config)
    app.router.add_post("/_emulator/config", _set_config)
    app.router.add_post("/_emulator/faults", _set_faults)
    app.router.add_route("*", "/v1.0/{tail:.*}", _graph)

    async def close_service(_: web.Application) -> None:
        await service.close()

    app.on_cleanup.append(close_service)
    return app


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        headers={"Content-Type": JSON_CONTENT_TYPE, **(headers or {})},
    )


def _reply(reply: Reply) -> web.Response:
    if reply.body is None:
        return web.Response(status=reply.status, headers=reply.headers)
    return _json(reply.body, reply.status, reply.headers)


# --- Graph ------------------------------------------------------------------------------------------


async def _graph(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    client_request_id = request.headers.get("client-request-id")
    caller = _authenticate(request)
    if isinstance(caller, str):
        body = error_body("InvalidAuthenticationToken", caller, str(uuid.uuid4()), client_request_id)
        service.stats.count(f"{request.method} (unauthenticated)", 401)
        return _json(body, 401)
    payload: Any = None
    if request.can_read_body:
        raw = await request.read()
        if raw.strip():
            try:
                payload = json.loads(raw)
            except ValueError:
                error = error_body("BadRequest", "Invalid JSON in request body.", str(uuid.uuid4()), None)
                return _json(error, 400)
    call = Call(
        method=request.method,
        path="/" + request.match_info["tail"],
        query=dict(request.query),
        body=payload,
        caller=caller,
        base_url=f"{request.scheme}://{request.host}",
        client_request_id=client_request_id,
    )
    return _reply(await service.dispatch(call))


def _authenticate(request: web.Request) -> Caller | str:
    """The caller from a bearer token, or the message of a 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "Access token is empty."
    try:
        claims = jwt.decode(
            token.strip(),
            request.app[_SECRET_KEY],
            algorithms=["HS256"],
            audience=GRAPH_AUDIENCE,
            options={"require": ["tid", "appid", "exp"]},
        )
    except jwt.ExpiredSignatureError:
        return "Lifetime validation failed, the token is expired."
    except jwt.InvalidTokenError as exc:
        return f"Access token validation failure: {exc}"
    return Caller(tenant_id=str(claims["tid"]), app_id=str(claims["appid"]))


# --- token endpoint ---------------------------------------------------------------------------------


def _aad_error(status: int, error: str, code: int, description: str) -> web.Response:
    body = {
        "error": error,
        "error_description": f"AADSTS{code}: {description}",
        "error_codes": [code],
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "trace_id": str(uuid.uuid4()),
        "correlation_id": str(uuid.uuid4()),
    }
    return web.json_response(body, status=status)


async def _token(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    label = "POST /{tenant}/oauth2/v2.0/token"
    tenant_id = request.match_info["tenant"]
    fault = service.faults.pick("token", tenant_id)
    if fault is not None:
        service.stats.faults_injected += 1
        service.stats.count(label, fault.status)
        return _aad_error(fault.status, "temporarily_unavailable", 50000, "Injected fault.")
    response = await _issue_token(request, tenant_id)
    service.stats.count(label, response.status)
    return response


async def _issue_token(request: web.Request, tenant_id: str) -> web.Response:
    tenant = request.app[SERVICE_KEY].config.tenant(tenant_id)
    if tenant is None:
        return _aad_error(400, "invalid_request", 90002, f"Tenant '{tenant_id}' not found.")
    tenant_id, clients = tenant.id, tenant.clients
    form = await request.post()
    grant_type = str(form.get("grant_type", ""))
    client_id = str(form.get("client_id", ""))
    secret = str(form.get("client_secret", ""))
    scope = str(form.get("scope", ""))
    if grant_type != "client_credentials":
        return _aad_error(
            400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
        )
    if not client_id:
        return _aad_error(400, "invalid_request", 900144, "The request body must contain 'client_id'.")
    if scope != GRAPH_SCOPE:
        return _aad_error(
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope {scope} is not valid. Use '{GRAPH_SCOPE}'.",
        )
    if clients:
        if client_id not in clients:
            return _aad_error(
                400, "unauthorized_client", 700016, f"Application '{client_id}' was not found in the tenant."
            )
        if not secrets.compare_digest(clients[client_id], secret):
            return _aad_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
    now = int(request.app[_WALL_CLOCK_KEY]())
    claims = {
        "aud": GRAPH_AUDIENCE,
        "iss": f"https://sts.windows.net/{tenant_id}/",
        "iat": now,
        "nbf": now,
        "exp": now + TOKEN_LIFETIME_SECONDS,
        "tid": tenant_id,
        "appid": client_id,
        "azp": client_id,
        "roles": ["TeamsAppInstallation.ReadWriteSelfForUser.All", "GroupMember.Read.All", "User.Read.All"],
    }
    token = jwt.encode(claims, request.app[_SECRET_KEY], algorithm="HS256")
    request.app[SERVICE_KEY].stats.tokens_issued += 1
    body = {
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME_SECONDS,
        "ext_expires_in": TOKEN_LIFETIME_SECONDS,
        "access_token": token,
    }
    return web.json_response(body)


# --- control routes ---------------------------------------------------------------------------------


async def _stats(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    if request.query.get("settle", "").lower() in {"1", "true", "yes"}:
        await service.settle()
    return web.json_response(service.stats.to_json())


async def _reset(request: web.Request) -> web.Response:
    request.app[SERVICE_KEY].reset()
    return web.Response(status=204)


async def _get_config(request: web.Request) -> web.Response:
    config = request.app[SERVICE_KEY].config
    return web.json_response(config.model_dump(mode="json", by_alias=True))


async def _set_config(request: web.Request) -> web.Response:
    try:
        config = GraphEmulatorConfig.model_validate_json(await request.read())
    except ValidationError as exc:
        return web.json_response({"error": {"code": "BadRequest", "message": str(exc)}}, status=400)
    request.app[SERVICE_KEY].configure(config)
    return web.Response(status=204)


_FAULTS = TypeAdapter(list[FaultRule])


async def _set_faults(request: web.Request) -> web.Response:
    try:
        body = json.loads(await request.read())
        rules = _FAULTS.validate_python(body.get("faults", []))
        seed = body.get("seed")
        if seed is not None and not isinstance(seed, int):
            raise ValueError("seed must be an integer")
    except (ValueError, AttributeError) as exc:
        return web.json_response({"error": {"code": "BadRequest", "message": str(exc)}}, status=400)
    request.app[SERVICE_KEY].set_faults(rules, seed)
    return web.Response(status=204)


# --- command line -----------------------------------------------------------------------------------


def load_config(args: argparse.Namespace) -> GraphEmulatorConfig:
    """The configuration from ``--config`` with the command-line overrides applied."""
    config = GraphEmulatorConfig()
    if args.config:
        config = GraphEmulatorConfig.model_validate_json(Path(args.config).read_text(encoding="utf-8"))
    update: dict[str, Any] = {}
    if args.messaging_endpoint:
        update["messaging_endpoint"] = args.messaging_endpoint
    if args.teams_service_url:
        update["teams_service_url"] = args.teams_service_url
    if args.install_rate is not None:
        update["throttle"] = config.throttle.model_copy(update={"install_per_tenant": args.install_rate})
    return config.model_copy(update=update) if update else config


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devhost emulate-graph", description="Microsoft Graph emulator"
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--config", help="JSON file with a GraphEmulatorConfig")
    parser.add_argument(
        "--install-rate", type=float, help="installs per second per app per tenant (default 30)"
    )
    parser.add_argument("--messaging-endpoint", help="the bot's /api/messages URL, to post install events to")
    parser.add_argument(
        "--teams-service-url", help="serviceUrl stamped on posted activities (the Teams emulator)"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """``python -m devhost emulate-graph``: run the emulator until interrupted."""
    args = _parse_args(argv)
    try:
        config = load_config(args)
    except (OSError, ValidationError) as exc:
        print(f"emulate-graph: bad configuration: {exc}")
        return 2
    return run_until_signal(build_app(config), args.port)
