"""Transient faults (issue 9): a frozen broker is UNAVAILABLE with RetryInfo, never INTERNAL, and the retry
lands exactly once; a frozen Valkey does not fail a write the stream acknowledged, and the read model heals.

The session's servers are frozen with SIGSTOP for a moment (tests run one at a time) and always thawed."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2

from libs.runtime.testing import running_service
from services.po_publication.wiring import wire
from syncgov.common.v1 import types_pb2
from syncgov.po.v1 import po_service_pb2 as pb
from syncgov.po.v1 import po_service_pb2_grpc
from tests.integration.helpers import frozen, message_count, sample_order, status_details

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
PROCUREMENT = (("x-syncgov-system", "procurement"),)


async def test_a_frozen_broker_is_unavailable_with_retry_info_and_the_retry_lands_once(po_settings, nats_server, js):
    settings = po_settings.model_copy(update={"publish_timeout_seconds": 0.5})
    async with running_service(settings, wire) as (running, channel, _):
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        request = pb.PublishPurchaseOrderRequest(purchase_order=sample_order("PO-F1"))
        with frozen(nats_server), pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.PublishPurchaseOrder(request, metadata=PROCUREMENT, timeout=10)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        [retry] = [d for d in status_details(failure.value) if isinstance(d, error_details_pb2.RetryInfo)]
        assert retry.retry_delay.ToMilliseconds() > 0
        answer = None
        async with asyncio.timeout(20):
            while answer is None:  # the client retries UNAVAILABLE, as RetryInfo says
                try:
                    answer = await stub.PublishPurchaseOrder(request, metadata=PROCUREMENT, timeout=5)
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    await asyncio.sleep(0.2)
        assert answer.version == 1
        assert await message_count(js, running.runtime.namespace, "po") == 1


async def test_a_frozen_valkey_does_not_fail_an_acknowledged_write_and_the_list_heals(po_settings, valkey_server):
    settings = po_settings.model_copy(update={"redis_timeout_seconds": 0.3, "read_model_check_seconds": 0.2})
    async with running_service(settings, wire) as (_, channel, _):
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        request = pb.PublishPurchaseOrderRequest(purchase_order=sample_order("PO-F2"), idempotency_key="batch-1/1")
        with frozen(valkey_server):
            answer = await stub.PublishPurchaseOrder(request, metadata=PROCUREMENT, timeout=10)
        assert (answer.po_id, answer.version) == ("PO-F2", 1)
        answers: list[object] = []
        async with asyncio.timeout(15):
            while answers[-1:] != [["PO-F2"]]:
                try:
                    page = await stub.ListUnacknowledgedPurchaseOrders(
                        pb.ListUnacknowledgedPurchaseOrdersRequest(page=types_pb2.PageRequest(page_size=10)),
                        metadata=PROCUREMENT,
                    )
                    answers.append([o.po_id for o in page.purchase_orders])
                except grpc.aio.AioRpcError as error:  # rebuilding: UNAVAILABLE, never INTERNAL
                    answers.append(error.code())
                await asyncio.sleep(0.1)
        assert all(a in ([], ["PO-F2"], grpc.StatusCode.UNAVAILABLE) for a in answers)
