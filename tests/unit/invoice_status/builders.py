"""Builders for invoices and the facts they are matched against (pure values, no sockets)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from decimal import Decimal

from services.invoice_status.domain import (
    Invoice,
    InvoiceLine,
    LineKey,
    MatchFacts,
    PoLineFacts,
    ReceivedFacts,
    TolerancePolicy,
    Tolerances,
)

D = Decimal
DAY = date(2026, 3, 2)
# SAP-like: 2% or 50.00 of line value above the PO price (whichever binds first), any lower price within 1,000,000 of
# line value; quantity: nothing above what was received, any lower quantity; 1.00 of small difference.
TOLERANCE = Tolerances(
    price_upper_percent=D(2),
    price_lower_percent=D(100),
    price_upper_absolute=D(50),
    price_lower_absolute=D(1_000_000),
    quantity_upper_percent=D(0),
    quantity_lower_percent=D(100),
    small_difference=D("1.00"),
)
POLICY = TolerancePolicy(TOLERANCE)


def line(
    number: int = 1,
    *,
    po: str = "PO-1",
    po_line: int = 1,
    quantity: str = "10",
    price: str = "10.00",
    amount: str | None = None,
    tax: str | None = None,
) -> InvoiceLine:
    """A line whose stated amount is quantity x price (exactly, unless ``amount`` says otherwise)."""
    stated = D(amount) if amount is not None else D(quantity) * D(price)
    return InvoiceLine(number, po, po_line, D(quantity), D(price), stated, None if tax is None else D(tax))


def invoice(
    *lines: InvoiceLine,
    invoice_id: str = "I-1",
    supplier: str = "SUP-1",
    number: str = "INV-1001",
    day: date = DAY,
    currency: str = "EUR",
    net: str | None = None,
    tax: str = "0",
    gross: str | None = None,
    credit_note: bool = False,
    credits: str = "",
) -> Invoice:
    """An invoice whose totals add up unless ``net`` or ``gross`` say otherwise."""
    lines = lines or (line(),)
    net_total = D(net) if net is not None else sum((item.line_amount for item in lines), D(0))
    gross_total = D(gross) if gross is not None else net_total + D(tax)
    return Invoice(
        invoice_id,
        supplier,
        number,
        day,
        currency,
        tuple(lines),
        net_total,
        D(tax),
        gross_total,
        credit_note,
        credits,
    )


def po_line(
    *,
    price: str = "10.00",
    ordered: str = "100",
    currency: str = "EUR",
    unit: str = "BU-1",
    cancelled: bool = False,
    receipt_expected: bool = True,
    version: int = 3,
) -> PoLineFacts:
    return PoLineFacts(version, D(ordered), D(price), currency, unit, cancelled, receipt_expected)


def facts(
    po_lines: Mapping[LineKey, PoLineFacts] | None = None,
    *,
    received: Mapping[LineKey, str] | None = None,
    returned: Mapping[LineKey, str] | None = None,
    others: Mapping[LineKey, Decimal] | None = None,
) -> MatchFacts:
    """PO-1 line 1 (10.00 EUR, 100 ordered) with 100 received, unless told otherwise."""
    lines = po_lines if po_lines is not None else {("PO-1", 1): po_line()}
    got = received if received is not None else {("PO-1", 1): "100"}
    back = returned or {}
    return MatchFacts(
        lines,
        {key: ReceivedFacts(D(quantity), D(back.get(key, "0"))) for key, quantity in got.items()},
        others or {},
    )
