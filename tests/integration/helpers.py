"""Builders and decoders shared by the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from google.type import date_pb2, decimal_pb2, money_pb2
from grpc_status import rpc_status
from nats.js import JetStreamContext

from libs.runtime.requests import Requests
from syncgov.po.v1 import po_pb2
from syncgov.supplier.v1 import supplier_pb2

PROCUREMENT = (("x-syncgov-system", "procurement"),)


# One approval moment per test run: an order built twice is the same bytes, so a command sent twice is
# recognised as the same command even when the two sends straddle a second boundary.
APPROVED_AT = timestamp_pb2.Timestamp()
APPROVED_AT.FromDatetime(datetime.now(UTC).replace(microsecond=0))


def sample_order(po_id: str = "PO-1001", *, quantity: str = "10", price_units: int = 12) -> po_pb2.PurchaseOrder:
    approved = timestamp_pb2.Timestamp()
    approved.CopyFrom(APPROVED_AT)
    return po_pb2.PurchaseOrder(
        po_id=po_id,
        supplier_id="SUP-ACME",
        currency_code="EUR",
        business_unit="BU-NORTH",
        ship_to_site="DC-HAMBURG",
        payment_terms="NET30",
        approved_by="j.doe",
        approved_at=approved,
        lines=[
            po_pb2.PurchaseOrderLine(
                line_number=1,
                item_id="ITEM-42",
                description="Pallet wrap 500mm",
                quantity=decimal_pb2.Decimal(value=quantity),
                unit_of_measure="EA",
                unit_price=money_pb2.Money(currency_code="EUR", units=price_units, nanos=500_000_000),
                requested_delivery_date=date_pb2.Date(year=2027, month=1, day=15),
            ),
            po_pb2.PurchaseOrderLine(
                line_number=2,
                item_id="ITEM-7",
                description="Strapping band",
                quantity=decimal_pb2.Decimal(value="2.5"),
                unit_of_measure="KGM",
                unit_price=money_pb2.Money(currency_code="EUR", units=3),
            ),
        ],
    )


def status_details(error: grpc.aio.AioRpcError):
    """Decode the google.rpc.Status details a call failed with."""
    # AioRpcError carries the code, details and trailing metadata from_call reads; the stub types it for grpc.Call.
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the error carries no google.rpc.Status details"
    decoded = []
    for detail in status.details:
        for kind in (
            error_details_pb2.BadRequest,
            error_details_pb2.ErrorInfo,
            error_details_pb2.PreconditionFailure,
            error_details_pb2.RetryInfo,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                decoded.append(message)
    return decoded


async def seed_supplier(
    nats_url: str, namespace: str, supplier_id: str, status: supplier_pb2.SupplierStatus | None = None
) -> None:
    """Publish the supplier event supplier-normalization would have published, so po-publication knows it."""
    import nats
    from opentelemetry.trace import NoOpTracer

    from libs.runtime.events import Event, EventPublisher
    from libs.runtime.streams import SUPPLIER, provision_streams
    from libs.runtime.subjects import Namespace
    from syncgov.supplier.v1 import events_pb2 as supplier_events

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        ns = Namespace(namespace)
        await provision_streams(js, ns, (SUPPLIER,))
        supplier = supplier_pb2.Supplier(
            supplier_id=supplier_id,
            legal_name=f"{supplier_id} GmbH",
            version=1,
            status=status or supplier_pb2.SUPPLIER_STATUS_ACTIVE,
        )
        await EventPublisher(Requests(nc), ns, NoOpTracer(), 5).publish(
            Event(
                domain="supplier",
                object_type="supplier",
                object_key=supplier_id,
                object_version=1,
                name="upserted",
                payload=supplier_events.SupplierUpserted(supplier=supplier),
                idempotency_key=f"seed:{supplier_id}:{status}",
                source_system="procurement",
            )
        )
    finally:
        await nc.drain()


def requests_of(js: JetStreamContext) -> Requests:
    """What EventReader and EventPublisher take, on the connection of a test's JetStream context (nats-py keeps it
    there as ``_nc``; the services build theirs from their connection, libs/runtime/app.py)."""
    return Requests(js._nc)


async def message_count(js, namespace, domain: str) -> int:
    """How many messages a domain's stream holds."""
    return (await js.stream_info(namespace.stream(domain))).state.messages


