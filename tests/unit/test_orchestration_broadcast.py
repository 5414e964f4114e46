"""The broadcast orchestrations on the real replay engine: fan-out, pacing, scheduling, deferral, cancel."""

from __future__ import annotations

import asyncio
import json
import time
from bisect import bisect_left
from datetime import timedelta
from typing import Any

import pytest

from proactive import function_names as fn
from proactive.errors import InvalidInput
from proactive.models import DeliveryRecord, DeliveryStatus, NotificationStatus
from proactive.orchestration import policies
from proactive.orchestration.runs import TenantRun
from proactive.orchestration.tenant_broadcast import lane_instance_id, redrive_instance_id
from tests.support.orchestration import (
    FORBIDDEN_TENANT,
    START,
    TENANTS,
    Harness,
    body,
    user_id,
)


def _iso(value: object) -> str:
    return value.isoformat().replace("+00:00", "Z")  # type: ignore[attr-defined]


async def test_three_tenant_broadcast_completes_with_counts_that_add_up(harness: Harness) -> None:
    await harness.seed_references(TENANTS[2], 60)
    request = body(
        users=[(TENANTS[0], user_id(0, n)) for n in range(5)],
        channels=[(TENANTS[1], f"19:team{n}@thread.tacv2", f"19:chan{n}@thread.tacv2") for n in range(3)],
        tenants=[TENANTS[2]],
        notification_id="three-tenants",
    )
    accepted = await harness.service.start(request)
    record = await harness.run(accepted.instance_id)

    assert record.status == "Completed"
    output = json.loads(record.output or "")
    assert output["phase"] == "completed" and output["materialised"] == 68
    assert {t["tenantId"]: t["outcome"] for t in output["tenants"]} == dict.fromkeys(TENANTS, "completed")
    assert output["batchTotals"]["sent"] == 68 and output["counts"]["sent"] == 68
    status = await harness.service.status("three-tenants")
    assert status["status"] == "completed"
    assert status["counts"]["total"] == 68 and status["counts"]["sent"] == 68
    assert sum(v for k, v in status["counts"].items() if k != "total") == status["counts"]["total"]
    assert status["startedAt"] and status["completedAt"] and status["rate"]["sentPerSecond"] > 0
    stored = await harness.services.notifications.get("three-tenants")
    assert stored is not None and stored.value.status is NotificationStatus.COMPLETED
    assert stored.value.counts["sent"] == 68
    # One tenant_broadcast per tenant, addressable by cancel.
    for tenant in TENANTS:
        child = await harness.runtime.get_instance(f"three-tenants.{tenant}")
        assert child is not None and child.status == "Completed"


async def test_batches_never_exceed_the_grant_and_follow_the_tenant_rate(harness: Harness) -> None:
    accepted = await harness.service.start(body(tenants=[TENANTS[0]]))
    await harness.seed_references(TENANTS[0], 240)
    record = await harness.run(accepted.instance_id)
    assert record.status == "Completed"
    calls = harness.sender.calls
    assert sum(c["limit"] for c in calls) >= 240 and max(c["limit"] for c in calls) <= 50
    # 50 msg/s with a one-second burst: 240 messages need at least 240/50 - 1 seconds of grants.
    times = sorted(c["now"] for c in calls)
    span = (harness.clock.now() - START).total_seconds()
    assert span >= 240 / 50 - 1 and len(times) >= 5


async def test_continue_as_new_keeps_each_tenant_execution_history_bounded(harness: Harness) -> None:
    await harness.seed_references(TENANTS[0], 1000)
    accepted = await harness.service.start(body(tenants=[TENANTS[0]], notification_id="big-1k"))
    record = await harness.run(accepted.instance_id)
    assert record.status == "Completed"
    child = f"big-1k.{TENANTS[0]}"
    summary = json.loads(record.output or "")["tenants"][0]
    # 20 full batches over the lanes (5 per execution), then each lane's last look at its part, at every
    # part, and the sweep may find nothing left.
    assert 20 <= summary["batches"] <= 20 + 2 * policies.SEND_LANES + 1
    assert summary["executions"] >= 4 + 1 and summary["totals"]["sent"] == 1000
    assert harness.runtime.stats.continue_as_new >= 3
    # Every execution replays a history of a few events per batch, never one per recipient.
    for lane in range(policies.SEND_LANES + 1):
        assert harness.history.largest[lane_instance_id(child, lane)] <= 120
    assert harness.history.largest[child] <= 20  # the tenant only waits for its lanes
    assert harness.history.largest["big-1k"] <= 80


