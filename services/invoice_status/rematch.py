"""Re-matching the invoices waiting on a PO the moment a fact they read changes (issue 11, "Re-match").

Work that is not a request, like po-publication's hold sweep: durable consumers of receipt-reconciliation's
``reconciled`` events and of po-publication's version events (published, changed, cancelled) hand each PO id to
:meth:`Rematcher.order_changed`, which matches every invoice with a line on that PO that a re-match may change
(received, matched, blocked, released), oldest first, against the facts current now and runs ``Rematch``
through the same command handler. ``decide`` appends only a changed result on facts not older than the last,
so a redelivered event, or one that changes nothing an invoice reads, appends nothing. A re-match that blocks
raises its reasons' exceptions (ids derived from the new match event).

Invoices in flight at once: two submissions on one PO line (or of one supplier) matched at the same instant, on
two replicas or two requests of one, may each be matched without the other. What follows each submission's append
(:meth:`Rematcher.settle`, run for every submission by settlement.py) closes that: once the ledger has read the
invoice stream up to the invoice (every replica reads every invoice), an invoice whose match read the stream to a
point before an invoice that counts for it (recorded earlier, on one of its PO lines or of its supplier:
``InvoiceLedger.missed``) is re-matched. It is the later of the two that is re-matched, so whichever append the
stream took first keeps its match, and an append that lands long after its match was computed is still caught.
Every re-match waits until the ledger has read the stream up to the invoice's submission, so it counts every
invoice recorded before it, whichever replica recorded them.

Two replicas re-matching one invoice at once (each woken by another event) may each have read a fact the other had
not: ``decide`` refuses the one whose facts are older on some fact than the match recorded (``STALE_FACTS``), and it
is matched again once the ledger has read the invoice stream as far as the match recorded (a few times, then the
message is delivered again, or the settlement tried again), so the match in force is never replaced by one that
missed a receipt.

The same settlement raises the exceptions of a submission that blocked (the request that appended it may have died
before raising them; the ids derive from the match event, so raising again stores nothing twice), and re-matches the
invoice a credit note credits (the credit note counts for it). Most submissions need none of it: a request that raised
its block, whose ledger had read every event before its submission when it ended, and whose match missed nothing
(nor credits anything) has done it all (:meth:`Rematcher.settled_by_request`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable

from libs.policy.engine import Policy
from libs.runtime.commands import recorded
from libs.runtime.consumers import ConsumerSpec, Retry
from libs.runtime.decider import Refusal
from libs.runtime.events import StoredEvent
from services.invoice_status import decider, events
from services.invoice_status.decider import InvoiceStatus
from services.invoice_status.domain import tolerances_in_force
from services.invoice_status.facts import PO_DOMAIN, RECEIPT_DOMAIN, InvoiceLedger, Matcher
from services.invoice_status.findings import BlockingExceptions
from services.invoice_status.store import InvoiceCommands

log = logging.getLogger(__name__)

PO_VERSION_EVENTS = frozenset({"published", "changed", "cancelled"})
# How long a re-match waits for the ledger to read the invoice stream up to the invoice before the message is
# delivered again (the follower normally trails by milliseconds).
READ_UP_TO_SECONDS = 10.0
# How many times a re-match refused for stale facts (another replica recorded a match on facts it had not read) is
# matched again before the message is delivered again.
STALE_ATTEMPTS = 3


class Rematcher:
    def __init__(
        self,
        commands: InvoiceCommands,
        matcher: Matcher,
        ledger: InvoiceLedger,
        blocking: BlockingExceptions,
        policy: Callable[[], Policy],
        history: Callable[[str], Awaitable[list[StoredEvent]]],
        settled: Callable[[str, int], None] = lambda invoice_id, sequence: None,
    ) -> None:
        self._history = history  # an invoice's events, oldest first, from the stream
        self._settled = settled  # a re-match's block at this sequence is raised (settlement.py)
        self._commands = commands
        self._matcher = matcher
        self._ledger = ledger
        self._blocking = blocking
        self._policy = policy

    def settled_by_request(self, invoice_id: str, sequence: int) -> bool:
        """Whether the request that appended ``invoice_id``'s submission at ``sequence``, having raised its block if
        any, did everything :meth:`settle` would: the ledger has read every event before it (so
        :meth:`InvoiceLedger.missed` is final), it missed nothing, credits no invoice, and nothing was appended to
        it since."""
        if self._ledger.read_through < sequence or self._ledger.missed(invoice_id):
            return False
        state = self._ledger.state_of(invoice_id)
        return state.submitted is not None and not state.submitted.invoice.credit_note and state.sequence == sequence

    async def on_receipt(self, stored: StoredEvent) -> None:
        await self.order_changed(stored.envelope.object_key)

    async def on_order(self, stored: StoredEvent) -> None:
        if stored.subject.rsplit(".", 1)[-1] in PO_VERSION_EVENTS:
            await self.order_changed(stored.envelope.object_key)

    async def settle(self, stored: StoredEvent) -> None:
        """What follows an invoice's submission or a re-match's block (settlement.py). A submission: re-match it if
        its match was computed without an invoice recorded before it, else raise the exceptions of the block in force
        (the request that appended it may have died before raising them); a credit note re-matches the invoice it
        credits. A re-match that blocked: raise its block."""
        if stored.subject.rsplit(".", 1)[-1] == events.BLOCKED:
            await self._raise_rematch_block(stored)
            return
        await self._read_up_to(stored.sequence)
        invoice_id = stored.envelope.object_key
        if self._ledger.missed(invoice_id):
            log.info("invoice %s was matched without an invoice recorded just before it; re-matching", invoice_id)
            await self.rematch(invoice_id)  # raises for the block it leaves in force
        else:
            state = self._ledger.state_of(invoice_id)
            if state.status is InvoiceStatus.BLOCKED and state.exceptions_sequence:
                # The ids derive from the match event: raised by the request already, this stores nothing twice.
                await self._blocking.raise_for(invoice_id, state, state.exceptions_sequence)

        await self._raise_submission_block(invoice_id, stored)
        submitted = self._ledger.state_of(invoice_id).submitted
        if submitted is None or not submitted.invoice.credit_note:
            return
        credited_id = submitted.invoice.credited_invoice_id
        if credited_id and self._ledger.state_of(credited_id).exists:
            log.info("credit note %s credits invoice %s; re-matching it", invoice_id, credited_id)
            await self.rematch(credited_id)

    async def _raise_submission_block(self, invoice_id: str, stored: StoredEvent) -> None:
        """The submission's own block, even when a re-match has ended it since: a request whose raise failed (a broker
        fault, the process killed) leaves it unraised, and a block no longer in force is raised by nothing else (its
        exception is then cleared as ended). The ids derive from the event: raised before, this stores nothing."""
        if events.submission_matched(stored):
            return  # nothing blocked at submission: most submissions, told without decoding the invoice
        submitted_event = events.decode(stored)
        if not isinstance(submitted_event, decider.InvoiceSubmitted):
            return
        at_submission = decider.evolve(decider.INITIAL, recorded(stored, submitted_event))
        if at_submission.status is InvoiceStatus.BLOCKED and at_submission.exceptions_sequence:
            await self._blocking.raise_for(invoice_id, at_submission, stored.sequence)

    async def _raise_rematch_block(self, stored: StoredEvent) -> None:
        """A re-match's block, even when a later match has ended it since: the re-match that appended it raises it
        after the append, and when that raise fails (a broker fault, the process killed) and another re-match lands
        before the message comes back, nothing else would. Whether the block raised anything (a release may cover
        it) is the invoice's state right after the event, folded from its own history."""
        invoice_id = stored.envelope.object_key
        state = decider.INITIAL
        for event in await self._history(invoice_id):
            if event.sequence > stored.sequence:
                break
            decoded = events.decode(event)
            if decoded is not None:
                state = decider.evolve(state, recorded(event, decoded))
        if state.status is InvoiceStatus.BLOCKED and state.exceptions_sequence == stored.sequence:
            await self._blocking.raise_for(invoice_id, state, stored.sequence)

    async def order_changed(self, po_id: str) -> None:
        """Re-match every invoice waiting on ``po_id``; an error leaves the event unacknowledged (redelivered)."""
        for invoice_id in self._ledger.waiting_on(po_id):
            await self.rematch(invoice_id)

    async def rematch(self, invoice_id: str) -> None:
        submitted = self._ledger.state_of(invoice_id).submitted
        if submitted is None:
            return
        await self._read_up_to(self._ledger.first_sequence[invoice_id])  # every invoice before it counts
        for _attempt in range(STALE_ATTEMPTS):
            policy = self._policy()
            tolerances = tolerances_in_force(policy)
            match, versions = await self._matcher.match(submitted.invoice, tolerances, policy.revision)
            command = decider.Rematch(invoice_id, match, versions)
            result = await self._commands.run(invoice_id, functools.partial(decider.decide, command))
            if not (isinstance(result, Refusal) and result.reason == decider.STALE_FACTS):
                break
            # Another replica recorded a match on facts this one had not read (a receipt, an order version, an
            # invoice); the receipt and order streams are read afresh by the next match, the invoice stream is the
            # ledger's: wait until it is read as far as the match recorded, then match again.
            log.info("invoice %s: re-match on stale facts refused (%s); matching again", invoice_id, result.message)
            await self._read_up_to(int(result.metadata.get("invoice_sequence", "0")))
        else:
            raise Retry(f"invoice {invoice_id}: every re-match read facts older than the match recorded")
        if isinstance(result, Refusal):  # approved, paid, disputed or cancelled meanwhile: nothing to re-match
            log.info("invoice %s not re-matched: %s", invoice_id, result.message)
            return
        # Raised whether or not this delivery appended: a re-match whose append landed and whose raise was lost (the
        # process killed between the two) is redelivered, decides nothing new, and must still raise. The ids derive
        # from the match event, so raising again stores nothing twice.
        if result.state.status is InvoiceStatus.BLOCKED and result.state.exceptions_sequence:
            await self._blocking.raise_for(invoice_id, result.state, result.state.exceptions_sequence)
            # A re-match's block is settled once raised; a submission's block is not all its settlement does (a
            # credit note re-matches the invoice it credits): settle() alone settles the submission.
            if result.state.exceptions_sequence != self._ledger.first_sequence.get(invoice_id):
                self._settled(invoice_id, result.state.exceptions_sequence)
        if result.recorded is not None:  # a block the release in force covers raises nothing
            self._settled(invoice_id, result.recorded.sequence)

    async def _read_up_to(self, sequence: int) -> None:
        try:
            async with asyncio.timeout(READ_UP_TO_SECONDS):
                await self._ledger.read_up_to(sequence)
        except TimeoutError:
            raise Retry(f"the invoice stream is read up to {self._ledger.read_through}, not yet {sequence}") from None


def consumers(rematcher: Rematcher) -> tuple[ConsumerSpec, ...]:
    return (
        ConsumerSpec("invoice-status-rematch-receipts", RECEIPT_DOMAIN, "receipt.*.reconciled", rematcher.on_receipt),
        ConsumerSpec("invoice-status-rematch-orders", PO_DOMAIN, "po.>", rematcher.on_order),
    )
