"""The exception book folds raises and transitions in stream order; summaries count the backlog and closure times."""

from __future__ import annotations

import asyncio

from google.protobuf import any_pb2

from libs.runtime.events import StoredEvent
from libs.runtime.exception_reporter import fingerprint
from services.exception_router import events
from services.exception_router.decider import Change, Resolution, Transition
from services.exception_router.domain import Route, case_id, percentile
from services.exception_router.store import ExceptionBook, case_of
from services.exception_router.summary import summarize
from syncgov.common.v1 import envelope_pb2, types_pb2
from syncgov.exception.v1 import events_pb2, exception_pb2

SECOND = 1_000_000_000
AP = Route("accounts-payable", "medium", 0, "", "exceptions.routes[4]", 0)


class Stream:
    def __init__(self) -> None:
        self.sequence = 0

    def raised(self, key: str, raise_id: str, at_s: int, *, original: bool = False) -> StoredEvent:
        ref = types_pb2.ObjectRef(object_type="invoice", object_key=key)
        raised = exception_pb2.Exception(
            exception_id=raise_id,
            type=exception_pb2.EXCEPTION_TYPE_PRICE_VARIANCE,
            object=ref,
            detail="x" * 2000,
            fingerprint=fingerprint(exception_pb2.EXCEPTION_TYPE_PRICE_VARIANCE, ref),
            raised_by="invoice-status",
        )
        if original:
            raised.original_message.subject = "sg.po.X.published"
        return self._stored(
            f"sg.exception.{raise_id}.raised", raise_id, events_pb2.ExceptionRaised(exception=raised), at_s
        )

    def change(self, case: str, change: Change, at_s: int) -> StoredEvent:
        event = events.encode(case, change)
        return self._stored(f"sg.exception.{case}.{change.transition.value}", case, event.payload, at_s)

    def _stored(self, subject: str, key: str, payload, at_s: int) -> StoredEvent:
        self.sequence += 1
        packed = any_pb2.Any()
        packed.Pack(payload)
        envelope = envelope_pb2.EventEnvelope(object_key=key, payload=packed)
        envelope.recorded_at.FromNanoseconds(at_s * SECOND)
        return StoredEvent("SG_EXCEPTION", self.sequence, subject, {}, b"", envelope)


def raise_of(stored: StoredEvent) -> exception_pb2.Exception:
    raised = events.decode_raised(stored)
    assert raised is not None
    return raised


def test_transitions_known_before_their_raises_are_listed_where_they_first_show():
    book, stream = ExceptionBook(), Stream()
    stream.sequence = 40  # the raises before expired
    book.follow(stream.change("EXC-" + "1" * 24, Change(Transition.OPENED, route=AP, type_name="price_variance"), 5))
    view = book.get("EXC-" + "1" * 24)
    assert view is not None
    assert view.first_sequence == 41  # paged like any other, not skipped as sequence 0


def test_raises_fold_by_type_object_and_fingerprint_with_first_and_last_seen():
    book, stream = ExceptionBook(), Stream()
    first = stream.raised("INV-1", "r1", 10)
    book.follow(first)
    book.follow(stream.raised("INV-1", "r2", 20, original=True))
    book.follow(stream.raised("INV-2", "r3", 30))
    assert len(book.cases) == 2
    view = book.get(case_of(raise_of(first)))
    assert view is not None
    assert (view.occurrences, view.first_raised_at_ns, view.last_raised_at_ns) == (2, 10 * SECOND, 20 * SECOND)
    assert view.last_raised_id == "r2"
    assert view.original_sequence == 2
    assert len(view.detail) == 500  # clipped in memory; GetException reads the whole raise
    assert book.read_through == 3
    assert book.raises == 3


def test_transitions_fold_onto_the_exception_once_each():
    book, stream = ExceptionBook(), Stream()
    first = stream.raised("INV-1", "r1", 10)
    book.follow(first)
    key = case_of(raise_of(first))
    opened = stream.change(key, Change(Transition.OPENED, route=AP, type_name="price_variance"), 11)
    book.follow(opened)
    book.follow(opened)  # delivered twice: folded once
    resolved = stream.change(key, Change(Transition.RESOLVED, actor="j", resolution=Resolution.FIXED, reason="n"), 70)
    book.follow(resolved)
    view = book.get(key)
    assert view is not None
    assert view.state.state.closed
    assert view.state.owner_team == "accounts-payable"
    assert book.needs_decision(view, resolved.sequence + 1, False)
    assert not book.needs_decision(view, resolved.sequence - 1, False)


def test_read_up_to_waits_for_the_follower():
    async def scenario() -> None:
        book, stream = ExceptionBook(), Stream()
        waiting = asyncio.create_task(book.read_up_to(2))
        book.follow(stream.raised("INV-1", "r1", 1))
        await asyncio.sleep(0)
        assert not waiting.done()
        book.follow(stream.raised("INV-1", "r2", 2))
        await asyncio.wait_for(waiting, 1)

    asyncio.run(scenario())


