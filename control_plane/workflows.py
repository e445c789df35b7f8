"""One procurement workflow end to end (issue 13): every event of the PO's life, read back from the streams.

A workflow is keyed by its purchase order. Its events live in four streams: the order's own subject
(``<ns>.po.<po>.*``), its receipt documents (``<ns>.receipt.<po>.*``), its invoices (``<ns>.invoice.<invoice>.*``,
whose envelopes carry the PO as ``workflow_key``) and the exceptions raised about it (``workflow_key`` again). The
order's and the receipts' subjects are read directly; for invoices and exceptions, whose subjects do not name the
PO, an in-memory index (workflow key -> stream sequences) is followed from those two streams at start and kept
current, so a timeline is a handful of direct reads.

Each event becomes a stage record with the trace id of the operation that wrote it (from its ``traceparent``
header), so every stage of the timeline leads to its trace in Jaeger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from libs.runtime.events import EventReader, StoredEvent
from syncgov.common.v1 import types_pb2
from syncgov.controlplane.v1 import controlplane_pb2 as cp
from syncgov.exception.v1 import events_pb2 as exception_events
from syncgov.exception.v1 import exception_pb2
from syncgov.po.v1 import events_pb2 as po_events
from syncgov.receipt.v1 import events_pb2 as receipt_events

log = logging.getLogger(__name__)

INDEXED_DOMAINS = ("invoice", "exception")
# The workflow keys indexed per sequence stay small; an exception's transitions carry no workflow key (only raises).
PO_STAGES = {
    "published": cp.WORKFLOW_STAGE_PUBLISHED,
    "changed": cp.WORKFLOW_STAGE_CHANGED,
    "cancelled": cp.WORKFLOW_STAGE_CANCELLED,
    "acknowledged": cp.WORKFLOW_STAGE_ACKNOWLEDGED,
    "rejected": cp.WORKFLOW_STAGE_REJECTED,
    "held": cp.WORKFLOW_STAGE_HELD,
}
INVOICE_STAGES = {
    "submitted": cp.WORKFLOW_STAGE_INVOICE_SUBMITTED,
    "matched": cp.WORKFLOW_STAGE_INVOICE_MATCHED,
    "blocked": cp.WORKFLOW_STAGE_INVOICE_BLOCKED,
    "released": cp.WORKFLOW_STAGE_INVOICE_RELEASED,
    "approved": cp.WORKFLOW_STAGE_INVOICE_APPROVED,
    "paid": cp.WORKFLOW_STAGE_PAID,
}


def trace_id(stored: StoredEvent) -> str:
    """The trace id of the W3C ``traceparent`` header (``00-<trace id>-<span id>-<flags>``), or ""."""
    parts = stored.headers.get("traceparent", "").split("-")
    return parts[1] if len(parts) >= 4 and len(parts[1]) == 32 else ""


@dataclass
class WorkflowIndex:
    """Workflow key -> the sequences of its invoice events and exception raises; fed by followers, in order."""

    sequences: dict[tuple[str, str], list[int]]

    @classmethod
    def empty(cls) -> WorkflowIndex:
        return cls({})

    def follower(self, domain: str) -> Callable[[StoredEvent], None]:
        def follow(stored: StoredEvent) -> None:
            key = stored.envelope.workflow_key
            if not key or (domain == "exception" and not stored.subject.endswith(".raised")):
                return
            self.sequences.setdefault((domain, key), []).append(stored.sequence)

        return follow

    def of(self, domain: str, workflow_key: str) -> list[int]:
        return list(self.sequences.get((domain, workflow_key), ()))


def stage_of(stored: StoredEvent) -> cp.WorkflowStageRecord | None:
    """The stage record an event reaches, or None for an event that is not a stage (an exception's transition)."""
    name = stored.subject.rsplit(".", 1)[-1]
    envelope = stored.envelope
    domain = stored.subject.split(".")[1] if stored.subject.count(".") >= 3 else ""
    record = cp.WorkflowStageRecord(
        event=name,
        version=envelope.object_version,
        trace_id=trace_id(stored),
        object=types_pb2.ObjectRef(
            object_type=envelope.object_type, object_key=envelope.object_key, version=envelope.object_version
        ),
        source=f"{stored.stream}:{stored.sequence}",
    )
    record.reached_at.CopyFrom(envelope.recorded_at)
    if domain == "po" and name in PO_STAGES:
        record.stage = PO_STAGES[name]
        if name == "acknowledged":
            acknowledged = stored.unpack(po_events.PurchaseOrderAcknowledged)
            record.version = acknowledged.acknowledgment.version
            record.detail = f"ERP number {acknowledged.acknowledgment.erp_document_number}".strip()
            record.propagation_time.CopyFrom(acknowledged.propagation_time)
        return record
    if domain == "receipt":
        reconciled = stored.unpack(receipt_events.GoodsReceiptReconciled)
        record.stage = cp.WORKFLOW_STAGE_RECEIVED
        record.version = reconciled.reconciled_po_version
        findings = sorted({finding_name(finding.type) for finding in reconciled.findings})
        record.detail = f"{reconciled.receipt.receipt_id}: {len(reconciled.receipt.lines)} line(s)" + (
            f", findings: {', '.join(findings)}" if findings else ""
        )
        return record
    if domain == "invoice" and name in INVOICE_STAGES:
        record.stage = INVOICE_STAGES[name]
        record.detail = f"invoice {envelope.object_key}"
        return record
    if domain == "exception" and name == "raised":
        raised = stored.unpack(exception_events.ExceptionRaised).exception
        record.stage = cp.WORKFLOW_STAGE_EXCEPTION_RAISED
        record.detail = f"{finding_name(raised.type)}: {raised.detail[:200]}"
        return record
    return None


def finding_name(value: int) -> str:
    """``over_receipt`` for EXCEPTION_TYPE_OVER_RECEIPT."""
    try:
        return exception_pb2.ExceptionType.Name(value).removeprefix("EXCEPTION_TYPE_").lower()
    except ValueError:
        return "unspecified"


class Workflows:
    def __init__(self, reader: EventReader, index: WorkflowIndex) -> None:
        self._reader = reader
        self._index = index

    async def timeline(self, workflow_key: str) -> cp.Workflow | None:
        """Every stage of the workflow, oldest first (by when each event was recorded); None when nothing exists."""
        stored: list[StoredEvent] = []
        stored += await self._reader.history("po", workflow_key)
        stored += await self._reader.history("receipt", workflow_key)
        for domain in INDEXED_DOMAINS:
            for sequence in self._index.of(domain, workflow_key):
                stored.append(await self._reader.at(domain, sequence))
        if not stored:
            return None
        records = []
        for event in stored:
            try:
                record = stage_of(event)
            except Exception:  # a stored event the tracker cannot read: left out of the timeline, logged
                log.exception("workflow %s: %s:%s not readable as a stage", workflow_key, event.stream, event.sequence)
                continue
            if record is not None:
                records.append(record)
        records.sort(key=lambda record: (record.reached_at.ToNanoseconds(), record.source))
        workflow = cp.Workflow(workflow_key=workflow_key, stages=records)
        return workflow
