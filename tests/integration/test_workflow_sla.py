"""Stuck workflows (issue 13): a stage past the policy's SLA raises exactly one ``sla_breach``, closed when the stage
completes, and ListStuckWorkflows lists it meanwhile.

Everything runs for real: po-publication takes the order, the control plane's tracker follows the streams and raises
through the exception stream, exception-router opens, routes and (on the tracker's clearing) resolves the exception.
The policy gives critical orders a one-second acknowledgment SLA so the breach happens within the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import nats
import pytest

from control_plane.settings import Settings as ControlPlaneSettings
from control_plane.wiring import wire as wire_control_plane
from libs.runtime.testing import running_service
from services.exception_router.wiring import wire as wire_router
from services.po_publication.wiring import wire as wire_po
from syncgov.controlplane.v1 import controlplane_service_pb2 as cps
from syncgov.controlplane.v1 import controlplane_service_pb2_grpc
from syncgov.exception.v1 import exception_pb2 as ex
from syncgov.exception.v1 import exception_service_pb2 as exs
from syncgov.exception.v1 import exception_service_pb2_grpc
from syncgov.po.v1 import po_pb2, po_service_pb2, po_service_pb2_grpc
from tests.integration.helpers import ERP, PROCUREMENT, cli, eventually, sample_order, settings_like, table_row
from tests.integration.test_exception_router import policy_with, router_settings, transitions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
OPS = (("x-syncgov-system", "ops-console"),)


def one_second_for_critical_orders(tmp_path: Path) -> Path:
    return policy_with(
        tmp_path,
        "po_acknowledgment: {critical: 30s, high: 60s, normal: 5m, low: 1h}",
        "po_acknowledgment: {critical: 1s, high: 60s, normal: 5m, low: 1h}",
    )


def control_plane_with_sla(po_settings, tmp_path: Path) -> ControlPlaneSettings:
    """The control plane in the services' namespace, critical orders given one second, sweeping five times a second."""
    policy = one_second_for_critical_orders(tmp_path)
    return settings_like(ControlPlaneSettings, po_settings, policy_file=policy, sla_sweep_seconds=0.2)


@asynccontextmanager
async def orders_and_router(
    po_settings, nats_server, valkey_server
) -> AsyncIterator[
    tuple[po_service_pb2_grpc.PurchaseOrderServiceStub, exception_service_pb2_grpc.ExceptionRouterServiceStub]
]:
    """po-publication and exception-router running in ``po_settings``' namespace: their stubs."""
    namespace = po_settings.namespace
    async with (
        running_service(po_settings, wire_po) as (_, po_channel, _),
        running_service(router_settings(nats_server, valkey_server, namespace), wire_router) as (_, router_channel, _),
    ):
        yield (
            po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel),
            exception_service_pb2_grpc.ExceptionRouterServiceStub(router_channel),
        )


async def resolved(exceptions, exception_id: str):
    """The exception once exception-router resolved it (for ``eventually``), else None."""
    got = await exceptions.GetException(exs.GetExceptionRequest(exception_id=exception_id), metadata=OPS)
    return got.exception if got.exception.state == ex.EXCEPTION_STATE_RESOLVED else None


async def raises_of_breaches(nats_url: str, namespace: str) -> int:
    """How many sla_breach raises the exception stream holds."""
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(
            f"{namespace.upper()}_EXCEPTION", subjects_filter=f"{namespace}.exception.*.raised"
        )
        subjects = info.state.subjects or {}
        return sum(count for subject, count in subjects.items() if subject.startswith(f"{namespace}.exception.sla-"))
    finally:
        await nc.drain()


