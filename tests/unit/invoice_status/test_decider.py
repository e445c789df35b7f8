"""Every decide/evolve rule of an invoice as pure functions (DESIGN §3 rule 9, issue 11).

Each test reads "given these events, when this command, then this event (or nothing, or this refusal)". Match
results are real ones (``matching.match_invoice``), so a blocked invoice is blocked for a reason the match gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import Decimal

import pytest

from libs.runtime.decider import Recorded, Refusal, RefusalKind
from services.invoice_status.decider import (
    INITIAL,
    Approve,
    ApprovedForPayment,
    Blocked,
    Cancel,
    Cancelled,
    Dispute,
    Disputed,
    FactVersions,
    InvoiceCommand,
    InvoiceEvent,
    InvoiceState,
    InvoiceStatus,
    InvoiceSubmitted,
    Matched,
    Paid,
    RecordPayment,
    Release,
    Released,
    Rematch,
    SubmitInvoice,
    decide,
    evolve,
    payment_refused,
)
from services.invoice_status.domain import MatchFacts, MatchResult, PoLineFacts, Reason, ReceivedFacts
from services.invoice_status.matching import match_invoice
from tests.unit.invoice_status.builders import POLICY, invoice

D = Decimal
ID = "I-1"
INVOICE = invoice()  # PO-1 line 1: 10 x 10.00 EUR, gross 100
PAY_DAY = date(2026, 4, 1)


def facts(*, price: str = "10.00", received: str | None = "10") -> MatchFacts:
    key = ("PO-1", 1)
    return MatchFacts(
        po_lines={key: PoLineFacts(1, D(10), D(price), "EUR", "BU-1")},
        received={} if received is None else {key: ReceivedFacts(D(received))},
    )


MATCHED = match_invoice(INVOICE, facts(), POLICY)
AWAITING = match_invoice(INVOICE, facts(received=None), POLICY)  # awaiting_receipt
PRICE = match_invoice(INVOICE, facts(price="9.00"), POLICY)  # price_variance
PRICE_AND_QUANTITY = match_invoice(INVOICE, facts(price="9.00", received="5"), POLICY)
V1 = FactVersions((("PO-1", 1),), receipt_sequence=10)
V2 = FactVersions((("PO-1", 1),), receipt_sequence=11)
V3 = FactVersions((("PO-1", 2),), receipt_sequence=11)


def submitted(match: MatchResult = MATCHED, fingerprint: str = "fp-1") -> InvoiceSubmitted:
    return InvoiceSubmitted(INVOICE, fingerprint, "procurement:invoice:I-1", match, V1)


def submit(match: MatchResult = MATCHED, fingerprint: str = "fp-1") -> SubmitInvoice:
    return SubmitInvoice(INVOICE, fingerprint, "procurement:invoice:I-1", match, V1)


RELEASED = Released("alice", "price agreed by phone", (Reason.PRICE_VARIANCE,))
APPROVED = ApprovedForPayment("bob")
PAID = Paid("PAY-9", D("100"), "EUR", PAY_DAY)
PAYMENT = RecordPayment(ID, "PAY-9", D("100.00"), "EUR", PAY_DAY)

# Histories reaching each state.
HISTORIES: dict[InvoiceStatus, tuple[InvoiceEvent, ...]] = {
    InvoiceStatus.MATCHED: (submitted(),),
    InvoiceStatus.BLOCKED: (submitted(PRICE),),
    InvoiceStatus.RELEASED: (submitted(PRICE), RELEASED),
    InvoiceStatus.APPROVED_FOR_PAYMENT: (submitted(), APPROVED),
    InvoiceStatus.PAID: (submitted(), APPROVED, PAID),
    InvoiceStatus.DISPUTED: (submitted(PRICE), Disputed("wrong price")),
    InvoiceStatus.CANCELLED: (submitted(), Cancelled("sent twice")),
}


def given(*events: InvoiceEvent) -> InvoiceState:
    state = INITIAL
    for sequence, event in enumerate(events, start=1):
        state = evolve(state, Recorded(event, sequence, f"e-{sequence}", sequence, f"k-{sequence}", "procurement"))
    return state


def in_status(status: InvoiceStatus) -> InvoiceState:
    state = given(*HISTORIES[status])
    assert state.status is status
    return state


def refused(decision: object, kind: RefusalKind, reason: str) -> Refusal:
    assert isinstance(decision, Refusal), decision
    assert (decision.kind, decision.reason) == (kind, reason), decision
    return decision


def others(*allowed: InvoiceStatus) -> Sequence[InvoiceStatus]:
    return [status for status in HISTORIES if status not in allowed]


# --- Submission --------------------------------------------------------------------------------------------


def test_submit_records_the_invoice_with_its_first_match() -> None:
    assert decide(submit(), INITIAL) == submitted()
    assert given(submitted()).status is InvoiceStatus.MATCHED
    blocked = given(submitted(AWAITING))
    assert blocked.status is InvoiceStatus.BLOCKED
    assert blocked.match == AWAITING
    assert blocked.facts == V1
    assert blocked.sequence == 1


def test_the_same_invoice_again_is_a_replay() -> None:
    assert decide(submit(), given(submitted())) is None


def test_the_same_invoice_id_with_other_content_is_a_duplicate_transaction() -> None:
    refusal = refused(
        decide(submit(fingerprint="fp-2"), given(submitted())), RefusalKind.CONFLICT, "DUPLICATE_TRANSACTION"
    )
    assert refusal.exception == "duplicate_transaction"
    assert refusal.evidence == (INVOICE, INVOICE)


def test_an_invalid_invoice_is_refused() -> None:
    bad = SubmitInvoice(invoice(currency="EURO"), "fp-1", "k", MATCHED, V1)
    refusal = refused(decide(bad, INITIAL), RefusalKind.INVALID, "INVALID_INVOICE")
    assert ("invoice.currency_code", "'EURO' is not an ISO 4217 currency code") in refusal.violations


def test_a_match_of_another_invoice_is_refused() -> None:
    other = match_invoice(invoice(invoice_id="I-2"), facts(), POLICY)
    refused(decide(submit(other), INITIAL), RefusalKind.INVALID, "MATCH_OF_OTHER_INVOICE")
    refused(decide(Rematch(ID, other, V2), given(submitted())), RefusalKind.INVALID, "MATCH_OF_OTHER_INVOICE")


@pytest.mark.parametrize(
    "command",
    [
        Rematch(ID, MATCHED, V2),
        Release(ID, "alice", "ok"),
        Approve(ID, "bob"),
        PAYMENT,
        Dispute(ID, "why"),
        Cancel(ID, "why"),
    ],
)
def test_every_command_but_submit_needs_the_invoice(command: InvoiceCommand) -> None:
    refused(decide(command, INITIAL), RefusalKind.NOT_FOUND, "INVOICE_NOT_FOUND")


# --- Re-match ----------------------------------------------------------------------------------------------


def test_a_rematch_that_clears_every_reason_matches_the_invoice() -> None:
    state = given(submitted(AWAITING))
    assert decide(Rematch(ID, MATCHED, V2), state) == Matched(MATCHED, V2)
    after = given(submitted(AWAITING), Matched(MATCHED, V2))
    assert (after.status, after.match, after.facts) == (InvoiceStatus.MATCHED, MATCHED, V2)


def test_a_rematch_that_finds_a_reason_blocks_the_invoice() -> None:
    assert decide(Rematch(ID, PRICE, V3), given(submitted())) == Blocked(PRICE, V3)
    assert given(submitted(), Blocked(PRICE, V3)).status is InvoiceStatus.BLOCKED


def test_a_rematch_with_other_reasons_of_a_blocked_invoice_is_recorded() -> None:
    assert decide(Rematch(ID, PRICE, V3), given(submitted(AWAITING))) == Blocked(PRICE, V3)


def test_a_rematch_that_changes_nothing_appends_nothing() -> None:
    assert decide(Rematch(ID, AWAITING, V2), given(submitted(AWAITING))) is None
    assert decide(Rematch(ID, MATCHED, V3), given(submitted(), Blocked(PRICE, V2), Matched(MATCHED, V2))) is None


def test_a_rematch_on_older_facts_than_the_last_appends_nothing() -> None:
    state = given(submitted(AWAITING), Matched(MATCHED, V3))
    assert decide(Rematch(ID, AWAITING, V2), state) is None


# Replica B, woken by receipt 12 with its ledger at invoice 100, recorded the match; replica A's re-match read the
# receipts before 12 landed and its ledger at 105.
RECORDED_BY_B = FactVersions((("PO-1", 2),), receipt_sequence=12, invoice_sequence=100)


@pytest.mark.parametrize(
    "read_by_a",
    [
        FactVersions((("PO-1", 2),), receipt_sequence=10, invoice_sequence=105),  # an older receipt
        FactVersions((("PO-1", 1),), receipt_sequence=13, invoice_sequence=105),  # an older order version
        FactVersions((("PO-1", 3),), receipt_sequence=12, invoice_sequence=99),  # an older ledger
        FactVersions((("PO-2", 1),), receipt_sequence=13, invoice_sequence=105),  # the order B read, not read
    ],
)
def test_a_rematch_newer_on_one_fact_and_older_on_another_is_refused_as_stale(read_by_a: FactVersions) -> None:
    state = given(submitted(AWAITING), Matched(MATCHED, RECORDED_BY_B))
    refusal = refused(decide(Rematch(ID, AWAITING, read_by_a), state), RefusalKind.PRECONDITION, "STALE_FACTS")
    # What the caller must have read before it matches again.
    assert (refusal.metadata["invoice_sequence"], refusal.metadata["receipt_sequence"]) == ("100", "12")
    assert refusal.subject == ID


def test_a_rematch_newer_on_one_fact_and_as_new_on_the_others_is_recorded() -> None:
    state = given(submitted(AWAITING), Matched(MATCHED, RECORDED_BY_B))
    newer = FactVersions((("PO-1", 2), ("PO-2", 1)), receipt_sequence=12, invoice_sequence=101)
    assert decide(Rematch(ID, PRICE, newer), state) == Blocked(PRICE, newer)


def test_the_policy_revision_is_not_a_fact_a_rematch_is_stale_on() -> None:
    state = given(submitted(AWAITING), Matched(MATCHED, FactVersions(V2.po_versions, 11, 7, policy_revision=5)))
    earlier_revision = FactVersions(V2.po_versions, 11, 7, policy_revision=4)
    assert decide(Rematch(ID, PRICE, earlier_revision), state) == Blocked(PRICE, earlier_revision)


@pytest.mark.parametrize(
    "status",
    [InvoiceStatus.APPROVED_FOR_PAYMENT, InvoiceStatus.PAID, InvoiceStatus.CANCELLED, InvoiceStatus.DISPUTED],
)
def test_a_rematch_never_touches_an_invoice_past_matching(status: InvoiceStatus) -> None:
    refusal = refused(decide(Rematch(ID, PRICE, V3), in_status(status)), RefusalKind.PRECONDITION, "NOT_REMATCHABLE")
    assert refusal.metadata["status"] == status.value


def test_a_released_invoice_stays_released_while_only_overridden_reasons_apply() -> None:
    released = in_status(InvoiceStatus.RELEASED)
    changed = match_invoice(INVOICE, facts(price="9.50"), POLICY)  # still price_variance, other figures
    assert decide(Rematch(ID, changed, V3), released) == Blocked(changed, V3)
    after = given(*HISTORIES[InvoiceStatus.RELEASED], Blocked(changed, V3))
    assert after.status is InvoiceStatus.RELEASED
    assert after.release == RELEASED


def test_a_new_blocking_reason_ends_a_release() -> None:
    after = given(*HISTORIES[InvoiceStatus.RELEASED], Blocked(PRICE_AND_QUANTITY, V3))
    assert after.status is InvoiceStatus.BLOCKED
    assert after.release is None
    refused(decide(Approve(ID, "bob"), after), RefusalKind.PRECONDITION, "NOT_APPROVABLE")


# --- Release -----------------------------------------------------------------------------------------------


def test_a_person_releases_a_blocked_invoice_overriding_every_reason_in_force() -> None:
    state = given(submitted(PRICE_AND_QUANTITY))
    released = decide(Release(ID, "alice", "short delivery accepted"), state)
    assert released == Released("alice", "short delivery accepted", (Reason.PRICE_VARIANCE, Reason.QUANTITY_VARIANCE))
    assert isinstance(released, Released)
    assert given(submitted(PRICE_AND_QUANTITY), released).status is InvoiceStatus.RELEASED


def test_the_same_release_again_is_a_replay() -> None:
    assert decide(Release(ID, "alice", "price agreed by phone"), in_status(InvoiceStatus.RELEASED)) is None


@pytest.mark.parametrize("status", others(InvoiceStatus.BLOCKED))
def test_only_a_blocked_invoice_is_released(status: InvoiceStatus) -> None:
    refused(decide(Release(ID, "carol", "why not"), in_status(status)), RefusalKind.PRECONDITION, "NOT_BLOCKED")


@pytest.mark.parametrize(
    ("released_by", "reason", "code"),
    [("alice", " ", "REASON_REQUIRED"), ("", "ok", "RELEASED_BY_REQUIRED")],
)
def test_a_release_needs_a_person_and_a_reason(released_by: str, reason: str, code: str) -> None:
    state = in_status(InvoiceStatus.BLOCKED)
    refused(decide(Release(ID, released_by, reason), state), RefusalKind.INVALID, code)


# --- Approval ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [InvoiceStatus.MATCHED, InvoiceStatus.RELEASED])
def test_a_matched_or_released_invoice_is_approved(status: InvoiceStatus) -> None:
    assert decide(Approve(ID, "bob"), in_status(status)) == APPROVED


def test_the_same_approval_again_is_a_replay() -> None:
    assert decide(Approve(ID, "bob"), in_status(InvoiceStatus.APPROVED_FOR_PAYMENT)) is None


@pytest.mark.parametrize("status", others(InvoiceStatus.MATCHED, InvoiceStatus.RELEASED))
def test_nothing_else_is_approved(status: InvoiceStatus) -> None:
    refused(decide(Approve(ID, "dave"), in_status(status)), RefusalKind.PRECONDITION, "NOT_APPROVABLE")


def test_an_approval_needs_an_approver() -> None:
    refused(decide(Approve(ID, ""), in_status(InvoiceStatus.MATCHED)), RefusalKind.INVALID, "APPROVED_BY_REQUIRED")


# --- Payment -----------------------------------------------------------------------------------------------


def test_an_approved_invoice_is_paid_for_its_gross_amount() -> None:
    assert decide(PAYMENT, in_status(InvoiceStatus.APPROVED_FOR_PAYMENT)) == Paid("PAY-9", D("100.00"), "EUR", PAY_DAY)
    assert in_status(InvoiceStatus.PAID).payment == PAID


def test_a_payment_of_another_amount_is_refused_with_both_amounts() -> None:
    wrong = RecordPayment(ID, "PAY-9", D("99.99"), "EUR", PAY_DAY)
    refusal = refused(
        decide(wrong, in_status(InvoiceStatus.APPROVED_FOR_PAYMENT)),
        RefusalKind.PRECONDITION,
        "PAYMENT_AMOUNT_MISMATCH",
    )
    assert refusal.metadata["expected_amount"] == "100.00"
    assert refusal.metadata["paid_amount"] == "99.99"
    assert "100.00 EUR" in refusal.message
    assert "99.99" in refusal.message


def test_a_payment_in_another_currency_is_refused() -> None:
    wrong = RecordPayment(ID, "PAY-9", D("100"), "USD", PAY_DAY)
    refusal = refused(
        decide(wrong, in_status(InvoiceStatus.APPROVED_FOR_PAYMENT)),
        RefusalKind.PRECONDITION,
        "PAYMENT_AMOUNT_MISMATCH",
    )
    assert refusal.metadata["paid_currency"] == "USD"


def test_the_same_payment_twice_is_a_replay() -> None:
    assert decide(PAYMENT, in_status(InvoiceStatus.PAID)) is None


def test_another_payment_of_a_paid_invoice_is_refused() -> None:
    second = RecordPayment(ID, "PAY-10", D("100"), "EUR", PAY_DAY)
    refusal = refused(decide(second, in_status(InvoiceStatus.PAID)), RefusalKind.CONFLICT, "ALREADY_PAID")
    assert refusal.metadata["payment_reference"] == "PAY-9"


@pytest.mark.parametrize("status", others(InvoiceStatus.APPROVED_FOR_PAYMENT, InvoiceStatus.PAID))
def test_only_an_approved_invoice_is_paid(status: InvoiceStatus) -> None:
    refused(decide(PAYMENT, in_status(status)), RefusalKind.PRECONDITION, "NOT_APPROVED_FOR_PAYMENT")


def test_a_payment_needs_a_reference() -> None:
    payment = RecordPayment(ID, "", D("100"), "EUR", PAY_DAY)
    refused(
        decide(payment, in_status(InvoiceStatus.APPROVED_FOR_PAYMENT)),
        RefusalKind.INVALID,
        "PAYMENT_REFERENCE_REQUIRED",
    )


# --- Dispute and cancellation ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [InvoiceStatus.MATCHED, InvoiceStatus.BLOCKED])
def test_a_matched_or_blocked_invoice_is_disputed(status: InvoiceStatus) -> None:
    assert decide(Dispute(ID, "goods damaged"), in_status(status)) == Disputed("goods damaged")


def test_the_same_dispute_again_is_a_replay() -> None:
    assert decide(Dispute(ID, "wrong price"), in_status(InvoiceStatus.DISPUTED)) is None


@pytest.mark.parametrize("status", others(InvoiceStatus.MATCHED, InvoiceStatus.BLOCKED))
def test_nothing_else_is_disputed(status: InvoiceStatus) -> None:
    refused(decide(Dispute(ID, "other"), in_status(status)), RefusalKind.PRECONDITION, "NOT_DISPUTABLE")


def test_a_dispute_needs_a_reason() -> None:
    refused(decide(Dispute(ID, ""), in_status(InvoiceStatus.BLOCKED)), RefusalKind.INVALID, "REASON_REQUIRED")


@pytest.mark.parametrize("status", others(InvoiceStatus.PAID, InvoiceStatus.CANCELLED))
def test_an_unpaid_invoice_is_cancelled(status: InvoiceStatus) -> None:
    assert decide(Cancel(ID, "supplier withdrew it"), in_status(status)) == Cancelled("supplier withdrew it")


def test_a_paid_invoice_is_not_cancelled() -> None:
    refused(decide(Cancel(ID, "late"), in_status(InvoiceStatus.PAID)), RefusalKind.PRECONDITION, "INVOICE_PAID")


def test_the_same_cancellation_again_is_a_replay_another_is_refused() -> None:
    state = in_status(InvoiceStatus.CANCELLED)
    assert decide(Cancel(ID, "sent twice"), state) is None
    refused(decide(Cancel(ID, "other"), state), RefusalKind.PRECONDITION, "ALREADY_CANCELLED")


def test_a_cancellation_needs_a_reason() -> None:
    refused(decide(Cancel(ID, "  "), in_status(InvoiceStatus.MATCHED)), RefusalKind.INVALID, "REASON_REQUIRED")


# --- Folding -----------------------------------------------------------------------------------------------


def test_a_second_submission_and_events_before_one_are_not_folded() -> None:
    assert given(APPROVED) == INITIAL
    assert given(submitted(), submitted(AWAITING, "fp-2")).match == MATCHED


def test_fact_versions_compare_component_wise() -> None:
    assert V1.older_than(V2)
    assert V2.older_than(V3)
    assert V1.older_than(V3)
    assert not V2.older_than(V1)
    assert not V2.older_than(V2)
    assert not FactVersions((("PO-2", 1),)).older_than(V3)  # another PO: not comparable
    assert FactVersions((("PO-1", 1),)).older_than(FactVersions((("PO-1", 1), ("PO-2", 1))))


def test_fact_versions_older_on_any_component() -> None:
    assert V1.older_on_any(V2)
    assert not V2.older_on_any(V1)
    assert not V2.older_on_any(V2)
    mixed = FactVersions((("PO-1", 1),), receipt_sequence=12, invoice_sequence=3)
    assert mixed.older_on_any(V3)  # an older order version
    assert V3.older_on_any(mixed)  # an older receipt: each newer on one fact, so neither is older_than the other
    assert not mixed.older_than(V3)
    assert not V3.older_than(mixed)
    assert FactVersions((("PO-2", 1),), receipt_sequence=11).older_on_any(V3)  # PO-1, read by V3, not read
    assert not FactVersions(V2.po_versions, 11, policy_revision=1).older_on_any(FactVersions(V2.po_versions, 11, 0, 2))


# --- What the state remembers for the responses and the blocked list ---------------------------------------


def at(*events: InvoiceEvent, times: Sequence[int]) -> InvoiceState:
    """The state after ``events``, the n-th recorded at ``times[n]`` (epoch nanoseconds)."""
    state = INITIAL
    for sequence, (event, time) in enumerate(zip(events, times, strict=True), start=1):
        state = evolve(state, Recorded(event, sequence, f"e-{sequence}", time, f"k-{sequence}", "procurement"))
    return state


def test_a_release_records_the_person_and_the_system_and_a_replay_is_the_same_person_and_reason() -> None:
    state = given(submitted(PRICE))
    released = decide(Release(ID, "alice", "price agreed by phone", "ops-console"), state)
    assert released == Released("alice", "price agreed by phone", (Reason.PRICE_VARIANCE,), "ops-console")
    assert isinstance(released, Released)
    after = given(submitted(PRICE), released)
    assert after.release == released
    # The same person and reason through another system is the same release; another person is not.
    assert decide(Release(ID, "alice", "price agreed by phone", "procurement"), after) is None
    refused(
        decide(Release(ID, "bob", "price agreed by phone", "ops-console"), after),
        RefusalKind.PRECONDITION,
        "NOT_BLOCKED",
    )


def test_the_state_remembers_when_it_was_submitted_matched_and_blocked() -> None:
    state = at(submitted(AWAITING), Blocked(PRICE, V2), Matched(MATCHED, V3), times=(100, 200, 300))
    assert (state.submitted_at_ns, state.matched_at_ns, state.match_sequence) == (100, 300, 3)
    assert state.blocked_since_ns == 0
    still = at(submitted(AWAITING), Blocked(PRICE, V2), times=(100, 200))
    assert still.blocked_since_ns == 100  # blocked since the submission, whatever the reasons became
    assert still.match_sequence == still.exceptions_sequence == 2


def test_blocked_time_and_raised_exceptions_end_with_the_block() -> None:
    released = at(submitted(PRICE), RELEASED, times=(100, 200))
    assert released.blocked_since_ns == 0
    assert released.exceptions_sequence == 1  # the blocking match's exceptions stay the ones raised
    # A re-match the release covers raises nothing; one with a new reason blocks again, from its own time.
    covered = at(submitted(PRICE), RELEASED, Blocked(replace_figures(PRICE), V2), times=(100, 200, 300))
    assert covered.status is InvoiceStatus.RELEASED
    assert covered.exceptions_sequence == 0
    again = at(submitted(PRICE), RELEASED, Blocked(PRICE_AND_QUANTITY, V2), times=(100, 200, 300))
    assert again.status is InvoiceStatus.BLOCKED
    assert (again.blocked_since_ns, again.exceptions_sequence) == (300, 3)
    disputed = at(submitted(PRICE), Disputed("wrong price"), times=(100, 200))
    assert disputed.blocked_since_ns == 0
    assert at(submitted(), times=(100,)).exceptions_sequence == 0


def replace_figures(match: MatchResult) -> MatchResult:
    """The same reasons on other figures (a re-match on newer facts)."""
    return match_invoice(INVOICE, facts(price="8.00"), POLICY) if match == PRICE else match


@pytest.mark.parametrize("status", [InvoiceStatus.MATCHED, InvoiceStatus.RELEASED])
def test_a_payment_that_would_be_refused_is_refused_before_the_invoice_is_approved(status: InvoiceStatus) -> None:
    """The ERP's payment approves a matched or released invoice first: it is decided on the approved state before
    the approval is appended, so a refused payment leaves no approval behind."""
    state = in_status(status)
    without_reference = RecordPayment(ID, "", D("100"), "EUR", PAY_DAY)
    refused(
        payment_refused(Approve(ID, "erp"), without_reference, state), RefusalKind.INVALID, "PAYMENT_REFERENCE_REQUIRED"
    )
    wrong_amount = RecordPayment(ID, "PAY-9", D("99"), "EUR", PAY_DAY)
    refused(
        payment_refused(Approve(ID, "erp"), wrong_amount, state), RefusalKind.PRECONDITION, "PAYMENT_AMOUNT_MISMATCH"
    )
    assert payment_refused(Approve(ID, "erp"), PAYMENT, state) is None
    assert payment_refused(Approve(ID, "erp"), PAYMENT, in_status(InvoiceStatus.PAID)) is None  # a replay
    blocked = payment_refused(Approve(ID, "erp"), PAYMENT, in_status(InvoiceStatus.BLOCKED))
    refused(blocked, RefusalKind.PRECONDITION, "NOT_APPROVED_FOR_PAYMENT")
