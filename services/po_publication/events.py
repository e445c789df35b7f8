"""What po-publication publishes: every version of an order, and the ERP's word on each."""

from __future__ import annotations

from typing import TYPE_CHECKING

from google.protobuf import timestamp_pb2

from libs.runtime.events import Event, StoredEvent
from services.po_publication.domain import OBJECT_TYPE
from syncgov.po.v1 import events_pb2, po_pb2
from syncgov.supplier.v1 import events_pb2 as supplier_events_pb2
from syncgov.supplier.v1 import supplier_pb2

if TYPE_CHECKING:  # store.py imports this module's names
    from services.po_publication.store import SupplierDirectory

DOMAIN = "po"
PUBLISHED = "published"
CHANGED = "changed"
CANCELLED = "cancelled"
ACKNOWLEDGED = "acknowledged"
REJECTED = "rejected"
HELD = "held"
HOLD_EXPIRED = "hold_expired"
DOCUMENT_EVENTS = frozenset({PUBLISHED, CHANGED, CANCELLED})


def purchase_order_published(
    order: po_pb2.PurchaseOrder,
    *,
    idempotency_key: str,
    source_system: str,
    content_sha256: str,
    approved_at: timestamp_pb2.Timestamp | None,
) -> Event:
    return Event(
        domain=DOMAIN,
        object_type=OBJECT_TYPE,
        object_key=order.po_id,
        object_version=order.version,
        name=PUBLISHED,
        payload=events_pb2.PurchaseOrderPublished(purchase_order=order),
        idempotency_key=idempotency_key,
        source_system=source_system,
        content_sha256=content_sha256,
        workflow_key=order.po_id,
        occurred_at=approved_at,
    )


def _event(
    order_id: str,
    version: int,
    name: str,
    payload,
    key: str,
    source: str,
    fingerprint: str = "",
    occurred_at: timestamp_pb2.Timestamp | None = None,
) -> Event:
    return Event(
        domain=DOMAIN,
        object_type=OBJECT_TYPE,
        object_key=order_id,
        object_version=version,
        name=name,
        payload=payload,
        idempotency_key=key,
        source_system=source,
        content_sha256=fingerprint,
        workflow_key=order_id,
        occurred_at=occurred_at,
    )


def purchase_order_changed(
    order: po_pb2.PurchaseOrder,
    changes: po_pb2.PurchaseOrderChanges,
    *,
    idempotency_key: str,
    source_system: str,
    content_sha256: str,
) -> Event:
    payload = events_pb2.PurchaseOrderChanged(purchase_order=order, changes=changes)
    return _event(
        order.po_id,
        order.version,
        CHANGED,
        payload,
        idempotency_key,
        source_system,
        content_sha256,
        order.approved_at if order.HasField("approved_at") else None,
    )


def purchase_order_cancelled(
    order: po_pb2.PurchaseOrder, reason: str, *, idempotency_key: str, source_system: str, content_sha256: str
) -> Event:
    payload = events_pb2.PurchaseOrderCancelled(purchase_order=order, reason=reason)
    return _event(order.po_id, order.version, CANCELLED, payload, idempotency_key, source_system, content_sha256)


def purchase_order_acknowledged(
    po_id: str, acknowledgment: po_pb2.ErpAcknowledgment, propagation, *, idempotency_key: str, source_system: str
) -> Event:
    payload = events_pb2.PurchaseOrderAcknowledged(
        po_id=po_id, acknowledgment=acknowledgment, propagation_time=propagation
    )
    return _event(
        po_id,
        acknowledgment.version,
        ACKNOWLEDGED,
        payload,
        idempotency_key,
        source_system,
        occurred_at=acknowledgment.acknowledged_at,
    )


def purchase_order_rejected(
    po_id: str, version: int, reason: str, *, idempotency_key: str, source_system: str
) -> Event:
    payload = events_pb2.PurchaseOrderRejected(po_id=po_id, version=version, reason=reason)
    return _event(po_id, version, REJECTED, payload, idempotency_key, source_system)


_SUPPLIER_STATUS = {
    supplier_pb2.SUPPLIER_STATUS_ACTIVE: "active",
    supplier_pb2.SUPPLIER_STATUS_BLOCKED: "blocked",
    supplier_pb2.SUPPLIER_STATUS_INACTIVE: "inactive",
    supplier_pb2.SUPPLIER_STATUS_MERGED: "merged",
}


def on_supplier_event(directory: SupplierDirectory):
    """Keeps the supplier directory current from supplier-normalization's events (never its storage)."""

    def apply(event: StoredEvent) -> None:
        payload = event.envelope.payload
        if payload.Is(supplier_events_pb2.SupplierUpserted.DESCRIPTOR):
            supplier = event.unpack(supplier_events_pb2.SupplierUpserted).supplier
            directory.set_status(supplier.supplier_id, _SUPPLIER_STATUS.get(supplier.status, "active"))
        elif payload.Is(supplier_events_pb2.SupplierMerged.DESCRIPTOR):
            merged = event.unpack(supplier_events_pb2.SupplierMerged)
            directory.merge(merged.merged_supplier_id, merged.surviving_supplier_id)
        elif payload.Is(supplier_events_pb2.SupplierStatusChanged.DESCRIPTOR):
            changed = event.unpack(supplier_events_pb2.SupplierStatusChanged)
            directory.set_status(changed.supplier_id, _SUPPLIER_STATUS.get(changed.status, "inactive"))

    return apply


def purchase_order_held(
    order: po_pb2.PurchaseOrder,
    hold_until: timestamp_pb2.Timestamp,
    *,
    idempotency_key: str,
    source_system: str,
    content_sha256: str,
) -> Event:
    payload = events_pb2.PurchaseOrderVersionHeld(purchase_order=order, hold_until=hold_until)
    return _event(order.po_id, order.version, HELD, payload, f"held:{idempotency_key}", source_system, content_sha256)


def purchase_order_hold_expired(po_id: str, version: int, exception_id: str) -> Event:
    payload = events_pb2.PurchaseOrderHoldExpired(po_id=po_id, version=version, exception_id=exception_id)
    return _event(po_id, version, HOLD_EXPIRED, payload, f"hold-expired:{po_id}:v{version}", "syncgov")
