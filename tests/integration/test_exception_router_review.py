"""Review of issue 12 (exception-router): defects a hostile review proved against real servers, now fixed.

Each test states what the router should do; each failed before its fix (docs/reliability.md, "exception-router
review")."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json

import grpc
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from libs.runtime.requests import Requests
from libs.runtime.streams import PO, provision_streams
from libs.runtime.subjects import Namespace
from libs.runtime.testing import running_service, unique_namespace
from services.exception_router.wiring import wire as wire_router
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import events_pb2, exception_service_pb2_grpc
from syncgov.exception.v1 import exception_pb2 as ex
from syncgov.exception.v1 import exception_service_pb2 as svc
from tests.integration.helpers import control_plane_settings, eventually
from tests.integration.test_exception_router import (
    OPS,
    PoisonedSink,
    erp_sink_settings,
    fast_retries,
    listed,
    publish_order_event,
    routed,
    router,
    router_settings,
    transitions,
)


async def provision_po(nats_server, namespace: str) -> None:
    admin = await nats.connect(nats_server.url)
    try:
        await provision_streams(admin.jetstream(), Namespace(namespace), [PO])
    finally:
        await admin.drain()


async def exhaust_foreign_consumer(nats_server, namespace: str, durable: str = "foreign-bi") -> None:
    """A consumer that is not syncgov's (a BI loader) fails a message until the server's limit: the advisory."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        stream = f"{namespace.upper()}_PO"
        await js.add_consumer(
            stream,
            ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT, max_deliver=2, ack_wait=30),
        )
        subscription = await js.pull_subscribe_bind(durable, stream)
        for _ in range(2):
            for message in await subscription.fetch(1, timeout=2):
                await message.nak()
        with contextlib.suppress(nats.errors.TimeoutError):
            await subscription.fetch(1, timeout=0.5)
        await subscription.unsubscribe()
    finally:
        await nc.drain()


async def get(stub, exception_id: str) -> ex.Exception:
    return (await stub.GetException(svc.GetExceptionRequest(exception_id=exception_id), metadata=OPS)).exception


async def replay_refusal(stub, request: svc.ReplayExceptionRequest) -> grpc.StatusCode | None:
    """The code ReplayException refused ``request`` with; None when it was accepted."""
    try:
        await stub.ReplayException(request, metadata=OPS)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return None


# -- 1. a replay nobody can deliver is answered OK and stays pending for ever -------------------------------------


async def test_a_replay_to_a_foreign_consumer_is_refused_or_delivered(nats_server, valkey_server, clean_env):
    namespace = unique_namespace()
    async with router(router_settings(nats_server, valkey_server, namespace)) as (_, stub):
        await provision_po(nats_server, namespace)
        await publish_order_event(nats_server, namespace, "PO-FOREIGN")
        await exhaust_foreign_consumer(nats_server, namespace)
        [row] = await eventually(lambda: routed(listed(stub, type=ex.EXCEPTION_TYPE_DELIVERY_EXHAUSTED)))
        replay = svc.ReplayExceptionRequest(exception_id=row.exception_id, reason="loader fixed", replayed_by="j.doe")
        refused = await replay_refusal(stub, replay)
        if refused is not None:  # what it should do: nothing can take the message
            assert refused == grpc.StatusCode.FAILED_PRECONDITION
            return
        # Accepted: then it must be delivered and close. Nothing in syncgov runs "foreign-bi".
        await asyncio.sleep(5)
        got = await get(stub, row.exception_id)
        assert got.state == ex.EXCEPTION_STATE_REPLAYED, (got.state, got.replay)


# -- 2. an advisory read back without its message is "replayed" as an empty event --------------------------------