async def stored_payloads(js, namespace, domain: str, message_type) -> list:
    """Every event payload of a domain's stream, oldest first, read the way services read them."""
    from libs.runtime.events import EventReader

    return [event.unpack(message_type) async for event in EventReader(requests_of(js), namespace).scan(domain)]


async def raised_exceptions(js, namespace) -> list:
    """Every exception raised in a namespace, oldest first."""
    from libs.runtime.events import EventReader
    from syncgov.exception.v1 import events_pb2 as exception_events

    return [
        event.unpack(exception_events.ExceptionRaised).exception
        async for event in EventReader(requests_of(js), namespace).scan("exception")
        if event.subject.endswith(".raised")  # not the router's transitions, not clearings
    ]


# --- receipts -------------------------------------------------------------------------------------------------

ERP = (("x-syncgov-system", "erp"),)
WMS_EAST = (("x-syncgov-system", "wms-east"),)


def settings_like(settings_class, settings, **extra):
    """``settings_class``'s settings in the namespace (and on the servers) of another service's ``settings``."""
    return settings_class(
        grpc_port=0,
        nats_url=settings.nats_url,
        redis_url=settings.redis_url,
        namespace=settings.namespace,
        log_format="console",
        **extra,
    )


def receipt_settings(settings, **extra):
    """receipt-reconciliation's settings in the namespace (and on the servers) of another service's ``settings``."""
    from services.receipt_reconciliation.settings import Settings as ReceiptSettings

    return settings_like(ReceiptSettings, settings, **extra)


def control_plane_settings(settings):
    """control-plane's settings in the namespace (and on the servers) of another service's ``settings``."""
    from control_plane.settings import Settings as ControlPlaneSettings

    return settings_like(ControlPlaneSettings, settings)


def goods_receipt(
    receipt_id: str,
    po_id: str = "PO-1001",
    *lines: tuple,
    version: int = 1,
    site: str = "DC-HAMBURG",
    kind: int = 1,
    reverses: str = "",
    key: str = "",
    posted_at: datetime | None = None,
):
    """A PostGoodsReceiptRequest; each line is (po line, quantity[, unit]), EA unless a unit is given."""
    from syncgov.receipt.v1 import receipt_pb2, receipt_service_pb2

    document = receipt_pb2.GoodsReceipt(
        receipt_id=receipt_id,
        po_id=po_id,
        po_version=version,
        site_id=site,
        kind=kind,  # type: ignore[arg-type]
        reverses_receipt_id=reverses,
    )
    if posted_at is not None:
        document.posted_at.FromDatetime(posted_at)
    for number, (po_line, quantity, *unit) in enumerate(lines or ((1, "4"),), start=1):
        document.lines.add(
            line_number=number,
            po_line_number=po_line,
            quantity=decimal_pb2.Decimal(value=quantity),
            unit_of_measure=unit[0] if unit else "EA",
        )
    return receipt_service_pb2.PostGoodsReceiptRequest(receipt=document, idempotency_key=key)


async def publish_order(po_stub, po_id: str = "PO-1001", quantity: str = "10") -> None:
    from syncgov.po.v1 import po_service_pb2

    await po_stub.PublishPurchaseOrder(
        po_service_pb2.PublishPurchaseOrderRequest(purchase_order=sample_order(po_id, quantity=quantity)),
        metadata=PROCUREMENT,
    )


