"""POST /api/broadcasts request model and validation: every rule, and no input that escapes as a 500."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from proactive.bot.commands import parse_command
from proactive.broadcast.message import (
    ADAPTIVE_CARD_CONTENT_TYPE,
    ActivitySizer,
    MessageContent,
    activity_size,
    build_activity,
    placeholders,
    render,
    serialize_activity,
    utf16_size,
)
from proactive.broadcast.request import (
    BroadcastLimits,
    BroadcastRequest,
    Urgency,
    parse_broadcast_request,
)
from proactive.errors import InvalidInput
from proactive.models import Preferences, RecipientKind

NOW = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OTHER_TENANT = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d"
CHANNEL = "19:a1b2c3d4e5f6@thread.tacv2"
TEAM = "19:0f9e8d7c6b5a@thread.tacv2"


def user_id(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012x}"


def user(i: int = 1, **data: Any) -> dict[str, Any]:
    target: dict[str, Any] = {"tenantId": TENANT, "aadObjectId": user_id(i)}
    if data:
        target["data"] = data
    return target


def card(*body: dict[str, Any], version: str = "1.5") -> dict[str, Any]:
    return {"type": "AdaptiveCard", "version": version, "body": list(body)}


def request(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"audience": {"users": [user()]}, "message": {"text": "Deploy finished"}}
    base.update(fields)
    return base


def encode(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def parse(body: Any, limits: BroadcastLimits | None = None) -> BroadcastRequest:
    return parse_broadcast_request(encode(body), now=NOW, limits=limits)


def rejection(body: Any, limits: BroadcastLimits | None = None) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse(body, limits)
    error = caught.value
    # Whatever went wrong, the body is the contract's and serialises.
    json.dumps(error.to_body())
    assert set(error.to_body()["error"]) == {"code", "message", "details"}
    return error


def problems(error: InvalidInput) -> dict[str, str]:
    """field -> code of every detail."""
    return {d["field"]: d["code"] for d in error.to_body()["error"]["details"]}


# --- the happy path ---------------------------------------------------------------------------------------


def test_minimal_text_broadcast_to_one_user_gets_the_defaults() -> None:
    parsed = parse(request())

    assert parsed.notification_id is None
    assert parsed.urgency is Urgency.NORMAL
    assert parsed.category is None
    assert parsed.send_at is None
    assert parsed.message.text == "Deploy finished"
    assert parsed.audience.users[0].aad_object_id == user_id(1)
    assert parsed.audience.users[0].data == {}


def test_every_field_of_the_contract_parses_into_snake_case_attributes() -> None:
    parsed = parse(
        {
            "notificationId": "deploy-2026-11-21-42",
            "audience": {
                "users": [user(1, name="Ada")],
                "channels": [{"tenantId": TENANT, "teamId": TEAM, "channelId": CHANNEL}],
                "groups": [],
                "tenants": [OTHER_TENANT],
                "includeUninstalled": False,
            },
            "message": {"text": "Deployed", "summary": "Deploy done", "adaptiveCard": card()},
            "category": "deployments",
            "urgency": "urgent",
            "sendAt": "2026-11-22T09:00:00Z",
        }
    )

    assert parsed.notification_id == "deploy-2026-11-21-42"
    assert parsed.audience.channels[0].channel_id == CHANNEL
    assert parsed.audience.channels[0].team_id == TEAM
    assert parsed.audience.tenants == (OTHER_TENANT,)
    assert parsed.message.summary == "Deploy done"
    assert parsed.message.adaptive_card == card()
    assert parsed.category == "deployments"
    assert parsed.urgency is Urgency.URGENT
    assert parsed.send_at == datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def test_parsed_request_round_trips_through_its_camel_case_wire_form() -> None:
    parsed = parse(request(category="ops", sendAt="2026-11-22T09:00:00Z", notificationId="n-1"))

    wire = parsed.to_json()

    assert wire["notificationId"] == "n-1"
    assert wire["sendAt"] == "2026-11-22T09:00:00Z"
    assert BroadcastRequest.from_json(wire) == parsed
    assert parse(json.dumps(wire).encode()) == parsed


def test_parsed_request_is_frozen() -> None:
    parsed = parse(request())

    with pytest.raises(ValidationError):
        parsed.urgency = Urgency.URGENT  # type: ignore[misc]


def test_recipients_lists_users_with_their_data_and_channels_with_their_team() -> None:
    parsed = parse(
        request(
            audience={
                "users": [user(1, name="Ada")],
                "channels": [{"tenantId": TENANT, "teamId": TEAM, "channelId": CHANNEL}],
            }
        )
    )

    users, channels = parsed.recipients()

    assert (users.kind, users.recipient_id, users.data) == (RecipientKind.USER, user_id(1), {"name": "Ada"})
    assert (channels.kind, channels.recipient_id, channels.team_id) == (RecipientKind.CHANNEL, CHANNEL, TEAM)


# --- notificationId, category, urgency -------------------------------------------------------------------


@pytest.mark.parametrize("notification_id", ["a", "deploy-2026-11-21-42", "A_b-9", "x" * 64])
def test_notification_id_of_letters_digits_dash_underscore_is_accepted(notification_id: str) -> None:
    assert parse(request(notificationId=notification_id)).notification_id == notification_id


@pytest.mark.parametrize("notification_id", ["", "x" * 65, "a b", "ä", "a.b"])
def test_notification_id_outside_the_alphabet_or_length_is_rejected(notification_id: str) -> None:
    error = rejection(request(notificationId=notification_id))

    assert problems(error) == {"notificationId": "invalid_notification_id"}
    assert error.status == 400


@pytest.mark.parametrize("character", ["/", "#", "?"])
def test_notification_id_with_url_characters_is_rejected_naming_the_character(character: str) -> None:
    error = rejection(request(notificationId=f"deploy{character}42"))

    assert problems(error) == {"notificationId": "invalid_notification_id"}
    assert f'contains "{character}"' in str(error)


@pytest.mark.parametrize(
    ("fields", "field", "code"),
    [
        ({"notificationId": "deploy-42\n"}, "notificationId", "invalid_notification_id"),
        (
            {"audience": {"users": [{"tenantId": TENANT + "\n", "aadObjectId": user_id(1)}]}},
            "audience.users[0].tenantId",
            "invalid_guid",
        ),
        (
            {"audience": {"users": [{"tenantId": TENANT, "aadObjectId": user_id(1) + "\n"}]}},
            "audience.users[0].aadObjectId",
            "invalid_guid",
        ),
        ({"audience": {"tenants": [TENANT + "\n"]}}, "audience.tenants[0]", "invalid_guid"),
        (
            {"audience": {"channels": [{"tenantId": TENANT, "teamId": TEAM, "channelId": CHANNEL + "\n"}]}},
            "audience.channels[0].channelId",
            "invalid_id",
        ),
        ({"sendAt": "2026-11-22T09:00:00Z\n"}, "sendAt", "invalid_send_at"),
    ],
)
def test_a_trailing_newline_passes_no_format_check(fields: dict[str, Any], field: str, code: str) -> None:
    assert problems(rejection(request(**fields))) == {field: code}


def test_notification_id_must_be_a_string() -> None:
    assert problems(rejection(request(notificationId=42))) == {"notificationId": "invalid_field"}


@pytest.mark.parametrize("category", ["deployments", "ops.alerts-1", "a_b", "c" * 64])
def test_category_of_the_allowed_alphabet_is_accepted(category: str) -> None:
    assert parse(request(category=category)).category == category


@pytest.mark.parametrize("category", ["Deployments", " deployments ", "deployments\n", "DEPLOYMENTS\t"])
def test_category_is_normalised_like_the_bots_unsubscribe_command(category: str) -> None:
    # The API used to keep "deployments\n" as is: a second category that slipped past every opt-out.
    assert parse(request(category=category)).category == "deployments"
    user = parse_command(f"unsubscribe {category}")
    preferences = Preferences(
        tenant_id=TENANT,
        aad_object_id=user_id(1),
        opted_out_categories=(user.category or "",),
        updated_at=datetime(2026, 11, 21, tzinfo=UTC),
    )
    assert not preferences.allows(parse(request(category="deployments\n")).category)


@pytest.mark.parametrize("category", ["", "a b", "c" * 65, "a/b", "café", ".hidden", "-x", "a\nb"])
def test_category_outside_the_alphabet_is_rejected(category: str) -> None:
    assert problems(rejection(request(category=category))) == {"category": "invalid_category"}


@pytest.mark.parametrize("urgency", ["high", "URGENT", "", None, 1])
def test_urgency_other_than_normal_or_urgent_is_rejected(urgency: Any) -> None:
    assert problems(rejection(request(urgency=urgency))) == {"urgency": "invalid_field"}


# --- ids -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("audience", "field"),
    [
        ({"users": [{"tenantId": "contoso", "aadObjectId": user_id(1)}]}, "audience.users[0].tenantId"),
        (
            {"users": [user(1), {"tenantId": TENANT, "aadObjectId": "29:1abc"}]},
            "audience.users[1].aadObjectId",
        ),
        ({"tenants": [TENANT, "{" + OTHER_TENANT + "}"]}, "audience.tenants[1]"),
        (
            {"channels": [{"tenantId": TENANT[:-1], "teamId": TEAM, "channelId": CHANNEL}]},
            "audience.channels[0].tenantId",
        ),
    ],
)
def test_tenant_and_user_ids_must_be_guids(audience: dict[str, Any], field: str) -> None:
    error = rejection(request(audience=audience))

    assert problems(error) == {field: "invalid_guid"}
    assert field in str(error)


def test_guids_are_lower_cased() -> None:
    parsed = parse(
        request(
            audience={"users": [{"tenantId": TENANT.upper(), "aadObjectId": user_id(10).upper()}]},
        )
    )

    assert parsed.audience.users[0].tenant_id == TENANT
    assert parsed.audience.users[0].aad_object_id == user_id(10)


@pytest.mark.parametrize(
    "teams_id", ["19:abc@thread.tacv2", "19:meeting_Zm9v@thread.v2", OTHER_TENANT, "x" * 256]
)
def test_team_and_channel_ids_accept_teams_thread_ids(teams_id: str) -> None:
    parsed = parse(
        request(audience={"channels": [{"tenantId": TENANT, "teamId": teams_id, "channelId": teams_id}]})
    )

    assert parsed.audience.channels[0].channel_id == teams_id


@pytest.mark.parametrize("teams_id", ["", "19:a b@thread.tacv2", "19:a\n@thread.tacv2", "x" * 257])
def test_team_and_channel_ids_must_be_sane(teams_id: str) -> None:
    error = rejection(
        request(audience={"channels": [{"tenantId": TENANT, "teamId": TEAM, "channelId": teams_id}]})
    )

    assert problems(error) == {"audience.channels[0].channelId": "invalid_id"}


# --- sendAt ----------------------------------------------------------------------------------------------


def test_send_at_with_an_offset_is_stored_in_utc() -> None:
    parsed = parse(request(sendAt="2026-11-22T10:00:00+01:00"))

    assert parsed.send_at == datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    assert parsed.send_at is not None and parsed.send_at.utcoffset() == timedelta(0)


def test_send_at_with_nanoseconds_is_accepted() -> None:
    assert parse(request(sendAt="2026-11-22T09:00:00.123456789Z")).send_at == datetime(
        2026, 11, 22, 9, 0, 0, 123456, tzinfo=UTC
    )


def test_send_at_without_an_offset_is_rejected_as_ambiguous() -> None:
    error = rejection(request(sendAt="2026-11-22T09:00:00"))

    assert problems(error) == {"sendAt": "invalid_send_at"}
    assert "offset" in str(error)


@pytest.mark.parametrize("send_at", ["2026-11-22", "tomorrow", "2026-02-30T09:00:00Z", 1795000000, ""])
def test_send_at_that_is_not_an_iso_date_time_is_rejected(send_at: Any) -> None:
    assert problems(rejection(request(sendAt=send_at))) == {"sendAt": "invalid_send_at"}


@pytest.mark.parametrize("send_at", ["2026-11-21T09:30:00Z", "2026-11-21T09:29:59Z", "2020-01-01T00:00:00Z"])
def test_send_at_now_or_in_the_past_means_send_now(send_at: str) -> None:
    assert parse(request(sendAt=send_at)).send_at is None


def test_send_at_may_be_exactly_the_schedule_horizon_ahead_but_not_a_second_more() -> None:
    horizon = NOW + timedelta(days=30)

    assert parse(request(sendAt=horizon.isoformat())).send_at == horizon
    error = rejection(request(sendAt=(horizon + timedelta(seconds=1)).isoformat()))
    assert problems(error) == {"sendAt": "send_at_too_far"}


def test_schedule_horizon_is_a_limit_setting() -> None:
    limits = BroadcastLimits(max_schedule_ahead=timedelta(hours=1))

    assert problems(rejection(request(sendAt="2026-11-21T11:00:00Z"), limits)) == {
        "sendAt": "send_at_too_far"
    }


def test_send_at_is_judged_against_the_injected_now_in_any_zone() -> None:
    plus_two = timezone(timedelta(hours=2))
    later = parse_broadcast_request(
        encode(request(sendAt="2026-11-21T09:45:00Z")), now=datetime(2026, 11, 21, 11, 40, tzinfo=plus_two)
    )

    assert later.send_at == datetime(2026, 11, 21, 9, 45, tzinfo=UTC)


# --- audience --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("audience", [{}, {"users": [], "channels": [], "tenants": [], "groups": []}])
def test_empty_audience_is_rejected(audience: dict[str, Any]) -> None:
    error = rejection(request(audience=audience))

    assert error.code == "empty_audience"
    assert problems(error) == {"audience": "empty_audience"}


def test_groups_are_accepted_deduplicated_and_lower_cased() -> None:
    group = OTHER_TENANT.upper()
    parsed = parse(
        request(
            audience={
                "groups": [
                    {"tenantId": TENANT, "groupId": group},
                    {"tenantId": TENANT, "groupId": OTHER_TENANT},
                ],
                "includeGuests": True,
            }
        )
    )

    assert [(g.tenant_id, g.group_id) for g in parsed.audience.groups] == [(TENANT, OTHER_TENANT)]
    assert parsed.audience.include_guests is True


def test_a_group_id_that_is_not_a_guid_names_the_field() -> None:
    error = rejection(request(audience={"groups": [{"tenantId": TENANT, "groupId": "ops team"}]}))

    assert error.status == 400
    assert set(problems(error)) == {"audience.groups[0].groupId"}


def test_placeholders_are_refused_for_groups() -> None:
    body = request(audience={"groups": [{"tenantId": TENANT, "groupId": OTHER_TENANT}]})
    body["message"] = {"text": "Hello {{name}}"}

    error = rejection(body)

    assert problems(error) == {"message": "placeholders_need_user_data"}


def test_an_empty_groups_list_is_fine() -> None:
    assert parse(request(audience={"users": [user()], "groups": []})).audience.groups == ()


def test_include_uninstalled_without_tenants_is_rejected() -> None:
    error = rejection(request(audience={"users": [user()], "includeUninstalled": True}))

    assert problems(error) == {"audience.includeUninstalled": "invalid_field"}
    assert "tenants" in str(error)


def test_include_uninstalled_with_tenants_is_accepted() -> None:
    parsed = parse(request(audience={"tenants": [TENANT], "includeUninstalled": True}))

    assert parsed.audience.include_uninstalled is True and parsed.audience.include_guests is False


def test_exact_duplicates_are_removed_keeping_the_first_occurrence_and_order() -> None:
    parsed = parse(
        request(
            audience={
                "users": [user(2), user(1), {"tenantId": TENANT.upper(), "aadObjectId": user_id(2).upper()}],
                "channels": [{"tenantId": TENANT, "teamId": TEAM, "channelId": CHANNEL}] * 3,
                "tenants": [OTHER_TENANT, TENANT, OTHER_TENANT.upper()],
            }
        )
    )

    assert [u.aad_object_id for u in parsed.audience.users] == [user_id(2), user_id(1)]
    assert len(parsed.audience.channels) == 1
    assert parsed.audience.tenants == (OTHER_TENANT, TENANT)


def test_the_same_user_in_two_tenants_is_two_recipients() -> None:
    other = {"tenantId": OTHER_TENANT, "aadObjectId": user_id(1)}

    assert len(parse(request(audience={"users": [user(1), other]})).audience.users) == 2


def test_duplicates_with_the_same_data_in_another_key_order_are_removed() -> None:
    first = user(1, name="Ada", team="Core")
    second = {**user(1), "data": {"team": "Core", "name": "Ada"}}

    assert len(parse(request(audience={"users": [first, second]})).audience.users) == 1


def test_the_same_user_twice_with_different_data_is_a_conflict() -> None:
    error = rejection(request(audience={"users": [user(1, name="Ada"), user(2), user(1, name="Grace")]}))

    assert problems(error) == {"audience.users[2]": "conflicting_duplicate"}
    assert "audience.users[0]" in str(error)


def test_the_same_channel_under_two_teams_is_a_conflict() -> None:
    channels = [
        {"tenantId": TENANT, "teamId": TEAM, "channelId": CHANNEL},
        {"tenantId": TENANT, "teamId": "19:other@thread.tacv2", "channelId": CHANNEL},
    ]

    assert problems(rejection(request(audience={"channels": channels}))) == {
        "audience.channels[1]": "conflicting_duplicate"
    }


def test_ten_thousand_ids_are_accepted() -> None:
    parsed = parse(request(audience={"users": [user(i) for i in range(10_000)]}))

    assert len(parsed.audience.users) == 10_000


def test_ten_thousand_and_one_ids_are_a_413_naming_the_count_and_the_limit() -> None:
    error = rejection(request(audience={"users": [user(i) for i in range(10_001)]}))

    assert (error.status, error.code) == (413, "too_many_recipients")
    [detail] = error.to_body()["error"]["details"]
    assert (detail["field"], detail["count"], detail["limit"]) == ("audience", 10_001, 10_000)
    assert "10,001" in str(error)


def test_the_id_cap_counts_every_audience_list_together() -> None:
    audience = {
        "users": [user(1), user(2)],
        "channels": [{"tenantId": TENANT, "teamId": TEAM, "channelId": CHANNEL}],
        "tenants": [TENANT],
    }
    limits = BroadcastLimits(max_recipients_per_request=3)

    assert rejection(request(audience=audience), limits).code == "too_many_recipients"
    assert len(parse(request(audience={**audience, "tenants": []}), limits).audience.users) == 2


# --- message ---------------------------------------------------------------------------------------------


def test_a_card_alone_is_a_message() -> None:
    assert parse(request(message={"adaptiveCard": card()})).message.text is None


@pytest.mark.parametrize("message", [{}, {"text": ""}, {"text": "   ", "summary": "s"}, {"text": None}])
def test_a_message_needs_text_or_a_card(message: dict[str, Any]) -> None:
    assert problems(rejection(request(message=message))) == {"message": "message_empty"}


def test_blank_text_next_to_a_card_counts_as_absent() -> None:
    parsed = parse(request(message={"text": "", "summary": " ", "adaptiveCard": card()}))

    assert (parsed.message.text, parsed.message.summary) == (None, None)


@pytest.mark.parametrize("version", ["1.0", "1.2", "1.5"])
def test_cards_up_to_version_1_5_are_accepted(version: str) -> None:
    assert parse(request(message={"adaptiveCard": card(version=version)})).message.adaptive_card is not None


def test_a_card_version_with_a_trailing_newline_is_malformed() -> None:
    error = rejection(request(message={"adaptiveCard": card(version="1.5\n")}))
    assert problems(error) == {"message.adaptiveCard.version": "invalid_card"}


@pytest.mark.parametrize("version", ["1.6", "1.10", "2.0"])
def test_cards_newer_than_1_5_are_rejected_as_unsupported(version: str) -> None:
    error = rejection(request(message={"adaptiveCard": card(version=version)}))

    assert (error.code, error.status) == ("unsupported_card_version", 400)
    assert problems(error) == {"message.adaptiveCard.version": "unsupported_card_version"}


@pytest.mark.parametrize(
    ("bad_card", "field"),
    [
        ({"type": "MessageCard", "version": "1.5"}, "message.adaptiveCard.type"),
        ({"type": "AdaptiveCard"}, "message.adaptiveCard.version"),
        ({"type": "AdaptiveCard", "version": 1.5}, "message.adaptiveCard.version"),
        ({"type": "AdaptiveCard", "version": "1.5.1"}, "message.adaptiveCard.version"),
        ({"type": "AdaptiveCard", "version": "1.5", "body": {}}, "message.adaptiveCard.body"),
        ({"type": "AdaptiveCard", "version": "1.5", "actions": "none"}, "message.adaptiveCard.actions"),
    ],
)
def test_malformed_cards_are_rejected_at_the_offending_field(bad_card: dict[str, Any], field: str) -> None:
    assert problems(rejection(request(message={"adaptiveCard": bad_card}))) == {field: "invalid_card"}


@pytest.mark.parametrize("not_a_card", [[], "card", 1, True])
def test_a_card_must_be_a_json_object(not_a_card: Any) -> None:
    assert problems(rejection(request(message={"adaptiveCard": not_a_card}))) == {
        "message.adaptiveCard": "invalid_field"
    }


def test_every_card_problem_is_listed_with_its_path() -> None:
    bad = {
        "type": "AdaptiveCard",
        "version": "1.6",
        "$data": {"x": 1},
        "body": [
            {"type": "TextBlock", "text": "${if(urgent, 'Now', 'Later')}"},
            {"type": "TextBlock", "$when": "x"},
        ],
    }

    assert problems(rejection(request(message={"adaptiveCard": bad}))) == {
        "message.adaptiveCard.version": "unsupported_card_version",
        "message.adaptiveCard.$data": "unsupported_template_expression",
        "message.adaptiveCard.body[0].text": "unsupported_template_expression",
        "message.adaptiveCard.body[1].$when": "unsupported_template_expression",
    }


@pytest.mark.parametrize(
    "expression", ["${user.name}", "${$root.name}", "${formatDateTime(now)}", "${a[0]}", "${}"]
)
def test_card_template_expressions_beyond_simple_names_are_rejected(expression: str) -> None:
    body = card({"type": "TextBlock", "text": f"Hello {expression}"})

    error = rejection(request(message={"adaptiveCard": body}))

    assert problems(error) == {"message.adaptiveCard.body[0].text": "unsupported_template_expression"}


def test_text_placeholder_syntax_inside_a_card_is_rejected_with_a_hint() -> None:
    error = rejection(request(message={"adaptiveCard": card({"type": "TextBlock", "text": "Hi {{name}}"})}))

    assert problems(error) == {"message.adaptiveCard.body[0].text": "invalid_placeholder"}
    assert "${name}" in str(error)


@pytest.mark.parametrize("text", ["Hi {{first name}}", "Hi {{user.name}}", "{{}}", "{{ 1 + 1 }}"])
def test_malformed_text_placeholders_are_rejected(text: str) -> None:
    assert problems(rejection(request(message={"text": text}))) == {"message.text": "invalid_placeholder"}


@pytest.mark.parametrize(
    "text", ["set {x} to {y}", "costs $5 or ${price", "open {{ but never closed", "a } b"]
)
def test_braces_that_are_not_placeholders_stay_literal(text: str) -> None:
    parsed = parse(request(message={"text": text}))

    assert render(parsed.message, {})["text"] == text


# --- personalisation -------------------------------------------------------------------------------------


def test_user_data_must_be_flat() -> None:
    error = rejection(request(audience={"users": [user(1, name="Ada", team={"name": "Core"}, tags=["a"])]}))

    assert problems(error) == {
        "audience.users[0].data.team": "nested_data",
        "audience.users[0].data.tags": "nested_data",
    }


def test_user_data_null_means_no_data() -> None:
    assert parse(request(audience={"users": [{**user(1), "data": None}]})).audience.users[0].data == {}


def test_user_data_must_be_an_object() -> None:
    assert problems(rejection(request(audience={"users": [{**user(1), "data": ["Ada"]}]}))) == {
        "audience.users[0].data": "invalid_field"
    }


def test_user_data_keys_are_bounded() -> None:
    assert problems(rejection(request(audience={"users": [user(1, **{"k" * 65: 1})]}))) == {
        "audience.users[0].data": "invalid_data_key"
    }


def test_oversized_user_data_is_a_413() -> None:
    error = rejection(
        request(audience={"users": [user(1, note="x" * 2000)]}), BroadcastLimits(max_user_data_bytes=1000)
    )

    assert (error.status, error.code) == (413, "user_data_too_large")


def test_a_missing_placeholder_value_names_the_user_index_and_field() -> None:
    users = [user(i, name=f"User {i}") for i in range(20)]
    users[12] = user(12, nickname="twelve")

    error = rejection(request(audience={"users": users}, message={"text": "Hi {{name}}"}))

    assert problems(error) == {"audience.users[12].data.name": "missing_placeholder_value"}
    assert error.status == 400


def test_placeholder_error_paths_count_the_callers_list_including_duplicates() -> None:
    users = [user(1, name="Ada"), user(1, name="Ada"), user(2)]

    assert problems(rejection(request(audience={"users": users}, message={"text": "Hi {{name}}"}))) == {
        "audience.users[2].data.name": "missing_placeholder_value"
    }


def test_every_placeholder_of_text_summary_and_card_must_be_filled() -> None:
    message = {
        "text": "Hi {{name}}",
        "summary": "{{team}} deploy",
        "adaptiveCard": card({"type": "TextBlock", "text": "Service ${service}"}),
    }

    error = rejection(request(audience={"users": [user(1, name="Ada")]}, message=message))

    assert problems(error) == {
        "audience.users[0].data.service": "missing_placeholder_value",
        "audience.users[0].data.team": "missing_placeholder_value",
    }


@pytest.mark.parametrize(
    "audience",
    [
        {"channels": [{"tenantId": TENANT, "teamId": TEAM, "channelId": CHANNEL}]},
        {"tenants": [TENANT]},
        {"users": [user(1, name="Ada")], "tenants": [TENANT]},
    ],
)
def test_placeholders_are_refused_for_channels_and_tenants(audience: dict[str, Any]) -> None:
    error = rejection(request(audience=audience, message={"text": "Hi {{name}}"}))

    assert problems(error) == {"message": "placeholders_need_user_data"}


def test_channels_and_tenants_take_messages_without_placeholders() -> None:
    audience = {"channels": [{"tenantId": TENANT, "teamId": TEAM, "channelId": CHANNEL}], "tenants": [TENANT]}

    assert parse(request(audience=audience)).audience.tenants == (TENANT,)


def test_render_fills_text_and_summary_placeholders_verbatim_without_escaping_markdown() -> None:
    message = MessageContent(
        text="Hi {{ name }}, {{count}} builds, ok={{ok}}, none=[{{gone}}]", summary="{{name}}"
    )

    activity = render(message, {"name": "*Ada* <b>", "count": 3, "ok": True, "gone": None})

    assert activity == {
        "type": "message",
        "text": "Hi *Ada* <b>, 3 builds, ok=true, none=[]",
        "summary": "*Ada* <b>",
    }


def test_render_does_not_expand_placeholders_inside_values() -> None:
    activity = render(MessageContent(text="{{a}} {{b}}"), {"a": "{{b}}", "b": "${a}"})

    assert activity["text"] == "{{b}} ${a}"


def test_card_substitution_keeps_quotes_backslashes_and_newlines_intact() -> None:
    hostile = 'He said "hi"\\n\n\t}, {"type": "Injected"} \\u0000 ${other} \u2028 😀'
    message = MessageContent(
        adaptive_card=card(
            {"type": "TextBlock", "text": "Hello ${name}!", "wrap": True},
            {"type": "FactSet", "facts": [{"title": "Who", "value": "${ name }"}]},
        )
    )

    activity = render(message, {"name": hostile})
    sent = json.loads(serialize_activity(activity))

    content = sent["attachments"][0]["content"]
    assert content["body"][0]["text"] == f"Hello {hostile}!"
    assert content["body"][1]["facts"][0]["value"] == hostile
    assert len(content["body"]) == 2
    assert message.adaptive_card is not None and message.adaptive_card["body"][0]["text"] == "Hello ${name}!"


def test_card_placeholder_values_stay_strings_whatever_their_json_type() -> None:
    message = MessageContent(adaptive_card={**card(), "fallbackText": "${n}", "speak": "${flag}"})

    content = render(message, {"n": 1.5, "flag": False})["attachments"][0]["content"]

    assert (content["fallbackText"], content["speak"]) == ("1.5", "false")


def test_render_with_a_missing_value_raises_invalid_input() -> None:
    with pytest.raises(InvalidInput) as caught:
        render(MessageContent(text="Hi {{name}}"), {})

    assert caught.value.code == "missing_placeholder_value"


def test_placeholders_lists_every_name_once() -> None:
    message = MessageContent(
        text="{{a}} {{b}} {{a}}",
        summary="{{c}}",
        adaptive_card=card({"type": "TextBlock", "text": "${d}${a}"}),
    )

    assert placeholders(message) == {"a", "b", "c", "d"}


# --- the outgoing activity and its size ------------------------------------------------------------------


def test_build_activity_has_the_bot_framework_shape() -> None:
    message = MessageContent(text="t", summary="s", adaptive_card=card())

    assert build_activity(message) == {
        "type": "message",
        "text": "t",
        "summary": "s",
        "attachments": [{"contentType": ADAPTIVE_CARD_CONTENT_TYPE, "content": card()}],
    }


def test_activity_size_counts_utf16_of_the_compact_json() -> None:
    activity = build_activity(MessageContent(text="é😀"))

    assert activity_size(activity) == 2 * len('{"type":"message","text":"é"}') + 4
    assert utf16_size("😀") == 4


def padded_card(total: int) -> dict[str, Any]:
    """A card whose activity is exactly ``total`` UTF-16 bytes (``total`` even)."""
    template = card({"type": "TextBlock", "text": ""})
    base = activity_size(build_activity(MessageContent(adaptive_card=template)))
    template["body"][0]["text"] = "x" * ((total - base) // 2)
    return template


def test_a_card_exactly_at_the_size_limit_is_accepted() -> None:
    at_limit = padded_card(81_920)
    assert activity_size(build_activity(MessageContent(adaptive_card=at_limit))) == 81_920

    assert parse(request(message={"adaptiveCard": at_limit})).message.adaptive_card == at_limit


def test_a_card_one_character_over_the_size_limit_is_a_413_with_the_measured_size() -> None:
    error = rejection(request(message={"adaptiveCard": padded_card(81_922)}))

    assert (error.status, error.code) == (413, "message_too_large")
    [detail] = error.to_body()["error"]["details"]
    assert (detail["field"], detail["size"], detail["limit"]) == ("message", 81_922, 81_920)


def test_the_size_limit_is_a_setting() -> None:
    limits = BroadcastLimits(max_message_bytes=1000)

    assert rejection(request(message={"text": "x" * 600}), limits).code == "message_too_large"
    assert parse(request(message={"text": "x" * 400}), limits).message.text == "x" * 400


def test_the_size_limit_holds_for_each_users_rendered_message() -> None:
    limits = BroadcastLimits(max_message_bytes=2000)
    users = [user(1, name="Ada"), user(2, name="x" * 1000), user(3, name="Grace")]

    error = rejection(request(audience={"users": users}, message={"text": "Hi {{name}}"}), limits)

    assert (error.status, error.code) == (413, "message_too_large")
    [detail] = error.to_body()["error"]["details"]
    assert detail["field"] == "audience.users[1].data"
    assert detail["size"] == activity_size(render(MessageContent(text="Hi {{name}}"), {"name": "x" * 1000}))


def test_a_template_too_large_on_its_own_is_reported_once_for_the_message() -> None:
    limits = BroadcastLimits(max_message_bytes=1000)
    users = [user(i, name="A") for i in range(50)]

    error = rejection(request(audience={"users": users}, message={"text": "{{name}}" + "x" * 600}), limits)

    assert problems(error) == {"message": "message_too_large"}


json_text = st.text(max_size=30)
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | json_text
)


@settings(max_examples=150, deadline=None)
@given(data=st.dictionaries(st.sampled_from(["a", "b", "c"]), scalars))
def test_the_sizer_predicts_the_rendered_size_exactly(data: dict[str, Any]) -> None:
    message = MessageContent(
        text='{{a}} and {{ a }}\n"{{b}}"',
        summary="{{c}}",
        adaptive_card=card(
            {"type": "TextBlock", "text": 'a\\"${a}${b}\u2028'}, {"x": ["${c}", {"y": "${a}"}]}
        ),
    )
    filled = {name: data.get(name) for name in ("a", "b", "c")}

    assert ActivitySizer(message).size(filled) == activity_size(render(message, filled))


# --- bad bodies of every kind ----------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{", b"not json", b"{'audience': 1}", b'{"a":1,}', b"\x00"])
def test_a_body_that_is_not_json_is_rejected(body: bytes) -> None:
    error = rejection(body)

    assert (error.status, error.code) == (400, "invalid_json")


@pytest.mark.parametrize("body", [b"", b"   \n"])
def test_an_empty_body_is_rejected(body: bytes) -> None:
    assert "empty" in str(rejection(body))


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object_is_rejected(body: bytes) -> None:
    assert rejection(body).code == "not_an_object"


def test_invalid_utf8_is_rejected_with_the_byte_offset() -> None:
    error = rejection(b'{"message": {"text": "caf\xe9"}}')

    assert error.code == "invalid_utf8"
    assert "byte 25" in str(error)


def test_a_leading_byte_order_mark_is_ignored() -> None:
    assert parse(b"\xef\xbb\xbf" + encode(request())).message.text == "Deploy finished"


def test_a_body_over_the_raw_cap_is_a_413_before_parsing() -> None:
    body = b" " * (2 * 1024 * 1024 + 1)

    error = rejection(body)

    assert (error.status, error.code) == (413, "body_too_large")
    assert error.to_body()["error"]["details"][0]["size"] == 2 * 1024 * 1024 + 1


@pytest.mark.parametrize("depth", [65, 100_000])
def test_deeply_nested_json_is_rejected(depth: int) -> None:
    body = '{"message": {"text": "x"}, "audience": {"users": ' + "[" * depth + "]" * depth + "}}"

    assert rejection(body.encode()).code == "too_deeply_nested"


def test_duplicate_keys_are_rejected_rather_than_silently_resolved() -> None:
    body = b'{"audience": {"users": []}, "audience": {"tenants": []}, "message": {"text": "x"}}'

    error = rejection(body)

    assert error.code == "duplicate_key"
    assert '"audience"' in str(error)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1" * 5000])
def test_non_standard_and_absurd_numbers_are_rejected(literal: bytes) -> None:
    assert rejection(b'{"urgency": ' + literal + b"}").code == "invalid_json"


def test_a_lone_surrogate_escape_is_rejected() -> None:
    body = encode(request(message={"text": "x"})).replace(b'"x"', b'"\\ud800"')

    assert rejection(body).code == "invalid_json"


def test_unknown_fields_are_rejected_at_their_path() -> None:
    error = rejection(request(priority="high", audience={"users": [{**user(1), "name": "Ada"}]}))

    assert problems(error) == {"priority": "unknown_field", "audience.users[0].name": "unknown_field"}


def test_snake_case_field_names_are_unknown_with_a_camel_case_hint() -> None:
    error = rejection(
        {"audience": {"users": [user()]}, "message": {"text": "x"}, "send_at": "2026-11-22T09:00:00Z"}
    )

    assert problems(error) == {"send_at": "unknown_field"}
    assert '"sendAt"' in str(error)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"audience": None, "message": {"text": "x"}}, "audience"),
        (request(message=None), "message"),
        (request(audience={"users": None}), "audience.users"),
        (request(audience={"tenants": [TENANT], "includeUninstalled": None}), "audience.includeUninstalled"),
        (
            request(audience={"users": [{"tenantId": None, "aadObjectId": user_id(1)}]}),
            "audience.users[0].tenantId",
        ),
    ],
)
def test_null_where_a_value_is_required_is_rejected(body: dict[str, Any], field: str) -> None:
    error = rejection(body)

    assert problems(error) == {field: "invalid_field"}
    assert "null" in str(error)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (request(audience=[user()]), "audience"),
        (request(audience={"users": user()}), "audience.users"),
        (request(message={"text": 42}), "message.text"),
        (
            request(audience={"tenants": [TENANT], "includeUninstalled": "false"}),
            "audience.includeUninstalled",
        ),
        (
            request(audience={"users": [{"tenantId": TENANT, "aadObjectId": 7}]}),
            "audience.users[0].aadObjectId",
        ),
    ],
)
def test_wrong_json_types_are_rejected_without_coercion(body: dict[str, Any], field: str) -> None:
    assert problems(rejection(body)) == {field: "invalid_field"}


@pytest.mark.parametrize("missing", ["audience", "message"])
def test_required_fields_are_named_when_missing(missing: str) -> None:
    body = request()
    del body[missing]

    assert problems(rejection(body)) == {missing: "missing_field"}


def test_every_problem_is_listed_at_once_with_a_generic_code() -> None:
    body = request(
        notificationId="a/b",
        urgency="high",
        audience={"users": [{"tenantId": "t", "aadObjectId": user_id(1)}]},
        message={"text": 1},
    )

    error = rejection(body)

    assert error.code == "invalid_request"
    assert problems(error) == {
        "notificationId": "invalid_notification_id",
        "urgency": "invalid_field",
        "audience.users[0].tenantId": "invalid_guid",
        "message.text": "invalid_field",
    }
    assert "4 problems" in str(error)


def test_size_and_shape_problems_together_answer_400() -> None:
    limits = BroadcastLimits(max_message_bytes=100, max_user_data_bytes=10)

    error = rejection(
        request(audience={"users": [user(1, note="x" * 50)], "groups": []}, category="a b"), limits
    )

    assert error.status == 400


def test_error_messages_never_echo_huge_inputs() -> None:
    huge = "x" * 100_000

    error = rejection(request(notificationId=huge, category=huge, audience={"tenants": [huge]}, sendAt=huge))

    assert len(json.dumps(error.to_body())) < 2_000


def test_the_details_list_is_capped() -> None:
    users = [user(i) for i in range(5_000)]

    error = rejection(request(audience={"users": users}, message={"text": "Hi {{name}}"}))

    details = error.to_body()["error"]["details"]
    assert len(details) == 101
    assert details[-1] == {"field": "", "code": "more_problems", "message": "4,900 more problems not listed"}


def test_single_problem_errors_name_their_field() -> None:
    error = rejection(request(category="a b"))

    assert error.field == "category"
    assert str(error).startswith("category: ")


def test_a_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_broadcast_request(encode(request()), now=datetime(2026, 11, 21))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=25,
)
field_names = st.sampled_from(
    ["audience", "message", "users", "channels", "tenants", "groups", "text", "adaptiveCard", "data", "x"]
)


def nearly_valid() -> st.SearchStrategy[dict[str, Any]]:
    """A valid body with one part replaced by arbitrary JSON, so the deep validators get exercised."""
    valid = request(
        audience={"users": [user(1, name="Ada")], "tenants": [TENANT]},
        message={"text": "Hi", "adaptiveCard": card({"type": "TextBlock", "text": "${name}"})},
    )
    paths = [
        ("audience",),
        ("message",),
        ("audience", "users"),
        ("audience", "tenants"),
        ("message", "adaptiveCard"),
        ("message", "adaptiveCard", "body"),
        ("message", "text"),
        ("urgency",),
        ("sendAt",),
    ]

    def replace(path: tuple[str, ...], value: Any) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(json.dumps(valid))
        node = body
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return body

    return st.builds(replace, st.sampled_from(paths), json_values | st.dictionaries(field_names, json_values))


def client_error_status(body: bytes) -> int | None:
    """``None`` when the body parses, else the status of the ``InvalidInput`` (any other error escapes)."""
    try:
        parse_broadcast_request(body, now=NOW)
    except InvalidInput as error:
        json.dumps(error.to_body())
        return error.status
    return None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values)
def test_arbitrary_json_never_raises_anything_but_invalid_input(value: Any) -> None:
    assert client_error_status(json.dumps(value).encode()) in {None, 400, 413}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=nearly_valid())
def test_arbitrary_json_inside_a_valid_body_never_raises_anything_but_invalid_input(value: Any) -> None:
    assert client_error_status(json.dumps(value).encode()) in {None, 400, 413}


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_invalid_input(body: bytes) -> None:
    assert client_error_status(body) in {None, 400, 413}


# --- a realistic deploy notice ---------------------------------------------------------------------------

DEPLOY_CARD = {
    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
    "type": "AdaptiveCard",
    "version": "1.5",
    "msteams": {"width": "Full"},
    "body": [
        {
            "type": "ColumnSet",
            "columns": [
                {
                    "type": "Column",
                    "width": "auto",
                    "items": [{"type": "Image", "url": "https://example.com/rocket.png", "size": "Small"}],
                },
                {
                    "type": "Column",
                    "width": "stretch",
                    "items": [
                        {
                            "type": "TextBlock",
                            "text": "Deploy ${service} ${version}",
                            "weight": "Bolder",
                            "wrap": True,
                        },
                        {"type": "TextBlock", "text": "Hi ${name}, your change is live.", "isSubtle": True},
                    ],
                },
            ],
        },
        {
            "type": "FactSet",
            "facts": [
                {"title": "Environment", "value": "production"},
                {"title": "Owner", "value": "${name}"},
                {"title": "Rollback", "value": "`kubectl rollout undo deploy/${service}`"},
            ],
        },
    ],
    "actions": [
        {
            "type": "Action.OpenUrl",
            "title": "Release notes",
            "url": "https://example.com/releases/${version}",
        },
        {"type": "Action.Submit", "title": "Acknowledge", "data": {"ack": True, "id": "deploy-42"}},
    ],
}


def test_a_realistic_deploy_notice_parses_and_renders_per_user() -> None:
    body = {
        "notificationId": "deploy-2026-11-21-42",
        "audience": {
            "users": [
                user(1, name="Ada", service="billing", version="2.4.1"),
                user(2, name='Grace "Amazing" Hopper', service="billing\\api", version="2.4.1\nhotfix"),
            ]
        },
        "message": {
            "text": "{{name}}: deploy done",
            "summary": "Deploy {{version}}",
            "adaptiveCard": DEPLOY_CARD,
        },
        "category": "deployments",
        "urgency": "normal",
        "sendAt": "2026-11-21T18:00:00+01:00",
    }

    parsed = parse(body)
    second = parsed.audience.users[1]
    activity = json.loads(serialize_activity(render(parsed.message, second.data)))

    content = activity["attachments"][0]["content"]
    assert activity["text"] == 'Grace "Amazing" Hopper: deploy done'
    assert activity["summary"] == "Deploy 2.4.1\nhotfix"
    assert content["body"][0]["columns"][1]["items"][0]["text"] == "Deploy billing\\api 2.4.1\nhotfix"
    assert content["body"][1]["facts"][2]["value"] == "`kubectl rollout undo deploy/billing\\api`"
    assert content["actions"][1]["data"] == {"ack": True, "id": "deploy-42"}
    assert content["$schema"] == DEPLOY_CARD["$schema"]
    assert parsed.send_at == datetime(2026, 11, 21, 17, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (request(audience={"users": [user(1, n=0)]}), "audience.users[0].data.n"),
        (request(message={"adaptiveCard": {**card(), "minHeight": 0}}), "message.adaptiveCard.minHeight"),
    ],
)
def test_numbers_too_large_to_be_finite_are_rejected(body: dict[str, Any], field: str) -> None:
    # json.dumps cannot write 1e400, so splice it into the text where the 0 was.
    text = json.dumps(body).replace(": 0", ": 1e400")

    assert field in problems(rejection(text.encode()))
