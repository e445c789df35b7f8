"""The in-memory projections the match reads: other invoices (the ledger) and suppliers' states. No sockets."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal

import pytest
from google.protobuf import timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.runtime.decider import Recorded
from libs.runtime.events import StoredEvent, build_envelope, parse_stored
from services.invoice_status import events, matching
from services.invoice_status.decider import (
    REMATCHABLE,
    ApprovedForPayment,
    Cancelled,
    FactVersions,
    InvoiceEvent,
    InvoiceState,
    InvoiceStatus,
    InvoiceSubmitted,
    evolve,
)
from services.invoice_status.domain import Invoice, Reason
from services.invoice_status.duplicates import find_duplicates
from services.invoice_status.facts import InvoiceLedger, SupplierStates
from tests.unit.invoice_status.builders import DAY, POLICY, facts, invoice, line

D = Decimal


def submitted(sequence: int, submitted_invoice: Invoice, received: str = "100") -> Recorded[InvoiceEvent]:
    match = matching.match_invoice(submitted_invoice, facts(received={("PO-1", 1): received}), POLICY)
    event = InvoiceSubmitted(submitted_invoice, f"fp-{sequence}", f"key-{sequence}", match, FactVersions())
    return Recorded(event, sequence, f"e{sequence}", sequence, f"key-{sequence}", "procurement")


def cancelled(sequence: int) -> Recorded[InvoiceEvent]:
    return Recorded(Cancelled("wrong supplier"), sequence, f"e{sequence}", sequence, "", "procurement")


async def applied_here(ledger: InvoiceLedger, invoice_id: str, event: Recorded[InvoiceEvent]) -> InvoiceState:
    """An append of this process: the command handler's state after it (the event folded), applied to the ledger."""
    state = InvoiceLedger()
    state.fold(invoice_id, event)
    await ledger.applied(invoice_id, state.states[invoice_id], event.sequence, event)
    return state.states[invoice_id]


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
    # I-1 was recorded first: only the credit note crediting it counts for it, recorded later or not.
    assert ledger.invoiced_by_others([("PO-1", 1)], "I-1") == {("PO-1", 1): D(-3)}
    assert ledger.invoiced_by_others([("PO-1", 1)], "C-1") == {("PO-1", 1): D(15)}
    assert ledger.invoiced_by_others([("PO-1", 2)], "I-4") == {}
    assert ledger.sequence == 5


def ids(invoices: list[Invoice]) -> list[str]:
    return [found.invoice_id for found in invoices]


def _recorded(*invoices: Invoice) -> InvoiceLedger:
    ledger = InvoiceLedger()
    for sequence, recorded_invoice in enumerate(invoices, start=1):
        ledger.fold(recorded_invoice.invoice_id, submitted(sequence, recorded_invoice))
    return ledger


def test_duplicate_candidates_are_every_invoice_the_later_one_can_duplicate_and_only_those():
    later = invoice(line(), invoice_id="I-9", number="INV-123")
    reachable = [
        invoice(line(), invoice_id="N", number="inv 123", day=DAY - timedelta(days=400)),  # same number, long ago
        invoice(line(), invoice_id="W", number="X-1", day=DAY + timedelta(days=7)),  # same amount, window's edge
        invoice(line(), invoice_id="E", number="X-4", day=DAY - timedelta(days=7)),  # the other edge
    ]
    unreachable = [
        invoice(line(), invoice_id="F", number="X-2", day=DAY - timedelta(days=8)),  # same amount, too far apart
        invoice(line(quantity="3"), invoice_id="A", number="X-3"),  # another amount
        invoice(line(), invoice_id="S", number="inv 123", supplier="SUP-2"),  # another supplier
    ]
    ledger = _recorded(*reachable, *unreachable)
    assert ids(ledger.duplicate_candidates(later)) == ["N", "W", "E"]
    every = reachable + unreachable
    assert find_duplicates(later, every) == find_duplicates(later, ledger.duplicate_candidates(later))


