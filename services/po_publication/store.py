"""po-publication's storage: the PO stream (source of truth) through the command handler, and the Valkey
read models ``<ns>:po-publication:*`` that are projections of it."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from libs.runtime.commands import CommandHandler, StreamLog, recorded
from libs.runtime.decider import Recorded
from libs.runtime.events import EventPublisher, EventReader
from services.po_publication import domain, events

log = logging.getLogger(__name__)

OrderCommands = CommandHandler[domain.OrderState, domain.OrderEvent]


def order_log(publisher: EventPublisher, reader: EventReader) -> StreamLog[domain.OrderEvent]:
    return StreamLog(publisher, reader, events.DOMAIN, encode=events.encode, decode=events.decode, settle=events.settle)


def size_of(state: domain.OrderState) -> int:
    """About what a folded order holds in memory: its documents dominate."""
    documents: int = sum(v.document.ByteSize() for v in state.versions if v.document is not None)
    documents += sum(h.document.ByteSize() for h in state.held.values())
    return 512 + 3 * documents + 256 * (len(state.versions) + len(state.acknowledgments))


# One round trip for a page: the ids in approval order and their entries.
_PAGE = """
local ids = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2])
if #ids == 0 then return {} end
local entries = redis.call('HMGET', KEYS[2], unpack(ids))
local out = {}
for i, id in ipairs(ids) do out[#out + 1] = id; out[#out + 1] = entries[i] or false end
return out
"""


class UnacknowledgedOrders:
    """Read model: orders whose latest version the ERP has not acknowledged, oldest approval first.

    A sorted set (po id by approval time) and a hash (po id -> entry). No TTL: it mirrors the stream and
    is rebuilt from it."""

    def __init__(self, redis: Redis, key: str) -> None:
        self._redis = redis
        self._order = key
        self._entries = key + ":entries"
        self._page = redis.register_script(_PAGE)

    async def applied(self, key: str, state: domain.OrderState, recorded: Recorded[domain.OrderEvent]) -> None:
        if isinstance(recorded.event, domain.VersionRejected | domain.VersionHeld | domain.HoldExpired):
            return  # the latest version and the ERP's acknowledgments are unchanged
        pipeline = self._redis.pipeline(transaction=False)
        self.write(pipeline, key, state)
        await pipeline.execute()

    def write(self, pipeline: Pipeline, po_id: str, state: domain.OrderState) -> None:
        latest = state.latest
        if latest is None:
            return
        acknowledged = state.acknowledged_version
        if acknowledged >= latest.version:
            pipeline.zrem(self._order, po_id)
            pipeline.hdel(self._entries, po_id)
            return
        approved = latest.order.approved_at.timestamp() if latest.order.approved_at else 0.0
        entry = json.dumps([latest.version, acknowledged, approved])
        pipeline.zadd(self._order, {po_id: approved})
        pipeline.hset(self._entries, po_id, entry)

    async def page(self, offset: int, count: int) -> tuple[list[domain.Unacknowledged], bool]:
        raw = await self._page(keys=[self._order, self._entries], args=[offset, offset + count])
        found: list[domain.Unacknowledged] = []
        for index in range(0, len(raw), 2):
            po_id = raw[index].decode() if isinstance(raw[index], bytes) else str(raw[index])
            entry = raw[index + 1]
            if not entry:
                continue
            latest, acknowledged, approved = json.loads(entry)
            found.append(domain.Unacknowledged(po_id, int(latest), int(acknowledged), float(approved)))
        more = len(raw) // 2 > count
        return found[:count], more

    def clear(self, pipeline: Pipeline) -> None:
        pipeline.delete(self._order, self._entries)


class HoldDeadlines:
    """The sweeper's to-do list: orders holding out-of-order versions, scored by the earliest deadline.
    The held versions themselves are events in the stream; no TTL, it is rebuilt from the stream."""

    def __init__(self, redis: Redis, key: str) -> None:
        self._redis = redis
        self._key = key

    async def applied(self, key: str, state: domain.OrderState, recorded: Recorded[domain.OrderEvent]) -> None:
        if not isinstance(recorded.event, domain.VersionHeld | domain.HoldExpired | domain.VersionChanged):
            return
        pipeline = self._redis.pipeline(transaction=False)
        self.write(pipeline, key, state)
        await pipeline.execute()

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
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    def clear(self, pipeline: Pipeline) -> None:
        pipeline.delete(self._key)


class ReadModels:
    """Both read models, rebuilt together from the PO stream when Valkey lost them."""

    def __init__(
        self,
        redis: Redis,
        reader: EventReader,
        unacknowledged: UnacknowledgedOrders,
        holds: HoldDeadlines,
        marker: str,
    ) -> None:
        self._redis = redis
        self._reader = reader
        self.unacknowledged = unacknowledged
        self.holds = holds
        self._marker = marker

    @property
    def projections(self) -> Sequence[UnacknowledgedOrders | HoldDeadlines]:
        return (self.unacknowledged, self.holds)

    async def rebuild(self) -> None:
        """Fold the whole PO stream and write both read models, unless Valkey still has them (a marker key
        says so). A startup step: it logs the number of events read."""
        if await self._redis.exists(self._marker):
            return
        states: dict[str, domain.OrderState] = {}
        count = 0
        async for stored in self._reader.scan(events.DOMAIN):
            count += 1
            event = events.decode(stored)
            if event is None:
                continue
            key = stored.envelope.object_key
            states[key] = domain.evolve(states.get(key, domain.INITIAL), recorded(stored, event))
        pipeline = self._redis.pipeline(transaction=False)
        self.unacknowledged.clear(pipeline)
        self.holds.clear(pipeline)
        for po_id, state in states.items():
            self.unacknowledged.write(pipeline, po_id, state)
            self.holds.write(pipeline, po_id, state)
        pipeline.set(self._marker, b"1")
        await pipeline.execute()
        log.info("rebuilt the read models from %d events of the PO stream", count)
