"""po-publication and goods received: a change order may not lower a line below what was received, and a fully
received order may not be cancelled (issue 10, "The PO side").

Given these events and what receipt events said of the order, when this command, then this event or refusal.
The received view comes from receipt-reconciliation's events, folded by ``ReceivedQuantities``."""

from dataclasses import replace
from decimal import Decimal

import pytest

from libs.runtime.decider import RefusalKind
from libs.runtime.events import Event, build_envelope, now_timestamp, parse_stored
from services.po_publication.domain import (
    NOTHING_RECEIVED,
    HoldExpired,
    OrderCancelled,
    ReceiptReconciled,
    Received,
    ReceivedQuantities,
    ReleaseHeld,
    VersionChanged,
    VersionHeld,
    fully_received,
    over_receipt_exception_id,
    over_received,
    releasable,
    unreleasable,
)
from services.po_publication.events import on_receipt_event
from syncgov.exception.v1 import exception_pb2
from syncgov.receipt.v1 import events_pb2 as receipt_events
from syncgov.receipt.v1 import receipt_pb2
from tests.unit.po_publication.test_decider import (
    PO,
    SUBJECT,
    cancel,
    cancellation,
    change,
    changed,
    given,
    held,
    published,
    refused,
    when,
)
from tests.unit.po_publication.test_domain import line, order


def received(**lines: str) -> Received:
    """``received(l1="6")``: 6 received on line 1."""
    return Received({int(name.removeprefix("l")): Decimal(quantity) for name, quantity in lines.items()})


def change_to(version: int, *quantities: str, got: Received = NOTHING_RECEIVED):
    """Version ``version`` with lines 1, 2, ... at ``quantities``, knowing ``got`` was received."""
    lines = tuple(line(number, quantity) for number, quantity in enumerate(quantities, start=1))
    return replace(change(version, "-receipts", lines=lines), received=got)


def cancel_knowing(got: Received, version: int = 0):
    return replace(cancel(version), received=got)


RECEIPT = receipt_pb2.RECEIPT_KIND_RECEIPT

# Version 1: lines 1 and 2, 10 each.
ORDERED = given(published())


# --- lowering a line below what was received ----------------------------------------------------------------


def test_lowering_a_line_below_its_received_quantity_is_refused_naming_the_line_and_both_quantities():
    refusal = refused(
        when(change_to(2, "4", "10", got=received(l1="6")), ORDERED),
        RefusalKind.PRECONDITION,
        "BELOW_RECEIVED_QUANTITY",
    )
    assert refusal.subject == SUBJECT
    assert dict(refusal.metadata) == {"line": "1", "received": "6", "quantity": "4"}
    assert PO in refusal.message
    assert "line 1 to 4 with 6 received" in refusal.message


def test_lowering_a_line_to_exactly_its_received_quantity_is_a_change():
    decision = when(change_to(2, "6", "10", got=received(l1="6")), ORDERED)
    assert isinstance(decision, VersionChanged)
    assert decision.changes.quantity_changed == (1,)


def test_lowering_a_line_that_stays_above_its_received_quantity_is_a_change():
    assert isinstance(when(change_to(2, "7.5", "10", got=received(l1="6")), ORDERED), VersionChanged)


def test_raising_a_line_with_goods_received_is_a_change():
    assert isinstance(when(change_to(2, "12", "10", got=received(l1="10")), ORDERED), VersionChanged)


def test_a_line_with_nothing_received_can_still_be_lowered():
    assert isinstance(when(change_to(2, "10", "1", got=received(l1="6")), ORDERED), VersionChanged)
    assert isinstance(when(change_to(2, "1", "1"), ORDERED), VersionChanged)


def test_removing_a_line_with_goods_received_lowers_it_to_zero():
    refusal = refused(
        when(change_to(2, "10", got=received(l2="0.5")), ORDERED), RefusalKind.PRECONDITION, "BELOW_RECEIVED_QUANTITY"
    )
    assert dict(refusal.metadata) == {"line": "2", "received": "0.5", "quantity": "0"}
    assert "line 2 removed with 0.5 received" in refusal.message


