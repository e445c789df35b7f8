"""Intake: every raise reaches an exception, and every message JetStream gave up on becomes a raise.

``Intake.on_event`` is the handler of a durable consumer of ``<ns>.exception.*.raised`` (what every service's
ExceptionReporter publishes, ``delivery_exhausted`` hand-offs included) and ``<ns>.exception.*.cleared`` (a
component saying, on its own subject ``<ns>.exception.<component>.cleared``, that what it raised no longer holds:
the exception is resolved, kind CLEARED, unless it was raised again since; only the component that raised an
exception may clear it). Once the book has read the stream up to
the raise, a repeat of an open exception needs nothing written (the book counts it); a first raise opens its
exception, routed by the policy in force, and a raise after the exception was closed reopens it — through the
command handler, so two replicas deciding at once write one transition.

``Advisories.on_advisory`` reads JetStream's max-deliveries advisories (kept in the ADVISORY stream): a consumer
that hit its delivery limit without handing the message off (a foreign consumer, or one of ours killed on every
delivery) still leaves a ``delivery_exhausted`` raise with the message's subject, headers and bytes read back from
its stream. Its id derives from the advisory, so the advisory redelivered raises it once; its fingerprint is the
one a hand-off by the same consumer would carry, so both fold into one exception.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from libs.policy.engine import Policy
from libs.runtime.commands import CommandHandler, Outcome
from libs.runtime.consumers import NotYet, message_ref
from libs.runtime.decider import Refusal
from libs.runtime.events import StoredEvent
from libs.runtime.exception_reporter import ExceptionReporter
from libs.runtime.subjects import Namespace
from services.exception_router import events
from services.exception_router.decider import CaseState, Change, Clear, Observe, decide
from services.exception_router.domain import route_for
from services.exception_router.store import ExceptionBook, case_of
from syncgov.exception.v1 import events_pb2, exception_pb2

log = logging.getLogger(__name__)

ExceptionCommands = CommandHandler[CaseState, Change]
# How long a decision waits for the book to read the stream up to its raise before the message comes back.
READ_UP_TO_SECONDS = 10.0


class Intake:
    def __init__(
        self,
        commands: ExceptionCommands,
        book: ExceptionBook,
        policy: Callable[[], Policy],
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._commands = commands
        self._book = book
        self._policy = policy
        self._clock = clock

    async def on_event(self, stored: StoredEvent) -> None:
        """The intake consumer's handler: raises and clearings. It never hands one off: its hand-off would be a
        raise on the subjects it consumes, failing the same way while the cause lasts (a book behind, a broker
        refusing writes), one nested exception per delivery limit. Every failure is NotYet: the message comes back
        with the policy's backoff until it is taken (the server's backstop and its advisory still catch one that
        can never be)."""
        try:
            raised = events.decode_raised(stored)
            if raised is not None:
                await self.observe(stored.sequence, raised)
                return
            cleared = events.decode_cleared(stored)
            if cleared is not None:
                # The subject names who cleared (<ns>.exception.<component>.cleared: the broker lets each component
                # publish on its own alone), not the message.
                await self.clear(stored.sequence, stored.subject.split(".")[-2], cleared)
        except NotYet:
            raise
        except Exception as error:
            raise NotYet(f"{stored.subject} ({stored.sequence}) not taken yet: {error!r}") from error

    async def clear(
        self, cleared_sequence: int, clearer: str, cleared: events_pb2.ExceptionCleared
    ) -> Outcome[CaseState, Change] | Refusal | None:
        """Resolve the exception a clearing names, if the component that raised it is the one clearing it."""
        await read_up_to(self._book, cleared_sequence)
        key = case_of(cleared.exception)
        view = self._book.get(key)
        if view is None:
            log.warning("%s cleared %s, which was never raised; nothing to close", cleared.exception.raised_by, key)
            return None
        # The component that raised the exception is the one that knows when its condition ends.
        if clearer != view.raised_by:
            log.error("%s may not clear exception %s, raised by %s; ignored", clearer, key, view.raised_by)
            return None
        if cleared.raise_id and cleared.raise_id != view.last_raised_id:
            # It ends a raise that is not the newest: raised again since (or the clearing came late), it stands.
            log.info("clearing of %s ends raise %s, not its newest; overtaken", key, cleared.raise_id)
            return None
        if not view.state.exists:
            # Raised, not opened yet (the intake takes raises and clearings at once): back once it is.
            raise NotYet(f"exception {key} is not opened yet; its clearing waits")
        command = Clear(cleared_sequence, clearer, cleared.reason, view.last_raised_sequence)
        return await self._commands.run(key, functools.partial(decide, command))

    async def observe(
        self, raised_sequence: int, raised: exception_pb2.Exception
    ) -> Outcome[CaseState, Change] | Refusal | None:
        """Open or reopen the exception ``raised`` folds into, when the raise calls for it; None: a repeat."""
        await read_up_to(self._book, raised_sequence)
        key = case_of(raised)
        view = self._book.get(key)
        # Only a consumer's hand-off (it carries the message) says a pending replay failed.
        exhausted = raised.type == exception_pb2.EXCEPTION_TYPE_DELIVERY_EXHAUSTED and raised.HasField(
            "original_message"
        )
        if not self._book.needs_decision(view, raised_sequence, exhausted):
            return None
        type_name = events.type_name(raised.type)
        route = route_for(
            self._policy(), type_name, events.severity_name(raised.severity), raised.site_id, raised.business_unit
        )
        command = Observe(raised_sequence, type_name, route, self._clock(), exhausted)
        assume_new = view is None or not view.state.exists
        return await self._commands.run(key, functools.partial(decide, command), assume_new=assume_new)


async def read_up_to(book: ExceptionBook, sequence: int, seconds: float = READ_UP_TO_SECONDS) -> None:
    """Wait until the book has read the stream up to ``sequence``; NotYet (the message comes back later, it is not a
    failure of the message) when it has not within ``seconds``."""
    if book.read_through >= sequence:
        return  # nearly always: the follower is ahead of the durable consumer
    try:
        async with asyncio.timeout(seconds):
            await book.read_up_to(sequence)
    except TimeoutError:
        raise NotYet(f"the exception stream is read up to {book.read_through}, not yet {sequence}") from None


class Advisories:
    def __init__(self, js: JetStreamContext, namespace: Namespace, reporter: ExceptionReporter) -> None:
        self._js = js
        self._ns = namespace
        self._reporter = reporter
        self._prefix = f"{namespace.root.upper()}_"

    async def on_advisory(self, stored: StoredEvent) -> None:
        try:
            advisory = json.loads(stored.data)
            stream, consumer = str(advisory["stream"]), str(advisory["consumer"])
            sequence, deliveries = int(advisory["stream_seq"]), int(advisory.get("deliveries", 0))
        except (ValueError, KeyError, TypeError) as error:
            log.error("advisory %s is not a max-deliveries advisory (%s); ignored", stored.sequence, error)
            return
        if not stream.startswith(self._prefix):
            return
        original = exception_pb2.OriginalMessage(
            stream=stream,
            stream_sequence=sequence,
            consumer=consumer,
            deliveries=deliveries,
            last_error="JetStream reached the consumer's delivery limit; the consumer never handed the message off",
        )
        try:
            message = await self._js.get_msg(stream, sequence, direct=True)
        except NotFoundError:
            # Where it was and who gave up, without subject or bytes: a replay is refused, never an empty event.
            original.last_error += "; the message is no longer in its stream, so it cannot be replayed"
        else:
            original.subject = message.subject or ""
            original.headers.update(message.headers or {})
            original.data = message.data or b""
        # One raise per advisory (its place in the advisory stream): a redelivered advisory raises once, the same
        # message exhausted again (a consumer reset) raises again and reopens a closed exception.
        digest = hashlib.sha256(f"{stored.stream}\x1f{stored.sequence}".encode()).hexdigest()
        subject = original.subject or f"{stream}:{sequence}"
        await self._reporter.raise_exception(
            exception_pb2.EXCEPTION_TYPE_DELIVERY_EXHAUSTED,
            exception_pb2.SEVERITY_HIGH,
            message_ref(stream, sequence),
            f"{consumer} reached its delivery limit on {subject} after {deliveries} deliveries without handing it off",
            original_message=original,
            discriminator=consumer,
            exception_id=f"advisory-{digest[:32]}",
        )
