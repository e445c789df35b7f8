"""receipt-reconciliation at its edges, against real nats-server and valkey (found in review): a document id
reused across orders while the index is lost or at the same instant, units counted before the order existed,
exceptions a crash left unraised, paging limits, replays, rebuilds Valkey loses halfway, mistyped sites.

The default policy: erp receives at DC-EAST and DC-HAMBURG, wms-east at DC-EAST only; allowance 5%; 1 CS = 12
EA. ``sample_order``: line 1 is 10 EA, line 2 is 2.5 KGM."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import nats.errors
import pytest

from libs.runtime.events import EventReader
from libs.runtime.exception_reporter import ExceptionReporter
from libs.runtime.subjects import Namespace
from libs.runtime.testing import running_service
from services.po_publication.wiring import wire as wire_po
from services.receipt_reconciliation import orders as orders_module
from services.receipt_reconciliation.store import ReadModels, ReceiptIndex
from services.receipt_reconciliation.wiring import wire as wire_receipts
from syncgov.exception.v1 import exception_pb2
from syncgov.po.v1 import po_service_pb2, po_service_pb2_grpc
from syncgov.receipt.v1 import receipt_pb2, receipt_service_pb2, receipt_service_pb2_grpc
from tests.integration.helpers import (
    ERP,
    WMS_EAST,
    code_of,
    goods_receipt,
    message_count,
    publish_order,
    raised_exceptions,
    receipt_settings,
    requests_of,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def documents_named(js, namespace: Namespace, receipt_id: str) -> list[str]:
    """The orders whose receiving record holds a document with this id (read from the stream)."""
    from syncgov.receipt.v1 import events_pb2

    return [
        event.unpack(events_pb2.GoodsReceiptReconciled).receipt.po_id
        async for event in EventReader(requests_of(js), namespace).scan("receipt")
        if event.unpack(events_pb2.GoodsReceiptReconciled).receipt.receipt_id == receipt_id
    ]


# --- a document id reused on another order ------------------------------------------------------------------


async def test_a_document_id_reused_on_another_order_under_its_own_key_is_refused_while_valkey_lost_the_index(
    po_settings, redis, js
):
    """A document id reused against another order under a caller-chosen key while Valkey lost the index: the
    broker's message id is the document's own key whatever the caller chose, so its duplicate window refuses the
    reuse. (The periodic check is slowed to hold the index missing.)"""
    settings = receipt_settings(po_settings, read_model_check_seconds=3600)
    namespace = Namespace(po_settings.namespace)
    async with (
        running_service(po_settings, wire_po) as (_, po_channel, _),
        running_service(settings, wire_receipts) as (_, channel, _),
    ):
        po_stub = po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel)
        stub = receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(channel)
        await publish_order(po_stub, "PO-1001")
        await publish_order(po_stub, "PO-2002")
        await stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "4"), key="erp-batch-1"), metadata=ERP)
        keys = [key async for key in redis.scan_iter(match=f"{settings.namespace}:receipt-reconciliation:*")]
        await redis.delete(*keys)  # Valkey came back empty
        code = await code_of(
            stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-2002", (1, "4"), key="erp-batch-2"), metadata=ERP)
        )
        stored_on = await documents_named(js, namespace, "GR-1")
    assert (code, stored_on) == (grpc.StatusCode.ALREADY_EXISTS, ["PO-1001"])


async def test_one_document_id_posted_against_two_orders_at_once_is_recorded_once(
    receipt_stack, js, po_settings, monkeypatch
):
    """Two postings of erp's GR-1 at the same instant against two orders, each with its own idempotency key: both
    pass the index (neither is there yet) and append on different subjects, so only the broker's message id (the
    document's key) can tell them apart: one is recorded, the other is ALREADY_EXISTS. (A barrier in the order
    read, between the index check and the append, makes the interleaving deterministic.)"""
    po_stub, stub, _ = receipt_stack
    await publish_order(po_stub, "PO-1001")
    await publish_order(po_stub, "PO-2002")
    barrier = asyncio.Barrier(2)
    current = orders_module.OrderBook.current

    async def meet(self, po_id):
        view = await current(self, po_id)
        await asyncio.wait_for(barrier.wait(), 5)
        return view

    monkeypatch.setattr(orders_module.OrderBook, "current", meet)
    codes = await asyncio.gather(
        code_of(stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "4"), key="k-east"), metadata=ERP)),
        code_of(stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-2002", (1, "4"), key="k-west"), metadata=ERP)),
    )
    stored_on = await documents_named(js, Namespace(po_settings.namespace), "GR-1")
    assert sorted(codes, key=str) == [grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OK], codes
    assert len(stored_on) == 1, f"erp/GR-1 recorded against {stored_on}"


# --- a posting racing a change order ------------------------------------------------------------------------


# --- figures counted before the order was known -------------------------------------------------------------


async def test_status_after_the_order_is_published_counts_earlier_receipts_in_its_unit(receipt_stack):
    """2 CS (= 24 EA) arrive for PO-LATE before procurement publishes it with 24 EA on line 1: the status shows
    them in the order line's unit — 24 received, 0 open, fully received."""
    po_stub, stub, _ = receipt_stack
    await stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-LATE", (1, "2", "CS")), metadata=ERP)
    await publish_order(po_stub, "PO-LATE", quantity="24")
    status = await stub.GetPurchaseOrderReceiptStatus(
        receipt_service_pb2.GetPurchaseOrderReceiptStatusRequest(po_id="PO-LATE"), metadata=ERP
    )
    line_1 = next(s for s in status.lines if s.po_line_number == 1)
    shown = (line_1.received_quantity.value, line_1.unit_of_measure, line_1.open_quantity.value)
    assert shown == ("24", "EA", "0"), shown
    assert line_1.fully_received


