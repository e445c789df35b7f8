"""receipt-reconciliation's storage: the receipt stream (source of truth) through the command handler, and the
Valkey read models ``<ns>:receipt-reconciliation:*`` that are projections of it.

Both read models are projections of single events (a document's entry never depends on another's), so they
are written per event, guarded by the event's stream sequence, and rebuilt by replaying the stream."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from libs.runtime.commands import CommandHandler, StreamLog
from libs.runtime.decider import Recorded
from libs.runtime.events import EventPublisher, EventReader
from services.receipt_reconciliation import domain, events

log = logging.getLogger(__name__)

ReceivingCommands = CommandHandler[domain.ReceivingState, domain.ReceivingEvent]

BUILT = "built"  # a field of the documents hash
REBUILDING = "rebuilding"  # a field of the documents hash: the token of the rebuild under way
# Findings a listed document carries (GetGoodsReceipt has them all): a page of 500 wide documents stays far below
# gRPC's 4 MiB message limit.
LISTED_FINDINGS = 20
TAIL_ON_START = 1_000  # events projected again at start (more than can be in flight)
_BYTES_PER_LINE = 1_200  # a document line, its figures and its contract form, measured the way po-publication's is


def receiving_log(publisher: EventPublisher, reader: EventReader) -> StreamLog[domain.ReceivingEvent]:
    return StreamLog(publisher, reader, events.DOMAIN, encode=events.encode, decode=events.decode)


def size_of(state: domain.ReceivingState) -> int:
    """About what a folded receiving record holds in memory."""
    documents = [posted.event for posted in state.documents.values()]
    encoded: int = sum(event.document.ByteSize() for event in documents)
    lines = sum(len(event.receipt.lines) for event in documents)
    return 1_024 + 2 * encoded + _BYTES_PER_LINE * lines + 256 * len(state.lines)


# Record one document's entries unless the model holds them from a later event. KEYS: documents, findings,
# finding entries, meta. ARGV: document key, sequence, po id, finding entry (JSON, '' for none), score.
_APPLY = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local seen = tonumber(string.match(current, '^(%d+)'))
  if seen and seen > tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
else
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
local last = tonumber(redis.call('HGET', KEYS[4], 'sequence') or '0')
if tonumber(ARGV[2]) > last then redis.call('HSET', KEYS[4], 'sequence', ARGV[2]) end
return 1
"""

# One page of documents with findings, newest first, continuing after the cursor's own entry by its rank (not its
# score: documents posted in the same millisecond — an ERP sending dates without a time — share one), so a page
# costs what it examines however many share the cursor's time. KEYS: findings, finding entries, documents.
# ARGV: cursor score ('' from the newest), cursor member, page size + 1, site ('' any), finding type ('' any),
# newest score allowed ('+inf' any), most entries examined. Answers {built, examined-to score, examined-to member,
# entry...}: when the examination limit ends a page early the cursor still moves on, so a filter that matches
# rarely never makes one call scan everything.
_PAGE = """
if not redis.call('HGET', KEYS[3], 'built') then return {0} end  -- the documents hash says it is built
local want, limit = tonumber(ARGV[3]), tonumber(ARGV[7])
local start = 0
if ARGV[2] ~= '' then
  local rank = redis.call('ZREVRANK', KEYS[1], ARGV[2])
  if rank then start = rank + 1 else start = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf') end
elseif ARGV[6] ~= '+inf' then
  start = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[6], '+inf')
end
local out = {1, '', ''}
local found, examined = 0, 0
while found < want and examined < limit do
  local rows = redis.call('ZREVRANGE', KEYS[1], start, start + 99, 'WITHSCORES')
  if #rows == 0 then break end
  start = start + 100
  for i = 1, #rows, 2 do
    if found < want and examined < limit then
      local member, score = rows[i], rows[i + 1]
      examined = examined + 1
      out[2], out[3] = score, member
      local entry = redis.call('HGET', KEYS[2], member)
      if entry then
        local decoded = cjson.decode(entry)
        local match = ARGV[4] == '' or decoded.site == ARGV[4]
        if match and ARGV[5] ~= '' then
          match = false
          for _, finding in ipairs(decoded.findings) do
            if finding[1] == ARGV[5] then match = true end
          end
        end
        if match then
          out[#out + 1] = member
          out[#out + 1] = entry
          found = found + 1
        end
      end
    end
  end
end
if found < want and examined < limit then out[2], out[3] = '', '' end
return out
"""


