"""Duplicate invoices (DESIGN §5.4, issue 11). Pure.

Two rules make an invoice a duplicate of an earlier one of the same supplier (golden id) and the same kind
(an invoice is compared with invoices, a credit note with credit notes):

- **the invoice number**: the same normalized number (:func:`normalized_invoice_number`), however it was
  written — ``INV-00123`` and ``inv 123`` are one number;
- **SAP's check key** (the floor, whatever normalization makes of a number): the same currency, gross amount,
  reference (the number as printed, trimmed, case ignored) and invoice date. SAP's key also has the company
  code; an invoice here carries none, and leaving it out compares across business units — stricter, not looser.

A duplicate is blocked (``duplicate_invoice``). An invoice of the same supplier, kind, currency and gross
amount dated within a few days (``within_days``, 7 by default) whose number is different is a **suspected**
duplicate: reported for a person, never blocked and never passed silently.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from datetime import date, timedelta

from services.invoice_status.domain import (
    DEFAULT_SUSPECT_WITHIN_DAYS,
    DUPLICATE_BY_CHECK_KEY,
    DUPLICATE_BY_NUMBER,
    DuplicateOf,
    Duplicates,
    Invoice,
    SuspectedDuplicate,
)

# Words an invoice number may start with that name the document rather than number it (compared after case
# folding, as whole parts): invoice (INV, INVOICE, BILL), German Rechnung (RE, RG), French/Spanish facture or
# factura (FAC, FACT), and number (NO, NR). Only leading parts are dropped, and never the last part left:
# "RE 12" is "12", "RE" is "re", "REF 12" keeps its "ref".
PREFIXES = frozenset({"inv", "invoice", "re", "rg", "fac", "fact", "bill", "no", "nr"})
# Runs of decimal digits (any script) or of letters; everything else (spaces, punctuation, symbols) separates.
_PARTS = re.compile(r"(\d+)|[^\W\d_]+")
_SEPARATOR = "-"
LISTED = 10  # duplicates, and suspected duplicates, a match names at most (each)


@functools.lru_cache(maxsize=65_536)
def normalized_invoice_number(number: str) -> str:
    """An invoice number as compared for duplicates: ``INV-00123``, ``inv 123``, ``Inv.No. 0123`` are ``123``.

    Unicode compatibility forms are folded (full-width digits are digits) and case is ignored; the number is
    split into runs of letters and runs of digits (``AB123`` is ``AB 123``), and spaces and punctuation only
    separate them; digits of any script become ASCII digits and lose their leading zeros (``007`` is ``7``);
    leading :data:`PREFIXES` are dropped. The parts are joined with ``-``: where a number is split stays
    significant (``2024-001`` is ``2024-1``, not ``20241``), how it is split does not. A number without a
    letter or a digit normalizes to ``""``, which equals nothing."""
    text = unicodedata.normalize("NFKC", number).casefold()
    parts: list[str] = []
    for found in _PARTS.finditer(text):
        part = found.group()
        if found.lastindex:  # digits (Unicode category Nd: each has a decimal value)
            if not part.isascii():
                part = "".join(str(unicodedata.decimal(char)) for char in part)
            part = part.lstrip("0") or "0"
        parts.append(part)
    start = 0
    while start < len(parts) - 1 and parts[start] in PREFIXES:
        start += 1
    return _SEPARATOR.join(parts[start:])


def reference(number: str) -> str:
    """The invoice number as SAP's check key compares it: as printed, trimmed, case ignored."""
    return " ".join(number.split()).casefold()


def number_key(invoice: Invoice) -> tuple[str, str] | None:
    """What a ledger files ``invoice`` under for the number rule: its supplier and normalized number (None when that
    is empty, which equals nothing)."""
    number = normalized_invoice_number(invoice.invoice_number)
    return (invoice.supplier_id, number) if number else None


def amount_key(invoice: Invoice) -> tuple[object, ...]:
    """What a ledger files ``invoice`` under, by its date, for the check key and a suspicion (both need the same
    amount): its supplier, kind, currency and gross amount."""
    return (invoice.supplier_id, invoice.credit_note, invoice.currency, invoice.gross_total)


def suspicion_window(day: date, within_days: int = DEFAULT_SUSPECT_WITHIN_DAYS) -> tuple[date, date]:
    """The first and last date an invoice of the same amount dated ``day`` is a suspected duplicate within; the
    window stops at the calendar's ends (an invoice dated 9999-12-31 has no day after it)."""
    before = min(within_days, (day - date.min).days)
    after = min(within_days, (date.max - day).days)
    return day - timedelta(days=before), day + timedelta(days=after)


def check_key(invoice: Invoice) -> tuple[object, ...]:
    """SAP's duplicate check key (company code aside): supplier, kind, currency, gross amount, reference, date."""
    return (
        invoice.supplier_id,
        invoice.credit_note,
        invoice.currency,
        invoice.gross_total,
        reference(invoice.invoice_number),
        invoice.invoice_date,
    )


def find_duplicates(
    invoice: Invoice, earlier: Iterable[Invoice], *, within_days: int = DEFAULT_SUSPECT_WITHIN_DAYS
) -> Duplicates:
    """The invoices of ``earlier`` that ``invoice`` duplicates, and those it is a suspected duplicate of.

    ``earlier`` are the invoices recorded before this one (a re-match passes the same set, so the first of two
    duplicates never becomes a duplicate of the second); the invoice itself, other suppliers' invoices and the
    other kind are skipped, so passing every invoice of the supplier is fine. At most :data:`LISTED` of each are
    listed (the duplicates recorded first, the suspects dated nearest, then the latest recorded): a supplier
    billing one amount every day must not grow every match event by its history."""
    if within_days < 0:
        raise ValueError("within_days must not be negative")
    number = normalized_invoice_number(invoice.invoice_number)
    key = check_key(invoice)
    duplicates: list[DuplicateOf] = []
    suspected: list[SuspectedDuplicate] = []
    for other in earlier:
        if (
            other.invoice_id == invoice.invoice_id
            or other.supplier_id != invoice.supplier_id
            or other.credit_note != invoice.credit_note
        ):
            continue
        # The amount first: it differs for nearly every pair, and both the check key and a suspicion need it.
        same_amount = other.gross_total == invoice.gross_total and other.currency == invoice.currency
        rules: list[str] = []
        if number and normalized_invoice_number(other.invoice_number) == number:
            rules.append(DUPLICATE_BY_NUMBER)
        if same_amount and check_key(other) == key:
            rules.append(DUPLICATE_BY_CHECK_KEY)
        if rules:
            duplicates.append(DuplicateOf(other.invoice_id, other.invoice_number, tuple(rules)))
            continue
        if same_amount:
            days = abs((invoice.invoice_date - other.invoice_date).days)
            if days <= within_days:
                suspected.append(SuspectedDuplicate(other.invoice_id, other.invoice_number, days))
    nearest = sorted(enumerate(suspected), key=lambda found: (found[1].days_apart, -found[0]))[:LISTED]
    return Duplicates(tuple(duplicates[:LISTED]), tuple(suspect for _, suspect in nearest))
