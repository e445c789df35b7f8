"""Drift reconciliation (issue 13): what a system reports it holds against the system of record, and the repair.

The ERP adapter example runs against a real po-publication and control plane. An order is published (v1) and changed
(v2); the ERP applies both, then is restored from a backup holding v1. Its snapshot is reported: v1 is stale, one
``drift_detected`` is raised (and not again for the same report), and with ``repair`` the control plane re-publishes
v2 on the repair stream, which the adapter applies and acknowledges, after which the ERP is in sync. Missing, unknown
and differing objects, every bound of the request (refused with field violations, nothing written) and the caller
rule (the system itself or a policy administrator) are checked too, and so is ``syncgov drift report``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from examples.erp_adapter.adapter import ErpClient, run_adapter
from libs.runtime.content_hash import content_sha256
from syncgov.common.v1 import types_pb2
from syncgov.controlplane.v1 import controlplane_pb2 as cp
from syncgov.controlplane.v1 import controlplane_service_pb2 as cps
from syncgov.exception.v1 import exception_pb2
from syncgov.po.v1 import po_pb2, po_service_pb2
from tests.integration.helpers import (
    ERP,
    PROCUREMENT,
    WMS_EAST,
    cli,
    eventually,
    message_count,
    publish_order,
    raised_exceptions,
    sample_order,
    status_details,
    table_row,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
OPS = (("x-syncgov-system", "ops-console"),)
A_HASH = "a" * 64


class RecordingErp(ErpClient):
    """The ERP stand-in, keeping a copy of every version it applied (its backups); ``fail_next`` makes its next
    posting fail with that error (a refusal, an outage)."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: list[po_pb2.PurchaseOrder] = []
        self.fail_next: BaseException | None = None

    async def apply(self, order: po_pb2.PurchaseOrder) -> str:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        copy = po_pb2.PurchaseOrder()
        copy.CopyFrom(order)
        self.applied.append(copy)
        return await super().apply(order)


@contextlib.asynccontextmanager
async def erp_adapter(po, nats_server) -> AsyncIterator[RecordingErp]:
    """The ERP adapter example running against po-publication for the test's length, its ERP recording."""
    erp, stop = RecordingErp(), asyncio.Event()
    adapter = asyncio.create_task(
        run_adapter(nats_server.url, po.address, po.runtime.namespace.root, erp=erp, stop=stop)
    )
    try:
        yield erp
    finally:
        stop.set()
        with contextlib.suppress(BaseException):
            await adapter


async def acknowledged(orders, po_id: str, version: int) -> bool:
    got = await orders.GetPurchaseOrder(po_service_pb2.GetPurchaseOrderRequest(po_id=po_id), metadata=PROCUREMENT)
    return got.erp_acknowledgment.version == version


async def held_at_v2(orders, erp: RecordingErp, po_id: str = "PO-1001") -> po_pb2.PurchaseOrder:
    """Publish and change ``po_id`` until the ERP acknowledged v2; the ERP's copy of v1 (a backup to restore)."""
    await publish_order(orders, po_id)
    await change(orders, po_id, 2, "25")
    await eventually(lambda: acknowledged(orders, po_id, 2))
    return next(order for order in erp.applied if order.po_id == po_id and order.version == 1)


def state(key: str, version: int, sha256: str = "", object_type: str = "purchase_order") -> cp.SystemObjectState:
    return cp.SystemObjectState(
        object=types_pb2.ObjectRef(object_type=object_type, object_key=key, version=version), content_sha256=sha256
    )


async def authoritative(po_stub, po_id: str, version: int = 0) -> po_pb2.PurchaseOrder:
    answer = await po_stub.GetPurchaseOrder(
        po_service_pb2.GetPurchaseOrderRequest(po_id=po_id, version=version), metadata=PROCUREMENT
    )
    return answer.purchase_order


async def change(po_stub, po_id: str, version: int, quantity: str) -> None:
    changed = sample_order(po_id, quantity=quantity)
    changed.version = version
    await po_stub.ChangePurchaseOrder(
        po_service_pb2.ChangePurchaseOrderRequest(purchase_order=changed), metadata=PROCUREMENT
    )


async def drift_exceptions(js, namespace) -> list[exception_pb2.Exception]:
    return [e for e in await raised_exceptions(js, namespace) if e.type == exception_pb2.EXCEPTION_TYPE_DRIFT_DETECTED]


async def report(control, *objects, metadata=ERP, **fields) -> cps.ReportSystemStateResponse:
    fields.setdefault("system", "erp")
    return await control.ReportSystemState(cps.ReportSystemStateRequest(objects=objects, **fields), metadata=metadata)


