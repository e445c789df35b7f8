"""Request/reply on one inbox (libs/runtime/requests.py) against a real nats-server: each caller gets its own reply,
the errors are nats-py's, nothing is left waiting, and a broker restarted under it is used again."""

from __future__ import annotations

import asyncio
import gc

import nats
import nats.errors
import pytest
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError, NoStreamResponseError, NotFoundError

from libs.runtime.local_servers import NatsServer
from libs.runtime.requests import Requests
from libs.runtime.testing import unique_namespace

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


@pytest.fixture
async def nc(nats_server):
    connection = await nats.connect(nats_server.url)
    yield connection
    await connection.drain()


async def _echo(nc, subject: str) -> list[bytes]:
    """Echo each request, answering out of the order asked: each answer waits 0-2 ms in a task of its own (nats-py
    hands a subscription its messages one at a time, so a wait in the callback itself would keep the order)."""
    answering: set[asyncio.Task] = set()
    answered: list[bytes] = []  # the requests' payloads in the order answered

    async def answer_later(message) -> None:
        await asyncio.sleep(sum(message.data) % 3 / 1000)
        answered.append(message.data)
        await message.respond(b"echo:" + message.data)

    async def answer(message) -> None:
        task = asyncio.create_task(answer_later(message))
        answering.add(task)
        task.add_done_callback(answering.discard)

    await nc.subscribe(subject, cb=answer)
    return answered


async def test_concurrent_requests_each_get_their_own_reply(nc):
    subject = f"{unique_namespace()}.echo"
    answered = await _echo(nc, subject)
    requests = Requests(nc)

    replies = await asyncio.gather(*(requests.request(subject, str(n).encode(), within=5) for n in range(300)))

    assert [reply.data for reply in replies] == [f"echo:{n}".encode() for n in range(300)]
    assert answered != [str(n).encode() for n in range(300)]  # answered out of the order asked
    assert not requests._waiting  # every reply taken


async def test_a_request_nobody_answers_times_out_and_a_late_reply_is_dropped(nc):
    subject = f"{unique_namespace()}.slow"
    held = []

    async def never_in_time(message) -> None:
        held.append(message)

    await nc.subscribe(subject, cb=never_in_time)
    requests = Requests(nc)

    with pytest.raises(nats.errors.TimeoutError):
        await requests.request(subject, b"x", within=0.2)
    assert not requests._waiting

    await held[0].respond(b"too late")  # nobody waits for it any more: dropped, and the next request is unaffected
    await _echo(nc, f"{subject}.after")
    reply = await requests.request(f"{subject}.after", b"y", within=5)
    assert reply.data == b"echo:y"


async def test_requests_sent_at_once_each_get_their_own_reply_in_the_order_asked(nc):
    subject = f"{unique_namespace()}.echo"
    answered = await _echo(nc, subject)
    requests = Requests(nc)

    replies = await requests.at_once([(subject, str(n).encode(), None) for n in range(30)], within=5)

    assert [reply.data for reply in replies] == [f"echo:{n}".encode() for n in range(30)]
    assert answered != [str(n).encode() for n in range(30)]  # answered out of the order asked
    assert not requests._waiting


async def test_requests_sent_at_once_time_out_together_leaving_nothing_waiting_or_unretrieved(nc):
    root = unique_namespace()
    await _echo(nc, f"{root}.answered")

    async def never_answer(message) -> None:
        pass

    await nc.subscribe(f"{root}.silent", cb=never_answer)  # takes the requests (no "no responders"), answers none
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    requests = Requests(nc)
    try:
        calls = [(f"{root}.answered", b"a", None), (f"{root}.silent", b"b", None), (f"{root}.silent", b"c", None)]
        timed_out = False
        try:
            await requests.at_once(calls, within=0.3)
        except nats.errors.TimeoutError:  # not pytest.raises: its traceback would keep the futures alive
            timed_out = True
        assert timed_out
        assert not requests._waiting
        await asyncio.sleep(0.2)  # the loop lets go of what the expiry ran with
        gc.collect()  # a future whose exception nobody retrieved is reported when it is collected
        await asyncio.sleep(0)
        assert reported == []
    finally:
        loop.set_exception_handler(None)


