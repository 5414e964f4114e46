"""Consent and help commands from the 1:1 chat: parsing and their effect on a user's preferences.

Grammar (case-insensitive; ``<at>Bot</at>`` mentions are removed before parsing, see
:meth:`~proactive.bot.activity.InboundActivity.command_text`)::

    stop | unsubscribe [category]      opt out of everything, or of one category
    start | subscribe [category]       opt back in to everything, or to one category
    quiet HH:MM-HH:MM | quiet off      quiet hours in the user's time zone (may wrap midnight)
    status                             what is set
    help                               the command list

Anything else answers with help. Both functions are pure; the handler stores what
:func:`apply_command` returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from proactive.bot import texts
from proactive.models import Preferences, QuietHours, normalise_category

__all__ = ["Command", "CommandKind", "CommandResult", "apply_command", "parse_command"]

_TIME = r"([0-9]{1,2})(?::|\.|h)?([0-9]{2})?"
# Hyphen, en dash or em dash (Teams clients autocorrect "-" to a dash), or the word "to".
_QUIET_RANGE = re.compile(rf"{_TIME}\s*(?:-|\u2013|\u2014|to)\s*{_TIME}")
_ALL_WORDS = frozenset({"all", "everything"})


class CommandKind(StrEnum):
    STOP = "stop"
    START = "start"
    QUIET = "quiet"
    QUIET_OFF = "quiet_off"
    STATUS = "status"
    HELP = "help"
    UNKNOWN = "unknown"
    INVALID = "invalid"  # a known command with an argument it cannot use


@dataclass(frozen=True)
class Command:
    """A parsed command.

    Attributes:
        kind: What to do.
        category: For stop/start: the category, or ``None`` for all.
        quiet_hours: For quiet: the window.
        problem: For invalid: what is wrong, in words for the user.
    """

    kind: CommandKind
    category: str | None = None
    quiet_hours: QuietHours | None = None
    problem: str | None = None


@dataclass(frozen=True)
class CommandResult:
    """What a command changes and what to answer.

    Attributes:
        preferences: The preferences to store, or ``None`` when nothing changes.
        reply: The confirmation (or help) text.
    """

    preferences: Preferences | None
    reply: str


def _clock_time(hours: str, minutes: str | None) -> str | None:
    hour, minute = int(hours), int(minutes or "0")
    if hour > 23 or minute > 59:
        return None
    return f"{hour:02d}:{minute:02d}"


def _parse_quiet(argument: str) -> Command:
    if argument in {"off", "none", "stop", "clear"}:
        return Command(CommandKind.QUIET_OFF)
    match = _QUIET_RANGE.fullmatch(argument)
    start = _clock_time(match.group(1), match.group(2)) if match else None
    end = _clock_time(match.group(3), match.group(4)) if match else None
    if start is None or end is None:
        return Command(CommandKind.INVALID, problem=texts.QUIET_FORMAT)
    if start == end:
        return Command(CommandKind.INVALID, problem=texts.QUIET_EMPTY)
    return Command(CommandKind.QUIET, quiet_hours=QuietHours(start=start, end=end))


def parse_command(text: str) -> Command:
    """Parse the (mention-free) text of a 1:1 message."""
    words = text.strip().lower().split(maxsplit=1)
    if not words:
        return Command(CommandKind.HELP)
    verb, argument = words[0].strip("!/.?"), (words[1].strip() if len(words) > 1 else "")
    if verb in {"stop", "unsubscribe", "start", "subscribe"}:
        kind = CommandKind.STOP if verb in {"stop", "unsubscribe"} else CommandKind.START
        if not argument or argument in _ALL_WORDS:
            return Command(kind)
        category = normalise_category(argument)
        if category is None:
            return Command(CommandKind.INVALID, problem=texts.CATEGORY_FORMAT)
        return Command(kind, category=category)
    if verb == "quiet":
        return _parse_quiet(argument)
    if verb in {"status", "settings"} and not argument:
        return Command(CommandKind.STATUS)
    if verb in {"help", "?"}:
        return Command(CommandKind.HELP)
    return Command(CommandKind.UNKNOWN)


def apply_command(
    command: Command,
    current: Preferences | None,
    *,
    tenant_id: str,
    aad_object_id: str,
    time_zone: str | None,
    now: datetime,
) -> CommandResult:
    """The preferences after ``command`` and the confirmation to send.

    Args:
        command: From :func:`parse_command`.
        current: The stored preferences, or ``None`` (nothing set yet: everything allowed).
        tenant_id: The user's tenant.
        aad_object_id: The user.
        time_zone: The time zone the activity carried, if any (kept for quiet hours).
        now: For ``updated_at``.
    """
    base = current or Preferences(tenant_id=tenant_id, aad_object_id=aad_object_id, updated_at=now)
    zone = time_zone or base.time_zone
    categories = tuple(base.opted_out_categories)

    def changed(**values: object) -> Preferences:
        return base.model_copy(update={"time_zone": zone, "updated_at": now, **values})

    kind = command.kind
    if kind is CommandKind.STOP and command.category is None:
        return CommandResult(changed(opted_out_all=True), texts.stopped_all())
    if kind is CommandKind.STOP and command.category is not None:
        if command.category not in categories:
            categories = (*categories, command.category)
        return CommandResult(
            changed(opted_out_categories=categories), texts.stopped_category(command.category)
        )
    if kind is CommandKind.START and command.category is None:
        return CommandResult(changed(opted_out_all=False, opted_out_categories=()), texts.started_all())
    if kind is CommandKind.START and command.category is not None:
        remaining = tuple(c for c in categories if c != command.category)
        reply = texts.started_category(command.category, still_stopped=base.opted_out_all)
        return CommandResult(changed(opted_out_categories=remaining), reply)
    if kind is CommandKind.QUIET and command.quiet_hours is not None:
        return CommandResult(
            changed(quiet_hours=command.quiet_hours), texts.quiet_set(command.quiet_hours, zone)
        )
    if kind is CommandKind.QUIET_OFF:
        return CommandResult(changed(quiet_hours=None), texts.quiet_off())
    if kind is CommandKind.STATUS:
        return CommandResult(None, texts.status(current, zone))
    if kind is CommandKind.INVALID:
        return CommandResult(None, command.problem or texts.help_text())
    if kind is CommandKind.UNKNOWN:
        return CommandResult(None, texts.not_understood())
    return CommandResult(None, texts.help_text())
