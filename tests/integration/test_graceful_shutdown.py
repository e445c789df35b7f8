"""Draining: health turns NOT_SERVING first, while the server still finishes the calls it has."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.runtime.app import Runtime, Service, serve
from services.po_publication.settings import Settings
from services.po_publication.wiring import wire
from syncgov.po.v1 import po_service_pb2, po_service_pb2_grpc
from tests.integration.helpers import PROCUREMENT

pytestmark = pytest.mark.timeout(30)


class _SlowReads:
    """po-publication's servicer, except that GetPurchaseOrder waits until the test lets it answer."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def GetPurchaseOrder(
        self, request: po_service_pb2.GetPurchaseOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> po_service_pb2.GetPurchaseOrderResponse:
        self.started.set()
        await self.release.wait()
        return po_service_pb2.GetPurchaseOrderResponse()


async def test_health_is_not_serving_while_an_in_flight_call_drains(po_settings: Settings) -> None:
    settings = po_settings.model_copy(update={"shutdown_grace_seconds": 10.0})
    slow: list[_SlowReads] = []

    def slow_wire(rt: Runtime[Settings]) -> Service:
        service = wire(rt)
        first, *rest = service.grpc_services
        slow.append(_SlowReads(first.servicer))
        return dataclasses.replace(service, grpc_services=[dataclasses.replace(first, servicer=slow[0]), *rest])

    stop = asyncio.Event()
    address: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def run_service() -> None:
        async with serve(settings, slow_wire) as running:
            address.set_result(running.address)
            await stop.wait()

    service = asyncio.create_task(run_service())
    try:
        async with grpc.aio.insecure_channel(await asyncio.wait_for(address, 10)) as channel:
            health: Any = health_pb2_grpc.HealthStub(channel)  # the typing stubs lack Watch
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            first = await asyncio.wait_for(watch.read(), 5)
            assert first.status == health_pb2.HealthCheckResponse.SERVING

            stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
            in_flight = asyncio.ensure_future(
                stub.GetPurchaseOrder(po_service_pb2.GetPurchaseOrderRequest(po_id="PO-DRAIN"), metadata=PROCUREMENT)
            )
            await asyncio.wait_for(slow[0].started.wait(), 5)

            stop.set()  # as SIGTERM does
            during = await asyncio.wait_for(watch.read(), 5)
            assert during.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not in_flight.done(), "the in-flight call still runs while health says NOT_SERVING"
            assert not service.done(), "the server has not stopped yet"

            slow[0].release.set()
            response = await asyncio.wait_for(in_flight, 5)
            assert isinstance(response, po_service_pb2.GetPurchaseOrderResponse), "the drained call answered"
            watch.cancel()
        await asyncio.wait_for(service, 15)
    finally:
        stop.set()
        for waiting in slow:
            waiting.release.set()
        if not service.done():
            service.cancel()
        await asyncio.gather(service, return_exceptions=True)
