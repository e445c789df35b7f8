"""Receiving rules at their edges (found in review): units counted before the order was known, documents that
receive nothing, the work a return costs, the memory the order book holds. Pure: no sockets."""

from __future__ import annotations

import time
import tracemalloc
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from libs.runtime.decider import Recorded
from services.receipt_reconciliation import domain, mapping, orders
from services.receipt_reconciliation.domain import Kind, OrderLine, OrderView, ReceiptLine
from services.receipt_reconciliation.orders import DEFAULT_CACHE_BYTES, view_of

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def factor(source: str, target: str) -> Decimal | None:
    if source == target:
        return Decimal(1)
    return {("CS", "EA"): Decimal(12)}.get((source, target))


RULES = domain.Rules(over_receipt_percent=lambda _unit: Decimal(5), unit_factor=factor)


def view(lines: dict[int, tuple[str, str]], version: int = 1) -> OrderView:
    return OrderView(
        "PO-1", version, False, "", {n: OrderLine(Decimal(q), u) for n, (q, u) in lines.items()}, sequence=version
    )


def receipt(receipt_id: str, *lines: ReceiptLine, kind: Kind = Kind.RECEIPT, reverses: str = "") -> domain.Receipt:
    return domain.Receipt(receipt_id, "erp", "PO-1", 1, "DC-HAMBURG", kind, NOW, lines, reverses)


def post(state: domain.ReceivingState, document: domain.Receipt, order: OrderView | None, sequence: int):
    event = domain.decide(
        domain.PostReceipt(document, f"doc:{document.receipt_id}", f"fp:{document.receipt_id}", "key"),
        state,
        order,
        RULES,
    )
    assert isinstance(event, domain.Reconciled), event
    return domain.evolve(state, Recorded(event, sequence, "id", 0, "key", "erp")), event


# --- figures counted before the order was known ------------------------------------------------------------


def test_status_converts_figures_counted_before_the_order_was_known_into_the_order_lines_unit():
    """docs/decisions.md: "Figures counted in a document's own unit before the order was known are converted
    once the order is". 2 CS arrived before PO-1 was published; the order then asks 24 EA of line 1. The
    receiving status (GetPurchaseOrderReceiptStatus, and the fully-received flag po-publication's FULLY_RECEIVED
    relies on) must say 24 EA received, 0 open — not "2 CS received, 22 open" (2 compared with 24 as numbers)."""
    state, _ = post(domain.INITIAL, receipt("GR-1", ReceiptLine(1, 1, Decimal(2), "CS")), None, 1)
    order = view({1: ("24", "EA")})
    [status] = domain.status_of(state, order, factor)
    assert (status.figures.received, status.figures.unit) == (Decimal(24), "EA"), status
    assert status.open == 0
    assert status.fully_received
    response = mapping.status_response(state, order, factor)
    assert response.fully_received


# --- over-receipt findings -----------------------------------------------------------------------------------


def test_a_document_that_receives_nothing_on_a_line_raises_no_over_receipt_for_it():
    """A line that was over-received by an earlier document; a later document only *rejects* goods on it
    (quantity 0, rejected 3, not received). It received nothing, yet it is charged with an over_receipt finding
    (and an exception) for the earlier document's quantity."""
    order = view({1: ("10", "EA")})
    state, first = post(domain.INITIAL, receipt("GR-1", ReceiptLine(1, 1, Decimal(12), "EA")), order, 1)
    assert [f.type for f in first.findings] == [domain.OVER_RECEIPT]
    rejecting = receipt("GR-2", ReceiptLine(1, 1, Decimal(0), "EA", rejected=Decimal(3), reject_reason="damaged"))
    _, second = post(state, rejecting, order, 2)
    assert second.findings == (), second.findings


# --- work per posting ----------------------------------------------------------------------------------------