async def test_a_restored_erp_holding_v1_is_stale_and_repaired_through_the_adapter(governed_stack, js, nats_server):
    _, control, po, orders = governed_stack
    namespace = po.runtime.namespace
    async with erp_adapter(po, nats_server) as erp:
        v1 = await held_at_v2(orders, erp)
        v2 = await authoritative(orders, "PO-1001")
        assert erp.version_held("PO-1001") == 2
        assert content_sha256(erp.held["PO-1001"]) == content_sha256(v2)

        # The ERP is restored from a backup taken while it held v1.
        erp.held["PO-1001"] = v1

        async def stale():
            answer = await report(control, *erp.snapshot())
            return answer if answer.stale_count else None

        answer = await eventually(stale)
        assert (answer.stale_count, answer.in_sync_count, answer.missing_count, answer.unknown_count) == (1, 0, 0, 0)
        assert answer.repairs_requested == 0
        [found] = answer.drifts
        assert (found.kind, found.authoritative_version, found.reported_version) == (cp.DRIFT_KIND_STALE, 2, 1)
        assert found.object.object_key == "PO-1001"
        [raised] = await drift_exceptions(js, namespace)
        assert raised.workflow_key == "PO-1001"
        assert raised.severity == exception_pb2.SEVERITY_HIGH
        assert "erp holds v1; syncgov's latest is v2" in raised.detail
        assert (raised.object.object_key, raised.object.version) == ("PO-1001", 2)

        # The same report again: counted again, raised once.
        again = await report(control, *erp.snapshot())
        assert again.stale_count == 1
        assert len(await drift_exceptions(js, namespace)) == 1
        assert await message_count(js, namespace, "repair") == 0

        repaired = await report(control, *erp.snapshot(), repair=True)
        assert (repaired.stale_count, repaired.repairs_requested) == (1, 1)

        async def holds_v2():
            return erp.version_held("PO-1001") == 2

        await eventually(holds_v2)
        assert content_sha256(erp.held["PO-1001"]) == content_sha256(v2)
        after = await report(control, *erp.snapshot())
        assert (after.in_sync_count, len(after.drifts)) == (1, 0)
        assert len(await drift_exceptions(js, namespace)) == 1
        # The repair was acknowledged as the normal path does: v2 stays acknowledged under the same ERP number.
        got = await orders.GetPurchaseOrder(po_service_pb2.GetPurchaseOrderRequest(po_id="PO-1001"), metadata=ERP)
        assert got.erp_acknowledgment.version == 2
        assert got.erp_acknowledgment.erp_document_number == erp.numbers["PO-1001"]


async def test_missing_unknown_and_differing_objects_over_two_batches(governed_stack, js):
    _, control, po, orders = governed_stack
    namespace = po.runtime.namespace
    for po_id in ("PO-A", "PO-B", "PO-C"):
        await publish_order(orders, po_id)
    b_hash = content_sha256(await authoritative(orders, "PO-B"))

    async def first_batch():
        answer = await report(control, state("PO-A", 1, A_HASH), state("PO-B", 1, b_hash), covers_through_key="PO-B")
        return answer if answer.content_differs_count else None

    first = await eventually(first_batch)
    assert (first.in_sync_count, first.content_differs_count, first.missing_count) == (1, 1, 0)
    [differs] = first.drifts
    assert (differs.object.object_key, differs.reported_content_sha256) == ("PO-A", A_HASH)
    assert differs.authoritative_content_sha256 == content_sha256(await authoritative(orders, "PO-A"))

    second = await report(control, state("PO-ZZZ", 1), covers_after_key="PO-B", repair=True)
    assert (second.missing_count, second.unknown_count, second.in_sync_count) == (1, 1, 0)
    assert {(d.object.object_key, d.kind) for d in second.drifts} == {
        ("PO-C", cp.DRIFT_KIND_MISSING),
        ("PO-ZZZ", cp.DRIFT_KIND_UNKNOWN),
    }
    assert second.repairs_requested == 1  # the missing order; an unknown one is for a person
    assert await message_count(js, namespace, "repair") == 1
    kinds = sorted(e.detail.split("(")[1].split(")")[0] for e in await drift_exceptions(js, namespace))
    assert kinds == ["content_differs", "missing", "unknown"]