# --- exceptions of findings ----------------------------------------------------------------------------------


async def test_a_findings_exception_lost_after_the_append_is_raised_without_the_callers_retry(
    po_settings, js, monkeypatch
):
    """Nothing is dropped silently: the document (an over-receipt) is appended, raising its exception fails once,
    and the caller, told UNAVAILABLE, never retries. The restarted service raises it from its start-up tail."""
    namespace = Namespace(po_settings.namespace)
    settings = receipt_settings(po_settings)
    publish_exception = ExceptionReporter._publish
    failed = asyncio.Event()

    async def fail_once(self, exception, workflow_key, policy_revision):
        if exception.type == exception_pb2.EXCEPTION_TYPE_OVER_RECEIPT and not failed.is_set():
            failed.set()
            raise nats.errors.TimeoutError
        await publish_exception(self, exception, workflow_key, policy_revision)

    async with running_service(po_settings, wire_po) as (_, po_channel, _):
        await publish_order(po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel), "PO-1001")
        monkeypatch.setattr(ExceptionReporter, "_publish", fail_once)
        async with running_service(settings, wire_receipts) as (_, channel, _):
            stub = receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(channel)
            code = await code_of(stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "12")), metadata=ERP))
        assert failed.is_set()
        assert code != grpc.StatusCode.OK
        assert await message_count(js, namespace, "receipt") == 1, "the document was recorded"
        monkeypatch.setattr(ExceptionReporter, "_publish", publish_exception)
        async with running_service(settings, wire_receipts):
            for _ in range(20):
                types = [e.type for e in await raised_exceptions(js, namespace)]
                if exception_pb2.EXCEPTION_TYPE_OVER_RECEIPT in types:
                    break
                await asyncio.sleep(0.1)
    assert exception_pb2.EXCEPTION_TYPE_OVER_RECEIPT in types, "the over_receipt finding was never raised"


# --- idempotency keys ----------------------------------------------------------------------------------------


async def test_two_systems_may_use_the_same_idempotency_key_for_their_own_documents(receipt_stack):
    """wms-east and erp each number their postings "batch-0001": a caller's idempotency key is claimed within its
    own system, so one system cannot block another's postings."""
    po_stub, stub, _ = receipt_stack
    await publish_order(po_stub, "PO-1001")
    await stub.PostGoodsReceipt(
        goods_receipt("GR-A", "PO-1001", (1, "1"), site="DC-EAST", key="batch-0001"), metadata=WMS_EAST
    )
    code = await code_of(
        stub.PostGoodsReceipt(goods_receipt("GR-B", "PO-1001", (1, "1"), key="batch-0001"), metadata=ERP)
    )
    assert code == grpc.StatusCode.OK


# --- the receipts-with-findings listing ----------------------------------------------------------------------


async def _list_all(stub, page_size: int = 0) -> list[str]:
    names, token = [], ""
    while True:
        page = await stub.ListReceiptsWithFindings(
            receipt_service_pb2.ListReceiptsWithFindingsRequest(page={"page_size": page_size, "page_token": token}),
            metadata=ERP,
        )
        names += [entry.receipt_id for entry in page.receipts]
        token = page.page_info.next_page_token
        if not token:
            return names


