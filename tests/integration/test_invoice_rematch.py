"""invoice-status: two invoices of one PO line in flight at once, against real nats-server and valkey.

Each submission is matched against the invoices recorded when its match read the ledger; two submitted at the same
instant may each be matched without the other. What follows each submission's append (settlement.py, rematch.py)
re-matches the one the stream recorded later once the ledger has read both: the request that appended it, or, when
it could not, the settlement of its own replica or of every other one.

Two replicas of invoice-status share the stream and the durable consumers, as on Kubernetes. The first test sends
each invoice to a different replica, both at once (whether the two matches overlap is up to the scheduler, so its
outcome, not the overlap, is asserted); the second records the later invoice exactly as a replica that had not read
the earlier one yet records it, so the overlap is certain.

The same settlement raises a blocked submission's exceptions when the request that appended it never did (the
process died in between, or its raise failed), and re-matches the invoice a credit note credits. The last tests
drive the Rematcher alone (its command handler and matcher in memory): two replicas re-matching one invoice at once,
each having read a fact the other had not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest

from libs.runtime.buckets import SequenceMark
from libs.runtime.commands import Outcome
from libs.runtime.consumers import Retry
from libs.runtime.decider import Recorded, Refusal
from libs.runtime.events import StoredEvent, content_sha256
from libs.runtime.subjects import Namespace
from libs.runtime.testing import running_service
from services.invoice_status import events, findings, mapping, rematch, settlement
from services.invoice_status import wiring as invoice_wiring
from services.invoice_status.decider import (
    INITIAL,
    Blocked,
    Decision,
    FactVersions,
    InvoiceEvent,
    InvoiceState,
    InvoiceStatus,
    InvoiceSubmitted,
    Matched,
    evolve,
)
from services.invoice_status.domain import MatchResult, Reason, TolerancePolicy
from services.invoice_status.facts import InvoiceLedger, Matcher, OrderLines, ReceivedLines
from services.invoice_status.wiring import wire as wire_invoices
from syncgov.exception.v1 import exception_pb2
from syncgov.invoice.v1 import invoice_service_pb2, invoice_service_pb2_grpc
from tests.integration.helpers import (
    ERP,
    PROCUREMENT,
    eventually,
    goods_receipt,
    order_received,
    raised_exceptions,
)
from tests.integration.test_invoice_status import (
    BLOCKED,
    MATCHED,
    _invoice_events,
    _state_becomes,
    invoice,
    invoice_settings,
    reasons,
)
from tests.integration.test_invoice_status import (
    invoice_stack as invoice_stack,
)
from tests.unit.invoice_status.builders import POLICY as UNIT_POLICY
from tests.unit.invoice_status.test_decider import AWAITING as UNIT_AWAITING
from tests.unit.invoice_status.test_decider import INVOICE as UNIT_INVOICE
from tests.unit.invoice_status.test_decider import MATCHED as UNIT_MATCHED
from tests.unit.invoice_status.test_decider import PRICE as UNIT_PRICE

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def two_replicas(po_settings):
    """po-publication, receipt-reconciliation and two invoice-status replicas; PO-1001 published (line 1: 10 EA at
    12.50 EUR) and 4 of line 1 received."""
    settings = invoice_settings(po_settings)
    async with (
        order_received(po_settings, (1, "4")),
        running_service(settings, wire_invoices) as (first_replica, first_channel, _),
        running_service(settings, wire_invoices) as (_, second_channel, _),
    ):
        yield (
            invoice_service_pb2_grpc.InvoiceStatusServiceStub(first_channel),
            invoice_service_pb2_grpc.InvoiceStatusServiceStub(second_channel),
            po_settings,
            first_replica.runtime,
        )


async def _recorded_order(js, settings) -> list[str]:
    """The invoice ids in the order the stream recorded their submissions."""
    return [
        stored.envelope.object_key
        async for stored in _invoice_events(js, settings)
        if stored.subject.endswith(".submitted")
    ]


async def test_of_two_invoices_submitted_at_once_over_the_received_quantity_the_later_recorded_is_blocked(
    two_replicas, js
):
    first, second, settings, _ = two_replicas
    # 3 + 3 invoiced of 4 received: each alone matches, together they are over what was received.
    answers = await asyncio.gather(
        first.SubmitInvoice(invoice("INV-A", "A-1", quantity="3"), metadata=PROCUREMENT),
        second.SubmitInvoice(invoice("INV-B", "B-1", quantity="3"), metadata=PROCUREMENT),
    )
    assert {answer.status.invoice.invoice_id for answer in answers} == {"INV-A", "INV-B"}
    earlier, later = await _recorded_order(js, settings)
    blocked = await _state_becomes(first, later, BLOCKED)
    assert blocked.state == BLOCKED, reasons(blocked)
    assert reasons(blocked) == {"quantity_variance"}
    for stub in (first, second):
        kept = await stub.GetInvoice(invoice_service_pb2.GetInvoiceRequest(invoice_id=earlier), metadata=PROCUREMENT)
        assert kept.status.state == MATCHED, reasons(kept.status)


async def _record_as_a_replica_that_had_not_read_the_others(runtime, request) -> None:
    """Append ``request``'s submission as a replica appends it whose ledger holds no invoice yet: matched by the
    service's own Matcher against the PO and receipt streams and an empty ledger, encoded by its own encoder,
    published with the subject guard through the service's publisher (the invoice-status broker user)."""
    document = request.invoice
    submitted_invoice = mapping.valid_invoice(document)
    matcher = Matcher(runtime.reader, OrderLines(runtime.reader), ReceivedLines(runtime.reader), InvoiceLedger())
    tolerances = TolerancePolicy.of(runtime.policy.current.document.tolerances)
    match, versions = await matcher.match(submitted_invoice, tolerances)
    key = f"procurement:invoice:{submitted_invoice.invoice_id}"
    event = InvoiceSubmitted(submitted_invoice, content_sha256(document), key, match, versions, document)
    encoded = events.encode(submitted_invoice.invoice_id, event, workflow_key=submitted_invoice.lines[0].po_id)
    await runtime.publisher.publish(encoded, expected_last_sequence=0)


