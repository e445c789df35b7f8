"""An exception's life as decide/evolve (DESIGN rule 9): open -> acknowledged -> resolved | replayed, reopened.

The exception's own subject (``<ns>.exception.<EXC-id>.<transition>``) holds only its transitions; the raises it
folds live on their own subjects and are counted by the read model (store.py). So a thousand repeats write nothing
here, and a transition is decided on a history of a handful of events.

Sequences are the exception stream's, so a raise and a transition compare: a raise stored after the exception was
closed reopens it (``Observe``), one stored before does not, however late it is processed. A raise stored after a
replay was requested, while that replay is pending, says the replay failed: the exception reopens too.

Escalation (docs/decisions.md, "Exceptions"): an open exception escalates when nobody acknowledges it within the
route's ``escalate_after`` of its opening; an acknowledged one when nobody resolves it within ``escalate_after`` of
the acknowledgment. Once: an escalated exception escalates no further (until it is closed and reopened).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from libs.runtime.decider import Recorded, Refusal, RefusalKind
from services.exception_router.domain import Route


class Transition(Enum):
    OPENED = "opened"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    REPLAY_REQUESTED = "replay_requested"
    REPLAYED = "replayed"
    REOPENED = "reopened"
    ESCALATED = "escalated"
    REROUTED = "rerouted"


class State(Enum):
    NONE = "none"  # raised, not opened yet
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    REPLAYED = "replayed"

    @property
    def closed(self) -> bool:
        return self in (State.RESOLVED, State.REPLAYED)


class Resolution(Enum):
    FIXED = "fixed"
    ACCEPTED = "accepted"
    FALSE_POSITIVE = "false_positive"
    DUPLICATE = "duplicate"
    WONT_FIX = "wont_fix"
    REPLAYED = "replayed"
    CLEARED = "cleared"  # by the component that raised it: the condition no longer holds


@dataclass(frozen=True, slots=True)
class Change:
    """One transition as the stream holds it. ``actor`` is the person (or, for a replay processed, the consumer);
    ``through`` the system they acted through."""

    transition: Transition
    actor: str = ""
    through: str = ""
    reason: str = ""
    route: Route | None = None  # opened, rerouted: the route decided
    owner_team: str = ""  # escalated: the team it moves to
    escalate_at_ns: int = 0  # opened, reopened, acknowledged, rerouted: the new deadline (0: none)
    cause_sequence: int = 0  # opened, reopened: the raise; replayed: the replay request; resolved: the clearing
    resolution: Resolution | None = None
    type_name: str = ""  # opened: the exception type (a replay needs it)
    replay_consumer: str = ""  # replay requested: the consumer the message goes back to
    message: object | None = None  # replay requested: the original message itself (opaque to the rules)
    previous: State | None = None  # the state it was decided on (set by ``decide``)


@dataclass(frozen=True, slots=True)
class CaseState:
    state: State = State.NONE
    type_name: str = ""
    route: Route | None = None
    owner_team: str = ""
    severity: str = ""
    opened_at_ns: int = 0
    escalate_at_ns: int = 0
    escalated: bool = False
    escalated_at_ns: int = 0
    escalated_from: str = ""
    acknowledged_by: str = ""
    acknowledged_through: str = ""
    acknowledged_at_ns: int = 0
    resolution: Resolution | None = None
    note: str = ""
    resolved_by: str = ""
    resolved_through: str = ""
    closed_at_ns: int = 0
    closed_sequence: int = 0
    replay_sequence: int = 0  # the pending or processed replay request (0: none since the last opening)
    replay_by: str = ""
    replay_through: str = ""
    replay_reason: str = ""
    replay_at_ns: int = 0
    replay_consumer: str = ""
    replay_processed_at_ns: int = 0
    reopened: int = 0
    opened_by_sequence: int = 0  # the raise that opened or last reopened it
    last_sequence: int = 0

    @property
    def exists(self) -> bool:
        return self.state is not State.NONE

    @property
    def replay_pending(self) -> bool:
        return bool(self.replay_sequence) and not self.replay_processed_at_ns and not self.state.closed


INITIAL = CaseState()


def _deadline(route: Route | None, from_ns: int) -> int:
    return from_ns + route.escalate_after_ns if route is not None and route.escalate_after_ns else 0


def evolve(state: CaseState, recorded: Recorded[Change]) -> CaseState:
    change, at = recorded.event, recorded.recorded_at_ns
    state = replace(state, last_sequence=recorded.sequence)
    match change.transition:
        case Transition.OPENED:
            route = change.route
            return replace(
                state,
                state=State.OPEN,
                type_name=change.type_name,
                route=route,
                owner_team=route.team if route else "",
                severity=route.severity if route else "",
                opened_at_ns=at,
                escalate_at_ns=change.escalate_at_ns,
                opened_by_sequence=change.cause_sequence,
            )
        case Transition.REOPENED:
            route = change.route or state.route
            return replace(
                state,
                state=State.OPEN,
                route=route,
                owner_team=route.team if route else state.owner_team,
                severity=route.severity if route else state.severity,
                opened_at_ns=at,
                escalate_at_ns=change.escalate_at_ns,
                escalated=False,
                escalated_at_ns=0,
                escalated_from="",
                acknowledged_by="",
                acknowledged_through="",
                acknowledged_at_ns=0,
                resolution=None,
                note="",
                resolved_by="",
                resolved_through="",
                closed_at_ns=0,
                replay_sequence=0,
                replay_processed_at_ns=0,
                reopened=state.reopened + 1,
                opened_by_sequence=change.cause_sequence,
            )
        case Transition.ACKNOWLEDGED:
            return replace(
                state,
                state=State.ACKNOWLEDGED,
                acknowledged_by=change.actor,
                acknowledged_through=change.through,
                acknowledged_at_ns=at,
                escalate_at_ns=change.escalate_at_ns,
            )
        case Transition.RESOLVED:
            return replace(
                state,
                state=State.RESOLVED,
                resolution=change.resolution,
                note=change.reason,
                resolved_by=change.actor,
                resolved_through=change.through,
                closed_at_ns=at,
                # Cleared: closed as of the clearing's place in the stream, so a raise stored after the clearing
                # (the condition back) reopens it, however late either is processed.
                closed_sequence=change.cause_sequence or recorded.sequence,
                escalate_at_ns=0,
            )
        case Transition.REPLAY_REQUESTED:
            return replace(
                state,
                replay_sequence=recorded.sequence,
                replay_by=change.actor,
                replay_through=change.through,
                replay_reason=change.reason,
                replay_at_ns=at,
                replay_consumer=change.replay_consumer,
                replay_processed_at_ns=0,
            )
        case Transition.REPLAYED:
            # Written by the consumer that processed the replay, unguarded: only the pending request's counts.
            if not state.replay_pending or change.cause_sequence != state.replay_sequence:
                return state
            return replace(
                state,
                state=State.REPLAYED,
                resolution=Resolution.REPLAYED,
                note=state.replay_reason,
                resolved_by=state.replay_by,
                resolved_through=state.replay_through,
                closed_at_ns=at,
                closed_sequence=recorded.sequence,
                replay_processed_at_ns=at,
                escalate_at_ns=0,
            )
        case Transition.ESCALATED:
            return replace(
                state,
                escalated=True,
                escalated_at_ns=at,
                escalated_from=state.owner_team,
                owner_team=change.owner_team or state.owner_team,
                escalate_at_ns=0,
            )
        case Transition.REROUTED:
            route = change.route
            if route is None:
                return state
            return replace(
                state,
                route=route,
                owner_team=route.team,
                severity=route.severity,
                escalate_at_ns=change.escalate_at_ns,
            )
    return state


# -- commands ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observe:
    """A raise was stored at ``raised_sequence``: open the exception, or reopen it if it was closed before."""

    raised_sequence: int
    type_name: str
    route: Route
    now_ns: int
    delivery_exhausted: bool


@dataclass(frozen=True, slots=True)
class Acknowledge:
    by: str
    through: str
    now_ns: int


@dataclass(frozen=True, slots=True)
class Resolve:
    resolution: Resolution
    note: str
    by: str
    through: str


@dataclass(frozen=True, slots=True)
class Clear:
    """The component that raised the exception says, at ``cleared_sequence``, that its condition no longer holds."""

    cleared_sequence: int
    by: str  # the component that cleared it (the same that raised it: checked before deciding)
    reason: str
    last_raised_sequence: int  # the exception's newest raise, as the book has read it up to the clearing at least


@dataclass(frozen=True, slots=True)
class RequestReplay:
    by: str
    reason: str
    through: str
    consumer: str  # from the original message; empty: nothing to replay to
    message: object | None = None
    unreplayable: str = ""  # why the message cannot go back to its consumer (no message kept, not syncgov's)


@dataclass(frozen=True, slots=True)
class Escalate:
    now_ns: int


@dataclass(frozen=True, slots=True)
class Reroute:
    route: Route


Command = Observe | Acknowledge | Resolve | Clear | RequestReplay | Escalate | Reroute

NOT_FOUND = "EXCEPTION_NOT_FOUND"
CLOSED = "EXCEPTION_CLOSED"
ALREADY_ACKNOWLEDGED = "ALREADY_ACKNOWLEDGED"
NOT_REPLAYABLE = "NOT_REPLAYABLE"


def _not_found() -> Refusal:
    return Refusal(RefusalKind.NOT_FOUND, NOT_FOUND, "no exception with this id")


def _closed(state: CaseState, what: str) -> Refusal:
    how = state.resolution.value if state.resolution else state.state.value
    return Refusal(
        RefusalKind.PRECONDITION,
        CLOSED,
        f"the exception is closed ({how} by {state.resolved_by or 'its consumer'}); it cannot be {what}. "
        "It reopens by itself if the problem is raised again",
        metadata={"state": state.state.value},
    )


def decide(command: Command, state: CaseState) -> Change | Refusal | None:
    decision = _decide(command, state)
    return replace(decision, previous=state.state) if isinstance(decision, Change) else decision


def state_after(change: Change) -> State:
    """The state a transition leaves (escalation, re-routing and a replay request leave it as it was)."""
    after = {
        Transition.OPENED: State.OPEN,
        Transition.REOPENED: State.OPEN,
        Transition.ACKNOWLEDGED: State.ACKNOWLEDGED,
        Transition.RESOLVED: State.RESOLVED,
        Transition.REPLAYED: State.REPLAYED,
    }
    return after.get(change.transition, change.previous or State.NONE)


def _decide(command: Command, state: CaseState) -> Change | Refusal | None:
    match command:
        case Observe():
            return _observe(command, state)
        case Acknowledge():
            return _acknowledge(command, state)
        case Resolve():
            return _resolve(command, state)
        case Clear():
            return _clear(command, state)
        case RequestReplay():
            return _request_replay(command, state)
        case Escalate():
            return _escalate(command, state)
        case Reroute():
            return _reroute(command, state)


def _observe(command: Observe, state: CaseState) -> Change | None:
    if not state.exists:
        return Change(
            Transition.OPENED,
            route=command.route,
            cause_sequence=command.raised_sequence,
            escalate_at_ns=_deadline(command.route, command.now_ns),
            type_name=command.type_name,
        )
    if state.state.closed and command.raised_sequence > state.closed_sequence:
        reason = "raised again after it was closed"
    elif state.replay_pending and command.delivery_exhausted and command.raised_sequence > state.replay_sequence:
        reason = "the replay failed: its consumer gave up on the message again"
    else:
        return None  # a repeat of an open exception: the read model counts it
    # Routed again by the policy in force now: the problem is back, and whoever owns it today should see it.
    return Change(
        Transition.REOPENED,
        reason=reason,
        route=command.route,
        cause_sequence=command.raised_sequence,
        escalate_at_ns=_deadline(command.route, command.now_ns),
    )


def _acknowledge(command: Acknowledge, state: CaseState) -> Change | Refusal | None:
    if not state.exists:
        return _not_found()
    if state.state.closed:
        return _closed(state, "acknowledged")
    if state.state is State.ACKNOWLEDGED:
        if state.acknowledged_by == command.by:
            return None
        return Refusal(
            RefusalKind.PRECONDITION,
            ALREADY_ACKNOWLEDGED,
            f"the exception was acknowledged by {state.acknowledged_by} already",
            metadata={"acknowledged_by": state.acknowledged_by},
        )
    # Acknowledged in time, the clock now runs for its resolution; escalated, it escalates no further.
    deadline = 0 if state.escalated else _deadline(state.route, command.now_ns)
    return Change(Transition.ACKNOWLEDGED, actor=command.by, through=command.through, escalate_at_ns=deadline)


def _resolve(command: Resolve, state: CaseState) -> Change | Refusal | None:
    if not state.exists:
        return _not_found()
    if state.state.closed:
        same = (state.resolution, state.note, state.resolved_by) == (command.resolution, command.note, command.by)
        return None if same else _closed(state, "resolved again")
    return Change(
        Transition.RESOLVED,
        actor=command.by,
        through=command.through,
        reason=command.note,
        resolution=command.resolution,
    )


def _clear(command: Clear, state: CaseState) -> Change | None:
    """Closed by its source: an exception already closed (by a person, or cleared before) stays as it is; a clearing
    stored before the raise that last opened it, or before any raise since, is overtaken (the condition is back)."""
    if not state.exists or state.state.closed:
        return None
    if command.cleared_sequence <= max(state.opened_by_sequence, command.last_raised_sequence):
        return None
    return Change(
        Transition.RESOLVED,
        actor=command.by,
        reason=command.reason,
        resolution=Resolution.CLEARED,
        cause_sequence=command.cleared_sequence,
    )


def _request_replay(command: RequestReplay, state: CaseState) -> Change | Refusal | None:
    if not state.exists:
        return _not_found()
    if state.replay_sequence and (state.replay_pending or state.state is State.REPLAYED):
        return None  # pressed again: the replay requested stands, nothing is delivered twice
    if state.state.closed:
        return _closed(state, "replayed")
    if state.type_name != "delivery_exhausted" or not command.consumer or command.unreplayable:
        why = command.unreplayable or (
            f"only a delivery_exhausted exception carries a message to replay; this one is {state.type_name}"
        )
        return Refusal(RefusalKind.PRECONDITION, NOT_REPLAYABLE, why, metadata={"type": state.type_name})
    return Change(
        Transition.REPLAY_REQUESTED,
        actor=command.by,
        through=command.through,
        reason=command.reason,
        replay_consumer=command.consumer,
        message=command.message,
    )


def _escalate(command: Escalate, state: CaseState) -> Change | None:
    due = state.escalate_at_ns
    if not state.exists or state.state.closed or state.escalated or not due or command.now_ns < due:
        return None
    target = state.route.escalate_to if state.route else ""
    return Change(
        Transition.ESCALATED,
        owner_team=target or state.owner_team,
        reason=f"not {'resolved' if state.state is State.ACKNOWLEDGED else 'acknowledged'} in time",
    )


def _reroute(command: Reroute, state: CaseState) -> Change | None:
    """A policy change moves open exceptions nobody took yet; taken or escalated ones stay where they are."""
    if state.state is not State.OPEN or state.escalated:
        return None
    if state.route is not None and (
        command.route.revision <= state.route.revision or state.route.same_destination(command.route)
    ):
        return None  # routed under this revision or a newer one already (a replica whose policy lags), or no change
    return Change(
        Transition.REROUTED,
        route=command.route,
        escalate_at_ns=_deadline(command.route, state.opened_at_ns),
        reason=f"policy revision {command.route.revision} routes it by {command.route.rule_path}",
    )
