"""The workflow tracker's rules where a hostile review found them wrong (each test failed before its fix):
invoices matched at submission, far-future delivery dates, the receipt deadline of the acknowledged version, breach
identities, page cursors and paging."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from control_plane import tracking
from control_plane.servicer import _stuck_cursor
from control_plane.tracker import WorkflowTracker, breach_fingerprint
from control_plane.tracking import WorkflowProgress
from libs.runtime.errors import InvalidArgument
from libs.runtime.events import StoredEvent
from syncgov.common.v1 import envelope_pb2
from syncgov.invoice.v1 import events_pb2 as invoice_events
from syncgov.invoice.v1 import invoice_pb2
from syncgov.po.v1 import events_pb2 as po_events
from syncgov.po.v1 import po_pb2

S = 1_000_000_000
HOUR = 3600 * S
LIMITS = {
    ("po_acknowledgment", "critical"): timedelta(seconds=1),
    ("po_acknowledgment", "normal"): timedelta(minutes=5),
    ("receipt_sync", "normal"): timedelta(minutes=5),
    ("invoice_match", "normal"): timedelta(minutes=15),
}


def limits(stage: str, criticality: str) -> timedelta | None:
    return LIMITS.get((stage, criticality))


@dataclass
class FakeReporter:
    raised: list | None = None
    cleared: list | None = None


clock = [0]


def tracker() -> WorkflowTracker:
    policy: Any = SimpleNamespace(current=SimpleNamespace(sla=limits, revision=1))
    reporter: Any = FakeReporter()
    return WorkflowTracker(reporter, policy, "control-plane", clock=lambda: clock[0])


def stored(domain: str, key: str, name: str, payload, at_ns: int, sequence: int = 1, workflow_key: str = ""):
    envelope = envelope_pb2.EventEnvelope(object_key=key, workflow_key=workflow_key)
    envelope.recorded_at.FromNanoseconds(at_ns)
    envelope.payload.Pack(payload)
    return StoredEvent(f"SG_{domain.upper()}", sequence, f"sg.{domain}.{key}.{name}", {}, b"", envelope)


def order(key: str, version: int, due: tuple[int, int, int], criticality=po_pb2.PURCHASE_ORDER_CRITICALITY_CRITICAL):
    line = po_pb2.PurchaseOrderLine(line_number=1)
    line.requested_delivery_date.year, line.requested_delivery_date.month, line.requested_delivery_date.day = due
    return po_pb2.PurchaseOrder(po_id=key, version=version, criticality=criticality, lines=[line])


# -- 1. an invoice matched at its submission is reported as waiting to match --------------------------------------


def test_an_invoice_that_matched_at_its_submission_is_not_waiting_to_match():
    """A submission that matched is one `submitted` event whose match says so (no `matched` follows): not waiting."""
    t = tracker()
    submitted = invoice_events.InvoiceSubmitted(
        invoice=invoice_pb2.Invoice(invoice_id="INV-1"),
        match=invoice_pb2.InvoiceMatch(invoice_id="INV-1", matched=True),
    )
    t.on_invoice(stored("invoice", "INV-1", "submitted", submitted, 1_000 * S, workflow_key="PO-1"))
    clock[0] = 1_000 * S + 2 * HOUR
    late = t.breaches_of("PO-1")
    assert [b.waiting.stage for b in late] == []


# -- 2. a requested delivery date of 9999-12-31 drops the publication from the fold ------------------------------


def test_end_of_the_last_representable_day_does_not_overflow():
    """Any calendar date is accepted at the edge; the end of 9999-12-31 is computed without a date after it."""
    assert tracking.end_of(date(9999, 12, 31)) > 0


def test_an_order_due_on_9999_12_31_is_still_timed_for_its_acknowledgment():
    """A far-future delivery date leaves the order's acknowledgment timed, listed and raised like any other."""
    t = tracker()
    published = po_events.PurchaseOrderPublished(purchase_order=order("PO-FAR", 1, (9999, 12, 31)))
    clock[0] = 1_000 * S
    t.on_po(stored("po", "PO-FAR", "published", published, 1_000 * S))
    clock[0] = 1_000 * S + HOUR
    assert [s.progress.key for s in t.stuck()] == ["PO-FAR"]


# -- 3. receipt_sync is timed from the latest version's date, not the acknowledged version's ----------------------


