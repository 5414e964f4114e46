"""Latency profiles: make a local run wait where Azure waits (``--latency azure|none``).

On loopback every hop of the product costs well under a millisecond, so a local run finishes work that
Azure would still be queueing, and code that is only correct while things are fast looks fine. The
``azure`` profile puts back the three waits that dominate a broadcast in Azure; ``none`` (the default)
adds nothing, so unit tests stay fast.

Every delay is drawn from a log-normal distribution (most calls near the median, a long right tail, as
measured service latencies look) from a seeded :class:`random.Random`, and capped so one unlucky draw
cannot stall a run. Each stream (dispatch, storage, Bot Connector) has its own generator derived from
the profile's seed, so the same seed gives the same sequence of delays per stream.

============================  =======  =====  ======  ==============================================
wait                          median   sigma  cap     where the number comes from
============================  =======  =====  ======  ==============================================
dispatch of a work item       50 ms    1.0    1 s     Durable Task's Azure Storage provider polls its
(orchestrator episode,                                control and work-item queues with a randomised
entity batch, activity,                               exponential back-off that starts at 50 ms
timer firing)                                         (``DurableTask.AzureStorage`` ``TaskHubQueue``:
                                                      ``minPollingDelay = 50 ms``, up to host.json
                                                      ``maxQueuePollingInterval``, default 30 s,
                                                      +-20 % jitter, ``BackoffPollingHelper``), plus
                                                      the dequeue's own storage round trip. A busy
                                                      hub sits near the minimum; sigma 1.0 puts p90 at
                                                      about 180 ms and p99 at about 500 ms, the cap
                                                      at 1 s. An idle hub that has backed off to 30 s
                                                      is not modelled: that is a cold start, not a
                                                      broadcast in flight.
Table or Queue operation      8 ms     0.6    250 ms  Azure Table Storage publishes no latency
(one HTTP request to                                  objective ("fast, but no upper bounds on
Azurite)                                              latency"; its SLA only fails an operation after
                                                      seconds), while Cosmos DB for Table, on the same
                                                      Learn page (``cosmos-db/table-support``),
                                                      promises < 10 ms reads and < 15 ms writes at
                                                      p99. Same-region Storage calls sit in single
                                                      milliseconds at the median; sigma 0.6 gives p99
                                                      about 32 ms.
Bot Connector call            150 ms   0.6    20 x    Microsoft publishes no send latency. This
(Teams emulator, every                        median  project's estimate is 100-300 ms per call
``/v3`` answer)                                       (``bench/README.md``); a user report measured
                                                      about 400 ms in production
                                                      (MicrosoftDocs/msteams-docs#5353). Median 150
                                                      ms with sigma 0.6: p90 about 320 ms, p99 about
                                                      600 ms. ``--call-latency-ms`` moves the median.
============================  =======  =====  ======  ==============================================

Where each wait is applied:

* **Dispatch** (:class:`DispatchLatency`): the durable engine awaits :meth:`DispatchLatency.before_work`
  before it runs an orchestrator episode, an entity batch or an activity, and arms each durable timer
  :meth:`DispatchLatency.timer_delay` after its ``fireAt`` (on the runtime's clock, so a manual clock
  sees it too; ``FireAt`` in history stays the requested time, as in Azure where the firing message
  becomes visible at ``fireAt`` and then waits for a poll).
* **Storage** (:class:`StorageLatency`): a small TCP proxy in front of Azurite's table and queue ports
  delays each request by one draw. The host's durable store and the product's own Azure SDK adapters
  both talk to storage through ``AzureWebJobsStorage``, so pointing that connection string at the proxy
  makes both pay without any product change. The proxy does not parse HTTP: it delays the first bytes a
  client sends after it last received something (or on a new connection), which for HTTP/1.1 clients
  that do not pipeline (the Azure SDKs do not) is exactly once per request. It runs on its own event
  loop in a daemon thread: a synchronous SDK call made on the host's loop would otherwise wait for a
  proxy that can only run on that same, blocked, loop. ``python -m devhost serve --latency azure``
  owns the proxy (so the host behaves the same alone and under ``devhost run``, and restarting the host
  restarts its proxy); blob traffic and non-loopback storage are left alone (real Azure storage has its
  own latency).
* **Bot Connector**: the Teams emulator sleeps one draw before it sends each ``/v3`` answer
  (``TeamsEmulatorConfig.call_latency_ms``); admission to the rate windows happens on arrival.

Settings: ``--latency azure|none`` and ``--latency-seed N`` on ``serve`` and ``run``, or the
environment (``DEVHOST_LATENCY``, ``DEVHOST_LATENCY_SEED``); the command line wins. Without a seed one
is drawn from the OS and printed, so a run can be repeated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import logging
import math
import random
import statistics
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from devhost import azurite

log = logging.getLogger("devhost.latency")

ENV_PROFILE = "DEVHOST_LATENCY"
ENV_SEED = "DEVHOST_LATENCY_SEED"
PROFILES = ("none", "azure")

Sleep = Callable[[float], Awaitable[None]]
_T = TypeVar("_T")


@dataclass(frozen=True)
class LogNormal:
    """A capped log-normal delay, in seconds.

    Attributes:
        median: the median delay (``exp(mu)``), seconds.
        sigma: the standard deviation of the delay's logarithm; larger means a longer tail.
        cap: no draw exceeds this many seconds.
    """

    median: float
    sigma: float
    cap: float

    def draw(self, rng: random.Random) -> float:
        """One delay in seconds, at most :attr:`cap`."""
        if self.median <= 0:
            return 0.0
        return min(self.cap, rng.lognormvariate(math.log(self.median), self.sigma))

    def to_json(self) -> dict[str, float]:
        """Milliseconds, for logs and benchmark results."""
        return {
            "medianMs": round(self.median * 1000, 3),
            "sigma": self.sigma,
            "capMs": round(self.cap * 1000, 3),
        }


# The numbers of the module docstring's table.
AZURE_DISPATCH = LogNormal(median=0.050, sigma=1.0, cap=1.0)
AZURE_STORAGE = LogNormal(median=0.008, sigma=0.6, cap=0.250)
BOT_CONNECTOR_MEDIAN_MS = 150.0
BOT_CONNECTOR_SIGMA = 0.6
BOT_CONNECTOR_CAP_FACTOR = 20.0


def bot_connector_latency(median_ms: float) -> LogNormal:
    """The Bot Connector call delay around ``median_ms`` (the emulator's ``call_latency_ms``)."""
    median = max(0.0, median_ms) / 1000
    return LogNormal(median=median, sigma=BOT_CONNECTOR_SIGMA, cap=median * BOT_CONNECTOR_CAP_FACTOR)


class WorkKind(enum.StrEnum):
    """The work items the durable engine dispatches, each delayed like a dequeue in Azure."""

    ORCHESTRATOR = "orchestrator"
    ENTITY = "entity"
    ACTIVITY = "activity"
    TIMER = "timer"


@dataclass(frozen=True)
class LatencyProfile:
    """Which delays a run adds, and the seed they are drawn from.

    Build with :meth:`named` or :meth:`from_env`; ``None`` for a stream means no delay.
    """

    name: str
    seed: int
    dispatch: LogNormal | None = None
    storage: LogNormal | None = None
    bot_connector_ms: float = 0.0

    @classmethod
    def named(cls, name: str, seed: int | None = None) -> LatencyProfile:
        """``none`` or ``azure``; without ``seed`` one is drawn from the OS.

        Raises:
            ValueError: for another name.
        """
        if seed is None:
            seed = random.SystemRandom().randrange(2**32)
        if name == "none":
            return cls("none", seed)
        if name == "azure":
            return cls("azure", seed, AZURE_DISPATCH, AZURE_STORAGE, BOT_CONNECTOR_MEDIAN_MS)
        raise ValueError(f"unknown latency profile {name!r}; known: {', '.join(PROFILES)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LatencyProfile:
        """``DEVHOST_LATENCY`` (default ``none``) and ``DEVHOST_LATENCY_SEED``.

        Raises:
            ValueError: for an unknown profile or a seed that is not an integer.
        """
        seed = environ.get(ENV_SEED, "").strip()
        return cls.named(environ.get(ENV_PROFILE, "").strip() or "none", int(seed) if seed else None)

    @property
    def enabled(self) -> bool:
        """Whether this profile adds any delay."""
        return self.dispatch is not None or self.storage is not None or self.bot_connector_ms > 0

    def stream(self, name: str) -> random.Random:
        """A generator for one stream, seeded from the profile's seed and the stream's name."""
        return random.Random(f"{self.seed}:{name}")

    def to_json(self) -> dict[str, Any]:
        """What a benchmark records about the profile it ran with."""
        return {
            "name": self.name,
            "seed": self.seed,
            "dispatch": self.dispatch.to_json() if self.dispatch else None,
            "storage": self.storage.to_json() if self.storage else None,
            "botConnector": bot_connector_latency(self.bot_connector_ms).to_json()
            if self.bot_connector_ms > 0
            else None,
        }


class Delays:
    """A seeded stream of delays from one distribution, remembering the latest draws.

    Args:
        distribution: the delay; ``None`` always answers 0.
        rng: the stream's generator (:meth:`LatencyProfile.stream`).
        keep: how many recent draws :attr:`recent` holds (for stats; older ones are dropped).
    """

    def __init__(self, distribution: LogNormal | None, rng: random.Random, keep: int = 10_000) -> None:
        self.distribution = distribution
        self._rng = rng
        self.count = 0
        self.total = 0.0
        self.recent: deque[float] = deque(maxlen=keep)

    def next(self) -> float:
        """The next delay in seconds (0 without a distribution; not recorded then)."""
        if self.distribution is None:
            return 0.0
        delay = self.distribution.draw(self._rng)
        self.count += 1
        self.total += delay
        self.recent.append(delay)
        return delay

    def summary(self) -> dict[str, Any]:
        """Count, total and the median of the recent draws, in milliseconds."""
        median = statistics.median(self.recent) if self.recent else 0.0
        return {
            "count": self.count,
            "totalMs": round(self.total * 1000, 1),
            "medianMs": round(median * 1000, 2),
        }


class DispatchLatency:
    """The durable engine's hook: how long a work item waits before it runs.

    Args:
        profile: the profile; its ``dispatch`` distribution (``None``: no delay at all).
        sleep: awaited for each delay (tests inject one that records instead of waiting).
    """

    def __init__(self, profile: LatencyProfile | None = None, *, sleep: Sleep = asyncio.sleep) -> None:
        self.profile = profile or LatencyProfile.named("none", seed=0)
        rng = self.profile.stream("dispatch")
        self.delays = {kind: Delays(self.profile.dispatch, rng) for kind in WorkKind}
        self._sleep = sleep

    async def before_work(self, kind: WorkKind) -> None:
        """Wait as long as a dequeue of this work item would take in Azure."""
        delay = self.delays[kind].next()
        if delay > 0:
            await self._sleep(delay)

    def timer_delay(self) -> timedelta:
        """How long after its ``fireAt`` a durable timer reaches its orchestration."""
        return timedelta(seconds=self.delays[WorkKind.TIMER].next())

    def to_json(self) -> dict[str, Any]:
        """The profile and what each kind of work item waited (for ``/_devhost/stats``)."""
        return {
            "profile": self.profile.name,
            "seed": self.profile.seed,
            "dispatch": {kind.value: delays.summary() for kind, delays in self.delays.items()},
        }


# ---- the storage proxy -------------------------------------------------------------------------------


class DelayingProxy:
    """A TCP proxy to one upstream that delays each request (see the module docstring).

    Args:
        upstream: ``(host, port)`` to forward to.
        delays: one draw per request.
        sleep: awaited for each delay.
    """

    def __init__(self, upstream: tuple[str, int], delays: Delays, *, sleep: Sleep = asyncio.sleep) -> None:
        self.upstream = upstream
        self.delays = delays
        self._sleep = sleep
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self.requests = 0
        self.port = 0

    async def start(self, port: int = 0) -> int:
        """Listen on 127.0.0.1 (``port`` 0: any free port) and return the port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop listening and drop open connections."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._connections.discard(task)
            client_writer.close()
            return
        # True until the client sends; set again whenever the upstream answers: the client's next bytes
        # then start a new request.
        turn = {"new_request": True}
        try:
            await asyncio.gather(
                self._pump(client_reader, upstream_writer, turn, requests=True),
                self._pump(upstream_reader, client_writer, turn, requests=False),
            )
        except asyncio.CancelledError:
            # Only stop() cancels a connection. Ending quietly matters: asyncio's stream server calls
            # task.exception() on this task, which raises (and logs an error) for a cancelled one.
            pass
        finally:
            self._connections.discard(task)
            for writer in (upstream_writer, client_writer):
                with contextlib.suppress(Exception):
                    writer.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        turn: dict[str, bool],
        *,
        requests: bool,
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if requests and turn["new_request"]:
                    turn["new_request"] = False
                    self.requests += 1
                    delay = self.delays.next()
                    if delay > 0:
                        await self._sleep(delay)
                elif not requests:
                    turn["new_request"] = True
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.close()


def parse_connection_string(text: str) -> dict[str, str]:
    """The ``key=value`` pairs of a storage connection string (``UseDevelopmentStorage=true`` expanded).

    Values keep their ``=`` (account keys end in padding).
    """
    pairs = dict(part.split("=", 1) for part in text.split(";") if "=" in part)
    if pairs.get("UseDevelopmentStorage", "").lower() == "true":
        return parse_connection_string(azurite.connection_string(10000, 10001, 10002))
    return pairs


def _loopback_http(endpoint: str) -> tuple[str, int] | None:
    parts = urlsplit(endpoint)
    if parts.scheme != "http" or parts.hostname not in {"127.0.0.1", "localhost"}:
        return None
    return parts.hostname, parts.port or 80


class _LoopThread:
    """An event loop of its own in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="devhost-latency", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class StorageLatency:
    """Delaying proxies in front of a storage account's loopback table and queue endpoints.

    Start with :meth:`start`; use :attr:`connection_string` instead of the original; :meth:`stop` at the
    end. Blob traffic and endpoints that are not ``http://127.0.0.1`` / ``localhost`` go direct.

    Args:
        connection_string: the account to put the proxies in front of (``UseDevelopmentStorage=true`` too).
        profile: its ``storage`` distribution and seed.
    """

    SERVICES = ("TableEndpoint", "QueueEndpoint")

    def __init__(self, connection_string: str, profile: LatencyProfile) -> None:
        self.original = connection_string
        self.connection_string = connection_string
        self.profile = profile
        # One stream for every proxied service: the draws are shared, as the delays stand for one account.
        self.delays = Delays(profile.storage, profile.stream("storage"))
        self.proxies: dict[str, DelayingProxy] = {}
        self._thread: _LoopThread | None = None

    def start(self) -> StorageLatency:
        """Start the proxies on their own thread and rewrite :attr:`connection_string`; returns ``self``."""
        if self.profile.storage is None:
            return self
        pairs = parse_connection_string(self.original)
        targets = {key: upstream for key in self.SERVICES if (upstream := _loopback_http(pairs.get(key, "")))}
        if not targets:
            log.info("storage is not on loopback http: no storage latency added (it has its own)")
            return self
        self._thread = _LoopThread()
        for key, upstream in targets.items():
            proxy = DelayingProxy(upstream, self.delays)
            port = self._thread.run(proxy.start())
            self.proxies[key] = proxy
            endpoint = urlsplit(pairs[key])
            pairs[key] = urlunsplit(endpoint._replace(netloc=f"127.0.0.1:{port}"))
        self.connection_string = ";".join(f"{key}={value}" for key, value in pairs.items()) + ";"
        return self

    def stop(self) -> None:
        """Stop the proxies and their thread."""
        if self._thread is None:
            return
        for proxy in self.proxies.values():
            with contextlib.suppress(Exception):
                self._thread.run(proxy.stop())
        self._thread.close()
        self._thread = None

    def __enter__(self) -> StorageLatency:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def requests(self) -> int:
        """Requests delayed so far, all services together."""
        return sum(proxy.requests for proxy in self.proxies.values())


# ---- command line ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--latency`` and ``--latency-seed`` (defaults from the environment, resolved by :func:`from_args`)."""
    parser.add_argument(
        "--latency",
        choices=PROFILES,
        help=f"latency profile (default ${ENV_PROFILE} or none): azure delays work items, storage and Teams calls",
    )
    parser.add_argument(
        "--latency-seed", type=int, help=f"seed of the latency draws (default ${ENV_SEED} or random)"
    )


def from_args(options: argparse.Namespace, environ: Mapping[str, str]) -> LatencyProfile:
    """The profile of :func:`add_arguments`' options, the environment filling what they leave out."""
    base = LatencyProfile.from_env(environ)
    name = options.latency or base.name
    seed = options.latency_seed if options.latency_seed is not None else base.seed
    return LatencyProfile.named(name, seed)
