"""The purchase orders receipts are reconciled against, read from po-publication's events.

Never po-publication's storage and never a call to it: the PO stream says what each order's latest published,
changed or cancelled version is. "The version current at posting" must be exact — a warehouse posting a
second after a change order was acknowledged must be told it worked from the superseded version — so each
posting asks the stream for the order's newest event (one direct get) and reads what came after the version
it knows only when that moved. Held versions are not current and acknowledgments change no quantity: they
advance what was examined, not the version. Recently used orders stay in memory, bounded by estimated bytes.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import replace
from decimal import Decimal

from libs.runtime.events import EventReader, StoredEvent
from services.receipt_reconciliation import domain
from syncgov.po.v1 import events_pb2, po_pb2

log = logging.getLogger(__name__)

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


class OrderBook:
    """Orders' current versions by po id, each with the PO stream sequence examined through."""

    def __init__(self, reader: EventReader, capacity_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._reader = reader
        self._capacity = capacity_bytes
        self._orders: OrderedDict[str, domain.OrderView] = OrderedDict()
        self.bytes = 0

    async def current(self, po_id: str) -> domain.OrderView | None:
        """The order's latest version as the PO stream holds it now; None when no version was ever published."""
        newest = await self._reader.last(PO_DOMAIN, po_id)
        if newest is None:
            return None
        known = self._orders.get(po_id)
        if known is not None and known.sequence >= newest.sequence:
            self._orders.move_to_end(po_id)
            return known
        view = self._view(newest)
        if view is None:  # the newest event is no version (an acknowledgment, a held version): read from the known one
            view = known
            for stored in await self._reader.history(PO_DOMAIN, po_id, after=known.sequence if known else 0):
                view = self._view(stored) or view
            if view is None:
                return None
            view = replace(view, sequence=newest.sequence)
        self._remember(po_id, view)
        return view

    def _view(self, stored: StoredEvent) -> domain.OrderView | None:
        try:
            return view_of(stored)
        except Exception:  # po-publication validated what it stored; a payload that does not read is its bug
            log.error("PO event %s on %s cannot be read; left out", stored.sequence, stored.subject, exc_info=True)
            return None

    def _remember(self, po_id: str, view: domain.OrderView) -> None:
        previous = self._orders.pop(po_id, None)
        if previous is not None:
            self.bytes -= size_of(previous)
        self._orders[po_id] = view
        self.bytes += size_of(view)
        while self.bytes > self._capacity and self._orders:
            _, evicted = self._orders.popitem(last=False)
            self.bytes -= size_of(evicted)

    def __len__(self) -> int:
        return len(self._orders)
