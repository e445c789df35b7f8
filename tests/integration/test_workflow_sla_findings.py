"""SLA breaches and their clearing end to end where a hostile review probed them (real NATS and Valkey): forged
clearings, a stage completed while the control plane was down, paging past long keys, invoices matched at submission."""

from __future__ import annotations

import asyncio

import grpc
import nats
import pytest
from opentelemetry import trace

from control_plane.servicer import STUCK_LISTING
from control_plane.settings import Settings as ControlPlaneSettings
from control_plane.wiring import wire as wire_control_plane
from libs.runtime.events import Event, EventPublisher
from libs.runtime.paging import encode_page_cursor
from libs.runtime.requests import Requests
from libs.runtime.subjects import Namespace
from libs.runtime.testing import running_service
from services.po_publication.wiring import wire as wire_po
from syncgov.controlplane.v1 import controlplane_service_pb2 as cps
from syncgov.controlplane.v1 import controlplane_service_pb2_grpc
from syncgov.exception.v1 import events_pb2 as exception_events
from syncgov.exception.v1 import exception_pb2 as ex
from syncgov.exception.v1 import exception_service_pb2 as exs
from syncgov.invoice.v1 import invoice_pb2
from syncgov.po.v1 import po_pb2, po_service_pb2, po_service_pb2_grpc
from tests.integration.helpers import ERP, PROCUREMENT, eventually, sample_order, settings_like
from tests.integration.test_exception_router import policy_with
from tests.integration.test_invoice_status import goods_receipt, invoice
from tests.integration.test_invoice_status import invoice_stack as invoice_stack  # the fixture, shared
from tests.integration.test_workflow_sla import (
    OPS,
    control_plane_with_sla,
    orders_and_router,
    raises_of_breaches,
    resolved,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_a_stuck_page_token_with_a_long_number_is_invalid_argument(po_settings):
    """A page token the listing did not issue is INVALID_ARGUMENT, however long."""
    cp_settings = settings_like(ControlPlaneSettings, po_settings)
    async with running_service(cp_settings, wire_control_plane) as (_, cp_channel, _):
        control = controlplane_service_pb2_grpc.ControlPlaneServiceStub(cp_channel)
        token = encode_page_cursor(STUCK_LISTING, "9" * 5000 + "/PO-1")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await control.ListStuckWorkflows(cps.ListStuckWorkflowsRequest(page={"page_token": token}), metadata=OPS)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()


async def _urgent_breach(orders, exceptions, control):
    urgent = sample_order("PO-URGENT")
    urgent.criticality = po_pb2.PURCHASE_ORDER_CRITICALITY_CRITICAL
    await orders.PublishPurchaseOrder(
        po_service_pb2.PublishPurchaseOrderRequest(purchase_order=urgent), metadata=PROCUREMENT
    )

    async def stuck():
        answer = await control.ListStuckWorkflows(cps.ListStuckWorkflowsRequest(), metadata=OPS)
        return list(answer.workflows) or None

    [workflow] = await eventually(stuck)
    [breach] = workflow.breaches

    async def opened():
        try:
            got = await exceptions.GetException(exs.GetExceptionRequest(exception_id=breach.exception_id), metadata=OPS)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return None
        return got.exception if got.exception.owner_team else None

    return breach, await eventually(opened)


async def test_a_clearing_published_by_another_component_does_not_close_a_breach(
    po_settings, nats_server, valkey_server, tmp_path
):
    """Only the component whose subject carries the clearing (<ns>.exception.<component>.cleared, which the broker
    lets that component alone publish) may close what it raised; a payload claiming control-plane changes nothing."""
    cp_settings = control_plane_with_sla(po_settings, tmp_path)
    namespace = po_settings.namespace
    async with (
        orders_and_router(po_settings, nats_server, valkey_server) as (orders, exceptions),
        running_service(cp_settings, wire_control_plane) as (_, cp_channel, _),
    ):
        control = controlplane_service_pb2_grpc.ControlPlaneServiceStub(cp_channel)
        breach, exception = await _urgent_breach(orders, exceptions, control)

        nc = await nats.connect(nats_server.url)
        try:
            publisher = EventPublisher(Requests(nc), Namespace(namespace), trace.get_tracer("review"), 5.0)
            forged = ex.Exception(
                exception_id="clear-forged",
                type=exception.type,
                object=exception.object,
                raised_by="control-plane",  # a claim, not an identity
                fingerprint=exception.fingerprint,
                workflow_key=exception.workflow_key,
            )
            await publisher.publish(
                Event(
                    domain="exception",
                    object_type="exception",
                    object_key="receipt-reconciliation",  # the one clearing subject the broker lets it publish
                    object_version=0,
                    name="cleared",
                    payload=exception_events.ExceptionCleared(exception=forged, reason="not mine to clear"),
                    idempotency_key="exception:clear-forged",
                    source_system="receipt-reconciliation",
                ),
            )
        finally:
            await nc.drain()
        await asyncio.sleep(2.0)
        got = await exceptions.GetException(exs.GetExceptionRequest(exception_id=breach.exception_id), metadata=OPS)
        assert got.exception.state != ex.EXCEPTION_STATE_RESOLVED, got.exception.resolution


async def test_a_stage_completed_while_the_control_plane_was_down_is_cleared_after_its_restart(
    po_settings, nats_server, valkey_server, tmp_path
):
    """The ERP answers while the control plane is down: the restarted tracker reads its open breach from the exception
    stream and clears it; one raise in all."""
    cp_settings = control_plane_with_sla(po_settings, tmp_path)
    namespace = po_settings.namespace
    async with orders_and_router(po_settings, nats_server, valkey_server) as (orders, exceptions):
        async with running_service(cp_settings, wire_control_plane) as (_, cp_channel, _):
            control = controlplane_service_pb2_grpc.ControlPlaneServiceStub(cp_channel)
            breach, _exception = await _urgent_breach(orders, exceptions, control)
        await orders.AcknowledgePurchaseOrder(
            po_service_pb2.AcknowledgePurchaseOrderRequest(po_id="PO-URGENT", version=1, erp_document_number="45"),
            metadata=ERP,
        )
        async with running_service(cp_settings, wire_control_plane):
            closed = await eventually(lambda: resolved(exceptions, breach.exception_id))
            assert closed.resolution.kind == ex.RESOLUTION_KIND_CLEARED
            assert await raises_of_breaches(po_settings.nats_url, namespace) == 1


async def test_the_stuck_listing_pages_past_a_workflow_with_a_long_non_ascii_key(
    po_settings, nats_server, valkey_server, tmp_path
):
    """A PO id may be 256 characters of any script: the page token stays short (a digest), and paging lists both."""
    cp_settings = control_plane_with_sla(po_settings, tmp_path)
    async with (
        running_service(po_settings, wire_po) as (_, po_channel, _),
        running_service(cp_settings, wire_control_plane) as (_, cp_channel, _),
    ):
        orders = po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel)
        control = controlplane_service_pb2_grpc.ControlPlaneServiceStub(cp_channel)
        keys = ["Ü" * 200, "PO-SECOND"]
        for key in keys:
            order = sample_order(key)
            order.criticality = po_pb2.PURCHASE_ORDER_CRITICALITY_CRITICAL
            await orders.PublishPurchaseOrder(
                po_service_pb2.PublishPurchaseOrderRequest(purchase_order=order), metadata=PROCUREMENT
            )
            await asyncio.sleep(0.05)

        async def both_stuck():
            answer = await control.ListStuckWorkflows(cps.ListStuckWorkflowsRequest(), metadata=OPS)
            return answer if len(answer.workflows) == 2 else None

        await eventually(both_stuck)
        first = await control.ListStuckWorkflows(cps.ListStuckWorkflowsRequest(page={"page_size": 1}), metadata=OPS)
        token = first.page_info.next_page_token
        assert 0 < len(token) <= 512
        second = await control.ListStuckWorkflows(
            cps.ListStuckWorkflowsRequest(page={"page_size": 1, "page_token": token}), metadata=OPS
        )
        listed = [w.workflow_key for w in (*first.workflows, *second.workflows)]
        assert sorted(listed) == sorted(keys)
        assert not second.page_info.next_page_token


