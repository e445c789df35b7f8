"""Receiving rules (DESIGN §5.3). Pure: no gRPC, NATS, Valkey or OpenTelemetry here.

The object is an order's receiving record: every receipt and return posted against one purchase order, in
posting order, on the order's own subject (``<ns>.receipt.<po id>.reconciled``). Deciding under that
subject's guard is what makes the cumulative figures exact: two warehouses posting against one order at
once are decided one after the other, each on the figures the other left.

A posting is never silently adjusted. What reconciliation finds (an unknown or cancelled order, a line the
order does not have, an over-receipt beyond the policy's allowance, a document prepared from a superseded
version, a return beyond what was received) is recorded with the document as a finding, each raising an
exception; only a document that cannot be recorded as sent (invalid, a unit without a conversion, a
version nobody published yet, a return naming no receipt, a document id reused for other content) is
refused and writes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

from libs.runtime.decider import Recorded, Refusal, RefusalKind

OBJECT_TYPE = "goods_receipt"
MAX_LINES = 5_000
# Receipts and returns against one order. An order is received in a handful of deliveries; thousands are a
# loop in the posting system, and the receiving record (folded on every posting) must stay small.
MAX_DOCUMENTS_PER_ORDER = 1_000
POSTING_CLOCK_SKEW = timedelta(minutes=5)
EARLIEST_POSTING = datetime(2000, 1, 1, tzinfo=UTC)  # listings page by posting time in milliseconds since 1970
MAX_DECIMALS = 6  # libs.runtime.bounds.MAX_DECIMALS: what quantities hold everywhere
ZERO = Decimal(0)
HUNDRED = Decimal(100)

# Finding types are the contract's exception types (syncgov.exception.v1.ExceptionType, lower case).
OVER_RECEIPT = "over_receipt"
UNKNOWN_PO = "receipt_unknown_po"
SUPERSEDED_VERSION = "superseded_version"
OVER_RETURN = "over_return"
FINDING_TYPES = (OVER_RECEIPT, UNKNOWN_PO, SUPERSEDED_VERSION, OVER_RETURN)

# Exception ids are derived from the document and the finding type, so a repeated posting names (and raises
# again, storing nothing twice) the same ones.
_EXCEPTION_IDS = uuid.UUID("6f1d3c52-2b0e-4c1a-9a57-1c0f6d0e8b31")


class Kind(Enum):
    RECEIPT = "receipt"
    RETURN = "return"


@dataclass(frozen=True, slots=True)
class Violation:
    field: str
    description: str


@dataclass(frozen=True, slots=True)
class ReceiptLine:
    line_number: int
    po_line_number: int
    quantity: Decimal  # received (accepted) or returned, in ``unit``
    unit: str
    rejected: Decimal = ZERO  # delivered but refused at the dock: never received
    reject_reason: str = ""
    short: Decimal = ZERO
    short_reason: str = ""


@dataclass(frozen=True, slots=True)
class Receipt:
    receipt_id: str
    source_system: str
    po_id: str
    po_version: int
    site_id: str
    kind: Kind
    posted_at: datetime
    lines: tuple[ReceiptLine, ...]
    reverses: str = ""  # a return: the id of the receipt (same posting system) whose goods go back

    @property
    def key(self) -> str:
        return document_key(self.source_system, self.receipt_id)


def document_key(source_system: str, receipt_id: str) -> str:
    """A document's identity: receipt ids are unique per posting system, not across systems."""
    return f"{source_system}/{receipt_id}"


def natural_idempotency_key(source_system: str, receipt_id: str) -> str:
    """DESIGN §3.4: source system + document id, when the caller names no key."""
    return f"{source_system}:{OBJECT_TYPE}:{receipt_id}"


def exception_id(po_id: str, document: str, finding_type: str) -> str:
    """One exception per finding type of a document, whatever the number of lines it concerns: a document of
    5,000 lines the order lacks raises one exception naming them, not 5,000 each carrying the document."""
    return str(uuid.uuid5(_EXCEPTION_IDS, f"{po_id}|{document}|{finding_type}"))