def test_removing_a_line_with_nothing_received_is_a_change():
    decision = when(change_to(2, "10", got=received(l1="10")), ORDERED)
    assert isinstance(decision, VersionChanged)
    assert decision.changes.removed_lines == (2,)


def test_every_line_lowered_below_its_receipts_is_named_and_the_first_is_in_the_metadata():
    refusal = refused(
        when(change_to(2, "1", got=received(l1="2", l2="3")), ORDERED),
        RefusalKind.PRECONDITION,
        "BELOW_RECEIVED_QUANTITY",
    )
    assert refusal.metadata["line"] == "1"
    assert "line 1 to 1 with 2 received; line 2 removed with 3 received" in refusal.message


def test_an_over_received_line_left_as_it_is_does_not_block_other_changes():
    # 12 received against 10 ordered is receipt-reconciliation's finding; a price change elsewhere still goes.
    lines = (line(1, "10"), line(2, "10", price="9.99"))
    decision = when(replace(change(2, lines=lines), received=received(l1="12")), ORDERED)
    assert isinstance(decision, VersionChanged)
    assert decision.changes.price_changed == (2,)


def test_lowering_is_measured_from_the_latest_version():
    # Version 2 raised line 1 to 20; 15 were received; version 3 at 16 lowers it, but not below 15.
    history = given(published(), changed(2, lines=(line(1, "20"), line(2, "10"))))
    assert isinstance(when(change_to(3, "16", "10", got=received(l1="15")), history), VersionChanged)
    refused(
        when(change_to(3, "14", "10", got=received(l1="15")), history),
        RefusalKind.PRECONDITION,
        "BELOW_RECEIVED_QUANTITY",
    )


def test_a_version_ahead_of_its_predecessor_that_lowers_below_receipts_is_refused_not_held():
    refused(
        when(change_to(3, "4", "10", got=received(l1="6")), ORDERED),
        RefusalKind.PRECONDITION,
        "BELOW_RECEIVED_QUANTITY",
    )
    assert isinstance(when(change_to(3, "6", "10", got=received(l1="6")), ORDERED), VersionHeld)


def test_a_change_applied_before_the_goods_arrived_is_still_a_replay():
    # The retry of a change that landed is answered as before, whatever was received since.
    first = change_to(2, "4", "10")
    history = given(published(), changed(2, "-receipts", lines=first.order.lines))
    assert when(replace(first, received=received(l1="6")), history) is None


def test_stale_and_cancelled_come_before_receipts():
    history = given(published(), changed(2), cancellation(3))
    refused(when(change_to(4, "1", "1", got=received(l1="6")), history), RefusalKind.PRECONDITION, "PO_CANCELLED")
    refused(
        when(change_to(1, "1", "1", got=received(l1="6")), given(published(), changed(2))),
        RefusalKind.PRECONDITION,
        "STALE_VERSION",
    )


# --- cancelling a fully received order ----------------------------------------------------------------------


def test_cancelling_a_fully_received_order_is_refused():
    refusal = refused(
        when(cancel_knowing(received(l1="10", l2="10")), ORDERED), RefusalKind.PRECONDITION, "FULLY_RECEIVED"
    )
    assert refusal.subject == SUBJECT
    assert PO in refusal.message


def test_cancelling_an_over_received_order_is_refused():
    refused(when(cancel_knowing(received(l1="11", l2="10.5")), ORDERED), RefusalKind.PRECONDITION, "FULLY_RECEIVED")


def test_cancelling_a_partly_received_order_cancels_what_is_open():
    assert isinstance(when(cancel_knowing(received(l1="10", l2="9.999")), ORDERED), OrderCancelled)
    assert isinstance(when(cancel_knowing(received(l1="10")), ORDERED), OrderCancelled)
    assert isinstance(when(cancel_knowing(NOTHING_RECEIVED), ORDERED), OrderCancelled)