async def test_an_invoice_recorded_with_a_match_that_missed_an_earlier_one_is_re_matched(two_replicas):
    first, second, _, runtime = two_replicas
    earlier = await first.SubmitInvoice(invoice("INV-A", "A-1", quantity="3"), metadata=PROCUREMENT)
    assert earlier.status.state == MATCHED, reasons(earlier.status)
    await _record_as_a_replica_that_had_not_read_the_others(runtime, invoice("INV-B", "B-1", quantity="3"))
    for stub in (first, second):
        blocked = await _state_becomes(stub, "INV-B", BLOCKED)
        assert reasons(blocked) == {"quantity_variance"}  # 3 + 3 invoiced of 4 received
        kept = await stub.GetInvoice(invoice_service_pb2.GetInvoiceRequest(invoice_id="INV-A"), metadata=PROCUREMENT)
        assert kept.status.state == MATCHED, reasons(kept.status)


async def test_a_blocked_submission_whose_request_raised_nothing_has_its_exceptions_raised(two_replicas, js):
    first, _, settings, runtime = two_replicas
    # Appended as a request appends it, and nothing raised after: the process died between the append and the raise.
    await _record_as_a_replica_that_had_not_read_the_others(runtime, invoice("INV-C", "C-1", quantity="6"))
    blocked = await _state_becomes(first, "INV-C", BLOCKED)
    assert reasons(blocked) == {"quantity_variance"}  # 6 invoiced of 4 received
    namespace = Namespace(settings.namespace)
    deadline = asyncio.get_running_loop().time() + 10.0
    while True:
        raised = [e for e in await raised_exceptions(js, namespace) if e.object.object_key == "INV-C"]
        if raised or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert [e.type for e in raised] == [exception_pb2.EXCEPTION_TYPE_QUANTITY_VARIANCE]
    assert list(blocked.exception_ids) == [e.exception_id for e in raised]  # the ids the status names


