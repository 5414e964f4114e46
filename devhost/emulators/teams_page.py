"""A read-only HTML view of the Teams emulator: conversations and what each received (no framework).

``GET /_emulator/`` lists conversations (``?tenant=`` filters, ``?limit=`` caps the rows, default 500) with
their counts; ``GET /_emulator/conversations/{id}`` lists one conversation's activities: text, notification
id, when it arrived, and whether it was updated or deleted. Everything shown is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from devhost.emulators.teams_state import ConversationStats, Stats

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}"
    "table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem;"
    "text-align:left;vertical-align:top;font-size:.9rem}th{background:#f3f2f1}"
    ".deleted{text-decoration:line-through;color:#888}.num{text-align:right}"
)


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


def _row(cells: Iterable[str], *, header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{cell}</{tag}>" for cell in cells) + "</tr>"


def _when(at: Any) -> str:
    if not isinstance(at, int | float):
        return ""
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S.%f")[:-3]


def _last_text(stats: ConversationStats) -> str:
    for view in reversed(list(stats.activities.values())):
        text = view.get("text")
        if text:
            return str(text)
    return ""


def conversations_page(stats: Stats, *, tenant: str | None = None, limit: int = 500) -> str:
    """The list: one row per conversation (tenant, messages, updates, deletes, 429s, failures, last text)."""
    chosen = [
        (cid, conv) for cid, conv in stats.conversations.items() if tenant is None or conv.tenant_id == tenant
    ]
    totals = stats.to_json(activities=False)["totals"]
    summary = (
        f"<p>{len(chosen)} conversations"
        + (f" in tenant <code>{html.escape(tenant)}</code>" if tenant else "")
        + f"; requests {totals['requests']}, accepted {totals['accepted']}, throttled {totals['throttled']}, "
        f'failed {totals["failed"]}. Read-only; JSON at <a href="/_emulator/stats">/_emulator/stats</a>.</p>'
    )
    rows = [
        _row(
            ["conversation", "tenant", "messages", "updated", "deleted", "429s", "failed", "last text"],
            header=True,
        )
    ]
    for cid, conv in chosen[:limit]:
        link = f'<a href="/_emulator/conversations/{quote(cid, safe="")}">{html.escape(cid)}</a>'
        tenant_link = (
            f'<a href="/_emulator/?{urlencode({"tenant": conv.tenant_id})}">{html.escape(conv.tenant_id)}</a>'
        )
        rows.append(
            _row(
                [
                    link,
                    tenant_link,
                    str(len(conv.activities)),
                    str(conv.updates),
                    str(conv.deletes),
                    str(conv.throttled),
                    str(conv.failed),
                    html.escape(_last_text(conv)[:120]),
                ]
            )
        )
    more = (
        f"<p>{len(chosen) - limit} more not shown (<code>?limit=</code>).</p>" if len(chosen) > limit else ""
    )
    return _page("Teams emulator: conversations", summary + "<table>" + "".join(rows) + "</table>" + more)


def conversation_page(stats: Stats, conversation_id: str) -> str | None:
    """One conversation's activities, or ``None`` when the emulator never saw it."""
    conv = stats.conversations.get(conversation_id)
    if conv is None:
        return None
    rows = [
        _row(
            ["activity", "received (UTC)", "notification", "text", "attachments", "updates", "state"],
            header=True,
        )
    ]
    for view in conv.activities.values():
        deleted = bool(view.get("deleted"))
        text = html.escape(str(view.get("text") or ""))
        rows.append(
            _row(
                [
                    html.escape(str(view["id"])),
                    _when(view.get("receivedAt")),
                    html.escape(str(view.get("notificationId") or "")),
                    f'<span class="deleted">{text}</span>' if deleted else text,
                    str(view.get("attachments") or 0),
                    str(view.get("updates") or 0),
                    "deleted" if deleted else ("updated" if view.get("updates") else "sent"),
                ]
            )
        )
    body = (
        f"<p>tenant <code>{html.escape(conv.tenant_id)}</code>; {len(conv.activities)} activities, "
        f'{conv.throttled} throttled, {conv.failed} failed. <a href="/_emulator/">all conversations</a></p>'
        "<table>" + "".join(rows) + "</table>"
    )
    return _page(f"Conversation {conversation_id}", body)
