"""OpenTelemetry set-up owned by the runtime, so tests get exactly what production gets.

Providers are per process-instance objects handed to whoever needs them
(never the global ones set from a ``__main__``), which lets several services
run in one test process, each with its own in-memory exporter. OTLP export is
on when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces/metrics
specific variable) is set, and off otherwise.

The resource is the code's defaults overlaid by the standard variables:
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` win over the service
name the code passes, as the SDK specification asks. Histograms of durations
get second-scale bucket boundaries through a View (``DURATION_BUCKETS``): the
SDK's defaults (0, 5, 10, 25 … 10000) suit milliseconds, so durations in
seconds would all land in the first bucket.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

# The RPC server duration (semantic conventions, ``rpc.server.call.duration``), in seconds.
RPC_SERVER_DURATION = "rpc.server.call.duration"
# Second-scale boundaries: the semantic conventions' advice for call durations (5 ms … 10 s), with 1 ms and
# 2.5 ms below it because most calls here answer in a few milliseconds.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)


def duration_views() -> list[View]:
    """Views giving every duration histogram measured in seconds its second-scale buckets."""
    return [
        View(
            instrument_name=RPC_SERVER_DURATION,
            aggregation=ExplicitBucketHistogramAggregation(boundaries=DURATION_BUCKETS),
        )
    ]


def service_resource(service_name: str) -> Resource:
    """The code's defaults, then the standard variables on top: the environment wins."""
    return Resource.create({SERVICE_NAME: service_name}).merge(OTELResourceDetector().detect())


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
    resource = service_resource(service_name)
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
    meter_provider = MeterProvider(resource=resource, metric_readers=readers, views=duration_views())
    return Telemetry(service_name, tracer_provider, meter_provider, readers)


def inject_context(headers: dict[str, str]) -> dict[str, str]:
    """Write the current W3C trace context into message headers."""
    propagate.inject(headers)
    return headers


def extract_context(headers: Mapping[str, str] | None) -> Context:
    return propagate.extract(headers or {})
