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

# Pacing of tenant_broadcast (not retries, but timing policy all the same).
# Send batches of one tenant kept under way at once: the next grant is booked and its activity started
# while the current batch still sends, so no per-batch gap (report, acquire, timer, activity start-up:
# hundreds of ms on Azure) falls between the tenant's slots. Claims are ETag-guarded and follow the slots,
# so overlapping batches never send a row twice nor waste each other's slots.
SEND_BATCHES_IN_FLIGHT = 2
# How long before a grant's notBefore its activity is started (the sender waits for the first slot).
BATCH_START_LEAD = timedelta(seconds=0.5)
