"""invoice-status's blocked list: a Valkey read model that is a projection of the invoice stream (DESIGN §3 rule 10),
against real nats-server and valkey, with po-publication and receipt-reconciliation beside it.

``sample_order``: PO-1001 line 1 is 10 EA at 12.50 EUR. With no receipt posted, an invoice on it is blocked
awaiting_receipt (and for price when it is dearer); one on an order nobody published is blocked unknown_po_line.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from libs.runtime.decider import Recorded
from libs.runtime.paging import encode_page_cursor
from libs.runtime.testing import running_service
from services.invoice_status.decider import (
    INITIAL,
    Blocked,
    FactVersions,
    InvoiceEvent,
    InvoiceState,
    InvoiceSubmitted,
    Matched,
    evolve,
)
from services.invoice_status.store import BlockedInvoices
from services.invoice_status.wiring import wire as wire_invoices
from services.po_publication.wiring import wire as wire_po
from services.receipt_reconciliation.wiring import wire as wire_receipts
from syncgov.invoice.v1 import invoice_pb2, invoice_service_pb2, invoice_service_pb2_grpc
from syncgov.po.v1 import po_service_pb2_grpc
from syncgov.receipt.v1 import receipt_service_pb2_grpc
from tests.integration.helpers import (
    ERP,
    PROCUREMENT,
    frozen,
    goods_receipt,
    publish_order,
    receipt_settings,
    seed_supplier,
)
from tests.integration.test_invoice_status import OPS, invoice, invoice_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
PRICE = invoice_pb2.BLOCK_REASON_PRICE_VARIANCE
AWAITING = invoice_pb2.BLOCK_REASON_AWAITING_RECEIPT
UNKNOWN_LINE = invoice_pb2.BLOCK_REASON_UNKNOWN_PO_LINE


@contextlib.asynccontextmanager
async def order_and_receipts(po_settings):
    """po-publication (PO-1001 published, supplier SUP-OTHER known too) and receipt-reconciliation."""
    await seed_supplier(po_settings.nats_url, po_settings.namespace, "SUP-OTHER")
    async with (
        running_service(po_settings, wire_po) as (_, po_channel, _),
        running_service(receipt_settings(po_settings), wire_receipts) as (_, receipt_channel, _),
    ):
        await publish_order(po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel))
        yield receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(receipt_channel)


@contextlib.asynccontextmanager
async def invoices(settings):
    async with running_service(settings, wire_invoices) as (_, channel, _):
        yield invoice_service_pb2_grpc.InvoiceStatusServiceStub(channel)


async def submit_four(stub) -> None:
    """A1 awaiting receipt, A2 dear and awaiting, B1 (another supplier) on an unknown order, A3 awaiting."""
    await stub.SubmitInvoice(invoice("A1", "N-1"), metadata=PROCUREMENT)
    await stub.SubmitInvoice(invoice("A2", "N-2", price="14.00"), metadata=PROCUREMENT)
    await stub.SubmitInvoice(invoice("B1", "N-3", supplier="SUP-OTHER", po_id="PO-NONE"), metadata=PROCUREMENT)
    await stub.SubmitInvoice(invoice("A3", "N-4", quantity="1"), metadata=PROCUREMENT)


async def listed(stub, page_size: int = 1, **filters) -> list[str]:
    """Every page of the listing, as invoice ids."""
    ids, token, pages = [], "", 0
    while True:
        page = await stub.ListBlockedInvoices(
            invoice_service_pb2.ListBlockedInvoicesRequest(
                page={"page_size": page_size, "page_token": token}, **filters
            ),
            metadata=OPS,
        )
        pages += 1
        ids += [status.invoice.invoice_id for status in page.statuses]
        assert all(status.state == invoice_pb2.INVOICE_STATE_BLOCKED for status in page.statuses)
        token = page.page_info.next_page_token
        if not token:
            return ids
        assert pages < 50


async def test_blocked_invoices_are_listed_by_reason_supplier_and_age_oldest_first_page_by_page(po_settings):
    async with order_and_receipts(po_settings), invoices(invoice_settings(po_settings)) as stub:
        await submit_four(stub)
        assert await listed(stub) == ["A1", "A2", "B1", "A3"]
        assert await listed(stub, page_size=3) == ["A1", "A2", "B1", "A3"]
        assert await listed(stub, reason=PRICE) == ["A2"]
        assert await listed(stub, reason=UNKNOWN_LINE) == ["B1"]
        assert await listed(stub, supplier_id="SUP-OTHER") == ["B1"]
        assert await listed(stub, page_size=2, supplier_id="SUP-ACME") == ["A1", "A2", "A3"]
        assert await listed(stub, supplier_id="SUP-ACME", reason=PRICE) == ["A2"]
        assert await listed(stub, supplier_id="SUP-NOBODY") == []
        second = await stub.GetInvoice(invoice_service_pb2.GetInvoiceRequest(invoice_id="A2"), metadata=OPS)
        blocked_at = second.status.submitted_at
        assert await listed(stub, blocked_before=blocked_at) == ["A1", "A2"]  # at or before
        assert await listed(stub, blocked_before=blocked_at, reason=AWAITING) == ["A1", "A2"]
        before = invoice_pb2.InvoiceStatus().submitted_at.__class__(seconds=blocked_at.seconds - 3600)
        assert await listed(stub, blocked_before=before) == []
        # The statuses listed are the whole ones GetInvoice answers.
        page = await stub.ListBlockedInvoices(
            invoice_service_pb2.ListBlockedInvoicesRequest(reason=PRICE), metadata=OPS
        )
        assert list(page.statuses) == [second.status]
        for token in ("not-a-token", encode_page_cursor("invoice.blocked", "12|A1")):
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.ListBlockedInvoices(
                    invoice_service_pb2.ListBlockedInvoicesRequest(page={"page_token": token}), metadata=OPS
                )
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _everything(stub) -> tuple:
    return (
        await listed(stub),
        await listed(stub, page_size=2, supplier_id="SUP-ACME"),
        await listed(stub, reason=PRICE),
        await listed(stub, reason=UNKNOWN_LINE),
        (await stub.ListBlockedInvoices(invoice_service_pb2.ListBlockedInvoicesRequest(), metadata=OPS)).statuses,
    )


async def _until_served(stub) -> tuple:
    for _ in range(100):
        try:
            return await _everything(stub)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:  # rebuilding: UNAVAILABLE, never INTERNAL
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("the blocked list was not rebuilt within 10 seconds")


async def _until_listed(stub, expected: list[str]) -> list[str]:
    for _ in range(100):
        got = await listed(stub)
        if got == expected:
            return got
        await asyncio.sleep(0.1)
    return got


async def test_the_list_is_identical_after_a_restart_after_valkey_lost_it_and_a_re_match_takes_invoices_off(
    po_settings, redis
):
    settings = invoice_settings(po_settings)
    async with order_and_receipts(po_settings) as receipts:
        async with invoices(settings) as stub:
            await submit_four(stub)
            before = await _everything(stub)
        assert before[0] == ["A1", "A2", "B1", "A3"]
        keys = [key async for key in redis.scan_iter(match=f"{settings.namespace}:invoice-status:*")]
        assert any(_text(key).endswith(":blocked:entries") for key in keys), "the blocked list lives in Valkey"
        async with invoices(settings) as stub:
            assert await _everything(stub) == before
            await redis.flushall()  # while serving: the check notices and rebuilds from the stream
            assert await _until_served(stub) == before
        await redis.flushall()
        async with invoices(settings) as stub:  # at start: rebuilt before serving
            assert await _everything(stub) == before
            # Goods for A1, A2 and A3 (4 + 4 + 1 of line 1): the re-match matches A1 and A3, A2 stays blocked for
            # price.
            await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "9")), metadata=ERP)
            assert await _until_listed(stub, ["A2", "B1"]) == ["A2", "B1"]
            after = await _everything(stub)
        async with invoices(settings) as stub:
            assert await _everything(stub) == after
        await redis.flushall()
        async with invoices(settings) as stub:  # rebuilt: the matched invoices stay off the list
            assert await _everything(stub) == after


async def test_a_frozen_valkey_fails_the_listing_unavailable_never_a_write_and_the_list_heals(
    po_settings, valkey_server
):
    settings = invoice_settings(po_settings).model_copy(
        update={"redis_timeout_seconds": 0.3, "read_model_check_seconds": 0.2}
    )
    async with order_and_receipts(po_settings), invoices(settings) as stub:
        with frozen(valkey_server):
            answer = await stub.SubmitInvoice(invoice("A1", "N-1"), metadata=PROCUREMENT, timeout=10)
            assert answer.status.state == invoice_pb2.INVOICE_STATE_BLOCKED  # the stream acknowledged it
            with pytest.raises(grpc.aio.AioRpcError) as listing:
                await stub.ListBlockedInvoices(
                    invoice_service_pb2.ListBlockedInvoicesRequest(), metadata=OPS, timeout=10
                )
            assert listing.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await _until_served_ids(stub) == ["A1"]


async def _until_served_ids(stub) -> list[str]:
    for _ in range(100):
        try:
            got = await listed(stub)
            if got:
                return got
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        await asyncio.sleep(0.1)
    raise AssertionError("the blocked list did not heal within 10 seconds")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- The projection itself, against a real Valkey ---------------------------------------------------------------


def _states() -> tuple[InvoiceState, InvoiceState, InvoiceState]:
    """An invoice blocked (sequence 3), blocked for other figures (5), then matched (7)."""
    from services.invoice_status.matching import match_invoice
    from tests.unit.invoice_status.builders import POLICY, facts
    from tests.unit.invoice_status.builders import invoice as domain_invoice

    subject = domain_invoice(invoice_id="I-1", supplier="SUP-1")
    dear = match_invoice(subject, facts(received={}), POLICY)
    dearer = match_invoice(subject, facts(received={("PO-1", 1): "5"}), POLICY)
    matched = match_invoice(subject, facts(), POLICY)
    events: list[tuple[InvoiceEvent, int]] = [
        (InvoiceSubmitted(subject, "fp", "k", dear, FactVersions()), 3),
        (Blocked(dearer, FactVersions(receipt_sequence=1)), 5),
        (Matched(matched, FactVersions(receipt_sequence=2)), 7),
    ]
    states, state = [], INITIAL
    for event, sequence in events:
        state = evolve(state, Recorded(event, sequence, f"e{sequence}", sequence * 1_000, "k", "procurement"))
        states.append(state)
    return states[0], states[1], states[2]


async def test_an_older_event_never_re_adds_an_invoice_and_a_rebuild_valkey_lost_halfway_is_not_built(
    po_settings, redis
):
    from services.invoice_status.mapping import BlockedFilter

    blocked = BlockedInvoices(redis, f"{po_settings.namespace}:invoice-status:blocked")
    first, second, matched = _states()
    token = await blocked.begin_rebuild()
    await blocked.write(redis, "I-1", second, 5)
    assert await blocked.finish_rebuild(token)
    page, _ = await blocked.page(None, 10, BlockedFilter())
    assert [(e.invoice_id, e.sequence, e.blocked_at_ns) for e in page] == [("I-1", 5, 3_000)]
    await blocked.write(redis, "I-1", matched, 7)
    await blocked.write(redis, "I-1", first, 3)  # replayed late (a rebuild, a slow replica): stays off
    assert (await blocked.page(None, 10, BlockedFilter()))[0] == []
    for key in ("reason:awaiting_receipt", "reason:quantity_variance", "supplier:SUP-1"):
        assert await redis.zcard(f"{blocked.key}:{key}") == 0, key
    # A rebuild whose writes Valkey lost halfway (its token went with them) is not marked built.
    token = await blocked.begin_rebuild()
    await redis.delete(blocked.entries)
    await blocked.write(redis, "I-1", first, 3)
    assert not await blocked.finish_rebuild(token)
    assert not await blocked.built()


async def test_an_invoice_never_blocked_costs_the_list_no_write_and_one_that_was_keeps_its_tombstone(
    po_settings, redis
):
    blocked = BlockedInvoices(redis, f"{po_settings.namespace}:invoice-status:blocked")
    _, _, matched = _states()
    assert matched.submitted is not None
    assert matched.match is not None
    submission = InvoiceSubmitted(matched.submitted.invoice, "fp", "k", matched.match, FactVersions())
    never_blocked = evolve(INITIAL, Recorded(submission, 9, "e9", 9_000, "k", "procurement"))
    await blocked.write(redis, "I-2", never_blocked, 9)
    assert not await redis.hexists(blocked.entries, "i:I-2")
    await blocked.write(redis, "I-1", matched, 7)  # blocked at 3 and 5, matched at 7: kept off by a tombstone
    assert (await redis.hget(blocked.entries, "i:I-1")).decode().startswith("7|")


async def test_a_valkey_that_came_back_with_an_older_copy_of_the_list_is_noticed_and_rebuilt(po_settings, redis):
    """A partial loss: the list's keys restored from a snapshot taken before an invoice was blocked (a failover to a
    lagging replica, a restart from an older RDB). ``built`` is still there, so only the ``sequence`` the list
    reflects, lower than what this process wrote, tells; the check rebuilds and the invoice is listed again."""
    settings = invoice_settings(po_settings).model_copy(update={"read_model_check_seconds": 0.2})
    pattern = f"{settings.namespace}:invoice-status:blocked*"
    async with order_and_receipts(po_settings), invoices(settings) as stub:
        await stub.SubmitInvoice(invoice("A1", "N-1"), metadata=PROCUREMENT)
        assert await listed(stub) == ["A1"]
        snapshot = {key: await redis.dump(key) async for key in redis.scan_iter(match=pattern)}
        assert any(_text(key).endswith(":blocked:entries") for key in snapshot)
        answer = await stub.SubmitInvoice(invoice("A3", "N-4", quantity="1"), metadata=PROCUREMENT)
        assert answer.status.state == invoice_pb2.INVOICE_STATE_BLOCKED
        assert await listed(stub) == ["A1", "A3"]
        await asyncio.sleep(0.5)  # the follower's flush of A3 (this process's own append) is done too
        newer = [key async for key in redis.scan_iter(match=pattern) if key not in snapshot]
        if newer:
            await redis.delete(*newer)
        for key, value in snapshot.items():
            await redis.restore(key, 0, value, replace=True)
        assert await _until_served_listed(stub, ["A1", "A3"]) == ["A1", "A3"]
        got = await stub.GetInvoice(invoice_service_pb2.GetInvoiceRequest(invoice_id="A3"), metadata=OPS)
        assert got.status.state == invoice_pb2.INVOICE_STATE_BLOCKED


async def _until_served_listed(stub, expected: list[str]) -> list[str]:
    """The listing once it equals ``expected`` (UNAVAILABLE while rebuilding), or the last one after 10 seconds."""
    got: list[str] = []
    for _ in range(100):
        try:
            got = await listed(stub)
            if got == expected:
                return got
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        await asyncio.sleep(0.1)
    return got
