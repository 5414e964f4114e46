"""Which references each Teams event stores or retires, applied to the in-memory table fake."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from proactive.adapters.memory_tables import MemoryEntityTable
from proactive.bot.activity import parse_activity
from proactive.bot.capture import (
    CONFIRM_INTERVAL,
    Deactivate,
    DeactivateTeam,
    ReferenceCapture,
    Upsert,
    plan_capture,
)
from proactive.errors import InvalidInput
from proactive.storage.ports import Entity
from proactive.storage.stores import TableReferenceStore

PAYLOADS = Path(__file__).parents[1] / "payloads" / "teams"
TENANT = "9f3c2a41-5b6e-4d7a-8c1f-2e4b6a8d0c13"
USER = "0d2b5f7e-8a9c-4b1d-a3e5-f7091b2c3d4e"
TEAM = "19:a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6@thread.tacv2"
CHANNEL = "19:f0e1d2c3b4a5968778695a4b3c2d1e0f@thread.tacv2"
NEW_CHANNEL = "19:0a9b8c7d6e5f40312233445566778899@thread.tacv2"
CHAT = "19:meeting_Zjk4NDQ5YzQtY2U2Ni00YmZmLWJiMzktNDQ4ZTI4YjM1ZjQy@thread.v2"
START = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / f"{name}.json").read_text())
    return data


def plan(name: str) -> list[tuple[str, str]]:
    steps = plan_capture(parse_activity(load(name)))
    described = []
    for step in steps:
        if isinstance(step, Upsert):
            described.append(("upsert", step.key))
        elif isinstance(step, Deactivate):
            described.append(("deactivate", step.key))
        else:
            assert isinstance(step, DeactivateTeam)
            described.append(("deactivate_team", step.team_id))
    return described


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("personal_install", [("upsert", f"user:{USER}")]),
        ("personal_upgrade", [("upsert", f"user:{USER}")]),
        ("personal_bot_added", [("upsert", f"user:{USER}")]),
        ("personal_message", [("upsert", f"user:{USER}")]),
        ("personal_uninstall", [("deactivate", f"user:{USER}")]),
        ("team_install", [("upsert", f"channel:{TEAM}"), ("upsert", f"channel:{CHANNEL}")]),
        ("team_bot_added", [("upsert", f"channel:{TEAM}")]),
        ("team_renamed", [("upsert", f"channel:{TEAM}")]),
        ("team_restored", [("upsert", f"channel:{TEAM}")]),
        ("channel_created", [("upsert", f"channel:{NEW_CHANNEL}")]),
        ("channel_deleted", [("deactivate", f"channel:{NEW_CHANNEL}")]),
        ("channel_message_mention", [("upsert", f"channel:{CHANNEL}")]),
        ("team_member_removed", []),
        ("team_bot_removed", [("deactivate_team", TEAM)]),
        ("team_uninstall", [("deactivate_team", TEAM)]),
        ("team_deleted", [("deactivate_team", TEAM)]),
        ("group_chat_install", [("upsert", f"chat:{CHAT}")]),
        ("group_chat_message", [("upsert", f"chat:{CHAT}")]),
        ("group_chat_uninstall", [("deactivate", f"chat:{CHAT}")]),
    ],
)
def test_each_teams_event_plans_the_documented_steps(payload: str, expected: list[tuple[str, str]]) -> None:
    assert plan(payload) == expected


def test_channel_references_address_the_channel_not_the_thread() -> None:
    (step,) = plan_capture(parse_activity(load("channel_message_mention")))
    assert isinstance(step, Upsert)
    assert step.reference.conversation.id == CHANNEL
    assert step.reference.activity_id is None  # a reply-to id would pin later sends to that thread
    assert step.team_id == TEAM


def test_personal_references_keep_the_botbuilder_shape() -> None:
    (step,) = plan_capture(parse_activity(load("personal_message")))
    assert isinstance(step, Upsert)
    shape = step.reference.to_json()
    assert set(shape) == {"activityId", "user", "bot", "conversation", "channelId", "locale", "serviceUrl"}
    assert shape["user"]["aadObjectId"] == USER and shape["bot"]["id"].startswith("28:")
    assert shape["serviceUrl"] == "https://smba.trafficmanager.net/amer/"


def test_personal_activity_without_aad_object_id_names_the_field() -> None:
    data = load("personal_message")
    del data["from"]["aadObjectId"]
    with pytest.raises(InvalidInput) as caught:
        plan_capture(parse_activity(data))
    assert caught.value.field == "from.aadObjectId"


def test_unknown_installation_action_names_the_field() -> None:
    data = load("personal_install")
    data["action"] = "explode"
    with pytest.raises(InvalidInput) as caught:
        plan_capture(parse_activity(data))
    assert caught.value.field == "action"


def test_other_activity_types_plan_nothing() -> None:
    data = load("personal_message")
    data["type"] = "typing"
    assert plan_capture(parse_activity(data)) == ()


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store() -> TableReferenceStore:
    return TableReferenceStore(MemoryEntityTable("references"))


async def capture(store: TableReferenceStore, clock: Clock, data: dict[str, Any]) -> Any:
    activity = parse_activity(data)
    return await ReferenceCapture(store, clock).apply(activity, plan_capture(activity))


async def test_reinstall_reactivates_and_refreshes_a_stale_reference(store: TableReferenceStore) -> None:
    clock = Clock()
    first = await capture(store, clock, load("personal_install"))
    assert first.newly_active == {f"user:{USER}"}
    clock.now += timedelta(days=3)
    await capture(store, clock, load("personal_uninstall"))
    gone = await store.get(TENANT, f"user:{USER}")
    assert gone is not None and not gone.active and gone.stale_reason == "uninstalled"

    clock.now += timedelta(days=3)
    again = load("personal_install")
    again["serviceUrl"] = "https://smba.trafficmanager.net/emea/"
    result = await capture(store, clock, again)
    back = await store.get(TENANT, f"user:{USER}")
    assert result.newly_active == {f"user:{USER}"}
    assert back is not None and back.active and back.stale_reason is None
    assert back.reference.service_url == "https://smba.trafficmanager.net/emea/"
    assert back.confirmed_at == clock.now


async def test_time_zone_is_stored_and_kept_when_a_later_activity_has_none(
    store: TableReferenceStore,
) -> None:
    clock = Clock()
    await capture(store, clock, load("personal_message"))
    clock.now += CONFIRM_INTERVAL * 2
    await capture(store, clock, load("personal_install"))  # carries no time zone
    stored = await store.get(TENANT, f"user:{USER}")
    assert stored is not None and stored.time_zone == "Europe/Berlin"


async def test_an_unchanged_recent_reference_is_not_rewritten(store: TableReferenceStore) -> None:
    clock = Clock()
    await capture(store, clock, load("personal_message"))
    clock.now += CONFIRM_INTERVAL / 2
    quiet = await capture(store, clock, load("personal_message"))
    assert quiet.unchanged == (f"user:{USER}",) and quiet.stored == ()
    clock.now += CONFIRM_INTERVAL
    later = await capture(store, clock, load("personal_message"))
    assert later.stored == (f"user:{USER}",)
    stored = await store.get(TENANT, f"user:{USER}")
    assert stored is not None and stored.confirmed_at == clock.now


async def test_team_uninstall_retires_every_channel_of_that_team_only(store: TableReferenceStore) -> None:
    clock = Clock()
    await capture(store, clock, load("team_install"))
    await capture(store, clock, load("channel_created"))
    await capture(store, clock, load("group_chat_install"))
    result = await capture(store, clock, load("team_uninstall"))
    assert sorted(result.deactivated) == sorted(
        [f"channel:{TEAM}", f"channel:{CHANNEL}", f"channel:{NEW_CHANNEL}"]
    )
    active = (await store.list_tenant(TENANT)).items
    assert [ref.key for ref in active] == [f"chat:{CHAT}"]


async def test_guests_are_stored_with_the_flag(store: TableReferenceStore) -> None:
    data = load("personal_message")
    data["from"]["userRole"] = "guest"
    await capture(store, Clock(), data)
    stored = await store.get(TENANT, f"user:{USER}")
    assert stored is not None and stored.is_guest


class LockstepTable(MemoryEntityTable):
    """The in-memory table, except that the first ``readers`` reads wait for one another.

    So each of that many concurrent captures reads the row before any of them writes: the interleaving
    that Azure gives two requests arriving at the same instant, made certain.
    """

    def __init__(self, name: str, readers: int) -> None:
        super().__init__(name)
        self._waiting = readers
        self._all_read = asyncio.Event()

    async def get(self, partition_key: str, row_key: str) -> tuple[Entity, str] | None:
        found = await super().get(partition_key, row_key)
        if self._waiting > 0:
            self._waiting -= 1
            if self._waiting == 0:
                self._all_read.set()
            await self._all_read.wait()
        return found

    def lockstep(self, readers: int) -> None:
        self._waiting = readers
        self._all_read = asyncio.Event()


async def test_install_events_applied_together_activate_the_reference_for_one_of_them_only() -> None:
    table = LockstepTable("references", readers=2)
    store, clock = TableReferenceStore(table), Clock()
    pair = ("personal_install", "personal_bot_added")  # Teams sends both for one personal install

    first = await asyncio.gather(*(capture(store, clock, load(name)) for name in pair))
    assert sorted(len(result.newly_active) for result in first) == [0, 1]
    # The loser decided again on the winner's row: the same reference, just confirmed, so not rewritten.
    assert sorted((len(result.stored), len(result.unchanged)) for result in first) == [(0, 1), (1, 0)]

    await capture(store, clock, load("personal_uninstall"))
    clock.now += timedelta(days=1)
    table.lockstep(2)
    again = await asyncio.gather(*(capture(store, clock, load(name)) for name in pair))
    assert sorted(len(result.newly_active) for result in again) == [0, 1]  # a re-install: welcomed once
    stored = await store.get(TENANT, f"user:{USER}")
    assert stored is not None and stored.active and stored.stale_reason is None
