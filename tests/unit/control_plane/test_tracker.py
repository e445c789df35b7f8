"""The tracker between folds and sweeps: deadlines passing with no event, one raise and one clearing per breach, a
failed publish retried, a policy change re-judging every wait. The reporter records what would be published."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from control_plane import tracking
from control_plane.tracker import WorkflowTracker
from libs.runtime.exception_reporter import fingerprint
from syncgov.exception.v1 import exception_pb2

S = 1_000_000_000


class Reporter:
    def __init__(self) -> None:
        self.raised: list[exception_pb2.Exception] = []
        self.cleared: list[tuple[str, str]] = []
        self.failing = False

    async def raise_exception(self, exception_type, severity, ref, detail, **extra) -> exception_pb2.Exception:
        if self.failing:
            raise ConnectionError("the broker did not answer")
        raised = exception_pb2.Exception(
            exception_id=extra["exception_id"],
            type=exception_type,
            object=ref,
            raised_by="control-plane",
            fingerprint=fingerprint(exception_type, ref, extra["discriminator"]),
            workflow_key=extra["workflow_key"],
            evidence=extra["evidence"],
        )
        self.raised.append(raised)
        return raised

    async def clear_exception(self, raised: exception_pb2.Exception, reason: str, *, clear_id: str) -> None:
        self.cleared.append((raised.exception_id, reason))


def make(limit: str = "30s") -> tuple[WorkflowTracker, Reporter, list[int], SimpleNamespace]:
    limits = {("po_acknowledgment", "normal"): timedelta(seconds=int(limit.rstrip("s")))}
    policy = SimpleNamespace(current=SimpleNamespace(sla=lambda stage, level: limits.get((stage, level)), revision=1))
    now = [1_000 * S]
    reporter = Reporter()
    handle: Any = reporter
    view: Any = policy
    return WorkflowTracker(handle, view, "control-plane", clock=lambda: now[0]), reporter, now, policy


def publish(tracker: WorkflowTracker, key: str, version: int, at: int) -> None:
    progress = tracker._workflow(key)
    tracking.on_version(progress, version, at, criticality="normal", cancelled=False, earliest_delivery=None)
    tracker._settle(progress)


def answer(tracker: WorkflowTracker, key: str, version: int) -> None:
    progress = tracker.progress[key]
    tracking.on_answer(progress, version, acknowledged=True)
    tracker._settle(progress)


async def test_a_deadline_passing_without_any_event_raises_once_and_the_answer_clears_once():
    tracker, reporter, now, _ = make()
    publish(tracker, "PO-1", 1, now[0])
    await tracker.sweep()
    assert reporter.raised == []
    now[0] += 31 * S  # nothing happened: the deadline alone makes it late
    await tracker.sweep()
    await tracker.sweep()
    [raised] = reporter.raised
    assert raised.workflow_key == "PO-1"
    assert tracker.waiting_by_stage()["po_acknowledgment"] == (1, 1)
    answer(tracker, "PO-1", 1)
    await tracker.sweep()
    await tracker.sweep()
    assert [exception_id for exception_id, _ in reporter.cleared] == [raised.exception_id]
    assert tracker.waiting_by_stage()["po_acknowledgment"] == (0, 0)
    assert tracker.stuck() == []


async def test_a_failed_raise_is_retried_by_the_next_sweep():
    tracker, reporter, now, _ = make()
    publish(tracker, "PO-1", 1, now[0])
    now[0] += 31 * S
    reporter.failing = True
    with pytest.raises(ConnectionError):
        await tracker.sweep()
    reporter.failing = False
    await tracker.sweep()
    assert len(reporter.raised) == 1


async def test_a_policy_revision_judges_every_wait_again():
    tracker, reporter, now, policy = make("300s")
    publish(tracker, "PO-1", 1, now[0])
    now[0] += 60 * S
    await tracker.sweep()
    assert reporter.raised == []
    stricter = {("po_acknowledgment", "normal"): timedelta(seconds=30)}
    policy.current = SimpleNamespace(sla=lambda stage, level: stricter.get((stage, level)), revision=2)
    await tracker.sweep()
    assert len(reporter.raised) == 1


async def test_a_later_version_answered_moves_the_wait_and_raises_a_new_breach_only_when_it_is_late():
    tracker, reporter, now, _ = make()
    publish(tracker, "PO-1", 1, now[0])
    now[0] += 31 * S
    await tracker.sweep()
    publish(tracker, "PO-1", 2, now[0])
    answer(tracker, "PO-1", 1)  # v1 answered; v2 waits from its own publication, not late yet
    await tracker.sweep()
    assert len(reporter.raised) == 1
    assert len(reporter.cleared) == 1
    now[0] += 31 * S
    await tracker.sweep()
    assert [raised.object.version for raised in reporter.raised] == [1, 2]
