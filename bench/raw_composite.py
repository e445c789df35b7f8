"""The raw composite baseline: a bare grpc.aio unary handler doing one Valkey SET NX and one
JetStream publish with ack — the same three steps as PublishPurchaseOrder without the runtime.

Run by bench/publish_po.py as its own process, like the service it is compared with.
"""

from __future__ import annotations

import argparse
import uuid

import grpc
import nats
import uvloop
from redis.asyncio import Redis

METHOD = "/bench.RawComposite/Do"


async def main(port: int, nats_url: str, redis_url: str, subject_root: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    redis = Redis.from_url(redis_url)

    async def do(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        key = uuid.uuid4().hex
        await redis.set(f"bench:raw:{key}", b"1", nx=True, ex=600)
        ack = await js.publish(f"{subject_root}.{key}.published", request, headers={"Nats-Msg-Id": key})
        return ack.seq.to_bytes(8, "big")

    handler = grpc.method_handlers_generic_handler(
        "bench.RawComposite", {"Do": grpc.unary_unary_rpc_method_handler(do)}
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--subject-root", required=True)
    args = parser.parse_args()
    uvloop.run(main(args.port, args.nats_url, args.redis_url, args.subject_root))
