"""What GetInvoice, SubmitInvoice and ListBlockedInvoices answer: the whole status from the folded state, and the
listing's and release's requests checked field by field (issue 11)."""

from __future__ import annotations

import dataclasses

import pytest
from google.protobuf import timestamp_pb2

from libs.runtime.decider import Recorded
from libs.runtime.errors import InvalidArgument
from services.invoice_status import events, mapping
from services.invoice_status.decider import (
    INITIAL,
    Blocked,
    FactVersions,
    InvoiceEvent,
    InvoiceState,
    InvoiceSubmitted,
    Released,
    evolve,
)
from services.invoice_status.domain import MatchResult, Reason
from services.invoice_status.findings import exception_id
from services.invoice_status.matching import match_invoice
from syncgov.invoice.v1 import invoice_pb2, invoice_service_pb2
from tests.unit.invoice_status.builders import POLICY, facts, invoice, line, po_line

SUBJECT = invoice(line(1, quantity="10", price="11.00"), number="INV-7", gross="200")  # 10% dear; totals off
EARLIER = invoice(line(1, quantity="10", price="10.00"), invoice_id="I-0", number="INV-7")
BLOCKED = match_invoice(SUBJECT, facts({("PO-1", 1): po_line(price="10.00")}), POLICY, earlier=[EARLIER])


def folded(*events: InvoiceEvent) -> InvoiceState:
    state = INITIAL
    for sequence, event in enumerate(events, start=11):
        state = evolve(state, Recorded(event, sequence, f"e{sequence}", sequence * 1_000_000_000, "k", "procurement"))
    return state


def submitted(match: MatchResult) -> InvoiceSubmitted:
    return InvoiceSubmitted(SUBJECT, "fp", "procurement:invoice:I-1", match, FactVersions())


