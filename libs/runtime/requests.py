"""Request/reply with the broker for the calls every request makes: a JetStream publish awaiting its acknowledgment,
a direct get, a stream's state.

nats-py's ``request`` spends on every call a token with two bytes from ``os.urandom`` (a getrandom system call), a
future with a closure to forget it, and ``asyncio.wait_for`` (a second future and a timer); a last-by-subject direct
get also builds the JSON body it does not send and parses the stored time stamp, a publish builds a PubAck
dataclass. Here one wildcard inbox subscription (made on first use) takes every reply, tokens come from a counter,
and a request costs one future and one timer: 13 against 22 µs of CPU a direct get, 8 against 17 a publish, at 32
calls in flight (docs/benchmarks.md). nats-py still owns the connection, the protocol, the subscription (restored
after a reconnect) and the errors, which are its own: a timeout is ``nats.errors.TimeoutError``, a stream refusing a
publish the ``nats.js.errors.APIError`` it parses, a missing stream ``NoStreamResponseError``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import DEFAULT_PREFIX
from nats.js.errors import APIError, NoStreamResponseError

STATUS = "Status"
NO_RESPONDERS = "503"
NO_MESSAGE = "404"
EXPECTED_STREAM = "Nats-Expected-Stream"

Call = tuple[str, bytes, dict[str, str] | None]  # a request: subject, payload, headers


class Requests:
    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._subscribing = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = itertools.count()

    async def request(
        self, subject: str, payload: bytes = b"", *, within: float, headers: dict[str, str] | None = None
    ) -> Msg:
        """The reply to one request within ``within`` seconds (else ``nats.errors.TimeoutError``);
        ``NoRespondersError`` when nothing listens on ``subject``. Every request of every service goes through
        here: one future and one timer, none of ``at_once``'s lists."""
        prefix = self._prefix or await self._subscribe()
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = reply
        timer = loop.call_later(within, _expire, (reply,))
        try:
            await self._nc.publish(subject, payload, reply=prefix + token, headers=headers)
            message = await reply
        finally:
            timer.cancel()
            self._waiting.pop(token, None)  # a reply after the timeout finds nothing waiting
        _raise_no_responders(message)
        return message

    async def at_once(self, calls: Sequence[Call], *, within: float) -> list[Msg]:
        """The replies to several requests (subject, payload, headers), in their order, all within ``within``
        seconds: sent together, they go to the broker in one write and their replies mostly come back in one read,
        where one request after another costs a round trip (a flush, a wake-up, a read) each. The errors are
        ``request``'s, raised once every reply is in (or the time is up)."""
        prefix = self._prefix or await self._subscribe()
        loop = asyncio.get_running_loop()
        tokens = [str(next(self._tokens)) for _ in calls]
        replies: list[asyncio.Future[Msg]] = [loop.create_future() for _ in calls]
        self._waiting.update(zip(tokens, replies, strict=True))
        timer = loop.call_later(within, _expire, replies)
        try:
            for (subject, payload, headers), token in zip(calls, tokens, strict=True):
                await self._nc.publish(subject, payload, reply=prefix + token, headers=headers)
            messages = [await reply for reply in replies]
        finally:
            timer.cancel()
            for token, reply in zip(tokens, replies, strict=True):
                self._waiting.pop(token, None)  # a reply after the timeout finds nothing waiting
                if reply.done() and not reply.cancelled():
                    reply.exception()  # one that timed out with the first is retrieved: no "never retrieved"
        for message in messages:
            _raise_no_responders(message)
        return messages

    async def _subscribe(self) -> str:
        async with self._subscribing:
            if not self._prefix:
                prefix = self._nc.new_inbox() + "."
                await self._nc.subscribe(prefix + "*", cb=self._replied)
                self._prefix = prefix
        return self._prefix

    async def _replied(self, message: Msg) -> None:
        reply = self._waiting.pop(message.subject[len(self._prefix) :], None)
        if reply is not None and not reply.done():
            reply.set_result(message)

    async def publish(
        self, subject: str, data: bytes, *, stream: str, headers: dict[str, str], within: float
    ) -> tuple[str, int, bool]:
        """Store one message in ``stream`` (only there: ``Nats-Expected-Stream``) and await the acknowledgment:
        (stream, sequence, whether the stream already held the message id)."""
        headers[EXPECTED_STREAM] = stream
        try:
            message = await self.request(subject, data, within=within, headers=headers)
        except NoRespondersError:
            raise NoStreamResponseError from None
        answer = json.loads(message.data)
        if "error" in answer:
            raise APIError.from_error(answer["error"])
        return str(answer["stream"]), int(answer["seq"]), bool(answer.get("duplicate", False))

    async def direct_get(self, stream: str, *, within: float, last_by_subject: str = "", **query: Any) -> Msg | None:
        """One stored message through the stream's direct get (any replica answers): the newest on
        ``last_by_subject``, or the one ``query`` names (``seq``, ``next_by_subj``); None when there is none. The
        message's stream sequence and subject are its ``Nats-Sequence`` and ``Nats-Subject`` headers."""
        if last_by_subject:
            message = await self.request(_last_by_subject(stream, last_by_subject), within=within)
        else:
            body = json.dumps(query).encode()
            message = await self.request(f"{DEFAULT_PREFIX}.DIRECT.GET.{stream}", body, within=within)
        return _stored(message)

    async def last_of_each(self, wanted: Sequence[tuple[str, str]], *, within: float) -> list[Msg | None]:
        """The newest stored message on each (stream, subject filter), asked at once (``at_once``); None for a
        filter nothing was stored on."""
        calls = [(_last_by_subject(stream, subjects), b"", None) for stream, subjects in wanted]
        return [_stored(message) for message in await self.at_once(calls, within=within)]

    async def stream_state(self, stream: str, *, within: float) -> dict[str, Any]:
        """The stream's state (``first_seq``, ``last_seq``, ``messages``...); ``nats.js.errors.NotFoundError`` when
        it does not exist."""
        state: dict[str, Any] = (await self.stream_info(stream, within=within))["state"]
        return state

    async def stream_info(self, stream: str, *, within: float) -> dict[str, Any]:
        """The stream's information as the broker answers it (``config``, ``created``, ``state``...);
        ``nats.js.errors.NotFoundError`` when it does not exist."""
        try:
            message = await self.request(f"{DEFAULT_PREFIX}.STREAM.INFO.{stream}", within=within)
        except NoRespondersError:
            raise NoStreamResponseError from None
        answer: dict[str, Any] = json.loads(message.data)
        if "error" in answer:
            raise APIError.from_error(answer["error"])
        return answer


def _raise_no_responders(message: Msg) -> None:
    if not message.data and message.headers and message.headers.get(STATUS) == NO_RESPONDERS:
        raise NoRespondersError


def _last_by_subject(stream: str, subjects: str) -> str:
    return f"{DEFAULT_PREFIX}.DIRECT.GET.{stream}.{subjects}"


def _stored(message: Msg) -> Msg | None:
    """A direct get's reply: the stored message, None for none (404), the broker's error raised."""
    status = message.headers.get(STATUS) if message.headers and not message.data else None
    if status == NO_MESSAGE:
        return None
    if status:
        raise APIError.from_msg(message)
    return message


def _expire(replies: Sequence[asyncio.Future[Msg]]) -> None:
    for reply in replies:
        if not reply.done():
            reply.set_exception(NatsTimeout())
