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
         "--blocked", "0.1", "--opted-out", "0.1", "--quiet", "0",
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
    # 10 % of each tenant's 20 users blocked the bot, 10 % of the rest opted out of the category.
    assert result.report.by_status["unreachable"] == 4
    assert result.report.by_status["suppressed"] == 4
    assert result.report.by_status["sent"] == counts["sent"] == 45 - 8
    assert result.updated == result.deleted == counts["sent"]
    assert result.emulator_totals["deletes"] == counts["sent"]
    rows = parse_csv(result.csv_path.read_text(encoding="utf-8"))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 45
    assert result.chart_path.read_bytes().startswith(PNG_SIGNATURE)
    assert re.search(r"^Contoso: \d+/23 done, sent \d+", text, re.MULTILINE)
    assert "\x1b[" not in text  # no terminal control codes in a pipe
    assert "Stopped everything" in text


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The stack `make run` starts, on free ports, with the fixed development key."""
    running = start_stack(LatencyProfile.named("none", 1), function_key=DEV_FUNCTION_KEY)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def _readme_first_broadcast() -> tuple[str, dict[str, object]]:
    """The README's "Your first broadcast" POST: its path and query, and its JSON body, as written."""
    section = README.read_text(encoding="utf-8").split("## Your first broadcast", 1)[1].split("\n## ", 1)[0]
    url = re.search(r'curl -s -X POST "http://127\.0\.0\.1:7071(/api/broadcasts\?code=[^"]+)"', section)
    body = re.search(r"-d '(\{.*\})'", section)
    assert url and body, "the README's first broadcast changed shape"
    return url.group(1), json.loads(body.group(1))


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
