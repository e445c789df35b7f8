"""mTLS: the client certificate names the system; no certificate, no call."""

from __future__ import annotations

import grpc
import pytest

from libs.cli.dev_cmd import make_certs
from libs.runtime.testing import running_service
from services.po_publication.wiring import wire
from syncgov.po.v1 import po_service_pb2, po_service_pb2_grpc
from tests.integration.helpers import sample_order

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    make_certs(folder, ["procurement", "erp", "sap-ecc"], ["localhost", "127.0.0.1"])
    return folder


def channel_as(address: str, certs, system: str | None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=(certs / f"{system}-key.pem").read_bytes() if system else None,
        certificate_chain=(certs / f"{system}.pem").read_bytes() if system else None,
    )
    return grpc.aio.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", "localhost")])


@pytest.fixture
async def tls_po(po_settings, certs):
    settings = po_settings.model_copy(
        update={
            "tls_cert_file": certs / "server.pem",
            "tls_key_file": certs / "server-key.pem",
            "tls_client_ca_file": certs / "ca.pem",
        }
    )
    async with running_service(settings, wire) as (running, _, _):
        yield running


async def test_the_certificate_names_the_system(tls_po, certs):
    request = po_service_pb2.PublishPurchaseOrderRequest(purchase_order=sample_order())
    # A declared identity in metadata counts for nothing once certificates are required.
    lying = (("x-syncgov-system", "procurement"),)
    async with channel_as(tls_po.address, certs, "erp") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await po_service_pb2_grpc.PurchaseOrderServiceStub(channel).PublishPurchaseOrder(request, metadata=lying)
        assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (failure.value.details() or "").startswith("erp may not write")
    async with channel_as(tls_po.address, certs, "procurement") as channel:
        answer = await po_service_pb2_grpc.PurchaseOrderServiceStub(channel).PublishPurchaseOrder(request)
        assert answer.idempotency_key.startswith("procurement:")


async def test_a_certificate_for_an_undeclared_system_is_unauthenticated(tls_po, certs):
    async with channel_as(tls_po.address, certs, "sap-ecc") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await po_service_pb2_grpc.PurchaseOrderServiceStub(channel).GetPurchaseOrder(
                po_service_pb2.GetPurchaseOrderRequest(po_id="PO-1")
            )
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_no_client_certificate_no_call(tls_po, certs):
    async with channel_as(tls_po.address, certs, None) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await po_service_pb2_grpc.PurchaseOrderServiceStub(channel).GetPurchaseOrder(
                po_service_pb2.GetPurchaseOrderRequest(po_id="PO-1"), timeout=5
            )
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
