"""po-publication's composition root: the only place its parts meet."""

from __future__ import annotations

import time

from libs.runtime.access import AccessRule, Read, Write
from libs.runtime.app import GrpcService, Runtime, Service
from libs.runtime.commands import CommandHandler
from libs.runtime.follower import StreamFollower
from libs.runtime.metrics import BUSINESS_DURATION_BUCKETS, PolledGauges, Values
from libs.runtime.streams import AUDIT_INBOX, EXCEPTION, PO, RECEIPT, SUPPLIER
from services.po_publication import domain
from services.po_publication.events import on_receipt_event, on_supplier_event
from services.po_publication.holds import HeldVersions
from services.po_publication.receipts import ReceiptChecks
from services.po_publication.servicer import PurchaseOrderServicer
from services.po_publication.settings import Settings
from services.po_publication.store import HoldDeadlines, ReadModels, UnacknowledgedOrders, order_log, size_of
from syncgov.po.v1 import po_service_pb2, po_service_pb2_grpc

ACCESS: dict[str, AccessRule] = {
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
    name = rt.settings.service_name
    unacknowledged = UnacknowledgedOrders(rt.redis, rt.namespace.redis_key(name, "unacknowledged"))
    deadlines = HoldDeadlines(rt.redis, rt.namespace.redis_key(name, "held"))
    read_models = ReadModels(rt.redis, rt.reader, unacknowledged, deadlines)
    commands = CommandHandler(
        order_log(rt.publisher, rt.reader),
        initial=domain.INITIAL,
        evolve=domain.evolve,
        size_of=size_of,
        cache_bytes=rt.settings.state_cache_mb * 1024 * 1024,
        projections=read_models.projections,
        claims=rt.idempotency_store(name),
        name="purchase order",
    )
    policy = lambda: rt.policy.current  # noqa: E731 - the policy in force at each call
    received = domain.ReceivedQuantities()
    holds = HeldVersions(commands, deadlines, rt.exceptions, policy, received)
    suppliers = domain.SupplierDirectory()
    follower = StreamFollower(rt.js, rt.namespace, "supplier", on_supplier_event(suppliers))
    checks = ReceiptChecks(commands, rt.exceptions, policy)
    receipts = StreamFollower(rt.js, rt.namespace, "receipt", on_receipt_event(received, checks.followed))
    servicer = PurchaseOrderServicer(
        commands,
        unacknowledged,
        holds,
        rt.exceptions,
        suppliers,
        received,
        lambda: receipts.caught_up,
        policy,
        propagation=rt.telemetry.meter.create_histogram(
            "syncgov.po.propagation.duration",
            unit="s",
            description="Approval of a PO version to the ERP's acknowledgment of that version.",
            explicit_bucket_boundaries_advisory=list(BUSINESS_DURATION_BUCKETS),
        ),
    )
    rt.metrics.expect_duplicates(domain.OBJECT_TYPE)
    gauges = PolledGauges(rt.telemetry.meter)
    awaiting: list[tuple[int, float | None]] = [(0, None)]

    async def awaiting_count() -> Values:
        awaiting[0] = await unacknowledged.count()
        return [(float(awaiting[0][0]), {})]

    async def oldest_age() -> Values:
        approved = awaiting[0][1]
        return [(max(time.time() - approved, 0.0) if approved else 0.0, {})]

    gauges.gauge(
        "syncgov.po.awaiting_erp",
        unit="{purchase_order}",
        description="POs whose latest version the ERP has not acknowledged (the unacknowledged list).",
        source=awaiting_count,
    )
    gauges.gauge(
        "syncgov.po.awaiting_erp.oldest_age",
        unit="s",
        description="How long ago the oldest PO awaiting the ERP was approved (0 when none awaits).",
        source=oldest_age,
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
        streams=(PO, SUPPLIER, RECEIPT, EXCEPTION, AUDIT_INBOX),
        # Suppliers' states and received quantities are followed from supplier-normalization's and
        # receipt-reconciliation's events, caught up before serving.
        startup=[follower.start, receipts.start, read_models.start, gauges.refresh],
        periodic=[
            (rt.settings.hold_sweep_seconds, holds.expire),
            # Receipts reconciled against an older version than the latest: over_receipt after a change order.
            (rt.settings.receipt_check_seconds, checks.run),
            # Read models notice a lost Valkey (or a failed write) and rebuild from the stream while serving.
            (rt.settings.read_model_check_seconds, read_models.check),
            gauges.periodic,
        ],
    )