async def test_a_blocked_submission_whose_own_request_failed_to_raise_is_raised_by_its_replica(
    invoice_stack, js, monkeypatch
):
    """One replica: the request's raise fails after the append (the broker briefly unreachable for the exception
    stream); no other replica reads the submission as another writer's. Its own replica's settlement raises it."""
    _, receipts, stub, settings = invoice_stack
    await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "4")), metadata=ERP)
    real_raise = findings.BlockingExceptions.raise_for
    failed: list[str] = []

    async def raise_once_failing(self, invoice_id, state, match_sequence):
        if not failed:
            failed.append(invoice_id)
            raise ConnectionError("the exception stream is briefly unreachable")
        await real_raise(self, invoice_id, state, match_sequence)

    monkeypatch.setattr(findings.BlockingExceptions, "raise_for", raise_once_failing)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.SubmitInvoice(invoice("INV-R", "R-1", quantity="6"), metadata=PROCUREMENT)
    assert failed == ["INV-R"]
    namespace = Namespace(settings.namespace)

    async def raised():
        return [e for e in await raised_exceptions(js, namespace) if e.object.object_key == "INV-R"]

    found = await eventually(raised)
    assert [e.type for e in found] == [exception_pb2.EXCEPTION_TYPE_QUANTITY_VARIANCE]
    status = (
        await stub.GetInvoice(invoice_service_pb2.GetInvoiceRequest(invoice_id="INV-R"), metadata=PROCUREMENT)
    ).status
    assert list(status.exception_ids) == [e.exception_id for e in found]


async def test_a_re_match_block_whose_raise_failed_and_that_a_later_match_replaced_is_raised_by_its_replica(
    invoice_stack, js, monkeypatch
):
    """One replica (found by a review): INV-Q waits for its receipt; GR-1 (2 of 4) re-matches it blocked for quantity
    and that raise fails, so GR-1 is delivered again later; GR-2 (2 more) re-matches it clean before that, and the
    redelivery decides nothing new. The block was in force for a while: its exception must still be raised (and is
    then cleared as ended)."""
    _, receipts, stub, settings = invoice_stack
    namespace = Namespace(settings.namespace)
    first = await stub.SubmitInvoice(invoice("INV-Q", "Q-1", quantity="4"), metadata=PROCUREMENT)
    assert reasons(first.status) == {"awaiting_receipt"}
    real_raise = findings.BlockingExceptions.raise_for
    failing = [True]
    failed: list[int] = []

    async def quantity_raise_failing(self, invoice_id, state, match_sequence):
        if failing[0] and state.match is not None and Reason.QUANTITY_VARIANCE in state.match.reasons:
            failed.append(match_sequence)
            raise ConnectionError("the exception stream is briefly unreachable")
        await real_raise(self, invoice_id, state, match_sequence)

    monkeypatch.setattr(findings.BlockingExceptions, "raise_for", quantity_raise_failing)
    await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "2")), metadata=ERP)

    async def a_failed_raise():
        return failed

    block_sequence = (await eventually(a_failed_raise))[0]
    await receipts.PostGoodsReceipt(goods_receipt("GR-2", "PO-1001", (1, "2")), metadata=ERP)
    await _state_becomes(stub, "INV-Q", MATCHED)
    failing[0] = False
    wanted = findings.exception_id("INV-Q", Reason.QUANTITY_VARIANCE, block_sequence)

    async def raised():
        return [e for e in await raised_exceptions(js, namespace) if e.exception_id == wanted]

    [exception] = await eventually(raised, within=15.0)
    assert exception.type == exception_pb2.EXCEPTION_TYPE_QUANTITY_VARIANCE


def _credit_note(
    invoice_id: str, number: str, credited: str, quantity: str
) -> invoice_service_pb2.SubmitInvoiceRequest:
    request = invoice(invoice_id, number, quantity=quantity)
    request.invoice.credit_note = True
    request.invoice.credited_invoice_id = credited
    return request


async def test_a_credit_note_re_matches_the_invoice_it_credits(two_replicas):
    first, second, _, _ = two_replicas
    over = await first.SubmitInvoice(invoice("INV-D", "D-1", quantity="6"), metadata=PROCUREMENT)
    assert over.status.state == BLOCKED
    assert reasons(over.status) == {"quantity_variance"}  # 6 invoiced of 4 received
    credit = await second.SubmitInvoice(_credit_note("CN-D", "CN-1", "INV-D", "2"), metadata=PROCUREMENT)
    assert credit.status.invoice.credit_note
    for stub in (first, second):
        matched = await _state_becomes(stub, "INV-D", MATCHED)  # 6 - 2 credited of 4 received
        assert matched.state == MATCHED, reasons(matched)


# --- Two replicas re-matching one invoice at once (the Rematcher alone: its command handler and matcher in memory) --


