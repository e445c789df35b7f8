"""What receipt-reconciliation publishes: one ``GoodsReceiptReconciled`` per posting, on the order's subject.

``encode`` turns the domain event into the envelope's payload on ``<ns>.receipt.<po id>.reconciled``;
``decode`` turns a stored event back into the domain event ``evolve`` folds.
"""

from __future__ import annotations

from libs.runtime.events import Event, StoredEvent, readable
from services.receipt_reconciliation import domain, mapping
from syncgov.receipt.v1 import events_pb2

DOMAIN = "receipt"
RECONCILED = "reconciled"


def encode(po_id: str, event: domain.ReceivingEvent) -> Event:
    document = event.document
    return Event(
        domain=DOMAIN,
        object_type=domain.OBJECT_TYPE,
        object_key=po_id,
        object_version=event.reconciled_version,
        name=RECONCILED,
        payload=mapping.reconciled_to_proto(event),
        idempotency_key=event.idempotency_key,
        source_system=event.receipt.source_system,
        content_sha256=event.fingerprint,
        workflow_key=po_id,
        occurred_at=document.posted_at,
    )


def decode(stored: StoredEvent) -> domain.ReceivingEvent | None:
    """The domain event a stored receipt event holds (None for anything else, and for an event that cannot be
    read: it is logged and left out rather than making the order's whole receiving record unreadable)."""
    if stored.subject.rsplit(".", 1)[-1] != RECONCILED:
        return None
    return readable(
        stored,
        lambda event: from_proto(event.unpack(events_pb2.GoodsReceiptReconciled), event.envelope.idempotency_key),
    )


def from_proto(payload: events_pb2.GoodsReceiptReconciled, idempotency_key: str) -> domain.Reconciled:
    receipt, problems = mapping.to_domain(payload.receipt)
    if receipt is None:  # only validated documents are ever stored
        raise ValueError(f"stored goods receipt {payload.receipt.receipt_id} is unreadable: {problems}")
    return domain.Reconciled(
        receipt=receipt,
        document=payload.receipt,
        fingerprint=payload.content_sha256,
        idempotency_key=idempotency_key,
        reconciled_version=payload.reconciled_po_version,
        quantities=tuple(mapping.quantity_from_proto(q) for q in payload.quantities),
        lines=tuple(mapping.status_from_proto(s) for s in payload.lines),
        findings=tuple(mapping.finding_from_proto(f) for f in payload.findings),
        fully_received=payload.purchase_order_fully_received,
    )
