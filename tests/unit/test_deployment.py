"""The deployment files agree with the code: every setting the code reads is set, nothing is set that nothing reads.

Settings the code reads are the literal names ``proactive/settings.py`` passes to ``_Env`` (read from its source, so a
new setting cannot be forgotten), plus the ``TABLE_*`` names built from :class:`TableNames`. They must appear in
``infra/main.bicep`` (the Azure app settings) and in ``local.settings.json.example`` (local development), except the
few listed below with the reason each is left out.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import pytest

from proactive.settings import Settings, TableNames

ROOT = Path(__file__).resolve().parents[2]
# A local, tokenless environment. BOT_AUTH=anonymous is how the hardening branch asks for it explicitly;
# before that lands the name is simply not read.
LOCAL = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "BOT_AUTH": "anonymous"}
MAIN_BICEP = ROOT / "infra" / "main.bicep"
LOCAL_EXAMPLE = ROOT / "local.settings.json.example"

# Read by the code, deliberately not set in Azure.
NOT_IN_AZURE = {
    "AzureWebJobsStorage": "Azure uses the identity-based shape (__accountName); a connection string needs shared keys",
    "AzureWebJobsStorage__tableServiceUri": "derived from __accountName; only for sovereign clouds or private DNS",
    "AzureWebJobsStorage__queueServiceUri": "derived from __accountName; only for sovereign clouds or private DNS",
    "AzureWebJobsStorage__clientId": "the app uses its system-assigned identity; only for a user-assigned one",
    "MicrosoftAppCertificatePath": "the bot credential is the Key Vault secret (MicrosoftAppPassword)",
    "DEV_OUTBOUND_HOSTS": "development only: allows emulator hosts on the outbound allow-list",
    # Read once the hardening branch lands:
    "BOT_AUTH": "development only (anonymous bot); the app refuses it in Azure",
    "WEBSITE_INSTANCE_ID": "set by the App Service platform itself",
    "AzureFunctionsJobHost__functionTimeout": "host.json owns the timeout; this app setting would only override it",
}
# Read by the code, deliberately not in local.settings.json.example (which runs against Azurite).
NOT_IN_LOCAL = {
    "AzureWebJobsStorage__accountName": "identity-based storage is for Azure; locally AzureWebJobsStorage is Azurite",
    "AzureWebJobsStorage__tableServiceUri": "identity-based storage only",
    "AzureWebJobsStorage__queueServiceUri": "identity-based storage only",
    "AzureWebJobsStorage__credential": "identity-based storage only",
    "AzureWebJobsStorage__clientId": "identity-based storage only",
    # Read once the hardening branch lands:
    "WEBSITE_INSTANCE_ID": "set by the App Service platform; its absence is what says 'not in Azure'",
    "AzureFunctionsJobHost__functionTimeout": "host.json owns the timeout; this app setting would only override it",
}
# Set in main.bicep for the Functions host or the Python worker, not for the product code.
HOST_SETTINGS_IN_AZURE = {
    # The worker streams OpenTelemetry and passes the host's trace context (host.json telemetryMode: OpenTelemetry).
    "PYTHON_ENABLE_OPENTELEMETRY",
    "DURABLE_TASK_SCHEDULER_CONNECTION_STRING",
    "AzureFunctionsJobHost__extensions__durableTask__storageProvider__type",
    "AzureFunctionsJobHost__extensions__durableTask__storageProvider__connectionStringName",
    "AzureFunctionsJobHost__extensions__durableTask__hubName",
}
# Set in local.settings.json.example for Core Tools or the devhost, not for the product code.
HOST_SETTINGS_LOCAL = {
    "FUNCTIONS_WORKER_RUNTIME",  # Core Tools: which language worker
    "AzureWebJobsFeatureFlags",  # Core Tools: EnableWorkerIndexing for the Python v2 model
    "DEVHOST_FUNCTION_KEY",  # devhost/settings.py: the function key the devhost accepts
}


def settings_read_by_code() -> set[str]:
    """Every setting name proactive/settings.py reads.

    The literal names passed to ``_Env`` methods (found in the source, so a branch no test environment takes
    still counts), plus every name ``Settings.from_env`` looks up while resolving a few typical environments
    (names built at run time, such as ``TABLE_*``, or held in a variable).
    """
    return _literal_names() | _looked_up_names()


def _literal_names() -> set[str]:
    tree = ast.parse((ROOT / "proactive" / "settings.py").read_text(encoding="utf-8"))
    names = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "env"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    }
    return names | {f"TABLE_{field.name.upper()}" for field in fields(TableNames)}


def _looked_up_names() -> set[str]:
    tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    shapes = [
        LOCAL,
        {"AzureWebJobsStorage__accountName": "acct", "MicrosoftAppId": tenant, "MicrosoftAppTenantId": tenant,
         "MicrosoftAppPassword": "x", "TENANT_ALLOW_LIST": "*"},
    ]  # fmt: skip
    looked_up: set[str] = set()
    for shape in shapes:
        environ = RecordingEnviron(shape)
        Settings.from_env(environ)
        looked_up |= environ.read
    return looked_up


def bicep_object(name: str) -> dict[str, str]:
    """Keys and raw values of ``var <name> = { ... }`` in main.bicep (one ``key: value`` per line)."""
    text = MAIN_BICEP.read_text(encoding="utf-8")
    match = re.search(rf"^var {name} = \{{\n(.*?)^\}}", text, re.MULTILINE | re.DOTALL)
    assert match, f"main.bicep has no 'var {name} = {{' block"
    entries = {}
    for line in match.group(1).splitlines():
        item = re.match(r"^\s+'?([A-Za-z_][A-Za-z0-9_]*)'?:\s*(.+?)\s*$", line)
        if item:
            entries[item.group(1)] = item.group(2)
    return entries


def bicep_settings() -> set[str]:
    return {
        *bicep_object("appSettings"),
        *bicep_object("defaultTuning"),
        *bicep_object("durableTaskSchedulerSettings"),
    }


def local_values() -> dict[str, str]:
    values: dict[str, str] = json.loads(LOCAL_EXAMPLE.read_text(encoding="utf-8"))["Values"]
    return values


class RecordingEnviron(Mapping[str, str]):
    """An environment that remembers every name the code looks up."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        # Not recorded: iterating items() (the proxy-variable scan) reads every key this way. Settings are read
        # with get(), through _Env.
        return self.values[key]

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.read.add(key)
        return self.values.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def test_the_settings_read_include_the_ones_built_at_run_time() -> None:
    names = settings_read_by_code()
    assert {
        "AzureWebJobsStorage",
        "TABLE_DELIVERIES",
        "QUEUE_INSTALLS",
        "AzureWebJobsStorage__clientId",
    } <= names


