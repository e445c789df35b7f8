"""The walking skeleton: PublishPurchaseOrder through gRPC, the runtime, Valkey and JetStream."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2
from nats.js.api import ConsumerConfig, DeliverPolicy
from opentelemetry.trace import SpanKind

from libs.runtime.app import GrpcService, Service
from libs.runtime.probe import health_status, reflected_services
from libs.runtime.testing import running_service
from services.po_publication.wiring import wire
from syncgov.exception.v1 import exception_pb2
from syncgov.po.v1 import events_pb2, po_pb2, po_service_pb2
from tests.integration.helpers import (
    PROCUREMENT,
    message_count,
    raised_exceptions,
    sample_order,
    status_details,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def publish_request(order: po_pb2.PurchaseOrder, key: str = "") -> po_service_pb2.PublishPurchaseOrderRequest:
    return po_service_pb2.PublishPurchaseOrderRequest(purchase_order=order, idempotency_key=key)


async def test_publish_answers_and_a_consumer_reads_the_event_back(po_service, js):
    running, stub, _ = po_service
    order = sample_order()
    response = await stub.PublishPurchaseOrder(publish_request(order), metadata=PROCUREMENT)
    assert response.po_id == "PO-1001"
    assert response.version == 1
    assert response.idempotency_key == "procurement:purchase_order:PO-1001:v1"

    namespace = running.runtime.namespace
    subscription = await js.pull_subscribe(
        f"{namespace.root}.po.>",
        stream=namespace.stream("po"),
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    [message] = await subscription.fetch(1, timeout=5)
    await message.ack()
    assert message.subject == f"{namespace.root}.po.PO-1001.published"
    assert message.headers["Nats-Msg-Id"] == response.idempotency_key
    assert message.headers["Syncgov-Event-Type"] == "syncgov.po.v1.PurchaseOrderPublished"
    assert message.headers["Content-Type"] == "application/x-protobuf"
    assert message.headers["traceparent"].startswith("00-")
    assert message.metadata.sequence.stream == response.stream_sequence

    from syncgov.common.v1 import envelope_pb2

    envelope = envelope_pb2.EventEnvelope.FromString(message.data)
    assert envelope.event_id == response.event_id
    assert envelope.event_type == "syncgov.po.v1.PurchaseOrderPublished"
    assert (envelope.object_type, envelope.object_key, envelope.object_version) == ("purchase_order", "PO-1001", 1)
    assert envelope.source_system == "procurement"
    assert envelope.workflow_key == "PO-1001"
    assert envelope.idempotency_key == response.idempotency_key
    assert len(envelope.content_sha256) == 64
    assert envelope.occurred_at == order.approved_at
    assert envelope.recorded_at == response.published_at
    published = events_pb2.PurchaseOrderPublished()
    assert envelope.payload.Unpack(published)
    assert published.purchase_order.version == 1
    assert published.purchase_order.status == po_pb2.PURCHASE_ORDER_STATUS_OPEN
    assert [line.quantity.value for line in published.purchase_order.lines] == ["10", "2.5"]
    assert published.purchase_order.lines[0].unit_price.nanos == 500_000_000


async def test_same_request_twice_same_answer_one_event(po_service, js):
    running, stub, _ = po_service
    request = publish_request(sample_order())
    first = await stub.PublishPurchaseOrder(request, metadata=PROCUREMENT)
    call = stub.PublishPurchaseOrder(request, metadata=PROCUREMENT)
    second = await call
    assert second == first
    assert ("syncgov-idempotent-replay", "true") in tuple(await call.initial_metadata())
    assert await message_count(js, running.runtime.namespace, "po") == 1


async def test_concurrent_identical_requests_publish_once(po_service, js):
    running, stub, _ = po_service
    request = publish_request(sample_order("PO-RACE"))
    answers = await asyncio.gather(*(stub.PublishPurchaseOrder(request, metadata=PROCUREMENT) for _ in range(10)))
    assert len({a.SerializeToString() for a in answers}) == 1
    assert await message_count(js, running.runtime.namespace, "po") == 1


async def test_same_po_and_version_with_other_content_is_already_exists_plus_exception(po_service, js):
    running, stub, _ = po_service
    await stub.PublishPurchaseOrder(publish_request(sample_order(quantity="10")), metadata=PROCUREMENT)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.PublishPurchaseOrder(publish_request(sample_order(quantity="11")), metadata=PROCUREMENT)
    assert failure.value.code() == grpc.StatusCode.ALREADY_EXISTS
    [info] = [d for d in status_details(failure.value) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert info.reason == "DUPLICATE_TRANSACTION"
    assert info.metadata["po_id"] == "PO-1001"
    assert await message_count(js, running.runtime.namespace, "po") == 1

    [exception] = await raised_exceptions(js, running.runtime.namespace)
    assert exception.exception_id == info.metadata["exception_id"]
    assert exception.type == exception_pb2.EXCEPTION_TYPE_DUPLICATE_TRANSACTION
    assert exception.object.object_key == "PO-1001"
    assert exception.workflow_key == "PO-1001"
    assert len(exception.evidence) == 2
    assert '"10"' in exception.evidence[0]
    assert '"11"' in exception.evidence[1]


async def test_other_content_under_another_key_is_still_a_duplicate_transaction(po_service, js):
    running, stub, _ = po_service
    await stub.PublishPurchaseOrder(publish_request(sample_order(), key="batch-7/line-1"), metadata=PROCUREMENT)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.PublishPurchaseOrder(
            publish_request(sample_order(price_units=99), key="batch-8/line-1"), metadata=PROCUREMENT
        )
    assert failure.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await message_count(js, running.runtime.namespace, "po") == 1


async def test_reused_key_for_another_order_is_already_exists(po_service, js):
    running, stub, _ = po_service
    await stub.PublishPurchaseOrder(publish_request(sample_order("PO-A"), key="k-1"), metadata=PROCUREMENT)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.PublishPurchaseOrder(publish_request(sample_order("PO-B"), key="k-1"), metadata=PROCUREMENT)
    assert failure.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await message_count(js, running.runtime.namespace, "po") == 1


async def test_retry_after_valkey_lost_its_records_is_answered_from_the_stream(po_service, js, redis):
    running, stub, _ = po_service
    request = publish_request(sample_order())
    first = await stub.PublishPurchaseOrder(request, metadata=PROCUREMENT)
    keys = [key async for key in redis.scan_iter(f"{running.runtime.namespace.root}:*")]
    assert keys, "the response was stored under the service's key prefix"
    await redis.delete(*keys)
    second = await stub.PublishPurchaseOrder(request, metadata=PROCUREMENT)
    assert second == first
    assert await message_count(js, running.runtime.namespace, "po") == 1


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda o: o.ClearField("lines"), "purchase_order.lines"),
        (lambda o: setattr(o.lines[0].quantity, "value", "-3"), "purchase_order.lines[0].quantity"),
        (lambda o: setattr(o.lines[1].quantity, "value", "ten"), "purchase_order.lines[1].quantity"),
        (lambda o: setattr(o, "currency_code", "XYZ"), "purchase_order.currency_code"),
        (lambda o: setattr(o, "supplier_id", ""), "purchase_order.supplier_id"),
        (lambda o: setattr(o.lines[1], "line_number", 1), "purchase_order.lines[1].line_number"),
        (lambda o: o.ClearField("approved_at"), "purchase_order.approved_at"),
        (lambda o: setattr(o, "version", 3), "purchase_order.version"),
        (
            lambda o: setattr(o.lines[0].unit_price, "currency_code", "USD"),
            "purchase_order.lines[0].unit_price.currency_code",
        ),
    ],
)
async def test_bad_input_is_invalid_argument_with_the_field_and_publishes_nothing(po_service, js, mutate, field):
    running, stub, _ = po_service
    order = sample_order()
    mutate(order)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.PublishPurchaseOrder(publish_request(order), metadata=PROCUREMENT)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [bad_request] = [d for d in status_details(failure.value) if isinstance(d, error_details_pb2.BadRequest)]
    assert field in [v.field for v in bad_request.field_violations]
    assert await message_count(js, running.runtime.namespace, "po") == 0
    assert await message_count(js, running.runtime.namespace, "exception") == 0


async def test_every_problem_is_listed_at_once(po_service):
    _, stub, _ = po_service
    order = sample_order()
    order.currency_code = "euro"
    order.lines[0].quantity.value = "0"
    order.lines[1].unit_of_measure = ""
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.PublishPurchaseOrder(publish_request(order), metadata=PROCUREMENT)
    [bad_request] = [d for d in status_details(failure.value) if isinstance(d, error_details_pb2.BadRequest)]
    assert {v.field for v in bad_request.field_violations} == {
        "purchase_order.currency_code",
        "purchase_order.lines[0].quantity",
        "purchase_order.lines[1].unit_of_measure",
    }


async def test_ten_megabyte_message_is_resource_exhausted_and_publishes_nothing(po_service, js):
    running, stub, _ = po_service
    order = sample_order()
    order.lines[0].description = "x" * (10 * 1024 * 1024)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.PublishPurchaseOrder(publish_request(order), metadata=PROCUREMENT)
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (failure.value.details() or "")
    assert await message_count(js, running.runtime.namespace, "po") == 0


async def test_health_serving_and_reflection_lists_the_service(po_service):
    running, _, _ = po_service
    async with grpc.aio.insecure_channel(running.address) as channel:
        for name in ("", "syncgov.po.v1.PurchaseOrderService"):
            assert await health_status(channel, name) == "SERVING"
        assert await health_status(channel, "syncgov.po.v1.NoSuchService") == "NOT_FOUND"
        services = await reflected_services(channel)
    assert "syncgov.po.v1.PurchaseOrderService" in services
    assert "grpc.health.v1.Health" in services


async def test_one_trace_runs_from_the_grpc_call_through_the_event(po_service, js):
    running, stub, spans = po_service
    response = await stub.PublishPurchaseOrder(publish_request(sample_order()), metadata=PROCUREMENT)
    finished = spans.get_finished_spans()
    [server_span] = [s for s in finished if s.kind == SpanKind.SERVER]
    [producer_span] = [s for s in finished if s.kind == SpanKind.PRODUCER]
    assert server_span.name == "/syncgov.po.v1.PurchaseOrderService/PublishPurchaseOrder"
    assert producer_span.context.trace_id == server_span.context.trace_id
    assert producer_span.parent.span_id == server_span.context.span_id
    assert server_span.attributes["syncgov.caller.system"] == "procurement"
    assert server_span.attributes["syncgov.workflow.key"] == "PO-1001"
    stored = await running.runtime.reader.at("po", response.stream_sequence)
    assert stored.headers["traceparent"].split("-")[1] == format(server_span.context.trace_id, "032x")


async def test_get_and_list_versions_read_the_stream(po_service):
    _, stub, _ = po_service
    await stub.PublishPurchaseOrder(publish_request(sample_order()), metadata=PROCUREMENT)
    got = await stub.GetPurchaseOrder(po_service_pb2.GetPurchaseOrderRequest(po_id="PO-1001"), metadata=PROCUREMENT)
    assert got.latest_version == 1
    assert got.purchase_order.supplier_id == "SUP-ACME"
    listed = await stub.ListPurchaseOrderVersions(
        po_service_pb2.ListPurchaseOrderVersionsRequest(po_id="PO-1001"), metadata=PROCUREMENT
    )
    assert [o.version for o in listed.purchase_orders] == [1]
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.GetPurchaseOrder(po_service_pb2.GetPurchaseOrderRequest(po_id="PO-404"), metadata=PROCUREMENT)
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


async def test_configured_tokens_make_unknown_callers_unauthenticated(po_settings, js):
    settings = po_settings.model_copy(update={"caller_tokens": {"tok-procurement": "procurement"}})
    from syncgov.po.v1 import po_service_pb2_grpc

    async with running_service(settings, wire) as (running, channel, _):
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.PublishPurchaseOrder(publish_request(sample_order()), metadata=PROCUREMENT)
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.PublishPurchaseOrder(
                publish_request(sample_order()), metadata=(("authorization", "Bearer wrong"),)
            )
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await message_count(js, running.runtime.namespace, "po") == 0
        response = await stub.PublishPurchaseOrder(
            publish_request(sample_order()), metadata=(("authorization", "Bearer tok-procurement"),)
        )
        assert response.idempotency_key.startswith("procurement:")


async def test_unhandled_error_is_internal_without_leaking_details(po_settings):
    from syncgov.po.v1 import po_service_pb2_grpc

    class Broken(po_service_pb2_grpc.PurchaseOrderServiceServicer):
        async def GetPurchaseOrder(self, request, context):
            raise KeyError("secret-internal-state")

    def broken_wire(rt):
        real = wire(rt)
        entry = real.grpc_services[0]
        broken = GrpcService(entry.descriptor, entry.add_to_server, Broken(), access=entry.access)
        return Service([broken], streams=real.streams)

    async with running_service(po_settings, broken_wire) as (_, channel, _):
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.GetPurchaseOrder(po_service_pb2.GetPurchaseOrderRequest(po_id="x"), metadata=PROCUREMENT)
        assert failure.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in (failure.value.details() or "")


async def test_server_span_continues_the_callers_trace_and_records_the_status(po_service):
    _, stub, spans = po_service
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = ("traceparent", f"00-{caller_trace}-00f067aa0ba902b7-01")
    await stub.PublishPurchaseOrder(publish_request(sample_order()), metadata=(*PROCUREMENT, traceparent))
    bad = sample_order()
    bad.ClearField("lines")
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.PublishPurchaseOrder(publish_request(bad), metadata=PROCUREMENT)
    server_spans = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(server_spans) == 2, [(s.name, dict(s.attributes)) for s in server_spans]
    ok_span, bad_span = sorted(server_spans, key=lambda s: s.start_time)
    assert format(ok_span.context.trace_id, "032x") == caller_trace
    assert ok_span.parent.span_id == 0x00F067AA0BA902B7
    assert ok_span.attributes["rpc.system"] == "grpc"
    assert ok_span.attributes["rpc.service"] == "syncgov.po.v1.PurchaseOrderService"
    assert ok_span.attributes["rpc.grpc.status_code"] == 0
    assert bad_span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert format(bad_span.context.trace_id, "032x") != caller_trace
