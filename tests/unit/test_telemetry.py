"""The instruments of :mod:`proactive.telemetry` on the real OpenTelemetry SDK (in-memory reader and exporter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from proactive.adapters import telemetry_export
from proactive.delivery.contract import RowOutcome
from proactive.errors import ServiceBusy, Throttled
from proactive.limiter import apply
from proactive.models import DeliveryStatus, SendOutcome, SendStatus
from proactive.telemetry import TimedConnector
from tests.support.otel import Recorded

TENANT = "tenant-1"
AAD = "7f7f7f7f-0000-4000-8000-000000000001"
T0 = 1_795_251_600.0


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    recorded = Recorded()
    yield recorded
    recorded.shutdown()


def test_row_outcomes_count_sends_429s_retries_and_hand_offs_by_tenant_outcome_and_reason(
    recorded: Recorded,
) -> None:
    record = recorded.telemetry.outcome_recorder(tenant=TENANT, operation="send")
    record(
        RowOutcome(
            recipient_key=f"user:{AAD}",
            status=DeliveryStatus.SENT,
            send=SendOutcome(recipient_key=f"user:{AAD}", status=SendStatus.SENT, attempts=3),
            failures=(Throttled("429", retry_after=1.0), ServiceBusy("503", status=503)),
        )
    )
    record(
        RowOutcome(
            recipient_key=f"user:{AAD}",
            status=DeliveryStatus.PENDING,
            reason="Throttled",
            handed_off=True,
            failures=(Throttled("429", retry_after=1.0), Throttled("429", retry_after=2.0)),
        )
    )
    record(
        RowOutcome(
            recipient_key=f"user:{AAD}", status=DeliveryStatus.UNREACHABLE, reason="ConversationBlockedByUser"
        )
    )

    assert recorded.total("proactive.sends", tenant=TENANT, outcome="sent", reason="none") == 1
    assert recorded.total("proactive.sends", outcome="pending", reason="Throttled") == 1
    assert recorded.total("proactive.sends", outcome="unreachable", reason="ConversationBlockedByUser") == 1
    assert recorded.total("proactive.throttled", tenant=TENANT) == 3
    assert recorded.total("proactive.send.retries", tenant=TENANT) == 2
    assert recorded.total("proactive.handoffs", tenant=TENANT, reason="Throttled") == 1
    assert all(AAD not in value for value in recorded.attribute_values())


class _Connector:
    """A real BotConnector port implementation answering from a script (no network needed for timing)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    async def send_activity(
        self, service_url: str, conversation_id: str, activity: Mapping[str, Any]
    ) -> str | None:
        if self.error:
            raise self.error
        return "activity-1"

    async def update_activity(
        self, service_url: str, conversation_id: str, activity_id: str, activity: Mapping[str, Any]
    ) -> None:
        return None

    async def delete_activity(self, service_url: str, conversation_id: str, activity_id: str) -> None:
        return None


async def test_bot_connector_calls_are_timed_by_operation_and_outcome(recorded: Recorded) -> None:
    ticks = iter([0.0, 0.25, 1.0, 1.5, 2.0, 2.125])
    connector = TimedConnector(_Connector(), recorded.telemetry, clock=lambda: next(ticks))
    assert await connector.send_activity("https://smba.trafficmanager.net/x/", "a:1", {}) == "activity-1"
    await connector.delete_activity("https://smba.trafficmanager.net/x/", "a:1", "activity-1")
    failing = TimedConnector(
        _Connector(Throttled("429", retry_after=1.0)), recorded.telemetry, clock=lambda: next(ticks)
    )
    with pytest.raises(Throttled):
        await failing.send_activity("https://smba.trafficmanager.net/x/", "a:1", {})
    points = {
        (p.attributes["operation"], p.attributes["outcome"]): p
        for p in recorded.points("proactive.connector.duration")
    }
    assert points[("send", "ok")].value == 1 and points[("send", "ok")].total == pytest.approx(0.25)
    assert points[("delete", "ok")].total == pytest.approx(0.5)
    throttled = points[("send", "Throttled")]
    assert throttled.total == pytest.approx(0.125) and throttled.attributes["http_status"] == 429


