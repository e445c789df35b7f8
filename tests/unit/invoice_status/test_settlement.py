"""What follows a submission's append: which submissions their request settled (Rematcher.settled_by_request), and
who settles the rest when (Settlements), on a clock the tests move. No sockets: a settlement here records what it was
given; against real servers it is tests/integration/test_invoice_rematch.py."""

from __future__ import annotations

from typing import Any, cast

import pytest

from libs.runtime.buckets import Mark, MarkOfAnotherStream, MarkUnreadable
from libs.runtime.decider import Recorded
from libs.runtime.events import StoredEvent, StreamPosition
from services.invoice_status.decider import Blocked, FactVersions, InvoiceEvent, InvoiceState, Released
from services.invoice_status.facts import InvoiceLedger
from services.invoice_status.rematch import Rematcher
from services.invoice_status.settlement import (
    RETRY_AFTER_SECONDS,
    SETTLE_AFTER_SECONDS,
    STALLED_AFTER_SECONDS,
    Settlements,
)
from syncgov.common.v1 import envelope_pb2
from tests.unit.invoice_status.builders import invoice, line
from tests.unit.invoice_status.test_decider import PRICE as UNIT_PRICE
from tests.unit.invoice_status.test_facts import matched_with

CREATED = "2026-11-27T10:00:00.123456789Z"  # when the invoice stream the tests read was created


def _rematcher(ledger: InvoiceLedger) -> Rematcher:
    unused = cast(Any, None)  # the commands, the matcher, the raising and the policy: not asked here
    return Rematcher(unused, unused, ledger, unused, unused, unused)


def test_a_submission_that_missed_nothing_is_settled_by_its_request():
    ledger = InvoiceLedger()
    ledger.fold("I-1", matched_with(1, invoice(line(quantity="4"), invoice_id="I-1", number="A-1"), 0))
    ledger.fold("I-2", matched_with(2, invoice(line(quantity="4"), invoice_id="I-2", number="A-2"), 1))
    assert _rematcher(ledger).settled_by_request("I-2", 2)


def test_what_a_request_cannot_settle_is_left_to_the_settlement():
    ledger = InvoiceLedger()
    ledger.fold("I-1", matched_with(1, invoice(line(quantity="4"), invoice_id="I-1", number="A-1"), 0))
    # I-2 was matched at the same instant as I-1, without it: it is re-matched.
    ledger.fold("I-2", matched_with(2, invoice(line(quantity="4"), invoice_id="I-2", number="A-2"), 0))
    credit_note = invoice(line(quantity="1"), invoice_id="C-1", number="CN-1", credit_note=True, credits="I-1")
    ledger.fold("C-1", matched_with(3, credit_note, 2))  # the invoice it credits is re-matched
    ledger.fold("I-4", matched_with(4, invoice(line(po="PO-4"), invoice_id="I-4", number="A-4"), 3))
    ledger.fold("I-4", Recorded(Released("someone", "checked", ()), 5, "e5", 5, "k5", "invoice-status"))
    rematcher = _rematcher(ledger)
    assert not rematcher.settled_by_request("I-2", 2)
    assert not rematcher.settled_by_request("C-1", 3)
    assert not rematcher.settled_by_request("I-4", 4)  # appended to since: the state is not the submission's
    assert not rematcher.settled_by_request("I-9", 9)  # the ledger has not read the stream up to it


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Mark:
    """The settled-through mark as libs/runtime/buckets.SequenceMark keeps it (tests/integration/test_buckets.py runs
    that against nats-server): it only moves forward, unless replaced or of another stream."""

    def __init__(self, stored: int | None = None, stream: str = "") -> None:
        self.stored: int | None = stored
        self.stream = stream  # of the stream the stored sequence counts
        self.unreadable = False
        self.unreachable = False
        self.writes: list[int] = []

    async def read(self) -> Mark | None:
        if self.unreadable:
            raise MarkUnreadable("sg_invoice_marks/settled-through holds 'x', not a stream sequence")
        return None if self.stored is None else Mark(self.stored, self.stream)

    async def advance(self, sequence: int, stream: str) -> int:
        if self.unreachable:
            raise ConnectionError("the broker is unreachable")
        if self.stored is not None and self.stream not in ("", stream):
            raise MarkOfAnotherStream("sg_invoice_marks", "settled-through", Mark(self.stored, self.stream))
        if self.stored is None or sequence > self.stored:
            await self.replace(sequence, stream)
        assert self.stored is not None
        return self.stored

    async def replace(self, sequence: int, stream: str) -> None:
        self.stored, self.stream = sequence, stream
        self.writes.append(sequence)