def test_an_amount_invoiced_on_many_dates_yields_only_the_windows_and_the_calendars_ends_hold():
    """More dates of one amount than the window has days: the window's dates are looked up one by one."""
    daily = [
        invoice(line(), invoice_id=f"D{n:02}", number=f"M-{n}", day=DAY + timedelta(days=n)) for n in range(-20, 21)
    ]
    ledger = _recorded(*daily)
    assert ids(ledger.duplicate_candidates(invoice(line(), invoice_id="I-9", number="B-1"))) == [
        f"D{n:02}" for n in range(-7, 8)
    ]
    for day, inward in ((date.min, 1), (date.max, -1)):  # twenty dates from the calendar's end inwards
        edge = _recorded(
            *(
                invoice(line(), invoice_id=f"E{n:02}", number=f"M-{n}", day=day + inward * timedelta(days=n))
                for n in range(20)
            )
        )
        found = edge.duplicate_candidates(invoice(line(), invoice_id="I-9", number="B-1", day=day))
        assert ids(found) == [f"E{n:02}" for n in range(8)]


def test_duplicate_candidates_are_the_suppliers_own_of_the_same_number_or_amount_and_not_the_invoice_itself():
    ledger = InvoiceLedger()
    ledger.fold("I-1", submitted(1, invoice(invoice_id="I-1", number="INV-00123")))
    ledger.fold("I-2", submitted(2, invoice(invoice_id="I-2", supplier="SUP-2", number="INV-00123")))
    ledger.fold("I-3", submitted(3, invoice(line(quantity="3"), invoice_id="I-3", number="B-7")))  # another amount
    candidate = invoice(invoice_id="I-9", number="inv 123")
    assert ids(ledger.duplicate_candidates(candidate)) == ["I-1"]
    assert ledger.duplicate_candidates(invoice(invoice_id="I-1", number="INV-00123")) == []
    same_amount = invoice(invoice_id="I-9", number="C-9")  # I-1's amount, another number: a suspicion to check
    assert ids(ledger.duplicate_candidates(same_amount)) == ["I-1"]
    assert ids(ledger.duplicate_candidates(invoice(line(quantity="3"), invoice_id="I-9", number="b 7"))) == ["I-3"]
    match = matching.match_invoice(candidate, facts(), POLICY, earlier=ledger.duplicate_candidates(candidate))
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
    applied = await applied_here(ledger, "I-1", event)
    assert ledger.invoiced_by_others([("PO-1", 1)], "I-2") == {("PO-1", 1): D(10)}
    ledger.fold("I-1", event)  # the follower delivering the same event later changes nothing
    assert ledger.states["I-1"] == applied


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
    assert ledger.duplicate_candidates(ledger.states["I-1"].submitted.invoice) == []  # type: ignore[union-attr]
    assert ledger.invoiced_by_others([("PO-1", 1)], "I-2") == {("PO-1", 1): D(4)}
    assert ids(ledger.duplicate_candidates(ledger.states["I-2"].submitted.invoice)) == ["I-1"]  # type: ignore[union-attr]
    assert ledger.waiting_on("PO-1") == ["I-1", "I-2"]
    ledger.fold("I-1", cancelled(3))
    assert ledger.waiting_on("PO-1") == ["I-2"]


# --- The ledger's indexes -------------------------------------------------------------------------------------


def test_cumulative_quantity_per_po_line_counts_a_credit_note_negative_and_drops_a_cancelled_invoice():
    ledger = InvoiceLedger()
    two_lines = invoice(line(1, quantity="6"), line(2, quantity="1.5"), invoice_id="I-1", number="A-1")  # one PO line
    ledger.fold("I-1", submitted(1, two_lines))
    ledger.fold("I-2", submitted(2, invoice(line(po_line=2, quantity="9"), invoice_id="I-2", number="A-2")))
    credit = invoice(line(quantity="2.25"), invoice_id="C-1", number="CN-1", credit_note=True, credits="I-1")
    ledger.fold("C-1", submitted(3, credit))
    ledger.fold("I-3", submitted(4, invoice(line(po="PO-2", quantity="4"), invoice_id="I-3", number="A-3")))
    wanted = [("PO-1", 1), ("PO-1", 2), ("PO-2", 1)]
    assert ledger.invoiced_by_others(wanted, "I-9") == {("PO-1", 1): D("5.25"), ("PO-1", 2): D(9), ("PO-2", 1): D(4)}
    ledger.fold("C-1", cancelled(5))  # the credit note no longer reduces what was invoiced
    assert ledger.invoiced_by_others(wanted, "I-9")[("PO-1", 1)] == D("7.5")
    ledger.fold("I-1", cancelled(6))
    assert ledger.invoiced_by_others(wanted, "I-9") == {("PO-1", 2): D(9), ("PO-2", 1): D(4)}
    assert ids(ledger.duplicate_candidates(invoice(line(quantity="6"), invoice_id="I-9", number="a 1"))) == []
    assert ids(ledger.duplicate_candidates(invoice(invoice_id="I-9", number="a 2"))) == ["I-2"]