def test_limiter_operations_report_grants_rate_and_breaker_phase_changes(recorded: Recorded) -> None:
    state: Any = None

    def run(operation: str, operation_input: dict[str, Any]) -> dict[str, Any]:
        nonlocal state
        before = state
        state, decision = apply(state, operation, operation_input)
        recorded.telemetry.limiter(TENANT, operation, before, state, decision)
        return decision

    grant = run("acquire", {"now": T0, "want": 10, "requester": "lane-1"})["grant"]
    assert recorded.total("proactive.limiter.granted", tenant=TENANT) == grant["tokens"] > 0
    assert recorded.total("proactive.limiter.rate", tenant=TENANT) == 50.0
    assert recorded.total("proactive.limiter.breaker_open", tenant=TENANT) == 0
    for i in range(3):
        run("report", {"now": T0 + 0.1 * (i + 1), "serverErrors": 5})
    assert recorded.total("proactive.limiter.breaker_open", tenant=TENANT) == 1
    assert recorded.total("proactive.limiter.breaker", tenant=TENANT, phase="open") == 1
    run("acquire", {"now": T0 + 0.5, "want": 10, "requester": "lane-1"})  # refused while open: no change
    assert recorded.total("proactive.limiter.breaker", tenant=TENANT) == 1
    # The state as a JSON string (what an entity may hand back) reads the same.
    recorded.telemetry.limiter(TENANT, "get", json.dumps(state), json.dumps(state), {})
    assert recorded.total("proactive.limiter.breaker", tenant=TENANT) == 1


def test_dead_letters_and_reconcile_actions_are_counted(recorded: Recorded) -> None:
    recorded.telemetry.dead_lettered("deliveries-retry", "ServiceUnavailable")
    recorded.telemetry.dead_lettered("deliveries-retry", None)
    recorded.telemetry.reconciled(reconciled=2, requeued=3, cancelled=0)
    assert (
        recorded.total("proactive.dead_letters", queue="deliveries-retry", reason="ServiceUnavailable") == 1
    )
    assert recorded.total("proactive.dead_letters", reason="none") == 1
    assert recorded.total("proactive.reconcile", action="reconciled") == 2
    assert recorded.total("proactive.reconcile", action="requeued") == 3


def test_install_outcomes_are_counted_by_tenant_and_outcome(recorded: Recorded) -> None:
    recorded.telemetry.installs_handled(TENANT, ["installed", "installed", "user_closed"])
    recorded.telemetry.installs_handled(None, ["dead_lettered"])
    assert recorded.total("proactive.installs", tenant=TENANT, outcome="installed") == 2
    assert recorded.total("proactive.installs", tenant=TENANT, outcome="user_closed") == 1
    assert recorded.total("proactive.installs", tenant="none", outcome="dead_lettered") == 1
    assert not recorded.points("proactive.reconcile") or all(
        p.attributes["action"] != "cancelled" for p in recorded.points("proactive.reconcile")
    )


def test_a_batch_span_carries_the_notification_id_and_the_batch_counts(recorded: Recorded) -> None:
    with recorded.telemetry.batch_span("deploy-42", TENANT, "send", 20) as span:
        recorded.telemetry.batch_result(span, {"attempted": 20, "sent": 18, "retryQueued": 2, "halted": None})
    [finished] = recorded.spans()
    assert finished.name == "send_batch"
    assert finished.attributes is not None
    assert finished.attributes["proactive.notification_id"] == "deploy-42"
    assert finished.attributes["proactive.tenant_id"] == TENANT
    assert finished.attributes["proactive.batch.sent"] == 18


def test_without_a_connection_string_or_endpoint_nothing_is_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry_export, "_configured", None)
    none = telemetry_export.configure_exporters(connection_string="", otlp_endpoint="")
    assert none is telemetry_export.Exporter.NONE
    # Once per process: a later call with a connection string changes nothing.
    assert (
        telemetry_export.configure_exporters(connection_string="InstrumentationKey=x", otlp_endpoint="")
        is telemetry_export.Exporter.NONE
    )


def test_an_otlp_endpoint_without_the_exporter_package_is_reported_not_fatal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As on an install without the package: a None entry in sys.modules makes its import raise ImportError.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    monkeypatch.setattr(telemetry_export, "_configured", None)
    found = telemetry_export.configure_exporters(connection_string="", otlp_endpoint="http://127.0.0.1:4318")
    assert found is telemetry_export.Exporter.OTLP_UNAVAILABLE
    assert "is not installed: nothing is exported" in caplog.text


