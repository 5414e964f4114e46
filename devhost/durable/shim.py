"""What the Durable extension does with the actions a Python orchestrator returns.

The Python SDK does not schedule anything itself. Each episode it replays the whole history and returns
every action the code has yielded so far (``OutOfProcOrchestratorState``). The extension then *replays
those actions* inside an ordinary DurableTask.Core (DTFx) orchestration: it walks the list in order,
calls the matching DTFx API for each action and **awaits it before looking at the next one**, while DTFx
feeds the history events through, one by one. Task ids (the ``EventId`` of ``TaskScheduled``,
``TimerCreated``, ``SubOrchestrationInstanceCreated``, ``EventSent``) come from DTFx's counter in the
order the walk reaches the actions, and ``call_activity_with_retry`` gets its retry timers and
re-attempts from DTFx's retry interceptor when the failure is replayed. Whatever the walk has not reached
at the end of the history is not scheduled yet. When the SDK's own numbering (yield order) disagrees
with this order, its completions land on the wrong tasks: the real extension then fails with a
non-determinism error, or the SDK reports "Potential duplicate Task completion" and the orchestration
hangs (Azure/azure-functions-durable-python issue 603). This module reproduces that, so devhost fails
where Azure fails.

Followed sources. Azure/azure-functions-durable-extension, ``src/WebJobs.Extensions.DurableTask/``:

* ``Listener/OutOfProcOrchestrationShim.cs``: ``ScheduleDurableTaskEvents`` (walk, then error, then
  ``isDone``; otherwise wait forever), ``ReplayOOProcOrchestration`` (schema V2/V3: one list, else V1),
  ``ProcessAsyncActionsV2`` (await each action, exceptions ignored), ``ProcessAsyncActionsV1`` (per
  action set: invoke all, await ``WhenAny``), ``InvokeAPIFromAction`` (one DTFx call per action type,
  ``WhenAll``/``WhenAny`` recursively; a cancelled timer is created, then its token cancelled).
* ``Listener/TaskOrchestrationShim.cs``: ``InvokeUserCodeAndHandleResults`` (the state after
  ``$OutOfProcData$:`` of a failed invocation is replayed too; other exceptions fail the orchestration
  with "Orchestrator function '...' failed: ...").
* ``ContextImplementations/DurableOrchestrationContext.cs``: ``CallDurableTaskFunctionAsync`` (retry
  intervals checked against the provider's maximum delay, unknown functions, entity calls as
  ``SendEvent`` + ``WaitForEntityResponse``), ``SignalEntity``, ``CreateTimer<T>`` (long timers),
  ``WaitForExternalEvent``/``RaiseEvent`` (waiters are a stack, early events are buffered),
  ``ContinueAsNew`` (``preserveUnprocessedEvents`` false: buffered events are dropped).
* ``AzureStorageDurabilityProvider.cs``: ``MaximumDelayTime`` 6 days, ``LongRunningTimerIntervalLength``
  3 days, ``ValidateDelayTime``; ``DurableTaskExtension.ThrowIfFunctionDoesNotExist``.

Azure/durabletask, ``src/DurableTask.Core/``:

* ``TaskOrchestrationExecutor.cs``: ``ExecuteCore``/``ProcessEvent`` (``OrchestratorStarted`` sets the
  time; the code starts at ``ExecutionStarted``; the orchestration completes only when no task is open).
* ``TaskOrchestrationContext.cs``: ``idCounter``, ``orchestratorActionsMap``, ``openTasks``, the
  ``Handle*Event`` methods (non-determinism checks with DTFx's messages; completions of unknown tasks
  ignored), ``CreateTimer`` (a cancelled timer stays scheduled), ``CreateSubOrchestrationInstanceCore``
  (default instance id ``executionId:id``), ``HandleEventRaisedEvent`` (events after ``ContinueAsNew``
  carry over, Azure Storage's ``BehaviorOnContinueAsNew.Carryover``).
* ``RetryInterceptor.cs``: ``Invoke``/``ComputeNextDelay`` (a timer after every failed attempt, an
  immediate one after the last).

C# ``async`` methods are modelled as generators that yield the tasks they await; continuations run
synchronously when a task completes, as under DTFx's ``SynchronousTaskScheduler``.
"""

from __future__ import annotations