async def test_a_missed_acknowledgment_raises_one_sla_breach_closed_when_the_erp_answers(
    po_settings, nats_server, valkey_server, tmp_path
):
    cp_settings = control_plane_with_sla(po_settings, tmp_path)
    namespace = po_settings.namespace
    async with orders_and_router(po_settings, nats_server, valkey_server) as (orders, exceptions):
        urgent = sample_order("PO-URGENT")
        urgent.criticality = po_pb2.PURCHASE_ORDER_CRITICALITY_CRITICAL
        await orders.PublishPurchaseOrder(
            po_service_pb2.PublishPurchaseOrderRequest(purchase_order=urgent), metadata=PROCUREMENT
        )
        calm = sample_order("PO-CALM")  # normal: five minutes, not breached within the test
        await orders.PublishPurchaseOrder(
            po_service_pb2.PublishPurchaseOrderRequest(purchase_order=calm), metadata=PROCUREMENT
        )

        async with running_service(cp_settings, wire_control_plane) as (control_plane, cp_channel, _):
            control = controlplane_service_pb2_grpc.ControlPlaneServiceStub(cp_channel)
            control_address = control_plane.address

            async def stuck():
                answer = await control.ListStuckWorkflows(cps.ListStuckWorkflowsRequest(), metadata=OPS)
                return list(answer.workflows) or None

            [workflow] = await eventually(stuck)
            assert workflow.workflow_key == "PO-URGENT"
            [breach] = workflow.breaches
            assert breach.stage == "po_acknowledgment"
            assert breach.criticality == "critical"
            assert breach.limit.ToSeconds() == 1
            assert (breach.object.object_type, breach.object.object_key, breach.object.version) == (
                "purchase_order",
                "PO-URGENT",
                1,
            )

            async def opened():
                try:
                    got = await exceptions.GetException(
                        exs.GetExceptionRequest(exception_id=breach.exception_id), metadata=OPS
                    )
                except grpc.aio.AioRpcError as error:  # listed as stuck before the sweep raised it
                    if error.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    return None
                return got.exception if got.exception.owner_team else None

            exception = await eventually(opened)
            printed = await cli("workflows", "stuck", "--address", control_address, "--system", "ops-console")
            assert printed.exit_code == 2, printed.output
            row = table_row(printed.output, "PO-URGENT")
            assert row[1:3] == ["po_acknowledgment", "purchase_order PO-URGENT v1"]
            assert row[-1] == breach.exception_id
            assert exception.type == ex.EXCEPTION_TYPE_SLA_BREACH
            assert exception.workflow_key == "PO-URGENT"
            assert exception.owner_team == "procurement-ops"  # the default policy's route for sla_breach

        # A restart of the control plane (sweeping again from a fresh fold) raises nothing new.
        async with running_service(cp_settings, wire_control_plane) as (control_plane, cp_channel, _):
            control = controlplane_service_pb2_grpc.ControlPlaneServiceStub(cp_channel)
            control_address = control_plane.address
            await eventually(stuck)
            await asyncio.sleep(1.0)  # five sweeps
            assert await raises_of_breaches(po_settings.nats_url, namespace) == 1
            unresolved = await exceptions.ListExceptions(
                exs.ListExceptionsRequest(type=ex.EXCEPTION_TYPE_SLA_BREACH), metadata=OPS
            )
            assert [row.exception_id for row in unresolved.exceptions] == [breach.exception_id]

            # The ERP answers: the stage completes, the tracker clears, the router resolves.
            await orders.AcknowledgePurchaseOrder(
                po_service_pb2.AcknowledgePurchaseOrderRequest(
                    po_id="PO-URGENT", version=1, erp_document_number="4500000077"
                ),
                metadata=ERP,
            )

            closed = await eventually(lambda: resolved(exceptions, breach.exception_id))
            assert closed.resolution.kind == ex.RESOLUTION_KIND_CLEARED
            assert closed.resolution.by == "control-plane"
            assert "answered up to version 1" in closed.resolution.note
            answer = await control.ListStuckWorkflows(cps.ListStuckWorkflowsRequest(), metadata=OPS)
            assert list(answer.workflows) == []
            printed = await cli("workflows", "stuck", "--address", control_address, "--system", "ops-console")
            assert printed.exit_code == 0, printed.output
            timeline = await control.GetWorkflow(cps.GetWorkflowRequest(workflow_key="PO-URGENT"), metadata=OPS)
            assert not timeline.workflow.stuck
            assert timeline.workflow.state == "open"
            await asyncio.sleep(1.0)
            assert await raises_of_breaches(po_settings.nats_url, namespace) == 1
            assert await transitions(nats_server, namespace, breach.exception_id) == [
                "opened",
                "resolved",
            ]


async def test_an_unknown_stage_or_a_foreign_page_token_is_invalid_argument(po_settings):
    cp_settings = settings_like(ControlPlaneSettings, po_settings)
    async with running_service(cp_settings, wire_control_plane) as (_, cp_channel, _):
        control = controlplane_service_pb2_grpc.ControlPlaneServiceStub(cp_channel)
        for request in (
            cps.ListStuckWorkflowsRequest(stage="delivery"),
            cps.ListStuckWorkflowsRequest(page={"page_token": "not-a-token"}),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await control.ListStuckWorkflows(request, metadata=OPS)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_after_a_restart_a_new_late_order_raises_its_own_breach_and_the_old_one_none_again(
    po_settings, nats_server, valkey_server, tmp_path
):
    """The tracker rebuilt from the streams after a restart: the breach raised before is not raised again, and an
    order late only after the restart gets a breach (and an exception) of its own."""
    cp_settings = control_plane_with_sla(po_settings, tmp_path)
    namespace = po_settings.namespace
    async with orders_and_router(po_settings, nats_server, valkey_server) as (orders, exceptions):

        async def publish_urgent(po_id: str) -> None:
            urgent = sample_order(po_id)
            urgent.criticality = po_pb2.PURCHASE_ORDER_CRITICALITY_CRITICAL
            await orders.PublishPurchaseOrder(
                po_service_pb2.PublishPurchaseOrderRequest(purchase_order=urgent), metadata=PROCUREMENT
            )

        async def stuck_keys(control) -> list[str]:
            answer = await control.ListStuckWorkflows(cps.ListStuckWorkflowsRequest(), metadata=OPS)
            return sorted(workflow.workflow_key for workflow in answer.workflows)

        await publish_urgent("PO-BEFORE")
        async with running_service(cp_settings, wire_control_plane) as (_, cp_channel, _):
            control = controlplane_service_pb2_grpc.ControlPlaneServiceStub(cp_channel)
            await eventually(lambda: _equal(stuck_keys(control), ["PO-BEFORE"]))
            await eventually(lambda: _equal(raises_of_breaches(po_settings.nats_url, namespace), 1))

        async with running_service(cp_settings, wire_control_plane) as (_, cp_channel, _):
            control = controlplane_service_pb2_grpc.ControlPlaneServiceStub(cp_channel)
            await publish_urgent("PO-AFTER")
            await eventually(lambda: _equal(stuck_keys(control), ["PO-AFTER", "PO-BEFORE"]))
            await eventually(lambda: _equal(raises_of_breaches(po_settings.nats_url, namespace), 2))

            async def two_exceptions():
                answer = await exceptions.ListExceptions(
                    exs.ListExceptionsRequest(type=ex.EXCEPTION_TYPE_SLA_BREACH), metadata=OPS
                )
                return sorted(e.workflow_key for e in answer.exceptions) == ["PO-AFTER", "PO-BEFORE"] or None

            await eventually(two_exceptions)
            await asyncio.sleep(1.0)  # five more sweeps
            assert await raises_of_breaches(po_settings.nats_url, namespace) == 2


async def _equal(value, expected) -> bool | None:
    return (await value) == expected or None
