"""po-publication's storage: the PO stream (source of truth) and its Valkey keyspace ``<ns>:po-publication:``."""

from __future__ import annotations

from libs.runtime.events import Event, EventPublisher, EventReader, Published, StoredEvent
from libs.runtime.idempotency import IdempotencyStore
from services.po_publication.events import DOCUMENT_EVENTS, DOMAIN


class PurchaseOrderStore:
    def __init__(self, publisher: EventPublisher, reader: EventReader, idempotency: IdempotencyStore) -> None:
        self._publisher = publisher
        self._reader = reader
        self.idempotency = idempotency

    async def append(self, event: Event, *, expected_last_sequence: int) -> Published:
        return await self._publisher.publish(event, expected_last_sequence=expected_last_sequence)

    async def event_at(self, sequence: int) -> StoredEvent:
        return await self._reader.at(DOMAIN, sequence)

    async def versions(self, po_id: str) -> list[StoredEvent]:
        """Every document event (publish, change, cancel) of one order, oldest first."""
        return [event for event in await self._reader.history(DOMAIN, po_id) if _event_name(event) in DOCUMENT_EVENTS]

    async def version(self, po_id: str, version: int) -> StoredEvent | None:
        for event in await self.versions(po_id):
            if event.envelope.object_version == version:
                return event
        return None


def _event_name(event: StoredEvent) -> str:
    return event.subject.rsplit(".", 1)[-1]
