"""The three-way match of one invoice (DESIGN §5.4, issue 11). Pure: the facts come in, a result goes out.

Per line, against the PO version current at match time:

- **Price**: the invoiced unit price against the PO's. On the side the variance lies on, both limits apply —
  the percentage of the PO price and the absolute amount of the line's value variance (invoiced quantity x
  price difference, SAP's tolerance key PP) — and whichever binds first blocks (``price_variance``); a
  variance exactly at a limit passes. For a credit note the sides swap: crediting below the PO price is the
  unfavourable direction, guarded by the upper limits. Not checked when the currencies differ.
- **Quantity**: the cumulative invoiced quantity (other invoices on the line, credit notes subtracted, plus
  this one) against the net received quantity (received minus returned: three-way) or, when the PO line
  expects no receipt (services), the ordered quantity (two-way), with the upper and lower percentages
  (``quantity_variance``). A three-way line with nothing received yet is ``awaiting_receipt`` instead (a
  credit note never awaits a receipt).
- **Facts**: an unknown PO or line is ``unknown_po_line`` (nothing else is checked); a cancelled PO is
  ``po_cancelled`` (the other checks still run against its last version); the invoice's currency not the
  PO's is ``currency_mismatch``.
- **Arithmetic**: quantity x unit price rounded half-up to the currency's minor unit must be the stated line
  amount exactly (``arithmetic_error`` on the line).

Per invoice: the sum of line amounts against the stated net, the sum of line taxes against the stated tax
(when a line states tax), net + tax against the stated gross. A difference at or below the ``small_difference``
in force (the strictest of the business units the invoice's known lines belong to, else the default's) is
accepted and reported as such; above it is ``arithmetic_error``. Tax is outside the tolerance check. A
duplicate (``duplicates.find_duplicates``) is ``duplicate_invoice``; a suspected duplicate blocks nothing but
is reported for a person.

One blocked line blocks the invoice, and the result lists every reason that applies.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

from services.invoice_status.domain import (
    DEFAULT_SUSPECT_WITHIN_DAYS,
    EXACT,
    REASON_ORDER,
    ZERO,
    AmountCheck,
    HeaderCheck,
    Invoice,
    Limit,
    LineKey,
    LineMatch,
    MatchFacts,
    MatchResult,
    MatchState,
    PriceCheck,
    QuantityCheck,
    Reason,
    TolerancePolicy,
    Tolerances,
    currency_quantum,
)
from services.invoice_status.duplicates import find_duplicates

UPPER = "upper"
LOWER = "lower"
PERCENT = "percent"
ABSOLUTE = "absolute"
RECEIVED = "received"
ORDERED = "ordered"
_PERCENT_DECIMALS = 6  # variance percentages are reported to 6 decimals
_PERCENT_SHIFT = _PERCENT_DECIMALS + 2  # x 100 and 6 decimals
_ONE = Decimal(1)
_MINUS_ONE = Decimal(-1)
_TWO = Decimal(2)
_BOUND_STEP = Decimal("0.000000001")  # a price bound derived from an absolute limit: 9 decimals (Money's nanos)
_ONE_HUNDRED = Decimal(100)

_multiply = EXACT.multiply
_add = EXACT.add
_subtract = EXACT.subtract


def invoiced_quantities(invoices: Iterable[Invoice], *, excluding: str = "") -> dict[LineKey, Decimal]:
    """The quantity invoiced per PO line by ``invoices`` (credit notes subtracted), leaving out the invoice whose
    id is ``excluding``: the ``invoiced_by_others`` of its match. Which invoices count (not cancelled, not
    blocked as duplicates) is the caller's choice."""
    totals: dict[LineKey, Decimal] = {}
    for invoice in invoices:
        if invoice.invoice_id == excluding:
            continue
        for line in invoice.lines:
            quantity = line.quantity.copy_negate() if invoice.credit_note else line.quantity
            totals[line.key] = _add(totals.get(line.key, ZERO), quantity)
    return totals