@pytest.fixture(autouse=True)
def no_forms_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no match form kept (they are kept process-wide)."""
    monkeypatch.setattr(mapping, "MATCH_FORMS", mapping.MatchForms())


def test_a_submissions_event_and_its_answer_build_the_match_once(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[MatchResult] = []
    build = mapping.match_to_proto

    def counted(match: MatchResult, currency: str = "") -> invoice_pb2.InvoiceMatch:
        built.append(match)
        return build(match, currency)

    monkeypatch.setattr(mapping, "match_to_proto", counted)
    submission = submitted(BLOCKED)
    event = events.encode(SUBJECT.invoice_id, submission)
    status = mapping.status_message(folded(submission))
    assert built == [BLOCKED]
    whole = build(BLOCKED, "EUR")
    assert event.payload.match == whole  # type: ignore[attr-defined]
    assert list(status.line_results) == list(whole.lines)
    whole.ClearField("lines")
    assert status.match == whole
    kept = mapping.MATCH_FORMS.kept(BLOCKED, "EUR")
    assert kept is not None
    assert kept.lines


def test_an_answer_without_its_submissions_form_builds_the_same_status() -> None:
    """GetInvoice, a listing, a replay or an answer after a restart: no form is kept for the match."""
    submission = submitted(BLOCKED)
    built_here = mapping.status_message(folded(submission))
    events.encode(SUBJECT.invoice_id, submission)
    assert mapping.MATCH_FORMS.kept(BLOCKED, "EUR") is not None
    assert mapping.status_message(folded(submission)) == built_here


def test_a_rematchs_event_of_the_same_match_is_built_without_the_invoices_currency_and_not_kept() -> None:
    events.encode(SUBJECT.invoice_id, submitted(BLOCKED))
    rematched = events.encode(SUBJECT.invoice_id, Blocked(BLOCKED, FactVersions()))
    assert not rematched.payload.match.lines[0].HasField("po_unit_price")  # type: ignore[attr-defined]
    assert len(mapping.MATCH_FORMS) == 1
    status = mapping.status_message(folded(submitted(BLOCKED), Blocked(BLOCKED, FactVersions())))
    assert status.line_results[0].po_unit_price.currency_code == "EUR"


def test_the_match_forms_kept_are_bounded_by_entries_and_lines_and_told_apart_by_identity() -> None:
    forms = mapping.MatchForms(entries=3, lines=5)
    first = dataclasses.replace(BLOCKED)
    kept = forms.form(first, "EUR")
    assert forms.form(first, "EUR") is kept
    assert forms.kept(dataclasses.replace(BLOCKED), "EUR") is None  # an equal match is another match
    assert forms.kept(first, "") is None  # and another currency another form
    for _ in range(3):
        forms.form(dataclasses.replace(BLOCKED), "EUR")
    assert len(forms) == 3
    assert forms.kept(first, "EUR") is None  # the oldest went first
    wide = match_invoice(
        invoice(*(line(n, quantity="1", price="10.00") for n in range(1, 5))),
        facts({("PO-1", n): po_line(price="10.00") for n in range(1, 5)}),
        POLICY,
    )
    forms.form(wide, "EUR")  # 4 lines: the 1-line forms before it go until the lines fit
    assert forms.kept(wide, "EUR") is not None
    assert forms.lines <= 5
    assert len(forms) == 2
    wider = match_invoice(
        invoice(*(line(n, quantity="1", price="10.00") for n in range(1, 7))),
        facts({("PO-1", n): po_line(price="10.00") for n in range(1, 7)}),
        POLICY,
    )
    assert forms.form(wider, "EUR").lines
    assert forms.kept(wider, "EUR") is None
    assert forms.kept(wide, "EUR") is not None


def test_the_status_carries_the_whole_match_its_header_reasons_and_the_exceptions_raised() -> None:
    assert Reason.DUPLICATE_INVOICE in BLOCKED.header_reasons
    assert Reason.PRICE_VARIANCE in BLOCKED.reasons
    status = mapping.status_message(folded(submitted(BLOCKED)))
    assert status.state == invoice_pb2.INVOICE_STATE_BLOCKED
    whole = mapping.match_to_proto(BLOCKED, "EUR")
    whole.ClearField("lines")
    assert status.match == whole
    assert list(status.line_results) == [mapping.line_match_to_proto(line, "EUR") for line in BLOCKED.lines]
    assert not status.match.lines  # carried once, as line_results
    assert status.policy_revision == 0
    revised = InvoiceSubmitted(SUBJECT, "fp", "procurement:invoice:I-1", BLOCKED, FactVersions(policy_revision=7))
    assert mapping.status_message(folded(revised)).policy_revision == 7
    assert invoice_pb2.BLOCK_REASON_DUPLICATE_INVOICE in status.match.header_block_reasons
    assert [d.invoice_id for d in status.match.duplicates] == ["I-0"]
    assert status.match.header_checks
    assert status.submitted_at.seconds == status.matched_at.seconds == 11
    assert list(status.exception_ids) == [exception_id("I-1", reason, 11) for reason in BLOCKED.reasons]
    assert not status.HasField("release")


def test_a_release_shows_the_person_the_system_and_the_reason() -> None:
    release = Released("alice", "agreed by phone", BLOCKED.reasons, "ops-console")
    status = mapping.status_message(folded(submitted(BLOCKED), release))
    assert status.state == invoice_pb2.INVOICE_STATE_RELEASED
    assert status.release == invoice_pb2.InvoiceRelease(
        released_by="alice",
        released_through="ops-console",
        reason="agreed by phone",
        overridden=mapping.reasons_to_proto(BLOCKED.reasons),
    )
    assert list(status.exception_ids) == [exception_id("I-1", reason, 11) for reason in BLOCKED.reasons]
    # A later re-match the release covers raised nothing: no exception is claimed for it.
    covered = mapping.status_message(folded(submitted(BLOCKED), release, Blocked(BLOCKED, FactVersions())))
    assert covered.state == invoice_pb2.INVOICE_STATE_RELEASED
    assert list(covered.exception_ids) == []
    assert covered.matched_at.seconds == 13


@pytest.mark.parametrize(
    ("person", "problem"),
    [
        ("", "is required"),
        ("  ", "is required"),
        ("p" * 257, "at most"),
        ("j.doe\nreleased_by: ceo", "control"),  # a forged second line in an audit trail
        ("j.doe\u202egnp.exe", "control"),  # a right-to-left override
    ],
)
def test_a_release_names_a_bounded_person(person: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        mapping.released_by(person)
    assert [v.field for v in refused.value.violations] == ["released_by"]
    assert problem in next(iter(refused.value.violations)).description
    assert mapping.released_by(" alice ") == "alice"


def test_the_listing_filters_are_read_and_bad_ones_are_field_violations() -> None:
    before = timestamp_pb2.Timestamp(seconds=1_800_000_000, nanos=5)
    request = invoice_service_pb2.ListBlockedInvoicesRequest(
        reason=invoice_pb2.BLOCK_REASON_PRICE_VARIANCE, supplier_id=" SUP-1 ", blocked_before=before
    )
    assert mapping.blocked_filter(request) == mapping.BlockedFilter(
        Reason.PRICE_VARIANCE, "SUP-1", 1_800_000_000_000_000_005
    )
    assert mapping.blocked_filter(invoice_service_pb2.ListBlockedInvoicesRequest()) == mapping.BlockedFilter()
    bad = invoice_service_pb2.ListBlockedInvoicesRequest(
        reason=99,  # type: ignore[arg-type]
        supplier_id="S" * 300,
        blocked_before=timestamp_pb2.Timestamp(seconds=1, nanos=-1),
    )
    with pytest.raises(InvalidArgument) as refused:
        mapping.blocked_filter(bad)
    assert [v.field for v in refused.value.violations] == ["reason", "supplier_id", "blocked_before"]


def test_an_invoice_at_the_line_bound_is_answered_within_grpcs_message_limit() -> None:
    """Every line wide (a 256-character PO id, 6-decimal quantities at 9-decimal prices, a price and a quantity
    variance with their limits): the status of an invoice at the line bound stays inside the 4 MiB a gRPC client
    accepts, so SubmitInvoice and GetInvoice can answer any invoice the bounds let in (the hostile-input suite found
    the status of 5,000 lines over it; up to ~1 KiB a line at the widest makes the bound 3,000)."""
    from decimal import Decimal

    from services.invoice_status.domain import MAX_LINES

    po = "P" * 256
    quantity, price = "987654.123456", "123456.123456789"
    amount = str((Decimal(quantity) * Decimal(price)).quantize(Decimal("0.01")))
    numbers = range(1, MAX_LINES + 1)
    lines = [line(n, po=po, po_line=n, quantity=quantity, price=price, amount=amount, tax="1.01") for n in numbers]
    widest = invoice(*lines, invoice_id="I" * 256, number="N" * 256, tax=str(Decimal("1.01") * MAX_LINES))
    ordered = {(po, n): po_line(price="100000.123456789", ordered="987654") for n in numbers}
    match = match_invoice(widest, facts(ordered, received={(po, n): "900000.5" for n in numbers}), POLICY)
    assert {Reason.PRICE_VARIANCE, Reason.QUANTITY_VARIANCE} <= set(match.reasons)
    status = mapping.status_message(folded(InvoiceSubmitted(widest, "fp", "k", match, FactVersions())))
    assert len(status.line_results) == MAX_LINES
    assert status.ByteSize() < 0.9 * 4 * 1024 * 1024
