"""OpenTelemetry set-up owned by the runtime, so tests get exactly what production gets.

Providers are per process-instance objects handed to whoever needs them
(never the global ones set from a ``__main__``), which lets several services
run in one test process, each with its own in-memory exporter. OTLP export is
on when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces/metrics
specific variable) is set, and off otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry import propagate, trace
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def _otlp_enabled(signal: str) -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    )


@dataclass
class Telemetry:
    service_name: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    _readers: list[MetricReader] = field(default_factory=list)

    @property
    def tracer(self) -> trace.Tracer:
        return self.tracer_provider.get_tracer("syncgov")

    @property
    def meter(self) -> Meter:
        return self.meter_provider.get_meter("syncgov")

    def shutdown(self) -> None:
        self.tracer_provider.force_flush()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def setup_telemetry(
    service_name: str,
    *,
    span_processors: Iterable[SpanProcessor] = (),
    metric_readers: Iterable[MetricReader] = (),
    prometheus: bool = False,
) -> Telemetry:
    resource = Resource.create({SERVICE_NAME: service_name})
    tracer_provider = TracerProvider(resource=resource)
    for processor in span_processors:
        tracer_provider.add_span_processor(processor)
    if _otlp_enabled("TRACES"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))

    readers = list(metric_readers)
    if prometheus:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers.append(PrometheusMetricReader())
    if _otlp_enabled("METRICS"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return Telemetry(service_name, tracer_provider, meter_provider, readers)


def inject_context(headers: dict[str, str]) -> dict[str, str]:
    """Write the current W3C trace context into message headers."""
    propagate.inject(headers)
    return headers


def extract_context(headers: Mapping[str, str] | None):  # -> opentelemetry.context.Context
    return propagate.extract(headers or {})