def test_a_connection_string_configures_azure_monitor_once_at_start() -> None:
    # A fresh interpreter: configure_azure_monitor installs global providers and export threads.
    script = (
        "from opentelemetry import metrics, trace\n"
        "from proactive.adapters.telemetry_export import configure_exporters\n"
        "cs = 'InstrumentationKey=00000000-0000-4000-8000-000000000000;IngestionEndpoint=http://127.0.0.1:9/'\n"
        "env = {'connection_string': cs, 'otlp_endpoint': ''}\n"
        "print(configure_exporters(**env).value, configure_exporters(**env).value)\n"
        "print(type(metrics.get_meter_provider()).__module__, type(trace.get_tracer_provider()).__module__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    first, second = done.stdout.splitlines()[:2]
    assert first == "azure_monitor azure_monitor"
    assert second.split() == ["opentelemetry.sdk.metrics._internal", "opentelemetry.sdk.trace"]


class _OtlpReceiver(ThreadingHTTPServer):
    """The smallest OTLP/HTTP collector: keeps every request's path and protobuf body, answers 200."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, bytes]] = []
        super().__init__(("127.0.0.1", 0), _OtlpHandler)

    @property
    def endpoint(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _OtlpHandler(BaseHTTPRequestHandler):
    server: _OtlpReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def otlp_receiver() -> Iterator[_OtlpReceiver]:
    receiver = _OtlpReceiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.shutdown()
    receiver.server_close()
    thread.join()


def test_an_otlp_endpoint_without_a_connection_string_exports_metrics_and_spans_over_http(
    otlp_receiver: _OtlpReceiver,
) -> None:
    # A fresh interpreter (global providers), started the way function_app.py starts: composition.configure.
    # Shutting the providers down flushes them, so the export has happened when the process ends.
    script = (
        "import os\n"
        "from opentelemetry import metrics, trace\n"
        "from proactive import composition, telemetry\n"
        "from proactive.models import DeliveryStatus\n"
        "from proactive.delivery.contract import RowOutcome\n"
        "environ = {'AzureWebJobsStorage': 'UseDevelopmentStorage=true', 'BOT_AUTH': 'anonymous',\n"
        "           'OTEL_EXPORTER_OTLP_ENDPOINT': os.environ['OTEL_EXPORTER_OTLP_ENDPOINT']}\n"
        "composition.configure(environ)\n"
        "record = telemetry.current().outcome_recorder(tenant='tenant-1', operation='send')\n"
        "with telemetry.current().batch_span('deploy-42', 'tenant-1', 'send', 20):\n"
        "    record(RowOutcome(recipient_key='user:x', status=DeliveryStatus.SENT))\n"
        "metrics.get_meter_provider().shutdown()\n"
        "trace.get_tracer_provider().shutdown()\n"
    )
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "APPLICATIONINSIGHTS_"))
    }
    environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_receiver.endpoint
    subprocess.run([sys.executable, "-c", script], env=environ, timeout=120, check=True)

    by_path = {path: (kind, body) for path, kind, body in otlp_receiver.received}
    assert set(by_path) == {"/v1/metrics", "/v1/traces"}
    assert all(kind == "application/x-protobuf" for kind, _ in by_path.values())
    exported = ExportMetricsServiceRequest.FromString(by_path["/v1/metrics"][1])
    sends = [
        metric
        for resource in exported.resource_metrics
        for scope in resource.scope_metrics
        if scope.scope.name == "proactive"
        for metric in scope.metrics
        if metric.name == "proactive.sends"
    ]
    [point] = [point for metric in sends for point in metric.sum.data_points]
    attributes = {item.key: item.value.string_value for item in point.attributes}
    assert point.as_int == 1 and attributes["tenant"] == "tenant-1" and attributes["outcome"] == "sent"
    spans = ExportTraceServiceRequest.FromString(by_path["/v1/traces"][1])
    [span] = [
        span for resource in spans.resource_spans for scope in resource.scope_spans for span in scope.spans
    ]
    assert span.name == "send_batch"
    assert {item.key: item.value.string_value for item in span.attributes}[
        "proactive.notification_id"
    ] == "deploy-42"
