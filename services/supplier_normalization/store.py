"""supplier-normalization's storage: the SUPPLIER stream through the command handler, and the registry (the
matching index, cross-references, open suspicions) as a projection of it in memory."""

from __future__ import annotations

import logging

from libs.runtime.commands import CommandHandler, StreamLog, recorded
from libs.runtime.decider import Recorded
from libs.runtime.events import EventPublisher, EventReader
from services.supplier_normalization import domain, events

log = logging.getLogger(__name__)

GoldenCommands = CommandHandler[domain.GoldenState, domain.SupplierChange]


class RegistryProjection:
    """The registry and the open suspicions, fed only with changes the stream acknowledged."""

    def __init__(self, registry: domain.SupplierRegistry, reader: EventReader) -> None:
        self.registry = registry
        self.suspicions: events.Suspicions = {}
        self._reader = reader

    async def applied(
        self, key: str, state: domain.GoldenState, sequence: int, recorded: Recorded[domain.SupplierChange] | None
    ) -> None:
        if recorded is not None:  # a replay changed nothing
            events.apply(self.registry, self.suspicions, recorded.event)

    async def rebuild(self) -> None:
        """Fold the whole stream, oldest first (at start: the registry is the stream's projection)."""
        count = 0
        async for stored in self._reader.scan(events.DOMAIN):
            change = events.decode(stored)
            if change is not None:
                events.apply(self.registry, self.suspicions, recorded(stored, change).event)
            count += 1
        log.info("rebuilt %s golden suppliers from %s events", len(self.registry), count)


def golden_commands(publisher: EventPublisher, reader: EventReader, projection: RegistryProjection) -> GoldenCommands:
    return CommandHandler(
        StreamLog(publisher, reader, events.DOMAIN, encode=events.encode, decode=events.decode),
        initial=domain.GOLDEN_INITIAL,
        evolve=domain.evolve_golden,
        size_of=lambda _state: 128,
        projections=(projection,),
        name="golden supplier",
    )
