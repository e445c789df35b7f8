"""An exception's life, decided and folded without I/O: open, repeat, acknowledge, resolve, reopen, replay, escalate,
re-route."""

from __future__ import annotations

from functools import reduce

from hypothesis import given
from hypothesis import strategies as st

from libs.runtime.decider import Recorded, Refusal, RefusalKind
from services.exception_router.decider import (
    ALREADY_ACKNOWLEDGED,
    CLOSED,
    INITIAL,
    NOT_FOUND,
    NOT_REPLAYABLE,
    Acknowledge,
    CaseState,
    Change,
    Clear,
    Escalate,
    Observe,
    RequestReplay,
    Reroute,
    Resolution,
    Resolve,
    State,
    Transition,
    decide,
    evolve,
)
from services.exception_router.domain import Route

HOUR = 3_600_000_000_000
AP = Route("accounts-payable", "medium", HOUR, "procurement-ops", "exceptions.routes[4]", 0)
NO_ESCALATION = Route("accounts-payable", "medium", 0, "", "exceptions.routes[4]", 0)


class History:
    """Events appended one after another, as the stream would number them (raises take sequences too)."""

    def __init__(self, start: CaseState = INITIAL) -> None:
        self.state = start
        self.sequence = 0

    def raise_(self) -> int:
        self.sequence += 1
        return self.sequence

    def apply(self, decision: Change | Refusal | None, at_ns: int = 0) -> Change | Refusal | None:
        if isinstance(decision, Change):
            self.sequence += 1
            self.state = evolve(self.state, Recorded(decision, self.sequence, "e", at_ns, "k", "s"))
        return decision


def observe(history: History, route: Route = AP, now: int = 0, exhausted: bool = False) -> Change | Refusal | None:
    raised = history.raise_()
    return history.apply(decide(Observe(raised, "price_variance", route, now, exhausted), history.state), now)


def test_the_first_raise_opens_and_routes_with_a_deadline_and_repeats_write_nothing():
    history = History()
    opened = observe(history, now=10)
    assert isinstance(opened, Change)
    assert opened.transition is Transition.OPENED
    assert history.state.state is State.OPEN
    assert history.state.owner_team == "accounts-payable"
    assert history.state.escalate_at_ns == 10 + HOUR
    for _ in range(5):
        assert observe(history, now=20) is None


def test_acknowledge_once_per_person_and_the_clock_runs_for_the_resolution():
    history = History()
    observe(history, now=0)
    taken = history.apply(decide(Acknowledge("j.doe", "ops-console", 5 * HOUR), history.state), 5 * HOUR)
    assert isinstance(taken, Change)
    assert history.state.escalate_at_ns == 6 * HOUR
    assert decide(Acknowledge("j.doe", "ops-console", 0), history.state) is None
    other = decide(Acknowledge("m.roe", "ops-console", 0), history.state)
    assert isinstance(other, Refusal)
    assert other.reason == ALREADY_ACKNOWLEDGED


def test_resolving_closes_and_only_a_raise_stored_after_the_closure_reopens():
    history = History()
    observe(history)
    before_closure = history.raise_()  # stored before the resolution, processed after it
    history.apply(decide(Resolve(Resolution.FIXED, "mapped", "j.doe", "ops-console"), history.state))
    assert history.state.state.closed
    assert history.state.escalate_at_ns == 0  # a closed exception has no deadline
    late = decide(Observe(before_closure, "price_variance", AP, 0, False), history.state)
    assert late is None
    reopened = observe(history, now=7)
    assert isinstance(reopened, Change)
    assert reopened.transition is Transition.REOPENED
    assert history.state.state is State.OPEN
    assert history.state.reopened == 1
    assert history.state.resolution is None
    assert history.state.acknowledged_by == ""


def test_a_closed_exception_refuses_changes_but_answers_the_same_resolution_again():
    history = History()
    observe(history)
    resolve = Resolve(Resolution.ACCEPTED, "agreed", "j.doe", "ops-console")
    history.apply(decide(resolve, history.state))
    assert decide(resolve, history.state) is None
    other = decide(Resolve(Resolution.WONT_FIX, "no", "j.doe", "ops-console"), history.state)
    assert isinstance(other, Refusal)
    assert other.reason == CLOSED
    assert other.kind is RefusalKind.PRECONDITION
    ack = decide(Acknowledge("j.doe", "ops-console", 0), history.state)
    assert isinstance(ack, Refusal)
    assert ack.reason == CLOSED


