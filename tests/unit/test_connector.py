"""The caller definitions (OpenAPI 2.0 for Power Automate / Logic Apps, a Logic App workflow) match the real app.

Routes and methods come from the functions ``function_app.py`` registers; request fields from the pydantic models
that parse ``POST /api/broadcasts``, so neither file can drift from the code.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel

from proactive.broadcast.message import MessageContent
from proactive.broadcast.request import Audience, BroadcastRequest, ChannelTarget, GroupTarget, UserTarget
from tests.support.function_app import load_function_app

ROOT = Path(__file__).resolve().parents[2]
SWAGGER = json.loads((ROOT / "infra" / "connector" / "broadcasts.swagger.json").read_text(encoding="utf-8"))
WORKFLOW = json.loads(
    (ROOT / "infra" / "connector" / "logic-app-broadcast.workflow.json").read_text(encoding="utf-8")
)


@pytest.fixture
def function_app(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # BOT_AUTH=anonymous: the hardening branch's explicit local mode (not read before it lands).
    return load_function_app(
        monkeypatch, {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "BOT_AUTH": "anonymous"}
    )


def http_routes(function_app: ModuleType) -> set[tuple[str, str]]:
    routes = set()
    for function in function_app.app.get_functions():
        for binding in function.get_bindings():
            if binding.type == "httpTrigger":
                spec = binding.get_dict_repr()
                for method in spec["methods"]:
                    routes.add((f"/{spec['route']}", str(getattr(method, "value", method)).lower()))
    return routes


def swagger_routes() -> set[tuple[str, str]]:
    return {(path, method) for path, item in SWAGGER["paths"].items() for method in item}


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return resolve(SWAGGER["definitions"][schema["$ref"].rsplit("/", 1)[1]])
    return schema


def wire_fields(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def test_every_broadcast_route_is_in_the_openapi_file_and_nothing_else(function_app: ModuleType) -> None:
    broadcast_routes = {route for route in http_routes(function_app) if route[0].startswith("/broadcasts")}
    assert swagger_routes() == broadcast_routes


def test_every_operation_needs_the_function_key_and_only_https_is_offered() -> None:
    assert SWAGGER["swagger"] == "2.0" and SWAGGER["basePath"] == "/api" and SWAGGER["schemes"] == ["https"]
    assert SWAGGER["securityDefinitions"]["function_key"] == {
        **SWAGGER["securityDefinitions"]["function_key"],
        "type": "apiKey",
        "in": "header",
        "name": "x-functions-key",
    }
    assert SWAGGER["security"] == [{"function_key": []}]


@pytest.mark.parametrize(
    ("pointer", "model"),
    [
        (("BroadcastRequest",), BroadcastRequest),
        (("BroadcastRequest", "audience"), Audience),
        (("BroadcastRequest", "message"), MessageContent),
        (("BroadcastRequest", "audience", "users"), UserTarget),
        (("BroadcastRequest", "audience", "channels"), ChannelTarget),
        (("BroadcastRequest", "audience", "groups"), GroupTarget),
    ],
)
def test_request_fields_are_exactly_the_request_model_fields(
    pointer: tuple[str, ...], model: type[BaseModel]
) -> None:
    schema = resolve(SWAGGER["definitions"][pointer[0]])
    for name in pointer[1:]:
        schema = resolve(schema["properties"][name])
        if schema.get("type") == "array":
            schema = resolve(schema["items"])
    assert set(schema["properties"]) == wire_fields(model)
    required = {name for name, field in model.model_fields.items() if field.is_required()}
    assert set(schema.get("required", [])) == {model.model_fields[name].alias or name for name in required}


def test_the_start_operation_documents_the_async_pattern() -> None:
    responses = SWAGGER["paths"]["/broadcasts"]["post"]["responses"]
    assert {"Location", "Retry-After"} <= set(responses["202"]["headers"])
    status = SWAGGER["paths"]["/broadcasts/{id}"]["get"]["responses"]
    assert {"200", "202"} <= set(status) and "Retry-After" in status["202"]["headers"]


def test_the_logic_app_posts_a_valid_broadcast_and_waits_on_location() -> None:
    action = WORKFLOW["definition"]["actions"]["Broadcast_and_wait"]
    inputs = action["inputs"]
    assert inputs["method"] == "POST" and inputs["uri"].endswith("/api/broadcasts")
    assert "x-functions-key" in inputs["headers"]
    # The asynchronous pattern is the HTTP action's default; turning it off would return the first 202.
    assert action.get("operationOptions", "") != "DisableAsyncPattern"
    # Fill the workflow expressions the way a run would, then parse the body as the API does.
    body = json.loads(
        json.dumps(inputs["body"])
        .replace("@{concat('deploy-', triggerBody()?['release'])}", "deploy-42")
        .replace("@{triggerBody()?['tenantId']}", "72f988bf-86f1-41af-91ab-2d7cd011db47")
        .replace("@{triggerBody()?['release']}", "42")
    )
    assert "@{" not in json.dumps(body)
    BroadcastRequest.model_validate(body)
