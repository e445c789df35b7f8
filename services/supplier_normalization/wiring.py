"""supplier-normalization's composition root."""

from __future__ import annotations

from libs.runtime.access import AccessRule, Read, Report, Write
from libs.runtime.app import GrpcService, Runtime, Service
from libs.runtime.streams import AUDIT_INBOX, EXCEPTION, SUPPLIER
from services.supplier_normalization.domain import SupplierRegistry
from services.supplier_normalization.matching import Thresholds
from services.supplier_normalization.servicer import SupplierServicer
from services.supplier_normalization.settings import Settings
from services.supplier_normalization.store import RegistryProjection, golden_commands
from syncgov.supplier.v1 import supplier_service_pb2, supplier_service_pb2_grpc

ACCESS: dict[str, AccessRule] = {
    "SubmitSupplierRecord": Report("supplier", source="record.source_system", key="record.local_id"),
    "GetSupplier": Read("supplier"),
    "ResolveSupplier": Read("supplier"),
    "FindDuplicateSuppliers": Read("supplier"),
    "ListDuplicateCandidates": Read("supplier"),
    "MergeSuppliers": Write("supplier", key="surviving_supplier_id"),
    "DecideDuplicateCandidate": Write("supplier", key="supplier_id"),
    "ChangeSupplierStatus": Write("supplier", key="supplier_id"),
}


def wire(rt: Runtime[Settings]) -> Service:
    def owner_of(field: str) -> str:
        return rt.policy.current.ownership_of("supplier", field).system_of_record

    thresholds = Thresholds(rt.settings.supplier_merge_score, rt.settings.supplier_suspect_score)
    projection = RegistryProjection(SupplierRegistry(owner_of, thresholds), rt.reader)
    commands = golden_commands(rt.publisher, rt.reader, projection)
    servicer = SupplierServicer(projection, commands, rt.exceptions, lambda: rt.policy.current)
    return Service(
        grpc_services=[
            GrpcService(
                supplier_service_pb2.DESCRIPTOR.services_by_name["SupplierNormalizationService"],
                supplier_service_pb2_grpc.add_SupplierNormalizationServiceServicer_to_server,
                servicer,
                access=ACCESS,
            )
        ],
        streams=(SUPPLIER, EXCEPTION, AUDIT_INBOX),
        startup=[projection.rebuild],
    )