class _World:
    """Settlements with a clock, a ledger position, a stream and a mark the test sets; what it settled, in order."""

    def __init__(self, newest: int = 0, tail: int = 1_000, mark: int | None = None, marked: str = CREATED) -> None:
        """``marked``: the stream the stored ``mark`` counts ("": a mark stored before marks named their stream)."""
        self.clock = _Clock()
        self.read_through = 0
        self.newest = newest
        self.created = CREATED  # the stream's creation time
        self.settled: list[int] = []
        self.read_back: list[int] = []
        self.failing: set[int] = set()
        self.mark = _Mark(mark, marked if mark is not None else "")
        self.settlements = Settlements(
            self._settle, self._read, lambda: self.read_through, self._newest, tail, self.mark, clock=self.clock
        )

    async def _settle(self, stored: StoredEvent) -> None:
        if stored.sequence in self.failing:
            raise ConnectionError("the broker is unreachable")
        self.settled.append(stored.sequence)

    async def _read(self, sequence: int) -> StoredEvent:
        self.read_back.append(sequence)
        return stored_event(sequence, "submitted")

    async def _newest(self) -> StreamPosition:
        position = StreamPosition(self.newest, self.created)
        self.on_newest()
        return position

    def on_newest(self) -> None:
        """What happens elsewhere right after the stream answered its newest sequence (tests replace it)."""

    async def own_submission(self, sequence: int) -> None:
        recorded = matched_with(sequence, invoice(line(), invoice_id=f"I-{sequence}"), sequence - 1)
        await self.settlements.applied(f"I-{sequence}", cast(InvoiceState, None), sequence, recorded)


def stored_event(sequence: int, name: str, invoice_id: str = "") -> StoredEvent:
    invoice_id = invoice_id or f"I-{sequence}"
    envelope = envelope_pb2.EventEnvelope(object_key=invoice_id)
    return StoredEvent("SG_INVOICE", sequence, f"sg.invoice.{invoice_id}.{name}", {}, b"", envelope)


async def test_an_own_submission_its_request_settled_is_not_settled_again():
    world = _World()
    await world.own_submission(1)
    world.settlements.request_ended("I-1", 1, settled=True)
    world.read_through = 1
    world.clock.now += 10 * SETTLE_AFTER_SECONDS
    await world.settlements.tick()
    assert world.settled == []
    assert world.settlements.pending == {}


async def test_an_own_submission_its_request_left_unsettled_is_settled_once_the_ledger_read_up_to_it():
    world = _World()
    await world.own_submission(3)
    world.settlements.request_ended("I-3", 3, settled=False)
    world.read_through = 2
    await world.settlements.tick()
    assert world.settled == []  # missed() is not final before the ledger read the stream up to it
    world.read_through = 3
    await world.settlements.tick()
    assert (world.settled, world.read_back) == ([3], [3])  # read from the stream: the process kept nothing of it
    await world.settlements.tick()
    assert world.settled == [3]


async def test_an_own_submission_whose_request_never_ended_is_settled_after_the_grace():
    world = _World()
    await world.own_submission(1)  # the request was cancelled after the append, before raising its block
    world.read_through = 1
    world.clock.now += SETTLE_AFTER_SECONDS / 2
    await world.settlements.tick()
    assert world.settled == []  # its request may still be raising
    world.clock.now += SETTLE_AFTER_SECONDS
    await world.settlements.tick()
    assert world.settled == [1]


async def test_an_own_re_match_block_is_noted_until_the_re_match_raised_it_and_a_replay_or_release_is_not():
    world = _World()
    replayed = None
    await world.settlements.applied("I-1", cast(InvoiceState, None), 1, replayed)
    released: Recorded[InvoiceEvent] = Recorded(Released("someone", "ok", ()), 2, "e2", 2, "k2", "invoice-status")
    await world.settlements.applied("I-1", cast(InvoiceState, None), 2, released)
    assert world.settlements.pending == {}
    block: Recorded[InvoiceEvent] = Recorded(Blocked(UNIT_PRICE, FactVersions()), 3, "e3", 3, "k3", "invoice-status")
    await world.settlements.applied("I-1", cast(InvoiceState, None), 3, block)
    again: Recorded[InvoiceEvent] = Recorded(block.event, 4, "e4", 4, "k4", "invoice-status")
    await world.settlements.applied("I-1", cast(InvoiceState, None), 4, again)
    world.settlements.request_ended("I-1", 3, settled=True)  # the re-match raised it
    world.read_through = 4
    world.clock.now += SETTLE_AFTER_SECONDS
    await world.settlements.tick()
    assert world.settled == [4]  # its re-match's raise failed: settled after the grace


