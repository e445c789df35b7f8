"""Invoices between the contract (``syncgov.invoice.v1``) and the domain: conversion with field violations for
bad decimals, money and dates, and the match results and fact versions as the events and responses carry them.

Every amount and quantity is an exact :class:`~decimal.Decimal`: money comes from ``google.type.Money`` (units and
nanos), quantities and the match's figures travel as ``google.type.Decimal`` strings, never floats.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from google.protobuf import timestamp_pb2
from google.type import decimal_pb2, money_pb2

from libs.runtime.errors import FieldViolation, InvalidArgument
from libs.runtime.people import person
from libs.runtime.subjects import MAX_KEY_CHARS
from libs.runtime.values import (
    date_from_proto,
    date_to_proto,
    decimal_from_proto,
    decimal_to_proto,
    fill_decimal,
    money_from_proto,
    money_to_proto,
)
from services.invoice_status.decider import FactVersions, InvoiceState, InvoiceStatus, Released
from services.invoice_status.domain import (
    ZERO,
    AmountCheck,
    DuplicateOf,
    HeaderCheck,
    Invoice,
    InvoiceLine,
    Limit,
    LineMatch,
    MatchResult,
    MatchState,
    PriceCheck,
    QuantityCheck,
    Reason,
    SuspectedDuplicate,
    validate_invoice,
)
from services.invoice_status.findings import exception_ids
from syncgov.invoice.v1 import invoice_pb2, invoice_service_pb2

FIELD = "invoice"
_MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z, the contract's earliest Timestamp
_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z, its latest

_REASON_TO_PROTO: Mapping[Reason, invoice_pb2.BlockReason] = {
    Reason.PRICE_VARIANCE: invoice_pb2.BLOCK_REASON_PRICE_VARIANCE,
    Reason.QUANTITY_VARIANCE: invoice_pb2.BLOCK_REASON_QUANTITY_VARIANCE,
    Reason.AWAITING_RECEIPT: invoice_pb2.BLOCK_REASON_AWAITING_RECEIPT,
    Reason.UNKNOWN_PO_LINE: invoice_pb2.BLOCK_REASON_UNKNOWN_PO_LINE,
    Reason.PO_CANCELLED: invoice_pb2.BLOCK_REASON_PO_CANCELLED,
    Reason.CURRENCY_MISMATCH: invoice_pb2.BLOCK_REASON_CURRENCY_MISMATCH,
    Reason.DUPLICATE_INVOICE: invoice_pb2.BLOCK_REASON_DUPLICATE_INVOICE,
    Reason.ARITHMETIC_ERROR: invoice_pb2.BLOCK_REASON_ARITHMETIC_ERROR,
}
_REASON_FROM_PROTO: Mapping[int, Reason] = {number: reason for reason, number in _REASON_TO_PROTO.items()}

_STATUS_TO_PROTO: Mapping[InvoiceStatus, invoice_pb2.InvoiceState] = {
    InvoiceStatus.RECEIVED: invoice_pb2.INVOICE_STATE_RECEIVED,
    InvoiceStatus.MATCHED: invoice_pb2.INVOICE_STATE_MATCHED,
    InvoiceStatus.BLOCKED: invoice_pb2.INVOICE_STATE_BLOCKED,
    InvoiceStatus.RELEASED: invoice_pb2.INVOICE_STATE_RELEASED,
    InvoiceStatus.APPROVED_FOR_PAYMENT: invoice_pb2.INVOICE_STATE_APPROVED,
    InvoiceStatus.PAID: invoice_pb2.INVOICE_STATE_PAID,
    InvoiceStatus.DISPUTED: invoice_pb2.INVOICE_STATE_DISPUTED,
    InvoiceStatus.CANCELLED: invoice_pb2.INVOICE_STATE_CANCELLED,
}
_STATUS_FROM_PROTO: Mapping[int, InvoiceStatus] = {number: status for status, number in _STATUS_TO_PROTO.items()}


# --- Enums -------------------------------------------------------------------------------------------------


def reason_to_proto(reason: Reason) -> invoice_pb2.BlockReason:
    return _REASON_TO_PROTO[reason]


def reason_from_proto(value: int) -> Reason:
    reason = _REASON_FROM_PROTO.get(value)
    if reason is None:
        raise ValueError(f"block reason {value} is not a known reason")
    return reason


def reasons_to_proto(reasons: tuple[Reason, ...]) -> list[invoice_pb2.BlockReason]:
    return [_REASON_TO_PROTO[reason] for reason in reasons]


def reasons_from_proto(values: object) -> tuple[Reason, ...]:
    return tuple(reason_from_proto(value) for value in values)  # type: ignore[attr-defined]


def status_to_proto(status: InvoiceStatus) -> invoice_pb2.InvoiceState:
    return _STATUS_TO_PROTO[status]


def status_from_proto(value: int) -> InvoiceStatus:
    status = _STATUS_FROM_PROTO.get(value)
    if status is None:
        raise ValueError(f"invoice state {value} is not a known state")
    return status


# --- The invoice: contract -> domain, with field violations ------------------------------------------------


class _Reader:
    """Collects every problem of a document rather than stopping at the first."""

    def __init__(self, currency: str) -> None:
        self.currency = currency
        self.problems: list[FieldViolation] = []

    def bad(self, path: str, description: str) -> None:
        self.problems.append(FieldViolation(path, description))

    def quantity(self, value: decimal_pb2.Decimal, path: str) -> Decimal:
        try:
            return decimal_from_proto(value)
        except ValueError as error:
            self.bad(path, str(error))
            return ZERO

    def money(self, owner: object, name: str, path: str, *, required: bool) -> Decimal | None:
        if not owner.HasField(name):  # type: ignore[attr-defined]
            if required:
                self.bad(path, "is required")
            return None
        money: money_pb2.Money = getattr(owner, name)
        if money.currency_code and money.currency_code != self.currency:
            self.bad(path, f"is in {money.currency_code}, not the invoice's currency {self.currency or '(none)'}")
        try:
            return money_from_proto(money)
        except ValueError as error:
            self.bad(path, str(error))
            return None


def to_domain(document: invoice_pb2.Invoice, prefix: str = FIELD) -> tuple[Invoice | None, list[FieldViolation]]:
    """The domain form of an invoice, or None and every conversion problem (bad decimals, money, dates).
    The invoice's own rules (required ids, ISO currency, positive quantities) are :func:`valid_invoice`'s."""
    reader = _Reader(document.currency_code)
    invoice_date: date | None = None
    try:
        invoice_date = date_from_proto(document.invoice_date)
        if invoice_date is None:
            reader.bad(f"{prefix}.invoice_date", "is required")
    except ValueError as error:
        reader.bad(f"{prefix}.invoice_date", str(error))
    lines: list[InvoiceLine] = []
    for index, line in enumerate(document.lines):
        path = f"{prefix}.lines[{index}]"
        lines.append(
            InvoiceLine(
                line_number=line.line_number,
                po_id=line.po_id,
                po_line_number=line.po_line_number,
                quantity=reader.quantity(line.quantity, f"{path}.quantity"),
                unit_price=reader.money(line, "unit_price", f"{path}.unit_price", required=True) or ZERO,
                line_amount=reader.money(line, "line_amount", f"{path}.line_amount", required=True) or ZERO,
                tax_amount=reader.money(line, "tax_amount", f"{path}.tax_amount", required=False),
            )
        )
    net = reader.money(document, "net_amount", f"{prefix}.net_amount", required=True)
    tax = reader.money(document, "tax_amount", f"{prefix}.tax_amount", required=False)
    gross = reader.money(document, "total_amount", f"{prefix}.total_amount", required=True)
    if reader.problems or invoice_date is None:
        return None, reader.problems
    return (
        Invoice(
            invoice_id=document.invoice_id,
            supplier_id=document.supplier_id,
            invoice_number=document.invoice_number,
            invoice_date=invoice_date,
            currency=document.currency_code,
            lines=tuple(lines),
            net_total=net if net is not None else ZERO,
            tax_total=tax if tax is not None else ZERO,
            gross_total=gross if gross is not None else ZERO,
            credit_note=document.credit_note,
            credited_invoice_id=document.credited_invoice_id,
        ),
        [],
    )


def valid_invoice(document: invoice_pb2.Invoice) -> Invoice:
    """The domain form of an invoice, or INVALID_ARGUMENT listing every problem (nothing is recorded)."""
    invoice, problems = to_domain(document)
    violations = list(problems)
    if invoice is not None:
        violations.extend(FieldViolation(v.field, v.description) for v in validate_invoice(invoice, FIELD))
    if violations or invoice is None:
        raise InvalidArgument(
            f"invoice {document.invoice_id or '(no id)'} is invalid: {len(violations)} problem(s); "
            "nothing was recorded",
            violations=violations,
            reason="INVALID_INVOICE",
        )
    return invoice


def invoice_to_proto(invoice: Invoice) -> invoice_pb2.Invoice:
    currency = invoice.currency
    document = invoice_pb2.Invoice(
        invoice_id=invoice.invoice_id,
        supplier_id=invoice.supplier_id,
        invoice_number=invoice.invoice_number,
        invoice_date=date_to_proto(invoice.invoice_date),
        currency_code=currency,
        total_amount=money_to_proto(invoice.gross_total, currency),
        tax_amount=money_to_proto(invoice.tax_total, currency),
        net_amount=money_to_proto(invoice.net_total, currency),
        credit_note=invoice.credit_note,
        credited_invoice_id=invoice.credited_invoice_id,
    )
    for line in invoice.lines:
        message = document.lines.add(
            line_number=line.line_number,
            po_id=line.po_id,
            po_line_number=line.po_line_number,
            quantity=decimal_to_proto(line.quantity),
            unit_price=money_to_proto(line.unit_price, currency),
            line_amount=money_to_proto(line.line_amount, currency),
        )
        if line.tax_amount is not None:
            message.tax_amount.CopyFrom(money_to_proto(line.tax_amount, currency))
    return document


# --- Match results -----------------------------------------------------------------------------------------


def _optional_from(owner: object, name: str) -> Decimal | None:
    return decimal_from_proto(getattr(owner, name)) if owner.HasField(name) else None  # type: ignore[attr-defined]


def limit_text(limit: Limit) -> str:
    """The limit for people: ``upper percent 2 (up to 10.2)`` (the exact figures are in the message's fields; the
    text drops the trailing zeros an exact product carries, 10.2000000 is 10.2)."""
    return f"{limit.side} {limit.basis} {_plain(limit.value)} (up to {_plain(limit.bound)})"


def _plain(number: Decimal) -> str:
    return format(number.normalize() if number else Decimal(0), "f")


# The contract forms are filled in place: building each figure as a message of its own and handing it to its
# parent's constructor copies it once more, which doubled what encoding a match cost (a one-line match: ~21 µs
# against ~11).


def _fill_limit(target: invoice_pb2.ToleranceLimit, limit: Limit) -> None:
    target.side = limit.side
    target.basis = limit.basis
    fill_decimal(target.value, limit.value)
    fill_decimal(target.bound, limit.bound)
    target.text = limit_text(limit)


def limit_from_proto(message: invoice_pb2.ToleranceLimit) -> Limit:
    return Limit(message.side, message.basis, decimal_from_proto(message.value), decimal_from_proto(message.bound))


def _fill_price(target: invoice_pb2.PriceMatch, check: PriceCheck) -> None:
    fill_decimal(target.expected, check.expected)
    fill_decimal(target.actual, check.actual)
    fill_decimal(target.variance, check.variance)
    fill_decimal(target.variance_amount, check.variance_amount)
    if check.variance_percent is not None:
        fill_decimal(target.variance_percent, check.variance_percent)
    _fill_limit(target.limit, check.limit)
    target.within = check.within


def price_from_proto(message: invoice_pb2.PriceMatch) -> PriceCheck:
    return PriceCheck(
        expected=decimal_from_proto(message.expected),
        actual=decimal_from_proto(message.actual),
        variance=decimal_from_proto(message.variance),
        variance_amount=decimal_from_proto(message.variance_amount),
        variance_percent=_optional_from(message, "variance_percent"),
        limit=limit_from_proto(message.limit),
        within=message.within,
    )


def _fill_quantity(target: invoice_pb2.QuantityMatch, check: QuantityCheck) -> None:
    fill_decimal(target.expected, check.expected)
    target.basis = check.basis
    fill_decimal(target.invoiced, check.invoiced)
    fill_decimal(target.invoiced_by_others, check.invoiced_by_others)
    fill_decimal(target.cumulative, check.actual)
    fill_decimal(target.variance, check.variance)
    if check.variance_percent is not None:
        fill_decimal(target.variance_percent, check.variance_percent)
    _fill_limit(target.limit, check.limit)
    target.within = check.within


def quantity_from_proto(message: invoice_pb2.QuantityMatch) -> QuantityCheck:
    return QuantityCheck(
        expected=decimal_from_proto(message.expected),
        basis=message.basis,
        invoiced=decimal_from_proto(message.invoiced),
        invoiced_by_others=decimal_from_proto(message.invoiced_by_others),
        actual=decimal_from_proto(message.cumulative),
        variance=decimal_from_proto(message.variance),
        variance_percent=_optional_from(message, "variance_percent"),
        limit=limit_from_proto(message.limit),
        within=message.within,
    )


def _fill_line_match(target: invoice_pb2.LineMatchResult, line: LineMatch, currency: str) -> None:
    target.line_number = line.line_number
    target.matched = line.matched
    target.block_reasons.extend(reasons_to_proto(line.reasons))
    target.po_version = line.po_version
    target.po_id = line.po_id
    target.po_line_number = line.po_line_number
    target.business_unit = line.business_unit
    target.basis = invoice_pb2.MATCH_BASIS_TWO_WAY if line.two_way else invoice_pb2.MATCH_BASIS_THREE_WAY
    fill_decimal(target.stated_amount, line.amount.stated)
    fill_decimal(target.computed_amount, line.amount.computed)
    if line.price is not None:
        _fill_price(target.price, line.price)
        if currency:
            with contextlib.suppress(ValueError):  # more than 9 decimals: the exact figure is price.expected
                target.po_unit_price.CopyFrom(money_to_proto(line.price.expected, currency))
    if line.quantity is not None:
        _fill_quantity(target.quantity, line.quantity)
        if not line.two_way:
            fill_decimal(target.received_quantity, line.quantity.expected)


def line_match_to_proto(line: LineMatch, currency: str = "") -> invoice_pb2.LineMatchResult:
    """A line's match; ``currency`` (the invoice's) fills the Money form of the PO unit price when it fits."""
    message = invoice_pb2.LineMatchResult()
    _fill_line_match(message, line, currency)
    return message


def line_match_from_proto(message: invoice_pb2.LineMatchResult) -> LineMatch:
    return LineMatch(
        line_number=message.line_number,
        po_id=message.po_id,
        po_line_number=message.po_line_number,
        po_version=message.po_version,
        business_unit=message.business_unit,
        two_way=message.basis == invoice_pb2.MATCH_BASIS_TWO_WAY,
        amount=AmountCheck(decimal_from_proto(message.stated_amount), decimal_from_proto(message.computed_amount)),
        price=price_from_proto(message.price) if message.HasField("price") else None,
        quantity=quantity_from_proto(message.quantity) if message.HasField("quantity") else None,
        reasons=reasons_from_proto(message.block_reasons),
    )


def fill_match(target: invoice_pb2.InvoiceMatch, match: MatchResult, currency: str = "", *, lines: bool = True) -> None:
    """Write the whole match into ``target`` (empty); without its ``lines`` when they travel beside it
    (``InvoiceStatus.line_results``)."""
    target.invoice_id = match.invoice_id
    target.matched = match.matched
    target.block_reasons.extend(reasons_to_proto(match.reasons))
    target.header_block_reasons.extend(reasons_to_proto(match.header_reasons))
    if lines:
        for line in match.lines:
            _fill_line_match(target.lines.add(), line, currency)
    for check in match.header:
        header = target.header_checks.add(name=check.name)
        fill_decimal(header.stated, check.stated)
        fill_decimal(header.computed, check.computed)
        fill_decimal(header.small_difference, check.small_difference)
    for duplicate in match.duplicates:
        target.duplicates.add(
            invoice_id=duplicate.invoice_id, invoice_number=duplicate.invoice_number, rules=list(duplicate.rules)
        )
    for suspected in match.suspected_duplicates:
        target.suspected_duplicates.add(
            invoice_id=suspected.invoice_id, invoice_number=suspected.invoice_number, days_apart=suspected.days_apart
        )


def match_to_proto(match: MatchResult, currency: str = "") -> invoice_pb2.InvoiceMatch:
    """The whole match; ``currency`` (the invoice's) fills its lines' Money form of the PO unit price."""
    message = invoice_pb2.InvoiceMatch()
    fill_match(message, match, currency)
    return message


class MatchForms:
    """The proto forms of the submissions' matches encoded last, by the match's identity: the submission's answer,
    which carries the same match, copies the form rather than building it again. Each form is kept with its match,
    so the identity is not reused while it is kept; the oldest go first once ``entries`` are kept or their lines
    pass ``lines`` (an invoice may have 3,000). A form is shared: copy from it, never change it."""

    def __init__(self, entries: int = 256, lines: int = 8_192) -> None:
        self._entries = entries
        self._lines = lines
        self._kept: dict[tuple[int, str], tuple[MatchResult, invoice_pb2.InvoiceMatch]] = {}
        self.lines = 0  # of the forms kept

    def form(self, match: MatchResult, currency: str) -> invoice_pb2.InvoiceMatch:
        """``match_to_proto``, built once and kept (unless its lines alone pass the bound)."""
        kept = self.kept(match, currency)
        if kept is not None:
            return kept
        form = match_to_proto(match, currency)
        lines = len(match.lines)
        if lines > self._lines:
            return form
        while self._kept and (len(self._kept) >= self._entries or self.lines + lines > self._lines):
            oldest, _ = self._kept.pop(next(iter(self._kept)))  # its answer was given, or builds its own
            self.lines -= len(oldest.lines)
        self._kept[(id(match), currency)] = (match, form)
        self.lines += lines
        return form

    def kept(self, match: MatchResult, currency: str) -> invoice_pb2.InvoiceMatch | None:
        """The form :meth:`form` built of this very match, if it is still kept."""
        found = self._kept.get((id(match), currency))
        return found[1] if found is not None and found[0] is match else None

    def __len__(self) -> int:
        return len(self._kept)


MATCH_FORMS = MatchForms()


def match_from_proto(message: invoice_pb2.InvoiceMatch) -> MatchResult:
    return MatchResult(
        invoice_id=message.invoice_id,
        state=MatchState.MATCHED if message.matched else MatchState.BLOCKED,
        reasons=reasons_from_proto(message.block_reasons),
        header_reasons=reasons_from_proto(message.header_block_reasons),
        lines=tuple(line_match_from_proto(line) for line in message.lines),
        header=tuple(
            HeaderCheck(
                check.name,
                decimal_from_proto(check.stated),
                decimal_from_proto(check.computed),
                decimal_from_proto(check.small_difference),
            )
            for check in message.header_checks
        ),
        duplicates=tuple(DuplicateOf(d.invoice_id, d.invoice_number, tuple(d.rules)) for d in message.duplicates),
        suspected_duplicates=tuple(
            SuspectedDuplicate(s.invoice_id, s.invoice_number, s.days_apart) for s in message.suspected_duplicates
        ),
    )


def facts_to_proto(facts: FactVersions) -> invoice_pb2.FactVersions:
    return invoice_pb2.FactVersions(
        po_versions=[invoice_pb2.PoVersion(po_id=po_id, version=version) for po_id, version in facts.po_versions],
        receipt_sequence=facts.receipt_sequence,
        invoice_sequence=facts.invoice_sequence,
        policy_revision=facts.policy_revision,
    )


def facts_from_proto(message: invoice_pb2.FactVersions) -> FactVersions:
    return FactVersions(
        po_versions=tuple((po.po_id, po.version) for po in message.po_versions),
        receipt_sequence=message.receipt_sequence,
        invoice_sequence=message.invoice_sequence,
        policy_revision=message.policy_revision,
    )


def _timestamp(nanoseconds: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(nanoseconds)
    return stamp


def release_to_proto(release: Released) -> invoice_pb2.InvoiceRelease:
    return invoice_pb2.InvoiceRelease(
        released_by=release.released_by,
        released_through=release.released_through,
        reason=release.reason,
        overridden=reasons_to_proto(release.overridden),
    )


def status_message(state: InvoiceState) -> invoice_pb2.InvoiceStatus:
    """An invoice and its state as the responses carry it: the submitted document, when it was recorded, the match
    in force (per line, and whole: header reasons, totals, duplicates) with when it was recorded, the release in
    force and the exceptions raised for the match's blocking reasons. The match's lines are ``line_results``
    (``match`` carries the rest, so an invoice at the line bound is answered inside gRPC's 4 MiB)."""
    message = invoice_pb2.InvoiceStatus()
    fill_status(message, state)
    return message


def fill_status(message: invoice_pb2.InvoiceStatus, state: InvoiceState) -> None:
    """``status_message`` written into ``message`` (empty), e.g. a response's own field: the status, which carries
    the whole invoice, is then not built once and copied again."""
    submitted = state.submitted
    if submitted is None or state.status is None:
        return
    document = submitted.document if isinstance(submitted.document, invoice_pb2.Invoice) else None
    message.invoice.CopyFrom(document if document is not None else invoice_to_proto(submitted.invoice))
    message.state = status_to_proto(state.status)
    if state.submitted_at_ns:
        message.submitted_at.CopyFrom(_timestamp(state.submitted_at_ns))
    if state.match is not None:
        currency = submitted.invoice.currency
        form = MATCH_FORMS.kept(state.match, currency)  # kept when this answers the submission that encoded it
        if form is not None:
            for kept_line in form.lines:
                message.line_results.add().CopyFrom(kept_line)
            message.match.CopyFrom(form)
            message.match.ClearField("lines")
        else:
            for line in state.match.lines:
                _fill_line_match(message.line_results.add(), line, currency)
            fill_match(message.match, state.match, currency, lines=False)
        message.policy_revision = state.facts.policy_revision
        if state.matched_at_ns:
            message.matched_at.CopyFrom(_timestamp(state.matched_at_ns))
    if state.release is not None:
        message.release.CopyFrom(release_to_proto(state.release))
    message.exception_ids.extend(exception_ids(submitted.invoice.invoice_id, state))


@dataclass(frozen=True, slots=True)
class BlockedFilter:
    """What ``ListBlockedInvoices`` lists: blocked for this reason, of this golden supplier, blocked at or before."""

    reason: Reason | None = None
    supplier_id: str = ""
    blocked_before_ns: int | None = None


def blocked_filter(request: invoice_service_pb2.ListBlockedInvoicesRequest) -> BlockedFilter:
    """The listing's filters, or INVALID_ARGUMENT with a field violation for each bad one."""
    violations: list[FieldViolation] = []
    reason = None
    if request.reason != invoice_pb2.BLOCK_REASON_UNSPECIFIED:
        try:
            reason = reason_from_proto(request.reason)
        except ValueError as error:
            violations.append(FieldViolation("reason", str(error)))
    supplier_id = request.supplier_id.strip()
    if len(supplier_id) > MAX_KEY_CHARS:
        violations.append(FieldViolation("supplier_id", f"must be at most {MAX_KEY_CHARS} characters"))
    before = None
    if request.HasField("blocked_before"):
        stamp = request.blocked_before
        if not (_MIN_SECONDS <= stamp.seconds <= _MAX_SECONDS and 0 <= stamp.nanos < 1_000_000_000):
            violations.append(FieldViolation("blocked_before", "is not a valid timestamp"))
        else:
            before = stamp.ToNanoseconds()
    if violations:
        raise InvalidArgument(
            f"the listing's filters are invalid: {violations[0].field} {violations[0].description}",
            violations=violations,
            reason="INVALID_FILTER",
        )
    return BlockedFilter(reason=reason, supplier_id=supplier_id, blocked_before_ns=before)


def released_by(value: str) -> str:
    """The person releasing an invoice, else INVALID_ARGUMENT (nothing is written)."""
    return person(value, "released_by", "releases the invoice")
