"""Benchmark: what the broker spends on the three direct gets a history read can make, in a stream of many objects.

    .venv/bin/python bench/direct_gets.py [--messages 50000] [--reads 500]

Starts its own nats-server (JetStream, default fsync), stores ``--messages`` messages each on a subject of its own
(``s.po.K<n>.published``, one object each, as the domain streams hold them), then makes ``--reads`` reads of each
kind, one at a time, over objects spread across the stream, and prints nats-server's CPU (user + system) and the
wall time per read:

- the newest message of one object (last by subject: the broker's subject index answers it);
- the next message of one object after its newest (next by subject, finding nothing: the broker searches the rest
  of the stream, so its cost grows with what was stored after the object);
- the first message of one object (next by subject from sequence 1, finding it).

``EventReader.history`` (libs/runtime/events.py) reads up to an object's newest event for this reason. Figures
only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import uvloop
from nats.js.api import StreamConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.publish_po import cpu_seconds
from libs.runtime.local_servers import NatsServer
from libs.runtime.requests import Requests


async def run(messages: int, reads: int) -> None:
    server = NatsServer(data_dir=Path(tempfile.mkdtemp(prefix="syncgov-direct-gets-")), sync_always=False).start()
    try:
        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(StreamConfig(name="S", subjects=["s.>"], allow_direct=True))
        requests = Requests(nc)
        data = b"x" * 600  # about an event's envelope
        for n in range(messages):
            await nc.publish(f"s.po.K{n}.published", data)
            if n % 1000 == 999:
                await nc.flush()
        await nc.flush()
        for _ in range(600):  # core publishes are stored without an answer: wait until all are
            if (await requests.stream_state("S", within=30))["messages"] >= messages:
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("the broker did not store every message within a minute")
        assert server.process is not None, "started above"
        broker = {"nats": server.process.pid}
        objects = range(0, messages, max(1, messages // reads))
        kinds: list[tuple[str, Callable[[int], Awaitable[object]]]] = [
            ("newest (last by subject)", lambda n: requests.direct_get("S", last_by_subject=f"s.po.K{n}.*", within=30)),
            (
                "after the newest (next by subject, none)",
                lambda n: requests.direct_get("S", seq=n + 2, next_by_subj=f"s.po.K{n}.*", within=30),
            ),
            (
                "first (next by subject from 1, found)",
                lambda n: requests.direct_get("S", seq=1, next_by_subj=f"s.po.K{n}.*", within=30),
            ),
        ]
        print(f"{messages} messages, one object each; {len(objects)} reads of each kind, one at a time")
        print(f"{'read':44s} {'nats µs CPU':>12s} {'wall µs':>10s}")
        for name, read in kinds:
            cpu, wall = cpu_seconds(broker)["nats"], time.perf_counter()
            for n in objects:
                await read(n)
            cpu, wall = cpu_seconds(broker)["nats"] - cpu, time.perf_counter() - wall
            print(f"{name:44s} {1e6 * cpu / len(objects):12.0f} {1e6 * wall / len(objects):10.0f}", flush=True)
        await nc.close()
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--reads", type=int, default=500)
    args = parser.parse_args()
    uvloop.run(run(args.messages, args.reads))
