"""What supplier-normalization publishes, on each golden record's own subject, and how it replays them.

``<ns>.supplier.<golden id>.upserted`` carries the whole golden record *and* the normalized source
record that changed it, so replaying the stream in order rebuilds the registry (matching index,
cross-references, open suspicions) exactly: the stream is the source of truth, memory is a cache.
"""

from __future__ import annotations

from libs.runtime.events import Event, StoredEvent
from services.supplier_normalization import domain, mapping
from syncgov.supplier.v1 import events_pb2, supplier_pb2

DOMAIN = "supplier"
UPSERTED, MERGED, DECIDED = "upserted", "merged", "decided"
# Status changes are named for what happened: <ns>.supplier.<id>.deactivated | blocked | reactivated.
STATUS_EVENT_NAMES = {
    supplier_pb2.SUPPLIER_STATUS_INACTIVE: "deactivated",
    supplier_pb2.SUPPLIER_STATUS_BLOCKED: "blocked",
    supplier_pb2.SUPPLIER_STATUS_ACTIVE: "reactivated",
}


def supplier_upserted(
    supplier: supplier_pb2.Supplier,
    source: supplier_pb2.SupplierRecord,
    outcome: int,
    suspected: list[supplier_pb2.DuplicateCandidate],
    *,
    idempotency_key: str,
    caller: str,
) -> Event:
    payload = events_pb2.SupplierUpserted(
        supplier=supplier, changed_fields=[], source_record=source, outcome=outcome, suspected_duplicates=suspected
    )
    return _event(supplier.supplier_id, supplier.version, UPSERTED, payload, idempotency_key, caller)


def supplier_merged(supplier: supplier_pb2.Supplier, merged_id: str, *, idempotency_key: str, caller: str) -> Event:
    payload = events_pb2.SupplierMerged(
        surviving_supplier_id=supplier.supplier_id, merged_supplier_id=merged_id, supplier=supplier
    )
    return _event(supplier.supplier_id, supplier.version, MERGED, payload, idempotency_key, caller)


def supplier_status_changed(
    supplier_id: str, version: int, status: int, reason: str, *, idempotency_key: str, caller: str
) -> Event:
    payload = events_pb2.SupplierStatusChanged(supplier_id=supplier_id, status=status, reason=reason)
    return _event(supplier_id, version, STATUS_EVENT_NAMES[status], payload, idempotency_key, caller)


def duplicate_decided(first: str, second: str, same: bool, reason: str, *, idempotency_key: str, caller: str) -> Event:
    payload = events_pb2.SupplierDuplicateDecided(
        supplier_id=first, other_supplier_id=second, same_supplier=same, reason=reason
    )
    return _event(first, 0, DECIDED, payload, idempotency_key, caller)


def _event(key: str, version: int, name: str, payload, idempotency_key: str, caller: str) -> Event:
    return Event(
        domain=DOMAIN,
        object_type=domain.OBJECT_TYPE,
        object_key=key,
        object_version=version,
        name=name,
        payload=payload,
        idempotency_key=idempotency_key,
        source_system=caller,
    )


def replay(registry: domain.SupplierRegistry, suspicions: dict, event: StoredEvent) -> None:
    """Apply one stored event to the in-memory registry (start-up rebuild)."""
    payload = event.envelope.payload
    if payload.Is(events_pb2.SupplierUpserted.DESCRIPTOR):
        upserted = event.unpack(events_pb2.SupplierUpserted)
        if not upserted.HasField("source_record"):
            return  # not written by this service (every upsert it writes carries its source record)
        golden = upserted.supplier.supplier_id
        registry.submit(mapping.record_from_proto(upserted.source_record), golden_id=golden)
        for candidate in upserted.suspected_duplicates:
            suspicions[(golden, candidate.supplier_id)] = candidate
    elif payload.Is(events_pb2.SupplierMerged.DESCRIPTOR):
        merged = event.unpack(events_pb2.SupplierMerged)
        registry.merge(merged.surviving_supplier_id, merged.merged_supplier_id)
    elif payload.Is(events_pb2.SupplierStatusChanged.DESCRIPTOR):
        changed = event.unpack(events_pb2.SupplierStatusChanged)
        registry.set_status(changed.supplier_id, mapping.STATUS_NAMES[changed.status])
    elif payload.Is(events_pb2.SupplierDuplicateDecided.DESCRIPTOR):
        decided = event.unpack(events_pb2.SupplierDuplicateDecided)
        if not decided.same_supplier:
            registry.keep_apart(decided.supplier_id, decided.other_supplier_id)
        for pair in [
            (decided.supplier_id, decided.other_supplier_id),
            (decided.other_supplier_id, decided.supplier_id),
        ]:
            suspicions.pop(pair, None)