async def test_only_invoices_recorded_before_count_whatever_order_the_ledger_learnt_them_in():
    ledger = InvoiceLedger()
    late = submitted(9, invoice(line(quantity="4"), invoice_id="I-9", number="X-9"))
    state = InvoiceLedger()
    state.fold("I-9", late)
    # This process appended I-9 (sequence 9) before its follower delivered I-5 (sequence 5, another replica's).
    early = submitted(5, invoice(line(quantity="3"), invoice_id="I-5", number="X-5"))
    await ledger.applied("I-9", state.states["I-9"], 9, late)
    ledger.fold("I-5", early)
    assert ledger.invoiced_by_others([("PO-1", 1)], "I-9") == {("PO-1", 1): D(3)}
    assert ledger.invoiced_by_others([("PO-1", 1)], "I-5") == {}
    assert ids(ledger.duplicate_candidates(invoice(invoice_id="I-9", number="x 5"))) == ["I-5"]
    assert ledger.duplicate_candidates(invoice(invoice_id="I-5", number="x 9")) == []
    assert ledger.waiting_on("PO-1") == ["I-5", "I-9"]


async def test_the_stream_is_read_through_only_where_every_event_is_folded():
    ledger = InvoiceLedger()
    ledger.fold("I-1", submitted(1, invoice(invoice_id="I-1", number="A-1")))
    await applied_here(ledger, "I-3", submitted(3, invoice(invoice_id="I-3", number="A-3")))
    assert (ledger.read_through, ledger.sequence) == (1, 3)  # sequence 2 is not folded yet
    ledger.fold("I-2", submitted(2, invoice(invoice_id="I-2", number="A-2")))
    assert ledger.read_through == 3  # the append folded ahead joins once the gap is filled


async def test_an_event_of_an_invoice_not_read_yet_waits_for_the_follower():
    ledger = InvoiceLedger()
    elsewhere = InvoiceLedger()
    elsewhere.fold("I-1", submitted(4, invoice(invoice_id="I-1")))
    elsewhere.fold("I-1", cancelled(6))
    # A command on another replica's invoice: the submission's sequence (its place in the order) is unknown here.
    await ledger.applied("I-1", elsewhere.states["I-1"], 6, cancelled(6))
    assert ledger.states == {}
    assert ledger.read_through == 0
    ledger.fold("I-1", submitted(4, invoice(invoice_id="I-1")))
    assert ledger.first_sequence == {"I-1": 4}


async def test_waiting_for_the_stream_to_be_read_up_to_a_sequence():
    ledger = InvoiceLedger()
    waiting = asyncio.ensure_future(ledger.read_up_to(2))
    ledger.fold("I-1", submitted(1, invoice(invoice_id="I-1", number="A-1")))
    await asyncio.sleep(0)
    assert not waiting.done()
    ledger.fold("I-2", submitted(2, invoice(invoice_id="I-2", number="A-2")))
    await asyncio.wait_for(waiting, 1)


def _stored(recorded_event: Recorded[InvoiceEvent], invoice_id: str) -> StoredEvent:
    """The event as the follower delivers it: through a real envelope, at the recorded sequence."""
    event = events.encode(invoice_id, recorded_event.event, workflow_key="PO-1")
    envelope = build_envelope(event, timestamp_pb2.Timestamp(seconds=recorded_event.sequence))
    return parse_stored(
        "SG_INVOICE", recorded_event.sequence, f"sg.invoice.{invoice_id}.{event.name}", {}, envelope.SerializeToString()
    )


