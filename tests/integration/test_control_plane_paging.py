"""The control plane's listings page with opaque tokens; a token that is not theirs is INVALID_ARGUMENT."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from syncgov.common.v1 import types_pb2
from syncgov.controlplane.v1 import controlplane_service_pb2 as cp
from tests.integration.helpers import status_details

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DEFAULT = (Path(__file__).resolve().parents[2] / "deploy" / "policy" / "default.yaml").read_text()
OPS = (("x-syncgov-system", "ops-console"),)


async def test_policy_revisions_page_with_opaque_tokens_and_refuse_foreign_ones(governed_stack):
    _, stub, _, _ = governed_stack
    # three revisions: the default, then two rollbacks to it (a rollback always stores a new revision)
    await stub.ApplyPolicy(cp.ApplyPolicyRequest(document_yaml=DEFAULT, expected_revision=0), metadata=OPS)
    for expected in (1, 2):
        await stub.RollbackPolicy(cp.RollbackPolicyRequest(target_revision=1, expected_revision=expected), metadata=OPS)

    first = await stub.ListPolicyRevisions(
        cp.ListPolicyRevisionsRequest(page=types_pb2.PageRequest(page_size=2)), metadata=OPS
    )
    assert [r.revision for r in first.revisions] == [3, 2]
    token = first.page_info.next_page_token
    assert token
    assert not token.isdigit(), "page tokens are opaque"
    second = await stub.ListPolicyRevisions(
        cp.ListPolicyRevisionsRequest(page=types_pb2.PageRequest(page_size=2, page_token=token)), metadata=OPS
    )
    assert [r.revision for r in second.revisions] == [1]
    assert second.page_info.next_page_token == ""

    page = types_pb2.PageRequest
    refused_calls = [
        stub.ListPolicyRevisions(cp.ListPolicyRevisionsRequest(page=page(page_token="2")), metadata=OPS),
        stub.ListPolicyRevisions(cp.ListPolicyRevisionsRequest(page=page(page_token="garbage!")), metadata=OPS),
        # a policy-revisions token is no audit-trail token
        stub.QueryAuditTrail(
            cp.QueryAuditTrailRequest(object_type="policy", object_key="policy", page=page(page_token=token)),
            metadata=OPS,
        ),
    ]
    for call in refused_calls:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [bad_request] = [d for d in status_details(failure.value) if isinstance(d, error_details_pb2.BadRequest)]
        assert [v.field for v in bad_request.field_violations] == ["page.page_token"]
