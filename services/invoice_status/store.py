"""invoice-status's storage: the invoice stream (source of truth) through the command handler, and the Valkey read
model ``<ns>:invoice-status:blocked*`` that is a projection of it.

One object per invoice on ``<ns>.invoice.<invoice id>.<event>``. What a match reads of other invoices (quantities,
duplicates) is the in-memory :class:`~services.invoice_status.facts.InvoiceLedger`; the blocked list
(``ListBlockedInvoices``) is :class:`BlockedInvoices` in Valkey, each entry carrying the stream sequence it
reflects, rebuilt from the stream when Valkey lost it (DESIGN §3 rule 10). Valkey also holds the idempotency claims
of caller-chosen keys.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from libs.runtime.commands import Appended, CommandHandler, StreamLog, fold_stream, recorded
from libs.runtime.decider import Recorded
from libs.runtime.events import Event, EventPublisher, EventReader, StoredEvent
from services.invoice_status import decider, events
from services.invoice_status.decider import InvoiceEvent, InvoiceState, InvoiceStatus
from services.invoice_status.domain import Reason
from services.invoice_status.facts import InvoiceLedger
from services.invoice_status.mapping import BlockedFilter

log = logging.getLogger(__name__)

InvoiceCommands = CommandHandler[InvoiceState, InvoiceEvent]

_BYTES_PER_LINE = 2_000  # an invoice line, its match figures and their contract form
_BYTES_PER_INVOICE = 4_096


class InvoiceLog(StreamLog[InvoiceEvent]):
    """The invoice stream as the command handler's log. Later events carry the PO id the invoice's submission names
    (from the ledger). Each append is announced to the ledger, so the follower's delivery of it (which often overtakes
    the acknowledgment) is not decoded again: the state the handler folds covers it."""

    def __init__(self, publisher: EventPublisher, reader: EventReader, ledger: InvoiceLedger) -> None:
        def encode(invoice_id: str, event: InvoiceEvent) -> Event:
            return events.encode(invoice_id, event, workflow_key=events.workflow_key_of(ledger.state_of(invoice_id)))

        super().__init__(publisher, reader, events.DOMAIN, encode=encode, decode=events.decode)
        self._ledger = ledger

    async def append(self, key: str, event: InvoiceEvent, expected_last_sequence: int) -> Appended[InvoiceEvent]:
        with self._ledger.appending(key, expected_last_sequence):
            return await super().append(key, event, expected_last_sequence)


def size_of(state: InvoiceState) -> int:
    """About what a folded invoice holds in memory."""
    lines = len(state.submitted.invoice.lines) if state.submitted is not None else 0
    return _BYTES_PER_INVOICE + _BYTES_PER_LINE * lines


# --- The blocked list: a Valkey read model, a projection of the invoice stream ---------------------------------

BUILT = "built"  # a field of the entries hash: the list reflects the whole stream
REBUILDING = "rebuilding"  # a field of the entries hash: the token of the rebuild under way
SEQUENCE = "sequence"  # a field of the entries hash: the highest stream sequence applied
TAIL_ON_START = 1_000  # events projected again at start (more than can be in flight)
FOLLOW_FLUSH_SECONDS = 0.1  # how soon what the follower folded (other replicas' appends) reaches the list
# How often the ledger reads back what other writers appended (libs/runtime/follower.ForeignEvents): a sequence lacking
# is read one to two intervals after it first lacked; with nothing lacking and no append under way, one direct get.
FOREIGN_READ_SECONDS = 0.05
EXAMINE = 5_000  # entries one page call examines at most when a filter matches rarely
REASONS = tuple(Reason)  # a reason's index in an entry (1-based) names its index key
_AT_DIGITS = 20  # blocked-at nanoseconds, zero-padded: members sort by lex as by time

# Apply one invoice's entry unless the list holds it from a later event (every entry starts with the stream
# sequence it reflects; an invoice no longer blocked keeps ``<sequence>|`` as its tombstone, so an older event
# replayed later never re-adds it). KEYS: entries, all, the invoice's supplier, one per reason in REASONS order.
# ARGV: invoice id, sequence, entry JSON ('' when not blocked).
_APPLY = """
local field = 'i:' .. ARGV[1]
local current = redis.call('HGET', KEYS[1], field)
if current then
  local seen, old = string.match(current, '^(%d+)|(.*)$')
  if tonumber(seen) > tonumber(ARGV[2]) then return 0 end
  if old ~= '' then
    local entry = cjson.decode(old)
    redis.call('ZREM', KEYS[2], entry.m)
    redis.call('ZREM', KEYS[3], entry.m)
    for _, r in ipairs(entry.r) do redis.call('ZREM', KEYS[3 + r], entry.m) end
  end