class _Decodes:
    """Counts the follower's decodes (the work a held event is spared)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        decode = events.decode

        def counting(stored: StoredEvent) -> InvoiceEvent | None:
            self.count += 1
            return decode(stored)

        monkeypatch.setattr(events, "decode", counting)  # the ledger reads it from the module at each call


async def test_the_followers_delivery_of_an_append_not_yet_acknowledged_waits_for_its_state_undecoded(monkeypatch):
    decodes = _Decodes(monkeypatch)
    read: list[int] = []
    ledger = InvoiceLedger(lambda stored: read.append(stored.sequence))
    ledger.fold("I-1", submitted(1, invoice(invoice_id="I-1", number="A-1")))
    appended = submitted(2, invoice(invoice_id="I-2", number="A-2"))
    with ledger.appending("I-2", 0):
        ledger.follow(_stored(appended, "I-2"))  # overtakes the acknowledgment: held
        ledger.follow(_stored(submitted(3, invoice(invoice_id="I-3", number="A-3")), "I-3"))  # another replica's
        assert "I-2" not in ledger.states
        assert "I-3" in ledger.states
        assert ledger.read_through == 1  # not past the held event, though the one after it is folded
        assert read == [3]
    applied = await applied_here(ledger, "I-2", appended)  # the command handler, right after the append
    assert ledger.states["I-2"] == applied
    assert ledger.read_through == 3
    assert read == [3, 2]
    assert decodes.count == 1  # I-3 only: the held event was covered by the append's own state
    await asyncio.sleep(0)  # the append's end, one loop turn later, finds nothing left to decode
    assert decodes.count == 1


async def test_an_event_held_during_a_failed_append_is_decoded_when_the_append_ends(monkeypatch):
    decodes = _Decodes(monkeypatch)
    ledger = InvoiceLedger()
    stored = _stored(submitted(1, invoice(invoice_id="I-1", number="A-1")), "I-1")
    seen_while_appending: list[tuple[int, int]] = []

    def append_that_times_out() -> None:
        with ledger.appending("I-1", 0):
            ledger.follow(stored)  # the stream stored it; its acknowledgment never came
            seen_while_appending.append((ledger.read_through, decodes.count))
            raise TimeoutError

    with pytest.raises(TimeoutError):
        append_that_times_out()
    assert seen_while_appending == [(0, 0)]
    assert "I-1" in ledger.states
    assert (ledger.read_through, decodes.count) == (1, 1)


async def test_another_writers_event_held_during_a_successful_append_is_decoded_a_loop_turn_later(monkeypatch):
    _Decodes(monkeypatch)
    ledger = InvoiceLedger()
    # While this process appends to I-1, the follower delivers an event of I-1 that another replica appended: this
    # process's append does not cover it (its guard will have failed, or it was decided on a state without it).
    with ledger.appending("I-1", 0):
        ledger.follow(_stored(submitted(1, invoice(invoice_id="I-1", number="A-1")), "I-1"))
    assert ledger.read_through == 0
    await asyncio.sleep(0)
    assert "I-1" in ledger.states
    assert ledger.read_through == 1


async def test_an_event_the_append_had_read_is_folded_at_once_not_held(monkeypatch):
    """An append guarded by sequence 2 read everything up to 2: the follower's delivery of 2 (another writer's) cannot
    be that append's own, so it is folded at once and the hooks see the state right after it."""
    _Decodes(monkeypatch)
    told: list[tuple[int, int]] = []
    ledger = InvoiceLedger(lambda stored: told.append((stored.sequence, ledger.state_of("I-1").sequence)))
    ledger.fold("I-1", submitted(1, invoice(invoice_id="I-1", number="A-1")))
    with ledger.appending("I-1", 2):
        ledger.follow(_stored(cancelled(2), "I-1"))
        assert ledger.states["I-1"].sequence == 2
        assert ledger.read_through == 2
    assert told == [(2, 2)]


async def test_the_stream_is_read_past_a_gap_once_the_held_event_is_covered(monkeypatch):
    """Sequence 2 never reaches the ledger (purged, or unreadable and skipped by the follower): once the held event
    before it is covered, read_through joins the follower at 3 as it did before anything was held."""
    _Decodes(monkeypatch)
    ledger = InvoiceLedger()
    appended = submitted(1, invoice(invoice_id="I-1", number="A-1"))
    with ledger.appending("I-1", 0):
        ledger.follow(_stored(appended, "I-1"))
        ledger.follow(_stored(submitted(3, invoice(invoice_id="I-3", number="A-3")), "I-3"))
        assert ledger.read_through == 0
        await applied_here(ledger, "I-1", appended)
    assert ledger.read_through == 3


async def test_a_hook_that_fails_on_a_held_event_neither_replaces_the_appends_error_nor_strands_it(monkeypatch):
    _Decodes(monkeypatch)

    def failing_hook(stored: StoredEvent) -> None:
        raise RuntimeError("a projection bug")

    ledger = InvoiceLedger(failing_hook)
    with pytest.raises(TimeoutError), ledger.appending("I-1", 0):  # noqa: PT012 - the hold needs the block
        ledger.follow(_stored(submitted(1, invoice(invoice_id="I-1", number="A-1")), "I-1"))
        raise TimeoutError  # the append's own error reaches its caller
    assert "I-1" in ledger.states
    assert ledger.read_through == 1