class _OneInvoice:
    """The command handler of one invoice, its state in memory: decide, and fold what is appended."""

    def __init__(self, state: InvoiceState) -> None:
        self.state = state
        self.appended: list[InvoiceEvent] = []

    async def run(self, key: str, decide: Callable[[InvoiceState], Decision]) -> Outcome | Refusal:
        decision = decide(self.state)
        if decision is None:
            return Outcome(self.state, None)
        if isinstance(decision, Refusal):
            return decision
        recorded = Recorded(decision, self.state.sequence + 1, "e", 0, "k", "invoice-status")
        self.state = evolve(self.state, recorded)
        self.appended.append(decision)
        return Outcome(self.state, recorded)


class _Matches:
    """A matcher answering each call with the next of ``answers`` (the last one again once they run out)."""

    def __init__(self, *answers: tuple[MatchResult, FactVersions]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def match(self, _invoice, _tolerances, _policy_revision=0) -> tuple[MatchResult, FactVersions]:
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]


class _Raised:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def raise_for(self, invoice_id: str, _state: InvoiceState, match_sequence: int) -> None:
        self.calls.append((invoice_id, match_sequence))


# Replica B, woken by receipt 12 with its ledger at invoice 2, recorded the match; this replica's re-match read the
# receipts before 12 landed, a newer order version, and its ledger at invoice 1 only.
RECORDED_BY_B = FactVersions((("PO-1", 1),), receipt_sequence=12, invoice_sequence=2)
STALE = FactVersions((("PO-1", 2),), receipt_sequence=10, invoice_sequence=1)
FRESH = FactVersions((("PO-1", 2),), receipt_sequence=12, invoice_sequence=2)


def _rematcher(
    monkeypatch,
    matcher: _Matches,
    *,
    submitted_match: MatchResult = UNIT_AWAITING,
    later: tuple[Recorded[InvoiceEvent], ...] | None = None,
    raised: _Raised | None = None,
    settled: Callable[[str, int], None] = lambda invoice_id, sequence: None,
) -> tuple[rematch.Rematcher, _OneInvoice, InvoiceLedger]:
    """A Rematcher of one invoice submitted (``submitted_match``, at sequence 1) and then ``later`` events (by
    default B's match, at 3), its command handler and matcher in memory."""
    monkeypatch.setattr(rematch, "tolerances_in_force", lambda _: UNIT_POLICY)
    submission: Recorded[InvoiceEvent] = Recorded(
        InvoiceSubmitted(UNIT_INVOICE, "fp", "k", submitted_match, FactVersions()), 1, "e-1", 0, "k", "procurement"
    )
    ledger = InvoiceLedger()
    ledger.fold(UNIT_INVOICE.invoice_id, submission)
    state = evolve(INITIAL, submission)
    for event in (_b_matched(),) if later is None else later:
        state = evolve(state, event)
    commands = _OneInvoice(state)
    policy = SimpleNamespace(document=SimpleNamespace(tolerances=None), revision=1)
    rematcher = rematch.Rematcher(
        cast(Any, commands),
        cast(Any, matcher),
        ledger,
        cast(Any, raised or _Raised()),
        cast(Any, lambda: policy),
        _no_history,
        settled,
    )
    return rematcher, commands, ledger


async def _no_history(invoice_id: str) -> list[StoredEvent]:
    return []


def _other_invoice() -> Recorded[InvoiceEvent]:
    """Another invoice's submission, at sequence 2."""
    other = InvoiceSubmitted(replace(UNIT_INVOICE, invoice_id="I-2"), "fp-2", "k-2", UNIT_MATCHED, FactVersions())
    return Recorded(other, 2, "e-2", 0, "k-2", "procurement")


def _b_matched() -> Recorded[InvoiceEvent]:
    return Recorded(Matched(UNIT_MATCHED, RECORDED_BY_B), 3, "e-3", 0, "k", "invoice-status")


