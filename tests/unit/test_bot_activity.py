"""Parsing inbound Teams activities: required fields named on failure, scope details, guests, time zones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proactive.bot.activity import ConversationType, is_guest_account, parse_activity
from proactive.errors import InvalidInput

PAYLOADS = Path(__file__).parents[1] / "payloads" / "teams"
TENANT = "9f3c2a41-5b6e-4d7a-8c1f-2e4b6a8d0c13"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / f"{name}.json").read_text())
    return data


def refused_field(data: Any) -> str | None:
    with pytest.raises(InvalidInput) as caught:
        parse_activity(data)
    return caught.value.field


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (("type",), "type"),
        (("serviceUrl",), "serviceUrl"),
        (("conversation",), "conversation"),
        (("conversation", "id"), "conversation.id"),
        (("from",), "from"),
        (("recipient", "id"), "recipient.id"),
    ],
)
def test_a_missing_required_field_is_named(path: tuple[str, ...], field: str) -> None:
    data = load("personal_message")
    holder = data
    for key in path[:-1]:
        holder = holder[key]
    del holder[path[-1]]
    assert refused_field(data) == field


def test_a_missing_tenant_is_named_with_the_channel_data_path() -> None:
    data = load("personal_message")
    del data["channelData"]
    del data["conversation"]["tenantId"]
    assert refused_field(data) == "channelData.tenant.id"


def test_wrong_types_and_relative_service_urls_are_refused() -> None:
    data = load("personal_message")
    data["conversation"] = "19:abc"
    assert refused_field(data) == "conversation"
    data = load("personal_message")
    data["serviceUrl"] = "smba.trafficmanager.net/amer"
    assert refused_field(data) == "serviceUrl"
    data = load("personal_message")
    data["membersAdded"] = [{"name": "no id"}]
    with pytest.raises(InvalidInput):
        parse_activity(data).members_added  # noqa: B018 - the property validates


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidInput):
        parse_activity(["not", "an", "activity"])


def test_tenant_falls_back_to_the_conversation_tenant() -> None:
    data = load("personal_message")
    del data["channelData"]
    assert parse_activity(data).tenant_id == TENANT


def test_team_install_exposes_team_channel_and_selected_channel() -> None:
    activity = parse_activity(load("team_install"))
    assert activity.conversation_type == ConversationType.CHANNEL
    assert activity.team_id == "19:a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6@thread.tacv2"
    assert activity.channel_id == activity.team_id  # the General channel
    assert activity.selected_channel_id == "19:f0e1d2c3b4a5968778695a4b3c2d1e0f@thread.tacv2"
    assert activity.action == "add"


def test_channel_id_drops_the_thread_suffix_when_channel_data_has_none() -> None:
    data = load("channel_message_mention")
    del data["channelData"]["channel"]
    assert parse_activity(data).channel_id == "19:f0e1d2c3b4a5968778695a4b3c2d1e0f@thread.tacv2"


def test_time_zone_comes_from_local_timezone_then_client_info() -> None:
    data = load("personal_message")
    data["localTimezone"] = "Asia/Tokyo"
    assert parse_activity(data).time_zone == "Asia/Tokyo"
    del data["localTimezone"]
    assert parse_activity(data).time_zone == "Europe/Berlin"
    data["entities"] = []
    assert parse_activity(data).time_zone is None


def test_command_text_strips_the_bot_mention_and_markup() -> None:
    activity = parse_activity(load("channel_message_mention"))
    assert activity.command_text() == "stop"
    assert activity.mentions_bot()
    data = load("personal_message")
    data["text"] = "<p>  <at>Contoso Alerts</at>&nbsp;Quiet  22:00-07:00 </p>"
    assert parse_activity(data).command_text() == "Quiet 22:00-07:00"


def test_the_bot_is_recognised_in_members_added_and_removed() -> None:
    assert parse_activity(load("team_bot_added")).bot_added()
    assert parse_activity(load("team_bot_removed")).bot_removed()
    assert not parse_activity(load("team_member_removed")).bot_removed()


@pytest.mark.parametrize(
    ("account", "guest"),
    [
        ({"id": "29:x", "role": "user"}, False),  # Bot Framework role says nothing about guests
        ({"id": "29:x", "userRole": "user"}, False),
        ({"id": "29:x", "userRole": "guest"}, True),
        ({"id": "29:x", "userRole": "Anonymous"}, True),
        ({"id": "29:x", "tenantId": TENANT.upper()}, False),
        ({"id": "29:x", "tenantId": "00000000-0000-0000-0000-00000000beef"}, True),  # external user
        (None, False),
    ],
)
def test_guests_anonymous_and_external_users_are_flagged(account: dict[str, Any] | None, guest: bool) -> None:
    assert is_guest_account(account, TENANT) is guest
