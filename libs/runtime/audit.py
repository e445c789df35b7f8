"""The audit trail on JetStream: records from every service, one chain written by the control plane.

* :class:`AuditRecorder` — any service records a refusal, override or replay by
  publishing an :class:`AuditEntry` (in the usual envelope) to the audit inbox,
  ``<ns>.auditin.<object>.<action>``.
* :class:`AuditChain` — the control plane seals entries into the AUDIT stream
  (deny delete, deny purge), one subject per object
  (``<ns>.audit.<object>.entry``). Appends are serialized by
  ``Nats-Expected-Last-Sequence`` on the whole stream, so concurrent chainers
  cannot fork the chain; ``Nats-Msg-Id`` = the entry's source, so a redelivered
  record is chained once.
* Writes need no record: every write is an event, and the control plane chains
  the domain streams' events as they arrive (``entry_from_event``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator

from google.protobuf import json_format
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import BadRequestError, NotFoundError
from opentelemetry import trace
from opentelemetry.metrics import Meter

from libs.audit.chain import GENESIS, sealed, tail_after
from libs.policy.catalog import message_descriptor
from libs.runtime.commands import Appended, CommandHandler, Entry
from libs.runtime.decider import Recorded, Refusal
from libs.runtime.events import (
    CONTENT_TYPE,
    HEADER_EVENT_TYPE,
    HEADER_MSG_ID,
    JS_ERR_WRONG_LAST_SEQUENCE,
    Event,
    EventPublisher,
    StoredEvent,
    WrongLastSequence,
    now_timestamp,
)
from libs.runtime.exception_reporter import ExceptionReporter
from libs.runtime.subjects import Namespace, header_value
from libs.runtime.telemetry import inject_context
from syncgov.common.v1 import types_pb2
from syncgov.controlplane.v1 import controlplane_pb2
from syncgov.exception.v1 import events_pb2, exception_pb2

log = logging.getLogger(__name__)
INBOX_DOMAIN = "auditin"
CHAIN_DOMAIN = "audit"
HEADER_EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
_ENTRY_TYPE = controlplane_pb2.AuditEntry.DESCRIPTOR.full_name


AUDIT_KEY_DIGEST_ABOVE = 160  # characters of object key; longer keys are named by their digest


def audit_key(object_type: str, object_key: str) -> str:
    """The audit subject token for an object. Every key the edge accepts is auditable: a key too long to sit
    in a subject beside its type is named by its SHA-256 (the entries still carry the key itself)."""
    if len(object_key) <= AUDIT_KEY_DIGEST_ABOVE and len(object_type) <= 64:
        return f"{object_type}/{object_key}"
    return f"{object_type[:64]}/sha256-{hashlib.sha256(object_key.encode()).hexdigest()}"


def current_trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


# What the runtime audits (a refused write, a policy change): the failure counter's series start at 0 for each.
AUDITED_ACTIONS = ("refusal", "policy_change")


class AuditRecorder:
    """Hands audit records (refusals, policy changes) to the control plane's inbox. A record that cannot be
    stored is never only a log line: it counts in ``syncgov.audit.failures`` and raises ``audit_failed``."""

    def __init__(
        self, publisher: EventPublisher, exceptions: ExceptionReporter | None = None, meter: Meter | None = None
    ) -> None:
        self._publisher = publisher
        self._exceptions = exceptions
        self._failures = (
            meter.create_counter(
                "syncgov.audit.failures", unit="{record}", description="Audit records that could not be stored."
            )
            if meter is not None
            else None
        )
        if self._failures is not None:  # the series exist at 0 from the start
            for action in AUDITED_ACTIONS:
                self._failures.add(0, {"action": action})

    async def record(
        self,
        *,
        actor: str,
        action: str,
        object_ref: types_pb2.ObjectRef,
        outcome: str,
        reason: str,
        policy_revision: int,
    ) -> bool:
        """Store the record; False (after counting it and raising ``audit_failed``) when it could not be."""
        entry = controlplane_pb2.AuditEntry(
            actor=actor,
            action=action,
            object=object_ref,
            outcome=outcome,
            reason=reason,
            policy_revision=policy_revision,
            trace_id=current_trace_id(),
        )
        entry.recorded_at.CopyFrom(now_timestamp())
        record_id = str(uuid.uuid4())
        try:
            await self._publisher.publish(
                Event(
                    domain=INBOX_DOMAIN,
                    object_type=object_ref.object_type,
                    object_key=audit_key(object_ref.object_type, object_ref.object_key),
                    object_version=object_ref.version,
                    name=action,
                    payload=entry,
                    idempotency_key=f"audit-record:{record_id}",
                    source_system=actor,
                    policy_revision=policy_revision,
                )
            )
        except Exception as error:
            await self._failed(entry, error)
            return False
        return True

    async def _failed(self, entry: controlplane_pb2.AuditEntry, error: Exception) -> None:
        if self._failures is not None:
            self._failures.add(1, {"action": entry.action})
        log.error("could not store the audit record of %s %s: %s", entry.action, entry.object.object_key[:80], error)
        if self._exceptions is None:
            return
        try:
            await self._exceptions.raise_exception(
                exception_pb2.EXCEPTION_TYPE_AUDIT_FAILED,
                exception_pb2.SEVERITY_CRITICAL,
                entry.object,
                f"the audit record of {entry.action} by {entry.actor} could not be stored: {error}",
                evidence=[json_format.MessageToJson(entry, indent=None)],
                policy_revision=entry.policy_revision,
            )
        except Exception as second:  # the broker refuses both: the counter above is what remains
            log.error("could not raise audit_failed either: %s", second)


def entry_from_event(event: StoredEvent) -> controlplane_pb2.AuditEntry:
    """The audit entry for one domain event (a write), or the inbox record as it was recorded."""
    envelope = event.envelope
    source = f"{event.stream}:{event.sequence}"
    if envelope.payload.Is(message_descriptor(controlplane_pb2.AuditEntry)):
        entry = event.unpack(controlplane_pb2.AuditEntry)
        entry.source = source
        return entry
    traceparent = event.headers.get("traceparent", "")
    actor, action, reason = envelope.source_system, "write", envelope.event_type
    if envelope.payload.Is(message_descriptor(events_pb2.ExceptionStateChanged)):
        # An exception's transition: the person (or the router, or the consumer that processed a replay) and why.
        change = event.unpack(events_pb2.ExceptionStateChanged)
        name = event.subject.rsplit(".", 1)[-1]
        actor = f"{change.actor} via {change.through}" if change.actor and change.through else change.actor or actor
        action, reason = f"exception_{name}", change.reason or name
    entry = controlplane_pb2.AuditEntry(
        actor=actor,
        action=action,
        object=types_pb2.ObjectRef(
            object_type=envelope.object_type, object_key=envelope.object_key, version=envelope.object_version
        ),
        outcome="allowed",
        reason=reason,
        policy_revision=envelope.policy_revision,
        trace_id=traceparent.split("-")[1] if traceparent.count("-") >= 3 else "",
        source=source,
    )
    entry.recorded_at.CopyFrom(envelope.recorded_at)
    return entry


def _stored_entry(stream: str, raw: RawStreamMsg) -> controlplane_pb2.AuditEntry:
    """A chain entry as the stream holds it, with its sequence in the chain."""
    if raw.seq is None:
        raise ValueError(f"{stream}: a stored message without a sequence")
    entry = controlplane_pb2.AuditEntry.FromString(raw.data or b"")
    entry.sequence = raw.seq
    return entry


CHAIN_KEY = "chain"  # the chain is one object: its tail is its state


class ChainLog:
    """The audit chain as the command handler's log: one object whose history's last entry is all its state
    needs, appended under the stream-wide expected last sequence (entries of every object interleave)."""

    def __init__(self, js: JetStreamContext, namespace: Namespace, timeout: float) -> None:
        self._js = js
        self._ns = namespace
        self._stream = namespace.stream(CHAIN_DOMAIN)
        self._timeout = timeout

    async def read(self, key: str, after: int) -> list[Entry[controlplane_pb2.AuditEntry]]:
        info = await self._js.stream_info(self._stream)
        last = info.state.last_seq
        if last <= after:
            return []
        if info.state.messages == 0:
            return [Entry(last, None)]
        entry = _stored_entry(self._stream, await self._js.get_msg(self._stream, last))
        return [Entry(last, Recorded(entry, last, "", 0, entry.source, entry.actor))]

    async def append(
        self, key: str, entry: controlplane_pb2.AuditEntry, expected_last_sequence: int
    ) -> Appended[controlplane_pb2.AuditEntry]:
        headers = {
            HEADER_MSG_ID: header_value(f"audit:{entry.source}"),
            HEADER_EXPECTED_LAST_SEQUENCE: str(expected_last_sequence),
            HEADER_EVENT_TYPE: _ENTRY_TYPE,
            "Content-Type": CONTENT_TYPE,
        }
        inject_context(headers)  # the chaining consumer's span: an entry leads back to the write it records
        subject = self._ns.object_subject(
            CHAIN_DOMAIN, audit_key(entry.object.object_type, entry.object.object_key), "entry"
        )
        try:
            ack = await self._js.publish(
                subject, entry.SerializeToString(), timeout=self._timeout, stream=self._stream, headers=headers
            )
        except BadRequestError as error:
            if error.err_code == JS_ERR_WRONG_LAST_SEQUENCE:
                raise WrongLastSequence(error.description or "wrong last sequence") from error
            raise
        if ack.duplicate:  # chained already (a redelivery of the same source)
            stored = _stored_entry(self._stream, await self._js.get_msg(self._stream, ack.seq))
            return Appended(Recorded(stored, ack.seq, "", 0, stored.source, stored.actor), duplicate=True)
        return Appended(Recorded(entry, ack.seq, "", 0, entry.source, entry.actor))


class AuditChain:
    def __init__(self, js: JetStreamContext, namespace: Namespace, timeout: float = 5.0) -> None:
        self._js = js
        self._ns = namespace
        self._stream = namespace.stream(CHAIN_DOMAIN)
        # Appends run through the one command loop: decide = seal onto the tail, the guard = the stream's
        # expected last sequence; another writer (a second control plane) makes it read the tail and seal again.
        self._commands: CommandHandler[str, controlplane_pb2.AuditEntry] = CommandHandler(
            ChainLog(js, namespace, timeout),
            initial=GENESIS,
            evolve=lambda tail, recorded: tail_after(tail, recorded.event),
            size_of=lambda _tail: 128,
            attempts=20,
            name="audit chain",
        )

    async def tail(self) -> tuple[int, str]:
        """(last sequence, last entry hash) of the chain, (0, GENESIS) when it is empty."""
        info = await self._js.stream_info(self._stream)
        if info.state.messages == 0:
            return info.state.last_seq, GENESIS
        last = _stored_entry(self._stream, await self._js.get_msg(self._stream, info.state.last_seq))
        return last.sequence, last.entry_hash

    async def append(self, entry: controlplane_pb2.AuditEntry) -> None:
        """Seal the entry onto the chain; safe to call again for the same source (it is chained once)."""
        result = await self._commands.run(CHAIN_KEY, lambda tail: sealed(entry, tail))
        assert not isinstance(result, Refusal), "sealing is never refused"

    async def entries(self, start: int = 1) -> AsyncIterator[controlplane_pb2.AuditEntry]:
        """Every entry from ``start`` on, in chain order, each with its sequence."""
        info = await self._js.stream_info(self._stream)
        for sequence in range(max(start, info.state.first_seq or 1), info.state.last_seq + 1):
            with contextlib.suppress(NotFoundError):
                yield _stored_entry(self._stream, await self._js.get_msg(self._stream, sequence))

    async def for_object(self, object_type: str, object_key: str) -> list[controlplane_pb2.AuditEntry]:
        subject = self._ns.object_filter(CHAIN_DOMAIN, audit_key(object_type, object_key))
        found: list[controlplane_pb2.AuditEntry] = []
        sequence = 1
        while True:
            try:
                raw = await self._js.get_msg(self._stream, sequence, subject=subject, next=True)
            except NotFoundError:
                return found
            entry = _stored_entry(self._stream, raw)
            found.append(entry)
            sequence = entry.sequence + 1
