"""Purchase order versions, change orders, cancellation and the ERP's acknowledgment of each version."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2

from libs.runtime.paging import encode_page_token
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2
from syncgov.po.v1 import events_pb2, po_pb2, po_service_pb2
from tests.integration.helpers import raised_exceptions, sample_order, status_details

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]
PROCUREMENT = (("x-syncgov-system", "procurement"),)
ERP = (("x-syncgov-system", "erp"),)


def version(number: int, *, quantity: str = "10", po_id: str = "PO-1001") -> po_pb2.PurchaseOrder:
    order = sample_order(po_id, quantity=quantity)
    order.version = number
    return order


async def publish(stub, order):
    return await stub.PublishPurchaseOrder(
        po_service_pb2.PublishPurchaseOrderRequest(purchase_order=order), metadata=PROCUREMENT
    )


async def change(stub, order, metadata=PROCUREMENT):
    return await stub.ChangePurchaseOrder(
        po_service_pb2.ChangePurchaseOrderRequest(purchase_order=order), metadata=metadata
    )


async def acknowledge(stub, number: int, erp_number: str = "4500012345", po_id: str = "PO-1001"):
    return await stub.AcknowledgePurchaseOrder(
        po_service_pb2.AcknowledgePurchaseOrderRequest(po_id=po_id, version=number, erp_document_number=erp_number),
        metadata=ERP,
    )


def reason_of(error: grpc.aio.AioRpcError) -> str:
    return next(d.reason for d in status_details(error) if isinstance(d, error_details_pb2.ErrorInfo))


async def test_three_versions_in_order_then_the_erp_acknowledges_the_third(po_service, js):
    running, stub, _ = po_service
    await publish(stub, version(1))
    second = await change(stub, version(2, quantity="12"))
    assert list(second.changes.quantity_changed_line_numbers) == [1]
    third_order = version(3, quantity="12")
    del third_order.lines[1]
    third = await change(stub, third_order)
    assert list(third.changes.removed_line_numbers) == [2]
    acked = await acknowledge(stub, 3)
    assert acked.latest_version_acknowledged
    got = await stub.GetPurchaseOrder(po_service_pb2.GetPurchaseOrderRequest(po_id="PO-1001"), metadata=ERP)
    assert got.latest_version == 3
    assert got.erp_acknowledgment.version == 3
    assert got.erp_acknowledgment.erp_document_number == "4500012345"
    [stored] = [e for e in await running.runtime.reader.history("po", "PO-1001") if e.subject.endswith(".acknowledged")]
    acknowledged = stored.unpack(events_pb2.PurchaseOrderAcknowledged)
    assert acknowledged.propagation_time.ToNanoseconds() > 0
    unacked = await stub.ListUnacknowledgedPurchaseOrders(
        po_service_pb2.ListUnacknowledgedPurchaseOrdersRequest(), metadata=ERP
    )
    assert list(unacked.purchase_orders) == []


async def test_an_older_version_after_a_newer_one_is_refused(po_service):
    _, stub, _ = po_service
    await publish(stub, version(1))
    await change(stub, version(2, quantity="12"))
    await change(stub, version(3, quantity="13"))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await change(stub, version(2, quantity="99"))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(failure.value) == "STALE_VERSION"
    same_again = await change(stub, version(2, quantity="12"))
    assert same_again.version == 2, "the very same change order again is a retry, answered as before"


async def test_two_concurrent_change_orders_one_wins_the_other_is_aborted_and_can_retry(po_service):
    _, stub, _ = po_service
    await publish(stub, version(1))
    results = await asyncio.gather(
        change(stub, version(2, quantity="20")), change(stub, version(2, quantity="30")), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, Exception)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == 1
    assert losers[0].code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.ALREADY_EXISTS)
    retried = await change(stub, version(3, quantity="30"))
    assert retried.version == 3
    versions = await stub.ListPurchaseOrderVersions(
        po_service_pb2.ListPurchaseOrderVersionsRequest(po_id="PO-1001"), metadata=ERP
    )
    assert [o.version for o in versions.purchase_orders] == [1, 2, 3]


async def test_an_acknowledgment_of_an_older_version_leaves_the_order_not_in_the_erp(po_service):
    _, stub, _ = po_service
    await publish(stub, version(1))
    await change(stub, version(2, quantity="12"))
    await change(stub, version(3, quantity="13"))
    acked = await acknowledge(stub, 2)
    assert not acked.latest_version_acknowledged
    unacked = await stub.ListUnacknowledgedPurchaseOrders(
        po_service_pb2.ListUnacknowledgedPurchaseOrdersRequest(), metadata=ERP
    )
    [entry] = unacked.purchase_orders
    assert (entry.po_id, entry.latest_version, entry.acknowledged_version) == ("PO-1001", 3, 2)


async def test_repeated_commands_publish_once(po_service, js):
    running, stub, _ = po_service
    await publish(stub, version(1))
    await change(stub, version(2, quantity="12"))
    await change(stub, version(2, quantity="12"))
    await acknowledge(stub, 2)
    await acknowledge(stub, 2)
    history = await running.runtime.reader.history("po", "PO-1001")
    assert [e.subject.rsplit(".", 1)[1] for e in history] == ["published", "changed", "acknowledged"]
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await acknowledge(stub, 2, erp_number="OTHER")
    assert failure.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_only_the_erp_acknowledges_and_rejections_raise_exceptions(po_service, js):
    running, stub, _ = po_service
    await publish(stub, version(1))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.AcknowledgePurchaseOrder(
            po_service_pb2.AcknowledgePurchaseOrderRequest(po_id="PO-1001", version=1, erp_document_number="X"),
            metadata=PROCUREMENT,
        )
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    rejected = await stub.RejectPurchaseOrder(
        po_service_pb2.RejectPurchaseOrderRequest(po_id="PO-1001", version=1, reason="vendor blocked in company code"),
        metadata=ERP,
    )
    raised = await raised_exceptions(js, running.runtime.namespace)
    erp_rejections = [e for e in raised if e.type == exception_pb2.EXCEPTION_TYPE_ERP_REJECTED]
    assert [e.exception_id for e in erp_rejections] == [rejected.exception_id]


async def test_cancellation_is_a_version_and_ends_changes(po_service):
    _, stub, _ = po_service
    await publish(stub, version(1))
    cancelled = await stub.CancelPurchaseOrder(
        po_service_pb2.CancelPurchaseOrderRequest(po_id="PO-1001", version=2, reason="customer cancelled"),
        metadata=PROCUREMENT,
    )
    assert cancelled.version == 2
    got = await stub.GetPurchaseOrder(po_service_pb2.GetPurchaseOrderRequest(po_id="PO-1001"), metadata=ERP)
    assert got.purchase_order.status == po_pb2.PURCHASE_ORDER_STATUS_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await change(stub, version(3, quantity="5"))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(failure.value) == "PO_CANCELLED"


async def test_changing_an_unknown_order_is_not_found(po_service):
    _, stub, _ = po_service
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await change(stub, version(2, po_id="PO-404"))
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


async def test_orders_for_unknown_or_deactivated_suppliers_are_refused(po_service, po_settings, js):
    from syncgov.supplier.v1 import supplier_pb2
    from tests.integration.helpers import seed_supplier

    running, stub, _ = po_service
    unknown = version(1, po_id="PO-U")
    unknown.supplier_id = "SUP-NOBODY"
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await publish(stub, unknown)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [bad] = [d for d in status_details(failure.value) if isinstance(d, error_details_pb2.BadRequest)]
    assert [v.field for v in bad.field_violations] == ["purchase_order.supplier_id"]
    assert "unknown" in bad.field_violations[0].description

    await publish(stub, version(1))
    # supplier-normalization deactivates the supplier while po-publication runs: it follows the event.
    await seed_supplier(po_settings.nats_url, po_settings.namespace, "SUP-ACME", supplier_pb2.SUPPLIER_STATUS_INACTIVE)

    probes = iter(range(1000))

    async def refused() -> bool:  # a fresh order each probe, so a probe that still passes changes nothing here
        try:
            await publish(stub, version(1, po_id=f"PO-PROBE-{next(probes)}"))
        except grpc.aio.AioRpcError as error:
            return error.code() == grpc.StatusCode.INVALID_ARGUMENT
        return False

    async with asyncio.timeout(10):
        while not await refused():  # noqa: ASYNC110 - waiting for another component's event
            await asyncio.sleep(0.05)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await change(stub, version(2, quantity="12"))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [bad] = [d for d in status_details(failure.value) if isinstance(d, error_details_pb2.BadRequest)]
    assert "inactive" in bad.field_violations[0].description
    history = await running.runtime.reader.history("po", "PO-1001")
    assert len(history) == 1, "nothing was published for the inactive supplier"


async def test_a_version_ahead_of_its_predecessor_is_held_then_applied(po_service, js):
    running, stub, _ = po_service
    await publish(stub, version(1))
    third = version(3, quantity="13")
    held = await change(stub, third)
    assert held.held
    assert held.stream_sequence == 0
    got = await stub.GetPurchaseOrder(po_service_pb2.GetPurchaseOrderRequest(po_id="PO-1001"), metadata=ERP)
    assert got.latest_version == 1, "a held version is not applied"
    again = await change(stub, third)
    assert again.held, "sending the held version again is a retry"
    await change(stub, version(2, quantity="12"))
    versions = await stub.ListPurchaseOrderVersions(
        po_service_pb2.ListPurchaseOrderVersionsRequest(po_id="PO-1001"), metadata=ERP
    )
    assert [o.version for o in versions.purchase_orders] == [1, 2, 3]
    assert versions.purchase_orders[2].lines[0].quantity.value == "13"
    history = await running.runtime.reader.history("po", "PO-1001")
    applied = [e for e in history if e.subject.endswith(".changed") and e.envelope.object_version == 3]
    assert applied[0].envelope.source_system == "procurement"


async def test_a_held_version_sent_again_with_other_content_is_a_duplicate_transaction(po_service, js):
    running, stub, _ = po_service
    await publish(stub, version(1))
    assert (await change(stub, version(3, quantity="13"))).held
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await change(stub, version(3, quantity="99"))
    assert failure.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason_of(failure.value) == "DUPLICATE_TRANSACTION"
    [exception] = await raised_exceptions(js, running.runtime.namespace)
    assert exception.type == exception_pb2.EXCEPTION_TYPE_DUPLICATE_TRANSACTION
    assert ['"13"' in exception.evidence[0], '"99"' in exception.evidence[1]] == [True, True]
    await change(stub, version(2, quantity="12"))  # the held content, not the other, is what lands
    got = await stub.GetPurchaseOrder(po_service_pb2.GetPurchaseOrderRequest(po_id="PO-1001"), metadata=ERP)
    assert (got.latest_version, got.purchase_order.lines[0].quantity.value) == (3, "13")


async def test_a_held_version_whose_predecessor_never_comes_raises_out_of_order(po_settings, js, tmp_path):
    import yaml

    from libs.runtime.settings import DEFAULT_POLICY_FILE
    from libs.runtime.testing import running_service
    from services.po_publication.wiring import wire
    from syncgov.po.v1 import po_service_pb2_grpc

    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    policy["ordering"]["out_of_order_hold"] = "300ms"
    quick = tmp_path / "quick-hold.yaml"
    quick.write_text(yaml.safe_dump(policy))
    settings = po_settings.model_copy(update={"policy_file": quick, "hold_sweep_seconds": 0.1})
    async with running_service(settings, wire) as (running, channel, _):
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        await publish(stub, version(1))
        assert (await change(stub, version(3, quantity="13"))).held

        async def expired() -> list:
            found = await raised_exceptions(js, running.runtime.namespace)
            return [e for e in found if e.type == exception_pb2.EXCEPTION_TYPE_OUT_OF_ORDER_VERSION]

        async with asyncio.timeout(10):
            while not (raised := await expired()):  # noqa: ASYNC110 - waiting for the sweeper
                await asyncio.sleep(0.05)
        [exception] = raised
        assert exception.object.version == 3
        assert '"13"' in exception.evidence[0]
        await change(stub, version(2, quantity="12"))
        versions = await stub.ListPurchaseOrderVersions(
            po_service_pb2.ListPurchaseOrderVersionsRequest(po_id="PO-1001"), metadata=ERP
        )
        assert [o.version for o in versions.purchase_orders] == [1, 2], "an expired hold is not applied later"
        await asyncio.sleep(0.3)
        assert len(await expired()) == 1, "raised once"


async def test_a_held_version_survives_a_restart(po_settings):
    from libs.runtime.testing import running_service
    from services.po_publication.wiring import wire
    from syncgov.po.v1 import po_service_pb2_grpc

    async with running_service(po_settings, wire) as (_, channel, _):
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        await publish(stub, version(1))
        assert (await change(stub, version(3, quantity="13"))).held
    async with running_service(po_settings, wire) as (_, channel, _):
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        await change(stub, version(2, quantity="12"))
        versions = await stub.ListPurchaseOrderVersions(
            po_service_pb2.ListPurchaseOrderVersionsRequest(po_id="PO-1001"), metadata=ERP
        )
        assert [o.version for o in versions.purchase_orders] == [1, 2, 3]


async def test_read_models_lost_with_valkey_are_rebuilt_from_the_stream(po_settings, redis):
    from libs.runtime.testing import running_service
    from services.po_publication.wiring import wire
    from syncgov.po.v1 import po_service_pb2_grpc

    async with running_service(po_settings, wire) as (_, channel, _):
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        await publish(stub, version(1))
        await publish(stub, version(1, po_id="PO-2002"))
        await acknowledge(stub, 1, po_id="PO-2002")
        assert (await change(stub, version(3, quantity="13"))).held
    keys = [key async for key in redis.scan_iter(f"{po_settings.namespace}:*")]
    await redis.delete(*keys)  # Valkey loses everything; the stream still has it all
    async with running_service(po_settings, wire) as (_, channel, _):
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        unacked = await stub.ListUnacknowledgedPurchaseOrders(
            po_service_pb2.ListUnacknowledgedPurchaseOrdersRequest(), metadata=ERP
        )
        assert [o.po_id for o in unacked.purchase_orders] == ["PO-1001"]
        await change(stub, version(2, quantity="12"))
        got = await stub.GetPurchaseOrder(po_service_pb2.GetPurchaseOrderRequest(po_id="PO-1001"), metadata=ERP)
        assert got.latest_version == 3, "the held version was found again and applied"


async def test_unacknowledged_orders_page_one_at_a_time_with_opaque_tokens_and_refuse_foreign_ones(po_service):
    _, stub, _ = po_service
    # approved oldest first in the opposite order of their ids: the listing follows approval, not the id
    approval_order = ["PO-3003", "PO-2002", "PO-1001"]
    for minutes_ago, po_id in zip((30, 20, 10), approval_order, strict=True):
        order = version(1, po_id=po_id)
        order.approved_at.seconds -= 60 * minutes_ago
        await publish(stub, order)

    seen: list[str] = []
    token = ""
    for _ in range(len(approval_order) + 1):  # one page per order, and a bound should the token never run out
        page = await stub.ListUnacknowledgedPurchaseOrders(
            po_service_pb2.ListUnacknowledgedPurchaseOrdersRequest(
                page=types_pb2.PageRequest(page_size=1, page_token=token)
            ),
            metadata=ERP,
        )
        seen.extend(o.po_id for o in page.purchase_orders)
        assert len(page.purchase_orders) == 1
        token = page.page_info.next_page_token
        if not token:
            break
        assert not token.isdigit(), "page tokens are opaque"
    assert seen == approval_order

    foreign = encode_page_token("controlplane.audit_trail", 1)
    for bad in (foreign, "garbage!", "1"):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.ListUnacknowledgedPurchaseOrders(
                po_service_pb2.ListUnacknowledgedPurchaseOrdersRequest(page=types_pb2.PageRequest(page_token=bad)),
                metadata=ERP,
            )
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [bad_request] = [d for d in status_details(failure.value) if isinstance(d, error_details_pb2.BadRequest)]
        assert [v.field for v in bad_request.field_violations] == ["page.page_token"]


async def test_paging_is_not_shifted_by_orders_acknowledged_between_pages(po_service):
    _, stub, _ = po_service
    for po_id in ("PO-A", "PO-B", "PO-C"):
        await publish(stub, version(1, po_id=po_id))

    async def page(token: str = ""):
        return await stub.ListUnacknowledgedPurchaseOrders(
            po_service_pb2.ListUnacknowledgedPurchaseOrdersRequest(
                page=types_pb2.PageRequest(page_size=1, page_token=token)
            ),
            metadata=ERP,
        )

    first = await page()
    await acknowledge(stub, 1, po_id=first.purchase_orders[0].po_id)  # the first row leaves the list
    second = await page(first.page_info.next_page_token)
    third = await page(second.page_info.next_page_token)
    seen = [p.purchase_orders[0].po_id for p in (first, second, third)]
    assert sorted(seen) == ["PO-A", "PO-B", "PO-C"]
    assert third.page_info.next_page_token == ""
