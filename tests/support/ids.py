"""Deterministic ids for test recipients."""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class AadIds:
    """AAD object ids (GUIDs) counted up from ``base``: ``aad(n)``, or ``aad(tenant, n)`` ``per_tenant`` apart.

    Each test module takes its own ``base``, so rows of different modules never share a key in one Azurite.
    """

    base: int
    per_tenant: int = 1000

    def __call__(self, *index: int) -> str:
        *tenant, n = index
        return str(uuid.UUID(int=self.base + sum(t * self.per_tenant for t in tenant) + n))

    def offset(self, object_id: str) -> int:
        """The inverse: how far ``object_id`` lies from ``base`` (``tenant * per_tenant + n``)."""
        return uuid.UUID(object_id).int - self.base
