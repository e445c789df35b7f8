"""Raising an exception per blocking reason of an invoice's match, after the append and again on a replay.

The ids derive from the invoice, the reason and the match event's sequence, so raising again stores nothing twice
and a later match that blocks for the same reason raises anew. Reasons with no exception type of their own in the
contract (unknown_po_line, po_cancelled, currency_mismatch, arithmetic_error) are raised as validation_failed,
the reason named in the detail.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from libs.policy.engine import Policy
from libs.runtime.decider import Recorded
from libs.runtime.exception_reporter import ExceptionReporter, fingerprint, severity
from services.invoice_status.decider import InvoiceEvent, InvoiceState, InvoiceStatus
from services.invoice_status.domain import OBJECT_TYPE, MatchState, Reason
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2

_EXCEPTION_IDS = uuid.UUID("6f0f5b8e-2f0e-4c55-9a55-1e7c1c0b7a11")
_OWN_TYPE = {
    Reason.PRICE_VARIANCE: exception_pb2.EXCEPTION_TYPE_PRICE_VARIANCE,
    Reason.QUANTITY_VARIANCE: exception_pb2.EXCEPTION_TYPE_QUANTITY_VARIANCE,
    Reason.AWAITING_RECEIPT: exception_pb2.EXCEPTION_TYPE_AWAITING_RECEIPT,
    Reason.DUPLICATE_INVOICE: exception_pb2.EXCEPTION_TYPE_DUPLICATE_INVOICE,
}


def exception_id(invoice_id: str, reason: Reason, sequence: int) -> str:
    return str(uuid.uuid5(_EXCEPTION_IDS, f"{invoice_id}|{reason.value}|{sequence}"))


def exception_ids(invoice_id: str, state: InvoiceState) -> list[str]:
    """The ids of the exceptions raised for the blocking reasons of the match in force: none when it matched, or
    when it was a re-match the release in force covered (nothing was raised for it)."""
    if state.match is None or not state.exceptions_sequence:
        return []
    return [exception_id(invoice_id, reason, state.exceptions_sequence) for reason in state.match.reasons]


def exception_type_of(reason: Reason) -> tuple[exception_pb2.ExceptionType, str]:
    """The contract's exception type for a blocking reason, and the policy's name routing it."""
    own = _OWN_TYPE.get(reason)
    if own is not None:
        return own, reason.value
    return exception_pb2.EXCEPTION_TYPE_VALIDATION_FAILED, "validation_failed"


def _detail(state: InvoiceState, reason: Reason) -> str:
    assert state.match is not None
    assert state.submitted is not None
    invoice = state.submitted.invoice
    lines = [line for line in state.match.lines if reason in line.reasons]
    where = ", ".join(f"line {line.line_number} (PO {line.po_id} line {line.po_line_number})" for line in lines[:20])
    if len(lines) > 20:
        where += f" and {len(lines) - 20} more"
    subject = f"invoice {invoice.invoice_id} ({invoice.invoice_number}) of {invoice.supplier_id}"
    return f"{subject} blocked: {reason.value}" + (f" on {where}" if where else "")


def reasons_standing(state: InvoiceState) -> frozenset[Reason]:
    """The blocking reasons that still stand against the invoice: its match in force blocks for them (a release by a
    person overrides them for payment, it does not make them untrue), unless the invoice was cancelled."""
    if state.status is InvoiceStatus.CANCELLED or state.match is None or state.match.state is not MatchState.BLOCKED:
        return frozenset()
    return frozenset(state.match.reasons)


def reasons_raised(state: InvoiceState) -> frozenset[Reason]:
    """The reasons whose exceptions the match in force raised (none for a match a release covered)."""
    if state.status is not InvoiceStatus.BLOCKED or not state.exceptions_sequence or state.match is None:
        return frozenset()
    return frozenset(state.match.reasons)


class BlockingExceptions:
    def __init__(self, exceptions: ExceptionReporter, policy: Callable[[], Policy]) -> None:
        self._exceptions = exceptions
        self._policy = policy

    async def clear(
        self, invoice_id: str, reason: Reason, raise_id: str, workflow_key: str, sequence: int, why: str
    ) -> None:
        """Say the reason's exception, raised as ``raise_id``, no longer holds (the router resolves it as cleared
        while that raise is its newest); ``sequence`` is the invoice event that ended it, naming the clearing."""
        contract_type, _ = exception_type_of(reason)
        ref = types_pb2.ObjectRef(object_type=OBJECT_TYPE, object_key=invoice_id)
        raised = exception_pb2.Exception(
            exception_id=raise_id,
            type=contract_type,
            object=ref,
            fingerprint=fingerprint(contract_type, ref, f"{invoice_id}:{reason.value}"),
            workflow_key=workflow_key,
        )
        await self._exceptions.clear_exception(raised, why, clear_id=f"invoice:{invoice_id}:{reason.value}:{sequence}")

    async def raise_for(self, invoice_id: str, state: InvoiceState, match_sequence: int) -> None:
        """One exception per blocking reason of the match in force, if it blocks."""
        match = state.match
        if match is None or match.state is not MatchState.BLOCKED:
            return
        policy = self._policy()
        business_unit = next((line.business_unit for line in match.lines if line.business_unit), "")
        workflow_key = match.lines[0].po_id if match.lines else ""
        for reason in match.reasons:
            contract_type, routed_as = exception_type_of(reason)
            route = policy.route(routed_as, business_unit=business_unit)
            await self._exceptions.raise_exception(
                contract_type,
                severity(route.severity, default=exception_pb2.SEVERITY_MEDIUM),
                types_pb2.ObjectRef(object_type=OBJECT_TYPE, object_key=invoice_id),
                _detail(state, reason),
                workflow_key=workflow_key,
                discriminator=f"{invoice_id}:{reason.value}",
                policy_revision=policy.revision,
                exception_id=exception_id(invoice_id, reason, match_sequence),
            )


TAIL_ON_START = 1_000  # the invoice stream's newest events whose blocking matches are raised again at start


class TailExceptions:
    """At start, the exceptions of the blocking matches among the invoice stream's newest events are raised again.

    A process killed between a match's append and its raises leaves them unraised: a request's client may not
    retry, and a re-match's trigger redelivered later may no longer re-match the invoice (released or approved
    meanwhile). The follower replays the stream at start; each event that left its invoice blocked with exceptions
    of its own is noted with the state after it, and raised once the follower caught up. The ids derive from the
    match event, so what was raised before is stored once."""

    def __init__(self, blocking: BlockingExceptions, newest: Callable[[], Awaitable[int]], tail: int = TAIL_ON_START):
        self._blocking = blocking
        self._newest = newest
        self._tail = tail
        self._after: int | None = None  # noting while the start-up replay runs; None otherwise
        self._pending: dict[tuple[str, int], InvoiceState] = {}

    async def begin(self) -> None:
        """Before the follower starts: which events are the tail."""
        self._after = max(0, await self._newest() - self._tail)

    def followed(self, invoice_id: str, state: InvoiceState, sequence: int) -> None:
        if self._after is None or sequence <= self._after:
            return
        if state.status is InvoiceStatus.BLOCKED and state.exceptions_sequence == sequence:
            self._pending[(invoice_id, sequence)] = state

    async def raise_all(self) -> None:
        """After the follower caught up: raise what was noted (a failure fails the start, which is retried)."""
        self._after = None
        for (invoice_id, sequence), state in list(self._pending.items()):
            await self._blocking.raise_for(invoice_id, state, sequence)
            del self._pending[(invoice_id, sequence)]


class ClearedReasons:
    """The exceptions of blocking reasons an invoice no longer has are cleared (the router resolves them as
    ``cleared``), so a person does not chase an awaiting_receipt whose receipt landed.

    Fed by the invoice follower with each event and the invoice's state after it, on every replica, in stream order:
    a reason whose exception was raised and that no longer stands (a re-match matched the invoice or blocked it for
    other reasons; the invoice was cancelled) is due to be cleared, and :meth:`flush` (a periodic job) publishes
    what is due — once the raise it clears is in the exception stream: a clearing stored before the raise it ends
    would leave the late raise opening an exception nobody clears (the request that blocked may still be raising
    when a receipt re-matches the invoice). A raise that never comes (its process died; the tail raises it at the
    next start) holds its clearing at most :data:`CLEAR_WAIT_FLUSHES` flushes.

    At start the follower replays the whole stream: only the reasons ended by the newest events (the tail, as for
    raises) are cleared again, in case the process died before clearing them; older ones were cleared then.
    Clearing twice is harmless (the exception is closed), and every replica clearing the same reason is stored once
    within the broker's duplicate window."""

    def __init__(
        self,
        blocking: BlockingExceptions,
        newest: Callable[[], Awaitable[int]],
        stored: Callable[[str], Awaitable[bool]],
        tail: int = TAIL_ON_START,
    ):
        self._blocking = blocking
        self._newest = newest
        self._stored = stored  # whether the raise with this id is in the exception stream
        self._tail = tail
        self._after: int | None = None  # while the start-up replay runs: only later events' clearings are due
        self._raised: dict[str, dict[Reason, int]] = {}  # per invoice: reason -> the match event that raised it
        self._due: dict[tuple[str, Reason], Due] = {}

    async def begin(self) -> None:
        """Before the follower starts: which events are the tail."""
        self._after = max(0, await self._newest() - self._tail)

    async def start(self) -> None:
        """The start-up step after the follower caught up: the tail's clearings, then every later event's."""
        self._after = None
        await self.flush()

    async def applied(
        self, key: str, state: InvoiceState, sequence: int, recorded: Recorded[InvoiceEvent] | None
    ) -> None:
        """The command handler's projection hook: this process's own appends, each with the state right after it
        (the follower brings them later, when the ledger already holds a newer state)."""
        self.followed(key, state, state.sequence)

    def followed(self, invoice_id: str, state: InvoiceState, sequence: int) -> None:
        """An event and the invoice's state after it. A state that is not the one right after ``sequence`` (the
        follower reaching an event the ledger had passed through this process's own later append) is skipped:
        :meth:`applied` saw that append's own state."""
        if state.sequence != sequence:
            return
        before = self._raised.get(invoice_id, {})
        standing = reasons_standing(state)
        now = {reason: raised_at for reason, raised_at in before.items() if reason in standing}
        now.update(dict.fromkeys(reasons_raised(state), state.exceptions_sequence))
        if now:
            self._raised[invoice_id] = now
        else:
            self._raised.pop(invoice_id, None)
        for reason in standing:  # raised again meanwhile: an earlier clearing is overtaken
            self._due.pop((invoice_id, reason), None)
        ended = {reason: raised_at for reason, raised_at in before.items() if reason not in standing}
        if not ended or (self._after is not None and sequence <= self._after):
            return
        why = (
            "the invoice was cancelled"
            if state.status is InvoiceStatus.CANCELLED
            else "a re-match no longer blocks the invoice for it"
        )
        workflow_key = state.match.lines[0].po_id if state.match is not None and state.match.lines else ""
        for reason, raised_at in ended.items():
            self._due[(invoice_id, reason)] = Due(
                sequence, exception_id(invoice_id, reason, raised_at), workflow_key, why
            )

    async def flush(self) -> None:
        """Publish the clearings due whose raise is stored; one that fails stays due for the next flush."""
        for (invoice_id, reason), due in list(self._due.items()):
            if not await self._stored(due.raise_id) and due.waited < CLEAR_WAIT_FLUSHES:
                self._due[(invoice_id, reason)] = replace(due, waited=due.waited + 1)
                continue
            await self._blocking.clear(invoice_id, reason, due.raise_id, due.workflow_key, due.sequence, due.why)
            if self._due.get((invoice_id, reason), due).sequence == due.sequence:
                self._due.pop((invoice_id, reason), None)


@dataclass(frozen=True, slots=True)
class Due:
    """A clearing due: the invoice event that ended the reason, the raise it clears, and why."""

    sequence: int
    raise_id: str
    workflow_key: str
    why: str
    waited: int = 0  # flushes it waited for its raise to be stored


# How many flushes a clearing waits for the raise it ends to be stored before it is published anyway.
CLEAR_WAIT_FLUSHES = 100  # about 10 s at the follower flush interval (store.FOLLOW_FLUSH_SECONDS)
