"""Purchase order rules (DESIGN §5.2). Pure: no gRPC, NATS, Valkey or OpenTelemetry here."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

import pycountry

from libs.runtime.decider import Recorded, Refusal, RefusalKind

OBJECT_TYPE = "purchase_order"
MAX_LINES = 5000
# Longest text each field may hold: beyond these a value is a mistake (or an attack), not data,
# and ERPs truncate silently (SAP's EKPO-TXZ01 holds 40 characters).
HEADER_TEXT_LIMITS = {
    "supplier_id": 128,
    "business_unit": 64,
    "ship_to_site": 64,
}
LINE_TEXT_LIMITS = {"item_id": 128, "description": 2000, "unit_of_measure": 16, "cost_center": 64}
APPROVAL_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Violation:
    field: str
    description: str


@dataclass(frozen=True, slots=True)
class OrderLine:
    line_number: int
    item_id: str
    description: str
    quantity: Decimal
    unit_of_measure: str
    unit_price: Decimal
    price_currency: str
    requested_delivery_date: date | None
    cost_center: str


@dataclass(frozen=True, slots=True)
class PurchaseOrder:
    po_id: str
    version: int
    supplier_id: str
    currency_code: str
    business_unit: str
    ship_to_site: str
    approved_at: datetime | None
    lines: tuple[OrderLine, ...]
    cancelled: bool = False
    criticality: str = "normal"  # picks the ERP acknowledgment SLA (policy sla.po_acknowledgment)


def natural_idempotency_key(source_system: str, po_id: str, version: int) -> str:
    """DESIGN §3.4: source system + document id + version, when the caller names no key."""
    return f"{source_system}:{OBJECT_TYPE}:{po_id}:v{version}"


@functools.lru_cache(maxsize=512)
def is_iso_currency(code: str) -> bool:
    return len(code) == 3 and code.isupper() and pycountry.currencies.get(alpha_3=code) is not None


def validate_order(
    order: PurchaseOrder,
    now: datetime,
    prefix: str = "purchase_order",
    *,
    sites: frozenset[str] | None = None,
    past_margin: timedelta = timedelta(days=7),
    suppliers: SupplierDirectory | None = None,
    change: bool | None = None,
) -> list[Violation]:
    """Every rule a version must satisfy to be published, each failure as a field violation.

    ``sites`` are the ship-to sites the policy knows (None: not checked); ``past_margin`` how far in the past
    a requested delivery date may lie; ``suppliers`` the supplier states followed from supplier events (None:
    not checked); ``change`` whether this is a change order (version 2 or later) or a first publication
    (version 1), None: not checked."""
    problems: list[Violation] = []

    def bad(path: str, description: str) -> None:
        problems.append(Violation(f"{prefix}.{path}", description))

    if change is True and order.version < 2:
        bad("version", "a change order is version 2 or later (version 1 is published)")
    if change is False and order.version != 1:
        bad(
            "version",
            f"PublishPurchaseOrder creates version 1; version {order.version} is a change order (ChangePurchaseOrder)",
        )
    if suppliers is not None and order.supplier_id:
        problem = supplier_problem(order.supplier_id, *suppliers.lookup(order.supplier_id))
        if problem:
            bad("supplier_id", problem)

    if not order.po_id.strip():
        bad("po_id", "is required")
    for name, limit in HEADER_TEXT_LIMITS.items():
        if len(getattr(order, name)) > limit:
            bad(name, f"must be at most {limit} characters, got {len(getattr(order, name))}")
    if not order.supplier_id.strip():
        bad("supplier_id", "is required")
    currency_ok = is_iso_currency(order.currency_code)
    if not currency_ok:
        bad("currency_code", f"{order.currency_code!r} is not an ISO 4217 currency code")
    if order.approved_at is None:
        bad("approved_at", "is required: propagation time is measured from approval")
    elif order.approved_at > now + APPROVAL_CLOCK_SKEW:
        bad("approved_at", f"{order.approved_at.isoformat()} is in the future")
    if order.cancelled:
        bad("status", "a cancellation is its own command (CancelPurchaseOrder)")
    if sites is not None and order.ship_to_site and order.ship_to_site not in sites:
        bad("ship_to_site", f"{order.ship_to_site!r} is not a site the policy knows ({', '.join(sorted(sites))})")
    earliest = (now - past_margin).date()
    if not order.lines:
        bad("lines", "at least one line is required")
    elif len(order.lines) > MAX_LINES:
        bad("lines", f"at most {MAX_LINES} lines per order")
    seen: set[int] = set()
    for index, line in enumerate(order.lines):
        # Line currencies are compared with the header's only once the header's is valid: one mistake, one message.
        problems.extend(_validate_line(line, index, order.currency_code if currency_ok else "", seen, prefix))
        if line.requested_delivery_date is not None and line.requested_delivery_date < earliest:
            problems.append(
                Violation(
                    f"{prefix}.lines[{index}].requested_delivery_date",
                    f"{line.requested_delivery_date.isoformat()} is more than {past_margin.days} day(s) in the past",
                )
            )
    return problems


def _validate_line(line: OrderLine, index: int, currency: str, seen: set[int], prefix: str) -> list[Violation]:
    path = f"{prefix}.lines[{index}]"
    problems: list[Violation] = []
    if line.line_number <= 0:
        problems.append(Violation(f"{path}.line_number", "must be positive"))
    elif line.line_number in seen:
        problems.append(Violation(f"{path}.line_number", f"line number {line.line_number} is used twice"))
    seen.add(line.line_number)
    for name, limit in LINE_TEXT_LIMITS.items():
        if len(getattr(line, name)) > limit:
            problems.append(
                Violation(f"{path}.{name}", f"must be at most {limit} characters, got {len(getattr(line, name))}")
            )
    if not line.item_id.strip() and not line.description.strip():
        problems.append(Violation(f"{path}.item_id", "an item id or a description is required"))
    if line.quantity <= 0:
        problems.append(Violation(f"{path}.quantity", f"must be positive, got {line.quantity}"))
    if not line.unit_of_measure.strip():
        problems.append(Violation(f"{path}.unit_of_measure", "is required"))
    if line.unit_price < 0:
        problems.append(Violation(f"{path}.unit_price", f"must not be negative, got {line.unit_price}"))
    if currency and line.price_currency and line.price_currency != currency:
        problems.append(
            Violation(
                f"{path}.unit_price.currency_code", f"{line.price_currency!r} differs from the order's {currency!r}"
            )
        )
    return problems


def order_total(order: PurchaseOrder) -> Decimal:
    return sum((line.quantity * line.unit_price for line in order.lines), Decimal(0))


@dataclass(frozen=True, slots=True)
class Changes:
    """What a version changed against its predecessor."""

    added_lines: tuple[int, ...] = ()
    removed_lines: tuple[int, ...] = ()
    quantity_changed: tuple[int, ...] = ()
    price_changed: tuple[int, ...] = ()
    date_changed: tuple[int, ...] = ()
    header_fields: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not any(
            (
                self.added_lines,
                self.removed_lines,
                self.quantity_changed,
                self.price_changed,
                self.date_changed,
                self.header_fields,
            )
        )


_HEADER_FIELDS = ("supplier_id", "currency_code", "business_unit", "ship_to_site", "cancelled", "criticality")


def changes_between(previous: PurchaseOrder, current: PurchaseOrder) -> Changes:
    before = {line.line_number: line for line in previous.lines}
    after = {line.line_number: line for line in current.lines}
    common = sorted(before.keys() & after.keys())
    return Changes(
        added_lines=tuple(sorted(after.keys() - before.keys())),
        removed_lines=tuple(sorted(before.keys() - after.keys())),
        quantity_changed=tuple(n for n in common if before[n].quantity != after[n].quantity),
        price_changed=tuple(n for n in common if before[n].unit_price != after[n].unit_price),
        date_changed=tuple(n for n in common if before[n].requested_delivery_date != after[n].requested_delivery_date),
        header_fields=tuple(f for f in _HEADER_FIELDS if getattr(previous, f) != getattr(current, f)),
    )


class Sequence(Enum):
    """Where a requested version stands against the latest published one."""

    NEXT = "next"  # latest + 1: publish it
    CURRENT = "current"  # equal to the latest: a retry, or a duplicate transaction
    STALE = "stale"  # older than the latest: superseded
    AHEAD = "ahead"  # beyond latest + 1: its predecessor has not arrived


def place_version(requested: int, latest: int) -> Sequence:
    if requested == latest + 1:
        return Sequence.NEXT
    if requested == latest:
        return Sequence.CURRENT
    if requested < latest:
        return Sequence.STALE
    return Sequence.AHEAD


SUPPLIER_ACTIVE = "active"
SUPPLIER_MERGED = "merged"


@dataclass
class SupplierDirectory:
    """Supplier states as supplier events tell them (a projection of the supplier stream, in memory)."""

    status: dict[str, str] = field(default_factory=dict)
    merged_into: dict[str, str] = field(default_factory=dict)

    def set_status(self, supplier_id: str, status: str) -> None:
        self.status[supplier_id] = status

    def merge(self, merged_id: str, surviving_id: str) -> None:
        self.status[merged_id] = SUPPLIER_MERGED
        self.merged_into[merged_id] = surviving_id

    def lookup(self, supplier_id: str) -> tuple[str | None, str]:
        return self.status.get(supplier_id), self.merged_into.get(supplier_id, "")


def supplier_problem(supplier_id: str, status: str | None, merged_into: str = "") -> str | None:
    """Why a PO may not name this supplier, or None. ``status`` comes from supplier events (None: never seen)."""
    if status is None:
        return f"supplier {supplier_id!r} is unknown to syncgov (no supplier record names it)"
    if status == SUPPLIER_MERGED:
        return f"supplier {supplier_id!r} was merged into {merged_into!r}; order from {merged_into!r}"
    if status != SUPPLIER_ACTIVE:
        return f"supplier {supplier_id!r} is {status}; no new orders or changes"
    return None


@dataclass(frozen=True, slots=True)
class Received:
    """Goods received on one order as receipt events tell them: net received (receipts minus returns) per PO
    line number, in the order line's unit. Lines with nothing received are absent."""

    lines: Mapping[int, Decimal] = field(default_factory=dict)

    def of(self, line_number: int) -> Decimal:
        return self.lines.get(line_number, Decimal(0))


