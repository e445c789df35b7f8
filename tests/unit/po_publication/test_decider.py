"""Every decide/evolve rule of a purchase order as pure functions (DESIGN §3 rule 9).

Each test reads "given these events, when this command, then this event (or nothing, or this refusal)".
Documents are opaque to the domain, so they are plain strings here; ``fp-…`` strings stand for fingerprints.
"""

from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import pytest

from libs.runtime.decider import Recorded, Refusal, RefusalKind
from services.po_publication import domain
from services.po_publication.domain import (
    AcknowledgeVersion,
    CancelOrder,
    ChangeOrder,
    Changes,
    ExpireHold,
    HoldExpired,
    OrderCancelled,
    OrderState,
    PublishOrder,
    RejectVersion,
    ReleaseHeld,
    SupplierDirectory,
    VersionAcknowledged,
    VersionChanged,
    VersionHeld,
    VersionPublished,
    VersionRejected,
    natural_idempotency_key,
    validate_order,
)
from tests.unit.po_publication.test_domain import NOW, line, order

SOURCE = "procurement"
ERP = "erp-eu"
WINDOW = timedelta(minutes=30)
PO = "PO-1"
SUBJECT = f"purchase_order/{PO}"


# --- given / when -------------------------------------------------------------------------------------------


def recorded(event, sequence: int) -> Recorded:
    # The stream's own key differs from the event's (a held event's is prefixed): the domain must use the event's.
    return Recorded(
        event,
        sequence,
        f"evt-{sequence}",
        sequence * 1_000,
        f"stream-key-{sequence}",
        getattr(event, "source_system", ""),
    )


def given(*events) -> OrderState:
    state = domain.INITIAL
    for sequence, event in enumerate(events, start=1):
        state = domain.evolve(state, recorded(event, sequence))
    return state


def when(command, state: OrderState, now=NOW, hold_window=WINDOW):
    return domain.decide(command, state, now, domain.Rules(hold_window=hold_window))


def refused(decision, kind: RefusalKind, reason: str) -> Refusal:
    assert isinstance(decision, Refusal), decision
    assert (decision.kind, decision.reason) == (kind, reason), decision
    return decision


# --- commands and events ------------------------------------------------------------------------------------


def doc(version: int, variant: str = "") -> str:
    return f"doc-v{version}{variant}"


def fp(version: int, variant: str = "") -> str:
    return f"fp-v{version}{variant}"


def key(version: int, source: str = SOURCE) -> str:
    return natural_idempotency_key(source, PO, version)


def publish(variant: str = "", **changes) -> PublishOrder:
    o = order(**changes)
    return PublishOrder(o, doc(o.version, variant), fp(o.version, variant), key(o.version), SOURCE)


def change(version: int, variant: str = "", source: str = SOURCE, **changes) -> ChangeOrder:
    o = order(version=version, **changes)
    return ChangeOrder(o, doc(version, variant), fp(version, variant), key(version, source), source)


def published(variant: str = "", **changes) -> VersionPublished:
    c = publish(variant, **changes)
    return VersionPublished(c.order, c.document, c.fingerprint, c.idempotency_key, c.source_system)


def changed(version: int, variant: str = "", **changes) -> VersionChanged:
    c = change(version, variant, **changes)
    return VersionChanged(c.order, c.document, c.fingerprint, Changes(), c.idempotency_key, c.source_system)


def held(version: int, variant: str = "", until=NOW + WINDOW, source: str = SOURCE, **changes) -> VersionHeld:
    c = change(version, variant, source, **changes)
    return VersionHeld(c.order, c.document, c.fingerprint, until, c.idempotency_key, source)


def cancellation(version: int) -> OrderCancelled:
    return OrderCancelled(
        order(version=version, cancelled=True, approved_at=NOW),
        doc(version - 1),
        "no longer needed",
        key(version),
        fp(version, "-cancelled"),
        doc(version, "-cancelled"),
        SOURCE,
    )


def acknowledged(version: int, erp_number: str = "4500000001", at=NOW) -> VersionAcknowledged:
    return VersionAcknowledged(version, erp_number, at, timedelta(minutes=1), f"ack-{version}", ERP)


def rejected(version: int) -> VersionRejected:
    return VersionRejected(version, "price mismatch", f"rej-{version}", ERP)


def cancel(version: int = 0, idempotency_key: str = "") -> CancelOrder:
    return CancelOrder(PO, version, "no longer needed", idempotency_key, SOURCE)


def acknowledge(version: int, erp_number: str = "4500000001", at=NOW) -> AcknowledgeVersion:
    return AcknowledgeVersion(PO, version, erp_number, at, ERP)


