"""Stored responses per idempotency key (DESIGN §3.4), in Valkey.

The same command twice gets the same answer; the same key with different
content is a conflict. Valkey is only the fast path: records expire and can
be lost, and the object's event history in JetStream stays the lasting
judge (the service falls back to it on a miss).

Value layout: 64 hex chars of the content fingerprint, then the response bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from libs.runtime.subjects import Namespace

_FINGERPRINT_CHARS = 64


@dataclass(eq=False)
class IdempotencyConflict(Exception):
    key: str
    stored_fingerprint: str
    fingerprint: str

    def __post_init__(self) -> None:
        Exception.__init__(self, f"idempotency key {self.key!r} was used with different content")


class IdempotencyStore:
    def __init__(self, redis: Redis, namespace: Namespace, service: str, ttl_seconds: int) -> None:
        self._redis = redis
        self._ns = namespace
        self._service = service
        self._ttl = ttl_seconds

    def _key(self, key: str) -> str:
        return self._ns.redis_key(self._service, "idem", key)

    async def lookup(self, key: str, fingerprint: str) -> bytes | None:
        """The stored response for ``key``, None on a miss; raises IdempotencyConflict on other content."""
        raw = await self._redis.get(self._key(key))
        if raw is None:
            return None
        return self._check(key, fingerprint, raw)

    async def remember(
        self, key: str, fingerprint: str, response: bytes, also: Callable[[Pipeline], object] | None = None
    ) -> bytes:
        """Store the response unless one is stored already; returns the response that stands.

        ``also`` adds commands of the caller's own (a read-model update) to the same round trip."""
        if len(fingerprint) != _FINGERPRINT_CHARS:
            raise ValueError("fingerprint must be a SHA-256 hex digest")
        # TTL: stored responses are a cache of the stream's verdict; the stream keeps the lasting record.
        if also is None:
            stored = await self._redis.set(self._key(key), fingerprint.encode() + response, nx=True, ex=self._ttl)
        else:
            pipeline = self._redis.pipeline(transaction=False)
            pipeline.set(self._key(key), fingerprint.encode() + response, nx=True, ex=self._ttl)
            also(pipeline)
            stored = (await pipeline.execute())[0]
        if stored:
            return response
        existing = await self._redis.get(self._key(key))
        if existing is None:  # expired between the two calls: try once more
            return await self.remember(key, fingerprint, response)
        return self._check(key, fingerprint, existing)

    async def forget(self, key: str) -> None:
        await self._redis.delete(self._key(key))

    @staticmethod
    def _check(key: str, fingerprint: str, raw: bytes | str) -> bytes:
        if not isinstance(raw, bytes):  # redis-py types values as bytes | str; str means decode_responses=True
            raise TypeError("the idempotency store needs a Redis client without decode_responses")
        stored_fingerprint = raw[:_FINGERPRINT_CHARS].decode()
        if stored_fingerprint != fingerprint:
            raise IdempotencyConflict(key, stored_fingerprint, fingerprint)
        return raw[_FINGERPRINT_CHARS:]