async def test_an_advisory_without_its_message_is_not_replayed_as_an_empty_event(
    nats_server, valkey_server, clean_env, tmp_path
):
    namespace = unique_namespace()
    policy = fast_retries(tmp_path, 2)
    sink = PoisonedSink()
    sink.broken = False
    sink_settings = erp_sink_settings(nats_server, valkey_server, namespace, policy)
    async with (
        router(router_settings(nats_server, valkey_server, namespace, policy_file=policy)) as (_, stub),
        running_service(sink_settings, sink.wire),
    ):
        # What nats-server publishes when the sink's consumer hit its server-side limit (the process killed on
        # every delivery) for a message that is gone by the time the router reads the advisory (purged, aged out).
        stream, consumer = f"{namespace.upper()}_PO", f"{namespace}-erp-sink-orders"
        advisory = {
            "type": "io.nats.jetstream.advisory.v1.max_deliver",
            "id": "x1",
            "timestamp": "2026-11-27T10:00:00Z",
            "stream": stream,
            "consumer": consumer,
            "stream_seq": 4242,
            "deliveries": 101,
        }
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().publish(
                f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}",
                json.dumps(advisory).encode(),
                stream=f"{namespace.upper()}_ADVISORY",
            )
        finally:
            await nc.drain()
        [row] = await eventually(lambda: routed(listed(stub, type=ex.EXCEPTION_TYPE_DELIVERY_EXHAUSTED)))
        got = await get(stub, row.exception_id)
        assert not got.original_message.data
        assert "no longer in its stream" in got.original_message.last_error
        replay = svc.ReplayExceptionRequest(exception_id=row.exception_id, reason="try", replayed_by="j.doe")
        refused = await replay_refusal(stub, replay)
        if refused is not None:
            assert refused == grpc.StatusCode.FAILED_PRECONDITION
            return
        await asyncio.sleep(2)
        after = await get(stub, row.exception_id)
        # Accepted: whatever happens, the consumer must not be handed a message that does not exist, and the
        # exception must not say the message was replayed.
        assert sink.processed == [], sink.processed
        assert after.state != ex.EXCEPTION_STATE_REPLAYED


# -- 3. the advisories consumer's own hand-off can never be replayed ----------------------------------------------


class Switch:
    def __init__(self) -> None:
        self.broken = True


def router_with_failing_advisories(switch: Switch):
    """The real router whose advisory handler fails while ``switch.broken`` (e.g. the origin stream's leader does
    not answer its direct get), like PoisonedSink for a service's consumer."""

    def wire(rt):
        service = wire_router(rt)
        consumers = []
        for spec in service.consumers:
            if spec.name == "exception-router-advisories":
                inner = spec.handler

                async def handler(stored, inner=inner):
                    if switch.broken:
                        raise RuntimeError("direct get of the original message timed out")
                    await inner(stored)

                spec = dataclasses.replace(spec, handler=handler)
            consumers.append(spec)
        return dataclasses.replace(service, consumers=tuple(consumers))

    return wire


async def test_a_replay_to_the_advisories_consumer_delivers_the_advisory(
    nats_server, valkey_server, clean_env, tmp_path
):
    namespace = unique_namespace()
    policy = fast_retries(tmp_path, 2)
    switch = Switch()
    settings = router_settings(nats_server, valkey_server, namespace, policy_file=policy)
    async with running_service(settings, router_with_failing_advisories(switch)) as (_, channel, _spans):
        stub = exception_service_pb2_grpc.ExceptionRouterServiceStub(channel)
        await provision_po(nats_server, namespace)
        await publish_order_event(nats_server, namespace, "PO-ADV")
        await exhaust_foreign_consumer(nats_server, namespace)
        [row] = await eventually(lambda: routed(listed(stub, type=ex.EXCEPTION_TYPE_DELIVERY_EXHAUSTED)))
        got = await get(stub, row.exception_id)
        assert got.original_message.consumer == f"{namespace}-exception-router-advisories"
        switch.broken = False  # the origin stream answers again
        replay = svc.ReplayExceptionRequest(exception_id=row.exception_id, reason="leader back", replayed_by="j.doe")
        await stub.ReplayException(replay, metadata=OPS)

        async def replayed_and_surfaced():
            got = await get(stub, row.exception_id)
            rows = await listed(stub, type=ex.EXCEPTION_TYPE_DELIVERY_EXHAUSTED)
            return got.state == ex.EXCEPTION_STATE_REPLAYED and len(rows) == 2

        try:
            await eventually(replayed_and_surfaced, within=10)
        except TimeoutError:
            got = await get(stub, row.exception_id)
            names = await transitions(nats_server, namespace, row.exception_id)
            pytest.fail(f"not replayed: state {ex.ExceptionState.Name(got.state)}, reopened {got.reopened}, {names}")


# -- 4. a consumer reset makes the same advisory again: deduplicated away, nothing reopens ------------------------


