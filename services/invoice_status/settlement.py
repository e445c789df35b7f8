"""What follows a submission's append, done for every submission whichever process appended it, without a
durable consumer delivering each one back.

After a submission is appended, its request raises the exceptions of its block and, when the ledger has read the
stream up to it, knows whether its match missed an invoice recorded just before it (:meth:`InvoiceLedger.missed`)
and whether it is a credit note (whose credited invoice is re-matched). When it did everything that applies, the
submission is settled. What the request could not settle (its ledger had not read that far, it missed an invoice,
it credits one, its raise failed, it was cancelled or the process died after the append) is settled by
:meth:`Rematcher.settle`, which is idempotent: an exception's id derives from its match event, and a re-match that
changes nothing appends nothing.

Who settles what, :class:`Settlements`:

- **This process's own submissions and re-match blocks** are noted as their append is acknowledged (the command
  handler's projection hook, before anything else is awaited) and forgotten when their request, or the re-match,
  settles them; one the request could not settle is settled by the periodic job once the ledger has read the stream
  up to it, and one whose request or re-match never ended (cancelled, its raise failed, its process killed)
  :data:`SETTLE_AFTER_SECONDS` after its append. A replayed submission is settled again (its first request may have
  died before settling it). An append whose acknowledgment never came is not this process's to the ledger: it is
  read back as another writer's.
- **Every other writer's submissions and re-match blocks** reach every replica's ledger (the follower at start, then
  the reading back of what the ledger lacks, :class:`~libs.runtime.follower.ForeignEvents`): each replica settles
  each of them :data:`SETTLE_AFTER_SECONDS` after reading it, so a replica that died between an append and its
  raise leaves nothing unsettled while another replica runs. For a submission that matched, missed nothing and
  credits nothing, that is a few dictionary lookups and a parse of the event: nothing is written.
- **At start**, every submission and re-match block after the **settled-through mark**: the stream sequence up to
  which every one was settled, which each replica advances (:meth:`Settlements.save`, every :data:`MARK_SECONDS`)
  to just before the oldest it has not settled and never past what its ledger read, kept in a JetStream KV bucket
  beside the stream (:class:`~libs.runtime.buckets.SequenceMark`: it moves only forward, so replicas racing each
  other settle on the highest, except over the mark of a stream since recreated). Those events are settled at once
  after the follower caught up, however many came after them (those older than the newest tail read again when due,
  not kept in memory): a process killed while its settlement kept failing leaves the mark before it. The mark names
  the stream it counts (its creation time).
  Before any mark exists (the first start on a stream), when it is of a stream since recreated (named otherwise, or
  past the newest event) or unreadable, the start settles the newest events (the same tail
  :class:`~services.invoice_status.findings.TailExceptions` raises again) and stores the mark there. Events older
  than the mark read later (a catch-up at start that timed out, finished by the reading back) are not settled again.
  A process that finds the mark of another stream while it runs stores its own over it only if its stream is still
  the one there is: one that outlived its stream's recreation stops storing the mark (logged; restart it).

A settlement that fails (the broker unreachable, a re-match refused as stale every time) stays pending and is tried
again after a growing pause (:data:`RETRY_AFTER_SECONDS`), logged each time; nothing is dropped. Settlements waiting
for the ledger to read the stream up to them for longer than :data:`STALLED_AFTER_SECONDS` are logged too.

This replaced a durable consumer of the service's own ``submitted`` and ``blocked`` events, whose delivery of each
submission back to its own process, even acknowledged unhandled, cost about a tenth of a submission's CPU
(docs/decisions.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from libs.runtime.buckets import Mark, MarkOfAnotherStream, MarkUnreadable
from libs.runtime.consumers import backoff_delay
from libs.runtime.decider import Recorded
from libs.runtime.events import StoredEvent, StreamPosition
from services.invoice_status import events
from services.invoice_status.decider import Blocked, InvoiceEvent, InvoiceState, InvoiceSubmitted

log = logging.getLogger(__name__)

# How long after reading another writer's event (or appending its own submission) a replica settles it: the request
# that appended it settles it first.
SETTLE_AFTER_SECONDS = 2.0
# The periodic job's interval.
SETTLE_SECONDS = 0.25
# The pauses before a failed settlement is tried again (the last repeats).
RETRY_AFTER_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# A settlement due this long whose event the ledger has not read up to is logged (at most once in this long).
STALLED_AFTER_SECONDS = 30.0
SETTLED_EVENTS = frozenset({events.SUBMITTED, events.BLOCKED})
# How often the settled-through mark is stored (when it moved): what a start settles again is at most this much older
# than what was unsettled when the process stopped.
MARK_SECONDS = 1.0
# The bucket (libs/runtime/broker_access.py gives invoice-status alone the right to write it) and key of the mark.
MARKS_BUCKET = "invoice_marks"
SETTLED_THROUGH_KEY = "settled-through"


class SettledMark(Protocol):
    """Where the settled-through mark is kept (libs/runtime/buckets.SequenceMark)."""

    async def read(self) -> Mark | None: ...

    async def advance(self, sequence: int, stream: str) -> int: ...

    async def replace(self, sequence: int, stream: str) -> None: ...


@dataclass(slots=True)
class Unsettled:
    invoice_id: str
    stored: StoredEvent | None  # None: read from the stream when due (this process's own append, an old one)
    due_at: float
    failures: int = 0


class Settlements:
    def __init__(
        self,
        settle: Callable[[StoredEvent], Awaitable[None]],
        read: Callable[[int], Awaitable[StoredEvent]],
        read_through: Callable[[], int],
        position: Callable[[], Awaitable[StreamPosition]],
        tail: int,
        mark: SettledMark,
        *,
        grace: float = SETTLE_AFTER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settle = settle  # Rematcher.settle
        self._read = read  # the invoice stream's event at a sequence
        self._read_through = read_through  # the ledger's
        self._position = position  # the invoice stream's last sequence, and which stream it is
        self._tail = tail
        self._mark = mark
        self._grace = grace
        self._clock = clock
        self._floor = 0  # events up to this one (settled before this process started) are never noted
        self._saved = 0  # the mark as this process last stored or found it
        self._stream = ""  # the invoice stream's creation time: the stream the mark counts
        self._outlived_stream = False  # the stream was recreated while this process ran: its mark is not stored
        # The start-up replay keeps the events of the newest tail in hand; older ones (a mark held back long by a
        # settlement that kept failing) are read again when due, so the memory they take stays small.
        self._keep_after = 0
        self._replaying = False  # the start-up replay runs: what is noted is due at once
        self._stalled_logged = 0.0
        self.pending: dict[int, Unsettled] = {}

    async def begin(self) -> None:
        """Before the follower starts: which events were settled before this process started (the mark's)."""
        # The mark first: a running replica may move it on meanwhile, never past the stream's newest event read after.
        try:
            stored = await self._mark.read()
        except MarkUnreadable as unreadable:
            log.error("%s; the newest %s events are settled again and the mark stored anew", unreadable, self._tail)
            stored = Mark(-1, "")
        position = await self._position()
        if not position.created:
            raise RuntimeError("the invoice stream does not exist: it is provisioned before the start settles")
        newest, self._stream = position.last_sequence, position.created
        self._keep_after = max(0, newest - self._tail)
        if stored is not None and stored.of(self._stream) and 0 <= stored.sequence <= newest:
            self._floor = stored.sequence
        elif stored is None:  # another replica starting may have stored one meanwhile
            self._floor = await self._mark.advance(self._keep_after, self._stream)
        else:
            self._floor = self._keep_after
            if not stored.of(self._stream) or stored.sequence > newest:
                log.warning(
                    "the settled-through mark (%s, of the stream created %s) is not of the invoice stream now "
                    "(created %s, newest event %s): the stream was recreated; its newest %s events are settled again",
                    stored.sequence,
                    stored.stream or "before marks named their stream",
                    self._stream,
                    newest,
                    self._tail,
                )
            await self._mark.replace(self._floor, self._stream)
        self._saved = self._floor
        self._replaying = True

    async def started(self) -> None:
        """After the follower caught up: every event read from now on is noted after the grace."""
        self._replaying = False

    def followed(self, stored: StoredEvent) -> None:
        """An event the ledger read (the start-up replay's tail, or another writer's)."""
        if stored.sequence <= self._floor or stored.subject.rsplit(".", 1)[-1] not in SETTLED_EVENTS:
            return
        due_at = self._clock() + (0.0 if self._replaying else self._grace)
        kept = stored if stored.sequence > self._keep_after or not self._replaying else None
        self.pending.setdefault(stored.sequence, Unsettled(stored.envelope.object_key, kept, due_at))

    async def applied(
        self, key: str, state: InvoiceState, sequence: int, recorded: Recorded[InvoiceEvent] | None
    ) -> None:
        """The command handler's projection hook: this process appended a submission or a re-match's block, pending
        until its request or the re-match settles it."""
        if recorded is not None and isinstance(recorded.event, InvoiceSubmitted | Blocked):
            self.pending.setdefault(recorded.sequence, Unsettled(key, None, self._clock() + self._grace))

    def request_ended(self, invoice_id: str, sequence: int, *, settled: bool) -> None:
        """The request that appended (or replayed) the submission at ``sequence``, or the re-match that appended the
        block at ``sequence``, ended: it settled it, or leaves it to the periodic job, now."""
        if settled:
            self.pending.pop(sequence, None)
            return
        unsettled = self.pending.setdefault(sequence, Unsettled(invoice_id, None, self._clock()))
        if not unsettled.failures:
            unsettled.due_at = min(unsettled.due_at, self._clock())

    async def tick(self) -> None:
        """Settle what is due, oldest first, up to where the ledger has read the stream."""
        now = self._clock()
        reach = self._read_through()
        for sequence in sorted(self.pending):
            if sequence > reach:
                self._log_stalled(sequence, reach, now)
                break
            unsettled = self.pending.get(sequence)
            if unsettled is None or unsettled.due_at > now:
                continue
            try:
                stored = unsettled.stored if unsettled.stored is not None else await self._read(sequence)
                await self._settle(stored)
            except Exception as error:
                unsettled.failures += 1
                pause = backoff_delay(RETRY_AFTER_SECONDS, unsettled.failures)
                unsettled.due_at = self._clock() + pause
                log.warning(
                    "invoice %s: what follows its event at sequence %s is not done yet (%r, failure %s); "
                    "trying again in %ss",
                    unsettled.invoice_id,
                    sequence,
                    error,
                    unsettled.failures,
                    pause,
                )
                continue
            self.pending.pop(sequence, None)

    def settled_through(self) -> int:
        """The sequence up to which every submission and re-match block is settled: all this process did not note
        were settled before it started (the mark it began from), and all it noted but those pending are settled;
        never past what the ledger read (an event not read yet is not noted yet)."""
        through = self._read_through()
        if self.pending:
            through = min(through, min(self.pending) - 1)
        return through

    @property
    def failing(self) -> int:
        """Settlements that failed and wait to be tried again."""
        return sum(1 for unsettled in self.pending.values() if unsettled.failures)

    async def save(self) -> None:
        """Store the settled-through mark when it moved (replicas' marks only raise it; one of a stream since
        recreated is replaced). A mark not stored is tried again next time: until then a start settles more again,
        never less."""
        through = self.settled_through()
        if through <= self._saved:
            return
        if self._outlived_stream:
            return
        try:
            try:
                self._saved = await self._mark.advance(through, self._stream)
            except MarkOfAnotherStream as other:
                await self._store_over(other, through)
        except Exception as error:
            log.warning("the settled-through mark (%s) was not stored (%r); trying again", through, error)

    async def _store_over(self, other: MarkOfAnotherStream, through: int) -> None:
        """The mark found is of another stream: stored over when this process's stream is the one there is."""
        created = (await self._position()).created
        if not created:  # no stream at all for now (a broker's passing answer): tried again next time
            log.warning("%s, and the invoice stream was not found; trying again", other)
            return
        if created != self._stream:
            # The stream this process read was recreated under it: what it settled counts that one. The processes
            # that read the stream there is keep the mark.
            self._outlived_stream = True
            log.error(
                "%s, and the invoice stream was recreated since this process started: it stores the settled-through "
                "mark no more; restart it",
                other,
            )
            return
        log.warning("%s: the mark of a stream since recreated; storing %s over it", other, through)
        await self._mark.replace(through, self._stream)
        self._saved = through

    def _log_stalled(self, sequence: int, reach: int, now: float) -> None:
        overdue = now - self.pending[sequence].due_at
        if overdue > STALLED_AFTER_SECONDS and now - self._stalled_logged > STALLED_AFTER_SECONDS:
            self._stalled_logged = now
            log.warning(
                "%s settlement(s) wait for the invoice stream to be read up to %s (read up to %s for %.0fs)",
                len(self.pending),
                sequence,
                reach,
                overdue,
            )
