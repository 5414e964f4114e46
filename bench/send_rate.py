"""Benchmark: the send path's delivery rate against the Teams emulator's per-tenant ceiling (issue 6).

``python -m bench.send_rate`` starts ``python -m devhost emulate-teams`` as a separate process on
127.0.0.1 (its CPU is not shared with the client's event loop; the machine has 2 cores) and runs, one after
the other, each against a freshly reset emulator and each recipient in its own 1:1 conversation (so the
per-thread limits never bite; only the per-tenant ceiling does):

``sequential``
    the documented sample's loop: await each send in turn; on 429 sleep ``Retry-After`` and try again.
``gather``
    ``asyncio.gather`` of every send at once with the same retry-on-429 (the HTTP session's default pool of
    100 connections is the only bound), once with the product's attempt bound and once until delivered.
``ours``
    the product's pacing without Durable: the limiter state machine (:func:`proactive.limiter.apply`)
    grants up to ``Settings.batch_size`` tokens, ``asyncio.sleep`` until ``notBefore`` stands in for the
    durable timer, :class:`proactive.delivery.batch.BatchSender` (in-memory ledger tables, the real
    :class:`~proactive.adapters.connector.BotConnectorClient`, the product's retry policy and in-batch
    concurrency) sends the batch, and its result is reported back exactly as ``tenant_broadcast`` does.
``ours (durable)``
    the real ``broadcast`` / ``tenant_broadcast`` orchestrations and the limiter entity on the devhost
    durable runtime (wall clock, in-memory history), ``send_batch`` as composed by ``Services`` over
    in-memory tables and queues: the whole product path but Azure Storage.
``ours (durable, Azurite)``
    the same on Azurite (started for the line): the product's tables and queues and the durable task hub,
    every request through the latency proxy under ``--latency azure``. The line closest to Azure.
``ours x N tenants``
    ``ours`` for N tenants at once, each with its own limiter and its own ceiling at the emulator.
``fixed pause`` (``--lines pause``)
    the best-known peer's strategy (Company Communicator's send function): no limiter; on a 429 one
    jittered retry, then a global pause of a fixed length (660 s there, ``--pause-seconds`` here) during
    which every message taken is re-queued with that delay; then full speed again. See
    :func:`run_fixed_pause`.
``ours, 30/s real`` and ``durable, 30/s real`` (``ceiling``, ``ceiling-durable``)
    the product configured for 50 msg/s against an emulator that enforces ``--real-ceiling`` (30).
``ours, 10 % random 429`` and ``durable, 10 % random 429`` (``faults``, ``faults-durable``)
    the emulator's own random fault injection (``rates``) answers ``--random-429`` of the sends 429
    after admitting them (they use quota), ceiling 50.
``small: N users (Azurite)`` (``small``)
    the Azurite line for 1, 3 and 10 users: seconds from the broadcast's start to the first and to the
    last accepted send.
``ours, limiter overrides`` (only with ``--lines tuned``)
    ``ours`` with other :class:`~proactive.limiter.LimiterConfig` fields (``--limiter '{"burst": 5}'``),
    to try a tuning before proposing it.

``ours`` uses the whole ``BatchSender`` (claims, ledger writes, references) rather than the connector alone:
on the 2-core machine the client stays well below one core even for ten tenants (see the CPU columns), so
the cheaper shortcut was not needed and the line measures what ``send_batch`` really does.

Measured per line (nothing is asserted; the numbers go to a table and to
``bench/results/send_rate-<date>.json``):

* ``rate``: messages the emulator accepted / (last accepted send - first request + 1 s). The emulator's
  sliding window admits at most ``ceiling`` sends in any 1 s, so N sends need at least N / ceiling - 1
  seconds: with the added second an ideal sender scores exactly the ceiling and none can exceed it.
* ``fraction``: ``rate`` / ceiling (N tenants: N x 50).
* ``429/1k``: 429 answers per 1,000 messages, from the emulator's stats.
* ``dupes``: the emulator's duplicate list (same notification twice in one conversation).
* ``lost``: messages that never reached their conversation in the run (``expected`` minus the emulator's
  ``byNotification`` count); ``ours`` lists rows handed to ``deliveries-retry`` separately.
* client and emulator CPU seconds, to tell a pacing problem from a starved process.
* a second table: ``reach`` / ``settle`` (seconds until the accepted rate over 2 s first reaches 0.9 of
  the ceiling, and after which it stays there; :func:`ramp`), 429s split into the rate windows' and the
  injected ones, client CPU (plus Azurite's) per delivered message, table and queue requests through the
  Azurite proxy per delivered message, and the durable history rows per orchestration execution
  (:class:`CountingStore`).

``--latency azure`` (default ``none``; :mod:`devhost.latency`) runs the lines with Azure's latencies: the
emulator answers each call after a log-normal delay around 150 ms, the durable line's work items and timers
are dispatched late, and the ``ours`` lines wait the dispatches a batch would wait under Durable (the timer's
firing, the episode it wakes, the activity it starts) before each batch. Tables and queues are in memory
here, so no storage latency applies. The profile and its seed are recorded in the JSON (``latency``).

Everything is bounded: loopback only, a deadline per line, and the emulator is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import heapq
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import azure.durable_functions as df
import azure.functions as func

from devhost import azurite
from devhost.durable import DurableRuntime, FunctionIndex, MemoryStore, SystemClock
from devhost.durable.azurite_store import AzuriteStore
from devhost.latency import Delays, DispatchLatency, LatencyProfile, LogNormal, StorageLatency, WorkKind
from devhost.latency import add_arguments as add_latency_arguments
from devhost.latency import from_args as latency_from_args
from proactive import composition
from proactive.adapters.bot_token import AnonymousTokens
from proactive.adapters.connector import BotConnectorClient
from proactive.adapters.memory_queues import MemoryQueues, MemoryWorkQueue
from proactive.adapters.memory_tables import MemoryEntityTable, MemoryTables
from proactive.composition import Services
from proactive.delivery.batch import BatchSender
from proactive.delivery.contract import Pacing, SendBatchInput, SendBatchResult
from proactive.delivery.retry import RetryPolicy
from proactive.errors import ProactiveError, Throttled
from proactive.functions.durable import bp as durable_blueprint
from proactive.limiter import LimiterConfig, apply, tenant_defaults
from proactive.models import (
    ChannelAccount,
    ConversationAccount,
    ConversationReference,
    DeliveryRecord,
    Notification,
    RecipientKind,
    StoredReference,
)
from proactive.orchestration import policies
from proactive.outbound import OutboundPolicy
from proactive.settings import Settings
from proactive.storage.stores import (
    TableDeliveryLedger,
    TableNotificationStore,
    TablePreferenceStore,
    TableReferenceStore,
)
from tests.support.orchestration import RuntimeOrchestrations

BOT = "28:00000000-0000-0000-0000-0000000000b0"
CEILING = 50.0  # the emulator's default tenant_rate and the facts sheet's 50 msg/s per app per tenant
WINDOW_SECONDS = 1.0  # the tenant limit's window (facts sheet section 1)
RESULTS = Path(__file__).resolve().parent / "results"
SMALL_AUDIENCES = (1, 3, 10)  # issue 12: first message <= 2 s, everyone <= 5 s after POST /api/broadcasts
LINES = [
    "small",
    "sequential",
    "gather",
    "pause",
    "ours",
    "durable",
    "azurite",
    "tenants",
    "ceiling",
    "ceiling-durable",
    "faults",
    "faults-durable",
    "tuned",
]


# ---- the emulator process --------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (Linux ``/proc``; 0 when unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3, utime field 14, stime field 15 (proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class EmulatorProcess:
    """``python -m devhost emulate-teams`` on a free loopback port, owned by this benchmark."""

    def __init__(self, tenant_rate: float, latency: LatencyProfile | None = None) -> None:
        self.tenant_rate = tenant_rate
        self.latency = latency or LatencyProfile.named("none", seed=0)
        self.base_url = ""
        self._process: subprocess.Popen[str] | None = None

    def start(self, within: float = 30.0) -> None:
        """Start the emulator and read the base URL it prints once listening."""
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devhost",
                "emulate-teams",
                "--port",
                "0",
                "--tenant-rate",
                str(self.tenant_rate),
                "--latency",
                self.latency.name,
                "--seed",
                str(self.latency.seed),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self._process.stdout is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            line = self._process.stdout.readline()
            if line.startswith("http://127.0.0.1:"):
                self.base_url = line.strip()
                return
            if not line and self._process.poll() is not None:
                break
        self.stop()
        raise RuntimeError("the Teams emulator did not start")

    def stop(self) -> None:
        """Stop the emulator (SIGTERM, then SIGKILL after 10 s)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._process = None

    def cpu_seconds(self) -> float:
        """User + system CPU the emulator process has used so far (Linux ``/proc``)."""
        return 0.0 if self._process is None else process_cpu_seconds(self._process.pid)

    async def reset(self, http: aiohttp.ClientSession) -> None:
        """Clear the emulator's rate windows and stats so lines do not see each other's traffic."""
        async with http.post(self.base_url + "_emulator/reset", json={}) as response:
            response.raise_for_status()

    async def configure(self, http: aiohttp.ClientSession, settings: Mapping[str, Any]) -> None:
        """Merge ``settings`` into the emulator's config; like a reset, this clears windows, stats, faults."""
        async with http.post(self.base_url + "_emulator/config", json=dict(settings)) as response:
            response.raise_for_status()

    async def stats(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """``GET /_emulator/stats`` without per-activity lists."""
        async with http.get(self.base_url + "_emulator/stats?activities=0") as response:
            response.raise_for_status()
            document: dict[str, Any] = await response.json()
            return document


# ---- measuring sends -------------------------------------------------------------------------------


@dataclass
class SendClock:
    """First request and last accepted send, seen from the client (``time.monotonic``)."""

    first_request: float | None = None
    last_accepted: float | None = None
    requests: int = 0
    throttled: int = 0
    starts: dict[str, list[float]] = field(default_factory=dict)  # request starts by conversation prefix
    accepted_at: list[float] = field(default_factory=list)  # when each accepted send's answer arrived

    def before(self, conversation_id: str = "") -> None:
        self.requests += 1
        moment = time.monotonic()
        if self.first_request is None:
            self.first_request = moment
        self.starts.setdefault(conversation_id.rsplit("-", 1)[0], []).append(moment)

    def largest_gaps(self, count: int = 6) -> list[list[float]]:
        """The longest pauses between one tenant's request starts: ``[seconds after its first, length]``.

        Tenants are told apart by the conversation id's prefix; the first tenant (sorted) is shown.
        """
        if not self.starts:
            return []
        times = sorted(self.starts[min(self.starts)])
        gaps = sorted(((b - a, a - times[0]) for a, b in itertools.pairwise(times)), reverse=True)
        return [[round(at, 3), round(length, 3)] for length, at in gaps[:count]]

    def accepted(self) -> None:
        self.last_accepted = time.monotonic()
        self.accepted_at.append(self.last_accepted)

    @property
    def span(self) -> float | None:
        if self.first_request is None or self.last_accepted is None:
            return None
        return self.last_accepted - self.first_request


class TimedConnector(BotConnectorClient):
    """The product's Bot Connector client, noting when sends start and succeed (nothing else changes)."""

    def __init__(self, session: aiohttp.ClientSession, clock: SendClock) -> None:
        super().__init__(session, AnonymousTokens(), OutboundPolicy(["127.0.0.1"]))
        self.clock = clock

    async def send_activity(
        self, service_url: str, conversation_id: str, activity: Mapping[str, Any]
    ) -> str | None:
        self.clock.before(conversation_id)
        try:
            activity_id = await super().send_activity(service_url, conversation_id, activity)
        except Throttled:
            self.clock.throttled += 1
            raise
        self.clock.accepted()
        return activity_id


@dataclass(frozen=True)
class Recipient:
    """One user of one tenant with their own 1:1 conversation."""

    tenant_id: str
    index: int

    @property
    def aad_object_id(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.tenant_id}/{self.index}"))

    @property
    def conversation_id(self) -> str:
        return f"a:bench-{self.tenant_id[:8]}-{self.index}"


def audience(tenants: list[str], per_tenant: int) -> list[Recipient]:
    return [Recipient(tenant, i) for tenant in tenants for i in range(per_tenant)]


def new_tenants(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def activity_for(recipient: Recipient, notification_id: str) -> dict[str, Any]:
    """The activity the product sends (``proactive.delivery.batch._outgoing``), so both sides carry the same bytes."""
    return {
        "type": "message",
        "text": f"Benchmark message {recipient.index}",
        "from": {"id": BOT},
        "conversation": {"id": recipient.conversation_id, "tenantId": recipient.tenant_id},
        "recipient": {"id": f"29:{recipient.aad_object_id}", "aadObjectId": recipient.aad_object_id},
        "channelData": {
            "tenant": {"id": recipient.tenant_id},
            "proactive": {"notificationId": notification_id},
        },
    }


@dataclass
class Line:
    """One row of the result table."""

    name: str
    tenants: int
    messages: int
    ceiling: float
    delivered: int = 0
    lost: int = 0
    handed_off: int = 0
    throttled: int = 0
    duplicates: int = 0
    requests: int = 0
    span_seconds: float | None = None
    wall_seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    emulator_cpu_seconds: float = 0.0
    timed_out: bool = False
    injected: int = 0  # 429s the emulator's fault injection answered (included in ``throttled``)
    storage_requests: int | None = None  # table + queue requests through the Azurite proxy
    azurite_cpu_seconds: float | None = None
    ramp: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float | None:
        if self.span_seconds is None:
            return None
        return self.delivered / (self.span_seconds + WINDOW_SECONDS)

    @property
    def fraction(self) -> float | None:
        rate = self.rate
        return None if rate is None else rate / self.ceiling

    @property
    def throttled_per_1000(self) -> float:
        return 1000.0 * self.throttled / self.messages if self.messages else 0.0

    @property
    def window_throttled_per_1000(self) -> float:
        """429s the emulator's rate windows answered (injected ones left out), per 1,000 messages."""
        return 1000.0 * (self.throttled - self.injected) / self.messages if self.messages else 0.0

    @property
    def cpu_ms_per_message(self) -> float | None:
        """Client CPU (plus Azurite's, when the line ran on it) per delivered message, milliseconds."""
        if not self.delivered:
            return None
        return 1000.0 * (self.client_cpu_seconds + (self.azurite_cpu_seconds or 0.0)) / self.delivered

    @property
    def storage_per_message(self) -> float | None:
        if self.storage_requests is None or not self.delivered:
            return None
        return self.storage_requests / self.delivered

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document.update(
            rate=_round(self.rate),
            fraction=_round(self.fraction, 3),
            throttledPer1000=_round(self.throttled_per_1000),
            windowThrottledPer1000=_round(self.window_throttled_per_1000),
            cpuMsPerMessage=_round(self.cpu_ms_per_message, 2),
            storagePerMessage=_round(self.storage_per_message, 2),
        )
        return document


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def per_second(accepted_at: list[float], first_request: float | None) -> list[int]:
    """Accepted sends in each whole second after the first request (``[0, 1)``, ``[1, 2)``, ...)."""
    if first_request is None or not accepted_at:
        return []
    counts = collections.Counter(int(t - first_request) for t in accepted_at)
    return [counts.get(second, 0) for second in range(max(counts) + 1)]


RAMP_WINDOW_SECONDS = 2.0  # the window of the accepted rate that ``ramp`` watches
RAMP_STEP_SECONDS = 0.1


def ramp(
    accepted_at: list[float],
    first_request: float | None,
    ceiling: float,
    level: float = 0.9,
    window: float = RAMP_WINDOW_SECONDS,
    step: float = RAMP_STEP_SECONDS,
) -> dict[str, float | None]:
    """How fast the accepted rate reaches ``level`` x ``ceiling`` and whether it stays there.

    The accepted rate at ``t`` is the number of accepted sends in ``(t - window, t]`` divided by
    ``window``, sampled every ``step`` seconds from ``first_request + window`` to the last accepted send.
    ``reachSeconds``: the first sample at or above the level, seconds after the first request.
    ``settleSeconds``: the first sample after which every sample up to ``window`` before the last
    accepted send (the wind-down of a finite audience is not steady state) stays at or above the level;
    ``None`` if the rate never stays there. ``minSteadyRate`` / ``meanSteadyRate``: over the samples from
    ``reachSeconds`` to that same end, in messages per second.
    """
    result: dict[str, float | None] = {
        "reachSeconds": None,
        "settleSeconds": None,
        "minSteadyRate": None,
        "meanSteadyRate": None,
    }
    if first_request is None or not accepted_at:
        return result
    times = sorted(accepted_at)
    threshold = level * ceiling
    samples: list[tuple[float, float]] = []  # (seconds after the first request, accepted rate)
    low = 0
    t = first_request + window
    while t <= times[-1] + 1e-9:
        while low < len(times) and times[low] <= t - window:
            low += 1
        high = bisect.bisect_right(times, t)
        samples.append((t - first_request, (high - low) / window))
        t += step
    reach = next((at for at, rate in samples if rate >= threshold), None)
    result["reachSeconds"] = None if reach is None else round(reach, 2)
    end = times[-1] - first_request - window
    steady = [(at, rate) for at, rate in samples if at <= end + 1e-9]
    if reach is not None:
        after = [rate for at, rate in steady if at >= reach]
        if after:
            result["minSteadyRate"] = round(min(after), 1)
            result["meanSteadyRate"] = round(sum(after) / len(after), 1)
    settle: float | None = None
    for at, rate in reversed(steady):
        if rate < threshold:
            break
        settle = at
    result["settleSeconds"] = None if settle is None else round(settle, 2)
    return result


# ---- baselines ---------------------------------------------------------------------------------------


async def send_with_retry_on_429(
    connector: BotConnectorClient, base_url: str, activity: dict[str, Any], attempts: int
) -> bool:
    """The documented sample's send: on 429 wait ``Retry-After`` (1 s without one) and retry."""
    conversation_id = activity["conversation"]["id"]
    for attempt in range(attempts):
        try:
            await connector.send_activity(base_url, conversation_id, activity)
            return True
        except Throttled as error:
            if attempt + 1 < attempts:
                await asyncio.sleep(error.retry_after if error.retry_after is not None else 1.0)
        except ProactiveError:
            return False
    return False


async def run_sequential(
    http: aiohttp.ClientSession, base_url: str, recipients: list[Recipient], nid: str, attempts: int
) -> SendClock:
    clock = SendClock()
    connector = TimedConnector(http, clock)
    for recipient in recipients:
        await send_with_retry_on_429(connector, base_url, activity_for(recipient, nid), attempts)
    return clock


async def run_gather(
    http: aiohttp.ClientSession, base_url: str, recipients: list[Recipient], nid: str, attempts: int
) -> SendClock:
    clock = SendClock()
    connector = TimedConnector(http, clock)
    await asyncio.gather(
        *(send_with_retry_on_429(connector, base_url, activity_for(r, nid), attempts) for r in recipients)
    )
    return clock


# Company Communicator's send function (v5, ``SendFunction`` + ``NotificationService`` + ``MessageService``):
# ``SendRetryDelayNumberOfSeconds`` defaults to 660 and ``MaxNumberOfAttempts`` to 1 (its Startup.cs).
CC_PAUSE_SECONDS = 660.0
CC_FLAG_EARLIER_SECONDS = 15.0  # the global flag ends this much before the re-queued message is visible
CC_RETRIES = 1  # Polly retryCount = MaxNumberOfAttempts
CC_FIRST_RETRY_MEDIAN = 1.0  # Polly DecorrelatedJitterBackoffV2(medianFirstRetryDelay: 1 s)


@dataclass
class FixedPauseStats:
    """What the fixed-pause sender did, for the line's notes."""

    pauses: int = 0  # times a worker set the global "throttled until" flag
    pause_episodes: int = 0  # pauses that began while the flag was clear (the rest extended a pause in force)
    requeued: int = 0  # messages put back on the queue with the fixed delay
    retries: int = 0  # in-invocation retries after a 429 (Polly)
    failed: int = 0  # answers other than 2xx and 429 (none in these runs)
    starts: list[float] = field(default_factory=list, repr=False)  # every request start (monotonic)

    def to_json(self) -> dict[str, int]:
        return {
            "pauses": self.pauses,
            "pauseEpisodes": self.pause_episodes,
            "requeued": self.requeued,
            "retries": self.retries,
            "failed": self.failed,
        }


def quiet_seconds(starts: list[float], longer_than: float) -> float:
    """The total of the gaps between consecutive request starts that are longer than ``longer_than``."""
    ordered = sorted(starts)
    return sum(gap for a, b in itertools.pairwise(ordered) if (gap := b - a) > longer_than)


async def run_fixed_pause(
    http: aiohttp.ClientSession,
    base_url: str,
    recipients: list[Recipient],
    nid: str,
    *,
    concurrency: int,
    pause_seconds: float,
    latency: LatencyProfile | None = None,
    stats: FixedPauseStats | None = None,
    rng: random.Random | None = None,
) -> SendClock:
    """The best-known peer's strategy (Company Communicator): a fixed global pause on 429, then full speed.

    One queue message per recipient; ``concurrency`` invocations of the send function run at once (the
    Service Bus trigger's concurrency). Each invocation, as ``SendFunction.Run`` does:

    1. reads the global "throttled until" row; while it lies in the future, re-queues the message with a
       delay of ``pause_seconds`` and ends (``SendDelayedAsync``);
    2. otherwise sends, and on a 429 retries ``CC_RETRIES`` time(s) after a jittered delay of median 1 s,
       ignoring ``Retry-After`` (Polly's decorrelated jitter);
    3. if the last attempt is a 429 too: sets the global row to now + ``pause_seconds`` - the scaled 15 s
       (``SetSendNotificationThrottled``) and re-queues the message with a delay of ``pause_seconds``.

    There is no rate limit of any kind between pauses: every invocation that finds the flag clear sends.
    Under the ``azure`` profile each read of the flag and each re-queue waits one storage round trip.
    """
    stats = stats if stats is not None else FixedPauseStats()
    rng = rng or random.Random(0)
    profile = latency or LatencyProfile.named("none", seed=0)
    storage = Delays(profile.storage, profile.stream("fixed-pause"))
    flag_earlier = pause_seconds * CC_FLAG_EARLIER_SECONDS / CC_PAUSE_SECONDS
    clock = SendClock()
    connector = TimedConnector(http, clock)
    # (visible at, sequence, recipient): the queue, scheduled messages included.
    order = itertools.count()
    start = time.monotonic()
    queue: list[tuple[float, int, Recipient]] = [(start, next(order), r) for r in recipients]
    heapq.heapify(queue)
    outstanding = [len(recipients)]
    throttled_until = [0.0]

    async def round_trip() -> None:
        delay = storage.next()
        if delay > 0:
            await asyncio.sleep(delay)

    async def requeue(recipient: Recipient) -> None:
        await round_trip()
        stats.requeued += 1
        heapq.heappush(queue, (time.monotonic() + pause_seconds, next(order), recipient))

    async def invocation(recipient: Recipient) -> None:
        await round_trip()  # IsSendNotificationThrottled: one table read
        if time.monotonic() < throttled_until[0]:
            await requeue(recipient)
            return
        activity = activity_for(recipient, nid)
        for attempt in range(CC_RETRIES + 1):
            stats.starts.append(time.monotonic())
            try:
                await connector.send_activity(base_url, recipient.conversation_id, activity)
            except Throttled:
                if attempt < CC_RETRIES:
                    stats.retries += 1
                    await asyncio.sleep(rng.uniform(0.0, 2.0) * CC_FIRST_RETRY_MEDIAN)
                    continue
                stats.pauses += 1
                now = time.monotonic()
                if now >= throttled_until[0]:
                    stats.pause_episodes += 1
                throttled_until[0] = now + pause_seconds - flag_earlier
                await requeue(recipient)
                return
            except ProactiveError:
                stats.failed += 1
                break
            else:
                break
        outstanding[0] -= 1

    async def worker() -> None:
        while outstanding[0] > 0:
            now = time.monotonic()
            if not queue or queue[0][0] > now:
                # Poll at least every 50 ms: a message re-queued meanwhile, or the invocations still
                # running on an empty queue.
                await asyncio.sleep(min(queue[0][0] - now, 0.05) if queue else 0.05)
                continue
            _, _, recipient = heapq.heappop(queue)
            await invocation(recipient)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return clock


# ---- ours, without Durable ---------------------------------------------------------------------------


@dataclass
class Stores:
    """The sender's stores over the in-memory table fake (one set per line)."""

    ledger: TableDeliveryLedger
    references: TableReferenceStore
    preferences: TablePreferenceStore
    notifications: TableNotificationStore

    @classmethod
    def in_memory(cls) -> Stores:
        return cls(
            TableDeliveryLedger(MemoryEntityTable("deliveries")),
            TableReferenceStore(MemoryEntityTable("references")),
            TablePreferenceStore(MemoryEntityTable("preferences")),
            TableNotificationStore(MemoryEntityTable("notifications")),
        )


def reference_for(recipient: Recipient, base_url: str, now: datetime) -> StoredReference:
    return StoredReference(
        tenant_id=recipient.tenant_id,
        kind=RecipientKind.USER,
        recipient_id=recipient.aad_object_id,
        reference=ConversationReference(
            bot=ChannelAccount(id=BOT),
            user=ChannelAccount(id=f"29:{recipient.aad_object_id}", aad_object_id=recipient.aad_object_id),
            conversation=ConversationAccount(id=recipient.conversation_id, tenant_id=recipient.tenant_id),
            service_url=base_url,
        ),
        updated_at=now,
    )


def broadcast_request(nid: str, tenants: list[str]) -> dict[str, Any]:
    return {"notificationId": nid, "audience": {"tenants": tenants}, "message": {"text": "Benchmark message"}}


async def seed_direct(stores: Stores, recipients: list[Recipient], nid: str, base_url: str) -> None:
    """What ``POST /api/broadcasts`` and ``materialise_audience`` would leave: notification, refs, rows."""
    now = datetime.now(UTC)
    tenants = sorted({r.tenant_id for r in recipients})
    await stores.notifications.create(
        Notification(id=nid, request=broadcast_request(nid, tenants), created_at=now)
    )
    for recipient in recipients:
        await stores.references.upsert(reference_for(recipient, base_url, now))
    for tenant in tenants:
        rows = [
            DeliveryRecord(
                notification_id=nid,
                tenant_id=tenant,
                recipient_key=f"user:{r.aad_object_id}",
                created_at=now,
                updated_at=now,
            )
            for r in recipients
            if r.tenant_id == tenant
        ]
        await stores.ledger.add_pending(rows)


async def paced_tenant(
    sender: BatchSender,
    settings: Settings,
    nid: str,
    tenant: str,
    max_batches: int,
    trace: dict[str, Any] | None = None,
    limiter: Mapping[str, Any] | None = None,
    dispatch: DispatchLatency | None = None,
) -> list[SendBatchResult]:
    """``tenant_broadcast``'s lanes with the limiter called in-process and a real sleep for the timer.

    Like the orchestration: ``SEND_LANES`` sequential loops, each over its own part of the rows, (acquire -> sleep until ``BATCH_START_LEAD``
    before ``notBefore`` -> send -> report) share the tenant's limiter, then one loop alone sweeps what a
    lane gave back after the other had read the ledger. ``dispatch`` adds the waits Durable puts between
    the steps (a latency profile): the entity's answer and the episode it wakes, the activity's start,
    the episode its result wakes.
    """
    dispatch = dispatch or DispatchLatency()
    # As the tenant_limiter entity builds its defaults; ``limiter`` tries other LimiterConfig fields.
    base = tenant_defaults(settings.send_rate_for(tenant), settings.batch_size)
    defaults = LimiterConfig.from_json({**base.to_json(), **(limiter or {})})
    lead = policies.BATCH_START_LEAD.total_seconds()
    state: list[Any] = [None]  # the entity's state, shared by the lanes (apply is pure)
    results: list[SendBatchResult] = []
    steps = [0]

    async def lane(requester: str, remaining: int | None, part: int, parts: int) -> None:
        while steps[0] < max_batches:
            steps[0] += 1
            want = settings.batch_size if not remaining else min(settings.batch_size, remaining)
            state[0], decision = apply(
                state[0],
                "acquire",
                {"now": time.time(), "want": max(1, want), "priority": "normal", "requester": requester},
                defaults=defaults,
            )
            grant = decision["grant"]
            tokens = int(grant["tokens"])
            for kind in (WorkKind.ENTITY, WorkKind.ORCHESTRATOR):
                await dispatch.before_work(kind)
            wait = grant["notBefore"] - (lead if tokens else 0.0) - time.time()
            if wait > 0:  # a durable timer, and the episode it wakes
                await asyncio.sleep(wait)
                for kind in (WorkKind.TIMER, WorkKind.ORCHESTRATOR):
                    await dispatch.before_work(kind)
            if tokens == 0:
                continue
            await dispatch.before_work(WorkKind.ACTIVITY)
            pacing = Pacing.model_validate(
                {
                    "notBefore": grant["notBeforeIso"],
                    "paceSeconds": grant["paceSeconds"],
                    "sendBy": grant["sendByIso"],
                    "slackSeconds": grant["slackSeconds"],
                }
            )
            batch = SendBatchInput(
                notification_id=nid,
                tenant_id=tenant,
                limit=tokens,
                now=datetime.now(UTC),
                pacing=pacing,
                part=part,
                parts=parts,
            )
            result = await sender.send_batch(batch)
            await dispatch.before_work(WorkKind.ORCHESTRATOR)
            state[0], acknowledged = apply(
                state[0],
                "report",
                {
                    "now": time.time(),
                    "sent": result.sent,
                    "throttled": result.throttled,
                    "serverErrors": result.server_errors,
                    "failed": result.unreachable + result.stale + result.failed,
                    "retryAfter": result.max_retry_after,
                    "requester": requester,
                    "grantedAt": grant["grantedAt"],
                    # As tenant_lane does: the booking ends at the batch's last request.
                    "firstSendAt": result.first_send_at.timestamp() if result.first_send_at else None,
                    "lastSendAt": result.last_send_at.timestamp() if result.last_send_at else None,
                    "firstReadyAt": result.first_ready_at.timestamp() if result.first_ready_at else None,
                },
                defaults=defaults,
            )
            results.append(result)
            if trace is not None:
                # Seconds since the first grant: when the batch was due, its size, its 429s, the rate after it.
                origin = trace.setdefault("origin", grant["notBefore"])
                trace.setdefault("batches", []).append(
                    [
                        round(grant["notBefore"] - origin, 3),
                        int(grant["tokens"]),
                        result.throttled,
                        result.elapsed_ms,
                        result.slots_skipped,
                        round(acknowledged["report"]["rate"], 1),
                    ]
                )
            if result.halted:
                return  # the tenant refuses every send
            remaining = result.remaining
            if remaining == 0 and result.next_deferred_at is None and parts > 1:
                part, parts, remaining = 0, 1, None  # as tenant_lane: help with the other parts
                continue
            if remaining == 0:
                return

    lanes = policies.SEND_LANES
    await asyncio.gather(*(lane(f"bench.{tenant}.lane{n}", None, n, lanes) for n in range(lanes)))
    await lane(f"bench.{tenant}.sweep", None, 0, 1)
    return results


async def run_ours(
    http: aiohttp.ClientSession,
    base_url: str,
    recipients: list[Recipient],
    nid: str,
    settings: Settings,
    line: Line,
    limiter: Mapping[str, Any] | None = None,
    latency: LatencyProfile | None = None,
) -> SendClock:
    stores = Stores.in_memory()
    await seed_direct(stores, recipients, nid, base_url)
    clock = SendClock()
    retries = MemoryWorkQueue("deliveries-retry")
    # As Services.batch_sender builds it, but over the in-memory stores and with the timing connector.
    sender = BatchSender(
        ledger=stores.ledger,
        references=stores.references,
        preferences=stores.preferences,
        notifications=stores.notifications,
        connector=TimedConnector(http, clock),
        installs=MemoryWorkQueue("installs"),
        retries=retries,
        policy=RetryPolicy.for_sends(settings),
        clock=lambda: datetime.now(UTC),
        sleep=asyncio.sleep,
        rng=random.Random(),
        service_url_allowed=OutboundPolicy(["127.0.0.1"]).allows,
        concurrency=settings.send_concurrency,
    )
    tenants = sorted({r.tenant_id for r in recipients})
    per_tenant = len(recipients) // len(tenants)
    # A grant holds at least one token, so this many batches always suffice; the line's deadline ends it sooner.
    max_batches = 4 * per_tenant + 20
    trace: dict[str, Any] = {}
    dispatch = DispatchLatency(latency)
    outcomes = await asyncio.gather(
        *(
            paced_tenant(sender, settings, nid, t, max_batches, trace if i == 0 else None, limiter, dispatch)
            for i, t in enumerate(tenants)
        )
    )
    results = [result for batches in outcomes for result in batches]
    line.handed_off = sum(r.retry_queued for r in results)
    starts = [r.first_send_at for r in results if r.first_send_at is not None]
    if starts:
        # When each tenant's last request started, seconds after the line's first one: a tenant whose tail
        # runs long shows here, not in the averages.
        origin = min(starts)
        line.notes["tenantEnds"] = sorted(
            round((max(ends) - origin).total_seconds(), 2)
            for ends in (
                [r.last_send_at for r in batches if r.last_send_at is not None] for batches in outcomes
            )
            if ends
        )
    line.notes.update(
        batches=len(results),
        batchThrottled=sum(r.throttled for r in results),
        batchServerErrors=sum(r.server_errors for r in results),
        meanBatchMs=round(sum(r.elapsed_ms for r in results) / max(1, len(results)), 1),
        slotsSkipped=sum(r.slots_skipped for r in results),
        # First tenant only: [due at s, tokens, 429s, batch ms, slots lost, limiter rate after the report].
        trace=trace.get("batches", []),
        dispatch=dispatch.to_json()["dispatch"],
    )
    return clock


# ---- ours, on the devhost durable runtime --------------------------------------------------------------


class CountingStore:
    """A durable store that counts what the runtime asks of it; everything else is the wrapped store's.

    ``save_instance`` is where the runtime commits an orchestration episode: ``record.history_length`` is
    then the length of the execution's history (the rows the Azurite store keeps for that execution),
    and ``new_events`` the rows that commit wrote.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: collections.Counter[str] = collections.Counter()
        self.rows_written = 0
        # (instance id, execution id) -> (orchestrator name, history length after its latest commit)
        self.executions: dict[tuple[str, str], tuple[str, int]] = {}

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attribute(*args, **kwargs)

        return counted

    async def save_instance(self, record: Any, new_events: list[dict[str, Any]], consumed: Any = ()) -> None:
        self.calls["save_instance"] += 1
        self.rows_written += len(new_events)
        key = (record.instance_id, record.execution_id)
        if new_events or key not in self.executions:
            self.executions[key] = (record.name, record.history_length)
        await self.inner.save_instance(record, new_events, consumed)

    def history(self) -> dict[str, Any]:
        """History rows per execution, by orchestrator: executions, largest, mean; and in all."""
        by_name: dict[str, list[int]] = {}
        for name, length in self.executions.values():
            by_name.setdefault(name, []).append(length)
        lengths = [length for name, length in self.executions.values()]
        return {
            "executions": len(lengths),
            "rowsPerExecutionMax": max(lengths, default=0),
            "rowsPerExecutionMean": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
            "historyRowsWritten": self.rows_written,
            "byOrchestrator": {
                name: {
                    "executions": len(values),
                    "rowsPerExecutionMax": max(values),
                    "rowsPerExecutionMean": round(sum(values) / len(values), 1),
                }
                for name, values in sorted(by_name.items())
            },
            "storeCalls": dict(sorted(self.calls.items())),
        }


def bench_settings(
    tenants: list[str], batch_size: int, concurrency: int, storage: str = "UseDevelopmentStorage=true"
) -> Settings:
    return Settings.from_env(
        {
            "SEND_CONCURRENCY": str(concurrency),
            "AzureWebJobsStorage": storage,
            "TENANT_ALLOW_LIST": ",".join(tenants),
            "SEND_RATE_PER_TENANT": str(CEILING),
            "BATCH_SIZE": str(batch_size),
            "BOT_AUTH": "anonymous",
            "DEV_OUTBOUND_HOSTS": "127.0.0.1",
        }
    )


async def run_durable(
    http: aiohttp.ClientSession,
    base_url: str,
    recipients: list[Recipient],
    nid: str,
    settings: Settings,
    line: Line,
    latency: LatencyProfile | None = None,
    storage: str | None = None,
    storage_requests: Callable[[], dict[str, int]] | None = None,
) -> SendClock:
    """The real orchestrations on the devhost runtime; in memory, or on ``storage`` (an Azurite connection
    string, through the latency proxy under ``azure``: tables, queues and the durable task hub)."""
    services = Services(settings)
    if storage is None:
        services.use_stand_ins(tables=MemoryTables(), queues=MemoryQueues())  # type: ignore[arg-type]
    clock = SendClock()
    services._connector = TimedConnector(http, clock)
    previous = composition._services
    composition._services = services
    now = datetime.now(UTC)
    for recipient in recipients:
        await services.references.upsert(reference_for(recipient, base_url, now))
    app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(durable_blueprint)
    store = CountingStore(
        MemoryStore() if storage is None else AzuriteStore(storage, task_hub="Bench" + nid[-8:])
    )
    runtime = DurableRuntime(
        FunctionIndex.from_app(app), store, clock=SystemClock(), latency=DispatchLatency(latency)
    )
    tenants = sorted({r.tenant_id for r in recipients})
    try:
        async with runtime:
            orchestrations = RuntimeOrchestrations(runtime)
            body = json.dumps(broadcast_request(nid, tenants)).encode()
            before = storage_requests() if storage_requests else {}
            started = time.monotonic()  # what POST /api/broadcasts does from here on
            accepted = await services.broadcasts(orchestrations).start(body)
            while True:
                record = await runtime.get_instance(accepted.instance_id)
                if record is not None and record.is_terminal:
                    break
                await asyncio.sleep(0.25)
            if storage_requests:
                # The broadcast's own requests: from its start to the end seen (setup and seeding excluded).
                after = storage_requests()
                line.notes["storageRequests"] = {key: after[key] - before.get(key, 0) for key in after}
                line.storage_requests = sum(line.notes["storageRequests"].values())
            # Seconds after the start: the first and the last accepted send (their answers), the end seen.
            line.notes.update(
                firstMessageSeconds=round(clock.accepted_at[0] - started, 3) if clock.accepted_at else None,
                allDeliveredSeconds=round(clock.accepted_at[-1] - started, 3) if clock.accepted_at else None,
                completedSeconds=round(time.monotonic() - started, 3),
            )
            output = json.loads(record.output or "{}")
            line.notes.update(
                status=record.status,
                counts=output.get("counts"),
                episodes=runtime.stats.episodes,
                continueAsNew=runtime.stats.continue_as_new,
                activityInvocations=runtime.stats.activity_invocations,
                runtimeErrors=len(runtime.errors),
                dispatch=runtime.latency.to_json()["dispatch"],
                history=store.history(),
                historyEventsReplayed=runtime.stats.history_events_replayed,
            )
    finally:
        composition._services = previous
        if storage is not None:
            await services.close()
    return clock


# ---- driving the lines ---------------------------------------------------------------------------------

Scenario = Callable[[aiohttp.ClientSession, str, list[Recipient], str, Line], Awaitable[SendClock]]


@dataclass(frozen=True)
class World:
    """What the emulator enforces and injects during one line (``/_emulator/config``, merged)."""

    tenant_rate: float = CEILING
    random_429: float = 0.0  # share of sends answered 429 at random (after admission: they use quota)

    def config(self) -> dict[str, Any]:
        rates = {"429": self.random_429} if self.random_429 else {}
        return {"tenant_rate": self.tenant_rate, "rates": rates, "rate_operations": ["send"]}


async def measure(
    emulator: EmulatorProcess,
    name: str,
    tenant_count: int,
    per_tenant: int,
    scenario: Scenario,
    world: World | None = None,
) -> Line:
    """Configure and reset the emulator, run one line with a deadline, and read what the emulator saw."""
    world = world or World()
    tenants = new_tenants(tenant_count)
    recipients = audience(tenants, per_tenant)
    nid = f"bench-{uuid.uuid4().hex[:12]}"
    line = Line(name, tenant_count, len(recipients), world.tenant_rate * tenant_count)
    line.notes["emulator"] = world.config()
    # Generous: four times the ideal duration plus a minute, so a pathological line still ends.
    deadline = 4 * len(recipients) / line.ceiling + 60
    async with aiohttp.ClientSession() as http:
        await emulator.configure(http, world.config())  # also clears windows and stats, like a reset
        cpu, emulator_cpu, started = time.process_time(), emulator.cpu_seconds(), time.monotonic()
        task = asyncio.ensure_future(scenario(http, emulator.base_url, recipients, nid, line))
        clock: SendClock | None = None
        try:
            clock = await asyncio.wait_for(asyncio.shield(task), deadline)
        except TimeoutError:
            line.timed_out = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        line.wall_seconds = round(time.monotonic() - started, 2)
        line.client_cpu_seconds = round(time.process_time() - cpu, 2)
        line.emulator_cpu_seconds = round(emulator.cpu_seconds() - emulator_cpu, 2)
        stats = await emulator.stats(http)
    reached = stats["byNotification"].get(nid, {"conversations": 0, "deliveries": 0})
    line.delivered = int(reached["deliveries"])
    line.lost = len(recipients) - int(reached["conversations"])
    line.duplicates = sum(d["count"] - 1 for d in stats["duplicates"] if d["notificationId"] == nid)
    line.throttled = int(stats["byStatus"].get("429", 0))
    line.injected = int(stats.get("injected", {}).get("429", 0))
    line.requests = int(stats["totals"].get("requests", 0))
    if clock is not None:
        line.span_seconds = None if clock.span is None else round(clock.span, 3)
        line.notes["clientSeenThrottled"] = clock.throttled
        line.notes["largestGaps"] = clock.largest_gaps()
        line.ramp = ramp(clock.accepted_at, clock.first_request, line.ceiling)
        line.notes["acceptedPerSecond"] = per_second(clock.accepted_at, clock.first_request)
    return line


def table(lines: list[Line]) -> str:
    header = (
        f"{'line':<26} {'msgs':>6} {'rate/s':>7} {'ceiling':>7} {'fraction':>8} {'429/1k':>8} "
        f"{'dupes':>5} {'lost':>5} {'wall s':>7} {'cpu cli':>7} {'cpu emu':>7}"
    )
    rows = [header, "-" * len(header)]
    for line in lines:
        rate, fraction = line.rate, line.fraction
        rows.append(
            f"{line.name + (' (timeout)' if line.timed_out else ''):<26} {line.messages:>6} "
            f"{(f'{rate:.1f}' if rate is not None else '-'):>7} {line.ceiling:>7.0f} "
            f"{(f'{fraction:.3f}' if fraction is not None else '-'):>8} {line.throttled_per_1000:>8.1f} "
            f"{line.duplicates:>5} {line.lost:>5} {line.wall_seconds:>7.1f} "
            f"{line.client_cpu_seconds:>7.1f} {line.emulator_cpu_seconds:>7.1f}"
        )
    return "\n".join(rows)


def details(lines: list[Line]) -> str:
    """The second table: ramp to 0.9 of the ceiling, 429s by cause, and cost per delivered message."""

    def number(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    header = (
        f"{'line':<26} {'reach s':>7} {'settle s':>8} {'win429/1k':>9} {'inj429/1k':>9} "
        f"{'cpu ms/msg':>10} {'storage/msg':>11} {'hist/exec max':>13} {'hist/exec mean':>14} "
        f"{'first s':>7} {'all s':>6}"
    )
    rows = [header, "-" * len(header)]
    for line in lines:
        history = line.notes.get("history") or {}
        injected = 1000.0 * line.injected / line.messages if line.messages else 0.0
        rows.append(
            f"{line.name:<26} {number(line.ramp.get('reachSeconds')):>7} "
            f"{number(line.ramp.get('settleSeconds')):>8} {line.window_throttled_per_1000:>9.1f} "
            f"{injected:>9.1f} {number(line.cpu_ms_per_message, 2):>10} "
            f"{number(line.storage_per_message, 2):>11} "
            f"{history.get('rowsPerExecutionMax', '-'):>13} {history.get('rowsPerExecutionMean', '-'):>14} "
            f"{number(line.notes.get('firstMessageSeconds'), 2):>7} "
            f"{number(line.notes.get('allDeliveredSeconds'), 2):>6}"
        )
    return "\n".join(rows)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpuModel": model,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every selected line against one emulator process; returns the JSON document."""
    # The direct line reads only batch_size, the rate and the attempt bound; the allow-list does not matter.
    settings = bench_settings([str(uuid.UUID(int=1))], args.batch_size, args.concurrency)
    attempts = settings.max_send_attempts
    latency = latency_from_args(args, os.environ)
    print(f"latency profile {latency.name} (seed {latency.seed})", flush=True)
    load_before, started = os.getloadavg(), time.monotonic()
    emulator = EmulatorProcess(CEILING, latency)
    emulator.start()
    lines: list[Line] = []

    def baseline(kind: str, tries: int) -> Scenario:
        async def scenario(
            http: aiohttp.ClientSession, base: str, recipients: list[Recipient], nid: str, line: Line
        ) -> SendClock:
            line.notes["attemptsPerMessage"] = tries
            if kind == "sequential":
                return await run_sequential(http, base, recipients, nid, tries)
            return await run_gather(http, base, recipients, nid, tries)

        return scenario

    async def fixed_pause(
        http: aiohttp.ClientSession, base: str, recipients: list[Recipient], nid: str, line: Line
    ) -> SendClock:
        stats = FixedPauseStats()
        line.notes.update(pauseSeconds=args.pause_seconds, concurrency=args.concurrency)
        try:
            return await run_fixed_pause(
                http,
                base,
                recipients,
                nid,
                concurrency=args.concurrency,
                pause_seconds=args.pause_seconds,
                latency=latency,
                stats=stats,
                rng=random.Random(latency.seed),
            )
        finally:
            line.notes.update(stats.to_json())
            line.notes["quietSeconds"] = round(quiet_seconds(stats.starts, 2.0 * CC_FIRST_RETRY_MEDIAN), 3)

    async def ours(
        http: aiohttp.ClientSession, base: str, recipients: list[Recipient], nid: str, line: Line
    ) -> SendClock:
        return await run_ours(http, base, recipients, nid, settings, line, latency=latency)

    async def tuned(
        http: aiohttp.ClientSession, base: str, recipients: list[Recipient], nid: str, line: Line
    ) -> SendClock:
        line.notes["limiter"] = args.limiter
        return await run_ours(http, base, recipients, nid, settings, line, args.limiter, latency)

    async def durable(
        http: aiohttp.ClientSession, base: str, recipients: list[Recipient], nid: str, line: Line
    ) -> SendClock:
        tenants = sorted({r.tenant_id for r in recipients})
        return await run_durable(
            http,
            base,
            recipients,
            nid,
            bench_settings(tenants, args.batch_size, args.concurrency),
            line,
            latency,
        )

    async def durable_azurite(
        http: aiohttp.ClientSession, base: str, recipients: list[Recipient], nid: str, line: Line
    ) -> SendClock:
        tenants = sorted({r.tenant_id for r in recipients})
        instance = azurite.start()
        # The proxy counts every table and queue request (the product's and the task hub's); under ``none``
        # it is there only to count (zero delay).
        counting = (
            latency if latency.storage is not None else replace(latency, storage=LogNormal(0.0, 0.0, 0.0))
        )
        cpu = process_cpu_seconds(instance.process.pid)
        try:
            with StorageLatency(instance.connection_string, counting) as proxied:
                settings = bench_settings(
                    tenants, args.batch_size, args.concurrency, proxied.connection_string
                )

                def requests() -> dict[str, int]:
                    return {
                        key.removesuffix("Endpoint").lower(): proxy.requests
                        for key, proxy in proxied.proxies.items()
                    }

                try:
                    return await run_durable(
                        http,
                        base,
                        recipients,
                        nid,
                        settings,
                        line,
                        latency,
                        proxied.connection_string,
                        requests,
                    )
                finally:
                    line.notes["storageRequestsWithSetup"] = requests()
        finally:
            line.azurite_cpu_seconds = round(process_cpu_seconds(instance.process.pid) - cpu, 2)
            instance.stop()

    lower = World(tenant_rate=args.real_ceiling)
    noisy = World(random_429=args.random_429)
    real, share = f"{args.real_ceiling:g}/s real", f"{100 * args.random_429:g} % random 429"
    small = [("small", f"small: {n} user{'s' if n > 1 else ''} (Azurite)", n) for n in SMALL_AUDIENCES]
    plan: list[tuple[str, str, int, Scenario, World]] = [
        ("sequential", f"sequential ({attempts} att.)", 1, baseline("sequential", attempts), World()),
        ("gather", f"gather ({attempts} att.)", 1, baseline("gather", attempts), World()),
        (
            "gather",
            f"gather ({args.until_delivered} att.)",
            1,
            baseline("gather", args.until_delivered),
            World(),
        ),
        ("pause", f"fixed pause {args.pause_seconds:g} s", 1, fixed_pause, World()),
        ("ours", "ours", 1, ours, World()),
        ("durable", "ours (durable)", 1, durable, World()),
        ("azurite", "ours (durable, Azurite)", 1, durable_azurite, World()),
        ("tenants", f"ours x {args.tenants} tenants", args.tenants, ours, World()),
        ("ceiling", f"ours, {real}", 1, ours, lower),
        ("ceiling-durable", f"durable, {real}", 1, durable, lower),
        ("faults", f"ours, {share}", 1, ours, noisy),
        ("faults-durable", f"durable, {share}", 1, durable, noisy),
        ("tuned", "ours, limiter overrides", 1, tuned, World()),
    ]
    sized = [(key, name, 1, durable_azurite, World(), size) for key, name, size in small]
    try:
        for key, name, tenant_count, scenario, world, per_tenant in [
            *sized,
            *[(*entry, args.per_tenant) for entry in plan],
        ]:
            if key not in args.lines:
                continue
            line = await measure(emulator, name, tenant_count, per_tenant, scenario, world)
            if key == "pause" and line.span_seconds is not None and line.delivered:
                # The same run with the peer's own 660 s pause: a stretch without any request start longer than
                # the in-invocation retry's longest wait (2 s) comes from a pause (re-queued messages not yet
                # visible) and would last 660 / pause times as long. Shorter pause-driven gaps stay as they
                # are, which favours the peer.
                quiet = line.notes.get("quietSeconds", 0.0)
                longer = quiet * (CC_PAUSE_SECONDS / args.pause_seconds - 1)
                rate = line.delivered / (line.span_seconds + longer + WINDOW_SECONDS)
                line.notes["fractionWith660sPause"] = round(rate / line.ceiling, 4)
            lines.append(line)
            print(table([line]).splitlines()[-1], flush=True)
    finally:
        emulator.stop()
    one = next((line for line in lines if line.name == "ours"), None)
    many = next((line for line in lines if line.tenants > 1), None)
    scaling = None
    if one is not None and many is not None and one.rate and many.rate:
        scaling = round(many.rate / one.rate, 2)
    return {
        "benchmark": "send_rate",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        # 1/5/15-minute load averages when the run started and ended: other work on the machine shows here.
        "loadAverage": {
            "start": [round(v, 2) for v in load_before],
            "end": [round(v, 2) for v in os.getloadavg()],
        },
        "wallSeconds": round(time.monotonic() - started, 1),
        "command": "python -m bench.send_rate " + " ".join(sys.argv[1:]),
        "perTenant": args.per_tenant,
        "batchSize": args.batch_size,
        "ceilingPerTenant": CEILING,
        "maxSendAttempts": attempts,
        "latency": latency.to_json(),
        "tenantsScaling": scaling,
        "lines": [line.to_json() for line in lines],
    }


def main(argv: list[str]) -> int:
    """Entry point: run, print the table, write ``bench/results/send_rate-<date>.json``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--per-tenant", type=int, default=1500, help="messages per tenant (default 1500)")
    parser.add_argument("--tenants", type=int, default=10, help="tenants of the parallel line (default 10)")
    parser.add_argument("--batch-size", type=int, default=50, help="Settings.batch_size (default 50)")
    parser.add_argument("--concurrency", type=int, default=32, help="Settings.send_concurrency (default 32)")
    parser.add_argument(
        "--until-delivered", type=int, default=100, help="attempts of the second gather line (default 100)"
    )
    parser.add_argument(
        "--lines",
        nargs="+",
        default=[line for line in LINES if line != "tuned"],
        choices=LINES,
        help="lines to run (default all but tuned)",
    )
    parser.add_argument(
        "--pause-seconds",
        type=float,
        default=5.0,
        help=f"the fixed-pause line's pause (Company Communicator: {CC_PAUSE_SECONDS:g} s; default 5)",
    )
    parser.add_argument(
        "--real-ceiling",
        type=float,
        default=30.0,
        help="the emulator's rate in the ceiling lines (default 30)",
    )
    parser.add_argument(
        "--random-429",
        type=float,
        default=0.1,
        help="share of sends answered 429 in the faults lines (default 0.1)",
    )
    parser.add_argument(
        "--limiter",
        type=json.loads,
        default={},
        help='LimiterConfig fields (JSON, camelCase) for the "tuned" line, e.g. \'{"decreaseFactor": 0.9}\'',
    )
    parser.add_argument("--no-write", action="store_true", help="print only; do not write bench/results/")
    parser.add_argument("--output", type=Path, help="write the JSON here instead of bench/results/")
    add_latency_arguments(parser)
    args = parser.parse_args(argv)
    document = asyncio.run(run(args))
    lines = [_line_from_json(line) for line in document["lines"]]
    print()
    print(table(lines))
    print()
    print(details(lines))
    if document["tenantsScaling"] is not None:
        print(f"\n{args.tenants} tenants / one tenant (ours): {document['tenantsScaling']}x")
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        suffix = "" if document["latency"]["name"] == "none" else f"-latency-{document['latency']['name']}"
        path = args.output or RESULTS / f"send_rate-{datetime.now(UTC).date().isoformat()}{suffix}.json"
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"written {path}")
    return 0


def _line_from_json(document: dict[str, Any]) -> Line:
    known = {k: v for k, v in document.items() if k in Line.__dataclass_fields__}
    return Line(**known)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