async def test_a_second_exhaustion_after_a_consumer_reset_reopens(nats_server, valkey_server, clean_env):
    namespace = unique_namespace()
    async with router(router_settings(nats_server, valkey_server, namespace)) as (_, stub):
        await provision_po(nats_server, namespace)
        await publish_order_event(nats_server, namespace, "PO-RESET")
        await exhaust_foreign_consumer(nats_server, namespace)
        [row] = await eventually(lambda: routed(listed(stub, type=ex.EXCEPTION_TYPE_DELIVERY_EXHAUSTED)))
        await stub.ResolveException(
            svc.ResolveExceptionRequest(
                exception_id=row.exception_id,
                resolution="loader redeployed; resetting its consumer",
                kind=ex.RESOLUTION_KIND_FIXED,
                resolved_by="j.doe",
            ),
            metadata=OPS,
        )
        nc = await nats.connect(nats_server.url)
        try:  # the operator resets the consumer (delete and recreate): it reads the stream again, and fails again
            await nc.jetstream().delete_consumer(f"{namespace.upper()}_PO", "foreign-bi")
        finally:
            await nc.drain()
        await exhaust_foreign_consumer(nats_server, namespace)

        async def reopened():
            got = await get(stub, row.exception_id)
            return got if got.reopened == 1 and got.state == ex.EXCEPTION_STATE_OPEN else None

        nc = await nats.connect(nats_server.url)
        try:
            info = await nc.jetstream().stream_info(f"{namespace.upper()}_ADVISORY")
        finally:
            await nc.drain()
        assert info.state.messages == 2  # the server did announce the second exhaustion
        with contextlib.suppress(TimeoutError):
            await eventually(reopened, within=5)
        got = await get(stub, row.exception_id)
        assert (got.state, got.reopened, got.occurrences) == (ex.EXCEPTION_STATE_OPEN, 1, 2), (
            ex.ExceptionState.Name(got.state),
            got.reopened,
            got.occurrences,
        )


# -- 5. RaiseException while the book trails: INTERNAL ------------------------------------------------------------


async def seed_raises(nats_server, namespace: str, count: int) -> None:
    from opentelemetry import trace

    from libs.runtime.events import EventPublisher
    from libs.runtime.exception_reporter import ExceptionReporter
    from libs.runtime.streams import EXCEPTION

    nc = await nats.connect(nats_server.url)
    try:
        await provision_streams(nc.jetstream(), Namespace(namespace), [EXCEPTION])
        publisher = EventPublisher(Requests(nc), Namespace(namespace), trace.get_tracer("test"), 10.0)
        reporter = ExceptionReporter(publisher, "invoice-status")
        for start in range(0, count, 500):
            await asyncio.gather(
                *(
                    reporter.raise_exception(
                        ex.EXCEPTION_TYPE_PRICE_VARIANCE,
                        ex.SEVERITY_MEDIUM,
                        types_pb2.ObjectRef(object_type="invoice", object_key=f"INV-{n}"),
                        "over",
                    )
                    for n in range(start, min(start + 500, count))
                )
            )
    finally:
        await nc.drain()


async def test_raise_exception_while_the_book_trails_answers_unavailable(
    nats_server, valkey_server, clean_env, monkeypatch
):
    from libs.runtime.follower import StreamFollower
    from services.exception_router import intake

    namespace = unique_namespace()
    await seed_raises(nats_server, namespace, 3_000)
    # The book trails the stream by more than the wait allowed: in production a start over a long history (the
    # start serves after catch_up_seconds) or a burst of hand-offs, 10 s of folding; scaled down here (a follower
    # that yields 1 ms per event, a 0.3 s wait) so the test needs thousands of raises, not millions.
    monkeypatch.setattr(intake, "READ_UP_TO_SECONDS", 0.3)
    on_message = StreamFollower._on_message

    async def slow_on_message(self, message):
        await asyncio.sleep(0.001)
        await on_message(self, message)

    monkeypatch.setattr(StreamFollower, "_on_message", slow_on_message)
    settings = router_settings(nats_server, valkey_server, namespace, catch_up_seconds=0.01)
    async with router(settings) as (_, stub):
        request = svc.RaiseExceptionRequest(
            exception=ex.Exception(
                type=ex.EXCEPTION_TYPE_OVER_RECEIPT,
                object=types_pb2.ObjectRef(object_type="purchase_order", object_key="PO-1"),
                detail="12 received, 10 ordered",
            ),
            idempotency_key="wms-gr-1",
        )
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.RaiseException(request, metadata=(("x-syncgov-system", "wms-east"),))
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, (failed.value.code(), failed.value.details())


