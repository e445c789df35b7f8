"""OpenTelemetry set-up owned by the runtime, so tests get exactly what production gets.

Providers are per process-instance objects handed to whoever needs them
(never the global ones set from a ``__main__``), which lets several services
run in one test process, each with its own in-memory exporter. OTLP export is
on when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces/metrics
specific variable) is set, and off otherwise; ``OTEL_TRACES_EXPORTER`` may say
``otlp`` (on, to the endpoint or the SDK's default ``localhost:4317``), ``console``
(spans printed to stdout) or ``none`` (off even when an endpoint is set).

Sampling follows the standard ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``;
unset, it is :data:`DEFAULT_SAMPLER` at :data:`DEFAULT_SAMPLER_RATIO` (parent-based, so a
caller's decision carried in ``traceparent`` is followed and one workflow is sampled
whole or not at all; docs/decisions.md "Logs, traces, metrics" says why this default).

The resource is the code's defaults overlaid by the standard variables:
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` win over the service
name the code passes, as the SDK specification asks. Histograms of durations
get second-scale bucket boundaries through a View (``DURATION_BUCKETS``): the
SDK's defaults (0, 5, 10, 25 … 10000) suit milliseconds, so durations in
seconds would all land in the first bucket.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.util.types import Attributes

log = logging.getLogger(__name__)

# The sampler when OTEL_TRACES_SAMPLER is unset: a root's decision by its trace id, everything below it follows.
DEFAULT_SAMPLER = "parentbased_traceidratio"
# Its ratio when OTEL_TRACES_SAMPLER_ARG is unset: one workflow in ten started here (a caller's sampled context is
# always followed). Every one cost a governed publish about a quarter of its throughput at concurrency 64, one in
# ten costs it a few percent (bench/publish_po.py, docs/benchmarks.md "Tracing"); `syncgov up` traces every one.
DEFAULT_SAMPLER_RATIO = 0.1

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


def traces_sampler() -> sampling.Sampler:
    """The sampler the standard variables name; :data:`DEFAULT_SAMPLER` at :data:`DEFAULT_SAMPLER_RATIO` without them.

    The ratio samplers take ``OTEL_TRACES_SAMPLER_ARG`` (a number in [0, 1]); unset or unreadable, the default ratio
    (the SDK alone would fall back to 1.0 for an unreadable one, and to parent-based always-on without a name)."""
    name = os.environ.get("OTEL_TRACES_SAMPLER", DEFAULT_SAMPLER).strip().lower() or DEFAULT_SAMPLER
    if name not in ("traceidratio", "parentbased_traceidratio"):
        return sampling._get_from_env_or_default()  # the SDK's reading of the other names
    argument = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    ratio = DEFAULT_SAMPLER_RATIO
    if argument:
        try:
            ratio = float(argument)
        except ValueError:
            log.warning("OTEL_TRACES_SAMPLER_ARG=%r is not a number; sampling at %s", argument, DEFAULT_SAMPLER_RATIO)
        if not 0.0 <= ratio <= 1.0:
            log.warning("OTEL_TRACES_SAMPLER_ARG=%r is outside [0, 1]; sampling at %s", argument, DEFAULT_SAMPLER_RATIO)
            ratio = DEFAULT_SAMPLER_RATIO
    root = sampling.TraceIdRatioBased(ratio)
    return root if name == "traceidratio" else sampling.ParentBased(LinkedRoots(root))


class LinkedRoots(sampling.Sampler):
    """A root sampler that keeps a root linked to a sampled span: a consumer's span that starts its own trace (a
    redelivery, a message handled late) is sampled when the publish it links to was, so a workflow traced whole stays
    traced through its retries; other roots are ``root``'s to decide."""

    def __init__(self, root: sampling.Sampler) -> None:
        self._root = root

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> sampling.SamplingResult:
        if links and any(link.context.trace_flags.sampled for link in links):
            return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE, attributes, trace_state)
        return self._root.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"LinkedRoots{{{self._root.get_description()}}}"