async def test_a_replayed_submission_is_settled_again_unless_its_request_settled_it():
    world = _World()
    world.read_through = 2
    world.settlements.request_ended("I-1", 1, settled=True)
    world.settlements.request_ended("I-2", 2, settled=False)  # a replay: its first request may have died
    await world.settlements.tick()
    assert (world.settled, world.read_back) == ([2], [2])


async def test_another_writers_submissions_and_blocks_are_settled_after_the_grace_oldest_first():
    world = _World()
    for sequence, name in ((5, "blocked"), (4, "submitted"), (6, "matched"), (7, "released")):
        world.settlements.followed(stored_event(sequence, name))
    world.read_through = 7
    await world.settlements.tick()
    assert world.settled == []  # its own request settles it first
    world.clock.now += SETTLE_AFTER_SECONDS
    await world.settlements.tick()
    assert world.settled == [4, 5]  # a re-match's match or a release needs nothing after it
    assert world.read_back == []  # read already: kept as read


async def test_a_failed_settlement_stays_pending_and_is_tried_again_after_a_pause(caplog):
    world = _World()
    world.settlements.followed(stored_event(1, "submitted"))
    world.settlements.followed(stored_event(2, "submitted"))
    world.read_through = 2
    world.failing = {1}
    world.clock.now += SETTLE_AFTER_SECONDS
    await world.settlements.tick()
    assert world.settled == [2]  # one failing holds up no other
    assert world.settlements.pending[1].failures == 1
    assert "failure 1" in caplog.text
    world.failing = set()
    world.clock.now += RETRY_AFTER_SECONDS[0] / 2
    await world.settlements.tick()
    assert world.settled == [2]
    world.clock.now += RETRY_AFTER_SECONDS[0]
    await world.settlements.tick()
    assert world.settled == [2, 1]
    assert world.settlements.pending == {}


async def test_the_pause_grows_with_the_failures_up_to_the_last_and_an_ending_request_keeps_it():
    world = _World()
    world.settlements.followed(stored_event(1, "submitted"))
    world.read_through = 1
    world.failing = {1}
    world.clock.now += SETTLE_AFTER_SECONDS
    pauses = []
    for _ in range(len(RETRY_AFTER_SECONDS) + 2):
        await world.settlements.tick()
        unsettled = world.settlements.pending[1]
        pauses.append(unsettled.due_at - world.clock.now)
        world.settlements.request_ended("I-1", 1, settled=False)  # a replay's request: the pause is kept
        assert unsettled.due_at - world.clock.now == pauses[-1]
        world.clock.now = unsettled.due_at
    assert pauses == [*RETRY_AFTER_SECONDS, RETRY_AFTER_SECONDS[-1], RETRY_AFTER_SECONDS[-1]]
    assert world.settlements.pending[1].failures == len(RETRY_AFTER_SECONDS) + 2


async def test_the_first_start_on_a_stream_settles_its_tail_at_once_and_what_comes_after_it_after_the_grace():
    world = _World(newest=10, tail=3)
    await world.settlements.begin()
    assert world.mark.stored == 7  # no mark yet: the tail's start is stored as one
    assert world.mark.stream == CREATED  # naming the stream it counts
    for sequence in range(1, 11):  # the follower's replay
        world.settlements.followed(stored_event(sequence, "submitted"))
    await world.settlements.started()
    world.settlements.followed(stored_event(11, "submitted"))  # another replica's, read after the start
    world.read_through = 11
    await world.settlements.tick()
    assert world.settled == [8, 9, 10]
    world.clock.now += SETTLE_AFTER_SECONDS
    await world.settlements.tick()
    assert world.settled == [8, 9, 10, 11]


async def test_events_older_than_the_starts_tail_read_after_it_are_not_settled_again():
    world = _World(newest=10_000, tail=3)
    await world.settlements.begin()
    await world.settlements.started()  # the catch-up timed out: the reading back finishes it
    for sequence in range(1, 10_001):
        world.settlements.followed(stored_event(sequence, "submitted"))
    assert sorted(world.settlements.pending) == [9_998, 9_999, 10_000]