def match_invoice(
    invoice: Invoice,
    facts: MatchFacts,
    tolerances: TolerancePolicy,
    *,
    earlier: Iterable[Invoice] = (),
    suspect_within_days: int = DEFAULT_SUSPECT_WITHIN_DAYS,
) -> MatchResult:
    """Match ``invoice`` against ``facts`` under ``tolerances``.

    ``earlier``: the invoices recorded before this one that a duplicate could be of (the supplier's; the
    invoice itself, other suppliers' and other kinds are skipped); ``suspect_within_days``: how many days
    apart two invoices of one supplier with the same gross amount may be dated to be suspected duplicates."""
    credit = invoice.credit_note
    currency = invoice.currency
    quantum = currency_quantum(currency)
    po_lines = facts.po_lines
    received = facts.received
    others = facts.invoiced_by_others

    # This invoice's quantity per PO line, all its lines together (two lines may bill one PO line).
    invoiced: dict[LineKey, Decimal] = {}
    for line in invoice.lines:
        key = line.key
        invoiced[key] = _add(invoiced.get(key, ZERO), line.quantity)

    lines: list[LineMatch] = []
    blocked: set[Reason] = set()
    small_difference: Decimal | None = None
    for line in invoice.lines:
        key = line.key
        product = _multiply(line.quantity, line.unit_price)
        computed = product if quantum is None else product.quantize(quantum, ROUND_HALF_UP, EXACT)
        amount = AmountCheck(line.line_amount, computed)
        reasons: list[Reason] = [] if line.line_amount == computed else [Reason.ARITHMETIC_ERROR]
        po = po_lines.get(key)
        if po is None:
            reasons.append(Reason.UNKNOWN_PO_LINE)
            lines.append(
                LineMatch(
                    line.line_number,
                    line.po_id,
                    line.po_line_number,
                    0,
                    "",
                    False,
                    amount,
                    None,
                    None,
                    _ordered(reasons),
                )
            )
            blocked.update(reasons)
            continue
        tolerance = tolerances.for_unit(po.business_unit)
        if small_difference is None or tolerance.small_difference < small_difference:
            small_difference = tolerance.small_difference
        if po.cancelled:
            reasons.append(Reason.PO_CANCELLED)

        price: PriceCheck | None = None
        if currency != po.currency:
            reasons.append(Reason.CURRENCY_MISMATCH)
        else:
            price = _price_check(po.unit_price, line.unit_price, line.quantity, tolerance, credit)
            if not price.within:
                reasons.append(Reason.PRICE_VARIANCE)

        quantity: QuantityCheck | None = None
        this = invoiced[key]
        if credit:
            this = this.copy_negate()
        if not po.receipt_expected:
            quantity = _quantity_check(po.ordered_quantity, ORDERED, this, others.get(key, ZERO), tolerance)
        else:
            facts_received = received.get(key)
            if facts_received is None or (facts_received.received == 0 and not credit):
                if credit:
                    quantity = _quantity_check(ZERO, RECEIVED, this, others.get(key, ZERO), tolerance)
                else:
                    reasons.append(Reason.AWAITING_RECEIPT)
            else:
                expected = _subtract(facts_received.received, facts_received.returned)
                quantity = _quantity_check(expected, RECEIVED, this, others.get(key, ZERO), tolerance)
        if quantity is not None and not quantity.within:
            reasons.append(Reason.QUANTITY_VARIANCE)

        if reasons:
            blocked.update(reasons)
        lines.append(
            LineMatch(
                line.line_number,
                line.po_id,
                line.po_line_number,
                po.po_version,
                po.business_unit,
                not po.receipt_expected,
                amount,
                price,
                quantity,
                _ordered(reasons) if reasons else (),
            )
        )

    if small_difference is None:
        small_difference = tolerances.default.small_difference
    header = _header_checks(invoice, small_difference)
    header_reasons: list[Reason] = []
    found = find_duplicates(invoice, earlier, within_days=suspect_within_days)
    if found.duplicates:
        header_reasons.append(Reason.DUPLICATE_INVOICE)
    if not all(check.within for check in header):
        header_reasons.append(Reason.ARITHMETIC_ERROR)
    blocked.update(header_reasons)
    return MatchResult(
        invoice_id=invoice.invoice_id,
        state=MatchState.BLOCKED if blocked else MatchState.MATCHED,
        reasons=_ordered(blocked),
        header_reasons=tuple(header_reasons),
        lines=tuple(lines),
        header=header,
        duplicates=found.duplicates,
        suspected_duplicates=found.suspected,
    )


def _ordered(reasons: Iterable[Reason]) -> tuple[Reason, ...]:
    return tuple(sorted(set(reasons), key=REASON_ORDER.__getitem__))


