"""invoice-status against real nats-server and valkey, with po-publication publishing the orders and
receipt-reconciliation posting the receipts.

The default policy: procurement owns invoices, procurement and ops-console may release, the ERP alone records
payments; price tolerance +2% / 5.00 absolute, no quantity over the net received, small difference 1.00.
``sample_order``: line 1 is 10 EA at 12.50 EUR, line 2 is 2.5 KGM at 3.00 EUR.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import grpc
import pytest
from google.rpc import error_details_pb2
from google.type import date_pb2, decimal_pb2, money_pb2

from libs.runtime.subjects import Namespace
from libs.runtime.testing import running_service
from services.invoice_status.settings import Settings as InvoiceSettings
from services.invoice_status.wiring import wire as wire_invoices
from services.po_publication.wiring import wire as wire_po
from services.receipt_reconciliation.wiring import wire as wire_receipts
from syncgov.exception.v1 import exception_pb2
from syncgov.invoice.v1 import events_pb2, invoice_pb2, invoice_service_pb2, invoice_service_pb2_grpc
from syncgov.po.v1 import po_service_pb2, po_service_pb2_grpc
from syncgov.receipt.v1 import receipt_service_pb2_grpc
from syncgov.supplier.v1 import supplier_pb2
from tests.integration.helpers import (
    ERP,
    PROCUREMENT,
    goods_receipt,
    order_received,
    publish_order,
    raised_exceptions,
    receipt_settings,
    requests_of,
    sample_order,
    seed_supplier,
    settings_like,
    status_details,
)

OPS = (("x-syncgov-system", "ops-console"),)
WMS_EAST = (("x-syncgov-system", "wms-east"),)
BLOCKED = invoice_pb2.INVOICE_STATE_BLOCKED
MATCHED = invoice_pb2.INVOICE_STATE_MATCHED


def invoice_settings(settings) -> InvoiceSettings:
    """invoice-status's settings in the namespace (and on the servers) of another service's ``settings``."""
    settings_of: InvoiceSettings = settings_like(InvoiceSettings, settings)
    return settings_of


def _money(amount: str) -> money_pb2.Money:
    value = Decimal(amount)
    units = int(value)
    return money_pb2.Money(currency_code="EUR", units=units, nanos=int((value - units) * 1_000_000_000))


def invoice(
    invoice_id: str = "INV-1",
    number: str = "INV-00123",
    *,
    quantity: str = "4",
    price: str = "12.50",
    supplier: str = "SUP-ACME",
    po_id: str = "PO-1001",
    day: int = 20,
) -> invoice_service_pb2.SubmitInvoiceRequest:
    """An invoice of ``quantity`` units of PO line 1 at ``price``, 19% tax, totals that add up."""
    net = (Decimal(quantity) * Decimal(price)).quantize(Decimal("0.01"))
    tax = (net * Decimal("0.19")).quantize(Decimal("0.01"))
    document = invoice_pb2.Invoice(
        invoice_id=invoice_id,
        supplier_id=supplier,
        invoice_number=number,
        invoice_date=date_pb2.Date(year=2027, month=1, day=day),
        currency_code="EUR",
        lines=[
            invoice_pb2.InvoiceLine(
                line_number=1,
                po_id=po_id,
                po_line_number=1,
                quantity=decimal_pb2.Decimal(value=quantity),
                unit_price=_money(price),
                line_amount=_money(str(net)),
                tax_amount=_money(str(tax)),
            )
        ],
        net_amount=_money(str(net)),
        tax_amount=_money(str(tax)),
        total_amount=_money(str(net + tax)),
    )
    return invoice_service_pb2.SubmitInvoiceRequest(invoice=document)


def reasons(status: invoice_pb2.InvoiceStatus) -> set[str]:
    return {
        invoice_pb2.BlockReason.Name(reason).removeprefix("BLOCK_REASON_").lower()
        for line in status.line_results
        for reason in line.block_reasons
    }


@pytest.fixture
async def invoice_stack(po_settings):
    """po-publication, receipt-reconciliation and invoice-status in one namespace, order PO-1001 published."""
    async with (
        running_service(po_settings, wire_po) as (_, po_channel, _),
        running_service(receipt_settings(po_settings), wire_receipts) as (_, receipt_channel, _),
        running_service(invoice_settings(po_settings), wire_invoices) as (_, invoice_channel, _),
    ):
        po_stub = po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel)
        await publish_order(po_stub)
        yield (
            po_stub,
            receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(receipt_channel),
            invoice_service_pb2_grpc.InvoiceStatusServiceStub(invoice_channel),
            po_settings,
        )


async def test_an_invoice_before_its_receipt_is_blocked_awaiting_receipt(invoice_stack, js):
    _, _, stub, settings = invoice_stack
    response = await stub.SubmitInvoice(invoice(), metadata=PROCUREMENT)
    assert response.status.state == BLOCKED
    assert reasons(response.status) == {"awaiting_receipt"}
    raised = await raised_exceptions(js, Namespace(settings.namespace))
    assert [e.type for e in raised if e.object.object_key == "INV-1"] == [exception_pb2.EXCEPTION_TYPE_AWAITING_RECEIPT]


async def test_an_exact_invoice_matches_and_a_price_outside_tolerance_is_blocked(invoice_stack):
    _, receipts, stub, _ = invoice_stack
    await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "8")), metadata=ERP)
    exact = await stub.SubmitInvoice(invoice("INV-1", "A-1"), metadata=PROCUREMENT)
    assert exact.status.state == MATCHED, reasons(exact.status)
    dear = await stub.SubmitInvoice(invoice("INV-2", "A-2", price="13.50"), metadata=PROCUREMENT)
    assert dear.status.state == BLOCKED
    assert reasons(dear.status) == {"price_variance"}
    # Cumulative: 4 + 4 invoiced of 8 received; a third invoice of 4 is over what was received.
    over = await stub.SubmitInvoice(invoice("INV-3", "A-3"), metadata=PROCUREMENT)
    assert reasons(over.status) == {"quantity_variance"}


async def test_the_same_invoice_twice_is_a_replay_and_other_content_already_exists(invoice_stack):
    _, _, stub, _ = invoice_stack
    first = await stub.SubmitInvoice(invoice(), metadata=PROCUREMENT)
    call = stub.SubmitInvoice(invoice(), metadata=PROCUREMENT)
    again = await call
    assert again.status == first.status
    assert ("syncgov-idempotent-replay", "true") in tuple(await call.initial_metadata())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.SubmitInvoice(invoice(quantity="3"), metadata=PROCUREMENT)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_a_duplicate_number_written_differently_is_blocked(invoice_stack):
    _, receipts, stub, _ = invoice_stack
    await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "10")), metadata=ERP)
    first = await stub.SubmitInvoice(invoice("INV-1", "INV-00123"), metadata=PROCUREMENT)
    assert first.status.state == MATCHED
    second = await stub.SubmitInvoice(invoice("INV-2", "inv 123", quantity="2", day=25), metadata=PROCUREMENT)
    assert second.status.state == BLOCKED
    assert reasons(second.status) == set()  # the lines match: the invoice as a whole is the duplicate
    listed = await stub.ListBlockedInvoices(
        invoice_service_pb2.ListBlockedInvoicesRequest(reason=invoice_pb2.BLOCK_REASON_DUPLICATE_INVOICE),
        metadata=PROCUREMENT,
    )
    assert [status.invoice.invoice_id for status in listed.statuses] == ["INV-2"]


async def test_unknown_and_blocked_suppliers_are_refused(invoice_stack):
    _, _, stub, settings = invoice_stack
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.SubmitInvoice(invoice(supplier="SUP-NOBODY"), metadata=PROCUREMENT)
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await seed_supplier(settings.nats_url, settings.namespace, "SUP-BAD", supplier_pb2.SUPPLIER_STATUS_BLOCKED)
    for _ in range(50):  # the supplier stream is followed: wait until the event arrived
        try:
            await stub.SubmitInvoice(invoice(supplier="SUP-BAD"), metadata=PROCUREMENT)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("a blocked supplier's invoice was not refused FAILED_PRECONDITION")


async def test_a_retry_of_an_invoice_recorded_before_its_supplier_was_blocked_is_a_replay(invoice_stack):
    """The first answer was lost, the supplier blocked meanwhile: the retry must not say nothing was recorded."""
    _, _, stub, settings = invoice_stack
    await seed_supplier(settings.nats_url, settings.namespace, "SUP-LATER")
    sent = invoice("INV-L1", "L-1", supplier="SUP-LATER")
    for _ in range(50):  # the supplier stream is followed: wait until the supplier is known
        try:
            first = await stub.SubmitInvoice(sent, metadata=PROCUREMENT)
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("the supplier never became known")
    await seed_supplier(settings.nats_url, settings.namespace, "SUP-LATER", supplier_pb2.SUPPLIER_STATUS_BLOCKED)
    for _ in range(50):  # until the block arrived: a new invoice of the supplier is refused
        try:
            await stub.SubmitInvoice(invoice("INV-L2", "L-2", supplier="SUP-LATER"), metadata=PROCUREMENT)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the blocked supplier's new invoice was not refused")
    call = stub.SubmitInvoice(sent, metadata=PROCUREMENT)
    retried = await call
    assert ("syncgov-idempotent-replay", "true") in tuple(await call.initial_metadata())
    assert retried.status.state == first.status.state


async def test_release_needs_invoice_release_a_person_and_a_reason(invoice_stack, js):
    _, _, stub, settings = invoice_stack
    await stub.SubmitInvoice(invoice(), metadata=PROCUREMENT)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.ReleaseInvoice(
            invoice_service_pb2.ReleaseInvoiceRequest(invoice_id="INV-1", reason="goods seen", released_by="w.ost"),
            metadata=WMS_EAST,
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as no_reason:
        await stub.ReleaseInvoice(
            invoice_service_pb2.ReleaseInvoiceRequest(invoice_id="INV-1", released_by="a.lee"), metadata=OPS
        )
    assert no_reason.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for person in ("", "   ", "p" * 257):
        with pytest.raises(grpc.aio.AioRpcError) as no_person:
            await stub.ReleaseInvoice(
                invoice_service_pb2.ReleaseInvoiceRequest(
                    invoice_id="INV-1", reason="goods seen at the dock", released_by=person
                ),
                metadata=OPS,
            )
        assert no_person.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [bad_request] = [d for d in status_details(no_person.value) if isinstance(d, error_details_pb2.BadRequest)]
        assert [v.field for v in bad_request.field_violations] == ["released_by"]
    assert [name async for name in _event_names(js, settings)] == ["submitted"]  # nothing was written
    request = invoice_service_pb2.ReleaseInvoiceRequest(
        invoice_id="INV-1", reason="goods seen at the dock", released_by="a.lee"
    )
    released = await stub.ReleaseInvoice(request, metadata=OPS)
    assert released.status.state == invoice_pb2.INVOICE_STATE_RELEASED
    got = await stub.GetInvoice(invoice_service_pb2.GetInvoiceRequest(invoice_id="INV-1"), metadata=PROCUREMENT)
    assert got.status.release == invoice_pb2.InvoiceRelease(
        released_by="a.lee",
        released_through="ops-console",
        reason="goods seen at the dock",
        overridden=[invoice_pb2.BLOCK_REASON_AWAITING_RECEIPT],
    )
    assert got.status == released.status
    # The same person and reason again is a replay, through procurement as well: one released event.
    call = stub.ReleaseInvoice(request, metadata=PROCUREMENT)
    assert (await call).status == released.status
    assert ("syncgov-idempotent-replay", "true") in tuple(await call.initial_metadata())
    [event] = [
        e.unpack(events_pb2.InvoiceReleased)
        async for e in _invoice_events(js, settings)
        if e.subject.endswith(".released")
    ]
    assert (event.released_by, event.released_through, event.reason) == (
        "a.lee",
        "ops-console",
        "goods seen at the dock",
    )


async def test_get_invoice_carries_the_whole_match_header_reasons_and_the_exceptions_raised(invoice_stack, js):
    _, receipts, stub, settings = invoice_stack
    await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "10")), metadata=ERP)
    first = await stub.SubmitInvoice(invoice("INV-1", "INV-00123"), metadata=PROCUREMENT)
    assert first.status.state == MATCHED
    assert list(first.status.exception_ids) == []
    assert first.status.submitted_at.seconds > 0
    await stub.SubmitInvoice(invoice("INV-2", "inv 123", quantity="2", day=25, price="14.00"), metadata=PROCUREMENT)
    got = (await stub.GetInvoice(invoice_service_pb2.GetInvoiceRequest(invoice_id="INV-2"), metadata=OPS)).status
    assert got.state == BLOCKED
    assert list(got.match.header_block_reasons) == [invoice_pb2.BLOCK_REASON_DUPLICATE_INVOICE]
    assert set(got.match.block_reasons) == {
        invoice_pb2.BLOCK_REASON_PRICE_VARIANCE,
        invoice_pb2.BLOCK_REASON_DUPLICATE_INVOICE,
    }
    assert [d.invoice_id for d in got.match.duplicates] == ["INV-1"]
    assert got.match.header_checks
    assert got.matched_at == got.submitted_at
    raised = [e for e in await raised_exceptions(js, Namespace(settings.namespace)) if e.object.object_key == "INV-2"]
    assert sorted(got.exception_ids) == sorted(e.exception_id for e in raised)
    assert len(got.exception_ids) == 2


async def test_payment_only_from_the_erp(invoice_stack):
    _, receipts, stub, _ = invoice_stack
    await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "4")), metadata=ERP)
    await stub.SubmitInvoice(invoice(), metadata=PROCUREMENT)
    request = invoice_service_pb2.RecordInvoicePaymentRequest(invoice_id="INV-1", payment_reference="PAY-9")
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.RecordInvoicePayment(request, metadata=PROCUREMENT)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    paid = await stub.RecordInvoicePayment(request, metadata=ERP)
    assert paid.status.state == invoice_pb2.INVOICE_STATE_PAID
    call = stub.RecordInvoicePayment(request, metadata=ERP)
    assert (await call).status == paid.status
    assert ("syncgov-idempotent-replay", "true") in tuple(await call.initial_metadata())


async def test_status_is_identical_after_a_restart(po_settings):
    settings = invoice_settings(po_settings)
    async with order_received(po_settings, (1, "4")):
        async with running_service(settings, wire_invoices) as (_, channel, _):
            stub = invoice_service_pb2_grpc.InvoiceStatusServiceStub(channel)
            await stub.SubmitInvoice(invoice("INV-1", "INV-7"), metadata=PROCUREMENT)
            await stub.SubmitInvoice(invoice("INV-2", "B-1", price="14.00"), metadata=PROCUREMENT)
            before = [
                (await stub.GetInvoice(invoice_service_pb2.GetInvoiceRequest(invoice_id=i), metadata=PROCUREMENT))
                for i in ("INV-1", "INV-2")
            ]
        async with running_service(settings, wire_invoices) as (_, channel, _):
            stub = invoice_service_pb2_grpc.InvoiceStatusServiceStub(channel)
            after = [
                (await stub.GetInvoice(invoice_service_pb2.GetInvoiceRequest(invoice_id=i), metadata=PROCUREMENT))
                for i in ("INV-1", "INV-2")
            ]
            assert after == before
            # What other invoices invoiced and their numbers were read back from the stream.
            duplicate = await stub.SubmitInvoice(invoice("INV-3", "inv 7", quantity="1"), metadata=PROCUREMENT)
            assert duplicate.status.state == BLOCKED
            assert reasons(duplicate.status) == {"quantity_variance"}  # 4 + 1 invoiced of 4 received
            listed = await stub.ListBlockedInvoices(invoice_service_pb2.ListBlockedInvoicesRequest(), metadata=OPS)
            assert [status.invoice.invoice_id for status in listed.statuses] == ["INV-2", "INV-3"]
            # The contract's InvoiceStatus carries line reasons only; a duplicate is the invoice's (its header's).
            duplicates = await stub.ListBlockedInvoices(
                invoice_service_pb2.ListBlockedInvoicesRequest(reason=invoice_pb2.BLOCK_REASON_DUPLICATE_INVOICE),
                metadata=OPS,
            )
            assert [status.invoice.invoice_id for status in duplicates.statuses] == ["INV-3"]


async def _state_becomes(stub, invoice_id: str, state: int, within: float = 10.0) -> invoice_pb2.InvoiceStatus:
    """The invoice's status once it reaches ``state`` (re-matched by the consumers, with no call from anyone)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        got = await stub.GetInvoice(invoice_service_pb2.GetInvoiceRequest(invoice_id=invoice_id), metadata=PROCUREMENT)
        if got.status.state == state or asyncio.get_running_loop().time() > deadline:
            return got.status
        await asyncio.sleep(0.05)


