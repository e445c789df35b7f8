"""The purchase orders receipts are reconciled against, read from po-publication's events.

Never po-publication's storage and never a call to it: the PO stream says what each order's latest published,
changed or cancelled version is. "The version current at posting" must be exact — a warehouse posting a
second after a change order was acknowledged must be told it worked from the superseded version — so each
posting asks the stream for the order's version in force (libs/runtime/in_force.py: one direct get, and the
events after the one it holds only when that moved). Recently used orders stay in memory, bounded by bytes.
"""

from __future__ import annotations

from decimal import Decimal

from libs.runtime.events import EventReader, StoredEvent
from libs.runtime.in_force import VersionsInForce
from services.receipt_reconciliation import domain
from syncgov.po.v1 import events_pb2, po_pb2

PO_DOMAIN = "po"
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
# Measured with tracemalloc: a view holds ~250 bytes per order line (a Decimal, a unit, a dict slot) beyond its
# ~300-byte shell; the estimate errs high.
_VIEW_BYTES = 512
_LINE_BYTES = 256


def size_of(view: domain.OrderView) -> int:
    return _VIEW_BYTES + _LINE_BYTES * len(view.lines)


_DocumentEvent = events_pb2.PurchaseOrderPublished | events_pb2.PurchaseOrderChanged | events_pb2.PurchaseOrderCancelled
_DOCUMENT_EVENTS: dict[str, type[_DocumentEvent]] = {
    "published": events_pb2.PurchaseOrderPublished,
    "changed": events_pb2.PurchaseOrderChanged,
    "cancelled": events_pb2.PurchaseOrderCancelled,
}


def view_of(stored: StoredEvent) -> domain.OrderView | None:
    """The version a PO event makes current, or None for events that do not change it."""
    payload_type = _DOCUMENT_EVENTS.get(stored.subject.rsplit(".", 1)[-1])
    if payload_type is None:
        return None
    order: po_pb2.PurchaseOrder = stored.unpack(payload_type).purchase_order
    return domain.OrderView(
        po_id=order.po_id,
        version=order.version,
        cancelled=order.status == po_pb2.PURCHASE_ORDER_STATUS_CANCELLED,
        business_unit=order.business_unit,
        lines={
            line.line_number: domain.OrderLine(Decimal(line.quantity.value), line.unit_of_measure.strip().upper())
            for line in order.lines
        },
        sequence=stored.sequence,
    )


class OrderBook(VersionsInForce[domain.OrderView]):
    """Orders' versions in force, by po id (libs/runtime/in_force.py)."""

    def __init__(self, reader: EventReader, capacity_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        super().__init__(reader, PO_DOMAIN, view_of, size_of, capacity_bytes)
