"""Call into the Durable SDK the way the worker does: its warnings are logged, never raised.

The worker logs warnings from ``azure.functions``/``azure.durable_functions`` (for example the
``df_loads ... without expected_type`` notice); under pytest's ``filterwarnings = error`` they
would otherwise turn into exceptions inside the replay and change the orchestration's outcome.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

log = logging.getLogger("devhost.durable.sdk")


@contextlib.contextmanager
def sdk_warnings_logged() -> Iterator[None]:
    """Record warnings raised inside the block and log them instead."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        log.debug("SDK warning: %s", warning.message)
