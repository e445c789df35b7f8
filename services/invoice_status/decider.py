"""The invoice as a decider (DESIGN §3 rule 9, issue 11). Pure: no gRPC, NATS, Valkey or OpenTelemetry here.

The object is one invoice, keyed by procurement's invoice id. Its states::

    (none) --submitted--> matched | blocked          (the submission carries its first match)
    matched | blocked | released --re-match--> matched | blocked | released
    blocked --released (a person, through a system, a reason)--> released
    matched | released --approved--> approved_for_payment --paid (the ERP)--> paid
    matched | blocked --disputed--> disputed
    anything but paid --cancelled--> cancelled

``received`` is the contract's state of an invoice recorded without a match; a submission here always carries
its first match, so an invoice goes from nothing straight to ``matched`` or ``blocked`` (a re-match of a
``received`` invoice is still accepted, should one ever be folded). ``released`` is a blocked invoice whose
blocking reasons a person overrode (audited: who, why, which reasons); a re-match that finds only reasons the
release covered keeps it released, one that finds a new reason blocks it again (the release lapses), one that
finds none matches it. Approved, paid, disputed and cancelled invoices are never re-matched.

The match itself (:func:`services.invoice_status.matching.match_invoice`) is computed by the caller against the
facts it followed; a command carries its result and the versions of the facts it used (:class:`FactVersions`),
so a re-match on facts older than the last one, or one whose result is the last one, appends nothing. A re-match
older than the last one on one fact and newer on another (two replicas, each having read something the other had
not) is refused (``STALE_FACTS``): the caller matches again once it has read as far as the match recorded.

Every amount is a :class:`~decimal.Decimal`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Any

from libs.runtime.decider import Recorded, Refusal, RefusalKind
from services.invoice_status.domain import Invoice, MatchResult, MatchState, Reason, validate_invoice

Document = Any  # opaque to the domain: the contract's form of the invoice


class InvoiceStatus(StrEnum):
    RECEIVED = "received"
    MATCHED = "matched"
    BLOCKED = "blocked"
    RELEASED = "released"  # blocked, every blocking reason overridden by a person
    APPROVED_FOR_PAYMENT = "approved_for_payment"
    PAID = "paid"
    DISPUTED = "disputed"
    CANCELLED = "cancelled"


REMATCHABLE = frozenset({InvoiceStatus.RECEIVED, InvoiceStatus.MATCHED, InvoiceStatus.BLOCKED, InvoiceStatus.RELEASED})
APPROVABLE = frozenset({InvoiceStatus.MATCHED, InvoiceStatus.RELEASED})
DISPUTABLE = frozenset({InvoiceStatus.MATCHED, InvoiceStatus.BLOCKED})


@dataclass(frozen=True, slots=True)
class FactVersions:
    """Which facts a match read: the version of each PO it looked at, and how far it had read the receipt and the
    invoice streams (their last sequences). Compared component-wise: a match no newer than the last one on any
    component (and older on one) is superseded (:meth:`older_than`); one older on some component and newer on
    another read facts the last one did not, and missed some it did (:meth:`older_on_any`): neither is recorded."""

    po_versions: tuple[tuple[str, int], ...] = ()  # (PO id, version), sorted by PO id
    receipt_sequence: int = 0
    invoice_sequence: int = 0
    policy_revision: int = 0  # whose tolerances the match applied (not a fact: never compared)

    def older_than(self, other: FactVersions) -> bool:
        mine = dict(self.po_versions)
        theirs = dict(other.po_versions)
        if not mine.keys() <= theirs.keys():
            return False
        pairs = [(mine[po], theirs[po]) for po in mine]
        pairs += [(self.receipt_sequence, other.receipt_sequence), (self.invoice_sequence, other.invoice_sequence)]
        return all(a <= b for a, b in pairs) and (any(a < b for a, b in pairs) or mine.keys() < theirs.keys())

    def older_on_any(self, other: FactVersions) -> bool:
        """Whether one fact read is older than ``other``'s: a PO at a lower version (or not read at all, where
        ``other`` read it), or a stream read to a lower sequence. A match read this way may have missed what
        ``other``'s saw (a receipt, an invoice), whatever it read newer elsewhere."""
        mine = dict(self.po_versions)
        return (
            any(mine.get(po, 0) < version for po, version in other.po_versions)
            or self.receipt_sequence < other.receipt_sequence
            or self.invoice_sequence < other.invoice_sequence
        )