@contextlib.asynccontextmanager
async def order_received(po_settings, *lines: tuple) -> AsyncIterator[None]:
    """po-publication and receipt-reconciliation running in ``po_settings``' namespace, PO-1001 published and
    received by GR-1 (``lines`` as :func:`goods_receipt` takes them; 4 EA of line 1 by default)."""
    from libs.runtime.testing import running_service
    from services.po_publication.wiring import wire as wire_po
    from services.receipt_reconciliation.wiring import wire as wire_receipts
    from syncgov.po.v1 import po_service_pb2_grpc
    from syncgov.receipt.v1 import receipt_service_pb2_grpc

    async with (
        running_service(po_settings, wire_po) as (_, po_channel, _),
        running_service(receipt_settings(po_settings), wire_receipts) as (_, receipt_channel, _),
    ):
        await publish_order(po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel))
        receipts = receipt_service_pb2_grpc.ReceiptReconciliationServiceStub(receipt_channel)
        await receipts.PostGoodsReceipt(goods_receipt("GR-1", "PO-1001", *lines), metadata=ERP)
        yield


async def published_changed_and_acknowledged(po_stub, po_id: str = "PO-1001", erp_number: str = "4500012345") -> None:
    """``po_id`` published (v1), changed (v2, line 1 to 12) and v2 acknowledged by the ERP."""
    from syncgov.po.v1 import po_service_pb2

    await publish_order(po_stub, po_id)
    changed = sample_order(po_id)
    changed.version = 2
    changed.lines[0].quantity.value = "12"
    await po_stub.ChangePurchaseOrder(
        po_service_pb2.ChangePurchaseOrderRequest(purchase_order=changed), metadata=PROCUREMENT
    )
    await po_stub.AcknowledgePurchaseOrder(
        po_service_pb2.AcknowledgePurchaseOrderRequest(po_id=po_id, version=2, erp_document_number=erp_number),
        metadata=ERP,
    )


async def code_of(call) -> grpc.StatusCode:
    """The status a call ended with (OK included)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def eventually(check, within: float = 10.0):
    """``await check()`` until it returns something true (returned), for at most ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.05)


async def cli(*args: str, stdin: str | None = None):
    """Run the ``syncgov`` CLI in a worker thread (it runs its own event loop, the services keep this one)."""
    from typer.testing import CliRunner

    from libs.cli.main import app

    return await asyncio.to_thread(CliRunner().invoke, app, list(args), input=stdin, env={"COLUMNS": "400"})


def table_row(output: str, first_cell: str) -> list[str]:
    """The cells of the printed table row whose first cell is ``first_cell``."""
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│┃").split("│")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{output}")


def wait_for_line(process, needle: str, timeout: float) -> list[str]:
    """Read ``process``'s stdout until a line holds ``needle``; the lines read (AssertionError with them if not)."""
    import os
    import time

    seen: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line:
            seen.append(line)
            if needle in line:
                return seen
        elif process.poll() is not None:
            break
        else:
            time.sleep(0.05)
    raise AssertionError(f"{needle!r} not printed; output so far:\n{''.join(seen)}")


@contextlib.contextmanager
def syncgov_up(data_dir, grpc_base: int, metrics_base: int, **env: str):
    """``syncgov up`` as a user runs it, on the given port bases and fresh server ports, in an environment without the
    caller's SYNCGOV_/OTEL_ settings (plus ``env``): (the process, its output up to "syncgov is up"). Stopped with
    SIGINT, as a user stops it, so it stops what it started."""
    import os
    import signal
    import subprocess
    import sys

    from libs.runtime.local_servers import free_port

    args = [
        sys.executable,
        "-m",
        "libs.cli",
        "up",
        "--data-dir",
        str(data_dir),
        "--grpc-port-base",
        str(grpc_base),
        "--metrics-port-base",
        str(metrics_base),
        "--nats-port",
        str(free_port()),
        "--redis-port",
        str(free_port()),
    ]
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCGOV_", "OTEL_"))}
    environment["COLUMNS"] = "200"
    environment.update(env)
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    try:
        yield process, wait_for_line(process, "syncgov is up", timeout=60)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def frozen(server: Any) -> Iterator[None]:
    """A session server stopped (SIGSTOP) for the block, always continued after it: a broker or Valkey that stops
    answering without closing its connections."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
