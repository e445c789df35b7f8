"""Durable pull consumers with explicit ack, bounded redelivery with backoff, and hand-off.

A handler returns normally to ack. It raises :class:`Retry` (or any other
error) for a transient failure: the message is nak'ed with the next backoff
delay. The delivery limit and the backoff steps come from the policy in force
(``retries.consumers.<name>``, else ``retries.default``), read at every
delivery, so a new policy revision applies to messages already in flight.
When a message has been delivered that many times and still fails, or the
handler raises :class:`Poison`, the message is handed off to the exception
router as a ``delivery_exhausted`` exception carrying its original subject,
headers and bytes, and only then terminated. If the
hand-off itself fails the message is nak'ed again: nothing is dropped.

Messages are pulled the way the newer NATS clients consume (nats-py has only ``fetch``): pull requests are kept
outstanding and messages taken from the consumer's inbox as they arrive (:class:`Pull`). ``fetch`` waited for each
message through a task, a timer and a uuid of its own and, once a request had one message, up to its timeout (0.5 s)
for the rest of the batch: a message that arrived alone was handled that much later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DEFAULT_PREFIX, AckPolicy, ConsumerConfig, DeliverPolicy, Header
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from libs.runtime import attributes
from libs.runtime.events import StoredEvent, parse_stored
from libs.runtime.exception_reporter import ExceptionReporter
from libs.runtime.metrics import RuntimeMetrics
from libs.runtime.subjects import Namespace
from libs.runtime.telemetry import extract_context
from syncgov.common.v1 import envelope_pb2, types_pb2
from syncgov.exception.v1 import exception_pb2

log = logging.getLogger(__name__)

Handler = Callable[[StoredEvent], Awaitable[None]]
# What a hand-off reports for a message: the original message, the object it concerns and the fingerprint's
# discriminator (by default the message itself, its stream position and the consumer that gave up).
HandOff = Callable[[Msg, int, str], tuple[exception_pb2.OriginalMessage, types_pb2.ObjectRef, str]]
# consumer name -> (max deliveries, backoff steps in seconds)
RetryPolicy = Callable[[str], tuple[int, tuple[float, ...]]]
# The server's own delivery limit: a backstop above any policy's (policy allows at most 100), for
# messages that kill the process before the runner can hand them off.
SERVER_MAX_DELIVER = 101


def message_ref(stream: str, sequence: int) -> types_pb2.ObjectRef:
    """What a delivery exception is about: one message, by its place in its stream."""
    return types_pb2.ObjectRef(object_type="message", object_key=f"{stream}:{sequence}")


class Retry(Exception):
    """Transient failure: deliver the message again after the backoff delay."""


class NotYet(Retry):
    """The message needs something that has not happened yet (a read model catching up): delivered again after the
    policy's backoff, never handed off by the policy's limit (the server's backstop of SERVER_MAX_DELIVER still
    applies, and its advisory reaches the exception router), so waiting does not turn into an exception about the
    message."""


class Poison(Exception):
    """The message can never succeed: hand it off now."""


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """``name`` is ``<consumer>-<purpose>``; ``filter`` is relative to the namespace (``po.*.published``), or, when
    it starts with ``$``, a system subject as it is (JetStream advisories). ``raw`` messages are not events: the
    handler gets their bytes and headers with an empty envelope. ``hand_off`` replaces what a hand-off reports
    (a replay hands off the message it carries, so its exception is the original's)."""

    name: str
    domain: str
    filter: str
    handler: Handler
    batch: int = 16
    ack_wait_seconds: float = 30.0
    raw: bool = False
    hand_off: HandOff | None = None
    # More than one filter (relative to the namespace, like ``filter``): the consumer takes any of them.
    filters: tuple[str, ...] = ()
    # Its stream is optional (libs/runtime/streams.StreamSpec.optional): without it the consumer does not run.
    optional: bool = False
    # The messages that have arrived (up to ``batch``) are handled at once rather than one after another: for a handler
    # whose outcome does not depend on the order it sees messages in (each decision guarded by its object's subject
    # sequence).
    concurrent: bool = False


# A message handled within this many seconds of being stored, on its first delivery, is handled "at once": its consumer
# span is a child of the publisher's span, in the publisher's trace. Handled later (a consumer catching up, a replay)
# or delivered again, the span starts a trace of its own with a link to the publisher's (docs/decisions.md).
HANDLED_AT_ONCE_SECONDS = 30.0


def consumer_parent(
    headers: dict[str, str] | None, delivered: int, stored_at: datetime | None, now: datetime | None = None
) -> tuple[Context | None, list[Link]]:
    """(parent context, links) of the consumer span of one delivery, by the rule of :data:`HANDLED_AT_ONCE_SECONDS`.

    Without a trace context in the headers the span is a root with no link (an advisory, a foreign publisher)."""
    producer = extract_context(headers)
    producer_span = trace.get_current_span(producer).get_span_context()
    if not producer_span.is_valid:
        return Context(), []
    waited = ((now or datetime.now(UTC)) - stored_at).total_seconds() if stored_at is not None else 0.0
    if delivered <= 1 and waited <= HANDLED_AT_ONCE_SECONDS:
        return producer, []
    reason = "redelivery" if delivered > 1 else "late"
    return Context(), [Link(producer_span, {attributes.LINK_REASON: reason})]


def envelope_attributes(envelope: envelope_pb2.EventEnvelope) -> dict[str, str | int]:
    """The syncgov attributes an event's envelope knows, those it holds (empty and zero values left out)."""
    found: dict[str, str | int] = {}
    for key, value in (
        (attributes.WORKFLOW_KEY, envelope.workflow_key),
        (attributes.OBJECT_TYPE, envelope.object_type),
        (attributes.OBJECT_KEY, envelope.object_key),
        (attributes.OBJECT_VERSION, envelope.object_version),
        (attributes.POLICY_REVISION, envelope.policy_revision),
        (attributes.EVENT_TYPE, envelope.event_type),
        (attributes.MESSAGING_MESSAGE_ID, envelope.idempotency_key),
    ):
        if value:
            found[key] = value
    return found


def backoff_delay(backoff: tuple[float, ...], delivered: int) -> float:
    """Delay before delivery number ``delivered + 1``; the last step repeats."""
    return backoff[min(max(delivered, 1), len(backoff)) - 1]


# A pull request lasts this long on the server and is kept alive by the server's idle heartbeats at this interval
# (at most half of it: the server refuses more); two intervals without a message or a heartbeat while the server owes
# messages (or a reconnect) mean the requests were lost (a restarted broker forgets them): the pull asks again.
PULL_EXPIRES_SECONDS = 10.0
PULL_HEARTBEAT_SECONDS = 2.0
# After a refusal of the pull itself (409: the consumer deleted, its leader changed, the server shutting down).
PULL_REFUSED_PAUSE_SECONDS = 1.0
# How long a stop waits for the messages already on their way to reach the inbox before giving them back.
PULL_DRAIN_SECONDS = 2.0


class Pull:
    """A durable pull consumer's messages as they arrive: pull requests topping up what the server owes plus what
    waits here to ``batch`` (never more on their way or queued, their ack wait running, than ``fetch`` held),
    answered on an inbox of this client. Statuses are read as they arrive: a 408 (a request expired) gives back what
    it did not deliver; a 409 or any other refusal drops what was asked for and pauses the requests; heartbeats keep
    the requests alive. Status messages never reach the caller."""

    def __init__(self, nc: NATS, stream: str, durable: str, batch: int) -> None:
        self._nc = nc
        self._next = f"{DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._batch = max(1, batch)
        self._inbox = ""
        self._subscription: Subscription | None = None
        self._arrived: deque[Msg] = deque()
        self._woken = asyncio.Event()
        self._owed = 0  # messages asked for that have neither arrived nor been given up by the server
        self._heard = time.monotonic()  # the last message or status, or the last request
        self._paused_until = 0.0  # after a refusal: no request before then
        self._reconnects = 0

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._subscription = await self._nc.subscribe(self._inbox, cb=self._delivered)
        self._reconnects = self._nc.stats["reconnects"]

    async def _delivered(self, message: Msg) -> None:
        self._heard = time.monotonic()
        headers = message.headers or {}
        status = headers.get("Status") if not message.data else None
        if not status:
            self._owed = max(0, self._owed - 1)
            self._arrived.append(message)
        elif status == "408" and headers.get("Nats-Pending-Messages", "").isdigit():
            self._owed = max(0, self._owed - int(headers["Nats-Pending-Messages"]))
        elif status != "100":  # 100: an idle heartbeat; anything else: the requests are gone
            description = " ".join(str(headers.get(Header.DESCRIPTION, "")).split())  # nats-py keys it by the enum
            log.warning("pull on %s refused (%s %s); asking again", self._next, status, description)
            self._owed = 0
            self._paused_until = time.monotonic() + PULL_REFUSED_PAUSE_SECONDS
        self._woken.set()

    async def next(self, limit: int) -> list[Msg]:
        """Up to ``limit`` messages, waiting for the first."""
        while True:
            now = time.monotonic()
            self._check_requests(now)
            wanted = self._batch - self._owed - len(self._arrived)
            if wanted >= max(1, self._batch // 2) and self._nc.is_connected and now >= self._paused_until:
                # Not while disconnected: nats-py would queue every request and send them all on reconnecting.
                request = {
                    "batch": wanted,
                    "expires": int(PULL_EXPIRES_SECONDS * 1e9),
                    "idle_heartbeat": int(min(PULL_HEARTBEAT_SECONDS, PULL_EXPIRES_SECONDS / 2) * 1e9),
                }
                await self._nc.publish(self._next, json.dumps(request).encode(), reply=self._inbox)
                self._owed += wanted
                self._heard = now  # its heartbeats are due from now
            if self._arrived:
                return [self._arrived.popleft() for _ in range(min(limit, len(self._arrived)))]
            self._woken.clear()
            wait = PULL_HEARTBEAT_SECONDS
            if self._paused_until > now:
                wait = min(wait, self._paused_until - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._woken.wait()

    def _check_requests(self, now: float) -> None:
        """Requests the server no longer holds are asked again: after a reconnect, or two heartbeats unheard while
        messages are owed."""
        reconnects = self._nc.stats["reconnects"]
        if reconnects != self._reconnects or (self._owed and now - self._heard > 2 * PULL_HEARTBEAT_SECONDS):
            self._reconnects = reconnects
            self._owed = 0

    async def stop(self) -> None:
        """Stop the requests and give back what arrived unhandled (nak: to another replica now rather than after the
        ack wait). Draining the inbox (unsubscribe, then a round trip to the server) lets the messages already on
        their way arrive first."""
        if self._subscription is not None:
            try:
                async with asyncio.timeout(PULL_DRAIN_SECONDS):
                    await self._subscription.drain()  # type: ignore[no-untyped-call]  # untyped in nats-py
            except Exception:  # disconnected, or the drain did not finish: stop listening anyway
                with contextlib.suppress(Exception):
                    await self._subscription.unsubscribe()
        while self._arrived:
            with contextlib.suppress(Exception):
                await self._arrived.popleft().nak()


class ConsumerRunner:
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        namespace: Namespace,
        spec: ConsumerSpec,
        reporter: ExceptionReporter,
        tracer: trace.Tracer,
        *,
        retry: RetryPolicy,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        self._nc = nc
        self._js = js
        self._metrics = metrics
        self._labels = {"consumer": spec.name}
        if metrics is not None:  # the series exist at 0 from the start
            metrics.redeliveries.add(0, self._labels)
            metrics.handed_off.add(0, self._labels)
        self._ns = namespace
        self._spec = spec
        self._reporter = reporter
        self._tracer = tracer
        self._retry = retry
        self._stopping = asyncio.Event()
        self._processing = False
        self._task: asyncio.Task[None] | None = None
        self._subject = self._absolute(spec.filter)
        self._subjects = [self._absolute(each) for each in spec.filters]

    def _absolute(self, subject: str) -> str:
        return subject if subject.startswith("$") else f"{self._ns.root}.{subject}"

    @property
    def durable(self) -> str:
        return f"{self._ns.root}-{self._spec.name}"

    @property
    def spec(self) -> ConsumerSpec:
        return self._spec

    @property
    def stream(self) -> str:
        return self._ns.stream(self._spec.domain)

    async def provision(self) -> None:
        """Create the durable consumer, or update it to spec; idempotent."""
        stream = self._ns.stream(self._spec.domain)
        config = ConsumerConfig(
            durable_name=self.durable,
            filter_subject=None if self._subjects else self._subject,
            filter_subjects=self._subjects or None,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._spec.ack_wait_seconds,
            # The runner enforces the policy's delivery limit itself so the last failure can be handed
            # off; the server's limit is only a backstop.
            max_deliver=SERVER_MAX_DELIVER,
            max_ack_pending=1000,
        )
        try:
            await self._js.consumer_info(stream, self.durable)
        except NotFoundError:
            await self._js.add_consumer(stream, config)
            return
        await self._js.add_consumer(stream, config)  # same name + new config = update

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"consumer {self.durable}")

    async def stop(self) -> None:
        """Stop pulling; a message in hand is finished first, a wait for the next is abandoned."""
        self._stopping.set()
        if self._task is not None and not self._processing:
            self._task.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        pull = Pull(self._nc, self._ns.stream(self._spec.domain), self.durable, self._spec.batch)
        try:
            await pull.start()
            while not self._stopping.is_set():
                try:
                    # One at a time unless handled at once: a stop finishes the message in hand and gives back the rest.
                    messages = await pull.next(self._spec.batch if self._spec.concurrent else 1)
                except Exception:
                    log.exception("pull failed on %s; retrying", self.durable)
                    await asyncio.sleep(1.0)
                    continue
                self._processing = True
                try:
                    if len(messages) == 1:
                        await self._process(messages[0])
                    else:
                        await asyncio.gather(*(self._process(message) for message in messages))
                finally:
                    self._processing = False
        finally:
            await pull.stop()

    async def _process(self, message: Msg) -> None:
        metadata = message.metadata
        delivered = metadata.num_delivered
        max_deliver, backoff = self._retry(self._spec.name)
        if delivered > 1 and self._metrics is not None:
            self._metrics.redeliveries.add(1, self._labels)
        parent, links = consumer_parent(message.headers, delivered, metadata.timestamp)
        with self._tracer.start_as_current_span(
            f"process {self._subject}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                attributes.MESSAGING_SYSTEM: "nats",
                attributes.MESSAGING_DESTINATION: message.subject,
                attributes.MESSAGING_DESTINATION_SUBSCRIPTION: self._subject,
                attributes.MESSAGING_OPERATION: "process",
                attributes.MESSAGING_OPERATION_NAME: "process",
                attributes.MESSAGING_CONSUMER_GROUP: self.durable,
                attributes.MESSAGING_DELIVERY_COUNT: delivered,
                attributes.MESSAGING_BODY_SIZE: len(message.data),
            },
        ) as span:
            try:
                if self._spec.raw:
                    event = StoredEvent(
                        metadata.stream,
                        metadata.sequence.stream,
                        message.subject,
                        dict(message.headers or {}),
                        message.data,
                        envelope_pb2.EventEnvelope(),
                    )
                else:
                    event = parse_stored(
                        metadata.stream, metadata.sequence.stream, message.subject, message.headers, message.data
                    )
                if span.is_recording():
                    span.set_attributes(envelope_attributes(event.envelope))
                await self._spec.handler(event)
            except Poison as error:
                span.set_status(Status(StatusCode.ERROR, str(error)))
                await self._hand_off(message, delivered, f"poison: {error}", backoff)
                return
            except NotYet as error:
                log.info("not yet (delivery %s): %s", delivered, error, extra={"consumer": self.durable})
                await message.nak(delay=backoff_delay(backoff, delivered))
                return
            except Exception as error:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error)))
                if delivered >= max_deliver:
                    await self._hand_off(message, delivered, repr(error), backoff)
                else:
                    log.warning(
                        "handler failed (delivery %s of %s), will retry: %r",
                        delivered,
                        max_deliver,
                        error,
                        extra={"consumer": self.durable},
                    )
                    await message.nak(delay=backoff_delay(backoff, delivered))
                return
            await message.ack()

    def _original(
        self, message: Msg, delivered: int, last_error: str
    ) -> tuple[exception_pb2.OriginalMessage, types_pb2.ObjectRef, str]:
        metadata = message.metadata
        original = exception_pb2.OriginalMessage(
            subject=message.subject,
            headers=dict(message.headers or {}),
            data=message.data,
            stream=metadata.stream,
            stream_sequence=metadata.sequence.stream,
            consumer=self.durable,
            deliveries=delivered,
            last_error=last_error[:2000],
        )
        return original, message_ref(metadata.stream, metadata.sequence.stream), self.durable

    async def _hand_off(self, message: Msg, delivered: int, last_error: str, backoff: tuple[float, ...]) -> None:
        try:
            describe = self._spec.hand_off or self._original
            original, ref, discriminator = describe(message, delivered, last_error)
            await self._reporter.raise_exception(
                exception_pb2.EXCEPTION_TYPE_DELIVERY_EXHAUSTED,
                exception_pb2.SEVERITY_HIGH,
                ref,
                f"{original.consumer} gave up on {original.subject} after {original.deliveries} deliveries: "
                f"{last_error[:500]}",
                original_message=original,
                discriminator=discriminator,
            )
        except Exception:
            log.exception("hand-off of %s failed; message stays pending", message.subject)
            await message.nak(delay=backoff_delay(backoff, delivered))
            return
        log.error("handed off %s after %s deliveries", message.subject, delivered, extra={"consumer": self.durable})
        if self._metrics is not None:
            self._metrics.handed_off.add(1, self._labels)
        await message.term()
