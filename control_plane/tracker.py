"""The workflow tracker: every PO workflow's progress folded from the streams, SLA breaches raised and cleared.

Followers read the po, receipt and invoice streams from their first message at every start and keep each
workflow's progress (control_plane/tracking.py) in memory; the exception stream tells which ``sla_breach``
exceptions this component raised and has not cleared. Nothing is kept beside the streams, so a restart, a second
replica or a lost cache rebuilds the same picture.

A periodic sweep (once every follower has caught up, so a start never mistakes an acknowledgment it has not read
yet for a missing one) raises one ``sla_breach`` per breach and clears it when its stage completes. Both are
idempotent by id (the breach's identity), so two replicas, or a sweep repeated after a crash between the publish
and the bookkeeping, write each once.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from control_plane import tracking
from control_plane.tracking import Breach, Waiting, WorkflowProgress
from libs.runtime.events import StoredEvent, readable
from libs.runtime.exception_reporter import CLEARED, RAISED, ExceptionReporter, case_id, fingerprint
from libs.runtime.follower import StreamFollower
from libs.runtime.policy_store import PolicyView
from libs.runtime.values import criticality_name
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import events_pb2 as exception_events
from syncgov.exception.v1 import exception_pb2
from syncgov.invoice.v1 import events_pb2 as invoice_events
from syncgov.po.v1 import events_pb2 as po_events
from syncgov.po.v1 import po_pb2
from syncgov.receipt.v1 import events_pb2 as receipt_events

log = logging.getLogger(__name__)

SLA_BREACH = exception_pb2.EXCEPTION_TYPE_SLA_BREACH
TRACKED_DOMAINS = ("po", "receipt", "invoice")
VERSION_EVENTS = {
    "published": po_events.PurchaseOrderPublished,
    "changed": po_events.PurchaseOrderChanged,
    "cancelled": po_events.PurchaseOrderCancelled,
}


def breach_ref(wait: Waiting) -> types_pb2.ObjectRef:
    return types_pb2.ObjectRef(object_type=wait.object_type, object_key=wait.object_key, version=wait.object_version)


def breach_fingerprint(wait: Waiting) -> str:
    return fingerprint(SLA_BREACH, breach_ref(wait), wait.discriminator)


def breach_exception_id(wait: Waiting) -> str:
    """The EXC id exception-router gives the breach's exception."""
    return case_id("sla_breach", wait.object_type, wait.object_key, breach_fingerprint(wait))


def earliest_delivery(order: po_pb2.PurchaseOrder) -> date | None:
    dates = [
        date(line.requested_delivery_date.year, line.requested_delivery_date.month, line.requested_delivery_date.day)
        for line in order.lines
        if line.requested_delivery_date.year
    ]
    return min(dates) if dates else None


@dataclass(frozen=True, slots=True)
class Stuck:
    progress: WorkflowProgress
    breaches: list[Breach]

    @property
    def since_ns(self) -> int:
        return min(breach.waiting.since_ns for breach in self.breaches)


