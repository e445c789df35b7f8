"""JetStream key-value buckets: opening one (created when missing), and a stream sequence kept in one that only
moves forward.

A mark names the stream whose sequence it is by the stream's creation time: a stream deleted and created again begins
its sequences again, and once they grow past the old mark, only the name tells the old mark from a new one.

A bucket is a stream, so what is kept there is as durable as the events it counts (same storage, same replicas)
and outlives Valkey. Each component writes only its own buckets (``<ns>_<name>``, libs/runtime/broker_access.py).
"""

from __future__ import annotations

import logging
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


# A stream's creation time as the broker tells it (RFC 3339, nanoseconds): what a stored mark may carry, at most.
MAX_STREAM_CHARS = 64


class MarkUnreadable(Exception):
    """The bucket holds something at the mark's key that is not a stream sequence."""


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
    key's revision). A mark of another stream (one since recreated) is overwritten, as one that is no sequence."""

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
        that is no sequence, or one of another stream); the sequence stored after."""
        kv = await self._open()
        for _attempt in range(ADVANCE_ATTEMPTS):
            try:
                entry = await kv.get(self.key)
            except KeyNotFoundError:
                try:
                    await kv.create(self.key, _value(sequence, stream))
                except KeyWrongLastSequenceError:  # another writer created it first
                    continue
                return sequence
            try:
                stored = _mark(entry.value, self.bucket, self.key)
            except MarkUnreadable as unreadable:  # a sequence true on its own replaces what is no sequence
                log.error("%s; storing %s over it", unreadable, sequence)
                stored = None
            if stored is not None and not stored.of(stream):
                log.warning(
                    "%s/%s holds a sequence of another stream (%s); storing %s over it",
                    self.bucket,
                    self.key,
                    stored.stream,
                    sequence,
                )
                stored = None
            if stored is not None and stored.sequence >= sequence:
                return stored.sequence
            try:
                await kv.update(self.key, _value(sequence, stream), last=entry.revision)
            except KeyWrongLastSequenceError:  # another writer moved it since the read
                continue
            return sequence
        raise KeyWrongLastSequenceError(
            description=f"{self.bucket}/{self.key} kept moving under {ADVANCE_ATTEMPTS} advances"
        )

    async def replace(self, sequence: int, stream: str) -> None:
        """Store ``sequence`` of the stream created at ``stream`` whatever is stored: for a stream that was
        recreated, whose sequences began again."""
        kv = await self._open()
        await kv.put(self.key, _value(sequence, stream))

    async def _open(self) -> KeyValue:
        if self._kv is None:
            self._kv = await open_bucket(self._js, self.bucket, self._description, replicas=self._replicas)
        return self._kv


def _value(sequence: int, stream: str) -> bytes:
    return f"{sequence} {stream}".encode() if stream else str(sequence).encode()


def _mark(value: bytes | None, bucket: str, key: str) -> Mark:
    text = (value or b"").decode("ascii", errors="replace")
    sequence, _, stream = text.partition(" ")
    if (
        not sequence.isdigit()
        or len(sequence) > 20
        or len(stream) > MAX_STREAM_CHARS
        or not stream.isprintable()
        or " " in stream
    ):
        raise MarkUnreadable(f"{bucket}/{key} holds {text[:40]!r}, not a stream sequence")
    return Mark(int(sequence), stream)