# -- 6. transition events leave the contract's `state` unset ------------------------------------------------------


async def test_transition_events_carry_the_state_after_the_change(nats_server, valkey_server, clean_env):
    from tests.integration.test_exception_router import over_receipt_ref, reporter_for

    namespace = unique_namespace()
    async with (
        router(router_settings(nats_server, valkey_server, namespace)) as (_, stub),
        reporter_for(nats_server, namespace) as reporter,
    ):
        await reporter.raise_exception(ex.EXCEPTION_TYPE_OVER_RECEIPT, ex.SEVERITY_MEDIUM, over_receipt_ref(), "x")
        [row] = await eventually(lambda: routed(listed(stub)))
        await stub.AcknowledgeException(
            svc.AcknowledgeExceptionRequest(exception_id=row.exception_id, acknowledged_by="j.doe"), metadata=OPS
        )
        nc = await nats.connect(nats_server.url)
        try:
            raw = await nc.jetstream().get_last_msg(
                f"{namespace.upper()}_EXCEPTION", f"{namespace}.exception.{row.exception_id}.acknowledged"
            )
        finally:
            await nc.drain()
        from libs.runtime.events import parse_stored

        stored = parse_stored("x", raw.seq or 0, raw.subject or "", raw.headers, raw.data or b"")
        change = stored.unpack(events_pb2.ExceptionStateChanged)
        assert change.transition == events_pb2.TRANSITION_ACKNOWLEDGED
        assert (change.previous_state, change.state) == (ex.EXCEPTION_STATE_OPEN, ex.EXCEPTION_STATE_ACKNOWLEDGED)


# -- 7. the audit trail names "anonymous" (or whoever raised) as the actor of the router's own decisions ---------


async def test_the_audit_entry_of_an_opening_names_the_router(nats_server, valkey_server, clean_env):
    from control_plane.wiring import wire as wire_control_plane
    from libs.runtime.audit import AuditChain
    from tests.integration.test_exception_router import over_receipt_ref, reporter_for

    namespace = unique_namespace()
    cp_settings = control_plane_settings(router_settings(nats_server, valkey_server, namespace))
    async with (
        running_service(cp_settings, wire_control_plane),
        router(router_settings(nats_server, valkey_server, namespace)) as (_, stub),
        reporter_for(nats_server, namespace) as reporter,
    ):
        await reporter.raise_exception(ex.EXCEPTION_TYPE_OVER_RECEIPT, ex.SEVERITY_MEDIUM, over_receipt_ref(), "x")
        [row] = await eventually(lambda: routed(listed(stub)))
        nc = await nats.connect(nats_server.url)
        try:
            chain = AuditChain(nc.jetstream(), Namespace(namespace))

            async def audited():
                return await chain.for_object("exception", row.exception_id)

            [entry] = await eventually(audited)
        finally:
            await nc.drain()
        assert entry.action == "exception_opened"
        assert entry.actor not in ("anonymous", "receipt-reconciliation"), entry.actor


# -- 8. any system with the `exception` right can withdraw a pending replay ---------------------------------------