def _percent_of(variance: Decimal, base: Decimal) -> Decimal | None:
    """variance / base x 100, rounded half-up to 6 decimals exactly (an integer division and its remainder: a
    100-digit quotient of a non-terminating division would cost more than the rest of the line's match)."""
    if not variance:
        return ZERO
    if not base:
        return None
    quotient, remainder = EXACT.divmod(variance.scaleb(_PERCENT_SHIFT, EXACT), base)
    if remainder and _multiply(remainder.copy_abs(), _TWO) >= base.copy_abs():
        quotient = _add(quotient, _ONE if (variance < 0) == (base < 0) else _MINUS_ONE)
    return quotient.scaleb(-_PERCENT_DECIMALS, EXACT)


def _price_check(
    expected: Decimal, actual: Decimal, quantity: Decimal, tolerance: Tolerances, credit: bool
) -> PriceCheck:
    variance = _subtract(actual, expected)
    variance_amount = _multiply(quantity, variance)
    # The unfavourable direction (paying more; for a credit note, getting less back) is the upper side.
    upper = (variance >= 0) if not credit else (variance <= 0)
    if upper:
        fraction, absolute, percent = (
            tolerance.price_upper_fraction,
            tolerance.price_upper_absolute,
            tolerance.price_upper_percent,
        )
    else:
        fraction, absolute, percent = (
            tolerance.price_lower_fraction,
            tolerance.price_lower_absolute,
            tolerance.price_lower_percent,
        )
    allowed = _multiply(expected.copy_abs(), fraction)  # per unit, by the percentage
    within = variance.copy_abs() <= allowed and variance_amount.copy_abs() <= absolute
    # Which limit binds first: the absolute one allows absolute / quantity per unit. The bound lies above the PO
    # price for an invoice's upper side and a credit note's lower side.
    side = UPPER if upper else LOWER
    units = quantity.copy_abs()
    step = _add if upper != credit else _subtract
    if units and absolute < _multiply(allowed, units):
        per_unit = EXACT.divide(absolute, units).quantize(_BOUND_STEP, ROUND_DOWN, EXACT)
        limit = Limit(side, ABSOLUTE, absolute, step(expected, per_unit))
    else:
        limit = Limit(side, PERCENT, percent, step(expected, allowed))
    return PriceCheck(
        expected=expected,
        actual=actual,
        variance=variance,
        variance_amount=variance_amount,
        variance_percent=_percent_of(variance, expected),
        limit=limit,
        within=within,
    )


def _quantity_check(
    expected: Decimal, basis: str, invoiced: Decimal, by_others: Decimal, tolerance: Tolerances
) -> QuantityCheck:
    actual = _add(by_others, invoiced)
    variance = _subtract(actual, expected)
    if variance >= 0:
        allowed = _multiply(expected.copy_abs(), tolerance.quantity_upper_fraction)
        limit = Limit(UPPER, PERCENT, tolerance.quantity_upper_percent, _add(expected, allowed))
        within = variance <= allowed
    else:
        allowed = _multiply(expected.copy_abs(), tolerance.quantity_lower_fraction)
        limit = Limit(LOWER, PERCENT, tolerance.quantity_lower_percent, _subtract(expected, allowed))
        within = variance.copy_negate() <= allowed
    return QuantityCheck(
        expected=expected,
        basis=basis,
        invoiced=invoiced,
        invoiced_by_others=by_others,
        actual=actual,
        variance=variance,
        variance_percent=_percent_of(variance, expected),
        limit=limit,
        within=within,
    )


def _header_checks(invoice: Invoice, small_difference: Decimal) -> tuple[HeaderCheck, ...]:
    net = ZERO
    tax = ZERO
    taxed = False
    for line in invoice.lines:
        net = _add(net, line.line_amount)
        if line.tax_amount is not None:
            taxed = True
            tax = _add(tax, line.tax_amount)
    checks = [HeaderCheck("net", invoice.net_total, net, small_difference)]
    if taxed:
        checks.append(HeaderCheck("tax", invoice.tax_total, tax, small_difference))
    checks.append(
        HeaderCheck("gross", invoice.gross_total, _add(invoice.net_total, invoice.tax_total), small_difference)
    )
    return tuple(checks)
