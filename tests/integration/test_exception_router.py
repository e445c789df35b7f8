"""exception-router against real nats-server and valkey: intake, folding, routing, lifecycle, audit.

Raises are published as every service publishes them (ExceptionReporter on the exception stream) or through
RaiseException; everything asserted is read back through the router's RPCs or from the streams."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import nats
import pytest
from opentelemetry import trace

from libs.runtime.audit import AuditChain
from libs.runtime.events import EventPublisher
from libs.runtime.exception_reporter import ExceptionReporter
from libs.runtime.requests import Requests
from libs.runtime.settings import DEFAULT_POLICY_FILE
from libs.runtime.subjects import Namespace
from libs.runtime.testing import running_service, unique_namespace
from services.exception_router.settings import Settings
from services.exception_router.wiring import wire
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2 as ex
from syncgov.exception.v1 import exception_service_pb2 as svc
from syncgov.exception.v1 import exception_service_pb2_grpc
from tests.integration.helpers import control_plane_settings, eventually, status_details

OPS = (("x-syncgov-system", "ops-console"),)
ERP = (("x-syncgov-system", "erp"),)
WMS = (("x-syncgov-system", "wms-east"),)


def router_settings(nats_server, valkey_server, namespace: str, **extra) -> Settings:
    return Settings(
        grpc_port=0,
        nats_url=nats_server.url,
        redis_url=valkey_server.url,
        namespace=namespace,
        log_format="console",
        sweep_seconds=0.2,
        **extra,
    )


@contextlib.asynccontextmanager
async def router(settings: Settings):
    async with running_service(settings, wire) as (running, channel, _spans):
        yield running, exception_service_pb2_grpc.ExceptionRouterServiceStub(channel)


@contextlib.asynccontextmanager
async def reporter_for(nats_server, namespace: str, service: str = "receipt-reconciliation"):
    nc = await nats.connect(nats_server.url)
    try:
        publisher = EventPublisher(Requests(nc), Namespace(namespace), trace.get_tracer("test"), 5.0)
        yield ExceptionReporter(publisher, service)
    finally:
        await nc.drain()


def over_receipt_ref(po_id: str = "PO-1") -> types_pb2.ObjectRef:
    return types_pb2.ObjectRef(object_type="purchase_order", object_key=po_id, version=1)


async def listed(stub, **filters) -> list[ex.Exception]:
    response = await stub.ListExceptions(svc.ListExceptionsRequest(**filters), metadata=OPS)
    return list(response.exceptions)


async def transitions(nats_server, namespace: str, exception_id: str) -> list[str]:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        names: list[str] = []
        sequence = 0
        while True:
            try:
                raw = await js.get_msg(
                    f"{namespace.upper()}_EXCEPTION",
                    sequence + 1,
                    subject=f"{namespace}.exception.{exception_id}.*",
                    next=True,
                    direct=True,
                )
            except nats.js.errors.NotFoundError:
                return names
            names.append((raw.subject or "").rsplit(".", 1)[-1])
            sequence = raw.seq or 0
    finally:
        await nc.drain()


async def test_a_thousand_repeats_fold_into_one_exception_with_their_count(nats_server, valkey_server, clean_env):
    namespace = unique_namespace()
    async with router(router_settings(nats_server, valkey_server, namespace)) as (_, stub):
        async with reporter_for(nats_server, namespace) as reporter:
            for start in range(0, 1000, 100):
                await asyncio.gather(
                    *(
                        reporter.raise_exception(
                            ex.EXCEPTION_TYPE_OVER_RECEIPT, ex.SEVERITY_MEDIUM, over_receipt_ref(), f"repeat {n}"
                        )
                        for n in range(start, start + 100)
                    )
                )

        async def folded():
            rows = await listed(stub)
            # Counted as the book folds the raises, routed once the intake opened the exception: both, eventually.
            return rows if rows and rows[0].occurrences == 1000 and rows[0].owner_team else None

        rows = await folded() or await eventually(folded)
        assert len(rows) == 1
        only = rows[0]
        assert only.occurrences == 1000
        assert only.type == ex.EXCEPTION_TYPE_OVER_RECEIPT
        assert only.owner_team == "procurement-ops"  # default policy: over_receipt without a site
        assert only.state == ex.EXCEPTION_STATE_OPEN
        assert only.last_seen_at.ToNanoseconds() >= only.raised_at.ToNanoseconds()
        # A thousand raises, one transition: the exception was opened once.
        assert await transitions(nats_server, namespace, only.exception_id) == ["opened"]


async def test_raise_exception_routes_by_site_and_a_retry_counts_once(nats_server, valkey_server, clean_env):
    namespace = unique_namespace()
    async with router(router_settings(nats_server, valkey_server, namespace)) as (_, stub):
        request = svc.RaiseExceptionRequest(
            exception=ex.Exception(
                type=ex.EXCEPTION_TYPE_OVER_RECEIPT,
                object=over_receipt_ref("PO-7"),
                detail="12 received, 10 ordered",
                site_id="DC-EAST",
                evidence=['{"received": "12", "ordered": "10"}'],
            ),
            idempotency_key="wms-east-gr-55",
        )
        first = (await stub.RaiseException(request, metadata=WMS)).exception
        assert first.owner_team == "warehouse-east"  # the most specific route: type and site
        assert first.raised_by == "wms-east"
        assert first.occurrences == 1
        assert first.escalation.escalate_to == "procurement-ops"
        assert first.escalation.due_at.ToNanoseconds() > first.raised_at.ToNanoseconds()
        again = (await stub.RaiseException(request, metadata=WMS)).exception
        assert again.exception_id == first.exception_id
        assert again.occurrences == 1  # the same key: the same raise

        changed = svc.RaiseExceptionRequest()
        changed.CopyFrom(request)
        changed.exception.detail = "13 received"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RaiseException(changed, metadata=WMS)
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS

        got = (
            await stub.GetException(svc.GetExceptionRequest(exception_id=first.exception_id), metadata=OPS)
        ).exception
        assert list(got.evidence) == ['{"received": "12", "ordered": "10"}']
        # The raise's own id (what a service answers its caller) finds the exception too.
        by_raise = await stub.GetException(svc.GetExceptionRequest(exception_id=first.last_raised_id), metadata=OPS)
        assert by_raise.exception.exception_id == first.exception_id


async def test_bad_raises_are_refused_and_record_nothing(nats_server, valkey_server, clean_env):
    namespace = unique_namespace()
    async with router(router_settings(nats_server, valkey_server, namespace)) as (_, stub):
        bad = [
            ex.Exception(object=over_receipt_ref(), detail="no type"),
            ex.Exception(type=ex.EXCEPTION_TYPE_OVER_RECEIPT, detail="no object"),
            ex.Exception(type=ex.EXCEPTION_TYPE_OVER_RECEIPT, object=over_receipt_ref()),
            ex.Exception(type=ex.EXCEPTION_TYPE_OVER_RECEIPT, object=over_receipt_ref(), detail="x", evidence=["{"]),
            ex.Exception(
                type=ex.EXCEPTION_TYPE_DELIVERY_EXHAUSTED,
                object=over_receipt_ref(),
                detail="replay me",
                original_message=ex.OriginalMessage(subject="sg.po.X.published", consumer="sg-po-x"),
            ),
        ]
        for exception in bad:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.RaiseException(svc.RaiseExceptionRequest(exception=exception), metadata=ERP)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exception
            assert status_details(refused.value), "a field violation names the field"
        assert await listed(stub) == []


async def test_lifecycle_acknowledge_resolve_reopen_each_audited(nats_server, valkey_server, clean_env):
    from control_plane.wiring import wire as wire_control_plane

    namespace = unique_namespace()
    cp_settings = control_plane_settings(router_settings(nats_server, valkey_server, namespace))
    async with (
        running_service(cp_settings, wire_control_plane),
        router(router_settings(nats_server, valkey_server, namespace)) as (_, stub),
        reporter_for(nats_server, namespace, "invoice-status") as reporter,
    ):
        ref = types_pb2.ObjectRef(object_type="invoice", object_key="INV-9")
        await reporter.raise_exception(ex.EXCEPTION_TYPE_PRICE_VARIANCE, ex.SEVERITY_MEDIUM, ref, "4% over")
        rows = await eventually(lambda: routed(listed(stub)))
        exception_id = rows[0].exception_id
        assert rows[0].owner_team == "accounts-payable"

        ack = svc.AcknowledgeExceptionRequest(exception_id=exception_id, acknowledged_by="j.doe")
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.AcknowledgeException(ack, metadata=ERP)  # handling is the operators' right
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        taken = (await stub.AcknowledgeException(ack, metadata=OPS)).exception
        assert taken.state == ex.EXCEPTION_STATE_ACKNOWLEDGED
        assert (taken.acknowledgment.by, taken.acknowledgment.through) == ("j.doe", "ops-console")
        # The same person again: answered as it stands; someone else: refused.
        assert (await stub.AcknowledgeException(ack, metadata=OPS)).exception.state == ex.EXCEPTION_STATE_ACKNOWLEDGED
        other = svc.AcknowledgeExceptionRequest(exception_id=exception_id, acknowledged_by="m.roe")
        with pytest.raises(grpc.aio.AioRpcError) as taken_already:
            await stub.AcknowledgeException(other, metadata=OPS)
        assert taken_already.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        with pytest.raises(grpc.aio.AioRpcError) as no_kind:
            await stub.ResolveException(
                svc.ResolveExceptionRequest(exception_id=exception_id, resolution="ok", resolved_by="j.doe"),
                metadata=OPS,
            )
        assert no_kind.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        resolve = svc.ResolveExceptionRequest(
            exception_id=exception_id,
            resolution="price change agreed with supplier",
            kind=ex.RESOLUTION_KIND_ACCEPTED,
            resolved_by="j.doe",
        )
        closed = (await stub.ResolveException(resolve, metadata=OPS)).exception
        assert closed.state == ex.EXCEPTION_STATE_RESOLVED
        assert closed.resolution.kind == ex.RESOLUTION_KIND_ACCEPTED
        with pytest.raises(grpc.aio.AioRpcError) as closed_already:
            await stub.AcknowledgeException(ack, metadata=OPS)
        assert closed_already.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        # The same problem again after it was closed: the exception reopens, with its count.
        await reporter.raise_exception(ex.EXCEPTION_TYPE_PRICE_VARIANCE, ex.SEVERITY_MEDIUM, ref, "4% over again")

        async def reopened():
            got = await stub.GetException(svc.GetExceptionRequest(exception_id=exception_id), metadata=OPS)
            return got.exception if got.exception.state == ex.EXCEPTION_STATE_OPEN else None

        again = await eventually(reopened)
        assert again.reopened == 1
        assert again.occurrences == 2
        assert not again.HasField("acknowledgment")
        names = await transitions(nats_server, namespace, exception_id)
        assert names == ["opened", "acknowledged", "resolved", "reopened"]

        nc = await nats.connect(nats_server.url)
        try:
            chain = AuditChain(nc.jetstream(), Namespace(namespace))

            async def audited():
                entries = await chain.for_object("exception", exception_id)
                return entries if len(entries) == 4 else None

            entries = await eventually(audited)
        finally:
            await nc.drain()
        assert [entry.action for entry in entries] == [
            "exception_opened",
            "exception_acknowledged",
            "exception_resolved",
            "exception_reopened",
        ]
        assert entries[1].actor == "j.doe via ops-console"
        assert entries[2].reason == "price change agreed with supplier"


def fast_retries(tmp_path: Path, max_deliveries: int) -> Path:
    """The default policy with consumers giving up after ``max_deliveries`` deliveries 50 ms apart."""
    return policy_with(
        tmp_path,
        "default: {max_deliveries: 5, backoff: [500ms, 2s, 10s, 30s]}",
        f"default: {{max_deliveries: {max_deliveries}, backoff: [50ms]}}",
    )


def erp_sink_settings(nats_server, valkey_server, namespace: str, policy: Path):
    """Settings of the PoisonedSink's service (an ERP adapter's consumer) under ``policy``."""
    from libs.runtime.settings import RuntimeSettings

    return RuntimeSettings(
        service_name="erp-sink",
        grpc_port=0,
        nats_url=nats_server.url,
        redis_url=valkey_server.url,
        namespace=namespace,
        log_format="console",
        policy_file=policy,
    )


def policy_with(tmp_path: Path, old: str, new: str, name: str = "policy.yaml") -> Path:
    text = DEFAULT_POLICY_FILE.read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new))
    return path


async def test_escalation_fires_after_the_routes_time_exactly_once(nats_server, valkey_server, clean_env, tmp_path):
    namespace = unique_namespace()
    policy = policy_with(
        tmp_path,
        "      severity: medium\n      escalate_after: 1d\n",
        "      severity: medium\n      escalate_after: 1s\n      escalate_to: procurement-ops\n",
    )
    settings = router_settings(nats_server, valkey_server, namespace, policy_file=policy)
    from control_plane.wiring import wire as wire_control_plane

    cp_settings = control_plane_settings(router_settings(nats_server, valkey_server, namespace))
    # Two replicas sweep the same exceptions: one escalation is written all the same.
    async with (
        running_service(cp_settings, wire_control_plane),
        router(settings) as (_, stub),
        router(settings),
        reporter_for(nats_server, namespace) as reporter,
    ):
        ref = types_pb2.ObjectRef(object_type="invoice", object_key="INV-1")
        await reporter.raise_exception(ex.EXCEPTION_TYPE_PRICE_VARIANCE, ex.SEVERITY_MEDIUM, ref, "over")
        rows = await eventually(lambda: routed(listed(stub)))
        assert rows[0].owner_team == "accounts-payable"
        assert not rows[0].escalation.escalated

        async def escalated():
            rows = await listed(stub, escalated_only=True)
            return rows[0] if rows else None

        moved = await eventually(escalated)
        assert moved.owner_team == "procurement-ops"
        assert moved.escalation.escalated_from == "accounts-payable"
        await asyncio.sleep(1.5)  # several more sweeps on both replicas
        names = await transitions(nats_server, namespace, moved.exception_id)
        assert names.count("escalated") == 1, names
        nc = await nats.connect(nats_server.url)
        try:
            chain = AuditChain(nc.jetstream(), Namespace(namespace))

            async def audited():
                entries = await chain.for_object("exception", moved.exception_id)
                return entries if len(entries) == 2 else None

            entries = await eventually(audited)
        finally:
            await nc.drain()
        assert [(entry.action, entry.actor) for entry in entries] == [
            ("exception_opened", "exception-router"),
            ("exception_escalated", "exception-router"),
        ]
        assert entries[1].reason == "not acknowledged in time"


async def test_a_policy_change_reroutes_open_unacknowledged_exceptions(nats_server, valkey_server, clean_env):
    from control_plane.wiring import wire as wire_control_plane
    from syncgov.controlplane.v1 import controlplane_service_pb2 as cp
    from syncgov.controlplane.v1 import controlplane_service_pb2_grpc

    namespace = unique_namespace()
    cp_settings = control_plane_settings(router_settings(nats_server, valkey_server, namespace))
    async with (
        running_service(cp_settings, wire_control_plane) as (_, cp_channel, _),
        router(router_settings(nats_server, valkey_server, namespace)) as (_, stub),
        reporter_for(nats_server, namespace) as reporter,
    ):
        for po_id in ("PO-1", "PO-2"):
            await reporter.raise_exception(
                ex.EXCEPTION_TYPE_OVER_RECEIPT, ex.SEVERITY_MEDIUM, over_receipt_ref(po_id), "over"
            )
        rows = await eventually(lambda: routed(listed(stub), 2))
        assert {row.owner_team for row in rows} == {"procurement-ops"}
        taken = rows[1].exception_id
        await stub.AcknowledgeException(
            svc.AcknowledgeExceptionRequest(exception_id=taken, acknowledged_by="j.doe"), metadata=OPS
        )
        text = DEFAULT_POLICY_FILE.read_text().replace(
            "    - match: {type: [over_receipt, receipt_unknown_po, superseded_version, over_return]}\n"
            "      team: procurement-ops\n",
            "    - match: {type: [over_receipt, receipt_unknown_po, superseded_version, over_return]}\n"
            "      team: warehouse-east\n",
        )
        control = controlplane_service_pb2_grpc.ControlPlaneServiceStub(cp_channel)
        await control.ApplyPolicy(cp.ApplyPolicyRequest(document_yaml=text, expected_revision=0), metadata=OPS)

        async def moved():
            rows = await listed(stub, owner_team="warehouse-east")
            return rows or None

        rerouted = await eventually(moved)
        assert [row.exception_id for row in rerouted] == [rows[0].exception_id]
        assert rerouted[0].policy_revision == 1
        # The acknowledged one stays with the team that took it.
        kept = await stub.GetException(svc.GetExceptionRequest(exception_id=taken), metadata=OPS)
        assert kept.exception.owner_team == "procurement-ops"
        assert await transitions(nats_server, namespace, rows[0].exception_id) == ["opened", "rerouted"]
        nc = await nats.connect(nats_server.url)
        try:
            chain = AuditChain(nc.jetstream(), Namespace(namespace))

            async def audited():
                entries = await chain.for_object("exception", rows[0].exception_id)
                return entries if len(entries) == 2 else None

            entries = await eventually(audited)
        finally:
            await nc.drain()
        assert [(entry.action, entry.actor, entry.policy_revision) for entry in entries] == [
            ("exception_opened", "exception-router", 0),
            ("exception_rerouted", "exception-router", 1),
        ]


async def routed(rows_coroutine, count: int = 1):
    """The rows once there are ``count`` and each was routed (opened moments after its first raise)."""
    rows = await rows_coroutine
    return rows if len(rows) == count and all(row.owner_team for row in rows) else None


class PoisonedSink:
    """A consumer whose handler fails on every message until a person fixes the cause (``broken = False``)."""

    def __init__(self) -> None:
        self.broken = True
        self.processed: list[tuple[int, bytes, dict[str, str]]] = []

    async def handle(self, stored) -> None:
        if self.broken:
            raise RuntimeError("no mapping for unit of measure 'PF'")
        self.processed.append((stored.sequence, stored.data, stored.headers))

    def wire(self, rt):
        from libs.runtime.app import Service
        from libs.runtime.consumers import ConsumerSpec
        from libs.runtime.streams import AUDIT_INBOX, EXCEPTION, PO

        return Service(
            grpc_services=[],
            consumers=[ConsumerSpec("erp-sink-orders", "po", "po.*.published", self.handle)],
            streams=(PO, EXCEPTION, AUDIT_INBOX),
        )


async def publish_order_event(nats_server, namespace: str, po_id: str) -> tuple[int, bytes]:
    nc = await nats.connect(nats_server.url)
    try:
        publisher = EventPublisher(Requests(nc), Namespace(namespace), trace.get_tracer("test"), 5.0)
        from libs.runtime.events import Event
        from syncgov.po.v1 import events_pb2 as po_events

        published = await publisher.publish(
            Event(
                "po",
                "purchase_order",
                po_id,
                1,
                "published",
                po_events.PurchaseOrderPublished(),
                f"po:{po_id}:1",
                "procurement",
            )
        )
        raw = await nc.jetstream().get_msg(f"{namespace.upper()}_PO", published.sequence, direct=True)
        return published.sequence, raw.data or b""
    finally:
        await nc.drain()


async def test_a_poison_message_lands_once_and_replaying_it_twice_processes_it_once(
    nats_server, valkey_server, clean_env, tmp_path
):

    namespace = unique_namespace()
    policy = fast_retries(tmp_path, 3)
    sink = PoisonedSink()
    sink_settings = erp_sink_settings(nats_server, valkey_server, namespace, policy)
    from control_plane.wiring import wire as wire_control_plane

    cp_settings = control_plane_settings(router_settings(nats_server, valkey_server, namespace))
    async with (
        running_service(cp_settings, wire_control_plane),
        router(router_settings(nats_server, valkey_server, namespace, policy_file=policy)) as (_, stub),
        running_service(sink_settings, sink.wire),
    ):
        sequence, data = await publish_order_event(nats_server, namespace, "PO-POISON")

        async def landed():
            rows = await listed(stub, type=ex.EXCEPTION_TYPE_DELIVERY_EXHAUSTED)
            return rows if rows and rows[0].owner_team else None

        rows = await eventually(landed)
        assert len(rows) == 1
        exception_id = rows[0].exception_id
        got = (await stub.GetException(svc.GetExceptionRequest(exception_id=exception_id), metadata=OPS)).exception
        original = got.original_message
        assert original.data == data  # the original bytes, intact
        assert (original.subject, original.stream_sequence) == (f"{namespace}.po.PO-POISON.published", sequence)
        assert original.consumer == f"{namespace}-erp-sink-orders"
        assert original.deliveries == 3
        assert "no mapping for unit of measure" in original.last_error
        assert got.owner_team == "integration-team"
        assert sink.processed == []

        sink.broken = False  # a person fixed the cause
        replay = svc.ReplayExceptionRequest(
            exception_id=exception_id, reason="PF mapped to pallets", replayed_by="j.doe"
        )
        first, second = await asyncio.gather(
            stub.ReplayException(replay, metadata=OPS), stub.ReplayException(replay, metadata=OPS)
        )
        assert first.stream_sequence == second.stream_sequence != 0  # pressed twice: one replay

        async def replayed():
            got = await stub.GetException(svc.GetExceptionRequest(exception_id=exception_id), metadata=OPS)
            return got.exception if got.exception.state == ex.EXCEPTION_STATE_REPLAYED else None

        closed = await eventually(replayed)
        assert closed.resolution.kind == ex.RESOLUTION_KIND_REPLAYED
        assert closed.replay.processed_at.ToNanoseconds() > 0
        third = await stub.ReplayException(replay, metadata=OPS)  # after it closed: still that one replay
        assert third.stream_sequence == first.stream_sequence
        await asyncio.sleep(1.0)
        assert [(seq, body) for seq, body, _ in sink.processed] == [(sequence, data)]  # exactly once
        assert sink.processed[0][2]["Syncgov-Replay"] == f"{exception_id}:{first.stream_sequence}"
        names = await transitions(nats_server, namespace, exception_id)
        assert names == ["opened", "replay_requested", "replayed"]
        # Each transition is an audit entry: the router's opening, the person's replay, the consumer's processing.
        nc = await nats.connect(nats_server.url)
        try:
            chain = AuditChain(nc.jetstream(), Namespace(namespace))

            async def audited():
                entries = await chain.for_object("exception", exception_id)
                return entries if len(entries) == 3 else None

            entries = await eventually(audited)
        finally:
            await nc.drain()
        assert [(entry.action, entry.actor) for entry in entries] == [
            ("exception_opened", "exception-router"),
            ("exception_replay_requested", "j.doe via ops-console"),
            ("exception_replayed", f"{namespace}-erp-sink-orders"),
        ]


async def test_a_replay_that_fails_again_reopens_the_same_exception(nats_server, valkey_server, clean_env, tmp_path):

    namespace = unique_namespace()
    policy = fast_retries(tmp_path, 2)
    sink = PoisonedSink()
    sink_settings = erp_sink_settings(nats_server, valkey_server, namespace, policy)
    async with (
        router(router_settings(nats_server, valkey_server, namespace, policy_file=policy)) as (_, stub),
        running_service(sink_settings, sink.wire),
    ):
        await publish_order_event(nats_server, namespace, "PO-STILL-BAD")
        rows = await eventually(lambda: routed(listed(stub)))
        exception_id = rows[0].exception_id
        replay = svc.ReplayExceptionRequest(exception_id=exception_id, reason="tried a fix", replayed_by="j.doe")
        await stub.ReplayException(replay, metadata=OPS)  # the cause is not fixed: the replay fails as often

        async def reopened():
            got = await stub.GetException(svc.GetExceptionRequest(exception_id=exception_id), metadata=OPS)
            return got.exception if got.exception.reopened == 1 else None

        again = await eventually(reopened)
        assert again.state == ex.EXCEPTION_STATE_OPEN
        assert again.occurrences == 2
        assert len(await listed(stub)) == 1  # the same exception, not a new one about the replay
        sink.broken = False
        second = await stub.ReplayException(replay, metadata=OPS)  # reopened: a new replay may be pressed
        assert second.stream_sequence > again.replay.stream_sequence if again.HasField("replay") else True
        await eventually(lambda: _state_is(stub, exception_id, ex.EXCEPTION_STATE_REPLAYED))
        assert len(sink.processed) == 1


async def _state_is(stub, exception_id: str, state) -> bool:
    got = await stub.GetException(svc.GetExceptionRequest(exception_id=exception_id), metadata=OPS)
    return got.exception.state == state


async def test_a_max_deliveries_advisory_without_a_hand_off_becomes_an_exception(nats_server, valkey_server, clean_env):
    from nats.js.api import AckPolicy, ConsumerConfig

    namespace = unique_namespace()
    async with router(router_settings(nats_server, valkey_server, namespace)) as (_, stub):
        from libs.runtime.streams import PO, provision_streams

        admin = await nats.connect(nats_server.url)
        await provision_streams(admin.jetstream(), Namespace(namespace), [PO])
        await admin.drain()
        sequence, data = await publish_order_event(nats_server, namespace, "PO-FOREIGN")
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            stream = f"{namespace.upper()}_PO"
            # A consumer that is not syncgov's: it never hands anything off, it just fails.
            await js.add_consumer(
                stream,
                ConsumerConfig(durable_name="foreign-bi", ack_policy=AckPolicy.EXPLICIT, max_deliver=2, ack_wait=30),
            )
            subscription = await js.pull_subscribe_bind("foreign-bi", stream)
            for _ in range(2):
                for message in await subscription.fetch(1, timeout=2):
                    await message.nak()
            with contextlib.suppress(nats.errors.TimeoutError):
                await subscription.fetch(1, timeout=0.5)  # the server finds the limit reached: the advisory
        finally:
            await nc.drain()

        rows = await eventually(lambda: routed(listed(stub, type=ex.EXCEPTION_TYPE_DELIVERY_EXHAUSTED)))
        got = (
            await stub.GetException(svc.GetExceptionRequest(exception_id=rows[0].exception_id), metadata=OPS)
        ).exception
        assert got.original_message.consumer == "foreign-bi"
        assert got.original_message.stream_sequence == sequence
        assert got.original_message.data == data
        assert got.object.object_key == f"{namespace.upper()}_PO:{sequence}"
        assert got.occurrences == 1


async def _snapshot(stub) -> tuple[list[bytes], bytes]:
    """Everything the router answers about its exceptions: the whole listing and the summary (bytes compare)."""
    rows = []
    token = ""
    while True:
        page = await stub.ListExceptions(
            svc.ListExceptionsRequest(page=types_pb2.PageRequest(page_size=500, page_token=token)), metadata=OPS
        )
        rows += [row.SerializeToString(deterministic=True) for row in page.exceptions]
        token = page.page_info.next_page_token
        if not token:
            break
    summary = await stub.SummarizeExceptions(svc.SummarizeExceptionsRequest(), metadata=OPS)
    return rows, summary.SerializeToString(deterministic=True)


async def test_a_restart_between_any_two_operations_answers_the_same(nats_server, valkey_server, clean_env):
    namespace = unique_namespace()
    settings = router_settings(nats_server, valkey_server, namespace)
    async with reporter_for(nats_server, namespace) as reporter, router(settings) as (_, stub):
        ref = types_pb2.ObjectRef(object_type="invoice", object_key="INV-R")

        async def raise_one():
            await reporter.raise_exception(ex.EXCEPTION_TYPE_PRICE_VARIANCE, ex.SEVERITY_MEDIUM, ref, "over")
            await asyncio.sleep(0.3)  # the intake opens it

        async def first_id() -> str:
            return (await eventually(lambda: routed(listed(stub))))[0].exception_id

        async def acknowledge():
            await stub.AcknowledgeException(
                svc.AcknowledgeExceptionRequest(exception_id=await first_id(), acknowledged_by="j.doe"), metadata=OPS
            )

        async def resolve():
            await stub.ResolveException(
                svc.ResolveExceptionRequest(
                    exception_id=await first_id(), resolution="ok", kind=ex.RESOLUTION_KIND_FIXED, resolved_by="j.doe"
                ),
                metadata=OPS,
            )

        async def raise_other():
            await reporter.raise_exception(
                ex.EXCEPTION_TYPE_OVER_RECEIPT, ex.SEVERITY_MEDIUM, over_receipt_ref("PO-R"), "over"
            )
            await asyncio.sleep(0.3)

        for operation in (raise_one, raise_one, acknowledge, resolve, raise_one, raise_other):
            await operation()
            await intake_settled(nats_server, namespace)
            before = await eventually(lambda: _stable_snapshot(stub))
            # A fresh process on the same stream (a restart, or a new replica) answers exactly the same.
            async with router(settings) as (_, restarted):
                assert await _snapshot(restarted) == before, operation.__name__


async def intake_settled(nats_server, namespace: str) -> None:
    """Until the intake consumer has taken every raise (nothing pending, nothing unacknowledged)."""
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()

        async def idle():
            info = await js.consumer_info(f"{namespace.upper()}_EXCEPTION", f"{namespace}-exception-router-intake")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(idle)
    finally:
        await nc.drain()


async def _stable_snapshot(stub):
    """The snapshot once two reads in a row agree (the book has folded everything written so far)."""
    first = await _snapshot(stub)
    await asyncio.sleep(0.1)
    return first if await _snapshot(stub) == first else None


async def test_a_failed_publish_answers_unavailable_and_the_retry_lands_once(nats_server, valkey_server, clean_env):
    """A frozen broker: the acknowledgment is answered UNAVAILABLE (its publish may or may not have been stored when
    the broker thaws); whatever the stream holds, the running router and a fresh one answer the same, and the retry
    is answered OK with one ``acknowledged`` in the stream."""
    import os
    import signal

    namespace = unique_namespace()
    settings = router_settings(nats_server, valkey_server, namespace, publish_timeout_seconds=0.5)
    async with router(settings) as (_, stub), reporter_for(nats_server, namespace) as reporter:
        await reporter.raise_exception(ex.EXCEPTION_TYPE_PRICE_VARIANCE, ex.SEVERITY_MEDIUM, over_receipt_ref(), "x")
        [row] = await eventually(lambda: routed(listed(stub)))
        ack = svc.AcknowledgeExceptionRequest(exception_id=row.exception_id, acknowledged_by="j.doe")
        os.kill(nats_server.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.AcknowledgeException(ack, metadata=OPS, timeout=10)
        finally:
            os.kill(nats_server.process.pid, signal.SIGCONT)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        await asyncio.sleep(0.5)
        after = await _snapshot(stub)
        async with router(settings) as (_, restarted):
            assert await _snapshot(restarted) == after  # the state is the stream's, whatever it kept
        taken = await stub.AcknowledgeException(ack, metadata=OPS)  # the retry lands
        assert taken.exception.state == ex.EXCEPTION_STATE_ACKNOWLEDGED
        assert await transitions(nats_server, namespace, row.exception_id) == ["opened", "acknowledged"]


async def test_after_a_restart_new_raises_open_new_exceptions_and_repeats_count_on(
    nats_server, valkey_server, clean_env
):
    namespace = unique_namespace()
    settings = router_settings(nats_server, valkey_server, namespace)
    first_ref = types_pb2.ObjectRef(object_type="invoice", object_key="INV-A")
    async with reporter_for(nats_server, namespace) as reporter:
        async with router(settings) as (_, stub):
            await reporter.raise_exception(ex.EXCEPTION_TYPE_PRICE_VARIANCE, ex.SEVERITY_MEDIUM, first_ref, "over")
            [first] = await eventually(lambda: routed(listed(stub)))
            await stub.AcknowledgeException(
                svc.AcknowledgeExceptionRequest(exception_id=first.exception_id, acknowledged_by="j.doe"), metadata=OPS
            )
        # A new process on the same stream: the same problem counts on, a new one opens its own exception.
        async with router(settings) as (_, restarted):
            await reporter.raise_exception(ex.EXCEPTION_TYPE_PRICE_VARIANCE, ex.SEVERITY_MEDIUM, first_ref, "again")
            new_ref = types_pb2.ObjectRef(object_type="invoice", object_key="INV-B")
            await reporter.raise_exception(ex.EXCEPTION_TYPE_PRICE_VARIANCE, ex.SEVERITY_MEDIUM, new_ref, "new")
            rows = await eventually(lambda: routed(listed(restarted), 2))
            by_object = {row.object.object_key: row for row in rows}
            assert by_object["INV-A"].exception_id == first.exception_id
            assert by_object["INV-A"].occurrences == 2
            assert by_object["INV-A"].state == ex.EXCEPTION_STATE_ACKNOWLEDGED
            assert by_object["INV-B"].occurrences == 1
            taken = await restarted.AcknowledgeException(
                svc.AcknowledgeExceptionRequest(exception_id=by_object["INV-B"].exception_id, acknowledged_by="m.roe"),
                metadata=OPS,
            )
            assert taken.exception.acknowledgment.by == "m.roe"
            assert await transitions(nats_server, namespace, by_object["INV-B"].exception_id) == [
                "opened",
                "acknowledged",
            ]
            assert await transitions(nats_server, namespace, first.exception_id) == ["opened", "acknowledged"]


async def test_the_raising_component_clears_its_exception_and_no_other_can(nats_server, valkey_server, clean_env):
    namespace = unique_namespace()
    ref = types_pb2.ObjectRef(object_type="purchase_order", object_key="PO-SLA-1", version=2)
    async with (
        router(router_settings(nats_server, valkey_server, namespace)) as (_, stub),
        reporter_for(nats_server, namespace, "control-plane") as tracker,
        reporter_for(nats_server, namespace, "po-publication") as other,
    ):
        raised = await tracker.raise_exception(
            ex.EXCEPTION_TYPE_SLA_BREACH, ex.SEVERITY_HIGH, ref, "not acknowledged", discriminator="ack"
        )
        [opened] = await eventually(lambda: routed(listed(stub, type=ex.EXCEPTION_TYPE_SLA_BREACH)))
        # Another component naming the same exception is ignored: only who raised it may say it is over.
        await other.clear_exception(raised, "not mine to clear", clear_id="forged")
        await tracker.clear_exception(raised, "acknowledged by the ERP as 4500000001", clear_id="ack-v2")
        await tracker.clear_exception(raised, "the same clearing again", clear_id="ack-v2")

        async def resolved():
            got = await stub.GetException(svc.GetExceptionRequest(exception_id=opened.exception_id), metadata=OPS)
            return got.exception if got.exception.state == ex.EXCEPTION_STATE_RESOLVED else None

        closed = await eventually(resolved)
        assert closed.resolution.kind == ex.RESOLUTION_KIND_CLEARED
        assert closed.resolution.by == "control-plane"
        assert closed.resolution.note == "acknowledged by the ERP as 4500000001"
        await intake_settled(nats_server, namespace)
        assert await transitions(nats_server, namespace, opened.exception_id) == ["opened", "resolved"]

        # The condition back after the clearing: the same exception reopens.
        await tracker.raise_exception(
            ex.EXCEPTION_TYPE_SLA_BREACH, ex.SEVERITY_HIGH, ref, "not acknowledged again", discriminator="ack"
        )

        async def reopened():
            got = await stub.GetException(svc.GetExceptionRequest(exception_id=opened.exception_id), metadata=OPS)
            return got.exception if got.exception.state == ex.EXCEPTION_STATE_OPEN else None

        assert (await eventually(reopened)).reopened == 1