NOTHING_RECEIVED = Received()


@dataclass
class ReceivedQuantities:
    """Net received quantities per order (a projection of the receipt stream, in memory)."""

    orders: dict[str, Received] = field(default_factory=dict)

    def apply(self, po_id: str, lines: Mapping[int, Decimal]) -> None:
        """One receipt event's figures: each is the line's cumulative net received after the document, so it
        replaces what was known (events arrive in stream order: the newest wins)."""
        merged = {**self.orders.get(po_id, NOTHING_RECEIVED).lines, **lines}
        # Nothing received constrains nothing: only orders with goods received take memory.
        kept = {number: quantity for number, quantity in merged.items() if quantity > 0}
        if kept:
            self.orders[po_id] = Received(kept)
        else:
            self.orders.pop(po_id, None)

    def of(self, po_id: str) -> Received:
        return self.orders.get(po_id, NOTHING_RECEIVED)


def fully_received(order: PurchaseOrder, received: Received) -> bool:
    """Whether every line of this version has received at least its quantity.

    Judged against the order's own latest version rather than the flag a receipt event carries: that flag is
    about the version the receipt was reconciled against, which a later change order may have raised or lowered."""
    return bool(order.lines) and all(received.of(line.line_number) >= line.quantity for line in order.lines)


@dataclass(frozen=True, slots=True)
class ReceiptReconciled:
    """One receipt event as po-publication reads it: the document, the order version receipt-reconciliation
    reconciled it against, each touched line's net received after it, and when it was recorded."""

    po_id: str
    document: str  # the receipt document's identity: posting system / receipt id
    is_receipt: bool  # goods received (a return only lowers what was received)
    reconciled_version: int  # 0: the order was unknown to receipt-reconciliation
    recorded_at_ns: int
    lines: Mapping[int, Decimal]
    over_receipt_found: frozenset[int] = frozenset()  # lines receipt-reconciliation raised over_receipt for
    took_in: frozenset[int] = frozenset()  # lines this document itself received goods on