def reject(version: int) -> RejectVersion:
    return RejectVersion(PO, version, "price mismatch", ERP)


# --- PublishOrder -------------------------------------------------------------------------------------------


def test_publish_on_an_empty_order_publishes_version_1():
    assert when(publish(), given()) == VersionPublished(order(), doc(1), fp(1), key(1), SOURCE)


@pytest.mark.parametrize("history", [(published(),), (published(), changed(2), cancellation(3))])
def test_publishing_the_same_content_again_is_nothing_new(history):
    assert when(publish(), given(*history)) is None


def test_publishing_other_content_for_an_existing_version_1_is_a_duplicate_transaction():
    refusal = refused(when(publish("-other"), given(published())), RefusalKind.CONFLICT, "DUPLICATE_TRANSACTION")
    assert refusal.exception == "duplicate_transaction"
    assert refusal.evidence == (doc(1), doc(1, "-other"))
    assert refusal.metadata == {"po_id": PO, "version": "1", "idempotency_key": key(1)}


def test_publishing_a_version_the_order_does_not_have_is_a_duplicate_transaction_with_only_the_new_document():
    refusal = refused(when(publish(version=2), given(published())), RefusalKind.CONFLICT, "DUPLICATE_TRANSACTION")
    assert refusal.evidence == (doc(2),)


# --- ChangeOrder --------------------------------------------------------------------------------------------


def test_changing_an_unknown_order_is_not_found():
    refused(when(change(2), given()), RefusalKind.NOT_FOUND, "PO_NOT_FOUND")


def test_the_next_version_is_a_change_naming_what_changed():
    before = published(lines=(line(1), line(2), line(3), line(5)))
    after: dict[str, Any] = dict(
        supplier_id="SUP-2",
        ship_to_site="DC-2",
        lines=(
            line(1, quantity="11"),
            line(2, price="13.00"),
            line(3, requested_delivery_date=date(2026, 12, 1)),
            line(4),
        ),
    )
    expected_changes = Changes(
        added_lines=(4,),
        removed_lines=(5,),
        quantity_changed=(1,),
        price_changed=(2,),
        date_changed=(3,),
        header_fields=("supplier_id", "ship_to_site"),
    )
    assert when(change(2, **after), given(before)) == VersionChanged(
        order(version=2, **after), doc(2), fp(2), expected_changes, key(2), SOURCE
    )


def test_a_change_is_compared_with_the_latest_version_not_the_first():
    history = given(published(), changed(2, lines=(line(1, quantity="20"), line(2))))
    decision = when(change(3, lines=(line(1, quantity="20"), line(2, price="1.00"))), history)
    assert isinstance(decision, VersionChanged)
    assert decision.changes == Changes(price_changed=(2,))


@pytest.mark.parametrize("version", [3, 2, 1])
def test_a_change_sent_again_with_the_same_content_is_nothing_new(version):
    assert when(change(version), given(published(), changed(2), changed(3))) is None


def test_the_latest_version_with_other_content_is_a_duplicate_transaction():
    refusal = refused(
        when(change(2, "-other"), given(published(), changed(2))), RefusalKind.CONFLICT, "DUPLICATE_TRANSACTION"
    )
    assert refusal.exception == "duplicate_transaction"
    assert refusal.evidence == (doc(2), doc(2, "-other"))


def test_an_older_version_with_other_content_is_stale():
    refusal = refused(
        when(change(2, "-other"), given(published(), changed(2), changed(3))),
        RefusalKind.PRECONDITION,
        "STALE_VERSION",
    )
    assert refusal.metadata == {"latest_version": "3"}
    assert refusal.subject == SUBJECT


def test_a_version_ahead_of_its_predecessor_is_held_for_the_policy_window():
    window = timedelta(minutes=7)
    decision = when(change(3), given(published()), hold_window=window)
    assert decision == VersionHeld(order(version=3), doc(3), fp(3), NOW + window, key(3), SOURCE)


def test_a_held_version_sent_again_with_the_same_content_is_nothing_new():
    assert when(change(3), given(published(), held(3))) is None


def test_a_held_version_sent_again_with_other_content_is_a_duplicate_transaction():
    refusal = refused(
        when(change(3, "-other"), given(published(), held(3))), RefusalKind.CONFLICT, "DUPLICATE_TRANSACTION"
    )
    assert refusal.exception == "duplicate_transaction"
    assert refusal.evidence == (doc(3), doc(3, "-other"))


def test_a_change_after_the_cancellation_is_refused():
    refusal = refused(when(change(3), given(published(), cancellation(2))), RefusalKind.PRECONDITION, "PO_CANCELLED")
    assert refusal.subject == SUBJECT


