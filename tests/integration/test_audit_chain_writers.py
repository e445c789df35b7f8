"""The audit chain's appends run through the command handler: two writers (two control planes) interleave
without breaking the chain, and a redelivered record is chained once."""

from __future__ import annotations

import asyncio

import nats
import pytest

from libs.audit.chain import verify
from libs.runtime.audit import AuditChain
from libs.runtime.streams import AUDIT, provision_streams
from libs.runtime.subjects import Namespace
from libs.runtime.testing import unique_namespace
from syncgov.common.v1 import types_pb2
from syncgov.controlplane.v1 import controlplane_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def record(source: str) -> controlplane_pb2.AuditEntry:
    return controlplane_pb2.AuditEntry(
        actor="erp",
        action="write",
        object=types_pb2.ObjectRef(object_type="purchase_order", object_key=f"PO-{source}", version=1),
        outcome="allowed",
        source=source,
    )


async def test_two_writers_interleave_and_a_redelivery_is_chained_once(nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        namespace = Namespace(unique_namespace())
        await provision_streams(js, namespace, (AUDIT,))
        first, second = AuditChain(js, namespace), AuditChain(js, namespace)
        sources = [f"SG_PO:{n}" for n in range(40)]

        async def write(chain: AuditChain, mine: list[str]) -> None:
            for source in mine:
                await chain.append(record(source))

        await asyncio.gather(write(first, sources[::2]), write(second, sources[1::2]), write(second, sources[:6]))
        entries = [entry async for entry in first.entries()]
        verdict = verify(entries)
        assert verdict.intact
        assert sorted(entry.source for entry in entries) == sorted(sources)
    finally:
        await nc.drain()
