"""Invoice values (DESIGN §5.4, issue 11). Pure: no gRPC, NATS, Valkey or OpenTelemetry here.

This module holds the values the three-way match works on and answers with; the rules live beside it:

- :mod:`services.invoice_status.matching` — ``match_invoice``: price, quantity, receipt, arithmetic and
  duplicate checks of one invoice against the facts current at match time;
- :mod:`services.invoice_status.duplicates` — ``normalized_invoice_number`` and ``find_duplicates``.

Every amount and quantity is a :class:`~decimal.Decimal`; no float ever enters a decision.

The reference for the rules is SAP's logistics invoice verification: tolerance limits with an upper and a
lower side, each an absolute amount and a percentage, whichever binds first blocking; one blocked line
blocking the invoice; tax outside the tolerance check; a small-difference amount accepted (and reported)
on the invoice's totals.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Context, Decimal
from enum import StrEnum
from typing import Protocol

import pycountry

OBJECT_TYPE = "invoice"
# Lines an invoice may have: its status (the document and the match of every line, up to ~1 KiB a line at the widest)
# must fit the 4 MiB a gRPC client accepts, so SubmitInvoice and GetInvoice can answer every invoice they take.
# Fewer than an order's 5,000: an order billed whole beyond 3,000 lines is billed in two invoices.
MAX_LINES = 3_000
DEFAULT_SUSPECT_WITHIN_DAYS = 7
ZERO = Decimal(0)
HUNDRED = Decimal(100)

# Every product and sum of the match is computed in this context, never in the thread's: quantities (13 integer
# digits, 6 decimals) times prices (13 and 9) have up to 41 digits, beyond the default context's 28, and an
# inexact product would round a decision silently. Its methods are called directly, so nothing switches contexts.
EXACT = Context(prec=100, rounding=ROUND_HALF_UP)


class Reason(StrEnum):
    """Why an invoice (or one of its lines) is blocked for payment; the values are the exception types."""

    PRICE_VARIANCE = "price_variance"
    QUANTITY_VARIANCE = "quantity_variance"
    AWAITING_RECEIPT = "awaiting_receipt"
    UNKNOWN_PO_LINE = "unknown_po_line"
    PO_CANCELLED = "po_cancelled"
    CURRENCY_MISMATCH = "currency_mismatch"
    DUPLICATE_INVOICE = "duplicate_invoice"
    ARITHMETIC_ERROR = "arithmetic_error"


REASONS: tuple[Reason, ...] = tuple(Reason)
REASON_ORDER: Mapping[Reason, int] = {reason: index for index, reason in enumerate(REASONS)}


class MatchState(StrEnum):
    MATCHED = "matched"
    BLOCKED = "blocked"


LineKey = tuple[str, int]  # (PO id, PO line number)


# --- The invoice as the supplier sent it -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    line_number: int
    po_id: str
    po_line_number: int
    quantity: Decimal  # as printed: positive, also on a credit note
    unit_price: Decimal
    line_amount: Decimal  # stated, before tax
    tax_amount: Decimal | None = None  # None: the line states no tax (the invoice's tax is stated on its header)

    @property
    def key(self) -> LineKey:
        return (self.po_id, self.po_line_number)


@dataclass(frozen=True, slots=True)
class Invoice:
    invoice_id: str  # procurement's id: the object key
    supplier_id: str  # golden supplier id
    invoice_number: str  # the supplier's, as printed
    invoice_date: date
    currency: str  # ISO 4217
    lines: tuple[InvoiceLine, ...]
    net_total: Decimal  # stated
    tax_total: Decimal  # stated
    gross_total: Decimal  # stated
    credit_note: bool = False  # its quantities and amounts (printed positive) reduce what was invoiced
    credited_invoice_id: str = ""  # a credit note: the invoice it credits


# --- The facts at match time (followed from PO and receipt events, and from other invoices) ----------------


@dataclass(frozen=True, slots=True)
class PoLineFacts:
    """One PO line as the version current at match time has it."""

    po_version: int
    ordered_quantity: Decimal
    unit_price: Decimal
    currency: str
    business_unit: str
    cancelled: bool = False  # the order (or the line) is cancelled
    receipt_expected: bool = True  # False: a two-way match (services: no goods receipt will come)


@dataclass(frozen=True, slots=True)
class ReceivedFacts:
    """A PO line's cumulative receipts and returns (receipt-reconciliation's ``reconciled`` events)."""

    received: Decimal = ZERO  # every receipt, before returns
    returned: Decimal = ZERO

    @property
    def net(self) -> Decimal:
        return EXACT.subtract(self.received, self.returned)


@dataclass(frozen=True, slots=True)
class MatchFacts:
    """Everything the match reads besides the invoice, keyed by (PO id, PO line number).

    ``invoiced_by_others``: the quantity OTHER invoices already invoiced on the line, credit notes subtracted
    (``matching.invoiced_quantities``); a line missing from ``received`` or ``invoiced_by_others`` has none."""

    po_lines: Mapping[LineKey, PoLineFacts]
    received: Mapping[LineKey, ReceivedFacts] = field(default_factory=dict)
    invoiced_by_others: Mapping[LineKey, Decimal] = field(default_factory=dict)


# --- Tolerances (the policy's ``tolerances`` section, as plain values) -------------------------------------


class _PricePolicy(Protocol):
    @property
    def upper_percent(self) -> Decimal: ...
    @property
    def lower_percent(self) -> Decimal: ...
    @property
    def upper_absolute(self) -> Decimal: ...
    @property
    def lower_absolute(self) -> Decimal: ...


class _QuantityPolicy(Protocol):
    @property
    def upper_percent(self) -> Decimal: ...
    @property
    def lower_percent(self) -> Decimal: ...


class PolicyTolerance(Protocol):
    """The shape of ``libs.policy.document.Tolerance`` (read structurally: the domain imports no policy)."""

    @property
    def price(self) -> _PricePolicy: ...
    @property
    def quantity(self) -> _QuantityPolicy: ...
    @property
    def small_difference(self) -> Decimal: ...


class PolicyTolerances(Protocol):
    """The shape of ``libs.policy.document.Tolerances``."""

    @property
    def default(self) -> PolicyTolerance: ...
    @property
    def business_units(self) -> Mapping[str, PolicyTolerance]: ...


@dataclass(frozen=True, slots=True)
class Tolerances:
    """One tolerance set of the policy (``tolerances.default`` or ``tolerances.business_units.<bu>``).

    Defaults are the policy's: nothing above the PO price or the reference quantity passes, any lower
    quantity passes, and a lower price passes only within ``price_lower_absolute`` (0). Percentages are of the
    PO price or of the reference quantity; the price's absolute limits are amounts of the line's value
    variance (invoiced quantity x price difference, SAP's tolerance key PP), in the invoice's currency."""

    price_upper_percent: Decimal = ZERO
    price_lower_percent: Decimal = HUNDRED
    price_upper_absolute: Decimal = ZERO
    price_lower_absolute: Decimal = ZERO
    quantity_upper_percent: Decimal = ZERO
    quantity_lower_percent: Decimal = HUNDRED
    small_difference: Decimal = ZERO
    # The percentages as fractions (5 -> 0.05), computed once per set rather than once per line.
    price_upper_fraction: Decimal = field(init=False, repr=False, compare=False)
    price_lower_fraction: Decimal = field(init=False, repr=False, compare=False)
    quantity_upper_fraction: Decimal = field(init=False, repr=False, compare=False)
    quantity_lower_fraction: Decimal = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("price_upper", "price_lower", "quantity_upper", "quantity_lower"):
            object.__setattr__(self, f"{name}_fraction", getattr(self, f"{name}_percent").scaleb(-2, EXACT))

    @classmethod
    def of(cls, tolerance: PolicyTolerance) -> Tolerances:
        return cls(
            price_upper_percent=tolerance.price.upper_percent,
            price_lower_percent=tolerance.price.lower_percent,
            price_upper_absolute=tolerance.price.upper_absolute,
            price_lower_absolute=tolerance.price.lower_absolute,
            quantity_upper_percent=tolerance.quantity.upper_percent,
            quantity_lower_percent=tolerance.quantity.lower_percent,
            small_difference=tolerance.small_difference,
        )


@dataclass(frozen=True, slots=True)
class TolerancePolicy:
    """The tolerance sets in force: a business unit's own, else the default."""

    default: Tolerances = Tolerances()
    business_units: Mapping[str, Tolerances] = field(default_factory=dict)

    def for_unit(self, business_unit: str) -> Tolerances:
        return self.business_units.get(business_unit, self.default)

    @classmethod
    def of(cls, tolerances: PolicyTolerances) -> TolerancePolicy:
        return cls(
            Tolerances.of(tolerances.default),
            {unit: Tolerances.of(tolerance) for unit, tolerance in tolerances.business_units.items()},
        )


class _TolerancesDocument(Protocol):
    @property
    def tolerances(self) -> PolicyTolerances: ...


class PolicyRevision(Protocol):
    """The shape of ``libs.policy.engine.Policy`` as far as tolerances go: one immutable object per revision."""

    @property
    def document(self) -> _TolerancesDocument: ...


@functools.lru_cache(maxsize=4)
def tolerances_in_force(policy: PolicyRevision) -> TolerancePolicy:
    """The tolerance sets of a policy revision, built once per revision rather than once per match (their cost
    grows with the business units the policy lists). The few newest revisions are kept."""
    return TolerancePolicy.of(policy.document.tolerances)


# --- Currencies --------------------------------------------------------------------------------------------

# ISO 4217 minor units (the exponent) where they are not 2 (list one, 2025). pycountry knows the codes but not
# their exponents. Funds and metals (XAU, XDR, ...) have none: their amounts are compared unrounded.
_EXPONENTS: Mapping[str, int] = {
    **dict.fromkeys(
        ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV"), 0
    ),
    **dict.fromkeys(("XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}
_NO_MINOR_UNIT = frozenset(("XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XDR", "XPD", "XPT", "XSU", "XTS", "XUA", "XXX"))


def minor_units(currency: str) -> int | None:
    """The currency's ISO 4217 exponent (JPY 0, EUR 2, KWD 3); None for a code without one (XAU)."""
    if currency in _NO_MINOR_UNIT:
        return None
    return _EXPONENTS.get(currency, 2)


@functools.lru_cache(maxsize=512)
def currency_quantum(currency: str) -> Decimal | None:
    """The currency's smallest unit as a quantize exponent (JPY 1, EUR 0.01, KWD 0.001); None: no rounding."""
    exponent = minor_units(currency)
    return None if exponent is None else Decimal(1).scaleb(-exponent)


def round_amount(amount: Decimal, currency: str) -> Decimal:
    """An amount rounded half-up to the currency's minor unit (unchanged for a currency without one)."""
    quantum = currency_quantum(currency)
    return amount if quantum is None else amount.quantize(quantum, ROUND_HALF_UP, EXACT)


@functools.lru_cache(maxsize=512)
def is_iso_currency(code: str) -> bool:
    return len(code) == 3 and code.isupper() and pycountry.currencies.get(alpha_3=code) is not None


# --- What the match answers --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limit:
    """The tolerance limit that applied to a check.

    ``side`` is the policy's side whose limits applied (``upper``: the unfavourable direction — an invoice
    above the PO price or the reference quantity, a credit note below the PO price); of that side's limits,
    ``basis`` names the one that binds first (``percent`` or ``absolute``) and ``value`` is its policy figure.
    ``bound`` is the furthest unit price (or cumulative quantity) it lets pass; an absolute price bound is
    rounded toward the PO price to 9 decimals."""

    side: str
    basis: str
    value: Decimal
    bound: Decimal


@dataclass(frozen=True, slots=True)
class PriceCheck:
    expected: Decimal  # the unit price of the PO version current at match time
    actual: Decimal  # the invoiced unit price
    variance: Decimal  # per unit: actual - expected
    variance_amount: Decimal  # quantity x variance: what the absolute limits are compared with
    variance_percent: Decimal | None  # of the expected price, 6 decimals; None when the PO price is 0
    limit: Limit
    within: bool


@dataclass(frozen=True, slots=True)
class QuantityCheck:
    expected: Decimal  # net received (three-way) or ordered (two-way)
    basis: str  # "received" or "ordered"
    invoiced: Decimal  # by this invoice on the PO line, all its lines together; negative for a credit note
    invoiced_by_others: Decimal
    actual: Decimal  # cumulative: invoiced_by_others + invoiced
    variance: Decimal  # actual - expected
    variance_percent: Decimal | None  # of the expected quantity, 6 decimals; None when it is 0
    limit: Limit
    within: bool


@dataclass(frozen=True, slots=True)
class AmountCheck:
    stated: Decimal
    computed: Decimal  # quantity x unit price, rounded half-up to the currency's minor unit

    @property
    def difference(self) -> Decimal:
        return EXACT.subtract(self.stated, self.computed)

    @property
    def within(self) -> bool:
        return self.stated == self.computed


@dataclass(frozen=True, slots=True)
class LineMatch:
    line_number: int
    po_id: str
    po_line_number: int
    po_version: int  # 0: the PO line is unknown
    business_unit: str  # whose tolerance set applied ("" : the default's, the line being unknown)
    two_way: bool
    amount: AmountCheck
    price: PriceCheck | None  # None: the PO line is unknown or its currency is not the invoice's
    quantity: QuantityCheck | None  # None: the PO line is unknown, or nothing was received yet
    reasons: tuple[Reason, ...]  # in REASONS order; empty when matched

    @property
    def matched(self) -> bool:
        return not self.reasons


@dataclass(frozen=True, slots=True)
class HeaderCheck:
    """One total of the invoice against what its own figures add up to."""

    name: str  # "net" (sum of line amounts), "tax" (sum of line taxes), "gross" (net + tax)
    stated: Decimal
    computed: Decimal
    small_difference: Decimal  # the policy's amount in force

    @property
    def difference(self) -> Decimal:
        return EXACT.subtract(self.stated, self.computed)

    @property
    def within(self) -> bool:
        return self.difference.copy_abs() <= self.small_difference

    @property
    def accepted_small_difference(self) -> bool:
        """A difference accepted as small: reported (and booked as such), never passed silently."""
        return self.stated != self.computed and self.within


DUPLICATE_BY_NUMBER = "invoice_number"  # same supplier, same normalized invoice number
DUPLICATE_BY_CHECK_KEY = "check_key"  # SAP's check key: supplier, currency, gross amount, reference, date


@dataclass(frozen=True, slots=True)
class DuplicateOf:
    invoice_id: str
    invoice_number: str
    rules: tuple[str, ...]  # DUPLICATE_BY_NUMBER and/or DUPLICATE_BY_CHECK_KEY


@dataclass(frozen=True, slots=True)
class SuspectedDuplicate:
    """Same supplier, gross amount and currency, dates close, numbers different: for a person to look at."""

    invoice_id: str
    invoice_number: str
    days_apart: int


@dataclass(frozen=True, slots=True)
class Duplicates:
    duplicates: tuple[DuplicateOf, ...] = ()
    suspected: tuple[SuspectedDuplicate, ...] = ()


@dataclass(frozen=True, slots=True)
class MatchResult:
    invoice_id: str
    state: MatchState
    reasons: tuple[Reason, ...]  # every reason of the invoice and its lines, in REASONS order
    header_reasons: tuple[Reason, ...]  # those of the invoice as a whole (duplicate, totals)
    lines: tuple[LineMatch, ...]
    header: tuple[HeaderCheck, ...]
    duplicates: tuple[DuplicateOf, ...]
    suspected_duplicates: tuple[SuspectedDuplicate, ...]  # reported for a person; they block nothing

    @property
    def matched(self) -> bool:
        return self.state is MatchState.MATCHED

    @property
    def needs_review(self) -> bool:
        return bool(self.suspected_duplicates)

    @property
    def accepted_small_differences(self) -> tuple[HeaderCheck, ...]:
        return tuple(check for check in self.header if check.accepted_small_difference)


# --- Validation of the invoice on its own ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Violation:
    field: str
    description: str


def validate_invoice(invoice: Invoice, prefix: str = "invoice") -> list[Violation]:
    """Every problem of the invoice as a document, before any fact is looked at. Arithmetic is not checked
    here: a total that does not add up is a blocking reason of the match, not a refusal."""
    problems: list[Violation] = []

    def bad(path: str, description: str) -> None:
        problems.append(Violation(f"{prefix}.{path}", description))

    for name in ("invoice_id", "supplier_id", "invoice_number"):
        if not getattr(invoice, name).strip():
            bad(name, "is required")
    if not is_iso_currency(invoice.currency):
        bad("currency_code", f"{invoice.currency!r} is not an ISO 4217 currency code")
    if invoice.credit_note and not invoice.credited_invoice_id.strip():
        bad("credited_invoice_id", "is required for a credit note: the invoice it credits")
    if not invoice.credit_note and invoice.credited_invoice_id:
        bad("credited_invoice_id", "is only for credit notes")
    if invoice.credit_note and invoice.credited_invoice_id == invoice.invoice_id:
        bad("credited_invoice_id", "names the credit note itself")
    for name in ("net_total", "tax_total", "gross_total"):
        if getattr(invoice, name) < 0:
            bad(name, "must not be negative (a credit note is marked as one, its amounts printed positive)")
    if not invoice.lines:
        bad("lines", "an invoice needs at least one line")
    elif len(invoice.lines) > MAX_LINES:
        bad("lines", f"at most {MAX_LINES} lines")
    seen: set[int] = set()
    for index, line in enumerate(invoice.lines):
        path = f"lines[{index}]"
        if line.line_number < 1:
            bad(f"{path}.line_number", "must be 1 or more")
        elif line.line_number in seen:
            bad(f"{path}.line_number", f"line {line.line_number} appears twice")
        seen.add(line.line_number)
        if not line.po_id.strip():
            bad(f"{path}.po_id", "is required: the purchase order the line bills")
        if line.po_line_number < 1:
            bad(f"{path}.po_line_number", "is required: the purchase order line the line bills (1 or more)")
        if line.quantity <= 0:
            bad(f"{path}.quantity", "must be positive (a credit note is marked as one, its quantities positive)")
        for name in ("unit_price", "line_amount"):
            if getattr(line, name) < 0:
                bad(f"{path}.{name}", "must not be negative")
        if line.tax_amount is not None and line.tax_amount < 0:
            bad(f"{path}.tax_amount", "must not be negative")
    return problems
