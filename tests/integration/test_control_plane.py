"""The control plane against real servers: policy revisions, distribution, enforcement, the audit chain."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2

from libs.audit.chain import verify
from libs.runtime.audit import AuditChain
from libs.runtime.events import EventReader
from syncgov.controlplane.v1 import controlplane_service_pb2 as cp
from syncgov.po.v1 import po_service_pb2
from tests.integration.helpers import eventually, raised_exceptions, requests_of, sample_order, status_details

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = (ROOT / "deploy" / "policy" / "default.yaml").read_text()
OPS = (("x-syncgov-system", "ops-console"),)
ERP = (("x-syncgov-system", "erp"),)
PROCUREMENT = (("x-syncgov-system", "procurement"),)


def erp_may_write_prices() -> str:
    data = yaml.safe_load(DEFAULT)
    data["ownership"]["purchase_order"]["fields"] = {
        "lines[].unit_price": {"system_of_record": "procurement", "writers": ["procurement", "erp"]}
    }
    return yaml.safe_dump(data, sort_keys=False)


async def test_a_valid_policy_applies_and_running_services_switch_without_restart(governed_stack, js):
    control, stub, po, po_stub = governed_stack
    assert po.runtime.policy.current.revision == 0
    applied = await stub.ApplyPolicy(
        cp.ApplyPolicyRequest(document_yaml=DEFAULT, expected_revision=0, comment="first revision"), metadata=OPS
    )
    assert applied.revision.revision == 1
    assert applied.revision.applied_by == "ops-console"

    async def switched() -> bool:
        return po.runtime.policy.current.revision == 1 and control.runtime.policy.current.revision == 1

    await eventually(switched)

    # Revision 2 lets the ERP write line prices; po-publication obeys it at once, no restart.
    second = await stub.ApplyPolicy(
        cp.ApplyPolicyRequest(document_yaml=erp_may_write_prices(), expected_revision=1), metadata=OPS
    )
    assert "lines[].unit_price" in second.unified_diff
    await eventually(lambda: _revision_is(po, 2))
    decision = po.runtime.policy.current.may_write("erp", "purchase_order", ["lines[].unit_price"])
    assert decision.allowed
    assert decision.revision == 2
    response = await po_stub.PublishPurchaseOrder(
        po_service_pb2.PublishPurchaseOrderRequest(purchase_order=sample_order("PO-R2")), metadata=PROCUREMENT
    )
    event = await EventReader(requests_of(js), po.runtime.namespace).at("po", response.stream_sequence)
    assert event.envelope.policy_revision == 2


async def _revision_is(service, revision: int) -> bool:
    return service.runtime.policy.current.revision == revision


async def test_an_invalid_policy_lists_all_its_problems_and_changes_nothing(governed_stack):
    _, stub, po, _ = governed_stack
    data = yaml.safe_load(DEFAULT)
    data["ownership"]["purchase_order"]["writers"] = ["procurement", "sap"]
    data["tolerances"]["default"]["price"]["upper_percent"] = 150
    data["exceptions"]["routes"][0].pop("team")
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.ApplyPolicy(
            cp.ApplyPolicyRequest(document_yaml=yaml.safe_dump(data), expected_revision=0), metadata=OPS
        )
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [bad] = [d for d in status_details(failure.value) if isinstance(d, error_details_pb2.BadRequest)]
    fields = {v.field for v in bad.field_violations}
    assert fields >= {
        "document_yaml:ownership.purchase_order.writers[1]",
        "document_yaml:tolerances.default.price.upper_percent",
        "document_yaml:exceptions.routes[0].team",
    }
    validated = await stub.ValidatePolicy(cp.ValidatePolicyRequest(document_yaml=yaml.safe_dump(data)), metadata=OPS)
    assert not validated.valid
    assert len(validated.problems) == len(bad.field_violations)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetPolicy(cp.GetPolicyRequest(), metadata=OPS)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    await asyncio.sleep(0.2)
    assert po.runtime.policy.current.revision == 0


async def test_concurrent_applies_with_the_same_expected_revision_one_wins(governed_stack):
    _, stub, _, _ = governed_stack
    results = await asyncio.gather(
        *(
            stub.ApplyPolicy(
                cp.ApplyPolicyRequest(document_yaml=DEFAULT.replace("5m\n", f"{n + 6}m\n"), expected_revision=0),
                metadata=OPS,
            )
            for n in range(4)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, Exception)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == 3
    assert all(loser.code() == grpc.StatusCode.FAILED_PRECONDITION for loser in losers)
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await stub.ApplyPolicy(cp.ApplyPolicyRequest(document_yaml=DEFAULT, expected_revision=0), metadata=OPS)
    assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    [info] = [d for d in status_details(stale.value) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert info.metadata["current_revision"] == "1"


async def test_only_administrators_apply_and_dry_runs_store_nothing(governed_stack):
    _, stub, _, _ = governed_stack
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.ApplyPolicy(cp.ApplyPolicyRequest(document_yaml=DEFAULT, expected_revision=0), metadata=ERP)
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    dry = await stub.ApplyPolicy(
        cp.ApplyPolicyRequest(document_yaml=DEFAULT, expected_revision=0, dry_run=True), metadata=OPS
    )
    assert not dry.HasField("revision")
    assert dry.unified_diff == "", "the default document is what services already run as revision 0"
    changed = await stub.ApplyPolicy(
        cp.ApplyPolicyRequest(document_yaml=erp_may_write_prices(), expected_revision=0, dry_run=True), metadata=OPS
    )
    assert "lines[].unit_price" in changed.unified_diff
    listed = await stub.ListPolicyRevisions(cp.ListPolicyRevisionsRequest(), metadata=OPS)
    assert list(listed.revisions) == []


async def test_history_get_rollback_and_reapplying_the_same_document(governed_stack):
    _, stub, _, _ = governed_stack
    await stub.ApplyPolicy(cp.ApplyPolicyRequest(document_yaml=DEFAULT, expected_revision=0), metadata=OPS)
    same = await stub.ApplyPolicy(
        cp.ApplyPolicyRequest(document_yaml=DEFAULT + "\n# only a comment\n", expected_revision=1), metadata=OPS
    )
    assert same.revision.revision == 1, "an unchanged document stores no new revision"
    await stub.ApplyPolicy(
        cp.ApplyPolicyRequest(document_yaml=erp_may_write_prices(), expected_revision=1), metadata=OPS
    )
    rolled = await stub.RollbackPolicy(cp.RollbackPolicyRequest(target_revision=1, expected_revision=2), metadata=OPS)
    assert rolled.revision.revision == 3
    assert rolled.revision.document_yaml == DEFAULT
    listed = await stub.ListPolicyRevisions(cp.ListPolicyRevisionsRequest(), metadata=ERP)
    assert [r.revision for r in listed.revisions] == [3, 2, 1]
    assert all(not r.document_yaml for r in listed.revisions)
    second = await stub.GetPolicy(cp.GetPolicyRequest(revision=2), metadata=ERP)
    assert "erp" in second.revision.document_yaml


async def test_explain_who_may_write_a_po_line_price(governed_stack):
    _, stub, _, _ = governed_stack
    explained = await stub.ExplainOwnership(
        cp.ExplainOwnershipRequest(object_type="purchase_order", field="lines[].unit_price"), metadata=ERP
    )
    assert explained.decision.system_of_record == "procurement"
    assert list(explained.decision.writers) == ["procurement"]
    assert explained.decision.rule_path == "ownership.purchase_order"
    bank = await stub.ExplainOwnership(
        cp.ExplainOwnershipRequest(object_type="supplier", field="bank_accounts[].iban"), metadata=ERP
    )
    assert bank.decision.rule_path == "ownership.supplier.fields.bank_accounts"
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.ExplainOwnership(
            cp.ExplainOwnershipRequest(object_type="purchase_order", field="colour"), metadata=ERP
        )
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_refused_write_leaves_one_audit_entry_and_one_exception(governed_stack, js):
    control, stub, po, po_stub = governed_stack
    order = sample_order("PO-777")
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await po_stub.PublishPurchaseOrder(
            po_service_pb2.PublishPurchaseOrderRequest(purchase_order=order), metadata=ERP
        )
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    accepted = await po_stub.PublishPurchaseOrder(
        po_service_pb2.PublishPurchaseOrderRequest(purchase_order=sample_order("PO-778")), metadata=PROCUREMENT
    )

    async def trail(key: str, count: int):
        answer = await stub.QueryAuditTrail(
            cp.QueryAuditTrailRequest(object_type="purchase_order", object_key=key), metadata=OPS
        )
        return answer.entries if len(answer.entries) >= count else None

    [refusal] = await eventually(lambda: trail("PO-777", 1))
    assert (refusal.actor, refusal.action, refusal.outcome) == ("erp", "refusal", "denied")
    [write] = await eventually(lambda: trail("PO-778", 1))
    assert (write.actor, write.action, write.outcome) == ("procurement", "write", "allowed")
    assert write.object.version == accepted.version
    assert write.reason == "syncgov.po.v1.PurchaseOrderPublished"
    assert write.source == f"{po.runtime.namespace.stream('po')}:{accepted.stream_sequence}"
    await asyncio.sleep(0.3)  # a duplicate entry, if any, would be chained by now
    assert len(await trail("PO-777", 0)) == 1

    raised = await raised_exceptions(js, po.runtime.namespace)
    assert [r.object.object_key for r in raised] == ["PO-777"]

    chain = AuditChain(js, control.runtime.namespace)
    entries = [entry async for entry in chain.entries()]
    verdict = verify(entries)
    assert verdict.intact
    assert verdict.entries == len(entries) >= 2