end
redis.call('HSET', KEYS[1], field, ARGV[2] .. '|' .. ARGV[3])
if ARGV[3] ~= '' then
  local entry = cjson.decode(ARGV[3])
  redis.call('ZADD', KEYS[2], 0, entry.m)
  redis.call('ZADD', KEYS[3], 0, entry.m)
  for _, r in ipairs(entry.r) do redis.call('ZADD', KEYS[3 + r], 0, entry.m) end
end
local last = tonumber(redis.call('HGET', KEYS[1], 'sequence') or '0')
if tonumber(ARGV[2]) > last then redis.call('HSET', KEYS[1], 'sequence', ARGV[2]) end
return 1
"""

# One page, oldest blocked first, by keyset: members ``<blocked-at ns>|<invoice id>`` (all scored 0, so they sort
# by lex, that is by time then id) after the cursor member, up to the newest allowed, from the index the caller
# chose (all, a supplier's or a reason's), the other filters checked on each entry. KEYS: index, entries. ARGV:
# cursor member ('' from the oldest), upper lex bound ('+' for any), page size + 1, reason index ('' any),
# supplier ('' any), most entries examined. Answers {built, examined-to member, entry...}: when the examination
# limit ends a page early the cursor still moves on, so a rare filter never makes one call scan everything.
_PAGE = """
if not redis.call('HGET', KEYS[2], 'built') then return {0} end
local low = '-'
if ARGV[1] ~= '' then low = '(' .. ARGV[1] end
local want, limit = tonumber(ARGV[3]), tonumber(ARGV[6])
local out = {1, ''}
local found, examined = 0, 0
while found < want and examined < limit do
  local rows = redis.call('ZRANGE', KEYS[1], low, ARGV[2], 'BYLEX', 'LIMIT', 0, 100)
  if #rows == 0 then break end
  for _, member in ipairs(rows) do
    if found < want and examined < limit then
      examined = examined + 1
      out[2] = member
      low = '(' .. member
      local id = string.match(member, '^%d+|(.*)$')
      local current = redis.call('HGET', KEYS[2], 'i:' .. id)
      local body = current and string.match(current, '^%d+|(.*)$')
      if body and body ~= '' then
        local entry = cjson.decode(body)
        local match = entry.m == member and (ARGV[5] == '' or entry.s == ARGV[5])
        if match and ARGV[4] ~= '' then
          match = false
          for _, r in ipairs(entry.r) do
            if r == tonumber(ARGV[4]) then match = true end
          end
        end
        if match then
          out[#out + 1] = current
          found = found + 1
        end
      end
    end
  end
end
if found < want and examined < limit then out[2] = '' end
return out
"""

# Set ``built`` only if this rebuild's token is still there: a Valkey that lost its data halfway lost the token too.
# Then raise ``sequence`` to ARGV[2], the highest this process had written when it asked: the rebuild reflects every
# write acknowledged before it began, and one lost since took the token, so the next check is satisfied.
_FINISH = """
if redis.call('HGET', KEYS[1], 'rebuilding') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'rebuilding')
redis.call('HSET', KEYS[1], 'built', '1')
local last = tonumber(redis.call('HGET', KEYS[1], 'sequence') or '0')
if tonumber(ARGV[2]) > last then redis.call('HSET', KEYS[1], 'sequence', ARGV[2]) end
return 1
"""


class ReadModelRebuilding(Exception):
    """The read model lost its data and is being rebuilt from the stream: answer UNAVAILABLE, retry soon."""


@dataclass(frozen=True, slots=True)
class BlockedEntry:
    invoice_id: str
    sequence: int  # of the event the entry reflects
    supplier_id: str
    reasons: tuple[Reason, ...]
    blocked_at_ns: int  # when the invoice last became blocked


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def member_of(blocked_at_ns: int, invoice_id: str) -> str:
    return f"{blocked_at_ns:0{_AT_DIGITS}d}|{invoice_id}"


def valid_member(member: str) -> bool:
    """Whether a page cursor is a member this list could have issued."""
    at, separator, invoice_id = member.partition("|")
    return bool(separator and invoice_id and len(at) == _AT_DIGITS and at.isascii() and at.isdigit())


class BlockedInvoices:
    """Read model: the invoices whose latest state is blocked, oldest blocked first, with their supplier and reasons.

    Keys under ``<ns>:invoice-status:blocked``: the key itself (a sorted set of every blocked invoice, members
    ``<blocked-at ns>|<invoice id>`` scored 0, so they sort by time then id), ``:supplier:<supplier id>`` and
    ``:reason:<reason>`` (the same members, per golden supplier and per blocking reason: a filtered page reads only
    what it lists), and ``:entries`` (a hash: ``i:<invoice id>`` -> ``<sequence>|<entry JSON>``, the tombstone
    ``<sequence>|`` for an invoice no longer blocked; and the fields ``built``, ``rebuilding``, ``sequence``, the
    highest stream sequence applied). No TTL on any: they are a projection of the invoice stream, rebuilt from it
    whenever ``built`` is missing (Valkey lost it), ``sequence`` is below the highest this process wrote (Valkey came
    back with an older copy: a failover to a lagging replica, a restart from an older snapshot) or a write failed."""

    def __init__(self, redis: Redis, key: str) -> None:
        self._redis = redis
        self.key = key
        self.entries = key + ":entries"
        self._reasons = [f"{key}:reason:{reason.value}" for reason in REASONS]
        self._apply = redis.register_script(_APPLY)
        self._page = redis.register_script(_PAGE)
        self._finish = redis.register_script(_FINISH)
        self.dirty = False  # a write failed: the periodic check rebuilds
        self.written = 0  # the highest sequence written that Valkey acknowledged: its ``sequence`` is not lower

    def supplier_key(self, supplier_id: str) -> str:
        return f"{self.key}:supplier:{supplier_id}"

    async def counts(self) -> tuple[int, dict[Reason, int]]:
        """How many invoices are blocked, and how many for each reason (one with two reasons counts under both),
        for the metrics."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.key)
            for key in self._reasons:
                pipe.zcard(key)
            total, *per_reason = await pipe.execute()
        return int(total), {reason: int(count) for reason, count in zip(REASONS, per_reason, strict=True)}

    async def applied(
        self, key: str, state: InvoiceState, sequence: int, recorded: Recorded[InvoiceEvent] | None
    ) -> None:
        """The command handler's projection hook, after an append (or a replay: the state the command found)."""
        try:
            self.acknowledged(await self.write(self._redis, key, state, sequence))
        except RedisError as error:
            self.dirty = True
            log.warning("blocked list not updated for %s (%s); it is rebuilt from the stream", key, error)

    def acknowledged(self, sequence: int) -> None:
        """Valkey acknowledged writes up to ``sequence`` (what :meth:`write` answered; through a pipeline, once it
        was executed): the entries hash's ``sequence`` is at least that unless Valkey lost data since."""
        self.written = max(self.written, sequence)

    async def write(self, client: Redis | Pipeline, invoice_id: str, state: InvoiceState, sequence: int) -> int:
        """Write (or queue on a pipeline) the invoice's entry as of ``sequence``; answers ``sequence`` when a write
        was made, which raises the hash's ``sequence`` to at least it, else 0 (never blocked: nothing written)."""
        submitted = state.submitted
        if submitted is None or not state.ever_blocked:
            return 0  # no event up to ``sequence`` put it on the list: nothing to write, nothing to keep off
        supplier_id = submitted.invoice.supplier_id
        entry = ""
        if state.status is InvoiceStatus.BLOCKED and state.match is not None:
            entry = json.dumps(
                {
                    "id": invoice_id,
                    "m": member_of(state.blocked_since_ns, invoice_id),
                    "s": supplier_id,
                    "r": [REASONS.index(reason) + 1 for reason in state.match.reasons],
                    "at": str(state.blocked_since_ns),  # a string: Lua's numbers are doubles
                },
                separators=(",", ":"),
            )
        await self._apply(
            keys=[self.entries, self.key, self.supplier_key(supplier_id), *self._reasons],
            args=[invoice_id, sequence, entry],
            client=client,
        )
        return sequence

    async def page(
        self, after: str | None, count: int, where: BlockedFilter, examine: int = EXAMINE
    ) -> tuple[list[BlockedEntry], str | None]:
        """Up to ``count`` blocked invoices after the cursor member (None: from the oldest), and the cursor of the
        next page (None when this was the last). Raises ReadModelRebuilding while the list is rebuilt."""
        if where.blocked_before_ns is not None and where.blocked_before_ns < 0:
            return [], None
        upper = "+"
        if where.blocked_before_ns is not None and where.blocked_before_ns + 1 < 10**_AT_DIGITS:
            upper = "(" + f"{where.blocked_before_ns + 1:0{_AT_DIGITS}d}"
        reason = "" if where.reason is None else str(REASONS.index(where.reason) + 1)
        supplier = where.supplier_id
        if supplier:
            index = self.supplier_key(supplier)
            supplier = ""
        elif where.reason is not None:
            index, reason = self._reasons[REASONS.index(where.reason)], ""
        else:
            index = self.key
        raw = await self._page(
            keys=[index, self.entries], args=[after or "", upper, count + 1, reason, supplier, examine]
        )
        if not raw or not int(raw[0]):
            raise ReadModelRebuilding("the list of blocked invoices is being rebuilt from the stream")
        rows = [_entry(_text(value)) for value in raw[2:]]
        listed = rows[:count]
        if len(rows) > count:  # more matches: the next page starts after the last one shown
            last = listed[-1]
            return listed, member_of(last.blocked_at_ns, last.invoice_id)
        stopped_at = _text(raw[1])
        return listed, stopped_at or None

    async def built(self) -> bool:
        return bool(await self._redis.hget(self.entries, BUILT))

    async def lost(self) -> bool:
        """Whether Valkey lost the list, whole (``built`` missing) or in part (its ``sequence`` is below what this
        process wrote: an older copy came back). One round trip."""
        written = self.written  # before asking: every write counted here was applied before the HMGET runs
        built, sequence = await self._redis.hmget(self.entries, [BUILT, SEQUENCE])
        if not built:
            return True
        if int(sequence or 0) < written:
            log.warning(
                "blocked list at sequence %s, below the %s written: Valkey lost data; rebuilding",
                _text(sequence or 0),
                written,
            )
            return True
        return False

    async def begin_rebuild(self) -> str:
        token = uuid.uuid4().hex
        await self._redis.hset(self.entries, REBUILDING, token)
        return token

    async def finish_rebuild(self, token: str) -> bool:
        """Mark the list built, unless Valkey lost the data written since the rebuild began (its token is gone), with
        its ``sequence`` at least what this process wrote."""
        return bool(await self._finish(keys=[self.entries], args=[token, self.written]))


