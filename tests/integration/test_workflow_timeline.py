"""The control plane's workflow timeline (issue 13): one PO's life read back from every stream it touched.

One order through po-publication (published, changed), the ERP's acknowledgment, a partial goods receipt, an invoice
matched and another blocked above the price tolerance (raising its exception), then GetWorkflow: every stage in the
order it happened, with the ERP number, the propagation time and the trace id of the operation behind it."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from typer.testing import CliRunner

from control_plane.wiring import wire as wire_control_plane
from libs.cli.main import app
from libs.runtime.testing import running_service
from services.invoice_status.wiring import wire as wire_invoices
from services.po_publication.wiring import wire as wire_po
from services.receipt_reconciliation.wiring import wire as wire_receipts
from syncgov.controlplane.v1 import controlplane_pb2 as cp
from syncgov.controlplane.v1 import controlplane_service_pb2 as cps
from syncgov.controlplane.v1 import controlplane_service_pb2_grpc
from syncgov.po.v1 import po_service_pb2_grpc
from syncgov.receipt.v1 import receipt_service_pb2_grpc
from tests.integration.helpers import (
    ERP,
    PROCUREMENT,
    control_plane_settings,
    eventually,
    goods_receipt,
    published_changed_and_acknowledged,
    receipt_settings,
)
from tests.integration.test_invoice_status import invoice, invoice_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
OPS = (("x-syncgov-system", "ops-console"),)


async def test_one_po_timeline_runs_from_publication_to_the_invoice_with_trace_ids(po_settings):
    from syncgov.invoice.v1 import invoice_service_pb2_grpc

    cp_settings = control_plane_settings(po_settings)
    async with (
        running_service(cp_settings, wire_control_plane) as (control_plane, cp_channel, _),
        running_service(po_settings, wire_po) as (_, po_channel, _),
        running_service(receipt_settings(po_settings), wire_receipts) as (_, receipt_channel, _),
        running_service(invoice_settings(po_settings), wire_invoices) as (_, invoice_channel, _),
    ):
        orders = po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel)
        receipts = receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(receipt_channel)
        invoices = invoice_service_pb2_grpc.InvoiceStatusServiceStub(invoice_channel)
        control = controlplane_service_pb2_grpc.ControlPlaneServiceStub(cp_channel)

        await published_changed_and_acknowledged(orders)
        await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "4")), metadata=ERP)
        await invoices.SubmitInvoice(invoice("INV-1", "A-1", quantity="4"), metadata=PROCUREMENT)
        await invoices.SubmitInvoice(invoice("INV-2", "A-2", quantity="1", price="13.50"), metadata=PROCUREMENT)

        async def complete():
            answer = await control.GetWorkflow(cps.GetWorkflowRequest(workflow_key="PO-1001"), metadata=OPS)
            stages = [record.stage for record in answer.workflow.stages]
            return answer.workflow if cp.WORKFLOW_STAGE_EXCEPTION_RAISED in stages else None

        workflow = await eventually(complete)
        stages = [(cp.WorkflowStage.Name(record.stage), record.event) for record in workflow.stages]
        order = [name for name, _ in stages]
        # In the order it happened.
        for earlier, later in (
            ("WORKFLOW_STAGE_PUBLISHED", "WORKFLOW_STAGE_CHANGED"),
            ("WORKFLOW_STAGE_CHANGED", "WORKFLOW_STAGE_ACKNOWLEDGED"),
            ("WORKFLOW_STAGE_ACKNOWLEDGED", "WORKFLOW_STAGE_RECEIVED"),
            ("WORKFLOW_STAGE_RECEIVED", "WORKFLOW_STAGE_INVOICE_SUBMITTED"),
        ):
            assert order.index(earlier) < order.index(later), stages
        times = [record.reached_at.ToNanoseconds() for record in workflow.stages]
        assert times == sorted(times)
        acknowledged = next(r for r in workflow.stages if r.stage == cp.WORKFLOW_STAGE_ACKNOWLEDGED)
        assert acknowledged.version == 2
        assert "4500012345" in acknowledged.detail
        assert acknowledged.propagation_time.ToNanoseconds() > 0
        received = next(r for r in workflow.stages if r.stage == cp.WORKFLOW_STAGE_RECEIVED)
        assert received.detail.startswith("GR-1")
        invoiced = {r.object.object_key for r in workflow.stages if r.stage == cp.WORKFLOW_STAGE_INVOICE_SUBMITTED}
        assert invoiced == {"INV-1", "INV-2"}
        raised = [r for r in workflow.stages if r.stage == cp.WORKFLOW_STAGE_EXCEPTION_RAISED]
        assert any(r.detail.startswith("price_variance") for r in raised)
        # Every stage leads to the trace of the operation that wrote it.
        assert all(len(record.trace_id) == 32 for record in workflow.stages), stages

        # The same timeline on the command line, with the time between stages and each trace id.
        printed = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            ["trace", "PO-1001", "--address", control_plane.address],
            env={"COLUMNS": "400"},
        )
        assert printed.exit_code == 0, printed.output
        assert "acknowledged v2" in printed.output
        assert "4500012345" in printed.output
        assert acknowledged.trace_id in printed.output
        missing = await asyncio.to_thread(
            CliRunner().invoke, app, ["trace", "PO-NONE", "--address", control_plane.address]
        )
        assert missing.exit_code == 1

        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await control.GetWorkflow(cps.GetWorkflowRequest(workflow_key="PO-NONE"), metadata=OPS)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await control.GetWorkflow(cps.GetWorkflowRequest(workflow_key=" "), metadata=OPS)
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
