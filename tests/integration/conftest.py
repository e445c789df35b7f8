"""Fixtures that run po-publication through the real runtime against the session's servers."""

from __future__ import annotations

import nats
import pytest

from libs.runtime.testing import running_service, unique_namespace
from libs.runtime.valkey import CoalescingRedis
from services.po_publication.settings import Settings
from services.po_publication.wiring import wire
from services.supplier_normalization.settings import Settings as SupplierSettings
from services.supplier_normalization.wiring import wire as wire_suppliers
from syncgov.po.v1 import po_service_pb2_grpc
from syncgov.supplier.v1 import supplier_service_pb2_grpc
from tests.integration.helpers import control_plane_settings, seed_supplier


@pytest.fixture
async def po_settings(nats_server, valkey_server, clean_env) -> Settings:
    """Settings for a fresh namespace in which supplier SUP-ACME is known and active."""
    settings = Settings(
        grpc_port=0,
        nats_url=nats_server.url,
        redis_url=valkey_server.url,
        namespace=unique_namespace(),
        log_format="console",
    )
    await seed_supplier(nats_server.url, settings.namespace, "SUP-ACME")
    return settings


@pytest.fixture
async def po_service(po_settings):
    async with running_service(po_settings, wire) as (running, channel, spans):
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        yield running, stub, spans


@pytest.fixture
async def js(nats_server):
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.drain()


@pytest.fixture
async def redis(valkey_server):
    client = CoalescingRedis.from_url(valkey_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def governed_stack(po_settings):
    """control-plane and po-publication in one namespace, as `syncgov up` runs them."""
    from control_plane.wiring import wire as wire_control_plane
    from syncgov.controlplane.v1 import controlplane_service_pb2_grpc

    cp_settings = control_plane_settings(po_settings)
    async with (
        running_service(cp_settings, wire_control_plane) as (cp, cp_channel, _),
        running_service(po_settings, wire) as (po, po_channel, _),
    ):
        yield (
            cp,
            controlplane_service_pb2_grpc.ControlPlaneServiceStub(cp_channel),
            po,
            po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel),
        )


@pytest.fixture
def supplier_settings(nats_server, valkey_server, clean_env) -> SupplierSettings:
    """Settings for supplier-normalization in a fresh namespace."""
    return SupplierSettings(
        grpc_port=0,
        nats_url=nats_server.url,
        redis_url=valkey_server.url,
        namespace=unique_namespace(),
        log_format="console",
    )


@pytest.fixture
async def suppliers(supplier_settings):
    async with running_service(supplier_settings, wire_suppliers) as (running, channel, _):
        yield running, supplier_service_pb2_grpc.SupplierNormalizationServiceStub(channel)


@pytest.fixture
async def receipt_stack(po_settings):
    """po-publication and receipt-reconciliation in one namespace: (po stub, receipt stub, running receipts)."""
    from services.receipt_reconciliation.wiring import wire as wire_receipts
    from syncgov.receipt.v1 import receipt_service_pb2_grpc
    from tests.integration.helpers import receipt_settings

    async with (
        running_service(po_settings, wire) as (_, po_channel, _),
        running_service(receipt_settings(po_settings), wire_receipts) as (receipts, receipt_channel, _),
    ):
        yield (
            po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel),
            receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(receipt_channel),
            receipts,
        )
