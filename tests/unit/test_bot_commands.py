"""Consent commands: what each text means and what it does to a user's preferences."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from proactive.bot.commands import CommandKind, apply_command, parse_command
from proactive.models import Preferences, QuietHours

TENANT = "9f3c2a41-5b6e-4d7a-8c1f-2e4b6a8d0c13"
USER = "0d2b5f7e-8a9c-4b1d-a3e5-f7091b2c3d4e"
NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def run(
    text: str, current: Preferences | None = None, time_zone: str | None = None
) -> tuple[Preferences | None, str]:
    result = apply_command(
        parse_command(text), current, tenant_id=TENANT, aad_object_id=USER, time_zone=time_zone, now=NOW
    )
    return result.preferences, result.reply


@pytest.mark.parametrize(
    ("text", "kind", "category"),
    [
        ("stop", CommandKind.STOP, None),
        ("STOP", CommandKind.STOP, None),
        ("Unsubscribe", CommandKind.STOP, None),
        ("unsubscribe all", CommandKind.STOP, None),
        ("unsubscribe Deployments", CommandKind.STOP, "deployments"),
        ("stop!", CommandKind.STOP, None),
        ("start", CommandKind.START, None),
        ("subscribe incidents", CommandKind.START, "incidents"),
        ("status", CommandKind.STATUS, None),
        ("help", CommandKind.HELP, None),
        ("", CommandKind.HELP, None),
        ("what is this?", CommandKind.UNKNOWN, None),
        ("unsubscribe <script>", CommandKind.INVALID, None),
    ],
)
def test_parse_recognises_commands_case_insensitively(
    text: str, kind: CommandKind, category: str | None
) -> None:
    command = parse_command(text)
    assert (command.kind, command.category) == (kind, category)


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("quiet 22:00-07:00", "22:00", "07:00"),
        ("Quiet 22:00 - 7:00", "22:00", "07:00"),
        ("quiet 9-17", "09:00", "17:00"),
        ("quiet 22:30\u201306:15", "22:30", "06:15"),
        ("quiet 21h00 to 6h30", "21:00", "06:30"),
    ],
)
def test_quiet_hours_accept_common_spellings(text: str, start: str, end: str) -> None:
    command = parse_command(text)
    assert command.kind is CommandKind.QUIET
    assert command.quiet_hours == QuietHours(start=start, end=end)


@pytest.mark.parametrize("text", ["quiet", "quiet 25:00-07:00", "quiet 22:00-22:00", "quiet tonight"])
def test_unusable_quiet_hours_explain_the_format(text: str) -> None:
    preferences, reply = run(text)
    assert preferences is None
    assert "quiet 22:00-07:00" in reply


def test_quiet_off_clears_the_window() -> None:
    current = Preferences(
        tenant_id=TENANT,
        aad_object_id=USER,
        quiet_hours=QuietHours(start="22:00", end="07:00"),
        updated_at=NOW,
    )
    preferences, reply = run("quiet off", current)
    assert preferences is not None and preferences.quiet_hours is None
    assert "no more quiet hours" in reply


def test_stop_opts_out_of_everything_and_start_opts_back_in() -> None:
    stopped, reply = run("stop")
    assert stopped is not None and stopped.opted_out_all and not stopped.allows(None)
    assert "start" in reply
    started, _ = run("start", stopped.model_copy(update={"opted_out_categories": ("deployments",)}))
    assert started is not None and not started.opted_out_all and started.opted_out_categories == ()


def test_category_opt_out_is_kept_once_and_removed_by_subscribe() -> None:
    once, reply = run("unsubscribe deployments")
    twice, _ = run("unsubscribe deployments", once)
    assert twice is not None and twice.opted_out_categories == ("deployments",)
    assert not twice.allows("Deployments") and twice.allows("incidents")
    assert "deployments" in reply
    again, _ = run("subscribe deployments", twice)
    assert again is not None and again.allows("deployments")


def test_subscribing_to_a_category_while_stopped_says_everything_is_still_off() -> None:
    stopped, _ = run("stop")
    after, reply = run("start deployments", stopped)
    assert after is not None and after.opted_out_all
    assert "still off" in reply


def test_quiet_hours_record_the_time_zone_teams_sent() -> None:
    preferences, reply = run("quiet 22:00-07:00", time_zone="Europe/Berlin")
    assert preferences is not None
    assert preferences.quiet_hours == QuietHours(start="22:00", end="07:00")
    assert preferences.time_zone == "Europe/Berlin"
    assert "Europe/Berlin" in reply


def test_status_and_help_change_nothing() -> None:
    current = Preferences(
        tenant_id=TENANT, aad_object_id=USER, opted_out_categories=("deployments",), updated_at=NOW
    )
    preferences, reply = run("status", current)
    assert preferences is None and "deployments" in reply and "on" in reply
    preferences, reply = run("help", current)
    assert preferences is None and "unsubscribe" in reply


def test_unknown_text_answers_with_help() -> None:
    preferences, reply = run("tell me a joke")
    assert preferences is None
    assert reply.startswith("Sorry") and "stop" in reply and "quiet 22:00-07:00" in reply