import contextlib
import enum
from collections import deque
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from devhost.durable.history import EventType, parse_iso

__all__ = [
    "Decision",
    "ExtensionSettings",
    "NonDeterminismError",
    "ScheduledTask",
    "TimerLimits",
    "replay_actions",
    "timespan",
]

# OutOfProcOrchestrationShim.AsyncActionType
CALL_ACTIVITY, CALL_ACTIVITY_WITH_RETRY, CALL_SUB_ORCHESTRATOR, CALL_SUB_ORCHESTRATOR_WITH_RETRY = 0, 1, 2, 3
CONTINUE_AS_NEW, CREATE_TIMER, WAIT_FOR_EXTERNAL_EVENT, CALL_ENTITY, CALL_HTTP = 4, 5, 6, 7, 8
SIGNAL_ENTITY, SCHEDULED_SIGNAL_ENTITY, WHEN_ANY, WHEN_ALL = 9, 10, 11, 12
# OutOfProcOrchestrationShim.SchemaVersion (the SDK's "schemaVersion"; its ReplaySchema V1, V2, V3)
SCHEMA_ORIGINAL, SCHEMA_V2, SCHEMA_V3 = 0, 1, 2
# EntityMessageEventNames.RequestMessageEventName: the name of every entity request's EventSent.
ENTITY_REQUEST_EVENT = "op"


def timespan(delta: timedelta) -> str:
    """Format ``delta`` as .NET ``TimeSpan.ToString("c")`` (what Newtonsoft writes; the SDK parses it)."""
    ticks = round(delta.total_seconds() * 10_000_000)
    sign = "-" if ticks < 0 else ""
    seconds, fraction = divmod(abs(ticks), 10_000_000)
    days, seconds = divmod(seconds, 86_400)
    hours, seconds = divmod(seconds, 3_600)
    minutes, seconds = divmod(seconds, 60)
    text = f"{sign}{f'{days}.' if days else ''}{hours:02d}:{minutes:02d}:{seconds:02d}"
    return text + (f".{fraction:07d}" if fraction else "")


@dataclass(frozen=True)
class TimerLimits:
    """The storage provider's timer limits; the defaults are Azure Storage's.

    ``maximum_short_timer`` is ``AzureStorageDurabilityProvider.MaximumDelayTime`` (sent to the SDK as
    ``maximumShortTimerDuration``), ``long_timer_interval`` its ``LongRunningTimerIntervalLength``
    (``longRunningTimerIntervalDuration``). The SDK splits a timer further away than the first into
    timers of the second; retry intervals above the first are refused. Tests shrink both.
    """

    maximum_short_timer: timedelta = timedelta(days=6)
    long_timer_interval: timedelta = timedelta(days=3)

    def context_fields(self) -> dict[str, str]:
        """The orchestration context fields (``OrchestrationTriggerAttributeBindingProvider``)."""
        return {
            "longRunningTimerIntervalDuration": timespan(self.long_timer_interval),
            "maximumShortTimerDuration": timespan(self.maximum_short_timer),
        }


@dataclass(frozen=True)
class ExtensionSettings:
    """What the extension knows besides the orchestrator's output: the app's functions and the provider.

    Function names are compared case-insensitively, as ``FunctionName`` does.
    """

    activities: frozenset[str] = frozenset()
    orchestrators: frozenset[str] = frozenset()
    entities: frozenset[str] = frozenset()
    timer_limits: TimerLimits = TimerLimits()
    carry_over_events: bool = True  # Azure Storage: BehaviorOnContinueAsNew.Carryover

    @classmethod
    def of(
        cls, activities: Iterable[str], orchestrators: Iterable[str], entities: Iterable[str], **kw: Any
    ) -> ExtensionSettings:
        """Build the settings from function names."""
        return cls(
            frozenset(n.lower() for n in activities),
            frozenset(n.lower() for n in orchestrators),
            frozenset(n.lower() for n in entities),
            **kw,
        )


class NonDeterminismError(Exception):
    """The replay scheduled something other than what the history recorded (DTFx's exception)."""

    def __init__(self, details: str) -> None:
        super().__init__("Non-Deterministic workflow detected: " + details)