async def _open_bookings(harness: Harness, tenant: str, expected: int, within: float = 5.0) -> list[str]:
    """The requesters holding open limiter bookings, once ``expected`` are open (or after ``within`` s)."""
    deadline = time.monotonic() + within
    while True:
        _, raw = await harness.runtime.read_entity_state(fn.TENANT_LIMITER, tenant)
        state = json.loads(raw or "{}")
        state = json.loads(state) if isinstance(state, str) else state
        holders = sorted(b[6] for b in state.get("bookings", []) if b[8])
        if len(holders) >= expected or time.monotonic() > deadline:
            return holders
        await asyncio.sleep(0.01)


async def test_the_next_batch_is_booked_while_the_current_one_sends(harness: Harness) -> None:
    await harness.seed_references(TENANTS[0], 300)
    accepted = await harness.service.start(body(tenants=[TENANTS[0]], notification_id="piped"))
    child = f"piped.{TENANTS[0]}"
    seen: list[list[str]] = []

    async def look() -> None:  # inside the second batch, which has not answered yet
        seen.append(await _open_bookings(harness, TENANTS[0], policies.SEND_LANES))

    harness.sender.during[2] = look
    record = await harness.run(accepted.instance_id)
    assert record.status == "Completed"
    # The third grant was booked without waiting for the second batch: one by each lane.
    assert seen == [[lane_instance_id(child, n) for n in range(policies.SEND_LANES)]]
    counts = await harness.services.deliveries.count_by_status("piped", TENANTS[0])
    assert counts == {DeliveryStatus.SENT: 300}
    assert sum(c["limit"] for c in harness.sender.calls) >= 300
    summary = json.loads(record.output or "")["tenants"][0]
    assert summary["totals"]["sent"] == 300 and summary["batches"] == len(harness.sender.calls)
    # Every booking was reported and closed at the end.
    assert await _open_bookings(harness, TENANTS[0], 0) == []


async def test_a_row_given_back_beside_the_last_batch_is_still_sent(harness: Harness) -> None:
    # Two lanes: a batch gives a row back after the other lane's batch counted nothing left.
    await harness.seed_references(TENANTS[0], 150)
    harness.sender.late_return = 2
    accepted = await harness.service.start(body(tenants=[TENANTS[0]], notification_id="race"))
    record = await harness.run(accepted.instance_id)
    assert record.status == "Completed"
    counts = await harness.services.deliveries.count_by_status("race", TENANTS[0])
    assert counts == {DeliveryStatus.SENT: 150}
    # The lanes ended saying "nothing left" while a row was given back late: the sweep lane sent it.
    sweep = lane_instance_id(f"race.{TENANTS[0]}", policies.SEND_LANES)
    assert (await harness.runtime.get_instance(sweep)) is not None
    summary = json.loads(record.output or "")["tenants"][0]
    assert summary["totals"]["sent"] == 150 and summary["batches"] == len(harness.sender.calls)


async def test_a_tenant_with_more_than_a_batch_books_its_first_two_batches_together(harness: Harness) -> None:
    await harness.seed_references(TENANTS[0], 120)
    accepted = await harness.service.start(body(tenants=[TENANTS[0]], notification_id="eager"))
    seen: list[list[str]] = []

    async def look() -> None:  # inside the very first batch: the materialised count already asked for two
        seen.append(await _open_bookings(harness, TENANTS[0], policies.SEND_LANES))

    harness.sender.during[1] = look
    record = await harness.run(accepted.instance_id)
    assert record.status == "Completed"
    child = f"eager.{TENANTS[0]}"
    assert seen == [[lane_instance_id(child, n) for n in range(policies.SEND_LANES)]]
    assert await harness.services.deliveries.count_by_status("eager", TENANTS[0]) == {
        DeliveryStatus.SENT: 120
    }


