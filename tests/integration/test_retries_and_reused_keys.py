"""Retries are replays and reused keys are refused (found by review): a command sent again after its answer was
lost gets the same outcome, and a caller-chosen key sent with new content is never answered OK."""

from __future__ import annotations

import grpc
import pytest

from syncgov.controlplane.v1 import controlplane_service_pb2 as cp
from syncgov.po.v1 import po_service_pb2
from syncgov.supplier.v1 import supplier_pb2
from syncgov.supplier.v1 import supplier_service_pb2 as spb
from tests.integration.helpers import message_count
from tests.integration.test_control_plane import DEFAULT, OPS
from tests.integration.test_po_versions import ERP, PROCUREMENT, publish, version

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_a_key_reused_for_the_next_change_order_is_refused_and_writes_nothing(po_service, js):
    running, stub, _ = po_service
    await publish(stub, version(1))
    change = po_service_pb2.ChangePurchaseOrderRequest(purchase_order=version(2, quantity="12"), idempotency_key="K")
    await stub.ChangePurchaseOrder(change, metadata=PROCUREMENT)
    before = await message_count(js, running.runtime.namespace, "po")
    reused = po_service_pb2.ChangePurchaseOrderRequest(purchase_order=version(3, quantity="14"), idempotency_key="K")
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.ChangePurchaseOrder(reused, metadata=PROCUREMENT)
    assert failure.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await message_count(js, running.runtime.namespace, "po") == before
    again = await stub.ChangePurchaseOrder(change, metadata=PROCUREMENT)  # the same command: a replay
    assert again.version == 2


async def test_a_cancellation_retried_after_its_answer_was_lost_is_a_replay(po_service, js):
    running, stub, _ = po_service
    await publish(stub, version(1))
    cancel = po_service_pb2.CancelPurchaseOrderRequest(
        po_id="PO-1001", reason="customer cancelled", idempotency_key="C-1"
    )
    first = await stub.CancelPurchaseOrder(cancel, metadata=PROCUREMENT)
    count = await message_count(js, running.runtime.namespace, "po")
    again = await stub.CancelPurchaseOrder(cancel, metadata=PROCUREMENT)
    assert (again.version, again.stream_sequence) == (first.version, first.stream_sequence)
    assert await message_count(js, running.runtime.namespace, "po") == count
    got = await stub.GetPurchaseOrder(po_service_pb2.GetPurchaseOrderRequest(po_id="PO-1001"), metadata=ERP)
    assert got.latest_version == 2


async def test_a_supplier_key_reused_for_new_content_is_never_answered_ok(suppliers, js):
    running, stub = suppliers
    metadata = (("x-syncgov-system", "procurement"),)
    first = supplier_pb2.SupplierRecord(source_system="procurement", local_id="L-9", legal_name="Alpha Pumps GmbH")
    second = supplier_pb2.SupplierRecord(
        source_system="procurement", local_id="L-9", legal_name="Alpha Pumpen und Ventile GmbH"
    )
    stored = await stub.SubmitSupplierRecord(
        spb.SubmitSupplierRecordRequest(record=first, idempotency_key="K-1"), metadata=metadata
    )
    count = await message_count(js, running.runtime.namespace, "supplier")
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.SubmitSupplierRecord(
            spb.SubmitSupplierRecordRequest(record=second, idempotency_key="K-1"), metadata=metadata
        )
    assert failure.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await message_count(js, running.runtime.namespace, "supplier") == count
    got = await stub.GetSupplier(spb.GetSupplierRequest(supplier_id=stored.supplier.supplier_id), metadata=metadata)
    assert (got.supplier.legal_name, got.supplier.version) == (stored.supplier.legal_name, stored.supplier.version)


async def test_a_supplier_status_change_retried_is_written_once(suppliers, js):
    running, stub = suppliers
    record = supplier_pb2.SupplierRecord(source_system="procurement", local_id="L-1", legal_name="ACME Industrial GmbH")
    submitted = await stub.SubmitSupplierRecord(
        spb.SubmitSupplierRecordRequest(record=record), metadata=(("x-syncgov-system", "procurement"),)
    )
    block = spb.ChangeSupplierStatusRequest(
        supplier_id=submitted.supplier.supplier_id, status=supplier_pb2.SUPPLIER_STATUS_BLOCKED, reason="fraud check"
    )
    ops = (("x-syncgov-system", "ops-console"),)
    first = await stub.ChangeSupplierStatus(block, metadata=ops)
    count = await message_count(js, running.runtime.namespace, "supplier")
    again = await stub.ChangeSupplierStatus(block, metadata=ops)
    assert again.supplier.version == first.supplier.version
    assert await message_count(js, running.runtime.namespace, "supplier") == count


async def test_a_policy_apply_retried_after_its_answer_was_lost_is_a_replay(governed_stack):
    _, stub, _, _ = governed_stack
    strict = DEFAULT.replace("# syncgov", "# syncgov (retried)", 1) + "\n# applied once\n"
    request = cp.ApplyPolicyRequest(document_yaml=strict, expected_revision=0, comment="once")
    first = await stub.ApplyPolicy(request, metadata=OPS)
    again = await stub.ApplyPolicy(request, metadata=OPS)
    assert again.revision.revision == first.revision.revision == 1
    history = await stub.ListPolicyRevisions(cp.ListPolicyRevisionsRequest(), metadata=OPS)
    assert [r.revision for r in history.revisions] == [1]