@dataclass(frozen=True, slots=True)
class OverReceipt:
    """A line over-received against a version the receipt was not reconciled against."""

    line_number: int
    received: Decimal
    ordered: Decimal  # in that version; 0 for a line it removed
    version: int
    exception_id: str


# How long after a receipt was recorded a change order may have landed without po-publication knowing the receipt
# (receipt-reconciliation's read-then-append window, and this follower's lag). Versions recorded later were decided
# knowing it, so a restart replaying old receipts does not judge them against changes made since.
RECEIPT_UNSEEN_FOR = timedelta(seconds=10)


def nanoseconds(delta: timedelta) -> int:
    """``delta`` in whole nanoseconds, exactly (the unit events are recorded in)."""
    return delta // timedelta(microseconds=1) * 1_000


_OVER_RECEIPTS = uuid.UUID("0b7e2f64-51a3-4d8e-b6c2-93e1a0f47d25")


def over_receipt_exception_id(po_id: str, document: str, line_number: int) -> str:
    """Derived from the receipt document and the line: a replay of the receipt stream raises it once."""
    return str(uuid.uuid5(_OVER_RECEIPTS, f"{po_id}|{document}|line {line_number}|over_receipt_after_change"))


def over_received(
    receipt: ReceiptReconciled, versions: tuple[StoredVersion, ...], allowance_percent: Decimal = Decimal(0)
) -> list[OverReceipt]:
    """Lines of a receipt reconciled against an older version than the order's latest that are over-received
    against the latest, beyond the allowance.

    "Latest" is the newest version recorded no later than ``RECEIPT_UNSEEN_FOR`` after the receipt: a change
    order that landed while receipt-reconciliation was reading the order, or before po-publication followed the
    receipt, was decided without it (and may have lowered a line below it). A line receipt-reconciliation already
    found over-received for this document is not raised again; a return raises nothing."""
    if not receipt.is_receipt or receipt.reconciled_version <= 0:
        return []
    until = receipt.recorded_at_ns + nanoseconds(RECEIPT_UNSEEN_FOR)
    seen = [v for v in versions if v.recorded.recorded_at_ns <= until]
    if not seen:
        return []
    latest = seen[-1]
    if latest.cancelled or latest.version <= receipt.reconciled_version:
        return []
    against = next((v for v in versions if v.version == receipt.reconciled_version), None)
    if against is None:
        return []
    had = {line.line_number for line in against.order.lines}  # a line it lacked is receipt_unknown_po's finding
    ordered = {line.line_number: line.quantity for line in latest.order.lines}
    factor = 1 + allowance_percent / 100
    return [
        OverReceipt(
            number,
            quantity,
            ordered.get(number, Decimal(0)),
            latest.version,
            over_receipt_exception_id(receipt.po_id, receipt.document, number),
        )
        for number, quantity in sorted(receipt.lines.items())
        if number in had
        and number in receipt.took_in  # a document that only rejected goods on a line is not the one to blame
        and number not in receipt.over_receipt_found
        and quantity > ordered.get(number, Decimal(0)) * factor
    ]


