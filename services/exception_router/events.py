"""The exception stream's events as the router reads and writes them.

Raises (``<ns>.exception.<raise id>.raised``, :class:`ExceptionRaised`) and clearings (``<component>.cleared``,
:class:`ExceptionCleared`: what that component raised no longer holds) come from every service; the router's
transitions (``<ns>.exception.<EXC-id>.<transition>``, :class:`ExceptionStateChanged`) are its own, plus
``replayed``, which the consumer that processed a replay writes (libs/runtime/replays.py).
"""

from __future__ import annotations

import functools
import uuid
from typing import cast

from google.protobuf import duration_pb2

from libs.runtime.events import Event, StoredEvent, readable
from libs.runtime.exception_reporter import CLEARED as REPORTED_CLEARED
from libs.runtime.exception_reporter import DOMAIN, OBJECT_TYPE
from libs.runtime.exception_reporter import RAISED as REPORTED_RAISED
from libs.runtime.identity import current_caller
from services.exception_router.decider import Change, Resolution, State, Transition, state_after
from services.exception_router.domain import Route
from syncgov.exception.v1 import events_pb2, exception_pb2

RAISED = REPORTED_RAISED
CLEARED = REPORTED_CLEARED
TRANSITIONS = {transition.value: transition for transition in Transition}
_TRANSITION_ENUM = {transition: f"TRANSITION_{transition.name}" for transition in Transition}
_ENUM_TRANSITION = {name: transition for transition, name in _TRANSITION_ENUM.items()}

__all__ = [
    "CLEARED",
    "DOMAIN",
    "OBJECT_TYPE",
    "RAISED",
    "decode",
    "decode_cleared",
    "decode_raised",
    "encode",
    "event_name",
]


def event_name(stored: StoredEvent) -> str:
    return stored.subject.rsplit(".", 1)[-1]


@functools.cache
def type_name(value: int) -> str:
    """``price_variance`` for EXCEPTION_TYPE_PRICE_VARIANCE; ``unspecified`` for 0 or a number not in the contract.
    Cached: one string per type however many exceptions the book holds."""
    try:
        return exception_pb2.ExceptionType.Name(value).removeprefix("EXCEPTION_TYPE_").lower()
    except ValueError:
        return "unspecified"


def type_value(name: str) -> exception_pb2.ExceptionType:
    """The contract's value for ``price_variance``; ``unspecified`` is 0."""
    return cast(exception_pb2.ExceptionType, exception_pb2.ExceptionType.Value(f"EXCEPTION_TYPE_{name.upper()}"))


@functools.cache
def severity_name(value: int) -> str:
    try:
        return "" if not value else exception_pb2.Severity.Name(value).removeprefix("SEVERITY_").lower()
    except ValueError:
        return ""


def severity_value(name: str) -> exception_pb2.Severity:
    if not name:
        return exception_pb2.SEVERITY_UNSPECIFIED
    return cast(exception_pb2.Severity, exception_pb2.Severity.Value(f"SEVERITY_{name.upper()}"))


def state_value(state: State) -> exception_pb2.ExceptionState:
    if state is State.NONE:
        return exception_pb2.EXCEPTION_STATE_OPEN  # raised, being routed
    return cast(exception_pb2.ExceptionState, exception_pb2.ExceptionState.Value(f"EXCEPTION_STATE_{state.name}"))


def state_of(value: int) -> State | None:
    if not value:
        return None
    return State[exception_pb2.ExceptionState.Name(value).removeprefix("EXCEPTION_STATE_")]


def resolution_value(resolution: Resolution | None) -> exception_pb2.ResolutionKind:
    if resolution is None:
        return exception_pb2.RESOLUTION_KIND_UNSPECIFIED
    return cast(exception_pb2.ResolutionKind, exception_pb2.ResolutionKind.Value(f"RESOLUTION_KIND_{resolution.name}"))


def resolution_of(value: int) -> Resolution | None:
    if not value:
        return None
    return Resolution[exception_pb2.ResolutionKind.Name(value).removeprefix("RESOLUTION_KIND_")]


# Transitions the router decides itself (no person): recorded as syncgov's, by exception-router.
ROUTER_TRANSITIONS = frozenset({Transition.OPENED, Transition.REOPENED, Transition.ESCALATED, Transition.REROUTED})
ROUTER = "exception-router"


