"""Trace context across hops: the consumer span's parent or link, the sampler by the standard variables, metadata."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from opentelemetry import propagate
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.trace import get_current_span

from libs.runtime.consumers import HANDLED_AT_ONCE_SECONDS, consumer_parent
from libs.runtime.telemetry import (
    DEFAULT_SAMPLER_RATIO,
    carried_metadata,
    environment_context,
    setup_telemetry,
    traced_metadata,
    traces_sampler,
)

NOW = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)


def _published() -> tuple[dict[str, str], int, int]:
    """Headers as the publisher writes them, with the publishing span's (trace id, span id)."""
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("publish") as span:
        headers: dict[str, str] = {}
        propagate.inject(headers)
        return headers, span.get_span_context().trace_id, span.get_span_context().span_id


def test_a_message_handled_at_once_is_the_publishers_child() -> None:
    headers, trace_id, span_id = _published()
    parent, links = consumer_parent(headers, 1, NOW - timedelta(seconds=1), NOW)
    assert parent is not None
    context = get_current_span(parent).get_span_context()
    assert (context.trace_id, context.span_id, context.is_remote) == (trace_id, span_id, True)
    assert links == []


def test_a_redelivery_starts_its_own_trace_linked_to_the_publisher() -> None:
    headers, trace_id, span_id = _published()
    parent, [link] = consumer_parent(headers, 2, NOW - timedelta(seconds=1), NOW)
    assert not get_current_span(parent).get_span_context().is_valid  # a root
    assert (link.context.trace_id, link.context.span_id) == (trace_id, span_id)
    assert link.attributes == {"syncgov.link.reason": "redelivery"}


def test_a_message_handled_later_starts_its_own_trace_linked_to_the_publisher() -> None:
    headers, trace_id, _ = _published()
    stored = NOW - timedelta(seconds=HANDLED_AT_ONCE_SECONDS + 1)
    parent, [link] = consumer_parent(headers, 1, stored, NOW)
    assert not get_current_span(parent).get_span_context().is_valid
    assert link.context.trace_id == trace_id
    assert link.attributes == {"syncgov.link.reason": "late"}


def test_a_message_without_trace_context_is_a_root_without_links() -> None:
    parent, links = consumer_parent({"Nats-Msg-Id": "x"}, 3, NOW, NOW)
    assert not get_current_span(parent).get_span_context().is_valid
    assert links == []


def test_the_default_sampler_is_parent_based_at_the_default_ratio(clean_env) -> None:
    sampler = traces_sampler()
    assert isinstance(sampler, sampling.ParentBased)
    assert f"TraceIdRatioBased{{{DEFAULT_SAMPLER_RATIO}}}" in sampler.get_description()


def test_the_standard_variables_choose_the_sampler(clean_env) -> None:
    clean_env.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    assert "TraceIdRatioBased{0.25}" in traces_sampler().get_description()
    clean_env.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    assert traces_sampler().get_description() == "TraceIdRatioBased{0.25}"
    clean_env.setenv("OTEL_TRACES_SAMPLER_ARG", "lots")  # unreadable: the default ratio, with a warning
    assert traces_sampler().get_description() == f"TraceIdRatioBased{{{DEFAULT_SAMPLER_RATIO}}}"
    clean_env.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert traces_sampler() is sampling.ALWAYS_OFF
    telemetry = setup_telemetry("po-publication")
    with telemetry.tracer.start_as_current_span("off") as span:
        assert not span.is_recording()
        flags = int(dict(traced_metadata())["traceparent"].rsplit("-", 1)[1], 16)
        assert flags & 1 == 0  # the decision travels with the context: not sampled
    telemetry.shutdown()


def test_traces_exporter_none_exports_nothing_even_with_an_endpoint(clean_env) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    clean_env.setenv("OTEL_TRACES_EXPORTER", "none")
    telemetry = setup_telemetry("po-publication")
    assert telemetry.tracer_provider._active_span_processor._span_processors == ()
    telemetry.shutdown()


def test_call_metadata_carries_the_current_context_or_a_messages() -> None:
    tracer = TracerProvider().get_tracer("test")
    declared = (("x-syncgov-system", "erp"),)
    assert traced_metadata(declared) == declared  # no span: nothing to carry
    with tracer.start_as_current_span("call") as span:
        metadata = dict(traced_metadata(declared))
    assert metadata["x-syncgov-system"] == "erp"
    assert metadata["traceparent"].split("-")[1] == format(span.get_span_context().trace_id, "032x")
    headers = {"traceparent": metadata["traceparent"], "Nats-Msg-Id": "k", "tracestate": "a=b"}
    assert carried_metadata(headers, declared) == (
        *declared,
        ("traceparent", headers["traceparent"]),
        ("tracestate", "a=b"),
    )


def test_the_cli_carries_the_trace_context_it_was_started_in(clean_env) -> None:
    from libs.cli.client import Connection

    assert Connection("127.0.0.1:1", "procurement").metadata() == (("x-syncgov-system", "procurement"),)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    clean_env.setenv("TRACEPARENT", traceparent)
    clean_env.setenv("TRACESTATE", "vendor=1")
    assert dict(Connection("127.0.0.1:1", "procurement").metadata()) == {
        "x-syncgov-system": "procurement",
        "traceparent": traceparent,
        "tracestate": "vendor=1",
    }
    assert environment_context({}) is None


def test_a_root_linked_to_a_sampled_publish_is_sampled_whatever_the_ratio(clean_env) -> None:
    clean_env.setenv("OTEL_TRACES_SAMPLER_ARG", "0")  # no root of its own is sampled
    telemetry = setup_telemetry("invoice-status")
    headers, trace_id, _ = _published()  # published in a sampled trace
    parent, links = consumer_parent(headers, 2, NOW, NOW)
    with telemetry.tracer.start_as_current_span("process", context=parent, links=links) as redelivered:
        assert redelivered.is_recording()
        assert redelivered.get_span_context().trace_id != trace_id
    with telemetry.tracer.start_as_current_span("unlinked root", context=parent) as alone:
        assert not alone.is_recording()
    telemetry.shutdown()


def test_an_otlp_protocol_this_build_lacks_is_named_in_a_warning(clean_env, caplog) -> None:
    clean_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9")
    clean_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    telemetry = setup_telemetry("po-publication")
    assert "'http/protobuf' is not in this build" in caplog.text
    telemetry.shutdown()