def test_a_version_ahead_of_a_cancelled_order_is_refused_not_held():
    # A cancelled order is final: nothing held for it can ever be released (ReleaseHeld answers None once the
    # latest version is the cancellation), so holding would only raise a misleading out-of-order exception later.
    refusal = refused(when(change(4), given(published(), cancellation(2))), RefusalKind.PRECONDITION, "PO_CANCELLED")
    assert refusal.subject == SUBJECT


def test_a_held_version_sent_with_other_content_once_its_predecessor_landed_is_a_duplicate_transaction():
    # Version 3 was accepted (held) with one content; before it is released, the same version with other content
    # must not replace it (DESIGN §3 rule 4), exactly as while it was still ahead.
    refusal = refused(
        when(change(3, "-other"), given(published(), held(3), changed(2))),
        RefusalKind.CONFLICT,
        "DUPLICATE_TRANSACTION",
    )
    assert refusal.evidence == (doc(3), doc(3, "-other"))


def test_the_predecessor_landing_then_releases_the_held_version():
    history = [published(), held(3, ship_to_site="DC-2")]
    landed = when(change(2), given(*history))
    assert isinstance(landed, VersionChanged)
    assert landed.order.version == 2
    released = when(ReleaseHeld(), given(*history, landed))
    assert isinstance(released, VersionChanged)
    assert (released.order.version, released.changes.header_fields) == (3, ("ship_to_site",))
    assert when(ReleaseHeld(), given(*history, landed, released)) is None


# --- CancelOrder --------------------------------------------------------------------------------------------


def test_cancelling_an_unknown_order_is_not_found():
    refused(when(cancel(), given()), RefusalKind.NOT_FOUND, "PO_NOT_FOUND")


def test_a_cancellation_is_the_next_version_of_the_latest_content_approved_now():
    later = NOW + timedelta(hours=2)
    decision = when(cancel(), given(published(), changed(2, ship_to_site="DC-2")), now=later)
    assert decision == OrderCancelled(
        order(version=3, ship_to_site="DC-2", cancelled=True, approved_at=later),
        doc(2),
        "no longer needed",
        key(3),
        source_system=SOURCE,
    )


def test_a_cancellation_naming_the_next_version_and_a_key_keeps_them():
    decision = when(cancel(2, idempotency_key="cancel-once"), given(published()))
    assert isinstance(decision, OrderCancelled)
    assert (decision.order.version, decision.order.cancelled, decision.idempotency_key) == (2, True, "cancel-once")


def test_cancelling_a_cancelled_order_is_refused():
    state = given(published(), cancellation(2))
    refusal = refused(when(cancel(idempotency_key="another"), state), RefusalKind.PRECONDITION, "PO_CANCELLED")
    assert refusal.subject == SUBJECT


def test_a_cancellation_sent_again_with_its_version_is_nothing_new():
    assert when(cancel(2), given(published(), cancellation(2))) is None


@pytest.mark.parametrize("version", [1, 2, 4])
def test_a_cancellation_naming_another_version_than_the_next_is_stale(version):
    refusal = refused(when(cancel(version), given(published(), changed(2))), RefusalKind.PRECONDITION, "STALE_VERSION")
    assert refusal.metadata == {"latest_version": "2"}
    assert refusal.subject == SUBJECT


# --- AcknowledgeVersion -------------------------------------------------------------------------------------


def test_acknowledging_an_unknown_order_is_not_found():
    refused(when(acknowledge(1), given()), RefusalKind.NOT_FOUND, "PO_NOT_FOUND")


@pytest.mark.parametrize("command", [acknowledge(3), reject(3)])
def test_the_erp_naming_an_unknown_version_is_refused(command):
    refusal = refused(when(command, given(published(), changed(2))), RefusalKind.PRECONDITION, "UNKNOWN_VERSION")
    assert refusal.metadata == {"latest_version": "2"}
    assert refusal.subject == SUBJECT


def test_an_acknowledgment_measures_propagation_from_the_versions_approval():
    at = NOW + timedelta(minutes=4)  # version 1 was approved at NOW - 1 minute
    assert when(acknowledge(1, at=at), given(published())) == VersionAcknowledged(
        1, "4500000001", at, timedelta(minutes=5), f"{ERP}:purchase_order_acknowledgment:{PO}:v1", ERP
    )


def test_an_acknowledgment_of_an_older_version_measures_from_that_versions_approval():
    history = given(published(approved_at=NOW - timedelta(hours=1)), changed(2, approved_at=NOW))
    decision = when(acknowledge(1), history)
    assert isinstance(decision, VersionAcknowledged)
    assert decision.propagation == timedelta(hours=1)


