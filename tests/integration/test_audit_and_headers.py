"""Every id the edge accepts is auditable, an audit record that cannot be stored is an exception and a metric,
and message ids are header-safe: found by hostile testing (issue 9), checked against real servers."""

from __future__ import annotations

import grpc
import nats
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from libs.runtime.audit import AuditRecorder
from libs.runtime.events import Event, EventPublisher
from libs.runtime.exception_reporter import ExceptionReporter
from libs.runtime.streams import EXCEPTION, PO, provision_streams
from libs.runtime.subjects import Namespace
from libs.runtime.testing import unique_namespace
from syncgov.common.v1 import types_pb2
from syncgov.controlplane.v1 import controlplane_service_pb2 as cp
from syncgov.exception.v1 import exception_pb2
from syncgov.po.v1 import po_service_pb2
from tests.integration.helpers import eventually, message_count, raised_exceptions, requests_of, sample_order
from tests.integration.test_control_plane import ERP, OPS, PROCUREMENT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
LONG_ID = "PO-" + "7" * 250  # 253 characters: the edge accepts it (ids may have 256)


async def test_writes_and_refusals_of_the_longest_ids_are_chained_into_the_audit_trail(governed_stack):
    _, stub, _, po_stub = governed_stack
    refused_id, accepted_id = LONG_ID, LONG_ID[:-1] + "8"
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await po_stub.PublishPurchaseOrder(
            po_service_pb2.PublishPurchaseOrderRequest(purchase_order=sample_order(refused_id)), metadata=ERP
        )
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await po_stub.PublishPurchaseOrder(
        po_service_pb2.PublishPurchaseOrderRequest(purchase_order=sample_order(accepted_id)), metadata=PROCUREMENT
    )

    async def trail(key: str):
        answer = await stub.QueryAuditTrail(
            cp.QueryAuditTrailRequest(object_type="purchase_order", object_key=key), metadata=OPS
        )
        return list(answer.entries)

    [refusal] = await eventually(lambda: trail(refused_id))
    assert (refusal.action, refusal.outcome, refusal.object.object_key) == ("refusal", "denied", refused_id)
    [write] = await eventually(lambda: trail(accepted_id))
    assert (write.action, write.outcome, write.object.object_key) == ("write", "allowed", accepted_id)


async def test_an_audit_record_that_cannot_be_stored_raises_audit_failed_and_counts(nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        namespace = Namespace(unique_namespace())
        await provision_streams(js, namespace, (EXCEPTION,))  # no audit inbox: every record fails
        publisher = EventPublisher(requests_of(js), namespace, TracerProvider().get_tracer("test"), timeout=1)
        reader = InMemoryMetricReader()
        meter = MeterProvider(metric_readers=[reader]).get_meter("test")
        recorder = AuditRecorder(publisher, ExceptionReporter(publisher, "tests"), meter)
        stored = await recorder.record(
            actor="erp",
            action="refusal",
            object_ref=types_pb2.ObjectRef(object_type="purchase_order", object_key="PO-1"),
            outcome="denied",
            reason="test",
            policy_revision=3,
        )
        assert stored is False
        [exception] = await raised_exceptions(js, namespace)
        assert exception.type == exception_pb2.EXCEPTION_TYPE_AUDIT_FAILED
        assert exception.object.object_key == "PO-1"
        assert '"refusal"' in exception.evidence[0]
        metrics = reader.get_metrics_data()
        assert metrics is not None
        points = {
            (point.attributes or {}).get("action"): getattr(point, "value", None)
            for resource in metrics.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "syncgov.audit.failures"
            for point in metric.data.data_points
        }
        assert points["refusal"] == 1  # the one record lost, by the action it recorded
        assert all(value == 0 for action, value in points.items() if action != "refusal")
    finally:
        await nc.drain()


async def test_idempotency_keys_that_differ_only_by_line_breaks_are_different_messages(nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        namespace = Namespace(unique_namespace())
        await provision_streams(js, namespace, (PO,))
        publisher = EventPublisher(requests_of(js), namespace, TracerProvider().get_tracer("test"), timeout=2)
        answers = []
        for key in ("PO-1\r\nx", "PO-1\nx", "PO-1 x"):
            event = Event("po", "purchase_order", key, 1, "published", types_pb2.ObjectRef(), key, "tests")
            answers.append(await publisher.publish(event))
        assert [a.duplicate for a in answers] == [False, False, False]
        assert await message_count(js, namespace, "po") == 3
    finally:
        await nc.drain()
