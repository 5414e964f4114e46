"""``python -m devhost serve``: run function_app.py's functions like ``func start`` would.

* HTTP triggers on ``http://127.0.0.1:<port>/api/<route>`` with route parameters, methods and
  function keys (``x-functions-key`` header or ``?code=``; anonymous routes are open), invoked with
  real ``func.HttpRequest`` objects; their ``func.HttpResponse`` is sent back.
* Durable Functions through :class:`~devhost.durable.DurableRuntime`, the extension's webhook API
  (``/runtime/webhooks/durabletask``) and the client binding JSON for ``durable_client_input``.
  Durable state lives in ``AzureWebJobsStorage`` (Azurite locally; tables named after host.json's
  ``hubName``), so a host that is stopped or killed resumes every orchestration when it starts
  again; ``--memory`` keeps it in process memory instead.
* ``POST /admin/functions/{name}`` runs a non-HTTP function on demand, like the host's admin API.
* ``GET /_devhost/stats``: the runtime's counters (and, under ``latency``, what work items waited).
* ``--latency azure`` adds Azure's waits (:mod:`devhost.latency`): work items and timers are dispatched
  late, and table and queue requests go through a delaying proxy this command starts in front of the
  storage in ``AzureWebJobsStorage``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import inspect
import json
import logging
import os
import re
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
from aiohttp import web
from azure.core.exceptions import ServiceRequestError
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest

from devhost.durable import DurableRuntime, DurableStore, FunctionIndex, MemoryStore, load_app
from devhost.durable.azurite_store import AzuriteStore
from devhost.durable.clock import Clock
from devhost.durable.functions import FunctionInfo
from devhost.durable.webhooks import RPC_PREFIX, WEBHOOK_PREFIX, WebhookApi, client_binding
from devhost.host.triggers import TriggerService
from devhost.latency import DispatchLatency, LatencyProfile, StorageLatency
from devhost.latency import add_arguments as add_latency_arguments
from devhost.latency import from_args as latency_from_args
from devhost.settings import HostSettings

log = logging.getLogger("devhost.host")
ALL_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class HttpRoute:
    """One HTTP-triggered function and its compiled route template."""

    info: FunctionInfo
    pattern: re.Pattern[str]
    methods: frozenset[str]
    anonymous: bool


def compile_route(template: str) -> re.Pattern[str]:
    """Turn an Azure Functions route template (``a/{id}``, ``{n:int}``, ``{x?}``, ``{*rest}``) into a regex."""
    parts = []
    for segment in template.strip("/").split("/"):
        match = re.fullmatch(r"\{(\*?)(\w+)(?::(\w+))?(\?)?\}", segment)
        if not match:
            parts.append(("/" + re.escape(segment), False))
            continue
        catch_all, name, constraint, optional = match.groups()
        body = ".*" if catch_all else (r"\d+" if constraint in {"int", "long"} else "[^/]+")
        parts.append((f"/(?P<{name}>{body})", bool(optional or catch_all)))
    regex = "".join(f"(?:{p})?" if opt else p for p, opt in parts)
    return re.compile(f"^{regex}/?$", re.IGNORECASE)


class DevHost:
    """The HTTP server and the durable runtime for one Function app.

    Args:
        app: the ``FunctionApp``/``DFApp``.
        settings: values and host.json.
        store: durable store (default in memory).
        port: TCP port on 127.0.0.1.
        clock: clock for the durable runtime (tests inject a manual one).
        latency: dispatch delays of the durable runtime (default none).
    """

    def __init__(
        self,
        app: func.FunctionApp,
        settings: HostSettings | None = None,
        *,
        store: DurableStore | None = None,
        port: int = 7071,
        clock: Clock | None = None,
        latency: DispatchLatency | None = None,
    ) -> None:
        self.settings = settings or HostSettings()
        self.index = FunctionIndex.from_app(app)
        self.port = port
        self.origin = f"http://127.0.0.1:{port}"
        self.function_key = self.settings.function_key or secrets.token_urlsafe(24)
        self.runtime = DurableRuntime(
            self.index,
            store or MemoryStore(),
            clock=clock,
            max_concurrent_activities=self.settings.max_concurrent_activities,
            task_hub=self.settings.task_hub,
            latency=latency,
        )
        self.routes = [self._route(info) for info in self.index.http]
        self._runner: web.AppRunner | None = None
        self.triggers: TriggerService | None = None

    def _route(self, info: FunctionInfo) -> HttpRoute:
        trigger = info.trigger
        methods = frozenset(m.upper() for m in trigger.get("methods") or ALL_METHODS)
        anonymous = str(trigger.get("authLevel", "FUNCTION")).upper() == "ANONYMOUS"
        return HttpRoute(info, compile_route(trigger.get("route") or info.name), methods, anonymous)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the runtime (resuming stored orchestrations) and listen."""
        await self.runtime.start()
        web_app = web.Application(client_max_size=100 * 1024 * 1024)
        api = WebhookApi(self.runtime, self.origin, self.function_key)
        webhooks = web.Application()
        api.add_routes(webhooks, "")
        webhooks.middlewares.append(self._require_key_middleware)
        web_app.add_subapp(WEBHOOK_PREFIX, webhooks)
        WebhookApi(self.runtime, self.origin, self.function_key, rpc=True).add_routes(web_app, RPC_PREFIX)
        web_app.router.add_get("/_devhost/stats", self._stats)
        web_app.router.add_post("/admin/functions/{name}", self._admin_invoke)
        prefix = f"/{self.settings.route_prefix}" if self.settings.route_prefix else ""
        web_app.router.add_route("*", prefix + "/{tail:.*}", self._http_trigger)
        self._runner = web.AppRunner(web_app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        if self.triggers is not None:
            await self.triggers.start()

    async def stop(self) -> None:
        """Stop listening and stop the runtime."""
        if self.triggers is not None:
            await self.triggers.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.runtime.stop()
        await close_sdk_http_session()

    async def __aenter__(self) -> DevHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ keys

    def key_ok(self, request: web.Request) -> bool:
        """True when the request carries the function key (header or ``?code=``)."""
        given = request.headers.get("x-functions-key") or request.query.get("code") or ""
        return hmac.compare_digest(given.encode(), self.function_key.encode())

    @web.middleware
    async def _require_key_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not self.key_ok(request):
            return web.Response(status=401)
        response: web.StreamResponse = await handler(request)
        return response

    # ------------------------------------------------------------------ handlers

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({**self.runtime.stats.as_dict(), "latency": self.runtime.latency.to_json()})

    async def _http_trigger(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        matches = [(route, m) for route in self.routes if (m := route.pattern.match(path))]
        if not matches:
            return web.Response(status=404)
        allowed = [(route, m) for route, m in matches if request.method.upper() in route.methods]
        if not allowed:
            return web.Response(status=405, headers={"Allow": ", ".join(sorted(matches[0][0].methods))})
        route, match = allowed[0]
        if not route.anonymous and not self.key_ok(request):
            return web.Response(status=401)
        body = await request.read()
        http_request = func.HttpRequest(
            method=request.method,
            url=str(request.url),
            headers=dict(request.headers),
            params=dict(request.query),
            route_params={k: v for k, v in match.groupdict().items() if v is not None},
            body=body,
        )
        try:
            result = await self.invoke(route.info, http_request)
        except Exception:
            log.exception("function %s failed", route.info.name)
            return web.Response(status=500)
        return to_aiohttp_response(result)

    async def _admin_invoke(self, request: web.Request) -> web.Response:
        if not self.key_ok(request):
            return web.Response(status=401)
        info = self.index.functions.get(request.match_info["name"])
        if info is None:
            return web.Response(status=404)
        raw = await request.text()
        payload = json.loads(raw).get("input") if raw.strip() else None
        if info.trigger_type == "timerTrigger":
            argument: Any = TimerRequest(past_due=False)
        elif info.trigger_type == "queueTrigger":
            argument = QueueMessage(body=(payload or "").encode(), dequeue_count=1)
        else:
            return web.Response(status=400, text="only timer and queue triggers can be run on demand")
        self.runtime._spawn(self.invoke(info, argument), name=f"admin {info.name}")
        return web.Response(status=202)

    async def invoke(self, info: FunctionInfo, trigger_value: Any) -> Any:
        """Call a function with its trigger value and its durable client binding, like the worker."""
        kwargs: dict[str, Any] = {info.trigger_param: trigger_value}
        client_param = info.binding_param("durableClient")
        if client_param:
            kwargs[client_param] = json.dumps(client_binding(self.runtime, self.origin, self.function_key))
        function = info.callable
        if inspect.iscoroutinefunction(function):
            return await function(**kwargs)
        return await asyncio.to_thread(function, **kwargs)


def to_aiohttp_response(result: Any) -> web.Response:
    """Map a function's return value (``HttpResponse``, str, bytes, None) to an aiohttp response."""
    if isinstance(result, func.HttpResponse):
        headers = {k: v for k, v in result.headers.items() if k.lower() != "content-length"}
        response = web.Response(status=result.status_code, body=result.get_body(), headers=headers)
        if "content-type" not in {k.lower() for k in headers} and result.mimetype:
            response.content_type = result.mimetype
            response.charset = result.charset
        return response
    if result is None:
        return web.Response(status=204)
    return web.Response(
        text=str(result) if not isinstance(result, bytes) else None,
        body=result if isinstance(result, bytes) else None,
    )


async def close_sdk_http_session() -> None:
    """Close the Durable SDK's module-level aiohttp session (it is bound to the current event loop)."""
    from azure.durable_functions.models.utils import http_utils

    session = http_utils._client_session
    http_utils._client_session = None
    if session is not None and not session.closed:
        with contextlib.suppress(Exception):
            await session.close()


def build_store(settings: HostSettings, memory: bool) -> DurableStore:
    """The durable store: on ``AzureWebJobsStorage`` (Azurite locally) unless ``memory`` is set.

    On storage, orchestrations survive a restart of the host (even a killed one), as with the
    Durable extension; in memory they are gone when the host stops.
    """
    if memory:
        return MemoryStore()
    return AzuriteStore(settings.storage, task_hub=settings.task_hub)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options of ``serve``."""
    parser = argparse.ArgumentParser(prog="python -m devhost serve", description=__doc__)
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--app", default="function_app", help="module[:attribute] of the Function app")
    parser.add_argument("--app-dir", type=Path, default=Path.cwd(), help="Function app root (host.json)")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="keep durable state in memory only (default: in AzureWebJobsStorage, e.g. Azurite)",
    )
    add_latency_arguments(parser)
    return parser.parse_args(argv)


async def serve(options: argparse.Namespace, stop: asyncio.Event | None = None) -> None:
    """Run the host until ``stop`` is set (or SIGINT/SIGTERM)."""
    settings = HostSettings.load(options.app_dir)
    # Like Core Tools: local.settings.json Values reach the app through its environment (the
    # environment wins), so `serve` alone runs with the settings the example file gives.
    for name, value in settings.values.items():
        os.environ.setdefault(name, value)
    profile = latency_from_args(options, settings.values)
    storage_latency = StorageLatency(settings.storage, profile).start()
    if storage_latency.proxies:
        settings = with_storage(settings, storage_latency.connection_string)
    try:
        app = load_app(options.app, options.app_dir)
        host = DevHost(
            app,
            settings,
            store=build_store(settings, options.memory),
            port=options.port,
            latency=DispatchLatency(profile),
        )
        await _serve(host, settings, options, profile, stop)
    finally:
        storage_latency.stop()


def with_storage(settings: HostSettings, connection_string: str) -> HostSettings:
    """``settings`` with another ``AzureWebJobsStorage``, also put in ``os.environ`` for the app.

    ``function_app.py`` reads its settings from ``os.environ`` when it is imported (as under the
    Functions host, which puts them there), so the app only uses the latency proxy if the environment
    names it before :func:`load_app`.
    """
    os.environ["AzureWebJobsStorage"] = connection_string  # noqa: SIM112 - the Functions setting's own name
    return HostSettings({**settings.values, "AzureWebJobsStorage": connection_string}, settings.host_json)


async def _serve(
    host: DevHost,
    settings: HostSettings,
    options: argparse.Namespace,
    profile: LatencyProfile,
    stop: asyncio.Event | None,
) -> None:
    from devhost import progress

    host.triggers = TriggerService(host, settings)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await host.start()
    except ServiceRequestError as exc:
        await host.stop()
        raise SystemExit(
            "devhost: cannot reach the storage in AzureWebJobsStorage for the durable task hub "
            f"({type(exc).__name__}). Start Azurite (`python -m devhost azurite`, or use "
            "`python -m devhost run`), or run with --memory."
        ) from None
    store = "in memory" if options.memory else f"task hub {settings.task_hub} in AzureWebJobsStorage"
    print(
        f"devhost: {len(host.index.functions)} functions on {host.origin}; durable state {store}", flush=True
    )
    if profile.enabled:
        print(f"  latency: {json.dumps(profile.to_json())}", flush=True)
    for route in host.routes:
        auth = "anonymous" if route.anonymous else "function key"
        methods = ",".join(sorted(route.methods))
        print(
            f"  {route.info.name}: [{methods}] {host.origin}/{settings.route_prefix}/{route.info.trigger.get('route') or route.info.name} ({auth})"
        )
    if not settings.function_key:
        print(f"  function key (set DEVHOST_FUNCTION_KEY to fix it): {host.function_key}", flush=True)
    interval = progress.interval_from({**settings.values, **os.environ})
    reporter = progress.ProgressReporter(host.runtime, interval) if interval > 0 else None
    if reporter is not None:
        reporter.start()
    try:
        await stop.wait()
    finally:
        if reporter is not None:
            await reporter.stop()
        await host.stop()


def main(argv: list[str]) -> int:
    """Entry point of ``python -m devhost serve``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDKs log every request at INFO
    asyncio.run(serve(parse_args(argv)))
    return 0
