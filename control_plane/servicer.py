"""ControlPlaneService: proto <-> policy and audit; decisions live in libs/policy and domain.py."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime

from control_plane import domain, reconciliation, tracking
from control_plane.store import ControlPlaneStore, PolicyCommands, revision_of
from control_plane.tracker import Stuck, WorkflowTracker, breach_exception_id, breach_ref
from control_plane.workflows import Workflows
from libs.policy.engine import unified_diff
from libs.runtime.audit import AuditRecorder
from libs.runtime.decider import Refusal
from libs.runtime.errors import FieldViolation, InvalidArgument, NotFound, Unavailable, Unimplemented
from libs.runtime.identity import current_caller
from libs.runtime.paging import decode_page_cursor, decode_page_token, encode_page_cursor, encode_page_token, page_size
from libs.runtime.policy_store import PolicyView
from libs.runtime.refusals import refusal_error
from syncgov.common.v1 import types_pb2
from syncgov.controlplane.v1 import controlplane_pb2, controlplane_service_pb2, controlplane_service_pb2_grpc

pb = controlplane_service_pb2
POLICY_KEY = "policy"  # one object: the policy in force
POLICY_REVISIONS_LISTING = "controlplane.policy_revisions"  # position: the revisions listed are below it
AUDIT_TRAIL_LISTING = "controlplane.audit_trail"  # position: the entries listed come after this sequence
STUCK_LISTING = "controlplane.stuck_workflows"  # cursor: the listing position of the last workflow listed


class ControlPlaneServicer(controlplane_service_pb2_grpc.ControlPlaneServiceServicer):
    def __init__(
        self,
        store: ControlPlaneStore,
        commands: PolicyCommands,
        policy: PolicyView,
        audit: AuditRecorder,
        workflows: Workflows | None = None,
        tracker: WorkflowTracker | None = None,
        drift: reconciliation.DriftReconciler | None = None,
    ) -> None:
        self._store = store
        self._commands = commands
        self._policy = policy
        self._audit = audit
        self._workflows = workflows
        self._tracker = tracker
        self._drift = drift

    async def GetWorkflow(self, request: pb.GetWorkflowRequest, context) -> pb.GetWorkflowResponse:
        key = request.workflow_key.strip()
        if not key:
            raise InvalidArgument(
                "workflow_key is required: the purchase order id",
                violations=[FieldViolation("workflow_key", "is required")],
                reason="WORKFLOW_KEY_REQUIRED",
            )
        if self._workflows is None:
            raise NotFound("workflows are not tracked by this process", reason="WORKFLOW_NOT_FOUND")
        workflow = await self._workflows.timeline(key)
        if workflow is None:
            raise NotFound(
                f"no workflow {key!r}: no purchase order, receipt, invoice or exception names it",
                reason="WORKFLOW_NOT_FOUND",
                metadata={"workflow_key": key},
            )
        if self._tracker is not None and self._tracker.caught_up and key in self._tracker.progress:
            workflow.state = self._tracker.progress[key].state
            workflow.breaches.extend(sla_breach(breach) for breach in self._tracker.breaches_of(key))
            workflow.stuck = bool(workflow.breaches)
        return pb.GetWorkflowResponse(workflow=workflow)

    async def ListStuckWorkflows(self, request: pb.ListStuckWorkflowsRequest, context) -> pb.ListStuckWorkflowsResponse:
        stage = request.stage.strip()
        if stage and stage not in tracking.STAGES:
            raise InvalidArgument(
                f"unknown stage {stage[:64]!r}; use one of {', '.join(tracking.STAGES)}",
                violations=[FieldViolation("stage", f"must be one of {', '.join(tracking.STAGES)}")],
                reason="UNKNOWN_STAGE",
            )
        size = page_size(request.page.page_size, default=20, maximum=200)
        after = _stuck_cursor(decode_page_cursor(STUCK_LISTING, request.page.page_token))
        if self._tracker is None or not self._tracker.caught_up:
            raise Unavailable("the workflow tracker is still reading the streams; retry shortly", reason="NOT_READY")
        # In a fixed order (a digest of the workflow key), so paging neither skips nor repeats a workflow however
        # its breaches change between pages; each workflow carries its breaches' ages for a reader to sort by.
        found = sorted(
            (
                (listing_position(each.progress.key), each)
                for each in self._tracker.stuck()
                if not stage or any(b.waiting.stage == stage for b in each.breaches)
            ),
            key=lambda positioned: positioned[0],
        )
        found = [(position, each) for position, each in found if after is None or position > after]
        page = [each for _, each in found[:size]]
        token = encode_page_cursor(STUCK_LISTING, found[size - 1][0]) if len(found) > size else ""
        return pb.ListStuckWorkflowsResponse(
            workflows=[stuck_workflow(each) for each in page], page_info=types_pb2.PageInfo(next_page_token=token)
        )

    async def ReportSystemState(self, request: pb.ReportSystemStateRequest, context) -> pb.ReportSystemStateResponse:
        if self._drift is None:
            raise Unimplemented("drift is not reconciled by this process", reason="DRIFT_NOT_RECONCILED")
        return reconciliation.response_of(await self._drift.report(request, self._policy.current))

    async def ValidatePolicy(self, request: pb.ValidatePolicyRequest, context) -> pb.ValidatePolicyResponse:
        # Reading a large document takes a while: off the event loop, so health and other calls go on.
        plan = await asyncio.to_thread(domain.plan_apply, request.document_yaml, "", stored=False)
        return pb.ValidatePolicyResponse(valid=not plan.problems, problems=_problems(plan.problems))

    async def DiffPolicy(self, request: pb.DiffPolicyRequest, context) -> pb.DiffPolicyResponse:
        latest = await self._store.policies.latest()
        plan = await asyncio.to_thread(
            domain.plan_apply, request.document_yaml, self._in_force(latest), stored=latest is not None
        )
        if plan.problems:
            raise _invalid(plan.problems)
        return pb.DiffPolicyResponse(current_revision=latest.revision if latest else 0, unified_diff=plan.diff)

    async def ApplyPolicy(self, request: pb.ApplyPolicyRequest, context) -> pb.ApplyPolicyResponse:
        revision, diff = await self._apply(
            request.document_yaml, request.expected_revision, request.comment, dry_run=request.dry_run
        )
        response = pb.ApplyPolicyResponse(unified_diff=diff)
        if revision is not None:
            response.revision.CopyFrom(revision)
        return response

    async def GetPolicy(self, request: pb.GetPolicyRequest, context) -> pb.GetPolicyResponse:
        revision = await (
            self._store.policies.get(request.revision) if request.revision else self._store.policies.latest()
        )
        if revision is None:
            wanted = f"revision {request.revision}" if request.revision else "any revision"
            raise NotFound(
                f"{wanted} is not stored; services run the bootstrap policy (revision 0) until one is applied",
                reason="POLICY_REVISION_NOT_FOUND",
            )
        return pb.GetPolicyResponse(revision=revision)

    async def ListPolicyRevisions(
        self, request: pb.ListPolicyRevisionsRequest, context
    ) -> pb.ListPolicyRevisionsResponse:
        size = page_size(request.page.page_size, default=20, maximum=100)
        below = decode_page_token(POLICY_REVISIONS_LISTING, request.page.page_token)
        history = [r for r in await self._store.policies.history() if below is None or r.revision < below]
        page = history[:size]
        for revision in page:
            revision.ClearField("document_yaml")
        more = len(history) > size
        token = encode_page_token(POLICY_REVISIONS_LISTING, page[-1].revision) if more and page else ""
        return pb.ListPolicyRevisionsResponse(revisions=page, page_info=types_pb2.PageInfo(next_page_token=token))

    async def RollbackPolicy(self, request: pb.RollbackPolicyRequest, context) -> pb.RollbackPolicyResponse:
        target = await self._store.policies.get(request.target_revision)
        if target is None:
            raise NotFound(f"revision {request.target_revision} is not stored", reason="POLICY_REVISION_NOT_FOUND")
        comment = request.comment or f"roll back to revision {request.target_revision}"
        revision, _ = await self._apply(
            target.document_yaml, request.expected_revision, comment, dry_run=False, force_new=True
        )
        return pb.RollbackPolicyResponse(revision=revision)

    async def ExplainOwnership(self, request: pb.ExplainOwnershipRequest, context) -> pb.ExplainOwnershipResponse:
        problem = domain.field_problem(request.object_type, request.field)
        if problem is not None:
            bad_field = "object_type" if problem.startswith("unknown object type") else "field"
            raise InvalidArgument(problem, violations=[FieldViolation(bad_field, problem)], reason="UNKNOWN_FIELD")
        policy = self._policy.current
        if request.object_type not in policy.document.ownership:
            raise NotFound(
                f"policy revision {policy.revision} does not govern {request.object_type}", reason="OBJECT_NOT_GOVERNED"
            )
        ownership = policy.ownership_of(request.object_type, request.field)
        return pb.ExplainOwnershipResponse(
            decision=controlplane_pb2.OwnershipDecision(
                object_type=ownership.object_type,
                field=ownership.field,
                system_of_record=ownership.system_of_record,
                writers=ownership.writers,
                rule_path=ownership.rule_path,
                policy_revision=ownership.revision,
            )
        )

    async def QueryAuditTrail(self, request: pb.QueryAuditTrailRequest, context) -> pb.QueryAuditTrailResponse:
        if not request.object_type or not request.object_key:
            raise InvalidArgument(
                "object_type and object_key are required",
                violations=[
                    FieldViolation(name, "is required")
                    for name in ("object_type", "object_key")
                    if not getattr(request, name)
                ],
            )
        entries = await self._store.audit_for(request.object_type, request.object_key)
        size = page_size(request.page.page_size, default=20, maximum=100)
        after = decode_page_token(AUDIT_TRAIL_LISTING, request.page.page_token) or 0
        remaining = [e for e in entries if e.sequence > after]
        page = remaining[:size]
        token = encode_page_token(AUDIT_TRAIL_LISTING, page[-1].sequence) if len(remaining) > size else ""
        return pb.QueryAuditTrailResponse(entries=page, page_info=types_pb2.PageInfo(next_page_token=token))

    async def _apply(
        self, text: str, expected: int, comment: str, *, dry_run: bool, force_new: bool = False
    ) -> tuple[controlplane_pb2.PolicyRevision | None, str]:
        checked = await asyncio.to_thread(domain.plan_apply, text, "", stored=False)  # off the event loop
        if checked.problems:
            raise _invalid(checked.problems)
        caller = current_caller()
        bootstrap = self._policy.current
        command = domain.ApplyPolicy(
            text,
            expected,
            comment,
            caller.system,
            bootstrap.text if bootstrap.revision == 0 else "",
            force_new=force_new,
        )
        now = datetime.now(UTC)
        if dry_run:  # decided, never appended
            state = await self._commands.state(POLICY_KEY)
            decision = domain.decide_apply(command, state, now)
            if isinstance(decision, Refusal):
                raise refusal_error(decision)
            return None, unified_diff(domain.in_force(state, command.bootstrap_text), text)
        before = await self._commands.state(POLICY_KEY)
        result = await self._commands.run(POLICY_KEY, lambda state: domain.decide_apply(command, state, now))
        if isinstance(result, Refusal):
            raise refusal_error(result)
        if result.recorded is None:  # the same document is in force already
            return await self._store.policies.latest(), ""
        stored = result.recorded.event
        await self._audit.record(
            actor=caller.system,
            action="policy_change",
            object_ref=types_pb2.ObjectRef(object_type="policy", object_key="policy", version=stored.revision),
            outcome="applied",
            reason=comment or f"applied revision {stored.revision}",
            policy_revision=stored.revision,
        )
        return revision_of(stored), unified_diff(domain.in_force(before, command.bootstrap_text), text)

    def _in_force(self, latest: controlplane_pb2.PolicyRevision | None) -> str:
        """The document in force: the latest stored revision, else the bootstrap services run as revision 0."""
        if latest is not None:
            return latest.document_yaml
        bootstrap = self._policy.current
        return bootstrap.text if bootstrap.revision == 0 else ""


def sla_breach(breach: tracking.Breach) -> controlplane_pb2.SlaBreach:
    record = controlplane_pb2.SlaBreach(
        stage=breach.waiting.stage,
        object=breach_ref(breach.waiting),
        criticality=breach.criticality_used,
        exception_id=breach_exception_id(breach.waiting),
    )
    record.waiting_since.FromNanoseconds(breach.waiting.since_ns)
    record.limit.FromTimedelta(breach.limit)
    return record


def stuck_workflow(stuck: Stuck) -> controlplane_pb2.Workflow:
    return controlplane_pb2.Workflow(
        workflow_key=stuck.progress.key,
        stuck=True,
        state=stuck.progress.state,
        breaches=[sla_breach(breach) for breach in stuck.breaches],
    )


def listing_position(workflow_key: str) -> str:
    """Where a workflow stands in the stuck listing: a digest of its key (fixed, and short in a page token whatever
    the key's length or script)."""
    return hashlib.sha256(workflow_key.encode()).hexdigest()[:32]


def _stuck_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    if len(cursor) != 32 or not all(c in "0123456789abcdef" for c in cursor):
        raise InvalidArgument(
            "page_token is not a page token this server issued",
            violations=[FieldViolation("page.page_token", "is not a page token this server issued")],
            reason="INVALID_PAGE_TOKEN",
        )
    return cursor


def _problems(problems) -> list[controlplane_pb2.PolicyProblem]:
    return [controlplane_pb2.PolicyProblem(path=p.path, message=p.message) for p in problems]


def _invalid(problems) -> InvalidArgument:
    return InvalidArgument(
        f"the policy has {len(problems)} problem(s); nothing was applied",
        violations=[FieldViolation(f"document_yaml:{p.path}", p.message) for p in problems],
        reason="INVALID_POLICY",
    )
