"""po-publication's storage: the PO stream (source of truth) through the command handler, and the Valkey
read models ``<ns>:po-publication:*`` that are projections of it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from libs.runtime.commands import CommandHandler, StreamLog, fold_stream, recorded
from libs.runtime.decider import Recorded
from libs.runtime.events import EventPublisher, EventReader
from services.po_publication import domain, events

log = logging.getLogger(__name__)

OrderCommands = CommandHandler[domain.OrderState, domain.OrderEvent]


def order_log(publisher: EventPublisher, reader: EventReader) -> StreamLog[domain.OrderEvent]:
    return StreamLog(publisher, reader, events.DOMAIN, encode=events.encode, decode=events.decode, settle=events.settle)


TAIL_ON_START = 1_000  # events whose orders are projected again at start (more than can be in flight)

# Measured: a folded version costs about 1.3 KiB of Python objects per order line (the domain line with its
# Decimals and strings, the contract line) beyond its serialized size; the estimate errs high.
_BYTES_PER_LINE = 1_600


def size_of(state: domain.OrderState) -> int:
    """About what a folded order holds in memory: its versions' documents and domain lines dominate."""
    versions: list[domain.StoredVersion | domain.HeldVersion] = [*state.versions, *state.held.values()]
    lines = sum(len(v.order.lines) for v in versions)
    documents: int = sum(v.document.ByteSize() for v in versions if v.document is not None)
    return 1_024 + 2 * documents + _BYTES_PER_LINE * lines + 256 * (len(versions) + len(state.acknowledgments))


# One round trip for a page, by keyset: whether the model is built, then the rows after the cursor (approval
# time, po id) in approval order, each with its entry and score. Rows added or removed between pages never
# shift the next one (an offset would skip an order when an earlier one was acknowledged meanwhile).
_PAGE = """
local built = redis.call('HGET', KEYS[3], 'built')
if not built then return {0} end
local want = tonumber(ARGV[3]) + 1
local out = {1}
local found = 0
local offset = 0
local after_score = nil
if ARGV[2] ~= '' then after_score = tonumber(ARGV[1]) end
local low = '-inf'
if after_score then low = ARGV[1] end
while found < want do
  local rows = redis.call('ZRANGE', KEYS[1], low, '+inf', 'BYSCORE', 'LIMIT', offset, 100, 'WITHSCORES')
  if #rows == 0 then break end
  for i = 1, #rows, 2 do
    local id, score = rows[i], rows[i + 1]
    local skip = after_score and tonumber(score) == after_score and id <= ARGV[2]
    if not skip and found < want then
      out[#out + 1] = id
      out[#out + 1] = redis.call('HGET', KEYS[2], id) or false
      out[#out + 1] = score
      found = found + 1
    end
  end
  offset = offset + 100
end
return out
"""

# Apply one order's entry unless the model holds a newer one (entries start with the stream sequence they
# reflect): appends, replays and a rebuild may run in any order and the newest always stands.
_APPLY = """
local current = redis.call('HGET', KEYS[2], ARGV[1])
if current then
  local seen = tonumber(string.match(current, '^(%d+)'))
  if seen and seen > tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if ARGV[4] == '' then redis.call('ZREM', KEYS[1], ARGV[1]) else redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1]) end
local last = tonumber(redis.call('HGET', KEYS[3], 'sequence') or '0')
if tonumber(ARGV[2]) > last then redis.call('HSET', KEYS[3], 'sequence', ARGV[2]) end
return 1
"""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ReadModelRebuilding(Exception):
    """The read model lost its data and is being rebuilt from the stream: answer UNAVAILABLE, retry soon."""


