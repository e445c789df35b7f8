"""The in-memory projections the match reads: other invoices (the ledger) and suppliers' states. No sockets."""

from __future__ import annotations

from decimal import Decimal

from libs.runtime.decider import Recorded
from services.invoice_status import matching
from services.invoice_status.decider import Cancelled, FactVersions, InvoiceEvent, InvoiceSubmitted
from services.invoice_status.domain import Invoice
from services.invoice_status.facts import InvoiceLedger, SupplierStates
from tests.unit.invoice_status.builders import POLICY, facts, invoice, line

D = Decimal


def submitted(sequence: int, submitted_invoice: Invoice, received: str = "100") -> Recorded[InvoiceEvent]:
    match = matching.match_invoice(submitted_invoice, facts(received={("PO-1", 1): received}), POLICY)
    event = InvoiceSubmitted(submitted_invoice, f"fp-{sequence}", f"key-{sequence}", match, FactVersions())
    return Recorded(event, sequence, f"e{sequence}", sequence, f"key-{sequence}", "procurement")


def cancelled(sequence: int) -> Recorded[InvoiceEvent]:
    return Recorded(Cancelled("wrong supplier"), sequence, f"e{sequence}", sequence, "", "procurement")


def test_other_invoices_count_credit_notes_subtract_and_cancelled_ones_do_not():
    ledger = InvoiceLedger()
    ledger.fold("I-1", submitted(1, invoice(line(quantity="10"), invoice_id="I-1", number="A-1")))
    ledger.fold("I-2", submitted(2, invoice(line(quantity="5"), invoice_id="I-2", number="A-2")))
    ledger.fold(
        "C-1",
        submitted(3, invoice(line(quantity="3"), invoice_id="C-1", number="CN-1", credit_note=True, credits="I-1")),
    )
    ledger.fold("I-3", submitted(4, invoice(line(quantity="7"), invoice_id="I-3", number="A-3")))
    ledger.fold("I-3", cancelled(5))
    assert ledger.invoiced_by_others([("PO-1", 1)], "I-4") == {("PO-1", 1): D(12)}
    assert ledger.invoiced_by_others([("PO-1", 1)], "I-1") == {}  # recorded first: nothing counts before it
    assert ledger.invoiced_by_others([("PO-1", 1)], "C-1") == {("PO-1", 1): D(15)}
    assert ledger.invoiced_by_others([("PO-1", 2)], "I-4") == {}
    assert ledger.sequence == 5


def test_earlier_invoices_are_the_suppliers_own_and_not_the_invoice_itself():
    ledger = InvoiceLedger()
    ledger.fold("I-1", submitted(1, invoice(invoice_id="I-1", number="INV-00123")))
    ledger.fold("I-2", submitted(2, invoice(invoice_id="I-2", supplier="SUP-2", number="INV-00123")))
    assert [i.invoice_id for i in ledger.earlier_of("SUP-1", "I-9")] == ["I-1"]
    assert ledger.earlier_of("SUP-1", "I-1") == []
    candidate = invoice(invoice_id="I-9", number="inv 123")
    match = matching.match_invoice(candidate, facts(), POLICY, earlier=ledger.earlier_of("SUP-1", "I-9"))
    assert [duplicate.invoice_id for duplicate in match.duplicates] == ["I-1"]


def test_an_event_folded_twice_is_folded_once_and_blocked_invoices_list_oldest_first():
    ledger = InvoiceLedger()
    awaiting = submitted(2, invoice(invoice_id="I-2", number="B-2"), received="0")
    ledger.fold("I-2", awaiting)
    ledger.fold("I-1", submitted(3, invoice(invoice_id="I-1", number="B-1"), received="0"))
    ledger.fold("I-2", awaiting)
    ledger.fold("I-3", submitted(4, invoice(invoice_id="I-3", number="B-3")))  # matched
    assert [key for key, _ in ledger.blocked()] == ["I-2", "I-1"]
    ledger.fold("I-2", cancelled(5))
    assert [key for key, _ in ledger.blocked()] == ["I-1"]


async def test_the_handlers_state_after_an_append_counts_at_once():
    ledger = InvoiceLedger()
    event = submitted(7, invoice(invoice_id="I-1"))
    state = InvoiceLedger()
    state.fold("I-1", event)
    await ledger.applied("I-1", state.states["I-1"], 7, event)
    assert ledger.invoiced_by_others([("PO-1", 1)], "I-2") == {("PO-1", 1): D(10)}
    ledger.fold("I-1", event)  # the follower delivering the same event later changes nothing
    assert ledger.states["I-1"] == state.states["I-1"]


def test_unknown_blocked_and_merged_suppliers_are_refused():
    suppliers = SupplierStates(status={"SUP-1": "active", "SUP-2": "blocked", "SUP-3": "merged"})
    suppliers.merged_into["SUP-3"] = "SUP-1"
    assert suppliers.problem("SUP-1") is None
    assert suppliers.problem("SUP-9")[0] == "unknown"  # type: ignore[index]
    assert suppliers.problem("SUP-2")[0] == "not_active"  # type: ignore[index]
    assert "SUP-1" in suppliers.problem("SUP-3")[1]  # type: ignore[index]


def test_an_invoice_recorded_counts_only_the_invoices_recorded_before_it():
    ledger = InvoiceLedger()
    ledger.fold("I-1", submitted(1, invoice(line(quantity="4"), invoice_id="I-1", number="INV-00123")))
    ledger.fold("I-2", submitted(2, invoice(line(quantity="4"), invoice_id="I-2", number="inv 123")))
    # Re-matching I-1 never counts I-2's quantity nor takes I-2 for the earlier duplicate.
    assert ledger.invoiced_by_others([("PO-1", 1)], "I-1") == {}
    assert ledger.earlier_of("SUP-1", "I-1") == []
    assert ledger.invoiced_by_others([("PO-1", 1)], "I-2") == {("PO-1", 1): D(4)}
    assert [i.invoice_id for i in ledger.earlier_of("SUP-1", "I-2")] == ["I-1"]
    assert ledger.waiting_on("PO-1") == ["I-1", "I-2"]
    ledger.fold("I-1", cancelled(3))
    assert ledger.waiting_on("PO-1") == ["I-2"]