def test_fully_received_is_judged_against_the_latest_version():
    # 10 of each received; version 2 raised line 1 to 12: no longer fully received, so it may be cancelled.
    raised = given(published(), changed(2, lines=(line(1, "12"), line(2, "10"))))
    assert isinstance(when(cancel_knowing(received(l1="10", l2="10")), raised), OrderCancelled)
    # Version 2 lowered line 2 to the 4 received: now every line is received.
    lowered = given(published(), changed(2, lines=(line(1, "10"), line(2, "4"))))
    refused(when(cancel_knowing(received(l1="10", l2="4")), lowered), RefusalKind.PRECONDITION, "FULLY_RECEIVED")


def test_a_cancellation_that_landed_is_still_a_replay_once_everything_arrived():
    history = given(published(), cancellation(2))
    assert when(cancel_knowing(received(l1="10", l2="10"), version=2), history) is None


def test_an_unknown_or_cancelled_order_is_refused_as_before():
    refused(when(cancel_knowing(received(l1="10", l2="10")), given()), RefusalKind.NOT_FOUND, "PO_NOT_FOUND")
    cancelled = given(published(), cancellation(2))
    again = cancel_knowing(received(l1="10", l2="10"), version=3)
    refused(when(again, cancelled), RefusalKind.PRECONDITION, "PO_CANCELLED")


@pytest.mark.parametrize(
    ("got", "expected"),
    [
        ({}, False),
        ({1: "10"}, False),
        ({1: "10", 2: "9"}, False),
        ({1: "10", 2: "10"}, True),
        ({1: "99", 2: "10"}, True),
    ],
)
def test_fully_received_means_every_line_reached_its_quantity(got, expected):
    view = Received({number: Decimal(quantity) for number, quantity in got.items()})
    assert fully_received(order(), view) is expected


# --- the projection ------------------------------------------------------------------------------------------


def test_an_order_without_receipts_has_nothing_received():
    assert ReceivedQuantities().of(PO) is NOTHING_RECEIVED


def test_an_event_sets_the_lines_it_names_and_keeps_the_others():
    view = ReceivedQuantities()
    view.apply(PO, {1: Decimal("4"), 2: Decimal("1")})
    view.apply(PO, {1: Decimal("6")})  # a second receipt on line 1: its cumulative figure, not an increment
    assert view.of(PO).lines == {1: Decimal("6"), 2: Decimal("1")}


def test_a_return_lowers_the_figure_and_the_newest_event_wins():
    view = ReceivedQuantities()
    view.apply(PO, {1: Decimal("6")})
    view.apply(PO, {1: Decimal("2.5")})
    assert view.of(PO).of(1) == Decimal("2.5")


def test_orders_are_kept_apart():
    view = ReceivedQuantities()
    view.apply("PO-1", {1: Decimal("6")})
    view.apply("PO-2", {1: Decimal("1")})
    assert (view.of("PO-1").of(1), view.of("PO-2").of(1)) == (Decimal("6"), Decimal("1"))


def test_only_orders_with_goods_received_take_memory():
    view = ReceivedQuantities()
    view.apply(PO, {1: Decimal("0")})
    assert view.orders == {}
    view.apply(PO, {1: Decimal("3"), 2: Decimal("1")})
    view.apply(PO, {1: Decimal("0")})  # everything on line 1 went back
    assert view.of(PO).lines == {2: Decimal("1")}
    view.apply(PO, {2: Decimal("0")})
    assert view.orders == {}


# --- from receipt events -------------------------------------------------------------------------------------


def stored(payload, po_id: str = PO, sequence: int = 1):
    """A receipt-stream message as the follower hands it over."""
    event = Event("receipt", "goods_receipt", po_id, 1, "reconciled", payload, f"erp:gr:{sequence}", "erp")
    data = build_envelope(event, now_timestamp()).SerializeToString()
    return parse_stored("T_RECEIPT", sequence, f"t.receipt.{po_id}.reconciled", {}, data)


def reconciled(*lines: receipt_pb2.LineReceiptStatus) -> receipt_events.GoodsReceiptReconciled:
    return receipt_events.GoodsReceiptReconciled(lines=lines)


def status(line_number: int, quantity: str | None) -> receipt_pb2.LineReceiptStatus:
    line = receipt_pb2.LineReceiptStatus(po_line_number=line_number)
    if quantity is not None:
        line.received_quantity.value = quantity
    return line