async def test_an_invoice_awaiting_its_receipt_matches_when_the_receipt_is_posted(invoice_stack, js):
    _, receipts, stub, settings = invoice_stack
    blocked = await stub.SubmitInvoice(invoice(), metadata=PROCUREMENT)
    assert reasons(blocked.status) == {"awaiting_receipt"}
    await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "4")), metadata=ERP)
    matched = await _state_becomes(stub, "INV-1", MATCHED)
    assert matched.state == MATCHED, reasons(matched)
    events = [stored.subject.rsplit(".", 1)[-1] async for stored in _invoice_events(js, settings)]
    assert events == ["submitted", "matched"]


async def test_a_price_block_clears_when_a_change_order_fixes_the_price(invoice_stack):
    po_stub, receipts, stub, _ = invoice_stack
    await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "4")), metadata=ERP)
    dear = await stub.SubmitInvoice(invoice(price="13.50"), metadata=PROCUREMENT)
    assert reasons(dear.status) == {"price_variance"}
    changed = sample_order(price_units=13)  # 13.50: the buyer agrees to the supplier's price
    changed.version = 2
    await po_stub.ChangePurchaseOrder(
        po_service_pb2.ChangePurchaseOrderRequest(purchase_order=changed), metadata=PROCUREMENT
    )
    matched = await _state_becomes(stub, "INV-1", MATCHED)
    assert matched.state == MATCHED, reasons(matched)