async def test_a_tenant_with_one_batch_of_rows_books_one_grant(harness: Harness) -> None:
    await harness.seed_references(TENANTS[0], 30)
    accepted = await harness.service.start(body(tenants=[TENANTS[0]], notification_id="small"))
    seen: list[list[str]] = []

    async def look() -> None:
        seen.append(await _open_bookings(harness, TENANTS[0], 2, within=0.5))

    harness.sender.during[1] = look
    record = await harness.run(accepted.instance_id)
    assert record.status == "Completed"
    # A 30-recipient tenant is one batch: no second grant was booked for it, and only one activity ran.
    # ... and the lane ran directly under the tenant's instance id (no coordinator in between).
    assert seen == [[f"small.{TENANTS[0]}"]]
    assert len(harness.sender.calls) == 1


async def test_update_lanes_work_on_disjoint_parts_so_no_message_is_updated_twice(harness: Harness) -> None:
    # Update and delete do not claim rows: lanes overlap their round trips only over parts of their own
    # (a lane whose part is done ends instead of helping), so Teams is called once per message.
    await harness.seed_references(TENANTS[0], 150)
    first = await harness.service.start(body(tenants=[TENANTS[0]], notification_id="edit-me"))
    assert (await harness.run(first.instance_id)).status == "Completed"
    sends = len(harness.sender.calls)
    seen: list[list[str]] = []

    async def look() -> None:  # inside the update's second batch
        seen.append(await _open_bookings(harness, TENANTS[0], policies.SEND_LANES, within=0.5))

    harness.sender.during[sends + 2] = look
    accepted = await harness.service.update("edit-me", json.dumps({"message": {"text": "v2"}}).encode())
    record = await harness.run(accepted.instance_id)
    assert record.status == "Completed"
    assert len(seen) == 1 and len(seen[0]) > 1  # lanes side by side
    updates = harness.sender.calls[sends:]
    assert {c["operation"] for c in updates} == {"update"}
    assert {(c["part"], c["parts"]) for c in updates} >= {
        (n, policies.SEND_LANES) for n in range(policies.SEND_LANES)
    }
    counts = [n for (operation, _), n in harness.sender.op_counts.items() if operation == "update"]
    assert len(counts) == 150 and set(counts) == {1}


async def test_send_at_waits_on_a_durable_timer_before_materialising(harness: Harness) -> None:
    send_at = START + timedelta(hours=2)
    accepted = await harness.service.start(
        body(users=[(TENANTS[0], user_id(0, 1))], notification_id="later", sendAt=_iso(send_at))
    )
    record = await harness.run(accepted.instance_id, until=send_at - timedelta(seconds=1))
    assert record.status == "Running"
    assert (await harness.service.status("later"))["status"] == "scheduled"
    assert await harness.services.deliveries.count_by_status("later", TENANTS[0]) == {}
    record = await harness.run(accepted.instance_id)
    assert record.status == "Completed"
    sent = harness.sender.calls[0]
    assert sent["now"] >= _iso(send_at)


