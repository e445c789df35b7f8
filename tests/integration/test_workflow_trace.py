"""One PO's workflow is one trace: publish, change, the ERP's acknowledgment, a partial receipt, an invoice matched.

po-publication, receipt-reconciliation, invoice-status, the exception router and the control plane run together in
one namespace, each
with its own in-memory span exporter (the runtime's, as in production), against real nats-server and valkey. The
test is the procurement system: it opens the workflow's span and carries its W3C trace context in the metadata of
each call it makes (publish, change, receipt, invoice). The ERP is the adapter example: it answers each PO event
with an acknowledgment carrying the trace context the event brought in its NATS headers. Every server span, every
publish and every consumer hop (invoice-status re-matching on PO and receipt events, the exception router opening
the exception the receipt raised, the control plane chaining each domain event into the audit trail) then shares the
workflow's one trace id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from examples.erp_adapter.adapter import ErpClient, run_adapter
from libs.runtime.telemetry import traced_metadata
from libs.runtime.testing import running_service
from services.invoice_status.wiring import wire as wire_invoices
from services.po_publication.wiring import wire as wire_po
from services.receipt_reconciliation.wiring import wire as wire_receipts
from syncgov.controlplane.v1 import controlplane_service_pb2, controlplane_service_pb2_grpc
from syncgov.invoice.v1 import invoice_service_pb2_grpc
from syncgov.po.v1 import po_service_pb2, po_service_pb2_grpc
from syncgov.receipt.v1 import receipt_service_pb2_grpc
from tests.integration.helpers import (
    ERP,
    PROCUREMENT,
    control_plane_settings,
    goods_receipt,
    receipt_settings,
    sample_order,
    settings_like,
)
from tests.integration.test_invoice_status import MATCHED, invoice, invoice_settings, reasons

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
PO = "/syncgov.po.v1.PurchaseOrderService/"


@pytest.fixture
async def stack(po_settings):
    """The five services of one PO's workflow, each with its spans: (stubs, exporters by service)."""
    from control_plane.wiring import wire as wire_control_plane
    from services.exception_router.settings import Settings as RouterSettings
    from services.exception_router.wiring import wire as wire_router

    control_plane = control_plane_settings(po_settings)
    router = settings_like(RouterSettings, po_settings)
    async with (
        running_service(control_plane, wire_control_plane) as (_, cp_channel, cp_spans),
        running_service(router, wire_router) as (_, _, router_spans),
        running_service(po_settings, wire_po) as (po, po_channel, po_spans),
        running_service(receipt_settings(po_settings), wire_receipts) as (_, receipt_channel, receipt_spans),
        running_service(invoice_settings(po_settings), wire_invoices) as (_, invoice_channel, invoice_spans),
    ):
        yield (
            po,
            po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel),
            receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(receipt_channel),
            invoice_service_pb2_grpc.InvoiceStatusServiceStub(invoice_channel),
            controlplane_service_pb2_grpc.ControlPlaneServiceStub(cp_channel),
            {
                "control-plane": cp_spans,
                "po-publication": po_spans,
                "receipt-reconciliation": receipt_spans,
                "invoice-status": invoice_spans,
                "exception-router": router_spans,
            },
        )


def _spans(exporters: dict[str, InMemorySpanExporter]) -> list[tuple[str, ReadableSpan]]:
    return [(service, span) for service, exporter in exporters.items() for span in exporter.get_finished_spans()]


