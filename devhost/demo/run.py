"""``python -m devhost demo`` (``make demo``): the product doing its job, end to end, on this machine.

1. Start Azurite, the Teams and Graph emulators and the host on free ports (``--latency azure`` by default),
   their logs in ``demo-output/devhost.log``.
2. Seed the audience (:mod:`devhost.demo.audience`): users who never talked to the bot go into the Graph
   emulator's directory only; everyone else is captured through ``/api/messages`` (installs, channels, group
   chats); opt-outs and quiet hours are typed as commands while the demo waits for the welcomes (real sends,
   paced like any send; the broadcast starts once they are out); then some users block the bot (emulator
   rule: 403 MessageWritesBlocked) and Teams starts throwing a few random 429s and 503s.
3. Broadcast to every tenant (``includeUninstalled``: the never-talked users are installed through Graph
   first) as a Logic App would (:mod:`devhost.demo.client`) and show per tenant the progress, the current
   rate against the ceiling and the limiter's state (:mod:`devhost.demo.progress`); after the lanes, wait
   for the rows the installs re-drive.
4. The delivery report, the CSV export and the rate chart (:mod:`devhost.demo.report`) in ``demo-output/``;
   then update (PATCH) and recall (DELETE) the message and show both on the emulator.
5. Stop everything it started (``--keep-running`` waits for Ctrl-C first, to browse ``/_emulator/``).

Quiet-hours users get a window ending at the first whole minute at least ``--quiet-for`` seconds after their
command, so their messages are deferred and then delivered while the demo watches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.live import Live
from rich.table import Table

from devhost.demo.audience import (
    AudienceOptions,
    Seeder,
    TenantAudience,
    blocked_faults,
    graph_directory,
    plan_audience,
)
from devhost.demo.client import LogicAppClient
from devhost.demo.progress import ProgressReader, plain_line, render
from devhost.demo.report import (
    delivery_report,
    never_talked_outcome,
    parse_csv,
    rate_series,
    write_chart,
    write_csv,
)
from devhost.latency import LatencyProfile, from_args
from devhost.latency import add_arguments as add_latency_arguments
from devhost.stack import Stack, start_stack
from proactive.bot.welcome import welcome_notification_id

CATEGORY = "deployments"
# How often the live view reads the lanes and limiters: each read is work for the host it watches.
POLL_SECONDS = 2.0
# Commands typed at once (each answered with a direct reply, which Teams counts against the tenant's rate).
COMMANDS_AT_ONCE = 8


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Options of ``demo`` (``make demo DEMO_ARGS='...'``)."""
    parser = argparse.ArgumentParser(
        prog="python -m devhost demo", description=(__doc__ or "").splitlines()[0].strip("`: ")
    )
    size = parser.add_argument_group("audience")
    size.add_argument("--tenants", type=int, default=3, help="tenants (default 3)")
    size.add_argument("--users", type=int, default=2000, help="users over all tenants (default 2000)")
    size.add_argument("--channels", type=int, default=20, help="channels over all tenants (default 20)")
    size.add_argument("--group-chats", type=int, default=2, help="group chats per tenant (default 2)")
    size.add_argument("--blocked", type=float, default=0.02, help="fraction of users who blocked the bot")
    size.add_argument(
        "--opted-out", type=float, default=0.05, help=f"fraction who sent 'unsubscribe {CATEGORY}'"
    )
    size.add_argument("--quiet", type=float, default=0.04, help="fraction inside their quiet hours")
    size.add_argument(
        "--installs",
        type=float,
        default=0.1,
        help="fraction of users who install the bot now and are welcomed (the rest had it: default 0.1)",
    )
    size.add_argument(
        "--uninstalled",
        type=float,
        default=0.05,
        help="fraction of users who never talked to the bot: only Graph knows them, the broadcast "
        "(includeUninstalled) installs the app for them first (default 0.05)",
    )
    faults = parser.add_argument_group("Teams faults")
    faults.add_argument(
        "--throttle-rate", type=float, default=0.01, help="random 429s per send (default 0.01)"
    )
    faults.add_argument(
        "--error-rate", type=float, default=0.005, help="random 503s per send (default 0.005)"
    )
    faults.add_argument(
        "--slow-tenant-rate",
        type=float,
        default=35.0,
        help="Teams' per-tenant limit for the last tenant, below the bot's ceiling of 50, so its limiter "
        "has to find it (0: every tenant at 50; ignored with one tenant)",
    )
    run = parser.add_argument_group("run")
    add_latency_arguments(run)
    parser.set_defaults(latency="azure")
    run.add_argument(
        "--quiet-for", type=float, default=20.0, help="seconds quiet hours last at least (default 20)"
    )
    run.add_argument(
        "--output", type=Path, default=Path("demo-output"), help="where files go (default demo-output)"
    )
    run.add_argument("--keep-running", action="store_true", help="keep the stack up until Ctrl-C at the end")
    run.add_argument("--plain", action="store_true", help="plain lines instead of the live view")
    return parser.parse_args(list(argv))