async def test_bad_reports_are_refused_with_field_violations_and_write_nothing(governed_stack, js):
    _, control, po, orders = governed_stack
    namespace = po.runtime.namespace
    await publish_order(orders, "PO-1001")
    exceptions_before = await message_count(js, namespace, "exception")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"objects": [state("S-1", 1, object_type="supplier")]}, "objects[0].object.object_type"),
        ({"objects": [state("PO-1001", 0)]}, "objects[0].object.version"),
        ({"objects": [state("PO-1001", 1, "XYZ")]}, "objects[0].content_sha256"),
        ({"objects": [state("PO-1001", 1, "A" * 64)]}, "objects[0].content_sha256"),
        ({"objects": [state("PO-1001", 1), state("PO-1001", 1)]}, "objects[1].object.object_key"),
        ({"objects": [state("PO-1001", 1)], "covers_after_key": "PO-5"}, "objects[0].object.object_key"),
        ({"objects": [], "covers_after_key": "PO-5", "covers_through_key": "PO-1"}, "covers_through_key"),
        ({"objects": [state("P" * 257, 1)]}, "objects[0].object.object_key"),
        ({"objects": [state(f"PO-{i:05d}", 1) for i in range(1001)]}, "objects"),
        ({"objects": [state("PO-1001", 1)], "system": "mainframe", "metadata": OPS}, "system"),
    ]
    for fields, field in cases:
        metadata = fields.pop("metadata", ERP)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await report(control, *fields.pop("objects"), metadata=metadata, repair=True, **fields)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, refused.value.details())
        [bad_request] = [d for d in status_details(refused.value) if hasattr(d, "field_violations")]
        assert field in [v.field for v in bad_request.field_violations], (field, bad_request)
    assert await message_count(js, namespace, "exception") == exceptions_before
    assert await message_count(js, namespace, "repair") == 0


async def test_only_the_system_itself_or_a_policy_administrator_may_report(governed_stack, js):
    _, control, _, orders = governed_stack
    await publish_order(orders, "PO-1001")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await report(control, state("PO-1001", 1), metadata=WMS_EAST)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Its own report is refused too: purchase orders are not synced to wms-east, so it holds no copy to compare
    # (and a report of nothing would list every order as missing).
    with pytest.raises(grpc.aio.AioRpcError) as not_synced:
        await report(control, state("PO-1", 1), system="wms-east", metadata=WMS_EAST, covers_through_key="PO-1")
    assert not_synced.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not synced to wms-east" in (not_synced.value.details() or "")

    async def in_sync():
        answer = await report(control, state("PO-1001", 1), metadata=OPS)
        return answer if answer.in_sync_count else None

    assert (await eventually(in_sync)).in_sync_count == 1


async def test_the_cli_reports_a_snapshot_in_batches_and_exits_1_on_drift(governed_stack, tmp_path):
    control_plane, control, _, orders = governed_stack
    for po_id in ("PO-1", "PO-2", "PO-3"):
        await publish_order(orders, po_id)
    await change(orders, "PO-2", 2, "30")
    one = content_sha256(await authoritative(orders, "PO-1"))
    snapshot = tmp_path / "erp.jsonl"
    snapshot.write_text(
        "\n".join(
            json.dumps(line)
            for line in (
                {"object_type": "purchase_order", "key": "PO-2", "version": 1, "content_sha256": ""},
                {"object_type": "purchase_order", "key": "PO-1", "version": 1, "content_sha256": one},
                {"key": "PO-9", "version": 1},
            )
        )
    )

    async def reported():
        return (await report(control, state("PO-1", 1), covers_through_key="PO-1")).in_sync_count

    await eventually(reported)  # the control plane has followed the orders
    address = ("--address", control_plane.address)
    printed = await cli("drift", "report", "--system", "erp", "--file", str(snapshot), "--batch", "1", *address)
    assert printed.exit_code == 1, printed.output
    assert table_row(printed.output, "PO-2")[1:4] == ["stale", "v2", "v1"]
    assert table_row(printed.output, "PO-3")[1] == "missing"
    assert table_row(printed.output, "PO-9")[1] == "unknown"
    assert table_row(printed.output, "in_sync")[1] == "1"
    assert table_row(printed.output, "stale")[1] == "1"
    as_json = await cli("drift", "report", "--system", "erp", "--json", "--as", "ops-console", *address, stdin="")
    assert as_json.exit_code == 1, as_json.output
    totals = json.loads(as_json.output)
    assert (totals["missing"], totals["batches"]) == (3, 1)
    bad = await cli("drift", "report", "--system", "erp", *address, stdin="{not json\n")
    assert bad.exit_code == 2
    refused = await cli("drift", "report", "--system", "erp", "--as", "wms-east", *address, stdin="")
    assert refused.exit_code == 2
    assert "PERMISSION_DENIED" in refused.output
