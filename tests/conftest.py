"""Session-wide fixtures: one Azurite for the whole test session, started here, never skipped.

Set ``PROACTIVE_TEST_STORAGE`` to a connection string to use an Azurite you started yourself.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from devhost import azurite as azurite_process


@pytest.fixture(scope="session")
def storage_connection_string() -> Iterator[str]:
    """Connection string of an Azurite instance that lives for the whole session."""
    given = os.environ.get("PROACTIVE_TEST_STORAGE")
    if given:
        yield given
        return
    with azurite_process.running() as instance:
        yield instance.connection_string


@pytest.fixture
def unique_name() -> str:
    """A table/queue-safe name unique to one test, so tests never see each other's rows."""
    return "t" + uuid.uuid4().hex[:20]
