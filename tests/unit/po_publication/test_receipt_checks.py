"""po-publication's checks after receipts (found in review): a receipt is checked when followed and again once its
window has passed, and no more often; the queue is bounded, a document that took in nothing on a line is not
blamed, and a hold ended below receipts under the guard always has its exception raised."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

from libs.runtime.events import Event, build_envelope, now_timestamp, parse_stored
from services.po_publication import domain
from services.po_publication.events import on_receipt_event
from services.po_publication.receipts import MAX_PENDING, SETTLED_AFTER, ReceiptChecks
from syncgov.receipt.v1 import events_pb2 as receipt_events
from syncgov.receipt.v1 import receipt_pb2
from tests.unit.po_publication.test_decider import PO, changed, given, published
from tests.unit.po_publication.test_domain import line

SECOND = 1_000_000_000


def _at(state: domain.OrderState, version: int, at_ns: int) -> domain.OrderState:
    """The state with ``version`` recorded at ``at_ns``."""
    versions = tuple(
        replace(v, recorded=replace(v.recorded, recorded_at_ns=at_ns)) if v.version == version else v
        for v in state.versions
    )
    return replace(state, versions=versions)


class _Commands:
    def __init__(self, state: domain.OrderState) -> None:
        self.current = state
        self.reads: Counter[str] = Counter()  # by PO id

    async def state(self, po_id: str) -> domain.OrderState:
        self.reads[po_id] += 1
        return self.current


class _Exceptions:
    def __init__(self) -> None:
        self.raised: list[str] = []

    async def raise_exception(self, *args, **kwargs):
        self.raised.append(kwargs["exception_id"])
        return SimpleNamespace(exception_id=kwargs["exception_id"])


_POLICY = SimpleNamespace(over_receipt_percent=lambda business_unit="": Decimal(0), revision=1)


def _receipt(at_ns: int, po_id: str = PO) -> domain.ReceiptReconciled:
    """A receipt (``erp/GR-1``) of 10 on line 1 of ``po_id``, reconciled against version 1, recorded at ``at_ns``."""
    return domain.ReceiptReconciled(po_id, "erp/GR-1", True, 1, at_ns, {1: Decimal(10)}, took_in=frozenset({1}))


def _after_window(receipt_ns: int) -> int:
    """A time at which the last check of a receipt recorded at ``receipt_ns`` is due."""
    return receipt_ns + domain.nanoseconds(domain.RECEIPT_UNSEEN_FOR + SETTLED_AFTER)


async def test_a_receipt_checked_before_the_racing_change_order_lands_is_checked_again_after_its_window():
    """A change order decided before po-publication followed the receipt lands a few ms after the follower handed
    it over; the check that ran in between found no newer version, so the receipt waits, and its last check, once
    its window has passed, raises the over-receipt against the lowered version."""
    now_ns = time.time_ns()
    clock = [now_ns]
    commands = _Commands(_at(given(published()), 1, now_ns - 60 * SECOND))
    exceptions = _Exceptions()
    checks = ReceiptChecks(commands, exceptions, lambda: _POLICY, lambda: clock[0])  # type: ignore[arg-type, return-value]
    checks.followed(_receipt(now_ns))
    await checks.run()  # the tick before the change order's append lands

    lowered = given(published(), changed(2, lines=(line(1, "6"), line(2, "10"))))
    lowered = _at(_at(lowered, 1, now_ns - 60 * SECOND), 2, now_ns + SECOND // 10)  # 100 ms after the receipt
    commands.current = lowered
    clock[0] = now_ns + SECOND
    await checks.run()  # a tick inside the window: the receipt's order is not read again yet
    clock[0] = now_ns + domain.nanoseconds(domain.RECEIPT_UNSEEN_FOR) + SECOND // 2
    await checks.run()  # the window ended, but a version recorded in it may still be on its way to the stream
    assert exceptions.raised == []
    assert commands.reads == {PO: 1}
    clock[0] = _after_window(now_ns)
    await checks.run()

    assert exceptions.raised == [domain.over_receipt_exception_id(PO, "erp/GR-1", 1)]
    assert not checks.pending
    assert not checks.waiting


async def test_each_receipt_reads_its_order_twice_at_most_however_often_the_job_runs():
    """Every run reading every receipt of the last ten seconds cost a broker read per receipt, replica and run
    (found in the benchmarks: the broker at a core for minutes after a burst of receipts). A receipt is read when
    first checked and once its window has passed (also when its order had a newer version at the first: a later
    one may lower the line); one first checked after its window (a restart replaying the stream), once."""
    now_ns = time.time_ns()
    clock = [now_ns]
    commands = _Commands(_at(given(published()), 1, now_ns - 60 * SECOND))
    checks = ReceiptChecks(commands, _Exceptions(), lambda: _POLICY, lambda: clock[0])  # type: ignore[arg-type, return-value]
    for n in range(5):
        checks.followed(_receipt(now_ns, f"PO-{n}"))
    checks.followed(_receipt(now_ns - 30 * SECOND, "PO-OLD"))  # a restart replaying: its window passed
    for tick in range(40):  # twenty seconds of runs every half second
        clock[0] = now_ns + tick * SECOND // 2
        await checks.run()
    assert commands.reads == {"PO-0": 2, "PO-1": 2, "PO-2": 2, "PO-3": 2, "PO-4": 2, "PO-OLD": 1}

    commands.current = given(published(), changed(2))  # an order with a newer version already
    checks.followed(_receipt(clock[0], "PO-NEWER"))
    for _ in range(40):
        clock[0] += SECOND // 2
        await checks.run()
    assert commands.reads["PO-NEWER"] == 2
    assert not checks.pending
    assert not checks.waiting


def _stored(payload: receipt_events.GoodsReceiptReconciled):
    """The receipt event as the follower reads it from the stream."""
    event = Event("receipt", "goods_receipt", PO, 1, "reconciled", payload, "erp:goods_receipt:GR-2", "erp")
    return parse_stored(
        "T_RECEIPT", 1, f"t.receipt.{PO}.reconciled", {}, build_envelope(event, now_timestamp()).SerializeToString()
    )


def test_a_document_that_received_nothing_on_a_line_raises_no_over_receipt_for_it():
    """A later document that only rejected goods on line 1 is not blamed for the goods an earlier document
    received (over_receipt was raised under that document's id)."""
    seen: list[domain.ReceiptReconciled] = []
    event = receipt_events.GoodsReceiptReconciled(reconciled_po_version=1)
    event.receipt.CopyFrom(
        receipt_pb2.GoodsReceipt(receipt_id="GR-2", source_system="erp", kind=receipt_pb2.RECEIPT_KIND_RECEIPT)
    )
    status = event.lines.add(po_line_number=1)
    status.received_quantity.value = "10"  # cumulative: GR-1's 10
    quantity = event.quantities.add(line_number=1, po_line_number=1, unit_of_measure="EA")
    quantity.quantity.value = "0"
    quantity.rejected_quantity.value = "2"  # GR-2 only rejected goods on line 1
    on_receipt_event(domain.ReceivedQuantities(), seen.append)(_stored(event))
    [receipt] = seen
    lowered = given(published(), changed(2, lines=(line(1, "6"), line(2, "10")))).versions
    at_receipt = tuple(replace(v, recorded=replace(v.recorded, recorded_at_ns=receipt.recorded_at_ns)) for v in lowered)
    assert domain.over_received(receipt, at_receipt) == []


def test_the_receipt_check_queue_is_bounded():
    """A head whose check keeps failing (exception stream unavailable) must not let the queue grow without bound."""
    checks = ReceiptChecks(_Commands(given()), _Exceptions(), lambda: _POLICY)  # type: ignore[arg-type, return-value]
    now_ns = time.time_ns()
    for n in range(200_000):
        checks.followed(domain.ReceiptReconciled(f"PO-{n}", f"erp/GR-{n}", True, 1, now_ns, {1: Decimal(1)}))
    assert len(checks.pending) <= MAX_PENDING


class _RacingCommands:
    """``state`` answers what was read just before a concurrent change order appended version 2; ``run`` decides
    on the log as it is when the guarded append happens (version 2 landed)."""

    def __init__(self, before: domain.OrderState, after: domain.OrderState) -> None:
        self.before, self.after = before, after

    async def state(self, po_id: str) -> domain.OrderState:
        return self.before

    async def run(self, po_id, decide, **_):
        from libs.runtime.commands import Outcome
        from tests.unit.po_publication.test_decider import recorded

        event = decide(self.after)
        if event is None:
            return Outcome(self.after, None)
        record = recorded(event, len(self.after.versions) + 10)
        self.after = domain.evolve(self.after, record)
        return Outcome(self.after, record)


async def test_a_hold_ended_below_receipts_always_has_its_exception_raised():
    """The sweep reads the order just before version 2 lands and sees nothing to release; its guarded ReleaseHeld
    then ends version 3's hold below receipts: the exception the HoldExpired names is raised from the state that
    decision was made on."""
    from services.po_publication.holds import HeldVersions
    from tests.unit.po_publication.test_decider import held

    lowering = held(3, lines=(line(1, "2"), line(2, "10")))
    before = given(published(), lowering)
    after = given(published(), lowering, changed(2))
    received = domain.ReceivedQuantities()
    received.apply(PO, {1: Decimal(10)})
    exceptions = _Exceptions()
    policy = SimpleNamespace(out_of_order_hold=timedelta(minutes=30), revision=1)
    holds = HeldVersions(
        _RacingCommands(before, after),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        exceptions,  # type: ignore[arg-type]
        lambda: policy,  # type: ignore[arg-type, return-value]
        received,
    )
    await holds.release(PO)
    ended = [v for v in holds._commands.after.expired]  # type: ignore[attr-defined]
    assert ended == [3], "the hold ended"
    assert len(exceptions.raised) == 1, "and the exception its HoldExpired names was raised"