async def test_the_newest_of_each_subject_read_at_once_from_several_streams(nc):
    root = unique_namespace()
    first, second = f"{root}_A".upper(), f"{root}_B".upper()
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=first, subjects=[f"{root}.a.>"], allow_direct=True))
    await js.add_stream(StreamConfig(name=second, subjects=[f"{root}.b.>"], allow_direct=True))
    requests = Requests(nc)
    for subject, data, stream in (("a.1.x", b"a1", first), ("a.1.y", b"a1 newer", first), ("b.1.x", b"b1", second)):
        await requests.publish(f"{root}.{subject}", data, stream=stream, headers={}, within=5)

    found = await requests.last_of_each(
        [(second, f"{root}.b.1.*"), (first, f"{root}.a.1.*"), (first, f"{root}.a.2.*")], within=5
    )

    assert [message.data if message is not None else None for message in found] == [b"b1", b"a1 newer", None]
    with pytest.raises(nats.errors.NoRespondersError):  # a stream that does not exist, as one direct get finds it
        await requests.last_of_each([(first, f"{root}.a.1.*"), (f"{root}_C".upper(), f"{root}.c.*")], within=5)


async def test_no_responders_and_no_stream_are_nats_py_errors(nc):
    requests = Requests(nc)
    with pytest.raises(nats.errors.NoRespondersError):
        await requests.request(f"{unique_namespace()}.nobody", b"", within=5)
    with pytest.raises(NoStreamResponseError):
        await requests.publish(f"{unique_namespace()}.nostream", b"x", stream="NONE", headers={}, within=5)
    with pytest.raises(NotFoundError):
        await requests.stream_state(f"{unique_namespace()}_MISSING".upper(), within=5)


async def test_publish_direct_get_and_stream_state_against_a_stream(nc):
    root = unique_namespace()
    stream = f"{root}_S".upper()
    await nc.jetstream().add_stream(StreamConfig(name=stream, subjects=[f"{root}.>"], allow_direct=True))
    requests = Requests(nc)

    first = await requests.publish(f"{root}.a.1", b"one", stream=stream, headers={"Nats-Msg-Id": "m1"}, within=5)
    again = await requests.publish(f"{root}.a.1", b"one", stream=stream, headers={"Nats-Msg-Id": "m1"}, within=5)
    second = await requests.publish(f"{root}.b.1", b"two", stream=stream, headers={"Nats-Msg-Id": "m2"}, within=5)
    assert (first, again, second) == ((stream, 1, False), (stream, 1, True), (stream, 2, False))

    guarded = {"Nats-Expected-Last-Subject-Sequence": "0", "Nats-Expected-Last-Subject-Sequence-Subject": f"{root}.a.*"}
    with pytest.raises(BadRequestError) as refused:
        await requests.publish(f"{root}.a.1", b"three", stream=stream, headers=guarded, within=5)
    assert refused.value.err_code == 10071  # wrong last sequence: the write guard's refusal, as nats-py raises it
    with pytest.raises(BadRequestError):  # the subject is not the stream's
        await requests.publish(f"{root}.a.1", b"x", stream="ANOTHER", headers={}, within=5)

    newest = await requests.direct_get(stream, last_by_subject=f"{root}.a.*", within=5)
    assert newest is not None
    assert newest.headers is not None
    assert (newest.data, newest.headers["Nats-Sequence"]) == (b"one", "1")
    following = await requests.direct_get(stream, seq=2, next_by_subj=f"{root}.>", within=5)
    assert following is not None
    assert following.headers is not None
    assert following.headers["Nats-Subject"] == f"{root}.b.1"
    assert await requests.direct_get(stream, last_by_subject=f"{root}.c.*", within=5) is None
    assert await requests.direct_get(stream, seq=3, next_by_subj=f"{root}.>", within=5) is None

    state = await requests.stream_state(stream, within=5)
    assert (state["first_seq"], state["last_seq"], state["messages"]) == (1, 2, 2)


async def test_requests_work_again_after_the_broker_restarts(tmp_path):
    server = NatsServer(data_dir=tmp_path / "nats")  # every write synced: the first survives the SIGKILL
    server.start()
    nc = await nats.connect(server.address_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        root = unique_namespace()
        stream = f"{root}_S".upper()
        await nc.jetstream().add_stream(StreamConfig(name=stream, subjects=[f"{root}.>"], allow_direct=True))
        requests = Requests(nc)
        await requests.publish(f"{root}.a.1", b"before", stream=stream, headers={}, within=5)

        server.kill()
        server.start()

        # The inbox subscription is restored by nats-py with the connection: the same Requests answers again.
        async with asyncio.timeout(10):
            while True:
                try:
                    stored = await requests.publish(f"{root}.a.1", b"after", stream=stream, headers={}, within=1)
                    break
                except (nats.errors.TimeoutError, NoStreamResponseError):  # reconnecting, or JetStream still starting
                    await asyncio.sleep(0.1)
        assert stored == (stream, 2, False)
        newest = await requests.direct_get(stream, last_by_subject=f"{root}.a.*", within=5)
        assert newest is not None
        assert newest.data == b"after"
    finally:
        await nc.close()
        server.stop()
