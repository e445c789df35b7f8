"""Hostile input against the running services: refused at the edge as INVALID_ARGUMENT naming the field, with
nothing written and the service still SERVING (the field bounds of docs/reliability.md)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2

from libs.runtime.probe import health_status
from syncgov.common.v1 import types_pb2
from syncgov.po.v1 import po_pb2, po_service_pb2
from syncgov.supplier.v1 import supplier_pb2, supplier_service_pb2
from tests.integration.helpers import PROCUREMENT, message_count, sample_order, status_details

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
ERP = (("x-syncgov-system", "erp"),)


def violations(failure: pytest.ExceptionInfo[grpc.aio.AioRpcError]) -> list[str]:
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failure.value.details()
    [bad_request] = [d for d in status_details(failure.value) if isinstance(d, error_details_pb2.BadRequest)]
    return [v.field for v in bad_request.field_violations]


async def assert_serving(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        assert await health_status(channel) == "SERVING"


def publish(order: po_pb2.PurchaseOrder, key: str = "") -> po_service_pb2.PublishPurchaseOrderRequest:
    return po_service_pb2.PublishPurchaseOrderRequest(purchase_order=order, idempotency_key=key)


def _set(path: str, value: object) -> Callable[[po_pb2.PurchaseOrder], None]:
    def mutate(order: po_pb2.PurchaseOrder) -> None:
        *parents, name = path.split(".")
        target: Any = order
        for part in parents:
            target = target.lines[int(part[6:-1])] if part.startswith("lines[") else getattr(target, part)
        setattr(target, name, value)

    return mutate


BAD_ORDERS = [
    ("lines[0].quantity.value", "1e400", "purchase_order.lines[0].quantity"),
    ("lines[0].quantity.value", "1e-400", "purchase_order.lines[0].quantity"),
    ("lines[0].quantity.value", "1e999999999999999999", "purchase_order.lines[0].quantity"),
    ("lines[1].quantity.value", "\u0661\u0660", "purchase_order.lines[1].quantity"),  # Arabic-Indic 10
    ("lines[1].quantity.value", "1_000", "purchase_order.lines[1].quantity"),
    ("lines[1].quantity.value", "7" * 100_000, "purchase_order.lines[1].quantity"),
    ("lines[1].quantity.value", "10000000000000", "purchase_order.lines[1].quantity"),
    ("approved_at.nanos", -1, "purchase_order.approved_at"),
    ("approved_at.nanos", 2_000_000_000, "purchase_order.approved_at"),
    ("approved_at.seconds", 2**40, "purchase_order.approved_at"),
    ("approved_at.seconds", -(2**40), "purchase_order.approved_at"),
    ("status", 99, "purchase_order.status"),
    ("criticality", 99, "purchase_order.criticality"),
    ("payment_terms", "x" * 1_000_000, "purchase_order.payment_terms"),
    ("approved_by", "j.doe\r\nforged: yes", "purchase_order.approved_by"),
    ("lines[0].description", "wrap\x1b[2J\x1b[31m", "purchase_order.lines[0].description"),
    ("po_id", "PO-\x00-1", "purchase_order.po_id"),
    ("po_id", "\x1b[31mPO-1", "purchase_order.po_id"),
    ("po_id", "PO-\u202e1001", "purchase_order.po_id"),
    ("po_id", "\u200b", "purchase_order.po_id"),
    ("lines[0].unit_price.units", 10**15, "purchase_order.lines[0].unit_price"),
]


@pytest.mark.parametrize(("path", "value", "field"), BAD_ORDERS, ids=[f"{p}={str(v)[:24]!r}" for p, v, _ in BAD_ORDERS])
async def test_an_order_out_of_bounds_is_refused_with_its_field_and_nothing_is_published(
    po_service, js, path, value, field
):
    running, stub, _ = po_service
    order = sample_order()
    _set(path, value)(order)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.PublishPurchaseOrder(publish(order), metadata=PROCUREMENT)
    assert violations(failure) == [field]
    assert await message_count(js, running.runtime.namespace, "po") == 0
    assert await message_count(js, running.runtime.namespace, "exception") == 0
    await assert_serving(running.address)


async def test_a_change_order_numbered_beyond_2_31_is_refused_not_held(po_service, js):
    running, stub, _ = po_service
    await stub.PublishPurchaseOrder(publish(sample_order()), metadata=PROCUREMENT)
    order = sample_order()
    order.version = 2**63 - 1
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.ChangePurchaseOrder(
            po_service_pb2.ChangePurchaseOrderRequest(purchase_order=order), metadata=PROCUREMENT
        )
    assert violations(failure) == ["purchase_order.version"]
    assert await message_count(js, running.runtime.namespace, "po") == 1  # the publication only
    await assert_serving(running.address)


async def test_an_oversize_idempotency_key_is_invalid_argument(po_service, js):
    running, stub, _ = po_service
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.PublishPurchaseOrder(publish(sample_order(), key="k" * 70_000), metadata=PROCUREMENT)
    assert violations(failure) == ["idempotency_key"]
    cancel = po_service_pb2.CancelPurchaseOrderRequest(po_id="PO-1001", version=2, idempotency_key="k" * 513)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.CancelPurchaseOrder(cancel, metadata=PROCUREMENT)
    assert violations(failure) == ["idempotency_key"]
    assert await message_count(js, running.runtime.namespace, "po") == 0
    await assert_serving(running.address)


def id_calls(po_id: str) -> list[tuple[str, object, tuple[tuple[str, str], ...]]]:
    return [
        ("GetPurchaseOrder", po_service_pb2.GetPurchaseOrderRequest(po_id=po_id), PROCUREMENT),
        ("CancelPurchaseOrder", po_service_pb2.CancelPurchaseOrderRequest(po_id=po_id, version=2), PROCUREMENT),
        (
            "AcknowledgePurchaseOrder",
            po_service_pb2.AcknowledgePurchaseOrderRequest(po_id=po_id, version=1, erp_document_number="4500001"),
            ERP,
        ),
        (
            "RejectPurchaseOrder",
            po_service_pb2.RejectPurchaseOrderRequest(po_id=po_id, version=1, reason="unknown item"),
            ERP,
        ),
        ("ListPurchaseOrderVersions", po_service_pb2.ListPurchaseOrderVersionsRequest(po_id=po_id), PROCUREMENT),
    ]


BAD_IDS = {"300 characters": "P" * 300, "NUL": "PO-\x00-1", "RLO": "PO-\u202e1001", "CRLF": "PO-1\r\nPO-2"}
ID_CALLS = [(kind, *call) for kind, bad in BAD_IDS.items() for call in id_calls(bad)]


@pytest.mark.parametrize(
    ("kind", "rpc", "request_message", "caller"), ID_CALLS, ids=[f"{c[1]}-{c[0]}" for c in ID_CALLS]
)
async def test_a_bad_id_is_invalid_argument_on_every_rpc(po_service, js, kind, rpc, request_message, caller):
    running, stub, _ = po_service
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await getattr(stub, rpc)(request_message, metadata=caller)
    assert violations(failure) == ["po_id"]
    assert await message_count(js, running.runtime.namespace, "po") == 0
    assert await message_count(js, running.runtime.namespace, "exception") == 0
    await assert_serving(running.address)


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(2**40, 0), (-(2**40), 0), (1_767_225_600, -1), (1_767_225_600, 2_000_000_000)]
)
async def test_an_acknowledgment_out_of_time_is_invalid_argument(po_service, js, seconds, nanos):
    running, stub, _ = po_service
    await stub.PublishPurchaseOrder(publish(sample_order()), metadata=PROCUREMENT)
    acknowledged_at = timestamp_pb2.Timestamp()
    acknowledged_at.seconds, acknowledged_at.nanos = seconds, nanos
    request = po_service_pb2.AcknowledgePurchaseOrderRequest(
        po_id="PO-1001", version=1, erp_document_number="4500001", acknowledged_at=acknowledged_at
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.AcknowledgePurchaseOrder(request, metadata=ERP)
    assert violations(failure) == ["acknowledged_at"]
    assert await message_count(js, running.runtime.namespace, "po") == 1  # the publication only
    await assert_serving(running.address)


# Page tokens and 300-character ids were answered INTERNAL once; the listing's token decoder and the servicers'
# id checks refuse them now as well as the bounds, and these cases keep it that way.
@pytest.mark.parametrize(
    "token",
    [
        base64.urlsafe_b64encode("1:po.unacknowledged:\u0661\u0662".encode()).rstrip(b"=").decode(),
        "\u0661\u0662",
        "tok\x00en",
        "t" * 600,
    ],
)
async def test_a_page_token_with_foreign_digits_or_controls_is_invalid_argument(po_service, token):
    running, stub, _ = po_service
    request = po_service_pb2.ListUnacknowledgedPurchaseOrdersRequest(page=types_pb2.PageRequest(page_token=token))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.ListUnacknowledgedPurchaseOrders(request, metadata=PROCUREMENT)
    assert violations(failure) == ["page.page_token"]
    await assert_serving(running.address)


async def test_undecodable_bodies_are_invalid_argument_and_one_rate_limited_warning(po_service, js, caplog):
    running, _, _ = po_service
    caplog.set_level(logging.WARNING)
    method = "/syncgov.po.v1.PurchaseOrderService/PublishPurchaseOrder"
    async with grpc.aio.insecure_channel(running.address) as channel:
        raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)  # bytes in and out
        for body in [b"\xff\xff\xff\xff", b"\x12\x02\xc3\x28", b"\x0a\x05abc"] * 3:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await raw(body, metadata=PROCUREMENT)
            assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "could not be decoded" in (failure.value.details() or "")
    warnings = [r for r in caplog.records if "did not decode" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert warnings[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert await message_count(js, running.runtime.namespace, "po") == 0
    await assert_serving(running.address)


# --- supplier-normalization -------------------------------------------------------------------------


def supplier_record(**fields: object) -> supplier_pb2.SupplierRecord:
    record = supplier_pb2.SupplierRecord(
        source_system="procurement",
        local_id="P-1",
        legal_name="ACME Industrial Supply GmbH",
        addresses=[types_pb2.PostalAddress(lines=["Hafenstrasse 1"], locality="Hamburg", country_code="DE")],
    )
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def many_addresses() -> supplier_pb2.SupplierRecord:
    record = supplier_record()
    record.addresses.extend(types_pb2.PostalAddress(lines=[f"Street {n}"]) for n in range(10_000))
    return record


BAD_SUPPLIERS = [
    ("10,000 addresses", many_addresses(), "record.addresses"),
    ("1 MB name", supplier_record(legal_name="N" * 1_000_000), "record.legal_name"),
    ("RLO in local id", supplier_record(local_id="P-\u202e1"), "record.local_id"),
    ("ZWSP local id", supplier_record(local_id="\u200b"), "record.local_id"),
    ("CRLF in local id", supplier_record(local_id="P-1\r\nP-2"), "record.local_id"),
    ("version 2^63-1", supplier_record(source_version=2**63 - 1), "record.source_version"),
]


@pytest.mark.parametrize(("record", "field"), [b[1:] for b in BAD_SUPPLIERS], ids=[b[0] for b in BAD_SUPPLIERS])
async def test_a_supplier_out_of_bounds_is_refused_with_its_field_and_nothing_is_published(
    suppliers, js, record, field
):
    running, stub = suppliers
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.SubmitSupplierRecord(
            supplier_service_pb2.SubmitSupplierRecordRequest(record=record), metadata=PROCUREMENT
        )
    assert violations(failure) == [field]
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.FindDuplicateSuppliers(
            supplier_service_pb2.FindDuplicateSuppliersRequest(record=record), metadata=PROCUREMENT
        )
    assert violations(failure) == [field]
    assert await message_count(js, running.runtime.namespace, "supplier") == 0
    await assert_serving(running.address)


async def test_supplier_rpcs_refuse_bad_ids_enums_and_counts(suppliers, js):
    running, stub = suppliers
    calls = [
        (stub.GetSupplier, supplier_service_pb2.GetSupplierRequest(supplier_id="S" * 300), "supplier_id"),
        (stub.ResolveSupplier, supplier_service_pb2.ResolveSupplierRequest(system="erp", local_id="\x00"), "local_id"),
        (
            stub.ChangeSupplierStatus,
            supplier_service_pb2.ChangeSupplierStatusRequest(supplier_id="S-1", status=42, reason="x"),  # type: ignore[arg-type]
            "status",
        ),
        (
            stub.MergeSuppliers,
            supplier_service_pb2.MergeSuppliersRequest(
                surviving_supplier_id="S-1", merged_supplier_id="S-2", reason="r" * 5_000
            ),
            "reason",
        ),
        (stub.ListDuplicateCandidates, supplier_service_pb2.ListDuplicateCandidatesRequest(page_size=-1), "page_size"),
    ]
    for call, request, field in calls:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call(request, metadata=PROCUREMENT)
        assert violations(failure) == [field], call
    assert await message_count(js, running.runtime.namespace, "supplier") == 0
    await assert_serving(running.address)
