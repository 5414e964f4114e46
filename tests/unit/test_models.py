"""Models: JSON round trips, and wire compatibility with references stored by botbuilder bots."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from microsoft_agents.activity import ConversationReference as AgentsConversationReference
from pydantic import ValidationError

from proactive.models import (
    ConversationReference,
    DeadLetter,
    DeliveryRecord,
    DeliveryStatus,
    ErrorInfo,
    Notification,
    Preferences,
    QuietHours,
    Recipient,
    RecipientKind,
    SendOutcome,
    SendStatus,
    StoredReference,
)

NOW = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)

# What botbuilder-python's TurnContext.get_conversation_reference(activity).serialize() stores for
# a Teams personal chat (field names and nesting as botbuilder writes them, nulls included).
BOTBUILDER_REFERENCE = {
    "activityId": "1732180000000",
    "user": {"id": "29:1abc", "name": "Ada Lovelace", "aadObjectId": "6be4d4c2-0000-4c5b-9f2a-000000000001",
             "role": None},
    "bot": {"id": "28:11111111-2222-3333-4444-555555555555", "name": "Notifier", "aadObjectId": None, "role": None},
    "conversation": {
        "isGroup": None, "conversationType": "personal", "id": "a:1xyz", "name": None, "aadObjectId": None,
        "role": None, "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47", "properties": {},
    },
    "channelId": "msteams",
    "locale": "en-US",
    "serviceUrl": "https://smba.trafficmanager.net/emea/",
}  # fmt: skip


def _without_nulls(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def test_botbuilder_reference_imports_and_exports_the_same_shape() -> None:
    reference = ConversationReference.from_json(BOTBUILDER_REFERENCE)
    assert (
        reference.user is not None and reference.user.aad_object_id == "6be4d4c2-0000-4c5b-9f2a-000000000001"
    )
    assert reference.conversation.tenant_id == "72f988bf-86f1-41af-91ab-2d7cd011db47"
    assert reference.service_url == "https://smba.trafficmanager.net/emea/"
    assert reference.to_json() == _without_nulls(BOTBUILDER_REFERENCE)


def test_our_reference_json_is_read_by_the_agents_sdk() -> None:
    reference = ConversationReference.from_json(BOTBUILDER_REFERENCE)
    sdk = AgentsConversationReference.model_validate(reference.to_json())
    assert sdk.service_url == reference.service_url
    assert sdk.conversation.id == "a:1xyz"
    assert sdk.user is not None and sdk.user.aad_object_id == "6be4d4c2-0000-4c5b-9f2a-000000000001"


def test_unknown_fields_of_a_reference_are_kept() -> None:
    data = {**BOTBUILDER_REFERENCE, "futureField": {"x": 1}}
    assert ConversationReference.from_json(data).to_json()["futureField"] == {"x": 1}


@pytest.mark.parametrize("bad", ["", "smba.trafficmanager.net/emea", "javascript:alert(1)"])
def test_reference_requires_an_absolute_service_url(bad: str) -> None:
    with pytest.raises(ValidationError, match="serviceUrl"):
        ConversationReference.from_json({**BOTBUILDER_REFERENCE, "serviceUrl": bad})


ROUND_TRIP_SAMPLES = [
    StoredReference(
        tenant_id="t", kind=RecipientKind.CHANNEL, recipient_id="19:c@thread.tacv2", team_id="19:team",
        reference=ConversationReference.from_json(BOTBUILDER_REFERENCE), updated_at=NOW, confirmed_at=NOW,
        is_guest=True, time_zone="Europe/Paris",
    ),
    Recipient(tenant_id="t", kind=RecipientKind.USER, recipient_id="u", data={"name": "Ada", "n": 3, "ok": True}),
    Preferences(tenant_id="t", aad_object_id="u", opted_out_categories=("a", "b"),
                quiet_hours=QuietHours(start="22:00", end="07:00"), updated_at=NOW),
    Notification(id="deploy-42", request={"message": {"text": "hi"}}, created_at=NOW, counts={"sent": 1}),
    DeliveryRecord(notification_id="n", tenant_id="t", recipient_key="user:u", status=DeliveryStatus.FAILED,
                   attempts=3, last_error=ErrorInfo(code="BadArgument", http_status=400), created_at=NOW,
                   updated_at=NOW, not_before=NOW),
    SendOutcome(recipient_key="user:u", status=SendStatus.THROTTLED, attempts=5, http_status=429, retry_after=1.5),
    DeadLetter(id="d", source_queue="deliveries-retry", payload={"x": [1, 2]}, reason="exhausted", created_at=NOW),
]  # fmt: skip


@pytest.mark.parametrize("model", ROUND_TRIP_SAMPLES, ids=lambda m: type(m).__name__)
def test_every_model_round_trips_through_json_text(model: object) -> None:
    cls = type(model)
    text = model.to_json_text()  # type: ignore[attr-defined]
    assert cls.from_json(json.loads(text)) == model  # type: ignore[attr-defined]
    assert cls.from_json(text) == model  # type: ignore[attr-defined]
    assert "_" not in "".join(json.loads(text).keys()), "wire keys are camelCase"


def test_models_are_frozen_and_reject_unknown_fields() -> None:
    record = ROUND_TRIP_SAMPLES[4]
    with pytest.raises(ValidationError):
        record.model_copy().__class__.from_json({**record.to_json(), "surprise": 1})  # type: ignore[attr-defined]
    with pytest.raises(ValidationError):
        record.status = DeliveryStatus.SENT  # type: ignore[attr-defined, misc]


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValidationError):
        Notification(id="n", request={}, created_at=datetime(2026, 1, 1))


@pytest.mark.parametrize("bad_id", ["", "has space", "slash/inside", "x" * 65, "hash#"])
def test_notification_id_follows_the_contract(bad_id: str) -> None:
    with pytest.raises(ValidationError):
        Notification(id=bad_id, request={}, created_at=NOW)


def test_preferences_opt_outs_by_category_are_case_insensitive() -> None:
    prefs = Preferences(
        tenant_id="t", aad_object_id="u", opted_out_categories=("Deployments",), updated_at=NOW
    )
    assert not prefs.allows("deployments") and prefs.allows("incidents") and prefs.allows(None)
    assert not prefs.model_copy(update={"opted_out_all": True}).allows(None)


def test_terminal_delivery_statuses() -> None:
    assert not DeliveryStatus.PENDING.terminal and not DeliveryStatus.SENDING.terminal
    assert DeliveryStatus.SENT.terminal and DeliveryStatus.DEAD_LETTERED.terminal