# --- Events ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvoiceSubmitted:
    invoice: Invoice
    fingerprint: str  # of the invoice's content: the same submission again is a replay
    idempotency_key: str
    match: MatchResult  # the first match
    facts: FactVersions
    document: Document = None


@dataclass(frozen=True, slots=True)
class Matched:
    """A re-match found nothing blocking."""

    match: MatchResult
    facts: FactVersions


@dataclass(frozen=True, slots=True)
class Blocked:
    """A re-match found blocking reasons (other ones, or other figures, than the last match)."""

    match: MatchResult
    facts: FactVersions


@dataclass(frozen=True, slots=True)
class Released:
    """A person overrode every blocking reason that applied at the time (audited)."""

    released_by: str  # the person
    reason: str
    overridden: tuple[Reason, ...]  # the blocking reasons of the match in force
    released_through: str = ""  # the system the person released it through ("" in events recorded before it)


@dataclass(frozen=True, slots=True)
class ApprovedForPayment:
    approved_by: str


@dataclass(frozen=True, slots=True)
class Paid:
    """The ERP paid the invoice."""

    payment_reference: str
    amount: Decimal
    currency: str
    paid_on: date


@dataclass(frozen=True, slots=True)
class Disputed:
    reason: str


@dataclass(frozen=True, slots=True)
class Cancelled:
    reason: str


InvoiceEvent = InvoiceSubmitted | Matched | Blocked | Released | ApprovedForPayment | Paid | Disputed | Cancelled


# --- State -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvoiceState:
    submitted: InvoiceSubmitted | None = None
    status: InvoiceStatus | None = None  # None: no such invoice
    match: MatchResult | None = None  # the match in force (the last one recorded)
    facts: FactVersions = field(default_factory=FactVersions)
    release: Released | None = None  # the release in force (a released invoice, or one approved after it)
    approval: ApprovedForPayment | None = None
    payment: Paid | None = None
    dispute: Disputed | None = None
    cancellation: Cancelled | None = None
    sequence: int = 0  # of the last event folded
    submitted_at_ns: int = 0  # when the submission was recorded (the stream's time, epoch nanoseconds)
    matched_at_ns: int = 0  # when the match in force was recorded
    match_sequence: int = 0  # the sequence of the event that recorded the match in force
    # The sequence of the match event whose blocking reasons were raised as exceptions: the match in force left
    # the invoice blocked when it was recorded (0: it did not — matched, or a re-match the release covered).
    exceptions_sequence: int = 0
    blocked_since_ns: int = 0  # when the invoice last became blocked, while it is blocked (0 otherwise)
    ever_blocked: bool = False  # some event up to ``sequence`` left it blocked (the blocked list may name it)

    @property
    def exists(self) -> bool:
        return self.submitted is not None


INITIAL = InvoiceState()


def _status_of(match: MatchResult) -> InvoiceStatus:
    return InvoiceStatus.MATCHED if match.state is MatchState.MATCHED else InvoiceStatus.BLOCKED


def evolve(state: InvoiceState, recorded: Recorded[InvoiceEvent]) -> InvoiceState:
    event = recorded.event
    seq = recorded.sequence
    at = recorded.recorded_at_ns
    if isinstance(event, InvoiceSubmitted):
        if state.exists:  # one submission per invoice; a second is not folded
            return state
        status = _status_of(event.match)
        blocked = status is InvoiceStatus.BLOCKED
        return InvoiceState(
            submitted=event,
            status=status,
            match=event.match,
            facts=event.facts,
            sequence=seq,
            submitted_at_ns=at,
            matched_at_ns=at,
            match_sequence=seq,
            exceptions_sequence=seq if blocked else 0,
            blocked_since_ns=at if blocked else 0,
            ever_blocked=blocked,
        )
    if not state.exists:  # nothing is folded before the submission
        return state
    if isinstance(event, Matched):
        return _with(
            state,
            seq,
            status=InvoiceStatus.MATCHED,
            match=event.match,
            facts=event.facts,
            release=None,
            matched_at_ns=at,
            match_sequence=seq,
            exceptions_sequence=0,
        )
    if isinstance(event, Blocked):
        release = state.release
        if release is not None and set(event.match.reasons) <= set(release.overridden):
            status = InvoiceStatus.RELEASED  # nothing the release did not cover
        else:
            status, release = InvoiceStatus.BLOCKED, None
        blocked = status is InvoiceStatus.BLOCKED
        return _with(
            state,
            seq,
            status=status,
            match=event.match,
            facts=event.facts,
            release=release,
            matched_at_ns=at,
            match_sequence=seq,
            exceptions_sequence=seq if blocked else 0,
            blocked_since_ns=(state.blocked_since_ns or at) if blocked else 0,
            ever_blocked=state.ever_blocked or blocked,
        )
    if isinstance(event, Released):
        return _with(state, seq, status=InvoiceStatus.RELEASED, release=event)
    if isinstance(event, ApprovedForPayment):
        return _with(state, seq, status=InvoiceStatus.APPROVED_FOR_PAYMENT, approval=event)
    if isinstance(event, Paid):
        return _with(state, seq, status=InvoiceStatus.PAID, payment=event)
    if isinstance(event, Disputed):
        return _with(state, seq, status=InvoiceStatus.DISPUTED, dispute=event)
    return _with(state, seq, status=InvoiceStatus.CANCELLED, cancellation=event)