def test_a_clearing_resolves_an_open_exception_and_a_raise_stored_after_it_reopens_it_whatever_the_order():
    history = History()
    observe(history)
    cleared_at = history.raise_()  # the clearing takes its place in the stream
    raised_again = history.raise_()  # the condition is back, stored after the clearing, processed after it
    closed = history.apply(decide(Clear(cleared_at, "control-plane", "acknowledged", 1), history.state))
    assert isinstance(closed, Change)
    assert closed.transition is Transition.RESOLVED
    assert history.state.resolution is Resolution.CLEARED
    assert history.state.resolved_by == "control-plane"
    assert history.state.closed_sequence == cleared_at  # closed as of the clearing, not of its resolution
    reopened = decide(Observe(raised_again, "sla_breach", AP, 0, False), history.state)
    assert isinstance(reopened, Change)
    assert reopened.transition is Transition.REOPENED


def test_a_clearing_overtaken_by_a_raise_or_a_closure_writes_nothing():
    history = History()
    observe(history)
    cleared_at = history.raise_()
    raised_again = history.raise_()  # folded by the book before the clearing is decided
    assert decide(Clear(cleared_at, "control-plane", "done", raised_again), history.state) is None
    history.apply(decide(Resolve(Resolution.FIXED, "n", "j.doe", "ops"), history.state))
    assert decide(Clear(history.raise_(), "control-plane", "done", 0), history.state) is None  # closed already
    reopened = observe(history)
    assert isinstance(reopened, Change)
    assert decide(Clear(cleared_at, "control-plane", "done", 0), history.state) is None  # older than the reopening
    assert decide(Clear(cleared_at, "control-plane", "done", 0), INITIAL) is None  # never opened


def test_commands_on_an_unknown_exception_are_not_found():
    for command in (
        Acknowledge("j.doe", "ops", 0),
        Resolve(Resolution.FIXED, "n", "j.doe", "ops"),
        RequestReplay("j.doe", "r", "ops", "c"),
    ):
        refusal = decide(command, INITIAL)
        assert isinstance(refusal, Refusal)
        assert refusal.reason == NOT_FOUND


def exhausted_case() -> History:
    history = History()
    raised = history.raise_()
    history.apply(decide(Observe(raised, "delivery_exhausted", AP, 0, True), history.state))
    return history


def test_a_replay_is_requested_once_however_often_it_is_pressed_and_closes_when_processed():
    history = exhausted_case()
    press = RequestReplay("j.doe", "mapping fixed", "ops-console", "sg-erp-sink")
    requested = history.apply(decide(press, history.state))
    assert isinstance(requested, Change)
    assert requested.transition is Transition.REPLAY_REQUESTED
    request_sequence = history.sequence
    assert decide(press, history.state) is None
    history.apply(Change(Transition.REPLAYED, actor="sg-erp-sink", cause_sequence=request_sequence), 99)
    assert history.state.state is State.REPLAYED
    assert history.state.resolution is Resolution.REPLAYED
    assert history.state.replay_processed_at_ns == 99
    assert decide(press, history.state) is None  # closed by that replay: still that one


def test_a_replayed_record_for_another_request_changes_nothing():
    history = exhausted_case()
    history.apply(decide(RequestReplay("j.doe", "fix", "ops", "c"), history.state))
    before = history.state
    history.apply(Change(Transition.REPLAYED, cause_sequence=history.sequence + 50))
    assert history.state.state is before.state is State.OPEN


def test_a_raise_after_a_pending_replay_means_the_replay_failed_and_reopens():
    history = exhausted_case()
    history.apply(decide(RequestReplay("j.doe", "fix", "ops", "c"), history.state))
    failed = observe(history, exhausted=True)
    assert isinstance(failed, Change)
    assert failed.transition is Transition.REOPENED
    assert "replay failed" in failed.reason
    assert history.state.replay_sequence == 0  # a new replay may be pressed
    again = decide(RequestReplay("j.doe", "fix 2", "ops", "c"), history.state)
    assert isinstance(again, Change)


def test_only_delivery_exceptions_with_a_message_replay():
    history = History()
    observe(history)
    refusal = decide(RequestReplay("j.doe", "fix", "ops", "c"), history.state)
    assert isinstance(refusal, Refusal)
    assert refusal.reason == NOT_REPLAYABLE
    no_message = decide(RequestReplay("j.doe", "fix", "ops", ""), exhausted_case().state)
    assert isinstance(no_message, Refusal)
    assert no_message.reason == NOT_REPLAYABLE


