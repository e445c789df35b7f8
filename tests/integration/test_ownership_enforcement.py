"""Ownership at the edge of po-publication: the policy decides before anything is written."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from syncgov.controlplane.v1 import controlplane_pb2
from syncgov.exception.v1 import events_pb2 as exception_events
from syncgov.exception.v1 import exception_pb2
from syncgov.po.v1 import po_service_pb2
from tests.integration.helpers import message_count, sample_order, status_details, stored_payloads

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

ERP = (("x-syncgov-system", "erp"),)
PROCUREMENT = (("x-syncgov-system", "procurement"),)


async def test_erp_writing_a_po_price_is_denied_writes_nothing_and_is_recorded(po_service, js):
    running, stub, _ = po_service
    order = sample_order()
    order.version = 1
    request = po_service_pb2.PublishPurchaseOrderRequest(purchase_order=order)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.PublishPurchaseOrder(request, metadata=ERP)
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "belong(s) to procurement" in (failure.value.details() or "")
    assert "procurement" in (failure.value.details() or "")
    [info] = [d for d in status_details(failure.value) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert info.reason == "OWNERSHIP_VIOLATION"
    assert info.metadata["policy_revision"] == "0"
    assert "lines[].unit_price" in info.metadata["fields"].split(",")

    assert await message_count(js, running.runtime.namespace, "po") == 0
    [raised] = await stored_payloads(js, running.runtime.namespace, "exception", exception_events.ExceptionRaised)
    assert raised.exception.type == exception_pb2.EXCEPTION_TYPE_OWNERSHIP_VIOLATION
    assert raised.exception.exception_id == info.metadata["exception_id"]
    assert raised.exception.object.object_key == "PO-1001"
    assert raised.exception.severity == exception_pb2.SEVERITY_CRITICAL  # the default policy's route says so
    [record] = await stored_payloads(js, running.runtime.namespace, "auditin", controlplane_pb2.AuditEntry)
    assert (record.actor, record.action, record.outcome) == ("erp", "refusal", "denied")
    assert record.object.object_type == "purchase_order"
    assert record.object.object_key == "PO-1001"
    assert record.object.version == 1
    assert len(record.trace_id) == 32


async def test_procurement_writing_the_same_field_succeeds_and_the_event_records_the_revision(po_service, js):
    running, stub, _ = po_service
    request = po_service_pb2.PublishPurchaseOrderRequest(purchase_order=sample_order())
    response = await stub.PublishPurchaseOrder(request, metadata=PROCUREMENT)
    event = await running.runtime.reader.at("po", response.stream_sequence)
    assert event.envelope.policy_revision == 0  # the bootstrap policy, before any is applied
    assert await message_count(js, running.runtime.namespace, "exception") == 0
    assert await message_count(js, running.runtime.namespace, "auditin") == 0


async def test_reads_are_open_to_known_systems(po_service):
    _, stub, _ = po_service
    await stub.PublishPurchaseOrder(
        po_service_pb2.PublishPurchaseOrderRequest(purchase_order=sample_order()), metadata=PROCUREMENT
    )
    got = await stub.GetPurchaseOrder(po_service_pb2.GetPurchaseOrderRequest(po_id="PO-1001"), metadata=ERP)
    assert got.latest_version == 1


@pytest.mark.parametrize("metadata", [(), (("x-syncgov-system", "sap-ecc"),)], ids=["anonymous", "undeclared"])
async def test_systems_the_policy_does_not_declare_are_unauthenticated(po_service, js, metadata):
    running, stub, _ = po_service
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.GetPurchaseOrder(po_service_pb2.GetPurchaseOrderRequest(po_id="PO-1001"), metadata=metadata)
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not declared in policy" in (failure.value.details() or "")
    assert await message_count(js, running.runtime.namespace, "exception") == 0
