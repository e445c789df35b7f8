"""ExceptionRouterService: each handler translates the request, runs the command or reads the book, translates back.

The rules are in decider.py; the book (store.py) answers queries; intake.py opens what a raise calls for."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import grpc

from libs.runtime.commands import Outcome
from libs.runtime.consumers import NotYet
from libs.runtime.decider import Refusal
from libs.runtime.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound, Unavailable
from libs.runtime.events import Event, EventPublisher, EventReader, WrongLastSequence
from libs.runtime.exception_reporter import DOMAIN, OBJECT_TYPE
from libs.runtime.identity import current_caller
from libs.runtime.paging import decode_page_token, encode_page_token, page_size
from libs.runtime.people import person
from libs.runtime.refusals import refusal_error
from libs.runtime.subjects import Namespace
from services.exception_router import events, mapping
from services.exception_router.decider import (
    Acknowledge,
    CaseState,
    Change,
    Command,
    RequestReplay,
    Resolve,
    decide,
)
from services.exception_router.domain import is_case_id
from services.exception_router.intake import ExceptionCommands, Intake, read_up_to
from services.exception_router.store import CaseView, ExceptionBook, case_of
from services.exception_router.summary import summarize
from syncgov.exception.v1 import events_pb2, exception_pb2, exception_service_pb2, exception_service_pb2_grpc

LISTING = "exception.exceptions"
# How long a command on an exception raised a moment ago waits for the intake to route (open) it.
ROUTING_SECONDS = 2.0
# How long an answer waits for this replica's book to fold what the command wrote (the follower trails by ms).
READ_OWN_WRITE_SECONDS = 2.0


class ExceptionRouterServicer(exception_service_pb2_grpc.ExceptionRouterServiceServicer):
    def __init__(
        self,
        commands: ExceptionCommands,
        book: ExceptionBook,
        intake: Intake,
        publisher: EventPublisher,
        reader: EventReader,
        ready: Callable[[], bool],
        namespace: Namespace,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._namespace = namespace
        self._commands = commands
        self._book = book
        self._intake = intake
        self._publisher = publisher
        self._reader = reader
        self._ready = ready
        self._clock = clock

    async def RaiseException(
        self, request: exception_service_pb2.RaiseExceptionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> exception_service_pb2.RaiseExceptionResponse:
        self._require_ready()
        system = current_caller().system
        raised = mapping.raised_from_request(request, system)
        raised.exception_id = (
            mapping.raise_id(system, request.idempotency_key) if request.idempotency_key else str(uuid.uuid4())
        )
        raised.raised_at.GetCurrentTime()
        sequence = await self._store_raise(raised, request.idempotency_key)
        try:
            outcome = await self._intake.observe(sequence, raised)
        except NotYet:  # stored; the intake consumer routes it once the book has read it
            raise _behind(sequence) from None
        view = self._book.get(case_of(raised))
        if view is None:  # observe read the book up to the raise: it is there
            raise Unavailable("the exception is not in the read model yet; retry", reason="READ_MODEL_BEHIND")
        return exception_service_pb2.RaiseExceptionResponse(exception=self._answer(view, outcome))

    async def _store_raise(self, raised: exception_pb2.Exception, idempotency_key: str) -> int:
        try:
            published = await self._publisher.publish(
                Event(
                    domain=DOMAIN,
                    object_type=OBJECT_TYPE,
                    object_key=raised.exception_id,
                    object_version=1,
                    name=events.RAISED,
                    payload=events_pb2.ExceptionRaised(exception=raised),
                    idempotency_key=f"exception:{raised.exception_id}",
                    source_system=raised.raised_by,
                    workflow_key=raised.workflow_key,
                ),
                expected_last_sequence=0,
            )
        except WrongLastSequence:  # raised before under this key: the same raise is answered, other content refused
            stored = await self._reader.last(DOMAIN, raised.exception_id)
            before = events.decode_raised(stored) if stored is not None else None
            if stored is None or before is None or not _same_raise(before, raised):
                raise AlreadyExists(
                    f"the idempotency key {idempotency_key!r} was used for another exception; choose a new key",
                    reason="IDEMPOTENCY_KEY_REUSED",
                    metadata={"idempotency_key": idempotency_key},
                ) from None
            raised.CopyFrom(before)
            return stored.sequence
        return published.sequence

    async def GetException(
        self, request: exception_service_pb2.GetExceptionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> exception_service_pb2.GetExceptionResponse:
        view = await self._view(request.exception_id)
        message = mapping.exception_of(view)
        first = await self._raise_at(view.first_sequence)
        if first is not None:
            message.detail = first.detail
            mapping.add_evidence(message, first.evidence)
        if view.original_sequence:
            carrier = first if view.original_sequence == view.first_sequence else None
            carrier = carrier or await self._raise_at(view.original_sequence)
            if carrier is not None and carrier.HasField("original_message"):
                mapping.add_original(message, carrier.original_message)
        return exception_service_pb2.GetExceptionResponse(exception=message)

    async def ListExceptions(
        self, request: exception_service_pb2.ListExceptionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> exception_service_pb2.ListExceptionsResponse:
        self._require_ready()
        wanted = mapping.list_filter(request)
        after = decode_page_token(LISTING, request.page.page_token) or 0
        size = page_size(request.page.page_size, default=50, maximum=500)
        page: list[CaseView] = []
        more = False
        for view in self._book.after(after):
            if not wanted.admits(view):
                continue
            if len(page) == size:
                more = True
                break
            page.append(view)
        response = exception_service_pb2.ListExceptionsResponse(
            exceptions=[mapping.exception_of(view) for view in page]
        )
        if more and page:
            response.page_info.next_page_token = encode_page_token(LISTING, page[-1].first_sequence)
        return response

    async def SummarizeExceptions(
        self, request: exception_service_pb2.SummarizeExceptionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> exception_service_pb2.SummarizeExceptionsResponse:
        self._require_ready()
        closed_after = request.closed_after.ToNanoseconds() if request.HasField("closed_after") else None
        return summarize(self._book.cases.values(), request.owner_team, closed_after, self._clock())

    async def AcknowledgeException(
        self, request: exception_service_pb2.AcknowledgeExceptionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> exception_service_pb2.AcknowledgeExceptionResponse:
        by = person(request.acknowledged_by, "acknowledged_by", "takes the exception")
        view = await self._view(request.exception_id)
        command = Acknowledge(by, current_caller().system, self._clock())
        outcome = await self._run(view, command)
        return exception_service_pb2.AcknowledgeExceptionResponse(exception=self._answer(view, outcome))

    async def ResolveException(
        self, request: exception_service_pb2.ResolveExceptionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> exception_service_pb2.ResolveExceptionResponse:
        kind, note = mapping.resolution(request.kind, request.resolution)
        by = person(request.resolved_by, "resolved_by", "closes the exception")
        view = await self._view(request.exception_id)
        outcome = await self._run(view, Resolve(kind, note, by, current_caller().system))
        return exception_service_pb2.ResolveExceptionResponse(exception=self._answer(view, outcome))

    async def ReplayException(
        self, request: exception_service_pb2.ReplayExceptionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> exception_service_pb2.ReplayExceptionResponse:
        reason = mapping.required_text(request.reason, "reason", "say what was fixed before the replay")
        by = person(request.replayed_by, "replayed_by", "replays the message")
        view = await self._view(request.exception_id)
        carrier = await self._raise_at(view.original_sequence) if view.original_sequence else None
        original = carrier.original_message if carrier is not None and carrier.HasField("original_message") else None
        consumer = original.consumer if original is not None else ""
        command = RequestReplay(
            by, reason, current_caller().system, consumer, original, mapping.unreplayable(original, self._namespace)
        )
        outcome = await self._run(view, command)
        return exception_service_pb2.ReplayExceptionResponse(
            exception=self._answer(view, outcome), stream_sequence=outcome.state.replay_sequence
        )

    # -- plumbing --------------------------------------------------------------------------------------------

    async def _run(self, view: CaseView, command: Command) -> Outcome[CaseState, Change]:
        if not view.state.exists:  # raised a moment ago: the intake is routing it
            view = await self._routed(view)
        result = await self._commands.run(view.case_id, functools.partial(decide, command))
        if isinstance(result, Refusal):
            raise refusal_error(result, exception_id=view.case_id)
        # Read your writes: what this replica answers next (a listing, a get) includes this transition.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READ_OWN_WRITE_SECONDS):
                await self._book.read_up_to(result.state.last_sequence)
        return result

    def _answer(self, view: CaseView, outcome: Outcome[CaseState, Change] | Refusal | None) -> exception_pb2.Exception:
        """The exception after the command: the book's counts with the command's state (the book may trail it)."""
        if isinstance(outcome, Outcome) and outcome.state.last_sequence > view.state.last_sequence:
            view = replace(view, state=outcome.state)
        return mapping.exception_of(view)

    async def _routed(self, view: CaseView) -> CaseView:
        try:
            async with asyncio.timeout(ROUTING_SECONDS):
                return await self._book.opened(view.case_id)
        except TimeoutError:
            raise Unavailable(
                f"exception {view.case_id} was raised but is not routed yet; retry shortly", reason="ROUTING"
            ) from None

    async def _view(self, exception_id: str) -> CaseView:
        """The exception ``exception_id`` names: an exception's own id, or the id of any raise folded into it (what a
        service answered its caller)."""
        self._require_ready()
        if not exception_id.strip():
            raise InvalidArgument(
                "exception_id is required",
                violations=[FieldViolation("exception_id", "is required")],
                reason="EXCEPTION_ID_REQUIRED",
            )
        key = exception_id
        if not is_case_id(exception_id):
            stored = await self._reader.last(DOMAIN, exception_id)
            raised = events.decode_raised(stored) if stored is not None else None
            if stored is None or raised is None:
                raise _not_found(exception_id)
            try:
                await read_up_to(self._book, stored.sequence, READ_OWN_WRITE_SECONDS)
            except NotYet:
                raise _behind(stored.sequence) from None
            key = case_of(raised)
        view = self._book.get(key)
        if view is None:
            raise _not_found(exception_id)
        return view

    async def _raise_at(self, sequence: int) -> exception_pb2.Exception | None:
        if not sequence:
            return None
        return events.decode_raised(await self._reader.at(DOMAIN, sequence))

    def _require_ready(self) -> None:
        if not self._ready():
            raise Unavailable("the exception book is still reading the stream; retry shortly", reason="STARTING")


def _same_raise(before: exception_pb2.Exception, now: exception_pb2.Exception) -> bool:
    first, second = exception_pb2.Exception(), exception_pb2.Exception()
    first.CopyFrom(before)
    second.CopyFrom(now)
    for message in (first, second):
        message.ClearField("raised_at")
    return first.SerializeToString(deterministic=True) == second.SerializeToString(deterministic=True)


def _behind(sequence: int) -> Unavailable:
    return Unavailable(
        f"the exception book has not read the stream up to sequence {sequence} yet; retry shortly",
        reason="READ_MODEL_BEHIND",
    )


def _not_found(exception_id: str) -> NotFound:
    return NotFound(
        f"no exception {exception_id!r}", reason="EXCEPTION_NOT_FOUND", metadata={"exception_id": exception_id}
    )