async def test_a_rematch_on_facts_older_on_one_fact_is_matched_again_once_the_ledger_read_as_far(monkeypatch):
    matcher = _Matches((UNIT_AWAITING, STALE), (UNIT_MATCHED, FRESH))
    rematcher, commands, ledger = _rematcher(monkeypatch, matcher)
    running = asyncio.create_task(rematcher.rematch(UNIT_INVOICE.invoice_id))
    await asyncio.sleep(0.05)
    assert matcher.calls == 1  # refused as stale: waits until the ledger has read invoice 2 before matching again
    assert not running.done()
    ledger.fold("I-2", _other_invoice())
    await asyncio.wait_for(running, 1.0)
    assert matcher.calls == 2
    assert commands.appended == []  # the fresh match is B's: the match in force stays, nothing awaiting_receipt
    assert commands.state.status is InvoiceStatus.MATCHED


async def test_a_rematch_that_leaves_a_submissions_block_in_force_leaves_the_submission_to_its_settlement(monkeypatch):
    """The raise is done, but a submission's settlement also re-matches the invoice a credit note credits: only a
    re-match's own block is settled by the re-match."""
    raised = _Raised()
    settled: list[tuple[str, int]] = []
    rematcher, commands, _ = _rematcher(
        monkeypatch,
        _Matches((UNIT_PRICE, FactVersions())),
        submitted_match=UNIT_PRICE,
        later=(),
        raised=raised,
        settled=lambda invoice_id, sequence: settled.append((invoice_id, sequence)),
    )
    await rematcher.rematch(UNIT_INVOICE.invoice_id)
    assert commands.appended == []  # the same block: nothing new
    assert raised.calls == [(UNIT_INVOICE.invoice_id, 1)]  # raised again (stored once: derived ids)
    assert settled == []


async def test_a_rematch_stale_every_time_is_delivered_again(monkeypatch):
    matcher = _Matches((UNIT_AWAITING, FactVersions((("PO-1", 2),), receipt_sequence=10, invoice_sequence=3)))
    rematcher, commands, ledger = _rematcher(monkeypatch, matcher)
    ledger.fold("I-2", _other_invoice())  # the ledger has read as far as the match recorded
    with pytest.raises(Retry):
        await rematcher.rematch(UNIT_INVOICE.invoice_id)
    assert matcher.calls == rematch.STALE_ATTEMPTS
    assert commands.appended == []


def _without_consumers(rt: Any) -> Any:
    """invoice-status with no consumer: what raises a match's exceptions is the request, the start-up or the
    settlement (which waits SETTLE_AFTER_SECONDS, longer than the first process below lives)."""
    return replace(wire_invoices(rt), consumers=())


async def test_a_blocking_match_appended_by_a_process_that_died_before_raising_is_raised_at_the_next_start(
    po_settings, js
):
    settings = invoice_settings(po_settings)
    namespace = Namespace(po_settings.namespace)
    async with order_received(po_settings, (1, "4")):
        async with running_service(settings, _without_consumers) as (died, _, _):
            # Appended as a request appends it; the process then died before raising anything.
            await _record_as_a_replica_that_had_not_read_the_others(died.runtime, invoice("INV-T", "T-1", quantity="6"))
        assert [e for e in await raised_exceptions(js, namespace) if e.object.object_key == "INV-T"] == []
        async with running_service(settings, _without_consumers) as (_, channel, _):
            stub = invoice_service_pb2_grpc.InvoiceStatusServiceStub(channel)
            status = (
                await stub.GetInvoice(invoice_service_pb2.GetInvoiceRequest(invoice_id="INV-T"), metadata=PROCUREMENT)
            ).status
            raised = [e for e in await raised_exceptions(js, namespace) if e.object.object_key == "INV-T"]
    assert [e.type for e in raised] == [exception_pb2.EXCEPTION_TYPE_QUANTITY_VARIANCE]
    assert list(status.exception_ids) == [e.exception_id for e in raised]


async def _dies_leaving_a_missed_match(settings, *, lingering: float = 0.0) -> None:
    """INV-A (3 of 4 received) submitted and matched; INV-B (3 more) matched without INV-A and appended; the process
    then dies (``lingering`` seconds later) before anything settled INV-B."""
    async with running_service(settings, _without_consumers) as (died, channel, _):
        stub = invoice_service_pb2_grpc.InvoiceStatusServiceStub(channel)
        earlier = await stub.SubmitInvoice(invoice("INV-A", "A-1", quantity="3"), metadata=PROCUREMENT)
        assert earlier.status.state == MATCHED, reasons(earlier.status)
        await _record_as_a_replica_that_had_not_read_the_others(died.runtime, invoice("INV-B", "B-1", quantity="3"))
        await asyncio.sleep(lingering)


