"""Publishing and reading events: the envelope, headers and the write guard of DESIGN §3.

Every state change is one publish of an :class:`EventEnvelope` on the
object's own subject ``<ns>.<domain>.<key>.<event>``, carrying:

* ``Nats-Msg-Id`` = the command's idempotency key (first line of de-duplication),
* ``Nats-Expected-Last-Subject-Sequence`` + ``...-Subject: <ns>.<domain>.<key>.*``
  when the writer knows which version it extends, so two concurrent writers of
  one object cannot both win (the loser gets :class:`WrongLastSequence`),
* ``traceparent`` (W3C), ``Content-Type`` and ``Syncgov-Event-Type``.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from nats.js.errors import BadRequestError, NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from libs.runtime import attributes
from libs.runtime.content_hash import content_sha256 as content_sha256  # re-exported: its old home
from libs.runtime.metrics import RuntimeMetrics
from libs.runtime.requests import Requests
from libs.runtime.subjects import Namespace, header_value
from libs.runtime.telemetry import drops_children_of_unsampled, inject_context
from syncgov.common.v1 import envelope_pb2

CONTENT_TYPE = "application/x-protobuf"
HEADER_EVENT_TYPE = "Syncgov-Event-Type"
HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_EXPECTED_SEQ = "Nats-Expected-Last-Subject-Sequence"
HEADER_EXPECTED_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
JS_ERR_WRONG_LAST_SEQUENCE = 10071
READ_TIMEOUT_SECONDS = 5.0  # a read's wait for the broker unless the reader is given another (nats-py's default)

# The policy revision the edge used to allow the current call; events record it (DESIGN §3.6).
current_policy_revision: contextvars.ContextVar[int] = contextvars.ContextVar("syncgov_policy_revision", default=0)

M = TypeVar("M", bound=Message)
T = TypeVar("T")
log = logging.getLogger(__name__)


class WrongLastSequence(Exception):
    """Another writer changed the object since it was read (JetStream error 10071)."""


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def now_timestamp() -> timestamp_pb2.Timestamp:
    """The current time, without the datetime round trip (protobuf's FromDatetime is slow Python)."""
    nanos = time.time_ns()
    return timestamp_pb2.Timestamp(seconds=nanos // 1_000_000_000, nanos=nanos % 1_000_000_000)


@dataclass(frozen=True, slots=True)
class Event:
    """What a service hands to the publisher; the envelope is built from it."""

    domain: str
    object_type: str
    object_key: str
    object_version: int
    name: str
    payload: Message
    idempotency_key: str
    source_system: str
    content_sha256: str = ""
    workflow_key: str = ""
    policy_revision: int = 0
    occurred_at: timestamp_pb2.Timestamp | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as JetStream holds it."""

    stream: str
    sequence: int
    subject: str
    headers: dict[str, str]
    data: bytes
    envelope: envelope_pb2.EventEnvelope

    def unpack(self, message_type: type[M]) -> M:
        payload = message_type()
        if not self.envelope.payload.Unpack(payload):
            raise TypeError(f"event {self.envelope.event_type} is not {message_type.DESCRIPTOR.full_name}")
        return payload


def readable(stored: StoredEvent, decode: Callable[[StoredEvent], T]) -> T | None:
    """``decode(stored)``, or None for an event that cannot be read: logged and left out of the fold rather than
    making the whole object unreadable (every event was validated before it was stored; this is a bug's trace)."""
    try:
        return decode(stored)
    except Exception:
        log.error(
            "stored event %s:%s on %s cannot be read; folded without it",
            stored.stream,
            stored.sequence,
            stored.subject,
            exc_info=True,
        )
        return None


@dataclass(frozen=True, slots=True)
class Published:
    stream: str
    sequence: int
    duplicate: bool
    envelope: envelope_pb2.EventEnvelope


def build_envelope(event: Event, recorded_at: timestamp_pb2.Timestamp) -> envelope_pb2.EventEnvelope:
    payload = any_pb2.Any()
    payload.Pack(event.payload)
    envelope = envelope_pb2.EventEnvelope(
        event_id=str(uuid.uuid4()),
        event_type=event.payload.DESCRIPTOR.full_name,
        object_type=event.object_type,
        object_key=event.object_key,
        object_version=event.object_version,
        source_system=event.source_system,
        recorded_at=recorded_at,
        idempotency_key=event.idempotency_key,
        policy_revision=event.policy_revision or current_policy_revision.get(),
        workflow_key=event.workflow_key,
        content_sha256=event.content_sha256,
        payload=payload,
    )
    envelope.occurred_at.CopyFrom(event.occurred_at if event.occurred_at is not None else recorded_at)
    return envelope


def parse_stored(stream: str, sequence: int, subject: str, headers: dict[str, str] | None, data: bytes) -> StoredEvent:
    envelope = envelope_pb2.EventEnvelope()
    envelope.ParseFromString(data)
    return StoredEvent(stream, sequence, subject, dict(headers or {}), data, envelope)


@dataclass(frozen=True, slots=True)
class StreamPosition:
    last_sequence: int  # of the stream's newest message (0: none)
    created: str  # when the stream was created, as the broker tells it ("" when there is no stream)


class UnreadableEvent(ValueError):
    """A stored message that is not an event envelope (another publisher's bytes on a domain subject)."""

    def __init__(self, stream: str, sequence: int, error: Exception) -> None:
        super().__init__(f"{stream} sequence {sequence} is not an event: {error!r}")
        self.sequence = sequence


def parse_direct(stream: str, message: Msg) -> StoredEvent:
    """A message read back from a stream by a direct get; the server always sends its sequence and subject."""
    headers = message.headers or {}
    if "Nats-Sequence" not in headers or "Nats-Subject" not in headers:
        raise ValueError(f"{stream}: a stored message without sequence or subject")
    sequence = int(headers["Nats-Sequence"])
    try:
        return parse_stored(stream, sequence, headers["Nats-Subject"], headers, message.data)
    except DecodeError as error:
        raise UnreadableEvent(stream, sequence, error) from error


def _producer_attributes(
    subject: str, template: str, event: Event, envelope: envelope_pb2.EventEnvelope, size: int
) -> dict[str, str | int]:
    """A publish span's attributes: the messaging conventions', then syncgov's (those the event knows)."""
    found: dict[str, str | int] = {
        attributes.MESSAGING_SYSTEM: "nats",
        attributes.MESSAGING_DESTINATION: subject,
        attributes.MESSAGING_DESTINATION_TEMPLATE: template,
        attributes.MESSAGING_OPERATION: "send",
        attributes.MESSAGING_OPERATION_NAME: "publish",
        attributes.MESSAGING_MESSAGE_ID: event.idempotency_key,
        attributes.MESSAGING_BODY_SIZE: size,
        attributes.OBJECT_TYPE: event.object_type,
        attributes.OBJECT_KEY: event.object_key,
        attributes.EVENT_TYPE: envelope.event_type,
    }
    if event.workflow_key:
        found[attributes.WORKFLOW_KEY] = event.workflow_key
    if event.object_version:
        found[attributes.OBJECT_VERSION] = event.object_version
    if envelope.policy_revision:
        found[attributes.POLICY_REVISION] = envelope.policy_revision
    return found


class EventPublisher:
    def __init__(
        self,
        requests: Requests,
        namespace: Namespace,
        tracer: trace.Tracer,
        timeout: float,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        self._requests = requests
        self._metrics = metrics
        self._ns = namespace
        self._tracer = tracer
        self._timeout = timeout
        # Under parent-based sampling (the default) or none, a span under an unsampled parent records nothing: the
        # publish skips creating one (most publishes, at the default ratio), which cost ~10 µs each.
        self._unsampled_parents_end_traces = drops_children_of_unsampled(tracer)

    @property
    def namespace(self) -> Namespace:
        return self._ns

    async def publish(
        self, event: Event, *, expected_last_sequence: int | None = None, subject: str | None = None
    ) -> Published:
        """Publish one event; ``expected_last_sequence`` guards the object's subject (0 = no event yet). ``subject``
        replaces the object's own (``<ns>.<domain>.<key>.<event>``) for a stream laid out otherwise (repairs)."""
        custom = subject is not None
        subject = subject or self._ns.object_subject(event.domain, event.object_key, event.name)
        envelope = build_envelope(event, now_timestamp())
        headers = {
            HEADER_MSG_ID: header_value(event.idempotency_key),
            HEADER_EVENT_TYPE: envelope.event_type,
            "Content-Type": CONTENT_TYPE,
        }
        if expected_last_sequence is not None:
            headers[HEADER_EXPECTED_SEQ] = str(expected_last_sequence)
            headers[HEADER_EXPECTED_SEQ_SUBJECT] = self._ns.object_filter(event.domain, event.object_key)
        stream = self._ns.stream(event.domain)
        data = envelope.SerializeToString()
        template = f"{self._ns.root}.{event.domain}.>" if custom else f"{self._ns.root}.{event.domain}.*.{event.name}"
        parent = trace.get_current_span().get_span_context()
        if self._unsampled_parents_end_traces and parent.is_valid and not parent.trace_flags.sampled:
            # The publish span would record nothing: the message carries the parent's context, unsampled, as it would.
            inject_context(headers)
            return await self._send(event, envelope, subject, data, stream, headers)
        with self._tracer.start_as_current_span(
            f"publish {template}", kind=SpanKind.PRODUCER, record_exception=True
        ) as span:
            if span.is_recording():
                span.set_attributes(_producer_attributes(subject, template, event, envelope, len(data)))
            inject_context(headers)
            return await self._send(event, envelope, subject, data, stream, headers)

    async def _send(
        self,
        event: Event,
        envelope: envelope_pb2.EventEnvelope,
        subject: str,
        data: bytes,
        stream: str,
        headers: dict[str, str],
    ) -> Published:
        started = time.perf_counter()
        try:
            stored_in, sequence, duplicate = await self._requests.publish(
                subject, data, stream=stream, headers=headers, within=self._timeout
            )
        except BadRequestError as error:
            if error.err_code == JS_ERR_WRONG_LAST_SEQUENCE:
                raise WrongLastSequence(error.description or "wrong last sequence") from error
            raise
        if self._metrics is not None:
            self._metrics.published(event.domain, started)
        return Published(stored_in, sequence, duplicate, envelope)


class EventReader:
    """Reads an object's history back from its stream: the lasting record of what happened."""

    def __init__(self, requests: Requests, namespace: Namespace, timeout: float = READ_TIMEOUT_SECONDS) -> None:
        self._requests = requests
        self._ns = namespace
        self._timeout = timeout

    async def last(self, domain: str, key: str) -> StoredEvent | None:
        stream = self._ns.stream(domain)
        found = await self._requests.direct_get(
            stream, last_by_subject=self._ns.object_filter(domain, key), within=self._timeout
        )
        return parse_direct(stream, found) if found is not None else None

    async def last_of_each(self, objects: Sequence[tuple[str, str]]) -> list[StoredEvent | None]:
        """The newest event of each (domain, key), asked of the streams at once: one round trip for all of them
        rather than one each (``Requests.at_once``)."""
        streams = [self._ns.stream(domain) for domain, _ in objects]
        found = await self._requests.last_of_each(
            [
                (stream, self._ns.object_filter(domain, key))
                for stream, (domain, key) in zip(streams, objects, strict=True)
            ],
            within=self._timeout,
        )
        return [
            parse_direct(stream, message) if message is not None else None
            for stream, message in zip(streams, found, strict=True)
        ]

    async def at(self, domain: str, sequence: int) -> StoredEvent:
        stream = self._ns.stream(domain)
        found = await self._requests.direct_get(stream, seq=sequence, within=self._timeout)
        if found is None:
            raise NotFoundError(description=f"{stream} holds no message {sequence}")
        return parse_direct(stream, found)

    async def _state(self, domain: str) -> dict[str, int] | None:
        try:
            return await self._requests.stream_state(self._ns.stream(domain), within=self._timeout)
        except NotFoundError:
            return None

    async def scan(self, domain: str) -> AsyncIterator[StoredEvent]:
        """Every event of a domain's stream, oldest first: for rebuilding read models."""
        stream = self._ns.stream(domain)
        state = await self._state(domain)
        if state is None:
            return
        for sequence in range(state.get("first_seq") or 1, state.get("last_seq", 0) + 1):
            found = await self._requests.direct_get(stream, seq=sequence, within=self._timeout)
            if found is not None:  # domain streams deny deletes; only an expired message leaves a gap
                yield parse_direct(stream, found)

    async def position(self, domain: str) -> StreamPosition:
        """How far a domain's stream goes, and which stream it is (its creation time): a stream recreated since a
        sequence was noted is told apart even once its new sequences have grown past the noted one."""
        try:
            info = await self._requests.stream_info(self._ns.stream(domain), within=self._timeout)
        except NotFoundError:
            return StreamPosition(0, "")
        return StreamPosition(int(info["state"].get("last_seq") or 0), str(info.get("created") or ""))

    async def last_sequence(self, domain: str) -> int:
        """The sequence of the newest event of a domain's stream (0 when it has none)."""
        return (await self.position(domain)).last_sequence

    async def first_sequence(self, domain: str) -> int:
        """The sequence of the oldest message a domain's stream still holds (the stream leader's answer): below it a
        missing sequence is gone for good."""
        state = await self._state(domain)
        return int(state.get("first_seq") or 0) if state is not None else 0

    async def next_after(self, domain: str, after: int) -> StoredEvent | None:
        """The first event of a domain's stream stored after sequence ``after``, or None."""
        return await self._next(domain, self._ns.domain_subjects(domain), after)

    async def _next(self, domain: str, subjects: str, after: int) -> StoredEvent | None:
        stream = self._ns.stream(domain)
        found = await self._requests.direct_get(stream, seq=after + 1, next_by_subj=subjects, within=self._timeout)
        return parse_direct(stream, found) if found is not None else None

    async def since(self, domain: str, after: int) -> list[StoredEvent]:
        """Every event of a domain's stream stored after sequence ``after``, oldest first: for a projection
        catching up. Up to date, this is one round trip that finds nothing."""
        return await self._after(domain, self._ns.domain_subjects(domain), after)

    async def history(self, domain: str, key: str, after: int = 0, *, through: int | None = None) -> list[StoredEvent]:
        """Every event of one object stored after sequence ``after``, oldest first, up to its newest: the one at
        ``through`` when the caller has just read it, else the newest asked for first (a last-by-subject read,
        which the broker answers from its subject index). Reading on from there is never a search through the rest
        of the stream for an event that is not there: a next-by-subject read that finds nothing costs the broker a
        scan of every message after ``after`` (1,060 against 180 µs of its CPU for a last-by-subject read, in a
        stream of 50,000; docs/benchmarks.md). An event stored after the newest was asked for is left to the
        next read, as if this one had come a moment earlier."""
        if through is None:
            newest = await self.last(domain, key)
            through = newest.sequence if newest is not None else 0
        return await self._after(domain, self._ns.object_filter(domain, key), after, through)

    async def _after(self, domain: str, subjects: str, after: int, through: float = float("inf")) -> list[StoredEvent]:
        """The events on ``subjects`` after ``after``, oldest first, up to the one at ``through`` (or until none is
        found: the newest gone since, a stream's age limit, finds nothing after it either)."""
        events: list[StoredEvent] = []
        while (last := events[-1].sequence if events else after) < through:
            found = await self._next(domain, subjects, last)
            if found is None:
                break
            events.append(found)
        return events