class UnacknowledgedOrders:
    """Read model: orders whose latest version the ERP has not acknowledged, oldest approval first.

    A sorted set (po id by approval time), a hash (po id -> ``sequence:latest:acknowledged:approved``, kept for
    acknowledged orders too, so an older write never resurrects one) and ``:meta`` (``built``, and the highest
    stream sequence applied). No TTL: it is a projection of the PO stream and is rebuilt from it whenever
    ``built`` is missing (Valkey lost it) or a write failed."""

    def __init__(self, redis: Redis, key: str) -> None:
        self._redis = redis
        self._order = key
        self._entries = key + ":entries"
        self.meta = key + ":meta"
        self._page = redis.register_script(_PAGE)
        self._apply = redis.register_script(_APPLY)
        self.dirty = False  # a write failed: the periodic check rebuilds

    async def applied(
        self, key: str, state: domain.OrderState, sequence: int, recorded: Recorded[domain.OrderEvent] | None
    ) -> None:
        if recorded is not None and isinstance(
            recorded.event, domain.VersionRejected | domain.VersionHeld | domain.HoldExpired
        ):
            return  # the latest version and the ERP's acknowledgments are unchanged
        try:
            await self.write(self._redis, key, state, sequence)
        except RedisError as error:
            self.dirty = True
            log.warning("unacknowledged list not updated for %s (%s); it is rebuilt from the stream", key, error)

    async def write(self, client: Redis | Pipeline, po_id: str, state: domain.OrderState, sequence: int) -> None:
        latest = state.latest
        if latest is None:
            return
        acknowledged = state.acknowledged_version
        approved = latest.order.approved_at.timestamp() if latest.order.approved_at else 0.0
        entry = f"{sequence}:{latest.version}:{acknowledged}:{approved!r}"
        score = "" if acknowledged >= latest.version else repr(approved)
        await self._apply(
            keys=[self._order, self._entries, self.meta], args=[po_id, sequence, entry, score], client=client
        )

    async def page(self, after: tuple[str, str] | None, count: int) -> tuple[list[domain.Unacknowledged], str]:
        """Up to ``count`` orders after the cursor ``(score, po id)`` (None: from the start), and the cursor of
        the next page ("" when this was the last)."""
        score, member = after or ("", "")
        keys = [self._order, self._entries, self.meta]
        raw = await self._page(keys=keys, args=[score, member, count])
        if not raw or not int(raw[0]):
            raise ReadModelRebuilding("the unacknowledged list is being rebuilt from the stream")
        rows = [(_text(raw[i]), raw[i + 1], _text(raw[i + 2])) for i in range(1, len(raw), 3)]
        found: list[domain.Unacknowledged] = []
        for po_id, entry, _ in rows[:count]:
            if not entry:
                continue
            _, latest, acknowledged, approved = _text(entry).split(":")
            found.append(domain.Unacknowledged(po_id, int(latest), int(acknowledged), float(approved)))
        cursor = f"{rows[count - 1][2]}|{rows[count - 1][0]}" if len(rows) > count else ""
        return found, cursor

    async def built(self) -> bool:
        return bool(await self._redis.hget(self.meta, "built"))

    async def count(self) -> tuple[int, float | None]:
        """How many orders await the ERP, and the approval time (epoch seconds) of the oldest, for the metrics."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self._order)
            pipe.zrange(self._order, 0, 0, withscores=True)
            size, oldest = await pipe.execute()
        return int(size), float(oldest[0][1]) if oldest else None


class HoldDeadlines:
    """The sweeper's to-do list: orders holding out-of-order versions, scored by the earliest deadline.
    The held versions themselves are events in the stream; no TTL, it is rebuilt with the list above."""

    def __init__(self, redis: Redis, key: str) -> None:
        self._redis = redis
        self._key = key
        self.dirty = False  # a write failed: the periodic check rebuilds

    async def applied(
        self, key: str, state: domain.OrderState, sequence: int, recorded: Recorded[domain.OrderEvent] | None
    ) -> None:
        if not state.held:
            return  # the order never held a version: nothing to schedule, nothing to clear
        if recorded is not None and not isinstance(
            recorded.event, domain.VersionHeld | domain.HoldExpired | domain.VersionChanged
        ):
            return
        try:
            await self.reschedule(key, state)
        except RedisError as error:
            self.dirty = True
            log.warning("hold deadline of %s not updated (%s); it is rebuilt from the stream", key, error)

    def write(self, pipeline: Pipeline, po_id: str, state: domain.OrderState) -> None:
        deadline = state.next_hold_deadline()
        if deadline is None:
            pipeline.zrem(self._key, po_id)
        else:
            pipeline.zadd(self._key, {po_id: deadline.timestamp()})

    async def reschedule(self, po_id: str, state: domain.OrderState) -> None:
        pipeline = self._redis.pipeline(transaction=False)
        self.write(pipeline, po_id, state)
        await pipeline.execute()

    async def due(self, now: datetime) -> list[str]:
        members = await self._redis.zrangebyscore(self._key, 0, now.timestamp())
        return [_text(m) for m in members]


class ReadModels:
    """Both read models, rebuilt together from the PO stream — at start and, while serving, whenever the
    check finds them lost (Valkey restarted empty, was flushed, or a write failed)."""

    def __init__(
        self, redis: Redis, reader: EventReader, unacknowledged: UnacknowledgedOrders, holds: HoldDeadlines
    ) -> None:
        self._redis = redis
        self._reader = reader
        self.unacknowledged = unacknowledged
        self.holds = holds
        self._rebuilding = False

    @property
    def projections(self) -> Sequence[UnacknowledgedOrders | HoldDeadlines]:
        return (self.unacknowledged, self.holds)

    async def check(self) -> None:
        """Rebuild if the models are not there (the periodic job, and at start)."""
        if self._rebuilding:
            return
        if self.unacknowledged.dirty or self.holds.dirty or not await self.unacknowledged.built():
            await self.rebuild()

    async def start(self, tail: int = TAIL_ON_START) -> None:
        """At start: rebuild what is missing, then project again the orders of the newest ``tail`` events — a
        process killed between an append and its projection (and a caller that never retried) left at most
        those behind. Entries carry their sequence, so this changes only what is stale."""
        await self.check()
        last = await self._reader.last_sequence(events.DOMAIN)
        touched = {
            stored.envelope.object_key for stored in await self._reader.since(events.DOMAIN, max(0, last - tail))
        }
        for po_id in touched:
            state, sequence = domain.INITIAL, 0
            for stored in await self._reader.history(events.DOMAIN, po_id):
                event = events.decode(stored)
                if event is not None:
                    state = domain.evolve(state, recorded(stored, event))
                sequence = stored.sequence
            await self.unacknowledged.write(self._redis, po_id, state, sequence)
            await self.holds.reschedule(po_id, state)

    async def rebuild(self) -> None:
        """Fold the whole PO stream and write both models; writes made meanwhile by commands are kept when they
        are newer (each entry carries its sequence)."""
        self._rebuilding = True
        self.unacknowledged.dirty = self.holds.dirty = False
        try:
            states, count = await fold_stream(self._reader, events.DOMAIN, events.decode, domain.evolve, domain.INITIAL)
            pipeline = self._redis.pipeline(transaction=False)
            for po_id, (state, sequence) in states.items():
                await self.unacknowledged.write(pipeline, po_id, state, sequence)
                self.holds.write(pipeline, po_id, state)
            pipeline.hset(self.unacknowledged.meta, "built", "1")
            await pipeline.execute()
            log.info("read models rebuilt from %s events (%s orders)", count, len(states))
        except Exception:
            self.unacknowledged.dirty = True
            raise
        finally:
            self._rebuilding = False
