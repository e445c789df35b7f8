"""po-publication's composition root: the only place its parts meet."""

from __future__ import annotations

from libs.runtime.access import Read, Write
from libs.runtime.app import GrpcService, Runtime, Service
from libs.runtime.follower import StreamFollower
from libs.runtime.streams import AUDIT_INBOX, EXCEPTION, PO, SUPPLIER
from services.po_publication.events import on_supplier_event
from services.po_publication.servicer import PurchaseOrderServicer
from services.po_publication.settings import Settings
from services.po_publication.store import PurchaseOrderStore, SupplierDirectory
from syncgov.po.v1 import po_service_pb2, po_service_pb2_grpc

ACCESS = {
    "PublishPurchaseOrder": Write(
        "purchase_order", key="purchase_order.po_id", document="purchase_order", version="purchase_order.version"
    ),
    "ChangePurchaseOrder": Write(
        "purchase_order", key="purchase_order.po_id", document="purchase_order", version="purchase_order.version"
    ),
    "CancelPurchaseOrder": Write("purchase_order", key="po_id", version="version"),
    "AcknowledgePurchaseOrder": Write("purchase_order_acknowledgment", key="po_id", version="version"),
    "RejectPurchaseOrder": Write("purchase_order_acknowledgment", key="po_id", version="version"),
    "GetPurchaseOrder": Read("purchase_order"),
    "ListPurchaseOrderVersions": Read("purchase_order"),
    "ListUnacknowledgedPurchaseOrders": Read("purchase_order"),
}


def wire(rt: Runtime[Settings]) -> Service:
    store = PurchaseOrderStore(
        rt.publisher,
        rt.reader,
        rt.idempotency_store(rt.settings.service_name),
        rt.redis,
        rt.namespace.redis_key(rt.settings.service_name, "unacknowledged"),
        rt.namespace.redis_key(rt.settings.service_name, "held"),
    )
    suppliers = SupplierDirectory()
    follower = StreamFollower(rt.js, rt.namespace, "supplier", on_supplier_event(suppliers))
    servicer = PurchaseOrderServicer(
        store=store, exceptions=rt.exceptions, suppliers=suppliers, policy=lambda: rt.policy.current
    )
    return Service(
        grpc_services=[
            GrpcService(
                po_service_pb2.DESCRIPTOR.services_by_name["PurchaseOrderService"],
                po_service_pb2_grpc.add_PurchaseOrderServiceServicer_to_server,
                servicer,
                access=ACCESS,
            )
        ],
        streams=(PO, SUPPLIER, EXCEPTION, AUDIT_INBOX),
        # Suppliers' states are followed from supplier-normalization's events, caught up before serving.
        startup=[follower.start, store.rebuild_read_models],
        periodic=[(rt.settings.hold_sweep_seconds, servicer.holds.expire)],
    )
