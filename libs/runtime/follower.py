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

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from libs.runtime.events import StoredEvent, parse_stored
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