def validate_receipt(receipt: Receipt, now: datetime, prefix: str = "receipt") -> list[Violation]:
    """Every problem of the document on its own (before any order is looked at)."""
    problems: list[Violation] = []

    def bad(path: str, description: str) -> None:
        problems.append(Violation(f"{prefix}.{path}" if path else prefix, description))

    for name in ("receipt_id", "po_id", "site_id"):
        if not getattr(receipt, name).strip():
            bad(name, "is required")
    if receipt.po_version < 1:
        bad("po_version", "is required: the purchase order version the warehouse worked from (1 or more)")
    if receipt.posted_at > now + POSTING_CLOCK_SKEW:
        bad("posted_at", f"lies in the future ({receipt.posted_at.isoformat()})")
    elif receipt.posted_at < EARLIEST_POSTING:
        bad("posted_at", f"lies before {EARLIEST_POSTING.date().isoformat()}: not a receipt this system can have")
    if receipt.kind is Kind.RETURN and not receipt.reverses.strip():
        bad("reverses_receipt_id", "is required for a return: the receipt whose goods go back")
    if receipt.kind is Kind.RECEIPT and receipt.reverses:
        bad("reverses_receipt_id", "is only for returns")
    if receipt.kind is Kind.RETURN and receipt.reverses == receipt.receipt_id:
        bad("reverses_receipt_id", "names the return itself")
    if not receipt.lines:
        bad("lines", "a document needs at least one line")
    if len(receipt.lines) > MAX_LINES:
        bad("lines", f"at most {MAX_LINES} lines")
    seen: set[int] = set()
    for index, line in enumerate(receipt.lines):
        path = f"lines[{index}]"
        if line.line_number < 1:
            bad(f"{path}.line_number", "must be 1 or more")
        elif line.line_number in seen:
            bad(f"{path}.line_number", f"line {line.line_number} appears twice")
        seen.add(line.line_number)
        if line.po_line_number < 1:
            bad(f"{path}.po_line_number", "is required: the purchase order line the goods belong to")
        if not line.unit.strip():
            bad(f"{path}.unit_of_measure", "is required")
        for name, value in (("quantity", line.quantity), ("rejected_quantity", line.rejected)):
            if value < 0:
                bad(f"{path}.{name}", "must not be negative (a return is a document of kind RETURN)")
        if line.short < 0:
            bad(f"{path}.short_quantity", "must not be negative")
        if line.rejected > 0 and not line.reject_reason.strip():
            bad(f"{path}.reject_reason_code", "is required with a rejected quantity")
        if line.short > 0 and not line.short_reason.strip():
            bad(f"{path}.short_reason_code", "is required with a short quantity")
        if receipt.kind is Kind.RETURN:
            if line.rejected or line.short:
                bad(path, "a return carries no rejected or short quantity")
            if line.quantity <= 0:
                bad(f"{path}.quantity", "a returned quantity must be positive")
        elif line.quantity == 0 and line.rejected == 0 and line.short == 0:
            bad(path, "receives, rejects and misses nothing")
    return problems


# --- The order as this service knows it (followed from po-publication's events) ---------------------------


@dataclass(frozen=True, slots=True)
class OrderLine:
    quantity: Decimal
    unit: str


@dataclass(frozen=True, slots=True)
class OrderView:
    """The latest published version of a purchase order: what a receipt is reconciled against."""

    po_id: str
    version: int
    cancelled: bool
    business_unit: str
    lines: Mapping[int, OrderLine]
    sequence: int  # of the PO event it reflects in the PO stream


# --- The receiving record as a decider (DESIGN §3 rule 9) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    type: str  # one of FINDING_TYPES
    po_line_number: int  # 0: the document as a whole
    detail: str
    exception_id: str  # shared by the findings of one type in one document


MAX_DETAILS_PER_EXCEPTION = 20