def test_case_ids_are_stable_and_distinguish_each_part():
    base = case_id("price_variance", "invoice", "INV-1", "f")
    assert base == case_id("price_variance", "invoice", "INV-1", "f")
    assert (
        len(
            {
                base,
                case_id("quantity_variance", "invoice", "INV-1", "f"),
                case_id("price_variance", "invoice", "INV-2", "f"),
                case_id("price_variance", "invoice", "INV-1", "g"),
                case_id("price_variance", "invoiceINV-1", "", "f"),
            }
        )
        == 5
    )


def four_opened(book: ExceptionBook, stream: Stream) -> list[str]:
    """Four price variances raised and opened for accounts-payable at 100 s (INV-0 .. INV-3): their ids."""
    keys = []
    for n in range(4):
        raised = stream.raised(f"INV-{n}", f"r{n}", 100)
        book.follow(raised)
        key = case_of(raise_of(raised))
        keys.append(key)
        book.follow(stream.change(key, Change(Transition.OPENED, route=AP, type_name="price_variance"), 100))
    return keys


def test_summary_counts_backlog_by_team_and_type_and_closure_percentiles():
    book, stream = ExceptionBook(), Stream()
    keys = four_opened(book, stream)
    book.follow(stream.raised("INV-0", "again", 150))
    book.follow(stream.change(keys[1], Change(Transition.ACKNOWLEDGED, actor="j"), 110))
    for key, closed_at in ((keys[2], 160), (keys[3], 400)):
        book.follow(stream.change(key, Change(Transition.RESOLVED, actor="j", resolution=Resolution.FIXED), closed_at))
    summary = summarize(book.cases.values(), "", 0, 1000 * SECOND)
    [row] = summary.backlog
    assert (row.owner_team, row.open, row.acknowledged, row.occurrences) == ("accounts-payable", 1, 1, 3)
    assert summary.closure.closed == 2
    assert (summary.closure.p50_seconds, summary.closure.p99_seconds) == (60.0, 300.0)
    assert summary.closure_by_team["accounts-payable"].closed == 2
    assert summarize(book.cases.values(), "someone-else", 0, 1000 * SECOND).closure.closed == 0


def test_percentile_is_nearest_rank():
    assert percentile([], 0.5) == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.9) == 4.0


def test_every_transition_round_trips_through_its_event_and_the_audit_knows_its_name():
    from libs.runtime.exception_reporter import TRANSITION_EVENTS

    assert {transition.value for transition in Transition} == set(TRANSITION_EVENTS)
    stream = Stream()
    route = Route("warehouse-east", "high", 3 * SECOND, "procurement-ops", "exceptions.routes[3]", 4)
    for change in (
        Change(Transition.OPENED, route=route, type_name="over_receipt", escalate_at_ns=9 * SECOND, cause_sequence=3),
        Change(Transition.REROUTED, route=route, escalate_at_ns=5 * SECOND, reason="policy"),
        Change(Transition.ACKNOWLEDGED, actor="j.doe", through="ops-console", escalate_at_ns=7 * SECOND),
        Change(Transition.RESOLVED, actor="j.doe", through="ops-console", reason="n", resolution=Resolution.WONT_FIX),
        Change(Transition.ESCALATED, owner_team="procurement-ops", reason="late"),
        Change(Transition.REOPENED, cause_sequence=12, reason="again", escalate_at_ns=1),
        Change(
            Transition.REPLAY_REQUESTED,
            actor="j",
            reason="fixed",
            replay_consumer="sg-sink",
            message=exception_pb2.OriginalMessage(consumer="sg-sink", data=b"\x00\x01"),
        ),
    ):
        decoded = events.decode(stream.change("EXC-" + "0" * 24, change, 1))
        assert decoded is not None
        assert decoded.transition is change.transition
        assert (decoded.actor, decoded.through, decoded.reason) == (change.actor, change.through, change.reason)
        assert decoded.route == change.route
        assert decoded.escalate_at_ns == change.escalate_at_ns
        assert decoded.resolution == change.resolution
        assert decoded.owner_team == change.owner_team
        assert decoded.replay_consumer == change.replay_consumer


def test_pages_start_by_position_and_escalations_come_due_soonest_first():
    book, stream = ExceptionBook(), Stream()
    escalating = Route("accounts-payable", "medium", 10 * SECOND, "procurement-ops", "exceptions.routes[4]", 0)
    keys = []
    for n in range(5):
        raised = stream.raised(f"INV-{n}", f"r{n}", 100)
        book.follow(raised)
        key = case_of(raise_of(raised))
        keys.append(key)
        deadline = (200 + n) * SECOND
        book.follow(
            stream.change(
                key,
                Change(Transition.OPENED, route=escalating, type_name="price_variance", escalate_at_ns=deadline),
                100,
            )
        )
    assert [view.case_id for view in book.after(0)] == keys
    third = book.get(keys[2])
    assert third is not None
    assert [view.case_id for view in book.after(third.first_sequence)] == keys[3:]
    # The first one was resolved meanwhile: never due.
    book.follow(stream.change(keys[0], Change(Transition.RESOLVED, actor="j", resolution=Resolution.FIXED), 150))
    assert [view.case_id for view in book.due(202 * SECOND)] == keys[1:3]
    assert book.due(202 * SECOND) == []  # taken once
    assert [view.case_id for view in book.due(10**12 * SECOND)] == keys[3:]