def _with(state: InvoiceState, sequence: int, **changes: Any) -> InvoiceState:
    """The state after an event; an invoice no longer blocked has no blocked time."""
    changes.setdefault(
        "blocked_since_ns",
        state.blocked_since_ns if changes.get("status", state.status) is InvoiceStatus.BLOCKED else 0,
    )
    return replace(state, sequence=sequence, **changes)


# --- Commands ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitInvoice:
    invoice: Invoice
    fingerprint: str
    idempotency_key: str
    match: MatchResult  # matching.match_invoice of the invoice against the facts current now
    facts: FactVersions = field(default_factory=FactVersions)
    document: Document = None


@dataclass(frozen=True, slots=True)
class Rematch:
    invoice_id: str
    match: MatchResult
    facts: FactVersions


@dataclass(frozen=True, slots=True)
class Release:
    invoice_id: str
    released_by: str  # the person
    reason: str
    released_through: str = ""  # the calling system (the edge checks the policy's ``invoice_release`` permission)


@dataclass(frozen=True, slots=True)
class Approve:
    invoice_id: str
    approved_by: str


@dataclass(frozen=True, slots=True)
class RecordPayment:
    invoice_id: str
    payment_reference: str
    amount: Decimal
    currency: str
    paid_on: date


@dataclass(frozen=True, slots=True)
class Dispute:
    invoice_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Cancel:
    invoice_id: str
    reason: str


# A re-match refused for reading a fact older than the match recorded (and another newer): the caller matches again.
STALE_FACTS = "STALE_FACTS"

InvoiceCommand = SubmitInvoice | Rematch | Release | Approve | RecordPayment | Dispute | Cancel
Decision = InvoiceEvent | Refusal | None


def decide(command: InvoiceCommand, state: InvoiceState) -> Decision:
    """One new event, ``None`` (applied already: a replay, or a re-match that changes nothing) or a refusal."""
    if isinstance(command, SubmitInvoice):
        return decide_submit(command, state)
    if isinstance(command, Rematch):
        return decide_rematch(command, state)
    if isinstance(command, Release):
        return decide_release(command, state)
    if isinstance(command, Approve):
        return decide_approve(command, state)
    if isinstance(command, RecordPayment):
        return decide_payment(command, state)
    if isinstance(command, Dispute):
        return decide_dispute(command, state)
    return decide_cancel(command, state)


def decide_submit(command: SubmitInvoice, state: InvoiceState) -> InvoiceSubmitted | Refusal | None:
    invoice = command.invoice
    stored = state.submitted
    if stored is not None:
        if stored.fingerprint == command.fingerprint:
            return None  # the same invoice again: answered as the first time
        return Refusal(
            RefusalKind.CONFLICT,
            "DUPLICATE_TRANSACTION",
            f"invoice {invoice.invoice_id} was submitted before with other content; submit a correction as a "
            "credit note and a new invoice",
            subject=invoice.invoice_id,
            metadata={"invoice_id": invoice.invoice_id, "idempotency_key": command.idempotency_key},
            exception="duplicate_transaction",
            evidence=(stored.document if stored.document is not None else stored.invoice, _document(command)),
        )
    problems = validate_invoice(invoice)
    if problems:
        return Refusal(
            RefusalKind.INVALID,
            "INVALID_INVOICE",
            f"the invoice has {len(problems)} problem(s): {problems[0].field} {problems[0].description}",
            subject=invoice.invoice_id,
            violations=tuple((problem.field, problem.description) for problem in problems),
        )
    if command.match.invoice_id != invoice.invoice_id:
        return _other_invoice(invoice.invoice_id, command.match)
    return InvoiceSubmitted(
        invoice=invoice,
        fingerprint=command.fingerprint,
        idempotency_key=command.idempotency_key,
        match=command.match,
        facts=command.facts,
        document=command.document,
    )


