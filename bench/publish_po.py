"""Benchmark: the governed PublishPurchaseOrder path beside two raw baselines, in one run.

    make bench                      # or: .venv/bin/python bench/publish_po.py --seconds 8

Scenarios, each at concurrency 1 and 64, against servers this script starts:
  governed       gRPC -> validate -> idempotency (Valkey) -> JetStream publish with ack,
                 through po-publication run as its own process (python -m services.po_publication)
  raw-composite  a bare grpc.aio handler: one Valkey SET NX + one JetStream publish with ack
  raw-publish    nats-py JetStream publish-with-ack of the same bytes, no gRPC, no Valkey
Prints RPS, p50 and p99 per scenario and the governed/raw-composite ratio. Figures only:
nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import nats
import uvloop

from syncgov.po.v1 import po_service_pb2, po_service_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from libs.runtime.local_servers import NatsServer, ValkeyServer, free_port
from libs.runtime.probe import health_status
from libs.runtime.streams import PO, provision_streams
from libs.runtime.subjects import Namespace
from tests.integration.helpers import sample_order

Call = Callable[[int], Awaitable[object]]


async def measure(call: Call, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**12))

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await call(next(counter))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "count": len(latencies),
    }


async def wait_serving(address: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        while await health_status(channel) != "SERVING":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{address} did not become SERVING")
            await asyncio.sleep(0.2)


async def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def run(seconds: float, sync_always: bool, concurrencies: list[int]) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="syncgov-bench-"))
    nats_server = NatsServer(data_dir=workdir / "nats", sync_always=sync_always).start()
    valkey = ValkeyServer(data_dir=workdir / "valkey").start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        namespace = "bench" + uuid.uuid4().hex[:6]
        env = {
            **os.environ,
            "SYNCGOV_NATS_URL": nats_server.url,
            "SYNCGOV_REDIS_URL": valkey.url,
            "SYNCGOV_NAMESPACE": namespace,
            "SYNCGOV_LOG_LEVEL": "ERROR",
        }
        service_port, raw_port = free_port(), free_port()
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "services.po_publication"], cwd=ROOT,
            env={**env, "SYNCGOV_GRPC_PORT": str(service_port)},
        ))  # fmt: skip
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        raw_ns = Namespace("raw" + uuid.uuid4().hex[:6])
        await provision_streams(js, raw_ns, (PO,))
        raw_root = f"{raw_ns.root}.po"
        processes.append(subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "raw_composite.py"), "--port", str(raw_port),
             "--nats-url", nats_server.url, "--redis-url", valkey.url, "--subject-root", raw_root],
        ))  # fmt: skip
        await wait_serving(f"127.0.0.1:{service_port}")
        await wait_port(raw_port)

        template = sample_order("BENCH")
        payload = po_service_pb2.PublishPurchaseOrderRequest(purchase_order=template).SerializeToString()
        service_channel = grpc.aio.insecure_channel(f"127.0.0.1:{service_port}")
        raw_channel = grpc.aio.insecure_channel(f"127.0.0.1:{raw_port}")
        stub = po_service_pb2_grpc.PurchaseOrderServiceStub(service_channel)
        raw_call = raw_channel.unary_unary("/bench.RawComposite/Do")
        metadata = (("x-syncgov-system", "procurement"),)
        run_id = uuid.uuid4().hex[:8]

        async def governed(n: int) -> object:
            order = po_service_pb2.PublishPurchaseOrderRequest()
            order.purchase_order.CopyFrom(template)
            order.purchase_order.po_id = f"PO-{run_id}-{n}"
            return await stub.PublishPurchaseOrder(order, metadata=metadata)

        async def raw_composite(n: int) -> object:
            return await raw_call(payload)

        async def raw_publish(n: int) -> object:
            key = f"{run_id}-{n}"
            return await js.publish(f"{raw_root}.{key}.published", payload, headers={"Nats-Msg-Id": key})

        scenarios = {"governed": governed, "raw-composite": raw_composite, "raw-publish": raw_publish}
        results: dict[tuple[str, int], dict[str, float]] = {}
        for concurrency in concurrencies:
            for name, call in scenarios.items():
                await measure(call, concurrency, min(1.0, seconds / 4))  # warm-up
                results[(name, concurrency)] = await measure(call, concurrency, seconds)
        await service_channel.close()
        await raw_channel.close()
        await nc.drain()
        report(results, concurrencies, seconds, sync_always, len(payload))
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        valkey.stop()
        nats_server.stop()


def report(results, concurrencies, seconds, sync_always, payload_bytes) -> None:
    print(
        f"\nPublishPurchaseOrder benchmark: {seconds:.0f}s per scenario, {os.cpu_count()} cores, "
        f"request {payload_bytes} bytes, JetStream sync_interval={'always' if sync_always else 'default (2 min)'}"
    )
    print(f"{'scenario':<15}{'conc':>5}{'RPS':>10}{'p50 ms':>10}{'p99 ms':>10}{'requests':>10}")
    for concurrency in concurrencies:
        for name in ("governed", "raw-composite", "raw-publish"):
            r = results[(name, concurrency)]
            print(
                f"{name:<15}{concurrency:>5}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['count']:>10.0f}"
            )
    for concurrency in concurrencies:
        governed = results[("governed", concurrency)]["rps"]
        composite = results[("raw-composite", concurrency)]["rps"]
        publish = results[("raw-publish", concurrency)]["rps"]
        print(
            f"ratio at concurrency {concurrency}: governed/raw-composite = {governed / composite:.0%}, "
            f"governed/raw-publish = {governed / publish:.0%}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per scenario and concurrency")
    parser.add_argument("--no-sync-always", action="store_true", help="JetStream's default fsync (every 2 min)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    args = parser.parse_args()
    uvloop.run(run(args.seconds, not args.no_sync_always, args.concurrency))
