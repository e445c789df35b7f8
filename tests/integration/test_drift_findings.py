"""Drift reconciliation where a hostile review probed it, against real NATS and Valkey (each test failed before its
fix, but for the one that checks a race that did not occur)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import yaml

from examples.erp_adapter.adapter import ErpClient, ErpRefused
from syncgov.controlplane.v1 import controlplane_pb2 as cp
from syncgov.controlplane.v1 import controlplane_service_pb2 as cps
from syncgov.exception.v1 import exception_pb2
from tests.integration.helpers import (
    WMS_EAST,
    eventually,
    message_count,
    publish_order,
    raised_exceptions,
)
from tests.integration.test_drift import (
    acknowledged,
    drift_exceptions,
    erp_adapter,
    held_at_v2,
    report,
    state,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
ROOT = Path(__file__).resolve().parents[2]
DEFAULT = (ROOT / "deploy" / "policy" / "default.yaml").read_text()
OPS = (("x-syncgov-system", "ops-console"),)
PORTAL = (("x-syncgov-system", "supplier-portal"),)


# --- access -----------------------------------------------------------------------------------------------------


async def test_a_system_the_policy_forbids_to_read_orders_cannot_list_them_through_a_drift_report(governed_stack):
    """A system the policy forbids to read orders cannot learn them from a report of nothing: PERMISSION_DENIED."""
    control_plane, control, po, orders = governed_stack
    restricted = yaml.safe_load(DEFAULT)
    restricted["ownership"]["purchase_order"]["readers"] = ["procurement", "erp", "syncgov", "ops-console"]
    await control.ApplyPolicy(
        cps.ApplyPolicyRequest(document_yaml=yaml.safe_dump(restricted, sort_keys=False), expected_revision=0),
        metadata=OPS,
    )

    async def switched():
        return control_plane.runtime.policy.current.revision == 1 and po.runtime.policy.current.revision == 1

    await eventually(switched)
    await publish_order(orders, "PO-SECRET")
    with pytest.raises(grpc.aio.AioRpcError) as read:
        await control.GetWorkflow(cps.GetWorkflowRequest(workflow_key="PO-SECRET"), metadata=PORTAL)
    assert read.value.code() == grpc.StatusCode.PERMISSION_DENIED  # the policy says: may not read orders

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await report(control, system="supplier-portal", metadata=PORTAL)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


# --- the order index lags the stream ------------------------------------------------------------------------------


async def test_a_report_right_after_a_publish_does_not_raise_unknown_drift_for_an_order_syncgov_just_stored(
    governed_stack, js
):
    """A report right after a publish finds the order syncgov just stored, not an unknown one."""
    _, control, po, orders = governed_stack
    namespace = po.runtime.namespace
    await publish_order(orders, "PO-0000")
    await eventually(lambda: _in_sync(control, "PO-0000", 1))
    unknown: list[str] = []
    for i in range(1, 21):
        key = f"PO-{i:04d}"
        await publish_order(orders, key)  # answered OK: the stream stored v1
        answer = await report(control, state(key, 1), covers_after_key=f"PO-{i - 1:04d}", covers_through_key=key)
        unknown += [d.object.object_key for d in answer.drifts if d.kind == cp.DRIFT_KIND_UNKNOWN]
    raised = [e.object.object_key for e in await drift_exceptions(js, namespace)]
    assert unknown == [], f"in-sync orders reported unknown: {unknown}; drift_detected raised for {raised}"


async def _in_sync(control, key: str, version: int) -> bool:
    answer = await report(control, state(key, version), covers_through_key=key)
    return bool(answer.in_sync_count)


# --- repairs --------------------------------------------------------------------------------------------------------


async def test_a_second_repair_of_the_same_version_within_the_duplicate_window_is_counted_but_never_sent(
    governed_stack, js, nats_server
):
    """The same drift found again a minute later is repaired again: each report's repairs are its own messages."""
    _, control, po, orders = governed_stack
    namespace = po.runtime.namespace
    async with erp_adapter(po, nats_server) as erp:
        v1 = await held_at_v2(orders, erp)
        erp.held["PO-1001"] = v1  # restored from a backup

        async def repaired_once():
            answer = await report(control, *erp.snapshot(), repair=True)
            return answer if answer.repairs_requested else None

        await eventually(repaired_once)
        await eventually(lambda: _holds(erp, "PO-1001", 2))

        erp.held["PO-1001"] = v1  # the same backup restored again a minute later
        second = await report(control, *erp.snapshot(), repair=True)
        assert second.repairs_requested == 1
        assert await message_count(js, namespace, "repair") == 2  # stored, not dropped as a duplicate
        await eventually(lambda: _holds(erp, "PO-1001", 2), within=8)


async def _holds(erp: ErpClient, po_id: str, version: int) -> bool:
    return erp.version_held(po_id) == version