def test_a_rejected_change_order_does_not_move_the_receipt_deadline():
    """Goods are due by the version the ERP acknowledged: a change order it rejected does not move the deadline."""
    progress = WorkflowProgress("PO-1")
    tracking.on_version(progress, 1, 1, criticality="normal", cancelled=False, earliest_delivery=date(2026, 1, 1))
    tracking.on_answer(progress, 1, acknowledged=True)
    tracking.on_version(progress, 2, 2, criticality="normal", cancelled=False, earliest_delivery=date(2030, 1, 1))
    tracking.on_answer(progress, 2, acknowledged=False)
    now = tracking.end_of(date(2026, 6, 1))
    [receipt] = [w for w in tracking.waiting(progress) if w.stage == tracking.RECEIPT_SYNC]
    assert receipt.since_ns == tracking.end_of(date(2026, 1, 1))
    assert [b.waiting.stage for b in tracking.breaches(progress, limits, now)] == [tracking.RECEIPT_SYNC]


def test_an_unanswered_change_order_does_not_clear_an_ongoing_receipt_breach():
    """A change order not acknowledged yet leaves an ongoing receipt_sync breach as it is (same identity)."""
    progress = WorkflowProgress("PO-1")
    tracking.on_version(progress, 1, 1, criticality="normal", cancelled=False, earliest_delivery=date(2026, 1, 1))
    tracking.on_answer(progress, 1, acknowledged=True)
    [before] = [w for w in tracking.waiting(progress) if w.stage == tracking.RECEIPT_SYNC]
    tracking.on_version(progress, 2, 2, criticality="normal", cancelled=False, earliest_delivery=date(2030, 1, 1))
    after = [breach_fingerprint(w) for w in tracking.waiting(progress) if w.stage == tracking.RECEIPT_SYNC]
    assert breach_fingerprint(before) in after


def test_a_breach_identity_comes_back_after_it_was_cleared():
    """Change orders moving the date back and forth (not acknowledged) never bring a cleared breach's identity back."""
    progress = WorkflowProgress("PO-1")
    tracking.on_version(progress, 1, 1, criticality="normal", cancelled=False, earliest_delivery=date(2026, 1, 1))
    tracking.on_answer(progress, 1, acknowledged=True)
    first = {breach_fingerprint(w) for w in tracking.waiting(progress) if w.stage == tracking.RECEIPT_SYNC}
    tracking.on_version(progress, 2, 2, criticality="normal", cancelled=False, earliest_delivery=date(2026, 2, 1))
    cleared = first - {breach_fingerprint(w) for w in tracking.waiting(progress)}
    tracking.on_version(progress, 3, 3, criticality="normal", cancelled=False, earliest_delivery=date(2026, 1, 1))
    again = {breach_fingerprint(w) for w in tracking.waiting(progress) if w.stage == tracking.RECEIPT_SYNC}
    assert not (cleared & again), "a cleared breach's identity is waiting again; its raise id is spent"


# -- 4. a page token with a long number is INTERNAL, not INVALID_ARGUMENT ------------------------------------------


def test_a_stuck_cursor_with_a_very_long_number_is_invalid_argument():
    """A cursor that is not one the listing issued is INVALID_ARGUMENT, whatever it holds."""
    with pytest.raises(InvalidArgument):
        _stuck_cursor("9" * 5000 + "/PO-1")


# -- 5. ListStuckWorkflows keysets on a sort key that moves: a workflow stuck all along is skipped ---------------


async def test_paging_the_stuck_listing_never_skips_a_workflow_that_was_stuck_throughout():
    """A workflow stuck all along is listed once while paging, even if an older wait crosses its limit between pages."""
    from control_plane.servicer import ControlPlaneServicer
    from syncgov.controlplane.v1 import controlplane_service_pb2 as cps

    now = [950 * S]
    policy: Any = SimpleNamespace(current=SimpleNamespace(sla=limits, revision=1))
    reporter: Any = FakeReporter()
    t = WorkflowTracker(reporter, policy, "control-plane", clock=lambda: now[0])
    for key, at in (("PO-A", 100), ("PO-X", 200), ("PO-B", 300)):
        progress = t._workflow(key)
        tracking.on_version(progress, 1, at * S, criticality="normal", cancelled=False, earliest_delivery=None)
        t._settle(progress)
    tracking.on_invoice(t.progress["PO-X"], "INV-X", "submitted", 50 * S)  # 900 s limit: breached after t=950 s
    t._settle(t.progress["PO-X"])
    nothing: Any = None  # the listing reads the tracker alone
    servicer = ControlPlaneServicer(nothing, nothing, policy, nothing, nothing, t)

    first = await servicer.ListStuckWorkflows(cps.ListStuckWorkflowsRequest(page={"page_size": 1}), None)
    listed = [w.workflow_key for w in first.workflows]
    token = first.page_info.next_page_token
    now[0] = 1000 * S
    while token:
        page = await servicer.ListStuckWorkflows(
            cps.ListStuckWorkflowsRequest(page={"page_size": 1, "page_token": token}), None
        )
        listed += [w.workflow_key for w in page.workflows]
        token = page.page_info.next_page_token
    assert sorted(listed) == ["PO-A", "PO-B", "PO-X"]
