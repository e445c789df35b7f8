"""po-publication's storage: the PO stream (source of truth) and its Valkey keyspace ``<ns>:po-publication:``."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from redis.asyncio import Redis

from libs.runtime.events import Event, EventPublisher, EventReader, Published, StoredEvent
from libs.runtime.idempotency import IdempotencyStore
from services.po_publication.events import ACKNOWLEDGED, DOCUMENT_EVENTS, DOMAIN, HELD, HOLD_EXPIRED
from syncgov.po.v1 import events_pb2


@dataclass(frozen=True, slots=True)
class OrderHistory:
    """One order as its events tell it: versions oldest first, the ERP's acknowledgments, and the sequence
    the next write must expect."""

    versions: list[StoredEvent]
    acknowledgments: list[StoredEvent]
    last_sequence: int
    held: list[StoredEvent] = ()  # versions that arrived before their predecessor
    expired: frozenset[int] = frozenset()  # held versions whose hold ran out

    def pending_held(self) -> list[StoredEvent]:
        """Held versions neither applied nor expired, lowest version first."""
        applied = {e.envelope.object_version for e in self.versions}
        pending = [e for e in self.held if e.envelope.object_version not in applied | self.expired]
        return sorted(pending, key=lambda e: e.envelope.object_version)

    @property
    def latest_version(self) -> int:
        return self.versions[-1].envelope.object_version if self.versions else 0

    def version(self, number: int) -> StoredEvent | None:
        return next((e for e in self.versions if e.envelope.object_version == number), None)


class PurchaseOrderStore:
    def __init__(
        self,
        publisher: EventPublisher,
        reader: EventReader,
        idempotency: IdempotencyStore,
        redis: Redis,
        unacked_key: str,
        held_key: str,
    ) -> None:
        self._publisher = publisher
        self._reader = reader
        self.idempotency = idempotency
        self._redis = redis
        # Read model: orders whose latest version the ERP has not acknowledged, scored by the approval
        # time of that version. No TTL: it mirrors the stream and is rebuilt from it (rebuild_read_models).
        self._unacked = unacked_key
        # Orders holding out-of-order versions, scored by the earliest hold deadline; the versions themselves
        # are events in the stream (durable), this is only the sweeper's to-do list. No TTL, like the above.
        self._held = held_key

    async def rebuild_read_models(self) -> int:
        """Rebuild the unacknowledged list and the held to-do list from the PO stream, unless Valkey still
        has them (a marker key says so). Returns the number of events read."""
        marker = self._unacked + ":built"
        if await self._redis.exists(marker):
            return 0
        latest: dict[str, tuple[int, float]] = {}
        acknowledged: dict[str, int] = {}
        held: dict[str, dict[int, float]] = {}
        done: dict[str, set[int]] = {}
        count = 0
        async for event in self._reader.scan(DOMAIN):
            count += 1
            po_id, version, name = event.envelope.object_key, event.envelope.object_version, _event_name(event)
            if name in DOCUMENT_EVENTS:
                occurred = event.envelope.occurred_at
                latest[po_id] = (version, occurred.seconds + occurred.nanos / 1e9)
                done.setdefault(po_id, set()).add(version)
            elif name == ACKNOWLEDGED:
                acknowledged[po_id] = max(acknowledged.get(po_id, 0), version)
            elif name == HELD:
                until = event.unpack(events_pb2.PurchaseOrderVersionHeld).hold_until
                held.setdefault(po_id, {})[version] = until.seconds + until.nanos / 1e9
            elif name == HOLD_EXPIRED:
                done.setdefault(po_id, set()).add(version)
        pipeline = self._redis.pipeline(transaction=False)
        for po_id, (version, approved) in latest.items():
            if acknowledged.get(po_id, 0) < version:
                pipeline.zadd(self._unacked, {po_id: approved})
        for po_id, versions in held.items():
            pending = [until for v, until in versions.items() if v not in done.get(po_id, set())]
            if pending:
                pipeline.zadd(self._held, {po_id: min(pending)})
        pipeline.set(marker, b"1")
        await pipeline.execute()
        return count

    async def mark_unacknowledged(self, po_id: str, approved_at: Timestamp) -> None:
        await self._redis.zadd(self._unacked, {po_id: approved_at.seconds + approved_at.nanos / 1e9})

    def marking_unacknowledged(self, po_id: str, approved_at: Timestamp):
        """The same update, to ride in another command's round trip (IdempotencyStore.remember's ``also``)."""
        return lambda pipeline: pipeline.zadd(self._unacked, {po_id: approved_at.seconds + approved_at.nanos / 1e9})

    async def mark_acknowledged(self, po_id: str) -> None:
        await self._redis.zrem(self._unacked, po_id)

    async def hold_until(self, po_id: str, deadline: float) -> None:
        """Remember that ``po_id`` holds a version until ``deadline`` (epoch seconds), keeping the earliest."""
        await self._redis.zadd(self._held, {po_id: deadline}, lt=True)
        await self._redis.zadd(self._held, {po_id: deadline}, nx=True)

    async def holds_due(self, now: float) -> list[str]:
        return [m.decode() if isinstance(m, bytes) else m for m in await self._redis.zrangebyscore(self._held, 0, now)]

    async def reschedule_hold(self, po_id: str, deadline: float | None) -> None:
        if deadline is None:
            await self._redis.zrem(self._held, po_id)
        else:
            await self._redis.zadd(self._held, {po_id: deadline})

    async def unacknowledged(self, offset: int, count: int) -> tuple[list[str], bool]:
        members = await self._redis.zrange(self._unacked, offset, offset + count)
        names = [m.decode() if isinstance(m, bytes) else m for m in members]
        return names[:count], len(names) > count

    async def append(self, event: Event, *, expected_last_sequence: int | None) -> Published:
        return await self._publisher.publish(event, expected_last_sequence=expected_last_sequence)

    async def event_at(self, sequence: int) -> StoredEvent:
        return await self._reader.at(DOMAIN, sequence)

    async def order(self, po_id: str) -> OrderHistory:
        events = await self._reader.history(DOMAIN, po_id)
        return OrderHistory(
            versions=[e for e in events if _event_name(e) in DOCUMENT_EVENTS],
            acknowledgments=[e for e in events if _event_name(e) == ACKNOWLEDGED],
            last_sequence=events[-1].sequence if events else 0,
            held=[e for e in events if _event_name(e) == HELD],
            expired=frozenset(e.envelope.object_version for e in events if _event_name(e) == HOLD_EXPIRED),
        )

    async def versions(self, po_id: str) -> list[StoredEvent]:
        """Every document event (publish, change, cancel) of one order, oldest first."""
        return [event for event in await self._reader.history(DOMAIN, po_id) if _event_name(event) in DOCUMENT_EVENTS]

    async def version(self, po_id: str, version: int) -> StoredEvent | None:
        for event in await self.versions(po_id):
            if event.envelope.object_version == version:
                return event
        return None


def _event_name(event: StoredEvent) -> str:
    return event.subject.rsplit(".", 1)[-1]


class SupplierDirectory:
    """Supplier states as supplier events tell them: a read model in memory, followed from the stream."""

    def __init__(self) -> None:
        self._status: dict[str, str] = {}
        self._merged_into: dict[str, str] = {}

    def set_status(self, supplier_id: str, status: str) -> None:
        self._status[supplier_id] = status

    def merge(self, merged_id: str, surviving_id: str) -> None:
        self._status[merged_id] = "merged"
        self._merged_into[merged_id] = surviving_id

    def lookup(self, supplier_id: str) -> tuple[str | None, str]:
        return self._status.get(supplier_id), self._merged_into.get(supplier_id, "")