def test_every_setting_the_code_reads_is_set_in_main_bicep() -> None:
    missing = settings_read_by_code() - set(NOT_IN_AZURE) - bicep_settings()
    assert not missing, (
        f"set these in infra/main.bicep (or list them in NOT_IN_AZURE with a reason): {missing}"
    )


def test_main_bicep_sets_nothing_that_nothing_reads() -> None:
    unread = bicep_settings() - settings_read_by_code() - HOST_SETTINGS_IN_AZURE
    assert not unread, f"nothing reads these app settings: {unread}"
    assert not bicep_settings() & set(NOT_IN_AZURE)


def test_every_setting_the_code_reads_is_in_local_settings_example() -> None:
    missing = settings_read_by_code() - set(NOT_IN_LOCAL) - set(local_values())
    assert not missing, (
        f"add these to local.settings.json.example (or to NOT_IN_LOCAL with a reason): {missing}"
    )


def test_local_settings_example_sets_nothing_that_nothing_reads() -> None:
    unread = set(local_values()) - settings_read_by_code() - HOST_SETTINGS_LOCAL
    assert not unread, f"nothing reads these local settings: {unread}"


def test_the_local_example_is_a_valid_local_configuration() -> None:
    settings = Settings.from_env(local_values())
    assert settings.bot.anonymous and not settings.storage.identity_based


def test_main_bicep_defaults_are_the_code_defaults() -> None:
    tuning = {name: value.strip("'") for name, value in bicep_object("defaultTuning").items()}
    assert Settings.from_env({**LOCAL, **tuning}) == Settings.from_env(LOCAL)


def test_azure_uses_identity_based_storage_with_the_managed_identity() -> None:
    app = bicep_object("appSettings")
    assert "AzureWebJobsStorage" not in app
    assert app["AzureWebJobsStorage__credential"] == "'managedidentity'"
    assert app["MicrosoftAppPassword"].startswith("'@Microsoft.KeyVault(SecretUri=")


def test_the_python_worker_exports_opentelemetry_beside_the_host() -> None:
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    app = bicep_object("appSettings")
    assert host["telemetryMode"] == "OpenTelemetry"
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in app
    assert app["PYTHON_ENABLE_OPENTELEMETRY"] == "'true'"


def _timespan(text: str) -> timedelta:
    hours, minutes, seconds = (int(part) for part in text.split(":"))
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


def test_host_json_polls_the_durable_queues_at_least_every_second_or_two() -> None:
    """The Azure Storage provider backs off polling an idle queue up to maxQueuePollingInterval (default 30 s).

    A small broadcast, and every durable timer of a lane waiting on its tenant's grant, would otherwise wait up to
    that long for the next poll; infra/README.md explains the cost side.
    """
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    provider = host["extensions"]["durableTask"]["storageProvider"]
    assert _timespan(provider["maxQueuePollingInterval"]) <= timedelta(seconds=2)


def test_rows_are_reconciled_only_after_the_longest_a_send_can_run() -> None:
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    reconcile_after = Settings.from_env(LOCAL).reconcile_after_seconds
    assert _timespan(host["functionTimeout"]).total_seconds() < reconcile_after


@pytest.mark.parametrize("module", sorted((ROOT / "infra" / "modules").glob("*.bicep")), ids=lambda p: p.name)
def test_every_module_is_used_by_main_bicep(module: Path) -> None:
    assert f"'modules/{module.name}'" in MAIN_BICEP.read_text(encoding="utf-8")