async def _eventually(what: str, found: Callable[[], bool], within: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not found():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not seen within {within:.0f} s: {what}")
        await asyncio.sleep(0.05)


async def _eventually_async(what: str, read: Callable[[], Awaitable[int]], expected: int, within: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while await read() != expected:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not seen within {within:.0f} s: {what}")
        await asyncio.sleep(0.05)


def _named(spans: Sequence[tuple[str, ReadableSpan]], service: str, kind: SpanKind, name: str) -> list[ReadableSpan]:
    return [span for at, span in spans if at == service and span.kind == kind and span.name == name]


async def test_one_po_from_publication_to_the_invoice_match_is_one_trace(stack, nats_server):
    po, po_stub, receipts, invoices, control, exporters = stack
    namespace = po.runtime.namespace.root
    workflow_spans = InMemorySpanExporter()
    procurement = TracerProvider()
    procurement.add_span_processor(SimpleSpanProcessor(workflow_spans))
    erp, stop = ErpClient(), asyncio.Event()
    adapter = asyncio.create_task(run_adapter(nats_server.url, po.address, namespace, erp=erp, stop=stop))
    try:
        with procurement.get_tracer("procurement").start_as_current_span("PO-1001 workflow") as root:
            await po_stub.PublishPurchaseOrder(
                po_service_pb2.PublishPurchaseOrderRequest(purchase_order=sample_order()),
                metadata=traced_metadata(PROCUREMENT),
            )
            changed = sample_order(quantity="12")
            changed.version = 2
            await po_stub.ChangePurchaseOrder(
                po_service_pb2.ChangePurchaseOrderRequest(purchase_order=changed), metadata=traced_metadata(PROCUREMENT)
            )

            async def acknowledged() -> int:
                got = await po_stub.GetPurchaseOrder(
                    po_service_pb2.GetPurchaseOrderRequest(po_id="PO-1001"), metadata=PROCUREMENT
                )
                return got.erp_acknowledgment.version

            await _eventually_async("the ERP's acknowledgment of v2", lambda: acknowledged(), 2)
            # 4 of the 12 ordered on line 1 arrive: a partial receipt, posted by the ERP.
            await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "4")), metadata=traced_metadata(ERP))
            answer = await invoices.SubmitInvoice(
                invoice("INV-1", "INV-00123", quantity="4"), metadata=traced_metadata(PROCUREMENT)
            )
            assert answer.status.state == MATCHED, reasons(answer.status)
        workflow = root.get_span_context().trace_id
    finally:
        stop.set()
        await adapter
    assert erp.held["PO-1001"].version == 2

    # The consumer hops happen after the calls answered: wait for the last ones to finish.
    hops = [
        *(("control-plane", f"process {namespace}.{domain}.>") for domain in ("po", "receipt", "invoice")),
        ("invoice-status", f"process {namespace}.po.>"),
        ("invoice-status", f"process {namespace}.receipt.*.reconciled"),
        ("exception-router", f"process {namespace}.exception.*.raised"),
    ]
    await _eventually(
        "invoice-status re-matching, the router opening the exception, the control plane chaining each domain",
        lambda: all(_named(_spans(exporters), service, SpanKind.CONSUMER, name) for service, name in hops),
    )
    await asyncio.sleep(0.5)  # whatever else the last events set off
    spans = _spans(exporters)

    # Every stage is there: the server span of each call, the publish of each event, the consumer hops.
    for service, name in (
        ("po-publication", f"{PO}PublishPurchaseOrder"),
        ("po-publication", f"{PO}ChangePurchaseOrder"),
        ("po-publication", f"{PO}AcknowledgePurchaseOrder"),
        ("receipt-reconciliation", "/syncgov.receipt.v1.ReceiptReconciliationService/PostGoodsReceipt"),
        ("invoice-status", "/syncgov.invoice.v1.InvoiceStatusService/SubmitInvoice"),
    ):
        assert _named(spans, service, SpanKind.SERVER, name), f"no {name} server span in {service}"
    published = {span.name for at, span in spans if span.kind == SpanKind.PRODUCER}
    for event in ("po.*.published", "po.*.changed", "po.*.acknowledged", "invoice.*.submitted"):
        assert f"publish {namespace}.{event}" in published, sorted(published)
    assert any(name.startswith(f"publish {namespace}.receipt.") for name in published), sorted(published)

    # ... and every span of every stage, in every service, is in the workflow's one trace.
    outside = sorted(
        f"{service}: {span.kind.name} {span.name}"
        for service, span in spans
        if span.kind in (SpanKind.SERVER, SpanKind.PRODUCER, SpanKind.CONSUMER)
        and span.context.trace_id != workflow
        and not span.name.endswith("/GetPurchaseOrder")  # the test's polling, outside the workflow's span
        and span.name != f"process {namespace}.supplier.>"  # the fixture's supplier, seeded before the workflow
    )
    assert outside == [], "spans outside the PO's trace:\n" + "\n".join(outside)
    consumer_hops = {(service, span.name) for service, span in spans if span.kind == SpanKind.CONSUMER}
    assert {service for service, _ in consumer_hops} >= {"invoice-status", "control-plane", "exception-router"}
    # The partial receipt raised an exception; the router opened it (its transition published in the same trace).
    assert f"publish {namespace}.exception.*.raised" in published
    assert any(
        at == "exception-router" and span.kind == SpanKind.PRODUCER and span.context.trace_id == workflow
        for at, span in spans
    ), sorted(published)

    # The ERP's acknowledgment of v2 continues the trace of the event it answers: its parent is that publish.
    # (A change that met the acknowledgment of v1 being appended is decided again and published again: one or two.)
    changed_publishes = _named(spans, "po-publication", SpanKind.PRODUCER, f"publish {namespace}.po.*.changed")
    acknowledgments = _named(spans, "po-publication", SpanKind.SERVER, f"{PO}AcknowledgePurchaseOrder")
    answered = {span.parent.span_id for span in acknowledgments if span.parent is not None}
    assert answered & {span.context.span_id for span in changed_publishes}
    # Each server span names the workflow: the servicer's attributes, or the edge's from the request's po_id/version.
    for _, span in spans:
        if span.kind == SpanKind.SERVER and not span.name.endswith("/GetPurchaseOrder"):
            assert dict(span.attributes or {}).get("syncgov.workflow.key") == "PO-1001", span.name
    assert {dict(span.attributes or {}).get("syncgov.object.version") for span in acknowledgments} == {1, 2}
    # Consumer hops handled at once are children of the publish they consume, carrying the workflow's attributes.
    for _, span in spans:
        found = dict(span.attributes or {})
        if span.kind == SpanKind.CONSUMER and str(found["messaging.destination.name"]).startswith(
            f"{namespace}.po.PO-1001."
        ):
            assert span.parent is not None, span.name
            assert span.parent.is_remote, span.name
            assert not span.links
            assert found["syncgov.workflow.key"] == "PO-1001"
            assert found["syncgov.object.version"] in (1, 2)
            assert found["messaging.system"] == "nats"

    # The control plane's timeline of the same workflow: every stage, in order, each leading to this one trace.
    timeline = (
        await control.GetWorkflow(
            controlplane_service_pb2.GetWorkflowRequest(workflow_key="PO-1001"),
            metadata=(("x-syncgov-system", "ops-console"),),
        )
    ).workflow
    events = [(record.event, record.version) for record in timeline.stages if record.object.object_type != "exception"]
    # The ERP may have taken v1 before the change arrived: its acknowledgment then sits between the two.
    assert [event for event in events if event != ("acknowledged", 1)] == [
        ("published", 1),
        ("changed", 2),
        ("acknowledged", 2),
        ("reconciled", 2),
        ("submitted", 0),  # matched at submission: the submitted event records the match (a re-match adds "matched")
    ], events
    acknowledged_v2 = next(r for r in timeline.stages if r.event == "acknowledged" and r.version == 2)
    propagation = acknowledged_v2.propagation_time.ToNanoseconds()
    # Approval of v2 (sample_order's approved_at) to its acknowledgment, as the acknowledged event records it.
    assert 0 < propagation < acknowledged_v2.reached_at.ToNanoseconds() - changed.approved_at.ToNanoseconds() + 1
    assert {record.trace_id for record in timeline.stages} == {format(workflow, "032x")}