@dataclass
class ScheduledTask:
    """An action DTFx scheduled (``OrchestratorAction``) under the id its counter gave it."""

    task_id: int
    kind: str  # activity | suborchestration | timer | entity_call | entity_signal
    name: str = ""  # function name, or the entity operation
    input: str | None = None  # JSON text
    target: str | None = None  # sub-orchestration instance id or entity scheduler id
    fire_at: datetime | None = None

    def describe(self) -> str:
        """The DTFx action type, for error messages."""
        return {
            "activity": "ScheduleTaskOrchestratorAction",
            "suborchestration": "CreateSubOrchestrationAction",
            "timer": "CreateTimerOrchestratorAction",
        }.get(self.kind, "SendEventOrchestratorAction")


class Outcome(enum.Enum):
    """How an episode leaves the orchestration."""

    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CONTINUED_AS_NEW = "ContinuedAsNew"


@dataclass
class Decision:
    """What the extension makes of one episode (DTFx's ``OrchestratorExecutionResult``)."""

    outcome: Outcome = Outcome.RUNNING
    actions: list[ScheduledTask] = field(default_factory=list)  # new work, by id
    output: Any = None  # COMPLETED: the orchestrator's return value
    continue_as_new_input: str | None = None  # CONTINUED_AS_NEW: the new input (JSON text)
    error: str | None = None  # FAILED: the reason
    details: str = ""
    nondeterministic: bool = False
    carryover: list[dict[str, Any]] = field(default_factory=list)  # EventRaised for the next execution


# ---------------------------------------------------------------------------------------------- .NET tasks


class _DotNetError(Exception):
    """An exception inside the simulated C# code (caught by the shim's walk like any exception)."""


class _Canceled(_DotNetError):
    """``TaskCanceledException``."""


class _OrchestrationFailure(_DotNetError):
    """``OrchestrationFailureException``: the orchestrator reported an error."""

    def __init__(self, message: str, details: str) -> None:
        super().__init__(message)
        self.details = details


class _State(enum.Enum):
    PENDING = 0
    SUCCEEDED = 1
    FAULTED = 2
    CANCELED = 3


class _Task:
    """A .NET ``Task``: pending, then succeeded, faulted or cancelled; continuations run synchronously."""

    __slots__ = ("_continuations", "error", "result", "state")

    def __init__(self) -> None:
        self.state = _State.PENDING
        self.result: Any = None
        self.error: _DotNetError | None = None
        self._continuations: list[Callable[[_Task], None]] = []

    @property
    def done(self) -> bool:
        return self.state is not _State.PENDING

    def _finish(self, state: _State, result: Any = None, error: _DotNetError | None = None) -> bool:
        if self.done:
            return False
        self.state, self.result, self.error = state, result, error
        continuations, self._continuations = self._continuations, []
        for continuation in continuations:
            continuation(self)
        return True

    def succeed(self, result: Any = None) -> bool:
        return self._finish(_State.SUCCEEDED, result)

    def fail(self, error: _DotNetError) -> bool:
        return self._finish(_State.FAULTED, error=error)

    def cancel(self) -> bool:
        return self._finish(_State.CANCELED)

    def exception(self) -> _DotNetError:
        if self.state is _State.CANCELED:
            return _Canceled("A task was canceled.")
        assert self.error is not None
        return self.error

    def then(self, continuation: Callable[[_Task], None]) -> None:
        if self.done:
            continuation(self)
        else:
            self._continuations.append(continuation)


def _completed(result: Any = None) -> _Task:
    task = _Task()
    task.succeed(result)
    return task


_COMPLETED = _completed()  # Task.CompletedTask: what fire-and-forget actions return


Async = Generator[_Task, Any, Any]


def _run_async(body: Async) -> _Task:
    """Start a C# ``async`` method: run it up to its first pending ``await``; return its task."""
    task = _Task()

    def step(previous: _Task | None) -> None:
        while True:
            try:
                if previous is None:
                    awaited = next(body)
                elif previous.state is _State.SUCCEEDED:
                    awaited = body.send(previous.result)
                else:
                    awaited = body.throw(previous.exception())
            except StopIteration as stop:
                task.succeed(stop.value)
                return
            except _Canceled:
                task.cancel()
                return
            except _DotNetError as exc:
                task.fail(exc)
                return
            if not awaited.done:
                awaited.then(step)
                return
            previous = awaited

    step(None)
    return task