@pytest.mark.parametrize("approved_at", [NOW + timedelta(minutes=3), None])
def test_propagation_is_never_negative(approved_at):
    decision = when(acknowledge(1), given(published(approved_at=approved_at)))
    assert isinstance(decision, VersionAcknowledged)
    assert decision.propagation == timedelta(0)


def test_the_same_erp_number_again_is_nothing_new():
    assert when(acknowledge(1), given(published(), acknowledged(1))) is None


def test_another_erp_number_for_an_acknowledged_version_is_a_conflict():
    refusal = refused(
        when(acknowledge(1, "4500000099"), given(published(), acknowledged(1))),
        RefusalKind.CONFLICT,
        "ALREADY_ACKNOWLEDGED",
    )
    assert refusal.metadata == {"erp_document_number": "4500000001"}


def test_an_acknowledgment_of_one_version_does_not_stand_for_another():
    decision = when(acknowledge(2, "4500000002"), given(published(), acknowledged(1), changed(2)))
    assert isinstance(decision, VersionAcknowledged)
    assert (decision.version, decision.erp_document_number) == (2, "4500000002")


# --- RejectVersion ------------------------------------------------------------------------------------------


def test_rejecting_an_unknown_order_is_not_found():
    refused(when(reject(1), given()), RefusalKind.NOT_FOUND, "PO_NOT_FOUND")


def test_a_rejection_is_recorded_once():
    history = [published(), changed(2)]
    decision = when(reject(2), given(*history))
    assert decision == VersionRejected(2, "price mismatch", f"{ERP}:purchase_order_rejection:{PO}:v2", ERP)
    assert when(reject(2), given(*history, decision)) is None


# --- ReleaseHeld --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "history",
    [
        (),
        (published(),),
        (published(), held(3)),  # its predecessor has not landed
        (published(), held(3), cancellation(2)),
        (published(), held(3), HoldExpired(3, "EXC-1"), changed(2)),
    ],
    ids=["empty", "nothing held", "predecessor missing", "cancelled", "expired"],
)
def test_nothing_to_release(history):
    assert when(ReleaseHeld(), given(*history)) is None


def test_a_held_version_whose_predecessor_landed_is_applied_as_its_sender_sent_it():
    history = given(published(), held(3, source="erp-late", lines=(line(1),)), changed(2))
    assert when(ReleaseHeld(), history) == VersionChanged(
        order(version=3, lines=(line(1),)),
        doc(3),
        fp(3),
        Changes(removed_lines=(2,)),
        key(3, "erp-late"),
        "erp-late",
    )


# --- ExpireHold ---------------------------------------------------------------------------------------------


def test_a_due_hold_expires():
    assert when(ExpireHold(3, "EXC-1"), given(published(), held(3, until=NOW))) == HoldExpired(3, "EXC-1")


@pytest.mark.parametrize(
    "history",
    [
        (published(),),
        (published(), held(3), HoldExpired(3, "EXC-0")),
        (published(), held(3), changed(2), changed(3)),
    ],
    ids=["nothing held", "already expired", "applied"],
)
def test_nothing_to_expire(history):
    assert when(ExpireHold(3, "EXC-1"), given(*history)) is None


# --- evolve -------------------------------------------------------------------------------------------------


def test_an_empty_history_is_no_order():
    state = given()
    assert (state.exists, state.latest, state.latest_version, state.version(1)) == (False, None, 0, None)
    assert state.highest_acknowledgment() is None
    assert (state.pending_held(), state.next_hold_deadline()) == ([], None)


def test_versions_fold_in_order_with_their_content_and_place():
    moved = Changes(header_fields=("ship_to_site",))
    state = given(published(), replace(changed(2, ship_to_site="DC-2"), changes=moved), cancellation(3))
    assert state.exists
    assert state.latest_version == 3
    assert [(v.version, v.document, v.fingerprint, v.cancelled) for v in state.versions] == [
        (1, doc(1), fp(1), False),
        (2, doc(2), fp(2), False),
        (3, doc(3, "-cancelled"), fp(3, "-cancelled"), True),
    ]
    assert [v.recorded.sequence for v in state.versions] == [1, 2, 3]
    second = state.version(2)
    assert second is not None
    assert (second.order, second.changes) == (order(version=2, ship_to_site="DC-2"), moved)
    assert state.latest is state.versions[-1]
    assert state.version(4) is None


