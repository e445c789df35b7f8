"""What po-publication publishes and consumes: the order's domain events in their contract form.

``encode`` turns a domain event into the envelope's payload on ``<ns>.po.<po id>.<name>``; ``decode``
turns a stored event back into the domain event ``evolve`` folds. The supplier and receipt events it
follows only update the supplier directory and the received quantities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from libs.policy.catalog import message_descriptor
from libs.runtime.events import Event, StoredEvent, content_sha256, readable, timestamp
from libs.runtime.values import datetime_from_proto, decimal_from_proto
from services.po_publication import domain, mapping
from syncgov.exception.v1 import exception_pb2
from syncgov.po.v1 import events_pb2, po_pb2
from syncgov.receipt.v1 import events_pb2 as receipt_events_pb2
from syncgov.receipt.v1 import receipt_pb2
from syncgov.supplier.v1 import events_pb2 as supplier_events_pb2
from syncgov.supplier.v1 import supplier_pb2

DOMAIN = "po"
PUBLISHED = "published"
CHANGED = "changed"
CANCELLED = "cancelled"
ACKNOWLEDGED = "acknowledged"
REJECTED = "rejected"
HELD = "held"
HOLD_EXPIRED = "hold_expired"
DOCUMENT_EVENTS = frozenset({PUBLISHED, CHANGED, CANCELLED})
HELD_KEY_PREFIX = "held:"
SYNCGOV_SYSTEM = "syncgov"


def _duration(span: timedelta) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(span)
    return value


def cancelled_document(event: domain.OrderCancelled) -> po_pb2.PurchaseOrder:
    """The cancelled version: the latest version's document, numbered anew, status cancelled."""
    document = po_pb2.PurchaseOrder()
    document.CopyFrom(event.based_on)
    document.version = event.order.version
    document.status = po_pb2.PURCHASE_ORDER_STATUS_CANCELLED
    if event.order.approved_at is not None:
        document.approved_at.CopyFrom(timestamp(event.order.approved_at))
    return document


def encode(po_id: str, event: domain.OrderEvent) -> Event:
    """The event to publish for a domain event of order ``po_id``."""
    source_system = SYNCGOV_SYSTEM if isinstance(event, domain.HoldExpired) else event.source_system
    occurred: timestamp_pb2.Timestamp | None = None
    fingerprint = ""
    key = ""
    version: int
    if isinstance(event, domain.VersionPublished):
        name, version, key, fingerprint = PUBLISHED, event.order.version, event.idempotency_key, event.fingerprint
        payload: object = events_pb2.PurchaseOrderPublished(purchase_order=event.document)
        occurred = event.document.approved_at if event.document.HasField("approved_at") else None
    elif isinstance(event, domain.VersionChanged):
        name, version, key, fingerprint = CHANGED, event.order.version, event.idempotency_key, event.fingerprint
        payload = events_pb2.PurchaseOrderChanged(
            purchase_order=event.document, changes=mapping.changes_to_proto(event.changes)
        )
        occurred = event.document.approved_at if event.document.HasField("approved_at") else None
    elif isinstance(event, domain.OrderCancelled):
        document = cancelled_document(event)
        name, version, key, fingerprint = (
            CANCELLED,
            event.order.version,
            event.idempotency_key,
            content_sha256(document),
        )
        payload = events_pb2.PurchaseOrderCancelled(purchase_order=document, reason=event.reason)
    elif isinstance(event, domain.VersionAcknowledged):
        name, version, key = ACKNOWLEDGED, event.version, event.idempotency_key
        acknowledgment = po_pb2.ErpAcknowledgment(version=event.version, erp_document_number=event.erp_document_number)
        acknowledgment.acknowledged_at.CopyFrom(timestamp(event.acknowledged_at))
        payload = events_pb2.PurchaseOrderAcknowledged(
            po_id=po_id, acknowledgment=acknowledgment, propagation_time=_duration(event.propagation)
        )
        occurred = acknowledgment.acknowledged_at
    elif isinstance(event, domain.VersionRejected):
        name, version, key = REJECTED, event.version, event.idempotency_key
        payload = events_pb2.PurchaseOrderRejected(po_id=po_id, version=event.version, reason=event.reason)
    elif isinstance(event, domain.VersionHeld):
        name, version, fingerprint = HELD, event.order.version, event.fingerprint
        key = HELD_KEY_PREFIX + event.idempotency_key
        payload = events_pb2.PurchaseOrderVersionHeld(
            purchase_order=event.document, hold_until=timestamp(event.hold_until)
        )
    else:
        name, version = HOLD_EXPIRED, event.version
        key = f"hold-expired:{po_id}:v{event.version}"
        payload = events_pb2.PurchaseOrderHoldExpired(
            po_id=po_id, version=event.version, exception_id=event.exception_id
        )
    return Event(
        domain=DOMAIN,
        object_type=domain.OBJECT_TYPE,
        object_key=po_id,
        object_version=version,
        name=name,
        payload=payload,  # type: ignore[arg-type]
        idempotency_key=key,
        source_system=source_system,
        content_sha256=fingerprint,
        workflow_key=po_id,
        occurred_at=occurred,
    )


