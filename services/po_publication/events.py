"""What po-publication publishes: every version of an order, and the ERP's word on each."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from libs.runtime.events import Event
from services.po_publication.domain import OBJECT_TYPE
from syncgov.po.v1 import events_pb2, po_pb2

DOMAIN = "po"
PUBLISHED = "published"
CHANGED = "changed"
CANCELLED = "cancelled"
ACKNOWLEDGED = "acknowledged"
REJECTED = "rejected"
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