def exceptions_of(findings: tuple[Finding, ...]) -> list[tuple[str, str, str]]:
    """(exception id, finding type, detail) per exception to raise: the findings of one type together, their
    details listed up to a bound (the event keeps every finding)."""
    grouped: dict[str, list[Finding]] = {}
    for finding in findings:
        grouped.setdefault(finding.exception_id, []).append(finding)
    raised = []
    for exception, same in grouped.items():
        details = [finding.detail for finding in same[:MAX_DETAILS_PER_EXCEPTION]]
        if len(same) > MAX_DETAILS_PER_EXCEPTION:
            details.append(f"and {len(same) - MAX_DETAILS_PER_EXCEPTION} more line(s)")
        raised.append((exception, same[0].type, "; ".join(details)))
    return raised


@dataclass(frozen=True, slots=True)
class LineFigures:
    """One order line's cumulative figures, in ``unit`` (the order line's, else the first document's)."""

    received: Decimal = ZERO  # net: receipts minus returns
    returned: Decimal = ZERO
    rejected: Decimal = ZERO
    unit: str = ""


@dataclass(frozen=True, slots=True)
class LineStatus:
    po_line_number: int
    ordered: Decimal | None  # None: the order (or the line) is unknown
    figures: LineFigures

    @property
    def open(self) -> Decimal | None:
        return None if self.ordered is None else self.ordered - self.figures.received

    @property
    def fully_received(self) -> bool:
        return self.ordered is not None and self.figures.received >= self.ordered


@dataclass(frozen=True, slots=True)
class LineQuantity:
    """One document line in the order line's unit."""

    line_number: int
    po_line_number: int
    quantity: Decimal
    rejected: Decimal
    unit: str


Document = Any  # opaque to the domain: the contract's form of the document


@dataclass(frozen=True, slots=True)
class Reconciled:
    """A document posted and reconciled: the one event of a posting."""

    receipt: Receipt
    document: Document
    fingerprint: str
    idempotency_key: str
    reconciled_version: int  # 0: the order is unknown
    quantities: tuple[LineQuantity, ...]
    lines: tuple[LineStatus, ...]  # every order line the document touched, after it
    findings: tuple[Finding, ...]
    fully_received: bool


ReceivingEvent = Reconciled


@dataclass(frozen=True, slots=True)
class PostedDocument:
    event: Reconciled
    sequence: int


@dataclass(frozen=True, slots=True)
class ReceivingState:
    documents: Mapping[str, PostedDocument] = field(default_factory=dict)  # document key -> posting
    lines: Mapping[int, LineFigures] = field(default_factory=dict)
    order: tuple[str, ...] = ()  # document keys in posting order

    @property
    def exists(self) -> bool:
        return bool(self.documents)

    def returned_against(self, receipt_key: str) -> dict[int, Decimal]:
        """What returns have given back so far of one receipt's goods, per order line (one pass)."""
        given_back: dict[int, Decimal] = {}
        for key in self.order:
            event = self.documents[key].event
            if event.receipt.kind is not Kind.RETURN:
                continue
            if document_key(event.receipt.source_system, event.receipt.reverses) != receipt_key:
                continue
            for quantity in event.quantities:
                line = quantity.po_line_number
                given_back[line] = given_back.get(line, ZERO) + quantity.quantity
        return given_back


INITIAL = ReceivingState()


def evolve(state: ReceivingState, recorded: Recorded[ReceivingEvent]) -> ReceivingState:
    event = recorded.event
    key = event.receipt.key
    if key in state.documents:  # the stream holds one posting per document; a second is not folded twice
        return state
    lines = dict(state.lines)
    for status in event.lines:
        lines[status.po_line_number] = status.figures
    return ReceivingState(
        documents={**state.documents, key: PostedDocument(event, recorded.sequence)},
        lines=lines,
        order=(*state.order, key),
    )


@dataclass(frozen=True, slots=True)
class Rules:
    """What the policy in force says, as plain values and functions (the domain reads no policy object)."""

    over_receipt_percent: Callable[[str], Decimal]  # business unit -> allowance
    unit_factor: Callable[[str, str], Decimal | None]  # (from, to) -> how many ``to`` make one ``from``


