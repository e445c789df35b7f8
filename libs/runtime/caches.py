"""A memo cache bounded by bytes, not entries: one huge key must not pin memory for good. Pure, no I/O."""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BytesBoundedCache(Generic[K, V]):
    """Least recently used entries leave first once the estimated size passes ``max_bytes``; a value whose
    key and value together exceed ``max_entry_bytes`` is computed and never kept."""

    def __init__(self, max_bytes: int, max_entry_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._max_entry = max_entry_bytes
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, compute: Callable[[K], V]) -> V:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            return found[0]
        value = compute(key)
        size = sys.getsizeof(key) + sys.getsizeof(value)
        if size <= self._max_entry:
            self._entries[key] = (value, size)
            self.bytes += size
            while self.bytes > self._max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted
        return value
