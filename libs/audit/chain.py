"""Hash chaining of audit entries.

Each entry carries the SHA-256 of the entry before it; its own hash covers that link and every
field but ``sequence`` and ``entry_hash`` (the stream assigns the sequence after the hash is
sealed). Altering, removing or reordering any entry breaks the chain at that point, and
:func:`verify` names the first entry where it breaks.

The hash is over a canonical encoding a verifier in any language can reproduce with a JSON
library and SHA-256 (docs/audit.md has the recipe and a worked example): a JSON object holding
exactly the fields of :data:`CANONICAL_FIELDS`, every one present (defaults included), keys
sorted, no insignificant whitespace, strings as UTF-8 with only ``"``, ``\\`` and control
characters escaped (the RFC 8785 rules), integers in plain decimal, the timestamp as
``{"nanos": n, "seconds": s}``. Entries sealed before this encoding (over protobuf's
deterministic serialization, which no other language promises to reproduce) are still recognised
by :func:`verify` and counted as legacy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from syncgov.controlplane.v1 import controlplane_pb2

GENESIS = "0" * 64
CANONICAL_FORMAT = "syncgov.audit.entry.v1"
# Every AuditEntry field the hash covers, and how it is written; a test keeps this in step with the proto.
CANONICAL_FIELDS = {
    "actor": "string",
    "action": "string",
    "object": '{"object_key": string, "object_type": string, "version": integer}',
    "recorded_at": '{"nanos": integer, "seconds": integer}',
    "outcome": "string",
    "reason": "string",
    "policy_revision": "integer",
    "trace_id": "string",
    "previous_hash": "string",
    "source": "string",
}
UNHASHED_FIELDS = ("sequence", "entry_hash")


def canonical_document(entry: controlplane_pb2.AuditEntry) -> dict[str, Any]:
    """The entry as the JSON value whose canonical bytes are hashed (the ``format`` key names the recipe)."""
    return {
        "format": CANONICAL_FORMAT,
        "actor": entry.actor,
        "action": entry.action,
        "object": {
            "object_key": entry.object.object_key,
            "object_type": entry.object.object_type,
            "version": entry.object.version,
        },
        "recorded_at": {"nanos": entry.recorded_at.nanos, "seconds": entry.recorded_at.seconds},
        "outcome": entry.outcome,
        "reason": entry.reason,
        "policy_revision": entry.policy_revision,
        "trace_id": entry.trace_id,
        "previous_hash": entry.previous_hash,
        "source": entry.source,
    }


def canonical_bytes(entry: controlplane_pb2.AuditEntry) -> bytes:
    """Sorted keys, no whitespace, UTF-8, RFC 8785 string escaping (what ``json.dumps`` does with these options)."""
    text = json.dumps(canonical_document(entry), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return text.encode("utf-8")


def entry_hash(entry: controlplane_pb2.AuditEntry) -> str:
    """SHA-256 (lower-case hex) of the entry's canonical bytes."""
    return hashlib.sha256(canonical_bytes(entry)).hexdigest()


def legacy_entry_hash(entry: controlplane_pb2.AuditEntry) -> str:
    """The hash entries were sealed with before the canonical encoding: protobuf's deterministic bytes."""
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
    legacy_entries: int = 0

    @property
    def intact(self) -> bool:
        return self.first_break is None


def sealed(entry: controlplane_pb2.AuditEntry, tail_hash: str) -> controlplane_pb2.AuditEntry:
    """Decide the chain's next entry: a sealed copy of ``entry`` linked to the chain's tail (the decider of the
    chain, whose state is its last entry's hash; the command handler appends it under the stream-wide guard)."""
    copy = controlplane_pb2.AuditEntry()
    copy.CopyFrom(entry)
    return seal(copy, tail_hash)


def tail_after(tail_hash: str, appended: controlplane_pb2.AuditEntry) -> str:
    """The chain's state after an entry: that entry's hash."""
    return appended.entry_hash or tail_hash


def verify(entries: Iterable[controlplane_pb2.AuditEntry], start_hash: str = GENESIS) -> Verdict:
    """Walk the chain in order; stop at the first entry that does not hold."""
    previous = start_hash
    count = legacy = 0
    for entry in entries:
        count += 1
        if entry.previous_hash != previous:
            return Verdict(
                count,
                Break(
                    entry.sequence,
                    "previous_hash does not match the entry before it (an entry was removed, inserted or reordered)",
                ),
                legacy,
            )
        if entry.entry_hash != entry_hash(entry):
            if entry.entry_hash != legacy_entry_hash(entry):
                return Verdict(
                    count, Break(entry.sequence, "entry_hash does not match its content (it was altered)"), legacy
                )
            legacy += 1
        previous = entry.entry_hash
    return Verdict(count, None, legacy)