async def test_deferred_rows_are_sent_when_their_quiet_hours_end(harness: Harness) -> None:
    quiet_end = START + timedelta(hours=7)
    harness.sender.quiet_until = {f"user:{user_id(0, 2)}": quiet_end}
    accepted = await harness.service.start(
        body(users=[(TENANTS[0], user_id(0, n)) for n in range(4)], notification_id="quiet")
    )
    record = await harness.run(accepted.instance_id, until=quiet_end - timedelta(minutes=1))
    assert record.status == "Running"
    counts = await harness.services.deliveries.count_by_status("quiet", TENANTS[0])
    assert counts == {DeliveryStatus.SENT: 3, DeliveryStatus.DEFERRED: 1}
    record = await harness.run(accepted.instance_id)
    assert record.status == "Completed" and harness.clock.now() >= quiet_end
    counts = await harness.services.deliveries.count_by_status("quiet", TENANTS[0])
    assert counts == {DeliveryStatus.SENT: 4}
    # Hours of waiting add a few timers, not one event per minute: progress polls back off to hourly.
    assert harness.history.largest["quiet"] <= 160  # 14 polls in 7 hours, about 8 events each
    assert harness.history.largest[f"quiet.{TENANTS[0]}"] <= 40


async def test_a_wake_event_ends_a_lanes_quiet_hours_wait_so_a_row_due_meanwhile_is_sent_at_once(
    harness: Harness,
) -> None:
    # What the re-drive trigger does when a row of the tenant became due while the lane sleeps.
    quiet_end = START + timedelta(hours=7)
    harness.sender.quiet_until = {f"user:{user_id(0, 2)}": quiet_end}
    accepted = await harness.service.start(
        body(users=[(TENANTS[0], user_id(0, n)) for n in range(4)], notification_id="woken")
    )
    record = await harness.run(accepted.instance_id, until=START + timedelta(hours=1))
    assert record.status == "Running"
    late = DeliveryRecord(
        notification_id="woken",
        tenant_id=TENANTS[0],
        recipient_key=f"user:{user_id(0, 9)}",
        created_at=harness.clock.now(),
        updated_at=harness.clock.now(),
    )
    await harness.services.deliveries.add_pending([late])

    lane = f"woken.{TENANTS[0]}"  # one batch's worth of rows: the tenant's child is the lane itself
    assert await harness.orchestrations.raise_event(lane, fn.WAKE_EVENT, None)
    await harness.settle()

    counts = await harness.services.deliveries.count_by_status("woken", TENANTS[0])
    assert counts == {DeliveryStatus.SENT: 4, DeliveryStatus.DEFERRED: 1}
    assert harness.clock.now() < quiet_end  # sent without waiting for the window
    record = await harness.run(accepted.instance_id)
    assert record.status == "Completed" and harness.clock.now() >= quiet_end
    counts = await harness.services.deliveries.count_by_status("woken", TENANTS[0])
    assert counts == {DeliveryStatus.SENT: 5}


async def test_a_wake_raised_while_the_lane_was_busy_ends_one_quiet_hours_wait_not_every_later_one(
    harness: Harness,
) -> None:
    # The SDK keeps an event raised while nobody waited and, in that execution, hands it to every later waiter
    # of its name: a lane must not spin through its quiet-hours waits after one such wake.
    quiet_end = START + timedelta(hours=7)
    harness.sender.quiet_until = {f"user:{user_id(0, 2)}": quiet_end}
    accepted = await harness.service.start(
        body(users=[(TENANTS[0], user_id(0, n)) for n in range(4)], notification_id="spin")
    )
    lane = f"spin.{TENANTS[0]}"

    async def wake() -> None:  # inside the first batch: nobody waits for the event yet
        assert await harness.orchestrations.raise_event(lane, fn.WAKE_EVENT, None)

    harness.sender.during[1] = wake
    record = await harness.run(accepted.instance_id, until=START + timedelta(hours=1))
    assert record.status == "Running"
    # The first batch, then one look after the wake; then the lane sleeps until the window ends.
    assert len(harness.sender.calls) == 2
    record = await harness.run(accepted.instance_id)
    assert record.status == "Completed" and harness.clock.now() >= quiet_end
    counts = await harness.services.deliveries.count_by_status("spin", TENANTS[0])
    assert counts == {DeliveryStatus.SENT: 4}


