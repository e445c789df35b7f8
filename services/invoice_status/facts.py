"""What a match needs, read from the streams: never another service's storage and never a call to it.

- **PO lines** (:class:`OrderLines`): the version current at match time, from po-publication's events, read as
  ``libs/runtime/in_force.py`` reads a version in force (one direct get per match).
- **Net received** (:class:`ReceivedLines`): receipt-reconciliation's ``<ns>.receipt.<po id>.reconciled``
  events carry, per PO line the document touched, that line's cumulative figures after it (received net of
  returns, and returned). The newest figure of each line wins; the order's receipt subject is read from the
  sequence already known (one direct get when nothing moved).
- **Suppliers** (:class:`SupplierStates`): supplier-normalization's events followed into memory, like
  po-publication's supplier directory: unknown, blocked, inactive or merged suppliers are refused.
- **Other invoices** (:class:`InvoiceLedger`): every invoice's folded state, in memory, caught up from this service's
  own invoice stream before serving (a :class:`~libs.runtime.follower.StreamFollower`), then fed by the command
  handler after each append (a projection), so an invoice this process just recorded counts at once, and with other
  writers' events read back when it lacks them (:class:`~libs.runtime.follower.ForeignEvents`). It
  answers the quantity already invoiced on a PO line by other invoices, the supplier's earlier invoices of the same
  number or amount for duplicate detection, and the invoices a re-match may change, each from an index (by PO line,
  by supplier and number or amount, by PO), never by scanning every invoice. In memory rather than in Valkey: the
  match must see every invoice (a lost Valkey key would let a duplicate through), it is rebuilt from the stream at
  every start, and it costs about one submitted invoice per entry (figures in the class). An invoice counts only the
  invoices recorded before it. Two submissions on one PO line (or of one supplier) in flight at the same instant may
  each be matched without the other; once the invoice stream is read up to the later one, it is re-matched
  (rematch.py, ``InvoiceLedger.missed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import TypeVar

from libs.policy.catalog import message_descriptor
from libs.runtime.commands import recorded
from libs.runtime.decider import Recorded
from libs.runtime.events import EventReader, StoredEvent
from libs.runtime.in_force import VersionsInForce
from libs.runtime.values import decimal_from_proto, money_from_proto
from services.invoice_status import events, matching
from services.invoice_status.decider import (
    REMATCHABLE,
    FactVersions,
    InvoiceEvent,
    InvoiceState,
    InvoiceStatus,
    InvoiceSubmitted,
    evolve,
)
from services.invoice_status.domain import (
    EXACT,
    ZERO,
    Invoice,
    LineKey,
    MatchFacts,
    MatchResult,
    PoLineFacts,
    Reason,
    ReceivedFacts,
    TolerancePolicy,
)
from services.invoice_status.duplicates import amount_key, number_key, suspicion_window
from syncgov.po.v1 import events_pb2 as po_events_pb2
from syncgov.po.v1 import po_pb2
from syncgov.receipt.v1 import events_pb2 as receipt_events_pb2
from syncgov.supplier.v1 import events_pb2 as supplier_events_pb2
from syncgov.supplier.v1 import supplier_pb2

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)

PO_DOMAIN = "po"
RECEIPT_DOMAIN = "receipt"
SUPPLIER_DOMAIN = "supplier"
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
# A PO line's facts hold two Decimals and two strings besides the shell: ~400 bytes; the estimate errs high.
_FACTS_BYTES = 512
_LINE_BYTES = 512
# Orders whose newest PO and receipt events one match asks for together: an invoice of many orders reads them in
# a few round trips, not two per order, without putting hundreds of requests in flight at once.
ORDERS_READ_AT_ONCE = 16

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
    # Every event of the order up to ``sequence`` was read: a line missing from ``lines`` received nothing. When
    # False, ``lines`` holds only lines the newest events touched (each carries its cumulative figures).
    complete: bool = True


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
    """Net received per PO line, by order, read from the receipt stream and remembered with its sequence.

    A reconciled event carries the cumulative figures of every line its document touched, so the order's newest
    event answers for those lines by itself: when it touched every line a match needs (one receipt per order, the
    common case), one direct get is all the read; the order's earlier events are read only for a line it did not
    touch."""

    def __init__(self, reader: EventReader, capacity_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._reader = reader
        self._capacity = capacity_bytes  # by estimated bytes: an order of 5,000 lines is not one of 1
        self._orders: OrderedDict[str, tuple[OrderReceipts, int]] = OrderedDict()
        self.bytes = 0
        self.sequence = 0  # the newest receipt sequence any answer reflected

    async def of(self, po_id: str, needed: Iterable[int] | None = None) -> OrderReceipts:
        """The order's figures now; complete, or (``needed``: the PO line numbers a match reads) holding those."""
        return await self.given(po_id, await self._reader.last(RECEIPT_DOMAIN, po_id), needed)

    async def given(self, po_id: str, newest: StoredEvent | None, needed: Iterable[int] | None = None) -> OrderReceipts:
        """``of`` with the order's newest receipt event already read (None: it has none)."""
        if newest is None:
            return OrderReceipts({}, 0)
        wanted = None if needed is None else set(needed)
        cached = self._orders.get(po_id)
        known = cached[0] if cached is not None else None
        if known is None and wanted is not None:
            newest_lines = _readable_lines(newest)
            if wanted <= newest_lines.keys():
                known = OrderReceipts(newest_lines, newest.sequence, complete=False)
        if known is not None and known.sequence < newest.sequence:
            lines = await self._read(po_id, after=known.sequence, through=newest.sequence, lines=known.lines)
            known = OrderReceipts(lines, newest.sequence, known.complete)
        if known is None or not (known.complete or (wanted is not None and wanted <= known.lines.keys())):
            known = OrderReceipts(await self._read(po_id, after=0, through=newest.sequence, lines={}), newest.sequence)
        self._keep(po_id, known)
        self.sequence = max(self.sequence, known.sequence)
        return known

    def _keep(self, po_id: str, figures: OrderReceipts) -> None:
        size = _FACTS_BYTES + _LINE_BYTES * len(figures.lines)
        previous = self._orders.pop(po_id, None)
        if previous is not None:
            self.bytes -= previous[1]
        self._orders[po_id] = (figures, size)
        self.bytes += size
        while self.bytes > self._capacity and len(self._orders) > 1:
            _, (_, evicted) = self._orders.popitem(last=False)
            self.bytes -= evicted

    async def _read(
        self, po_id: str, *, after: int, through: int, lines: Mapping[int, ReceivedFacts]
    ) -> dict[int, ReceivedFacts]:
        updated = dict(lines)
        for stored in await self._reader.history(RECEIPT_DOMAIN, po_id, after=after, through=through):
            updated.update(_readable_lines(stored))
        return updated


