"""A host that dies between any two store writes resumes every orchestration from its history.

The crash is simulated at the store boundary: after ``budget`` writes have landed, every further
write blocks forever, as if the process had died; that runtime is then thrown away and a new one
starts on what the store holds. Activities may run again (at-least-once, like the extension);
entity operations must apply exactly once, by request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from typing import Any

import pytest

from devhost.durable import DurableRuntime, DurableStore, FunctionIndex
from devhost.durable.history import EventType
from tests.devhost.apps import sample
from tests.devhost.conftest import StoreFactory

WAVES, WIDTH, SIGNALS = 3, 6, 3
WRITES = frozenset({"save_instance", "delete_instance", "add_messages", "delete_messages", "save_entity"})


class CrashingStore:
    """Delegates to ``inner`` until ``budget`` writes have landed; later writes never return."""

    def __init__(self, inner: DurableStore, budget: int | None = None) -> None:
        self.inner = inner
        self.budget = budget
        self.writes = 0
        self.crashed = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name not in WRITES:
            return method

        async def write(*args: Any, **kwargs: Any) -> Any:
            if self.budget is not None and self.writes >= self.budget:
                self.crashed.set()
                await asyncio.Event().wait()  # the process is dead: nothing lands any more
            self.writes += 1
            return await method(*args, **kwargs)

        return write


def drill_input(run: str) -> str:
    return json.dumps({"run": run, "waves": WAVES, "width": WIDTH, "signals": SIGNALS, "timer_seconds": 0})


def expected_effects() -> set[str]:
    return {f"w{w}-{i}" for w in range(WAVES) for i in range(WIDTH)} | {f"child-{i}" for i in range(3)}


EXPECTED_COUNT = WAVES * SIGNALS + 2  # every wave's signals, the child's signal, the final call


async def crash_and_resume(make_store: StoreFactory, budget: int | None) -> tuple[int, str]:
    """Run the drill, kill the runtime after ``budget`` writes, resume on a new runtime; check it all.

    Returns the number of writes the first runtime made and the run id.
    """
    index = FunctionIndex.from_app(sample.app)
    run = f"run-{uuid.uuid4().hex[:10]}"
    store = CrashingStore(make_store(), budget)
    first = DurableRuntime(index, store)  # type: ignore[arg-type]
    await first.start()
    starting = asyncio.create_task(first.start_new("crash_drill", run, drill_input(run)))
    # The run may need fewer writes than the budget this time (interleavings differ): then it simply ends.
    ends = [asyncio.create_task(store.crashed.wait()), asyncio.create_task(_completion(first, run))]
    done, _ = await asyncio.wait(ends, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    assert done, "the first runtime neither crashed nor finished"
    for task in [*ends, starting]:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await first.stop()
    assert first.errors == []

    async with DurableRuntime(index, make_store()) as second:
        if await second.get_instance(run) is None:  # died before the first write: the client retries
            await second.start_new("crash_drill", run, drill_input(run))
        record = await second.wait_for(run, 30)
        assert record.status == "Completed", record.output
        total = WAVES * sum(range(WIDTH))
        assert json.loads(record.output or "") == {"total": total, "child": 3003, "count": EXPECTED_COUNT}
        assert sample.DRILL_EFFECTS[run] == expected_effects()
        await second.idle()
        assert await second.read_entity_state("counter", run) == (True, str(EXPECTED_COUNT))
        child = await second.get_instance(f"{run}-child")
        assert child is not None and child.status == "Completed"
    assert second.errors == []
    return store.writes, run


async def _completion(runtime: DurableRuntime, instance_id: str) -> None:
    while await runtime.get_instance(instance_id) is None:  # noqa: ASYNC110 - nothing to wait on yet
        await asyncio.sleep(0.01)
    await runtime.wait_for(instance_id, 30)


async def test_drill_completes_without_a_crash(make_store: StoreFactory) -> None:
    writes, run = await crash_and_resume(make_store, None)
    assert writes > 50 and run in sample.DRILL_EFFECTS


async def test_restart_after_any_store_write_completes_with_exactly_once_entity_operations(
    make_store: StoreFactory, request: pytest.FixtureRequest
) -> None:
    clean_writes, _ = await crash_and_resume(make_store, None)
    points = range(1, clean_writes)
    if "azurite" in request.node.name:
        points = sorted(random.Random(4).sample(points, 8))  # a seeded sample: each costs ~1 s
    for budget in points:
        await crash_and_resume(make_store, budget)


async def test_restart_resumes_a_sequence_without_repeating_finished_steps(make_store: StoreFactory) -> None:
    index = FunctionIndex.from_app(sample.app)
    key = f"seq-{uuid.uuid4().hex[:8]}"
    store = make_store()
    async with DurableRuntime(index, store) as first:
        iid = await first.start_new("long_steps", None, json.dumps([key, 30]))
        while sum(e.startswith(f"{key}:") for e in sample.EFFECTS) < 10:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    done_before = len(await _history_ids(make_store(), iid))
    async with DurableRuntime(index, make_store()) as second:
        record = await second.wait_for(iid, 30)
        assert json.loads(record.output or "") == 30
        # Only the step that was in flight may run twice; finished ones come from history.
        assert second.stats.activity_invocations <= 30 + 5 - done_before + 1
    mine = [e for e in sample.EFFECTS if e.startswith(f"{key}:")]
    assert set(mine) == {f"{key}:{i}" for i in range(30)} | {f"{key}:fan{i}" for i in range(5)}


async def _history_ids(store: DurableStore, iid: str) -> list[int]:
    await store.open()
    try:
        record = await store.get_instance(iid)
        assert record is not None
        history = await store.load_history(record)
        return [e["TaskScheduledId"] for e in history if e["EventType"] == EventType.TASK_COMPLETED]
    finally:
        await store.close()
