"""A Valkey client that sends the calls made while its previous batch is on the wire as one pipeline.

Under load a service has dozens of requests in flight, each making one or two Valkey calls. redis-py spends about
30 µs of CPU on each call on its own (taking a connection from the pool and giving it back, the observability
hooks, one socket write) and about 12 µs on each command of a pipeline; every call is also a write system call.
One batch at a time is on the wire: the calls made until it is answered go out together next, each caller with its
own answer or error, for one pool round and one write per batch. Calls made in one loop turn with nothing on the
wire go out at the end of that turn; a call alone goes out as it would without this client."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

# Commands sent on their own, never in a shared batch: those that hold their connection until the server answers
# later (or never), and those that change the connection's state (a transaction, the database, the client's name).
SENT_ALONE = frozenset(
    {"BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP", "XREAD", "XREADGROUP"}
    | {"WAIT", "WAITAOF", "MONITOR", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"}
    | {"WATCH", "UNWATCH", "MULTI", "EXEC", "DISCARD", "SELECT", "CLIENT", "HELLO", "AUTH", "RESET", "QUIT"}
)

Queued = tuple[tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]


class _Unparsed:
    """A reply that was read whole but whose response callback failed: that caller's error, not the batch's."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Batch(Pipeline):
    async def parse_response(self, connection: Any, command_name: str | bytes, **options: Any) -> Any:
        try:
            return await super().parse_response(connection, command_name, **options)
        except (RedisError, OSError):
            raise  # a reply error is the pipeline's to hand to its caller; a connection fault fails the batch
        except Exception as error:  # raised after the reply was read: the next replies stay in step
            return _Unparsed(error)


class CoalescingRedis(Redis):
    """``Redis`` whose calls share pipelines, one on the wire at a time (not a transaction: each command succeeds
    or fails on its own, as it would sent alone). A batch is never sent twice: its connections retry
    nothing (a retry would apply again the commands whose replies had arrived)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))  # from_url's pools already retry nothing
        super().__init__(*args, **kwargs)
        self._queued: list[Queued] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.single_connection_client or str(args[0]).split(" ", 1)[0].upper() in SENT_ALONE:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        if not self._queued and not self._sending:  # else the batch on the wire sends the queue when it is answered
            loop.call_soon(self._send_queued)
        self._queued.append((args, options, answer))
        return await answer

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        """Send what is queued and wait for every batch on the wire, then close."""
        while self._queued or self._sending:
            self._send_queued()
            await asyncio.gather(*self._sending, return_exceptions=True)
        await super().aclose(close_connection_pool)

    def _send_queued(self) -> None:
        """Send the queue as one batch, unless a batch is on the wire: the calls made meanwhile wait for its answer and
        go out together then (under load a batch gathers the calls of a round trip, not of one loop turn)."""
        if self._sending:
            return
        # A caller cancelled while queued is not sent, as it would not have been sent alone.
        batch, self._queued = [entry for entry in self._queued if not entry[2].done()], []
        if not batch:
            return
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if self._queued:
            self._send_queued()

    async def _send(self, batch: list[Queued]) -> None:
        try:
            if len(batch) == 1:
                args, options, answer = batch[0]
                try:
                    _settle(answer, await super().execute_command(*args, **options))  # type: ignore[no-untyped-call]
                except Exception as error:  # the caller's, whatever it is
                    _fail(answer, error)
                return
            pipeline = _Batch(self.connection_pool, self.response_callbacks, transaction=False, shard_hint=None)
            for args, options, _ in batch:
                pipeline.execute_command(*args, **options)
            try:
                results = await pipeline.execute(raise_on_error=False)
            except Exception as error:  # the connection's fault is every caller's
                for _, _, answer in batch:
                    _fail(answer, _own_copy(error))
                return
            for (_, _, answer), result in zip(batch, results):  # noqa: B905 - a short answer fails the rest below
                if isinstance(result, _Unparsed):
                    _fail(answer, result.error)
                elif isinstance(result, Exception):
                    _fail(answer, result)
                else:
                    _settle(answer, result)
        except asyncio.CancelledError:  # the loop is closing: so are the calls waiting on this batch
            for _, _, answer in batch:
                answer.cancel()
            raise
        finally:
            for _, _, answer in batch:  # nobody is left waiting, whatever ended the batch early
                _fail(answer, RedisError("Valkey's pipeline ended without an answer to this call"))


def _settle(answer: asyncio.Future[Any], result: Any) -> None:
    if not answer.done():  # the caller may have been cancelled meanwhile
        answer.set_result(result)


def _fail(answer: asyncio.Future[Any], error: BaseException) -> None:
    if not answer.done():
        answer.set_exception(error)


def _own_copy(error: Exception) -> Exception:
    """Each caller of a failed batch raises an exception of its own (one instance raised in many coroutines would
    collect all their tracebacks), caused by the batch's."""
    try:
        own = copy.copy(error)
    except Exception:  # an exception that cannot be copied is shared
        return error
    own.__cause__ = error
    return own