def _readable_lines(stored: StoredEvent) -> dict[int, ReceivedFacts]:
    try:
        return received_lines_of(stored)
    except Exception:
        log.error("receipt event %s cannot be read; left out", stored.sequence, exc_info=True)
        return {}


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
    """Every invoice's folded state (a projection of the invoice stream, in memory), indexed for the match.

    Fed in stream order through :meth:`follow` (the follower's catch-up at start, then other writers' events read back
    when :meth:`lacking` names them) and by the command handler after each append (:meth:`applied`). Besides the
    states it keeps, updated at every change of an invoice's state (a cancellation takes an invoice out of what counts
    at once):

    - ``(PO id, PO line number)`` -> the counted invoices (not cancelled) with their signed quantity on that line
      (a credit note's is negative): :meth:`invoiced_by_others` costs the invoices on the lines asked for;
    - supplier and normalized number (:func:`~services.invoice_status.duplicates.number_key`) -> the counted
      invoices of that number, and supplier, kind, currency and gross amount
      (:func:`~services.invoice_status.duplicates.amount_key`) -> their dates -> the counted invoices of that
      amount dated so: :meth:`duplicate_candidates` costs the supplier's invoices of that number, or of that amount
      within the suspicion window, found with one lookup for the amount and then, of its dates, those in the window
      (each date of the window looked up when the amount was invoiced on more dates than the window has);
    - PO id -> the invoices a re-match may change (received, matched, blocked, released): :meth:`waiting_on`;
    - the blocked invoices: :meth:`blocked`.

    An invoice counts only the invoices recorded before it (by stream sequence of the submission,
    ``first_sequence``): a re-match never blocks an earlier invoice for a later one's quantity, nor takes the later
    one for its duplicate.

    ``read_through`` is the invoice stream's sequence up to which every event is folded (what was delivered to
    :meth:`follow` in order, extended by appends of this process folded ahead of it): a match records it as its
    ``FactVersions.invoice_sequence``, so :meth:`missed` can tell, once the stream is read up to an invoice, whether
    that invoice's match may have been computed without an invoice recorded just before it (two submissions of
    one PO line, or of one supplier's number, in flight at once on one or two replicas).

    Memory: every invoice is held by design (a match must see every invoice; a lost entry would let a duplicate or
    an over-invoiced quantity through), rebuilt from the stream at every start. Measured with tracemalloc (CPython
    3.11, 2,000 invoices folded from submissions carrying their contract document): about 4.7 KiB for a one-line
    invoice and 2.3 KiB per further line (the state, the domain invoice, its match and the document), of which the
    ledger's own entries and indexes are about 0.55 KiB plus 0.15 KiB per further line. A million one-line
    invoices are about 4.5 GiB: the bound is the number of invoices kept on the stream.
    """

    def __init__(self, on_read: Callable[[StoredEvent], None] = lambda stored: None) -> None:
        # Told of every event delivered to follow() once it is folded (or covered by a state folded already): in
        # stream order for each invoice, not across invoices (an event held for an append is told when released).
        self._on_read = on_read
        self.states: dict[str, InvoiceState] = {}
        self.sequence = 0  # the highest invoice-stream sequence folded
        self.read_through = 0  # every invoice-stream event up to this sequence is folded
        self.first_sequence: dict[str, int] = {}  # each invoice's submission: the order invoices count in
        self._ahead: set[int] = set()  # appends of this process folded before the stream was read up to them
        self._delivered = 0  # the newest event delivered to follow() (delivered in order)
        self._wanted = 0  # the newest sequence a caller of read_up_to waits for
        # Invoices this process is appending to (the expected last sequence of each append under way), and the events
        # delivered that may be such an append's own before its acknowledgment came: held undecoded
        # until the append's own state covers them.
        self._appending: dict[str, list[int]] = {}
        self._held: dict[int, StoredEvent] = {}
        self._held_of: dict[str, list[int]] = {}  # each invoice's held sequences, oldest first
        self._moved = asyncio.Event()  # set (and replaced) whenever read_through moves
        self._on_line: dict[LineKey, dict[str, Decimal]] = {}
        self._by_number: dict[tuple[str, str], set[str]] = {}  # duplicates.number_key -> invoices
        self._by_amount: dict[tuple[object, ...], dict[date, set[str]]] = {}  # duplicates.amount_key -> date -> ...
        self._waiting: dict[str, set[str]] = {}
        self._blocked: set[str] = set()

    # -- feeding ---------------------------------------------------------------------------------------------

    def follow(self, stored: StoredEvent) -> None:
        """Fold one stored event (one already folded is skipped), delivered in stream order: by the follower at start,
        then by the reading back of what the ledger lacks.

        An event of an invoice this process is appending to, after the sequence an append under way expects (so it
        may be that append's own), delivered before the append's acknowledgment (a follower's delivery usually
        overtook it; a sequence lacking for a whole interval is read back even if an acknowledgment is slower), is
        held undecoded: the append's own state covers it once applied, and ``read_through`` stops
        short of it meanwhile, as it does for an append acknowledged before the follower reached it. The state the
        handler applies is the decided event folded, the held one the stored event: the two fold alike
        (events.encode/decode round-trip exactly, tests/unit/invoice_status/test_mapping.py). A held event no append
        under way can own any more (another writer's, or one stored by an append that then failed) is decoded, and an
        invoice's events are always folded and told in stream order: one behind a held event is held too."""
        if stored.sequence <= self._delivered or stored.sequence in self._held:
            return  # delivered again (a read that began before the event was delivered or released): told once
        invoice_id = stored.envelope.object_key
        known = self.states.get(invoice_id)
        if known is not None and known.sequence >= stored.sequence:
            self._read_one(stored)  # this process's own append, folded when it was made: not decoded again
        elif invoice_id in self._held_of or self._ownable(invoice_id, stored.sequence):
            self._held[stored.sequence] = stored
            self._held_of.setdefault(invoice_id, []).append(stored.sequence)
            self._settle(invoice_id)
        else:
            self._decode_and_read(stored)

    def _ownable(self, invoice_id: str, sequence: int) -> bool:
        """Whether an append under way could have stored the event at ``sequence`` (it expects an earlier one)."""
        expected = self._appending.get(invoice_id)
        return expected is not None and min(expected) < sequence

    def _decode_and_read(self, stored: StoredEvent) -> None:
        try:
            event = events.decode(stored)
            if event is not None:
                self.fold(stored.envelope.object_key, recorded(stored, event))
        finally:
            self._read_one(stored)

    @contextlib.contextmanager
    def appending(self, invoice_id: str, expected_last_sequence: int) -> Iterator[None]:
        """Around one append to ``invoice_id`` by this process, guarded by ``expected_last_sequence``. After a failed
        append (and, one loop turn later, after one that succeeded: its state is applied at once after it) the events
        held for the invoice that no append under way can own are decoded and folded."""
        self._appending.setdefault(invoice_id, []).append(expected_last_sequence)
        failed = True
        try:
            yield
            failed = False
        finally:
            if failed:
                self._appended(invoice_id, expected_last_sequence)
            else:
                asyncio.get_running_loop().call_soon(self._appended, invoice_id, expected_last_sequence)

    def _appended(self, invoice_id: str, expected_last_sequence: int) -> None:
        expected = self._appending[invoice_id]
        expected.remove(expected_last_sequence)
        if not expected:
            del self._appending[invoice_id]
        self._settle(invoice_id)

    def _settle(self, invoice_id: str) -> None:
        """Release the invoice's held events, oldest first, while each is covered by its state (read) or can no
        longer be an append's own (decoded and folded); the first that may still be stops the rest. Never raises: an
        event that fails is logged and read, as the follower does, so no append's outcome is replaced and nothing
        stays held."""
        held = self._held_of.get(invoice_id)
        while held:
            sequence = held[0]
            covered = self.state_of(invoice_id).sequence >= sequence
            if not covered and self._ownable(invoice_id, sequence):
                return
            held.pop(0)
            if not held:
                del self._held_of[invoice_id]
            stored = self._held.pop(sequence)
            try:
                if covered:
                    self._read_one(stored)
                else:
                    self._decode_and_read(stored)
            except Exception:
                log.exception("invoice stream: could not apply held sequence %s; skipped", sequence)

    def fold(self, invoice_id: str, event: Recorded[InvoiceEvent]) -> None:
        """Fold one event of the stream, delivered in stream order."""
        self._put(invoice_id, event.sequence, lambda state: evolve(state, event), event.sequence)
        self._read_through(event.sequence)

    async def applied(
        self, key: str, state: InvoiceState, sequence: int, recorded: Recorded[InvoiceEvent] | None
    ) -> None:
        """The command handler's projection hook: the state after an append (or a replay), at once."""
        if key not in self.states and (recorded is None or not isinstance(recorded.event, InvoiceSubmitted)):
            # An invoice this process has not read yet: its submission's sequence (the order it counts in) is not
            # known here; the follower brings it, in order.
            return
        at = recorded.sequence if recorded is not None else state.sequence
        self._put(key, state.sequence, lambda _: state, at)
        # Only this process's own append is folded ahead: a replay's state was read from the stream, and its newest
        # event may be another writer's not read yet, which the reading back must still tell (on_read: settlements,
        # read models), so read_through does not pass it until then.
        if recorded is not None and at > self.read_through:
            self._ahead.add(at)
            self._read(self.read_through)
        if key in self._held_of:
            self._settle(key)

    def _put(self, invoice_id: str, sequence: int, new: Callable[[InvoiceState], InvoiceState], at: int) -> None:
        self.sequence = max(self.sequence, sequence)
        before = self.states.get(invoice_id)
        if before is not None and before.sequence >= sequence:
            return  # folded already
        after = new(before or InvoiceState())
        if after.submitted is None:
            return  # nothing is folded before the submission
        self.states[invoice_id] = after
        self.first_sequence.setdefault(invoice_id, at)
        if before is not None:
            self._index(invoice_id, before, present=False)
        self._index(invoice_id, after, present=True)

    def _index(self, invoice_id: str, state: InvoiceState, *, present: bool) -> None:
        assert state.submitted is not None
        invoice = state.submitted.invoice
        if state.status in COUNTED:
            if not _blocked_as_duplicate(state):  # a resent invoice bills nothing a second time
                for key, quantity in _signed_quantities(invoice).items():
                    _place(self._on_line, key, invoice_id, quantity if present else None)
            number = number_key(invoice)
            if number is not None:
                _mark(self._by_number, number, invoice_id, present)
            amount = amount_key(invoice)
            dated = self._by_amount.setdefault(amount, {})
            _mark(dated, invoice.invoice_date, invoice_id, present)
            if not dated:
                del self._by_amount[amount]
        if state.status in REMATCHABLE:
            for po_id in {line.po_id for line in invoice.lines}:
                _mark(self._waiting, po_id, invoice_id, present)
        if state.status is InvoiceStatus.BLOCKED:
            if present:
                self._blocked.add(invoice_id)
            else:
                self._blocked.discard(invoice_id)

    def _read_one(self, stored: StoredEvent) -> None:
        """The delivered event is folded (or covered by a state folded already)."""
        self._read_through(stored.sequence)
        self._on_read(stored)

    def _read_through(self, sequence: int) -> None:
        """The delivered event at ``sequence`` is folded: every one delivered is (they come in order, gaps included:
        an event that could not be read is skipped, as a purged one is missing, :meth:`passed`) but those held."""
        self._delivered = max(self._delivered, sequence)
        self._read(min(self._held) - 1 if self._held else self._delivered)

    def _read(self, sequence: int) -> None:
        """Every event up to ``sequence`` is folded; events folded ahead extend that."""
        position = max(self.read_through, sequence)
        while position + 1 in self._ahead:
            position += 1
        if self._ahead:
            self._ahead = {ahead for ahead in self._ahead if ahead > position}
        if position != self.read_through:
            self.read_through = position
            self._moved.set()
            self._moved = asyncio.Event()

    async def read_up_to(self, sequence: int) -> None:
        """Wait until every event up to ``sequence`` is folded (the caller bounds the wait); the events this process
        did not append are read meanwhile (:meth:`lacking`)."""
        self._wanted = max(self._wanted, sequence)
        while self.read_through < sequence:
            await self._moved.wait()

    @property
    def appends_under_way(self) -> bool:
        return bool(self._appending)

    @property
    def delivered_through(self) -> int:
        """Every event up to this sequence was delivered to :meth:`follow` (folded or held) or folded ahead."""
        return max(self.read_through, self._delivered)

    def lacking(self, most: int) -> list[int]:
        """Up to ``most`` sequences after ``read_through``, oldest first, that the stream holds (below one folded,
        delivered or waited for), neither delivered (deliveries come in order, so not below the newest delivered) nor
        held nor folded ahead by an append of this process."""
        newest = max(self.sequence, self._delivered, self._wanted)
        found: list[int] = []
        sequence = self.delivered_through
        while sequence < newest and len(found) < most:
            sequence += 1
            if sequence not in self._ahead and sequence not in self._held:
                found.append(sequence)
        return found

    def passed(self, sequence: int) -> None:
        """The stream holds nothing at ``sequence`` (a gap): read past it."""
        self._read_through(sequence)

    # -- reading ---------------------------------------------------------------------------------------------

    def state_of(self, invoice_id: str) -> InvoiceState:
        return self.states.get(invoice_id) or InvoiceState()

    def _counts_for(self, invoice_id: str) -> Callable[[str], bool]:
        """Which other invoices count for ``invoice_id``: every one if it is not recorded yet (a submission), else
        those recorded before it — and, whenever recorded, the credit notes that credit it (a credit note is how an
        over-invoiced document is mended, so it must clear that document's block)."""
        before = self.first_sequence.get(invoice_id)
        if before is None:
            return lambda other: other != invoice_id
        first = self.first_sequence
        return lambda other: other != invoice_id and (first[other] < before or self._credits(other) == invoice_id)

    def _credits(self, other: str) -> str:
        """The invoice a credit note credits; "" for an invoice."""
        submitted = self.states[other].submitted
        return submitted.invoice.credited_invoice_id if submitted is not None else ""

    def invoiced_by_others(self, lines: Iterable[LineKey], invoice_id: str) -> dict[LineKey, Decimal]:
        """Quantities invoiced on these PO lines by the other invoices not cancelled that count for ``invoice_id``
        (credit notes subtract)."""
        counts = self._counts_for(invoice_id)
        totals: dict[LineKey, Decimal] = {}
        for key in set(lines):
            on_line = [quantity for other, quantity in self._on_line.get(key, {}).items() if counts(other)]
            if on_line:
                totals[key] = functools.reduce(EXACT.add, on_line, ZERO)
        return totals

    def duplicate_candidates(self, invoice: Invoice) -> list[Invoice]:
        """The other invoices not cancelled that count for ``invoice`` and are filed where it could find a duplicate
        (:meth:`_filed_with`: its supplier's invoices of the same number, or of the same amount dated within the
        suspicion window), in the order they were recorded: all duplicate
        detection can find, so a supplier with ten thousand invoices costs a match a few dictionary lookups."""
        counts = self._counts_for(invoice.invoice_id)
        found = {other for filed in self._filed_with(invoice) for other in filed if counts(other)}
        return [self._invoice(other) for _, other in sorted((self.first_sequence[other], other) for other in found)]

    def waiting_on(self, po_id: str) -> list[str]:
        """The invoices with a line on this PO that a re-match may change, oldest submission first."""
        return self._oldest_first(self._waiting.get(po_id, ()))

    def blocked(self) -> list[tuple[str, InvoiceState]]:
        """Blocked invoices, oldest submission first."""
        return [(invoice_id, self.states[invoice_id]) for invoice_id in self._oldest_first(self._blocked)]

    def missed(self, invoice_id: str) -> bool:
        """Whether the match in force of ``invoice_id`` (a re-matchable one) may have been computed without an
        invoice that counts for it: one recorded before it, on one of its PO lines or of its supplier, that the
        stream had not been read up to when the match read the ledger (its facts' ``invoice_sequence``).
        Complete once ``read_through`` reached the invoice's submission."""
        state = self.states.get(invoice_id)
        first = self.first_sequence.get(invoice_id)
        if state is None or state.submitted is None or first is None or state.status not in REMATCHABLE:
            return False
        seen = state.facts.invoice_sequence
        invoice = state.submitted.invoice

        def unseen(others: Iterable[str]) -> bool:
            return any(seen < self.first_sequence[other] < first for other in others)

        return any(unseen(self._on_line.get(line.key, ())) for line in invoice.lines) or any(
            unseen(filed) for filed in self._filed_with(invoice)
        )

    def _filed_with(self, invoice: Invoice) -> Iterator[set[str]]:
        """The invoices filed where ``invoice`` could find a duplicate: of its number, and of its amount dated within
        the suspicion window."""
        number = number_key(invoice)
        if number is not None and number in self._by_number:
            yield self._by_number[number]
        dated = self._by_amount.get(amount_key(invoice))
        if not dated:
            return
        first, last = suspicion_window(invoice.invoice_date)
        days = (last - first).days + 1
        if len(dated) <= days:
            yield from (filed for day, filed in dated.items() if first <= day <= last)
        else:  # an amount invoiced on many dates: only the window's are looked at
            yield from (dated[day] for day in (first + timedelta(days=n) for n in range(days)) if day in dated)

    def _oldest_first(self, invoice_ids: Iterable[str]) -> list[str]:
        return sorted(invoice_ids, key=lambda invoice_id: (self.first_sequence[invoice_id], invoice_id))

    def _invoice(self, invoice_id: str) -> Invoice:
        submitted = self.states[invoice_id].submitted
        assert submitted is not None
        return submitted.invoice