async def test_a_later_invoice_never_blocks_an_earlier_one_on_re_match(invoice_stack):
    _, receipts, stub, _ = invoice_stack
    await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "4")), metadata=ERP)
    first = await stub.SubmitInvoice(invoice("INV-1", "C-1"), metadata=PROCUREMENT)
    assert first.status.state == MATCHED
    second = await stub.SubmitInvoice(invoice("INV-2", "C-2"), metadata=PROCUREMENT)
    assert reasons(second.status) == {"quantity_variance"}  # 4 + 4 invoiced of 4 received
    await receipts.PostGoodsReceipt(goods_receipt("GR-2", "PO-1001", (1, "4")), metadata=ERP)
    assert (await _state_becomes(stub, "INV-2", MATCHED)).state == MATCHED
    again = await stub.GetInvoice(invoice_service_pb2.GetInvoiceRequest(invoice_id="INV-1"), metadata=PROCUREMENT)
    assert again.status.state == MATCHED


async def _event_names(js, settings):
    async for stored in _invoice_events(js, settings):
        yield stored.subject.rsplit(".", 1)[-1]


async def _invoice_events(js, settings):
    from libs.runtime.events import EventReader

    async for stored in EventReader(requests_of(js), Namespace(settings.namespace)).scan("invoice"):
        yield stored


