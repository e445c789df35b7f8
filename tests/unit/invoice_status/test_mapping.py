"""Invoices between the contract and the domain, and invoice events through a real envelope (issue 11).

Round trips go encode -> build_envelope -> serialized bytes -> parse_stored -> decode, so what a reader folds is
what the writer decided, field for field and exact to the last decimal.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal

import pytest
from google.protobuf import timestamp_pb2
from google.type import date_pb2, decimal_pb2, money_pb2

from libs.runtime.errors import InvalidArgument
from libs.runtime.events import StoredEvent, build_envelope, parse_stored
from services.invoice_status import events, mapping
from services.invoice_status.decider import (
    ApprovedForPayment,
    Blocked,
    Cancelled,
    Disputed,
    FactVersions,
    InvoiceEvent,
    InvoiceStatus,
    InvoiceSubmitted,
    Matched,
    Paid,
    Released,
)
from services.invoice_status.domain import Invoice, MatchResult, Reason
from services.invoice_status.matching import match_invoice
from syncgov.invoice.v1 import events_pb2, invoice_pb2
from tests.unit.invoice_status.builders import DAY, POLICY, facts, invoice, line, po_line

D = Decimal
FACTS = FactVersions(po_versions=(("PO-1", 3), ("PO-2", 1)), receipt_sequence=41, invoice_sequence=7)


def _invoice() -> Invoice:
    return invoice(
        line(1, quantity="10.5", price="10.123456789", amount="106.30", tax="20.197"),
        line(2, po="PO-2", quantity="3", price="7.50", tax="4.275"),
        tax="24.472",
    )


def _blocked_match() -> MatchResult:
    """Every kind of figure: a price over tolerance, an unknown line, a two-way line, an arithmetic error, a
    duplicate and a suspected duplicate."""
    subject = invoice(
        line(1, quantity="10", price="11.00"),  # 10% over the PO price
        line(2, po="PO-9", quantity="1", price="1.00"),  # unknown
        line(3, po="PO-2", quantity="4", price="2.50", amount="10.01"),  # arithmetic error, two-way
        number="INV-00123",
        gross="200",  # the lines add up to 121.01: beyond the small difference
    )
    earlier = [
        invoice(invoice_id="I-0", number="inv 123", gross="999"),
        invoice(invoice_id="I-S", number="OTHER-7", gross=str(subject.gross_total), day=date(2026, 3, 4)),
    ]
    the_facts = facts(
        {("PO-1", 1): po_line(), ("PO-2", 1): po_line(price="2.50", ordered="3", receipt_expected=False, unit="BU-2")}
    )
    return match_invoice(subject, the_facts, POLICY, earlier=earlier)


def _matched_match() -> MatchResult:
    return match_invoice(invoice(line(1, quantity="10", price="10.00")), facts(), POLICY)


def _round_trip(event: InvoiceEvent, invoice_id: str = "I-1") -> tuple[InvoiceEvent | None, str, str]:
    encoded = events.encode(invoice_id, event, workflow_key="PO-7")
    envelope = build_envelope(encoded, timestamp_pb2.Timestamp(seconds=1_700_000_000))
    stored = parse_stored("SG_INVOICE", 5, f"sg.invoice.{invoice_id}.{encoded.name}", {}, envelope.SerializeToString())
    return events.decode(stored), encoded.name, stored.envelope.workflow_key


def test_every_decider_event_survives_the_envelope() -> None:
    subject = _invoice()
    blocked = _blocked_match()
    cases: list[tuple[InvoiceEvent, str]] = [
        (
            InvoiceSubmitted(
                subject,
                "f" * 64,
                "key-1",
                replace(blocked, invoice_id="I-1"),
                FACTS,
                mapping.invoice_to_proto(subject),
            ),
            "submitted",
        ),
        (Matched(_matched_match(), FACTS), "matched"),
        (Blocked(blocked, FACTS), "blocked"),
        (
            Released("alice", "price agreed by phone", (Reason.PRICE_VARIANCE, Reason.UNKNOWN_PO_LINE), "ops-console"),
            "released",
        ),
        (ApprovedForPayment("bob"), "approved"),
        (Paid("PAY-1", D("130.802"), "EUR", date(2026, 4, 1)), "paid"),
        (Disputed("wrong goods"), "disputed"),
        (Cancelled("sent twice"), "cancelled"),
    ]
    for event, name in cases:
        decoded, encoded_name, _ = _round_trip(event)
        assert encoded_name == name
        assert decoded == event, name


def test_a_submission_without_its_document_decodes_to_the_contract_form() -> None:
    subject = _invoice()
    event = InvoiceSubmitted(subject, "f" * 64, "key-1", _matched_match(), FACTS)
    decoded, _, workflow_key = _round_trip(event)
    assert decoded == replace(event, document=mapping.invoice_to_proto(subject))
    assert isinstance(decoded, InvoiceSubmitted)
    assert decoded.invoice.lines[0].unit_price == D("10.123456789")
    assert decoded.invoice.lines[1].tax_amount == D("4.275")
    assert workflow_key == "PO-1"  # the first line's PO, not the caller's


def test_workflow_key_and_keys() -> None:
    blocked = events.encode("I-1", Blocked(_blocked_match(), FACTS))
    assert (blocked.domain, blocked.workflow_key, blocked.object_key) == ("invoice", "PO-1", "I-1")
    released = events.encode("I-1", Released("alice", "ok", (Reason.PRICE_VARIANCE,)), workflow_key="PO-1")
    assert released.workflow_key == "PO-1"
    again = events.encode("I-1", Released("alice", "ok", (Reason.PRICE_VARIANCE,)), workflow_key="PO-1")
    other = events.encode("I-1", Released("alice", "other", (Reason.PRICE_VARIANCE,)), workflow_key="PO-1")
    assert released.idempotency_key == again.idempotency_key != other.idempotency_key
    submitted = events.encode("I-1", InvoiceSubmitted(_invoice(), "ab", "key-9", _matched_match(), FACTS))
    assert (submitted.idempotency_key, submitted.content_sha256) == ("key-9", "ab")


def test_a_foreign_or_unreadable_event_decodes_to_none() -> None:
    encoded = events.encode("I-1", Disputed("x"))
    envelope = build_envelope(encoded, timestamp_pb2.Timestamp(seconds=1))
    assert events.decode(parse_stored("S", 1, "sg.invoice.I-1.other", {}, envelope.SerializeToString())) is None
    # a disputed payload on the paid subject cannot be read: left out, not raised
    assert events.decode(parse_stored("S", 2, "sg.invoice.I-1.paid", {}, envelope.SerializeToString())) is None


def _stored(event: InvoiceEvent, subject_name: str | None = None) -> StoredEvent:
    encoded = events.encode("I-1", event, workflow_key="PO-7")
    envelope = build_envelope(encoded, timestamp_pb2.Timestamp(seconds=1))
    return parse_stored("S", 3, f"sg.invoice.I-1.{subject_name or encoded.name}", {}, envelope.SerializeToString())


def test_a_submission_tells_whether_it_matched_without_decoding() -> None:
    """The re-match consumer skips decoding a submission that blocked nothing (most of them) by this flag."""
    matched = _stored(InvoiceSubmitted(_invoice(), "ab", "key-9", _matched_match(), FACTS))
    blocked = _stored(InvoiceSubmitted(_invoice(), "ab", "key-9", _blocked_match(), FACTS))
    assert events.submission_matched(matched) is True
    assert events.submission_matched(blocked) is False
    assert events.submission_matched(_stored(Matched(_matched_match(), FACTS))) is False  # not a submission
    assert events.submission_matched(_stored(Disputed("x"), "submitted")) is False  # unreadable as a submission


def _document() -> invoice_pb2.Invoice:
    return mapping.invoice_to_proto(_invoice())


def test_contract_to_domain_is_exact() -> None:
    document = _document()
    assert mapping.valid_invoice(document) == _invoice()
    document.lines[0].quantity.value = "10.500000"
    document.lines[1].ClearField("tax_amount")
    converted = mapping.valid_invoice(document)
    assert converted.lines[0].quantity == D("10.5")
    assert converted.lines[1].tax_amount is None
    assert converted.net_total == D("128.80")
    assert converted.gross_total == D("153.272")


def test_bad_decimals_money_and_dates_are_field_violations() -> None:
    document = _document()
    document.invoice_date.CopyFrom(date_pb2.Date(year=2026, month=2, day=30))
    document.lines[0].quantity.CopyFrom(decimal_pb2.Decimal(value="ten"))
    document.lines[1].unit_price.CopyFrom(money_pb2.Money(currency_code="EUR", units=1, nanos=-5))
    document.lines[1].line_amount.currency_code = "USD"
    document.ClearField("net_amount")
    document.ClearField("total_amount")
    with pytest.raises(InvalidArgument) as caught:
        mapping.valid_invoice(document)
    fields = {violation.field: violation.description for violation in caught.value.violations}
    assert set(fields) == {
        "invoice.invoice_date",
        "invoice.lines[0].quantity",
        "invoice.lines[1].unit_price",
        "invoice.lines[1].line_amount",
        "invoice.net_amount",
        "invoice.total_amount",
    }
    assert "calendar date" in fields["invoice.invoice_date"]
    assert "not a decimal" in fields["invoice.lines[0].quantity"]
    assert "same sign" in fields["invoice.lines[1].unit_price"]
    assert "USD" in fields["invoice.lines[1].line_amount"]


def test_missing_date_and_quantity_and_domain_rules_are_field_violations() -> None:
    document = _document()
    document.ClearField("invoice_date")
    document.lines[0].ClearField("quantity")
    _, problems = mapping.to_domain(document)
    assert {p.field for p in problems} == {"invoice.invoice_date", "invoice.lines[0].quantity"}
    document = _document()
    document.supplier_id = ""
    document.credited_invoice_id = "I-0"
    with pytest.raises(InvalidArgument) as caught:
        mapping.valid_invoice(document)
    assert {v.field for v in caught.value.violations} == {"invoice.supplier_id", "invoice.credited_invoice_id"}


def test_match_result_maps_to_line_results() -> None:
    match = _blocked_match()
    message = mapping.match_to_proto(match, "EUR")
    assert not message.matched
    assert list(message.header_block_reasons) == [
        invoice_pb2.BLOCK_REASON_DUPLICATE_INVOICE,
        invoice_pb2.BLOCK_REASON_ARITHMETIC_ERROR,
    ]
    first, unknown, two_way = message.lines
    assert list(first.block_reasons) == [invoice_pb2.BLOCK_REASON_PRICE_VARIANCE]
    assert (first.price.expected.value, first.price.actual.value) == ("10.00", "11.00")
    assert first.price.variance_amount.value == "10.00"
    assert D(first.price.variance_percent.value) == D(10)
    assert first.price.limit.text == "upper percent 2 (up to 10.2)"
    assert not first.price.within
    assert first.po_unit_price == money_pb2.Money(currency_code="EUR", units=10)
    assert first.basis == invoice_pb2.MATCH_BASIS_THREE_WAY
    assert (first.quantity.basis, first.quantity.cumulative.value, first.quantity.expected.value) == (
        "received",
        "10",
        "100",
    )
    assert first.received_quantity.value == "100"
    assert list(unknown.block_reasons) == [invoice_pb2.BLOCK_REASON_UNKNOWN_PO_LINE]
    assert not unknown.HasField("price")
    assert not unknown.HasField("quantity")
    assert unknown.po_version == 0
    assert two_way.basis == invoice_pb2.MATCH_BASIS_TWO_WAY
    assert (two_way.quantity.basis, two_way.quantity.expected.value) == ("ordered", "3")
    assert not two_way.HasField("received_quantity")
    assert list(two_way.block_reasons) == [
        invoice_pb2.BLOCK_REASON_QUANTITY_VARIANCE,
        invoice_pb2.BLOCK_REASON_ARITHMETIC_ERROR,
    ]
    assert (two_way.stated_amount.value, two_way.computed_amount.value) == ("10.01", "10.00")
    assert [(d.invoice_id, list(d.rules)) for d in message.duplicates] == [("I-0", ["invoice_number"])]
    assert [(s.invoice_id, s.days_apart) for s in message.suspected_duplicates] == [("I-S", 2)]
    assert mapping.match_from_proto(message) == match


def test_states_and_reasons_cover_the_domain() -> None:
    for reason in Reason:
        assert mapping.reason_from_proto(mapping.reason_to_proto(reason)) is reason
    numbers = {mapping.status_to_proto(status) for status in InvoiceStatus}
    assert len(numbers) == len(InvoiceStatus)
    assert mapping.status_to_proto(InvoiceStatus.RELEASED) == invoice_pb2.INVOICE_STATE_RELEASED
    for status in InvoiceStatus:
        assert mapping.status_from_proto(mapping.status_to_proto(status)) is status
    with pytest.raises(ValueError, match="not a known reason"):
        mapping.reason_from_proto(invoice_pb2.BLOCK_REASON_UNSPECIFIED)


def test_paid_event_is_exact_money() -> None:
    decoded, _, _ = _round_trip(Paid("PAY-2", D("0.000000001"), "KWD", DAY))
    assert decoded == Paid("PAY-2", D("0.000000001"), "KWD", DAY)
    encoded = events.encode("I-1", Paid("PAY-2", D("12.5"), "EUR", DAY))
    assert isinstance(encoded.payload, events_pb2.InvoicePaid)
    assert encoded.payload.amount == money_pb2.Money(currency_code="EUR", units=12, nanos=500_000_000)
