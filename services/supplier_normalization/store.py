"""supplier-normalization's storage: the SUPPLIER stream, read whole at start and appended per change."""

from __future__ import annotations

from libs.runtime.events import Event, EventPublisher, EventReader, Published
from services.supplier_normalization.events import DOMAIN


class SupplierStore:
    def __init__(self, publisher: EventPublisher, reader: EventReader) -> None:
        self._publisher = publisher
        self._reader = reader
        self._last_sequence: dict[str, int] = {}  # golden id -> last stream sequence, for the write guard

    async def append(self, event: Event) -> Published:
        """One event on the golden record's subject, guarded against a concurrent writer of the same record."""
        published = await self._publisher.publish(
            event, expected_last_sequence=self._last_sequence.get(event.object_key, 0)
        )
        self._last_sequence[event.object_key] = published.sequence
        return published

    async def all_events(self):
        """Every event of the stream, oldest first (the start-up rebuild); remembers each record's last sequence."""
        async for event in self._reader.scan(DOMAIN):
            self._last_sequence[event.envelope.object_key] = event.sequence
            yield event