def decide_rematch(command: Rematch, state: InvoiceState) -> Matched | Blocked | Refusal | None:
    if state.status is None:
        return _not_found(command.invoice_id)
    if command.match.invoice_id != command.invoice_id:
        return _other_invoice(command.invoice_id, command.match)
    if state.status not in REMATCHABLE:
        return _precondition(
            "NOT_REMATCHABLE",
            command.invoice_id,
            state,
            "only a received, matched, blocked or released invoice is re-matched",
        )
    if command.facts.older_than(state.facts):
        return None  # a newer match is recorded already
    if command.facts.older_on_any(state.facts):
        return _stale(command, state)  # newer on some fact, older on another: matched again on the facts recorded
    if command.match == state.match:
        return None  # nothing changed
    if command.match.state is MatchState.MATCHED:
        return Matched(command.match, command.facts)
    return Blocked(command.match, command.facts)


def decide_release(command: Release, state: InvoiceState) -> Released | Refusal | None:
    if state.status is None:
        return _not_found(command.invoice_id)
    missing = _required(("released_by", command.released_by), ("reason", command.reason))
    if missing is not None:
        return missing
    release = state.release
    if (
        state.status is InvoiceStatus.RELEASED
        and release is not None
        and (release.released_by, release.reason) == (command.released_by, command.reason)
    ):
        return None  # the same release again (the same person and reason, through whichever system)
    if state.status is not InvoiceStatus.BLOCKED or state.match is None:
        return _precondition("NOT_BLOCKED", command.invoice_id, state, "only a blocked invoice can be released")
    return Released(command.released_by, command.reason, state.match.reasons, command.released_through)


def decide_approve(command: Approve, state: InvoiceState) -> ApprovedForPayment | Refusal | None:
    if state.status is None:
        return _not_found(command.invoice_id)
    missing = _required(("approved_by", command.approved_by))
    if missing is not None:
        return missing
    if state.status is InvoiceStatus.APPROVED_FOR_PAYMENT and state.approval == ApprovedForPayment(command.approved_by):
        return None
    if state.status not in APPROVABLE:
        return _precondition(
            "NOT_APPROVABLE",
            command.invoice_id,
            state,
            "only a matched or released invoice can be approved for payment",
        )
    return ApprovedForPayment(command.approved_by)


def payment_refused(approve: Approve, payment: RecordPayment, state: InvoiceState) -> Refusal | None:
    """What paying would answer once the invoice is approved (the ERP's payment approves a matched or released invoice
    first, one event each): a payment that would be refused must be refused before the approval is appended, so a
    refused request leaves nothing behind."""
    if state.status in APPROVABLE:
        approval = decide_approve(approve, state)
        if isinstance(approval, Refusal):
            return approval
        if approval is not None:
            state = evolve(state, Recorded(approval, state.sequence + 1, "", 0, "", approve.approved_by))
    decision = decide_payment(payment, state)
    return decision if isinstance(decision, Refusal) else None


def decide_payment(command: RecordPayment, state: InvoiceState) -> Paid | Refusal | None:
    if state.status is None or state.submitted is None:
        return _not_found(command.invoice_id)
    missing = _required(("payment_reference", command.payment_reference))
    if missing is not None:
        return missing
    paid = Paid(command.payment_reference, command.amount, command.currency, command.paid_on)
    recorded = state.payment
    if state.status is InvoiceStatus.PAID and recorded is not None:
        if recorded == paid:
            return None  # the same payment again
        return Refusal(
            RefusalKind.CONFLICT,
            "ALREADY_PAID",
            f"invoice {command.invoice_id} was paid by {recorded.payment_reference} "
            f"({recorded.amount} {recorded.currency} on {recorded.paid_on.isoformat()})",
            subject=command.invoice_id,
            metadata={
                "payment_reference": recorded.payment_reference,
                "recorded_amount": str(recorded.amount),
                "recorded_currency": recorded.currency,
            },
        )
    if state.status is not InvoiceStatus.APPROVED_FOR_PAYMENT:
        return _precondition(
            "NOT_APPROVED_FOR_PAYMENT", command.invoice_id, state, "only an invoice approved for payment can be paid"
        )
    invoice = state.submitted.invoice
    if command.currency != invoice.currency or command.amount != invoice.gross_total:
        return Refusal(
            RefusalKind.PRECONDITION,
            "PAYMENT_AMOUNT_MISMATCH",
            f"invoice {command.invoice_id} is approved for {invoice.gross_total} {invoice.currency}; the payment "
            f"{command.payment_reference} is {command.amount} {command.currency}",
            subject=command.invoice_id,
            metadata={
                "expected_amount": str(invoice.gross_total),
                "expected_currency": invoice.currency,
                "paid_amount": str(command.amount),
                "paid_currency": command.currency,
            },
        )
    return paid


