"""The operations workbook (infra/modules/workbook.bicep) queries what the app really emits.

Its queries read Application Insights' ``customMetrics``, where azure-monitor-opentelemetry puts each instrument of
:mod:`proactive.telemetry` under its name, with the instrument's attributes in ``customDimensions``. A renamed metric
or attribute would leave a chart silently empty; these tests fail instead.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proactive.delivery.contract import RowOutcome
from proactive.errors import Throttled
from proactive.limiter import apply
from proactive.models import DeliveryStatus
from tests.support.otel import Recorded

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "infra" / "modules" / "workbook.bicep"
CONTENT = ROOT / "infra" / "modules" / "operations-workbook.json"
COMPONENTS = "microsoft.insights/components"


def workbook() -> dict[str, Any]:
    content: dict[str, Any] = json.loads(CONTENT.read_text(encoding="utf-8"))
    return content


def queries() -> dict[str, str]:
    """Every KQL query of the workbook (charts, tables and parameter drop-downs), by item or parameter name."""
    found: dict[str, str] = {}
    for item in workbook()["items"]:
        content = item["content"]
        if item["type"] == 3:
            found[item["name"]] = content["query"]
        for parameter in content.get("parameters", []) if item["type"] == 9 else []:
            if "query" in parameter:
                found[f"parameter {parameter['name']}"] = parameter["query"]
    return found


def instrument_names() -> set[str]:
    """The names passed to ``meter.create_*`` in proactive/telemetry.py (read from the source)."""
    tree = ast.parse((ROOT / "proactive" / "telemetry.py").read_text(encoding="utf-8"))
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr.startswith("create_")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    }


@pytest.fixture(scope="module")
def emitted_attributes() -> Iterator[dict[str, set[str]]]:
    """Attribute keys of each metric, as the real instruments record them on the real SDK."""
    recorded = Recorded()
    telemetry = recorded.telemetry
    record = telemetry.outcome_recorder(tenant="tenant-1", operation="send", category="deployments")
    record(RowOutcome(recipient_key="user:a", status=DeliveryStatus.FAILED, reason="BadRequest"))
    state, decision = apply(None, "acquire", {"now": 1_795_251_600.0, "want": 10, "requester": "lane-1"})
    telemetry.limiter("tenant-1", "acquire", None, state, decision)
    telemetry.dead_lettered("deliveries-retry", "ServiceUnavailable")
    record(
        RowOutcome(
            recipient_key="user:b",
            status=DeliveryStatus.PENDING,
            reason="Throttled",
            handed_off=True,
            failures=(Throttled("429", retry_after=1.0),),
        )
    )
    attributes: dict[str, set[str]] = {}
    for point in recorded.points():
        attributes.setdefault(point.name, set()).update(point.attributes)
    yield attributes
    recorded.shutdown()


def test_the_workbook_charts_delivery_rate_throttle_rate_failures_by_reason_and_dead_letters() -> None:
    named = queries()
    assert {"delivery-rate", "throttle-rate", "failures-by-reason", "dead-letters"} <= set(named)
    assert '"proactive.throttled"' in named["throttle-rate"]
    assert '"proactive.dead_letters"' in named["dead-letters"]


@pytest.mark.parametrize("name", sorted(queries()))
def test_each_query_reads_custom_metrics_by_names_and_attributes_the_app_emits(
    name: str, emitted_attributes: dict[str, set[str]]
) -> None:
    query = queries()[name]
    assert re.search(r"^customMetrics$", query, re.MULTILINE), (
        "queries read Application Insights' customMetrics"
    )
    metrics = set(re.findall(r'"(proactive\.[a-z_.]+)"', query))
    assert metrics, "a query names the metrics it reads"
    assert metrics <= instrument_names(), (
        f"not emitted by proactive/telemetry.py: {metrics - instrument_names()}"
    )
    carried = set().union(*(emitted_attributes.get(metric, set()) for metric in metrics))
    read = set(re.findall(r"customDimensions\.([A-Za-z_]+)", query))
    assert read <= carried, f"attributes these metrics do not carry: {read - carried}"


@pytest.mark.parametrize("name", sorted(queries()))
def test_the_outcomes_a_query_names_are_delivery_statuses(name: str) -> None:
    query = queries()[name]
    named = set(re.findall(r'outcome == "([a-z_]+)"', query))
    for listed in re.findall(r"dynamic\(\[([^\]]*)\]\)", query):
        named |= set(re.findall(r'"([a-z_]+)"', listed))
    assert named <= {status.value for status in DeliveryStatus}


def test_every_chart_runs_on_the_application_insights_component_over_the_chosen_time_range() -> None:
    for item in workbook()["items"]:
        if item["type"] == 3:
            content = item["content"]
            assert content["resourceType"] == COMPONENTS, item["name"]
            assert content["timeContextFromParameter"] == "TimeRange", item["name"]


def test_the_module_deploys_this_content_on_the_application_insights_component() -> None:
    text = MODULE.read_text(encoding="utf-8")
    assert f"loadJsonContent('{CONTENT.name}')" in text
    assert "sourceId: appInsightsId" in text
    main = (ROOT / "infra" / "main.bicep").read_text(encoding="utf-8")
    assert "appInsightsId: monitoring.outputs.appInsightsId" in main
