"""The three-way match as a pure function: given the invoice and the facts at match time, then the result."""

from __future__ import annotations

from dataclasses import replace
from decimal import ROUND_HALF_UP, Context, localcontext
from pathlib import Path

import pytest

from libs.policy.engine import Policy
from services.invoice_status.domain import (
    MatchState,
    Reason,
    ReceivedFacts,
    TolerancePolicy,
    Tolerances,
    tolerances_in_force,
)
from services.invoice_status.matching import invoiced_quantities, match_invoice
from tests.unit.invoice_status.builders import POLICY, TOLERANCE, D, facts, invoice, line, po_line

ROOT = Path(__file__).resolve().parents[3]
KEY = ("PO-1", 1)


def only_line(result):
    [matched_line] = result.lines
    return matched_line


# --- Exact match ---------------------------------------------------------------------------------------------


def test_an_invoice_agreeing_with_po_and_receipt_is_matched_with_its_figures():
    result = match_invoice(invoice(line(quantity="10", price="10.00")), facts(), POLICY)
    assert result.state is MatchState.MATCHED
    assert result.matched
    assert result.reasons == ()
    checked = only_line(result)
    assert checked.matched
    assert (checked.po_version, checked.business_unit, checked.two_way) == (3, "BU-1", False)
    assert checked.amount.within
    assert checked.amount.computed == D("100.00")
    price = checked.price
    assert price is not None
    assert (price.expected, price.actual, price.variance, price.variance_amount) == (D(10), D(10), 0, 0)
    assert price.variance_percent == 0
    # At no variance the limit in force is reported: 2% of 10.00 binds before 50.00 / 10 units.
    assert (price.limit.side, price.limit.basis, price.limit.value, price.limit.bound) == (
        "upper",
        "percent",
        2,
        D("10.2"),
    )
    quantity = checked.quantity
    assert quantity is not None
    assert (quantity.expected, quantity.basis, quantity.invoiced, quantity.actual) == (D(100), "received", D(10), D(10))
    assert (quantity.limit.side, quantity.limit.bound) == ("lower", 0)
    assert [check.name for check in result.header] == ["net", "gross"]
    assert result.accepted_small_differences == ()
    assert not result.needs_review


# --- Price: percentage and absolute limits, upper and lower ----------------------------------------------------


@pytest.mark.parametrize(("price", "within"), [("10.19", True), ("10.20", True), ("10.21", False), ("12.00", False)])
def test_price_inside_and_outside_the_percentage_tolerance(price, within):
    result = match_invoice(invoice(line(quantity="10", price=price)), facts(), POLICY)
    checked = only_line(result)
    assert checked.price is not None
    assert checked.price.within is within
    assert checked.price.limit.basis == "percent"
    assert checked.price.limit.bound == D("10.20")
    if within:
        assert result.state is MatchState.MATCHED
    else:
        assert result.reasons == (Reason.PRICE_VARIANCE,)
        assert checked.reasons == (Reason.PRICE_VARIANCE,)


def test_an_absolute_limit_binds_before_the_percentage_on_a_large_line():
    # The shipped default: 2% or 5.00 of line value. 10.01 is 0.1% above 10.00, but on 1,000 units that is 10.00.
    tight = TolerancePolicy(replace(TOLERANCE, price_upper_absolute=D("5.00")))
    blocked = match_invoice(invoice(line(quantity="1000", price="10.01")), facts(received={KEY: "1000"}), tight)
    price = only_line(blocked).price
    assert price is not None
    assert blocked.reasons == (Reason.PRICE_VARIANCE,)
    assert price.variance_percent == D("0.1")
    assert price.variance_amount == D("10.00")
    assert (price.limit.side, price.limit.basis, price.limit.value) == ("upper", "absolute", D("5.00"))
    assert price.limit.bound == D("10.005")  # 5.00 over 1,000 units
    at_the_limit = match_invoice(invoice(line(quantity="1000", price="10.005")), facts(received={KEY: "1000"}), tight)
    assert at_the_limit.state is MatchState.MATCHED
    # On 10 units the same price is 0.10 of line value: the percentage binds, and it passes.
    small = match_invoice(invoice(line(quantity="10", price="10.01")), facts(), tight)
    assert small.state is MatchState.MATCHED
    assert only_line(small).price.limit.basis == "percent"