async def test_settlements_waiting_long_for_the_ledger_to_read_the_stream_are_logged_once_in_a_while(caplog):
    world = _World()
    world.settlements.followed(stored_event(5, "submitted"))
    world.read_through = 4  # e.g. a sequence before it the stream keeps answering "no message" for
    world.clock.now += SETTLE_AFTER_SECONDS
    await world.settlements.tick()
    assert "wait for the invoice stream" not in caplog.text
    world.clock.now += STALLED_AFTER_SECONDS + 1
    await world.settlements.tick()
    await world.settlements.tick()
    assert caplog.text.count("wait for the invoice stream to be read up to 5") == 1
    world.clock.now += STALLED_AFTER_SECONDS + 1
    await world.settlements.tick()
    assert caplog.text.count("wait for the invoice stream to be read up to 5") == 2


async def test_at_start_everything_after_the_mark_is_settled_at_once_however_many_events_came_after_it():
    world = _World(newest=10, tail=3, mark=2)
    await world.settlements.begin()
    for sequence in range(1, 11):
        world.settlements.followed(stored_event(sequence, "submitted"))
    await world.settlements.started()
    world.read_through = 10
    await world.settlements.tick()
    assert world.settled == list(range(3, 11))
    assert world.read_back == [3, 4, 5, 6, 7]  # older than the tail: not kept in memory, read again when due
    assert world.mark.writes == []  # found, not written


async def test_a_mark_another_replica_moves_while_this_one_starts_is_not_taken_for_a_recreated_stream(caplog):
    world = _World(newest=10, tail=3, mark=5)

    def another_replica_goes_on() -> None:  # the stream grows and the running replica stores its mark
        world.newest += 2
        world.mark.stored = world.newest

    world.on_newest = another_replica_goes_on  # type: ignore[method-assign]
    await world.settlements.begin()
    assert world.mark.writes == []
    assert "recreated" not in caplog.text
    world.settlements.followed(stored_event(6, "submitted"))
    assert sorted(world.settlements.pending) == [6]  # after the mark it found


async def test_a_mark_past_the_streams_newest_event_or_unreadable_is_replaced_by_the_tails_start(caplog):
    recreated = _World(newest=10, tail=3, mark=500)  # the stream was recreated: its sequences began again
    await recreated.settlements.begin()
    assert recreated.mark.stored == 7
    assert "the stream was recreated" in caplog.text
    garbled = _World(newest=10, tail=3, mark=4)
    garbled.mark.unreadable = True
    await garbled.settlements.begin()
    assert garbled.mark.writes == [7]
    assert "not a stream sequence" in caplog.text


async def test_a_mark_of_a_stream_since_recreated_is_replaced_even_below_the_new_streams_newest_event(caplog):
    """The stream deleted and created again has grown past the old mark: only the stream the mark names tells that
    the events after it were never settled by anyone, so they are not skipped."""
    world = _World(newest=10, tail=3, mark=8, marked="2026-01-05T08:00:00Z")
    await world.settlements.begin()
    assert (world.mark.stored, world.mark.stream) == (7, CREATED)  # the tail's start, of the stream now
    assert "the stream was recreated" in caplog.text
    world.settlements.followed(stored_event(8, "submitted"))
    assert sorted(world.settlements.pending) == [8]  # at the old mark, and settled again


async def test_a_start_without_its_stream_fails_rather_than_store_a_mark_naming_none():
    world = _World(newest=0, tail=3)
    world.created = ""  # what the broker answers of a stream that does not exist
    with pytest.raises(RuntimeError, match="does not exist"):
        await world.settlements.begin()
    assert world.mark.writes == []


async def test_a_running_process_stores_over_the_mark_of_a_stream_since_recreated_unless_it_outlived_its_own(caplog):
    world = _World(newest=10, tail=3, mark=5)
    await world.settlements.begin()
    world.read_through = 9
    world.mark.stored, world.mark.stream = 500, "2026-01-05T08:00:00Z"  # a process that outlived the old stream
    await world.settlements.save()
    assert (world.mark.stored, world.mark.stream) == (9, CREATED)  # this stream is the one there is
    outlived = _World(newest=10, tail=3, mark=5)
    await outlived.settlements.begin()
    outlived.read_through = 9
    outlived.created = "2026-12-01T08:00:00Z"  # the stream was recreated under this process
    outlived.mark.stored, outlived.mark.stream = 2, outlived.created  # the mark of the stream there is now
    await outlived.settlements.save()
    outlived.read_through = 10
    await outlived.settlements.save()
    assert (outlived.mark.stored, outlived.mark.stream) == (2, outlived.created)  # left to the new stream's readers
    assert caplog.text.count("stores the settled-through mark no more") == 1