def _entry(value: str) -> BlockedEntry:
    sequence, _, body = value.partition("|")
    entry = json.loads(body)
    return BlockedEntry(
        entry["id"], int(sequence), entry["s"], tuple(REASONS[r - 1] for r in entry["r"]), int(entry["at"])
    )


class ReadModels:
    """The blocked list, kept a projection of the invoice stream: fed by the command handler after every append
    (:meth:`BlockedInvoices.applied`) and by the follower of the invoice stream for the appends of other replicas
    (:meth:`followed`, written by :meth:`flush`, from the ledger's folded state); rebuilt from the stream at start
    and, while serving, whenever the check finds it lost (Valkey restarted empty, was flushed, came back with an older
    copy whose ``sequence`` is below what this process wrote, or a write failed)."""

    def __init__(
        self,
        redis: Redis,
        reader: EventReader,
        blocked: BlockedInvoices,
        state_of: Callable[[str], InvoiceState],
    ) -> None:
        self._redis = redis
        self._reader = reader
        self.blocked = blocked
        self._state_of = state_of
        self._followed: dict[str, None] = {}  # invoices the follower folded since the last flush, in order
        self._projected_at_start = 0  # the stream's last sequence when start() had projected everything up to it
        self._rebuilding = False

    def followed(self, stored: StoredEvent) -> None:
        """The invoice stream's follower folded this event into the ledger: project the invoice's state soon (the
        events start() projected already — the follower reads the whole stream at start — are skipped)."""
        if stored.sequence > self._projected_at_start:
            self._followed[stored.envelope.object_key] = None

    async def flush(self) -> None:
        """Write the followed invoices' current states (a periodic job; entries carry their sequence, so an
        invoice this process projected already is written again unchanged)."""
        if not self._followed:
            return
        invoice_ids, self._followed = list(self._followed), {}
        pipeline = self._redis.pipeline(transaction=False)
        highest = 0
        for invoice_id in invoice_ids:
            state = self._state_of(invoice_id)
            highest = max(highest, await self.blocked.write(pipeline, invoice_id, state, state.sequence))
        try:
            await pipeline.execute()
            self.blocked.acknowledged(highest)
        except RedisError as error:
            self.blocked.dirty = True
            log.warning("blocked list not updated for %s followed invoices (%s); rebuilding", len(invoice_ids), error)

    async def check(self) -> None:
        if self._rebuilding:
            return
        if self.blocked.dirty or await self.blocked.lost():
            await self.rebuild()

    async def start(self, tail: int = TAIL_ON_START) -> None:
        """At start: rebuild what is missing, then project again the invoices of the newest ``tail`` events — a
        process killed between an append and its projection left at most those behind."""
        await self.check()
        last = await self._reader.last_sequence(events.DOMAIN)
        touched = {
            stored.envelope.object_key for stored in await self._reader.since(events.DOMAIN, max(0, last - tail))
        }
        pipeline = self._redis.pipeline(transaction=False)
        highest = 0
        for invoice_id in touched:
            state, sequence = await self._fold(invoice_id)
            highest = max(highest, await self.blocked.write(pipeline, invoice_id, state, sequence))
        await pipeline.execute()
        self.blocked.acknowledged(highest)
        self._projected_at_start = last

    async def _fold(self, invoice_id: str) -> tuple[InvoiceState, int]:
        state, sequence = decider.INITIAL, 0
        for stored in await self._reader.history(events.DOMAIN, invoice_id):
            event = events.decode(stored)
            if event is not None:
                state = decider.evolve(state, recorded(stored, event))
            sequence = stored.sequence
        return state, sequence

    async def rebuild(self) -> None:
        """Fold the whole invoice stream and write every invoice's entry; writes made meanwhile by commands are
        kept when they are newer (each entry carries its sequence). Marked built only if Valkey kept everything
        written since the rebuild began."""
        self._rebuilding = True
        self.blocked.dirty = False
        try:
            token = await self.blocked.begin_rebuild()
            states, count = await fold_stream(
                self._reader, events.DOMAIN, events.decode, decider.evolve, decider.INITIAL
            )
            pipeline = self._redis.pipeline(transaction=False)
            highest = 0
            for written, (invoice_id, (state, sequence)) in enumerate(states.items(), start=1):
                highest = max(highest, await self.blocked.write(pipeline, invoice_id, state, sequence))
                if written % 1_000 == 0:
                    await pipeline.execute()
                    self.blocked.acknowledged(highest)
            await pipeline.execute()
            self.blocked.acknowledged(highest)
            if not await self.blocked.finish_rebuild(token):
                self.blocked.dirty = True  # Valkey lost data while it ran: the next check rebuilds again
                log.warning("blocked list rebuild lost its writes (Valkey restarted meanwhile); rebuilding again")
                return
            log.info("blocked list rebuilt from %s events (%s invoices)", count, len(states))
        except Exception:
            self.blocked.dirty = True
            raise
        finally:
            self._rebuilding = False
