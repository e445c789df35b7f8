"""invoice-status: two invoices of one PO line in flight at once, against real nats-server and valkey.

Each submission is matched against the invoices recorded when its match read the ledger; two submitted at the same
instant may each be matched without the other. The durable consumer of the service's own ``submitted`` events
(rematch.py) re-matches the one the stream recorded later once every replica can see both.

Two replicas of invoice-status share the stream and the durable consumers, as on Kubernetes. The first test sends
each invoice to a different replica, both at once (whether the two matches overlap is up to the scheduler, so its
outcome, not the overlap, is asserted); the second records the later invoice exactly as a replica that had not read
the earlier one yet records it, so the overlap is certain.
"""

from __future__ import annotations

import asyncio

import pytest

from libs.runtime.events import content_sha256
from libs.runtime.testing import running_service
from services.invoice_status import events, mapping
from services.invoice_status.decider import InvoiceSubmitted
from services.invoice_status.domain import TolerancePolicy
from services.invoice_status.facts import InvoiceLedger, Matcher, OrderLines, ReceivedLines
from services.invoice_status.wiring import wire as wire_invoices
from services.po_publication.wiring import wire as wire_po
from services.receipt_reconciliation.wiring import wire as wire_receipts
from syncgov.invoice.v1 import invoice_service_pb2, invoice_service_pb2_grpc
from syncgov.po.v1 import po_service_pb2_grpc
from syncgov.receipt.v1 import receipt_service_pb2_grpc
from tests.integration.helpers import ERP, PROCUREMENT, goods_receipt, publish_order, receipt_settings
from tests.integration.test_invoice_status import (
    BLOCKED,
    MATCHED,
    _invoice_events,
    _state_becomes,
    invoice,
    invoice_settings,
    reasons,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def two_replicas(po_settings):
    """po-publication, receipt-reconciliation and two invoice-status replicas; PO-1001 published (line 1: 10 EA at
    12.50 EUR) and 4 of line 1 received."""
    settings = invoice_settings(po_settings)
    async with (
        running_service(po_settings, wire_po) as (_, po_channel, _),
        running_service(receipt_settings(po_settings), wire_receipts) as (_, receipt_channel, _),
        running_service(settings, wire_invoices) as (first_replica, first_channel, _),
        running_service(settings, wire_invoices) as (_, second_channel, _),
    ):
        await publish_order(po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel))
        receipts = receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(receipt_channel)
        await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "4")), metadata=ERP)
        yield (
            invoice_service_pb2_grpc.InvoiceStatusServiceStub(first_channel),
            invoice_service_pb2_grpc.InvoiceStatusServiceStub(second_channel),
            po_settings,
            first_replica.runtime,
        )


async def _recorded_order(js, settings) -> list[str]:
    """The invoice ids in the order the stream recorded their submissions."""
    return [
        stored.envelope.object_key
        async for stored in _invoice_events(js, settings)
        if stored.subject.endswith(".submitted")
    ]


async def test_of_two_invoices_submitted_at_once_over_the_received_quantity_the_later_recorded_is_blocked(
    two_replicas, js
):
    first, second, settings, _ = two_replicas
    # 3 + 3 invoiced of 4 received: each alone matches, together they are over what was received.
    answers = await asyncio.gather(
        first.SubmitInvoice(invoice("INV-A", "A-1", quantity="3"), metadata=PROCUREMENT),
        second.SubmitInvoice(invoice("INV-B", "B-1", quantity="3"), metadata=PROCUREMENT),
    )
    assert {answer.status.invoice.invoice_id for answer in answers} == {"INV-A", "INV-B"}
    earlier, later = await _recorded_order(js, settings)
    blocked = await _state_becomes(first, later, BLOCKED)
    assert blocked.state == BLOCKED, reasons(blocked)
    assert reasons(blocked) == {"quantity_variance"}
    for stub in (first, second):
        kept = await stub.GetInvoice(invoice_service_pb2.GetInvoiceRequest(invoice_id=earlier), metadata=PROCUREMENT)
        assert kept.status.state == MATCHED, reasons(kept.status)


async def _record_as_a_replica_that_had_not_read_the_others(runtime, request) -> None:
    """Append ``request``'s submission as a replica appends it whose ledger holds no invoice yet: matched by the
    service's own Matcher against the PO and receipt streams and an empty ledger, encoded by its own encoder,
    published with the subject guard through the service's publisher (the invoice-status broker user)."""
    document = request.invoice
    submitted_invoice = mapping.valid_invoice(document)
    matcher = Matcher(OrderLines(runtime.reader), ReceivedLines(runtime.reader), InvoiceLedger())
    tolerances = TolerancePolicy.of(runtime.policy.current.document.tolerances)
    match, versions = await matcher.match(submitted_invoice, tolerances)
    key = f"procurement:invoice:{submitted_invoice.invoice_id}"
    event = InvoiceSubmitted(submitted_invoice, content_sha256(document), key, match, versions, document)
    encoded = events.encode(submitted_invoice.invoice_id, event, workflow_key=submitted_invoice.lines[0].po_id)
    await runtime.publisher.publish(encoded, expected_last_sequence=0)


async def test_an_invoice_recorded_with_a_match_that_missed_an_earlier_one_is_re_matched(two_replicas):
    first, second, _, runtime = two_replicas
    earlier = await first.SubmitInvoice(invoice("INV-A", "A-1", quantity="3"), metadata=PROCUREMENT)
    assert earlier.status.state == MATCHED, reasons(earlier.status)
    await _record_as_a_replica_that_had_not_read_the_others(runtime, invoice("INV-B", "B-1", quantity="3"))
    for stub in (first, second):
        blocked = await _state_becomes(stub, "INV-B", BLOCKED)
        assert reasons(blocked) == {"quantity_variance"}  # 3 + 3 invoiced of 4 received
        kept = await stub.GetInvoice(invoice_service_pb2.GetInvoiceRequest(invoice_id="INV-A"), metadata=PROCUREMENT)
        assert kept.status.state == MATCHED, reasons(kept.status)