async def test_an_invoice_that_matched_at_submission_is_never_listed_as_waiting_to_match(invoice_stack, tmp_path):
    """An exact invoice is matched by its submission: with sla.invoice_match at 1 s it is never listed as stuck."""
    _, receipts, invoices, settings = invoice_stack
    await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "8")), metadata=ERP)
    exact = await invoices.SubmitInvoice(invoice("INV-1", "A-1"), metadata=PROCUREMENT)
    assert exact.status.state == invoice_pb2.INVOICE_STATE_MATCHED
    policy = policy_with(tmp_path, "invoice_match: {normal: 15m}", "invoice_match: {normal: 1s}")
    cp_settings = settings_like(ControlPlaneSettings, settings, policy_file=policy, sla_sweep_seconds=0.2)
    async with running_service(cp_settings, wire_control_plane) as (_, cp_channel, _):
        control = controlplane_service_pb2_grpc.ControlPlaneServiceStub(cp_channel)

        async def ready():
            try:
                return await control.ListStuckWorkflows(
                    cps.ListStuckWorkflowsRequest(stage="invoice_match"), metadata=OPS
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                return None

        await eventually(ready)
        await asyncio.sleep(2.0)
        answer = await ready()
        assert [(w.workflow_key, [b.object.object_key for b in w.breaches]) for w in answer.workflows] == []
