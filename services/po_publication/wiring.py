"""po-publication's composition root: the only place its parts meet."""

from __future__ import annotations

from libs.runtime.app import GrpcService, Runtime, Service
from libs.runtime.streams import EXCEPTION, PO
from services.po_publication.servicer import PurchaseOrderServicer
from services.po_publication.settings import Settings
from services.po_publication.store import PurchaseOrderStore
from syncgov.po.v1 import po_service_pb2, po_service_pb2_grpc


def wire(rt: Runtime[Settings]) -> Service:
    store = PurchaseOrderStore(rt.publisher, rt.reader, rt.idempotency_store(rt.settings.service_name))
    servicer = PurchaseOrderServicer(store=store, exceptions=rt.exceptions)
    return Service(
        grpc_services=[
            GrpcService(
                po_service_pb2.DESCRIPTOR.services_by_name["PurchaseOrderService"],
                po_service_pb2_grpc.add_PurchaseOrderServiceServicer_to_server,
                servicer,
            )
        ],
        streams=(PO, EXCEPTION),
    )
