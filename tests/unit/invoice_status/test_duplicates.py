"""Duplicate invoices: one number however it is written, SAP's check key as the floor, and suspected duplicates
for a person."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import pytest

from services.invoice_status.domain import DUPLICATE_BY_CHECK_KEY, DUPLICATE_BY_NUMBER, MatchState, Reason
from services.invoice_status.duplicates import (
    LISTED,
    PREFIXES,
    find_duplicates,
    normalized_invoice_number,
    suspicion_window,
)
from services.invoice_status.matching import match_invoice
from tests.unit.invoice_status.builders import DAY, POLICY, D, facts, invoice, line


@pytest.mark.parametrize(
    "written",
    [
        "INV-00123",
        "inv 123",
        "INV00123",
        "Inv.No. 0123",
        "RE-123",
        "Rg.-Nr. 123",
        "FAC/000123",
        "FACT 123",
        "BILL #123",
        "No. 123",
        "NR:123",
        "  123  ",
        "\uff10\uff10\uff11\uff12\uff13",  # full-width digits 00123
        "INV-\u0661\u0662\u0663",  # Arabic-Indic digits 123
        "\uff29\uff2e\uff36-123",  # full-width letters INV
        "Invoice 123",
    ],
)
def test_one_number_however_it_is_written(written):
    assert normalized_invoice_number(written) == normalized_invoice_number("INV-00123") == "123"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("2024-001", "20241"),  # where a number is split stays significant
        ("REF 12", "12"),  # only the listed prefixes are dropped, and only as whole parts
        ("A-12", "B-12"),
        ("INV-12", "INV-120"),
        ("12-INV", "12"),  # only leading parts are prefixes
    ],
)
def test_different_numbers_stay_different(first, second):
    assert normalized_invoice_number(first) != normalized_invoice_number(second)


def test_separators_and_letter_digit_boundaries_do_not_matter():
    assert normalized_invoice_number("AB-2024/007") == normalized_invoice_number("ab 2024 7") == "ab-2024-7"
    assert normalized_invoice_number("AB2024-007") == "ab-2024-7"


def test_a_prefix_alone_is_the_number_and_a_number_without_letters_or_digits_is_empty():
    assert normalized_invoice_number("RE") == "re"
    assert normalized_invoice_number("INV NO") == "no"
    assert normalized_invoice_number("---") == ""
    assert {"inv", "re", "rg", "fac", "fact", "bill", "no", "nr"} <= PREFIXES


def test_same_supplier_and_number_written_otherwise_is_a_blocked_duplicate():
    earlier = invoice(line(), invoice_id="I-1", number="INV-00123")
    later = invoice(line(quantity="5"), invoice_id="I-2", number="inv 123", day=DAY + timedelta(days=40))
    result = match_invoice(later, facts(), POLICY, earlier=[earlier])
    assert result.state is MatchState.BLOCKED
    assert result.reasons == (Reason.DUPLICATE_INVOICE,)
    assert result.header_reasons == (Reason.DUPLICATE_INVOICE,)
    [duplicate] = result.duplicates
    assert (duplicate.invoice_id, duplicate.invoice_number, duplicate.rules) == (
        "I-1",
        "INV-00123",
        (DUPLICATE_BY_NUMBER,),
    )
    assert result.suspected_duplicates == ()


def test_another_suppliers_number_another_kind_and_the_invoice_itself_are_not_duplicates():
    document = invoice(line(), invoice_id="I-2", number="INV-123")
    others = [
        replace(document, invoice_id="I-1", supplier_id="SUP-2"),
        replace(document, invoice_id="C-1", credit_note=True, credited_invoice_id="I-0"),
        document,  # a re-match passes the invoice among the supplier's invoices
    ]
    found = find_duplicates(document, others)
    assert found.duplicates == ()
    assert found.suspected == ()


def test_an_identical_copy_is_a_duplicate_by_number_and_by_check_key():
    earlier = invoice(line(), invoice_id="I-1", number="INV-123")
    [duplicate] = find_duplicates(replace(earlier, invoice_id="I-2"), [earlier]).duplicates
    assert duplicate.rules == (DUPLICATE_BY_NUMBER, DUPLICATE_BY_CHECK_KEY)


def test_the_check_key_is_a_duplicate_whatever_normalization_makes_of_the_number():
    # A number with no letter or digit normalizes to nothing, which equals nothing: SAP's key still catches it.
    earlier = invoice(line(), invoice_id="I-1", number="--/--")
    copy = replace(earlier, invoice_id="I-2", invoice_number=" --/-- ")
    result = match_invoice(copy, facts(), POLICY, earlier=[earlier])
    assert result.reasons == (Reason.DUPLICATE_INVOICE,)
    assert [d.rules for d in result.duplicates] == [(DUPLICATE_BY_CHECK_KEY,)]
    # Every part of the key counts: another date, amount or currency is no check-key duplicate.
    for other in (
        replace(copy, invoice_date=DAY + timedelta(days=1)),
        replace(copy, gross_total=D("100.01")),
        replace(copy, currency="USD"),
        replace(copy, invoice_number="--/--/--"),
    ):
        assert find_duplicates(other, [earlier]).duplicates == ()


@pytest.mark.parametrize(("days", "suspected"), [(0, True), (3, True), (-7, True), (7, True), (8, False), (-30, False)])
def test_same_amount_close_dates_and_another_number_is_a_suspected_duplicate_not_a_block(days, suspected):
    earlier = invoice(line(), invoice_id="I-1", number="INV-500")
    later = invoice(line(), invoice_id="I-2", number="INV-501", day=DAY + timedelta(days=days))
    result = match_invoice(later, facts(), POLICY, earlier=[earlier])
    assert result.state is MatchState.MATCHED  # never blocked for a suspicion
    assert result.duplicates == ()
    assert result.needs_review is suspected
    if suspected:
        [suspect] = result.suspected_duplicates
        assert (suspect.invoice_id, suspect.invoice_number, suspect.days_apart) == ("I-1", "INV-500", abs(days))
    else:
        assert result.suspected_duplicates == ()


def test_how_many_days_apart_a_suspected_duplicate_may_be_is_a_parameter():
    earlier = invoice(line(), invoice_id="I-1", number="INV-500")
    later = invoice(line(), invoice_id="I-2", number="INV-501", day=DAY + timedelta(days=10))
    assert find_duplicates(later, [earlier]).suspected == ()
    assert len(find_duplicates(later, [earlier], within_days=10).suspected) == 1
    assert (
        len(match_invoice(later, facts(), POLICY, earlier=[earlier], suspect_within_days=10).suspected_duplicates) == 1
    )
    with pytest.raises(ValueError, match="negative"):
        find_duplicates(later, [earlier], within_days=-1)


def test_equal_numbers_are_a_duplicate_not_a_suspected_one():
    earlier = invoice(line(), invoice_id="I-1", number="INV-500")
    later = invoice(line(), invoice_id="I-2", number="inv 0500", day=DAY + timedelta(days=2))
    found = find_duplicates(later, [earlier])
    assert [d.invoice_id for d in found.duplicates] == ["I-1"]
    assert found.suspected == ()


def test_another_amount_or_currency_is_not_suspected():
    earlier = invoice(line(), invoice_id="I-1", number="INV-500")
    for later in (
        invoice(line(quantity="11"), invoice_id="I-2", number="INV-501"),
        invoice(line(), invoice_id="I-2", number="INV-501", currency="USD"),
    ):
        assert find_duplicates(later, [earlier]).suspected == ()


def test_a_match_names_at_most_ten_duplicates_and_the_nearest_ten_suspects():
    same_number = [invoice(line(), invoice_id=f"D-{n}", number="INV-7", day=DAY - timedelta(days=n)) for n in range(12)]
    found = find_duplicates(invoice(line(), invoice_id="I-9", number="inv 7"), same_number)
    assert [d.invoice_id for d in found.duplicates] == [f"D-{n}" for n in range(LISTED)]  # recorded first
    # Fifteen invoices of the same amount, one for each day around the later one's date, recorded in date order.
    around = [
        invoice(line(), invoice_id=f"S-{offset}", number=f"A-{offset}", day=DAY + timedelta(days=offset))
        for offset in range(-7, 8)
    ]
    suspects = find_duplicates(invoice(line(), invoice_id="I-9", number="B-1"), around).suspected
    assert len(suspects) == LISTED
    assert [s.days_apart for s in suspects] == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert [s.invoice_id for s in suspects[1:3]] == ["S-1", "S--1"]  # at the same distance, the latest recorded first


@pytest.mark.parametrize(
    ("day", "window"),
    [
        (DAY, (DAY - timedelta(days=7), DAY + timedelta(days=7))),
        (date.min + timedelta(days=3), (date.min, date.min + timedelta(days=10))),
        (date.max, (date.max - timedelta(days=7), date.max)),
    ],
)
def test_the_suspicion_window_stops_at_the_calendars_ends(day: date, window: tuple[date, date]) -> None:
    """The edge accepts any date of years 1-9999; a window past the calendar's ends answered INTERNAL."""
    assert suspicion_window(day) == window
    later = invoice(line(), invoice_id="I-9", number="B-1", day=day)
    at_the_edges = [invoice(line(), invoice_id=f"I-{n}", number=f"A-{n}", day=edge) for n, edge in enumerate(window)]
    assert {s.invoice_id for s in find_duplicates(later, at_the_edges).suspected} == {"I-0", "I-1"}
