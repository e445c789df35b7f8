import io
import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from libs.runtime.logs import JsonFormatter


def test_json_lines_carry_service_extras_and_the_active_trace():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("po-publication"))
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("work") as span:
        logger.info("published %s", "PO-1", extra={"po_id": "PO-1"})
    logger.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert entry["msg"] == "published PO-1"
    assert entry["service"] == "po-publication"
    assert entry["level"] == "info"
    assert entry["po_id"] == "PO-1"
    assert entry["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert entry["ts"].endswith("Z")