def test_a_reconciled_event_sets_the_figures_of_the_order_its_envelope_names():
    view = ReceivedQuantities()
    apply = on_receipt_event(view)
    apply(stored(reconciled(status(1, "4"), status(2, "0.25"))))
    apply(stored(reconciled(status(1, "6.000")), sequence=2))
    assert view.of(PO).lines == {1: Decimal("6"), 2: Decimal("0.25")}


def test_other_payloads_and_lines_without_a_figure_change_nothing():
    view = ReceivedQuantities()
    apply = on_receipt_event(view)
    apply(stored(receipt_events.GoodsReceiptRefused(reason="not ours")))
    apply(stored(reconciled(status(1, None))))
    assert view.orders == {}


def test_each_receipt_event_is_handed_on_in_domain_terms_after_the_view_is_updated():
    view = ReceivedQuantities()
    seen: list = []
    apply = on_receipt_event(view, lambda receipt: seen.append((receipt, view.of(PO).of(1))))
    event = reconciled(status(1, "10"), status(2, "1"))
    event.receipt.CopyFrom(receipt_pb2.GoodsReceipt(receipt_id="GR-7", source_system="erp", kind=RECEIPT))
    event.reconciled_po_version = 1
    event.findings.add(type=exception_pb2.EXCEPTION_TYPE_OVER_RECEIPT, po_line_number=2)
    apply(stored(event))
    apply(stored(receipt_events.GoodsReceiptRefused(reason="not ours")))
    [(receipt, figure)] = seen
    assert figure == Decimal("10"), "handed on once the view holds it"
    assert (receipt.po_id, receipt.document, receipt.reconciled_version) == (PO, "erp/GR-7", 1)
    assert receipt.is_receipt
    assert receipt.lines == {1: Decimal("10"), 2: Decimal("1")}
    assert receipt.over_receipt_found == frozenset({2})
    assert receipt.recorded_at_ns > 0


# --- a held version released after goods arrived ------------------------------------------------------------
#
# Given version 1 (line 1 at 10), version 3 held lowering line 1 to 2, and 10 received meanwhile: when version 2
# lands and the hold is released, version 3 is not applied — its hold ends, naming why.

HELD_LOWERING = (published(), held(3, lines=(line(1, "2"), line(2, "10"))), changed(2))


def test_a_held_version_lowering_a_line_below_what_was_received_is_not_applied_its_hold_ends():
    state = given(*HELD_LOWERING)
    decision = when(ReleaseHeld(received(l1="10")), state)
    blocked = unreleasable(state, received(l1="10"))
    assert blocked is not None
    assert decision == HoldExpired(3, blocked.exception_id)
    assert "held version 3 of PO-1 was not applied when version 2 landed" in blocked.detail
    assert "line 1 to 2 with 10 received" in blocked.detail
    after = given(*HELD_LOWERING, decision)
    assert when(ReleaseHeld(received(l1="10")), after) is None, "its hold ended: nothing left to release"
    assert not releasable(after)
    assert after.latest_version == 2
    assert after.next_hold_deadline() is None


def test_the_same_version_sent_directly_is_refused_as_the_release_is():
    refused(
        when(change_to(3, "2", "10", got=received(l1="10")), given(published(), changed(2))),
        RefusalKind.PRECONDITION,
        "BELOW_RECEIVED_QUANTITY",
    )


def test_a_held_version_within_what_was_received_is_released_as_before():
    state = given(*HELD_LOWERING)
    assert isinstance(when(ReleaseHeld(received(l1="2")), state), VersionChanged)
    assert isinstance(when(ReleaseHeld(), state), VersionChanged), "nothing received"
    assert unreleasable(state, received(l1="2")) is None


def test_the_ended_holds_exception_id_is_derived_from_the_held_version():
    def exception_id(*history, got: str = "10") -> str:
        found = unreleasable(given(*history), received(l1=got))
        assert found is not None
        return found.exception_id

    first = exception_id(*HELD_LOWERING)
    assert exception_id(*HELD_LOWERING, got="9") == first, "a retry of the release raises it once"
    later = (published(), changed(2), held(4, lines=(line(1, "2"), line(2, "10"))), changed(3))
    assert exception_id(*later) != first