def test_lower_price_limits_percentage_and_absolute():
    percent = TolerancePolicy(replace(TOLERANCE, price_lower_percent=D(10)))
    blocked = match_invoice(invoice(line(quantity="10", price="8.99")), facts(), percent)
    assert blocked.reasons == (Reason.PRICE_VARIANCE,)
    price = only_line(blocked).price
    assert price is not None
    assert (price.limit.side, price.limit.basis, price.limit.bound) == ("lower", "percent", D("9.00"))
    assert match_invoice(invoice(line(quantity="10", price="9.00")), facts(), percent).matched

    absolute = TolerancePolicy(replace(TOLERANCE, price_lower_absolute=D(5)))
    blocked = match_invoice(invoice(line(quantity="100", price="9.90")), facts(), absolute)
    assert blocked.reasons == (Reason.PRICE_VARIANCE,)
    price = only_line(blocked).price
    assert price is not None
    assert (price.limit.side, price.limit.basis, price.limit.bound) == ("lower", "absolute", D("9.95"))
    assert match_invoice(invoice(line(quantity="100", price="9.95")), facts(), absolute).matched


def test_the_policy_default_blocks_any_lower_price_since_its_lower_absolute_is_zero():
    strict = TolerancePolicy(Tolerances())
    result = match_invoice(invoice(line(price="9.99")), facts(), strict)
    assert result.reasons == (Reason.PRICE_VARIANCE,)


@pytest.mark.parametrize(
    ("po_price", "price", "percent"),
    [
        ("10.00", "10.01", "0.1"),
        ("3.00", "3.01", "0.333333"),
        ("3.00", "2.99", "-0.333333"),
        ("6.00", "6.01", "0.166667"),  # 0.1666..: half up
        ("6.00", "5.99", "-0.166667"),  # away from zero below the PO price too
        ("8.00", "8.00001", "0.000125"),
        ("16.00", "16.00001", "0.000063"),  # 0.0000625 exactly: half up
        ("16.00", "15.99999", "-0.000063"),
    ],
)
def test_the_price_variance_percentage_is_rounded_half_up_to_six_decimals(po_price, price, percent):
    result = match_invoice(
        invoice(line(quantity="1", price=price)), facts({KEY: po_line(price=po_price)}), TolerancePolicy(Tolerances())
    )
    assert only_line(result).price.variance_percent == D(percent)


def test_a_zero_po_price_blocks_any_invoiced_price_and_has_no_percentage():
    result = match_invoice(invoice(line(price="0.01")), facts({KEY: po_line(price="0")}), POLICY)
    assert result.reasons == (Reason.PRICE_VARIANCE,)
    assert only_line(result).price.variance_percent is None
    assert match_invoice(invoice(line(price="0")), facts({KEY: po_line(price="0")}), POLICY).matched


def test_a_business_units_own_tolerance_applies_to_its_lines():
    policy = TolerancePolicy(TOLERANCE, {"FOOD": replace(TOLERANCE, price_upper_percent=D(5))})
    food = facts({KEY: po_line(unit="FOOD")})
    assert match_invoice(invoice(line(price="10.40")), food, policy).matched
    assert match_invoice(invoice(line(price="10.40")), facts(), policy).reasons == (Reason.PRICE_VARIANCE,)


# --- Quantity: cumulative against received (three-way) or ordered (two-way) ------------------------------------


def test_lower_quantity_limit():
    policy = TolerancePolicy(replace(TOLERANCE, quantity_lower_percent=D(10)))
    blocked = match_invoice(invoice(line(quantity="89")), facts(), policy)
    assert blocked.reasons == (Reason.QUANTITY_VARIANCE,)
    quantity = only_line(blocked).quantity
    assert quantity is not None
    assert (quantity.limit.side, quantity.limit.value, quantity.limit.bound) == ("lower", 10, D(90))
    assert quantity.variance == -11
    assert quantity.variance_percent == -11
    assert match_invoice(invoice(line(quantity="90")), facts(), policy).matched


