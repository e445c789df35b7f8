"""Randomised interleavings of the invoice ledger fed as the service feeds it: this process's appends through
applied(), every other event only through ForeignEvents.tick (what it lacks, by direct get after a persistence tick;
the idle probe). No sockets: the reader reads an in-memory stream, each call yielding to the loop a random number of
times so that ticks interleave with appends, acknowledgments (some lost), other writers and waits; a share of the
direct gets is answered "no message" as by a stream replica that has not caught up (tests/integration/
test_foreign_events.py runs the same against a real nats-server). Written by a hostile review of ForeignEvents.

Invariants checked at every step: read_through never passes an unfolded event; nothing held is at/below it; states
are the stream's fold. At the end (quiescent ticks): read_through == stream end, all folded, nothing held, every
event not folded by applied() is told (on_read) exactly once and per invoice in stream order, waits ended."""

from __future__ import annotations

import asyncio
import collections
import os
import random
from typing import Any

from nats.js.errors import NotFoundError

from libs.runtime.follower import ForeignEvents
from services.invoice_status.decider import InvoiceState
from services.invoice_status.facts import InvoiceLedger
from tests.unit.invoice_status.test_facts import _stored
from tests.unit.invoice_status.test_ledger_interleavings import KEYS, Appends, Stream, _check, _event, _fold

SEEDS = int(os.environ.get("SEEDS", "300"))  # more with SEEDS=3000


class FakeReader:
    def __init__(self, stream: Stream, rng: random.Random, stale: float = 0.0) -> None:
        self.stream = stream
        self.rng = rng
        self.stale = stale  # probability a direct get is answered by a replica that lags (404 for a stored seq)
        self.gets = 0

    async def _yield(self) -> None:
        for _ in range(self.rng.randint(0, 3)):
            await asyncio.sleep(0)

    async def at(self, domain: str, sequence: int):
        self.gets += 1
        await self._yield()
        if sequence > len(self.stream) or self.rng.random() < self.stale:
            raise NotFoundError(description=f"no message {sequence}")
        _, key, event = self.stream[sequence - 1]
        return _stored(event, key)

    async def first_sequence(self, domain: str) -> int:
        return 1

    async def next_after(self, domain: str, after: int):
        self.gets += 1
        await self._yield()
        if after + 1 > len(self.stream):
            return None
        _, key, event = self.stream[after]
        return _stored(event, key)


async def one_run(rng: random.Random, *, applied_skipped: float, stale: float = 0.0, steps_max: int = 60) -> dict:
    told: list[int] = []
    ledger = InvoiceLedger(lambda stored: told.append(stored.sequence))
    stream: Stream = []
    reader = FakeReader(stream, rng, stale)
    foreign = ForeignEvents(reader, "invoice", ledger)  # type: ignore[arg-type]  # reads as EventReader does
    appends = Appends(ledger, stream, rng)
    waits: list[asyncio.Task] = []
    tick_task: asyncio.Task | None = None
    steps = 0
    while steps < steps_max or appends.under_way:
        steps += 1
        choices = ["other", "start", "tick", "tick"] if steps < steps_max else ["tick"]
        if appends.under_way:
            choices += ["store", "answer"] * 2
        if steps < steps_max and stream:
            choices.append("wait")
        choice = rng.choice(choices)
        if choice == "other":
            key = rng.choice(KEYS)
            stream.append((len(stream) + 1, key, _event(key, len(stream) + 1, any(k == key for _, k, _ in stream))))
        elif choice == "start":
            appends.start()
        elif choice == "tick":
            if tick_task is None or tick_task.done():
                if tick_task is not None:
                    tick_task.result()
                tick_task = asyncio.ensure_future(foreign.tick())
        elif choice == "wait":
            target = rng.randint(1, len(stream))
            waits.append(asyncio.ensure_future(asyncio.wait_for(ledger.read_up_to(target), 60)))
        elif choice == "store":
            appends.store()
        elif choice == "answer":
            await appends.answer(applied_skipped)
        if rng.random() < 0.5:
            await asyncio.sleep(0)
        _check(ledger, stream)
    # quiescence: ticks until caught up (bounded)
    for _ in range(200):
        if tick_task is not None and not tick_task.done():
            await tick_task
        tick_task = None
        await asyncio.sleep(0)
        await foreign.tick()
        _check(ledger, stream)
        if ledger.read_through == len(stream) and not ledger.lacking(10):
            break
    await asyncio.sleep(0)
    _check(ledger, stream)
    result: dict[str, Any] = {"stream": len(stream), "read_through": ledger.read_through, "gets": reader.gets}
    assert ledger._held == {}, "held at end"
    assert ledger._appending == {}
    assert ledger.read_through == len(stream), ("stalled", ledger.read_through, len(stream))
    for key in KEYS:
        folded = _fold(stream, key, len(stream))
        state = ledger.states.get(key, InvoiceState())
        assert (state.sequence, state.status) == (folded.sequence, folded.status), ("not the fold", key)
    if waits:
        await asyncio.wait(waits, timeout=0.05)
    for waiting in waits:
        assert waiting.done(), "a read_up_to never ended"
        waiting.result()
    counts = collections.Counter(told)
    result["told_twice"] = sorted(s for s, n in counts.items() if n > 1)
    result["untold_foreign"] = sorted(s for s, _, _ in stream if s not in counts and s not in appends.applied)
    order_bad = []
    for key in KEYS:
        of_key = [s for s in told if stream[s - 1][1] == key]
        if of_key != sorted(of_key):
            order_bad.append((key, of_key))
    result["order_bad"] = order_bad
    return result


async def test_read_through_never_passes_an_unfolded_event_and_every_state_is_the_streams_fold():
    failures = []
    for seed in range(SEEDS):
        try:
            await one_run(random.Random(seed), applied_skipped=0.2 * (seed % 5 == 0))
        except AssertionError as error:
            failures.append((seed, str(error)[:200]))
    assert not failures, failures[:10]


async def test_every_other_writers_event_is_told_once_in_stream_order():
    twice, untold, order = [], [], []
    for seed in range(SEEDS):
        r = await one_run(random.Random(seed), applied_skipped=0.2 * (seed % 5 == 0))
        if r["told_twice"]:
            twice.append((seed, r["told_twice"]))
        if r["untold_foreign"]:
            untold.append((seed, r["untold_foreign"]))
        if r["order_bad"]:
            order.append((seed, r["order_bad"]))
    assert twice == [], "told more than once"
    assert untold == [], "another writer's event never told"
    assert order == [], "told out of stream order"


async def test_a_replica_not_caught_up_loses_no_event():
    """A lagging replica answering a direct get with 404 for a stored sequence (allow_direct, R3)."""
    failures = []
    for seed in range(SEEDS):
        try:
            await one_run(random.Random(seed), applied_skipped=0.0, stale=0.05)
        except AssertionError as error:
            failures.append((seed, str(error)[:200]))
    assert failures == []
