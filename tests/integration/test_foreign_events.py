"""The invoice ledger reads back only what other writers appended (libs/runtime/follower.ForeignEvents), against a
real nats-server: this process's own appends are never read again, another writer's events are read whether they
come after everything or between two of this process's appends, in stream order, and a wait for a sequence ends."""

from __future__ import annotations

import asyncio
import logging

import nats
import pytest
from nats.js.errors import NotFoundError
from opentelemetry.trace import NoOpTracer

from libs.runtime.decider import Recorded
from libs.runtime.events import EventPublisher, EventReader, StoredEvent
from libs.runtime.follower import ForeignEvents, StreamFollower
from libs.runtime.requests import Requests
from libs.runtime.streams import INVOICE, provision_streams
from libs.runtime.subjects import Namespace
from libs.runtime.testing import unique_namespace
from services.invoice_status import events, matching
from services.invoice_status.decider import FactVersions, InvoiceEvent, InvoiceSubmitted
from services.invoice_status.facts import InvoiceLedger
from tests.integration.helpers import frozen
from tests.unit.invoice_status.builders import POLICY, facts, invoice

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


@pytest.fixture
async def broker(nats_server):
    """An invoice stream of its own: the connection and namespace (to publish what is not an event, to start a
    follower), a publisher and a reader."""
    nc = await nats.connect(nats_server.url)
    namespace = Namespace(unique_namespace())
    await provision_streams(nc.jetstream(), namespace, (INVOICE,))
    requests = Requests(nc)
    yield nc, namespace, EventPublisher(requests, namespace, NoOpTracer(), 5), EventReader(requests, namespace)
    await nc.drain()


@pytest.fixture
def stream(broker):
    _, _, publisher, reader = broker
    return publisher, reader


async def _caught_up_at_start(broker, stored: int, catch_up_timeout: float) -> tuple[InvoiceLedger, StreamFollower]:
    """``stored`` events of other writers, then a ledger and the follower that catches it up at start."""
    nc, namespace, publisher, _ = broker
    for number in range(stored):
        await _append(publisher, f"OLD-{number}")
    ledger = InvoiceLedger()
    follower = StreamFollower(nc.jetstream(), namespace, events.DOMAIN, ledger.follow)
    await follower.start(catch_up_timeout)
    return ledger, follower


async def _ticks(foreign: ForeignEvents, count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)
        await foreign.tick()


def _submission(invoice_id: str) -> InvoiceSubmitted:
    submitted = invoice(invoice_id=invoice_id, number=f"N-{invoice_id}")
    match = matching.match_invoice(submitted, facts(received={("PO-1", 1): "100"}), POLICY)
    return InvoiceSubmitted(submitted, f"fp-{invoice_id}", f"key-{invoice_id}", match, FactVersions())


async def _append(publisher: EventPublisher, invoice_id: str) -> tuple[int, InvoiceSubmitted]:
    event = _submission(invoice_id)
    published = await publisher.publish(events.encode(invoice_id, event, workflow_key="PO-1"))
    return published.sequence, event


async def _own(ledger: InvoiceLedger, publisher: EventPublisher, invoice_id: str) -> int:
    """An append of this process: stored, then folded at once through the command handler's projection hook."""
    with ledger.appending(invoice_id, 0):
        sequence, event = await _append(publisher, invoice_id)
    recorded: Recorded[InvoiceEvent] = Recorded(event, sequence, f"e{sequence}", sequence, event.idempotency_key, "p")
    state = InvoiceLedger()
    state.fold(invoice_id, recorded)
    await ledger.applied(invoice_id, state.states[invoice_id], sequence, recorded)
    return sequence