async def test_an_outside_raise_cannot_withdraw_a_pending_replay(nats_server, valkey_server, clean_env, tmp_path):
    namespace = unique_namespace()
    policy = fast_retries(tmp_path, 2)
    sink = PoisonedSink()
    sink_settings = erp_sink_settings(nats_server, valkey_server, namespace, policy)
    async with router(router_settings(nats_server, valkey_server, namespace, policy_file=policy)) as (_, stub):
        async with running_service(sink_settings, sink.wire):
            sequence, data = await publish_order_event(nats_server, namespace, "PO-WITHDRAWN")
            [row] = await eventually(lambda: routed(listed(stub, type=ex.EXCEPTION_TYPE_DELIVERY_EXHAUSTED)))
        got = await get(stub, row.exception_id)
        # The sink is being redeployed with the fix; the operator presses replay meanwhile.
        await stub.ReplayException(
            svc.ReplayExceptionRequest(exception_id=row.exception_id, reason="PF mapped", replayed_by="j.doe"),
            metadata=OPS,
        )
        # The ERP (holder of the `exception` right) re-raises what it sees on the dashboard.
        echo = ex.Exception(
            type=ex.EXCEPTION_TYPE_DELIVERY_EXHAUSTED,
            object=got.object,
            detail="our order PO-WITHDRAWN did not reach the sink",
            fingerprint=got.fingerprint,
        )
        with contextlib.suppress(grpc.aio.AioRpcError):  # refusing it is what should happen
            await stub.RaiseException(
                svc.RaiseExceptionRequest(exception=echo), metadata=(("x-syncgov-system", "erp"),)
            )
        sink.broken = False
        async with running_service(sink_settings, sink.wire):
            with contextlib.suppress(TimeoutError):
                await eventually(lambda: _state_is(stub, row.exception_id, ex.EXCEPTION_STATE_REPLAYED), within=5)
        after = await get(stub, row.exception_id)
        names = await transitions(nats_server, namespace, row.exception_id)
        assert [(seq, body) for seq, body, _ in sink.processed] == [(sequence, data)], names
        assert after.state == ex.EXCEPTION_STATE_REPLAYED, names


async def _state_is(stub, exception_id: str, state) -> bool:
    return (await get(stub, exception_id)).state == state


# -- 9. an exception about a large message cannot be read -----------------------------------------------------------


async def test_an_exception_about_a_large_message_can_be_read(nats_server, valkey_server, clean_env, tmp_path):
    from opentelemetry import trace

    from libs.runtime.events import Event, EventPublisher
    from syncgov.po.v1 import events_pb2 as po_events
    from syncgov.po.v1 import po_pb2

    namespace = unique_namespace()
    policy = fast_retries(tmp_path, 2)
    sink = PoisonedSink()
    sink_settings = erp_sink_settings(nats_server, valkey_server, namespace, policy)
    async with (
        router(router_settings(nats_server, valkey_server, namespace, policy_file=policy)) as (_, stub),
        running_service(sink_settings, sink.wire),
    ):
        from syncgov.po.v1 import po_service_pb2

        # An order the edge accepts: 1,000 lines (the bound), descriptions within their 2,000 characters, the
        # whole request just under the 4 MiB gRPC limit.
        limit = 4 * 1024 * 1024
        order = po_pb2.PurchaseOrder(po_id="PO-BIG", version=1, supplier_id="SUP-1")
        for n in range(1, 1001):
            order.lines.add(line_number=n, item_id=f"ITEM-{n}", description="\u20ac" * 1390)
        request_size = po_service_pb2.PublishPurchaseOrderRequest(purchase_order=order).ByteSize()
        order.lines[0].description += "x" * (limit - 64 - request_size)
        assert po_service_pb2.PublishPurchaseOrderRequest(purchase_order=order).ByteSize() < limit
        changed = po_events.PurchaseOrderPublished(purchase_order=order)
        nc = await nats.connect(nats_server.url)
        try:
            publisher = EventPublisher(Requests(nc), Namespace(namespace), trace.get_tracer("test"), 10.0)
            published = await publisher.publish(
                Event("po", "purchase_order", "PO-BIG", 1, "published", changed, "po:PO-BIG:1", "procurement")
            )
        finally:
            await nc.drain()
        assert published.sequence
        [row] = await eventually(lambda: routed(listed(stub, type=ex.EXCEPTION_TYPE_DELIVERY_EXHAUSTED)), within=20)
        try:
            got = await get(stub, row.exception_id)
        except grpc.aio.AioRpcError as failed:
            pytest.fail(f"GetException answered {failed.code()}: {failed.details()}")
        assert got.original_message.stream_sequence == published.sequence


# -- 10. every component may write the router's transitions: forged closures, forged people in the audit trail ----