@pytest.mark.parametrize("woken", [False, True])
async def test_a_redrive_run_woken_during_its_last_batch_looks_again_before_it_ends(
    harness: Harness, woken: bool
) -> None:
    # The trigger saw the run under way and only woke it: the run's last batch may have read the ledger
    # before the trigger's row became due, so the run takes one more look instead of ending.
    accepted = await harness.service.start(
        body(users=[(TENANTS[0], user_id(0, n)) for n in range(2)], notification_id="looks-again")
    )
    assert (await harness.run(accepted.instance_id)).status == "Completed"
    instance = redrive_instance_id("looks-again", TENANTS[0])
    calls = len(harness.sender.calls)

    async def wake() -> None:
        assert await harness.orchestrations.raise_event(instance, fn.WAKE_EVENT, None)

    if woken:
        harness.sender.during[calls + 1] = wake
    run = TenantRun(notification_id="looks-again", tenant_id=TENANTS[0], redrive=True)
    await harness.orchestrations.start(fn.TENANT_LANE, instance, run.to_json())
    assert (await harness.run(instance)).status == "Completed"
    assert len(harness.sender.calls) - calls == (2 if woken else 1)


async def test_cancel_keeps_sent_rows_and_marks_the_rest_cancelled(harness: Harness) -> None:
    await harness.seed_references(TENANTS[0], 500)
    accepted = await harness.service.start(body(tenants=[TENANTS[0]], notification_id="stop-me"))
    answers: list[dict[str, Any]] = []

    async def cancel() -> None:  # while the third batch is under way
        answers.append(await harness.service.cancel("stop-me"))

    harness.sender.during[3] = cancel
    record = await harness.run(accepted.instance_id)
    assert answers[0]["status"] == "cancelling"
    calls_before = 3
    assert record.status == "Completed"
    assert json.loads(record.output or "")["phase"] == "cancelled"
    counts = await harness.services.deliveries.count_by_status("stop-me", TENANTS[0])
    assert counts[DeliveryStatus.SENT] > 0 and counts[DeliveryStatus.CANCELLED] > 0
    assert counts[DeliveryStatus.SENT] + counts[DeliveryStatus.CANCELLED] == 500
    assert counts[DeliveryStatus.SENT] <= 50 * (calls_before + 1)
    status = await harness.service.status("stop-me")
    assert (
        status["status"] == "cancelled" and status["counts"]["cancelled"] == counts[DeliveryStatus.CANCELLED]
    )
    with pytest.raises(InvalidInput) as finished:
        await harness.service.cancel("stop-me")
    assert finished.value.status == 409 and finished.value.code == "broadcast_finished"


async def test_cancel_during_the_send_at_wait_ends_without_sending(harness: Harness) -> None:
    send_at = START + timedelta(days=1)
    accepted = await harness.service.start(
        body(users=[(TENANTS[0], user_id(0, 1))], notification_id="never", sendAt=_iso(send_at))
    )
    await harness.settle()
    await harness.service.cancel("never")
    record = await harness.run(accepted.instance_id, until=START + timedelta(hours=1))
    assert record.status == "Completed" and harness.clock.now() < send_at
    assert json.loads(record.output or "")["phase"] == "cancelled"
    assert harness.sender.calls == []
    assert (await harness.service.status("never"))["status"] == "cancelled"


async def test_a_cancel_on_day_4_of_a_10_day_send_at_wait_lands_the_same_day(harness: Harness) -> None:
    # With Azure Storage the SDK splits a timer over 6 days into 3-day ones and a cancelled long timer
    # leaves its running piece behind (devhost passes the same limits): the wait is a chain of day-long
    # timers instead, each raced against its own cancel waiter.
    send_at = START + timedelta(days=10)
    accepted = await harness.service.start(
        body(users=[(TENANTS[0], user_id(0, 1))], notification_id="later", sendAt=_iso(send_at))
    )
    record = await harness.run(accepted.instance_id, until=START + timedelta(days=4, hours=1))
    assert record.status == "Running"
    await harness.service.cancel("later")
    record = await harness.run(accepted.instance_id, until=START + timedelta(days=5))
    assert record.status == "Completed" and harness.clock.now() < START + timedelta(days=5)
    assert json.loads(record.output or "")["phase"] == "cancelled" and harness.sender.calls == []


