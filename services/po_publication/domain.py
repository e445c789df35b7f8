"""Purchase order rules (DESIGN §5.2). Pure: no gRPC, NATS, Valkey or OpenTelemetry here."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import Enum

import pycountry

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
) -> list[Violation]:
    """Every rule a version must satisfy to be published, each failure as a field violation.

    ``sites`` are the ship-to sites the policy knows (None: not checked); ``past_margin`` how far in the past
    a requested delivery date may lie."""
    problems: list[Violation] = []

    def bad(path: str, description: str) -> None:
        problems.append(Violation(f"{prefix}.{path}", description))

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


_HEADER_FIELDS = ("supplier_id", "currency_code", "business_unit", "ship_to_site", "cancelled")


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


def supplier_problem(supplier_id: str, status: str | None, merged_into: str = "") -> str | None:
    """Why a PO may not name this supplier, or None. ``status`` comes from supplier events (None: never seen)."""
    if status is None:
        return f"supplier {supplier_id!r} is unknown to syncgov (no supplier record names it)"
    if status == "merged":
        return f"supplier {supplier_id!r} was merged into {merged_into!r}; order from {merged_into!r}"
    if status != SUPPLIER_ACTIVE:
        return f"supplier {supplier_id!r} is {status}; no new orders or changes"
    return None
