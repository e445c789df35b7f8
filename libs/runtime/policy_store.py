"""Policy revisions in a JetStream KV bucket, and the view of them every process keeps.

Each revision is one key, ``rev.<n>``, written once with ``create`` — so two
operators who both expect revision n race for ``rev.<n+1>`` and exactly one
wins. The latest revision is the bucket's last message on ``rev.>``. Every
process watches the bucket and switches to a new revision the moment it is
stored; before any revision exists it runs the bootstrap document as
revision 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import (
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from libs.policy.engine import Policy, PolicyInvalid
from libs.runtime.buckets import open_bucket
from libs.runtime.subjects import Namespace
from syncgov.controlplane.v1 import controlplane_pb2

log = logging.getLogger(__name__)


class RevisionConflict(Exception):
    """Another revision was stored since the one the caller expected."""


def _key(revision: int) -> str:
    return f"rev.{revision}"


class PolicyStore:
    def __init__(self, js: JetStreamContext, namespace: Namespace, replicas: int = 1) -> None:
        self._js = js
        self.bucket = namespace.bucket("policy")
        self._replicas = replicas
        self._kv: KeyValue | None = None

    async def open(self) -> KeyValue:
        if self._kv is None:
            self._kv = await open_bucket(
                self._js, self.bucket, "syncgov policy revisions, one key per revision", replicas=self._replicas
            )
        return self._kv

    async def latest(self) -> controlplane_pb2.PolicyRevision | None:
        found = await self.latest_with_sequence()
        return None if found is None else found[1]

    async def latest_with_sequence(self) -> tuple[int, controlplane_pb2.PolicyRevision] | None:
        """The latest revision and the bucket stream's sequence that holds it."""
        await self.open()
        try:
            raw = await self._js.get_last_msg(f"KV_{self.bucket}", f"$KV.{self.bucket}.rev.>")
        except NotFoundError:
            return None
        return raw.seq or 0, controlplane_pb2.PolicyRevision.FromString(raw.data or b"")

    async def create(self, revision: controlplane_pb2.PolicyRevision) -> int:
        """Store ``revision`` under its own key unless that key exists; returns the stream sequence."""
        kv = await self.open()
        try:
            return await kv.create(_key(revision.revision), revision.SerializeToString())
        except KeyWrongLastSequenceError:
            raise RevisionConflict(f"revision {revision.revision} was stored by someone else just now") from None

    async def get(self, revision: int) -> controlplane_pb2.PolicyRevision | None:
        kv = await self.open()
        try:
            entry = await kv.get(_key(revision))
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return controlplane_pb2.PolicyRevision.FromString(entry.value or b"")

    async def history(self) -> list[controlplane_pb2.PolicyRevision]:
        """Every revision, newest first. Revisions are numbered 1, 2, 3... without gaps (``append`` stores only the
        next number), so they are read back from the latest down; nats-py's ``keys()`` walks the bucket with a
        watcher that a loaded machine can time out on an answer of no keys, which listed no revision at all."""
        latest = await self.latest()
        if latest is None:
            return []
        found = [await self.get(number) for number in range(latest.revision, 0, -1)]
        return [revision for revision in found if revision is not None]

    async def append(self, revision: controlplane_pb2.PolicyRevision, expected_current: int) -> None:
        """Store ``revision`` (numbered expected_current + 1) unless another got there first."""
        kv = await self.open()
        latest = await self.latest()
        current = latest.revision if latest else 0
        if current != expected_current:
            raise RevisionConflict(f"the current revision is {current}, not {expected_current}")
        if revision.revision != expected_current + 1:
            raise ValueError("a new revision is numbered expected_current + 1")
        try:
            await kv.create(_key(revision.revision), revision.SerializeToString())
        except KeyWrongLastSequenceError:
            raise RevisionConflict(f"revision {revision.revision} was stored by someone else just now") from None


class PolicyView:
    """The policy in force in this process, kept current by a watch on the bucket."""

    def __init__(self, store: PolicyStore, bootstrap: Policy) -> None:
        self._store = store
        self.current = bootstrap
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[Policy], None]] = []

    def on_change(self, listener: Callable[[Policy], None]) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        latest = await self._store.latest()
        if latest is not None:
            self._switch(latest)
        kv = await self._store.open()
        watcher = await kv.watch("rev.>", include_history=False)
        self._task = asyncio.create_task(self._follow(watcher), name="policy watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        try:
            async for entry in watcher:
                if entry is None or not entry.value:
                    continue
                self._switch(controlplane_pb2.PolicyRevision.FromString(entry.value))
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves KeyWatcher.stop unannotated

    def _switch(self, revision: controlplane_pb2.PolicyRevision) -> None:
        if revision.revision <= self.current.revision:
            return
        try:
            policy = Policy.from_text(revision.document_yaml, revision.revision)
        except PolicyInvalid as error:  # only valid documents are stored; this is a corrupted bucket
            log.error(
                "policy revision %s is invalid, keeping %s: %s",
                revision.revision,
                self.current.revision,
                error.problems,
            )
            return
        previous = self.current.revision
        self.current = policy
        log.info(
            "policy revision %s in force (was %s)",
            policy.revision,
            previous,
            extra={"policy_revision": policy.revision},
        )
        for listener in self._listeners:
            listener(policy)