async def test_a_missed_match_appended_by_a_process_that_died_is_re_matched_at_the_next_start_which_then_records_more(
    po_settings,
):
    settings = invoice_settings(po_settings)
    async with order_received(po_settings, (1, "4")):
        await _dies_leaving_a_missed_match(settings)
        async with running_service(settings, _without_consumers) as (_, channel, _):
            stub = invoice_service_pb2_grpc.InvoiceStatusServiceStub(channel)
            blocked = await _state_becomes(stub, "INV-B", BLOCKED)
            assert reasons(blocked) == {"quantity_variance"}  # 3 + 3 invoiced of 4 received
            later = await stub.SubmitInvoice(invoice("INV-C", "C-1", quantity="1"), metadata=PROCUREMENT)
            assert reasons(later.status) == {"quantity_variance"}  # 3 + 3 + 1 of 4: the restart counts both
            kept = await stub.GetInvoice(
                invoice_service_pb2.GetInvoiceRequest(invoice_id="INV-A"), metadata=PROCUREMENT
            )
            assert kept.status.state == MATCHED, reasons(kept.status)


async def test_what_a_process_that_died_left_unsettled_is_settled_at_the_next_start_however_old(
    po_settings, monkeypatch, js
):
    """The next start settles everything after the settled-through mark, not only the stream's newest events: with a
    tail of none, only the mark brings back the submission the dead process left unsettled."""
    monkeypatch.setattr(invoice_wiring, "TAIL_ON_START", 0)
    settings = invoice_settings(po_settings)
    async with order_received(po_settings, (1, "4")):
        # The mark is stored meanwhile, before INV-B.
        await _dies_leaving_a_missed_match(settings, lingering=settlement.MARK_SECONDS * 1.5)
        submitted = {e.envelope.object_key: e.sequence async for e in _invoice_events(js, po_settings)}
        bucket = Namespace(po_settings.namespace).bucket(settlement.MARKS_BUCKET)
        mark = await SequenceMark(js, bucket, settlement.SETTLED_THROUGH_KEY, "the test's reading").read()
        assert mark is not None
        assert submitted["INV-A"] <= mark.sequence < submitted["INV-B"]
        async with running_service(settings, _without_consumers) as (_, channel, _):
            stub = invoice_service_pb2_grpc.InvoiceStatusServiceStub(channel)
            blocked = await _state_becomes(stub, "INV-B", BLOCKED)
            assert reasons(blocked) == {"quantity_variance"}  # 3 + 3 invoiced of 4 received


async def test_a_block_the_receipt_ends_has_its_exception_cleared_and_a_new_block_raises_it_again(
    invoice_stack,
    nats_server,
    valkey_server,
):
    """An invoice submitted before its receipt is blocked awaiting_receipt (raised, routed); the receipt lands, the
    invoice re-matches clean, and invoice-status clears the exception: exception-router resolves it as cleared, by
    invoice-status. A return that blocks the invoice again (for its quantity) opens that exception alone."""
    from services.exception_router.wiring import wire as wire_router
    from syncgov.exception.v1 import exception_service_pb2 as exs
    from syncgov.exception.v1 import exception_service_pb2_grpc
    from tests.integration.test_exception_router import router_settings

    _, receipts, stub, settings = invoice_stack
    ops = (("x-syncgov-system", "ops-console"),)
    async with running_service(router_settings(nats_server, valkey_server, settings.namespace), wire_router) as (
        _,
        router_channel,
        _,
    ):
        router = exception_service_pb2_grpc.ExceptionRouterServiceStub(router_channel)
        blocked = await stub.SubmitInvoice(invoice(quantity="4"), metadata=PROCUREMENT)
        assert reasons(blocked.status) == {"awaiting_receipt"}

        async def the_exception(state):
            listed = await router.ListExceptions(
                exs.ListExceptionsRequest(type=exception_pb2.EXCEPTION_TYPE_AWAITING_RECEIPT), metadata=ops
            )
            found = [e for e in listed.exceptions if e.object.object_key == "INV-1" and e.state == state]
            return found[0] if found else None

        opened = await eventually(lambda: the_exception(exception_pb2.EXCEPTION_STATE_OPEN))
        await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "4")), metadata=ERP)
        closed = await eventually(lambda: the_exception(exception_pb2.EXCEPTION_STATE_RESOLVED))
        assert closed.exception_id == opened.exception_id
        assert closed.resolution.kind == exception_pb2.RESOLUTION_KIND_CLEARED
        assert closed.resolution.by == "invoice-status"
        got = await stub.GetInvoice(invoice_service_pb2.GetInvoiceRequest(invoice_id="INV-1"), metadata=PROCUREMENT)
        assert got.status.state == MATCHED

        # The goods go back: the invoice re-matches blocked again, now for its quantity; that exception opens and
        # the cleared one stays closed.
        await receipts.PostGoodsReceipt(
            goods_receipt("RT-1", "PO-1001", (1, "4"), kind=2, reverses="GR-1"), metadata=ERP
        )

        async def quantity_variance():
            listed = await router.ListExceptions(
                exs.ListExceptionsRequest(type=exception_pb2.EXCEPTION_TYPE_QUANTITY_VARIANCE), metadata=ops
            )
            return [e for e in listed.exceptions if e.object.object_key == "INV-1"] or None

        [variance] = await eventually(quantity_variance)
        assert variance.state == exception_pb2.EXCEPTION_STATE_OPEN
        assert (await the_exception(exception_pb2.EXCEPTION_STATE_RESOLVED)).exception_id == opened.exception_id