def test_upper_quantity_limit():
    policy = TolerancePolicy(replace(TOLERANCE, quantity_upper_percent=D(5)))
    assert match_invoice(invoice(line(quantity="105")), facts(), policy).matched
    blocked = match_invoice(invoice(line(quantity="106")), facts(), policy)
    assert blocked.reasons == (Reason.QUANTITY_VARIANCE,)
    quantity = only_line(blocked).quantity
    assert quantity is not None
    assert (quantity.limit.side, quantity.limit.bound) == ("upper", D(105))


def test_cumulative_over_invoicing_across_two_invoices_blocks_the_second():
    first = invoice(line(quantity="60"), invoice_id="I-1", number="A-1")
    second = invoice(line(quantity="50"), invoice_id="I-2", number="A-2")
    assert match_invoice(first, facts(), POLICY).matched
    assert match_invoice(second, facts(), POLICY).matched  # on its own it fits
    others = invoiced_quantities([first], excluding="I-2")
    assert others == {KEY: D(60)}
    result = match_invoice(second, facts(others=others), POLICY)
    assert result.reasons == (Reason.QUANTITY_VARIANCE,)
    quantity = only_line(result).quantity
    assert quantity is not None
    assert (quantity.invoiced, quantity.invoiced_by_others, quantity.actual, quantity.expected) == (50, 60, 110, 100)
    assert quantity.limit.bound == 100


def test_two_lines_of_one_invoice_on_one_po_line_count_together():
    result = match_invoice(invoice(line(1, quantity="60"), line(2, quantity="50")), facts(), POLICY)
    assert [checked.quantity.actual if checked.quantity else None for checked in result.lines] == [110, 110]
    assert [checked.reasons for checked in result.lines] == [(Reason.QUANTITY_VARIANCE,)] * 2


def test_a_credit_note_reduces_the_invoiced_quantity():
    first = invoice(line(quantity="60"), invoice_id="I-1", number="A-1")
    second = invoice(line(quantity="50"), invoice_id="I-2", number="A-2")
    credit = invoice(line(quantity="10"), invoice_id="C-1", number="CN-1", credit_note=True, credits="I-2")
    assert invoiced_quantities([first, second, credit]) == {KEY: D(100)}
    result = match_invoice(credit, facts(others=invoiced_quantities([first, second])), POLICY)
    assert result.matched
    quantity = only_line(result).quantity
    assert quantity is not None
    assert (quantity.invoiced, quantity.actual) == (-10, 100)
    # Re-matched after the credit note, the second invoice fits: 60 + 50 - 10 against 100 received.
    again = match_invoice(second, facts(others=invoiced_quantities([first, credit])), POLICY)
    assert again.matched


def test_a_credit_note_crediting_more_than_was_invoiced_is_blocked():
    credit = invoice(line(quantity="10"), invoice_id="C-1", number="CN-1", credit_note=True, credits="I-1")
    result = match_invoice(credit, facts(others={KEY: D(5)}), POLICY)
    assert result.reasons == (Reason.QUANTITY_VARIANCE,)
    assert only_line(result).quantity.actual == -5


def test_a_credit_note_swaps_the_price_limits():
    # Crediting below the PO price gives back less: the upper limits (2%) guard it.
    below = invoice(line(price="9.70"), invoice_id="C-1", number="CN-1", credit_note=True, credits="I-1")
    result = match_invoice(below, facts(others={KEY: D(10)}), POLICY)
    assert result.reasons == (Reason.PRICE_VARIANCE,)
    price = only_line(result).price
    assert price is not None
    assert (price.limit.side, price.limit.bound) == ("upper", D("9.80"))
    above = replace(below, lines=(line(price="10.30"),), net_total=D("103.00"), gross_total=D("103.00"))
    assert match_invoice(above, facts(others={KEY: D(10)}), POLICY).matched


def test_a_credit_note_never_awaits_a_receipt():
    credit = invoice(line(quantity="10"), invoice_id="C-1", number="CN-1", credit_note=True, credits="I-1")
    assert match_invoice(credit, facts(received={}, others={KEY: D(10)}), POLICY).matched


