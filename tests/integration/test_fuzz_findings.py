"""Regressions for what the hostile-input suite found (tests/fuzz): each answered INTERNAL, ABORTED or wrote
an event for a refused request before it was fixed."""

from __future__ import annotations

import grpc
import pytest

from syncgov.controlplane.v1 import controlplane_service_pb2 as cp
from syncgov.supplier.v1 import supplier_service_pb2 as pb
from tests.integration.helpers import message_count
from tests.integration.test_control_plane import OPS
from tests.integration.test_supplier_normalization import (
    as_system,
    record,
    submit,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    return failure.value.code()


async def test_policy_revisions_that_do_not_exist_are_not_found(governed_stack):
    _, stub, _, _ = governed_stack
    assert await code_of(stub.GetPolicy(cp.GetPolicyRequest(revision=5), metadata=OPS)) == grpc.StatusCode.NOT_FOUND
    rollback = stub.RollbackPolicy(cp.RollbackPolicyRequest(target_revision=181, expected_revision=1), metadata=OPS)
    assert await code_of(rollback) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "document",
    ["format: &f [*f]\n", "format: 1\nsystems: &s {x: *s}\n", "a: " + "{a: " * 2000 + "1" + "}" * 2000],
)
async def test_self_referring_or_bottomless_policies_are_invalid_argument(governed_stack, document):
    _, stub, _, _ = governed_stack
    answer = await stub.ValidatePolicy(cp.ValidatePolicyRequest(document_yaml=document), metadata=OPS)
    assert not answer.valid
    apply = stub.ApplyPolicy(cp.ApplyPolicyRequest(document_yaml=document), metadata=OPS)
    assert await code_of(apply) == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_policy_with_thousands_of_problems_is_a_readable_invalid_argument(governed_stack):
    _, stub, _, _ = governed_stack
    document = "\n".join("x: 1" for _ in range(50_000))
    diff = stub.DiffPolicy(cp.DiffPolicyRequest(document_yaml=document), metadata=OPS)
    assert await code_of(diff) == grpc.StatusCode.INVALID_ARGUMENT


async def test_deciding_on_suppliers_already_merged_is_refused_and_writes_nothing(suppliers, js):
    running, stub = suppliers
    first = (await submit(stub, record("procurement", "P-1", "ACME Industrial Supply GmbH"))).supplier.supplier_id
    second = (await submit(stub, record("procurement", "P-2", "Nordwind Logistik AG"))).supplier.supplier_id
    decide = pb.DecideDuplicateCandidateRequest(
        supplier_id=first, other_supplier_id=second, same_supplier=True, reason="same firm"
    )
    await stub.DecideDuplicateCandidate(decide, metadata=as_system("ops-console"))
    before = await message_count(js, running.runtime.namespace, "supplier")
    again = stub.DecideDuplicateCandidate(decide, metadata=as_system("ops-console"))
    assert await code_of(again) == grpc.StatusCode.FAILED_PRECONDITION
    assert await message_count(js, running.runtime.namespace, "supplier") == before
    itself = pb.DecideDuplicateCandidateRequest(supplier_id=first, other_supplier_id=first, reason="x")
    assert await code_of(stub.DecideDuplicateCandidate(itself, metadata=as_system("ops-console"))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_a_decision_sent_twice_is_a_replay_not_aborted(suppliers, js):
    running, stub = suppliers
    first = (await submit(stub, record("procurement", "P-1", "Rheinland Logistik GmbH"))).supplier.supplier_id
    second = (await submit(stub, record("procurement", "P-2", "Zeta Paints AG"))).supplier.supplier_id
    decide = pb.DecideDuplicateCandidateRequest(
        supplier_id=first, other_supplier_id=second, same_supplier=False, reason="different firms"
    )
    await stub.DecideDuplicateCandidate(decide, metadata=as_system("ops-console"))
    count = await message_count(js, running.runtime.namespace, "supplier")
    answer = await stub.DecideDuplicateCandidate(decide, metadata=as_system("ops-console"))
    assert answer.supplier.supplier_id == first
    assert await message_count(js, running.runtime.namespace, "supplier") == count
