"""The lane bookkeeping of ``tenant_broadcast`` / ``tenant_lane``, without Durable (the generators that use
it are driven on the real replay engine in test_orchestration_broadcast.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from proactive.delivery.contract import SendBatchResult
from proactive.limiter import Grant
from proactive.orchestration import policies
from proactive.orchestration.lanes import LaneProgress, TenantLanes, lane_instance_id
from proactive.orchestration.runs import BatchTotals, TenantRun, TenantSummary

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def tenant_run(**changes: object) -> TenantRun:
    return TenantRun.model_validate({"notification_id": "n", "tenant_id": "t", **changes})


def grant(tokens: int = 50) -> Grant:
    start = T0.timestamp() + 0.5
    return Grant(
        tokens=tokens,
        not_before=start,
        granted_at=T0.timestamp(),
        reason="granted",
        rate=50.0,
        pace_seconds=0.0202,
        send_by=start + max(0, tokens - 1) * 0.0202 + 0.05,
        slack_seconds=0.005,
    )


def summary(outcome: str = "completed", sent: int = 0, **changes: object) -> TenantSummary:
    return TenantSummary.model_validate(
        {"tenant_id": "t", "outcome": outcome, "totals": {"sent": sent}, **changes}
    )


# ----------------------------------------------------------------------------------------------------------
# TenantLanes
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "width"),
    [
        ({}, policies.SEND_LANES),  # rows not counted: assume many
        ({"remaining": 51, "batch_size": 50}, policies.SEND_LANES),
        ({"remaining": 50, "batch_size": 50}, 1),  # one batch's worth: a second lane would idle
        ({"operation": "update"}, policies.SEND_LANES),  # each lane on its own part (no helping)
        ({"operation": "delete", "remaining": 500}, policies.SEND_LANES),
    ],
)
def test_a_tenant_runs_several_lanes_only_for_more_than_one_batch(
    changes: dict[str, object], width: int
) -> None:
    assert TenantLanes(tenant_run(**changes)).width == width


def test_each_lane_takes_its_own_part_and_the_sweep_takes_every_part() -> None:
    lanes = TenantLanes(tenant_run(remaining=500, batches_done=3))
    parts = [(lanes.lane_run(n).part, lanes.lane_run(n).parts) for n in range(lanes.width)]
    assert parts == [(n, policies.SEND_LANES) for n in range(policies.SEND_LANES)]
    sweep = lanes.lane_run(lanes.width)
    assert (sweep.part, sweep.parts) == (0, 1)
    # Lanes count their own rows: the tenant's estimate is not theirs.
    assert all(lanes.lane_run(n).remaining is None for n in range(lanes.width + 1))


def test_a_single_lane_takes_every_part() -> None:
    run = TenantLanes(tenant_run(remaining=10)).lane_run(0)
    assert (run.part, run.parts) == (0, 1)


def test_the_sweep_follows_only_when_every_lane_completed() -> None:
    lanes = TenantLanes(tenant_run())
    assert lanes.needs_sweep([summary(), summary(), summary()])
    assert not lanes.needs_sweep([summary(), summary("cancelled"), summary()])
    assert not TenantLanes(tenant_run(remaining=3)).needs_sweep([summary()])


def test_merged_summary_adds_counts_and_failed_beats_cancelled_beats_completed() -> None:
    lanes = TenantLanes(tenant_run())
    merged = lanes.merge(
        [
            summary(sent=10, batches=1, executions=1),
            summary("cancelled", sent=5, batches=2, executions=1, cancelled=4),
            summary("failed", sent=1, batches=1, executions=2, error="halted: BotDisabledByAdmin"),
        ]
    )
    assert merged.outcome == "failed"
    assert (merged.batches, merged.executions, merged.cancelled) == (4, 4, 4)
    assert merged.totals.sent == 16
    assert merged.error == "halted: BotDisabledByAdmin"
    assert lanes.merge([summary(), summary("cancelled")]).outcome == "cancelled"
    assert lanes.merge([summary(), summary()]).outcome == "completed"
    assert lanes.merge([summary(), summary()]).error is None


def test_a_failed_lane_fails_the_tenant_with_a_bounded_error() -> None:
    failed = TenantLanes(tenant_run()).failed("lane failed: " + "x" * 600)
    assert failed.outcome == "failed" and failed.error is not None and len(failed.error) == 500


def test_lane_instance_ids_sit_under_the_tenant_instance() -> None:
    assert lane_instance_id("n.t", 2) == "n.t.lane2"


# ----------------------------------------------------------------------------------------------------------
# LaneProgress
# ----------------------------------------------------------------------------------------------------------


def result(**changes: object) -> SendBatchResult:
    return SendBatchResult.model_validate(changes)


def test_an_execution_starts_from_the_counters_its_predecessor_carried_over() -> None:
    totals = BatchTotals(sent=7)
    lane = LaneProgress.start(tenant_run(batches_done=3, totals=totals.to_json(), remaining=12))
    assert (lane.batches, lane.totals, lane.remaining, lane.steps) == (3, totals, 12, 0)


def test_an_execution_asks_for_at_most_its_share_of_grants() -> None:
    lane = LaneProgress.start(tenant_run(batches_per_execution=2))
    assert [lane.next_step() for _ in range(3)] == [True, True, False]


@pytest.mark.parametrize(("remaining", "want"), [(None, 50), (0, 50), (120, 50), (7, 7)])
def test_the_lane_asks_for_a_batch_or_the_rows_known_to_be_left(remaining: int | None, want: int) -> None:
    lane = LaneProgress.start(tenant_run(batch_size=50, remaining=remaining, urgency="urgent"))
    ask = lane.acquire(T0, "n.t.lane0")
    assert (ask.want, ask.priority, ask.requester) == (want, "urgent", "n.t.lane0")
    assert ask.now == T0.timestamp()


def test_a_batch_starts_ahead_of_its_grant_and_a_refusal_waits_for_its_time() -> None:
    assert LaneProgress.start_at(grant()) == grant().not_before_datetime() - policies.BATCH_START_LEAD
    assert LaneProgress.start_at(grant(0)) == grant(0).not_before_datetime()


def test_the_batch_input_carries_the_grants_slots_and_the_lanes_part() -> None:
    lane = LaneProgress.start(tenant_run(part=1, parts=3, operation="send"))
    batch = lane.batch_input(grant(), T0)
    assert (batch.limit, batch.part, batch.parts, batch.now) == (50, 1, 3, T0)
    assert batch.pacing is not None
    assert batch.pacing.not_before == grant().not_before_datetime()
    assert batch.pacing.send_by == grant().send_by_datetime()
    assert (batch.pacing.pace_seconds, batch.pacing.slack_seconds) == (0.0202, 0.005)


def test_the_report_counts_responses_and_times_the_batchs_requests() -> None:
    first, last = T0 + timedelta(seconds=0.5), T0 + timedelta(seconds=1.5)
    outcome = result(
        sent=40, throttled=3, server_errors=2, unreachable=1, stale=2, failed=3, max_retry_after=2.0,
        first_send_at=first, last_send_at=last, first_ready_at=T0,
    )  # fmt: skip
    report = LaneProgress.report(grant(), outcome, T0 + timedelta(seconds=2), "n.t.lane1")
    assert (report.sent, report.throttled, report.server_errors, report.failed) == (40, 3, 2, 6)
    assert (report.retry_after, report.requester, report.granted_at) == (2.0, "n.t.lane1", grant().granted_at)
    assert (report.first_send_at, report.last_send_at) == (first.timestamp(), last.timestamp())
    assert report.first_ready_at == T0.timestamp()
    assert LaneProgress.report(grant(), result(), T0, "x").last_send_at is None


def test_a_batch_with_rows_left_asks_for_the_next_and_counts() -> None:
    lane = LaneProgress.start(tenant_run(batches_done=1, totals={"sent": 5}))
    assert lane.record(result(sent=50, throttled=2, remaining=80)).next == "batch"
    assert (lane.batches, lane.totals.sent, lane.totals.throttled, lane.remaining) == (2, 55, 2, 80)


def test_a_lane_over_every_part_completes_when_nothing_is_left() -> None:
    lane = LaneProgress.start(tenant_run())
    assert lane.record(result(sent=3, remaining=0)).next == "completed"


def test_a_lane_whose_part_is_done_goes_on_over_every_part() -> None:
    lane = LaneProgress.start(tenant_run(part=2, parts=3, remaining=4))
    assert lane.record(result(sent=4, remaining=0)).next == "batch"
    assert (lane.run.part, lane.run.parts, lane.remaining) == (0, 1, None)
    assert lane.record(result(remaining=0)).next == "completed"


@pytest.mark.parametrize("operation", ["update", "delete"])
def test_an_update_or_delete_lane_whose_part_is_done_ends_instead_of_helping(operation: str) -> None:
    # They claim nothing: a lane on another's part would call Teams again for the same messages.
    lane = LaneProgress.start(tenant_run(part=2, parts=3, remaining=4, operation=operation))
    assert lane.record(result(sent=4, remaining=0)).next == "completed"
    assert (lane.run.part, lane.run.parts) == (2, 3)


def test_rows_deferred_by_quiet_hours_make_the_lane_wait_for_the_earliest() -> None:
    due = T0 + timedelta(hours=8)
    lane = LaneProgress.start(tenant_run(part=1, parts=3))
    after = lane.record(result(deferred=5, remaining=0, next_deferred_at=due))
    assert (after.next, after.until, lane.remaining) == ("wait", due, None)
    assert lane.run.parts == 3  # still its own part: the deferred rows are in it


def test_a_halted_tenant_ends_the_lane_with_the_batch_counted() -> None:
    lane = LaneProgress.start(tenant_run())
    assert lane.record(result(failed=1, remaining=40, halted="BotDisabledByAdmin")).next == "halted"
    assert (lane.batches, lane.totals.failed) == (1, 1)


def test_status_and_summary_show_the_lanes_counters() -> None:
    lane = LaneProgress.start(tenant_run(executions=2))
    outcome = result(sent=3, remaining=9)
    lane.record(outcome)
    assert lane.status(outcome) == {
        "tenantId": "t",
        "batches": 1,
        "totals": lane.totals.to_json(),
        "remaining": 9,
    }
    done = lane.summary("failed", error="e" * 600)
    assert (done.batches, done.executions, done.totals.sent) == (1, 3, 3)
    assert done.error is not None and len(done.error) == 500


def test_the_next_execution_carries_the_counters_and_the_widened_part() -> None:
    lane = LaneProgress.start(tenant_run(part=1, parts=3, executions=1))
    lane.record(result(sent=50, remaining=0))
    after = lane.continuation()
    assert (after.batches_done, after.executions, after.totals.sent) == (1, 2, 50)
    assert (after.part, after.parts, after.remaining) == (0, 1, None)


def test_batch_totals_take_every_counter_of_a_result_and_add_up() -> None:
    counters = BatchTotals.model_fields
    outcome = result(**{name: n + 1 for n, name in enumerate(counters)})
    once = BatchTotals.of(outcome)
    assert [getattr(once, name) for name in counters] == list(range(1, len(counters) + 1))
    assert (once + once).to_json() == {key: 2 * value for key, value in once.to_json().items()}
