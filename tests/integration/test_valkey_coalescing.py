"""The services' Valkey client sends the calls of one event-loop turn as one pipeline, against a real valkey-server:
one connection for many concurrent calls, each caller its own answer or error, every caller of a batch failed
(not left waiting) when its connection is dropped."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ResponseError

from libs.runtime.app import valkey_watchdog
from libs.runtime.valkey import CoalescingRedis
from tests.integration.helpers import frozen

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


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


async def test_calls_made_while_a_batch_is_on_the_wire_go_out_together_after_it(named_client, redis):
    client, name = named_client
    await client.set(f"{name}:k", "v")
    busy = client.eval("local n = 0 for i = 1, 3000000 do n = n + 1 end return 1", 0)  # ~10 ms of Lua
    slow = asyncio.ensure_future(busy)  # a batch Valkey takes a moment to answer
    await asyncio.sleep(0.001)
    later = []
    for _ in range(10):  # one call per loop turn, each while the first batch waits for its answer
        later.append(asyncio.ensure_future(client.get(f"{name}:k")))
        await asyncio.sleep(0)
    assert await slow == 1
    assert await asyncio.gather(*later) == [b"v"] * 10
    # Sent turn by turn, the ten calls would have taken connections of their own beside the busy one.
    assert await connections_named(redis, name) == 1


async def test_each_caller_gets_its_own_answer_or_error(named_client, redis):
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
    assert await connections_named(redis, name) == 1  # all in one batch


async def test_a_failed_response_callback_fails_its_caller_alone_and_the_replies_stay_in_step(named_client):
    client, name = named_client
    large = b"B" * 200_000  # a reply that spans many reads: one left unread would answer the next batch
    await client.set(f"{name}:a", "A")
    await client.set(f"{name}:b", large)
    await client.zadd(f"{name}:z", {"m": 1})

    def unreadable(score: object) -> float:
        raise ValueError("this caller's own conversion failed")

    results = await asyncio.gather(
        client.get(f"{name}:a"),
        client.zrange(f"{name}:z", 0, -1, withscores=True, score_cast_func=unreadable),
        client.get(f"{name}:b"),
        client.get(f"{name}:a"),
        return_exceptions=True,
    )
    assert results[0] == b"A"
    assert isinstance(results[1], ValueError)
    assert list(results[2:]) == [large, b"A"]
    assert list(await asyncio.gather(client.get(f"{name}:a"), client.get(f"{name}:a"))) == [b"A", b"A"]


async def test_a_caller_cancelled_while_queued_sends_nothing(named_client):
    client, name = named_client
    calls = [asyncio.ensure_future(client.incr(f"{name}:n")) for _ in range(10)]
    await asyncio.sleep(0)  # every call queued, the batch not sent yet
    calls[3].cancel()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    counted = [result for result in results[:3] + results[4:] if isinstance(result, int)]
    assert sorted(counted) == list(range(1, 10))
    assert await client.get(f"{name}:n") == b"9"  # the cancelled increment never reached Valkey


async def test_a_connection_state_command_does_not_join_a_batch(named_client):
    client, name = named_client
    await client.set(f"{name}:k", "v")
    results = await asyncio.wait_for(
        asyncio.gather(client.get(f"{name}:k"), client.execute_command("WATCH", f"{name}:k"), client.get(f"{name}:k")),
        5,
    )
    assert list(results) == [b"v", True, b"v"]


async def test_closing_sends_what_is_queued_and_leaves_no_connection(valkey_server, redis):
    name = f"coalescing-{uuid.uuid4().hex[:8]}"
    client = CoalescingRedis.from_url(valkey_server.url, client_name=name)
    await redis.set(f"{name}:k", "v")
    calls = [asyncio.ensure_future(client.get(f"{name}:k")) for _ in range(3)]
    await asyncio.sleep(0)  # queued, not sent
    await client.aclose()
    assert await asyncio.gather(*calls) == [b"v"] * 3
    for _ in range(50):  # the server sees the close a moment later
        if await connections_named(redis, name) == 0:
            break
        await asyncio.sleep(0.02)
    assert await connections_named(redis, name) == 0


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
    assert len({id(result) for result in results}) == len(results)  # each caller raises its own
    assert await client.get(f"{name}:k0") is None  # and the client recovers once the server answers again