def _previous_state(previous: State | None) -> exception_pb2.ExceptionState:
    if previous is None or previous is State.NONE:
        return exception_pb2.EXCEPTION_STATE_UNSPECIFIED  # opened: there was no exception before
    return state_value(previous)


def encode(case_id: str, change: Change) -> Event:
    by_router = change.transition in ROUTER_TRANSITIONS
    message = events_pb2.ExceptionStateChanged(
        exception_id=case_id,
        transition=cast(events_pb2.Transition, events_pb2.Transition.Value(_TRANSITION_ENUM[change.transition])),
        previous_state=_previous_state(change.previous),
        state=state_value(state_after(change)),
        actor=ROUTER if by_router else change.actor,
        through=change.through,
        reason=change.reason,
        owner_team=change.owner_team,
        cause_sequence=change.cause_sequence,
        resolution_kind=resolution_value(change.resolution),
    )
    if change.escalate_at_ns:
        message.escalate_at.FromNanoseconds(change.escalate_at_ns)
    if change.type_name:
        message.exception.CopyFrom(exception_pb2.Exception(exception_id=case_id, type=type_value(change.type_name)))
    route = change.route
    if route is not None:
        message.owner_team = route.team
        message.severity = severity_value(route.severity)
        message.policy_revision = route.revision
        message.rule_path = route.rule_path
        message.escalate_to = route.escalate_to
        if route.escalate_after_ns:
            message.escalate_after.CopyFrom(duration_pb2.Duration())
            message.escalate_after.FromNanoseconds(route.escalate_after_ns)
    if isinstance(change.message, exception_pb2.OriginalMessage):
        message.replay.CopyFrom(change.message)
    return Event(
        domain=DOMAIN,
        object_type=OBJECT_TYPE,
        object_key=case_id,
        object_version=0,
        name=change.transition.value,
        payload=message,
        # Transitions are guarded by the exception's subject; the key only has to be unique.
        idempotency_key=f"exception:{case_id}:{change.transition.value}:{uuid.uuid4()}",
        source_system="syncgov" if by_router else current_caller().system,
        policy_revision=route.revision if route is not None else 0,
    )


def decode(stored: StoredEvent) -> Change | None:
    """The transition a stored event holds; None for a raise (or anything else)."""
    if event_name(stored) not in TRANSITIONS:
        return None
    return readable(stored, _decode_change)


def _decode_change(stored: StoredEvent) -> Change:
    message = stored.unpack(events_pb2.ExceptionStateChanged)
    transition = _ENUM_TRANSITION[events_pb2.Transition.Name(message.transition)]
    route = None
    # A reopening recorded before reopenings were routed again carries no route: the exception keeps its own.
    if transition in (Transition.OPENED, Transition.REROUTED, Transition.REOPENED) and message.rule_path:
        route = Route(
            team=message.owner_team,
            severity=severity_name(message.severity),
            escalate_after_ns=message.escalate_after.ToNanoseconds() if message.HasField("escalate_after") else 0,
            escalate_to=message.escalate_to,
            rule_path=message.rule_path,
            revision=message.policy_revision,
        )
    return Change(
        transition,
        actor="" if transition in ROUTER_TRANSITIONS else message.actor,
        through=message.through,
        reason=message.reason,
        route=route,
        owner_team=message.owner_team if transition is Transition.ESCALATED else "",
        escalate_at_ns=message.escalate_at.ToNanoseconds() if message.HasField("escalate_at") else 0,
        cause_sequence=message.cause_sequence,
        resolution=resolution_of(message.resolution_kind),
        type_name=type_name(message.exception.type) if message.HasField("exception") else "",
        replay_consumer=message.replay.consumer if message.HasField("replay") else "",
    )


def decode_raised(stored: StoredEvent) -> exception_pb2.Exception | None:
    if event_name(stored) != RAISED:
        return None
    raised = readable(stored, lambda event: event.unpack(events_pb2.ExceptionRaised))
    return None if raised is None else raised.exception


def decode_cleared(stored: StoredEvent) -> events_pb2.ExceptionCleared | None:
    if event_name(stored) != CLEARED:
        return None
    return readable(stored, lambda event: event.unpack(events_pb2.ExceptionCleared))
