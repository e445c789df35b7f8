"""The ERP adapter example, run against a real po-publication: versions applied in order and acknowledged."""

from __future__ import annotations

import asyncio

import pytest

from examples.erp_adapter.adapter import ErpClient, run_adapter
from syncgov.po.v1 import po_service_pb2
from tests.integration.helpers import sample_order

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]
PROCUREMENT = (("x-syncgov-system", "procurement"),)


async def test_the_adapter_applies_versions_in_order_and_acknowledges_each(po_service, nats_server):
    running, stub, _ = po_service
    erp, stop = ErpClient(), asyncio.Event()
    adapter = asyncio.create_task(
        run_adapter(nats_server.url, running.address, running.runtime.namespace.root, erp=erp, stop=stop)
    )
    try:
        first = sample_order()
        await stub.PublishPurchaseOrder(
            po_service_pb2.PublishPurchaseOrderRequest(purchase_order=first), metadata=PROCUREMENT
        )
        second = sample_order(quantity="25")
        second.version = 2
        await stub.ChangePurchaseOrder(
            po_service_pb2.ChangePurchaseOrderRequest(purchase_order=second), metadata=PROCUREMENT
        )
        async with asyncio.timeout(10):
            while True:
                got = await stub.GetPurchaseOrder(
                    po_service_pb2.GetPurchaseOrderRequest(po_id="PO-1001"), metadata=PROCUREMENT
                )
                if got.erp_acknowledgment.version == 2:
                    break
                await asyncio.sleep(0.05)
        assert erp.held["PO-1001"].lines[0].quantity.value == "25"
        assert got.erp_acknowledgment.erp_document_number == erp.numbers["PO-1001"]
        unacked = await stub.ListUnacknowledgedPurchaseOrders(
            po_service_pb2.ListUnacknowledgedPurchaseOrdersRequest(), metadata=PROCUREMENT
        )
        assert list(unacked.purchase_orders) == []
    finally:
        stop.set()
        await adapter
