"""A workflow's stages against the SLAs, folded and judged without I/O."""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from control_plane import tracking
from control_plane.tracking import WorkflowProgress

S = 1_000_000_000
LIMITS = {
    ("po_acknowledgment", "critical"): timedelta(seconds=30),
    ("po_acknowledgment", "normal"): timedelta(minutes=5),
    ("receipt_sync", "normal"): timedelta(minutes=5),
    ("invoice_match", "normal"): timedelta(minutes=15),
}


def limits(stage: str, criticality: str) -> timedelta | None:
    return LIMITS.get((stage, criticality))


def published(progress: WorkflowProgress, version: int, at: int, criticality: str = "normal", **more) -> None:
    tracking.on_version(
        progress,
        version,
        at,
        criticality=criticality,
        cancelled=more.get("cancelled", False),
        earliest_delivery=more.get("due"),
    )


def stages(progress: WorkflowProgress) -> list[tuple[str, int]]:
    return [(wait.stage, wait.object_version) for wait in tracking.waiting(progress)]


def test_the_erp_clock_runs_from_the_oldest_unanswered_version_until_it_or_a_later_one_is_answered():
    progress = WorkflowProgress("PO-1")
    published(progress, 1, 100 * S)
    published(progress, 2, 200 * S)
    [wait] = tracking.waiting(progress)
    assert (wait.stage, wait.object_version, wait.since_ns) == ("po_acknowledgment", 1, 100 * S)
    tracking.on_answer(progress, 1, acknowledged=True)
    [wait] = tracking.waiting(progress)
    assert (wait.object_version, wait.since_ns) == (2, 200 * S)  # another wait: another breach identity
    tracking.on_answer(progress, 2, acknowledged=False)  # a rejection is an answer too
    assert stages(progress) == []
    published(progress, 2, 300 * S)  # a version stored again (a replica's fold, a redelivery): answered already
    assert stages(progress) == []


def test_the_orders_criticality_picks_the_limit_and_an_unlisted_one_gets_normal():
    urgent, calm, odd = WorkflowProgress("A"), WorkflowProgress("B"), WorkflowProgress("C")
    published(urgent, 1, 0, "critical")
    published(calm, 1, 0, "normal")
    published(odd, 1, 0, "low")  # the test's policy sets no low limit
    now = 31 * S
    assert [b.limit for b in tracking.breaches(urgent, limits, now)] == [timedelta(seconds=30)]
    assert tracking.breaches(calm, limits, now) == []
    assert tracking.breaches(odd, limits, now) == []
    [late] = tracking.breaches(odd, limits, 301 * S)
    assert late.criticality_used == "normal"
    assert tracking.breaches(urgent, lambda stage, level: None, now) == []  # no SLA set: not timed


def test_goods_due_wait_for_a_receipt_once_the_erp_holds_the_order():
    progress = WorkflowProgress("PO-1")
    published(progress, 1, 0, due=date(2026, 11, 20))
    assert stages(progress) == [("po_acknowledgment", 1)]
    tracking.on_answer(progress, 1, acknowledged=True)
    [wait] = tracking.waiting(progress)
    assert wait.stage == "receipt_sync"
    assert wait.since_ns == tracking.end_of(date(2026, 11, 20))  # the end of the requested day, UTC
    tracking.on_receipt(progress, fully_received=False)
    assert stages(progress) == []


def test_an_invoice_waits_while_submitted_or_blocked_and_again_when_blocked_after_it_cleared():
    progress = WorkflowProgress("PO-1")
    tracking.on_invoice(progress, "INV-1", "submitted", 10 * S)
    tracking.on_invoice(progress, "INV-1", "blocked", 11 * S)
    [wait] = tracking.waiting(progress)
    assert (wait.stage, wait.object_key, wait.since_ns) == ("invoice_match", "INV-1", 10 * S)
    tracking.on_invoice(progress, "INV-1", "released", 20 * S)
    assert stages(progress) == []
    tracking.on_invoice(progress, "INV-1", "blocked", 30 * S)  # re-matched after a change order, blocked again
    [wait] = tracking.waiting(progress)
    assert wait.since_ns == 30 * S


def test_a_workflow_completes_when_fully_received_and_every_invoice_is_paid():
    progress = WorkflowProgress("PO-1")
    published(progress, 1, 0)
    tracking.on_answer(progress, 1, acknowledged=True)
    tracking.on_receipt(progress, fully_received=True)
    assert progress.state == "open"  # nothing invoiced yet
    tracking.on_invoice(progress, "INV-1", "submitted", 1)
    tracking.on_invoice(progress, "INV-1", "matched", 2)
    tracking.on_invoice(progress, "INV-2", "submitted", 3)
    tracking.on_invoice(progress, "INV-2", "cancelled", 4)
    tracking.on_invoice(progress, "INV-1", "paid", 5)
    assert progress.state == "completed"
    published(progress, 2, 6, cancelled=True)
    assert progress.state == "cancelled"


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 6)), max_size=30))
def test_nothing_waits_on_the_erp_once_it_answered_the_latest_version(steps):
    progress = WorkflowProgress("PO-1")
    latest = 0
    for publish, version in steps:
        if publish:
            published(progress, version, version * S)
            latest = max(latest, version)
        else:
            tracking.on_answer(progress, version, acknowledged=True)
    if latest:
        tracking.on_answer(progress, latest, acknowledged=True)
    assert [wait for wait in tracking.waiting(progress) if wait.stage == "po_acknowledgment"] == []