def settle(event: domain.OrderEvent, message: Event) -> domain.OrderEvent:
    """A cancellation's document exists only once encoded: fold what was published."""
    if isinstance(event, domain.OrderCancelled):
        payload = message.payload
        assert isinstance(payload, events_pb2.PurchaseOrderCancelled)
        return replace(event, document=payload.purchase_order, fingerprint=message.content_sha256)
    return event


def _order(document: po_pb2.PurchaseOrder) -> domain.PurchaseOrder:
    order, problems = mapping.to_domain(document)
    if order is None:  # only validated versions are ever stored
        raise ValueError(f"stored purchase order {document.po_id} v{document.version} is unreadable: {problems}")
    return order


def decode(stored: StoredEvent) -> domain.OrderEvent | None:
    """The domain event a stored PO event holds (None for anything else on the order's subject, and for an
    event that cannot be read: it is logged and left out rather than making the whole order unreadable)."""
    return readable(stored, _decode)


def _decode(stored: StoredEvent) -> domain.OrderEvent | None:
    name = stored.subject.rsplit(".", 1)[-1]
    envelope = stored.envelope
    if name == PUBLISHED:
        document = stored.unpack(events_pb2.PurchaseOrderPublished).purchase_order
        return domain.VersionPublished(
            _order(document), document, envelope.content_sha256, envelope.idempotency_key, envelope.source_system
        )
    if name == CHANGED:
        changed = stored.unpack(events_pb2.PurchaseOrderChanged)
        return domain.VersionChanged(
            _order(changed.purchase_order),
            changed.purchase_order,
            envelope.content_sha256,
            mapping.changes_from_proto(changed.changes),
            envelope.idempotency_key,
            envelope.source_system,
        )
    if name == CANCELLED:
        cancelled = stored.unpack(events_pb2.PurchaseOrderCancelled)
        return domain.OrderCancelled(
            _order(cancelled.purchase_order),
            cancelled.purchase_order,
            cancelled.reason,
            envelope.idempotency_key,
            fingerprint=envelope.content_sha256 or content_sha256(cancelled.purchase_order),
            document=cancelled.purchase_order,
            source_system=envelope.source_system,
        )
    if name == ACKNOWLEDGED:
        acknowledged = stored.unpack(events_pb2.PurchaseOrderAcknowledged)
        return domain.VersionAcknowledged(
            acknowledged.acknowledgment.version,
            acknowledged.acknowledgment.erp_document_number,
            datetime_from_proto(acknowledged.acknowledgment.acknowledged_at),
            acknowledged.propagation_time.ToTimedelta(),
            envelope.idempotency_key,
            envelope.source_system,
        )
    if name == REJECTED:
        rejected = stored.unpack(events_pb2.PurchaseOrderRejected)
        return domain.VersionRejected(
            rejected.version, rejected.reason, envelope.idempotency_key, envelope.source_system
        )
    if name == HELD:
        held = stored.unpack(events_pb2.PurchaseOrderVersionHeld)
        return domain.VersionHeld(
            _order(held.purchase_order),
            held.purchase_order,
            envelope.content_sha256,
            datetime_from_proto(held.hold_until),
            envelope.idempotency_key.removeprefix(HELD_KEY_PREFIX),
            envelope.source_system,
        )
    if name == HOLD_EXPIRED:
        expired = stored.unpack(events_pb2.PurchaseOrderHoldExpired)
        return domain.HoldExpired(expired.version, expired.exception_id)
    return None