def _when_all(tasks: list[_Task]) -> _Task:
    """``Task.WhenAll``: done when every task is; faulted if one faulted, else cancelled if one was."""
    result = _Task()
    pending = [len(tasks)]

    def child_done(_: _Task) -> None:
        pending[0] -= 1
        if pending[0]:
            return
        faulted = [t for t in tasks if t.state is _State.FAULTED]
        if faulted:
            result.fail(faulted[0].exception())
        elif any(t.state is _State.CANCELED for t in tasks):
            result.cancel()
        else:
            result.succeed([t.result for t in tasks])

    if not tasks:
        result.succeed([])
    for task in tasks:
        task.then(child_done)
    return result


def _when_any(tasks: list[_Task]) -> _Task:
    """``Task.WhenAny``: succeeds with the first task to complete, however it completed."""
    if not tasks:
        # Task.WhenAny throws synchronously; the shim lets it escape and the orchestration fails.
        raise _DotNetError("The tasks argument contains no tasks. (Parameter 'tasks')")
    result = _Task()
    for task in tasks:
        task.then(result.succeed)
    return result


class _CancellationToken:
    """A ``CancellationTokenSource``'s token: callbacks run on cancel, or at once if already cancelled."""

    def __init__(self) -> None:
        self.cancelled = False
        self._callbacks: list[Callable[[], None]] = []

    def register(self, callback: Callable[[], None]) -> None:
        if self.cancelled:
            callback()
        else:
            self._callbacks.append(callback)

    def cancel(self) -> None:
        self.cancelled = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


# ---------------------------------------------------------------------------------------------- the replay


@dataclass(frozen=True)
class _Retry:
    """The SDK's ``retryOptions`` as ``RetryOptionsConverter`` reads them (extension defaults otherwise)."""

    first_interval: timedelta
    max_attempts: int
    backoff: float = 1.0
    # RetryOptions.DefaultMaxRetryinterval is 6 days, Azure Storage's maximum delay: None stands for
    # that maximum, so that shrunk timer limits keep the two equal.
    max_interval: timedelta | None = None
    timeout: timedelta | None = None  # TimeSpan.MaxValue

    @classmethod
    def parse(cls, data: dict[str, Any]) -> _Retry:
        for required in ("firstRetryIntervalInMilliseconds", "maxNumberOfAttempts"):
            if required not in data:
                raise _DotNetError(f"Invalid JSON. Must contain field {required}")
        retry = cls(
            timedelta(milliseconds=int(data["firstRetryIntervalInMilliseconds"])),
            int(data["maxNumberOfAttempts"]),
            float(data.get("backoffCoefficient", 1.0)),
        )
        if "maxRetryIntervalInMilliseconds" in data:
            retry = replace(
                retry, max_interval=timedelta(milliseconds=int(data["maxRetryIntervalInMilliseconds"]))
            )
        if "retryTimeoutInMilliseconds" in data:
            retry = replace(retry, timeout=timedelta(milliseconds=int(data["retryTimeoutInMilliseconds"])))
        return retry