async def test_a_service_cannot_resolve_an_exception_in_a_persons_name(nats_server, valkey_server, clean_env):
    from opentelemetry import trace

    from libs.runtime.events import Event, EventPublisher
    from tests.integration.test_exception_router import over_receipt_ref, reporter_for

    namespace = unique_namespace()
    async with (
        router(router_settings(nats_server, valkey_server, namespace)) as (_, stub),
        reporter_for(nats_server, namespace) as reporter,
    ):
        await reporter.raise_exception(ex.EXCEPTION_TYPE_OVER_RECEIPT, ex.SEVERITY_HIGH, over_receipt_ref(), "x")
        [row] = await eventually(lambda: routed(listed(stub)))
        nc = await nats.connect(nats_server.url_for("po-publication"))  # a component's own broker identity
        try:
            publisher = EventPublisher(Requests(nc), Namespace(namespace), trace.get_tracer("test"), 2.0)
            forged = events_pb2.ExceptionStateChanged(
                exception_id=row.exception_id,
                transition=events_pb2.TRANSITION_RESOLVED,
                resolution_kind=ex.RESOLUTION_KIND_FALSE_POSITIVE,
                actor="j.doe",
                through="ops-console",
                reason="not a problem",
            )
            with contextlib.suppress(Exception):  # refused by the broker: what should happen
                await publisher.publish(
                    Event(
                        "exception", "exception", row.exception_id, 0, "resolved", forged, "forged-1", "po-publication"
                    )
                )
        finally:
            await nc.drain()
        await asyncio.sleep(1.0)
        got = await get(stub, row.exception_id)
        assert got.state != ex.EXCEPTION_STATE_RESOLVED, (got.resolution.by, got.resolution.through)


# -- 11. an account that already keeps JetStream advisories cannot run the router (nor the control plane) --------


async def test_the_router_starts_where_advisories_are_already_kept(valkey_server, clean_env, tmp_path):
    from nats.js.api import StreamConfig

    from libs.runtime.local_servers import NatsServer

    server = NatsServer(data_dir=tmp_path / "nats", sync_always=False).start()  # an account of its own
    try:
        nc = await nats.connect(server.url)
        try:
            await nc.jetstream().add_stream(StreamConfig(name="OPS_ADVISORIES", subjects=["$JS.EVENT.ADVISORY.>"]))
        finally:
            await nc.drain()
        namespace = unique_namespace()
        async with router(router_settings(server, valkey_server, namespace)) as (_, stub):
            assert await listed(stub) == []
    finally:
        server.stop()


# -- 12. a raise the intake cannot take yet multiplies into nested delivery exceptions -----------------------------


def router_with_intake_behind(switch: Switch):
    """The real router whose intake fails every raise while ``switch.broken``: what intake.read_up_to does while the
    book is more than READ_UP_TO_SECONDS behind (a start that serves after catch_up_seconds over a long history)."""

    def wire(rt):
        service = wire_router(rt)
        consumers = []
        for spec in service.consumers:
            if spec.name == "exception-router-intake":
                inner = spec.handler

                async def handler(stored, inner=inner):
                    if switch.broken:
                        from libs.runtime.consumers import NotYet

                        raise NotYet("the exception stream is read up to 41, not yet 42")
                    await inner(stored)

                spec = dataclasses.replace(spec, handler=handler)
            consumers.append(spec)
        return dataclasses.replace(service, consumers=tuple(consumers))

    return wire


async def test_one_raise_the_intake_cannot_take_yet_is_one_exception(nats_server, valkey_server, clean_env, tmp_path):
    from syncgov.common.v1 import types_pb2 as types
    from tests.integration.test_exception_router import reporter_for

    namespace = unique_namespace()
    policy = fast_retries(tmp_path, 2)
    switch = Switch()
    settings = router_settings(nats_server, valkey_server, namespace, policy_file=policy)
    async with (
        running_service(settings, router_with_intake_behind(switch)) as (_, channel, _spans),
        reporter_for(nats_server, namespace, "invoice-status") as reporter,
    ):
        stub = exception_service_pb2_grpc.ExceptionRouterServiceStub(channel)
        ref = types.ObjectRef(object_type="invoice", object_key="INV-1")
        await reporter.raise_exception(ex.EXCEPTION_TYPE_PRICE_VARIANCE, ex.SEVERITY_MEDIUM, ref, "4% over")
        await asyncio.sleep(3)  # the book is behind for three seconds
        switch.broken = False
        await asyncio.sleep(2)
        rows = await listed(stub, page=types.PageRequest(page_size=500))
        kinds = sorted(ex.ExceptionType.Name(row.type) for row in rows)
        assert len(rows) <= 2, kinds  # the price variance, and at most one exception saying the intake gave up