def decide_dispute(command: Dispute, state: InvoiceState) -> Disputed | Refusal | None:
    if state.status is None:
        return _not_found(command.invoice_id)
    missing = _required(("reason", command.reason))
    if missing is not None:
        return missing
    if state.status is InvoiceStatus.DISPUTED and state.dispute == Disputed(command.reason):
        return None
    if state.status not in DISPUTABLE:
        return _precondition(
            "NOT_DISPUTABLE", command.invoice_id, state, "only a matched or blocked invoice can be disputed"
        )
    return Disputed(command.reason)


def decide_cancel(command: Cancel, state: InvoiceState) -> Cancelled | Refusal | None:
    if state.status is None:
        return _not_found(command.invoice_id)
    missing = _required(("reason", command.reason))
    if missing is not None:
        return missing
    if state.status is InvoiceStatus.CANCELLED:
        if state.cancellation == Cancelled(command.reason):
            return None
        return _precondition(
            "ALREADY_CANCELLED", command.invoice_id, state, "the invoice was cancelled with another reason"
        )
    if state.status is InvoiceStatus.PAID:
        return _precondition("INVOICE_PAID", command.invoice_id, state, "a paid invoice cannot be cancelled")
    return Cancelled(command.reason)


# --- Refusals ----------------------------------------------------------------------------------------------


def _document(command: SubmitInvoice) -> object:
    return command.document if command.document is not None else command.invoice


def _not_found(invoice_id: str) -> Refusal:
    return Refusal(
        RefusalKind.NOT_FOUND,
        "INVOICE_NOT_FOUND",
        f"no invoice {invoice_id} was submitted",
        subject=invoice_id,
        metadata={"invoice_id": invoice_id},
    )


def _other_invoice(invoice_id: str, match: MatchResult) -> Refusal:
    return Refusal(
        RefusalKind.INVALID,
        "MATCH_OF_OTHER_INVOICE",
        f"the match result is of invoice {match.invoice_id}, not of {invoice_id}",
        subject=invoice_id,
        metadata={"invoice_id": invoice_id, "match_invoice_id": match.invoice_id},
    )


def _stale(command: Rematch, state: InvoiceState) -> Refusal:
    recorded, read = state.facts, command.facts
    return Refusal(
        RefusalKind.PRECONDITION,
        STALE_FACTS,
        f"the re-match of invoice {command.invoice_id} read facts older than the match recorded on some fact "
        f"(receipts to {read.receipt_sequence}, invoices to {read.invoice_sequence}, orders {dict(read.po_versions)}; "
        f"recorded: {recorded.receipt_sequence}, {recorded.invoice_sequence}, {dict(recorded.po_versions)}); "
        "match it again on facts at least as new",
        subject=command.invoice_id,
        metadata={
            "invoice_id": command.invoice_id,
            "receipt_sequence": str(recorded.receipt_sequence),
            "invoice_sequence": str(recorded.invoice_sequence),
        },
    )


def _precondition(reason: str, invoice_id: str, state: InvoiceState, rule: str) -> Refusal:
    status = state.status.value if state.status is not None else ""
    return Refusal(
        RefusalKind.PRECONDITION,
        reason,
        f"{rule}; invoice {invoice_id} is {status}",
        subject=invoice_id,
        metadata={"invoice_id": invoice_id, "status": status},
    )


def _required(*fields: tuple[str, str]) -> Refusal | None:
    violations = tuple((name, "is required") for name, value in fields if not value.strip())
    if not violations:
        return None
    return Refusal(
        RefusalKind.INVALID,
        f"{violations[0][0].upper()}_REQUIRED",
        f"{', '.join(name for name, _ in violations)} required",
        violations=violations,
    )
