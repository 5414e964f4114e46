"""The Teams emulator's read-only HTML page and the timeline the demo's chart reads (issue 17).

The page is checked with the standard library's HTML parser: its tables, links and text, not its bytes.
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import aiohttp

from devhost.emulators.teams import build_app
from devhost.emulators.teams_state import TeamsEmulatorConfig
from tests.emulators.conftest import ServeApp
from tests.support.clocks import FakeClock

TENANT = "11111111-2222-4333-8444-555555555555"
OTHER = "99999999-2222-4333-8444-555555555555"


class PageParser(HTMLParser):
    """Collects table rows (cell texts), links and every start tag."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.links: list[str] = []
        self.tags: list[str] = []
        self.title = ""
        self._cell: list[str] | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a":
            self.links.extend(value or "" for name, value in attrs if name == "href")
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_title:
            self.title += data


def parse(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    parser.close()
    return parser


def activity(text: str, tenant: str = TENANT, notification: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "message", "text": text, "conversation": {"tenantId": tenant}}
    if notification:
        body["channelData"] = {"proactive": {"notificationId": notification}}
    return body


async def test_page_lists_each_conversation_with_what_it_received_and_escapes_text(
    serve_app: ServeApp,
) -> None:
    base = await serve_app(build_app(TeamsEmulatorConfig()))
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}v3/conversations/a:one/activities", json=activity("first", notification="n1")
        ) as r:
            first = (await r.json())["id"]
        await http.post(
            f"{base}v3/conversations/a:one/activities", json=activity("<script>alert(1)</script>")
        )
        await http.put(f"{base}v3/conversations/a:one/activities/{first}", json=activity("first, edited"))
        # a:two is first seen through a reply that names no tenant, then a message of tenant OTHER
        await http.post(f"{base}v3/conversations/a:two/activities", json={"type": "message", "text": "reply"})
        await http.post(f"{base}v3/conversations/a:two/activities", json=activity("hello", tenant=OTHER))
        async with http.get(f"{base}_emulator/") as answer:
            assert answer.status == 200
            assert answer.content_type == "text/html"
            page = parse(await answer.text())
        async with http.get(f"{base}_emulator/", params={"tenant": OTHER}) as answer:
            filtered = parse(await answer.text())
        async with http.get(f"{base}_emulator/conversations/a%3Aone") as answer:
            detail = parse(await answer.text())
        async with http.get(f"{base}_emulator/conversations/a%3Anobody") as answer:
            missing = answer.status

    header, *rows = page.rows
    assert header[:3] == ["conversation", "tenant", "messages"]
    by_id = {row[0]: row for row in rows}
    assert set(by_id) == {"a:one", "a:two"}
    assert by_id["a:one"][1:5] == [TENANT, "2", "1", "0"]  # 2 messages, 1 update, 0 deletes
    assert by_id["a:one"][-1] == "<script>alert(1)</script>"  # shown as text ...
    assert "script" not in page.tags  # ... never as markup
    assert "/_emulator/conversations/a%3Aone" in page.links
    assert [row[0] for row in filtered.rows[1:]] == ["a:two"]
    assert detail.title == "Conversation a:one"
    activity_rows = detail.rows[1:]
    assert [(row[2], row[3], row[6]) for row in activity_rows] == [
        ("n1", "first, edited", "updated"),
        ("", "<script>alert(1)</script>", "sent"),
    ]
    assert all(row[1] for row in activity_rows)  # each shows when it arrived
    assert missing == 404


async def test_stats_timeline_records_received_at_and_each_429_with_its_tenant(
    serve_app: ServeApp, fake_clock: FakeClock
) -> None:
    # Tenant OTHER is limited to 1 request/s; TENANT keeps the default 50.
    config = TeamsEmulatorConfig(tenant_rates={OTHER: 1})
    base = await serve_app(build_app(config, clock=fake_clock))
    async with aiohttp.ClientSession() as http:
        statuses = []
        for n in range(3):
            async with http.post(
                f"{base}v3/conversations/a:slow{n}/activities", json=activity("x", tenant=OTHER)
            ) as r:
                statuses.append(r.status)
        async with http.post(f"{base}v3/conversations/a:fast/activities", json=activity("y")) as r:
            fast = r.status
        async with http.get(f"{base}_emulator/stats", params={"timeline": "1"}) as r:
            stats = await r.json()
        async with http.get(f"{base}_emulator/stats") as r:
            plain = await r.json()

    assert statuses == [201, 429, 429]
    assert fast == 201
    log = stats["throttleLog"]
    assert [(event["tenantId"], event["operation"]) for event in log] == [(OTHER, "send")] * 2
    assert all(isinstance(event["at"], float) for event in log)
    received = stats["conversations"]["a:fast"]["activities"][0]["receivedAt"]
    assert received >= log[0]["at"] > 1_000_000_000  # Unix time, not the monotonic test clock
    assert "throttleLog" not in plain
