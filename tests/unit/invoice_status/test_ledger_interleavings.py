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


async def _one_run(rng: random.Random, ledger_not_first: bool, applied_skipped: float) -> None:
    told: list[int] = []
    ledger = InvoiceLedger(lambda stored: told.append(stored.sequence))
    stream: Stream = []
    delivered = 0
    under_way: list[dict[str, Any]] = []
    steps = 0
    while steps < 60 or under_way or delivered < len(stream):
        steps += 1
        choices = ["other", "start"] if steps < 60 else []
        if delivered < len(stream):
            choices += ["deliver"] * 3
        if under_way:
            choices += ["store", "answer"] * 2
        if not choices:
            continue
        choice = rng.choice(choices)
        if choice == "other":
            key = rng.choice(KEYS)
            stream.append((len(stream) + 1, key, _event(key, len(stream) + 1, any(k == key for _, k, _ in stream))))
        elif choice == "start":  # the handler read the object's history (perhaps ahead of the follower)
            key = rng.choice(KEYS)
            expected = max((sequence for sequence, k, _ in stream if k == key), default=0)
            block = ledger.appending(key, expected)
            block.__enter__()
            under_way.append({"key": key, "block": block, "expected": expected, "sequence": None, "stored": False})
        elif choice == "deliver":
            sequence, key, event = stream[delivered]
            delivered += 1
            ledger.follow(_stored(event, key))
        elif choice == "store":  # the broker takes the append unless another write came first
            append = rng.choice(under_way)
            if append["stored"]:
                continue
            append["stored"] = True
            last = max((sequence for sequence, k, _ in stream if k == append["key"]), default=0)
            if last == append["expected"]:
                append["sequence"] = len(stream) + 1
                stream.append((len(stream) + 1, append["key"], _event(append["key"], len(stream) + 1, last != 0)))
        elif choice == "answer":
            append = rng.choice(under_way)
            if not append["stored"]:
                continue
            under_way.remove(append)
            if append["sequence"] is None or rng.random() < 0.15:  # the guard refused it, or stored-then-timed-out
                with contextlib.suppress(TimeoutError):
                    append["block"].__exit__(TimeoutError, TimeoutError(), None)
            else:
                append["block"].__exit__(None, None, None)
                sequence = append["sequence"]
                event = next(event for s, _, event in stream if s == sequence)
                if rng.random() >= applied_skipped:
                    if ledger_not_first:
                        await asyncio.sleep(0)  # another projection awaited before the ledger's
                    await ledger.applied(append["key"], _fold(stream, append["key"], sequence), sequence, event)
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