def test_acknowledgments_fold_per_version_and_the_highest_is_known():
    state = given(published(), changed(2), acknowledged(2, "4500000002"), acknowledged(1, "4500000001"))
    assert set(state.acknowledgments) == {1, 2}
    highest = state.highest_acknowledgment()
    assert highest == domain.Acknowledgment(2, "4500000002", NOW, timedelta(minutes=1), 3)
    assert state.acknowledged_version == 2


def test_rejections_remember_the_latest_rejection_of_each_version():
    state = given(published(), rejected(1), changed(2), rejected(1))
    assert state.rejections == {1: 4}


def test_held_and_expired_versions_fold():
    state = given(published(), held(3, source="erp-late"), held(4, until=NOW + timedelta(hours=2)), HoldExpired(4, "X"))
    assert state.held[3] == domain.HeldVersion(
        order(version=3), doc(3), fp(3), NOW + WINDOW, key(3, "erp-late"), 2, "erp-late"
    )
    assert set(state.held) == {3, 4}
    assert state.expired == frozenset({4})


def test_pending_holds_exclude_applied_and_expired_versions_lowest_first():
    state = given(
        published(),
        held(5, until=NOW + timedelta(hours=5)),
        held(2, until=NOW + timedelta(hours=2)),
        held(4, until=NOW + timedelta(hours=4)),
        held(3, until=NOW + timedelta(hours=3)),
        HoldExpired(3, "X"),
        changed(2),
    )
    assert [h.version for h in state.pending_held()] == [4, 5]
    assert state.next_hold_deadline() == NOW + timedelta(hours=4)


def test_due_holds_are_the_pending_ones_whose_window_ran_out():
    state = given(
        published(),
        held(3, until=NOW - timedelta(seconds=1)),
        held(4, until=NOW),
        held(5, until=NOW + timedelta(seconds=1)),
        held(6, until=NOW - timedelta(hours=1)),
        HoldExpired(6, "X"),
    )
    assert [h.version for h in domain.due_holds(state, NOW)] == [3, 4]


# --- validate_order: version and supplier rules -------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "is_change", "refused_version"),
    [(1, False, False), (2, False, True), (1, True, True), (2, True, False), (3, None, False), (1, None, False)],
)
def test_publication_is_version_1_and_a_change_order_version_2_or_later(version, is_change, refused_version):
    problems = validate_order(order(version=version), NOW, change=is_change)
    assert [p.field for p in problems] == (["purchase_order.version"] if refused_version else [])


def suppliers() -> SupplierDirectory:
    directory = SupplierDirectory()
    directory.set_status("SUP-1", domain.SUPPLIER_ACTIVE)
    directory.set_status("SUP-B", "blocked")
    directory.merge("SUP-OLD", "SUP-1")
    return directory


@pytest.mark.parametrize(
    ("supplier_id", "says"),
    [("SUP-9", "unknown"), ("SUP-OLD", "merged into 'SUP-1'"), ("SUP-B", "blocked")],
)
def test_an_order_must_name_an_active_supplier(supplier_id, says):
    problems = validate_order(order(supplier_id=supplier_id), NOW, suppliers=suppliers())
    assert [p.field for p in problems] == ["purchase_order.supplier_id"]
    assert says in problems[0].description


def test_suppliers_are_checked_only_when_known():
    assert validate_order(order(), NOW, suppliers=suppliers()) == []
    assert validate_order(order(supplier_id="SUP-9"), NOW) == []


def test_a_cancellation_retried_without_a_version_is_a_replay_when_its_key_matches():
    first = when(cancel(), given(published()))
    assert isinstance(first, OrderCancelled)
    state = given(published(), cancellation(2))
    assert when(cancel(), state) is None  # the natural key of version 2: the same command
    assert (
        when(cancel(idempotency_key="batch-9"), given(published(), replace(cancellation(2), idempotency_key="batch-9")))
        is None
    )
    refused(when(cancel(idempotency_key="another"), state), RefusalKind.PRECONDITION, "PO_CANCELLED")


def test_an_expired_held_version_sent_again_is_held_anew():
    expired = given(published(), held(3), domain.HoldExpired(3, "exception-1"))
    again = when(change(3, "-b"), expired)
    assert isinstance(again, VersionHeld)
    assert again.hold_until == NOW + WINDOW
    rehold = given(published(), held(3), domain.HoldExpired(3, "exception-1"), again)
    assert [h.version for h in rehold.pending_held()] == [3]
    assert rehold.held[3].fingerprint == fp(3, "-b")


def test_the_version_a_command_is_about():
    assert domain.version_of(change(3)) == 3
    assert domain.version_of(publish()) == 1
    assert domain.version_of(cancel(4)) == 4
    assert domain.version_of(domain.ReleaseHeld()) == 0