async def test_an_invoice_sent_twice_bills_its_quantity_once(invoice_stack):
    """The resent copy is blocked as a duplicate and counts for nothing: a later, honest invoice of the rest of the
    received quantity matches (it was blocked for quantity while the copy's quantity counted)."""
    _, receipts, stub, _ = invoice_stack
    await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "8")), metadata=ERP)
    first = await stub.SubmitInvoice(invoice("INV-1", "A-1"), metadata=PROCUREMENT)
    assert first.status.state == MATCHED, reasons(first.status)
    copy = await stub.SubmitInvoice(invoice("INV-2", "a 1"), metadata=PROCUREMENT)
    assert copy.status.state == BLOCKED
    assert invoice_pb2.BLOCK_REASON_DUPLICATE_INVOICE in copy.status.match.header_block_reasons
    rest = await stub.SubmitInvoice(invoice("INV-3", "B-7"), metadata=PROCUREMENT)
    assert rest.status.state == MATCHED, reasons(rest.status)


async def test_a_match_names_the_policy_revision_whose_tolerances_it_applied(governed_stack, po_settings):
    """The control plane applies a policy (revision 1); invoice-status follows it and its match records it."""
    from syncgov.controlplane.v1 import controlplane_service_pb2 as cp
    from tests.integration.test_control_plane import DEFAULT
    from tests.integration.test_control_plane import OPS as CONTROL_OPS

    _, control_stub, _, po_stub = governed_stack
    applied = await control_stub.ApplyPolicy(
        cp.ApplyPolicyRequest(document_yaml=DEFAULT, expected_revision=0, comment="revision 1"), metadata=CONTROL_OPS
    )
    assert applied.revision.revision == 1
    await publish_order(po_stub)
    async with running_service(invoice_settings(po_settings), wire_invoices) as (running, channel, _):
        for _ in range(100):  # the policy bucket is followed: wait until revision 1 is in force
            if running.runtime.policy.current.revision == 1:
                break
            await asyncio.sleep(0.05)
        stub = invoice_service_pb2_grpc.InvoiceStatusServiceStub(channel)
        submitted = await stub.SubmitInvoice(invoice(), metadata=PROCUREMENT)
        read = await stub.GetInvoice(invoice_service_pb2.GetInvoiceRequest(invoice_id="INV-1"), metadata=PROCUREMENT)
    assert submitted.status.policy_revision == read.status.policy_revision == 1
