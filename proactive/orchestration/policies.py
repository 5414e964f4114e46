"""Retry policies of every activity call, in one module (STYLE.md rule 2).

Each failure class is owned by one layer (STYLE.md rule 11): the sender retries individual sends in
process; these policies only cover an activity that failed as a whole (a worker crash, storage
unreachable for a moment). Activities are idempotent (ETag-guarded ledger rows), so a retry is harmless.
The 1.7 SDK retries at a fixed interval (it has no back-off coefficient).
"""

from __future__ import annotations

from datetime import timedelta

import azure.durable_functions as df

# Reading/writing a page of ledger rows: a short storage hiccup should not fail a broadcast.
MATERIALISE_RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=2_000, max_number_of_attempts=5)
# A batch send: the sender already retried each message; this covers the activity dying as a whole.
SEND_BATCH_RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=5_000, max_number_of_attempts=3)
# Bookkeeping (status, counts, cancel marks).
BOOKKEEPING_RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=2_000, max_number_of_attempts=5)

# Re-drives (proactive.delivery.redrive). A row handed to deliveries-retry more often than this is dead-lettered: the
# bound that host.json ``maxDequeueCount`` (5) set when the trigger sent itself and raised on failure, kept
# the same now that the paced run sends and each failure is a new hand-off (RetryRequest.attempt).
MAX_REDRIVES = 5
# While a re-drive run of the tenant is under way the trigger wakes it and checks the row again later (the
# run may have read the ledger just before the row became due): first after this long, doubling per check
# up to REDRIVE_RECHECK_MAX. A check of a row that was sent meanwhile completes the message.
REDRIVE_RECHECK_FIRST = timedelta(seconds=5)
REDRIVE_RECHECK_MAX = timedelta(minutes=5)

# Pacing of tenant_broadcast (not retries, but timing policy all the same).
# Lanes (sequential tenant_lane sub-orchestrations, each over its own part of the rows) of one tenant with
# more than a batch to send. A lane's cycle is its batch (1 s of sends at 50 msg/s, plus the slowest
# answer: 150 ms median, a second or more in the tail) and its round trip (report, acquire, activity
# dispatch: a few hundred ms on Azure); the other lanes' batches cover it. Measured under devhost
# --latency azure (bench/send_rate.py, 600 messages): 2 lanes 0.69-0.72 of the ceiling, 3 lanes 0.78-0.79
# (the rest of that run is its first lead and the metric's added second); 4 lanes before the lanes took
# separate parts raced for the same claims.
SEND_LANES = 3
# How long before a grant's notBefore its activity is started at most (the sender waits for its first
# admission in process). Longer than any lead the limiter places grants ahead (proactive.limiter.config.MAX_LEAD), so
# the activity starts as soon as the grant is known and the lead the limiter learns (grant to first ready
# request) measures the dispatch and the rows' preparation, never a timer of ours.
BATCH_START_LEAD = timedelta(seconds=30)
