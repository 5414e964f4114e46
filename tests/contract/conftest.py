"""The contract suites run every port against the in-memory fake and against Azurite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from proactive.adapters.memory_tables import MemoryEntityTable
from proactive.adapters.table_storage import AzureTables
from proactive.storage.ports import EntityTable

TableFactory = Callable[[], EntityTable]


@pytest.fixture(params=["memory", "azurite"])
async def new_table(request: pytest.FixtureRequest, unique_name: str) -> AsyncIterator[TableFactory]:
    """A factory of fresh, empty tables on the backend named by the parameter."""
    counter = iter(range(1000))
    if request.param == "memory":
        yield lambda: MemoryEntityTable(f"{unique_name}{next(counter)}")
        return
    connection = request.getfixturevalue("storage_connection_string")
    tables = AzureTables.from_connection_string(connection)
    try:
        yield lambda: tables.table(f"{unique_name}{next(counter)}")
    finally:
        await tables.close()