async def test_own_appends_are_not_read_back_and_another_writers_are_in_stream_order(stream):
    publisher, reader = stream
    told: list[int] = []
    ledger = InvoiceLedger(lambda stored: told.append(stored.sequence))
    foreign = ForeignEvents(reader, events.DOMAIN, ledger)

    for number in range(5):
        await _own(ledger, publisher, f"OWN-{number}")
    for _ in range(3):
        await foreign.tick()
    assert foreign.read == 0  # five appends of this process, none read again (a push follower delivered all five)
    assert ledger.read_through == 5

    after_everything, _ = await _append(publisher, "THEIRS-1")  # another replica's, after all of this process's
    await foreign.tick()  # nothing lacking, no append under way: the stream after the ledger is read
    assert "THEIRS-1" in ledger.states
    assert (foreign.read, ledger.read_through, told) == (1, after_everything, [after_everything])

    between, _ = await _append(publisher, "THEIRS-2")  # another's, then this process's own after it: a gap
    own = await _own(ledger, publisher, "OWN-5")
    assert ledger.lacking(10) == [between]
    await foreign.tick()  # lacking for the first time: an acknowledgment could still be on its way
    assert "THEIRS-2" not in ledger.states
    await foreign.tick()  # still lacking a tick later: read
    assert "THEIRS-2" in ledger.states
    assert (foreign.read, ledger.read_through, told) == (2, own, [after_everything, between])


async def test_a_wait_for_another_writers_event_ends_once_it_is_read(stream):
    publisher, reader = stream
    ledger = InvoiceLedger()
    foreign = ForeignEvents(reader, events.DOMAIN, ledger)
    await _own(ledger, publisher, "OWN-1")
    theirs, _ = await _append(publisher, "THEIRS-1")

    async def ticking() -> None:
        while True:
            await foreign.tick()
            await asyncio.sleep(0.01)

    ticks = asyncio.create_task(ticking())
    try:
        async with asyncio.timeout(5):
            await ledger.read_up_to(theirs)  # e.g. the re-match consumer, handed another replica's invoice
    finally:
        ticks.cancel()
    assert "THEIRS-1" in ledger.states


# Found by a hostile review (each failed with the first version of ForeignEvents).


async def test_events_behind_a_held_one_are_read_and_told_once(stream):
    publisher, reader = stream
    told: list[int] = []
    ledger = InvoiceLedger(lambda stored: told.append(stored.sequence))
    foreign = ForeignEvents(reader, events.DOMAIN, ledger)
    slow = ledger.appending("SLOW", 0)  # an append whose acknowledgment is late (or lost, up to its timeout)
    slow.__enter__()
    held, _ = await _append(publisher, "SLOW")
    theirs = [(await _append(publisher, f"THEIRS-{n}"))[0] for n in range(3)]  # another replica's
    await _own(ledger, publisher, "OWN")  # after them: the four before it lack
    await _ticks(foreign, 2)
    assert list(ledger._held) == [held]
    assert all(f"THEIRS-{n}" in ledger.states for n in range(3))
    reads = foreign.read
    await _ticks(foreign, 10)
    assert ledger.lacking(10) == []  # delivered behind the held one: not lacking, not read again
    assert foreign.read == reads
    assert told == theirs
    slow.__exit__(TimeoutError, TimeoutError(), None)


class _LaggingReplica:
    """Reads through a reader, but the first direct get of ``sequence`` is answered by a stream replica that has not
    stored it yet ("no message"): with allow_direct any replica answers."""

    def __init__(self, reader: EventReader, sequence: int) -> None:
        self._reader = reader
        self._sequence = sequence
        self.lagged = False

    async def at(self, domain: str, sequence: int) -> StoredEvent:
        if sequence == self._sequence and not self.lagged:
            self.lagged = True
            raise NotFoundError(description="no message (replica behind)")
        return await self._reader.at(domain, sequence)

    async def first_sequence(self, domain: str) -> int:
        return await self._reader.first_sequence(domain)

    async def next_after(self, domain: str, after: int) -> StoredEvent | None:
        return await self._reader.next_after(domain, after)


