"""A stream sequence kept in a JetStream KV bucket that only moves forward (libs/runtime/buckets.py), against a real
nats-server: stored durably beside the stream it counts, raised by writers racing each other to the highest."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest

from libs.runtime.buckets import Mark, MarkOfAnotherStream, MarkUnreadable, SequenceMark
from libs.runtime.events import EventReader, StreamPosition
from libs.runtime.subjects import Namespace
from tests.integration.helpers import requests_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

STREAM = "2026-11-27T10:00:00.123456789Z"  # the creation time of the stream the marks count


def _mark(js, bucket: str) -> SequenceMark:
    return SequenceMark(js, bucket, "settled-through", "a test's mark")


async def test_a_mark_only_moves_forward_and_is_read_back_by_another_connection(js, nats_server):
    bucket = f"t{uuid.uuid4().hex[:8]}_marks"
    mark = _mark(js, bucket)
    assert await mark.read() is None  # the bucket is created, holding nothing
    assert await mark.advance(5, STREAM) == 5
    assert await mark.advance(3, STREAM) == 5  # below what is stored: left
    assert await mark.advance(9, STREAM) == 9
    other = await nats.connect(nats_server.url)
    try:
        assert await _mark(other.jetstream(), bucket).read() == Mark(9, STREAM)
    finally:
        await other.drain()


async def test_writers_racing_each_other_settle_on_the_highest(js):
    """Two replicas, each storing how far it got as it goes, at the same time."""
    bucket = f"t{uuid.uuid4().hex[:8]}_marks"
    first, second = _mark(js, bucket), _mark(js, bucket)

    async def advancing(mark: SequenceMark, sequences: range) -> list[int]:
        return [await mark.advance(sequence, STREAM) for sequence in sequences]

    odd, even = await asyncio.gather(advancing(first, range(1, 40, 2)), advancing(second, range(2, 40, 2)))
    assert await first.read() == Mark(39, STREAM)
    for stored in (odd, even):  # what each was told is stored never goes back
        assert stored == sorted(stored)


async def test_a_recreated_streams_mark_is_replaced_and_a_garbled_one_refused_then_advanced_over(js):
    bucket = f"t{uuid.uuid4().hex[:8]}_marks"
    mark = _mark(js, bucket)
    await mark.advance(500, "2026-01-05T08:00:00Z")  # of the stream before it was recreated
    await mark.replace(7, STREAM)
    assert await mark.read() == Mark(7, STREAM)
    await (await js.key_value(bucket)).put("settled-through", b"seven")
    with pytest.raises(MarkUnreadable, match="not a stream sequence"):
        await mark.read()
    assert await mark.advance(3, STREAM) == 3  # a sequence true on its own replaces it
    assert await mark.read() == Mark(3, STREAM)


async def test_a_mark_of_another_stream_is_not_advanced_over_and_one_naming_no_stream_is_taken_as_any(js):
    bucket = f"t{uuid.uuid4().hex[:8]}_marks"
    mark = _mark(js, bucket)
    await mark.advance(500, "2026-01-05T08:00:00Z")  # of the stream before it was recreated
    with pytest.raises(MarkOfAnotherStream, match="created 2026-01-05T08:00:00Z") as other:
        await mark.advance(3, STREAM)  # the writer is told, and nothing is stored
    assert other.value.stored == Mark(500, "2026-01-05T08:00:00Z")
    assert await mark.read() == Mark(500, "2026-01-05T08:00:00Z")
    kv = await js.key_value(bucket)
    await kv.put("settled-through", b"40")  # as marks were stored before they named their stream
    legacy = await mark.read()
    assert legacy == Mark(40, "")
    assert legacy.of(STREAM)
    assert await mark.advance(30, STREAM) == 40  # taken as this stream's: it only moves forward
    assert await mark.advance(41, STREAM) == 41
    assert (await kv.get("settled-through")).value == f"41 {STREAM}".encode()
    for garbled in (b"41 two words", b"41 " + b"x" * 65, b"41 ", b"41 \xff\xfe", b"-4", b"4" * 21):
        await kv.put("settled-through", garbled)
        with pytest.raises(MarkUnreadable):
            await mark.read()
    assert await mark.advance(2, STREAM) == 2  # a sequence true on its own replaces what is none
    assert await mark.read() == Mark(2, STREAM)
    for unnamed in ("", "two words"):  # what a writer stores names its stream
        with pytest.raises(ValueError, match="creation time"):
            await mark.advance(3, unnamed)


async def test_a_streams_position_tells_the_stream_recreated_since_from_the_one_before(js):
    """The creation time the broker answers changes when the stream is deleted and created again, though its
    sequences begin again and grow past the old ones."""
    namespace = Namespace(f"t{uuid.uuid4().hex[:6]}")
    stream, subjects = namespace.stream("invoice"), namespace.domain_subjects("invoice")
    reader = EventReader(requests_of(js), namespace)
    assert await reader.position("invoice") == StreamPosition(0, "")  # no stream yet
    await js.add_stream(name=stream, subjects=[subjects])
    for n in range(3):
        await js.publish(namespace.object_subject("invoice", f"I-{n}", "submitted"), b"x")
    before = await reader.position("invoice")
    assert before.last_sequence == 3
    assert before.created
    # The same stream answers the same creation time, whatever changed in its configuration since.
    await js.update_stream(name=stream, subjects=[subjects], description="updated")
    assert (await reader.position("invoice")).created == before.created
    await js.delete_stream(stream)
    await asyncio.sleep(0.01)  # a creation time of its own, whatever the clock's resolution
    await js.add_stream(name=stream, subjects=[subjects])
    for n in range(5):
        await js.publish(namespace.object_subject("invoice", f"I-{n}", "submitted"), b"x")
    after = await reader.position("invoice")
    assert after.last_sequence == 5 > before.last_sequence
    assert after.created != before.created
