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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from nats.js import JetStreamContext

from control_plane import tracking
from control_plane.tracking import Breach, Waiting, WorkflowProgress
from libs.runtime.events import StoredEvent, readable
from libs.runtime.exception_reporter import CLEARED, RAISED, ExceptionReporter, case_id, fingerprint
from libs.runtime.follower import StreamFollower
from libs.runtime.policy_store import PolicyView
from libs.runtime.subjects import Namespace
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
    def __init__(
        self,
        js: JetStreamContext,
        namespace: Namespace,
        reporter: ExceptionReporter,
        policy: PolicyView,
        component: str,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.progress: dict[str, WorkflowProgress] = {}
        self._waiting: set[str] = set()  # workflows with a stage not completed
        self._open: dict[str, exception_pb2.Exception] = {}  # fingerprint -> the breach raised, not cleared yet
        self._shared: list[StreamFollower] = []
        self._limits_of: tuple[int, tracking.Limits | None] = (-1, None)
        self._reporter = reporter
        self._policy = policy
        self._component = component
        self._clock = clock
        self.followers = [
            StreamFollower(js, namespace, domain, handler)
            for domain, handler in (("po", self._on_po), ("receipt", self._on_receipt), ("invoice", self._on_invoice))
        ]

    def waits_for(self, follower: StreamFollower) -> None:
        """A follower the tracker's picture depends on that it does not own (the exception stream's, shared)."""
        self._shared.append(follower)

    @property
    def caught_up(self) -> bool:
        return all(follower.caught_up for follower in (*self.followers, *self._shared))

    def _limits(self) -> tracking.Limits:
        """The policy in force's limits, looked up once per stage and criticality per revision."""
        policy = self._policy.current
        if self._limits_of[0] != policy.revision or self._limits_of[1] is None:
            self._limits_of = (policy.revision, tracking.memoized(policy.sla))
        limits = self._limits_of[1]
        assert limits is not None
        return limits

    # -- folding ------------------------------------------------------------------------------------------------

    def _workflow(self, key: str) -> WorkflowProgress:
        progress = self.progress.get(key)
        if progress is None:
            progress = self.progress[key] = WorkflowProgress(key)
        return progress

    def _settle(self, progress: WorkflowProgress) -> None:
        if tracking.waiting(progress):
            self._waiting.add(progress.key)
        else:
            self._waiting.discard(progress.key)

    def _on_po(self, stored: StoredEvent) -> None:
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

    def _on_receipt(self, stored: StoredEvent) -> None:
        reconciled = readable(stored, lambda s: s.unpack(receipt_events.GoodsReceiptReconciled))
        if reconciled is None or not reconciled.receipt.po_id:
            return
        progress = self._workflow(reconciled.receipt.po_id)
        tracking.on_receipt(progress, fully_received=reconciled.purchase_order_fully_received)
        self._settle(progress)

    def _on_invoice(self, stored: StoredEvent) -> None:
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
        """The exception stream's events (fed by the control plane's exception follower): the breaches this
        component raised, and those it cleared."""
        name = stored.subject.rsplit(".", 1)[-1]
        if name == RAISED:
            raised = readable(stored, lambda s: s.unpack(exception_events.ExceptionRaised))
            if raised is not None and self._ours(raised.exception):
                self._open[raised.exception.fingerprint] = raised.exception
        elif name == CLEARED and stored.subject.split(".")[-2] == self._component:  # its own clearings' subject
            cleared = readable(stored, lambda s: s.unpack(exception_events.ExceptionCleared))
            if cleared is not None and self._ours(cleared.exception):
                self._open.pop(cleared.exception.fingerprint, None)

    def _ours(self, exception: exception_pb2.Exception) -> bool:
        return exception.type == SLA_BREACH and exception.raised_by == self._component

    # -- reading ------------------------------------------------------------------------------------------------

    def breaches_of(self, key: str, now_ns: int | None = None) -> list[Breach]:
        progress = self.progress.get(key)
        if progress is None:
            return []
        return tracking.breaches(progress, self._limits(), self._clock() if now_ns is None else now_ns)

    def stuck(self, now_ns: int | None = None) -> list[Stuck]:
        """Every workflow with a breach, the longest waiting first."""
        now = self._clock() if now_ns is None else now_ns
        limits = self._limits()
        found = []
        for key in self._waiting:
            found_breaches = tracking.breaches(self.progress[key], limits, now)
            if found_breaches:
                found.append(Stuck(self.progress[key], found_breaches))
        found.sort(key=lambda stuck: (stuck.since_ns, stuck.progress.key))
        return found

    def counts(self) -> dict[str, int]:
        """How many workflows are open, completed and cancelled."""
        counted = dict.fromkeys(tracking.WORKFLOW_STATES, 0)
        for progress in self.progress.values():
            counted[progress.state] += 1
        return counted

    def waiting_by_stage(self) -> dict[str, tuple[int, int]]:
        """Per stage: how many waits there are, and how many of them are past their SLA."""
        now = self._clock()
        limits = self._limits()
        totals = {stage: [0, 0] for stage in tracking.STAGES}
        for key in self._waiting:
            progress = self.progress[key]
            for wait in tracking.waiting(progress):
                totals[wait.stage][0] += 1
            for breach in tracking.breaches(progress, limits, now):
                totals[breach.waiting.stage][1] += 1
        return {stage: (waits, late) for stage, (waits, late) in totals.items()}

    # -- the sweep ----------------------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Raise the breaches not raised yet; clear the raised ones whose stage completed."""
        if not self.caught_up:
            return
        policy = self._policy.current
        for stuck in self.stuck():
            for breach in stuck.breaches:
                key = breach_fingerprint(breach.waiting)
                if key not in self._open:
                    self._open[key] = await self._raise(breach, policy.revision)
        for key, raised in list(self._open.items()):
            if not self._still_waiting(raised):
                await self._reporter.clear_exception(raised, self._completion(raised), clear_id=f"sla-{key}")
                self._open.pop(key, None)

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

    def _still_waiting(self, raised: exception_pb2.Exception) -> bool:
        progress = self.progress.get(raised.workflow_key)
        if progress is None:
            return False
        return any(breach_fingerprint(wait) == raised.fingerprint for wait in tracking.waiting(progress))

    def _completion(self, raised: exception_pb2.Exception) -> str:
        stage = next((item.split("=", 1)[1] for item in raised.evidence if item.startswith("stage=")), "the stage")
        progress = self.progress.get(raised.workflow_key)
        if stage == tracking.PO_ACKNOWLEDGMENT and progress is not None:
            return f"{stage} completed: the ERP answered up to version {progress.answered_through}"
        if stage == tracking.RECEIPT_SYNC and progress is not None:
            return f"{stage} completed: " + ("the order was cancelled" if progress.cancelled else "a receipt synced")
        return f"{stage} completed"
