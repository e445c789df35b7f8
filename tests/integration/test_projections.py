"""State beside the stream is a projection of it (issue 9): the same whether or not the service restarted
between any two operations, rebuilt live when Valkey loses it, and never ahead of what the stream stored."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from libs.runtime.testing import running_service
from services.po_publication.wiring import wire as wire_po
from services.supplier_normalization.wiring import wire as wire_suppliers
from syncgov.common.v1 import types_pb2
from syncgov.po.v1 import po_service_pb2 as po_pb
from syncgov.po.v1 import po_service_pb2_grpc
from syncgov.supplier.v1 import supplier_service_pb2 as supplier_pb
from syncgov.supplier.v1 import supplier_service_pb2_grpc
from tests.integration.helpers import sample_order
from tests.integration.test_supplier_normalization import (
    record,
    submit,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
PROCUREMENT = (("x-syncgov-system", "procurement"),)
ERP = (("x-syncgov-system", "erp"),)

Step = Callable[[Any], Awaitable[object]]


def publish(po_id: str, quantity: str = "10") -> Step:
    return lambda stub: stub.PublishPurchaseOrder(
        po_pb.PublishPurchaseOrderRequest(purchase_order=sample_order(po_id, quantity=quantity)), metadata=PROCUREMENT
    )


def change(po_id: str, version: int, quantity: str) -> Step:
    order = sample_order(po_id, quantity=quantity)
    order.version = version
    return lambda stub: stub.ChangePurchaseOrder(
        po_pb.ChangePurchaseOrderRequest(purchase_order=order), metadata=PROCUREMENT
    )


def acknowledge(po_id: str, version: int) -> Step:
    return lambda stub: stub.AcknowledgePurchaseOrder(
        po_pb.AcknowledgePurchaseOrderRequest(po_id=po_id, version=version, erp_document_number=f"45-{po_id}"),
        metadata=ERP,
    )


ORDER_STEPS = [
    publish("PO-1"),
    publish("PO-2"),
    change("PO-1", 2, "11"),
    acknowledge("PO-2", 1),
    change("PO-1", 4, "14"),  # held: v3 has not arrived
    publish("PO-3"),
    acknowledge("PO-1", 2),  # an old version: PO-1 stays unacknowledged
    change("PO-1", 3, "13"),  # v3 lands, v4 is released
    publish("PO-2"),  # a retry
]


async def unacknowledged(stub: Any) -> list[tuple[str, int, int]]:
    answer = await stub.ListUnacknowledgedPurchaseOrders(
        po_pb.ListUnacknowledgedPurchaseOrdersRequest(page=types_pb2.PageRequest(page_size=100)), metadata=ERP
    )
    return [(o.po_id, o.latest_version, o.acknowledged_version) for o in answer.purchase_orders]


async def view(stub: Any) -> tuple[object, ...]:
    orders = []
    for po_id in ("PO-1", "PO-2", "PO-3"):
        got = await stub.GetPurchaseOrder(po_pb.GetPurchaseOrderRequest(po_id=po_id), metadata=ERP)
        orders.append((po_id, got.latest_version, got.erp_acknowledgment.version))
    return (await unacknowledged(stub), orders)


async def run_orders(settings: Any, restart_between: bool) -> tuple[object, ...]:
    if not restart_between:
        async with running_service(settings, wire_po) as (_, channel, _):
            stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
            for step in ORDER_STEPS:
                await step(stub)
            return await view(stub)
    for step in ORDER_STEPS:
        async with running_service(settings, wire_po) as (_, channel, _):
            await step(po_service_pb2_grpc.PurchaseOrderServiceStub(channel))
    async with running_service(settings, wire_po) as (_, channel, _):
        return await view(po_service_pb2_grpc.PurchaseOrderServiceStub(channel))


async def test_the_po_read_models_are_the_same_with_a_restart_between_every_operation(po_settings, nats_server):
    from libs.runtime.testing import unique_namespace
    from tests.integration.helpers import seed_supplier

    steady = await run_orders(po_settings, restart_between=False)
    restarted_settings = po_settings.model_copy(update={"namespace": unique_namespace()})
    await seed_supplier(nats_server.url, restarted_settings.namespace, "SUP-ACME")
    restarted = await run_orders(restarted_settings, restart_between=True)
    assert steady == restarted
    listed, orders = steady
    assert listed == [("PO-1", 4, 2), ("PO-3", 1, 0)]
    assert orders == [("PO-1", 4, 2), ("PO-2", 1, 1), ("PO-3", 1, 0)]


async def test_a_retry_restores_an_entry_the_read_model_missed(po_service, redis):
    running, stub, _ = po_service
    await publish("PO-9")(stub)
    prefix = running.runtime.namespace.redis_key("po-publication", "unacknowledged")
    # The entry is lost, the model still says it is built: only the replay can bring it back.
    await redis.zrem(prefix, "PO-9")
    await redis.hdel(prefix + ":entries", "PO-9")
    assert await unacknowledged(stub) == []
    await publish("PO-9")(stub)
    assert await unacknowledged(stub) == [("PO-9", 1, 0)]


async def test_a_valkey_wipe_is_noticed_and_rebuilt_while_serving(po_settings, redis):
    settings = po_settings.model_copy(update={"read_model_check_seconds": 0.2})
    async with running_service(settings, wire_po) as (running, channel, _):
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        for po_id in ("PO-1", "PO-2"):
            await publish(po_id)(stub)
        keys = [key async for key in redis.scan_iter(f"{running.runtime.namespace.root}:*")]
        await redis.delete(*keys)
        answers: list[object] = []
        async with asyncio.timeout(10):
            while not answers or not isinstance(answers[-1], list) or not answers[-1]:
                try:
                    answers.append(await unacknowledged(stub))
                except grpc.aio.AioRpcError as error:  # rebuilding: UNAVAILABLE, never an incomplete list
                    answers.append(error.code())
                await asyncio.sleep(0.1)
        assert answers[-1] == [("PO-1", 1, 0), ("PO-2", 1, 0)]
        assert all(a in ([], grpc.StatusCode.UNAVAILABLE) for a in answers[:-1])


SUPPLIER_RECORDS = [
    record("erp", "100", "Acme Industrial Supply GmbH", "DE136695976"),
    record("procurement", "P-1", "ACME Industrial Supply G.m.b.H.", "DE 136695976"),
    record("erp", "200", "Zeta Paints AG", "DE129273398", street="Ringstrasse 9", postal="22041"),
    record("erp", "300", "Nordlicht Logistik GmbH", street="Kai 5", postal="20095"),
    record("procurement", "P-2", "Nordlicht Logistik", street="Kai 5", postal="20095"),
]


async def supplier_view(stub: Any) -> list[tuple[str, str, str, int]]:
    found = []
    for rec in SUPPLIER_RECORDS:
        got = await stub.ResolveSupplier(
            supplier_pb.ResolveSupplierRequest(system=rec.source_system, local_id=rec.local_id),
            metadata=(("x-syncgov-system", "erp"),),
        )
        supplier = got.supplier
        found.append((rec.local_id, supplier.supplier_id, supplier.legal_name, supplier.version))
    return found


async def test_the_supplier_registry_is_the_same_with_a_restart_between_every_submission(supplier_settings):
    from libs.runtime.testing import unique_namespace

    async with running_service(supplier_settings, wire_suppliers) as (_, channel, _):
        stub = supplier_service_pb2_grpc.SupplierNormalizationServiceStub(channel)
        for rec in SUPPLIER_RECORDS:
            await submit(stub, rec)
        steady = await supplier_view(stub)

    restarted = supplier_settings.model_copy(update={"namespace": unique_namespace()})
    for rec in SUPPLIER_RECORDS:
        async with running_service(restarted, wire_suppliers) as (_, channel, _):
            await submit(supplier_service_pb2_grpc.SupplierNormalizationServiceStub(channel), rec)
    async with running_service(restarted, wire_suppliers) as (_, channel, _):
        after_restarts = await supplier_view(supplier_service_pb2_grpc.SupplierNormalizationServiceStub(channel))
    assert after_restarts == steady
    golden = {local_id: supplier_id for local_id, supplier_id, _, _ in steady}
    assert golden["100"] == golden["P-1"]
    assert len({golden["100"], golden["200"], golden["300"]}) == 3  # unrelated suppliers never share an id
    names = {local_id: name for local_id, _, name, _ in steady}
    assert names["200"] == "Zeta Paints AG"


async def test_a_supplier_whose_publish_failed_is_neither_answered_ok_nor_kept(suppliers, js):
    running, stub = suppliers
    await submit(stub, SUPPLIER_RECORDS[0])
    await js.delete_stream(running.runtime.namespace.stream("supplier"))  # the next publish cannot land
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await submit(stub, SUPPLIER_RECORDS[2])
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.ResolveSupplier(
            supplier_pb.ResolveSupplierRequest(system="erp", local_id="200"), metadata=(("x-syncgov-system", "erp"),)
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_submission_stored_behind_the_registrys_back_is_a_replay_not_a_conflict(supplier_settings):
    """What the chaos run found: an append whose acknowledgment was lost (here: written by a second process)
    is in the stream but not in this registry; the retry must find it, not call its own write a conflict."""
    async with (
        running_service(supplier_settings, wire_suppliers) as (_, first_channel, _),
        running_service(supplier_settings, wire_suppliers) as (_, second_channel, _),
    ):
        first = supplier_service_pb2_grpc.SupplierNormalizationServiceStub(first_channel)
        second = supplier_service_pb2_grpc.SupplierNormalizationServiceStub(second_channel)
        stored = await submit(second, SUPPLIER_RECORDS[2])
        retried = await submit(first, SUPPLIER_RECORDS[2])
        assert retried.supplier.supplier_id == stored.supplier.supplier_id
        assert retried.supplier.version == stored.supplier.version
        assert not retried.created


async def test_a_decision_on_golden_records_this_process_never_saw_is_guarded_like_any_write(supplier_settings):
    async with running_service(supplier_settings, wire_suppliers) as (_, channel, _):
        stub = supplier_service_pb2_grpc.SupplierNormalizationServiceStub(channel)
        first = (await submit(stub, SUPPLIER_RECORDS[0])).supplier.supplier_id
        second = (await submit(stub, SUPPLIER_RECORDS[2])).supplier.supplier_id
    async with running_service(supplier_settings, wire_suppliers) as (_, channel, _):  # a cold state cache
        stub = supplier_service_pb2_grpc.SupplierNormalizationServiceStub(channel)
        answer = await stub.DecideDuplicateCandidate(
            supplier_pb.DecideDuplicateCandidateRequest(
                supplier_id=first, other_supplier_id=second, same_supplier=False, reason="different firms"
            ),
            metadata=(("x-syncgov-system", "ops-console"),),
        )
        assert answer.supplier.supplier_id == first


async def test_an_entry_whose_projection_died_with_the_process_is_restored_at_start(po_settings, redis):
    """A kill between the append and the projection, and a caller that never retries: the next start
    projects the newest events again."""
    async with running_service(po_settings, wire_po) as (running, channel, _):
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        await publish("PO-7")(stub)
        prefix = running.runtime.namespace.redis_key("po-publication", "unacknowledged")
        await redis.zrem(prefix, "PO-7")  # as if the process died before projecting
        await redis.hdel(prefix + ":entries", "PO-7")
    async with running_service(po_settings, wire_po) as (_, channel, _):
        assert await unacknowledged(po_service_pb2_grpc.PurchaseOrderServiceStub(channel)) == [("PO-7", 1, 0)]