def test_two_way_match_compares_with_the_ordered_quantity_and_needs_no_receipt():
    service = facts({KEY: po_line(receipt_expected=False, ordered="100")}, received={})
    result = match_invoice(invoice(line(quantity="100")), service, POLICY)
    assert result.matched
    checked = only_line(result)
    assert checked.two_way
    assert checked.quantity is not None
    assert (checked.quantity.basis, checked.quantity.expected) == ("ordered", 100)
    over = match_invoice(invoice(line(quantity="101")), service, POLICY)
    assert over.reasons == (Reason.QUANTITY_VARIANCE,)


def test_nothing_received_yet_is_awaiting_receipt_until_the_receipt_lands():
    waiting = match_invoice(invoice(line(quantity="10")), facts(received={}), POLICY)
    assert waiting.reasons == (Reason.AWAITING_RECEIPT,)
    assert only_line(waiting).quantity is None
    assert only_line(waiting).price is not None  # the price is checked all the same
    zero = facts(received={KEY: "0"})
    assert match_invoice(invoice(line(quantity="10")), zero, POLICY).reasons == (Reason.AWAITING_RECEIPT,)
    assert match_invoice(invoice(line(quantity="10")), facts(received={KEY: "10"}), POLICY).matched


def test_goods_received_and_all_returned_is_a_quantity_variance_not_awaiting_receipt():
    returned = facts(received={KEY: "10"}, returned={KEY: "10"})
    result = match_invoice(invoice(line(quantity="10")), returned, POLICY)
    assert result.reasons == (Reason.QUANTITY_VARIANCE,)
    assert only_line(result).quantity.expected == 0
    assert ReceivedFacts(D(10), D(4)).net == 6


# --- The facts: unknown line, cancelled order, currency --------------------------------------------------------


@pytest.mark.parametrize(("po", "po_line_number"), [("PO-1", 2), ("PO-9", 1)])
def test_an_unknown_po_or_line_blocks_and_nothing_else_is_checked(po, po_line_number):
    result = match_invoice(invoice(line(po=po, po_line=po_line_number)), facts(), POLICY)
    assert result.reasons == (Reason.UNKNOWN_PO_LINE,)
    checked = only_line(result)
    assert (checked.po_version, checked.price, checked.quantity) == (0, None, None)


def test_a_cancelled_po_blocks():
    result = match_invoice(invoice(line()), facts({KEY: po_line(cancelled=True)}), POLICY)
    assert result.reasons == (Reason.PO_CANCELLED,)


def test_a_currency_other_than_the_pos_blocks_and_skips_the_price_check():
    result = match_invoice(invoice(line(price="99.00")), facts({KEY: po_line(currency="USD")}), POLICY)
    assert result.reasons == (Reason.CURRENCY_MISMATCH,)
    checked = only_line(result)
    assert checked.price is None
    assert checked.quantity is not None


# --- Arithmetic, rounding, the small difference ----------------------------------------------------------------


def test_a_line_amount_that_is_not_quantity_times_price_is_an_arithmetic_error():
    result = match_invoice(invoice(line(quantity="10", price="10.00", amount="100.01")), facts(), POLICY)
    assert result.reasons == (Reason.ARITHMETIC_ERROR,)
    checked = only_line(result)
    assert checked.reasons == (Reason.ARITHMETIC_ERROR,)
    assert (checked.amount.computed, checked.amount.difference) == (D("100.00"), D("0.01"))
    assert result.header_reasons == ()  # the totals agree with the stated line amount


def test_a_net_total_that_is_not_the_sum_of_the_lines_is_an_arithmetic_error():
    result = match_invoice(invoice(line(1), line(2, po_line=1, quantity="5"), net="152.00"), facts(), POLICY)
    assert result.reasons == (Reason.ARITHMETIC_ERROR,)
    assert result.header_reasons == (Reason.ARITHMETIC_ERROR,)
    assert all(checked.matched for checked in result.lines)
    [net] = [check for check in result.header if check.name == "net"]
    assert (net.stated, net.computed, net.difference, net.within) == (D(152), D(150), D(2), False)