@dataclass(frozen=True, slots=True)
class PostReceipt:
    receipt: Receipt
    document: Document
    fingerprint: str
    idempotency_key: str
    recorded_against: str | None = None  # the order the document id is already recorded against, if another's


def decide(
    command: PostReceipt, state: ReceivingState, order: OrderView | None, rules: Rules
) -> Reconciled | Refusal | None:
    receipt = command.receipt
    posted = state.documents.get(receipt.key)
    if posted is not None:
        if posted.event.fingerprint == command.fingerprint:
            return None  # the same document again: answered as the first time
        return Refusal(
            RefusalKind.CONFLICT,
            "DUPLICATE_RECEIPT",
            f"{receipt.source_system} posted document {receipt.receipt_id!r} against {receipt.po_id} before, with "
            "other content; post a correction under a new document id",
            metadata={"receipt_id": receipt.receipt_id, "po_id": receipt.po_id},
            exception="duplicate_transaction",
            evidence=(posted.event.document, command.document),
        )
    if command.recorded_against is not None and command.recorded_against != receipt.po_id:
        return Refusal(
            RefusalKind.CONFLICT,
            "DUPLICATE_RECEIPT",
            f"{receipt.source_system} posted document {receipt.receipt_id!r} against {command.recorded_against} "
            f"before; a document is posted against one order (post {receipt.po_id}'s under a new document id)",
            metadata={"receipt_id": receipt.receipt_id, "recorded_against": command.recorded_against},
            exception="duplicate_transaction",
            evidence=(command.document,),
        )
    if len(state.documents) >= MAX_DOCUMENTS_PER_ORDER:
        return Refusal(
            RefusalKind.PRECONDITION,
            "TOO_MANY_DOCUMENTS",
            f"{receipt.po_id} holds {len(state.documents)} receipts and returns, the most one order may hold",
            subject=receipt.po_id,
        )
    if order is not None and receipt.po_version > order.version:
        return Refusal(
            RefusalKind.PRECONDITION,
            "VERSION_NOT_PUBLISHED",
            f"{receipt.po_id} has no version {receipt.po_version} yet (the latest published is {order.version}); "
            "post the document again once that version is published",
            subject=receipt.po_id,
            metadata={"po_version": str(receipt.po_version), "latest_version": str(order.version)},
        )
    reversed_receipt: PostedDocument | None = None
    if receipt.kind is Kind.RETURN:
        reversed_receipt = state.documents.get(document_key(receipt.source_system, receipt.reverses))
        if reversed_receipt is None or reversed_receipt.event.receipt.kind is not Kind.RECEIPT:
            return Refusal(
                RefusalKind.PRECONDITION,
                "UNKNOWN_REVERSED_RECEIPT",
                f"the return names receipt {receipt.reverses!r}, which {receipt.source_system} did not post against "
                f"{receipt.po_id}",
                subject=receipt.po_id,
                metadata={"reverses_receipt_id": receipt.reverses},
            )
    quantities = _in_order_units(receipt, state, order, rules)
    if isinstance(quantities, Refusal):
        return quantities
    return _reconcile(command, state, order, rules, quantities, reversed_receipt)


def _target_unit(line: ReceiptLine, state: ReceivingState, order: OrderView | None) -> str:
    """The unit a document line is counted in: the order line's, else the one its line was counted in so far."""
    if order is not None and line.po_line_number in order.lines:
        return order.lines[line.po_line_number].unit
    known = state.lines.get(line.po_line_number)
    return known.unit if known is not None and known.unit else line.unit


