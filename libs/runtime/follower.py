"""Following a stream into memory: an ordered consumer from the first message, then live.

For read models a service needs on its hot path (po-publication's view of supplier states): no
durable state of its own, rebuilt from the stream at every start, caught up before the service
answers, and kept current as events arrive. Ordered consumers redeliver nothing and recreate
themselves after a gap, so the handler sees each message once, in stream order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from libs.runtime.errors import transient
from libs.runtime.events import EventReader, StoredEvent, UnreadableEvent, parse_stored
from libs.runtime.subjects import Namespace

log = logging.getLogger(__name__)


class StreamFollower:
    def __init__(self, js: JetStreamContext, namespace: Namespace, domain: str, handler: Callable[[StoredEvent], None]):
        self._js = js
        self._stream = namespace.stream(domain)
        self._subject = namespace.domain_subjects(domain)
        self._handler = handler
        self._caught_up = asyncio.Event()
        self._subscription: JetStreamContext.PushSubscription | None = None
        self.applied = 0

    @property
    def caught_up(self) -> bool:
        """Whether every message that existed at the start has been applied (a start that timed out serves
        before; decisions that need the whole stream should refuse until then)."""
        return self._caught_up.is_set()

    async def start(self, catch_up_timeout: float = 60.0) -> None:
        """Subscribe and wait until every message that existed at the start has been applied."""
        info = await self._js.stream_info(self._stream)
        if info.state.messages == 0:
            self._caught_up.set()
        self._subscription = await self._js.subscribe(
            self._subject,
            stream=self._stream,
            cb=self._on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            idle_heartbeat=5.0,
        )
        try:
            await asyncio.wait_for(self._caught_up.wait(), catch_up_timeout)
        except TimeoutError:
            log.warning(
                "%s: not caught up after %ss (%s applied); serving anyway", self._stream, catch_up_timeout, self.applied
            )

    async def _on_message(self, message: Msg) -> None:
        metadata = message.metadata
        try:
            self._handler(
                parse_stored(self._stream, metadata.sequence.stream, message.subject, message.headers, message.data)
            )
        except Exception:
            log.exception("%s: could not apply sequence %s; skipped", self._stream, metadata.sequence.stream)
        self.applied += 1
        if metadata.num_pending == 0:
            self._caught_up.set()

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()


class ReadBack(Protocol):
    """A projection that folds this process's own appends at once and takes every other event of its stream in
    stream order (:class:`ForeignEvents`)."""

    @property
    def read_through(self) -> int:
        """Every event up to this sequence is folded."""

    @property
    def delivered_through(self) -> int:
        """Every event up to this sequence was delivered (folded or held) or folded ahead."""

    @property
    def appends_under_way(self) -> bool:
        """Whether an append of this process is under way."""

    def lacking(self, most: int) -> list[int]:
        """Up to ``most`` sequences after ``delivered_through``, oldest first, that the projection knows the stream
        holds (below one it folded, or one it was asked to reach) and has neither folded nor held."""

    def follow(self, stored: StoredEvent) -> None:
        """Fold one stored event (delivered in stream order)."""

    def passed(self, sequence: int) -> None:
        """The stream holds nothing at ``sequence`` (a gap): read past it."""


class ForeignEvents:
    """After a :class:`StreamFollower` caught a projection up at start and stopped: the events of the stream this
    process did not append, read when the projection lacks them, rather than every event pushed back to the
    process that appended it (which cost invoice-status ~60-115 µs of CPU per submission, docs/benchmarks.md).

    :meth:`tick` (a periodic job) reads, in stream order, the sequences the projection lacks once the oldest of them
    was lacking at the previous tick too: one lacking only because its append's acknowledgment is on its way is
    folded by the append meanwhile, and one read anyway is held by the projection until its append settles. With
    nothing lacking and no append under way, what the stream holds after the projection is read: another writer's
    newest events. At most ``most`` events a tick, each folded as it is read.

    A sequence a direct get does not find is passed only when the stream's leader says it is older than anything the
    stream holds: a replica that has not caught up answers "no message" for one it will hold, and is asked again at
    the next tick. A message that is not an event is logged once and passed, as the follower skipped it. A broker
    that does not answer is tried again at the next tick (logged once)."""

    def __init__(self, reader: EventReader, domain: str, projection: ReadBack, most: int = 1_000) -> None:
        self._reader = reader
        self._domain = domain
        self._projection = projection
        self._most = most
        self._oldest_lacking = 0  # the oldest sequence lacking at the previous tick
        self._failing = False
        self.read = 0  # events read, for tests and logs
        # Set once a probe found nothing after the projection: caught up, whether or not the follower's catch-up
        # at start finished in time.
        self.reached_end = False

    async def tick(self) -> None:
        try:
            await self._read()
        except Exception as error:
            if transient(error) is None:
                raise
            if not self._failing:
                log.warning("%s: reading other writers' events failed (%r); trying again", self._domain, error)
            self._failing = True
            return
        self._failing = False

    async def _read(self) -> None:
        lacking = self._projection.lacking(self._most)
        if lacking:
            oldest_before, self._oldest_lacking = self._oldest_lacking, lacking[0]
            if lacking[0] != oldest_before:
                return
            for sequence in lacking:
                try:
                    stored = await self._reader.at(self._domain, sequence)
                except NotFoundError:
                    if sequence >= await self._reader.first_sequence(self._domain):
                        return  # not on the replica that answered yet: asked again at the next tick
                    self._projection.passed(sequence)
                    continue
                except UnreadableEvent as unreadable:
                    self._skip(unreadable)
                    continue
                self._follow(stored)
            return
        self._oldest_lacking = 0
        if self._projection.appends_under_way:
            return  # what the stream holds next may be an append of this process on its way
        for _ in range(self._most):
            try:
                following = await self._reader.next_after(self._domain, self._projection.delivered_through)
            except UnreadableEvent as unreadable:
                self._skip(unreadable)
                continue
            if following is None:
                self.reached_end = True
                return
            self._follow(following)

    def _follow(self, stored: StoredEvent) -> None:
        self.read += 1
        try:
            self._projection.follow(stored)
        except Exception:
            log.exception("%s: could not apply sequence %s; skipped", self._domain, stored.sequence)

    def _skip(self, unreadable: UnreadableEvent) -> None:
        log.error("%s: skipped, as the follower does: %s", self._domain, unreadable)
        self._projection.passed(unreadable.sequence)