def _blocked_as_duplicate(state: InvoiceState) -> bool:
    """Blocked (not released) as a duplicate of an earlier invoice: its quantities are the earlier one's, counted
    there; counting them again would block every later invoice of those PO lines for quantity."""
    return (
        state.status is InvoiceStatus.BLOCKED
        and state.match is not None
        and Reason.DUPLICATE_INVOICE in state.match.reasons
    )


def _signed_quantities(invoice: Invoice) -> dict[LineKey, Decimal]:
    """The quantity ``invoice`` invoices per PO line (a credit note's negative)."""
    quantities: dict[LineKey, Decimal] = {}
    for line in invoice.lines:
        quantity = line.quantity.copy_negate() if invoice.credit_note else line.quantity
        quantities[line.key] = EXACT.add(quantities.get(line.key, ZERO), quantity)
    return quantities


def _place(index: dict[LineKey, dict[str, Decimal]], key: LineKey, invoice_id: str, value: Decimal | None) -> None:
    if value is not None:
        index.setdefault(key, {})[invoice_id] = value
        return
    bucket = index.get(key)
    if bucket is not None:
        bucket.pop(invoice_id, None)
        if not bucket:
            del index[key]


def _mark(index: dict[K, set[str]], key: K, invoice_id: str, present: bool) -> None:
    if present:
        index.setdefault(key, set()).add(invoice_id)
        return
    bucket = index.get(key)
    if bucket is not None:
        bucket.discard(invoice_id)
        if not bucket:
            del index[key]


