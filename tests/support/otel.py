"""The OpenTelemetry SDK's in-memory reader and exporter behind a :class:`~proactive.telemetry.Telemetry`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proactive.telemetry import Telemetry


@dataclass
class Point:
    name: str
    attributes: dict[str, Any]
    value: float  # a counter's or gauge's value, a histogram's count
    total: float | None = None  # a histogram's sum


class Recorded:
    """A :class:`Telemetry` on real SDK providers whose output stays in memory."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.exporter = InMemorySpanExporter()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.telemetry = Telemetry(meter_provider=self.meter_provider, tracer_provider=self.tracer_provider)

    def points(self, name: str | None = None) -> list[Point]:
        data = self.reader.get_metrics_data()
        found: list[Point] = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if name is not None and metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        if hasattr(point, "count"):
                            found.append(
                                Point(metric.name, dict(point.attributes or {}), point.count, point.sum)
                            )
                        else:
                            found.append(Point(metric.name, dict(point.attributes or {}), point.value))
        return found

    def total(self, name: str, **attributes: Any) -> float:
        return sum(
            p.value for p in self.points(name) if all(p.attributes.get(k) == v for k, v in attributes.items())
        )

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def attribute_values(self) -> Iterator[str]:
        """Every attribute value of every metric point and span (for the no-personal-data check)."""
        for point in self.points():
            yield from (str(v) for v in point.attributes.values())
        for span in self.spans():
            yield from (str(v) for v in (span.attributes or {}).values())

    def shutdown(self) -> None:
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()