# --- The order as a decider (DESIGN §3 rule 9) --------------------------------------------------------------
#
# A PO's history is its events; ``evolve`` folds them into an OrderState and ``decide`` turns a command and
# that state into one new event, nothing (the command was applied already) or a refusal. ``document`` is the
# version as the contract carries it: the domain passes it along untouched, so events keep every field.

Document = Any  # opaque to the domain: the contract's form of a version


@dataclass(frozen=True, slots=True)
class VersionPublished:
    order: PurchaseOrder
    document: Document
    fingerprint: str
    idempotency_key: str
    source_system: str = ""


@dataclass(frozen=True, slots=True)
class VersionChanged:
    order: PurchaseOrder
    document: Document
    fingerprint: str
    changes: Changes
    idempotency_key: str
    source_system: str = ""


@dataclass(frozen=True, slots=True)
class OrderCancelled:
    """The cancelled version: the latest version's content with status cancelled (``based_on`` is its document)."""

    order: PurchaseOrder
    based_on: Document
    reason: str
    idempotency_key: str
    fingerprint: str = ""  # of the cancelled document, known once it is built (stored events carry it)
    document: Document = None  # the cancelled document, once stored
    source_system: str = ""


@dataclass(frozen=True, slots=True)
class VersionAcknowledged:
    version: int
    erp_document_number: str
    acknowledged_at: datetime
    propagation: timedelta
    idempotency_key: str
    source_system: str = ""


@dataclass(frozen=True, slots=True)
class VersionRejected:
    version: int
    reason: str
    idempotency_key: str
    source_system: str = ""


@dataclass(frozen=True, slots=True)
class VersionHeld:
    """A version that arrived before its predecessor, kept until ``hold_until``."""

    order: PurchaseOrder
    document: Document
    fingerprint: str
    hold_until: datetime
    idempotency_key: str  # the sender's key; the held event's own key is derived from it
    source_system: str = ""


@dataclass(frozen=True, slots=True)
class HoldExpired:
    version: int
    exception_id: str


