"""JetStream key-value buckets: opening one (created when missing), and a stream sequence kept in one that only
moves forward.

A mark names the stream whose sequence it is by the stream's creation time: a stream deleted and created again begins
its sequences again, and once they grow past the old mark, only the name tells the old mark from a new one.

A bucket is a stream, so what is kept there is as durable as the events it counts (same storage, same replicas)
and outlives Valkey. Each component writes only its own buckets (``<ns>_<name>``, libs/runtime/broker_access.py).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

# Compare-and-set rounds before giving up on an advance (each lost round means another writer moved the mark).
ADVANCE_ATTEMPTS = 10


async def open_bucket(js: JetStreamContext, bucket: str, description: str, *, replicas: int = 1) -> KeyValue:
    """The bucket, created (one value per key, file storage, ``replicas``) when it does not exist yet."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(
            KeyValueConfig(
                bucket=bucket, description=description, history=1, storage=StorageType.FILE, replicas=replicas
            )
        )


# A stored mark: the sequence, then the creation time of the stream it counts as the broker tells it (RFC 3339 in
# UTC, nanoseconds). Plain digits were stored before marks named their stream.
_STREAM_NAME = r"[0-9A-Za-z:.+-]{1,64}"
_STORED = re.compile(rf"(\d{{1,20}})(?: ({_STREAM_NAME}))?")
_STREAM = re.compile(_STREAM_NAME)


class MarkUnreadable(Exception):
    """The bucket holds something at the mark's key that is not a stream sequence."""


class MarkOfAnotherStream(Exception):
    """The bucket holds the mark of another stream than the writer's: one of the two was recreated since."""

    def __init__(self, bucket: str, key: str, stored: Mark) -> None:
        super().__init__(f"{bucket}/{key} holds sequence {stored.sequence} of the stream created {stored.stream}")
        self.stored = stored


@dataclass(frozen=True, slots=True)
class Mark:
    sequence: int
    stream: str  # the creation time of the stream whose sequence it is ("": stored before marks named their stream)

    def of(self, stream: str) -> bool:
        """Whether this is a sequence of the stream created at ``stream`` (a mark naming no stream is taken as one)."""
        return not self.stream or self.stream == stream


class SequenceMark:
    """A stream sequence kept under one key that only moves forward, whoever writes it: an advance to a sequence
    below the one stored leaves it, and writers racing each other settle on the highest (compare-and-set on the
    key's revision). The mark of another stream is not advanced over: the writer is told, and replaces it when its own
    stream is the one there is."""

    def __init__(self, js: JetStreamContext, bucket: str, key: str, description: str, *, replicas: int = 1) -> None:
        self._js = js
        self.bucket = bucket
        self.key = key
        self._description = description
        self._replicas = replicas
        self._kv: KeyValue | None = None

    async def read(self) -> Mark | None:
        """The mark stored (None: none yet)."""
        kv = await self._open()
        try:
            entry = await kv.get(self.key)
        except KeyNotFoundError:  # never written, or deleted by an operator
            return None
        return _mark(entry.value, self.bucket, self.key)

    async def advance(self, sequence: int, stream: str) -> int:
        """Store ``sequence`` of the stream created at ``stream`` unless a higher one of it is stored (over a value
        that is no sequence); the sequence stored after. :class:`MarkOfAnotherStream` when the mark stored is of
        another stream: which of the two is the stream there is, the caller knows (:meth:`replace`)."""
        value = _value(sequence, stream)
        kv = await self._open()
        for _attempt in range(ADVANCE_ATTEMPTS):
            try:
                entry = await kv.get(self.key)
            except KeyNotFoundError:
                try:
                    await kv.create(self.key, value)
                except KeyWrongLastSequenceError:  # another writer created it first
                    continue
                return sequence
            try:
                stored = _mark(entry.value, self.bucket, self.key)
            except MarkUnreadable as unreadable:  # a sequence true on its own replaces what is no sequence
                log.error("%s; storing %s over it", unreadable, sequence)
                stored = None
            if stored is not None and not stored.of(stream):
                raise MarkOfAnotherStream(self.bucket, self.key, stored)
            if stored is not None and stored.sequence >= sequence:
                return stored.sequence
            try:
                await kv.update(self.key, value, last=entry.revision)
            except KeyWrongLastSequenceError:  # another writer moved it since the read
                continue
            return sequence
        raise KeyWrongLastSequenceError(
            description=f"{self.bucket}/{self.key} kept moving under {ADVANCE_ATTEMPTS} advances"
        )

    async def replace(self, sequence: int, stream: str) -> None:
        """Store ``sequence`` of the stream created at ``stream`` whatever is stored: over the mark of a stream
        since recreated, whose sequences began again."""
        value = _value(sequence, stream)
        kv = await self._open()
        await kv.put(self.key, value)

    async def _open(self) -> KeyValue:
        if self._kv is None:
            self._kv = await open_bucket(self._js, self.bucket, self._description, replicas=self._replicas)
        return self._kv


def _value(sequence: int, stream: str) -> bytes:
    if sequence < 0 or not _STREAM.fullmatch(stream):
        raise ValueError(f"a mark is a stream sequence and the creation time of its stream, not {sequence} {stream!r}")
    return f"{sequence} {stream}".encode()


def _mark(value: bytes | None, bucket: str, key: str) -> Mark:
    text = (value or b"").decode("ascii", errors="replace")
    stored = _STORED.fullmatch(text)
    if stored is None:
        raise MarkUnreadable(f"{bucket}/{key} holds {text[:40]!r}, not a stream sequence")
    return Mark(int(stored[1]), stored[2] or "")