async def test_the_same_notification_id_never_starts_a_second_broadcast(harness: Harness) -> None:
    request = body(users=[(TENANTS[0], user_id(0, 1))], notification_id="once")
    first = await harness.service.start(request)
    second = await harness.service.start(request)
    assert (first.created, second.created) == (True, False)
    assert first.instance_id == second.instance_id == "once"
    await harness.run("once")
    third = await harness.service.start(request)
    assert third.created is False
    assert harness.orchestrations.started == ["once"]
    assert len(harness.sender.calls) == 1
    with pytest.raises(InvalidInput) as clash:
        await harness.service.start(body(users=[(TENANTS[0], user_id(0, 2))], notification_id="once"))
    assert clash.value.status == 409 and clash.value.code == "notification_conflict"


async def test_a_stored_notification_whose_start_was_lost_is_started_by_the_repeat(harness: Harness) -> None:
    request = body(users=[(TENANTS[0], user_id(0, 1))], notification_id="crashed")
    real_start = harness.orchestrations.start

    async def crash(*args: object) -> None:
        raise RuntimeError("host died after storing the notification")

    harness.orchestrations.start = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await harness.service.start(request)
    harness.orchestrations.start = real_start  # type: ignore[method-assign]
    again = await harness.service.start(request)
    assert again.created is False
    assert (await harness.run("crashed")).status == "Completed"


async def test_bad_input_stores_nothing_and_starts_nothing(harness: Harness) -> None:
    bad = [
        b"not json",
        body(users=[(TENANTS[0], "not-a-guid")]),
        json.dumps({"audience": {}, "message": {"text": "x"}}).encode(),
        body(users=[(TENANTS[0], user_id(0, 1))], text="x" * 100_000),
        body(users=[(FORBIDDEN_TENANT, user_id(0, 1))], notification_id="elsewhere"),
    ]
    statuses = []
    for request in bad:
        with pytest.raises(InvalidInput) as problem:
            await harness.service.start(request)
        statuses.append(problem.value.status)
        assert set(problem.value.to_body()["error"]) == {"code", "message", "details"}
    assert statuses == [400, 400, 400, 413, 403]
    assert harness.orchestrations.started == []
    assert await harness.services.notifications.get("elsewhere") is None


async def test_a_tenants_welcome_notification_can_be_neither_started_nor_cancelled_by_a_caller(
    harness: Harness,
) -> None:
    taken = body(tenants=[TENANTS[0]], notification_id=f"welcome-{TENANTS[0]}")
    with pytest.raises(InvalidInput) as started:
        await harness.service.start(taken)
    with pytest.raises(InvalidInput) as cancelled:
        await harness.service.cancel(f"welcome-{TENANTS[0]}")
    assert (started.value.status, started.value.code) == (400, "reserved_notification_id")
    assert cancelled.value.status == 404
    assert harness.orchestrations.started == []


async def test_urgent_and_normal_broadcasts_share_one_tenant_limiter(harness: Harness) -> None:
    await harness.seed_references(TENANTS[0], 200)
    normal = await harness.service.start(body(tenants=[TENANTS[0]], notification_id="routine"))
    urgent = await harness.service.start(
        body(tenants=[TENANTS[0]], notification_id="incident", urgency="urgent")
    )
    assert (await harness.run(normal.instance_id)).status == "Completed"
    assert (await harness.run(urgent.instance_id)).status == "Completed"
    exists, raw = await harness.runtime.read_entity_state("tenant_limiter", TENANTS[0])
    assert exists and raw is not None
    state = json.loads(raw)
    if isinstance(state, str):
        state = json.loads(state)
    assert state["config"]["rate"] == 50.0
    assert state["stats"]["granted"] >= 400 and state["urgentUntil"] > 0 and state["normalUntil"] > 0
    # One limiter for both: the requests the batches made (from their grant's first slot, one pace apart)
    # never put more than the rate in a window.
    starts = sorted(harness.sender.request_times)
    assert len(starts) >= 400
    assert max(bisect_left(starts, t + 1.0) - k for k, t in enumerate(starts)) <= 50
    # Urgent gets 80 % of the rate while both are active: its last grant comes before normal's last one
    # (the manual clock can end both broadcasts in the same instant, so completion times may tie).
    last = {
        name: max(c["pacing"]["notBefore"] for c in harness.sender.calls if c["notificationId"] == name)
        for name in ("routine", "incident")
    }
    assert last["incident"] < last["routine"]