def test_escalation_fires_at_the_deadline_once_and_moves_to_the_escalation_team():
    history = History()
    observe(history, now=0)
    assert decide(Escalate(HOUR - 1), history.state) is None
    escalated = history.apply(decide(Escalate(HOUR), history.state))
    assert isinstance(escalated, Change)
    assert history.state.owner_team == "procurement-ops"
    assert history.state.escalated_from == "accounts-payable"
    assert decide(Escalate(10 * HOUR), history.state) is None


def test_no_escalation_without_a_route_delay_or_after_closure():
    history = History()
    observe(history, route=NO_ESCALATION)
    assert decide(Escalate(10**18), history.state) is None
    closed = exhausted_case()
    closed.apply(decide(Resolve(Resolution.FIXED, "n", "p", "s"), closed.state))
    assert decide(Escalate(10**18), closed.state) is None


def test_rerouting_moves_only_open_unacknowledged_unescalated_exceptions_to_a_new_destination():
    moved = Route("warehouse-east", "high", 2 * HOUR, "", "exceptions.routes[3]", 1)
    history = History()
    observe(history, now=100)
    assert decide(Reroute(AP), history.state) is None  # same destination: nothing to write
    rerouted = history.apply(decide(Reroute(moved), history.state))
    assert isinstance(rerouted, Change)
    assert (history.state.owner_team, history.state.severity) == ("warehouse-east", "high")
    assert history.state.escalate_at_ns == 100 + 2 * HOUR  # counted from the opening
    taken = History()
    observe(taken)
    taken.apply(decide(Acknowledge("j.doe", "ops", 0), taken.state))
    assert decide(Reroute(moved), taken.state) is None


commands = st.one_of(
    st.builds(lambda: "raise"),
    st.builds(lambda by: Acknowledge(by, "ops", 0), st.sampled_from(["a", "b"])),
    st.builds(lambda kind: Resolve(kind, "note", "a", "ops"), st.sampled_from(list(Resolution)[:5])),
    st.builds(lambda now: Escalate(now), st.integers(0, 3 * HOUR)),
)


@given(st.lists(commands, max_size=30))
def test_any_sequence_keeps_the_lifecycle_consistent(script):
    history = History()
    escalations = 0
    for step in script:
        if step == "raise":
            observe(history)
            continue
        decision = history.apply(decide(step, history.state))
        if isinstance(decision, Change) and decision.transition is Transition.ESCALATED:
            escalations += 1
        state = history.state
        if state.state is State.ACKNOWLEDGED:
            assert state.acknowledged_by
        if state.state.closed:
            assert state.resolution is not None
            assert state.closed_sequence > 0
    # Escalation happens at most once per opening.
    openings = 1 + history.state.reopened if history.state.exists else 0
    assert escalations <= openings


def test_fold_is_deterministic():
    history = History()
    observe(history)
    history.apply(decide(Acknowledge("a", "ops", 0), history.state))
    changes = [
        Change(Transition.OPENED, route=AP, type_name="price_variance"),
        Change(Transition.ACKNOWLEDGED, actor="a", through="ops"),
    ]
    folded = reduce(
        lambda s, item: evolve(s, Recorded(item[1], item[0] + 1, "e", 0, "k", "s")), enumerate(changes), INITIAL
    )
    assert folded.state is State.ACKNOWLEDGED
    assert folded.owner_team == "accounts-payable"


def test_a_reopening_is_routed_by_the_policy_in_force_then():
    """Chaos found it: reopened under an older route, the exception kept it until a restart re-routed it."""
    later = Route("procurement-ops", "high", 4_000_000_000, "integration-team", "exceptions.routes[1]", 1)
    history = History()
    observe(history, route=AP, now=0)
    history.apply(decide(Resolve(Resolution.FIXED, "n", "j.doe", "ops"), history.state))
    raised = history.raise_()
    reopened = history.apply(decide(Observe(raised, "price_variance", later, 100, False), history.state), 100)
    assert isinstance(reopened, Change)
    assert history.state.route == later
    assert (history.state.owner_team, history.state.severity) == ("procurement-ops", "high")
    assert history.state.escalate_at_ns == 100 + 4_000_000_000
    assert decide(Reroute(later), history.state) is None  # nothing left for a re-routing sweep to change