_SUPPLIER_STATUS = {
    supplier_pb2.SUPPLIER_STATUS_ACTIVE: "active",
    supplier_pb2.SUPPLIER_STATUS_BLOCKED: "blocked",
    supplier_pb2.SUPPLIER_STATUS_INACTIVE: "inactive",
    supplier_pb2.SUPPLIER_STATUS_MERGED: "merged",
}


def on_supplier_event(directory: domain.SupplierDirectory) -> Callable[[StoredEvent], None]:
    """Keeps the supplier directory current from supplier-normalization's events (never its storage)."""

    def apply(event: StoredEvent) -> None:
        payload = event.envelope.payload
        if payload.Is(message_descriptor(supplier_events_pb2.SupplierUpserted)):
            supplier = event.unpack(supplier_events_pb2.SupplierUpserted).supplier
            directory.set_status(supplier.supplier_id, _SUPPLIER_STATUS.get(supplier.status, "active"))
        elif payload.Is(message_descriptor(supplier_events_pb2.SupplierMerged)):
            merged = event.unpack(supplier_events_pb2.SupplierMerged)
            directory.merge(merged.merged_supplier_id, merged.surviving_supplier_id)
        elif payload.Is(message_descriptor(supplier_events_pb2.SupplierStatusChanged)):
            changed = event.unpack(supplier_events_pb2.SupplierStatusChanged)
            directory.set_status(changed.supplier_id, _SUPPLIER_STATUS.get(changed.status, "inactive"))

    return apply


def receipt_reconciled(event: StoredEvent) -> domain.ReceiptReconciled | None:
    """A receipt event in the domain's terms (None for any other event on the receipt stream)."""
    if not event.envelope.payload.Is(message_descriptor(receipt_events_pb2.GoodsReceiptReconciled)):
        return None
    reconciled = event.unpack(receipt_events_pb2.GoodsReceiptReconciled)
    receipt = reconciled.receipt
    return domain.ReceiptReconciled(
        po_id=event.envelope.object_key,
        document=f"{receipt.source_system}/{receipt.receipt_id}",
        is_receipt=receipt.kind == receipt_pb2.RECEIPT_KIND_RECEIPT,
        reconciled_version=reconciled.reconciled_po_version,
        recorded_at_ns=event.envelope.recorded_at.ToNanoseconds(),
        lines={
            line.po_line_number: decimal_from_proto(line.received_quantity)
            for line in reconciled.lines
            if line.HasField("received_quantity")
        },
        over_receipt_found=frozenset(
            finding.po_line_number
            for finding in reconciled.findings
            if finding.type == exception_pb2.EXCEPTION_TYPE_OVER_RECEIPT
        ),
        took_in=frozenset(
            quantity.po_line_number
            for quantity in reconciled.quantities
            if quantity.quantity.value and decimal_from_proto(quantity.quantity) > 0
        ),
    )


def on_receipt_event(
    received: domain.ReceivedQuantities, then: Callable[[domain.ReceiptReconciled], None] | None = None
) -> Callable[[StoredEvent], None]:
    """Keeps the received quantities current from receipt-reconciliation's events (never its storage or API),
    and hands each receipt to ``then`` once applied (the over-receipt check after a change order)."""

    def apply(event: StoredEvent) -> None:
        receipt = receipt_reconciled(event)
        if receipt is None:
            return
        received.apply(receipt.po_id, receipt.lines)
        if then is not None:
            then(receipt)

    return apply