async def test_batches_under_way_in_both_lanes_that_fail_their_first_attempt_still_send_everyone(
    harness: Harness,
) -> None:
    # The regression test of the send-path rewrite on the faithful engine (devhost processes actions like the
    # extension's shim): the old tenant_broadcast kept a second batch in flight inside a task_any and awaited
    # it again alone, and a failed first attempt of that batch desynchronised the SDK's and the extension's
    # task ids (tests/devhost/test_engine_fidelity.py pins the mechanism). Lanes yield one task at a time.
    await harness.seed_references(TENANTS[0], 300)
    harness.sender.fail_calls = {2, 3, 5}  # the first batches of both lanes, and a later one
    accepted = await harness.service.start(body(tenants=[TENANTS[0]], notification_id="retried"))
    record = await harness.run(accepted.instance_id)
    assert record.status == "Completed"
    assert json.loads(record.output or "")["phase"] == "completed"
    counts = await harness.services.deliveries.count_by_status("retried", TENANTS[0])
    assert counts == {DeliveryStatus.SENT: 300}
    assert not harness.runtime.errors


async def test_a_terminated_tenant_orchestration_fails_its_tenant_and_the_broadcast_still_ends(
    harness: Harness,
) -> None:
    for tenant in TENANTS[:2]:
        await harness.seed_references(tenant, 120)
    accepted = await harness.service.start(body(tenants=list(TENANTS[:2]), notification_id="cut"))

    async def cut() -> None:
        await harness.runtime.terminate(f"cut.{TENANTS[1]}", "operator stopped it")

    harness.sender.during[2] = cut
    record = await harness.run(accepted.instance_id)
    assert record.status == "Completed"
    output = json.loads(record.output or "")
    outcomes = {t["tenantId"]: t["outcome"] for t in output["tenants"]}
    assert output["phase"] == "failed" and outcomes[TENANTS[1]] == "failed"
    assert (await harness.service.status("cut"))["status"] != "running"


async def test_an_activity_failing_every_retry_fails_only_its_tenant(harness: Harness) -> None:
    harness.sender.fail_times = 3  # SEND_BATCH_RETRY: three attempts
    accepted = await harness.service.start(
        body(users=[(TENANTS[0], user_id(0, 1))], notification_id="broken")
    )
    record = await harness.run(accepted.instance_id)
    assert record.status == "Completed"
    output = json.loads(record.output or "")
    assert output["phase"] == "failed" and "storage unreachable" in output["tenants"][0]["error"]
    assert (await harness.service.status("broken"))["counts"]["pending"] == 1


@pytest.mark.parametrize("settings_overrides", [{"SEND_RATE_PER_TENANT": "20", "BATCH_SIZE": "10"}])
async def test_limiter_default_rate_comes_from_the_tenant_setting(harness: Harness) -> None:
    accepted = await harness.service.start(body(users=[(TENANTS[1], user_id(1, n)) for n in range(30)]))
    assert (await harness.run(accepted.instance_id)).status == "Completed"
    _, raw = await harness.runtime.read_entity_state("tenant_limiter", TENANTS[1])
    state = json.loads(raw or "null")
    state = json.loads(state) if isinstance(state, str) else state
    assert state["config"]["rate"] == 20.0
    assert max(c["limit"] for c in harness.sender.calls) <= 10
