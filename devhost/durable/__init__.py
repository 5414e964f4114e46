"""A local stand-in for the Durable Functions extension, driving the real Python replay engine.

Owns the engine only: orchestrations, activities, entities, timers, their store, the webhook API.
May import: devhost.latency, devhost.settings; never devhost.host (the host drives the engine, not back).
"""

from devhost.durable.azurite_store import AzuriteStore
from devhost.durable.clock import Clock, ManualClock, SystemClock
from devhost.durable.counters import Stats
from devhost.durable.engine import (
    DurableRuntime,
    InstanceExists,
    InstanceGone,
    InstanceNotFound,
    UnknownFunction,
)
from devhost.durable.functions import FunctionIndex, load_app
from devhost.durable.shim import TimerLimits
from devhost.durable.store import DurableStore, EntityRecord, InstanceRecord, MemoryStore

__all__ = [
    "AzuriteStore",
    "Clock",
    "DurableRuntime",
    "DurableStore",
    "EntityRecord",
    "FunctionIndex",
    "InstanceExists",
    "InstanceGone",
    "InstanceNotFound",
    "InstanceRecord",
    "ManualClock",
    "MemoryStore",
    "Stats",
    "SystemClock",
    "TimerLimits",
    "UnknownFunction",
    "load_app",
]