class _Replay:
    """DTFx's ``TaskOrchestrationContext`` plus the extension's ``DurableOrchestrationContext`` and shim."""

    def __init__(
        self,
        settings: ExtensionSettings,
        name: str,
        instance_id: str,
        execution_id: str,
        parent_instance_id: str | None,
        request_id: Callable[[int], str],
    ) -> None:
        self.settings = settings
        self.limits = settings.timer_limits
        self.name = name
        self.instance_id = instance_id
        self.execution_id = execution_id
        self.parent_instance_id = parent_instance_id
        self.request_id = request_id
        self.now = datetime.min
        self.id_counter = 0
        self.actions: dict[int, ScheduledTask] = {}  # orchestratorActionsMap
        self.open_tasks: dict[int, _Task] = {}
        self.continue_as_new: str | None = None
        self.has_continue_as_new = False
        self.waiters: dict[str, list[_Task]] = {}  # pendingExternalEvents (a stack per name)
        self.buffered: dict[str, deque[str | None]] = {}  # bufferedExternalEvents
        self.long_running_timer = False  # DurableOrchestrationContext.IsLongRunningTimer
        self.carryover: list[dict[str, Any]] = []
        self.output: Any = None

    # -- DTFx TaskOrchestrationContext

    def _next_id(self) -> int:
        task_id = self.id_counter
        self.id_counter += 1
        return task_id

    def _open(self, action: ScheduledTask) -> _Task:
        self.actions[action.task_id] = action
        task = _Task()
        self.open_tasks[action.task_id] = task
        return task

    def schedule_task(self, name: str, input_json: str | None) -> _Task:
        return self._open(ScheduledTask(self._next_id(), "activity", name, input_json))

    def create_sub_orchestration(self, name: str, instance_id: str | None, input_json: str | None) -> _Task:
        task_id = self._next_id()
        target = instance_id or f"{self.execution_id}:{task_id}"
        return self._open(ScheduledTask(task_id, "suborchestration", name, input_json, target))

    def dtfx_create_timer(self, fire_at: datetime, token: _CancellationToken | None = None) -> _Task:
        task_id = self._next_id()
        task = self._open(ScheduledTask(task_id, "timer", fire_at=fire_at))
        if token is not None:

            def on_cancel() -> None:
                # The action stays in orchestratorActionsMap: a cancelled timer is still scheduled.
                if task.cancel():
                    self.open_tasks.pop(task_id, None)

            token.register(on_cancel)
        return task

    def send_event(self, kind: str, target: str, operation: str, input_json: str | None) -> int:
        task_id = self._next_id()
        self.actions[task_id] = ScheduledTask(task_id, kind, operation, input_json, target)
        return task_id

    def retry(self, options: _Retry, attempt: Callable[[], _Task]) -> Async:
        # RetryInterceptor<T>.Invoke
        last: _DotNetError | None = None
        first_attempt = self.now
        for count in range(options.max_attempts):
            try:
                return (yield attempt())
            except _DotNetError as exc:
                last = exc
            if count + 1 == options.max_attempts:
                yield self.dtfx_create_timer(self.now)  # "Dummy timer for back-compat"
                break
            delay = self._next_delay(options, count, first_attempt)
            if not delay:
                break
            yield self.dtfx_create_timer(self.now + delay)
        if last is not None:
            raise last
        return None

    def _next_delay(self, options: _Retry, attempt: int, first_attempt: datetime) -> timedelta:
        # RetryInterceptor<T>.ComputeNextDelay
        if options.timeout is not None and self.now >= first_attempt + options.timeout:
            return timedelta(0)
        assert options.max_interval is not None
        delay_ms = options.first_interval.total_seconds() * 1000 * options.backoff**attempt
        max_ms = options.max_interval.total_seconds() * 1000
        return timedelta(milliseconds=delay_ms) if delay_ms < max_ms else options.max_interval

    # -- the extension's DurableOrchestrationContext

    def _validate_delay(self, delay: timedelta) -> None:
        # AzureStorageDurabilityProvider.ValidateDelayTime
        limit = self.limits.maximum_short_timer
        if delay > limit:
            days = f"{limit.total_seconds() / 86_400:g}"
            raise _DotNetError(
                f"The Azure Storage provider supports a maximum of {days} days for time-based delays"
            )

    def _require_function(self, kind: str, name: str) -> None:
        # DurableTaskExtension.ThrowIfFunctionDoesNotExist
        known = {
            "activity": self.settings.activities,
            "orchestrator": self.settings.orchestrators,
            "entity": self.settings.entities,
        }[kind]
        if (name or "").lower() not in known:
            raise _DotNetError(
                f"The function '{name}' doesn't exist, is disabled, or is not an {kind} function."
            )

    def call_function(
        self,
        kind: str,
        action: dict[str, Any],
        retry: dict[str, Any] | None = None,
        *,
        one_way: bool = False,
    ) -> Async:
        # DurableOrchestrationContext.CallDurableTaskFunctionAsync: everything up to the first await
        # runs when called, and an exception there faults the returned task rather than escaping.
        options = None
        if retry is not None:
            options = _Retry.parse(retry)
            if options.max_interval is None:
                options = replace(options, max_interval=self.limits.maximum_short_timer)
            self._validate_delay(options.max_interval)
            self._validate_delay(options.first_interval)
        input_json = action.get("input")
        if kind == "entity":
            target = str(action.get("instanceId") or "")
            name = target.split("@")[1] if target.count("@") >= 2 else target
        else:
            name = str(action.get("functionName") or "")
        self._require_function(kind, name)
        if kind == "activity":
            if options is None:
                task = self.schedule_task(name, input_json)
            else:
                task = _run_async(self.retry(options, lambda: self.schedule_task(name, input_json)))
        elif kind == "orchestrator":
            instance_id = action.get("instanceId")
            if instance_id is not None and instance_id.lower() in {
                self.instance_id.lower(),
                (self.parent_instance_id or "").lower(),
            }:
                raise _DotNetError(
                    "The instance ID of a sub-orchestration must be different than the instance ID of a "
                    "parent orchestration."
                )
            if instance_id is not None and instance_id.startswith("@"):
                raise _DotNetError("Orchestration instance ids must not start with @")
            if options is None:
                task = self.create_sub_orchestration(name, instance_id, input_json)
            else:
                task = _run_async(
                    self.retry(options, lambda: self.create_sub_orchestration(name, instance_id, input_json))
                )
        else:
            request = self.request_id(self.id_counter)
            operation = str(action.get("operation") or "")
            self.send_event("entity_signal" if one_way else "entity_call", target, operation, input_json)
            if one_way:
                return None
            task = self.wait_for_external_event(request)
        return (yield task)

    def create_timer(self, fire_at: datetime, token: _CancellationToken) -> Async:
        # IDurableOrchestrationContext.CreateTimer<T>, long timers included (for what the SDK did not split).
        interval_fire_at = fire_at
        if fire_at - self.now > self.limits.maximum_short_timer:
            self.long_running_timer = True
            interval_fire_at = self.now + self.limits.long_timer_interval
        if not self.long_running_timer:
            yield self.dtfx_create_timer(fire_at, token)
        else:
            while self.now < fire_at and not token.cancelled:
                yield self.dtfx_create_timer(interval_fire_at, token)
                remaining = fire_at - self.now
                if remaining <= timedelta(0):
                    break
                interval_fire_at = self.now + min(remaining, self.limits.long_timer_interval)
        self.long_running_timer = False
        return None

    def wait_for_external_event(self, name: str) -> _Task:
        task = _Task()
        self.waiters.setdefault(name, []).append(task)
        queue = self.buffered.get(name)
        if queue:
            raw = queue.popleft()
            if not queue:
                del self.buffered[name]
            self.raise_event(name, raw)
        return task

    def raise_event(self, name: str, input_json: str | None) -> None:
        stack = self.waiters.get(name)
        if stack:
            waiter = stack.pop()
            if not stack:
                del self.waiters[name]
            waiter.succeed(input_json)
        else:
            self.buffered.setdefault(name, deque()).append(input_json)

    # -- OutOfProcOrchestrationShim

    def invoke(self, action: dict[str, Any], schema: int) -> _Task:
        # InvokeAPIFromAction: exceptions raised here escape the walk and fail the orchestration.
        kind = action.get("actionType")
        if kind == CALL_ACTIVITY:
            return _run_async(self.call_function("activity", action))
        if kind == CALL_ACTIVITY_WITH_RETRY:
            return _run_async(self.call_function("activity", action, action.get("retryOptions") or {}))
        if kind == CALL_SUB_ORCHESTRATOR:
            return _run_async(self.call_function("orchestrator", action))
        if kind == CALL_SUB_ORCHESTRATOR_WITH_RETRY:
            return _run_async(self.call_function("orchestrator", action, action.get("retryOptions") or {}))
        if kind == CREATE_TIMER:
            fire_at = parse_iso(action["fireAt"])
            if schema < SCHEMA_V3:
                self._validate_delay(fire_at - self.now)
            token = _CancellationToken()
            task = _run_async(self.create_timer(fire_at, token))
            if action.get("isCanceled"):
                token.cancel()
            return task
        if kind == CALL_ENTITY:
            return _run_async(self.call_function("entity", action))
        if kind == SIGNAL_ENTITY:
            signal = _run_async(self.call_function("entity", action, one_way=True))
            if signal.state is _State.FAULTED:
                raise signal.exception()  # SignalEntity rethrows: the orchestration fails
            return _COMPLETED
        if kind == CONTINUE_AS_NEW:
            self.continue_as_new = action.get("input")
            self.has_continue_as_new = True
            return _COMPLETED
        if kind == WAIT_FOR_EXTERNAL_EVENT:
            return self.wait_for_external_event(str(action.get("externalEventName")))
        if kind == WHEN_ALL:
            return _when_all([self.invoke(child, schema) for child in action.get("compoundActions") or []])
        if kind == WHEN_ANY:
            return _when_any([self.invoke(child, schema) for child in action.get("compoundActions") or []])
        if kind in (CALL_HTTP, SCHEDULED_SIGNAL_ENTITY):
            raise _DotNetError("call_http and scheduled entity signals are not available on devhost")
        raise _DotNetError(f"Received an unexpected action type from the out-of-proc function: '${kind}'.")

    def process_actions_v2(self, actions: list[dict[str, Any]], schema: int) -> Async:
        for action in actions:
            task = self.invoke(action, schema)
            with contextlib.suppress(_DotNetError):  # user-code failures are the SDK's business
                yield task

    def process_actions_v1(self, action_sets: list[list[dict[str, Any]]], schema: int) -> Async:
        for action_set in action_sets:
            tasks = [task for task in (self.invoke(a, schema) for a in action_set) if task is not _COMPLETED]
            if tasks:
                yield _when_any(tasks)

    def execute(self, state: dict[str, Any] | None, error: str, details: str) -> Async:
        # TaskOrchestrationShim.InvokeUserCodeAndHandleResults + ScheduleDurableTaskEvents
        if state is None:
            raise _OrchestrationFailure(f"Orchestrator function '{self.name}' failed: {error}", details)
        actions = state.get("actions") or []
        schema = int(state.get("schemaVersion") or SCHEMA_ORIGINAL)
        if schema >= SCHEMA_V2:
            if len(actions) != 1:
                raise _DotNetError(
                    f"With OOProc schema {schema}, expected actions array to be of length 1 in outer layer "
                    f"but got size: {len(actions)}"
                )
            yield from self.process_actions_v2(actions[0], schema)
        else:
            yield from self.process_actions_v1(actions, schema)
        if state.get("error"):
            raise _OrchestrationFailure(
                f"Orchestrator function '{self.name}' failed: {state['error']}", details
            )
        if state.get("isDone"):
            self.output = state.get("output")
            return None
        yield _Task()  # Task.Delay(Timeout.Infinite): more work to do

    # -- DTFx TaskOrchestrationContext.Handle*Event

    def _match(self, evt: dict[str, Any], kind: str) -> None:
        task_id, recorded = evt["EventId"], evt.get("Name") or ""
        what = _WHAT[kind]
        action = self.actions.get(task_id)
        if action is None:
            label = "" if kind == "timer" else f" and name '{recorded}' (version '')"
            raise NonDeterminismError(
                f"A previous execution of this orchestration scheduled {what} with sequence ID {task_id}{label}, "
                "but the current replay execution hasn't (yet?) scheduled this task. Was a change made to the "
                "orchestrator code after this instance had already started running?"
            )
        if action.kind not in _KINDS[kind]:
            raise NonDeterminismError(
                f"A previous execution of this orchestration scheduled {what} with sequence number {task_id} "
                f"named '{recorded}', but the current orchestration replay instead produced a "
                f"{action.describe()} action with this sequence number. Was a change made to the orchestrator "
                "code after this instance had already started running?"
            )
        replayed = ENTITY_REQUEST_EVENT if kind == "send_event" else action.name
        if kind != "timer" and recorded.lower() != replayed.lower():
            raise NonDeterminismError(
                f"A previous execution of this orchestration scheduled {what} with sequence number {task_id} "
                f"named '{recorded}', but the current orchestration replay instead scheduled {what} named "
                f"'{replayed}' with this sequence number.  Was a change made to the orchestrator code after "
                "this instance had already started running?"
            )
        del self.actions[task_id]

    def _complete(self, task_id: int, result: Any = None, error: str | None = None) -> None:
        task = self.open_tasks.pop(task_id, None)
        if task is None:
            return  # LogDuplicateEvent: a completion for a task no longer (or never) open is ignored
        if error is None:
            task.succeed(result)
        else:
            task.fail(_DotNetError(error))

    def process(self, evt: dict[str, Any], start: Callable[[], None]) -> None:
        etype = evt["EventType"]
        if etype == EventType.EXECUTION_STARTED:
            start()
        elif etype == EventType.TASK_SCHEDULED:
            self._match(evt, "activity")
        elif etype == EventType.TIMER_CREATED:
            self._match(evt, "timer")
        elif etype == EventType.SUB_ORCHESTRATION_INSTANCE_CREATED:
            self._match(evt, "suborchestration")
        elif etype == EventType.EVENT_SENT:
            self._match(evt, "send_event")
        elif etype in (EventType.TASK_COMPLETED, EventType.SUB_ORCHESTRATION_INSTANCE_COMPLETED):
            self._complete(evt["TaskScheduledId"], evt.get("Result"))
        elif etype in (EventType.TASK_FAILED, EventType.SUB_ORCHESTRATION_INSTANCE_FAILED):
            self._complete(evt["TaskScheduledId"], error=str(evt.get("Reason") or "failed"))
        elif etype == EventType.TIMER_FIRED:
            self._complete(evt["TimerId"], str(evt["TimerId"]))
        elif etype == EventType.EVENT_RAISED:
            if self.has_continue_as_new and self.settings.carry_over_events:
                self.carryover.append(evt)
            else:
                self.raise_event(str(evt.get("Name")), evt.get("Input"))


