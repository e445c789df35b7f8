"""`syncgov receipts status|findings` against po-publication and receipt-reconciliation running for real.

The default policy: erp receives at DC-HAMBURG; over-receipt allowance 5%. ``sample_order``: line 1 is 10 EA,
line 2 is 2.5 KGM, shipped to DC-HAMBURG.
"""

from __future__ import annotations

import pytest
from google.type import decimal_pb2

from libs.runtime.testing import running_service
from services.po_publication.wiring import wire as wire_po
from services.receipt_reconciliation.wiring import wire as wire_receipts
from syncgov.po.v1 import po_service_pb2, po_service_pb2_grpc
from syncgov.receipt.v1 import receipt_pb2, receipt_service_pb2, receipt_service_pb2_grpc
from tests.integration.helpers import PROCUREMENT, cli, receipt_settings, sample_order, table_row

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
ERP = (("x-syncgov-system", "erp"),)


@pytest.fixture
async def received(po_settings):
    """PO-1001 published (10 EA), lowered to 6 EA in version 2, then 10 EA received against version 1."""
    settings = receipt_settings(po_settings)
    async with (
        running_service(po_settings, wire_po) as (_, po_channel, _),
        running_service(settings, wire_receipts) as (receipts, receipt_channel, _),
    ):
        orders = po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel)
        await orders.PublishPurchaseOrder(
            po_service_pb2.PublishPurchaseOrderRequest(purchase_order=sample_order("PO-1001")), metadata=PROCUREMENT
        )
        lowered = sample_order("PO-1001", quantity="6")
        lowered.version = 2
        await orders.ChangePurchaseOrder(
            po_service_pb2.ChangePurchaseOrderRequest(purchase_order=lowered), metadata=PROCUREMENT
        )
        document = receipt_pb2.GoodsReceipt(
            receipt_id="GR-1",
            po_id="PO-1001",
            po_version=1,
            site_id="DC-HAMBURG",
            kind=receipt_pb2.RECEIPT_KIND_RECEIPT,
            lines=[
                receipt_pb2.GoodsReceiptLine(
                    line_number=1, po_line_number=1, quantity=decimal_pb2.Decimal(value="10"), unit_of_measure="EA"
                ),
                receipt_pb2.GoodsReceiptLine(
                    line_number=2,
                    po_line_number=2,
                    quantity=decimal_pb2.Decimal(value="1.25"),
                    unit_of_measure="KGM",
                    rejected_quantity=decimal_pb2.Decimal(value="0.5"),
                    reject_reason_code="damaged",
                ),
            ],
        )
        posted = await receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(receipt_channel).PostGoodsReceipt(
            receipt_service_pb2.PostGoodsReceiptRequest(receipt=document), metadata=ERP
        )
        assert posted.reconciled_po_version == 2
        yield receipts.address, posted


async def test_status_prints_the_per_line_table_at_the_current_version(received):
    address, _ = received
    result = await cli("receipts", "status", "PO-1001", "--address", address)
    assert result.exit_code == 0, result.stdout
    out = result.stdout
    assert "receipts of PO-1001 at version 2" in out
    assert "not cancelled" in out
    assert "fully received no" in out
    assert "1 document(s)" in out
    assert "ordered (v2)" in out
    #        PO line, ordered, received, returned, rejected, open, unit, fully received
    assert table_row(out, "1") == ["1", "6", "10", "0", "0", "-4", "EA", "yes"]
    assert table_row(out, "2") == ["2", "2.5", "1.25", "0", "0.5", "1.25", "KGM", "no"]


async def test_status_of_an_order_nobody_knows_is_one_line_and_exit_1(received):
    address, _ = received
    result = await cli("receipts", "status", "PO-NOBODY", "--address", address)
    assert result.exit_code == 1, result.stdout
    assert result.stdout.strip().splitlines() == [
        "NOT_FOUND: purchase order 'PO-NOBODY' is unknown and nothing was received against it"
    ]


async def test_status_of_an_unreachable_service_is_exit_3():
    result = await cli("receipts", "status", "PO-1001", "--address", "127.0.0.1:1")
    assert result.exit_code == 3, result.stdout
    assert "cannot reach receipt-reconciliation at 127.0.0.1:1" in result.stdout


async def test_findings_lists_the_document_with_its_exception_ids_and_filters(received):
    address, posted = received
    listed = await cli("receipts", "findings", "--finding", "superseded_version", "--address", address)
    assert listed.exit_code == 0, listed.stdout
    assert "1 document(s) with findings (finding superseded_version)" in listed.stdout
    assert "erp/GR-1" in listed.stdout
    assert "PO-1001" in listed.stdout
    for finding in posted.findings:
        assert finding.exception_id in listed.stdout
    elsewhere = await cli("receipts", "findings", "--site", "DC-EAST", "--address", address)
    assert elsewhere.exit_code == 0, elsewhere.stdout
    assert "0 document(s) with findings (site DC-EAST)" in elsewhere.stdout
    assert "GR-1" not in elsewhere.stdout
    not_a_finding = await cli("receipts", "findings", "--finding", "price_variance", "--address", address)
    assert not_a_finding.exit_code == 1
    assert "INVALID_ARGUMENT" in not_a_finding.stdout
    unknown = await cli("receipts", "findings", "--finding", "no_such_thing", "--address", address)
    assert unknown.exit_code == 2