async def test_the_settlement_raises_a_submissions_block_that_a_re_match_ended_since(monkeypatch):
    """A submission that blocked (awaiting_receipt, sequence 1) whose request's raise failed, matched since by a
    re-match (sequence 3): its settlement raises the submission's own block — nothing else would —
    with the id of its event, so a raise stored before stores nothing twice."""
    from libs.runtime.events import build_envelope, now_timestamp

    rematcher, _, ledger = _rematcher(monkeypatch, _Matches((UNIT_MATCHED, FRESH)))
    ledger.fold(UNIT_INVOICE.invoice_id, _b_matched())
    assert ledger.state_of(UNIT_INVOICE.invoice_id).status is InvoiceStatus.MATCHED  # the block is no longer in force
    submission = InvoiceSubmitted(UNIT_INVOICE, "fp", "k", UNIT_AWAITING, FactVersions())
    envelope = build_envelope(events.encode(UNIT_INVOICE.invoice_id, submission), now_timestamp())
    stored = StoredEvent(
        "SG_INVOICE", 1, f"sg.invoice.{UNIT_INVOICE.invoice_id}.submitted", {}, envelope.SerializeToString(), envelope
    )
    await rematcher.settle(stored)
    raised = cast(Any, rematcher)._blocking.calls
    assert raised == [(UNIT_INVOICE.invoice_id, 1)]


async def test_the_settlement_raises_a_re_matchs_block_that_a_later_match_ended(monkeypatch):
    """A re-match blocked the invoice (price_variance, sequence 2) and its raise failed; a later re-match matched it
    (sequence 3) before its settlement came. The settlement of the blocked event raises that block — read from the
    invoice's history up to the event — with the event's id, so a raise stored before stores nothing twice."""
    from libs.runtime.events import build_envelope, now_timestamp

    def stored_as(sequence: int, name: str, event: InvoiceEvent) -> StoredEvent:
        envelope = build_envelope(events.encode(UNIT_INVOICE.invoice_id, event), now_timestamp())
        subject = f"sg.invoice.{UNIT_INVOICE.invoice_id}.{name}"
        return StoredEvent("SG_INVOICE", sequence, subject, {}, envelope.SerializeToString(), envelope)

    history = [
        stored_as(1, "submitted", InvoiceSubmitted(UNIT_INVOICE, "fp", "k", UNIT_MATCHED, FactVersions())),
        stored_as(2, "blocked", Blocked(UNIT_PRICE, FactVersions())),
        stored_as(3, "matched", Matched(UNIT_MATCHED, FactVersions())),
    ]

    async def invoice_history(invoice_id: str) -> list[StoredEvent]:
        return history

    rematcher, _, _ = _rematcher(monkeypatch, _Matches((UNIT_MATCHED, FRESH)))
    cast(Any, rematcher)._history = invoice_history
    await rematcher.settle(history[1])
    assert cast(Any, rematcher)._blocking.calls == [(UNIT_INVOICE.invoice_id, 2)]
