"""The local durable runtime: what the Durable extension does around the Python replay engine.

* Orchestrations run in episodes: new events from the instance's inbox are appended to its history
  after an ``OrchestratorStarted``, the whole history is replayed on the real SDK
  (:mod:`devhost.durable.orchestration`), newly scheduled tasks become history events and work.
* What is scheduled, under which task id, and when an orchestration completes is decided as the
  extension decides it (:mod:`devhost.durable.shim`): the SDK's returned actions are walked in order,
  each awaited before the next, against the history, by a model of
  Azure/azure-functions-durable-extension ``Listener/OutOfProcOrchestrationShim.cs``
  (``ScheduleDurableTaskEvents``, ``ReplayOOProcOrchestration``, ``ProcessAsyncActionsV2``,
  ``ProcessAsyncActionsV1``, ``InvokeAPIFromAction``), ``Listener/TaskOrchestrationShim.cs``
  (``InvokeUserCodeAndHandleResults``) and ``ContextImplementations/DurableOrchestrationContext.cs``
  (``CallDurableTaskFunctionAsync``, ``CreateTimer<T>``, ``WaitForExternalEvent``, ``RaiseEvent``,
  ``ContinueAsNew``), over Azure/durabletask ``DurableTask.Core`` (``TaskOrchestrationExecutor.ExecuteCore``,
  ``TaskOrchestrationContext``'s id counter and ``Handle*Event`` checks, ``RetryInterceptor.Invoke``).
  So a pattern the extension fails on (non-determinism, the SDK's "Potential duplicate Task
  completion", a hang) fails the same way here. The context carries the provider's timer limits
  (``OrchestrationTriggerAttributeBindingProvider.OrchestrationContextToString``; Azure Storage's
  6 and 3 days by default, :class:`~devhost.durable.shim.TimerLimits`), so the SDK splits long timers.
* Work: activities (async ones concurrently, sync ones in threads, capped like
  ``maxConcurrentActivityFunctions``), durable timers, sub-orchestrations, entity operations.
  Results come back as messages in the instance's inbox; duplicates (at-least-once) are dropped.
* Entities process their inbox one batch at a time, so one entity runs one operation at a time.
* Everything lives in a :class:`~devhost.durable.store.DurableStore`; on start the runtime re-derives
  outstanding work from each active instance's history, so a killed host resumes where it was.

Crash safety rests on three rules (a host may die between any two store writes):

1. An episode's commit (history + record) deletes the inbox messages it consumed in the same atomic
   store write, so no message is applied twice or lost.
2. Work whose re-execution is *not* harmless, entity operations, is written to the entity's inbox
   *before* the history that records it is committed. If the host dies in between, the episode runs
   again and sends the same operations under the same deterministic request ids, which the entity
   has remembered; recovery never has to re-send an old operation. The same holds for entity
   replies (written before the entity's state commit) and for the signals of an episode that ends
   in ``continue_as_new`` or completion.
3. Work whose re-execution is harmless or idempotent (activities: at-least-once like the extension;
   timers; sub-orchestration creation, keyed by instance id) is started after the commit and
   re-derived from history on start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import Coroutine
from datetime import datetime
from typing import Any

from devhost.durable import history as h
from devhost.durable.activities import invoke_activity
from devhost.durable.clock import Clock, SystemClock
from devhost.durable.counters import Stats
from devhost.durable.entities import parse_scheduler_id, run_entity_batch, scheduler_id
from devhost.durable.functions import FunctionIndex
from devhost.durable.orchestration import run_episode
from devhost.durable.shim import (
    ENTITY_REQUEST_EVENT,
    SCHEMA_V2,
    SCHEMA_V3,
    Decision,
    ExtensionSettings,
    Outcome,
    ScheduledTask,
    TimerLimits,
    replay_actions,
)
from devhost.durable.store import (
    MAX_CONSUMED_PER_COMMIT,
    DurableStore,
    EntityRecord,
    InstanceRecord,
    MemoryStore,
)
from devhost.durable.timers import TimerService
from devhost.latency import DispatchLatency, WorkKind

EventType = h.EventType
log = logging.getLogger("devhost.durable")

# How many answered request ids an entity remembers to drop re-deliveries. Re-deliveries only come
# from an episode re-run after a crash, so they are recent: the window needs no more than this.
ENTITY_DEDUP_WINDOW = 1000
# Operations per entity batch, and messages per orchestration episode: one atomic store commit.
ENTITY_BATCH_SIZE = MAX_CONSUMED_PER_COMMIT
EPISODE_MESSAGES = MAX_CONSUMED_PER_COMMIT


class InstanceNotFound(LookupError):
    """No orchestration instance has this id."""


class InstanceGone(RuntimeError):
    """The instance already completed, failed or was terminated (HTTP 410)."""


class InstanceExists(RuntimeError):
    """A running instance already has this id (HTTP 409)."""


class UnknownFunction(LookupError):
    """The app has no orchestrator with this name (HTTP 400)."""


_counter = itertools.count()


def _message_id() -> str:
    # Sortable by arrival, unique within and across processes.
    return f"{time.time_ns():020d}-{next(_counter):08d}-{uuid.uuid4().hex[:8]}"


class DurableRuntime:
    """Runs the app's orchestrators, activities and entities on a store.

    Args:
        index: the app's functions (:meth:`FunctionIndex.from_app`).
        store: persistence; default in memory.
        clock: time source for timers and ``current_utc_datetime``; default the wall clock.
        max_concurrent_activities: like host.json ``extensions.durableTask.maxConcurrentActivityFunctions``.
        task_hub: the task hub name reported to clients.
        latency: how long work items and timers wait before they run (default none;
            :mod:`devhost.latency`).
        timer_limits: the storage provider's timer limits sent to the SDK (default Azure Storage's: timers
            over 6 days are split into 3-day ones); tests shrink them.
        replay_schema: the highest replay schema offered to the SDK: 2 (V3, what the extension offers),
            1 (V2) or 0 (the original V1 action sets).
    """

    def __init__(
        self,
        index: FunctionIndex,
        store: DurableStore | None = None,
        *,
        clock: Clock | None = None,
        max_concurrent_activities: int = 10,
        task_hub: str = "TestHubName",
        latency: DispatchLatency | None = None,
        timer_limits: TimerLimits | None = None,
        replay_schema: int = SCHEMA_V3,
    ) -> None:
        self.index = index
        self.latency = latency or DispatchLatency()
        self.store: DurableStore = store or MemoryStore()
        self.clock: Clock = clock or SystemClock()
        self.task_hub = task_hub
        self.replay_schema = replay_schema
        self.extension = ExtensionSettings.of(
            index.activities, index.orchestrators, index.entities, timer_limits=timer_limits or TimerLimits()
        )
        self.stats = Stats()
        self.max_concurrent_activities = max_concurrent_activities
        self._activity_slots = asyncio.Semaphore(max_concurrent_activities)
        self._timers = TimerService(self.clock)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._active: set[str] = set()
        self._dirty: set[str] = set()
        self._history_cache: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        self._changed: asyncio.Condition | None = None
        self._started = False
        self.errors: list[BaseException] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the store, start timers, and resume every unfinished instance from its history."""
        self._changed = asyncio.Condition()
        await self.store.open()
        self._timers.start()
        self._started = True
        await self._recover()

    async def stop(self) -> None:
        """Stop background work (in-flight activities are abandoned; they re-run after a restart)."""
        self._started = False
        await self._timers.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.store.close()

    async def __aenter__(self) -> DurableRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> None:
        task = asyncio.create_task(coro, name=name or None)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            self.errors.append(exc)
            log.error("devhost durable task %s failed", task.get_name(), exc_info=exc)

    async def idle(self, within: float = 30.0) -> None:
        """Wait until no episode, activity or entity batch is running (timers may still be pending)."""
        deadline = time.monotonic() + within
        while self._tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"runtime still busy with {len(self._tasks)} tasks")
            await asyncio.sleep(0.01)

    @property
    def pending_timers(self) -> int:
        """Timers armed and not yet fired."""
        return self._timers.pending

    # ------------------------------------------------------------------ client API

    async def start_new(
        self, name: str, instance_id: str | None = None, input_json: str | None = None
    ) -> str:
        """Create an orchestration instance and schedule its first episode.

        Raises:
            UnknownFunction: no orchestrator is registered under ``name``.
            InstanceExists: a Pending/Running instance already uses ``instance_id``.
        """
        if name not in self.index.orchestrators:
            raise UnknownFunction(
                f"The function '{name}' doesn't exist, is disabled, or is not an orchestrator function."
            )
        instance_id = instance_id or uuid.uuid4().hex
        existing = await self.store.get_instance(instance_id)
        if existing is not None and not existing.is_terminal:
            raise InstanceExists(
                f"An Orchestration instance with the status {existing.status} already exists."
            )
        await self._create_instance(instance_id, name, input_json, None)
        return instance_id

    async def _create_instance(
        self, instance_id: str, name: str, input_json: str | None, parent: tuple[str, str, int] | None
    ) -> None:
        now = h.iso(self.clock.now())
        record = InstanceRecord(
            instance_id=instance_id,
            name=name,
            status="Pending",
            input=input_json,
            created_time=now,
            last_updated_time=now,
            execution_id=uuid.uuid4().hex,
        )
        if parent is not None:
            record.parent_instance_id, record.parent_execution_id, record.parent_task_id = parent
        if await self.store.get_instance(instance_id) is not None:
            await self.store.delete_instance(instance_id)
        self._history_cache.pop(instance_id, None)
        await self.store.save_instance(record, [])
        self.stats.orchestrations_started += 1
        await self._deliver(instance_id, self._start_message(record))

    def _start_message(self, record: InstanceRecord) -> dict[str, Any]:
        return {"execution_id": record.execution_id, "event": self._execution_started(record)}

    def _execution_started(self, record: InstanceRecord) -> dict[str, Any]:
        parent = None
        if record.parent_instance_id:
            parent = {
                "OrchestrationInstance": {"InstanceId": record.parent_instance_id},
                "TaskScheduleId": record.parent_task_id,
            }
        return h.event(
            EventType.EXECUTION_STARTED,
            self.clock.now(),
            Name=record.name,
            Input=record.input,
            Version="",
            OrchestrationInstance={"InstanceId": record.instance_id, "ExecutionId": record.execution_id},
            ParentInstance=parent,
        )

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """Return the instance record (status, output, custom status), or None."""
        return await self.store.get_instance(instance_id)

    async def get_history(self, instance_id: str) -> list[dict[str, Any]]:
        """Return the current execution's history events."""
        record = await self.store.get_instance(instance_id)
        return await self.store.load_history(record) if record else []

    async def list_instances(self) -> list[InstanceRecord]:
        """Every instance record."""
        return await self.store.list_instances()

    async def raise_event(self, instance_id: str, event_name: str, data_json: str | None) -> None:
        """Send an external event to an instance.

        Raises:
            InstanceNotFound: unknown id. InstanceGone: the instance already finished.
        """
        record = await self._require(instance_id)
        evt = h.event(EventType.EVENT_RAISED, self.clock.now(), Name=event_name, Input=data_json)
        await self._deliver(record.instance_id, {"event": evt})

    async def terminate(self, instance_id: str, reason: str) -> None:
        """Terminate a running instance (status ``Terminated``, output = reason)."""
        record = await self._require(instance_id)
        evt = h.event(EventType.EXECUTION_TERMINATED, self.clock.now(), Input=json.dumps(reason))
        await self._deliver(record.instance_id, {"event": evt})

    async def purge(self, instance_id: str) -> bool:
        """Delete an instance's record and history."""
        self._history_cache.pop(instance_id, None)
        return await self.store.delete_instance(instance_id)

    async def _require(self, instance_id: str) -> InstanceRecord:
        record = await self.store.get_instance(instance_id)
        if record is None:
            raise InstanceNotFound(instance_id)
        if record.is_terminal:
            raise InstanceGone(instance_id)
        return record

    async def signal_entity(self, name: str, key: str, operation: str, input_json: str | None = None) -> None:
        """Queue a one-way operation for an entity (``client.signal_entity``)."""
        await self._deliver(
            scheduler_id(name, key),
            {"id": uuid.uuid4().hex, "op": operation, "input": input_json, "signal": True},
        )

    async def read_entity_state(self, name: str, key: str) -> tuple[bool, str | None]:
        """Return (exists, state JSON) of an entity."""
        record = await self.store.get_entity(scheduler_id(name, key))
        if record is None or not record.exists:
            return False, None
        return True, record.state

    async def wait_for(self, instance_id: str, within: float = 30.0) -> InstanceRecord:
        """Wait until an instance is Completed, Failed or Terminated and return its record."""
        assert self._changed is not None, "runtime not started"
        deadline = time.monotonic() + within
        async with self._changed:
            while True:
                record = await self.store.get_instance(instance_id)
                if record is not None and record.is_terminal:
                    return record
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    status = record.status if record else "missing"
                    raise TimeoutError(f"instance {instance_id} still {status} after {within}s")
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
                # arrives just as the condition is notified, and the caller would wait on.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, 0.5)):
                        await self._changed.wait()

    async def _notify(self) -> None:
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    # ------------------------------------------------------------------ messaging

    async def _deliver(self, target: str, body: dict[str, Any]) -> None:
        await self.store.add_messages(target, [(_message_id(), body)])
        self._kick(target)

    def _kick(self, target: str) -> None:
        if not self._started:
            return
        if target in self._active:
            self._dirty.add(target)
            return
        self._active.add(target)
        self._spawn(self._drain(target), name=f"drain {target}")

    async def _drain(self, target: str) -> None:
        try:
            while True:
                self._dirty.discard(target)
                await self.latency.before_work(
                    WorkKind.ENTITY if target.startswith("@") else WorkKind.ORCHESTRATOR
                )
                if target.startswith("@"):
                    await self._process_entity(target)
                else:
                    await self._process_orchestration(target)
                if target not in self._dirty:
                    break
        finally:
            self._active.discard(target)

    # ------------------------------------------------------------------ orchestrations

    async def _history_for(self, record: InstanceRecord) -> list[dict[str, Any]]:
        cached = self._history_cache.get(record.instance_id)
        if cached and cached[0] == record.execution_id and len(cached[1]) == record.history_length:
            return cached[1]
        history = await self.store.load_history(record)
        self._history_cache[record.instance_id] = (record.execution_id, history)
        return history

    async def _process_orchestration(self, instance_id: str) -> None:
        messages = await self.store.read_messages(instance_id, EPISODE_MESSAGES)
        if not messages:
            return
        if len(messages) == EPISODE_MESSAGES:
            self._dirty.add(instance_id)  # more are waiting: another episode right after this one
        message_ids = [m.message_id for m in messages]
        record = await self.store.get_instance(instance_id)
        if record is None or record.is_terminal:
            # Like the extension: work for a finished (or purged) instance is discarded.
            await self.store.delete_messages(instance_id, message_ids)
            return
        history = list(await self._history_for(record))
        seen = {key for key in map(h.completion_key, history) if key is not None}
        scheduled = {key for key in map(h.scheduling_key, history) if key is not None}
        fresh: list[dict[str, Any]] = []
        held: set[str] = set()
        terminate: dict[str, Any] | None = None
        for message in messages:
            execution = message.body.get("execution_id")
            if execution is not None and execution != record.execution_id:
                continue  # a result for an execution that continued-as-new
            evt = message.body["event"]
            if evt["EventType"] == EventType.EXECUTION_STARTED and history:
                continue  # a second start of a running execution
            if evt["EventType"] == EventType.EXECUTION_TERMINATED:
                terminate = evt
                continue
            key = h.completion_key(evt)
            if key is not None:
                if key in seen:
                    continue  # at-least-once delivery: already applied
                if key not in scheduled:
                    # An entity's answer to an operation sent by an episode that died before its
                    # commit (rule 2): the SDK can only match it once the EventSent is in history.
                    held.add(message.message_id)
                    continue
                seen.add(key)
            fresh.append(evt)
        if held:
            message_ids = [m for m in message_ids if m not in held]
        if not history and not any(e["EventType"] == EventType.EXECUTION_STARTED for e in fresh):
            fresh.insert(0, self._execution_started(record))
        fresh.sort(key=lambda e: e["EventType"] != EventType.EXECUTION_STARTED)
        now = self.clock.now()

        if held and (fresh or terminate is not None):
            self._dirty.add(instance_id)  # this episode commits progress: look at the held ones again
        if terminate is not None:
            events = [h.event(EventType.ORCHESTRATOR_STARTED, now), terminate]
            record.status = "Terminated"
            record.output = terminate.get("Input")
            await self._commit(record, history, events, now, message_ids)
            await self._notify_parent(record, failed_reason="terminated")
            await self._notify()
            return
        if not fresh:
            await self.store.delete_messages(instance_id, message_ids)
            return

        info = self.index.orchestrators.get(record.name)
        episode = [h.event(EventType.ORCHESTRATOR_STARTED, now), *fresh]
        replay = [{**e, "IsPlayed": True} for e in history] + episode
        if info is None:
            events = [*episode]
            record.status = "Failed"
            record.output = json.dumps(
                f"The orchestrator function '{record.name}' doesn't exist in this app."
            )
            await self._commit(record, history, events, now, message_ids)
            await self._notify_parent(record, failed_reason=json.loads(record.output))
            await self._notify()
            return
        result = run_episode(info.callable, self._context(record, replay))
        self.stats.episodes += 1
        self.stats.episodes_by_instance[instance_id] += 1
        self.stats.history_events_replayed += len(replay)
        self.stats.history_events_by_instance[instance_id] = len(replay)
        self.stats.actions += result.action_count
        decision = replay_actions(
            replay,
            result.state,
            self.extension,
            name=record.name,
            instance_id=record.instance_id,
            execution_id=record.execution_id,
            parent_instance_id=record.parent_instance_id,
            request_id=lambda task_id: self._request_id(record, task_id),
            error=result.error or "",
            details=result.details,
        )
        await self._apply(record, history, episode, decision, result.custom_status, now, message_ids)

    def _context(self, record: InstanceRecord, replay: list[dict[str, Any]]) -> dict[str, Any]:
        # OrchestrationTriggerAttributeBindingProvider.OrchestrationContextToString: the schema fields
        # (upperSchemaVersion V2 and, for SDKs that know it, upperSchemaVersionNew V3) and the provider's
        # timer limits, with which the SDK splits long timers.
        context: dict[str, Any] = {
            "history": replay,
            "input": record.input,
            "instanceId": record.instance_id,
            "isReplaying": bool(replay[1].get("IsPlayed")),
            "parentInstanceId": record.parent_instance_id,
            "upperSchemaVersion": min(self.replay_schema, SCHEMA_V2),
            **self.extension.timer_limits.context_fields(),
            "defaultHttpAsyncRequestSleepTimeMillseconds": 30000,
        }
        if self.replay_schema > SCHEMA_V2:
            context["upperSchemaVersionNew"] = self.replay_schema
        return context

    async def _apply(
        self,
        record: InstanceRecord,
        history: list[dict[str, Any]],
        episode: list[dict[str, Any]],
        decision: Decision,
        custom_status: Any,
        now: datetime,
        message_ids: list[str],
    ) -> None:
        """Commit what the extension decided for an episode, then start its work."""
        instance_id = record.instance_id
        work = [] if decision.nondeterministic else decision.actions
        scheduled_events = [self._scheduled_event(record, task, now) for task in work]
        record.custom_status = json.dumps(custom_status) if custom_status is not None else None
        events = [*episode, *scheduled_events, h.event(EventType.ORCHESTRATOR_COMPLETED, now)]
        if decision.nondeterministic:
            self.stats.nondeterminism_failures += 1
            log.error("orchestration %s (%s) failed: %s", instance_id, record.name, decision.error)

        if decision.outcome is Outcome.FAILED:
            record.status = "Failed"
            reason = decision.error or "failed"
            record.output = json.dumps(reason)
            events.append(
                h.event(EventType.EXECUTION_COMPLETED, now, OrchestrationStatus="Failed", Result=reason,
                        FailureDetails={"ErrorMessage": reason, "StackTrace": decision.details})
            )  # fmt: skip
            self.stats.orchestrations_failed += 1
            log.warning("orchestration %s failed: %s", instance_id, reason)
            await self._send_entity_operations(record, work)  # signals sent before the failure still go
            await self._commit(record, history, events, now, message_ids)
            await self._notify_parent(record, failed_reason=reason, details=decision.details)
        elif decision.outcome is Outcome.CONTINUED_AS_NEW:
            self.stats.continue_as_new += 1
            await self._send_entity_operations(record, work)  # before the commit: rule 2
            record.input = decision.continue_as_new_input
            record.execution_id = uuid.uuid4().hex
            record.status = "Running"
            record.history_length = 0
            record.last_updated_time = h.iso(now)
            self._history_cache.pop(instance_id, None)
            await self.store.save_instance(record, [], message_ids)
            # Lost if the host dies right here; recovery then starts the empty execution itself. Events
            # raised after continue_as_new in the episode go to the new execution (DTFx's carry-over).
            carried = [
                (_message_id(), {"execution_id": record.execution_id, "event": {**evt, "IsPlayed": False}})
                for evt in decision.carryover
            ]
            await self.store.add_messages(
                instance_id, [(_message_id(), self._start_message(record)), *carried]
            )
            self._kick(instance_id)
        elif decision.outcome is Outcome.COMPLETED:
            record.status = "Completed"
            record.output = json.dumps(decision.output)
            events.append(
                h.event(
                    EventType.EXECUTION_COMPLETED, now, OrchestrationStatus="Completed", Result=record.output
                )
            )
            self.stats.orchestrations_completed += 1
            await self._send_entity_operations(record, work)  # signals of the last episode still go out
            await self._commit(record, history, events, now, message_ids)
            await self._notify_parent(record)
        else:
            record.status = "Running"
            await self._send_entity_operations(record, work)
            await self._commit(record, history, events, now, message_ids)
            for task in work:
                if not task.kind.startswith("entity"):
                    await self._dispatch(record, task)
        await self._notify()

    async def _send_entity_operations(self, record: InstanceRecord, work: list[ScheduledTask]) -> None:
        # Rule 2 of the module docstring: entity operations are durable before the history says so.
        for task in work:
            if task.kind.startswith("entity"):
                await self._dispatch(record, task)

    async def _commit(
        self,
        record: InstanceRecord,
        history: list[dict[str, Any]],
        events: list[dict[str, Any]],
        now: datetime,
        consumed: list[str],
    ) -> None:
        record.history_length = len(history) + len(events)
        record.last_updated_time = h.iso(now)
        await self.store.save_instance(record, events, consumed)
        self._history_cache[record.instance_id] = (record.execution_id, history + events)

    def _request_id(self, record: InstanceRecord, task_id: int) -> str:
        # Deterministic, so a re-delivery after a restart is recognised by the entity.
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{record.instance_id}/{record.execution_id}/{task_id}"))

    def _scheduled_event(self, record: InstanceRecord, task: ScheduledTask, now: datetime) -> dict[str, Any]:
        tid = task.task_id
        if task.kind == "activity":
            return h.event(EventType.TASK_SCHEDULED, now, tid, Name=task.name, Input=task.input)
        if task.kind == "suborchestration":
            task.target = task.target or f"{record.instance_id}:{tid}"
            return h.event(
                EventType.SUB_ORCHESTRATION_INSTANCE_CREATED, now, tid,
                Name=task.name, InstanceId=task.target, Input=task.input,
            )  # fmt: skip
        if task.kind == "timer":
            assert task.fire_at is not None
            return h.event(EventType.TIMER_CREATED, now, tid, FireAt=h.iso(task.fire_at))
        request = {
            "id": self._request_id(record, tid),
            "op": task.name,
            "signal": task.kind == "entity_signal",
        }
        return h.event(
            EventType.EVENT_SENT, now, tid, InstanceId=task.target, Name=ENTITY_REQUEST_EVENT,
            Input=json.dumps({**request, "input": task.input}),
        )  # fmt: skip

    async def _dispatch(self, record: InstanceRecord, task: ScheduledTask) -> None:
        iid, execution = record.instance_id, record.execution_id
        if task.kind == "activity":
            self._spawn(
                self._run_activity(iid, execution, task.task_id, task.name, task.input),
                name=f"activity {task.name}",
            )
        elif task.kind == "timer":
            # Cancelled ones too: the extension schedules a timer before the SDK's cancel reaches it.
            assert task.fire_at is not None
            self._arm_timer(iid, execution, task.task_id, task.fire_at)
        elif task.kind == "suborchestration":
            assert task.target is not None
            await self._ensure_child(record, task.task_id, task.name, task.target, task.input)
        elif task.kind in {"entity_call", "entity_signal"}:
            assert task.target is not None
            await self._deliver(
                task.target,
                {
                    "id": self._request_id(record, task.task_id),
                    "op": task.name,
                    "input": task.input,
                    "signal": task.kind == "entity_signal",
                    "parent": iid,
                    "parent_execution": execution,
                },
            )

    def _arm_timer(self, instance_id: str, execution: str, timer_id: int, fire_at: datetime) -> None:
        async def fire() -> None:
            self.stats.timers_fired += 1
            evt = h.event(EventType.TIMER_FIRED, self.clock.now(), TimerId=timer_id, FireAt=h.iso(fire_at))
            await self._deliver(instance_id, {"execution_id": execution, "event": evt})

        self._timers.arm(fire_at + self.latency.timer_delay(), fire)

    async def _ensure_child(
        self, parent: InstanceRecord, task_id: int, name: str, child_id: str, input_json: str | None
    ) -> None:
        child = await self.store.get_instance(child_id)
        if (
            child is not None
            and child.parent_instance_id == parent.instance_id
            and child.parent_execution_id == parent.execution_id
            and child.parent_task_id == task_id
        ):
            if child.is_terminal:
                await self._notify_parent(child)
            return
        if name not in self.index.orchestrators:
            evt = h.event(
                EventType.SUB_ORCHESTRATION_INSTANCE_FAILED, self.clock.now(), TaskScheduledId=task_id,
                Reason=f"The orchestrator function '{name}' doesn't exist.", Details="",
            )  # fmt: skip
            await self._deliver(parent.instance_id, {"execution_id": parent.execution_id, "event": evt})
            return
        await self._create_instance(
            child_id, name, input_json, (parent.instance_id, parent.execution_id, task_id)
        )

    async def _notify_parent(
        self, record: InstanceRecord, failed_reason: str | None = None, details: str = ""
    ) -> None:
        if not record.parent_instance_id or record.parent_task_id is None:
            return
        now = self.clock.now()
        if record.status == "Completed":
            evt = h.event(
                EventType.SUB_ORCHESTRATION_INSTANCE_COMPLETED, now, TaskScheduledId=record.parent_task_id,
                Result=record.output,
            )  # fmt: skip
        else:
            evt = h.event(
                EventType.SUB_ORCHESTRATION_INSTANCE_FAILED, now, TaskScheduledId=record.parent_task_id,
                Reason=failed_reason or record.status, Details=details,
            )  # fmt: skip
        await self._deliver(
            record.parent_instance_id, {"execution_id": record.parent_execution_id, "event": evt}
        )

    # ------------------------------------------------------------------ activities

    async def _run_activity(
        self, instance_id: str, execution: str, task_id: int, name: str, input_json: str | None
    ) -> None:
        await self.latency.before_work(WorkKind.ACTIVITY)
        now = self.clock.now
        info = self.index.activities.get(name)
        async with self._activity_slots:
            self.stats.activity_invocations += 1
            if info is None:
                evt = h.event(
                    EventType.TASK_FAILED, now(), TaskScheduledId=task_id,
                    Reason=f"The function '{name}' doesn't exist, is disabled, or is not an activity function.",
                    Details="",
                )  # fmt: skip
            else:
                outcome = await invoke_activity(info, input_json)
                if outcome.ok:
                    evt = h.event(
                        EventType.TASK_COMPLETED, now(), TaskScheduledId=task_id, Result=outcome.result
                    )
                else:
                    self.stats.activity_failures += 1
                    evt = h.event(
                        EventType.TASK_FAILED, now(), TaskScheduledId=task_id,
                        Reason=outcome.reason, Details=outcome.details,
                    )  # fmt: skip
        await self._deliver(instance_id, {"execution_id": execution, "event": evt})

    # ------------------------------------------------------------------ entities

    async def _process_entity(self, entity_id: str) -> None:
        messages = await self.store.read_messages(entity_id, ENTITY_BATCH_SIZE)
        if not messages:
            return
        record = await self.store.get_entity(entity_id) or EntityRecord(entity_id)
        batch: list[dict[str, Any]] = []
        replies: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for message in messages:
            body = message.body
            if body["id"] in record.processed:
                answer = record.processed[body["id"]]
                if answer is not None and body.get("parent"):
                    replies.append((body, answer))
                continue
            batch.append(body)
        if batch:
            name, _ = parse_scheduler_id(entity_id)
            info = self.index.entities.get(name.lower())
            outcome = run_entity_batch(info, entity_id, record.state, record.exists, batch)
            record.exists, record.state = outcome.exists, outcome.state
            for body, result in zip(batch, outcome.results, strict=True):
                answer = None
                if not body.get("signal"):
                    answer = {"result": result.get("result")}
                    if result.get("isError"):
                        answer["exceptionType"] = "Exception"
                    if body.get("parent"):
                        replies.append((body, answer))
                record.processed[body["id"]] = answer
            while len(record.processed) > ENTITY_DEDUP_WINDOW:
                record.processed.pop(next(iter(record.processed)))
            self.stats.entity_operations += len(batch)
        # Replies first, then the commit (rule 2): after a crash in between the batch runs again on
        # the old state, answers the same, and the caller drops the second answer by request id.
        for body, answer in replies:
            evt = h.event(
                EventType.EVENT_RAISED, self.clock.now(), Name=body["id"], Input=json.dumps(answer),
                EntityResponse=True,
            )  # fmt: skip
            await self._deliver(body["parent"], {"execution_id": body.get("parent_execution"), "event": evt})
        await self.store.save_entity(record, [m.message_id for m in messages])
        if len(messages) == ENTITY_BATCH_SIZE:
            self._dirty.add(entity_id)

    # ------------------------------------------------------------------ recovery

    async def _recover(self) -> None:
        targets = set(await self.store.targets_with_messages())
        for record in await self.store.list_instances():
            if record.is_terminal:
                continue
            history = await self._history_for(record)
            if not history and record.instance_id not in targets:
                await self.store.add_messages(
                    record.instance_id, [(_message_id(), self._start_message(record))]
                )
                targets.add(record.instance_id)
            inbox = await self.store.read_messages(record.instance_id)
            done = {key for key in map(h.completion_key, history) if key is not None}
            done |= {
                key for key in (h.completion_key(m.body["event"]) for m in inbox if "event" in m.body) if key
            }
            for evt in history:
                etype, tid = evt["EventType"], evt["EventId"]
                if etype == EventType.TASK_SCHEDULED and ("task", tid) not in done:
                    self._spawn(
                        self._run_activity(
                            record.instance_id, record.execution_id, tid, evt["Name"], evt.get("Input")
                        ),
                        name=f"activity {evt['Name']}",
                    )
                elif etype == EventType.TIMER_CREATED and ("timer", tid) not in done:
                    self._arm_timer(record.instance_id, record.execution_id, tid, h.parse_iso(evt["FireAt"]))
                elif etype == EventType.SUB_ORCHESTRATION_INSTANCE_CREATED and ("task", tid) not in done:
                    await self._ensure_child(record, tid, evt["Name"], evt["InstanceId"], evt.get("Input"))
                # EventSent needs nothing: the operation reached the entity's inbox before the history
                # recorded it (rule 2), and the entity's reply goes to this inbox before its commit.
        for target in sorted(targets):
            self._kick(target)
