"""`syncgov invoices show|blocked|release` against po-publication, receipt-reconciliation and invoice-status
running for real.

The default policy: procurement and ops-console may release invoices, the ERP may not; price tolerance +2% /
5.00 absolute, no quantity over the net received, small difference 1.00. ``sample_order``: line 1 is 10 EA at
12.50 EUR. ``invoice()``: 4 units of PO-1001 line 1 at 12.50, 19% tax, totals that add up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

import pytest

from libs.runtime.testing import running_service
from services.invoice_status.wiring import wire as wire_invoices
from services.po_publication.wiring import wire as wire_po
from services.receipt_reconciliation.wiring import wire as wire_receipts
from syncgov.invoice.v1 import invoice_pb2, invoice_service_pb2, invoice_service_pb2_grpc
from syncgov.po.v1 import po_service_pb2_grpc
from syncgov.receipt.v1 import receipt_service_pb2_grpc
from tests.integration.helpers import ERP, PROCUREMENT, cli, goods_receipt, publish_order, receipt_settings, table_row
from tests.integration.test_invoice_status import invoice, invoice_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@dataclass
class Invoices:
    address: str
    stub: invoice_service_pb2_grpc.InvoiceStatusServiceStub

    async def get(self, invoice_id: str) -> invoice_pb2.InvoiceStatus:
        answer = await self.stub.GetInvoice(
            invoice_service_pb2.GetInvoiceRequest(invoice_id=invoice_id), metadata=PROCUREMENT
        )
        return answer.status


@pytest.fixture
async def invoices(po_settings):
    """PO-1001 published, 8 EA of line 1 received; INV-1 (4 at 12.50) matched, INV-2 (4 at 13.50) blocked for
    its price, INV-3 (a credit-free copy of INV-1's number, 1 unit) blocked as INV-1's duplicate."""
    async with (
        running_service(po_settings, wire_po) as (_, po_channel, _),
        running_service(receipt_settings(po_settings), wire_receipts) as (_, receipt_channel, _),
        running_service(invoice_settings(po_settings), wire_invoices) as (service, invoice_channel, _),
    ):
        await publish_order(po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel))
        receipts = receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(receipt_channel)
        await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "8")), metadata=ERP)
        stub = invoice_service_pb2_grpc.InvoiceStatusServiceStub(invoice_channel)
        matched = await stub.SubmitInvoice(invoice("INV-1", "INV-00123"), metadata=PROCUREMENT)
        assert matched.status.state == invoice_pb2.INVOICE_STATE_MATCHED
        dear = await stub.SubmitInvoice(invoice("INV-2", "A-2", price="13.50"), metadata=PROCUREMENT)
        assert dear.status.state == invoice_pb2.INVOICE_STATE_BLOCKED
        duplicate = await stub.SubmitInvoice(invoice("INV-3", "inv 123", quantity="1", day=25), metadata=PROCUREMENT)
        assert duplicate.status.state == invoice_pb2.INVOICE_STATE_BLOCKED
        yield Invoices(service.address, stub)


async def test_show_of_a_matched_invoice_prints_its_line_match(invoices):
    result = await cli("invoices", "show", "INV-1", "--address", invoices.address)
    assert result.exit_code == 0, result.stdout
    out = result.stdout
    assert "invoice INV-1: matched" in out
    assert "supplier SUP-ACME, number INV-00123, dated 2027-01-20, gross 59.50 EUR" in out
    # line, PO/line, basis, PO version, price expected, invoiced, variance (%), price tolerance,
    # qty expected, invoiced, by others, cumulative, qty variance (%), qty tolerance, result
    row = table_row(out, "1")
    assert row[:4] == ["1", "PO-1001/1", "three-way", "1"]
    assert [Decimal(cell) for cell in row[4:6]] == [Decimal("12.50"), Decimal("12.50")]
    assert row[8:12] == ["8 received", "4", "0", "4"]
    assert row[-1] == "matched"


async def test_show_of_a_price_block_prints_the_variance_and_the_tolerance_that_applied(invoices):
    result = await cli("invoices", "show", "INV-2", "--address", invoices.address)
    assert result.exit_code == 0, result.stdout
    out = result.stdout
    assert "invoice INV-2: blocked" in out
    row = table_row(out, "1")
    assert [Decimal(cell) for cell in row[4:6]] == [Decimal("12.50"), Decimal("13.50")]
    found = re.fullmatch(r"(\S+) \((\S+)%\)", row[6])  # +1.00 per unit, 8% of 12.50
    assert found is not None, row[6]
    variance, percent = found.groups()
    assert (Decimal(variance), Decimal(percent)) == (Decimal("1.00"), Decimal("8"))
    limit = re.fullmatch(r"(\w+) (\w+) (\S+) \(up to (\S+)\)", row[7])
    assert limit is not None, row[7]
    side, basis, value, bound = limit.groups()
    assert (side, basis, Decimal(value)) == ("upper", "percent", Decimal("2"))
    assert Decimal(bound) == Decimal("12.75")  # 12.50 + 2%: the furthest price the limit lets pass
    assert row[8:12] == ["8 received", "4", "4", "8"]  # INV-1's 4 were invoiced before
    assert row[-1] == "price_variance"


async def test_show_of_an_unknown_invoice_is_one_line_and_exit_1(invoices):
    result = await cli("invoices", "show", "INV-NOBODY", "--address", invoices.address)
    assert result.exit_code == 1, result.stdout
    assert result.stdout.strip().splitlines() == ["NOT_FOUND: no invoice 'INV-NOBODY' was submitted"]


async def test_an_unreachable_invoice_status_is_exit_3():
    for args in (("show", "INV-1"), ("blocked",), ("release", "INV-1", "--reason", "seen", "--person", "j.smith")):
        result = await cli("invoices", *args, "--address", "127.0.0.1:1")
        assert result.exit_code == 3, result.stdout
        assert "cannot reach invoice-status at 127.0.0.1:1" in result.stdout


async def test_blocked_lists_the_blocked_invoices_and_filters_by_reason(invoices):
    listed = await cli("invoices", "blocked", "--address", invoices.address)
    assert listed.exit_code == 0, listed.stdout
    assert "2 blocked invoice(s)" in listed.stdout
    row = table_row(listed.stdout, "INV-2")
    assert row[1:3] == ["SUP-ACME", "A-2"]
    assert "price_variance" in row[4]
    assert row[5] == "64.26 EUR"  # 4 x 13.50 = 54.00 + 19% tax 10.26
    assert "INV-1" not in listed.stdout
    priced = await cli("invoices", "blocked", "--reason", "price_variance", "--address", invoices.address)
    assert priced.exit_code == 0, priced.stdout
    assert "1 blocked invoice(s) (reason price_variance)" in priced.stdout
    assert "INV-2" in priced.stdout
    assert "INV-3" not in priced.stdout
    first = await cli("invoices", "blocked", "--limit", "1", "--address", invoices.address)
    assert first.exit_code == 0, first.stdout
    assert "1 blocked invoice(s), more exist" in first.stdout
    assert "INV-2" in first.stdout  # oldest first
    unknown = await cli("invoices", "blocked", "--reason", "no_such_reason", "--address", invoices.address)
    assert unknown.exit_code == 2
    bad_age = await cli("invoices", "blocked", "--older-than", "a week", "--address", invoices.address)
    assert bad_age.exit_code == 2


async def test_release_through_a_system_without_the_right_is_refused_and_explained(invoices):
    result = await cli(
        "invoices", "release", "INV-2", "--reason", "price agreed", "--person", "j.smith", "--system", "erp",
        "--address", invoices.address,
    )  # fmt: skip
    assert result.exit_code == 1, result.stdout
    out = result.stdout
    assert out.startswith("PERMISSION_DENIED: erp may not write invoice_release")
    assert "nothing was released: policy revision" in out
    assert "gives erp no invoice_release right" in out
    still = await cli("invoices", "show", "INV-2", "--address", invoices.address)
    assert "invoice INV-2: blocked" in still.stdout


async def test_release_prints_the_new_state_and_a_matched_invoice_is_not_blocked(invoices):
    released = await cli(
        "invoices", "release", "INV-2", "--reason", "price agreed by phone", "--person", "j.smith",
        "--address", invoices.address,
    )  # fmt: skip
    assert released.exit_code == 0, released.stdout
    assert released.stdout.splitlines()[0] == "INV-2: released"
    shown = await cli("invoices", "show", "INV-2", "--address", invoices.address)
    assert "invoice INV-2: released" in shown.stdout
    not_blocked = await cli(
        "invoices", "release", "INV-1", "--reason", "why not", "--person", "j.smith", "--address", invoices.address
    )
    assert not_blocked.exit_code == 1, not_blocked.stdout
    assert not_blocked.stdout.startswith("FAILED_PRECONDITION: only a blocked invoice can be released")
    missing = await cli("invoices", "release", "INV-2", "--reason", "x", "--address", invoices.address)
    assert missing.exit_code == 2


# --- what invoice-status sends since issue 11's contract: the whole match, the release in force, the filters ---


async def test_show_prints_the_header_checks_the_duplicate_and_the_exceptions(invoices):
    result = await cli("invoices", "show", "INV-3", "--address", invoices.address)
    assert result.exit_code == 0, result.stdout
    out = result.stdout
    assert re.search(r"submitted \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ, matched \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", out), out
    # total, stated, computed, difference, small difference, within
    for name, amount in (("net", "12.50"), ("tax", "2.38"), ("gross", "14.88")):
        row = table_row(out, name)
        assert [Decimal(cell) for cell in row[1:5]] == [Decimal(amount), Decimal(amount), 0, Decimal("1.00")]
        assert row[5] == "yes"
    assert "header blocking reasons: duplicate_invoice" in out
    assert "duplicate of INV-1 (number INV-00123), found by invoice_number" in out
    ids = list((await invoices.get("INV-3")).exception_ids)
    assert len(ids) == 2  # quantity_variance (1 more of 8 received, all invoiced) and duplicate_invoice
    assert f"exceptions: {', '.join(ids)}" in out


async def test_a_release_names_the_person_and_the_system_and_show_prints_it(invoices):
    released = await cli(
        "invoices", "release", "INV-2", "--reason", "price agreed by phone", "--person", "j.smith",
        "--address", invoices.address,
    )  # fmt: skip
    assert released.exit_code == 0, released.stdout
    expected = "released by j.smith through ops-console: price agreed by phone (overrode price_variance)"
    assert released.stdout.splitlines() == ["INV-2: released", expected]
    shown = await cli("invoices", "show", "INV-2", "--address", invoices.address)
    assert expected in shown.stdout.splitlines()


async def test_blocked_filters_by_supplier_and_by_how_long_ago(invoices):
    acme = await cli("invoices", "blocked", "--supplier", "SUP-ACME", "--address", invoices.address)
    assert acme.exit_code == 0, acme.stdout
    assert "2 blocked invoice(s) (supplier SUP-ACME)" in acme.stdout
    nobody = await cli("invoices", "blocked", "--supplier", "SUP-NOBODY", "--address", invoices.address)
    assert nobody.exit_code == 0, nobody.stdout
    assert "0 blocked invoice(s) (supplier SUP-NOBODY)" in nobody.stdout
    assert "INV-2" not in nobody.stdout
    # Blocked moments ago: not a week ago; at or before now, yes.
    week = await cli("invoices", "blocked", "--older-than", "7d", "--address", invoices.address)
    assert week.exit_code == 0, week.stdout
    assert "0 blocked invoice(s) (blocked 7d ago or earlier)" in week.stdout
    assert "INV-2" not in week.stdout
    now = await cli(
        "invoices", "blocked", "--older-than", "0s", "--reason", "price_variance", "--address", invoices.address
    )
    assert now.exit_code == 0, now.stdout
    assert "1 blocked invoice(s) (reason price_variance, blocked 0s ago or earlier)" in now.stdout
    assert "INV-2" in now.stdout