# --- a receipt reconciled against an older version than the latest -----------------------------------------
#
# Version 1 orders 10 on line 1; the receipt was reconciled against it, with 10 received; version 2 lowered line 1
# to 6 before po-publication knew the receipt: line 1 is over-received against the latest version.

SECOND = 1_000_000_000


def receipt(reconciled_version: int = 1, at_ns: int = 0, is_receipt: bool = True, found=frozenset(), **lines: str):
    figures = {int(name.removeprefix("l")): Decimal(quantity) for name, quantity in lines.items()}
    # The document took goods in on every line it names (figures are the lines' cumulative net received).
    return ReceiptReconciled(
        PO, "erp/GR-1", is_receipt, reconciled_version, at_ns, figures, frozenset(found), frozenset(figures)
    )


LOWERED_TO_6 = given(published(), changed(2, lines=(line(1, "6"), line(2, "10")))).versions


def test_a_line_over_received_against_a_later_version_is_found():
    [over] = over_received(receipt(l1="10", l2="3"), LOWERED_TO_6)
    assert (over.line_number, over.received, over.ordered, over.version) == (1, Decimal(10), Decimal(6), 2)
    assert over.exception_id == over_receipt_exception_id(PO, "erp/GR-1", 1)


def test_the_exception_id_is_derived_from_order_document_and_line():
    assert over_receipt_exception_id(PO, "erp/GR-1", 1) == over_receipt_exception_id(PO, "erp/GR-1", 1)
    assert over_receipt_exception_id(PO, "erp/GR-1", 1) != over_receipt_exception_id(PO, "erp/GR-1", 2)
    assert over_receipt_exception_id(PO, "erp/GR-1", 1) != over_receipt_exception_id(PO, "erp/GR-2", 1)


@pytest.mark.parametrize(
    "case",
    [
        receipt(reconciled_version=2, l1="10"),  # reconciled against the latest: receipt-reconciliation judged it
        receipt(l1="6"),  # exactly the new quantity
        receipt(is_receipt=False, l1="10"),  # a return lowers what was received
        receipt(reconciled_version=0, l1="10"),  # the order was unknown to receipt-reconciliation
        receipt(found={1}, l1="10"),  # receipt-reconciliation raised over_receipt for this line already
    ],
    ids=["latest", "within", "return", "unknown order", "found already"],
)
def test_nothing_is_found(case):
    assert over_received(case, LOWERED_TO_6) == []


def test_the_policys_allowance_applies():
    assert over_received(receipt(l1="6.5"), LOWERED_TO_6, Decimal(10)) == []
    assert [o.line_number for o in over_received(receipt(l1="6.7"), LOWERED_TO_6, Decimal(10))] == [1]


def test_a_line_the_later_version_removed_is_over_received_against_nothing():
    removed = given(published(), changed(2, lines=(line(1, "10"),))).versions
    [over] = over_received(receipt(l2="0.5"), removed)
    assert (over.line_number, over.ordered) == (2, Decimal(0))


def test_a_line_the_reconciled_version_lacked_is_not_this_finding():
    added = given(published(lines=(line(1),)), changed(2, lines=(line(1), line(2, "1")))).versions
    assert over_received(receipt(l3="5"), added) == []


def test_a_cancelled_latest_version_raises_nothing():
    assert over_received(receipt(l1="10"), given(published(), cancellation(2)).versions) == []


def test_versions_recorded_long_after_the_receipt_were_decided_knowing_it():
    # A restart replays old receipts: a change made well after one (knowing it, and a return since) is no race.
    late = tuple(
        replace(v, recorded=replace(v.recorded, recorded_at_ns=60 * SECOND)) if v.version == 2 else v
        for v in LOWERED_TO_6
    )
    assert over_received(receipt(l1="10"), late) == []
    assert [o.line_number for o in over_received(receipt(l1="10", at_ns=55 * SECOND), late)] == [1]