def test_a_gross_total_that_is_not_net_plus_tax_is_an_arithmetic_error():
    result = match_invoice(invoice(line(), tax="19.00", gross="121.00"), facts(), POLICY)
    assert result.header_reasons == (Reason.ARITHMETIC_ERROR,)
    [gross] = [check for check in result.header if check.name == "gross"]
    assert (gross.computed, gross.difference) == (D("119.00"), D(2))


def test_a_tax_total_that_is_not_the_sum_of_line_taxes_is_an_arithmetic_error():
    result = match_invoice(invoice(line(tax="19.00"), tax="21.00"), facts(), POLICY)
    assert result.header_reasons == (Reason.ARITHMETIC_ERROR,)
    [tax] = [check for check in result.header if check.name == "tax"]
    assert (tax.stated, tax.computed) == (D(21), D(19))
    # Tax stated on the header alone is checked only for net + tax = gross.
    assert match_invoice(invoice(line(), tax="21.00"), facts(), POLICY).matched


@pytest.mark.parametrize(
    ("net", "accepted"), [("100.99", True), ("101.00", True), ("99.00", True), ("101.01", False), ("98.99", False)]
)
def test_a_header_difference_up_to_the_small_difference_is_accepted_and_reported(net, accepted):
    result = match_invoice(invoice(line(), net=net), facts(), POLICY)
    if accepted:
        assert result.state is MatchState.MATCHED
        [small] = result.accepted_small_differences
        assert (small.name, small.difference, small.small_difference) == ("net", D(net) - 100, D("1.00"))
    else:
        assert result.reasons == (Reason.ARITHMETIC_ERROR,)
        assert result.accepted_small_differences == ()


def test_without_a_small_difference_any_header_difference_blocks():
    result = match_invoice(
        invoice(line(), net="100.01"), facts(), TolerancePolicy(replace(TOLERANCE, small_difference=D(0)))
    )
    assert result.reasons == (Reason.ARITHMETIC_ERROR,)


def test_the_strictest_small_difference_of_the_invoices_business_units_applies():
    policy = TolerancePolicy(TOLERANCE, {"FOOD": replace(TOLERANCE, small_difference=D("0.10"))})
    two_units = facts({KEY: po_line(), ("PO-2", 1): po_line(unit="FOOD")}, received={KEY: "100", ("PO-2", 1): "100"})
    document = invoice(line(1), line(2, po="PO-2"), net="200.50")
    assert match_invoice(document, two_units, policy).reasons == (Reason.ARITHMETIC_ERROR,)
    assert match_invoice(
        replace(document, lines=document.lines[:1], net_total=D("100.50"), gross_total=D("100.50")), two_units, policy
    ).matched


@pytest.mark.parametrize(
    ("currency", "quantity", "price", "amount", "exact"),
    [
        ("JPY", "3", "333.5", "1001", True),  # 1000.5 yen rounds half up to 1001
        ("JPY", "3", "333.5", "1000", False),
        ("JPY", "3", "333.5", "1000.5", False),  # the yen has no minor unit
        ("EUR", "3", "0.335", "1.01", True),  # 1.005 rounds half up (half-even would give 1.00)
        ("EUR", "3", "0.335", "1.00", False),
        ("EUR", "3", "0.335", "1.005", False),
        ("EUR", "3", "0.335", "1.010", True),  # the same amount written with another exponent
        ("KWD", "3", "0.3335", "1.001", True),  # 1.0005 to the fils
        ("KWD", "3", "0.3335", "1.00", False),
    ],
)
def test_line_amounts_round_half_up_to_the_currencys_minor_unit(currency, quantity, price, amount, exact):
    po = facts({KEY: po_line(price=price, currency=currency)})
    result = match_invoice(invoice(line(quantity=quantity, price=price, amount=amount), currency=currency), po, POLICY)
    assert only_line(result).amount.within is exact
    assert result.matched is exact