class WorkflowTracker:
    """Every PO workflow's progress, its waits and its breaches, kept current as events are folded and as deadlines
    pass: each workflow's next deadline sits in a heap, so a sweep touches only the workflows that changed or came
    due, however many are waiting."""

    def __init__(
        self,
        reporter: ExceptionReporter,
        policy: PolicyView,
        component: str,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.progress: dict[str, WorkflowProgress] = {}
        self._waits: dict[str, tuple[Waiting, ...]] = {}  # workflows with a stage not completed
        self._late: dict[str, list[Breach]] = {}  # of those, the ones with a stage past its limit
        self._deadlines: list[tuple[int, str]] = []  # (next deadline, workflow): the soonest first
        self._next_deadline: dict[str, int] = {}  # the one valid heap entry of each workflow
        self._waiting_by_stage = dict.fromkeys(tracking.STAGES, 0)
        self._late_by_stage = dict.fromkeys(tracking.STAGES, 0)
        self._dirty: set[str] = set()  # changed since the last sweep: breaches to raise or clear
        self._open: dict[str, exception_pb2.Exception] = {}  # fingerprint -> the breach raised, not cleared yet
        self._open_by_workflow: dict[str, set[str]] = {}
        self._followers: list[StreamFollower] = []
        self._revision = -1
        self._limits: tracking.Limits = tracking.memoized(lambda stage, criticality: None)
        self._reporter = reporter
        self._policy = policy
        self._component = component
        self._clock = clock

    def waits_for(self, follower: StreamFollower) -> None:
        """A follower feeding the tracker: until each has caught up, nothing is raised or cleared, and the listing
        answers UNAVAILABLE (a start never mistakes an acknowledgment it has not read yet for a missing one)."""
        self._followers.append(follower)

    @property
    def caught_up(self) -> bool:
        return all(follower.caught_up for follower in self._followers)

    # -- folding ------------------------------------------------------------------------------------------------

    def _workflow(self, key: str) -> WorkflowProgress:
        progress = self.progress.get(key)
        if progress is None:
            progress = self.progress[key] = WorkflowProgress(key)
        return progress

    def _settle(self, progress: WorkflowProgress) -> None:
        """After an event changed a workflow: its waits again, and whether any is past its limit."""
        key = progress.key
        for wait in self._waits.pop(key, ()):
            self._waiting_by_stage[wait.stage] -= 1
        waits = tuple(tracking.waiting(progress))
        if waits:
            self._waits[key] = waits
            for wait in waits:
                self._waiting_by_stage[wait.stage] += 1
        self._assess(key, self._clock())
        self._dirty.add(key)

    def _assess(self, key: str, now_ns: int) -> None:
        """Which of the workflow's waits are past their limit at ``now_ns``, and when the next one will be."""
        for breach in self._late.pop(key, ()):
            self._late_by_stage[breach.waiting.stage] -= 1
        late: list[Breach] = []
        upcoming = 0
        for wait in self._waits.get(key, ()):
            limit = tracking.limit_for(self._limits, wait.stage, wait.criticality)
            if limit is None:
                continue
            deadline = wait.since_ns + limit[0] // timedelta(microseconds=1) * 1000
            if now_ns > deadline:
                late.append(Breach(wait, limit[0], limit[1]))
            elif not upcoming or deadline < upcoming:
                upcoming = deadline
        if late:
            self._late[key] = late
            for breach in late:
                self._late_by_stage[breach.waiting.stage] += 1
        if upcoming and self._next_deadline.get(key) != upcoming:
            self._next_deadline[key] = upcoming
            heapq.heappush(self._deadlines, (upcoming, key))
        elif not upcoming:
            self._next_deadline.pop(key, None)

    def _advance(self) -> int:
        """Bring the picture to now: a new policy revision reassesses every wait, else only the deadlines passed."""
        now = self._clock()
        policy = self._policy.current
        if policy.revision != self._revision:
            self._revision = policy.revision
            self._limits = tracking.memoized(policy.sla)
            self._deadlines.clear()
            self._next_deadline.clear()
            for key in list(self._waits):
                self._assess(key, now)
                self._dirty.add(key)
        while self._deadlines and self._deadlines[0][0] < now:
            deadline, key = heapq.heappop(self._deadlines)
            if self._next_deadline.get(key) != deadline:
                continue  # superseded: the workflow changed since and has another deadline (or none)
            del self._next_deadline[key]
            self._assess(key, now)
            self._dirty.add(key)
        return now

    def on_po(self, stored: StoredEvent) -> None:
        name = stored.subject.rsplit(".", 1)[-1]
        key = stored.envelope.object_key
        at = stored.envelope.recorded_at.ToNanoseconds()
        if name in VERSION_EVENTS:
            event = readable(stored, lambda s: s.unpack(VERSION_EVENTS[name]))
            if event is None:
                return
            order = event.purchase_order
            progress = self._workflow(key)
            tracking.on_version(
                progress,
                order.version,
                at,
                criticality=criticality_name(order.criticality),
                cancelled=name == "cancelled" or order.status == po_pb2.PURCHASE_ORDER_STATUS_CANCELLED,
                earliest_delivery=earliest_delivery(order),
            )
        elif name == "acknowledged":
            acknowledged = readable(stored, lambda s: s.unpack(po_events.PurchaseOrderAcknowledged))
            if acknowledged is None:
                return
            progress = self._workflow(key)
            tracking.on_answer(progress, acknowledged.acknowledgment.version, acknowledged=True)
        elif name == "rejected":
            rejected = readable(stored, lambda s: s.unpack(po_events.PurchaseOrderRejected))
            if rejected is None:
                return
            progress = self._workflow(key)
            tracking.on_answer(progress, rejected.version, acknowledged=False)
        else:
            return
        self._settle(progress)

    def on_receipt(self, stored: StoredEvent) -> None:
        reconciled = readable(stored, lambda s: s.unpack(receipt_events.GoodsReceiptReconciled))
        if reconciled is None or not reconciled.receipt.po_id:
            return
        progress = self._workflow(reconciled.receipt.po_id)
        tracking.on_receipt(progress, fully_received=reconciled.purchase_order_fully_received)
        self._settle(progress)

    def on_invoice(self, stored: StoredEvent) -> None:
        key = stored.envelope.workflow_key
        if not key:
            return
        name = stored.subject.rsplit(".", 1)[-1]
        if name == "submitted":
            # A submission that matched is recorded as one event whose match says so; no "matched" follows.
            submitted = readable(stored, lambda s: s.unpack(invoice_events.InvoiceSubmitted))
            if submitted is None:
                return
            if submitted.match.matched:
                name = "matched"
        progress = self._workflow(key)
        tracking.on_invoice(progress, stored.envelope.object_key, name, stored.envelope.recorded_at.ToNanoseconds())
        self._settle(progress)

    def on_exception(self, stored: StoredEvent) -> None:
        """The exception stream's events: the breaches this component raised, and those it cleared."""
        name = stored.subject.rsplit(".", 1)[-1]
        if name == RAISED:
            raised = readable(stored, lambda s: s.unpack(exception_events.ExceptionRaised))
            if raised is not None and self._ours(raised.exception):
                self._remember(raised.exception)
        elif name == CLEARED and stored.subject.split(".")[-2] == self._component:  # its own clearings' subject
            cleared = readable(stored, lambda s: s.unpack(exception_events.ExceptionCleared))
            if cleared is not None and self._ours(cleared.exception):
                self._forget(cleared.exception.fingerprint, cleared.exception.workflow_key)

    def _ours(self, exception: exception_pb2.Exception) -> bool:
        return exception.type == SLA_BREACH and exception.raised_by == self._component

    def _remember(self, raised: exception_pb2.Exception) -> None:
        self._open[raised.fingerprint] = raised
        self._open_by_workflow.setdefault(raised.workflow_key, set()).add(raised.fingerprint)
        self._dirty.add(raised.workflow_key)  # a breach whose stage completed meanwhile is cleared at the next sweep

    def _forget(self, fingerprint: str, workflow_key: str) -> None:
        self._open.pop(fingerprint, None)
        raised = self._open_by_workflow.get(workflow_key)
        if raised is not None:
            raised.discard(fingerprint)
            if not raised:
                del self._open_by_workflow[workflow_key]

    # -- reading ------------------------------------------------------------------------------------------------

    def breaches_of(self, key: str) -> list[Breach]:
        self._advance()
        return list(self._late.get(key, ()))

    def stuck(self) -> list[Stuck]:
        """Every workflow with a stage past its limit, in no particular order."""
        self._advance()
        return [Stuck(self.progress[key], list(breaches)) for key, breaches in self._late.items()]

    def counts(self) -> dict[str, int]:
        """How many workflows are open, completed and cancelled."""
        counted = dict.fromkeys(tracking.WORKFLOW_STATES, 0)
        for progress in self.progress.values():
            counted[progress.state] += 1
        return counted

    def waiting_by_stage(self) -> dict[str, tuple[int, int]]:
        """Per stage: how many waits there are, and how many of them are past their SLA."""
        self._advance()
        return {stage: (self._waiting_by_stage[stage], self._late_by_stage[stage]) for stage in tracking.STAGES}

    # -- the sweep ----------------------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Raise the breaches not raised yet and clear the raised ones whose stage completed, for the workflows that
        changed or came due since the last sweep."""
        if not self.caught_up:
            return
        self._advance()
        dirty, self._dirty = self._dirty, set()
        try:
            while dirty:
                key = dirty.pop()
                try:
                    await self._reconcile(key)
                except BaseException:
                    dirty.add(key)
                    raise
        finally:
            self._dirty |= dirty  # what a failed publish left, for the next sweep

    async def _reconcile(self, key: str) -> None:
        late = {breach_fingerprint(breach.waiting): breach for breach in self._late.get(key, ())}
        for fingerprint_, breach in late.items():
            if fingerprint_ not in self._open:
                self._remember(await self._raise(breach, self._revision))
        waiting = {breach_fingerprint(wait) for wait in self._waits.get(key, ())}
        for fingerprint_ in list(self._open_by_workflow.get(key, ())):
            if fingerprint_ not in waiting:
                raised = self._open[fingerprint_]
                await self._reporter.clear_exception(raised, self._completion(raised), clear_id=f"sla-{fingerprint_}")
                self._forget(fingerprint_, key)

    async def _raise(self, breach: Breach, revision: int) -> exception_pb2.Exception:
        wait = breach.waiting
        waited = (self._clock() - wait.since_ns) // 1_000_000_000
        what = {
            tracking.PO_ACKNOWLEDGMENT: f"the ERP has not answered version {wait.object_version}",
            tracking.RECEIPT_SYNC: "goods were due and no receipt has been synced",
            tracking.INVOICE_MATCH: f"invoice {wait.object_key} has not matched",
        }[wait.stage]
        return await self._reporter.raise_exception(
            SLA_BREACH,
            exception_pb2.SEVERITY_HIGH,
            breach_ref(wait),
            f"{wait.workflow_key}: {what} after {waited} s; sla.{wait.stage}.{breach.criticality_used} is "
            f"{int(breach.limit.total_seconds())} s",
            evidence=[f"stage={wait.stage}", f"waiting_since_ns={wait.since_ns}", f"criticality={wait.criticality}"],
            workflow_key=wait.workflow_key,
            discriminator=wait.discriminator,
            policy_revision=revision,
            exception_id=f"sla-{breach_fingerprint(wait)}",
        )

    def _completion(self, raised: exception_pb2.Exception) -> str:
        stage = next((item.split("=", 1)[1] for item in raised.evidence if item.startswith("stage=")), "the stage")
        progress = self.progress.get(raised.workflow_key)
        if stage == tracking.PO_ACKNOWLEDGMENT and progress is not None:
            return f"{stage} completed: the ERP answered up to version {progress.answered_through}"
        if stage == tracking.RECEIPT_SYNC and progress is not None:
            return f"{stage} completed: " + ("the order was cancelled" if progress.cancelled else "a receipt synced")
        return f"{stage} completed"
