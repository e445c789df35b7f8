"""Where each purchase order workflow stands against the policy's SLAs: folding and rules, no I/O.

A workflow's progress is folded from its events as the streams hold them (po, receipt, invoice; each stream in
its own order, the three in any order between them). Three stages are timed (docs/decisions.md, "Workflow SLAs"):

* ``po_acknowledgment`` — from the publication of the oldest version the ERP has not answered (acknowledged or
  rejected, that version or a later one) until it answers; the limit is the order's criticality's.
* ``receipt_sync`` — goods due and no receipt synced: from the end of the earliest requested delivery date of the
  version the ERP acknowledged until a receipt for the order is reconciled (or the order is cancelled).
* ``invoice_match`` — from an invoice's submission (or its blocking after it had cleared) until it is matched,
  released, approved, paid or cancelled: a blocked invoice is still waiting to match.

A stage waiting longer than its limit is a breach. Each breach has a stable identity (the stage, the object that
waits, and when it started waiting), so it is raised once and cleared once, however often it is looked at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

PO_ACKNOWLEDGMENT = "po_acknowledgment"
RECEIPT_SYNC = "receipt_sync"
INVOICE_MATCH = "invoice_match"
STAGES = (PO_ACKNOWLEDGMENT, RECEIPT_SYNC, INVOICE_MATCH)
INVOICE_DONE = frozenset({"matched", "released", "approved", "paid", "cancelled"})
INVOICE_WAITING = frozenset({"submitted", "blocked", "disputed"})

OPEN, COMPLETED, CANCELLED = "open", "completed", "cancelled"
WORKFLOW_STATES = (OPEN, COMPLETED, CANCELLED)


@dataclass(slots=True)
class InvoiceProgress:
    waiting_since_ns: int  # 0: not waiting (matched or later)
    paid: bool = False
    cancelled: bool = False


@dataclass(slots=True)
class WorkflowProgress:
    key: str
    criticality: str = "normal"
    latest_version: int = 0
    unanswered: dict[int, int] = field(default_factory=dict)  # version -> published at (ns), not answered yet
    answered_through: int = 0
    acknowledged_version: int = 0
    cancelled: bool = False
    goods_due_ns: int = 0  # the end of the acknowledged version's earliest requested delivery date; 0: none
    due_by_version: dict[int, int] = field(default_factory=dict)  # versions not acknowledged yet -> their due time
    received: bool = False
    fully_received: bool = False
    invoices: dict[str, InvoiceProgress] = field(default_factory=dict)

    @property
    def state(self) -> str:
        if self.cancelled:
            return CANCELLED
        invoices = [invoice for invoice in self.invoices.values() if not invoice.cancelled]
        if self.fully_received and invoices and all(invoice.paid for invoice in invoices):
            return COMPLETED
        return OPEN


def end_of(day: date) -> int:
    """Nanoseconds at the end of ``day`` (UTC): goods requested for a day are due by then. (Computed from the day's
    start: the day after 9999-12-31 is not a date.)"""
    return (int(datetime.combine(day, time(), tzinfo=UTC).timestamp()) + 86_400) * 1_000_000_000


def on_version(
    progress: WorkflowProgress,
    version: int,
    published_ns: int,
    *,
    criticality: str,
    cancelled: bool,
    earliest_delivery: date | None,
) -> None:
    """A version was published to the ERP (first publication, change order or cancellation)."""
    if version > progress.answered_through:
        progress.unanswered[version] = published_ns
    if version > progress.acknowledged_version:
        # Goods are due by the version the ERP holds: a change order counts once the ERP acknowledges it.
        progress.due_by_version[version] = end_of(earliest_delivery) if earliest_delivery is not None else 0
    if version >= progress.latest_version:
        progress.latest_version = version
        progress.criticality = criticality
        progress.cancelled = cancelled


def on_answer(progress: WorkflowProgress, version: int, *, acknowledged: bool) -> None:
    """The ERP acknowledged or rejected ``version``: it answered every version up to it."""
    progress.answered_through = max(progress.answered_through, version)
    for waiting in [v for v in progress.unanswered if v <= version]:
        del progress.unanswered[waiting]
    if acknowledged and version > progress.acknowledged_version:
        progress.acknowledged_version = version
        progress.goods_due_ns = progress.due_by_version.get(version, progress.goods_due_ns)
        for held in [v for v in progress.due_by_version if v <= version]:
            del progress.due_by_version[held]


def on_receipt(progress: WorkflowProgress, *, fully_received: bool) -> None:
    progress.received = True
    progress.fully_received = fully_received


def on_invoice(progress: WorkflowProgress, invoice_id: str, event: str, at_ns: int) -> None:
    invoice = progress.invoices.get(invoice_id)
    if invoice is None:
        invoice = progress.invoices[invoice_id] = InvoiceProgress(waiting_since_ns=at_ns)
    if event in INVOICE_DONE:
        invoice.waiting_since_ns = 0
        invoice.paid = invoice.paid or event == "paid"
        invoice.cancelled = event == "cancelled"
    elif event in INVOICE_WAITING and not invoice.waiting_since_ns and not invoice.paid:
        invoice.waiting_since_ns = at_ns  # blocked again after it had cleared: waiting from now


@dataclass(frozen=True, slots=True)
class Waiting:
    """A stage that has not completed: since when, and the object it waits on."""

    workflow_key: str
    stage: str
    since_ns: int
    object_type: str
    object_key: str
    object_version: int
    criticality: str

    @property
    def discriminator(self) -> str:
        """What makes this wait one breach: its stage and when it started (a later wait is another breach)."""
        return f"{self.stage}@{self.since_ns}"


def waiting(progress: WorkflowProgress) -> list[Waiting]:
    found: list[Waiting] = []
    key, criticality = progress.key, progress.criticality
    if progress.unanswered:
        oldest = min(progress.unanswered)
        found.append(
            Waiting(key, PO_ACKNOWLEDGMENT, progress.unanswered[oldest], "purchase_order", key, oldest, criticality)
        )
    if progress.acknowledged_version and progress.goods_due_ns and not progress.received and not progress.cancelled:
        found.append(
            Waiting(
                key,
                RECEIPT_SYNC,
                progress.goods_due_ns,
                "purchase_order",
                key,
                progress.acknowledged_version,
                criticality,
            )
        )
    for invoice_id, invoice in sorted(progress.invoices.items()):
        if invoice.waiting_since_ns:
            found.append(Waiting(key, INVOICE_MATCH, invoice.waiting_since_ns, "invoice", invoice_id, 0, criticality))
    return found


@dataclass(frozen=True, slots=True)
class Breach:
    waiting: Waiting
    limit: timedelta
    criticality_used: str  # the criticality whose limit applies (the order's, else normal)


Limits = Callable[[str, str], timedelta | None]


def limit_for(limits: Limits, stage: str, criticality: str) -> tuple[timedelta, str] | None:
    """The stage's limit for the criticality; an order whose criticality the policy does not list gets the normal
    limit; a stage the policy sets no limit for is not timed."""
    for level in dict.fromkeys((criticality, "normal")):
        within = limits(stage, level)
        if within is not None:
            return within, level
    return None


def breaches(progress: WorkflowProgress, limits: Limits, now_ns: int) -> list[Breach]:
    found: list[Breach] = []
    for wait in waiting(progress):
        limit = limit_for(limits, wait.stage, wait.criticality)
        if limit is not None and now_ns - wait.since_ns > limit[0] // timedelta(microseconds=1) * 1000:
            found.append(Breach(wait, limit[0], limit[1]))
    return found


def memoized(limits: Limits) -> Limits:
    """``limits`` answered once per stage and criticality (a policy revision never changes; parsing a duration on
    every look costs more than the rest of a sweep)."""
    known: dict[tuple[str, str], timedelta | None] = {}

    def limit(stage: str, criticality: str) -> timedelta | None:
        key = (stage, criticality)
        if key not in known:
            known[key] = limits(stage, criticality)
        return known[key]

    return limit