def matched_with(
    sequence: int, submitted_invoice: Invoice, read_through: int, received: str = "100"
) -> Recorded[InvoiceEvent]:
    """A submission whose match read the invoice stream up to ``read_through``."""
    match = matching.match_invoice(submitted_invoice, facts(received={("PO-1", 1): received}), POLICY)
    event = InvoiceSubmitted(
        submitted_invoice, f"fp-{sequence}", f"key-{sequence}", match, FactVersions((), 0, read_through)
    )
    return Recorded(event, sequence, f"e{sequence}", sequence, f"key-{sequence}", "procurement")


def test_an_invoice_matched_without_one_recorded_just_before_it_is_known_to_have_missed_it():
    ledger = InvoiceLedger()
    ledger.fold("I-1", matched_with(1, invoice(line(quantity="4"), invoice_id="I-1", number="A-1"), 0))
    # I-2 and I-3 were matched at the same instant, neither seeing the other; I-4 later, on another PO.
    ledger.fold("I-2", matched_with(2, invoice(line(quantity="4"), invoice_id="I-2", number="A-2"), 1))
    ledger.fold("I-3", matched_with(3, invoice(line(quantity="4"), invoice_id="I-3", number="A-3"), 1))
    other_po = invoice(line(po="PO-2"), invoice_id="I-4", supplier="SUP-2", number="A-4")
    ledger.fold("I-4", matched_with(4, other_po, 1))
    same_number = invoice(line(po="PO-3"), invoice_id="I-5", supplier="SUP-2", number="a 4")  # I-4's number
    ledger.fold("I-5", matched_with(5, same_number, 3))
    assert [ledger.missed(i) for i in ("I-1", "I-2", "I-3", "I-4", "I-5")] == [False, False, True, False, True]
    ledger.fold("I-2", cancelled(6))  # what I-3 missed no longer counts
    assert not ledger.missed("I-3")


def _counted_by_scan(ledger: InvoiceLedger, asking: str) -> list[tuple[str, Invoice]]:
    """What the ledger answered before it had indexes: every invoice not cancelled but ``asking``, and once
    ``asking`` is recorded only those recorded before it, oldest first."""
    before = ledger.first_sequence.get(asking)
    return [
        (other, state.submitted.invoice)
        for other, state in sorted(ledger.states.items(), key=lambda item: ledger.first_sequence[item[0]])
        if other != asking
        and state.submitted is not None
        and state.status is not InvoiceStatus.CANCELLED
        and (
            before is None
            or ledger.first_sequence[other] < before
            or state.submitted.invoice.credited_invoice_id == asking
        )
    ]


def _event(sequence: int, invoice_id: str, action: tuple) -> Recorded[InvoiceEvent]:
    if action[0] == "submit":
        _, lines, quantity, credit, supplier = action
        built = invoice(
            *(line(n, po=po, po_line=number, quantity=str(quantity)) for n, (po, number) in enumerate(lines, 1)),
            invoice_id=invoice_id,
            supplier=supplier,
            number=f"N-{sequence}",
            credit_note=credit,
            credits="I-0" if credit else "",
        )
        return submitted(sequence, built)
    if action[0] == "cancel":
        return cancelled(sequence)
    return Recorded(ApprovedForPayment("erp"), sequence, f"e{sequence}", sequence, "", "erp")