def _in_order_units(
    receipt: Receipt, state: ReceivingState, order: OrderView | None, rules: Rules
) -> tuple[LineQuantity, ...] | Refusal:
    quantities: list[LineQuantity] = []
    violations: list[tuple[str, str]] = []
    for index, line in enumerate(receipt.lines):
        unit = _target_unit(line, state, order)
        factor = rules.unit_factor(line.unit, unit)
        counted = state.lines.get(line.po_line_number)
        if factor is None:
            violations.append(
                (
                    f"receipt.lines[{index}].unit_of_measure",
                    f"line {line.line_number} is in {line.unit} but purchase order line {line.po_line_number} counts "
                    f"in {unit}, and the policy knows no exact conversion (receiving.unit_conversions)",
                )
            )
        elif counted is not None and counted.unit != unit and rules.unit_factor(counted.unit, unit) is None:
            # Documents posted before the order was known counted the line in their own unit.
            violations.append(
                (
                    f"receipt.lines[{index}].unit_of_measure",
                    f"earlier documents counted purchase order line {line.po_line_number} in {counted.unit}, the "
                    f"order counts it in {unit}, and the policy knows no exact conversion (receiving.unit_conversions)",
                )
            )
        elif not (_fits(line.quantity * factor) and _fits(line.rejected * factor)):
            violations.append(
                (
                    f"receipt.lines[{index}].quantity",
                    f"line {line.line_number}: {_plain(line.quantity)} {line.unit} in {unit} needs more than "
                    f"{MAX_DECIMALS} decimals; post it in {unit}",
                )
            )
        else:
            quantities.append(
                LineQuantity(
                    line.line_number, line.po_line_number, line.quantity * factor, line.rejected * factor, unit
                )
            )
    if violations:
        return Refusal(
            RefusalKind.INVALID,
            "UNKNOWN_UNIT_CONVERSION",
            f"{len(violations)} line(s) of {receipt.receipt_id} cannot be counted in the order's units; nothing was "
            "recorded",
            violations=tuple(violations),
        )
    return tuple(quantities)


def _fits(quantity: Decimal) -> bool:
    """Whether a converted quantity is one an ERP holds: rounding it would adjust the receipt silently."""
    exponent = quantity.normalize().as_tuple().exponent
    return isinstance(exponent, int) and exponent >= -MAX_DECIMALS


def _counted_in(figures: LineFigures, unit: str, rules: Rules) -> LineFigures:
    """A line's figures in ``unit`` (checked convertible before deciding)."""
    if not figures.unit or figures.unit == unit:
        return replace(figures, unit=unit)
    factor = rules.unit_factor(figures.unit, unit)
    assert factor is not None, "_in_order_units refuses a line whose figures cannot be converted"
    return LineFigures(figures.received * factor, figures.returned * factor, figures.rejected * factor, unit)


