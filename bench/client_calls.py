"""Benchmark: what one Valkey or JetStream call costs the calling process, the unit prices of a request's work.

    .venv/bin/python bench/client_calls.py [--calls 6000] [--concurrency 64]

Starts its own nats-server (JetStream, default fsync) and valkey-server, then makes ``--calls`` calls of each kind
from ``--concurrency`` coroutines on uvloop, as a service does under load, and prints the process CPU (user +
system) per call and the calls per second: redis-py one call at a time (GET, HMGET, EVALSHA), redis-py pipelines
(one command; 64 commands, per command), the services' ``CoalescingRedis`` (libs/runtime/valkey.py) with the same
HMGETs, nats-py JetStream publish with acknowledgment (with and without the four headers an event carries), a
direct get of a subject's last message, the same publish and direct get through the services' ``Requests``
(libs/runtime/requests.py), two direct gets through it one after the other and at once (per pair), and a core
publish without acknowledgment. Each kind runs twice and the
second run is printed (the first warms connections and caches). Only this process is measured, not the servers.
Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import redis.asyncio as redis
import uvloop
from nats.js.api import StreamConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from libs.runtime.local_servers import NatsServer, ValkeyServer
from libs.runtime.requests import Requests
from libs.runtime.valkey import CoalescingRedis

HEADERS = {
    "Nats-Msg-Id": "",
    "Syncgov-Event-Type": "syncgov.po.v1.PurchaseOrderPublished",
    "Content-Type": "application/x-protobuf",
    "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-00",
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(name: str, call: Callable[[int], Awaitable[Any]], calls: int, concurrency: int, per: int = 1) -> None:
    """``calls`` calls spread over ``concurrency`` coroutines, twice; the second run printed, per ``per`` commands."""

    async def worker(numbers: Iterator[int]) -> None:
        for number in numbers:
            await call(number)

    for _run in range(2):
        numbers = iter(range(calls))  # shared: each coroutine takes the next number

        cpu, wall = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(worker(numbers) for _ in range(concurrency)))
        cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    commands = calls * per
    print(f"{name:44s} {1e6 * cpu / commands:8.1f} {commands / wall:12.0f}", flush=True)


async def run(calls: int, concurrency: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="syncgov-client-calls-"))
    nats_server = NatsServer(data_dir=workdir / "nats", sync_always=False).start()
    valkey = ValkeyServer(data_dir=workdir / "valkey").start()
    try:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="BENCH", subjects=["bench.>"], allow_direct=True))
        plain = redis.Redis.from_url(valkey.url)
        coalescing = CoalescingRedis.from_url(valkey.url)
        await plain.hset("bench:h", mapping={"a": "1", "b": "2"})
        await plain.set("bench:k", "v")
        sha = await plain.script_load("return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])")
        data = os.urandom(600)  # about an event's envelope
        await js.publish("bench.order.1", data, headers={**HEADERS, "Nats-Msg-Id": "first"})
        await js.publish("bench.order.2", data, headers={**HEADERS, "Nats-Msg-Id": "second"})

        async def pipeline_of(size: int) -> None:
            pipeline = plain.pipeline(transaction=False)
            for _ in range(size):
                pipeline.hmget("bench:h", "a", "b")
            await pipeline.execute()

        print(f"{calls} calls from {concurrency} coroutines; this process's CPU only")
        print(f"{'call':44s} {'µs CPU':>8s} {'calls/s':>12s}")
        await measure("redis-py GET", lambda _: plain.get("bench:k"), calls, concurrency)
        await measure("redis-py HMGET (2 fields)", lambda _: plain.hmget("bench:h", "a", "b"), calls, concurrency)
        await measure(
            "redis-py EVALSHA (one HSET)", lambda n: plain.evalsha(sha, 1, "bench:e", n, "v"), calls, concurrency
        )
        await measure("redis-py pipeline of 1 HMGET", lambda _: pipeline_of(1), calls, concurrency)
        await measure("redis-py pipeline of 64 HMGET, per command", lambda _: pipeline_of(64), calls // 64, 1, per=64)
        await measure("CoalescingRedis HMGET", lambda _: coalescing.hmget("bench:h", "a", "b"), calls, concurrency)
        await measure("JetStream publish with ack", lambda n: js.publish(f"bench.a.{n}", data), calls, concurrency)
        await measure(
            "JetStream publish with ack, 4 headers",
            lambda n: js.publish(f"bench.b.{n}", data, headers={**HEADERS, "Nats-Msg-Id": str(n)}),
            calls,
            concurrency,
        )
        await measure(
            "JetStream direct get (last by subject)",
            lambda _: js.get_last_msg("BENCH", "bench.order.1", direct=True),
            calls,
            concurrency,
        )
        requests = Requests(nc)
        await measure(
            "Requests: publish with ack, 4 headers",
            lambda n: requests.publish(
                f"bench.d.{n}", data, stream="BENCH", headers={**HEADERS, "Nats-Msg-Id": f"d{n}"}, within=5
            ),
            calls,
            concurrency,
        )
        await measure(
            "Requests: direct get (last by subject)",
            lambda _: requests.direct_get("BENCH", last_by_subject="bench.order.1", within=5),
            calls,
            concurrency,
        )

        async def one_after_the_other(_: int) -> None:
            await requests.direct_get("BENCH", last_by_subject="bench.order.1", within=5)
            await requests.direct_get("BENCH", last_by_subject="bench.order.2", within=5)

        both = (("BENCH", "bench.order.1"), ("BENCH", "bench.order.2"))
        await measure("Requests: 2 direct gets in turn, per pair", one_after_the_other, calls, concurrency)
        await measure(
            "Requests: 2 direct gets at once, per pair",
            lambda _: requests.last_of_each(both, within=5),
            calls,
            concurrency,
        )
        await measure("core publish, no ack", lambda n: nc.publish(f"bench.c.{n}", data), calls, concurrency)
        await nc.close()
        await plain.aclose()
        await coalescing.aclose()
    finally:
        nats_server.stop()
        valkey.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    uvloop.run(run(args.calls, args.concurrency))
