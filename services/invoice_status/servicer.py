"""InvoiceStatusService: each handler translates the request, runs the command, translates the result.

The rules are in decider.py (decide/evolve) and matching.py (the three-way match, pure); the facts the match
reads come from the streams (facts.py); the loop around them is libs/runtime/commands.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
from google.protobuf import json_format
from opentelemetry import trace
from redis.exceptions import RedisError

from libs.policy.engine import Policy
from libs.runtime import attributes
from libs.runtime.commands import Claim, Outcome
from libs.runtime.decider import Refusal
from libs.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, Unavailable
from libs.runtime.events import content_sha256
from libs.runtime.exception_reporter import ExceptionReporter
from libs.runtime.identity import current_caller
from libs.runtime.paging import decode_page_cursor, encode_page_cursor, page_size
from libs.runtime.refusals import refused
from libs.runtime.subjects import MAX_KEY_CHARS
from services.invoice_status import decider, mapping
from services.invoice_status.decider import InvoiceEvent, InvoiceState, InvoiceStatus
from services.invoice_status.domain import (
    OBJECT_TYPE,
    tolerances_in_force,
)
from services.invoice_status.facts import InvoiceLedger, Matcher, SupplierStates
from services.invoice_status.findings import BlockingExceptions
from services.invoice_status.store import (
    BlockedInvoices,
    InvoiceCommands,
    ReadModelRebuilding,
    member_of,
    valid_member,
)
from syncgov.common.v1 import types_pb2
from syncgov.invoice.v1 import invoice_pb2, invoice_service_pb2, invoice_service_pb2_grpc

log = logging.getLogger(__name__)

REPLAY_METADATA = (("syncgov-idempotent-replay", "true"),)
BLOCKED_LISTING = "invoice.blocked"
# A listing page's statuses stop growing past this (at least one is listed; an invoice at the line bound is ~3 MB):
# gRPC refuses a response over 4 MiB, and every status carries its whole invoice.
LISTING_BYTES = 2 * 1024 * 1024


class InvoiceServicer(invoice_service_pb2_grpc.InvoiceStatusServiceServicer):
    def __init__(
        self,
        commands: InvoiceCommands,
        matcher: Matcher,
        suppliers: SupplierStates,
        ledger: InvoiceLedger,
        blocked: BlockedInvoices,
        ready: Callable[[], bool],
        exceptions: ExceptionReporter,
        blocking: BlockingExceptions,
        policy: Callable[[], Policy],
        submitted_here: Callable[[str, int], None],
    ) -> None:
        # Told when a submission's request has raised its block: what follows the append is settled (settlement.py).
        self._submitted_here = submitted_here
        self._commands = commands
        self._matcher = matcher
        self._suppliers = suppliers
        self._ledger = ledger
        self._blocked = blocked
        self._ready = ready
        self._exceptions = exceptions
        self._blocking = blocking
        self._policy = policy

    async def SubmitInvoice(
        self, request: invoice_service_pb2.SubmitInvoiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> invoice_service_pb2.SubmitInvoiceResponse:
        caller = current_caller().system
        policy = self._policy()
        document = request.invoice
        invoice = mapping.valid_invoice(document)
        problem = self._suppliers.problem(invoice.supplier_id)
        # A retry of an invoice recorded before its supplier was blocked (or merged) is a replay, not a refusal that
        # would tell its sender nothing was recorded: the stream is asked before refusing.
        if problem is not None and not (await self._commands.state(invoice.invoice_id)).exists:
            _refuse_supplier(invoice.supplier_id, problem)
        if not self._ready():
            raise Unavailable(
                "the invoices recorded so far are still being read from the stream; retry shortly",
                reason="READ_MODEL_REBUILDING",
            )
        fingerprint = content_sha256(document)
        # The invoice id is the broker's message id whatever key the caller chose: a number the supplier reused is
        # the match's duplicate_invoice, never a message the broker drops.
        key = f"{caller}:{OBJECT_TYPE}:{invoice.invoice_id}"
        trace.get_current_span().set_attributes(
            {
                attributes.WORKFLOW_KEY: invoice.lines[0].po_id if invoice.lines else "",
                attributes.IDEMPOTENCY_KEY: request.idempotency_key or key,
            }
        )
        tolerances = tolerances_in_force(policy)
        match, versions = await self._matcher.match(invoice, tolerances, policy.revision)
        command = decider.SubmitInvoice(invoice, fingerprint, key, match, versions, document)
        claim = Claim(f"{caller}:{request.idempotency_key}", fingerprint) if request.idempotency_key else None
        result = await self._commands.run(
            invoice.invoice_id, lambda state: decider.decide(command, state), assume_new=True, claim=claim
        )
        outcome = await self._outcome(invoice.invoice_id, result, context)
        await self._raise_blocking(invoice.invoice_id, outcome)
        # A replay settles again what follows the submission: the request that appended it may have died first.
        submission = (
            outcome.state.sequence if not outcome.replayed else self._ledger.first_sequence.get(invoice.invoice_id)
        )
        if submission:
            self._submitted_here(invoice.invoice_id, submission)
        return _with_status(invoice_service_pb2.SubmitInvoiceResponse(), outcome.state)

    async def GetInvoice(
        self, request: invoice_service_pb2.GetInvoiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> invoice_service_pb2.GetInvoiceResponse:
        state = await self._existing(request.invoice_id)
        return _with_status(invoice_service_pb2.GetInvoiceResponse(), state)

    async def ListBlockedInvoices(
        self, request: invoice_service_pb2.ListBlockedInvoicesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> invoice_service_pb2.ListBlockedInvoicesResponse:
        """Oldest blocked first, from the Valkey read model; each invoice's status from the ledger (or the stream,
        when the ledger has not followed the entry's event yet), left out if it is no longer blocked."""
        where = mapping.blocked_filter(request)
        size = page_size(request.page.page_size)
        after = decode_page_cursor(BLOCKED_LISTING, request.page.page_token)
        if after is not None and not valid_member(after):
            message = "page_token is not a page token this server issued"
            raise InvalidArgument(
                message, violations=[FieldViolation("page.page_token", message)], reason="INVALID_PAGE_TOKEN"
            )
        try:
            listed, following = await self._blocked.page(after, size, where)
        except ReadModelRebuilding as rebuilding:
            raise Unavailable(str(rebuilding), reason="READ_MODEL_REBUILDING") from None
        except RedisError as error:
            raise Unavailable(
                f"the list of blocked invoices could not be read ({type(error).__name__}); retry",
                reason="STORE_UNAVAILABLE",
            ) from None
        statuses: list[invoice_pb2.InvoiceStatus] = []
        listed_bytes = 0
        previous = after  # the member of the last status listed
        for entry in listed:
            state = self._ledger.state_of(entry.invoice_id)
            if state.sequence < entry.sequence:  # another replica's append the ledger has not followed yet
                state = await self._commands.state(entry.invoice_id)
            if state.status is not InvoiceStatus.BLOCKED:
                continue
            status = mapping.status_message(state)
            listed_bytes += status.ByteSize()
            if statuses and listed_bytes > LISTING_BYTES:  # a page of large invoices ends early, the next starts here
                following = previous
                break
            statuses.append(status)
            previous = member_of(entry.blocked_at_ns, entry.invoice_id)
        token = encode_page_cursor(BLOCKED_LISTING, following) if following else ""
        return invoice_service_pb2.ListBlockedInvoicesResponse(
            statuses=statuses, page_info=types_pb2.PageInfo(next_page_token=token)
        )

    async def ReleaseInvoice(
        self, request: invoice_service_pb2.ReleaseInvoiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> invoice_service_pb2.ReleaseInvoiceResponse:
        """The person releasing is ``released_by``; the calling system is recorded as ``released_through``."""
        invoice_id = _invoice_id(request.invoice_id)
        person = mapping.released_by(request.released_by)
        command = decider.Release(invoice_id, person, request.reason.strip(), current_caller().system)
        result = await self._commands.run(invoice_id, lambda state: decider.decide(command, state))
        outcome = await self._outcome(invoice_id, result, context)
        return _with_status(invoice_service_pb2.ReleaseInvoiceResponse(), outcome.state)

    async def DisputeInvoice(
        self, request: invoice_service_pb2.DisputeInvoiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> invoice_service_pb2.DisputeInvoiceResponse:
        invoice_id = _invoice_id(request.invoice_id)
        command = decider.Dispute(invoice_id, request.reason.strip())
        result = await self._commands.run(invoice_id, lambda state: decider.decide(command, state))
        outcome = await self._outcome(invoice_id, result, context)
        return _with_status(invoice_service_pb2.DisputeInvoiceResponse(), outcome.state)

    async def RecordInvoicePayment(
        self, request: invoice_service_pb2.RecordInvoicePaymentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> invoice_service_pb2.RecordInvoicePaymentResponse:
        """The ERP paying a matched or released invoice approves it for payment first (one event each); the
        payment is for the invoice's gross amount, dated today (a retry keeps the date recorded)."""
        invoice_id = _invoice_id(request.invoice_id)
        caller = current_caller().system
        state = await self._existing(invoice_id)
        command = _payment(invoice_id, request.payment_reference.strip(), state)
        approve = decider.Approve(invoice_id, caller)
        refusal = decider.payment_refused(approve, command, state)
        if refusal is not None:  # refused before the approval is appended: a refused payment leaves nothing behind
            await self._outcome(invoice_id, refusal, context)
        if state.status in decider.APPROVABLE:
            approved = await self._commands.run(invoice_id, lambda current: decider.decide(approve, current))
            state = (await self._outcome(invoice_id, approved, None)).state
            command = _payment(invoice_id, command.payment_reference, state)
        result = await self._commands.run(invoice_id, lambda current: decider.decide(command, current))
        outcome = await self._outcome(invoice_id, result, context)
        return _with_status(invoice_service_pb2.RecordInvoicePaymentResponse(), outcome.state)

    async def _outcome(
        self,
        invoice_id: str,
        result: Outcome[InvoiceState, InvoiceEvent] | Refusal,
        context: grpc.aio.ServicerContext[Any, Any] | None,
    ) -> Outcome[InvoiceState, InvoiceEvent]:
        if isinstance(result, Refusal):
            raise await refused(
                result,
                exceptions=self._exceptions,
                object_ref=types_pb2.ObjectRef(object_type=OBJECT_TYPE, object_key=invoice_id),
                render=_render,
                workflow_key=self._workflow_key(invoice_id),
                policy_revision=self._policy().revision,
            )
        if result.replayed and context is not None:
            await context.send_initial_metadata(REPLAY_METADATA)
        return result

    async def _raise_blocking(self, invoice_id: str, outcome: Outcome[InvoiceState, InvoiceEvent]) -> None:
        """After the append, and on a replay of a still-blocked invoice (the first answer's raise may have been
        lost): the ids derive from the match's event, so raising again stores nothing twice."""
        state = outcome.state
        if state.status is not InvoiceStatus.BLOCKED:
            return
        await self._blocking.raise_for(invoice_id, state, state.exceptions_sequence)

    async def _existing(self, invoice_id: str) -> InvoiceState:
        invoice_id = _invoice_id(invoice_id)
        state = await self._commands.state(invoice_id)
        if state.status is None:
            raise NotFound(f"no invoice {invoice_id!r} was submitted", reason="INVOICE_NOT_FOUND")
        return state

    def _workflow_key(self, invoice_id: str) -> str:
        state = self._ledger.states.get(invoice_id)
        if state is None or state.submitted is None or not state.submitted.invoice.lines:
            return ""
        return state.submitted.invoice.lines[0].po_id


class _Answer(Protocol):
    @property
    def status(self) -> invoice_pb2.InvoiceStatus: ...


A = TypeVar("A", bound=_Answer)


def _with_status(response: A, state: InvoiceState) -> A:
    """``response`` (empty) with the invoice's status written into it in place, rather than built and copied in."""
    mapping.fill_status(response.status, state)
    return response


def _payment(invoice_id: str, reference: str, state: InvoiceState) -> decider.RecordPayment:
    """A payment of the invoice's gross amount, dated today (a retry of a recorded payment keeps its date)."""
    assert state.submitted is not None
    invoice = state.submitted.invoice
    paid_on = datetime.now(UTC).date()
    if state.payment is not None and state.payment.payment_reference == reference:
        paid_on = state.payment.paid_on
    return decider.RecordPayment(invoice_id, reference, invoice.gross_total, invoice.currency, paid_on)


def _refuse_supplier(supplier_id: str, problem: tuple[str, str]) -> NoReturn:
    kind, message = problem
    if kind == "unknown":
        raise InvalidArgument(
            message + "; nothing was recorded",
            violations=[FieldViolation("invoice.supplier_id", message)],
            reason="UNKNOWN_SUPPLIER",
        )
    raise FailedPrecondition(message + "; nothing was recorded", reason="SUPPLIER_NOT_ACTIVE", subject=supplier_id)


def _invoice_id(value: str) -> str:
    invoice_id = value.strip()
    if not invoice_id or len(invoice_id) > MAX_KEY_CHARS:
        problem = "is required" if not invoice_id else f"must be at most {MAX_KEY_CHARS} characters"
        raise InvalidArgument(
            f"invoice_id {problem}", violations=[FieldViolation("invoice_id", problem)], reason="INVALID_INVOICE_ID"
        )
    return invoice_id


def _render(document: object) -> str:
    if isinstance(document, invoice_pb2.Invoice):
        return json_format.MessageToJson(document, indent=None)
    return str(document)
