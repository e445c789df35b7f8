"""The JetStream layer against a real nats-server: provisioning, dedup, write guard, redelivery, hand-off."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from libs.runtime import consumers
from libs.runtime.consumers import ConsumerRunner, ConsumerSpec, Poison
from libs.runtime.events import Event, EventPublisher, EventReader, WrongLastSequence
from libs.runtime.exception_reporter import ExceptionReporter
from libs.runtime.local_servers import NatsServer
from libs.runtime.requests import Requests
from libs.runtime.streams import ALL_STREAMS, EXCEPTION, PO, provision_streams
from libs.runtime.subjects import Namespace
from libs.runtime.testing import unique_namespace
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2
from tests.integration.helpers import message_count, raised_exceptions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


@pytest.fixture
async def js_env(nats_server):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    namespace = Namespace(unique_namespace())
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("test")
    await provision_streams(js, namespace, (PO, EXCEPTION))
    requests = Requests(nc)
    publisher = EventPublisher(requests, namespace, tracer, timeout=5)
    yield js, namespace, publisher, EventReader(requests, namespace), tracer, spans
    await nc.drain()


def runner_for(js_env, spec: ConsumerSpec, retry) -> ConsumerRunner:
    js, namespace, publisher, _, tracer, _ = js_env
    nc = js._nc  # the fixture's client: the runner pulls through it
    return ConsumerRunner(nc, js, namespace, spec, ExceptionReporter(publisher, "tests"), tracer, retry=retry)


def po_published(key: str, payload: types_pb2.ObjectRef | None = None, workflow_key: bool = False) -> Event:
    """A purchase order event for the consumer tests (any payload: the handlers under test decide)."""
    return Event(
        domain="po",
        object_type="purchase_order",
        object_key=key,
        object_version=1,
        name="published",
        payload=payload or types_pb2.ObjectRef(),
        idempotency_key=key.lower(),
        source_system="tests",
        workflow_key=key if workflow_key else "",
    )


def ref_event(key: str, version: int, idempotency_key: str, detail: str = "x") -> Event:
    return Event(
        domain="exception",
        object_type="test",
        object_key=key,
        object_version=version,
        name="raised",
        payload=types_pb2.ObjectRef(object_type="test", object_key=detail),
        idempotency_key=idempotency_key,
        source_system="tests",
    )


async def test_provisioning_twice_is_harmless(nats_server):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    namespace = Namespace(unique_namespace())
    created = await provision_streams(js, namespace, ALL_STREAMS)
    again = await provision_streams(js, namespace, ALL_STREAMS)
    assert sorted(created) == sorted(namespace.stream(s.domain) for s in ALL_STREAMS)
    assert again == []
    audit = (await js.stream_info(namespace.stream("audit"))).config
    assert audit.deny_delete
    assert audit.deny_purge
    await nc.drain()


async def test_provisioning_repairs_a_drifted_stream(nats_server):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    namespace = Namespace(unique_namespace())
    await provision_streams(js, namespace, (PO,))
    config = (await js.stream_info(namespace.stream("po"))).config
    config.duplicate_window = 10.0
    await js.update_stream(config)
    assert await provision_streams(js, namespace, (PO,)) == [namespace.stream("po")]
    assert (await js.stream_info(namespace.stream("po"))).config.duplicate_window == 120.0
    await nc.drain()


async def test_same_idempotency_key_publishes_once(js_env):
    js, namespace, publisher, _, _, _ = js_env
    first = await publisher.publish(ref_event("k1", 1, "cmd-1"))
    second = await publisher.publish(ref_event("k1", 1, "cmd-1"))
    assert not first.duplicate
    assert second.duplicate
    assert second.sequence == first.sequence
    assert await message_count(js, namespace, "exception") == 1


async def test_expected_last_subject_sequence_lets_one_writer_win(js_env):
    _js, _namespace, publisher, reader, _, _ = js_env
    first = await publisher.publish(ref_event("order-9", 1, "a"), expected_last_sequence=0)
    with pytest.raises(WrongLastSequence):
        await publisher.publish(ref_event("order-9", 2, "b"), expected_last_sequence=0)
    # Another object's subject is not affected by order-9's sequence.
    await publisher.publish(ref_event("order-10", 1, "c"), expected_last_sequence=0)
    second = await publisher.publish(ref_event("order-9", 2, "d"), expected_last_sequence=first.sequence)
    last = await reader.last("exception", "order-9")
    assert last is not None
    assert last.sequence == second.sequence
    assert [e.envelope.object_version for e in await reader.history("exception", "order-9")] == [1, 2]


class RecordingRequests(Requests):
    """The real request/reply, recording which direct gets were asked (by last subject, or next after a sequence)."""

    def __init__(self, nc: nats.NATS) -> None:
        super().__init__(nc)
        self.asked: list[str] = []

    async def direct_get(self, stream: str, *, within: float, last_by_subject: str = "", **query):
        self.asked.append("last" if last_by_subject else f"next after {query['seq'] - 1}")
        return await super().direct_get(stream, within=within, last_by_subject=last_by_subject, **query)


async def test_an_objects_history_is_read_up_to_its_newest_event_and_never_searched_past_it(js_env):
    js, namespace, publisher, _, _, _ = js_env
    first = await publisher.publish(ref_event("order-7", 1, "a"), expected_last_sequence=0)
    await publisher.publish(ref_event("order-8", 1, "b"), expected_last_sequence=0)
    second = await publisher.publish(ref_event("order-7", 2, "c"), expected_last_sequence=first.sequence)
    for n in range(5):  # what follows the object's newest event: a next-by-subject read would search all of it
        await publisher.publish(ref_event(f"order-{20 + n}", 1, "d"), expected_last_sequence=0)
    requests = RecordingRequests(js._nc)
    reader = EventReader(requests, namespace)

    history = await reader.history("exception", "order-7")
    assert [stored.sequence for stored in history] == [first.sequence, second.sequence]
    assert requests.asked == ["last", "next after 0", f"next after {first.sequence}"]

    requests.asked.clear()
    assert await reader.history("exception", "order-7", after=second.sequence) == []
    assert requests.asked == ["last"]  # up to date: one read from the subject index, no search

    requests.asked.clear()
    later = await reader.history("exception", "order-7", after=first.sequence, through=second.sequence)
    assert [stored.sequence for stored in later] == [second.sequence]
    assert requests.asked == [f"next after {first.sequence}"]  # the caller knew the newest: not asked again


async def test_concurrent_writers_of_one_object_exactly_one_wins(js_env):
    _, _, publisher, reader, _, _ = js_env
    results = await asyncio.gather(
        *(publisher.publish(ref_event("race", 1, f"writer-{i}"), expected_last_sequence=0) for i in range(8)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1
    assert all(isinstance(r, WrongLastSequence) for r in results if isinstance(r, Exception))
    assert len(await reader.history("exception", "race")) == 1


async def test_keys_with_subject_characters_stay_apart(js_env):
    _, _, publisher, reader, _, _ = js_env
    await publisher.publish(ref_event("PO 4500.17/*", 1, "odd-1"), expected_last_sequence=0)
    await publisher.publish(ref_event("PO 4500", 1, "odd-2"), expected_last_sequence=0)
    odd = await reader.history("exception", "PO 4500.17/*")
    assert [e.envelope.object_key for e in odd] == ["PO 4500.17/*"]


async def _wait_for(predicate) -> None:
    async with asyncio.timeout(10):
        while not await predicate():  # noqa: ASYNC110 - polling a server, not a local event
            await asyncio.sleep(0.05)


async def test_failing_handler_is_redelivered_then_handed_off_with_original_bytes(js_env):
    js, namespace, publisher, reader, _, _ = js_env
    calls: list[int] = []

    async def always_fails(event) -> None:
        calls.append(event.sequence)
        raise RuntimeError("ERP adapter refused the document")

    runner = runner_for(
        js_env, ConsumerSpec("test-failing", "po", "po.*.published", always_fails), lambda name: (3, (0.05, 0.1))
    )
    await runner.provision()
    await runner.provision()  # idempotent
    published = await publisher.publish(po_published("P-1", payload=types_pb2.ObjectRef(object_key="payload")))
    original = await reader.at("po", published.sequence)
    runner.start()
    try:

        async def handed_off() -> bool:
            return bool(await raised_exceptions(js, namespace))

        await _wait_for(handed_off)
        await asyncio.sleep(0.3)  # a fourth delivery, if any, would show up here
    finally:
        await runner.stop()
    assert calls == [published.sequence] * 3
    [raised] = await raised_exceptions(js, namespace)
    assert raised.type == exception_pb2.EXCEPTION_TYPE_DELIVERY_EXHAUSTED
    assert raised.original_message.data == original.data
    assert raised.original_message.subject == original.subject
    assert raised.original_message.deliveries == 3
    assert "ERP adapter refused" in raised.original_message.last_error
    consumer = await js.consumer_info(namespace.stream("po"), runner.durable)
    assert consumer.num_ack_pending == 0
    assert consumer.num_pending == 0


async def test_transient_failure_is_retried_and_then_acknowledged(js_env):
    js, namespace, publisher, _, tracer, spans = js_env
    attempts: list[int] = []
    done = asyncio.Event()

    async def flaky(event) -> None:
        attempts.append(event.sequence)
        if len(attempts) < 2:
            raise ConnectionError("ERP briefly down")
        done.set()

    runner = runner_for(js_env, ConsumerSpec("test-flaky", "po", "po.*.published", flaky), lambda name: (5, (0.05,)))
    await runner.provision()
    with tracer.start_as_current_span("approve") as parent:
        await publisher.publish(po_published("P-2", workflow_key=True))
    runner.start()
    try:
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.sleep(0.2)
    finally:
        await runner.stop()
    assert len(attempts) == 2
    assert await raised_exceptions(js, namespace) == []
    consumer_spans = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    [first, again] = sorted(consumer_spans, key=lambda s: s.attributes["messaging.nats.message.delivery_count"])
    [producer] = [s for s in spans.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    # Handled at once: the first delivery's span is the publisher's child, in its trace. The redelivery starts a
    # trace of its own, linked to the publisher's span (docs/decisions.md "Logs, traces, metrics").
    assert first.context.trace_id == parent.get_span_context().trace_id
    assert first.parent is not None
    assert first.parent.span_id == producer.context.span_id
    assert not first.links
    assert again.context.trace_id != parent.get_span_context().trace_id
    assert again.parent is None
    [link] = again.links
    assert link.context.span_id == producer.context.span_id
    assert link.context.trace_id == parent.get_span_context().trace_id
    assert link.attributes == {"syncgov.link.reason": "redelivery"}


async def test_poison_message_is_handed_off_at_once(js_env):
    js, namespace, publisher, _, _, _ = js_env
    calls = 0

    async def poison(event) -> None:
        nonlocal calls
        calls += 1
        raise Poison("payload is not a purchase order")

    runner = runner_for(js_env, ConsumerSpec("test-poison", "po", "po.>", poison), lambda name: (5, (0.05,)))
    await runner.provision()
    await publisher.publish(po_published("P-3"))
    runner.start()
    try:

        async def handed_off() -> bool:
            return bool(await raised_exceptions(js, namespace))

        await _wait_for(handed_off)
    finally:
        await runner.stop()
    assert calls == 1


async def test_the_retry_policy_is_asked_by_consumer_name_at_every_delivery(js_env):
    js, namespace, publisher, _, _, _ = js_env
    calls = 0
    asked: list[str] = []

    async def fails(event) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("still down")

    def retry(name: str) -> tuple[int, tuple[float, ...]]:
        asked.append(name)
        return (2, (0.05,)) if name == "erp-adapter-po" else (9, (0.05,))

    runner = runner_for(js_env, ConsumerSpec("erp-adapter-po", "po", "po.>", fails), retry)
    await runner.provision()
    await publisher.publish(po_published("P-4"))
    runner.start()
    try:

        async def handed_off() -> bool:
            return bool(await raised_exceptions(js, namespace))

        await _wait_for(handed_off)
    finally:
        await runner.stop()
    assert calls == 2
    assert set(asked) == {"erp-adapter-po"}
    assert len(asked) == 2


async def test_a_publish_under_an_unsampled_span_records_none_and_carries_that_span_s_context(js_env):
    """Under parent-based sampling a publish span below an unsampled parent would record nothing: none is created, and
    the message carries the parent's own context (unsampled), so its consumers stay out of the trace as before."""
    _, _, publisher, reader, tracer, spans = js_env
    parent = SpanContext(trace_id=0xABC0, span_id=0x1230, is_remote=False, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    with trace.use_span(NonRecordingSpan(parent)):
        await publisher.publish(po_published("P-UNSAMPLED"))
    stored = await reader.last("po", "P-UNSAMPLED")
    assert stored is not None
    assert stored.headers["traceparent"] == f"00-{parent.trace_id:032x}-{parent.span_id:016x}-00"
    assert not [s for s in spans.get_finished_spans() if s.kind == SpanKind.PRODUCER]

    with tracer.start_as_current_span("approve") as sampled:
        await publisher.publish(po_published("P-SAMPLED"))
    [producer] = [s for s in spans.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert producer.parent is not None
    assert producer.parent.span_id == sampled.get_span_context().span_id
    stored = await reader.last("po", "P-SAMPLED")
    assert stored is not None
    assert stored.headers["traceparent"].split("-")[2] == f"{producer.context.span_id:016x}"


# --- The pull: requests kept outstanding, renewed, given back ------------------------------------------------------


async def test_a_consumer_idle_for_longer_than_its_requests_last_still_gets_the_next_message(js_env, monkeypatch):
    """The server forgets a pull request when it expires; the pull asks again (on the expiry's 408, or when the
    heartbeats stop), so a message published after a quiet spell is delivered."""
    monkeypatch.setattr(consumers, "PULL_EXPIRES_SECONDS", 0.4)
    monkeypatch.setattr(consumers, "PULL_HEARTBEAT_SECONDS", 0.1)
    _, _, publisher, _, _, _ = js_env
    handled: list[str] = []
    done = asyncio.Event()

    async def handle(event) -> None:
        handled.append(event.envelope.object_key)
        done.set()

    runner = runner_for(js_env, ConsumerSpec("test-quiet", "po", "po.*.published", handle), lambda name: (3, (0.05,)))
    await runner.provision()
    runner.start()
    try:
        await asyncio.sleep(1.5)  # several requests expire meanwhile
        await publisher.publish(po_published("P-AFTER-QUIET"))
        await asyncio.wait_for(done.wait(), 10)
    finally:
        await runner.stop()
    assert handled == ["P-AFTER-QUIET"]


@contextlib.asynccontextmanager
async def _own_broker(tmp_path) -> AsyncIterator[tuple[NatsServer, nats.NATS, EventPublisher, Namespace]]:
    """A nats-server of the test's own (to kill, stop and start again), a client that reconnects, a namespace with
    the PO and exception streams, and a publisher."""
    server = NatsServer(data_dir=tmp_path / "nats", sync_always=False)
    server.start()
    nc = await nats.connect(server.address_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        namespace = Namespace(unique_namespace())
        await provision_streams(nc.jetstream(), namespace, (PO, EXCEPTION))
        yield server, nc, EventPublisher(Requests(nc), namespace, TracerProvider().get_tracer("test"), 5), namespace
    finally:
        await nc.close()
        server.stop()


@contextlib.asynccontextmanager
async def _running(
    nc: nats.NATS, namespace: Namespace, publisher: EventPublisher, spec: ConsumerSpec
) -> AsyncIterator[ConsumerRunner]:
    """The consumer provisioned and started for the block, stopped after it."""
    tracer = TracerProvider().get_tracer("test")
    runner = ConsumerRunner(
        nc, nc.jetstream(), namespace, spec, ExceptionReporter(publisher, "tests"), tracer, retry=lambda _: (3, (0.05,))
    )
    await runner.provision()
    runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


def _slow_spec(name: str, seconds: float) -> ConsumerSpec:
    """A consumer of published orders, batch 4, whose handler takes ``seconds`` a message."""

    async def slow(event) -> None:
        await asyncio.sleep(seconds)

    return ConsumerSpec(name, "po", "po.*.published", slow, batch=4)


async def test_a_consumer_keeps_pulling_after_the_broker_restarts(tmp_path, monkeypatch):
    """A broker killed and started again has forgotten the pull's requests without a word: the pull notices (the
    reconnect, or heartbeats that stop coming) and asks again, so messages published after the restart arrive."""
    monkeypatch.setattr(consumers, "PULL_HEARTBEAT_SECONDS", 0.2)
    handled: list[str] = []
    arrived = asyncio.Event()

    async def handle(event) -> None:
        handled.append(event.envelope.object_key)
        arrived.set()

    async with _own_broker(tmp_path) as (server, nc, publisher, namespace):
        spec = ConsumerSpec("test-restart", "po", "po.*.published", handle)
        async with _running(nc, namespace, publisher, spec) as runner:
            await publisher.publish(po_published("P-BEFORE"))
            await asyncio.wait_for(arrived.wait(), 10)
            arrived.clear()
            await asyncio.sleep(0.1)
            await nc.flush()  # the acknowledgment reaches the broker before it dies
            server.kill()  # no word to the pull (a graceful stop answers its requests 409 Server Shutdown)
            server.start()
            await _wait_for(lambda: _published(publisher, po_published("P-AFTER")))
            await asyncio.wait_for(arrived.wait(), 15)
            await asyncio.sleep(0.1)
            await nc.flush()
            consumer = await nc.jetstream().consumer_info(runner.stream, runner.durable)
    assert handled == ["P-BEFORE", "P-AFTER"]
    assert consumer.num_ack_pending == 0


async def test_a_slow_handler_never_has_more_than_a_batch_pulled_and_unhandled(tmp_path, monkeypatch):
    """Messages pulled but not handled wait with their ack wait running: however slow the handler (here slower than
    two heartbeat intervals, which must not read as lost requests), no more than a batch is owed or queued."""
    monkeypatch.setattr(consumers, "PULL_HEARTBEAT_SECONDS", 0.1)
    pending: list[int] = []
    async with _own_broker(tmp_path) as (_, nc, publisher, namespace):
        for n in range(60):
            await publisher.publish(po_published(f"P-SLOW-{n}"))
        async with _running(nc, namespace, publisher, _slow_spec("test-slow", 0.3)) as runner:
            for _ in range(10):
                await asyncio.sleep(0.3)
                pending.append((await nc.jetstream().consumer_info(runner.stream, runner.durable)).num_ack_pending)
    assert max(pending) <= 4 + 1, pending  # a batch owed or queued, and the message in hand


async def test_requests_are_not_piled_up_while_the_broker_is_away(tmp_path, monkeypatch):
    """While disconnected the pull asks for nothing (nats-py would queue every request and send them all at once on
    reconnecting, each for a batch): after an outage the replica holds a batch, not one per heartbeat missed."""
    monkeypatch.setattr(consumers, "PULL_HEARTBEAT_SECONDS", 0.25)
    async with (
        _own_broker(tmp_path) as (server, nc, publisher, namespace),
        _running(nc, namespace, publisher, _slow_spec("test-outage", 0.2)) as runner,
    ):
        await asyncio.sleep(1)
        server.stop()
        await asyncio.sleep(5)  # the outage: twenty heartbeat intervals
        server.start()
        for n in range(60):
            await _wait_for(lambda n=n: _published(publisher, po_published(f"P-OUT-{n}")))
        await asyncio.sleep(0.5)
        consumer = await nc.jetstream().consumer_info(runner.stream, runner.durable)
    assert consumer.num_ack_pending <= 4 + 1


async def _published(publisher: EventPublisher, event: Event) -> bool:
    """One attempt at publishing while a restarted broker comes back (False until it takes the message)."""
    try:
        await publisher.publish(event)
    except Exception:
        return False
    return True


async def test_a_stopped_consumer_gives_back_at_once_what_it_had_not_handled(js_env):
    """Stopping finishes the message in hand; the messages already pulled but not handled are given back (nak), so
    another replica gets them now rather than after the ack wait (30 s here)."""
    _, _, publisher, _, _, _ = js_env
    first_in_hand = asyncio.Event()
    release = asyncio.Event()
    seen_by_first: list[str] = []
    seen_by_second: list[str] = []
    all_seen = asyncio.Event()
    keys = [f"P-BACK-{n}" for n in range(5)]

    async def slow(event) -> None:
        seen_by_first.append(event.envelope.object_key)
        first_in_hand.set()
        await release.wait()

    async def quick(event) -> None:
        seen_by_second.append(event.envelope.object_key)
        if set(seen_by_first) | set(seen_by_second) >= set(keys):
            all_seen.set()

    for key in keys:
        await publisher.publish(po_published(key))
    retry = lambda name: (3, (0.05,))  # noqa: E731
    first = runner_for(js_env, ConsumerSpec("test-give-back", "po", "po.*.published", slow), retry)
    await first.provision()
    first.start()
    await asyncio.wait_for(first_in_hand.wait(), 10)
    stopping = asyncio.ensure_future(first.stop())
    await asyncio.sleep(0.1)
    release.set()
    await asyncio.wait_for(stopping, 10)
    second = runner_for(
        js_env, ConsumerSpec("test-give-back", "po", "po.*.published", quick), lambda name: (3, (0.05,))
    )
    second.start()
    try:
        await asyncio.wait_for(all_seen.wait(), 10)  # well before the 30 s ack wait
    finally:
        await second.stop()
    assert seen_by_first == [keys[0]]
    assert sorted(seen_by_second) == keys[1:]  # given back together: redelivered in no promised order