# What each scheduling event is called in DTFx's messages, and the action kinds that match it.
_WHAT = {
    "activity": "an activity task",
    "timer": "a timer task",
    "suborchestration": "a sub-orchestration task",
    "send_event": "a send event task",
}
_KINDS = {
    "activity": ("activity",),
    "timer": ("timer",),
    "suborchestration": ("suborchestration",),
    "send_event": ("entity_call", "entity_signal"),
}


def replay_actions(
    history: list[dict[str, Any]],
    state: dict[str, Any] | None,
    settings: ExtensionSettings,
    *,
    name: str,
    instance_id: str,
    execution_id: str,
    parent_instance_id: str | None = None,
    request_id: Callable[[int], str] = str,
    error: str = "",
    details: str = "",
) -> Decision:
    """Replay an episode's history against the orchestrator's returned state, as the extension does.

    Args:
        history: every event of the execution, this episode's new ones last (after its
            ``OrchestratorStarted``), exactly what the SDK was given.
        state: the SDK's ``OutOfProcOrchestratorState`` (``isDone``, ``actions``, ``output``, ``error``,
            ``schemaVersion``), also when it came with an exception; None when the invocation failed
            without one.
        settings: the app's functions and the provider's limits.
        name: the orchestrator's name (for failure messages).
        instance_id: the instance id.
        execution_id: the execution id (default sub-orchestration instance ids use it).
        parent_instance_id: the parent's id, if a sub-orchestration.
        request_id: the request id of an entity operation sent under a task id.
        error: why the invocation failed, when ``state`` is None.
        details: the orchestrator's traceback, kept as the failure details.

    Returns:
        What DTFx would commit: new actions, and whether the orchestration completed, failed or
        continued as new.
    """
    replay = _Replay(settings, name, instance_id, execution_id, parent_instance_id, request_id)
    result: list[_Task] = []
    decision = Decision()
    try:
        for evt in history:
            if evt["EventType"] == EventType.ORCHESTRATOR_STARTED:
                replay.now = parse_iso(evt["Timestamp"])
                continue
            replay.process(evt, lambda: result.append(_run_async(replay.execute(state, error, details))))
    except NonDeterminismError as exc:
        decision.outcome = Outcome.FAILED
        decision.error, decision.details = str(exc), "NonDeterministicOrchestrationException"
        decision.nondeterministic = True
        return decision
    decision.actions = [replay.actions[task_id] for task_id in sorted(replay.actions)]
    done = result[0] if result else _Task()
    if replay.open_tasks or not done.done:
        return decision  # DTFx completes an orchestration only once no task is open
    if done.state is _State.SUCCEEDED:
        if replay.has_continue_as_new:
            decision.outcome = Outcome.CONTINUED_AS_NEW
            decision.continue_as_new_input = replay.continue_as_new
            decision.carryover = replay.carryover
        else:
            decision.outcome = Outcome.COMPLETED
            decision.output = replay.output
        return decision
    failure = done.exception()
    decision.outcome = Outcome.FAILED
    if isinstance(failure, _OrchestrationFailure):
        decision.error, decision.details = str(failure), failure.details
    else:
        decision.error = f"Orchestrator function '{name}' failed: {failure}"
    return decision
