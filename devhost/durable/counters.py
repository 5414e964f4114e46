"""Counters the benchmarks read: replay episodes, history sizes, actions, activity invocations."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    """Running totals for one runtime (exposed on ``GET /_devhost/stats``)."""

    episodes: int = 0
    history_events_replayed: int = 0
    actions: int = 0
    activity_invocations: int = 0
    activity_failures: int = 0
    entity_operations: int = 0
    orchestrations_started: int = 0
    orchestrations_completed: int = 0
    orchestrations_failed: int = 0
    continue_as_new: int = 0
    nondeterminism_failures: int = 0
    timers_fired: int = 0
    queue_messages: int = 0
    queue_poisoned: int = 0
    timer_trigger_runs: int = 0
    # instance id -> length of the history replayed by its latest episode
    history_events_by_instance: dict[str, int] = field(default_factory=dict)
    episodes_by_instance: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot."""
        return {
            "episodes": self.episodes,
            "historyEventsReplayed": self.history_events_replayed,
            "actions": self.actions,
            "activityInvocations": self.activity_invocations,
            "activityFailures": self.activity_failures,
            "entityOperations": self.entity_operations,
            "orchestrationsStarted": self.orchestrations_started,
            "orchestrationsCompleted": self.orchestrations_completed,
            "orchestrationsFailed": self.orchestrations_failed,
            "continueAsNew": self.continue_as_new,
            "nondeterminismFailures": self.nondeterminism_failures,
            "timersFired": self.timers_fired,
            "queueMessages": self.queue_messages,
            "queuePoisoned": self.queue_poisoned,
            "timerTriggerRuns": self.timer_trigger_runs,
            "historyEventsByInstance": dict(self.history_events_by_instance),
            "episodesByInstance": dict(self.episodes_by_instance),
        }
