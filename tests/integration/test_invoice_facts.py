"""What invoice-status's match reads of goods received (facts.ReceivedLines), against the receipt stream that
receipt-reconciliation writes: exact figures whichever events are read, and the order's newest event alone when it
touched every line the match needs; and an invoice of many orders matched line by line against each order's own
facts, their newest events asked of the broker a batch at a time (facts.Matcher)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest

from libs.runtime.events import EventReader, StoredEvent
from libs.runtime.subjects import Namespace
from libs.runtime.testing import running_service
from services.invoice_status.domain import Reason
from services.invoice_status.facts import ORDERS_READ_AT_ONCE, InvoiceLedger, Matcher, OrderLines, ReceivedLines
from services.po_publication.wiring import wire as wire_po
from services.receipt_reconciliation.wiring import wire as wire_receipts
from syncgov.po.v1 import po_service_pb2_grpc
from syncgov.receipt.v1 import receipt_service_pb2_grpc
from tests.integration.helpers import ERP, goods_receipt, publish_order, receipt_settings, requests_of
from tests.unit.invoice_status.builders import POLICY, invoice, line

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class CountingReader:
    """The real reader, counting the reads it serves (each ``history`` call reads at least two messages)."""

    def __init__(self, reader: EventReader) -> None:
        self._reader = reader
        self.reads: list[str] = []

    async def last(self, domain: str, key: str) -> StoredEvent | None:
        self.reads.append("last")
        return await self._reader.last(domain, key)

    async def history(self, domain: str, key: str, after: int = 0, *, through: int | None = None) -> list[StoredEvent]:
        self.reads.append(f"history after {after}")
        return await self._reader.history(domain, key, after=after, through=through)

    async def last_of_each(self, objects: Sequence[tuple[str, str]]) -> list[StoredEvent | None]:
        self.reads.append(f"last of {len(objects)}")
        return await self._reader.last_of_each(objects)


def net(figures: Any, line: int) -> Decimal:
    return figures.lines[line].received - figures.lines[line].returned


async def test_the_newest_receipt_answers_alone_for_the_lines_it_touched_and_the_rest_are_read_when_needed(
    po_settings, js
):
    async with (
        running_service(po_settings, wire_po) as (_, po_channel, _),
        running_service(receipt_settings(po_settings), wire_receipts) as (_, receipt_channel, _),
    ):
        await publish_order(po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel))
        receipts = receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(receipt_channel)
        await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "3")), metadata=ERP)
        await receipts.PostGoodsReceipt(goods_receipt("GR-2", "PO-1001", (1, "4"), (2, "1.5", "KGM")), metadata=ERP)
        await receipts.PostGoodsReceipt(goods_receipt("GR-3", "PO-1001", (2, "0.5", "KGM")), metadata=ERP)
    reader = CountingReader(EventReader(requests_of(js), Namespace(po_settings.namespace)))
    received = ReceivedLines(reader)  # type: ignore[arg-type]

    newest_only = await received.of("PO-1001", [2])  # GR-3 touched line 2: its cumulative 2.0 is current
    assert (net(newest_only, 2), newest_only.complete, reader.reads) == (Decimal("2.0"), False, ["last"])

    reader.reads.clear()
    whole = await received.of("PO-1001", [1, 2])  # line 1 was last touched by GR-2: every event is read
    assert (net(whole, 1), net(whole, 2), whole.complete) == (Decimal(7), Decimal("2.0"), True)
    assert reader.reads == ["last", "history after 0"]

    reader.reads.clear()
    again = await received.of("PO-1001", [1])  # nothing moved: the complete figures are kept
    assert (net(again, 1), reader.reads) == (Decimal(7), ["last"])
    assert await ReceivedLines(reader).of("PO-1001") == whole  # type: ignore[arg-type]  # no lines named: complete


async def test_the_figures_kept_are_bounded_by_bytes_the_least_recently_used_order_leaving_first(po_settings, js):
    async with (
        running_service(po_settings, wire_po) as (_, po_channel, _),
        running_service(receipt_settings(po_settings), wire_receipts) as (_, receipt_channel, _),
    ):
        orders = po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel)
        receipts = receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(receipt_channel)
        for po_id in ("PO-A", "PO-B"):
            await publish_order(orders, po_id)
            await receipts.PostGoodsReceipt(goods_receipt(f"GR-{po_id}", po_id, (1, "3")), metadata=ERP)
    reader = CountingReader(EventReader(requests_of(js), Namespace(po_settings.namespace)))
    received = ReceivedLines(reader, capacity_bytes=1_500)  # type: ignore[arg-type]  # room for one order
    await received.of("PO-A")
    await received.of("PO-B")
    assert received.bytes <= 1_500
    reader.reads.clear()
    assert net(await received.of("PO-A"), 1) == Decimal(3)  # evicted: read again from the stream
    assert reader.reads == ["last", "history after 0"]


async def test_an_invoice_of_more_orders_than_are_read_at_once_is_matched_against_each_orders_own_facts(
    po_settings, js
):
    po_ids = [f"PO-M{n:02d}" for n in range(ORDERS_READ_AT_ONCE + 2)]
    received = {po_id: str(n % 7 + 1) for n, po_id in enumerate(po_ids) if n % 3}  # every third: nothing received
    async with (
        running_service(po_settings, wire_po) as (_, po_channel, _),
        running_service(receipt_settings(po_settings), wire_receipts) as (_, receipt_channel, _),
    ):
        orders = po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel)
        receipts = receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(receipt_channel)
        for po_id in po_ids:
            await publish_order(orders, po_id)
        for po_id, quantity in received.items():
            await receipts.PostGoodsReceipt(goods_receipt(f"GR-{po_id}", po_id, (1, quantity)), metadata=ERP)
    reader = CountingReader(EventReader(requests_of(js), Namespace(po_settings.namespace)))
    matcher = Matcher(reader, OrderLines(reader), ReceivedLines(reader), InvoiceLedger())  # type: ignore[arg-type]
    # One line per order, in reverse: each must be matched against its own order's receipt, whatever the order.
    lines = [line(n, po=po_id, quantity="1", price="12.50") for n, po_id in enumerate(reversed(po_ids), start=1)]

    result, versions = await matcher.match(invoice(*lines, currency="EUR"), POLICY)

    assert reader.reads == [f"last of {2 * ORDERS_READ_AT_ONCE}", "last of 4"]  # two round trips, not 36
    assert sorted(versions.po_versions) == [(po_id, 1) for po_id in po_ids]
    for matched in result.lines:
        if matched.po_id in received:
            assert matched.quantity is not None, matched
            assert (matched.quantity.expected, matched.reasons) == (Decimal(received[matched.po_id]), ()), matched
        else:
            assert Reason.AWAITING_RECEIPT in matched.reasons, matched
