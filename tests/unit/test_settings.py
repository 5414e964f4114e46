"""Settings.from_env: every default in one place; bad values fail naming the setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proactive.adapters.bot_auth import BotAuthSettings
from proactive.errors import ConfigurationError
from proactive.settings import FUNCTION_TIMEOUT_SECONDS, BotAuthKind, Settings

APP_ID = "11111111-2222-3333-4444-555555555555"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
MINIMAL = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "BOT_AUTH": "anonymous"}
PRODUCTION = {
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "MicrosoftAppId": APP_ID,
    "MicrosoftAppTenantId": TENANT,
    "MicrosoftAppPassword": "s3cret-value",
    "TENANT_ALLOW_LIST": TENANT.upper(),
}


def test_minimal_environment_is_local_anonymous_mode_with_documented_defaults() -> None:
    settings = Settings.from_env(MINIMAL)
    assert settings.bot.auth is BotAuthKind.ANONYMOUS and settings.bot.anonymous
    assert settings.send_rate_per_tenant == 50.0
    assert settings.graph_rate_per_tenant == 30.0
    assert settings.batch_size == 50
    assert settings.send_concurrency == 32
    assert (
        settings.send_timeout_seconds,
        settings.send_retry_base_seconds,
        settings.send_retry_max_seconds,
    ) == (
        30.0,
        0.5,
        30.0,
    )
    assert (settings.send_max_retry_after_seconds, settings.retry_handoff_seconds) == (60.0, 60.0)
    assert settings.reconcile_after_seconds == 900.0  # above host.json functionTimeout (600 s)
    assert settings.tables.deliveries == "deliveries"
    assert settings.queues.deliveries_retry == "deliveries-retry"
    assert settings.graph_base_url == "https://graph.microsoft.com/v1.0"
    assert settings.tenant_allowed("any-tenant")
    assert settings.dev_outbound_hosts == frozenset()


def test_no_app_id_without_the_explicit_anonymous_opt_in_fails_at_start() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert caught.value.setting == "MicrosoftAppId" and "BOT_AUTH=anonymous" in str(caught.value)


@pytest.mark.parametrize(
    ("environ", "setting"),
    [
        # Azure App Service / Functions set WEBSITE_INSTANCE_ID on every instance.
        ({**MINIMAL, "WEBSITE_INSTANCE_ID": "0a1b2c"}, "BOT_AUTH"),
        ({**PRODUCTION, "BOT_AUTH": "anonymous"}, "BOT_AUTH"),
        ({**MINIMAL, "BOT_AUTH": "none"}, "BOT_AUTH"),
        # Loopback on the allow-list with a real identity would hand the bot's token to any local listener.
        ({**PRODUCTION, "DEV_OUTBOUND_HOSTS": "127.0.0.1"}, "DEV_OUTBOUND_HOSTS"),
    ],
)
def test_anonymous_mode_and_dev_hosts_are_refused_outside_local_development(
    environ: dict[str, str], setting: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(environ)
    assert caught.value.setting == setting


def test_anonymous_local_development_may_add_dev_hosts() -> None:
    settings = Settings.from_env({**MINIMAL, "BOT_AUTH": " Anonymous ", "DEV_OUTBOUND_HOSTS": "127.0.0.1"})
    assert settings.bot.anonymous and settings.dev_outbound_hosts == frozenset({"127.0.0.1"})


def test_production_identity_with_secret_and_allow_list() -> None:
    settings = Settings.from_env(PRODUCTION)
    assert settings.bot.auth is BotAuthKind.SECRET
    assert settings.bot.secret == "s3cret-value"
    assert settings.tenant_allowed(TENANT) and not settings.tenant_allowed(
        "00000000-0000-0000-0000-000000000000"
    )


def test_secrets_never_appear_in_repr() -> None:
    settings = Settings.from_env(
        {**PRODUCTION, "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=abc"}
    )
    text = repr(settings)
    assert (
        "s3cret-value" not in text
        and "UseDevelopmentStorage" not in text
        and "InstrumentationKey" not in text
    )


def test_managed_identity_and_certificate_identities() -> None:
    msi = Settings.from_env(
        {**PRODUCTION, "MicrosoftAppPassword": "", "MicrosoftAppType": "UserAssignedMSI", "TENANT_ALLOW_LIST": "*"}
    )  # fmt: skip
    assert msi.bot.auth is BotAuthKind.MANAGED_IDENTITY and msi.tenant_allow_list is None
    cert = Settings.from_env(
        {**PRODUCTION, "MicrosoftAppPassword": "", "MicrosoftAppCertificatePath": "/certs/bot.pem"}
    )
    assert cert.bot.auth is BotAuthKind.CERTIFICATE and cert.bot.certificate_path == "/certs/bot.pem"


def test_send_concurrency_is_read_within_its_range() -> None:
    assert Settings.from_env({**MINIMAL, "SEND_CONCURRENCY": "1"}).send_concurrency == 1
    assert Settings.from_env({**MINIMAL, "SEND_CONCURRENCY": " 256 "}).send_concurrency == 256


def test_storage_clients_read_proxy_settings_only_when_a_proxy_variable_is_set() -> None:
    assert Settings.from_env(MINIMAL).proxy_from_environment is False
    assert Settings.from_env({**MINIMAL, "HTTPS_PROXY": " "}).proxy_from_environment is False
    assert Settings.from_env({**MINIMAL, "https_proxy": "http://proxy:3128"}).proxy_from_environment is True
    assert Settings.from_env({**MINIMAL, "ALL_PROXY": "socks5://proxy"}).proxy_from_environment is True


def test_per_tenant_rate_overrides() -> None:
    settings = Settings.from_env(
        {**MINIMAL, "SEND_RATE_PER_TENANT": "30", "SEND_RATE_OVERRIDES": f"{TENANT}=12.5"}
    )
    assert settings.send_rate_for(TENANT.upper()) == 12.5
    assert settings.send_rate_for("another") == 30.0


@pytest.mark.parametrize(
    ("environ", "setting"),
    [
        ({"BOT_AUTH": "anonymous"}, "AzureWebJobsStorage"),
        ({**MINIMAL, "AzureWebJobsStorage": "   "}, "AzureWebJobsStorage"),
        ({**PRODUCTION, "MicrosoftAppPassword": ""}, "MicrosoftAppPassword"),
        ({**PRODUCTION, "MicrosoftAppTenantId": ""}, "MicrosoftAppTenantId"),
        ({**PRODUCTION, "TENANT_ALLOW_LIST": ""}, "TENANT_ALLOW_LIST"),
    ],
)
def test_missing_required_setting_fails_naming_it(environ: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(environ)
    assert caught.value.setting == setting
    assert setting in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MicrosoftAppId", "not-a-guid"),
        ("MicrosoftAppType", "Something"),
        ("SEND_RATE_PER_TENANT", "fast"),
        ("SEND_RATE_PER_TENANT", "0"),
        ("SEND_RATE_PER_TENANT", "5000"),
        ("GRAPH_RATE_PER_TENANT", "-1"),
        ("BATCH_SIZE", "1.5"),
        ("BATCH_SIZE", "0"),
        ("MAX_SEND_ATTEMPTS", "many"),
        ("SEND_CONCURRENCY", "0"),
        ("SEND_CONCURRENCY", "257"),
        ("SEND_CONCURRENCY", "eight"),
        ("SEND_TIMEOUT_SECONDS", "0"),
        ("SEND_RETRY_BASE_SECONDS", "-1"),
        ("RETRY_HANDOFF_SECONDS", "soon"),
        ("RECONCILE_AFTER_SECONDS", "0.5"),
        ("TENANT_ALLOW_LIST", "contoso.onmicrosoft.com"),
        ("SEND_RATE_OVERRIDES", "tenant=fast"),
        ("GRAPH_BASE_URL", "graph.microsoft.com"),
        ("AUTHORITY_HOST", "http://login.microsoftonline.com"),
        ("AUTHORITY_HOST", "https://login.microsoftonline.com:bad"),
        ("BOT_OPENID_METADATA_URL", "ftp://example"),
        ("BOT_OPENID_METADATA_URL", "http://login.botframework.com/v1/.well-known/openidconfiguration"),
        ("BOT_OPENID_METADATA_URL", "https://login.botframework.com:99999/v1"),
        ("TABLE_DELIVERIES", "bad-name"),
        ("QUEUE_INSTALLS", "Upper_Case"),
        ("FUNCTION_KEY_REQUIRED", "maybe"),
    ],
)
def test_malformed_setting_fails_naming_it(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({**PRODUCTION, name: value})
    assert caught.value.setting == name
    assert name in str(caught.value)


def test_an_anonymous_local_bot_may_take_tokens_from_a_loopback_emulator_and_nobody_else_over_http() -> None:
    local = {**MINIMAL, "BOT_AUTH": "anonymous"}
    assert Settings.from_env({**local, "AUTHORITY_HOST": "http://127.0.0.1:7072"}).authority_host == (
        "http://127.0.0.1:7072"
    )
    for environ in (
        {**local, "AUTHORITY_HOST": "http://login.microsoftonline.com"},  # not loopback
        {**PRODUCTION, "AUTHORITY_HOST": "http://127.0.0.1:7072"},  # a real secret would travel in clear
    ):
        with pytest.raises(ConfigurationError) as caught:
            Settings.from_env(environ)
        assert caught.value.setting == "AUTHORITY_HOST"


def test_malformed_dev_hosts_fail_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({**MINIMAL, "DEV_OUTBOUND_HOSTS": "http://127.0.0.1:3978/"})
    assert caught.value.setting == "DEV_OUTBOUND_HOSTS"


def test_both_secret_and_certificate_is_ambiguous() -> None:
    with pytest.raises(ConfigurationError, match="MicrosoftAppPassword"):
        Settings.from_env({**PRODUCTION, "MicrosoftAppCertificatePath": "/certs/bot.pem"})


def test_function_keys_cannot_be_switched_off_by_a_setting_that_nothing_honours() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({**PRODUCTION, "FUNCTION_KEY_REQUIRED": "false"})
    assert caught.value.setting == "FUNCTION_KEY_REQUIRED"
    settings = Settings.from_env({**PRODUCTION, "FUNCTION_KEY_REQUIRED": "true"})
    assert not hasattr(settings, "function_key_required")


@pytest.mark.parametrize(
    "url",
    [
        "https://login.botframework.com/v1/.well-known/openidconfiguration",
        "http://127.0.0.1:8123/v1/.well-known/openidconfiguration",  # a local test server
        "http://localhost:8123/openid",
    ],
)
def test_every_accepted_openid_metadata_url_is_one_the_authenticator_accepts(url: str) -> None:
    settings = Settings.from_env({**PRODUCTION, "BOT_OPENID_METADATA_URL": url})
    BotAuthSettings(app_id=APP_ID, openid_metadata_url=settings.bot_openid_metadata_url)


@pytest.mark.parametrize(
    ("environ", "setting"),
    [
        ({"RECONCILE_AFTER_SECONDS": "1"}, "RECONCILE_AFTER_SECONDS"),
        ({"RECONCILE_AFTER_SECONDS": "600"}, "RECONCILE_AFTER_SECONDS"),  # equal is not enough
        (
            {"AzureFunctionsJobHost__functionTimeout": "00:30:00", "RECONCILE_AFTER_SECONDS": "900"},
            "RECONCILE_AFTER_SECONDS",
        ),
        ({"AzureFunctionsJobHost__functionTimeout": "-1"}, "AzureFunctionsJobHost__functionTimeout"),
    ],
)
def test_reconciliation_must_wait_longer_than_a_function_may_run(
    environ: dict[str, str], setting: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({**MINIMAL, **environ})
    assert caught.value.setting == setting


def test_the_function_timeout_override_moves_the_reconcile_bound() -> None:
    environ = {
        **MINIMAL,
        "AzureFunctionsJobHost__functionTimeout": "00:00:05",
        "RECONCILE_AFTER_SECONDS": "6",
    }
    assert Settings.from_env(environ).reconcile_after_seconds == 6.0
    assert Settings.from_env({**MINIMAL, "RECONCILE_AFTER_SECONDS": "601"}).reconcile_after_seconds == 601.0


def test_the_function_timeout_default_is_host_jsons() -> None:
    host = json.loads((Path(__file__).resolve().parents[2] / "host.json").read_text())
    hours, minutes, seconds = (int(part) for part in host["functionTimeout"].split(":"))
    assert hours * 3600 + minutes * 60 + seconds == FUNCTION_TIMEOUT_SECONDS


def test_settings_are_frozen() -> None:
    settings = Settings.from_env(MINIMAL)
    with pytest.raises(AttributeError):
        settings.batch_size = 7  # type: ignore[misc]
