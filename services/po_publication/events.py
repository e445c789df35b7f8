"""What po-publication publishes. (It consumes nothing yet: supplier and receipt events come later.)"""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from libs.runtime.events import Event
from services.po_publication.domain import OBJECT_TYPE
from syncgov.po.v1 import events_pb2, po_pb2

DOMAIN = "po"
PUBLISHED = "published"
CHANGED = "changed"
CANCELLED = "cancelled"
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