async def test_a_replica_not_caught_up_is_asked_again_rather_than_the_event_passed(stream):
    publisher, reader = stream
    ledger = InvoiceLedger()
    theirs, _ = await _append(publisher, "THEIRS-1")
    own = await _own(ledger, publisher, "OWN-1")  # THEIRS-1 lacks
    lagging = _LaggingReplica(reader, theirs)
    foreign = ForeignEvents(lagging, events.DOMAIN, ledger)  # type: ignore[arg-type]  # reads as the reader does
    await _ticks(foreign, 2)
    assert lagging.lagged
    assert ledger.read_through == theirs - 1  # not passed: the stream's leader holds it
    await _ticks(foreign, 1)
    assert "THEIRS-1" in ledger.states
    assert ledger.read_through == own


async def test_a_message_that_is_not_an_event_is_logged_once_and_read_past(broker, caplog):
    nc, namespace, publisher, reader = broker
    ledger = InvoiceLedger()
    foreign = ForeignEvents(reader, events.DOMAIN, ledger)
    await _append(publisher, "THEIRS-1")
    bad = await nc.jetstream().publish(f"{namespace.root}.invoice.BAD.submitted", b"\xff\xff\xff not an envelope")
    after, _ = await _append(publisher, "THEIRS-3")
    caplog.set_level(logging.ERROR)
    await _ticks(foreign, 5)  # never raises: the periodic job would log every 0.05 s
    assert ledger.read_through == after
    assert {"THEIRS-1", "THEIRS-3"} <= ledger.states.keys()
    skipped = [record for record in caplog.records if f"sequence {bad.seq} is not an event" in record.getMessage()]
    assert len(skipped) == 1


async def test_a_catch_up_that_timed_out_is_finished_by_the_reading_and_says_so(broker):
    _, _, _, reader = broker
    ledger, follower = await _caught_up_at_start(broker, 30, catch_up_timeout=0)  # too large to read in time
    await follower.stop()
    foreign = ForeignEvents(reader, events.DOMAIN, ledger)
    await _ticks(foreign, 1)
    assert ledger.read_through == 30
    assert foreign.reached_end  # what the service's readiness asks, with the follower's caught_up


async def test_another_writers_newest_event_waits_while_an_append_is_under_way(stream):
    publisher, reader = stream
    ledger = InvoiceLedger()
    foreign = ForeignEvents(reader, events.DOMAIN, ledger)
    await _own(ledger, publisher, "OWN-1")
    await _append(publisher, "THEIRS-1")
    with ledger.appending("OWN-2", 0):  # its event may be the stream's next: not read back
        await _ticks(foreign, 5)
        assert "THEIRS-1" not in ledger.states
    await _ticks(foreign, 1)
    assert "THEIRS-1" in ledger.states


async def test_a_frozen_broker_is_logged_once_and_the_reading_resumes(broker, nats_server, caplog):
    nc, namespace, publisher, _ = broker
    reader = EventReader(Requests(nc), namespace, 0.2)
    ledger = InvoiceLedger()
    foreign = ForeignEvents(reader, events.DOMAIN, ledger)
    await _own(ledger, publisher, "OWN-1")
    theirs, _ = await _append(publisher, "THEIRS-1")
    caplog.set_level(logging.WARNING)
    with frozen(nats_server):
        for _ in range(4):
            await foreign.tick()  # never raises
    warnings = [record for record in caplog.records if "reading other writers' events failed" in record.getMessage()]
    assert len(warnings) == 1
    async with asyncio.timeout(10):
        while "THEIRS-1" not in ledger.states:
            await foreign.tick()
            await asyncio.sleep(0.05)
    assert ledger.read_through == theirs


async def test_events_stored_around_the_followers_stop_are_all_read(broker):
    _, _, publisher, reader = broker
    ledger, follower = await _caught_up_at_start(broker, 5, catch_up_timeout=5)
    publishing = asyncio.gather(*(_append(publisher, f"MID-{n}") for n in range(20)))
    await asyncio.sleep(0)
    await follower.stop()
    await publishing
    await _own(ledger, publisher, "OWN-1")  # an append of this process before the first tick
    for number in range(5):
        await _append(publisher, f"LATE-{number}")
    foreign = ForeignEvents(reader, events.DOMAIN, ledger)
    await _ticks(foreign, 4)
    assert ledger.read_through == 31
    assert len(ledger.states) == 31
