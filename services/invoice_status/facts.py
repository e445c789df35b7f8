"""What a match needs, read from the streams: never another service's storage and never a call to it.

- **PO lines** (:class:`OrderLines`): the version current at match time, from po-publication's events, read as
  ``libs/runtime/in_force.py`` reads a version in force (one direct get per match).
- **Net received** (:class:`ReceivedLines`): receipt-reconciliation's ``<ns>.receipt.<po id>.reconciled``
  events carry, per PO line the document touched, that line's cumulative figures after it (received net of
  returns, and returned). The newest figure of each line wins; the order's receipt subject is read from the
  sequence already known (one direct get when nothing moved).
- **Suppliers** (:class:`SupplierStates`): supplier-normalization's events followed into memory, like
  po-publication's supplier directory: unknown, blocked, inactive or merged suppliers are refused.
- **Other invoices** (:class:`InvoiceLedger`): every invoice's folded state, in memory, followed from this
  service's own invoice stream (a :class:`~libs.runtime.follower.StreamFollower` caught up before serving) and
  fed by the command handler after each append (a projection), so an invoice this process just recorded counts
  at once. It answers the quantity already invoiced on a PO line by other invoices, the supplier's earlier
  invoices for duplicate detection, and the blocked invoices (``ListBlockedInvoices``). In memory rather than in
  Valkey: the match must see every invoice (a lost Valkey key would let a duplicate through), it is rebuilt from
  the stream at every start, and it costs about one submitted invoice per entry. An invoice counts only the
  invoices recorded before it. Two replicas submitting two invoices on one PO line at the same instant may each
  miss the other's quantity until the next re-match of that PO (rematch.py).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from libs.policy.catalog import message_descriptor
from libs.runtime.commands import recorded
from libs.runtime.decider import Recorded
from libs.runtime.events import EventReader, StoredEvent
from libs.runtime.in_force import VersionsInForce
from libs.runtime.values import decimal_from_proto, money_from_proto
from services.invoice_status import events, matching
from services.invoice_status.decider import REMATCHABLE, FactVersions, InvoiceEvent, InvoiceState, InvoiceStatus, evolve
from services.invoice_status.domain import (
    ZERO,
    Invoice,
    LineKey,
    MatchFacts,
    MatchResult,
    PoLineFacts,
    ReceivedFacts,
    TolerancePolicy,
)
from syncgov.po.v1 import events_pb2 as po_events_pb2
from syncgov.po.v1 import po_pb2
from syncgov.receipt.v1 import events_pb2 as receipt_events_pb2
from syncgov.supplier.v1 import events_pb2 as supplier_events_pb2
from syncgov.supplier.v1 import supplier_pb2

log = logging.getLogger(__name__)

PO_DOMAIN = "po"
RECEIPT_DOMAIN = "receipt"
SUPPLIER_DOMAIN = "supplier"
DEFAULT_CACHE_ENTRIES = 50_000  # orders whose receipt figures are kept
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
# A PO line's facts hold two Decimals and two strings besides the shell: ~400 bytes; the estimate errs high.
_FACTS_BYTES = 512
_LINE_BYTES = 512

# --- PO lines ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderFacts:
    po_id: str
    version: int
    lines: Mapping[int, PoLineFacts]
    sequence: int  # of the PO event that set this version


_VERSION_EVENTS: dict[str, type[po_events_pb2.PurchaseOrderPublished]] = {
    "published": po_events_pb2.PurchaseOrderPublished,
    "changed": po_events_pb2.PurchaseOrderChanged,  # type: ignore[dict-item]
    "cancelled": po_events_pb2.PurchaseOrderCancelled,  # type: ignore[dict-item]
}


def order_facts_of(stored: StoredEvent) -> OrderFacts | None:
    """The version a PO event makes current, or None for events that make no version current."""
    payload_type = _VERSION_EVENTS.get(stored.subject.rsplit(".", 1)[-1])
    if payload_type is None:
        return None
    order: po_pb2.PurchaseOrder = stored.unpack(payload_type).purchase_order
    cancelled = order.status == po_pb2.PURCHASE_ORDER_STATUS_CANCELLED
    lines = {}
    for line in order.lines:
        price = money_from_proto(line.unit_price)
        lines[line.line_number] = PoLineFacts(
            po_version=order.version,
            ordered_quantity=decimal_from_proto(line.quantity),
            unit_price=price,
            currency=order.currency_code or line.unit_price.currency_code,
            business_unit=order.business_unit,
            cancelled=cancelled,
        )
    return OrderFacts(order.po_id, order.version, lines, stored.sequence)


class OrderLines(VersionsInForce[OrderFacts]):
    """Orders' versions in force, by PO id (libs/runtime/in_force.py), recently used ones kept by bytes."""

    def __init__(self, reader: EventReader, capacity_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        super().__init__(reader, PO_DOMAIN, order_facts_of, _size_of, capacity_bytes)


def _size_of(facts: OrderFacts) -> int:
    return _FACTS_BYTES + _LINE_BYTES * len(facts.lines)


# --- Net received ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderReceipts:
    lines: Mapping[int, ReceivedFacts]
    sequence: int  # the receipt stream's sequence of the newest event on the order read


def received_lines_of(stored: StoredEvent) -> dict[int, ReceivedFacts]:
    """A reconciled receipt's figures per PO line it touched (cumulative after the document)."""
    if not stored.envelope.payload.Is(message_descriptor(receipt_events_pb2.GoodsReceiptReconciled)):
        return {}
    reconciled = stored.unpack(receipt_events_pb2.GoodsReceiptReconciled)
    figures = {}
    for line in reconciled.lines:
        net = decimal_from_proto(line.received_quantity) if line.HasField("received_quantity") else ZERO
        returned = decimal_from_proto(line.returned_quantity) if line.HasField("returned_quantity") else ZERO
        # ReceivedFacts holds received before returns; the event's figure is already net of them.
        figures[line.po_line_number] = ReceivedFacts(received=net + returned, returned=returned)
    return figures


class ReceivedLines:
    """Net received per PO line, by order, read from the receipt stream and remembered with its sequence."""

    def __init__(self, reader: EventReader, capacity: int = DEFAULT_CACHE_ENTRIES) -> None:
        self._reader = reader
        self._capacity = capacity
        self._orders: OrderedDict[str, OrderReceipts] = OrderedDict()
        self.sequence = 0  # the newest receipt sequence any answer reflected

    async def of(self, po_id: str) -> OrderReceipts:
        newest = await self._reader.last(RECEIPT_DOMAIN, po_id)
        if newest is None:
            return OrderReceipts({}, 0)
        known = self._orders.get(po_id, OrderReceipts({}, 0))
        if known.sequence < newest.sequence:
            lines = dict(known.lines)
            for stored in await self._reader.history(RECEIPT_DOMAIN, po_id, after=known.sequence):
                try:
                    lines.update(received_lines_of(stored))
                except Exception:
                    log.error("receipt event %s cannot be read; left out", stored.sequence, exc_info=True)
            known = OrderReceipts(lines, newest.sequence)
        self._orders[po_id] = known
        self._orders.move_to_end(po_id)
        while len(self._orders) > self._capacity:
            self._orders.popitem(last=False)
        self.sequence = max(self.sequence, known.sequence)
        return known


# --- Suppliers -------------------------------------------------------------------------------------------------

SUPPLIER_ACTIVE = "active"
SUPPLIER_MERGED = "merged"
_SUPPLIER_STATUS = {
    supplier_pb2.SUPPLIER_STATUS_ACTIVE: SUPPLIER_ACTIVE,
    supplier_pb2.SUPPLIER_STATUS_BLOCKED: "blocked",
    supplier_pb2.SUPPLIER_STATUS_INACTIVE: "inactive",
    supplier_pb2.SUPPLIER_STATUS_MERGED: SUPPLIER_MERGED,
}


@dataclass
class SupplierStates:
    """Golden suppliers' states as supplier events tell them (a projection of the supplier stream, in memory)."""

    status: dict[str, str] = field(default_factory=dict)
    merged_into: dict[str, str] = field(default_factory=dict)

    def apply(self, stored: StoredEvent) -> None:
        payload = stored.envelope.payload
        if payload.Is(message_descriptor(supplier_events_pb2.SupplierUpserted)):
            supplier = stored.unpack(supplier_events_pb2.SupplierUpserted).supplier
            self.status[supplier.supplier_id] = _SUPPLIER_STATUS.get(supplier.status, SUPPLIER_ACTIVE)
        elif payload.Is(message_descriptor(supplier_events_pb2.SupplierMerged)):
            merged = stored.unpack(supplier_events_pb2.SupplierMerged)
            self.status[merged.merged_supplier_id] = SUPPLIER_MERGED
            self.merged_into[merged.merged_supplier_id] = merged.surviving_supplier_id
        elif payload.Is(message_descriptor(supplier_events_pb2.SupplierStatusChanged)):
            changed = stored.unpack(supplier_events_pb2.SupplierStatusChanged)
            self.status[changed.supplier_id] = _SUPPLIER_STATUS.get(changed.status, "inactive")

    def problem(self, supplier_id: str) -> tuple[str, str] | None:
        """(kind, message) when invoices of this supplier are refused: kind ``unknown`` (INVALID_ARGUMENT) or
        ``not_active`` (FAILED_PRECONDITION); None for an active supplier."""
        status = self.status.get(supplier_id)
        if status is None:
            return "unknown", f"supplier {supplier_id!r} is unknown to syncgov (no supplier record names it)"
        if status == SUPPLIER_MERGED:
            surviving = self.merged_into.get(supplier_id, "")
            return "not_active", f"supplier {supplier_id!r} was merged into {surviving!r}; invoice as {surviving!r}"
        if status != SUPPLIER_ACTIVE:
            return "not_active", f"supplier {supplier_id!r} is {status}; its invoices are not accepted"
        return None


# --- Other invoices --------------------------------------------------------------------------------------------

COUNTED = frozenset(InvoiceStatus) - {InvoiceStatus.CANCELLED}


class InvoiceLedger:
    """Every invoice's folded state (a projection of the invoice stream, in memory)."""

    def __init__(self) -> None:
        self.states: dict[str, InvoiceState] = {}
        self.sequence = 0  # the highest invoice-stream sequence folded
        self.first_sequence: dict[str, int] = {}  # each invoice's submission: the order invoices count in
        self.by_order: dict[str, set[str]] = {}  # PO id -> the invoices with a line on it

    def follow(self, stored: StoredEvent) -> None:
        """The follower's handler: fold one stored event (one already folded is skipped)."""
        event = events.decode(stored)
        if event is None:
            return
        self.fold(stored.envelope.object_key, recorded(stored, event))

    def fold(self, invoice_id: str, event: Recorded[InvoiceEvent]) -> None:
        state = self.states.get(invoice_id, InvoiceState())
        if event.sequence > state.sequence:
            self.states[invoice_id] = evolve(state, event)
            self._index(invoice_id, event.sequence)
        self.sequence = max(self.sequence, event.sequence)

    async def applied(
        self, key: str, state: InvoiceState, sequence: int, recorded: Recorded[InvoiceEvent] | None
    ) -> None:
        """The command handler's projection hook: the state after an append (or a replay), at once."""
        known = self.states.get(key)
        if known is None or known.sequence < state.sequence:
            self.states[key] = state
            self._index(key, recorded.sequence if recorded is not None else state.sequence)
        self.sequence = max(self.sequence, sequence)

    def _index(self, invoice_id: str, sequence: int) -> None:
        if invoice_id in self.first_sequence:
            return
        self.first_sequence[invoice_id] = sequence
        submitted = self.states[invoice_id].submitted
        for line in submitted.invoice.lines if submitted is not None else ():
            self.by_order.setdefault(line.po_id, set()).add(invoice_id)

    def waiting_on(self, po_id: str) -> list[str]:
        """The invoices with a line on this PO that a re-match may change, oldest submission first."""
        rematchable = [
            invoice_id for invoice_id in self.by_order.get(po_id, ()) if self.states[invoice_id].status in REMATCHABLE
        ]
        return sorted(rematchable, key=lambda invoice_id: (self.first_sequence[invoice_id], invoice_id))

    def state_of(self, invoice_id: str) -> InvoiceState:
        return self.states.get(invoice_id) or InvoiceState()

    def invoices(self, *, excluding: str = "") -> Iterable[Invoice]:
        """Every invoice not cancelled but ``excluding``; when ``excluding`` was recorded already, only those
        recorded before it (a re-match of an invoice never counts a later one against it)."""
        before = self.first_sequence.get(excluding)
        for invoice_id, state in self.states.items():
            if invoice_id == excluding or state.submitted is None or state.status not in COUNTED:
                continue
            if before is not None and self.first_sequence.get(invoice_id, 0) > before:
                continue
            yield state.submitted.invoice

    def invoiced_by_others(self, lines: Iterable[LineKey], invoice_id: str) -> dict[LineKey, Decimal]:
        """Quantities invoiced on these PO lines by every other invoice not cancelled (credit notes subtract)."""
        wanted = set(lines)
        totals: dict[LineKey, Decimal] = {}
        for invoice in self.invoices(excluding=invoice_id):
            sign = -1 if invoice.credit_note else 1
            for line in invoice.lines:
                if line.key in wanted:
                    totals[line.key] = totals.get(line.key, ZERO) + sign * line.quantity
        return totals

    def earlier_of(self, supplier_id: str, invoice_id: str) -> list[Invoice]:
        """The supplier's other invoices not cancelled: what duplicate detection compares with."""
        return [invoice for invoice in self.invoices(excluding=invoice_id) if invoice.supplier_id == supplier_id]

    def blocked(self) -> list[tuple[str, InvoiceState]]:
        """Blocked invoices, oldest submission first."""
        listed = [(key, state) for key, state in self.states.items() if state.status == InvoiceStatus.BLOCKED]
        return sorted(listed, key=lambda item: (self.first_sequence.get(item[0], 0), item[0]))


# --- The match against the facts current now ---------------------------------------------------------------


class Matcher:
    """Reads the facts an invoice's lines need and runs the (pure) three-way match on them."""

    def __init__(self, orders: OrderLines, receipts: ReceivedLines, ledger: InvoiceLedger) -> None:
        self._orders = orders
        self._receipts = receipts
        self._ledger = ledger

    async def match(self, invoice: Invoice, tolerances: TolerancePolicy) -> tuple[MatchResult, FactVersions]:
        """The match of ``invoice`` now, and the versions of the facts it read."""
        po_lines: dict[LineKey, PoLineFacts] = {}
        received: dict[LineKey, ReceivedFacts] = {}
        versions: list[tuple[str, int]] = []
        receipt_sequence = 0
        invoice_sequence = self._ledger.sequence  # read first: what the ledger held when the facts were read
        for po_id in sorted({line.po_id for line in invoice.lines}):
            order = await self._orders.current(po_id)
            if order is not None:
                versions.append((po_id, order.version))
                po_lines.update(((po_id, number), line) for number, line in order.lines.items())
            receipts = await self._receipts.of(po_id)
            receipt_sequence = max(receipt_sequence, receipts.sequence)
            received.update(((po_id, number), figures) for number, figures in receipts.lines.items())
        others = self._ledger.invoiced_by_others((line.key for line in invoice.lines), invoice.invoice_id)
        result = matching.match_invoice(
            invoice,
            MatchFacts(po_lines, received, others),
            tolerances,
            earlier=self._ledger.earlier_of(invoice.supplier_id, invoice.invoice_id),
        )
        return result, FactVersions(tuple(versions), receipt_sequence, invoice_sequence)
