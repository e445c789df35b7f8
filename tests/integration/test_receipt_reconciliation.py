"""receipt-reconciliation against real nats-server and valkey, with po-publication publishing the orders.

The default policy: erp receives at DC-EAST and DC-HAMBURG, wms-east at DC-EAST only; over-receipt allowance
5%; 1 CS = 12 EA. ``sample_order``: line 1 is 10 EA, line 2 is 2.5 KGM, business unit BU-NORTH.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import grpc
import pytest
from google.rpc import error_details_pb2

from libs.runtime.subjects import Namespace
from libs.runtime.testing import running_service
from services.po_publication.wiring import wire as wire_po
from services.receipt_reconciliation.wiring import wire as wire_receipts
from syncgov.exception.v1 import exception_pb2
from syncgov.po.v1 import po_service_pb2, po_service_pb2_grpc
from syncgov.receipt.v1 import events_pb2, receipt_pb2, receipt_service_pb2, receipt_service_pb2_grpc
from tests.integration.helpers import (
    ERP,
    PROCUREMENT,
    WMS_EAST,
    goods_receipt,
    message_count,
    publish_order,
    raised_exceptions,
    receipt_settings,
    sample_order,
    status_details,
)

RECEIPT = receipt_pb2.RECEIPT_KIND_RECEIPT
RETURN = receipt_pb2.RECEIPT_KIND_RETURN


def line(response, po_line: int):
    return next(status for status in response.lines if status.po_line_number == po_line)


def finding_types(response) -> list[tuple[str, int]]:
    return [(exception_pb2.ExceptionType.Name(f.type), f.po_line_number) for f in response.findings]


async def test_partial_receipts_complete_a_line(receipt_stack):
    po_stub, stub, _ = receipt_stack
    await publish_order(po_stub)
    first = await stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "4")), metadata=ERP)
    assert (line(first, 1).received_quantity.value, line(first, 1).open_quantity.value) == ("4", "6")
    assert not line(first, 1).fully_received
    second = await stub.PostGoodsReceipt(goods_receipt("GR-2", "PO-1001", (1, "6")), metadata=ERP)
    assert (line(second, 1).received_quantity.value, line(second, 1).open_quantity.value) == ("10", "0")
    assert line(second, 1).fully_received
    assert not second.purchase_order_fully_received  # line 2 is still open
    assert second.findings == []
    third = await stub.PostGoodsReceipt(goods_receipt("GR-3", "PO-1001", (2, "2.5", "KGM")), metadata=ERP)
    assert third.purchase_order_fully_received
    status = await stub.GetPurchaseOrderReceiptStatus(
        receipt_service_pb2.GetPurchaseOrderReceiptStatusRequest(po_id="PO-1001"), metadata=ERP
    )
    assert status.fully_received
    assert (status.documents, status.po_version) == (3, 1)
    assert [(s.po_line_number, s.received_quantity.value) for s in status.lines] == [(1, "10"), (2, "2.5")]


async def test_a_receipt_against_v1_after_v2_lowered_the_quantity_is_caught(receipt_stack, po_settings, js):
    po_stub, stub, _ = receipt_stack
    await publish_order(po_stub)
    lowered = sample_order("PO-1001")
    lowered.version = 2
    lowered.lines[0].quantity.value = "6"
    await po_stub.ChangePurchaseOrder(
        po_service_pb2.ChangePurchaseOrderRequest(purchase_order=lowered), metadata=PROCUREMENT
    )
    response = await stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "10"), version=1), metadata=ERP)
    assert response.reconciled_po_version == 2
    assert finding_types(response) == [("EXCEPTION_TYPE_SUPERSEDED_VERSION", 0), ("EXCEPTION_TYPE_OVER_RECEIPT", 1)]
    assert (line(response, 1).ordered_quantity.value, line(response, 1).open_quantity.value) == ("6", "-4")
    raised = {e.exception_id: e for e in await raised_exceptions(js, Namespace(po_settings.namespace))}
    for finding in response.findings:
        exception = raised[finding.exception_id]
        assert exception.type == finding.type
        assert exception.workflow_key == "PO-1001"
        assert exception.object.object_key == "erp/GR-1"
        # The site and business unit travel with the exception: the router's routes match on them.
        assert exception.site_id == "DC-HAMBURG"
        assert exception.business_unit == lowered.business_unit
    assert list(response.exception_ids) == [f.exception_id for f in response.findings]  # one type each here


async def test_a_return_reduces_received_and_one_beyond_the_receipt_is_a_finding(receipt_stack):
    po_stub, stub, _ = receipt_stack
    await publish_order(po_stub)
    await stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "10")), metadata=ERP)
    returned = await stub.PostGoodsReceipt(
        goods_receipt("RT-1", "PO-1001", (1, "4"), kind=RETURN, reverses="GR-1"), metadata=ERP
    )
    assert (line(returned, 1).received_quantity.value, line(returned, 1).returned_quantity.value) == ("6", "4")
    assert line(returned, 1).open_quantity.value == "4"
    assert returned.findings == []
    beyond = await stub.PostGoodsReceipt(
        goods_receipt("RT-2", "PO-1001", (1, "7"), kind=RETURN, reverses="GR-1"), metadata=ERP
    )
    assert finding_types(beyond) == [("EXCEPTION_TYPE_OVER_RETURN", 1)]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.PostGoodsReceipt(
            goods_receipt("RT-3", "PO-1001", (1, "1"), kind=RETURN, reverses="GR-9"), metadata=ERP
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_units_are_converted_and_an_unknown_conversion_is_refused_naming_the_line(receipt_stack, po_settings, js):
    po_stub, stub, _ = receipt_stack
    await publish_order(po_stub, quantity="24")
    converted = await stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "1.5", "CS")), metadata=ERP)
    assert (line(converted, 1).received_quantity.value, line(converted, 1).unit_of_measure) == ("18", "EA")
    before = await message_count(js, Namespace(po_settings.namespace), "receipt")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.PostGoodsReceipt(goods_receipt("GR-2", "PO-1001", (1, "1"), (2, "1", "CS")), metadata=ERP)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [bad_request] = [d for d in status_details(refused.value) if isinstance(d, error_details_pb2.BadRequest)]
    assert [v.field for v in bad_request.field_violations] == ["receipt.lines[1].unit_of_measure"]
    assert await message_count(js, Namespace(po_settings.namespace), "receipt") == before


async def test_unknown_cancelled_and_unknown_line_findings_still_record_the_document(receipt_stack):
    po_stub, stub, _ = receipt_stack
    unknown = await stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-NOBODY", (1, "3")), metadata=ERP)
    assert finding_types(unknown) == [("EXCEPTION_TYPE_RECEIPT_UNKNOWN_PO", 0)]
    assert unknown.reconciled_po_version == 0
    await publish_order(po_stub, "PO-2")
    odd_line = await stub.PostGoodsReceipt(goods_receipt("GR-2", "PO-2", (1, "1"), (9, "1")), metadata=ERP)
    assert finding_types(odd_line) == [("EXCEPTION_TYPE_RECEIPT_UNKNOWN_PO", 9)]
    await po_stub.CancelPurchaseOrder(
        po_service_pb2.CancelPurchaseOrderRequest(po_id="PO-2", reason="supplier insolvent"), metadata=PROCUREMENT
    )
    cancelled = await stub.PostGoodsReceipt(goods_receipt("GR-3", "PO-2", (1, "1"), version=2), metadata=ERP)
    assert finding_types(cancelled) == [("EXCEPTION_TYPE_RECEIPT_UNKNOWN_PO", 0)]
    got = await stub.GetGoodsReceipt(
        receipt_service_pb2.GetGoodsReceiptRequest(source_system="erp", receipt_id="GR-1"), metadata=ERP
    )
    assert (got.receipt.po_id, got.receipt.source_system) == ("PO-NOBODY", "erp")
    assert list(dict.fromkeys(f.exception_id for f in got.findings)) == list(unknown.exception_ids)


async def test_the_same_receipt_twice_is_published_once_and_other_content_is_a_duplicate_transaction(
    receipt_stack, po_settings, js
):
    po_stub, stub, _ = receipt_stack
    ns = Namespace(po_settings.namespace)
    await publish_order(po_stub)
    request = goods_receipt("GR-1", "PO-1001", (1, "12"))  # over-receipt: a finding, raised once
    first = await stub.PostGoodsReceipt(request, metadata=ERP)
    replay = stub.PostGoodsReceipt(request, metadata=ERP)
    assert await replay == first
    assert ("syncgov-idempotent-replay", "true") in tuple(await replay.initial_metadata())
    assert await message_count(js, ns, "receipt") == 1
    assert [e.exception_id for e in await raised_exceptions(js, ns)] == list(first.exception_ids)
    with pytest.raises(grpc.aio.AioRpcError) as conflict:
        await stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "11")), metadata=ERP)
    assert conflict.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as elsewhere:
        await stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-OTHER", (1, "12")), metadata=ERP)
    assert elsewhere.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await message_count(js, ns, "receipt") == 1
    types = [exception_pb2.ExceptionType.Name(e.type) for e in await raised_exceptions(js, ns)]
    assert types.count("EXCEPTION_TYPE_DUPLICATE_TRANSACTION") == 2


@pytest.mark.parametrize(
    ("caller", "site"),
    [(PROCUREMENT, "DC-HAMBURG"), (WMS_EAST, "DC-HAMBURG")],
    ids=["a system that does not own receipts", "a site the system does not serve"],
)
async def test_a_posting_the_policy_does_not_allow_is_refused_and_writes_nothing(
    receipt_stack, po_settings, js, caller, site
):
    po_stub, stub, _ = receipt_stack
    ns = Namespace(po_settings.namespace)
    await publish_order(po_stub)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "1"), site=site), metadata=caller)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await message_count(js, ns, "receipt") == 0
    allowed = await stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "1"), site="DC-EAST"), metadata=WMS_EAST)
    assert line(allowed, 1).received_quantity.value == "1"


async def test_receipts_with_findings_are_listed_by_site_finding_and_age(receipt_stack):
    po_stub, stub, _ = receipt_stack
    await publish_order(po_stub)
    await stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "11")), metadata=ERP)  # over, Hamburg
    await stub.PostGoodsReceipt(goods_receipt("GR-2", "PO-X", (1, "1"), site="DC-EAST"), metadata=WMS_EAST)  # unknown
    await stub.PostGoodsReceipt(goods_receipt("GR-3", "PO-1001", (2, "1", "KGM")), metadata=ERP)  # no finding
    await stub.PostGoodsReceipt(goods_receipt("GR-4", "PO-Y", (1, "1")), metadata=ERP)  # unknown, Hamburg

    async def listed(**filters) -> list[str]:
        names, token = [], ""
        while True:
            page = await stub.ListReceiptsWithFindings(
                receipt_service_pb2.ListReceiptsWithFindingsRequest(
                    page={"page_size": 1, "page_token": token}, **filters
                ),
                metadata=ERP,
            )
            names += [entry.receipt_id for entry in page.receipts]
            token = page.page_info.next_page_token
            if not token:
                return names

    assert await listed() == ["GR-4", "GR-2", "GR-1"]  # newest first, paged one by one
    assert await listed(site_id="DC-EAST") == ["GR-2"]
    assert await listed(finding=exception_pb2.EXCEPTION_TYPE_OVER_RECEIPT) == ["GR-1"]
    assert await listed(site_id="DC-HAMBURG", finding=exception_pb2.EXCEPTION_TYPE_RECEIPT_UNKNOWN_PO) == ["GR-4"]
    first = await stub.GetGoodsReceipt(
        receipt_service_pb2.GetGoodsReceiptRequest(source_system="erp", receipt_id="GR-1"), metadata=ERP
    )
    assert await listed(posted_before=first.receipt.posted_at) == ["GR-1"]
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.ListReceiptsWithFindings(
            receipt_service_pb2.ListReceiptsWithFindingsRequest(finding=exception_pb2.EXCEPTION_TYPE_PRICE_VARIANCE),
            metadata=ERP,
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _everything(stub) -> tuple:
    status = await stub.GetPurchaseOrderReceiptStatus(
        receipt_service_pb2.GetPurchaseOrderReceiptStatusRequest(po_id="PO-1001"), metadata=ERP
    )
    documents = [
        await stub.GetGoodsReceipt(
            receipt_service_pb2.GetGoodsReceiptRequest(source_system="erp", receipt_id=name), metadata=ERP
        )
        for name in ("GR-1", "RT-1", "GR-2")
    ]
    listing = await stub.ListReceiptsWithFindings(receipt_service_pb2.ListReceiptsWithFindingsRequest(), metadata=ERP)
    return status, documents, listing


async def _until_served(stub) -> tuple:
    for _ in range(100):
        try:
            return await _everything(stub)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("the read models were not rebuilt within 10 seconds")


async def test_receiving_status_is_identical_after_a_restart_and_after_valkey_lost_it(po_settings, redis):
    settings = receipt_settings(po_settings)
    async with running_service(po_settings, wire_po) as (_, po_channel, _):
        po_stub = po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel)
        await publish_order(po_stub)
        async with running_service(settings, wire_receipts) as (_, channel, _):
            stub = receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(channel)
            await stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "8")), metadata=ERP)
            await stub.PostGoodsReceipt(
                goods_receipt("RT-1", "PO-1001", (1, "2"), kind=RETURN, reverses="GR-1"), metadata=ERP
            )
            await stub.PostGoodsReceipt(goods_receipt("GR-2", "PO-1001", (1, "5"), (2, "1", "KGM")), metadata=ERP)
            before = await _everything(stub)
        assert before[0].lines[0].received_quantity.value == "11"
        assert len(before[2].receipts) == 1  # GR-2 took line 1 over the allowance
        async with running_service(settings, wire_receipts) as (_, channel, _):
            stub = receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(channel)
            assert await _everything(stub) == before
            keys = [key async for key in redis.scan_iter(match=f"{settings.namespace}:receipt-reconciliation:*")]
            assert keys, "the read models live in Valkey"
            await redis.delete(*keys)
            assert await _until_served(stub) == before


async def test_a_posting_against_a_version_not_yet_published_is_refused(receipt_stack, po_settings, js):
    po_stub, stub, _ = receipt_stack
    await publish_order(po_stub)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "1"), version=2), metadata=ERP)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await message_count(js, Namespace(po_settings.namespace), "receipt") == 0


async def test_the_event_carries_the_document_and_its_figures(receipt_stack, po_settings, js):
    po_stub, stub, _ = receipt_stack
    await publish_order(po_stub)
    await stub.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", (1, "0.5", "CS")), metadata=ERP)
    from tests.integration.helpers import stored_payloads

    (event,) = await stored_payloads(js, Namespace(po_settings.namespace), "receipt", events_pb2.GoodsReceiptReconciled)
    assert (event.receipt.receipt_id, event.receipt.source_system) == ("GR-1", "erp")
    assert event.reconciled_po_version == 1
    assert [(q.quantity.value, q.unit_of_measure) for q in event.quantities] == [("6", "EA")]
    assert Decimal(event.lines[0].received_quantity.value) == 6
    assert event.content_sha256


async def test_a_document_of_many_lines_the_order_lacks_raises_one_exception(receipt_stack, po_settings, js):
    po_stub, stub, _ = receipt_stack
    await publish_order(po_stub)
    wide = goods_receipt("GR-WIDE", "PO-1001", *((n, "1") for n in range(3, 303)))
    response = await stub.PostGoodsReceipt(wide, metadata=ERP, timeout=30)
    assert len(response.findings) == 300
    assert len(response.exception_ids) == 1
    [exception] = await raised_exceptions(js, Namespace(po_settings.namespace))
    assert exception.exception_id == response.exception_ids[0]
    assert len(exception.evidence) == 1


async def test_a_retry_after_a_lost_answer_still_reaches_the_index(receipt_stack, monkeypatch):
    """The first call's caller gave up after the append, before the projection ran: the retry (a replay)
    projects the document, so it is found and its id stays bound to its order."""
    from services.receipt_reconciliation.store import ReceiptIndex

    po_stub, stub, _ = receipt_stack
    await publish_order(po_stub)
    write = ReceiptIndex.write
    stalled = asyncio.Event()

    async def stall_once(self, client, event, sequence):  # Valkey slow once: longer than the caller waits
        if not stalled.is_set():
            stalled.set()
            await asyncio.sleep(2)
        await write(self, client, event, sequence)

    monkeypatch.setattr(ReceiptIndex, "write", stall_once)
    request = goods_receipt("GR-LOST", "PO-1001", (1, "1"))
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await stub.PostGoodsReceipt(request, metadata=ERP, timeout=0.5)
    assert lost.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.sleep(0.3)  # the server cancels the handler with its deadline, before the index write
    replay = stub.PostGoodsReceipt(request, metadata=ERP, timeout=10)
    await replay
    assert ("syncgov-idempotent-replay", "true") in tuple(await replay.initial_metadata())
    got = await stub.GetGoodsReceipt(
        receipt_service_pb2.GetGoodsReceiptRequest(source_system="erp", receipt_id="GR-LOST"), metadata=ERP
    )
    assert got.receipt.po_id == "PO-1001"


async def test_a_page_token_with_other_scripts_digits_is_invalid_argument(receipt_stack):
    from libs.runtime.paging import encode_page_cursor

    _, stub, _ = receipt_stack
    token = encode_page_cursor("receipt.findings", "\u00b2|erp/GR-1")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListReceiptsWithFindings(
            receipt_service_pb2.ListReceiptsWithFindingsRequest(page={"page_token": token}), metadata=ERP
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
