"""Import ``function_app.py`` afresh, as the Functions host does at start, under a given environment."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import pytest

from proactive import composition

# Settings a developer's shell may carry that would change what the app does in a test.
_CLEARED = (
    "AzureWebJobsStorage",
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "MicrosoftAppId",
    "TENANT_ALLOW_LIST",
    "BOT_AUTH",
    "DEV_OUTBOUND_HOSTS",
    "WEBSITE_INSTANCE_ID",
)


def load_function_app(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]) -> ModuleType:
    """The ``function_app`` module imported under exactly ``environ`` (plus the rest of os.environ).

    The composition root's services are reset first and restored by ``monkeypatch`` after the test.
    """
    sys.modules.pop("function_app", None)
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(composition, "_services", None)
    return importlib.import_module("function_app")
