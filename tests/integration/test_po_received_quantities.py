"""po-publication learns what was received from receipt-reconciliation's events (issue 10, "The PO side").

The receipt events are published here as receipt-reconciliation publishes them (one ``reconciled`` event per
posted document on ``<ns>.receipt.<po_id>.reconciled``); po-publication never calls that service."""

from __future__ import annotations

import asyncio
import itertools
from decimal import Decimal

import grpc
import pytest
from google.rpc import error_details_pb2
from google.type import decimal_pb2
from opentelemetry.trace import NoOpTracer

from libs.runtime.events import Event, EventPublisher, EventReader
from libs.runtime.testing import running_service
from services.po_publication.wiring import wire
from syncgov.exception.v1 import exception_pb2
from syncgov.po.v1 import po_pb2, po_service_pb2, po_service_pb2_grpc
from syncgov.receipt.v1 import events_pb2 as receipt_events
from syncgov.receipt.v1 import receipt_pb2
from tests.integration.helpers import (
    PROCUREMENT,
    code_of,
    message_count,
    raised_exceptions,
    requests_of,
    sample_order,
    status_details,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
PO_ID = "PO-2001"
PROBE = "PO-PROBE"
_receipts = itertools.count(1)


def version(number: int, line_1: str = "10", *, po_id: str = PO_ID, drop_line_2: bool = False) -> po_pb2.PurchaseOrder:
    """Line 1 at ``line_1`` EA, line 2 at 2.5 KGM (sample_order's)."""
    order = sample_order(po_id, quantity=line_1)
    order.version = number
    if drop_line_2:
        del order.lines[1]
    return order


async def publish(stub, order: po_pb2.PurchaseOrder) -> None:
    await stub.PublishPurchaseOrder(
        po_service_pb2.PublishPurchaseOrderRequest(purchase_order=order), metadata=PROCUREMENT
    )


async def change(stub, order: po_pb2.PurchaseOrder) -> po_service_pb2.ChangePurchaseOrderResponse:
    return await stub.ChangePurchaseOrder(
        po_service_pb2.ChangePurchaseOrderRequest(purchase_order=order), metadata=PROCUREMENT
    )


async def cancel(stub, po_id: str = PO_ID) -> po_service_pb2.CancelPurchaseOrderResponse:
    return await stub.CancelPurchaseOrder(
        po_service_pb2.CancelPurchaseOrderRequest(po_id=po_id, reason="no longer needed"), metadata=PROCUREMENT
    )


async def post_receipt(
    js, namespace, po_id: str, received: dict[int, str], *, fully_received: bool = False, against: int = 1
) -> None:
    """The event receipt-reconciliation publishes for one posted document: every PO line it touched, after it,
    reconciled against version ``against``."""
    receipt_id = f"GR-{next(_receipts)}"
    reconciled = receipt_events.GoodsReceiptReconciled(
        receipt=receipt_pb2.GoodsReceipt(
            receipt_id=receipt_id,
            source_system="erp",
            po_id=po_id,
            po_version=1,
            site_id="DC-HAMBURG",
            kind=receipt_pb2.RECEIPT_KIND_RECEIPT,
        ),
        reconciled_po_version=against,
        lines=[
            receipt_pb2.LineReceiptStatus(po_line_number=line, received_quantity=decimal_pb2.Decimal(value=quantity))
            for line, quantity in received.items()
        ],
        purchase_order_fully_received=fully_received,
        # What this document took in on each line, in the order's unit (here: the line's whole figure).
        quantities=[
            receipt_pb2.ReceiptLineQuantity(
                line_number=line,
                po_line_number=line,
                quantity=decimal_pb2.Decimal(value=quantity),
                unit_of_measure="EA",
            )
            for line, quantity in received.items()
        ],
    )
    await EventPublisher(requests_of(js), namespace, NoOpTracer(), 5).publish(
        Event(
            domain="receipt",
            object_type="goods_receipt",
            object_key=po_id,
            object_version=1,
            name="reconciled",
            payload=reconciled,
            idempotency_key=f"erp:goods_receipt:{receipt_id}",
            source_system="erp",
            workflow_key=po_id,
        )
    )


async def until_followed(stub, js, namespace) -> None:
    """Returns once po-publication has applied every receipt event posted so far, without guessing a delay.

    Receipt events are applied in stream order, so a probe order is fully received last; change orders then lower
    the probe's line 1 until one is refused. A try that passed only wrote another version of the probe, and the
    next one lowers it further."""
    await publish(stub, version(1, po_id=PROBE))
    await post_receipt(js, namespace, PROBE, {1: "10"})
    for number in range(2, 1000):
        try:
            await change(stub, version(number, str(Decimal(10) - Decimal(number) / 1000), po_id=PROBE))
        except grpc.aio.AioRpcError as refusal:
            if reason_of(refusal) != "BELOW_RECEIVED_QUANTITY":
                raise
            return
    pytest.fail("po-publication did not apply the receipt events")


def reason_of(error: grpc.aio.AioRpcError) -> str:
    return next(d.reason for d in status_details(error) if isinstance(d, error_details_pb2.ErrorInfo))


def message_of(error: grpc.aio.AioRpcError) -> str:
    return error.details() or ""


def metadata_of(error: grpc.aio.AioRpcError) -> dict[str, str]:
    return next(dict(d.metadata) for d in status_details(error) if isinstance(d, error_details_pb2.ErrorInfo))


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION, failure.value.details()
    return failure.value


async def test_a_change_order_below_what_was_received_is_refused_and_writes_nothing(po_service, js):
    running, stub, _ = po_service
    namespace = running.runtime.namespace
    await publish(stub, version(1))
    await post_receipt(js, namespace, PO_ID, {1: "4"})
    await post_receipt(js, namespace, PO_ID, {1: "6", 2: "0.5"})  # cumulative figures: 6 on line 1 now
    await until_followed(stub, js, namespace)

    events_before = await message_count(js, namespace, "po")
    error = await refused(change(stub, version(2, "5")))
    assert reason_of(error) == "BELOW_RECEIVED_QUANTITY"
    metadata = metadata_of(error)
    assert (metadata["line"], metadata["received"], metadata["quantity"]) == ("1", "6", "5")
    assert PO_ID in message_of(error)
    assert "line 1 to 5 with 6 received" in message_of(error)
    removed = await refused(change(stub, version(2, drop_line_2=True)))
    assert "line 2 removed with 0.5 received" in message_of(removed)
    assert await message_count(js, namespace, "po") == events_before, "a refused change order writes nothing"

    assert (await change(stub, version(2, "6"))).version == 2, "down to exactly what was received"
    assert (await change(stub, version(3, "12"))).version == 3, "raised above what was received"
    history = await EventReader(requests_of(js), namespace).history("po", PO_ID)
    assert [e.subject.rsplit(".", 1)[-1] for e in history] == ["published", "changed", "changed"]


async def test_a_fully_received_order_cannot_be_cancelled_a_partly_received_one_can(po_service, js):
    running, stub, _ = po_service
    namespace = running.runtime.namespace
    await publish(stub, version(1))
    await publish(stub, version(1, po_id="PO-2002"))
    await post_receipt(js, namespace, PO_ID, {1: "10", 2: "2.5"}, fully_received=True)
    await post_receipt(js, namespace, "PO-2002", {1: "10"})
    await until_followed(stub, js, namespace)

    events_before = await message_count(js, namespace, "po")
    error = await refused(cancel(stub))
    assert reason_of(error) == "FULLY_RECEIVED"
    assert PO_ID in message_of(error)
    assert await message_count(js, namespace, "po") == events_before
    assert (await cancel(stub, "PO-2002")).version == 2, "line 2 is still open: the rest may be cancelled"


async def test_the_received_quantities_are_rebuilt_from_the_stream_when_the_service_starts(po_settings, js):
    async with running_service(po_settings, wire) as (running, channel, _):
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        namespace = running.runtime.namespace
        await publish(stub, version(1))
        await post_receipt(js, namespace, PO_ID, {1: "10", 2: "2.5"}, fully_received=True)
        await until_followed(stub, js, namespace)
        assert reason_of(await refused(cancel(stub))) == "FULLY_RECEIVED"

    # A new instance answers nothing before it has read the receipt stream: no waiting here.
    async with running_service(po_settings, wire) as (_, channel, _):
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        assert reason_of(await refused(change(stub, version(2, "9")))) == "BELOW_RECEIVED_QUANTITY"
        assert reason_of(await refused(cancel(stub))) == "FULLY_RECEIVED"


async def exceptions_of(js, namespace, kind, po_id: str = PO_ID) -> list:
    return [e for e in await raised_exceptions(js, namespace) if e.type == kind and e.object.object_key == po_id]


async def until_raised(js, namespace, kind, po_id: str = PO_ID) -> list:
    """Polls the exception stream until one of ``kind`` names ``po_id`` (the test's timeout bounds it)."""
    while not (found := await exceptions_of(js, namespace, kind, po_id)):  # noqa: ASYNC110 - a periodic job raises
        await asyncio.sleep(0.05)
    return found


async def test_a_held_version_lowering_a_line_below_what_arrived_meanwhile_is_not_applied(po_service, js):
    running, stub, _ = po_service
    namespace = running.runtime.namespace
    await publish(stub, version(1))
    held = await change(stub, version(3, "2"))  # before any goods arrived: held until version 2 lands
    assert held.held
    await post_receipt(js, namespace, PO_ID, {1: "10"})
    await until_followed(stub, js, namespace)

    assert (await change(stub, version(2, "10"))).version == 2
    versions = await stub.ListPurchaseOrderVersions(
        po_service_pb2.ListPurchaseOrderVersionsRequest(po_id=PO_ID), metadata=PROCUREMENT
    )
    assert [o.version for o in versions.purchase_orders] == [1, 2], "version 3 would lower line 1 below the 10"
    [raised] = await exceptions_of(js, namespace, exception_pb2.EXCEPTION_TYPE_OUT_OF_ORDER_VERSION)
    assert raised.object.version == 3
    assert "line 1 to 2 with 10 received" in raised.detail
    history = await EventReader(requests_of(js), namespace).history("po", PO_ID)
    assert [e.subject.rsplit(".", 1)[-1] for e in history] == ["published", "held", "changed", "hold_expired"]
    assert reason_of(await refused(change(stub, version(3, "2")))) == "BELOW_RECEIVED_QUANTITY", "sent directly"


async def test_a_receipt_reconciled_before_a_change_that_lowered_its_line_raises_over_receipt_once(po_settings, js):
    kind = exception_pb2.EXCEPTION_TYPE_OVER_RECEIPT
    async with running_service(po_settings, wire) as (running, channel, _):
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        namespace = running.runtime.namespace
        await publish(stub, version(1))
        assert (await change(stub, version(2, "6"))).version == 2  # nothing received yet, as far as it knows
        await post_receipt(js, namespace, PO_ID, {1: "10"}, against=1)  # receipt-reconciliation read version 1
        [raised] = await until_raised(js, namespace, kind)
        assert raised.object.version == 2
        assert "10 received" in raised.detail
        assert "6 ordered in version 2" in raised.detail

    # A restart replays the receipt stream: the same receipt is checked again and raises nothing new. A probe
    # order's over-receipt, posted after it, is raised only once the replayed one was checked (in stream order).
    async with running_service(po_settings, wire) as (running, channel, _):
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        await publish(stub, version(1, po_id=PROBE))
        await change(stub, version(2, "6", po_id=PROBE))
        await post_receipt(js, namespace, PROBE, {1: "10"}, against=1)
        await until_raised(js, namespace, kind, PROBE)
        assert [e.exception_id for e in await exceptions_of(js, namespace, kind)] == [raised.exception_id]


async def test_changes_wait_until_the_receipt_stream_is_read_at_start(po_settings, js, monkeypatch):
    """A start that outlasts the follower's wait serves before every receipt is applied: a change or cancellation
    decided on that partial view could lower a line below what was received, so both are UNAVAILABLE (retry)
    until the receipt stream is read through; publishing is not held up."""
    from libs.runtime.follower import StreamFollower
    from libs.runtime.subjects import Namespace

    async with running_service(po_settings, wire) as (_, channel, _):
        await publish(po_service_pb2_grpc.PurchaseOrderServiceStub(channel), version(1))
    await post_receipt(js, Namespace(po_settings.namespace), PO_ID, {1: "10"})
    start = StreamFollower.start
    held_back = asyncio.Event()

    async def slow_receipts(self, catch_up_timeout: float = 60.0) -> None:
        if self._stream.endswith("_RECEIPT"):
            original = self._on_message

            async def late(message) -> None:  # receipts arrive only once the test lets them
                await held_back.wait()
                await original(message)

            self._on_message = late
            await start(self, catch_up_timeout=0.2)
        else:
            await start(self, catch_up_timeout)

    monkeypatch.setattr(StreamFollower, "start", slow_receipts)
    async with running_service(po_settings, wire) as (_, channel, _):
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as waiting:
            await change(stub, version(2, "4"))
        assert waiting.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as cancelling:
            await cancel(stub)
        assert cancelling.value.code() == grpc.StatusCode.UNAVAILABLE
        await publish(stub, version(1, po_id="PO-OTHER"))  # publishing needs no receipts
        held_back.set()
        codes = []
        for _ in range(50):
            codes.append(await code_of(change(stub, version(2, "4"))))
            if codes[-1] != grpc.StatusCode.UNAVAILABLE:
                break
            await asyncio.sleep(0.1)
        assert codes[-1] == grpc.StatusCode.FAILED_PRECONDITION  # read through: 10 were received, 4 is below
