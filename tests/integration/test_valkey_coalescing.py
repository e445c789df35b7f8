"""The services' Valkey client sends the calls of one event-loop turn as one pipeline, against a real valkey-server:
one connection for many concurrent calls, each caller its own answer or error, every caller of a batch failed
(not left waiting) when its connection is dropped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ResponseError

from libs.runtime.app import valkey_watchdog
from libs.runtime.valkey import CoalescingRedis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


@contextlib.contextmanager
def frozen(server: Any) -> Iterator[None]:
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


@pytest.fixture
async def named_client(valkey_server):
    """A coalescing client whose connections carry a name of their own, so CLIENT LIST can count them."""
    name = f"coalescing-{uuid.uuid4().hex[:8]}"
    client = CoalescingRedis.from_url(valkey_server.url, client_name=name)
    yield client, name
    await client.aclose()


async def connections_named(admin: Redis, name: str) -> int:
    return sum(1 for client in await admin.client_list() if client.get("name") == name)


async def test_concurrent_calls_share_one_connection(named_client, redis):
    client, name = named_client
    await client.set(f"{name}:k", "v")
    answers = await asyncio.gather(*(client.get(f"{name}:k") for _ in range(50)))
    assert answers == [b"v"] * 50
    # Sent one by one, 50 calls in flight at once take 50 connections from the pool.
    assert await connections_named(redis, name) == 1


async def test_each_caller_gets_its_own_answer_or_error(named_client):
    client, name = named_client
    await client.set(f"{name}:text", "not a number")
    await client.hset(f"{name}:hash", mapping={"a": "1", "b": "2"})
    script = client.register_script("return ARGV[1] .. KEYS[1]")
    script.sha = "0" * 40  # unknown to the server: NOSCRIPT, which the script answers by loading itself
    results = await asyncio.gather(
        client.get(f"{name}:text"),
        client.incr(f"{name}:text"),
        client.hmget(f"{name}:hash", "a", "b", "c"),
        script(keys=["k"], args=["x"]),
        client.set(f"{name}:new", "1", nx=True),
        client.set(f"{name}:new", "2", nx=True),
        return_exceptions=True,
    )
    assert results[0] == b"not a number"
    assert isinstance(results[1], ResponseError)
    assert "not an integer" in str(results[1])
    assert results[2] == [b"1", b"2", None]
    assert results[3] == b"xk"
    assert sorted(map(bool, results[4:])) == [False, True]  # one of the two SET NX wins, the other is refused
    assert await client.get(f"{name}:new") in (b"1", b"2")


async def test_a_cancelled_caller_leaves_the_others_their_answers(named_client):
    client, name = named_client
    await client.set(f"{name}:k", "v")
    calls = [asyncio.ensure_future(client.get(f"{name}:k")) for _ in range(10)]
    calls[3].cancel()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    assert results[:3] + results[4:] == [b"v"] * 9


async def test_a_dropped_connection_fails_every_caller_of_its_batch(named_client, valkey_server):
    client, name = named_client
    await client.ping()
    check = valkey_watchdog(client, timeout=0.3)
    with frozen(valkey_server):
        calls = asyncio.gather(*(client.get(f"{name}:k{n}") for n in range(20)), return_exceptions=True)
        await asyncio.sleep(0.05)  # the batch is on the wire, waiting for a frozen server
        await check()  # no answer to its ping: every connection is dropped
        results = await asyncio.wait_for(calls, 5)
    assert all(isinstance(result, ConnectionError) for result in results), results
    assert await client.get(f"{name}:k0") is None  # and the client recovers once the server answers again
