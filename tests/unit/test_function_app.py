"""function_app.py as the Functions host would index it: triggers, routes, methods, auth, bindings."""

from __future__ import annotations

import inspect
import logging
from types import ModuleType

import pytest

from proactive.errors import ConfigurationError
from tests.support.function_app import load_function_app

# name -> (trigger type, route, methods, auth level). Extended as issues add functions.
EXPECTED_HTTP = {
    "health": ("httpTrigger", "health", ["GET"], "anonymous"),
    "messages": ("httpTrigger", "messages", ["POST"], "anonymous"),
    "broadcasts_start": ("httpTrigger", "broadcasts", ["POST"], "function"),
    "broadcasts_status": ("httpTrigger", "broadcasts/{id}", ["GET"], "function"),
    "broadcasts_deliveries": ("httpTrigger", "broadcasts/{id}/deliveries", ["GET"], "function"),
    "broadcasts_cancel": ("httpTrigger", "broadcasts/{id}/cancel", ["POST"], "function"),
    "broadcasts_update": ("httpTrigger", "broadcasts/{id}", ["PATCH"], "function"),
    "broadcasts_recall": ("httpTrigger", "broadcasts/{id}/messages", ["DELETE"], "function"),
    "broadcasts_report": ("httpTrigger", "broadcasts/{id}/report", ["GET"], "function"),
    "tenants_audience": ("httpTrigger", "tenants/{tenantId}/audience", ["GET"], "function"),
    "deadletters_list": ("httpTrigger", "deadletters", ["GET"], "function"),
    "deadletters_redrive": ("httpTrigger", "deadletters/{id}/redrive", ["POST"], "function"),
}

# Durable functions: registered name -> trigger type (names from proactive.function_names).
EXPECTED_DURABLE = {
    "broadcast": "orchestrationTrigger",
    "tenant_broadcast": "orchestrationTrigger",
    "materialise_audience": "activityTrigger",
    "send_batch": "activityTrigger",
    "cancel_remaining": "activityTrigger",
    "broadcast_progress": "activityTrigger",
    "record_broadcast": "activityTrigger",
    "tenant_limiter": "entityTrigger",
}


@pytest.fixture
def function_app(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = load_function_app(
        monkeypatch, {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "BOT_AUTH": "anonymous"}
    )
    module.app.functions_bindings = None  # get_functions() is not idempotent
    return module


def _enum_value(value: object) -> str:
    return str(getattr(value, "value", value))


def test_http_functions_have_the_declared_routes_methods_and_auth(function_app: ModuleType) -> None:
    functions = {f.get_function_name(): f for f in function_app.app.get_functions()}
    for name, (trigger, route, methods, auth) in EXPECTED_HTTP.items():
        assert name in functions, f"{name} is not registered"
        binding = next(b.get_dict_repr() for b in functions[name].get_bindings() if b.type == trigger)
        assert binding["route"] == route
        assert sorted(_enum_value(m) for m in binding["methods"]) == methods
        assert _enum_value(binding["authLevel"]) == auth


def test_every_python_parameter_has_a_binding(function_app: ModuleType) -> None:
    for function in function_app.app.get_functions():
        names = {b.name for b in function.get_bindings()}
        parameters = set(inspect.signature(function.get_user_function()).parameters)
        assert parameters <= names, f"{function.get_function_name()}: unbound parameters {parameters - names}"


def test_function_names_are_unique(function_app: ModuleType) -> None:
    names = [f.get_function_name() for f in function_app.app.get_functions()]
    assert len(names) == len(set(names))


def test_management_routes_are_never_anonymous(function_app: ModuleType) -> None:
    anonymous_ok = {"health", "messages"}  # the bot route is authenticated by its JWT instead
    for function in function_app.app.get_functions():
        for binding in function.get_bindings():
            if binding.type == "httpTrigger" and binding.get_dict_repr()["route"] not in anonymous_ok:
                assert _enum_value(binding.get_dict_repr()["authLevel"]) != "anonymous"


def test_a_missing_storage_setting_fails_the_app_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="AzureWebJobsStorage"):
        load_function_app(monkeypatch, {"BOT_AUTH": "anonymous"})


def test_anonymous_mode_fails_the_app_at_start_in_azure(monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "BOT_AUTH": "anonymous"}
    with pytest.raises(ConfigurationError, match="BOT_AUTH"):
        load_function_app(monkeypatch, {**environ, "WEBSITE_INSTANCE_ID": "0a1b2c"})


def test_durable_orchestrations_activities_and_entities_are_registered(function_app: ModuleType) -> None:
    functions = {f.get_function_name(): f for f in function_app.app.get_functions()}
    for name, trigger in EXPECTED_DURABLE.items():
        assert name in functions, f"{name} is not registered"
        assert trigger in {b.type for b in functions[name].get_bindings()}, f"{name} has no {trigger}"


# Queue and timer triggers (issue 6): name -> (trigger type, the binding field that must match, value).
EXPECTED_QUEUE_AND_TIMER = {
    "deliveries_retry": ("queueTrigger", "queueName", "deliveries-retry"),
    "deliveries_retry_poison": ("queueTrigger", "queueName", "deliveries-retry-poison"),
    "reconcile": ("timerTrigger", "schedule", "0 */5 * * * *"),
}


def test_queue_triggers_listen_on_the_named_queues_and_the_timer_has_its_schedule(
    function_app: ModuleType,
) -> None:
    functions = {f.get_function_name(): f for f in function_app.app.get_functions()}
    for name, (trigger, field, value) in EXPECTED_QUEUE_AND_TIMER.items():
        assert name in functions, f"{name} is not registered"
        binding = next(b.get_dict_repr() for b in functions[name].get_bindings() if b.type == trigger)
        assert binding[field] == value, name
        if trigger == "queueTrigger":
            assert binding["connection"] == "AzureWebJobsStorage"


def test_the_retry_trigger_listens_where_the_sender_writes_when_the_queue_is_renamed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = load_function_app(
        monkeypatch,
        {
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "BOT_AUTH": "anonymous",
            "QUEUE_DELIVERIES_RETRY": "retry-elsewhere",
        },
    )
    module.app.functions_bindings = None
    functions = {f.get_function_name(): f for f in module.app.get_functions()}
    queues = {
        name: next(
            b.get_dict_repr()["queueName"] for b in functions[name].get_bindings() if b.type == "queueTrigger"
        )
        for name in ("deliveries_retry", "deliveries_retry_poison")
    }
    assert queues == {
        "deliveries_retry": "retry-elsewhere",
        "deliveries_retry_poison": "retry-elsewhere-poison",
    }


def test_the_app_quiets_the_sdk_request_logs_that_carry_tenant_and_user_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As under the Functions worker: the root logger lets INFO through, the SDK loggers are untouched.
    names = ("", "azure", "azure.core.pipeline.policies.http_logging_policy", "msal")
    saved = {name: logging.getLogger(name).level for name in names}
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.INFO if name == "" else logging.NOTSET)
        load_function_app(
            monkeypatch, {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "BOT_AUTH": "anonymous"}
        )
        request_log = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
        assert not request_log.isEnabledFor(logging.INFO)
        assert request_log.isEnabledFor(logging.WARNING)
        assert not logging.getLogger("msal").isEnabledFor(logging.INFO)
        assert logging.getLogger("proactive.delivery.batch").isEnabledFor(
            logging.INFO
        )  # ours are not quietened
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
