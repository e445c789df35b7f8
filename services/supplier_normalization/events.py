"""What supplier-normalization publishes, on each golden record's own subject, and how it replays them.

``<ns>.supplier.<golden id>.upserted`` carries the whole golden record *and* the normalized source
record that changed it, so replaying the stream in order rebuilds the registry (matching index,
cross-references, open suspicions) exactly: the stream is the source of truth, memory is a cache.
"""

from __future__ import annotations

from google.protobuf.message import Message

from libs.policy.catalog import message_descriptor
from libs.runtime.events import Event, StoredEvent
from services.supplier_normalization import domain, mapping
from syncgov.supplier.v1 import events_pb2, supplier_pb2

DOMAIN = "supplier"
Suspicions = dict[tuple[str, str], supplier_pb2.DuplicateCandidate]
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
    outcome: supplier_pb2.MatchOutcome,
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
    supplier_id: str,
    version: int,
    status: supplier_pb2.SupplierStatus,
    reason: str,
    *,
    idempotency_key: str,
    caller: str,
) -> Event:
    payload = events_pb2.SupplierStatusChanged(supplier_id=supplier_id, status=status, reason=reason)
    return _event(supplier_id, version, STATUS_EVENT_NAMES[status], payload, idempotency_key, caller)


def duplicate_decided(first: str, second: str, same: bool, reason: str, *, idempotency_key: str, caller: str) -> Event:
    payload = events_pb2.SupplierDuplicateDecided(
        supplier_id=first, other_supplier_id=second, same_supplier=same, reason=reason
    )
    return _event(first, 0, DECIDED, payload, idempotency_key, caller)


def _event(key: str, version: int, name: str, payload: Message, idempotency_key: str, caller: str) -> Event:
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


def change_of(event: Event, placement: domain.Placement | None = None) -> domain.SupplierChange:
    """The change an event built here stands for (what the command handler appends and the registry folds)."""
    kind = {UPSERTED: domain.UPSERTED, MERGED: domain.MERGED_EVENT, DECIDED: domain.DECIDED}.get(
        event.name, domain.STATUS
    )
    status = ""
    if kind == domain.STATUS:
        assert isinstance(event.payload, events_pb2.SupplierStatusChanged)
        status = mapping.STATUS_NAMES[event.payload.status]
    return domain.SupplierChange(
        kind,
        event.object_key,
        event.object_version,
        event.idempotency_key,
        status,
        event.payload,
        event.source_system,
        placement,
    )


def encode(golden_id: str, change: domain.SupplierChange) -> Event:
    """The event to publish for a change of golden record ``golden_id`` (its payload is already built)."""
    payload = change.payload
    assert isinstance(payload, Message)  # the domain holds the contract form, opaque to it
    if change.kind == domain.STATUS:
        name = STATUS_EVENT_NAMES[mapping.STATUSES[change.status]]
    else:
        name = {domain.UPSERTED: UPSERTED, domain.MERGED_EVENT: MERGED, domain.DECIDED: DECIDED}[change.kind]
    return _event(golden_id, change.version, name, payload, change.idempotency_key, change.source_system)


def decode(stored: StoredEvent) -> domain.SupplierChange | None:
    """The change a stored supplier event holds (None for what this service does not write)."""
    envelope = stored.envelope
    payload = envelope.payload
    key, version = envelope.object_key, envelope.object_version
    if payload.Is(message_descriptor(events_pb2.SupplierUpserted)):
        upserted = stored.unpack(events_pb2.SupplierUpserted)
        if not upserted.HasField("source_record"):
            return None  # not written by this service (every upsert it writes carries its source record)
        return domain.SupplierChange(domain.UPSERTED, key, version, envelope.idempotency_key, payload=upserted)
    if payload.Is(message_descriptor(events_pb2.SupplierMerged)):
        merged = stored.unpack(events_pb2.SupplierMerged)
        return domain.SupplierChange(domain.MERGED_EVENT, key, version, envelope.idempotency_key, payload=merged)
    if payload.Is(message_descriptor(events_pb2.SupplierStatusChanged)):
        changed = stored.unpack(events_pb2.SupplierStatusChanged)
        status = mapping.STATUS_NAMES[changed.status]
        return domain.SupplierChange(domain.STATUS, key, version, envelope.idempotency_key, status, changed)
    if payload.Is(message_descriptor(events_pb2.SupplierDuplicateDecided)):
        decided = stored.unpack(events_pb2.SupplierDuplicateDecided)
        return domain.SupplierChange(domain.DECIDED, key, version, envelope.idempotency_key, payload=decided)
    return None


def apply(registry: domain.SupplierRegistry, suspicions: Suspicions, change: domain.SupplierChange) -> None:
    """Fold one acknowledged change into the registry and the open suspicions: after every append, and for
    every stored event at start, so the registry is the same whether or not the process restarted."""
    payload = change.payload
    if isinstance(payload, events_pb2.SupplierUpserted):
        golden = payload.supplier.supplier_id
        if change.placement is not None:  # planned here, against this very registry: apply it as planned
            registry.apply(change.placement)
        else:
            registry.submit(mapping.record_from_proto(payload.source_record), golden_id=golden)
        registry.record_version(golden, payload.supplier.version)
        for candidate in payload.suspected_duplicates:
            suspicions[(golden, candidate.supplier_id)] = candidate
    elif isinstance(payload, events_pb2.SupplierMerged):
        registry.merge(payload.surviving_supplier_id, payload.merged_supplier_id)
        registry.record_version(payload.surviving_supplier_id, payload.supplier.version)
    elif isinstance(payload, events_pb2.SupplierStatusChanged):
        registry.set_status(payload.supplier_id, change.status)
        registry.record_version(payload.supplier_id, change.version)
    elif isinstance(payload, events_pb2.SupplierDuplicateDecided):
        if not payload.same_supplier:
            registry.keep_apart(payload.supplier_id, payload.other_supplier_id)
        for pair in [
            (payload.supplier_id, payload.other_supplier_id),
            (payload.other_supplier_id, payload.supplier_id),
        ]:
            suspicions.pop(pair, None)
