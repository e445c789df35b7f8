"""supplier-normalization's storage: the SUPPLIER stream through the command handler, and the registry (the
matching index, cross-references, open suspicions) as a projection of it in memory."""

from __future__ import annotations

import logging
from dataclasses import replace

from libs.runtime.commands import CommandHandler, StreamLog, recorded
from libs.runtime.decider import Recorded
from libs.runtime.events import EventPublisher, EventReader, StoredEvent
from services.supplier_normalization import domain, events

log = logging.getLogger(__name__)

GoldenCommands = CommandHandler[domain.GoldenState, domain.SupplierChange]


class RegistryProjection:
    """The registry and the open suspicions, fed only with changes the stream acknowledged."""

    def __init__(self, registry: domain.SupplierRegistry, reader: EventReader) -> None:
        self.registry = registry
        self.suspicions: events.Suspicions = {}
        self._reader = reader
        self.sequence = 0  # the last stream sequence folded in
        # Whether the stream may hold what this registry has not folded: only an append of this process whose
        # acknowledgment was lost (supplier-normalization is the single writer) — so reads are only made then.
        self.behind = False

    async def applied(
        self, key: str, state: domain.GoldenState, sequence: int, recorded: Recorded[domain.SupplierChange] | None
    ) -> None:
        if recorded is not None and recorded.sequence > self.sequence:  # a replay changed nothing
            change = recorded.event
            if recorded.sequence > self.sequence + 1:
                await self.catch_up()  # fold what came before it first: the order of events matters
                change = replace(change, placement=None)  # planned before those: place it from the event
            if recorded.sequence > self.sequence:
                events.apply(self.registry, self.suspicions, change)
                self.sequence = recorded.sequence

    async def rebuild(self) -> None:
        """Fold the whole stream, oldest first (at start: the registry is the stream's projection)."""
        count = 0
        async for stored in self._reader.scan(events.DOMAIN):
            self._fold(stored)
            count += 1
        log.info("rebuilt %s golden suppliers from %s events", len(self.registry), count)

    async def catch_up_if_behind(self) -> None:
        if self.behind:
            await self.catch_up()
            self.behind = False

    async def catch_up(self) -> None:
        """Fold what the stream holds beyond the registry: an append whose acknowledgment was lost (a broker
        restart, a timeout) is in the stream but not yet here, and a retry must find it."""
        for stored in await self._reader.since(events.DOMAIN, self.sequence):
            self._fold(stored)

    def _fold(self, stored: StoredEvent) -> None:
        change = events.decode(stored)
        if change is not None:
            events.apply(self.registry, self.suspicions, recorded(stored, change).event)
        self.sequence = max(self.sequence, stored.sequence)


def golden_commands(publisher: EventPublisher, reader: EventReader, projection: RegistryProjection) -> GoldenCommands:
    return CommandHandler(
        StreamLog(publisher, reader, events.DOMAIN, encode=events.encode, decode=events.decode),
        initial=domain.GOLDEN_INITIAL,
        evolve=domain.evolve_golden,
        size_of=lambda _state: 128,
        projections=(projection,),
        name="golden supplier",
    )