# Set ``built`` only if this rebuild's token is still there: a Valkey that lost its data halfway lost the token too.
_FINISH = """
if redis.call('HGET', KEYS[1], 'rebuilding') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'rebuilding')
redis.call('HSET', KEYS[1], 'built', '1')
return 1
"""


class ReadModelRebuilding(Exception):
    """The read model lost its data and is being rebuilt from the stream: answer UNAVAILABLE, retry soon."""


@dataclass(frozen=True, slots=True)
class ListedReceipt:
    document_key: str
    po_id: str
    site_id: str
    kind: str
    posted_at_ns: int
    findings: tuple[domain.Finding, ...]


@dataclass(frozen=True, slots=True)
class FindingFilter:
    site_id: str = ""
    finding: str = ""  # a finding type, '' for any
    posted_before: datetime | None = None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _score(posted_at: datetime) -> str:
    return str(int(posted_at.timestamp() * 1000))  # milliseconds: exact in a double


class ReceiptIndex:
    """Two read models written together per event: the document index (document key -> ``sequence|po id``, for
    GetGoodsReceipt and for a document id reused against another order) and the documents with findings (a
    sorted set by posting time and an entry per document). The documents hash also holds the field ``built``
    (never a document key: those hold a ``/``), so a posting's check is one HMGET; ``:meta`` holds the highest
    sequence applied. No TTL: both are rebuilt from the stream whenever ``built`` is missing or a write failed."""

    def __init__(self, redis: Redis, key: str) -> None:
        self._redis = redis
        self._documents = key + ":documents"
        self._findings = key + ":findings"
        self._entries = key + ":findings:entries"
        self.meta = key + ":meta"
        self._apply = redis.register_script(_APPLY)
        self._page = redis.register_script(_PAGE)
        self._finish = redis.register_script(_FINISH)
        self.dirty = False  # a write failed: the periodic check rebuilds

    async def applied(
        self,
        key: str,
        state: domain.ReceivingState,
        sequence: int,
        recorded: Recorded[domain.ReceivingEvent] | None,
    ) -> None:
        """The command handler's projection hook, after an append. A replay (``recorded`` None) names no document:
        the servicer projects the replayed one with :meth:`replayed`."""
        if recorded is not None:
            await self._write_quietly(recorded.event, recorded.sequence)

    async def replayed(self, event: domain.Reconciled, sequence: int) -> None:
        await self._write_quietly(event, sequence)

    async def _write_quietly(self, event: domain.Reconciled, sequence: int) -> None:
        try:
            await self.write(self._redis, event, sequence)
        except RedisError as error:
            self.dirty = True
            log.warning(
                "receipt index not updated for %s (%s); it is rebuilt from the stream", event.receipt.key, error
            )

    async def write(self, client: Redis | Pipeline, event: domain.Reconciled, sequence: int) -> None:
        receipt = event.receipt
        entry = ""
        if event.findings:
            entry = json.dumps(
                {
                    "po": receipt.po_id,
                    "site": receipt.site_id,
                    "kind": receipt.kind.value,
                    "at": int(receipt.posted_at.timestamp() * 1_000_000) * 1000,
                    "findings": [
                        [f.type, f.po_line_number, f.detail, f.exception_id] for f in event.findings[:LISTED_FINDINGS]
                    ],
                },
                separators=(",", ":"),
            )
        await self._apply(
            keys=[self._documents, self._findings, self._entries, self.meta],
            args=[receipt.key, sequence, receipt.po_id, entry, _score(receipt.posted_at)],
            client=client,
        )

    async def with_findings(self) -> int:
        """How many documents the list of receipts with findings holds, for the metrics."""
        return int(await self._redis.zcard(self._findings))

    async def order_of(self, document_key: str) -> str | None:
        """The order a document was recorded against, or None; raises ReadModelRebuilding while it is rebuilt."""
        built, indexed = await self._redis.hmget(self._documents, [BUILT, document_key])
        if not built:
            raise ReadModelRebuilding("the receipt index is being rebuilt from the stream")
        return _text(indexed).partition("|")[2] if indexed else None

    async def page(
        self, after: tuple[str, str] | None, count: int, where: FindingFilter, examine: int = 5_000
    ) -> tuple[list[ListedReceipt], tuple[str, str] | None]:
        """Up to ``count`` documents with findings after the cursor ``(score, document key)``, newest first, and
        the cursor of the next page (None when this was the last)."""
        score, member = after or ("", "")
        newest = _score(where.posted_before) if where.posted_before is not None else "+inf"
        raw = await self._page(
            keys=[self._findings, self._entries, self._documents],
            args=[score, member, count + 1, where.site_id, where.finding, newest, examine],
        )
        if not raw or not int(raw[0]):
            raise ReadModelRebuilding("the list of receipts with findings is being rebuilt from the stream")
        rows = [(_text(raw[i]), json.loads(_text(raw[i + 1]))) for i in range(3, len(raw), 2)]
        listed = [
            ListedReceipt(
                member,
                entry["po"],
                entry["site"],
                entry["kind"],
                int(entry["at"]),
                tuple(domain.Finding(t, int(line), detail, eid) for t, line, detail, eid in entry["findings"]),
            )
            for member, entry in rows[:count]
        ]
        if len(rows) > count:  # more matches: the next page starts after the last one shown
            last = rows[count - 1][0]
            return listed, (_score_of(rows[count - 1][1]), last)
        stopped_at = (_text(raw[1]), _text(raw[2]))
        return listed, stopped_at if stopped_at[1] else None

    async def built(self) -> bool:
        return bool(await self._redis.hget(self._documents, BUILT))

    async def begin_rebuild(self) -> str:
        token = uuid.uuid4().hex
        await self._redis.hset(self._documents, REBUILDING, token)
        return token

    async def finish_rebuild(self, token: str) -> bool:
        """Mark the index built, unless Valkey lost the data written since the rebuild began (its token is gone)."""
        return bool(await self._finish(keys=[self._documents], args=[token]))


