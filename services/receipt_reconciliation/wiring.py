"""receipt-reconciliation's composition root: the only place its parts meet."""

from __future__ import annotations

from libs.runtime.access import AccessRule, Read, Write
from libs.runtime.app import GrpcService, Runtime, Service
from libs.runtime.commands import CommandHandler
from libs.runtime.metrics import PolledGauges, Values
from libs.runtime.streams import AUDIT_INBOX, EXCEPTION, PO, RECEIPT
from services.receipt_reconciliation import domain
from services.receipt_reconciliation.findings import FindingExceptions
from services.receipt_reconciliation.orders import OrderBook
from services.receipt_reconciliation.servicer import ReceiptServicer
from services.receipt_reconciliation.settings import Settings
from services.receipt_reconciliation.store import ReadModels, ReceiptIndex, receiving_log, size_of
from syncgov.receipt.v1 import receipt_service_pb2, receipt_service_pb2_grpc

ACCESS: dict[str, AccessRule] = {
    "PostGoodsReceipt": Write(
        "goods_receipt", key="receipt.po_id", document="receipt", version="receipt.po_version", site="receipt.site_id"
    ),
    "GetGoodsReceipt": Read("goods_receipt"),
    "GetPurchaseOrderReceiptStatus": Read("goods_receipt"),
    "ListReceiptsWithFindings": Read("goods_receipt"),
}


def wire(rt: Runtime[Settings]) -> Service:
    name = rt.settings.service_name
    index = ReceiptIndex(rt.redis, rt.namespace.redis_key(name, "receipts"))
    orders = OrderBook(rt.reader)
    policy = lambda: rt.policy.current  # noqa: E731 - the policy in force at each call
    findings = FindingExceptions(rt.exceptions, orders, policy)
    read_models = ReadModels(rt.redis, rt.reader, index, on_tail=findings.raise_for)
    commands = CommandHandler(
        receiving_log(rt.publisher, rt.reader),
        initial=domain.INITIAL,
        evolve=domain.evolve,
        size_of=size_of,
        cache_bytes=rt.settings.state_cache_mb * 1024 * 1024,
        projections=(index,),
        claims=rt.idempotency_store(name),
        name="receiving record",
    )
    servicer = ReceiptServicer(commands, orders, index, rt.exceptions, findings, policy)
    rt.metrics.expect_duplicates(domain.OBJECT_TYPE)
    gauges = PolledGauges(rt.telemetry.meter)

    async def with_findings() -> Values:
        return [(float(await index.with_findings()), {})]

    gauges.gauge(
        "syncgov.receipts.with_findings",
        unit="{receipt}",
        description="Goods receipts whose reconciliation found something (the list of receipts with findings).",
        source=with_findings,
    )
    return Service(
        grpc_services=[
            GrpcService(
                receipt_service_pb2.DESCRIPTOR.services_by_name["ReceiptReconciliationService"],
                receipt_service_pb2_grpc.add_ReceiptReconciliationServiceServicer_to_server,
                servicer,
                access=ACCESS,
            )
        ],
        streams=(RECEIPT, PO, EXCEPTION, AUDIT_INBOX),
        startup=[read_models.start, gauges.refresh],
        # The read models notice a lost Valkey (or a failed write) and rebuild from the stream while serving.
        periodic=[(rt.settings.read_model_check_seconds, read_models.check), gauges.periodic],
    )
