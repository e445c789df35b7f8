"""SupplierNormalizationService: proto <-> registry, outcomes -> events and exceptions. Rules live in domain.py."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import grpc

from libs.policy.engine import Policy
from libs.runtime.decider import Refusal
from libs.runtime.errors import FieldViolation, InvalidArgument, NotFound
from libs.runtime.exception_reporter import ExceptionReporter, severity
from libs.runtime.identity import current_caller
from libs.runtime.paging import page_size
from libs.runtime.refusals import refusal_error
from services.supplier_normalization import domain, events, mapping
from services.supplier_normalization.normalize import normalize
from services.supplier_normalization.store import GoldenCommands, RegistryProjection
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2
from syncgov.supplier.v1 import supplier_pb2, supplier_service_pb2, supplier_service_pb2_grpc

log = logging.getLogger(__name__)
pb = supplier_service_pb2


class SupplierServicer(supplier_service_pb2_grpc.SupplierNormalizationServiceServicer):
    def __init__(
        self,
        projection: RegistryProjection,
        commands: GoldenCommands,
        exceptions: ExceptionReporter,
        policy: Callable[[], Policy],
    ) -> None:
        self._projection = projection
        self._registry = projection.registry
        self._suspicions = projection.suspicions
        self._commands = commands
        self._exceptions = exceptions
        self._policy = policy
        # Matching depends on what came before: one placement at a time (a single writer per stream).
        self._lock = asyncio.Lock()

    async def _append(self, change: domain.SupplierChange, *, creates: bool = False) -> None:
        """Run one change through the command handler; the registry follows once the stream acknowledged it."""
        try:
            result = await self._commands.run(
                change.golden_id, partial(domain.decide_change, change, creates=creates), assume_new=creates
            )
        except BaseException:
            self._projection.behind = True  # the append may have landed unacknowledged: read before deciding again
            raise
        if isinstance(result, Refusal):
            if result.reason in ("GOLDEN_ID_TAKEN", "REGISTRY_BEHIND_STREAM"):
                # The stream holds what this registry has not folded (an append whose acknowledgment was lost):
                # fold it, and let the caller plan once more on the registry as the stream says it is.
                await self._projection.catch_up()
                raise _RegistryWasBehind()
            raise refusal_error(result)

    async def SubmitSupplierRecord(
        self, request: pb.SubmitSupplierRecordRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SubmitSupplierRecordResponse:
        record = request.record
        _require(record.local_id, "record.local_id")
        _require(record.legal_name, "record.legal_name")
        try:
            return await self._submit(request)
        except _RegistryWasBehind:
            return await self._submit(request)  # planned again on the caught-up registry

    async def _submit(self, request: pb.SubmitSupplierRecordRequest) -> pb.SubmitSupplierRecordResponse:
        record = request.record
        async with self._lock:
            await self._projection.catch_up_if_behind()  # decide on everything the stream holds
            placement = self._registry.plan(normalize(mapping.record_from_proto(record)))
            supplier = mapping.golden_to_proto(self._registry.preview(placement), self._policy().revision)
            response = pb.SubmitSupplierRecordResponse(
                supplier=supplier,
                created=placement.created,
                outcome=mapping.OUTCOMES[placement.outcome]
                if placement.changed
                else supplier_pb2.MATCH_OUTCOME_UNCHANGED,
                corrections=mapping.corrections_to_proto(placement.normalized.corrections),
                findings=mapping.findings_to_proto(placement.normalized.findings),
                suspected_duplicates=[mapping.candidate_to_proto(c) for c in placement.suspected],
            )
            if not placement.changed:
                return response  # the same record again: nothing to write
            key = request.idempotency_key or f"{record.source_system}:supplier:{record.local_id}:v{supplier.version}"
            event = events.supplier_upserted(
                supplier,
                mapping.record_to_proto(placement.normalized.record),
                response.outcome,
                list(response.suspected_duplicates),
                idempotency_key=key,
                caller=current_caller().system,
            )
            await self._append(events.change_of(event, placement), creates=placement.created)
        for candidate in response.suspected_duplicates:
            await self._raise_suspicion(supplier, candidate)
        return response

    async def _raise_suspicion(
        self, supplier: supplier_pb2.Supplier, candidate: supplier_pb2.DuplicateCandidate
    ) -> None:
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

    async def GetSupplier(
        self, request: pb.GetSupplierRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetSupplierResponse:
        return pb.GetSupplierResponse(supplier=self._golden(request.supplier_id))

    async def ResolveSupplier(
        self, request: pb.ResolveSupplierRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ResolveSupplierResponse:
        _require(request.system, "system")
        _require(request.local_id, "local_id")
        golden = self._registry.golden_of(request.system, request.local_id)
        if golden is None:
            raise NotFound(
                f"{request.system} has no supplier {request.local_id!r} known to syncgov", reason="SUPPLIER_NOT_FOUND"
            )
        return pb.ResolveSupplierResponse(supplier=self._golden(golden))

    async def FindDuplicateSuppliers(
        self, request: pb.FindDuplicateSuppliersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.FindDuplicateSuppliersResponse:
        result = self._registry.candidates(mapping.record_from_proto(request.record))
        return pb.FindDuplicateSuppliersResponse(candidates=[mapping.candidate_to_proto(c) for c in result.candidates])

    async def MergeSuppliers(
        self, request: pb.MergeSuppliersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MergeSuppliersResponse:
        supplier = await self._merge(request.surviving_supplier_id, request.merged_supplier_id, request.reason)
        return pb.MergeSuppliersResponse(supplier=supplier)

    async def DecideDuplicateCandidate(
        self, request: pb.DecideDuplicateCandidateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DecideDuplicateCandidateResponse:
        _require(request.reason, "reason")
        if request.supplier_id == request.other_supplier_id:
            raise InvalidArgument(
                "a supplier is not a candidate duplicate of itself",
                violations=[FieldViolation("other_supplier_id", "must name another supplier than supplier_id")],
            )
        first, second = self._golden(request.supplier_id), self._golden(request.other_supplier_id)
        merged = domain.already_one(
            request.supplier_id, request.other_supplier_id, first.supplier_id, second.supplier_id
        )
        if merged is not None:
            raise refusal_error(merged)
        async with self._lock:
            await self._projection.catch_up_if_behind()  # decide on everything the stream holds
            key = f"decision:{first.supplier_id}:{second.supplier_id}:{request.same_supplier}"
            event = events.duplicate_decided(
                first.supplier_id,
                second.supplier_id,
                request.same_supplier,
                request.reason,
                idempotency_key=key,
                caller=current_caller().system,
            )
            await self._append(events.change_of(event))
            if not request.same_supplier:
                return pb.DecideDuplicateCandidateResponse(supplier=first)
        supplier = await self._merge(second.supplier_id, first.supplier_id, request.reason)
        return pb.DecideDuplicateCandidateResponse(supplier=supplier)

    async def ListDuplicateCandidates(
        self, request: pb.ListDuplicateCandidatesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListDuplicateCandidatesResponse:
        size = page_size(request.page_size)
        pairs = [
            pb.SuspectedPair(supplier_id=golden, candidate=candidate)
            for (golden, _), candidate in list(self._suspicions.items())[:size]
        ]
        return pb.ListDuplicateCandidatesResponse(pairs=pairs)

    async def ChangeSupplierStatus(
        self, request: pb.ChangeSupplierStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ChangeSupplierStatusResponse:
        status = mapping.STATUS_NAMES.get(request.status)
        if status is None or status == domain.MERGED:
            raise InvalidArgument(
                "status must be ACTIVE, BLOCKED or INACTIVE",
                violations=[FieldViolation("status", "must be ACTIVE, BLOCKED or INACTIVE")],
            )
        _require(request.reason, "reason")
        async with self._lock:
            await self._projection.catch_up_if_behind()  # decide on everything the stream holds
            current = self._golden(request.supplier_id)
            version = current.version + 1
            event = events.supplier_status_changed(
                current.supplier_id,
                version,
                request.status,
                request.reason,
                idempotency_key=f"status:{current.supplier_id}:v{version}",
                caller=current_caller().system,
            )
            await self._append(events.change_of(event))
            return pb.ChangeSupplierStatusResponse(supplier=self._golden(current.supplier_id))

    async def _merge(self, surviving_id: str, merged_id: str, reason: str) -> supplier_pb2.Supplier:
        surviving, merged = self._golden(surviving_id), self._golden(merged_id)
        refusal = domain.already_one(merged_id, surviving_id, merged.supplier_id, surviving.supplier_id)
        if refusal is not None:
            raise refusal_error(refusal)
        async with self._lock:
            await self._projection.catch_up_if_behind()  # decide on everything the stream holds
            preview = mapping.golden_to_proto(
                self._registry.preview_merge(surviving.supplier_id, merged.supplier_id), self._policy().revision
            )
            event = events.supplier_merged(
                preview,
                merged.supplier_id,
                idempotency_key=f"merge:{merged.supplier_id}:{surviving.supplier_id}",
                caller=current_caller().system,
            )
            await self._append(events.change_of(event))
            return self._golden(surviving.supplier_id)

    def _golden(self, supplier_id: str) -> supplier_pb2.Supplier:
        _require(supplier_id, "supplier_id")
        try:
            view = self._registry.view(supplier_id)
        except KeyError:
            raise NotFound(f"no golden supplier {supplier_id!r}", reason="SUPPLIER_NOT_FOUND") from None
        return mapping.golden_to_proto(view, self._policy().revision)


class _RegistryWasBehind(Exception):
    """The registry had not folded everything the stream holds; it has now, and the command is planned again."""


def _require(value: str, field: str) -> None:
    if not value.strip():
        raise InvalidArgument(f"{field} is required", violations=[FieldViolation(field, "is required")])