def _score_of(entry: dict[str, object]) -> str:
    return str(int(entry["at"]) // 1_000_000)  # type: ignore[call-overload]


class ReadModels:
    """The receipt index, rebuilt from the receipt stream at start and, while serving, whenever the check finds
    it lost (Valkey restarted empty, was flushed, or a write failed)."""

    def __init__(
        self,
        redis: Redis,
        reader: EventReader,
        index: ReceiptIndex,
        on_tail: Callable[[domain.Reconciled], Awaitable[None]] | None = None,
    ) -> None:
        self._redis = redis
        self._reader = reader
        self.index = index
        self._on_tail = on_tail
        self._rebuilding = False

    async def check(self) -> None:
        if self._rebuilding:
            return
        if self.index.dirty or not await self.index.built():
            await self.rebuild()

    async def start(self, tail: int = TAIL_ON_START) -> None:
        """At start: rebuild what is missing, then project the newest ``tail`` events again (and hand them to
        ``on_tail``) — a process killed between an append and what follows it left at most those behind."""
        await self.check()
        last = await self._reader.last_sequence(events.DOMAIN)
        pipeline = self._redis.pipeline(transaction=False)
        tail_events: list[domain.Reconciled] = []
        for stored in await self._reader.since(events.DOMAIN, max(0, last - tail)):
            event = events.decode(stored)
            if event is not None:
                await self.index.write(pipeline, event, stored.sequence)
                tail_events.append(event)
        await pipeline.execute()
        if self._on_tail is not None:  # e.g. raising the findings' exceptions a crash may have left unraised
            for event in tail_events:
                await self._on_tail(event)

    async def rebuild(self) -> None:
        """Replay the whole receipt stream into the index; writes made meanwhile by commands are kept when they
        are newer (each entry carries its sequence). Marked built only if Valkey kept everything written."""
        self._rebuilding = True
        self.index.dirty = False
        try:
            token = await self.index.begin_rebuild()
            count = 0
            pipeline = self._redis.pipeline(transaction=False)
            async for stored in self._reader.scan(events.DOMAIN):
                event = events.decode(stored)
                if event is None:
                    continue
                await self.index.write(pipeline, event, stored.sequence)
                count += 1
                if count % 1_000 == 0:
                    await pipeline.execute()
            await pipeline.execute()
            if not await self.index.finish_rebuild(token):
                self.index.dirty = True  # Valkey lost data while it ran: the next check rebuilds again
                log.warning("receipt index rebuild lost its writes (Valkey restarted meanwhile); rebuilding again")
                return
            log.info("receipt index rebuilt from %s events", count)
        except Exception:
            self.index.dirty = True
            raise
        finally:
            self._rebuilding = False
