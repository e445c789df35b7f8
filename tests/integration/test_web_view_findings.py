"""The control plane's local web view where a hostile review probed it, against real NATS and Valkey."""

from __future__ import annotations

import asyncio
import http.client
import json

import pytest

from control_plane.settings import Settings as ControlPlaneSettings
from control_plane.wiring import wire as wire_control_plane
from libs.runtime.local_servers import free_port
from libs.runtime.testing import running_service
from services.po_publication.wiring import wire as wire_po
from syncgov.po.v1 import po_service_pb2_grpc
from tests.integration.helpers import eventually, publish_order, settings_like

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def get(host: str, port: int, path: str, host_header: str | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        headers = {"Host": host_header} if host_header else {}
        connection.request("GET", path, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


@pytest.fixture
async def web(po_settings):
    port = free_port()
    cp_settings = settings_like(ControlPlaneSettings, po_settings, web_port=port)
    async with running_service(po_settings, wire_po) as (_, po_channel, _):
        orders = po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel)
        async with running_service(cp_settings, wire_control_plane):
            host = cp_settings.grpc_host

            async def up():
                try:
                    status, _ = await asyncio.to_thread(get, host, port, "/api/summary")
                    return status == 200
                except OSError:
                    return False

            await eventually(up)
            yield host, port, orders


async def test_a_workflow_key_longer_than_any_object_key_is_a_400_not_a_500(web):
    """A key beyond the edge's bounds is a 400 with the reason, not a 500: the view applies the same bounds."""
    host, port, _ = web
    status, body = await asyncio.to_thread(get, host, port, "/api/workflows/" + "P" * 257)
    assert status in (400, 404), (status, body[:200])


async def test_a_po_whose_key_holds_a_slash_can_be_opened(web):
    """A key holding '/' (a valid id) opens."""
    host, port, orders = web
    await publish_order(orders, "PO/2026/7")

    async def listed():
        status, body = await asyncio.to_thread(get, host, port, "/api/workflows?q=PO%2F2026&limit=5")
        return status == 200 and [row["key"] for row in json.loads(body)["workflows"]] == ["PO/2026/7"]

    await eventually(listed)
    status, body = await asyncio.to_thread(get, host, port, "/api/workflows/PO%2F2026%2F7")
    assert status == 200, (status, body[:200])


async def test_the_unauthenticated_view_refuses_a_foreign_host_header(web):
    """With no authentication, a request naming another host (DNS rebinding) is refused (421)."""
    host, port, _ = web
    status, _ = await asyncio.to_thread(get, host, port, "/api/summary", f"attacker.example:{port}")
    assert status in (400, 403, 421), status