@dataclass
class DemoResult:
    """What a run produced (for tests and the closing summary)."""

    notification_id: str
    final: dict[str, Any]
    csv_path: Path
    chart_path: Path
    report: Any
    emulator_totals: dict[str, Any]
    updated: int
    deleted: int
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)
    # Users who never talked to the bot: how many Graph installed, how many of their rows were sent.
    graph_installs: int = 0
    never_talked_sent: int = 0


def _quiet_until(now: datetime, at_least: float) -> datetime:
    """The first whole minute at least ``at_least`` seconds after ``now``."""
    later = now + timedelta(seconds=at_least)
    return later.replace(second=0, microsecond=0) + timedelta(
        minutes=1 if later.second or later.microsecond else 0
    )


class Demo:
    """One run of the demo against a started stack."""

    def __init__(self, options: argparse.Namespace, stack: Stack, console: Console) -> None:
        self.options = options
        self.stack = stack
        self.console = console
        self.live = console.is_terminal and not options.plain
        self.plans: tuple[TenantAudience, ...] = ()
        self.phases: dict[str, float] = {}
        self.graph_installs = 0
        self.never_talked_sent = 0

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time one step of the run (printed at the end, so a slow step is easy to find)."""
        began = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.monotonic() - began

    @property
    def never_talked(self) -> int:
        """Users only Graph knows (the broadcast installs the app for them)."""
        return sum(len(plan.never_talked) for plan in self.plans)

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    async def run(self, session: aiohttp.ClientSession) -> DemoResult:
        started = time.monotonic()
        options = self.options
        client = LogicAppClient(session, self.stack.host_url, self.stack.function_key)
        self.plans = plan_audience(
            AudienceOptions(
                tenants=options.tenants,
                users=options.users,
                channels=options.channels,
                group_chats=options.group_chats,
                blocked=options.blocked,
                opted_out=options.opted_out,
                quiet=options.quiet,
                installs=options.installs,
                never_talked=options.uninstalled,
            )
        )
        ceilings = await self._configure_teams(session)
        await self._seed(session, client)
        notification_id = f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        with self.phase("broadcast"):
            final = await self._broadcast(client, notification_id)
        with self.phase("report"):
            report, csv_path = await self._report(session, client, notification_id)
            stats = await self._emulator_stats(session, timeline=True)
            chart_path = self._chart(stats, notification_id, ceilings)
        updated, deleted = await self._update_and_recall(session, client, notification_id)
        totals = (await self._emulator_stats(session, timeline=False))["totals"]
        return DemoResult(
            notification_id,
            final,
            csv_path,
            chart_path,
            report,
            totals,
            updated,
            deleted,
            time.monotonic() - started,
            self.phases,
            self.graph_installs,
            self.never_talked_sent,
        )

    # ---- set-up -------------------------------------------------------------------------------------

    async def _configure_teams(self, session: aiohttp.ClientSession) -> dict[str, float]:
        """Per-tenant Teams limits; returns the ceiling each tenant's chart line shows."""
        ceilings = {plan.tenant_id: 50.0 for plan in self.plans}
        slow = self.options.slow_tenant_rate
        if slow and len(self.plans) > 1:
            last = self.plans[-1].tenant_id
            async with session.post(
                f"{self.stack.teams_url}/_emulator/config", json={"tenant_rates": {last: slow}}
            ) as answer:
                answer.raise_for_status()
            ceilings[last] = slow
            self.say(
                f"Teams limits {self.plans[-1].name} to {slow:.0f} msg/s (the bot's ceiling is 50): "
                "its limiter has to find that out from 429s."
            )
        return ceilings

    async def _seed(self, session: aiohttp.ClientSession, client: LogicAppClient) -> None:
        options = self.options
        users = sum(len(plan.users) for plan in self.plans)
        rows = sum(plan.recipients for plan in self.plans)
        never = self.never_talked
        # Who never talked to the bot exists only in the directory: the Graph emulator's, with the app in
        # each tenant's catalog (a full config, so it names this host and the Teams emulator again).
        config = self.stack.graph_config(graph_directory(self.plans))
        async with session.post(f"{self.stack.graph_url}/_emulator/config", json=config) as answer:
            answer.raise_for_status()
        self.say(
            f"Seeding {len(self.plans)} tenants: {users} users, {sum(len(p.channels) for p in self.plans)} "
            f"channels, {sum(len(p.group_chats) for p in self.plans)} group chats ({rows} recipients); "
            f"{never} of the users never talked to the bot (only Graph knows them), the others are captured "
            "through POST /api/messages ..."
        )
        seeder = Seeder(session, self.stack.host_url, self.stack.teams_url + "/")
        began = time.monotonic()
        with self.phase("capture"):
            await seeder.post_all(seeder.installs(self.plans))
        fresh = sum(user.installs_now for plan in self.plans for user in plan.captured)
        self.say(
            f"  {seeder.posted} activities in {time.monotonic() - began:.1f} s ({fresh} users installed the bot "
            f"just now, the others answered a card); while some users type commands, waiting for the {fresh} "
            "welcomes (paced like any send) so the broadcast starts on a quiet tenant"
        )
        now = datetime.now(UTC)
        quiet_until = _quiet_until(now, options.quiet_for)
        commands = seeder.commands(self.plans, CATEGORY, quiet_until, now)
        # Commands answer with direct replies: a few at a time, as people type. They go to the users' own
        # chats, not the welcomes' rows, so both go on at once.
        typing = Seeder(
            session, self.stack.host_url, self.stack.teams_url + "/", concurrency=COMMANDS_AT_ONCE
        )
        with self.phase("welcomes and commands"):
            await asyncio.gather(self._wait_for_welcomes(client), typing.post_all(commands))
        opted = sum(len(p.opted_out) for p in self.plans)
        quiet = sum(len(p.quiet) for p in self.plans)
        blocked = blocked_faults(self.plans)
        faults: dict[str, Any] = {
            "rules": blocked,
            "rates": {"429": options.throttle_rate, "503": options.error_rate},
            "rate_operations": ["send"],
            "seed": options.latency_seed if options.latency_seed is not None else 7,
        }
        async with session.post(f"{self.stack.teams_url}/_emulator/faults", json=faults) as answer:
            answer.raise_for_status()
        self.say(
            f"  {opted} users typed 'unsubscribe {CATEGORY}', {quiet} set quiet hours until "
            f"{quiet_until:%H:%M} UTC (in their own time zones), {len(blocked)} blocked the bot; Teams now "
            f"answers {options.throttle_rate:.1%} of sends 429 and {options.error_rate:.1%} 503"
        )

    async def _wait_for_welcomes(self, client: LogicAppClient, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        waiting = {
            welcome_notification_id(plan.tenant_id)
            for plan in self.plans
            if any(u.installs_now for u in plan.captured)
        }
        while waiting and time.monotonic() < deadline:
            for welcome in list(waiting):
                code, body = await client.get_json(f"api/broadcasts/{welcome}")
                counts = (body or {}).get("counts") or {}
                if code in (200, 202) and not any(counts.get(k) for k in ("pending", "sending", "deferred")):
                    waiting.discard(welcome)
            await asyncio.sleep(1.0)
        if waiting:
            self.say(
                f"[yellow]  welcomes still on their way after {limit:.0f} s; broadcasting anyway[/yellow]"
            )

    # ---- the broadcast ------------------------------------------------------------------------------

    async def _broadcast(self, client: LogicAppClient, notification_id: str) -> dict[str, Any]:
        request = {
            "notificationId": notification_id,
            # includeUninstalled: every user Graph lists too; those without a reference get the app first.
            "audience": {
                "tenants": [plan.tenant_id for plan in self.plans],
                "includeUninstalled": self.never_talked > 0,
            },
            "message": {
                "text": "Deploy 42 is live: the new billing pipeline is on. Reply 'unsubscribe deployments' to stop these.",
                "summary": "Deploy 42 is live",
            },
            "category": CATEGORY,
        }
        began = time.monotonic()
        accepted = await client.start(request)
        self.say(
            f"POST /api/broadcasts -> 202, Location {accepted.location.split('?')[0]}, "
            f"Retry-After {accepted.retry_after:g} s; polling it like a Logic App"
        )
        reader = ProgressReader(
            client, notification_id, [(plan.tenant_id, plan.name, plan.recipients) for plan in self.plans]
        )
        final: dict[str, Any] = {}
        headline = f"202 accepted; first poll after Retry-After {accepted.retry_after:g} s"
        stop = asyncio.Event()

        async def follow() -> None:
            nonlocal final, headline
            async for code, body in client.follow(accepted):
                final = body
                counts = body.get("counts") or {}
                headline = (
                    f"poll {client.polls} ({time.monotonic() - began:.0f} s): {code} {body.get('status')}; "
                    + ", ".join(f"{k} {v}" for k, v in counts.items() if v and k != "total")
                    + f" of {counts.get('total', '?')}"
                )
            stop.set()

        follower = asyncio.create_task(follow())
        try:
            if self.live:
                with Live(
                    render(reader.tenants, headline), console=self.console, refresh_per_second=4
                ) as live:
                    while not stop.is_set() and not follower.done():
                        await reader.poll()
                        live.update(render(reader.tenants, headline))
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), POLL_SECONDS)
                    await reader.poll()
                    live.update(render(reader.tenants, headline))
            else:
                # Not a terminal (a pipe, CI): plain lines every few seconds, only when something moved.
                last, shown = 0.0, ""
                while not stop.is_set() and not follower.done():
                    await reader.poll()
                    lines = "\n".join(plain_line(p) for p in reader.tenants.values())
                    if lines != shown and time.monotonic() - last >= 3.0:
                        last, shown = time.monotonic(), lines
                        self.say(f"{lines}\n{headline}")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), POLL_SECONDS)
                await reader.poll()
                self.say("\n".join(plain_line(p) for p in reader.tenants.values()) + f"\n{headline}")
            await follower
        finally:
            follower.cancel()
        waiting = _open_rows(final)
        if waiting and final.get("status") == "completed":
            # The lanes are done; users who never talked to the bot may still be on their way: installed
            # through Graph (paced per tenant), then their row re-driven through the paced path.
            self.say(f"  lanes done; {waiting} rows still on their way (Graph installs, re-drives): waiting")
            final = await self._settled(client, notification_id, final)
        self.say(
            f"Broadcast {final.get('status')} in {time.monotonic() - began:.1f} s, {final.get('throttled', 0)} 429s"
        )
        return final

    async def _settled(
        self, client: LogicAppClient, notification_id: str, final: dict[str, Any], limit: float = 120.0
    ) -> dict[str, Any]:
        """Poll the status until no row is open (pending, sending, deferred, stale), or ``limit`` passed."""
        deadline = time.monotonic() + limit
        while _open_rows(final) and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            code, body = await client.get_json(f"api/broadcasts/{notification_id}")
            if code == 200 and isinstance(body, dict):
                final = body
        if _open_rows(final):
            self.say(f"[yellow]  {_open_rows(final)} rows still open after {limit:.0f} s[/yellow]")
        return final

    # ---- afterwards ---------------------------------------------------------------------------------

    async def _report(
        self, session: aiohttp.ClientSession, client: LogicAppClient, notification_id: str
    ) -> tuple[Any, Path]:
        text = await client.deliveries_csv(notification_id)
        path = write_csv(text, self.options.output, notification_id)
        report = delivery_report(parse_csv(text))
        table = Table(title=f"Delivery report ({report.total} recipients)", box=None)
        for column in ("status", "reason", "rows"):
            table.add_column(column, justify="right" if column == "rows" else "left")
        for (status, reason), count in sorted(report.by_reason.items(), key=lambda item: (-item[1], item[0])):
            table.add_row(status, reason, str(count))
        self.console.print(table)
        names = {plan.tenant_id: plan.name for plan in self.plans}
        for tenant, counts in report.by_tenant.items():
            self.say(
                f"  {names.get(tenant, tenant)}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            )
        self.say(f"CSV export: {path} ({'adds up' if report.adds_up() else 'DOES NOT ADD UP'})")
        if self.never_talked:
            keys = {f"user:{aad}" for plan in self.plans for aad in plan.never_talked}
            outcome = never_talked_outcome(parse_csv(text), keys)
            self.graph_installs = await self._graph_installs(session)
            self.never_talked_sent = outcome.get("sent", 0)
            self.say(
                f"Never talked to the bot: {self.never_talked} users, Graph installed the app for "
                f"{self.graph_installs} (each then welcomed); their rows: "
                + ", ".join(f"{status} {count}" for status, count in sorted(outcome.items()))
            )
        return report, path

    async def _graph_installs(self, session: aiohttp.ClientSession) -> int:
        async with session.get(f"{self.stack.graph_url}/_emulator/stats") as answer:
            answer.raise_for_status()
            stats = await answer.json()
        return sum(int(count) for count in (stats.get("installs") or {}).values())

    async def _emulator_stats(self, session: aiohttp.ClientSession, *, timeline: bool) -> dict[str, Any]:
        query = "timeline=1" if timeline else "activities=0"
        async with session.get(f"{self.stack.teams_url}/_emulator/stats?{query}") as answer:
            answer.raise_for_status()
            stats: dict[str, Any] = await answer.json()
            return stats

    def _chart(self, stats: dict[str, Any], notification_id: str, ceilings: dict[str, float]) -> Path:
        tenants = [plan.tenant_id for plan in self.plans]
        series = rate_series(stats, notification_id, tenants)
        names = {plan.tenant_id: plan.name for plan in self.plans}
        path = write_chart(
            series, names, ceilings, self.options.output / f"delivery-rate-{notification_id}.png"
        )
        reached = stats.get("byNotification", {}).get(notification_id, {})
        self.say(
            f"Chart: {path} ({series.seconds} s; Teams saw {reached.get('deliveries', 0)} deliveries to "
            f"{reached.get('conversations', 0)} conversations, {len(stats.get('duplicates') or [])} duplicates)"
        )
        return path

    async def _update_and_recall(
        self, session: aiohttp.ClientSession, client: LogicAppClient, notification_id: str
    ) -> tuple[int, int]:
        sample = self._sample_conversation()
        text = "Deploy 42 is live (updated: rollout finished at 100 %)."
        accepted = await client.update(notification_id, {"text": text, "summary": "Deploy 42 is live"})
        began = time.monotonic()
        with self.phase("update"):
            await client.run(accepted)
        totals = (await self._emulator_stats(session, timeline=False))["totals"]
        updated = int(totals.get("updates", 0))
        shown = await self._sample_text(session, sample, notification_id)
        self.say(
            f"PATCH /api/broadcasts/{notification_id} -> 202 ... 200 in {time.monotonic() - began:.1f} s: "
            f"Teams updated {updated} messages; {sample or 'a user'} now reads {shown!r}"
        )
        began = time.monotonic()
        with self.phase("recall"):
            await client.run(await client.recall(notification_id))
        totals = (await self._emulator_stats(session, timeline=False))["totals"]
        deleted = int(totals.get("deletes", 0))
        self.say(
            f"DELETE /api/broadcasts/{notification_id}/messages -> 202 ... 200 in "
            f"{time.monotonic() - began:.1f} s: Teams deleted {deleted} messages "
            f"(see {self.stack.teams_url}/_emulator/conversations/{sample})"
        )
        return updated, deleted

    def _sample_conversation(self) -> str | None:
        for plan in self.plans:
            closed = plan.blocked | plan.opted_out | plan.quiet
            for user in plan.captured:
                if user.aad_object_id not in closed:
                    return user.conversation_id
        return None

    async def _sample_text(self, session: aiohttp.ClientSession, conversation: str | None, nid: str) -> str:
        if conversation is None:
            return ""
        async with session.get(
            f"{self.stack.teams_url}/_emulator/stats", params={"conversation": conversation}
        ) as answer:
            stats = await answer.json()
        for activity in (stats.get("conversations", {}).get(conversation) or {}).get("activities") or []:
            if activity.get("notificationId") == nid:
                return str(activity.get("text") or "")
        return ""


def _open_rows(status: dict[str, Any]) -> int:
    """Rows of a status body that may still change (a stale one waits for its Graph install)."""
    counts = status.get("counts") or {}
    return sum(int(counts.get(name) or 0) for name in ("pending", "sending", "deferred", "stale"))


def _summary(console: Console, result: DemoResult) -> None:
    final = result.final
    counts = final.get("counts") or {}
    console.print(
        f"\nDone in {result.seconds:.0f} s: broadcast {result.notification_id} {final.get('status')}, "
        f"{counts.get('sent', 0)} of {counts.get('total', 0)} sent, then {result.updated} updated and "
        f"{result.deleted} recalled. Files: {result.csv_path}, {result.chart_path}",
        highlight=False,
    )
    console.print(
        "Phases: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result.phases.items()),
        highlight=False,
    )


async def run_demo(options: argparse.Namespace, console: Console | None = None) -> DemoResult:
    """Start the stack, run the demo, stop the stack (however the run ends)."""
    console = console or Console(soft_wrap=True)
    began = time.monotonic()
    profile: LatencyProfile = from_args(options, os.environ)
    options.output.mkdir(parents=True, exist_ok=True)
    log_path = options.output / "devhost.log"
    console.print(
        f"Starting Azurite, the Teams and Graph emulators and the host (latency profile {profile.name}, "
        f"seed {profile.seed}); their logs go to {log_path}",
        highlight=False,
    )
    with log_path.open("wb") as log:
        stack = await asyncio.to_thread(
            start_stack, profile, function_key=secrets.token_urlsafe(18), output=log
        )
        try:
            await asyncio.to_thread(stack.wait_ready)
            up = time.monotonic() - began
            console.print(
                f"  up in {time.monotonic() - began:.0f} s: host {stack.host_url}/api/, Teams emulator "
                f"{stack.teams_url}/_emulator/ (conversations page), Graph emulator {stack.graph_url}/",
                highlight=False,
            )
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                result = await Demo(options, stack, console).run(session)
            result.seconds = time.monotonic() - began
            result.phases = {"start": up, **result.phases}
            _summary(console, result)
            if options.keep_running:
                console.print(
                    f"Still running: {stack.teams_url}/_emulator/ lists every conversation. Ctrl-C stops it all."
                )
                await _until_signal()
            return result
        finally:
            await asyncio.to_thread(stack.stop)
            console.print(f"Stopped everything ({time.monotonic() - began:.0f} s in all).", highlight=False)


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(argv: list[str]) -> int:
    """Entry point of ``python -m devhost demo``."""
    options = parse_args(argv)
    try:
        result = asyncio.run(run_demo(options))
    except KeyboardInterrupt:
        return 130
    return 0 if result.report.adds_up() and result.final.get("status") == "completed" else 1


__all__ = ["DemoResult", "main", "parse_args", "run_demo"]
