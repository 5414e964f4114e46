"""Where telemetry goes: Azure Monitor, an OTLP collector, or nowhere. Called once, at start.

Order (issue 15):

1. ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set: ``configure_azure_monitor()`` (package
   ``azure-monitor-opentelemetry``, in ``requirements.txt``) with the product's logger only, so the SDKs'
   request logs (URLs with tenant and user ids) stay out, and without the Azure SDK's span per storage
   call (cost: several per recipient). host.json keeps ``telemetryMode: OpenTelemetry``
   so the host's own traces use the same format and correlate with ours. For the Python worker to hand the
   host's trace context to the function (so our spans join the host's request span) set the app setting
   ``PYTHON_ENABLE_OPENTELEMETRY=true`` next to the connection string (Azure Functions' OpenTelemetry
   how-to); without it our spans still export, as their own traces.
2. else ``OTEL_EXPORTER_OTLP_ENDPOINT`` set: the OTLP/HTTP exporters for traces and metrics
   (``opentelemetry-exporter-otlp-proto-http``, in ``requirements.txt``; protobuf to ``{endpoint}/v1/traces``
   and ``/v1/metrics``). An install without the package gets a warning and no export, not a failed start.
3. else nothing: the OpenTelemetry API stays a no-op.

The exporter libraries read their other standard ``OTEL_*`` variables themselves (headers, service name).
"""

from __future__ import annotations

import importlib
import logging
from enum import StrEnum

from opentelemetry import metrics, trace

__all__ = ["Exporter", "configure_exporters"]

logger = logging.getLogger(__name__)

APPLICATIONINSIGHTS = "APPLICATIONINSIGHTS_CONNECTION_STRING"
OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
_OTLP_PACKAGE = "opentelemetry-exporter-otlp-proto-http"
# Logs of these loggers go to Application Insights; the SDK loggers stay out (proactive.composition).
PRODUCT_LOGGER = "proactive"

_configured: Exporter | None = None


class Exporter(StrEnum):
    """What :func:`configure_exporters` set up."""

    AZURE_MONITOR = "azure_monitor"
    OTLP = "otlp"
    OTLP_UNAVAILABLE = "otlp_unavailable"
    NONE = "none"


def configure_exporters(*, connection_string: str, otlp_endpoint: str) -> Exporter:
    """Install the telemetry providers asked for; once per process (later calls do nothing).

    Args:
        connection_string: ``Settings.app_insights_connection`` (``APPLICATIONINSIGHTS_CONNECTION_STRING``).
        otlp_endpoint: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter reads it, and the other ``OTEL_*``
            variables, from the environment itself; here it only decides whether to build one).

    Returns:
        What was set up (the first call's answer on every later call).
    """
    global _configured
    if _configured is not None:
        return _configured
    if connection_string.strip():
        from azure.monitor.opentelemetry import configure_azure_monitor

        configure_azure_monitor(
            connection_string=connection_string.strip(),
            logger_name=PRODUCT_LOGGER,
            # A span per Table/Queue call (several per recipient) would multiply the ingestion bill of a
            # large broadcast; the product's own metrics and send_batch spans say what matters.
            instrumentation_options={"azure_sdk": {"enabled": False}},
        )
        _configured = Exporter.AZURE_MONITOR
    elif otlp_endpoint.strip():
        _configured = _configure_otlp()
    else:
        _configured = Exporter.NONE
    logger.info("Telemetry export: %s", _configured.value)
    return _configured


def _configure_otlp() -> Exporter:
    try:
        trace_exporter = importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
        metric_exporter = importlib.import_module("opentelemetry.exporter.otlp.proto.http.metric_exporter")
    except ImportError:
        logger.warning("%s is set but %s is not installed: nothing is exported", OTLP_ENDPOINT, _OTLP_PACKAGE)
        return Exporter.OTLP_UNAVAILABLE
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(trace_exporter.OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    reader = PeriodicExportingMetricReader(metric_exporter.OTLPMetricExporter())
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return Exporter.OTLP