def _span_exporters() -> list[SpanProcessor]:
    """What OTEL_TRACES_EXPORTER (comma-separated) and the OTLP endpoint variables ask for."""
    named = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    chosen = {each.strip() for each in named.split(",") if each.strip()} if named else set()
    if not chosen and _otlp_enabled("TRACES"):
        chosen = {"otlp"}
    processors: list[SpanProcessor] = []
    if "none" in chosen:
        return processors
    if "otlp" in chosen:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        if protocol and protocol.strip().lower() != "grpc":
            log.warning("OTLP protocol %r is not in this build; spans are exported over gRPC", protocol)

        processors.append(BatchSpanProcessor(OTLPSpanExporter()))
    if "console" in chosen:
        processors.append(SimpleSpanProcessor(ConsoleSpanExporter()))
    for unknown in sorted(chosen - {"otlp", "console", "none"}):
        log.warning("OTEL_TRACES_EXPORTER names %r, which this build does not have (otlp, console, none)", unknown)
    return processors


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
    sampler: sampling.Sampler | None = None,
) -> Telemetry:
    resource = service_resource(service_name)
    tracer_provider = TracerProvider(resource=resource, sampler=sampler or traces_sampler())
    for processor in [*span_processors, *_span_exporters()]:
        tracer_provider.add_span_processor(processor)

    readers = list(metric_readers)
    if prometheus:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers.append(PrometheusMetricReader())
    if _otlp_enabled("METRICS"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers, views=duration_views())
    return Telemetry(service_name, tracer_provider, meter_provider, readers)


def drops_children_of_unsampled(tracer: trace.Tracer) -> bool:
    """Whether ``tracer``'s sampler records no span whose local parent is not sampled (parent-based sampling, the
    default, or always-off), asked of the sampler itself; False when it cannot tell (a tracer without a sampler)."""
    sampler = getattr(tracer, "sampler", None)
    if not isinstance(sampler, sampling.Sampler):
        return False
    unsampled = trace.SpanContext(trace_id=1, span_id=1, is_remote=False, trace_flags=trace.TraceFlags(0))
    parent = trace.set_span_in_context(trace.NonRecordingSpan(unsampled))
    decision = sampler.should_sample(parent, trace_id=1, name="probe", kind=trace.SpanKind.PRODUCER).decision
    return decision is sampling.Decision.DROP


def inject_context(headers: dict[str, str]) -> dict[str, str]:
    """Write the current W3C trace context into message headers."""
    propagate.inject(headers)
    return headers


TRACE_HEADERS = ("traceparent", "tracestate", "baggage")


def traced_metadata(
    metadata: Sequence[tuple[str, str]] = (), context: Context | None = None
) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata with the W3C trace context added: the current one, or ``context`` (e.g. the one a message
    carried in its headers). Keys the metadata holds already are left as they are."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    present = {key for key, _ in metadata}
    return (*metadata, *((key, value) for key, value in carrier.items() if key not in present))


def environment_context(environ: Mapping[str, str] | None = None) -> Context | None:
    """The trace context a process was started in, from ``TRACEPARENT`` / ``TRACESTATE`` (OpenTelemetry's environment
    variables as carriers: a CI job or a script hands its trace to the commands it runs); None without them."""
    environ = os.environ if environ is None else environ
    if not environ.get("TRACEPARENT"):
        return None
    carrier = {"traceparent": environ["TRACEPARENT"]}
    if environ.get("TRACESTATE"):
        carrier["tracestate"] = environ["TRACESTATE"]
    return propagate.extract(carrier)


def carried_metadata(
    headers: Mapping[str, str] | None, metadata: Sequence[tuple[str, str]] = ()
) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata carrying on the trace context a message's headers hold (``traceparent``, ``tracestate``),
    for a system answering a message with a call and no tracer of its own (the ERP adapter example)."""
    present = {key for key, _ in metadata}
    carried = ((key, (headers or {})[key]) for key in TRACE_HEADERS if key in (headers or {}) and key not in present)
    return (*metadata, *carried)


def extract_context(headers: Mapping[str, str] | None) -> Context:
    return propagate.extract(headers or {})
