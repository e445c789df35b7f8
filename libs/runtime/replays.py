"""Replays: a message a consumer gave up on, delivered to it again once a person fixed the cause (issue 12).

The exception router records a replay request as an event on the exception's subject
(``<ns>.exception.<id>.replay_requested``) carrying the original message: subject, headers, bytes, stream
position and the consumer that gave up. Every service with consumers runs one more durable consumer,
``<service>-replays``, of those requests; the one whose consumer is named hands the original message, exactly as
first delivered, to that consumer's handler, then records ``replayed`` on the exception's subject (which closes
it). The domain stream is never written again: a second copy of a PO version or a receipt would be a second
event in the object's history.

Exactly once: the router records one request however often replay is pressed; a request redelivered after it
was processed (the process died before its ack) finds its ``replayed`` on the exception's subject and is skipped,
and so is a request the exception no longer waits for (resolved or reopened since). What remains is a process
killed (or a ``replayed`` record the broker refused) between the handler's success and that record, or a handler
that outlives the ack wait while a second replica takes the request: the handler runs again, and handlers are
idempotent by design (version-aware, idempotent writes). A replay that fails as often as the policy allows is
handed off as the original message's own ``delivery_exhausted``, so it reopens the same exception.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from nats.aio.msg import Msg
from opentelemetry import trace

from libs.runtime.consumers import ConsumerSpec, message_ref
from libs.runtime.events import Event, EventPublisher, EventReader, StoredEvent, parse_stored
from syncgov.common.v1 import envelope_pb2, types_pb2
from syncgov.exception.v1 import events_pb2, exception_pb2

log = logging.getLogger(__name__)

DOMAIN = "exception"
REQUESTED = "replay_requested"
REPLAYED = "replayed"
# What ends a request's wait, besides its own ``replayed``: a person closed the exception, or it reopened.
_ENDS_WAIT = frozenset({"resolved", "reopened", REPLAYED})
HEADER_REPLAY = "Syncgov-Replay"  # on the message a handler sees: "<exception id>:<request sequence>"


class ReplayDispatcher:
    def __init__(self, consumers: Mapping[str, ConsumerSpec], publisher: EventPublisher, reader: EventReader) -> None:
        self._consumers = consumers  # durable name -> spec
        self._publisher = publisher
        self._reader = reader

    async def handle(self, stored: StoredEvent) -> None:
        request = stored.unpack(events_pb2.ExceptionStateChanged)
        original = request.replay
        spec = self._consumers.get(original.consumer)
        if spec is None:
            return  # another service's consumer: its own dispatcher delivers it
        exception_id = request.exception_id
        if not await self._still_waiting(exception_id, stored.sequence):
            log.info("replay %s of %s was processed or withdrawn already; skipped", stored.sequence, exception_id)
            return
        headers = {**original.headers, HEADER_REPLAY: f"{exception_id}:{stored.sequence}"}
        if spec.raw:  # not an event (a JetStream advisory): handed over as bytes, like its first delivery
            event = StoredEvent(
                original.stream,
                original.stream_sequence,
                original.subject,
                headers,
                original.data,
                envelope_pb2.EventEnvelope(),
            )
        else:
            event = parse_stored(original.stream, original.stream_sequence, original.subject, headers, original.data)
        span = trace.get_current_span()
        span.set_attribute("syncgov.replay.exception_id", exception_id)
        span.set_attribute("syncgov.replay.subject", original.subject)
        await spec.handler(event)  # a failure is retried, and at the end handed off as the original's
        await self._publisher.publish(
            Event(
                domain=DOMAIN,
                object_type="exception",
                object_key=exception_id,
                object_version=0,
                name=REPLAYED,
                payload=events_pb2.ExceptionStateChanged(
                    exception_id=exception_id,
                    previous_state=request.state or exception_pb2.EXCEPTION_STATE_OPEN,
                    state=exception_pb2.EXCEPTION_STATE_REPLAYED,
                    transition=events_pb2.TRANSITION_REPLAYED,
                    actor=original.consumer,
                    reason=f"{original.consumer} processed the replayed {original.subject}",
                    cause_sequence=stored.sequence,
                ),
                idempotency_key=f"exception:{exception_id}:replayed:{stored.sequence}",
                source_system="syncgov",
            )
        )
        log.info("replayed %s to %s for exception %s", original.subject, original.consumer, exception_id)

    async def _still_waiting(self, exception_id: str, request_sequence: int) -> bool:
        for later in await self._reader.history(DOMAIN, exception_id, after=request_sequence):
            if later.subject.rsplit(".", 1)[-1] in _ENDS_WAIT:
                return False
        return True


def replayed_original(
    message: Msg, delivered: int, last_error: str
) -> tuple[exception_pb2.OriginalMessage, types_pb2.ObjectRef, str]:
    """A replay that failed to the end is handed off as its original message (the same exception, reopened)."""
    request = events_pb2.ExceptionStateChanged()
    request.ParseFromString(_payload(message))
    original = exception_pb2.OriginalMessage()
    original.CopyFrom(request.replay)
    original.deliveries = delivered
    original.last_error = f"replay failed: {last_error}"[:2000]
    return original, message_ref(original.stream, original.stream_sequence), original.consumer


def _payload(message: Msg) -> bytes:
    metadata = message.metadata
    stored = parse_stored(metadata.stream, metadata.sequence.stream, message.subject, message.headers, message.data)
    return stored.envelope.payload.value


def replay_consumer(service_name: str, dispatcher: ReplayDispatcher) -> ConsumerSpec:
    return ConsumerSpec(
        f"{service_name}-replays",
        DOMAIN,
        f"{DOMAIN}.*.{REQUESTED}",
        dispatcher.handle,
        hand_off=replayed_original,
    )