def test_products_beyond_the_default_decimal_context_are_exact():
    # 13 integer digits and 6 decimals times 13 and 9: a 41-digit product, beyond the default context's 28 digits,
    # where rounding the product first would turn .26 into .27.
    quantity, price = "1654088025002.223431", "1204300084869.600040529"
    product = D(f"{1654088025002223431 * 1204300084869600040529}E-15")  # exact: from the integers' product
    expected = product.quantize(D("0.01"), ROUND_HALF_UP, Context(prec=100))
    assert expected == D("1992018348891966791720535.26")
    with localcontext() as default:
        default.prec = 28
        assert (D(quantity) * D(price)).quantize(D("0.01"), ROUND_HALF_UP) == D("1992018348891966791720535.27")
    po = facts({KEY: po_line(price=price, ordered=quantity)}, received={KEY: quantity})
    result = match_invoice(invoice(line(quantity=quantity, price=price, amount=str(expected))), po, POLICY)
    assert only_line(result).amount.computed == expected
    assert result.matched


# --- Every reason at once --------------------------------------------------------------------------------------


def test_every_reason_that_applies_is_listed_in_order():
    earlier = invoice(line(), invoice_id="I-0", number="INV-01001")
    document = invoice(
        line(1, quantity="120", price="11.00"),  # 10% above the price, 20 above what was received
        line(2, po_line=7),  # PO-1 has no line 7
        line(3, po="PO-2"),  # cancelled, in dollars, nothing received
        invoice_id="I-1",
        number="inv 1001",  # the earlier invoice's number, written otherwise
        gross="1525.00",  # the lines add up to 1520.00
    )
    known = facts(
        {KEY: po_line(), ("PO-2", 1): po_line(cancelled=True, currency="USD")},
        received={KEY: "100"},
    )
    result = match_invoice(document, known, POLICY, earlier=[earlier])
    assert result.state is MatchState.BLOCKED
    assert result.reasons == tuple(Reason)
    assert [checked.reasons for checked in result.lines] == [
        (Reason.PRICE_VARIANCE, Reason.QUANTITY_VARIANCE),
        (Reason.UNKNOWN_PO_LINE,),
        (Reason.AWAITING_RECEIPT, Reason.PO_CANCELLED, Reason.CURRENCY_MISMATCH),
    ]
    assert result.header_reasons == (Reason.DUPLICATE_INVOICE, Reason.ARITHMETIC_ERROR)
    [duplicate] = result.duplicates
    assert duplicate.invoice_id == "I-0"


def test_one_blocked_line_blocks_the_invoice():
    result = match_invoice(invoice(line(1), line(2, po_line=2)), facts(), POLICY)
    assert [checked.matched for checked in result.lines] == [True, False]
    assert result.state is MatchState.BLOCKED


# --- Tolerances from the policy document ------------------------------------------------------------------------


def test_tolerances_are_read_from_the_policy_document():
    policy = Policy.from_text((ROOT / "deploy" / "policy" / "default.yaml").read_text(), revision=1)
    tolerances = TolerancePolicy.of(policy.document.tolerances)
    default = tolerances.default
    assert (default.price_upper_percent, default.price_upper_absolute, default.small_difference) == (
        D(2),
        D(5),
        D("1.00"),
    )
    assert default.price_upper_fraction == D("0.02")
    multi = Policy.from_text((ROOT / "deploy" / "policy" / "multi-business-unit.yaml").read_text(), revision=1)
    food = TolerancePolicy.of(multi.document.tolerances).for_unit("FOOD")
    assert food.quantity_upper_percent == 5
    assert TolerancePolicy.of(multi.document.tolerances).for_unit("ELSEWHERE").quantity_upper_percent == 0


def test_a_revisions_tolerances_are_built_once_and_each_revision_answers_its_own():
    default = Policy.from_text((ROOT / "deploy" / "policy" / "default.yaml").read_text(), revision=1)
    multi = Policy.from_text((ROOT / "deploy" / "policy" / "multi-business-unit.yaml").read_text(), revision=2)
    assert tolerances_in_force(default) is tolerances_in_force(default)
    assert tolerances_in_force(default) == TolerancePolicy.of(default.document.tolerances)
    assert tolerances_in_force(multi).for_unit("FOOD").quantity_upper_percent == 5
    assert tolerances_in_force(default).for_unit("FOOD").quantity_upper_percent == 0