OrderEvent = (
    VersionPublished
    | VersionChanged
    | OrderCancelled
    | VersionAcknowledged
    | VersionRejected
    | VersionHeld
    | HoldExpired
)


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One version of the order as stored: its content and where it landed."""

    order: PurchaseOrder
    document: Document
    fingerprint: str
    cancelled: bool
    changes: Changes
    recorded: Recorded[OrderEvent]

    @property
    def version(self) -> int:
        return self.order.version

    @property
    def idempotency_key(self) -> str:
        """The key of the command that stored this version."""
        event = self.recorded.event
        return event.idempotency_key if not isinstance(event, HoldExpired) else ""


@dataclass(frozen=True, slots=True)
class Acknowledgment:
    version: int
    erp_document_number: str
    acknowledged_at: datetime
    propagation: timedelta
    sequence: int


@dataclass(frozen=True, slots=True)
class HeldVersion:
    order: PurchaseOrder
    document: Document
    fingerprint: str
    hold_until: datetime
    idempotency_key: str
    sequence: int
    source_system: str

    @property
    def version(self) -> int:
        return self.order.version


@dataclass(frozen=True, slots=True)
class OrderState:
    """What an order's history says: its versions, the ERP's word on each, and versions held for later."""

    versions: tuple[StoredVersion, ...] = ()
    acknowledgments: Mapping[int, Acknowledgment] = field(default_factory=dict)
    rejections: Mapping[int, int] = field(default_factory=dict)  # version -> sequence of its latest rejection
    held: Mapping[int, HeldVersion] = field(default_factory=dict)
    expired: frozenset[int] = frozenset()

    @property
    def exists(self) -> bool:
        return bool(self.versions)

    @property
    def latest(self) -> StoredVersion | None:
        return self.versions[-1] if self.versions else None

    @property
    def latest_version(self) -> int:
        return self.versions[-1].version if self.versions else 0

    def version(self, number: int) -> StoredVersion | None:
        if 1 <= number <= len(self.versions) and self.versions[number - 1].version == number:
            return self.versions[number - 1]
        return next((v for v in self.versions if v.version == number), None)

    def highest_acknowledgment(self) -> Acknowledgment | None:
        return self.acknowledgments[max(self.acknowledgments)] if self.acknowledgments else None

    @property
    def acknowledged_version(self) -> int:
        return max(self.acknowledgments, default=0)

    def pending_held(self) -> list[HeldVersion]:
        """Held versions neither applied nor expired, lowest version first."""
        latest = self.latest_version
        return sorted(
            (h for v, h in self.held.items() if v > latest and v not in self.expired), key=lambda h: h.version
        )

    def next_hold_deadline(self) -> datetime | None:
        return min((h.hold_until for h in self.pending_held()), default=None)


INITIAL = OrderState()


@dataclass(frozen=True, slots=True)
class Unacknowledged:
    """One entry of the unacknowledged list."""

    po_id: str
    latest_version: int
    acknowledged_version: int
    approved_at: float  # epoch seconds of the latest version's approval


def evolve(state: OrderState, recorded: Recorded[OrderEvent]) -> OrderState:
    event = recorded.event
    if isinstance(event, VersionPublished | VersionChanged):
        changes = event.changes if isinstance(event, VersionChanged) else Changes()
        stored = StoredVersion(event.order, event.document, event.fingerprint, False, changes, recorded)
        return replace(state, versions=(*state.versions, stored))
    if isinstance(event, OrderCancelled):
        stored = StoredVersion(event.order, event.document, event.fingerprint, True, Changes(), recorded)
        return replace(state, versions=(*state.versions, stored))
    if isinstance(event, VersionAcknowledged):
        acknowledgment = Acknowledgment(
            event.version, event.erp_document_number, event.acknowledged_at, event.propagation, recorded.sequence
        )
        return replace(state, acknowledgments={**state.acknowledgments, event.version: acknowledgment})
    if isinstance(event, VersionRejected):
        return replace(state, rejections={**state.rejections, event.version: recorded.sequence})
    if isinstance(event, VersionHeld):
        held = HeldVersion(
            event.order,
            event.document,
            event.fingerprint,
            event.hold_until,
            event.idempotency_key,
            recorded.sequence,
            recorded.source_system,
        )
        return replace(state, held={**state.held, held.version: held}, expired=state.expired - {held.version})
    return replace(state, expired=state.expired | {event.version})


@dataclass(frozen=True, slots=True)
class Rules:
    """What decisions take from the policy in force."""

    hold_window: timedelta


@dataclass(frozen=True, slots=True)
class PublishOrder:
    order: PurchaseOrder
    document: Document
    fingerprint: str
    idempotency_key: str
    source_system: str


@dataclass(frozen=True, slots=True)
class ChangeOrder:
    order: PurchaseOrder
    document: Document
    fingerprint: str
    idempotency_key: str
    source_system: str
    received: Received = NOTHING_RECEIVED  # what receipt events said when the command was made


@dataclass(frozen=True, slots=True)
class CancelOrder:
    po_id: str
    version: int  # 0: the next one
    reason: str
    idempotency_key: str  # "" : the natural key
    source_system: str
    received: Received = NOTHING_RECEIVED  # what receipt events said when the command was made


@dataclass(frozen=True, slots=True)
class AcknowledgeVersion:
    po_id: str
    version: int
    erp_document_number: str
    acknowledged_at: datetime
    source_system: str


@dataclass(frozen=True, slots=True)
class RejectVersion:
    po_id: str
    version: int
    reason: str
    source_system: str


@dataclass(frozen=True, slots=True)
class ReleaseHeld:
    """Apply the held version that follows the latest one, if its predecessor has landed and it lowers no line
    below what was received (else its hold ends: see ``unreleasable``)."""

    received: Received = NOTHING_RECEIVED  # what receipt events said when the command was made


@dataclass(frozen=True, slots=True)
class ExpireHold:
    version: int
    exception_id: str


OrderCommand = PublishOrder | ChangeOrder | CancelOrder | AcknowledgeVersion | RejectVersion | ReleaseHeld | ExpireHold
Decision = OrderEvent | Refusal | None


def version_of(command: OrderCommand) -> int:
    """The version a command is about (0 when it names none: the next, or the order as a whole)."""
    if isinstance(command, PublishOrder | ChangeOrder):
        return command.order.version
    if isinstance(command, CancelOrder | AcknowledgeVersion | RejectVersion | ExpireHold):
        return command.version
    return 0


def decide(command: OrderCommand, state: OrderState, now: datetime, rules: Rules) -> Decision:
    """What ``command`` does to an order in ``state``: one event, nothing (already done), or a refusal."""
    if isinstance(command, PublishOrder):
        return _publish(command, state)
    if isinstance(command, ChangeOrder):
        return _change(command, state, now, rules)
    if isinstance(command, CancelOrder):
        return _cancel(command, state, now)
    if isinstance(command, AcknowledgeVersion):
        return _acknowledge(command, state)
    if isinstance(command, RejectVersion):
        return _reject(command, state)
    if isinstance(command, ReleaseHeld):
        return _release(command, state)
    return _expire(command, state)


def _publish(command: PublishOrder, state: OrderState) -> Decision:
    if not state.exists:
        return VersionPublished(
            command.order, command.document, command.fingerprint, command.idempotency_key, command.source_system
        )
    stored = state.version(command.order.version)
    if stored is not None and stored.fingerprint == command.fingerprint:
        return None  # the same publication again
    return duplicate_transaction(command.order, command.document, command.idempotency_key, stored)


def _change(command: ChangeOrder, state: OrderState, now: datetime, rules: Rules) -> Decision:
    order = command.order
    latest = state.latest
    if latest is None:
        return Refusal(
            RefusalKind.NOT_FOUND,
            "PO_NOT_FOUND",
            f"purchase order {order.po_id!r} is unknown: publish version 1 first",
        )
    stored = state.version(order.version)
    if stored is not None and stored.fingerprint == command.fingerprint:
        return None  # this change order was applied already
    place = place_version(order.version, latest.version)
    if place is Sequence.CURRENT:
        return duplicate_transaction(order, command.document, command.idempotency_key, stored)
    if place is Sequence.STALE:
        return stale_version(order.po_id, order.version, latest.version)
    if latest.cancelled:
        return cancelled(order.po_id, latest.version)
    held = state.held.get(order.version)
    if held is not None and held.fingerprint != command.fingerprint and order.version not in state.expired:
        # The sender was told this version is held with other content: that content stands.
        return duplicate_transaction(order, command.document, command.idempotency_key, held)
    if place is Sequence.AHEAD and held is not None and order.version not in state.expired:
        return None  # held already, with this content (an expired hold is held anew)
    lowered = below_received(latest.order, order, command.received)
    if lowered is not None:
        return lowered
    if place is Sequence.AHEAD:
        return VersionHeld(
            order,
            command.document,
            command.fingerprint,
            now + rules.hold_window,
            command.idempotency_key,
            command.source_system,
        )
    return VersionChanged(
        order,
        command.document,
        command.fingerprint,
        changes_between(latest.order, order),
        command.idempotency_key,
        command.source_system,
    )


def _cancel(command: CancelOrder, state: OrderState, now: datetime) -> Decision:
    latest = state.latest
    if latest is None:
        return Refusal(RefusalKind.NOT_FOUND, "PO_NOT_FOUND", f"purchase order {command.po_id!r} is unknown")
    version = command.version or latest.version + 1
    stored = state.version(version)
    if stored is not None and stored.cancelled:
        return None  # cancelled by this very command before
    if latest.cancelled and not command.version:
        # A retry that named no version: the cancellation it asked for is the latest one when the keys match.
        key = command.idempotency_key or natural_idempotency_key(command.source_system, command.po_id, latest.version)
        if latest.idempotency_key == key:
            return None
    if latest.cancelled:
        return Refusal(
            RefusalKind.PRECONDITION,
            "PO_CANCELLED",
            f"purchase order {command.po_id} is already cancelled",
            subject=f"{OBJECT_TYPE}/{command.po_id}",
        )
    if place_version(version, latest.version) is not Sequence.NEXT:
        return Refusal(
            RefusalKind.PRECONDITION,
            "STALE_VERSION",
            f"a cancellation of {command.po_id} is version {latest.version + 1}, not {version}",
            subject=f"{OBJECT_TYPE}/{command.po_id}",
            metadata={"latest_version": str(latest.version)},
        )
    if fully_received(latest.order, command.received):
        return Refusal(
            RefusalKind.PRECONDITION,
            "FULLY_RECEIVED",
            f"purchase order {command.po_id} is fully received (every line of version {latest.version}): "
            "there is nothing left to cancel",
            subject=f"{OBJECT_TYPE}/{command.po_id}",
            metadata={"latest_version": str(latest.version)},
        )
    order = replace(latest.order, version=version, cancelled=True, approved_at=now)
    key = command.idempotency_key or natural_idempotency_key(command.source_system, command.po_id, version)
    return OrderCancelled(order, latest.document, command.reason, key, source_system=command.source_system)


def _acknowledge(command: AcknowledgeVersion, state: OrderState) -> Decision:
    stored = state.version(command.version)
    if stored is None:
        return unknown_version(command.po_id, command.version, state)
    known = state.acknowledgments.get(command.version)
    if known is not None:
        if known.erp_document_number == command.erp_document_number:
            return None
        return Refusal(
            RefusalKind.CONFLICT,
            "ALREADY_ACKNOWLEDGED",
            f"version {command.version} was acknowledged as {known.erp_document_number}",
            metadata={"erp_document_number": known.erp_document_number},
        )
    approved = stored.order.approved_at or command.acknowledged_at
    return VersionAcknowledged(
        command.version,
        command.erp_document_number,
        command.acknowledged_at,
        max(timedelta(0), command.acknowledged_at - approved),
        f"{command.source_system}:purchase_order_acknowledgment:{command.po_id}:v{command.version}",
        command.source_system,
    )


def _reject(command: RejectVersion, state: OrderState) -> Decision:
    if state.version(command.version) is None:
        return unknown_version(command.po_id, command.version, state)
    if command.version in state.rejections:
        return None  # the ERP said so already; the answer is the same
    return VersionRejected(
        command.version,
        command.reason,
        f"{command.source_system}:purchase_order_rejection:{command.po_id}:v{command.version}",
        command.source_system,
    )


def _following(state: OrderState) -> HeldVersion | None:
    """The held version that follows the latest one, if there is one to apply."""
    latest = state.latest
    if latest is None or latest.cancelled:
        return None
    following = state.held.get(latest.version + 1)
    if following is None or following.version in state.expired:
        return None
    return following


@dataclass(frozen=True, slots=True)
class Unreleasable:
    """A held version whose predecessor landed but which lowers a line below what was received meanwhile: it is
    not applied, its hold ends (HoldExpired) and an out_of_order_version exception says why."""

    held: HeldVersion
    exception_id: str  # derived from the held version, so raising it again is raising it once
    detail: str


_HOLD_EXCEPTIONS = uuid.UUID("6c1f3a52-8d0e-4c53-9a1e-2f5b7d4e9c10")


def unreleasable(state: OrderState, received: Received) -> Unreleasable | None:
    """Whether the held version that would be released next lowers a line below what was received."""
    latest, following = state.latest, _following(state)
    if latest is None or following is None:
        return None
    lowered = _lowered(latest.order, following.order, received)
    if not lowered:
        return None
    po_id, version = following.order.po_id, following.version
    exception_id = str(uuid.uuid5(_HOLD_EXCEPTIONS, f"{po_id}|v{version}|{following.sequence}|below_received"))
    detail = (
        f"held version {version} of {po_id} was not applied when version {latest.version} landed: it lowers "
        f"{_describe_lowered(following.order, lowered)} (a line may not go below what was already received); "
        f"send version {version} again with the line at or above what was received"
    )
    return Unreleasable(following, exception_id, detail)


def _release(command: ReleaseHeld, state: OrderState) -> Decision:
    latest, following = state.latest, _following(state)
    if latest is None or following is None:
        return None
    refused = unreleasable(state, command.received)
    if refused is not None:
        return HoldExpired(following.version, refused.exception_id)
    return VersionChanged(
        following.order,
        following.document,
        following.fingerprint,
        changes_between(latest.order, following.order),
        following.idempotency_key,
        following.source_system,
    )


def _expire(command: ExpireHold, state: OrderState) -> Decision:
    held = state.held.get(command.version)
    if held is None or command.version in state.expired or state.version(command.version) is not None:
        return None
    return HoldExpired(command.version, command.exception_id)


def releasable(state: OrderState) -> bool:
    """Whether a held version follows the latest one: it is applied now, or its hold ends (``unreleasable``)."""
    return _following(state) is not None


def due_holds(state: OrderState, now: datetime) -> list[HeldVersion]:
    """Held versions whose window has run out."""
    return [h for h in state.pending_held() if h.hold_until <= now]


def duplicate_transaction(
    order: PurchaseOrder, document: Document, key: str, existing: StoredVersion | HeldVersion | None
) -> Refusal:
    """Same order and version (or key) with different content: refused, and raised as an exception."""
    evidence = (existing.document, document) if existing is not None else (document,)
    return Refusal(
        RefusalKind.CONFLICT,
        "DUPLICATE_TRANSACTION",
        f"purchase order {order.po_id} version {order.version} already exists with different content; "
        f"publish a change order (version {order.version + 1}) instead",
        metadata={"po_id": order.po_id, "version": str(order.version), "idempotency_key": key},
        exception="duplicate_transaction",
        evidence=evidence,
    )


def _lowered(previous: PurchaseOrder, order: PurchaseOrder, received: Received) -> list[tuple[int, Decimal, Decimal]]:
    """(line, new quantity, received) for each line ``order`` lowers below what was received on it."""
    after = {line.line_number: line.quantity for line in order.lines}
    return [
        (line.line_number, after.get(line.line_number, Decimal(0)), received.of(line.line_number))
        for line in previous.lines
        if after.get(line.line_number, Decimal(0)) < min(line.quantity, received.of(line.line_number))
    ]


def _describe_lowered(order: PurchaseOrder, lowered: list[tuple[int, Decimal, Decimal]]) -> str:
    kept = {line.line_number for line in order.lines}
    return "; ".join(
        f"line {n} {'removed' if n not in kept else f'to {q:f}'} with {r:f} received" for n, q, r in lowered
    )


def below_received(previous: PurchaseOrder, order: PurchaseOrder, received: Received) -> Refusal | None:
    """A change order may not lower a line below what was already received on it; a line it removes is lowered
    to 0. A line left as it was (or raised) passes even when more was received than ordered: that over-receipt
    is receipt-reconciliation's finding, not a reason to block every later change to the order."""
    lowered = _lowered(previous, order, received)
    if not lowered:
        return None
    number, quantity, got = lowered[0]
    return Refusal(
        RefusalKind.PRECONDITION,
        "BELOW_RECEIVED_QUANTITY",
        f"version {order.version} of purchase order {order.po_id} lowers {_describe_lowered(order, lowered)}: "
        "a line may not go below what was already received",
        subject=f"{OBJECT_TYPE}/{order.po_id}",
        metadata={"line": str(number), "received": f"{got:f}", "quantity": f"{quantity:f}"},
    )


def stale_version(po_id: str, version: int, latest: int) -> Refusal:
    return Refusal(
        RefusalKind.PRECONDITION,
        "STALE_VERSION",
        f"version {version} of {po_id} is superseded: the latest is {latest}",
        subject=f"{OBJECT_TYPE}/{po_id}",
        metadata={"latest_version": str(latest)},
    )


def cancelled(po_id: str, version: int) -> Refusal:
    return Refusal(
        RefusalKind.PRECONDITION,
        "PO_CANCELLED",
        f"purchase order {po_id} is cancelled (version {version})",
        subject=f"{OBJECT_TYPE}/{po_id}",
    )


def unknown_version(po_id: str, version: int, state: OrderState) -> Refusal:
    if not state.exists:
        return Refusal(RefusalKind.NOT_FOUND, "PO_NOT_FOUND", f"purchase order {po_id!r} is unknown")
    return Refusal(
        RefusalKind.PRECONDITION,
        "UNKNOWN_VERSION",
        f"purchase order {po_id} has no version {version} (latest {state.latest_version})",
        subject=f"{OBJECT_TYPE}/{po_id}",
        metadata={"latest_version": str(state.latest_version)},
    )
