"""Hash chaining of audit entries.

Each entry carries the SHA-256 of the entry before it; its own hash covers
that link and every field but ``sequence`` and ``entry_hash`` (the stream
assigns the sequence after the hash is sealed). Altering, removing or
reordering any entry breaks the chain at that point, and :func:`verify`
names the first entry where it breaks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from syncgov.controlplane.v1 import controlplane_pb2

GENESIS = "0" * 64


def entry_hash(entry: controlplane_pb2.AuditEntry) -> str:
    sealed = controlplane_pb2.AuditEntry()
    sealed.CopyFrom(entry)
    sealed.ClearField("sequence")
    sealed.ClearField("entry_hash")
    return hashlib.sha256(sealed.SerializeToString(deterministic=True)).hexdigest()


def seal(entry: controlplane_pb2.AuditEntry, previous_hash: str) -> controlplane_pb2.AuditEntry:
    """Link the entry to its predecessor and stamp its own hash (in place, and returned)."""
    entry.previous_hash = previous_hash
    entry.entry_hash = entry_hash(entry)
    return entry


@dataclass(frozen=True, slots=True)
class Break:
    sequence: int
    reason: str


@dataclass(frozen=True, slots=True)
class Verdict:
    entries: int
    first_break: Break | None

    @property
    def intact(self) -> bool:
        return self.first_break is None


def verify(entries: Iterable[controlplane_pb2.AuditEntry], start_hash: str = GENESIS) -> Verdict:
    """Walk the chain in order; stop at the first entry that does not hold."""
    previous = start_hash
    count = 0
    for entry in entries:
        count += 1
        if entry.previous_hash != previous:
            return Verdict(
                count,
                Break(
                    entry.sequence,
                    "previous_hash does not match the entry before it (an entry was removed, inserted or reordered)",
                ),
            )
        if entry.entry_hash != entry_hash(entry):
            return Verdict(count, Break(entry.sequence, "entry_hash does not match its content (it was altered)"))
        previous = entry.entry_hash
    return Verdict(count, None)