async def test_a_stream_the_broker_answers_missing_for_a_moment_is_not_taken_for_one_recreated(caplog):
    world = _World(newest=10, tail=3, mark=5)
    await world.settlements.begin()
    world.read_through = 9
    world.mark.stored, world.mark.stream = 500, "2026-01-05T08:00:00Z"  # a process that outlived the old stream
    world.created = ""  # what the broker answers of a stream it does not find
    await world.settlements.save()
    assert (world.mark.stored, world.mark.stream) == (500, "2026-01-05T08:00:00Z")  # nothing stored
    assert "was not found; trying again" in caplog.text
    world.created = CREATED  # the stream there is: this process's
    await world.settlements.save()
    assert (world.mark.stored, world.mark.stream) == (9, CREATED)


async def test_a_mark_stored_before_marks_named_their_stream_is_taken_as_the_streams_and_named_when_it_moves():
    world = _World(newest=10, tail=3, mark=5, marked="")
    await world.settlements.begin()
    assert world.mark.writes == []  # found, not replaced
    world.read_through = 10
    await world.settlements.save()
    assert (world.mark.stored, world.mark.stream) == (10, CREATED)


async def test_the_mark_stops_before_the_oldest_unsettled_and_never_passes_what_the_ledger_read():
    world = _World()
    await world.settlements.begin()
    await world.settlements.started()
    await world.own_submission(3)
    await world.own_submission(5)
    world.failing = {5}
    world.read_through = 2
    await world.settlements.save()
    assert world.mark.stored == 2  # the ledger has read no further
    world.read_through = 6
    await world.settlements.save()
    assert world.mark.stored == 2  # 3 is not settled
    world.settlements.request_ended("I-3", 3, settled=True)
    world.settlements.request_ended("I-5", 5, settled=False)
    await world.settlements.tick()  # 5 fails
    world.read_through = 20
    await world.settlements.save()
    assert world.mark.stored == 4
    world.failing = set()
    world.clock.now += RETRY_AFTER_SECONDS[0]
    await world.settlements.tick()
    await world.settlements.save()
    assert world.mark.stored == 20
    assert world.mark.writes == [0, 2, 4, 20]  # written when it moved


async def test_a_mark_not_stored_is_tried_again_and_a_higher_one_another_replica_stored_stands(caplog):
    world = _World()
    await world.settlements.begin()
    await world.settlements.started()
    world.read_through = 8
    world.mark.unreachable = True
    await world.settlements.save()
    assert "was not stored" in caplog.text
    world.mark.unreachable = False
    await world.settlements.save()
    assert world.mark.stored == 8
    await world.mark.advance(30, CREATED)  # another replica settled further
    world.read_through = 12
    await world.settlements.save()
    assert world.mark.stored == 30
    assert world.mark.writes == [0, 8, 30]


async def test_a_replay_on_another_writers_block_not_read_yet_leaves_it_to_the_reading_back_and_the_mark_waits():
    """A replay's state (or a command's that decides nothing) is read from the stream: its newest event may be another
    replica's block this ledger has not read. The ledger counts it read only once the reading back tells it, which
    notes it for settling: the mark never passes it unsettled."""
    world = _World()
    ledger = InvoiceLedger(lambda stored: world.settlements.followed(stored))
    world.settlements = Settlements(
        world._settle, world._read, lambda: ledger.read_through, world._newest, 1_000, world.mark, clock=world.clock
    )
    await world.settlements.begin()
    await world.settlements.started()
    submitted = matched_with(1, invoice(line(), invoice_id="I-1"), 0)
    ledger.fold("I-1", submitted)
    elsewhere = InvoiceLedger()
    elsewhere.fold("I-1", submitted)
    elsewhere.fold("I-1", Recorded(Blocked(UNIT_PRICE, FactVersions()), 2, "e2", 2, "k2", "invoice-status"))
    read_from_the_stream = elsewhere.states["I-1"]
    for projection in (ledger, world.settlements):  # the command handler's projections, in the wiring's order
        await projection.applied("I-1", read_from_the_stream, 2, None)
    await world.settlements.save()
    assert (ledger.read_through, world.mark.stored) == (1, 1)
    assert ledger.lacking(10) == [2]
    ledger.follow(stored_event(2, "blocked", "I-1"))  # the reading back
    assert sorted(world.settlements.pending) == [2]
    await world.settlements.save()
    assert world.mark.stored == 1
    world.clock.now += SETTLE_AFTER_SECONDS
    await world.settlements.tick()
    await world.settlements.save()
    assert (world.settled, world.mark.stored) == ([2], 2)
