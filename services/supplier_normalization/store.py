"""supplier-normalization's storage: the SUPPLIER stream, read whole at start and appended per change."""

from __future__ import annotations

import contextlib

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from libs.runtime.events import Event, EventPublisher, Published, StoredEvent, parse_stored
from libs.runtime.subjects import Namespace
from services.supplier_normalization.events import DOMAIN


class SupplierStore:
    def __init__(self, js: JetStreamContext, publisher: EventPublisher, namespace: Namespace) -> None:
        self._js = js
        self._publisher = publisher
        self._stream = namespace.stream(DOMAIN)
        self._last_sequence: dict[str, int] = {}  # golden id -> last stream sequence, for the write guard

    async def append(self, event: Event) -> Published:
        """One event on the golden record's subject, guarded against a concurrent writer of the same record."""
        published = await self._publisher.publish(
            event, expected_last_sequence=self._last_sequence.get(event.object_key, 0)
        )
        self._last_sequence[event.object_key] = published.sequence
        return published

    async def all_events(self):
        """Every event of the stream, oldest first (the start-up rebuild)."""
        with contextlib.suppress(NotFoundError):
            info = await self._js.stream_info(self._stream)
            sequence = info.state.first_seq or 1
            while sequence <= info.state.last_seq:
                try:
                    raw = await self._js.get_msg(self._stream, sequence)
                except NotFoundError:  # the stream denies deletes; a gap would be a lost message
                    sequence += 1
                    continue
                event: StoredEvent = parse_stored(self._stream, raw.seq, raw.subject, raw.headers, raw.data or b"")
                self._last_sequence[event.envelope.object_key] = raw.seq
                yield event
                sequence = raw.seq + 1
