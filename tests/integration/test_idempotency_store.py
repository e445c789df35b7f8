"""The Valkey idempotency store against a real valkey-server."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from libs.runtime.idempotency import IdempotencyConflict, IdempotencyStore
from libs.runtime.subjects import Namespace
from libs.runtime.testing import unique_namespace

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def fp(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def namespace() -> Namespace:
    return Namespace(unique_namespace())


@pytest.fixture
def store(redis, namespace) -> IdempotencyStore:
    return IdempotencyStore(redis, namespace, "tests", ttl_seconds=60)


async def test_miss_then_stored_response_is_replayed(store):
    assert await store.lookup("cmd-1", fp("a")) is None
    assert await store.remember("cmd-1", fp("a"), b"answer-1") == b"answer-1"
    assert await store.lookup("cmd-1", fp("a")) == b"answer-1"


async def test_same_key_with_other_content_is_a_conflict(store):
    await store.remember("cmd-1", fp("a"), b"answer-1")
    with pytest.raises(IdempotencyConflict) as conflict:
        await store.lookup("cmd-1", fp("b"))
    assert conflict.value.stored_fingerprint == fp("a")
    with pytest.raises(IdempotencyConflict):
        await store.remember("cmd-1", fp("b"), b"answer-2")
    assert await store.lookup("cmd-1", fp("a")) == b"answer-1"


async def test_the_first_of_concurrent_writers_stands(store):
    results = await asyncio.gather(
        *(store.remember("race", fp("same"), f"answer-{i}".encode()) for i in range(10)), return_exceptions=True
    )
    assert len(set(results)) == 1


async def test_records_expire_and_are_namespaced(store, redis, namespace):
    await store.remember("cmd-ttl", fp("a"), b"x")
    [key] = [k async for k in redis.scan_iter(f"{namespace.root}:*")]
    assert key.decode() == f"{namespace.root}:tests:idem:cmd-ttl"
    assert 0 < await redis.ttl(key) <= 60
    await store.forget("cmd-ttl")
    assert await store.lookup("cmd-ttl", fp("a")) is None


async def test_fingerprint_must_be_a_sha256(store):
    with pytest.raises(ValueError, match="SHA-256"):
        await store.remember("cmd", "short", b"x")