class _Counted(tuple):
    """A tuple that counts how many items are visited through it."""

    visits = 0

    def __iter__(self):
        for item in tuple.__iter__(self):
            _Counted.visits += 1
            yield item


def test_a_return_costs_work_linear_in_its_lines_not_quadratic():
    """A return of N lines against a receipt of N lines: ``_reconcile`` sums the receipt's quantities once per
    returned line (``taken``) and ``returned_against`` walks every earlier return's quantities once per line, so
    one return costs N^2 and the k-th return k * N^2 on the one event loop. Measured with N = 5,000 (the
    document bound): 0.55 s for the first return, +0.23 s for each further one — the 100th return of an order
    blocks every RPC of the service for ~25 s."""
    n = 2_000
    order = view({number: ("100", "EA") for number in range(1, n + 1)})
    lines = tuple(ReceiptLine(number, number, Decimal(10), "EA") for number in range(1, n + 1))
    state, first = post(domain.INITIAL, receipt("GR-1", *lines), order, 1)
    counted = replace(first, quantities=_Counted(first.quantities))
    state = domain.INITIAL
    state = domain.evolve(state, Recorded(counted, 1, "id", 0, "key", "erp"))
    _Counted.visits = 0
    started = time.perf_counter()
    post(state, receipt("RT-1", *lines, kind=Kind.RETURN, reverses="GR-1"), order, 2)
    elapsed = time.perf_counter() - started
    assert _Counted.visits <= 10 * n, f"{_Counted.visits:,} quantity visits for a {n}-line return ({elapsed:.2f} s)"


# --- memory ----------------------------------------------------------------------------------------------------


def _limit_bytes() -> int:
    manifest = Path(__file__).parents[3] / "deploy/k8s/base/receipt-reconciliation.yaml"
    text = manifest.read_text()
    limits = text[text.index("limits:") :]
    value = limits[limits.index("memory:") + len("memory:") :].split()[0]
    assert value.endswith("Mi"), value
    return int(value[:-2]) * 1024 * 1024


def test_the_order_book_is_bounded_by_an_estimate_of_its_bytes_that_errs_high():
    """Orders of 50 lines at 50,000 would take more than the container (512 MiB) if the book were bounded by
    count: it is bounded by estimated bytes, and the estimate must not be below what a view really holds."""
    from libs.runtime.events import Event, build_envelope, now_timestamp, parse_stored
    from syncgov.po.v1 import events_pb2
    from tests.integration.helpers import sample_order

    template = sample_order("PO-0")
    del template.lines[:]
    for number in range(1, 51):
        template.lines.add(line_number=number, item_id=f"ITEM-{number}", unit_of_measure="ea").quantity.value = "12"

    def stored(po_id: str, sequence: int):
        order = template.__class__()
        order.CopyFrom(template)
        order.po_id = po_id
        payload = events_pb2.PurchaseOrderPublished(purchase_order=order)
        event = Event("po", "purchase_order", po_id, 1, "published", payload, f"k-{po_id}", "procurement")
        data = build_envelope(event, now_timestamp()).SerializeToString()
        return parse_stored("T_PO", sequence, f"t.po.{po_id}.published", {}, data)

    events = [stored(f"PO-{n}", n) for n in range(500)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    found = [view_of(event) for event in events]
    per_order = (tracemalloc.get_traced_memory()[0] - before) / len(found)
    tracemalloc.stop()
    kept = [view for view in found if view is not None]
    assert len(kept) == len(found)
    assert orders.size_of(kept[0]) >= per_order
    assert _limit_bytes() > DEFAULT_CACHE_BYTES + 192 * 1024 * 1024

    book = orders.OrderBook(reader=None, capacity_bytes=10 * orders.size_of(kept[0]))  # type: ignore[arg-type]
    for view in kept[:25]:
        book.remember(view.po_id, view, view.sequence)
    assert len(book) == 10
    assert book.bytes <= 10 * orders.size_of(kept[0])
