"""SupplierNormalizationService: proto <-> registry, outcomes -> events and exceptions. Rules live in domain.py."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from libs.policy.engine import Policy
from libs.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from libs.runtime.exception_reporter import ExceptionReporter, severity
from libs.runtime.identity import current_caller
from libs.runtime.paging import page_size
from services.supplier_normalization import domain, events, mapping
from services.supplier_normalization.store import SupplierStore
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2
from syncgov.supplier.v1 import supplier_pb2, supplier_service_pb2, supplier_service_pb2_grpc

log = logging.getLogger(__name__)
pb = supplier_service_pb2


class SupplierServicer(supplier_service_pb2_grpc.SupplierNormalizationServiceServicer):
    def __init__(
        self,
        registry: domain.SupplierRegistry,
        store: SupplierStore,
        exceptions: ExceptionReporter,
        policy: Callable[[], Policy],
    ) -> None:
        self._registry = registry
        self._store = store
        self._exceptions = exceptions
        self._policy = policy
        self._suspicions: dict[tuple[str, str], supplier_pb2.DuplicateCandidate] = {}
        # Matching depends on what came before: one placement at a time (a single writer per stream).
        self._lock = asyncio.Lock()

    async def rebuild(self) -> None:
        count = 0
        async for event in self._store.all_events():
            events.replay(self._registry, self._suspicions, event)
            count += 1
        log.info("rebuilt %s golden suppliers from %s events", len(self._registry), count)

    async def SubmitSupplierRecord(self, request: pb.SubmitSupplierRecordRequest, context):
        record = request.record
        _require(record.local_id, "record.local_id")
        _require(record.legal_name, "record.legal_name")
        async with self._lock:
            submission = self._registry.submit(mapping.record_from_proto(record))
            view = self._registry.view(submission.golden_id)
            supplier = mapping.golden_to_proto(view, self._policy().revision)
            response = pb.SubmitSupplierRecordResponse(
                supplier=supplier,
                created=submission.created,
                outcome=mapping.OUTCOMES[submission.outcome]
                if submission.changed
                else supplier_pb2.MATCH_OUTCOME_UNCHANGED,
                corrections=mapping.corrections_to_proto(submission.normalized.corrections),
                findings=mapping.findings_to_proto(submission.normalized.findings),
                suspected_duplicates=[mapping.candidate_to_proto(c) for c in submission.suspected],
            )
            if not submission.changed:
                return response  # the same record again: nothing to write
            caller = current_caller().system
            key = request.idempotency_key or f"{record.source_system}:supplier:{record.local_id}:v{supplier.version}"
            await self._store.append(
                events.supplier_upserted(
                    supplier,
                    mapping.record_to_proto(submission.normalized.record),
                    response.outcome,
                    list(response.suspected_duplicates),
                    idempotency_key=key,
                    caller=caller,
                )
            )
            for candidate in response.suspected_duplicates:
                self._suspicions[(supplier.supplier_id, candidate.supplier_id)] = candidate
                await self._raise_suspicion(supplier, candidate)
            return response

    async def _raise_suspicion(self, supplier: supplier_pb2.Supplier, candidate) -> None:
        route = self._policy().route("duplicate_supplier_suspected")
        await self._exceptions.raise_exception(
            exception_pb2.EXCEPTION_TYPE_DUPLICATE_SUPPLIER_SUSPECTED,
            severity(route.severity, default=exception_pb2.SEVERITY_LOW),
            types_pb2.ObjectRef(
                object_type=domain.OBJECT_TYPE, object_key=supplier.supplier_id, version=supplier.version
            ),
            f"supplier {supplier.supplier_id} ({supplier.legal_name}) may be {candidate.supplier_id}: "
            f"score {candidate.score:.1f} ({', '.join(candidate.reasons)})",
            evidence=[
                json.dumps(
                    {"candidate": candidate.supplier_id, "score": candidate.score, "reasons": list(candidate.reasons)}
                )
            ],
            discriminator=candidate.supplier_id,
            policy_revision=self._policy().revision,
        )

    async def GetSupplier(self, request: pb.GetSupplierRequest, context) -> pb.GetSupplierResponse:
        return pb.GetSupplierResponse(supplier=self._golden(request.supplier_id))

    async def ResolveSupplier(self, request: pb.ResolveSupplierRequest, context) -> pb.ResolveSupplierResponse:
        _require(request.system, "system")
        _require(request.local_id, "local_id")
        golden = self._registry.golden_of(request.system, request.local_id)
        if golden is None:
            raise NotFound(
                f"{request.system} has no supplier {request.local_id!r} known to syncgov", reason="SUPPLIER_NOT_FOUND"
            )
        return pb.ResolveSupplierResponse(supplier=self._golden(golden))

    async def FindDuplicateSuppliers(self, request: pb.FindDuplicateSuppliersRequest, context):
        result = self._registry.candidates(mapping.record_from_proto(request.record))
        return pb.FindDuplicateSuppliersResponse(candidates=[mapping.candidate_to_proto(c) for c in result.candidates])

    async def MergeSuppliers(self, request: pb.MergeSuppliersRequest, context) -> pb.MergeSuppliersResponse:
        supplier = await self._merge(request.surviving_supplier_id, request.merged_supplier_id, request.reason)
        return pb.MergeSuppliersResponse(supplier=supplier)

    async def DecideDuplicateCandidate(self, request: pb.DecideDuplicateCandidateRequest, context):
        _require(request.reason, "reason")
        first, second = self._golden(request.supplier_id), self._golden(request.other_supplier_id)
        async with self._lock:
            caller = current_caller().system
            key = f"decision:{first.supplier_id}:{second.supplier_id}:{request.same_supplier}"
            await self._store.append(
                events.duplicate_decided(
                    first.supplier_id,
                    second.supplier_id,
                    request.same_supplier,
                    request.reason,
                    idempotency_key=key,
                    caller=caller,
                )
            )
            for pair in [(first.supplier_id, second.supplier_id), (second.supplier_id, first.supplier_id)]:
                self._suspicions.pop(pair, None)
            if not request.same_supplier:
                self._registry.keep_apart(first.supplier_id, second.supplier_id)
                return pb.DecideDuplicateCandidateResponse(supplier=first)
        supplier = await self._merge(second.supplier_id, first.supplier_id, request.reason)
        return pb.DecideDuplicateCandidateResponse(supplier=supplier)

    async def ListDuplicateCandidates(self, request: pb.ListDuplicateCandidatesRequest, context):
        size = page_size(request.page_size)
        pairs = [
            pb.SuspectedPair(supplier_id=golden, candidate=candidate)
            for (golden, _), candidate in list(self._suspicions.items())[:size]
        ]
        return pb.ListDuplicateCandidatesResponse(pairs=pairs)

    async def ChangeSupplierStatus(self, request: pb.ChangeSupplierStatusRequest, context):
        status = mapping.STATUS_NAMES.get(request.status)
        if status is None or status == domain.MERGED:
            raise InvalidArgument(
                "status must be ACTIVE, BLOCKED or INACTIVE",
                violations=[FieldViolation("status", "must be ACTIVE, BLOCKED or INACTIVE")],
            )
        _require(request.reason, "reason")
        current = self._golden(request.supplier_id)
        async with self._lock:
            self._registry.set_status(current.supplier_id, status)
            supplier = self._golden(current.supplier_id)
            await self._store.append(
                events.supplier_status_changed(
                    supplier.supplier_id,
                    supplier.version,
                    request.status,
                    request.reason,
                    idempotency_key=f"status:{supplier.supplier_id}:v{supplier.version}",
                    caller=current_caller().system,
                )
            )
        return pb.ChangeSupplierStatusResponse(supplier=supplier)

    async def _merge(self, surviving_id: str, merged_id: str, reason: str) -> supplier_pb2.Supplier:
        surviving, merged = self._golden(surviving_id), self._golden(merged_id)
        if surviving.supplier_id == merged.supplier_id:
            raise FailedPrecondition(
                f"{merged_id} is already part of {surviving.supplier_id}",
                subject=f"supplier/{merged_id}",
                reason="ALREADY_MERGED",
            )
        async with self._lock:
            self._registry.merge(surviving.supplier_id, merged.supplier_id)
            supplier = self._golden(surviving.supplier_id)
            await self._store.append(
                events.supplier_merged(
                    supplier,
                    merged.supplier_id,
                    idempotency_key=f"merge:{merged.supplier_id}:{surviving.supplier_id}",
                    caller=current_caller().system,
                )
            )
        return supplier

    def _golden(self, supplier_id: str) -> supplier_pb2.Supplier:
        _require(supplier_id, "supplier_id")
        try:
            view = self._registry.view(supplier_id)
        except KeyError:
            raise NotFound(f"no golden supplier {supplier_id!r}", reason="SUPPLIER_NOT_FOUND") from None
        return mapping.golden_to_proto(view, self._policy().revision)


def _require(value: str, field: str) -> None:
    if not value.strip():
        raise InvalidArgument(f"{field} is required", violations=[FieldViolation(field, "is required")])