def _reconcile(
    command: PostReceipt,
    state: ReceivingState,
    order: OrderView | None,
    rules: Rules,
    quantities: tuple[LineQuantity, ...],
    reversed_receipt: PostedDocument | None,
) -> Reconciled:
    receipt = command.receipt
    findings: list[Finding] = []

    def find(finding_type: str, po_line_number: int, detail: str) -> None:
        findings.append(
            Finding(
                finding_type,
                po_line_number,
                detail,
                exception_id(receipt.po_id, receipt.key, finding_type),
            )
        )

    if order is None:
        find(UNKNOWN_PO, 0, f"purchase order {receipt.po_id} is unknown: no version was ever published")
    elif order.cancelled:
        find(UNKNOWN_PO, 0, f"purchase order {receipt.po_id} is cancelled (version {order.version})")
    elif receipt.po_version < order.version:
        find(
            SUPERSEDED_VERSION,
            0,
            f"prepared from version {receipt.po_version} of {receipt.po_id}; version {order.version} superseded it "
            f"and is what the document was reconciled against",
        )

    figures = dict(state.lines)
    touched: list[int] = []
    for quantity in quantities:
        line = quantity.po_line_number
        before = _counted_in(figures.get(line, LineFigures()), quantity.unit, rules)
        if receipt.kind is Kind.RECEIPT:
            after = replace(
                before, received=before.received + quantity.quantity, rejected=before.rejected + quantity.rejected
            )
        else:
            after = replace(
                before, received=before.received - quantity.quantity, returned=before.returned + quantity.quantity
            )
        figures[line] = after
        if line not in touched:
            touched.append(line)

    live = order is not None and not order.cancelled
    received_here = _per_line(quantities)
    for line in touched:
        after = figures[line]
        if live and order is not None and line not in order.lines:
            find(UNKNOWN_PO, line, f"version {order.version} of {receipt.po_id} has no line {line}")
            continue
        if not live or order is None:
            continue
        ordered = order.lines[line].quantity
        if receipt.kind is Kind.RECEIPT and received_here.get(line, ZERO) > 0:  # only what this document took in
            allowance = rules.over_receipt_percent(order.business_unit)
            limit = ordered * (1 + allowance / HUNDRED)
            if after.received > limit:
                find(
                    OVER_RECEIPT,
                    line,
                    f"line {line}: {_plain(after.received)} {after.unit} received against {_plain(ordered)} ordered "
                    f"in version {order.version}, beyond the {_plain(allowance)}% allowance ({_plain(limit)})",
                )
    if reversed_receipt is not None:
        original = reversed_receipt.event
        taken = _per_line(original.quantities)
        given_back = state.returned_against(original.receipt.key)
        returning = _per_line(quantities)
        for line in touched:
            total = given_back.get(line, ZERO) + returning.get(line, ZERO)
            if total > taken.get(line, ZERO):
                unit = figures[line].unit
                find(
                    OVER_RETURN,
                    line,
                    f"line {line}: {_plain(total)} {unit} returned against receipt {original.receipt.receipt_id}, "
                    f"which received {_plain(taken.get(line, ZERO))} {unit}",
                )

    def status(line: int) -> LineStatus:
        ordered = order.lines[line].quantity if order is not None and line in order.lines else None
        return LineStatus(line, ordered, figures[line])

    version = order.version if order is not None else 0
    return Reconciled(
        receipt=receipt,
        document=command.document,
        fingerprint=command.fingerprint,
        idempotency_key=command.idempotency_key,
        reconciled_version=version,
        quantities=quantities,
        lines=tuple(status(line) for line in touched),
        findings=tuple(findings),
        fully_received=order is not None
        and fully_received_status(status_of(replace(state, lines=figures), order, rules.unit_factor), order),
    )


def _per_line(quantities: tuple[LineQuantity, ...]) -> dict[int, Decimal]:
    totals: dict[int, Decimal] = {}
    for quantity in quantities:
        totals[quantity.po_line_number] = totals.get(quantity.po_line_number, ZERO) + quantity.quantity
    return totals


def status_of(
    state: ReceivingState, order: OrderView | None, unit_factor: Callable[[str, str], Decimal | None] | None = None
) -> tuple[LineStatus, ...]:
    """Per line of the order (and per line received that it does not have): ordered, received, open. Figures
    counted in a document's unit before the order was known are shown in the order line's unit when the policy
    converts it exactly."""
    statuses: list[LineStatus] = []
    for number in sorted({*(order.lines if order is not None else ()), *state.lines}):
        ordered = order.lines.get(number) if order is not None else None
        figures = state.lines.get(number) or LineFigures(unit=ordered.unit if ordered is not None else "")
        if ordered is not None and figures.unit != ordered.unit and unit_factor is not None:
            factor = unit_factor(figures.unit, ordered.unit)
            if factor is not None:
                figures = LineFigures(
                    figures.received * factor, figures.returned * factor, figures.rejected * factor, ordered.unit
                )
        statuses.append(LineStatus(number, ordered.quantity if ordered is not None else None, figures))
    return tuple(statuses)


def fully_received_status(statuses: tuple[LineStatus, ...], order: OrderView) -> bool:
    """Whether every line of the order is fully received, judged on the statuses (in the order's units)."""
    received = {status.po_line_number: status for status in statuses}
    return all(number in received and received[number].fully_received for number in order.lines)


def _plain(number: Decimal) -> str:
    """A quantity as people write it: 12, 12.5 (no exponent, no trailing zeros)."""
    text = format(number, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
