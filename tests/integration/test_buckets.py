"""A stream sequence kept in a JetStream KV bucket that only moves forward (libs/runtime/buckets.py), against a real
nats-server: stored durably beside the stream it counts, raised by writers racing each other to the highest."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest

from libs.runtime.buckets import MarkUnreadable, SequenceMark

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def _mark(js, bucket: str) -> SequenceMark:
    return SequenceMark(js, bucket, "settled-through", "a test's mark")


async def test_a_mark_only_moves_forward_and_is_read_back_by_another_connection(js, nats_server):
    bucket = f"t{uuid.uuid4().hex[:8]}_marks"
    mark = _mark(js, bucket)
    assert await mark.read() is None  # the bucket is created, holding nothing
    assert await mark.advance(5) == 5
    assert await mark.advance(3) == 5  # below what is stored: left
    assert await mark.advance(9) == 9
    other = await nats.connect(nats_server.url)
    try:
        assert await _mark(other.jetstream(), bucket).read() == 9
    finally:
        await other.drain()


async def test_writers_racing_each_other_settle_on_the_highest(js):
    """Two replicas, each storing how far it got as it goes, at the same time."""
    bucket = f"t{uuid.uuid4().hex[:8]}_marks"
    first, second = _mark(js, bucket), _mark(js, bucket)

    async def advancing(mark: SequenceMark, sequences: range) -> list[int]:
        return [await mark.advance(sequence) for sequence in sequences]

    odd, even = await asyncio.gather(advancing(first, range(1, 40, 2)), advancing(second, range(2, 40, 2)))
    assert await first.read() == 39
    for stored in (odd, even):  # what each was told is stored never goes back
        assert stored == sorted(stored)


async def test_a_recreated_streams_mark_is_replaced_and_a_garbled_one_refused_then_advanced_over(js):
    bucket = f"t{uuid.uuid4().hex[:8]}_marks"
    mark = _mark(js, bucket)
    await mark.advance(500)
    await mark.replace(7)
    assert await mark.read() == 7
    await (await js.key_value(bucket)).put("settled-through", b"seven")
    with pytest.raises(MarkUnreadable, match="not a stream sequence"):
        await mark.read()
    assert await mark.advance(3) == 3  # a sequence true on its own replaces it
    assert await mark.read() == 3