# --- The match against the facts current now ---------------------------------------------------------------


class Matcher:
    """Reads the facts an invoice's lines need and runs the (pure) three-way match on them."""

    def __init__(self, reader: EventReader, orders: OrderLines, receipts: ReceivedLines, ledger: InvoiceLedger) -> None:
        self._reader = reader
        self._orders = orders
        self._receipts = receipts
        self._ledger = ledger

    async def match(
        self, invoice: Invoice, tolerances: TolerancePolicy, policy_revision: int = 0
    ) -> tuple[MatchResult, FactVersions]:
        """The match of ``invoice`` now, and the versions of the facts it read (``policy_revision``: the revision
        whose ``tolerances`` these are)."""
        po_lines: dict[LineKey, PoLineFacts] = {}
        received: dict[LineKey, ReceivedFacts] = {}
        versions: list[tuple[str, int]] = []
        receipt_sequence = 0
        invoice_sequence = self._ledger.read_through  # read first: every invoice up to it is counted below
        po_ids = sorted({line.po_id for line in invoice.lines})
        for start in range(0, len(po_ids), ORDERS_READ_AT_ONCE):
            some = po_ids[start : start + ORDERS_READ_AT_ONCE]
            # Each order's newest PO event and newest receipt event, asked of the broker together.
            newest = await self._reader.last_of_each(
                [(PO_DOMAIN, po_id) for po_id in some] + [(RECEIPT_DOMAIN, po_id) for po_id in some]
            )
            for po_id, newest_order, newest_receipt in zip(some, newest[: len(some)], newest[len(some) :], strict=True):
                order = await self._orders.current_given(po_id, newest_order)
                if order is not None:
                    versions.append((po_id, order.version))
                    po_lines.update(((po_id, number), line) for number, line in order.lines.items())
                receipts = await self._receipts.given(
                    po_id, newest_receipt, (line.po_line_number for line in invoice.lines if line.po_id == po_id)
                )
                receipt_sequence = max(receipt_sequence, receipts.sequence)
                received.update(((po_id, number), figures) for number, figures in receipts.lines.items())
        others = self._ledger.invoiced_by_others((line.key for line in invoice.lines), invoice.invoice_id)
        result = matching.match_invoice(
            invoice,
            MatchFacts(po_lines, received, others),
            tolerances,
            earlier=self._ledger.duplicate_candidates(invoice),
        )
        return result, FactVersions(tuple(versions), receipt_sequence, invoice_sequence, policy_revision)
