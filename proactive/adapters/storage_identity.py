"""The Entra credential of an identity-based ``AzureWebJobsStorage`` connection.

The Functions host reads ``AzureWebJobsStorage__credential`` and ``__clientId``; the product's table and
queue clients follow the same rules so both talk to the account as the same identity:

- ``credential=managedidentity``: the app's managed identity only (system-assigned, or the user-assigned
  one whose client id is ``__clientId``). What Flex Consumption templates set.
- unset: ``DefaultAzureCredential`` (environment, workload identity, managed identity, then a developer's
  ``az login``), so the same settings work from a laptop against a real account.
"""

from __future__ import annotations

from azure.core.credentials_async import AsyncTokenCredential
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

from proactive.settings import StorageAccount

__all__ = ["storage_credential"]


def storage_credential(account: StorageAccount) -> AsyncTokenCredential:
    """A new async credential for ``account`` (no I/O until the first token; the caller closes it)."""
    client_id = account.client_id or None
    if account.managed_identity_only:
        return ManagedIdentityCredential(client_id=client_id)
    return DefaultAzureCredential(managed_identity_client_id=client_id)