async def test_a_transient_erp_failure_during_a_repair_is_retried_not_fatal_to_the_repair_consumer(
    governed_stack, nats_server
):
    """An ERP failing for now during a repair: the repair comes back and the repair consumer lives on."""
    _, control, po, orders = governed_stack
    async with erp_adapter(po, nats_server) as erp:
        await publish_order(orders, "PO-1001")
        await eventually(lambda: acknowledged(orders, "PO-1001", 1))
        del erp.held["PO-1001"]  # the ERP lost the order
        erp.fail_next = ConnectionError("ERP connection reset")  # one transient failure

        async def requested():
            answer = await report(control, *erp.snapshot(), repair=True)
            return answer.repairs_requested

        await eventually(requested)
        await eventually(lambda: _holds(erp, "PO-1001", 1), within=15)


async def test_an_erp_refusing_a_repaired_version_is_rejected_not_silently_acknowledged(
    governed_stack, js, nats_server
):
    """An ERP refusing a repaired version: the refusal reaches syncgov (RejectPurchaseOrder), as on the normal path."""
    _, control, po, orders = governed_stack
    namespace = po.runtime.namespace
    async with erp_adapter(po, nats_server) as erp:
        erp.held["PO-1001"] = await held_at_v2(orders, erp)
        erp.fail_next = ErpRefused("posting period closed")

        async def requested():
            return (await report(control, *erp.snapshot(), repair=True)).repairs_requested

        await eventually(requested)

        async def rejected():
            return [
                e for e in await raised_exceptions(js, namespace) if e.type == exception_pb2.EXCEPTION_TYPE_ERP_REJECTED
            ]

        await eventually(rejected, within=8)


# --- who is reported ------------------------------------------------------------------------------------------------


async def test_a_system_purchase_orders_are_never_synced_to_raises_no_missing_drift_for_every_order(governed_stack, js):
    """A system orders are never synced to cannot report (PERMISSION_DENIED): no drift_detected for every order."""
    _, control, po, orders = governed_stack
    namespace = po.runtime.namespace
    for key in ("PO-1", "PO-2", "PO-3"):
        await publish_order(orders, key)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await report(control, system="wms-east", metadata=WMS_EAST, repair=True)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await drift_exceptions(js, namespace) == []
    assert await message_count(js, namespace, "repair") == 0


# --- the CLI --------------------------------------------------------------------------------------------------------


async def test_a_cli_report_refused_in_its_second_batch_wrote_nothing_in_its_first(governed_stack, js, tmp_path):
    """The CLI checks the whole snapshot before the first batch: a line the edge would refuse stops it before anything
    is written."""
    from tests.integration.helpers import cli

    control_plane, control, po, orders = governed_stack
    namespace = po.runtime.namespace
    await publish_order(orders, "PO-1")
    await eventually(lambda: _in_sync(control, "PO-1", 1))
    snapshot = tmp_path / "erp.jsonl"
    snapshot.write_text('{"key": "PO-1", "version": 9}\n{"key": "PO-2\\u0007", "version": 1}\n')
    printed = await cli(
        "drift",
        "report",
        "--system",
        "erp",
        "--file",
        str(snapshot),
        "--batch",
        "1",
        "--json",
        "--address",
        control_plane.address,
    )
    assert printed.exit_code == 2, printed.output
    raised = [e.object.object_key for e in await drift_exceptions(js, namespace)]
    assert raised == [], f"a refused report (exit 2) raised drift_detected for {raised}; printed: {printed.output!r}"


async def test_a_repaired_drift_is_cleared_and_the_same_drift_recurring_is_raised_again(
    governed_stack, js, nats_server
):
    """A report finding the order in sync clears its drift_detected; the same drift recurring is raised (and the
    exception reopened) again."""
    _, control, po, orders = governed_stack
    namespace = po.runtime.namespace
    async with erp_adapter(po, nats_server) as erp:
        v1 = await held_at_v2(orders, erp)
        erp.held["PO-1001"] = v1

        async def stale():
            return (await report(control, *erp.snapshot(), repair=True)).stale_count

        await eventually(stale)
        await eventually(lambda: _holds(erp, "PO-1001", 2))
        assert (await report(control, *erp.snapshot())).in_sync_count == 1
        info = await js.stream_info(
            namespace.stream("exception"), subjects_filter=f"{namespace.root}.exception.*.cleared"
        )
        cleared = sum((info.state.subjects or {}).values())
        erp.held["PO-1001"] = v1  # the drift recurs
        assert (await report(control, *erp.snapshot())).stale_count == 1
        raised = await drift_exceptions(js, namespace)
        assert cleared == 1  # the in-sync report cleared the first drift
        assert len(raised) == 2  # and its recurrence was raised again
        assert raised[0].fingerprint == raised[1].fingerprint  # the same drift: the router reopens its exception