_LINES = [(po, number) for po in ("PO-1", "PO-2") for number in (1, 2, 3)]
_SUBMIT = st.tuples(
    st.just("submit"),
    st.lists(st.sampled_from(_LINES), min_size=1, max_size=3),
    st.integers(1, 9),
    st.booleans(),  # a credit note
    st.sampled_from(["SUP-1", "SUP-2"]),
)
_STEP = st.tuples(
    st.sampled_from(["I-1", "I-2", "I-3", "I-4", "I-5"]),
    st.one_of(_SUBMIT, st.just(("cancel",)), st.just(("approve",))),
    st.booleans(),  # appended by this process: the handler's state first, the follower's event after it
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_STEP, max_size=12))
def test_the_indexes_answer_what_a_scan_of_every_invoice_answers(steps):
    ledger = InvoiceLedger()
    history: dict[str, InvoiceState] = {}
    for sequence, (invoice_id, action, by_handler) in enumerate(steps, start=1):
        event = _event(sequence, invoice_id, action)
        history[invoice_id] = evolve(history.get(invoice_id, InvoiceState()), event)
        if by_handler:
            asyncio.run(ledger.applied(invoice_id, history[invoice_id], sequence, event))
        ledger.fold(invoice_id, event)
    assert ledger.states == {key: state for key, state in history.items() if state.exists}
    assert ledger.read_through == len(steps)
    for asking in ("I-1", "I-2", "I-3", "I-4", "I-5", "I-9"):
        counted = _counted_by_scan(ledger, asking)
        expected = matching.invoiced_quantities(counted_invoice for _, counted_invoice in counted)
        assert ledger.invoiced_by_others(_LINES, asking) == expected
        for _, counted_invoice in counted:  # an invoice like each counted one: what duplicate detection finds
            probe = replace(counted_invoice, invoice_id=asking)
            every = [other_invoice for _, other_invoice in counted]
            assert find_duplicates(probe, ledger.duplicate_candidates(probe)) == find_duplicates(probe, every)
    oldest_first = sorted(ledger.states, key=lambda key: (ledger.first_sequence[key], key))
    for po in ("PO-1", "PO-2"):
        assert ledger.waiting_on(po) == [
            key
            for key in oldest_first
            if ledger.states[key].status in REMATCHABLE
            and any(found.po_id == po for found in ledger._invoice(key).lines)
        ]
    blocked = [key for key in oldest_first if ledger.states[key].status is InvoiceStatus.BLOCKED]
    assert [key for key, _ in ledger.blocked()] == blocked


def test_a_credit_note_counts_for_the_invoice_it_credits_and_a_duplicate_bills_nothing_twice():
    ledger = InvoiceLedger()
    ledger.fold("I-1", submitted(1, invoice(line(quantity="6"), invoice_id="I-1", number="A-1"), received="4"))
    assert ledger.states["I-1"].status is InvoiceStatus.BLOCKED  # 6 invoiced of 4 received
    credit = invoice(line(quantity="2"), invoice_id="C-1", number="CN-1", credit_note=True, credits="I-1")
    ledger.fold("C-1", submitted(2, credit))
    assert ledger.invoiced_by_others([("PO-1", 1)], "I-1") == {("PO-1", 1): D(-2)}  # recorded after I-1, counts
    resent = invoice(line(quantity="6"), invoice_id="I-2", number="a 1")  # I-1 again: blocked as a duplicate
    match = matching.match_invoice(resent, facts(), POLICY, earlier=ledger.duplicate_candidates(resent))
    event = InvoiceSubmitted(resent, "fp-3", "key-3", match, FactVersions())
    ledger.fold("I-2", Recorded(event, 3, "e3", 3, "key-3", "procurement"))
    assert Reason.DUPLICATE_INVOICE in ledger.states["I-2"].match.reasons  # type: ignore[union-attr]
    assert ledger.invoiced_by_others([("PO-1", 1)], "I-3") == {("PO-1", 1): D(4)}  # 6 - 2, not 6 more


async def test_what_the_ledger_lacks_is_what_the_stream_holds_below_what_it_knows_neither_folded_nor_held():
    ledger = InvoiceLedger()
    ledger.fold("I-1", submitted(1, invoice(invoice_id="I-1", number="A-1")))
    await applied_here(ledger, "I-4", submitted(4, invoice(invoice_id="I-4", number="A-4")))  # own, folded ahead
    assert ledger.lacking(10) == [2, 3]
    assert ledger.lacking(1) == [2]
    waiting = asyncio.ensure_future(ledger.read_up_to(6))  # a consumer handed the event at 6
    await asyncio.sleep(0)
    assert ledger.lacking(10) == [2, 3, 5, 6]
    with ledger.appending("I-2", 0):
        ledger.follow(_stored(submitted(2, invoice(invoice_id="I-2", number="A-2")), "I-2"))  # maybe its own: held
        assert ledger.lacking(10) == [3, 5, 6]
    await asyncio.sleep(0)  # the append ended without a state: the held event is decoded
    assert (ledger.read_through, ledger.lacking(10)) == (2, [3, 5, 6])
    ledger.passed(3)  # a gap in the stream
    assert (ledger.read_through, ledger.lacking(10)) == (4, [5, 6])
    ledger.fold("I-5", submitted(5, invoice(invoice_id="I-5", number="A-5")))
    ledger.fold("I-6", submitted(6, invoice(invoice_id="I-6", number="A-6")))
    await asyncio.wait_for(waiting, 1)
    assert ledger.lacking(10) == []