async def test_a_document_dated_before_2000_is_invalid_argument(receipt_stack):
    """Listings page by posting time in milliseconds since 1970: a document dated 1969 (or year 1) would carry a
    negative score its own next-page token could not name. No receipt this system holds predates 2000."""
    _, stub, _ = receipt_stack
    posted_at = datetime(1969, 6, 1, tzinfo=UTC)
    code = await code_of(stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-NOBODY", posted_at=posted_at), metadata=ERP))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_default_page_of_receipts_with_findings_fits_a_grpc_message(receipt_stack):
    """Four documents of 5,000 lines the order lacks: a listed document carries its first findings only (all are in
    GetGoodsReceipt), so the default page stays within gRPC's 4 MiB message limit."""
    po_stub, stub, _ = receipt_stack
    po_id = "PO-" + "X" * 230
    await publish_order(po_stub, po_id)
    for number in range(4):
        wide = goods_receipt(f"GR-WIDE-{number}", po_id, *((n, "1") for n in range(3, 5003)))
        response = await stub.PostGoodsReceipt(wide, metadata=ERP, timeout=60)
        assert len(response.findings) == 5000
    code = await code_of(
        stub.ListReceiptsWithFindings(receipt_service_pb2.ListReceiptsWithFindingsRequest(), metadata=ERP)
    )
    assert code == grpc.StatusCode.OK


# --- the read models beside the stream -----------------------------------------------------------------------


async def test_a_replay_projects_its_own_document_not_the_orders_whole_record(receipt_stack, monkeypatch):
    """A repeated posting projects the replayed document into the index, not every document of the order (up to
    1,000): a retry storm against a busy order must not rewrite the whole record."""
    po_stub, stub, _ = receipt_stack
    await publish_order(po_stub, "PO-1001", quantity="1000")
    for number in range(30):
        await stub.PostGoodsReceipt(goods_receipt(f"GR-{number}", "PO-1001", (1, "1")), metadata=ERP)
    writes = 0
    write = ReceiptIndex.write

    async def counted(self, client, event, sequence):
        nonlocal writes
        writes += 1
        await write(self, client, event, sequence)

    monkeypatch.setattr(ReceiptIndex, "write", counted)
    await stub.PostGoodsReceipt(goods_receipt("GR-0", "PO-1001", (1, "1")), metadata=ERP)
    assert writes <= 1, f"{writes} index writes for one replayed document"


async def test_a_rebuild_that_valkey_loses_again_halfway_is_not_marked_built(receipt_stack, redis, js, po_settings):
    """Valkey loses its data again while a rebuild runs: the rebuild is not marked built (its token went with the
    data), the index stays dirty, and the next check rebuilds it whole."""
    po_stub, stub, _ = receipt_stack
    orders = [f"PO-{number}" for number in range(20)]
    for po_id in orders:
        await publish_order(po_stub, po_id, quantity="1000")

    async def post_many(po_id: str) -> None:
        for number in range(51):
            await stub.PostGoodsReceipt(goods_receipt(f"GR-{po_id}-{number}", po_id, (1, "1")), metadata=ERP)

    await asyncio.gather(*(post_many(po_id) for po_id in orders))  # 1,020 events: two batches
    namespace = Namespace(po_settings.namespace)
    key = namespace.redis_key("receipt-reconciliation", "receipts") + ":review"
    parts = [key + suffix for suffix in (":documents", ":findings", ":findings:entries", ":meta")]
    index = ReceiptIndex(redis, key)
    reader = EventReader(requests_of(js), namespace)

    class WipedHalfway:
        async def scan(self, domain):
            number = 0
            async for stored in reader.scan(domain):
                if number == 1_000:  # the first batch was written; Valkey restarts empty
                    await redis.delete(*parts)
                number += 1
                yield stored

    models = ReadModels(redis, WipedHalfway(), index)  # type: ignore[arg-type]
    await models.rebuild()
    try:
        assert not await index.built(), "marked built although Valkey lost the first batch"
        assert index.dirty, "the next check must rebuild again"
        models = ReadModels(redis, reader, index)
        await models.check()
        assert await index.built()
        assert await index.order_of("erp/GR-PO-0-0") == "PO-0"
    finally:
        await redis.delete(*parts)


# --- sites -----------------------------------------------------------------------------------------------------


async def test_a_site_no_system_declares_is_invalid_argument_for_a_system_that_declares_sites(
    receipt_stack, js, po_settings
):
    """A mistyped site ("DC-HAMBRUG") from a system that declares sites is a typo, INVALID_ARGUMENT — not a
    PERMISSION_DENIED with a critical ownership_violation."""
    po_stub, stub, _ = receipt_stack
    await publish_order(po_stub, "PO-1001")
    code = await code_of(stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", site="DC-HAMBRUG"), metadata=ERP))
    raised = [
        exception_pb2.ExceptionType.Name(e.type) for e in await raised_exceptions(js, Namespace(po_settings.namespace))
    ]
    assert (code, raised) == (grpc.StatusCode.INVALID_ARGUMENT, [])


async def test_pages_of_documents_posted_in_the_same_millisecond_list_each_once_in_order(redis):
    """An ERP sending dates without a time gives a day's documents one posting time: pages continue after the
    cursor's own entry (its rank), so every document is listed once, newest key first, page after page."""
    from services.receipt_reconciliation import domain
    from services.receipt_reconciliation.store import FindingFilter, ReceiptIndex

    key = "sameday:" + datetime.now(UTC).strftime("%H%M%S%f") + ":receipt-reconciliation:receipts"
    index = ReceiptIndex(redis, key)
    midnight = datetime(2026, 11, 26, tzinfo=UTC)
    pipeline = redis.pipeline(transaction=False)
    for number in range(1_500):
        document = domain.Receipt(f"GR-{number:05d}", "erp", "PO-X", 1, "DC-EAST", domain.Kind.RECEIPT, midnight, ())
        finding = domain.Finding(domain.UNKNOWN_PO, 0, "unknown", f"ex-{number}")
        event = domain.Reconciled(document, None, "fp", "k", 0, (), (), (finding,), False)
        await index.write(pipeline, event, number + 1)
    pipeline.hset(key + ":documents", "built", "1")
    await pipeline.execute()

    async def range_reads() -> int:  # commands run inside Lua scripts count too
        stats = await redis.info("commandstats")
        return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("zrevrange", "zrevrangebyscore"))

    try:
        listed, cursor, pages = [], None, 0
        before = await range_reads()
        while True:
            page, cursor = await index.page(cursor, 100, FindingFilter())
            pages += 1
            listed += [entry.document_key for entry in page]
            if cursor is None:
                break
        reads = await range_reads() - before
        assert listed == sorted((f"erp/GR-{n:05d}" for n in range(1_500)), reverse=True)
        assert reads <= 2 * pages, f"{reads} range reads for {pages} pages: the cursor's time group is re-read"
    finally:
        await redis.delete(*(key + suffix for suffix in (":documents", ":findings", ":findings:entries", ":meta")))


async def test_an_order_whose_newest_event_is_an_acknowledgment_is_reconciled_against_its_version(receipt_stack):
    """The PO's newest event sets no version (the ERP's acknowledgment): the version in force is read from the
    events before it, not taken for an unknown order."""
    po_stub, stub, _ = receipt_stack
    await publish_order(po_stub, "PO-1001")
    await po_stub.AcknowledgePurchaseOrder(
        po_service_pb2.AcknowledgePurchaseOrderRequest(po_id="PO-1001", version=1, erp_document_number="4500001"),
        metadata=ERP,
    )
    response = await stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "4")), metadata=ERP)
    assert response.reconciled_po_version == 1
    assert list(response.findings) == []


async def test_after_a_restart_new_documents_count_on_top_of_the_ones_before(po_settings):
    """A fresh process holds no folded receiving record: a new receipt and a return of a receipt posted before the
    restart are decided on the record read back from the stream, and the same document again is still a replay."""
    settings = receipt_settings(po_settings)
    async with running_service(po_settings, wire_po) as (_, po_channel, _):
        await publish_order(po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel))
        async with running_service(settings, wire_receipts) as (_, channel, _):
            stub = receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(channel)
            await stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "6")), metadata=ERP)
        async with running_service(settings, wire_receipts) as (_, channel, _):
            stub = receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(channel)
            more = await stub.PostGoodsReceipt(goods_receipt("GR-2", "PO-1001", (1, "3")), metadata=ERP)
            assert more.lines[0].received_quantity.value == "9"
            back = await stub.PostGoodsReceipt(
                goods_receipt("RT-1", "PO-1001", (1, "2"), kind=receipt_pb2.RECEIPT_KIND_RETURN, reverses="GR-1"),
                metadata=ERP,
            )
            assert back.lines[0].received_quantity.value == "7"
            again = stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "6")), metadata=ERP)
            await again
            assert ("syncgov-idempotent-replay", "true") in tuple(await again.initial_metadata())
