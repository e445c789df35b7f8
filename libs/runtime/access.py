"""What each RPC does to which object: the edge's input for ownership enforcement.

Every method a service serves declares one rule; the edge refuses methods
without one (fail closed) and a structural test keeps the declarations whole.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

_LEAF_MESSAGES = {
    "google.type.Money",
    "google.type.Decimal",
    "google.type.Date",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
}


@dataclass(frozen=True, slots=True)
class Read:
    """Reads ``object_type``: any known system, unless the policy lists readers."""

    object_type: str


@dataclass(frozen=True, slots=True)
class Write:
    """Writes ``object_type``. ``document`` names the request field holding the object (its set fields are
    what the call touches); without it the call writes the object as a whole. ``key`` and ``version`` are
    dotted paths in the request, for the audit trail and exceptions."""

    object_type: str
    key: str
    document: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """Reports what the caller's own system holds of ``object_type`` (a source record, not the golden one).
    Allowed when ``source`` (a dotted path in the request) names the caller itself and the caller writes
    the object or any of its fields; which source wins each golden field is the policy's owners' call."""

    object_type: str
    source: str
    key: str


@dataclass(frozen=True, slots=True)
class Administer:
    """Changes policy itself: only the policy's administrators."""


AccessRule = Read | Write | Report | Administer


@functools.cache
def _descends(descriptor: Descriptor | None) -> bool:
    """Whether touched-field paths go inside messages of this type (not for value types and maps)."""
    return (
        descriptor is not None and descriptor.full_name not in _LEAF_MESSAGES and not descriptor.GetOptions().map_entry
    )


def touched_fields(message: Message, prefix: str = "") -> set[str]:
    """Field paths a message sets, in policy notation (``lines[].unit_price``); value types are leaves."""
    found: set[str] = set()
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}{'[]' if field.is_repeated else ''}"
        found.add(path)
        if not _descends(field.message_type):
            continue
        items: Iterable[Message] = value if field.is_repeated else (value,)
        for item in items:
            found |= touched_fields(item, f"{path}.")
    return found


def resolve(message: Message, dotted: str) -> object:
    value: object = message
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
