"""Draining: health turns NOT_SERVING first, while the server still finishes the calls it has; a shutdown that
never finishes is cut at its deadline."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.runtime.app import SHUTDOWN_SLACK_SECONDS, Runtime, Service, serve
from libs.runtime.local_servers import die_with_parent
from services.po_publication.settings import Settings
from services.po_publication.wiring import wire
from syncgov.po.v1 import po_service_pb2, po_service_pb2_grpc
from tests.integration.helpers import PROCUREMENT, publish_order
from tests.integration.stuck_shutdown import HANDLING

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


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


async def test_a_shutdown_that_never_finishes_is_cut_at_its_deadline(po_settings: Settings) -> None:
    """A consumer's handler that never returns (a broker gone mid-message) would keep the process after SIGTERM for
    ever; the process exits 1 once the grace period and the slack have passed, saying so."""
    grace = 0.5
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCGOV_", "OTEL_"))}
    env = {
        **base,
        "SYNCGOV_NATS_URL": po_settings.nats_url,
        "SYNCGOV_REDIS_URL": po_settings.redis_url,
        "SYNCGOV_NAMESPACE": po_settings.namespace,
        "SYNCGOV_GRPC_PORT": "0",
        "SYNCGOV_METRICS_PORT": "0",
        "SYNCGOV_SHUTDOWN_GRACE_SECONDS": str(grace),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.stuck_shutdown",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,  # the service logs there
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    assert process.stdout is not None
    logged: list[str] = []

    async def wait_for_line(text: str) -> None:
        while True:
            line = (await process.stdout.readline()).decode()  # type: ignore[union-attr]
            assert line, f"the process ended before saying {text!r}: {logged}"
            logged.append(line)
            if text in line:
                return

    try:
        await asyncio.wait_for(wait_for_line("serving"), 30)
        async with serve(po_settings, wire) as running, grpc.aio.insecure_channel(running.address) as channel:
            await publish_order(po_service_pb2_grpc.PurchaseOrderServiceStub(channel))
        await asyncio.wait_for(wait_for_line(HANDLING), 30)
        process.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(process.stdout.read(), 30)).decode()
        returncode = await asyncio.wait_for(process.wait(), 5)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert returncode == 1
    assert f"shutdown did not finish within {grace + SHUTDOWN_SLACK_SECONDS:.1f}s" in rest
