"""What each RPC does to which object: the edge's input for ownership enforcement.

Every method a service serves declares one rule; the edge refuses methods
without one (fail closed) and a structural test keeps the declarations whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from libs.policy.catalog import touched_fields

__all__ = ["AccessRule", "Administer", "Read", "Report", "ReportHoldings", "Write", "resolve", "touched_fields"]


@dataclass(frozen=True, slots=True)
class Read:
    """Reads ``object_type``: any known system, unless the policy lists readers."""

    object_type: str


@dataclass(frozen=True, slots=True)
class Write:
    """Writes ``object_type``. ``document`` names the request field holding the object (its set fields are
    what the call touches); without it the call writes the object as a whole. ``key`` and ``version`` are
    dotted paths in the request, for the audit trail and exceptions; ``site`` names the site the write
    happens at, which the caller's system must serve (``systems.<id>.sites``)."""

    object_type: str
    key: str
    document: str | None = None
    version: str | None = None
    site: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """Reports what the caller's own system holds of ``object_type`` (a source record, not the golden one).
    Allowed when ``source`` (a dotted path in the request) names the caller itself and the caller writes
    the object or any of its fields; which source wins each golden field is the policy's owners' call."""

    object_type: str
    source: str
    key: str


@dataclass(frozen=True, slots=True)
class ReportHoldings:
    """Reports what a system holds of ``object_type``, to be compared with the system of record (drift): allowed
    when ``system`` (a dotted path in the request) names the caller itself, or the caller is a policy
    administrator (an operator reporting a snapshot on a system's behalf), and that system holds a copy it may
    read (the object is synced to it, or it is the system of record)."""

    object_type: str
    system: str


@dataclass(frozen=True, slots=True)
class Administer:
    """Changes policy itself: only the policy's administrators."""


AccessRule = Read | Write | Report | ReportHoldings | Administer


def resolve(message: Message, dotted: str) -> object:
    value: object = message
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
