"""The decider shape every write follows (DESIGN §3 rule 9): the pure types a domain module uses.

Per object type a domain has two pure functions:

* ``evolve(state, recorded) -> state`` folds one stored event into the object's state;
* ``decide(state) -> event | None | Refusal`` (a command bound to its inputs) says what happens:
  one new event, nothing (the command was applied already: an idempotent replay), or a refusal.

Nothing here does I/O; :mod:`libs.runtime.commands` runs the loop around them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class Recorded(Generic[E]):
    """A domain event as the stream holds it: the event and where and when it was stored."""

    event: E
    sequence: int
    event_id: str
    recorded_at_ns: int  # epoch nanoseconds, exact (the stream's timestamp)
    idempotency_key: str
    source_system: str


class RefusalKind(Enum):
    """Why a command is refused; each maps to one gRPC status at the edge."""

    INVALID = "invalid_argument"  # the command itself is wrong, whatever the state
    NOT_FOUND = "not_found"  # the object (or the version named) does not exist
    PRECONDITION = "failed_precondition"  # the object's state does not allow it (stale version, cancelled)
    CONFLICT = "already_exists"  # the same object/version (or key) exists with other content


@dataclass(frozen=True, slots=True)
class Refusal:
    """A command the domain will not turn into an event.

    ``reason`` is a stable UPPER_SNAKE code for machines; ``exception`` names the exception type
    (e.g. ``duplicate_transaction``) to raise with ``evidence`` (opaque documents the service renders),
    or is empty when a refusal is answer enough."""

    kind: RefusalKind
    reason: str
    message: str
    subject: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: tuple[tuple[str, str], ...] = ()
    exception: str = ""
    evidence: tuple[object, ...] = ()
