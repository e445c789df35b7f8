"""The version of another domain's object that is in force now, read from that domain's stream.

A service that decides against an object another service owns (a receipt or an invoice against a purchase
order's current version) asks the stream for the object's newest event (one direct get) and reads the events
after the one it holds only when that moved. Events that set no version (an acknowledgment, a held version)
advance what was examined, not the version. Never a follower's lag: the version in force is the one the stream
holds when asked. Recently used objects stay in memory, bounded by estimated bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from libs.runtime.events import EventReader, StoredEvent, readable

V = TypeVar("V")


class VersionsInForce(Generic[V]):
    def __init__(
        self,
        reader: EventReader,
        domain: str,
        version_of: Callable[[StoredEvent], V | None],
        size_of: Callable[[V], int],
        capacity_bytes: int,
    ) -> None:
        self._reader = reader
        self._domain = domain
        self._version_of = version_of
        self._size_of = size_of
        self._capacity = capacity_bytes
        self._entries: OrderedDict[str, tuple[V, int, int]] = OrderedDict()  # version, examined through, size
        self.bytes = 0

    async def current(self, key: str) -> V | None:
        """The object's version in force as the stream holds it now; None when no version was ever set."""
        return await self.current_given(key, await self._reader.last(self._domain, key))

    async def current_given(self, key: str, newest: StoredEvent | None) -> V | None:
        """``current`` with the object's newest event already read (None: it has none), e.g. together with other
        reads (``EventReader.last_of_each``)."""
        if newest is None:
            return None
        known = self._entries.get(key)
        if known is not None and known[1] >= newest.sequence:
            self._entries.move_to_end(key)
            return known[0]
        version = readable(newest, self._version_of)
        if version is None:  # the newest event sets no version: the one in force is an earlier event's
            version = known[0] if known is not None else None
            after = known[1] if known is not None else 0
            for stored in await self._reader.history(self._domain, key, after=after, through=newest.sequence):
                version = readable(stored, self._version_of) or version
            if version is None:
                return None
        self.remember(key, version, newest.sequence)
        return version

    def remember(self, key: str, version: V, examined_through: int) -> None:
        previous = self._entries.pop(key, None)
        if previous is not None:
            self.bytes -= previous[2]
        size = self._size_of(version)
        self._entries[key] = (version, examined_through, size)
        self.bytes += size
        while self.bytes > self._capacity and self._entries:
            _, (_, _, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted

    def __len__(self) -> int:
        return len(self._entries)
