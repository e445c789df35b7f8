"""Invoice values: currencies' minor units, tolerance sets, and the invoice's own validation."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from services.invoice_status.domain import (
    TolerancePolicy,
    Tolerances,
    is_iso_currency,
    minor_units,
    round_amount,
    validate_invoice,
)
from tests.unit.invoice_status.builders import D, invoice, line


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [("JPY", 0), ("KRW", 0), ("EUR", 2), ("USD", 2), ("CHF", 2), ("KWD", 3), ("BHD", 3), ("TND", 3), ("CLF", 4)],
)
def test_minor_units_follow_iso_4217(currency, exponent):
    assert is_iso_currency(currency)
    assert minor_units(currency) == exponent


def test_a_currency_without_minor_units_is_not_rounded():
    assert minor_units("XAU") is None
    assert round_amount(D("1.23456"), "XAU") == D("1.23456")


@pytest.mark.parametrize(
    ("amount", "currency", "rounded"),
    [("2.5", "JPY", "3"), ("1.005", "EUR", "1.01"), ("1.0045", "EUR", "1.00"), ("0.0005", "KWD", "0.001")],
)
def test_amounts_round_half_up(amount, currency, rounded):
    result = round_amount(D(amount), currency)
    assert result == D(rounded)
    assert result.as_tuple().exponent == D(rounded).as_tuple().exponent


def test_tolerance_fractions_are_computed_once_and_do_not_take_part_in_equality():
    tolerance = Tolerances(price_upper_percent=D("2.5"), quantity_lower_percent=D(10))
    assert (tolerance.price_upper_fraction, tolerance.quantity_lower_fraction) == (D("0.025"), D("0.10"))
    assert tolerance.price_lower_fraction == 1  # 100% by default
    assert replace(tolerance, small_difference=D(1)) != tolerance
    assert Tolerances(price_upper_percent=D("2.50")) == Tolerances(price_upper_percent=D("2.5"))
    policy = TolerancePolicy(tolerance, {"FOOD": Tolerances()})
    assert policy.for_unit("FOOD") == Tolerances()
    assert policy.for_unit("OTHER") is tolerance


def test_a_valid_invoice_has_no_problems():
    assert validate_invoice(invoice(line(1), line(2, po_line=2))) == []


def test_every_problem_of_an_invoice_is_listed_with_its_path():
    broken = replace(
        invoice(
            line(1, quantity="0"),
            line(1, po="", po_line=0, price="-1", amount="1"),
            replace(line(3), tax_amount=Decimal(-1)),
        ),
        invoice_id=" ",
        invoice_number="",
        currency="EURO",
        gross_total=D(-1),
        credited_invoice_id="I-0",
    )
    paths = [problem.field for problem in validate_invoice(broken)]
    assert paths == [
        "invoice.invoice_id",
        "invoice.invoice_number",
        "invoice.currency_code",
        "invoice.credited_invoice_id",
        "invoice.gross_total",
        "invoice.lines[0].quantity",
        "invoice.lines[1].line_number",
        "invoice.lines[1].po_id",
        "invoice.lines[1].po_line_number",
        "invoice.lines[1].unit_price",
        "invoice.lines[2].tax_amount",
    ]


def test_a_credit_note_names_the_invoice_it_credits_and_not_itself():
    credit = invoice(line(), invoice_id="C-1", credit_note=True)
    assert [p.field for p in validate_invoice(credit)] == ["invoice.credited_invoice_id"]
    assert [p.field for p in validate_invoice(replace(credit, credited_invoice_id="C-1"))] == [
        "invoice.credited_invoice_id"
    ]
    assert validate_invoice(replace(credit, credited_invoice_id="I-1")) == []


def test_an_invoice_without_lines_is_a_problem():
    assert [p.field for p in validate_invoice(replace(invoice(line()), lines=()))] == ["invoice.lines"]
