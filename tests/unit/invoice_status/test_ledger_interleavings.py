"""The ledger under random interleavings of what one process sees: the follower's deliveries, this process's appends
(acknowledged before or after the follower delivers them, refused by the guard, stored and then failed, two at once on
one invoice, their state applied or not, the ledger's projection run before or after another's), and other writers'
appends. At every step ``read_through`` never passes an event that is not folded, nothing held is below it and every
state is the stream's own fold; at the end nothing is held, every delivered event was told once, each invoice's in
stream order, and every state equals the stream's fold. No sockets."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from libs.runtime.decider import Recorded
from services.invoice_status.decider import INITIAL, Blocked, FactVersions, InvoiceEvent, InvoiceState, Matched, evolve
from services.invoice_status.facts import InvoiceLedger
from tests.unit.invoice_status.builders import invoice
from tests.unit.invoice_status.test_decider import AWAITING, MATCHED
from tests.unit.invoice_status.test_facts import _stored, submitted

KEYS = ("I-1", "I-2", "I-3")
Stream = list[tuple[int, str, Recorded[InvoiceEvent]]]


def _event(key: str, sequence: int, exists: bool) -> Recorded[InvoiceEvent]:
    if not exists:
        return submitted(sequence, invoice(invoice_id=key, number=f"N-{key}"))
    event = Matched(MATCHED, FactVersions()) if sequence % 2 else Blocked(AWAITING, FactVersions())
    return Recorded(event, sequence, f"e{sequence}", sequence, f"k{sequence}", "procurement")


def _fold(stream: Stream, key: str, through: int) -> InvoiceState:
    state = INITIAL
    for sequence, event_key, event in stream:
        if event_key == key and sequence <= through:
            state = evolve(state, event)
    return state


def _check(ledger: InvoiceLedger, stream: Stream) -> None:
    for sequence, key, _ in stream:
        if sequence <= ledger.read_through:
            state = ledger.states.get(key)
            assert state is not None, ("read_through passes an event not folded", sequence, ledger.read_through)
            assert state.sequence >= sequence, ("read_through passes an event not folded", sequence)
    for key, state in ledger.states.items():
        expected = _fold(stream, key, state.sequence)
        assert (state.sequence, state.status) == (expected.sequence, expected.status), ("not the stream's fold", key)
    assert all(sequence > ledger.read_through for sequence in ledger._held)


class Appends:
    """This process's appends in a run: started against the key's newest event in the stream (the handler read its
    history), stored by the broker unless another write came first, answered: refused by the guard, or stored and
    then failed (15%), else acknowledged and its state applied (but for ``applied_skipped`` of them)."""

    def __init__(self, ledger: InvoiceLedger, stream: Stream, rng: random.Random) -> None:
        self._ledger = ledger
        self._stream = stream
        self._rng = rng
        self.under_way: list[dict[str, Any]] = []
        self.applied: set[int] = set()

    def start(self) -> None:
        key = self._rng.choice(KEYS)
        expected = max((sequence for sequence, k, _ in self._stream if k == key), default=0)
        block = self._ledger.appending(key, expected)
        block.__enter__()
        self.under_way.append({"key": key, "block": block, "expected": expected, "sequence": None, "stored": False})

    def store(self) -> None:
        append = self._rng.choice(self.under_way)
        if append["stored"]:
            return
        append["stored"] = True
        last = max((sequence for sequence, k, _ in self._stream if k == append["key"]), default=0)
        if last == append["expected"]:
            append["sequence"] = len(self._stream) + 1
            self._stream.append(
                (len(self._stream) + 1, append["key"], _event(append["key"], len(self._stream) + 1, last != 0))
            )

    async def answer(self, applied_skipped: float, ledger_not_first: bool = False) -> None:
        append = self._rng.choice(self.under_way)
        if not append["stored"]:
            return
        self.under_way.remove(append)
        if append["sequence"] is None or self._rng.random() < 0.15:  # refused by the guard, or stored-then-failed
            with contextlib.suppress(TimeoutError):
                append["block"].__exit__(TimeoutError, TimeoutError(), None)
            return
        append["block"].__exit__(None, None, None)
        sequence = append["sequence"]
        event = next(event for s, _, event in self._stream if s == sequence)
        if self._rng.random() >= applied_skipped:
            if ledger_not_first:
                await asyncio.sleep(0)  # another projection awaited before the ledger's
            self.applied.add(sequence)
            await self._ledger.applied(append["key"], _fold(self._stream, append["key"], sequence), sequence, event)


async def _one_run(rng: random.Random, ledger_not_first: bool, applied_skipped: float) -> None:
    told: list[int] = []
    ledger = InvoiceLedger(lambda stored: told.append(stored.sequence))
    stream: Stream = []
    delivered = 0
    appends = Appends(ledger, stream, rng)
    steps = 0
    while steps < 60 or appends.under_way or delivered < len(stream):
        steps += 1
        choices = ["other", "start"] if steps < 60 else []
        if delivered < len(stream):
            choices += ["deliver"] * 3
        if appends.under_way:
            choices += ["store", "answer"] * 2
        if not choices:
            continue
        choice = rng.choice(choices)
        if choice == "other":
            key = rng.choice(KEYS)
            stream.append((len(stream) + 1, key, _event(key, len(stream) + 1, any(k == key for _, k, _ in stream))))
        elif choice == "start":  # the handler read the object's history (perhaps ahead of the follower)
            appends.start()
        elif choice == "deliver":
            _, key, event = stream[delivered]
            delivered += 1
            ledger.follow(_stored(event, key))
        elif choice == "store":  # the broker takes the append unless another write came first
            appends.store()
        elif choice == "answer":
            await appends.answer(applied_skipped, ledger_not_first)
        if rng.random() < 0.3:
            await asyncio.sleep(0)
        _check(ledger, stream)
    await asyncio.sleep(0)
    _check(ledger, stream)
    assert ledger._held == {}
    assert ledger._appending == {}
    assert ledger.read_through == len(stream)
    for key in KEYS:
        folded = _fold(stream, key, len(stream))
        state = ledger.states.get(key, InvoiceState())
        assert (state.sequence, state.status) == (folded.sequence, folded.status)
    assert sorted(told) == list(range(1, len(stream) + 1))  # every delivered event told once
    for key in KEYS:
        of_key = [sequence for sequence in told if stream[sequence - 1][1] == key]
        assert of_key == sorted(of_key), (key, of_key)  # each invoice's in stream order


async def test_the_ledger_stays_the_streams_fold_under_random_interleavings():
    for seed in range(600):
        try:
            await _one_run(random.Random(seed), ledger_not_first=seed % 3 == 1, applied_skipped=0.2 * (seed % 5 == 0))
        except AssertionError as error:
            raise AssertionError(f"seed {seed}: {error}") from None
