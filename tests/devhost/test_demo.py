"""``make demo`` and the README's first broadcast, against the real stack (issue 17).

Both start what ``make run`` starts (Azurite, both emulators, the host) on free ports, as child processes,
at a tiny size: the demo with 2 tenants and 40 users, the README with 5 users.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from rich.console import Console

from devhost import seed
from devhost.demo.report import PNG_SIGNATURE, parse_csv
from devhost.demo.run import parse_args, run_demo
from devhost.latency import LatencyProfile
from devhost.run import DEV_FUNCTION_KEY
from devhost.stack import Stack, start_stack
from proactive.broadcast.export import CSV_COLUMNS

pytestmark = [pytest.mark.azurite, pytest.mark.slow]

README = Path(__file__).resolve().parents[2] / "README.md"


async def test_demo_at_a_tiny_size_completes_adds_up_writes_csv_and_png_and_prints_plain_lines(
    tmp_path: Path,
) -> None:
    options = parse_args(
        ["--tenants", "2", "--users", "40", "--channels", "3", "--group-chats", "1",
         "--blocked", "0.1", "--opted-out", "0.1", "--quiet", "0", "--uninstalled", "0.1",
         "--throttle-rate", "0.02", "--error-rate", "0",
         "--latency", "none", "--output", str(tmp_path)]
    )  # fmt: skip
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)  # not a terminal: plain lines

    result = await asyncio.wait_for(run_demo(options, console), 240)

    text = out.getvalue()
    counts = result.final["counts"]
    assert result.final["status"] == "completed"
    assert counts["total"] == 40 + 3 + 2 == result.report.total
    assert result.report.adds_up()
    # 10 % of each tenant's 20 users blocked the bot, 10 % opted out of the category, and 10 % never talked
    # to it: only Graph knew them; the broadcast (includeUninstalled) installed the app for them and sent.
    assert result.report.by_status["unreachable"] == 4
    assert result.report.by_status["suppressed"] == 4
    assert result.report.by_status["sent"] == counts["sent"] == 45 - 8
    assert result.graph_installs == result.never_talked_sent == 4
    assert result.updated == result.deleted == counts["sent"]
    assert result.emulator_totals["deletes"] == counts["sent"]
    rows = parse_csv(result.csv_path.read_text(encoding="utf-8"))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 45
    assert result.chart_path.read_bytes().startswith(PNG_SIGNATURE)
    assert re.search(r"^Contoso: \d+/23 done, sent \d+", text, re.MULTILINE)
    assert "\x1b[" not in text  # no terminal control codes in a pipe
    assert "Stopped everything" in text


@pytest.fixture
def stack() -> Iterator[Stack]:
    """The stack `make run` starts, on free ports, with the fixed development key; one per test, as both
    README examples broadcast to the whole README tenant."""
    running = start_stack(
        LatencyProfile.named("none", 1), function_key=DEV_FUNCTION_KEY, graph_tenants=(seed.SEED_TENANT,)
    )
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def _readme_broadcasts() -> list[tuple[str, dict[str, Any]]]:
    """The README's "Your first broadcast" POSTs: each one's path and query, and its JSON body, as written."""
    section = README.read_text(encoding="utf-8").split("## Your first broadcast", 1)[1].split("\n## ", 1)[0]
    urls = re.findall(r'curl -s -X POST "http://127\.0\.0\.1:7071(/api/broadcasts\?code=[^"]+)"', section)
    bodies = re.findall(r"-d '(\{.*\})'", section)
    assert urls and len(urls) == len(bodies), "the README's broadcasts changed shape"
    return [(url, json.loads(body)) for url, body in zip(urls, bodies, strict=True)]


def _readme_first_broadcast() -> tuple[str, dict[str, Any]]:
    """The README's first broadcast (to the users ``devhost seed`` captured)."""
    return _readme_broadcasts()[0]


async def _follow(session: aiohttp.ClientSession, location: str) -> dict[str, Any]:
    """Poll a status URL until ``200`` and no row is open (Graph installs re-drive rows after the lanes)."""
    status: dict[str, Any] = {}
    for _ in range(120):
        async with session.get(location) as answer:
            status = await answer.json()
            counts = status.get("counts") or {}
            if answer.status == 200 and not any(counts.get(k) for k in ("pending", "sending", "stale")):
                break
        await asyncio.sleep(0.5)
    return status


async def test_readme_first_broadcast_works_as_written_after_devhost_seed(stack: Stack) -> None:
    path, body = _readme_first_broadcast()
    assert path == f"/api/broadcasts?code={DEV_FUNCTION_KEY}"

    code = await asyncio.to_thread(
        seed.main, ["--users", "5", "--host", stack.host_url, "--teams-url", stack.teams_url]
    )
    assert code == 0
    async with aiohttp.ClientSession() as session:
        async with session.post(stack.host_url + path, json=body) as answer:
            assert answer.status == 202
            location = answer.headers["Location"]
        for _ in range(60):  # the Location carries ?code=, as the README's curl gets it back
            async with session.get(location) as answer:
                status = await answer.json()
                if answer.status == 200:
                    break
            await asyncio.sleep(0.5)
        async with session.get(f"{stack.teams_url}/_emulator/stats") as answer:
            stats = await answer.json()
        async with session.get(f"{stack.teams_url}/_emulator/") as answer:
            page = await answer.text()

    assert status["status"] == "completed"
    assert status["counts"]["sent"] == status["counts"]["total"] == 5
    received = [
        activity["text"]
        for conversation in stats["conversations"].values()
        for activity in conversation["activities"]
        if activity["notificationId"] == status["id"]
    ]
    assert received == [body["message"]["text"]] * 5  # type: ignore[index]
    assert page.count("/_emulator/conversations/") == 5


async def test_readme_broadcast_to_users_who_never_talked_installs_them_through_graph_on_make_run(
    stack: Stack,
) -> None:
    path, body = _readme_broadcasts()[1]
    assert body["audience"]["includeUninstalled"] is True

    code = await asyncio.to_thread(
        seed.main, ["--users", "0", "--uninstalled", "2", "--graph-url", stack.graph_url]
    )
    assert code == 0
    newcomers = {user["id"] for user in seed.uninstalled_users(seed.SEED_TENANT, 2)}
    async with aiohttp.ClientSession() as session:
        async with session.post(stack.host_url + path, json=body) as answer:
            assert answer.status == 202, await answer.text()
            status = await _follow(session, answer.headers["Location"])
        rows = await _rows(session, stack, status["id"])
        async with session.get(f"{stack.graph_url}/_emulator/stats") as answer:
            graph = await answer.json()

    assert status["status"] == "completed"
    reached = {
        key.removeprefix("user:"): row for key, row in rows.items() if key.removeprefix("user:") in newcomers
    }
    assert set(reached) == newcomers and all(row["status"] == "sent" for row in reached.values())
    assert graph["installs"] == {seed.SEED_TENANT: 2}


async def _rows(session: aiohttp.ClientSession, stack: Stack, notification_id: str) -> dict[str, Any]:
    url = f"{stack.host_url}/api/broadcasts/{notification_id}/deliveries?code={DEV_FUNCTION_KEY}"
    async with session.get(url) as answer:
        assert answer.status == 200
        return {item["recipientKey"]: item for item in (await answer.json())["items"]}
